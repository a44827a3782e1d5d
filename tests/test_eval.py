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
                      objects=True, progress=False, batch_size=2)
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
                    regions="longxi river (uav)", threshold=0.9, progress=False)
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
    r_free = evaluate(free, dataset=tiles, progress=False, batch_size=2)
    r_fixed = evaluate(fixed, dataset=tiles, progress=False, batch_size=2)
    assert r_free.overall == r_fixed.overall
    assert r_free.overall.total == 2 * 20 * 20 + 50 * 40 + 32 * 32
    assert all(len({s[-2:]}) == 1 for s in free.shapes)  # batches hold one tile size
    assert sorted(t.name for t in r_free.tiles) == ["a", "b", "c", "d"]


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
        (("--json", tmp_path / "no" / "dir.json"), "folder does not exist"),
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
