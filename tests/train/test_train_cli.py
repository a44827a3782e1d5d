"""End-to-end training through the CLI on tiny data: both phases, outputs, resume, errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_args import TINY_DISTILL, TINY_SEGMENT

from landslide_cli.checkpoint import load_checkpoint, read_metadata


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[1]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def distilled(tiny_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One KDA run (2 epochs) shared by the tests that need a phase-1 checkpoint."""
    from landslide_cli.cli import common
    from landslide_cli.cli.app import main

    run = tmp_path_factory.mktemp("distill") / "run"
    code = main(["train", "distill", "--root", str(tiny_tiles), "--out", str(run),
                 "--epochs", "2", *TINY_DISTILL])
    common.state.verbose, common.state.quiet = 0, False
    assert code == 0
    return run


def test_distill_writes_a_backbone_checkpoint(distilled: Path):
    from landslide_cli.zoo import build_segmenter, parse_spec

    for name in ("last.safetensors", "state.safetensors", "config.yaml", "metrics.csv"):
        assert (distilled / name).is_file(), name
    meta, state = load_checkpoint(distilled / "last.safetensors")
    assert meta.kind == "backbone"
    assert meta.architecture["backbone"] == "pvt_v2_b0"
    assert meta.training["teacher"] == "vit_small_patch14_dinov2"
    assert meta.training["method"] == "kda" and meta.training["tau"] == 5.0
    assert meta.training["epochs_done"] == 2
    assert set(meta.training["losses"]) >= {"kl", "adv", "d", "loss"}
    # the state dict is exactly the segmenter's backbone
    seg = build_segmenter(parse_spec("pvt_v2_b0+dcf", decoder_width=32))
    seg.backbone.load_state_dict(state, strict=True)
    rows = _rows(distilled)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["lr_student"]) == pytest.approx(5e-8)  # decayed to the final LR
    assert "teacher_init: random" in (distilled / "config.yaml").read_text()


def test_segment_from_distilled_init_loads_everywhere(run_cli, distilled, tiny_tiles,
                                                      tmp_path):
    from landslide_cli.backends import open_backend
    from landslide_cli.zoo.loading import load_model

    run = tmp_path / "seg"
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--epochs", "2",
                  "--init", distilled / "last.safetensors", *TINY_SEGMENT,
                  "--val-batch-size", "2")
    assert res.exit_code == 0, res.stderr
    assert "best: " in res.stdout and "last: " in res.stdout
    for name in ("last", "best"):
        loaded = load_model(run / f"{name}.safetensors")
        meta = loaded.meta
        assert meta.kind == "segmenter"
        assert meta.arch.decoder == "dcf" and meta.arch.decoder_width == 32
        assert 0.0 <= meta.threshold <= 1.0
        assert meta.threshold == meta.metrics["val"]["overall"]["threshold"]
        assert set(meta.metrics["val"]["per_region"]) == {"alpha", "beta"}
        assert meta.training["init"]["from"] == "distill"
        assert meta.training["loss"] == {"ce": 0.4, "focal": 0.6, "gamma": 2.0,
                                         "class_weights": None}
        assert meta.input_spec.mean == pytest.approx([0.485, 0.456, 0.406])
        assert meta.training["dataset"]["tiles"] == 4
        out = loaded.model(torch.zeros(1, 3, 40, 56))
        assert out.shape == (1, 2, 40, 56)
    # validation metrics in the checkpoint = metrics recomputed tile by tile from its weights
    from landslide_cli.data import SegmentationDataset, open_dataset
    from landslide_cli.metrics import RegionalMetrics

    best = load_model(run / "best.safetensors")
    tiles = open_dataset("folder", tiny_tiles, split="all")
    ds = SegmentationDataset(tiles, best.meta.input_spec)
    ref = RegionalMetrics()
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            prob = best.model.predict_proba(item["image"][None])[0]
            ref.update(prob >= 0.5, item["mask"], item["region"])
    expected = ref.compute()
    val = best.meta.metrics["val"]
    assert val["overall"]["iou"] == pytest.approx(expected["overall"]["iou"], abs=1e-3)
    assert val["overall"]["oa"] == pytest.approx(expected["overall"]["oa"], abs=1e-3)
    for region in ("alpha", "beta"):
        assert val["per_region"][region]["iou"] == pytest.approx(
            expected["per_region"][region]["iou"], abs=1e-3)
    assert val["per_region"]["beta"]["pixels"] == 80 * 72 + 64 * 64
    backend = open_backend(run / "best.safetensors", backend="torch", device="cpu")
    assert backend.predict(torch.zeros(1, 3, 64, 64).numpy()).shape == (1, 64, 64)
    # the backbone really came from phase 1 (segment LR is tiny: weights barely move)
    init = _weights(distilled / "last.safetensors")
    trained = _weights(run / "last.safetensors")
    key = next(iter(init))
    assert torch.allclose(trained[f"backbone.{key}"], init[key], atol=1e-3)
    rows = _rows(run)
    assert {"train_ce", "train_focal", "val_iou", "val_threshold", "lr_backbone",
            "lr_decoder", "val_alpha/iou"} <= set(rows[0])


@pytest.mark.parametrize("phase", ["segment", "distill"])
def test_stop_and_resume_equals_uninterrupted(run_cli, tiny_tiles, tmp_path, phase):
    extra = (TINY_SEGMENT if phase == "segment" else
             [*TINY_DISTILL, "--loss-weighting", "adaptive", "--align", "intermediate"])
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train", phase, "--data", tiny_tiles, "--epochs", "2", "--seed", "3", *extra]
    assert run_cli(*common, "--out", full).exit_code == 0
    res = run_cli(*common, "--out", part, "--stop-after", "1")
    assert res.exit_code == 0, res.stderr
    assert "--resume" in res.stdout
    assert read_metadata(part / "last.safetensors").training.get(
        "epochs_done", read_metadata(part / "last.safetensors").training.get("epoch")) == 1
    res = run_cli("train", phase, "--resume", part, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    a, b = _weights(full / "last.safetensors"), _weights(part / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    ra, rb = _rows(full), _rows(part)
    assert len(rb) == 2
    for key in ("train_loss", "lr_" + ("decoder" if phase == "segment" else "student")):
        assert [r[key] for r in ra] == [r[key] for r in rb]
    # a finished run resumes to a no-op; changing the recipe on resume is refused
    assert run_cli("train", phase, "--resume", part).exit_code == 0
    bad = run_cli("train", phase, "--resume", part, "--seed", "4")
    assert bad.exit_code == 1 and "cannot be changed when resuming" in bad.stderr


def test_random_teacher_warns_and_config_file(run_cli, tiny_tiles, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("phase: distill\nmethod: kd\nepochs: 3\nlr: 1e-4\n")
    run = tmp_path / "kd"
    res = run_cli("train", "distill", "--config", cfg, "--data", tiny_tiles, "--out", run,
                  "--epochs", "1", *TINY_DISTILL)
    assert res.exit_code == 0, res.stderr
    assert "RANDOMLY initialised" in res.stderr
    saved = (run / "config.yaml").read_text()
    assert "method: kd" in saved and "epochs: 1" in saved and "lr: 0.0001" in saved
    meta = read_metadata(run / "last.safetensors")
    assert meta.training["method"] == "kd" and "adv" not in meta.training["losses"]


# ---------------------------------------------------------------------- bad input

def _no_run(path: Path) -> None:
    assert not path.exists(), f"{path} was created"


def test_missing_data_root(run_cli, tmp_path):
    run = tmp_path / "r"
    res = run_cli("train", "segment", "--data", tmp_path / "nope", "--out", run, *TINY_SEGMENT)
    assert res.exit_code == 1
    assert "data root not found" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    _no_run(run)


def test_empty_split(run_cli, tiny_tiles, tmp_path):
    run = tmp_path / "r"
    res = run_cli("train", "distill", "--data", tiny_tiles, "--out", run, "--regions",
                  "gamma", *TINY_DISTILL)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "gamma" in res.stderr
    _no_run(run)


def test_pretrained_teacher_offline_without_weights(run_cli, tiny_tiles, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "r"
    args = [a for a in TINY_DISTILL if a != "--teacher-random"]
    res = run_cli("train", "distill", "--data", tiny_tiles, "--out", run, "--pretrained-teacher",
                  *args, "--teacher", "vit_large_patch14_dinov2")
    assert res.exit_code == 1
    assert "not available offline" in res.stderr and "--weights" in res.stderr
    _no_run(run)
    missing = run_cli("train", "distill", "--data", tiny_tiles, "--out", run,
                      "--teacher-weights", tmp_path / "dino.safetensors", *args)
    assert missing.exit_code == 1 and "weights file not found" in missing.stderr
    _no_run(run)


def test_incompatible_init(run_cli, tiny_tiles, tiny_checkpoint, distilled, tmp_path):
    run = tmp_path / "r"
    # a segmentation model fine-tunes whole (tests/train/test_train_fewshot.py), in its own
    # architecture only
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--init",
                  tiny_checkpoint, *TINY_SEGMENT, "--decoder", "unet")
    assert res.exit_code == 1 and "incompatible --init" in res.stderr
    assert "it is a pvt_v2_b0+dcf model" in res.stderr
    _no_run(run)
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--init",
                  distilled / "last.safetensors", "--backbone", "pvt_v2_b1", *TINY_SEGMENT)
    assert res.exit_code == 1 and "incompatible --init" in res.stderr
    assert "pvt_v2_b0" in res.stderr
    _no_run(run)
    res = run_cli("train", "segment", "--data", tiny_tiles, "--out", run, "--init",
                  tmp_path / "missing.safetensors", *TINY_SEGMENT)
    assert res.exit_code == 1 and "not found" in res.stderr
    _no_run(run)


def test_existing_run_folder_is_not_overwritten(run_cli, tiny_tiles, distilled):
    before = (distilled / "last.safetensors").read_bytes()
    res = run_cli("train", "distill", "--data", tiny_tiles, "--out", distilled, *TINY_DISTILL)
    assert res.exit_code == 1 and "--resume" in res.stderr
    assert (distilled / "last.safetensors").read_bytes() == before


# ---------------------------------------------------------------------- torchrun

def test_torchrun_two_processes_on_cpu(tiny_tiles, tmp_path):
    from landslide_cli.zoo.loading import load_model

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "landslide_cli", "train", "segment", "--root", str(tiny_tiles), "--out",
           str(run), "--epochs", "1", *TINY_SEGMENT, "-b", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = load_model(run / "best.safetensors")
    assert loaded.meta.training["environment"]["world_size"] == 2
    assert loaded.meta.training["batch_size"] == 2
    rows = _rows(run)
    assert len(rows) == 1  # rank 0 logged once
    assert proc.stdout.count("best: ") == 1  # rank 0 reported once


def test_segment_from_local_timm_weights_without_validation(run_cli, tiny_tiles, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    ref = timm.create_model("pvt_v2_b0").state_dict()
    weights = tmp_path / "pvt_v2_b0.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(weights))
    run = tmp_path / "seg"
    res = run_cli("train", "segment", "--root", tiny_tiles, "--out", run, "--epochs", "1",
                  "--weights", weights, *TINY_SEGMENT, "--val-split", "none",
                  "--region", "alpha", "--decoder", "unet")
    assert res.exit_code == 0, res.stderr
    assert not (run / "best.safetensors").exists()  # no validation, no "best"
    meta, state = load_checkpoint(run / "last.safetensors")
    assert meta.training["init"] == {"from": "timm", "weights": str(weights)}
    assert meta.arch.decoder == "unet" and meta.threshold == 0.5
    assert meta.training["dataset"]["regions"] == ["alpha"]
    key = "patch_embed.proj.weight"  # timm's name; features_only keeps it under body.
    assert torch.allclose(state[f"backbone.body.{key}"], ref[key], atol=1e-3)


def test_segment_on_real_shared_tiles(run_cli, shared_data, tmp_path):
    """Two real Hokkaido tiles (TIF, 256 px) and one Bijie tile (PNG, ~512-630 px)."""
    import shutil

    from landslide_cli.zoo.loading import load_model

    src = shared_data / "landslides"
    root = tmp_path / "tiles"
    picks = {"hokkaido": sorted((src / "hokkaido" / "img").iterdir())[:2],
             "bijie": sorted((src / "bijie" / "img").iterdir())[:1]}
    for region, images in picks.items():
        for img in images:
            for sub, path in (("img", img), ("mask", src / region / "mask" / f"{img.stem}.png")):
                (root / region / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, root / region / sub / path.name)
    run = tmp_path / "seg"
    res = run_cli("train", "segment", "--root", root, "--out", run, "--epochs", "1",
                  *TINY_SEGMENT, "--val-size", "96", "--val-batch-size", "3")
    assert res.exit_code == 0, res.stderr
    meta = load_model(run / "best.safetensors").meta
    regions = meta.metrics["val"]["per_region"]
    assert set(regions) == {"bijie", "hokkaido"}
    assert regions["hokkaido"]["pixels"] == 2 * 96 * 96
    assert regions["hokkaido"]["landslide_pixels"] > 0  # real masks were read
