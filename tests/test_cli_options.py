"""Shared CLI options: value lists in --help from the registries, one-line errors."""

from __future__ import annotations

import pytest
import typer

from landslide_cli.backends import BACKENDS
from landslide_cli.cli import options
from landslide_cli.cli.app import app
from landslide_cli.data import DATASETS
from landslide_cli.train.config import CHOICES, DistillConfig, SegmentConfig


def _params(*path: str) -> dict[str, typer.core.TyperOption]:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


def _values(param) -> list[str]:
    return param.metavar.strip("<>").split("|")


def test_backend_values_come_from_the_registry():
    for command in ("predict", "eval"):
        assert _values(_params(command)["backend"]) == ["auto", *BACKENDS.names()]


def test_fixed_value_lists_match_the_library():
    from landslide_cli.export import EXPORTERS
    from landslide_cli.predict.raster import PROB_DTYPES

    assert options.PROB_DTYPES == PROB_DTYPES
    assert list(options.EXPORTERS) == EXPORTERS.names()
    assert _values(_params("predict")["prob_dtype"]) == list(PROB_DTYPES)
    assert _values(_params("export")["exporter"]) == EXPORTERS.names()


def test_training_choices_come_from_the_config():
    distill, segment = _params("train", "distill"), _params("train", "segment")
    for name, values in CHOICES.items():
        for params in (distill, segment):
            if name in params:
                assert _values(params[name]) == list(values), name
    for name in ("amp", "schedule", "method", "loss_weighting", "align"):
        assert name in distill
    assert "sampling" in segment
    assert _values(segment["dataset"]) == DATASETS.names() == _values(_params("eval")["dataset"])


def test_help_lists_the_values(run_cli):
    res = run_cli("predict", "--help")
    assert res.exit_code == 0 and "<auto|torch|onnx>" in res.stdout
    assert "<uint8|float32>" in res.stdout
    res = run_cli("train", "segment", "--help")
    assert res.exit_code == 0 and "<bf16|fp16|off>" in res.stdout and "<cosine|poly>" in res.stdout


def test_train_commands_share_their_options_with_defaults_from_the_config():
    distill, segment = _params("train", "distill"), _params("train", "segment")
    for option in options.TRAIN_OPTIONS:
        assert distill[option.name].opts == segment[option.name].opts, option.name
    # one declaration, the phase's own default
    assert distill["batch_size"].show_default == str(DistillConfig.batch_size) == "8"
    assert segment["batch_size"].show_default == str(SegmentConfig.batch_size) == "16"
    assert segment["amp"].show_default == SegmentConfig.amp
    assert segment["pretrained"].show_default == "random-init"
    # "not given" stays None so that --config and --resume keep their precedence
    assert all(p.default in (None, False) for p in segment.values() if p.name != "help")


@pytest.mark.parametrize("args, message", [
    (["predict", "a.tif", "-o", "x.gpkg", "--backend", "tf"], "unknown backend 'tf'"),
    (["predict", "a.tif", "-o", "x.gpkg", "--prob-dtype", "f16"], "--prob-dtype 'f16'"),
    (["eval", "--root", ".", "--split", "dev"], "--split 'dev'"),
    (["eval", "--root", ".", "--split-mode", "nope"], "unknown split mode 'nope'"),
    (["export", "-o", "m.onnx", "--exporter", "tflite"], "unknown onnx exporter 'tflite'"),
    (["train", "distill", "--amp", "fp8"], "--amp 'fp8': choose one of bf16, fp16, off"),
    (["train", "distill", "--method", "kdx"], "--method 'kdx'"),
    (["train", "segment", "--schedule", "step"], "--schedule 'step'"),
    (["train", "segment", "--val-split", "dev"], "--val-split 'dev'"),
    (["train", "segment", "--dataset", "nosuch"], "unknown dataset 'nosuch'"),
    (["eval", "--root", ".", "--batch-size", "0"], "--batch-size"),
    (["export", "-o", "m.onnx", "--opset", "x"], "--opset"),
])
def test_a_bad_value_is_one_line(run_cli, args, message):
    res = run_cli(*args)
    assert res.exit_code == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["models", "--no-such-flag"], "No such option: --no-such-flag"),
    (["predict"], "Missing option"),
    (["predict", "a.tif"], "Missing option '--out'"),
])
def test_a_command_line_that_does_not_parse_is_one_line(run_cli, args, message):
    res = run_cli(*args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert "--help" in lines[0]


def test_registry_values_accept_what_the_registry_accepts(run_cli, tmp_path):
    # an alias in another case passes the option; the missing root is the error
    res = run_cli("eval", "--root", tmp_path / "nowhere", "--dataset", "L4S", "--backend",
                  "ONNX", "--split-mode", "Random")
    assert res.exit_code == 1 and "data set root not found" in res.stderr, res.stderr
