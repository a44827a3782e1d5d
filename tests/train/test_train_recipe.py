"""Recipe levers of `train segment`: steps, CPU bf16 autocast, region sampling, fg crops,
photometric augmentation and per-tile normalization, through the CLI on tiny data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from _train_args import TINY_SEGMENT

from landslide_cli.checkpoint import load_checkpoint, read_metadata
from landslide_cli.preprocess import InputSpec

LEVERS = ["--steps", "3", "--cpu-amp", "--sampling", "region", "--fg-crop", "0.5",
          "--photometric", "0.5", "--seed", "5", "--lr-decoder", "1e-3",
          "--lr-decoder-final", "1e-4"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_steps_levers_and_resume_equal_uninterrupted(run_cli, tiny_tiles, tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"normalization": "tile"}}))
    full, part = tmp_path / "full", tmp_path / "part"
    # 4 tiles, batch 2: 2 steps per epoch; 3 steps -> 2 epochs, the last one partial
    common = ["train", "segment", "--data", tiny_tiles, "--config", cfg, *TINY_SEGMENT,
              *LEVERS]
    res = run_cli(*common, "--out", full)
    assert res.exit_code == 0, res.stderr
    res = run_cli(*common, "--out", part, "--stop-after", "1")
    assert res.exit_code == 0, res.stderr
    assert [r["step"] for r in _rows(part)] == ["2"]
    res = run_cli("train", "segment", "--resume", part, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    a = load_checkpoint(full / "last.safetensors")[1]
    b = load_checkpoint(part / "last.safetensors")[1]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _rows(full)
    assert [r["step"] for r in rows] == ["2", "3"]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in _rows(part)]
    assert float(rows[-1]["lr_decoder"]) == pytest.approx(1e-4)  # the schedule ended at step 3
    meta = read_metadata(full / "last.safetensors")
    t = meta.training
    assert (t["steps"], t["steps_done"], t["amp"], t["sampling"]) == (3, 3, "bf16-cpu", "region")
    assert t["augment"]["photometric"] == 0.5 and t["augment"]["fg_crop"] == 0.5
    assert InputSpec.from_dict(meta.input).normalization == "tile"
    saved = yaml.safe_load((full / "config.yaml").read_text())
    assert saved["steps"] == 3 and saved["cpu_amp"] is True
    assert saved["input"]["normalization"] == "tile"
    # a finished run resumes to a no-op
    assert run_cli("train", "segment", "--resume", part).exit_code == 0
    assert len(_rows(part)) == 2


def test_val_every_validates_every_n_epochs_and_after_the_last(run_cli, tiny_tiles, tmp_path):
    run = tmp_path / "run"
    # 4 tiles, batch 2: 2 steps per epoch, 5 epochs, validation after epochs 2, 4 and 5
    common = ["train", "segment", "--data", tiny_tiles, *TINY_SEGMENT, "--epochs", "5",
              "--val-every", "2"]
    res = run_cli(*common, "--out", run, "--stop-after", "1")
    assert res.exit_code == 0, res.stderr
    assert (run / "state.safetensors").is_file() and not (run / "last.safetensors").exists()
    res = run_cli("train", "segment", "--resume", run, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [bool(r["val_iou"]) for r in rows] == [False, True, False, True, True]
    meta = read_metadata(run / "last.safetensors")
    assert meta.training["epoch"] == 5  # the last epoch always validates and saves
    assert float(rows[-1]["val_threshold"]) == pytest.approx(meta.threshold)
    res = run_cli(*common, "--out", tmp_path / "bad", "--val-every", "0")
    assert res.exit_code != 0 and "--val-every" in res.stderr


def test_bad_lever_values(run_cli, tiny_tiles, tmp_path):
    for flag, value in (("--sampling", "scene"), ("--fg-crop", "1.5"), ("--photometric", "-1"),
                        ("--steps", "0")):
        res = run_cli("train", "segment", "--data", tiny_tiles, "--out", tmp_path / "r",
                      *TINY_SEGMENT, flag, value)
        assert res.exit_code != 0 and flag in res.stderr, (flag, res.stderr)


def test_planned_steps_and_epochs():
    from landslide_cli.train.config import SegmentConfig
    from landslide_cli.train.engine import planned_epochs, planned_steps

    assert (planned_steps(SegmentConfig(epochs=3), 7), planned_epochs(SegmentConfig(epochs=3), 7)
            ) == (21, 3)
    cfg = SegmentConfig(epochs=3, steps=15)
    assert (planned_steps(cfg, 7), planned_epochs(cfg, 7)) == (15, 3)
    cfg = SegmentConfig(steps=14)
    assert planned_epochs(cfg, 7) == 2


def test_cpu_amp_runs_the_forward_in_bf16():
    from landslide_cli.train.config import SegmentConfig
    from landslide_cli.train.engine import amp_dtype, autocast

    cpu = torch.device("cpu")
    assert amp_dtype(SegmentConfig(), cpu) is None  # default unchanged: fp32 on CPU
    dtype = amp_dtype(SegmentConfig(cpu_amp=True), cpu)
    assert dtype is torch.bfloat16
    with autocast(cpu, dtype):
        out = torch.nn.Linear(4, 2)(torch.ones(1, 4))
    assert out.dtype is torch.bfloat16


def test_region_balanced_sampler_is_balanced_and_deterministic():
    from landslide_cli.train.engine import RegionBalancedSampler

    regions = ["big"] * 90 + ["small"] * 10
    s = RegionBalancedSampler(regions, seed=1)
    s.set_epoch(0)
    first = list(s)
    assert len(first) == len(s) == 100
    small = sum(regions[i] == "small" for i in first)
    assert 35 <= small <= 65  # ~50 of 100 (uniform order would give 10)
    again = RegionBalancedSampler(regions, seed=1)
    again.set_epoch(0)
    assert list(again) == first
    s.set_epoch(1)
    assert list(s) != first
    # two ranks split one draw
    r0 = RegionBalancedSampler(regions, seed=1, rank=0, world=2)
    r1 = RegionBalancedSampler(regions, seed=1, rank=1, world=2)
    assert sorted(list(r0) + list(r1)) == sorted(first)
