"""`landslide predict` through the CLI: real scenes with a tiny checkpoint, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from _predict_helpers import assert_clean_failure, write_tif
from rasterio.windows import Window


def _crop(src: Path, dst: Path, col: int, row: int, width: int, height: int) -> Path:
    with rasterio.open(src) as ds:
        win = Window(col, row, width, height)
        data = ds.read(window=win)
        profile = ds.profile
        profile.update(width=width, height=height, transform=ds.window_transform(win))
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def _check_inventory(out: Path, crs: str, prob: Path, threshold: float) -> None:
    layers = dict(pyogrio.list_layers(out))
    assert {"landslides", "footprints", "runs", "layer_styles"} <= set(layers)
    for layer in ("landslides", "footprints"):
        assert pyogrio.read_info(out, layer=layer)["crs"] == crs
    slides = pyogrio.read_dataframe(out, layer="landslides")
    footprint = pyogrio.read_dataframe(out, layer="footprints").geometry.iloc[0]
    assert footprint.is_valid
    assert all(footprint.covers(g) for g in slides.geometry)
    assert slides.geometry.is_valid.all()
    # polygon areas agree with the probability raster's pixel count x pixel area
    with rasterio.open(prob) as ds:
        p = ds.read(1)
        px_area = abs(ds.transform.a * ds.transform.e)
        assert ds.crs.to_string() == crs
        bounds = shapely.box(*ds.bounds)
    assert footprint.equals_exact(footprint, 0) and footprint.symmetric_difference(
        bounds).area < 1e-6 * bounds.area
    assert slides.area_m2.sum() == pytest.approx((p >= threshold).sum() * px_area)
    assert np.allclose(slides.area_m2, slides.geometry.area)
    if len(slides):
        assert (slides.max_prob >= threshold).all() and (slides.mean_prob >= threshold).all()


def test_hokkaido_scene_gives_a_valid_geopackage(run_cli, shared_data, tiny_checkpoint,
                                                 tmp_path):
    scene = _crop(shared_data / "scenes" / "hokkaido_iburi_2018_rgb.tif",
                  tmp_path / "hokkaido.tif", 700, 300, 600, 420)
    out, prob = tmp_path / "h.gpkg", tmp_path / "h_prob.tif"
    thr = 0.415  # the random tiny model sits near p=0.40; this keeps a few % of pixels
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint, "--tile", 256,
                  "--threshold", thr, "--prob-out", prob, "--prob-dtype", "float32", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["tiles"] == 6 and summary["backend"] == "torch"
    assert summary["crs"] == "EPSG:32654" and summary["peak_rss_mb"] > 0
    for key in ("scenes", "polygons", "landslide_area_m2", "seconds", "device"):
        assert key in summary
    _check_inventory(out, "EPSG:32654", prob, thr)
    assert summary["polygons"] == pyogrio.read_info(out, layer="landslides")["features"] > 0
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert runs.model_sha256.iloc[0] == summary["model_sha256"]
    assert runs.bands.iloc[0] == "1,2,3"


def test_sentinel2_with_bands_and_a_reflectance_model(run_cli, shared_data, s2_checkpoint,
                                                      tiny_checkpoint, tmp_path):
    scene = _crop(shared_data / "scenes" / "sentinel2_utm18n_b4328.tif",
                  tmp_path / "s2.tif", 500, 600, 400, 300)
    out, prob = tmp_path / "s2.gpkg", tmp_path / "s2_prob.tif"
    res = run_cli("-q", "predict", scene, "--out", out, "--model", s2_checkpoint,
                  "--bands", "1,2,3", "--tile", 256, "--prob-out", prob,
                  "--prob-dtype", "float32", "--threshold", 0.0)
    assert res.exit_code == 0, res.stderr
    _check_inventory(out, "EPSG:32618", prob, 0.0)
    slides = pyogrio.read_dataframe(out, layer="landslides")
    assert len(slides) == 1  # threshold 0: the whole crop is one polygon
    assert slides.area_m2.iloc[0] == pytest.approx(400 * 300 * 100.0)

    # an 8-bit model on 16-bit reflectance without conversion is refused, saying what it
    # expects (--rescale auto converts it: tests/predict/test_predict_radiometry.py, which also
    # covers four unnamed bands without --bands; these four are named B04 red ... B08 nir)
    res = run_cli("predict", scene, "--out", tmp_path / "x.gpkg", "--model", tiny_checkpoint,
                  "--bands", "1,2,3", "--rescale", "none")
    assert_clean_failure(res, tmp_path / "x.gpkg", "uint16", "expects uint8", "--rescale")
    res = run_cli("predict", scene, "--out", tmp_path / "z.gpkg", "--model", s2_checkpoint,
                  "--bands", "1,2,9")
    assert_clean_failure(res, tmp_path / "z.gpkg", "band 9")


# ----------------------------------------------------------------------- bad input


@pytest.fixture
def small_rgb(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_tif(tmp_path / "small.tif", rng.integers(0, 255, (3, 100, 80), np.uint8))


def test_missing_scene(run_cli, tmp_path, tiny_checkpoint):
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", tmp_path / "nope.tif", "--out", out, "--model", tiny_checkpoint)
    assert_clean_failure(res, out, "not found", "nope.tif")


def test_not_a_raster(run_cli, tmp_path, tiny_checkpoint):
    text = tmp_path / "notes.tif"
    text.write_text("these are not pixels\n")
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", text, "--out", out, "--model", tiny_checkpoint)
    assert_clean_failure(res, out, "notes.tif", "not a raster")


def test_truncated_tiff(run_cli, tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    good = write_tif(tmp_path / "good.tif", rng.integers(0, 255, (3, 200, 200), np.uint8),
                     compress="deflate")
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "o.gpkg"
    res = run_cli("-q", "predict", bad, "--out", out, "--model", tiny_checkpoint, "--tile", 64)
    assert_clean_failure(res, out, "truncated.tif")


def test_raster_without_crs_warns_and_succeeds_padded(run_cli, tmp_path, tiny_checkpoint):
    # also a scene smaller than the tile: one padded window
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=70, height=60, count=3,
                       dtype="uint8") as ds:
        ds.write(np.full((3, 60, 70), 90, np.uint8))
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", path, "--out", out, "--model", tiny_checkpoint, "--tile", 128,
                  "--json")
    assert res.exit_code == 0, res.stderr
    assert "warning:" in res.stderr and "no CRS" in res.stderr
    assert json.loads(res.stdout)["tiles"] == 1
    assert pyogrio.read_info(out, layer="footprints")["crs"] is None
    fp = pyogrio.read_dataframe(out, layer="footprints").geometry.iloc[0]
    assert fp.bounds == (0.0, 0.0, 70.0, 60.0)  # pixel coordinates


def test_wrong_band_count(run_cli, tmp_path, tiny_checkpoint):
    two = write_tif(tmp_path / "two.tif", np.zeros((2, 40, 40), np.uint8))
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", two, "--out", out, "--model", tiny_checkpoint)
    assert_clean_failure(res, out, "2 bands", "expects 3 bands")


def test_unsupported_dtype(run_cli, tmp_path, tiny_checkpoint):
    flt = write_tif(tmp_path / "float.tif", np.zeros((3, 40, 40), np.float32))
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", flt, "--out", out, "--model", tiny_checkpoint, "--rescale", "none")
    assert_clean_failure(res, out, "float32", "expects uint8", "--rescale")


def test_all_nodata_scene(run_cli, tmp_path, tiny_checkpoint):
    empty = write_tif(tmp_path / "empty.tif", np.zeros((3, 50, 50), np.uint8), nodata=0)
    out = tmp_path / "o.gpkg"
    res = run_cli("-q", "predict", empty, "--out", out, "--model", tiny_checkpoint,
                  "--tile", 64)
    assert_clean_failure(res, out, "no valid pixels")


def test_missing_output_folder(run_cli, small_rgb, tmp_path, tiny_checkpoint):
    out = tmp_path / "no" / "such" / "o.gpkg"
    res = run_cli("predict", small_rgb, "--out", out, "--model", tiny_checkpoint)
    assert_clean_failure(res, out, "does not exist")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write into read-only folders")
def test_unwritable_output_folder(run_cli, small_rgb, tmp_path, tiny_checkpoint):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        out = folder / "o.gpkg"
        res = run_cli("predict", small_rgb, "--out", out, "--model", tiny_checkpoint)
        assert_clean_failure(res, out, "cannot write")
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_folder_refusing_writes(run_cli, small_rgb, tiny_checkpoint):
    out = Path("/proc/landslide-test.gpkg")  # exists, is a folder, never writable
    res = run_cli("predict", small_rgb, "--out", out, "--model", tiny_checkpoint)
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert "cannot write" in res.stderr and not out.exists()


def test_existing_output_needs_overwrite(run_cli, small_rgb, tmp_path, tiny_checkpoint):
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    res = run_cli("predict", small_rgb, "--out", out, "--model", tiny_checkpoint)
    assert res.exit_code != 0 and "already exists" in res.stderr and "--overwrite" in res.stderr
    assert out.read_bytes() == b"precious"
    prob = tmp_path / "p.tif"
    prob.write_bytes(b"also precious")
    res = run_cli("predict", small_rgb, "--out", tmp_path / "n.gpkg", "--model",
                  tiny_checkpoint, "--prob-out", prob)
    assert res.exit_code != 0 and "already exists" in res.stderr
    assert prob.read_bytes() == b"also precious" and not (tmp_path / "n.gpkg").exists()


def test_corrupt_model(run_cli, small_rgb, tmp_path):
    model = tmp_path / "broken.safetensors"
    model.write_bytes(os.urandom(2048))
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", small_rgb, "--out", out, "--model", model)
    assert_clean_failure(res, out, "broken.safetensors")


def test_default_model_missing_is_a_clear_error(run_cli, small_rgb, tmp_path):
    from landslide_cli.zoo.loading import DEFAULT_MODEL, shipped_models

    if DEFAULT_MODEL in shipped_models():
        pytest.skip("a default model is bundled")
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", small_rgb, "--out", out)
    assert_clean_failure(res, out, "--model")


def test_bad_options(run_cli, small_rgb, tmp_path, tiny_checkpoint):
    out = tmp_path / "o.gpkg"
    for args, words in [(["--overlap", "0.95"], ["overlap"]),
                        (["--bands", "a,b"], ["--bands"]),
                        (["--crs", "EPSG:999999"], ["--crs"]),
                        (["--prob-dtype", "int16"], ["prob-dtype"]),
                        (["--tile", "0"], ["--tile 0", "at least 16"]),
                        (["--tile", "-256"], ["--tile -256", "at least 16"]),
                        (["--tile", "8"], ["--tile 8", "at least 16"]),
                        (["--backend", "tensorflow"], ["choose one of: auto, torch, onnx"])]:
        res = run_cli("predict", small_rgb, "--out", out, "--model", tiny_checkpoint, *args)
        assert_clean_failure(res, out, *words)
    res = run_cli("predict", small_rgb, "--out", tmp_path / "o.shp", "--model",
                  tiny_checkpoint)
    assert_clean_failure(res, tmp_path / "o.shp", ".gpkg")
