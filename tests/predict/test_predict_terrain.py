"""``predict --dem``: terrain bands (slope, elevation) made from a DEM in another CRS and
resolution, window by window on the scene's grid; the errors of a missing or useless DEM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from _predict_helpers import ConvStandIn, assert_clean_failure, make_checkpoint, write_tif
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.predict import predict_scenes
from landslide_cli.predict.raster import open_scene
from landslide_cli.predict.terrain import open_dem, plan_terrain
from landslide_cli.preprocess import InputSpec
from landslide_cli.terrain import slope_degrees

H, W, PIXEL = 48, 56, 2.0
X0, Y0 = 500000.0, 4000000.0
SCENE_CRS = "EPSG:32633"
RGBS = InputSpec(bands=["red", "green", "blue", "slope"], mean=[0.485, 0.456, 0.406, 20.0],
                 std=[0.229, 0.224, 0.225, 10.0], tile=32)


def _scene(tmp_path: Path, crs: str | None = SCENE_CRS) -> Path:
    rng = np.random.default_rng(0)
    return write_tif(tmp_path / "scene.tif", rng.integers(0, 255, (3, H, W), np.uint8), crs=crs,
                     transform=from_origin(X0, Y0, PIXEL, PIXEL))


def _geographic_dem(tmp_path: Path, height_of, *, margin: float = 4e-4, res: float = 3e-5,
                    name: str = "dem.tif", crs: str | None = "EPSG:4326",
                    nodata_box: tuple[float, float, float, float] | None = None) -> Path:
    """A DEM in longitude/latitude (~3 m pixels) covering the scene plus ``margin`` degrees;
    ``height_of(easting, northing)`` (scene CRS metres) gives the elevation; pixels whose
    scene coordinates fall in ``nodata_box`` (E0, E1, N0, N1) are nodata."""
    west, south, east, north = transform_bounds(SCENE_CRS, "EPSG:4326", X0, Y0 - H * PIXEL,
                                                X0 + W * PIXEL, Y0)
    west, south, east, north = west - margin, south - margin, east + margin, north + margin
    dw, dh = math.ceil((east - west) / res), math.ceil((north - south) / res)
    cols, rows = np.meshgrid(np.arange(dw) + 0.5, np.arange(dh) + 0.5)
    e, n = warp_points("EPSG:4326", SCENE_CRS, (west + cols * res).ravel().tolist(),
                       (north - rows * res).ravel().tolist())
    e, n = np.asarray(e).reshape(dh, dw), np.asarray(n).reshape(dh, dw)
    z = height_of(e, n).astype(np.float32)
    if nodata_box is not None:
        e0, e1, n0, n1 = nodata_box
        z[(e >= e0) & (e <= e1) & (n >= n0) & (n <= n1)] = -9999.0
    path = tmp_path / name
    with rasterio.open(path, "w", driver="GTiff", width=dw, height=dh, count=1,
                       dtype="float32", crs=crs, transform=from_origin(west, north, res, res),
                       nodata=-9999.0) as ds:
        ds.write(z, 1)
    return path


def _ramp(e, n):
    return 300.0 + 0.1 * (e - X0)  # a 10 % ramp rising to the east


def _step(e, n):
    """Flat west of the scene's middle, 45 degrees (100 %) east of it."""
    return 500.0 + np.maximum(e - (X0 + W * PIXEL / 2), 0.0)


def _source(scene: Path, dem: Path, spec: InputSpec = RGBS):
    return plan_terrain(spec, open_dem(dem), open_scene(scene), scene.name)


# ------------------------------------------------------------------------ reading windows


def test_geographic_dem_gives_metric_slope_and_seamless_windows(tmp_path):
    scene = _scene(tmp_path)
    dem = _geographic_dem(tmp_path, _ramp)
    spec = InputSpec(bands=["red", "green", "blue", "slope", "dem"], mean=[0.5] * 5,
                     std=[0.2] * 5)
    src = _source(scene, dem, spec)
    assert (src.dx, src.dy) == (PIXEL, PIXEL) and src.kinds == ("slope", "dem")
    with src.open() as reader:
        whole, valid = reader.read(0, 0, H, W)
        assert valid is None
        # the slope of a 10 % ramp, although the DEM's pixels are degrees
        assert whole[0] == pytest.approx(math.degrees(math.atan(0.1)), abs=0.01)
        cols = X0 + (np.arange(W) + 0.5) * PIXEL
        assert whole[1] == pytest.approx(np.broadcast_to(_ramp(cols, 0.0), (H, W)), abs=0.01)
        out = np.full_like(whole, np.nan)
        for y0 in range(0, H, 13):
            for x0 in range(0, W, 17):
                h, w = min(13, H - y0), min(17, W - x0)
                out[:, y0:y0 + h, x0:x0 + w] = reader.read(y0, x0, h, w)[0]
    np.testing.assert_array_equal(out, whole)  # window by window == the whole scene


def test_dem_on_the_scene_grid_equals_whole_array_slope(tmp_path):
    """A DEM with exactly the scene's grid: the slope is Horn's on the DEM array itself, the
    scene's edge repeated beyond it (no DEM there)."""
    scene = _scene(tmp_path)
    rng = np.random.default_rng(1)
    z = np.cumsum(np.cumsum(rng.normal(size=(H, W)), 0), 1).astype(np.float32) + 100
    dem = write_tif(tmp_path / "same.tif", z[None], crs=SCENE_CRS,
                    transform=from_origin(X0, Y0, PIXEL, PIXEL))
    src = _source(scene, dem, InputSpec(bands=["slope", "elevation"], band_indices=None,
                                        mean=[0, 0], std=[1, 1]))
    with src.open() as reader:
        got, valid = reader.read(0, 0, H, W)
        part, _ = reader.read(10, 0, 20, 30)
    assert valid is None
    np.testing.assert_allclose(got[0], slope_degrees(z, PIXEL, PIXEL), atol=1e-4)
    np.testing.assert_array_equal(got[1], z)
    np.testing.assert_array_equal(part, got[:, 10:30, :30])


# ------------------------------------------------------------------------ predict


@pytest.mark.parametrize("bands", [["red", "green", "blue", "slope"],
                                   ["slope", "red", "green", "blue"]])
def test_slope_reaches_the_model_at_its_position(tmp_path, bands):
    """A stand-in that only looks at the slope band fires on the steep half of the scene."""
    scene = _scene(tmp_path)
    dem = _geographic_dem(tmp_path, _step)
    k = bands.index("slope")
    spec = InputSpec(bands=bands, mean=[0.5 if b != "slope" else 20.0 for b in bands],
                     std=[0.2 if b != "slope" else 10.0 for b in bands], tile=32)
    weight = [0.0] * 4
    weight[k] = 4.0  # (slope - 20) / 10 * 4: flat -8, 45 degrees +10
    model = ConvStandIn(spec, weight=weight)
    out, prob = tmp_path / "x.gpkg", tmp_path / "p.tif"
    summary = predict_scenes(scene, out, model=model, dem=dem, prob_out=prob,
                             prob_dtype="float32", overlap=0.25)
    with rasterio.open(prob) as ds:
        p = ds.read(1)
    assert p[:, : W // 2 - 2].max() < 0.01 and p[:, W // 2 + 2:].min() > 0.99
    assert summary.polygons == 1 and summary.scenes[0].dem == str(dem)
    slides = pyogrio.read_dataframe(out, layer="landslides")
    minx, _, maxx, _ = shapely.total_bounds(slides.geometry.values)
    assert minx >= X0 + (W // 2 - 2) * PIXEL and maxx == X0 + W * PIXEL
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert runs["dem"].tolist() == [str(dem)]


def test_dem_nodata_makes_pixels_invalid(tmp_path):
    scene = _scene(tmp_path)
    hole = (X0 + 20, X0 + 40, Y0 - 40, Y0 - 20)  # a 20 m x 20 m hole in the DEM
    dem = _geographic_dem(tmp_path, _ramp, nodata_box=hole)
    model = ConvStandIn(RGBS, weight=[0, 0, 0, 0], bias=5.0)  # landslide everywhere valid
    out = tmp_path / "x.gpkg"
    summary = predict_scenes(scene, out, model=model, dem=dem)
    lost = H * W - summary.scenes[0].valid_pixels
    assert 100 <= lost <= 250  # ~10 x 10 pixels and the slope's 1-pixel rim around them
    fp = pyogrio.read_dataframe(out, layer="footprints").geometry.values[0]
    assert len(fp.geoms[0].interiors) == 1 if fp.geom_type == "MultiPolygon" else \
        len(fp.interiors) == 1


def test_regional_runner_in_process_matches(tmp_path):
    from landslide_cli.predict.distributed import predict_distributed

    scene = _scene(tmp_path)
    dem = _geographic_dem(tmp_path, _step)
    model = ConvStandIn(RGBS, weight=[0, 0, 0, 4.0])
    a = predict_scenes(scene, tmp_path / "a.gpkg", model=model, dem=dem)
    b = predict_distributed(scene, tmp_path / "b.gpkg", model=model, dem=dem)
    assert (a.polygons, a.landslide_area_m2) == (b.polygons, b.landslide_area_m2)
    assert b.polygons == 1


def test_cli_tiny_rgb_slope_model_writes_a_geopackage(run_cli, tmp_path):
    """A random-init 4-band (RGB + slope) checkpoint and a DEM in lon/lat at ~3 m for a 2 m
    UTM scene: a valid GeoPackage."""
    ckpt = make_checkpoint(tmp_path / "rgbs.safetensors", input_spec=RGBS)
    scene = _scene(tmp_path)
    dem = _geographic_dem(tmp_path, _step)
    out = tmp_path / "slides.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", ckpt, "--dem", dem,
                  "--backend", "torch", "--tile", "32", "--threshold", "0", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["scenes"][0]["dem"] == str(dem) and summary["tiles"] > 0
    layers = dict(pyogrio.list_layers(out))
    assert {"landslides", "footprints", "runs"} <= set(layers)
    slides = pyogrio.read_dataframe(out, layer="landslides")
    assert len(slides) == 1 and str(slides.crs) == SCENE_CRS  # threshold 0: the whole scene
    assert slides.geometry.values[0].area == pytest.approx(H * W * PIXEL**2)
    assert pyogrio.read_dataframe(out, layer="runs")["dem"].tolist() == [str(dem)]


# ------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def rgbs_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("rgbs") / "rgbs.safetensors",
                           input_spec=RGBS)


def test_model_with_slope_needs_a_dem(run_cli, tmp_path, rgbs_checkpoint):
    out = tmp_path / "x.gpkg"
    res = run_cli("predict", _scene(tmp_path), "--out", out, "--model", rgbs_checkpoint)
    assert_clean_failure(res, out, "terrain band", "slope (degrees)", "--dem")


def test_dem_for_a_model_without_terrain_band(run_cli, tmp_path, tiny_checkpoint):
    dem = _geographic_dem(tmp_path, _ramp)
    out = tmp_path / "x.gpkg"
    res = run_cli("predict", _scene(tmp_path), "--out", out, "--model", tiny_checkpoint,
                  "--dem", dem)
    assert_clean_failure(res, out, "no terrain band", "red, green, blue", "leave --dem out")


def test_dem_that_does_not_cover_the_scene(run_cli, tmp_path, rgbs_checkpoint):
    scene = _scene(tmp_path)
    half = write_tif(tmp_path / "half.tif", np.zeros((1, H // 2, W), np.float32),
                     crs=SCENE_CRS, transform=from_origin(X0, Y0, PIXEL, PIXEL))
    out = tmp_path / "x.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", rgbs_checkpoint, "--dem", half)
    assert_clean_failure(res, out, "does not cover scene.tif", "covers 5")  # ~51 % of the centres
    far = write_tif(tmp_path / "far.tif", np.zeros((1, 10, 10), np.float32), crs="EPSG:4326",
                    transform=from_origin(100.0, 10.0, 0.01, 0.01))
    res = run_cli("predict", scene, "--out", out, "--model", rgbs_checkpoint, "--dem", far)
    assert_clean_failure(res, out, "does not cover", "covers 0 %")


def test_dem_without_crs_missing_or_not_a_raster(run_cli, tmp_path, rgbs_checkpoint):
    scene = _scene(tmp_path)
    out = tmp_path / "x.gpkg"
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=W, height=H, count=1,
                       dtype="float32") as ds:
        ds.write(np.zeros((1, H, W), np.float32))
    res = run_cli("predict", scene, "--out", out, "--model", rgbs_checkpoint, "--dem", bare)
    assert_clean_failure(res, out, "bare.tif has no CRS", "georeference")
    res = run_cli("predict", scene, "--out", out, "--model", rgbs_checkpoint, "--dem",
                  tmp_path / "nope.tif")
    assert_clean_failure(res, out, "--dem", "not found")
    text = tmp_path / "notes.tif"
    text.write_text("no pixels here\n")
    res = run_cli("predict", scene, "--out", out, "--model", rgbs_checkpoint, "--dem", text)
    assert_clean_failure(res, out, "--dem", "not a raster")


def test_scene_without_crs_with_a_dem(tmp_path):
    scene = _scene(tmp_path, crs=None)
    dem = _geographic_dem(tmp_path, _ramp)
    with pytest.raises(DataError, match=r"scene\.tif has no CRS, so the DEM cannot be placed"):
        predict_scenes(scene, tmp_path / "x.gpkg", model=ConvStandIn(RGBS), dem=dem)
    with pytest.raises(LandslideError, match="all terrain bands"):
        predict_scenes(_scene(tmp_path), tmp_path / "y.gpkg", dem=dem,
                       model=ConvStandIn(InputSpec(bands=["slope"], mean=[0], std=[1])))
    assert not (tmp_path / "x.gpkg").exists() and not (tmp_path / "y.gpkg").exists()
