from landslide_cli import __version__


def test_help_lists_every_subcommand(run_cli):
    res = run_cli("--help")
    assert res.exit_code == 0
    for name in ("train", "predict", "eval", "export", "models", "info", "--version"):
        assert name in res.stdout
    train = run_cli("train", "--help")
    assert "distill" in train.stdout and "segment" in train.stdout


def test_version(run_cli):
    res = run_cli("--version")
    assert res.exit_code == 0
    assert __version__ in res.stdout


def test_unknown_option_is_a_usage_error(run_cli):
    res = run_cli("models", "--no-such-flag")
    assert res.exit_code == 2
    assert "Traceback" not in res.stderr
