"""``train segment --init``: a checkpoint file, a distillation run folder, a shipped name
(issue #10)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_args import TINY_SEGMENT

from landslide_cli.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from landslide_cli.errors import CheckpointError
from landslide_cli.train.segment import resolve_init
from landslide_cli.zoo.loading import DEFAULT_MODEL, shipped_models


def _distill_folder(run: Path, seed: int = 1) -> Path:
    """What a finished ``landslide train distill`` leaves: config, state, last.safetensors."""
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(seed)
    backbone = build_segmenter(parse_spec("pvt_v2_b0+dcf", decoder_width=32)).backbone
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("phase: distill\n")
    (run / "state.safetensors").write_bytes(b"not a checkpoint")
    meta = CheckpointMeta(kind="backbone", name=run.name,
                          architecture={"backbone": "pvt_v2_b0", "in_chans": 3},
                          training={"phase": "distill", "teacher": "t", "method": "kda"})
    save_checkpoint(run / "last.safetensors", backbone.state_dict(), meta)
    return run


def test_init_from_a_distill_run_folder(run_cli, tiny_tiles, tmp_path, monkeypatch):
    # the folder is named like a shipped model: an existing path wins over the name
    monkeypatch.chdir(tmp_path)
    folder = _distill_folder(tmp_path / DEFAULT_MODEL)
    run = tmp_path / "seg"
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--epochs", "1",
                  "--init", DEFAULT_MODEL, *TINY_SEGMENT, "--val-split", "none")
    assert res.exit_code == 0, res.stderr
    meta, state = load_checkpoint(run / "last.safetensors")
    init = meta.training["init"]
    assert init["from"] == "distill"
    assert Path(init["path"]).resolve() == (folder / "last.safetensors").resolve()
    assert "last.safetensors" in (run / "config.yaml").read_text()  # the file it used
    # the backbone started from the folder's checkpoint (the backbone LR is tiny)
    start = load_checkpoint(folder / "last.safetensors")[1]
    key = next(iter(start))
    assert torch.allclose(state[f"backbone.{key}"], start[key], atol=1e-3)


def test_init_folder_without_checkpoint_is_one_line(run_cli, tiny_tiles, tmp_path):
    folder = tmp_path / "distill"
    folder.mkdir()
    (folder / "config.yaml").write_text("phase: distill\n")  # killed in epoch 1
    run = tmp_path / "seg"
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--init", folder,
                  *TINY_SEGMENT)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"--init {folder}: the folder holds no last.safetensors" in res.stderr
    assert not run.exists()


def test_resolve_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _distill_folder(tmp_path / "kda")
    assert resolve_init(folder) == folder / "last.safetensors"
    assert resolve_init("kda") == Path("kda") / "last.safetensors"
    assert resolve_init(folder / "last.safetensors") == folder / "last.safetensors"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_init(tmp_path / "nope")
    shipped = shipped_models()
    if DEFAULT_MODEL in shipped:  # a name only when no such path exists
        assert resolve_init(DEFAULT_MODEL) == shipped[DEFAULT_MODEL]
        _distill_folder(tmp_path / DEFAULT_MODEL)
        assert resolve_init(DEFAULT_MODEL) == Path(DEFAULT_MODEL) / "last.safetensors"
