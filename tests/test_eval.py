"""`landslide eval` and `evaluate()`: per-region reports, JSON/CSV/figure, errors."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from landslide_cli.checkpoint import file_sha256
from landslide_cli.data import open_dataset
from landslide_cli.evaluate import evaluate, predict_tiles
from landslide_cli.preprocess import InputSpec

REGIONS = {"Longxi River（UAV）": 255, "Jiuzhai valley (UAV-0.2m)": 1, "palu": 1}
JSON_KEYS = {"confusion", "landslide", "background_iou", "miou", "oa", "mean_f1", "per_region",
             "model", "dataset"}
METRIC_KEYS = {"confusion", "landslide", "background_iou", "miou", "oa", "mean_f1"}


def _write(path: Path, array: np.ndarray) -> None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    arr = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                           count=arr.shape[0], dtype="uint8") as dst:
            dst.write(arr)


def _tile(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB tile whose red band is 200 on landslide pixels and 50 elsewhere."""
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y:y + h // 3, x:x + w // 3] = 1
    image = rng.integers(0, 100, (3, h, w), dtype=np.uint8)
    image[0] = np.where(mask > 0, 200, 50)
    return image, mask


def _cas_tree(root: Path, *, missing_mask: bool = False, size: int = 32, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for region, value in REGIONS.items():
        for k in range(1, n + 1):
            image, mask = _tile(rng, size, size)
            _write(root / region / "img" / f"{region[:4]}{k:04d}.tif", image)
            _write(root / region / "label" / f"{region[:4]}{k:04d}.tif", 255 - image)
            _write(root / region / "mask" / f"{region[:4]}{k:04d}.tif", mask * value)
    if missing_mask:
        _write(root / "palu" / "img" / "palu0031.tif", _tile(rng, size, size)[0])
    return root


class OracleBackend:
    """A pixelwise stand-in model: landslide probability from the red band alone."""

    name = "oracle"
    device = "cpu"
    model_name = "oracle"
    model_sha256 = "0" * 64
    def __init__(self, fixed_tile: int | None = None, threshold: float = 0.5) -> None:
        self.metadata: dict = {}
        self.spec = InputSpec()
        self.threshold = threshold
        self.fixed_tile = fixed_tile
        self.shapes: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        if self.fixed_tile:
            assert batch.shape[-2:] == (self.fixed_tile, self.fixed_tile)
        red = batch[:, 0] * self.spec.std[0] + self.spec.mean[0]
        return (1 / (1 + np.exp(-(red - 0.5) * 20))).astype(np.float32)


def test_oracle_report_per_region_and_json_shape(tmp_path):
    root = _cas_tree(tmp_path / "CAS")
    report = evaluate(OracleBackend(threshold=0.42), dataset="cas", root=root, split="all",
                      objects=True, batch_size=2)
    assert report.threshold == 0.42  # the model's threshold by default
    assert set(report.per_region) == set(REGIONS)
    cm = report.overall
    assert cm.fp == cm.fn == 0 and cm.tp > 0 and cm.total == 9 * 32 * 32
    data = report.to_json()
    assert set(data) >= JSON_KEYS
    assert data["landslide"] == {"iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert data["objects"]["recall"] == 1.0 and data["objects"]["precision"] == 1.0
    for name, entry in data["per_region"].items():
        assert set(entry) >= METRIC_KEYS and entry["tiles"] == 3, name
        assert sum(entry["confusion"].values()) == 3 * 32 * 32
    assert data["best_threshold"]["f1"] == 1.0
    only = evaluate(OracleBackend(), dataset="cas", root=root, split="all",
                    regions="longxi river (uav)", threshold=0.9)
    assert list(only.per_region) == ["Longxi River（UAV）"] and only.threshold == 0.9


def test_fixed_tile_models_get_padded_or_windowed_input(tmp_path):
    rng = np.random.default_rng(1)
    for name, (h, w) in {"a": (20, 20), "b": (50, 40), "c": (20, 20), "d": (32, 32)}.items():
        image, mask = _tile(rng, h, w)
        _write(tmp_path / "mixed" / "img" / f"{name}.tif", image)
        _write(tmp_path / "mixed" / "mask" / f"{name}.tif", mask)
    tiles = open_dataset("folder", tmp_path / "mixed", split="all")
    free, fixed = OracleBackend(), OracleBackend(fixed_tile=32)
    batch = rng.normal(size=(2, 3, 50, 40)).astype(np.float32)
    np.testing.assert_allclose(predict_tiles(fixed, batch, chunk=3), free.predict(batch),
                               atol=1e-6)
    small = rng.normal(size=(1, 3, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(predict_tiles(fixed, small), free.predict(small), atol=1e-6)
    r_free = evaluate(free, dataset=tiles, batch_size=2)
    r_fixed = evaluate(fixed, dataset=tiles, batch_size=2)
    assert r_free.overall == r_fixed.overall
    assert r_free.overall.total == 2 * 20 * 20 + 50 * 40 + 32 * 32
    assert all(len({s[-2:]}) == 1 for s in free.shapes)  # batches hold one tile size
    assert sorted(t.name for t in r_free.tiles) == ["a", "b", "c", "d"]


def _averaged_windows(backend, batch, *, chunk=None):
    """Eval's windowing before it used predict's GridLayout / Stitcher (the reference)."""
    size = backend.fixed_tile
    n, _, h, w = batch.shape

    def starts(length):
        return [0] if length <= size else [*range(0, length - size, size), length - size]

    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
    windows = [(i, y, x) for i in range(n) for y in starts(h) for x in starts(w)]
    acc = np.zeros((n, h + ph, w + pw), np.float32)
    hits = np.zeros_like(acc)
    for k in range(0, len(windows), chunk or n):
        part = windows[k:k + (chunk or n)]
        probs = backend.predict(np.stack([batch[i, :, y:y + size, x:x + size]
                                          for i, y, x in part]))
        for (i, y, x), p in zip(part, probs, strict=True):
            acc[i, y:y + size, x:x + size] += p
            hits[i, y:y + size, x:x + size] += 1
    return (acc / np.maximum(hits, 1))[:, :h, :w]


def test_fixed_tile_windows_give_the_metrics_of_the_old_averaging(tmp_path, monkeypatch):
    """Tiles up to 3x the model tile (3 windows an axis, uneven overlaps): predict's windowing
    gives the old probabilities and metrics to 1e-6 for a pixelwise model."""
    import landslide_cli.evaluate as ev

    rng = np.random.default_rng(2)
    fixed = OracleBackend(fixed_tile=32)
    for shape in [(2, 3, 80, 70), (1, 3, 20, 90), (1, 3, 33, 100)]:
        batch = rng.normal(size=shape).astype(np.float32)
        new = predict_tiles(fixed, batch, chunk=4)
        np.testing.assert_allclose(new, _averaged_windows(fixed, batch, chunk=4), atol=1e-6)
        np.testing.assert_allclose(new, OracleBackend().predict(batch), atol=1e-6)
    for name, (h, w) in {"a": (80, 70), "b": (20, 90), "c": (96, 96)}.items():
        image, mask = _tile(rng, h, w)
        _write(tmp_path / "big" / "img" / f"{name}.tif", image)
        _write(tmp_path / "big" / "mask" / f"{name}.tif", mask)
    tiles = open_dataset("folder", tmp_path / "big", split="all")
    new = evaluate(fixed, dataset=tiles, batch_size=2)
    monkeypatch.setattr(ev, "predict_tiles", _averaged_windows)
    old = evaluate(fixed, dataset=tiles, batch_size=2)
    assert new.overall == old.overall and new.overall.total == 80 * 70 + 20 * 90 + 96 * 96
    a, b = new.to_json(), old.to_json()
    for key in ("landslide", "miou", "oa", "mean_f1", "best_threshold"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_cli_eval_on_bijie_tiles(run_cli, shared_data, tiny_checkpoint, tmp_path):
    source = shared_data / "landslides" / "bijie"
    root = tmp_path / "bijie"
    names = sorted(p.stem for p in (source / "img").iterdir())[:4]
    for name in names:
        for sub in ("img", "mask"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / sub / f"{name}.png", root / sub / f"{name}.png")
    tiles = open_dataset("folder", root, split="all")
    pixels = sum(int(np.prod(tiles.read(i)[1].shape)) for i in range(len(tiles)))
    out, table = tmp_path / "out.json", tmp_path / "out.csv"
    res = run_cli("eval", "--dataset", "folder", "--root", root, "--split", "all",
                  "--model", tiny_checkpoint, "--device", "cpu", "--json", out, "--csv", table)
    assert res.exit_code == 0, res.stderr
    assert "overall" in res.stdout and "KDA paper" in res.stdout and "tiny" in res.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) >= JSON_KEYS
    assert sum(data["confusion"].values()) == pixels == data["dataset"]["pixels"]
    values = [*data["landslide"].values(), data["background_iou"], data["miou"], data["oa"],
              data["mean_f1"]]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert list(data["per_region"]) == ["bijie"]
    assert data["model"]["sha256"] == file_sha256(tiny_checkpoint)
    assert data["model"]["backend"] == "torch" and data["model"]["device"] == "cpu"
    assert data["dataset"]["tiles"] == 4 and data["dataset"]["split"] == "all"
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [r["region"] for r in rows] == ["bijie", "overall"]
    assert int(rows[1]["tp"]) == data["confusion"]["tp"]
    assert not list(tmp_path.glob(".out.*"))  # no temp files left behind


def test_cli_eval_skip_bad_figure_and_errors(run_cli, tiny_checkpoint, tmp_path):
    root = _cas_tree(tmp_path / "CAS", missing_mask=True)
    base = ("eval", "--dataset", "cas", "--root", root, "--split", "all", "--model",
            tiny_checkpoint, "--device", "cpu")
    res = run_cli(*base)
    assert res.exit_code == 1 and "palu0031.tif" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    fig, out = tmp_path / "fig.png", tmp_path / "r.json"
    res = run_cli(*base, "--skip-bad", "--objects", "--figure", fig, "--json", out,
                  "--regions", "PALU", "--regions", "jiuzhai valley（uav-0.2m）")
    assert res.exit_code == 0, res.stderr
    assert "skipped 1" in res.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(data["per_region"]) == ["Jiuzhai valley (UAV-0.2m)", "palu"]
    assert data["dataset"]["skipped"] == 1 and "objects" in data
    for args, message in [
        (("--regions", "atlantis"), "region 'atlantis' not found"),
        (("--root", tmp_path / "nowhere"), "data set root not found"),
        (("--dataset", "nosuch"), "unknown dataset 'nosuch'"),
        (("--split", "test", "--split-mode", "random", "--skip-bad"), "is empty"),
        (("--json", tmp_path / "no" / "dir.json"), "does not exist"),
    ]:
        res = run_cli(*base, *args)
        assert res.exit_code == 1 and message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


def test_default_model_is_named_or_a_clear_error(run_cli, tmp_path):
    from landslide_cli.zoo.loading import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL in shipped_models():
        pytest.skip("a default model is bundled; covered by the model's own tests")
    root = _cas_tree(tmp_path / "CAS", n=1)
    res = run_cli("eval", "--dataset", "cas", "--root", root, "--split", "all")
    assert res.exit_code == 1 and "no default model" in res.stderr


def _split_file(path: Path, train: list[str], val: list[str]) -> Path:
    path.write_text(json.dumps({"format": "landslide-split", "version": 1, "seed": 0,
                                "mode": "random", "train": train, "val": val, "test": []}),
                    encoding="utf-8")
    return path


def _trained_checkpoint(path: Path, split_file: str, split: str = "train") -> Path:
    """A tiny random-init checkpoint whose metadata says it was trained on ``split_file``."""
    import torch

    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(0)
    arch = parse_spec("pvt_v2_b0+dcf", decoder_width=32)
    training = {"phase": "segment", "dataset": {"name": "cas", "split": split,
                                                "split_file": split_file}}
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(), name=path.stem,
                          training=training)
    return save_checkpoint(path, build_segmenter(arch).state_dict(), meta)


def test_cli_eval_warns_about_tiles_the_model_was_trained_on(run_cli, tmp_path, monkeypatch):
    root = _cas_tree(tmp_path / "CAS", n=2)
    models = tmp_path / "models"
    models.mkdir()
    # keys as split files record them (region/stem); region spelling and case do not matter
    _split_file(models / "run.split.json", train=["longxi river (UAV)/LONG0001", "palu/palu0001"],
                val=["palu/palu0002"])
    ckpt = _trained_checkpoint(models / "run.safetensors", "runs/x/run.split.json")
    out = tmp_path / "r.json"
    monkeypatch.chdir(tmp_path)  # the recorded relative path only resolves next to the model
    res = run_cli("eval", "--dataset", "cas", "--root", root, "--split", "all", "--model", ckpt,
                  "--device", "cpu", "--json", out)
    assert res.exit_code == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "training" in ln or "train split" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning:"), res.stderr
    assert "2 of 6 evaluated tile(s) are in the model's own train split" in warned[0]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["warnings"] == [warned[0].removeprefix("warning: ")]
    overlap = data["training_overlap"]
    assert overlap["checked"] and overlap["split_file"] == str(models / "run.split.json")
    assert (overlap["tiles"], overlap["in_training"], overlap["in_validation"]) == (6, 2, 1)
    assert sorted(overlap["examples"]) == ["Longxi River（UAV）/Long0001", "palu/palu0001"]

    res = run_cli("eval", "--dataset", "cas", "--root", root, "--split", "all", "--model", ckpt,
                  "--device", "cpu", "--json", out, "--regions", "jiuzhai")
    assert res.exit_code == 1 and "already exists" in res.stderr  # never silently replaced
    res = run_cli("eval", "--dataset", "cas", "--root", root, "--split", "all", "--model", ckpt,
                  "--device", "cpu", "--json", out, "--regions", "jiuzhai", "--overwrite")
    assert res.exit_code == 0 and "warning" not in res.stderr, res.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["warnings"] == [] and data["training_overlap"]["in_training"] == 0


def test_training_overlap_without_a_split_file(tmp_path):
    from landslide_cli.evaluate import training_overlap

    tiles = [("palu", "palu0001")]
    assert training_overlap({}, None, tiles) == {
        "checked": False, "reason": "the model's metadata records no training split file"}
    meta = {"training": {"dataset": {"split": "train", "split_file": "gone/split.json"}}}
    missing = training_overlap(meta, tmp_path / "m.safetensors", tiles)
    assert not missing["checked"] and "not found" in missing["reason"]
    bad = _split_file(tmp_path / "s.json", train=[], val=[])
    bad.write_text("{", encoding="utf-8")
    meta["training"]["dataset"]["split_file"] = str(bad)
    assert not training_overlap(meta, None, tiles)["checked"]
    _split_file(bad, train=["palu/palu0001"], val=[])
    meta["training"]["dataset"]["split"] = "all"  # trained on every key of the file
    assert training_overlap(meta, None, tiles)["in_training"] == 1


def test_default_model_flags_its_own_training_tiles(shared_data, tmp_path, monkeypatch):
    """The shipped model records its split file: real tiles it trained on are reported."""
    from landslide_cli.checkpoint import read_metadata
    from landslide_cli.zoo.loading import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL not in shipped_models():
        pytest.skip("no default model bundled")
    path = shipped_models()[DEFAULT_MODEL]
    split = json.loads(path.with_name(f"{DEFAULT_MODEL}.split.json").read_text("utf-8"))
    train = [k for k in split["train"] if k.startswith("bijie/")][:2]
    val = [k for k in split["val"] if k.startswith("bijie/")][:1]
    source = shared_data / "landslides" / "bijie"
    root = tmp_path / "bijie"
    for key in train + val:
        for sub in ("img", "mask"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / sub / f"{key.split('/')[1]}.png", root / sub)

    class StandIn(OracleBackend):  # the shipped model's metadata, a fast pixelwise model
        model_path = path
        model_name = DEFAULT_MODEL

    model = StandIn()
    model.metadata = read_metadata(path).to_dict()
    monkeypatch.chdir(tmp_path)
    report = evaluate(model, dataset="folder", root=root, split="all")
    overlap = report.to_json()["training_overlap"]
    assert (overlap["tiles"], overlap["in_training"], overlap["in_validation"]) == (3, 2, 1)
    assert sorted(overlap["examples"]) == sorted(train)
    assert len(report.warnings) == 1 and "2 of 3 evaluated tile(s)" in report.warnings[0]


# ----------------------------------------------------------------------- reporting


def test_evaluate_prints_nothing_and_reports_through_its_reporter(tmp_path, capfd,
                                                                   monkeypatch):
    import logging

    from _recording import RecordingReporter

    # logging as in a fresh interpreter (an in-process CLI run leaves its Rich handler there)
    logger = logging.getLogger("landslide")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", True)
    root = _cas_tree(tmp_path / "CAS", missing_mask=True)
    capfd.readouterr()
    report = evaluate(OracleBackend(), dataset="cas", root=root, split="all", skip_bad=True,
                      batch_size=2)
    assert report.skipped and capfd.readouterr() == ("", "")  # the library default is silent

    rec = RecordingReporter()
    report = evaluate(OracleBackend(), dataset="cas", root=root, split="all", skip_bad=True,
                      batch_size=2, reporter=rec)
    assert capfd.readouterr() == ("", "")
    [bar] = rec.bars
    assert bar.label == "evaluating" and bar.closed
    assert bar.total == bar.advanced == len(report.tiles)
    assert len(rec.warnings) == 1 and rec.warnings[0].startswith("skipped 1 bad tile(s)")


def test_evaluate_progress_argument_is_a_deprecated_alias(tmp_path):
    from _recording import RecordingReporter

    root = _cas_tree(tmp_path / "CAS", n=1)
    rec = RecordingReporter()
    with pytest.warns(DeprecationWarning, match="reporter="):
        evaluate(OracleBackend(), dataset="cas", root=root, split="all", progress=False,
                 reporter=rec)
    assert rec.bars == []
    calls: list[tuple[int, int]] = []
    with pytest.warns(DeprecationWarning):
        report = evaluate(OracleBackend(), dataset="cas", root=root, split="all",
                          progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(report.tiles), len(report.tiles))
