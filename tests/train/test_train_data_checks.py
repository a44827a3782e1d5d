"""Training data checked before the first step, and DataLoader workers sized to the machine
(issue #10)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_args import TINY_DISTILL, TINY_SEGMENT

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.train import config as train_config
from landslide_cli.train.config import SegmentConfig, resolve_config


def _set_mask(path: Path, value: int) -> None:
    from PIL import Image

    mask = np.array(Image.open(path))
    mask[mask > 0] = value
    Image.fromarray(mask.astype(np.uint8)).save(path)


@pytest.fixture
def bad_mask_tiles(tiny_tiles: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = Path(shutil.copytree(tiny_tiles, tmp_path / "tiles"))
    bad = root / "beta" / "mask" / "beta_1.png"
    _set_mask(bad, 2)
    return root, bad


@pytest.mark.parametrize("phase", ["segment", "distill"])
def test_bad_mask_value_is_one_line_before_training(run_cli, bad_mask_tiles, tmp_path, phase):
    root, bad = bad_mask_tiles
    run = tmp_path / "run"
    extra = TINY_SEGMENT if phase == "segment" else TINY_DISTILL
    # a worker process, as in real runs: the bad tile used to fail inside it mid-epoch
    res = run_cli("train", phase, "--data", root, "--out", run, "--epochs", "1", *extra,
                  "--num-workers", "1")
    assert res.exit_code == 1
    assert "Traceback" not in res.stderr and "worker" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert str(bad) in res.stderr and "found 2" in res.stderr
    assert "--skip-bad" in res.stderr
    assert not run.exists()  # found before the run folder was written


def test_skip_bad_trains_without_the_bad_tile(run_cli, bad_mask_tiles, tmp_path):
    from landslide_cli.checkpoint import read_metadata

    root, _ = bad_mask_tiles
    run = tmp_path / "run"
    res = run_cli("train", "segment", "--data", root, "--out", run, "--epochs", "1",
                  *TINY_SEGMENT, "--val-split", "none", "--skip-bad")
    assert res.exit_code == 0, res.stderr
    assert read_metadata(run / "last.safetensors").training["dataset"]["tiles"] == 3


def test_open_split_accepts_0_255_masks(tiny_tiles, tmp_path):
    from landslide_cli.train.common import open_split

    root = Path(shutil.copytree(tiny_tiles, tmp_path / "tiles"))
    _set_mask(root / "alpha" / "mask" / "alpha_1.png", 255)
    cfg = resolve_config(SegmentConfig, {"data": str(root), "out": str(tmp_path / "r")})
    tiles = open_split(cfg, "all")
    assert len(tiles) == 4 and set(np.unique(tiles.read(1)[1])) == {0, 1}
    _set_mask(root / "alpha" / "mask" / "alpha_0.png", 7)
    with pytest.raises(DataError) as info:
        open_split(cfg, "all", what="validation")
    assert "alpha_0.png: mask values must be 0/1 or 0/255, found 7" in str(info.value)
    assert "validation data" in str(info.value)


class _Failing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 2:
            raise DataError("tiles/x.png: unreadable")
        return torch.zeros(1)


def test_worker_errors_come_back_as_one_line():
    from landslide_cli.train.engine import worker_errors

    loader = torch.utils.data.DataLoader(_Failing(), batch_size=1, num_workers=1)
    with pytest.raises(DataError) as info:
        list(worker_errors(loader))
    assert str(info.value) == "tiles/x.png: unreadable"
    assert len(list(worker_errors(torch.utils.data.DataLoader(range(3))))) == 3


# ---------------------------------------------------------------------- --num-workers default

def _cpus(monkeypatch: pytest.MonkeyPatch, n: int, local_world: str | None = None) -> None:
    monkeypatch.setattr(train_config.os, "sched_getaffinity", lambda pid: set(range(n)),
                        raising=False)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)


def test_default_workers_follow_the_machine(monkeypatch, tmp_path):
    from landslide_cli.train.config import save_config

    cfg = resolve_config(SegmentConfig, {"out": "x"})
    assert cfg.num_workers is None  # "auto", also in config.yaml
    for cpus, local, expected in ((2, None, 2), (1, None, 1), (64, None, 4), (8, "4", 2),
                                  (2, "8", 1)):
        _cpus(monkeypatch, cpus, local)
        assert cfg.workers == expected, (cpus, local)
    assert resolve_config(SegmentConfig, {"num_workers": 3}).workers == 3
    assert resolve_config(SegmentConfig, {"num_workers": 0}).workers == 0
    with pytest.raises(LandslideError, match="--num-workers must be >= 0"):
        resolve_config(SegmentConfig, {"num_workers": -1})
    # a run started with the default keeps choosing per machine when resumed elsewhere
    save_config(cfg, tmp_path / "config.yaml")
    assert "num_workers: null" in (tmp_path / "config.yaml").read_text()
    back = resolve_config(SegmentConfig, {"resume": str(tmp_path)})
    _cpus(monkeypatch, 3)
    assert back.num_workers is None and back.workers == 3


def test_training_uses_the_machine_default(run_cli, tiny_tiles, tmp_path, monkeypatch):
    from landslide_cli.train import engine

    seen: dict[str, int] = {}
    real = engine.EpochLoader

    def spy(*args, **kwargs):
        seen["train"] = kwargs["num_workers"]
        raise LandslideError("stop here")

    _cpus(monkeypatch, 2)
    monkeypatch.setattr(engine, "EpochLoader", spy)
    args = list(TINY_SEGMENT)
    i = args.index("--num-workers")
    del args[i:i + 2]
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", tmp_path / "r", *args)
    assert res.exit_code == 1 and "stop here" in res.stderr
    assert seen == {"train": 2}
    assert real is not spy
