"""``python -m landslide_cli``: the ``landslide`` command (same arguments, output, exit codes)."""

from landslide_cli.cli.app import run

if __name__ == "__main__":
    run()
