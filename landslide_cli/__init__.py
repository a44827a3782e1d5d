"""landslide: map landslides in remote-sensing imagery (KDA, Wang et al., IEEE GRSL 2025).

Distribution ``landslide-kda`` (``pip install landslide-kda``); it installs the ``landslide``
command, also reachable as ``python -m landslide_cli``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
