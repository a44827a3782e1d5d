"""Weight-free baselines (``baseline:rg`` ...): scores, metadata, and the eval/predict paths."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from landslide_cli.backends import open_backend
from landslide_cli.baselines import (
    BASELINES,
    THRESHOLD_SOURCE,
    BaselineBackend,
    baseline_name,
    is_baseline,
    list_baselines,
)
from landslide_cli.data import open_dataset
from landslide_cli.errors import LandslideError
from landslide_cli.evaluate import evaluate
from landslide_cli.preprocess import InputSpec, normalize

RED, GREEN = (200, 60, 40), (60, 140, 50)


def _scores(backend: BaselineBackend, rgb: list[tuple[int, int, int]]) -> np.ndarray:
    """Scores of single 8-bit RGB pixels through the backend's own normalization."""
    raw = np.array(rgb, dtype=np.uint8).T.reshape(1, 3, 1, len(rgb))
    return backend.predict(normalize(raw, backend.spec))[0, 0]


def test_rg_score_is_the_mapped_normalized_difference():
    be = BaselineBackend("baseline:rg")
    got = _scores(be, [(255, 0, 0), (0, 255, 0), (128, 128, 128), (0, 0, 0), (200, 100, 7)])
    want = [1.0, 0.0, 0.5, 0.5, 0.5 * ((200 - 100) / 300 + 1)]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rg_score_is_monotone_in_the_index():
    be = BaselineBackend("baseline:rg")
    rng = np.random.default_rng(0)
    rgb = [tuple(int(v) for v in p) for p in rng.integers(1, 256, (500, 3))]
    index = np.array([(r - g) / (r + g) for r, g, _ in rgb])
    score = _scores(be, rgb)
    order = np.argsort(index)
    assert np.all(np.diff(score[order]) >= -1e-6)


@pytest.mark.parametrize("name", BASELINES.names())
def test_every_baseline_scores_in_unit_range_and_separates_red_from_green(name):
    be = BaselineBackend(f"baseline:{name}")
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    raw[0, :, :2] = 0
    raw[1, :, :2] = 255
    score = be.predict(normalize(raw, be.spec))
    assert score.shape == (2, 16, 16) and score.dtype == np.float32
    assert score.min() >= 0.0 and score.max() <= 1.0
    if name != "brightness":  # brightness does not look at colour
        red, green = _scores(be, [RED, GREEN])
        assert red > be.threshold > green


def test_normalization_of_the_spec_is_undone_exactly():
    imagenet = BaselineBackend("baseline:rg", spec=InputSpec())  # ImageNet mean/std
    plain = BaselineBackend("baseline:rg")
    raw = np.random.default_rng(2).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    np.testing.assert_allclose(imagenet.predict(normalize(raw, imagenet.spec)),
                               plain.predict(normalize(raw, plain.spec)), atol=1e-5)


def test_bands_are_picked_by_name():
    spec = InputSpec(bands=["blue", "green", "red"], mean=[0.0] * 3, std=[1.0] * 3)
    be = BaselineBackend("baseline:rg", spec=spec)
    raw = np.array([10, 20, 250], dtype=np.uint8).reshape(1, 3, 1, 1)  # B, G, R
    assert be.predict(normalize(raw, spec))[0, 0, 0] > 0.9


def test_metadata_and_identity():
    be = open_backend("baseline:rg")
    assert isinstance(be, BaselineBackend)
    assert (be.name, be.device, be.model_name, be.fixed_tile) == ("baseline", "cpu",
                                                                  "baseline:rg", None)
    assert be.threshold == BASELINES.entry("rg").info["threshold"] == 0.516
    meta = be.metadata
    assert meta["kind"] == "baseline" and meta["name"] == "baseline:rg"
    assert meta["threshold"] == be.threshold
    assert meta["classes"] == ["background", "landslide"]
    assert meta["training"] == {"weights": None, "threshold_source": THRESHOLD_SOURCE}
    assert meta["extra"]["formula"] == "((R - G) / (R + G) + 1) / 2"
    assert InputSpec.from_dict(meta["input"]).bands == ["red", "green", "blue"]
    assert re.fullmatch(r"[0-9a-f]{64}", be.model_sha256)
    assert BaselineBackend("Baseline:RG").model_sha256 == be.model_sha256  # stable, case-free
    assert BaselineBackend("baseline:exr").model_sha256 != be.model_sha256
    assert json.dumps(meta)  # plain JSON, like a checkpoint's metadata


def test_references_and_errors():
    assert is_baseline("baseline:rg") and is_baseline(" BASELINE:exg")
    assert not is_baseline("landslide-pvtb0-dcf-v1") and not is_baseline(None)
    assert baseline_name("baseline:red-green") == "rg"
    with pytest.raises(LandslideError, match=r"unknown baseline 'nope'; choose one of: rg"):
        open_backend("baseline:nope")
    with pytest.raises(LandslideError, match="name a baseline"):
        open_backend("baseline:")
    with pytest.raises(LandslideError, match="weight-free baseline"):
        open_backend("baseline:rg", backend="torch")
    with pytest.raises(LandslideError, match="needs red, green and blue"):
        BaselineBackend("baseline:rg", spec=InputSpec(bands=["nir"], mean=[0.0], std=[1.0]))


def test_listed_by_models(run_cli):
    names = [row["name"] for row in list_baselines()]
    assert names[0] == "baseline:rg" and "baseline:exr" in names
    result = run_cli("models", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)["baselines"]
    assert {"name": "baseline:rg", **BASELINES.entry("rg").info} in rows
    result = run_cli("info", "baseline:rg")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: baseline:rg is a weight-free colour index (no parameters or FLOPs to count); "
        "`landslide models` shows its formula and threshold"]


# ------------------------------------------------------------------------- eval and predict


def _write(path: Path, array: np.ndarray, **profile: object) -> Path:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    arr = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                           count=arr.shape[0], dtype="uint8", **profile) as dst:
            dst.write(arr)
    return path


def _scar(h: int, w: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Green vegetation with one red-brown bare rectangle (y0, y1, x0, x1)."""
    mask = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 1
    image = np.empty((3, h, w), np.uint8)
    for c in range(3):
        image[c] = np.where(mask > 0, RED[c], GREEN[c])
    return image, mask


def test_evaluate_synthetic_folder(tmp_path):
    for k, box in enumerate([(4, 20, 4, 20), (10, 30, 0, 12)]):
        image, mask = _scar(32, 32, box)
        _write(tmp_path / "img" / f"t{k}.tif", image)
        _write(tmp_path / "mask" / f"t{k}.tif", mask)
    report = evaluate("baseline:rg", dataset="folder", root=tmp_path, split="all")
    assert report.overall.compute()["iou"] == 1.0
    assert report.threshold == 0.516
    assert report.model["name"] == "baseline:rg" and report.model["backend"] == "baseline"
    assert report.model["architecture"] is None
    # a threshold above every score predicts nothing
    assert evaluate("baseline:rg", dataset="folder", root=tmp_path, split="all",
                    threshold=0.99).overall.tp == 0


def test_evaluate_real_hokkaido_tiles(shared_data):
    tiles = open_dataset("folder", shared_data / "landslides", split="all", regions="hokkaido")
    report = evaluate("baseline:rg", tiles)
    m = report.overall.compute()
    # measured 77.0 IoU (P 88.9, R 85.2) at the default threshold 0.516 (docs/benchmarks.md)
    assert len(report.tiles) == 20
    assert 0.74 < m["iou"] < 0.80 and 0.85 < m["precision"] < 0.92


def test_eval_cli_threshold(run_cli, tmp_path):
    image, mask = _scar(32, 32, (4, 20, 4, 20))
    _write(tmp_path / "img" / "a.tif", image)
    _write(tmp_path / "mask" / "a.tif", mask)
    out = tmp_path / "r.json"
    result = run_cli("--quiet", "eval", "--root", tmp_path, "--split", "all", "--model",
                     "baseline:rg", "--threshold", "0.6", "--json", out)
    assert result.exit_code == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["threshold"] == 0.6 and data["model"]["name"] == "baseline:rg"
    assert data["landslide"]["iou"] == 1.0


def test_predict_synthetic_geotiff(run_cli, tmp_path):
    from affine import Affine

    image, _ = _scar(96, 80, (20, 50, 10, 40))  # 30 x 30 px scar at 2 m: 3600 m²
    scene = _write(tmp_path / "scene.tif", image, crs="EPSG:32633",
                   transform=Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4000000.0))
    out = tmp_path / "slides.gpkg"
    result = run_cli("predict", scene, "--out", out, "--model", "baseline:rg", "--tile", "64",
                     "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == "baseline:rg" and summary["backend"] == "baseline"
    assert summary["threshold"] == 0.516 and summary["polygons"] == 1
    assert summary["landslide_area_m2"] == pytest.approx(3600.0)
    import pyogrio

    runs = pyogrio.read_dataframe(out, layer="runs", read_geometry=False)
    assert list(runs["model"]) == ["baseline:rg"]
    assert list(runs["model_sha256"]) == [BaselineBackend("baseline:rg").model_sha256]


def test_index_score_maps_nan_and_infinities_and_leaves_inputs_alone():
    """Scores outside [0, 1] are clipped, NaN counts as 0 and ±inf as 0 / 1; the caller's
    bands are never touched (negative values stay negative), also not when the score
    returns one of the (already clamped) bands itself."""
    from landslide_cli.baselines import index_score

    r = np.array([-0.5, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    g = np.zeros_like(r)
    raw = np.array([np.nan, np.inf, -np.inf, 2.0, 0.25], dtype=np.float32)
    got = index_score(lambda r, g, b: raw.copy(), r, g, g)
    np.testing.assert_array_equal(got, [0.0, 1.0, 0.0, 1.0, 0.25])
    assert got.dtype == np.float32 and r[0] == -0.5
    clamped = index_score(lambda r, g, b: r, r.copy(), g, g)
    np.testing.assert_array_equal(clamped, np.array([0.0, 0.2, 0.3, 0.4, 0.5], np.float32))
    big = np.array([0.5, 3.0], dtype=np.float32)
    same = index_score(lambda r, g, b: r, big, big, big, clamped=True)
    np.testing.assert_array_equal(same, np.array([0.5, 1.0], np.float32))
    assert big[1] == 3.0


def test_normalize_writes_bands_and_derived_channels_into_out():
    """``normalize(..., out=)`` fills a batch slot in place with exactly what the plain call
    returns (bands, then the derived index channels, 0 where invalid), and refuses a slot of
    the wrong shape or dtype."""
    spec = InputSpec(mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25], derived=["rg"])
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    valid = rng.random((16, 16)) > 0.2
    want = normalize(raw, spec, valid)
    batch = np.full((2, 4, 16, 16), 7.0, dtype=np.float32)
    got = normalize(raw, spec, valid, out=batch[1])
    assert got is batch[1] or np.shares_memory(got, batch)
    np.testing.assert_array_equal(batch[1], want)
    assert (batch[0] == 7.0).all()
    np.testing.assert_array_equal(want[3][~valid], 0.0)
    with pytest.raises(LandslideError, match="expected float32"):
        normalize(raw, spec, out=np.empty((3, 16, 16), np.float32))
    with pytest.raises(LandslideError, match="expected float32"):
        normalize(raw, spec, out=np.empty((4, 16, 16), np.float64))
