"""Resolution awareness: ground sampling distance, the model-range warning, --resample-to."""

from __future__ import annotations

import json
import math

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from _predict_helpers import ConvStandIn, bright_standin, make_checkpoint, write_tif
from _recording import RecordingReporter
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.predict import PredictOptions, predict_scenes
from landslide_cli.predict.resample import (
    WindowResampler,
    axis_weights,
    check_resolution,
    ground_sampling,
    parse_resample_to,
    resize,
)
from landslide_cli.preprocess import InputSpec

MODEL_RANGE = [0.2, 3.0]


def _model(**kw) -> ConvStandIn:
    """The bright-band stand-in with a 0.2-3 m resolution range."""
    m = bright_standin()
    m.spec = InputSpec(resolution_m=list(MODEL_RANGE), **kw)
    return m


def _step_scene(tmp_path, *, pixel=10.0, h=70, w=90, box=(17, 23, 41, 67), crs="EPSG:32633"):
    """Dark scene with one bright pixel-aligned rectangle (rows y0:y1, cols x0:x1)."""
    raw = np.full((3, h, w), 30, np.uint8)
    y0, y1, x0, x1 = box
    raw[:, y0:y1, x0:x1] = 220
    transform = from_origin(400000.0, 5000000.0, pixel, pixel)
    return write_tif(tmp_path / "scene.tif", raw, crs=crs, transform=transform), transform


# ----------------------------------------------------------------------- ground sampling


def test_gsd_projected_from_transform_and_linear_unit():
    utm = ground_sampling(CRS.from_epsg(32618), from_origin(5e5, 4e6, 10.0, 10.0), 100, 100)
    assert (utm.x_m, utm.y_m, utm.mean_m) == (10.0, 10.0, 10.0)
    # NAD83 / New York Long Island (ftUS): 3 US survey feet
    ft = ground_sampling(CRS.from_epsg(2263), from_origin(1e6, 2e5, 3.0, 3.0), 10, 10)
    assert ft.x_m == pytest.approx(3 * 1200 / 3937, rel=1e-9)
    # rotated 30 degrees, 4 m x 2 m pixels: the column/row vectors keep their lengths
    rot = Affine.translation(5e5, 4e6) * Affine.rotation(30) * Affine.scale(4.0, -2.0)
    g = ground_sampling(CRS.from_epsg(32633), rot, 10, 10)
    assert (g.x_m, g.y_m) == (pytest.approx(4.0), pytest.approx(2.0))
    assert g.mean_m == pytest.approx(math.sqrt(8.0))
    assert ground_sampling(None, from_origin(0, 0, 1, 1), 10, 10) is None


@pytest.mark.parametrize("lat", [0.0, 45.0, -63.5])
def test_gsd_geographic_matches_geodesic_distances(lat):
    from pyproj import Geod

    d = 1e-4  # ~11 m
    w, h = 200, 100
    t = from_origin(10.0 - w / 2 * d, lat + h / 2 * d, d, d)  # centred on (10, lat)
    g = ground_sampling(CRS.from_epsg(4326), t, w, h)
    geod = Geod(ellps="WGS84")
    _, _, east = geod.inv(10.0 - d / 2, lat, 10.0 + d / 2, lat)
    _, _, north = geod.inv(10.0, lat - d / 2, 10.0, lat + d / 2)
    assert g.x_m == pytest.approx(east, rel=1e-6)
    assert g.y_m == pytest.approx(north, rel=1e-6)


# ----------------------------------------------------------------------- the check


def test_check_resolution_auto_picks_the_nearest_end_and_words_the_warning():
    from landslide_cli.predict.resample import GroundSampling as G

    coarse = check_resolution("s2.tif", G(10, 10), MODEL_RANGE, None)
    assert coarse.target_m is None
    assert "s2.tif" in coarse.warning and "10 m" in coarse.warning
    assert "0.2–3 m" in coarse.warning and "--resample-to auto" in coarse.warning
    assert "\n" not in coarse.warning
    assert check_resolution("s", G(10, 10), MODEL_RANGE, "auto").target_m == 3.0
    assert check_resolution("s", G(10, 10), MODEL_RANGE, "auto").warning is None
    assert check_resolution("s", G(0.05, 0.05), MODEL_RANGE, "auto").target_m == 0.2
    inside = check_resolution("s", G(1, 1), MODEL_RANGE, "auto")
    assert (inside.target_m, inside.warning) == (None, None)
    assert check_resolution("s", G(3.01, 3.01), MODEL_RANGE, None).warning is None  # 1 % slack
    still = check_resolution("s", G(10, 10), MODEL_RANGE, 5.0)
    assert still.target_m == 5.0 and "still outside" in still.warning
    assert check_resolution("s", G(2, 2), MODEL_RANGE, 2.0).target_m is None  # already there
    unknown = check_resolution("s", G(10, 10), None, "auto")  # model without a range
    assert (unknown.target_m, unknown.warning) == (None, None)
    with pytest.raises(DataError, match="no CRS"):
        check_resolution("plain.tif", None, MODEL_RANGE, 3.0)


@pytest.mark.parametrize(("value", "parsed"), [
    (None, None), ("none", None), ("auto", "auto"), ("AUTO", "auto"), ("3", 3.0),
    ("0.5m", 0.5), (2, 2.0)])
def test_parse_resample_to(value, parsed):
    assert parse_resample_to(value) == parsed


@pytest.mark.parametrize("bad", ["fast", "-1", "0", "nan"])
def test_parse_resample_to_refuses_nonsense(bad):
    with pytest.raises(LandslideError, match="--resample-to"):
        parse_resample_to(bad)


# ----------------------------------------------------------------------- resampling kernel


@pytest.mark.parametrize(("n_in", "n_out"), [(50, 167), (160, 48), (37, 37 * 3), (7, 3)])
def test_resize_matches_pillow_bilinear(n_in, n_out):
    """Same kernel as Pillow's (antialiased) bilinear resize, an independent implementation."""
    from PIL import Image

    rng = np.random.default_rng(n_in)
    a = rng.random((n_in + 3, n_in)).astype(np.float32)
    out_h = n_out + 5
    ours = resize(a, out_h, n_out)
    ref = np.asarray(Image.fromarray(a, mode="F").resize((n_out, out_h), Image.BILINEAR))
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    w = axis_weights(n_in, n_out)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)


def test_window_resampler_sizes_windows_in_native_pixels():
    from landslide_cli.predict.resample import GroundSampling as G

    rs = WindowResampler.for_scene(G(10, 10), 3.0, 512)
    assert rs.native_tile == (153, 153)  # 512 * 3 / 10 = 153.6
    assert rs.model_shape(153, 153) == (510, 510)
    assert rs.model_shape(40, 153) == (133, 510)
    down = WindowResampler.for_scene(G(0.1, 0.1), 0.2, 512)
    assert down.native_tile == (1024, 1024) and down.model_shape(1024, 1024) == (512, 512)
    aniso = WindowResampler.for_scene(G(8, 10), 3.0, 512)  # non-square pixels: square model px
    assert aniso.native_tile == (153, 192)
    with pytest.raises(DataError, match="coarser --resample-to"):
        WindowResampler.for_scene(G(30, 30), 0.2, 512)  # 3 native pixels per window


def test_resampled_invalid_pixels_never_leak_into_valid_ones():
    from landslide_cli.predict.resample import GroundSampling as G

    rs = WindowResampler.for_scene(G(10, 10), 3.0, 64)
    raw = np.full((1, 19, 19), 100, np.uint16)
    valid = np.ones((19, 19), bool)
    raw[:, :, :7], valid[:, :7] = 60000, False  # fill value in the invalid part
    out, vm = rs.to_model(raw, valid)
    assert out.shape == (1, 63, 63) and vm.shape == (63, 63)
    assert np.allclose(out[0][vm], 100.0)  # only valid pixels contribute
    assert not vm[:, :20].any() and vm[:, 26:].all()  # boundary at 7 * 3.33 = 23.3 model px


# ----------------------------------------------------------------------- predict


def test_scene_outside_the_range_warns_in_json_runs_and_reporter(tmp_path):
    scene, _ = _step_scene(tmp_path)
    rep = RecordingReporter()
    out = tmp_path / "out.gpkg"
    summary = predict_scenes(scene, out, model=_model(), tile=64, reporter=rep)
    assert len(rep.warnings) == 1 and "10 m" in rep.warnings[0]
    assert rep.warnings[0] in summary.warnings
    data = json.loads(json.dumps(summary.to_dict()))
    s = data["scenes"][0]
    assert s["gsd_m"] == 10.0 and s["resample_m"] is None
    assert s["resolution_warning"] == rep.warnings[0]
    run = pyogrio.read_dataframe(out, layer="runs").iloc[0]
    assert run["gsd_m"] == 10.0 and np.isnan(run["resample_m"])
    assert run["model_resolution_m"] == "0.2–3 m"
    assert run["resolution_warning"] == rep.warnings[0]


def test_scene_inside_the_range_does_not_warn(tmp_path):
    scene, _ = _step_scene(tmp_path, pixel=1.0)
    rep = RecordingReporter()
    summary = predict_scenes(scene, tmp_path / "out.gpkg", model=_model(), tile=64,
                             reporter=rep)
    assert rep.warnings == [] and summary.scenes[0].resolution_warning is None
    assert summary.scenes[0].gsd_m == 1.0


def test_resample_auto_keeps_polygons_exact_in_the_scene_grid(tmp_path):
    box = (17, 23, 41, 67)  # rows 17:23, cols 41:67
    scene, t = _step_scene(tmp_path, box=box)
    model = _model()
    out, prob = tmp_path / "out.gpkg", tmp_path / "prob.tif"
    rep = RecordingReporter()
    summary = predict_scenes(scene, out, model=model, tile=64, overlap=0.25, prob_out=prob,
                             prob_dtype="float32", resample_to="auto", reporter=rep)
    s = summary.scenes[0]
    assert (s.gsd_m, s.resample_m, s.resolution_warning) == (10.0, 3.0, None)
    assert rep.warnings == []
    # windows of floor(64 * 3 / 10) = 19 native pixels, each fed as 63x63 model pixels
    assert model.tiles == s.tiles and s.tiles > 4
    with rasterio.open(prob) as ds, rasterio.open(scene) as src:
        assert (ds.width, ds.height, ds.transform, ds.crs) == (
            src.width, src.height, src.transform, src.crs)
        p = ds.read(1)
    y0, y1, x0, x1 = box
    assert (p[y0:y1, x0:x1] > 0.5).all() and (p[y0:y1, x0:x1] > 0.5).sum() == (p > 0.5).sum()
    gdf = pyogrio.read_dataframe(out, layer="landslides")
    assert len(gdf) == 1
    geom = gdf.geometry.iloc[0]
    xy = shapely.get_coordinates(geom)
    cols, rows = (xy[:, 0] - t.c) / t.a, (xy[:, 1] - t.f) / t.e
    np.testing.assert_allclose(cols, np.round(cols), atol=1e-6)  # vertices on pixel corners
    np.testing.assert_allclose(rows, np.round(rows), atol=1e-6)
    assert geom.bounds == pytest.approx((t.c + x0 * 10, t.f - y1 * 10, t.c + x1 * 10,
                                         t.f - y0 * 10))
    assert gdf.area_m2.iloc[0] == pytest.approx((y1 - y0) * (x1 - x0) * 100.0)
    run = pyogrio.read_dataframe(out, layer="runs").iloc[0]
    assert (run["gsd_m"], run["resample_m"], run["resolution_warning"]) == (10.0, 3.0, "")


def test_resample_down_to_a_coarser_model_scale(tmp_path):
    box = (40, 50, 30, 90)
    scene, t = _step_scene(tmp_path, pixel=0.05, h=150, w=130, box=box)
    summary = predict_scenes(scene, tmp_path / "out.gpkg", model=_model(), tile=32,
                             resample_to="auto")
    s = summary.scenes[0]
    assert (s.gsd_m, s.resample_m) == (0.05, 0.2)
    gdf = pyogrio.read_dataframe(tmp_path / "out.gpkg", layer="landslides")
    assert len(gdf) == 1
    y0, y1, x0, x1 = box
    assert gdf.geometry.iloc[0].bounds == pytest.approx(
        (t.c + x0 * 0.05, t.f - y1 * 0.05, t.c + x1 * 0.05, t.f - y0 * 0.05))


@pytest.mark.parametrize("resample_to", ["auto", 2.0])
def test_resample_inside_the_range_is_a_no_op(tmp_path, resample_to):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(3, 90, 110), dtype=np.uint8)
    scene = write_tif(tmp_path / "scene.tif", raw)  # 2 m pixels
    opts = {"tile": 32, "prob_dtype": "float32"}
    plain = predict_scenes(scene, tmp_path / "a.gpkg", model=_model(),
                           prob_out=tmp_path / "a.tif", **opts)
    same = predict_scenes(scene, tmp_path / "b.gpkg", model=_model(),
                          prob_out=tmp_path / "b.tif", resample_to=resample_to, **opts)
    assert same.scenes[0].resample_m is None and same.tiles == plain.tiles
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    ga = pyogrio.read_dataframe(tmp_path / "a.gpkg", layer="landslides")
    gb = pyogrio.read_dataframe(tmp_path / "b.gpkg", layer="landslides")
    assert len(ga) == len(gb) > 0
    assert all(x.equals(y) for x, y in zip(ga.geometry, gb.geometry, strict=True))


def test_resample_to_on_a_scene_without_crs_is_a_one_line_error(tmp_path):
    raw = np.full((3, 40, 40), 50, np.uint8)
    scene = write_tif(tmp_path / "plain.tif", raw, crs=None)
    with pytest.raises(DataError, match="no CRS"):
        predict_scenes(scene, tmp_path / "out.gpkg", model=_model(), tile=32,
                       resample_to=3.0)
    assert not (tmp_path / "out.gpkg").exists()
    with pytest.raises(LandslideError, match="--resample-to"):
        PredictOptions(resample_to="quick").validate()


def test_cli_resample_to_with_a_checkpoint(tmp_path, run_cli):
    ckpt = make_checkpoint(tmp_path / "m.safetensors",
                           input_spec=InputSpec(resolution_m=list(MODEL_RANGE)))
    scene, _ = _step_scene(tmp_path, h=40, w=45)
    out = tmp_path / "out.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", ckpt, "--tile", "64",
                  "--resample-to", "auto", "--json", "-q")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["scenes"][0]["resample_m"] == 3.0 and data["warnings"] == []
    bad = run_cli("predict", scene, "--out", tmp_path / "x.gpkg", "--resample-to", "fast")
    assert bad.exit_code != 0 and "--resample-to" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
