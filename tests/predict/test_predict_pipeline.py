"""predict_scenes end to end with stand-in models: seams, nodata, merging, measures, outputs."""

from __future__ import annotations

import sqlite3

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from _predict_helpers import ConvStandIn, bright_standin, write_tif
from _recording import RecordingReporter
from rasterio.transform import from_origin

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.predict import PredictOptions, predict_scenes
from landslide_cli.predict.raster import UINT8_NODATA, UINT8_SCALE


def _read(path, layer="landslides"):
    return pyogrio.read_dataframe(path, layer=layer)


def _rgb(h, w, value=40):
    return np.full((3, h, w), value, np.uint8)


# ----------------------------------------------------------------------- no seams (equivariance)


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [
    (150, 190, 64, 0.25),  # not a multiple of the tile, several windows per axis
    (101, 77, 32, 0.5),
    (40, 50, 64, 0.25),  # smaller than one tile: one padded window
])
def test_stitched_probability_equals_whole_scene_prediction(tmp_path, h, w, tile, overlap):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)
    scene = write_tif(tmp_path / "scene.tif", raw)
    model = ConvStandIn(weight=[0.7, -1.3, 0.4], bias=0.1)
    prob = tmp_path / "prob.tif"
    summary = predict_scenes(scene, tmp_path / "out.gpkg", model=model, tile=tile,
                             overlap=overlap, batch_size=3, prob_out=prob,
                             prob_dtype="float32")
    with rasterio.open(prob) as ds:
        stitched = ds.read(1)
        assert (ds.width, ds.height) == (w, h)
        assert ds.transform == rasterio.open(scene).transform
    assert summary.tiles == model.tiles
    whole = model.whole(raw)
    np.testing.assert_allclose(stitched, whole, atol=1e-5, rtol=0)
    assert summary.tiles >= (1 if h < tile else 4)


def test_uint8_probability_cog_has_overviews_nodata_and_matches(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, size=(3, 300, 520), dtype=np.uint8)
    scene = write_tif(tmp_path / "scene.tif", raw)
    model = ConvStandIn(weight=[0.5, 0.5, -0.5])
    prob = tmp_path / "prob.tif"
    predict_scenes(scene, tmp_path / "o.gpkg", model=model, tile=128, prob_out=prob,
                   threshold=0.999)  # (few polygons: this is about the COG)
    with rasterio.open(prob) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == UINT8_NODATA
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        assert ds.overviews(1)  # COG layout with overviews
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        data = ds.read(1)
    expected = np.rint(model.whole(raw) * UINT8_SCALE)
    assert np.abs(data.astype(int) - expected).max() <= 1
    assert data.max() <= UINT8_SCALE
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


# ----------------------------------------------------------------------- nodata


def _nodata_scene(tmp_path, kind):
    """Bright blob (would fire) in the left half, the right half masked but also bright."""
    h, w = 96, 128
    raw = _rgb(h, w, 40)
    raw[:, 30:60, 10:40] = 220  # a real detection in the valid part
    raw[:, :, 64:] = 230  # bright everywhere in the invalid half
    valid = np.ones((h, w), bool)
    valid[:, 64:] = False
    if kind == "nodata":
        raw[:, :, 64:] = 250
        return write_tif(tmp_path / "nd.tif", raw, nodata=250), valid
    if kind == "alpha":
        alpha = np.where(valid, 255, 0).astype(np.uint8)[None]
        data = np.concatenate([raw, alpha])
        path = write_tif(tmp_path / "alpha.tif", data, photometric="RGB", alpha="YES")
        return path, valid
    return write_tif(tmp_path / "mask.tif", raw, mask=valid), valid


@pytest.mark.parametrize("kind", ["nodata", "alpha", "internal_mask"])
def test_nodata_pixels_get_no_polygons_and_nodata_probability(tmp_path, kind):
    scene, valid = _nodata_scene(tmp_path, kind)
    out, prob = tmp_path / "o.gpkg", tmp_path / "p.tif"
    model = bright_standin()
    summary = predict_scenes(scene, out, model=model, tile=32, overlap=0.25,
                             bands=[1, 2, 3] if kind == "alpha" else None,
                             prob_out=prob)
    slides = _read(out)
    assert len(slides) == 1  # only the blob in the valid half
    with rasterio.open(scene) as ds:
        t = ds.transform
    invalid_box = shapely.box(t.c + 64 * t.a, t.f + 96 * t.e, t.c + 128 * t.a, t.f)
    assert not slides.geometry.iloc[0].intersects(invalid_box.buffer(-0.01))
    assert slides.area_m2.iloc[0] == pytest.approx(30 * 30 * 4.0)  # 2 m pixels
    with rasterio.open(prob) as ds:
        p = ds.read(1)
    assert (p[~valid] == UINT8_NODATA).all()
    assert (p[valid] < UINT8_NODATA).all()
    # windows entirely in the masked half were skipped, not predicted
    assert summary.tiles_skipped > 0
    assert model.tiles == summary.tiles
    fp = _read(out, "footprints")
    assert fp.valid_pixels.iloc[0] == valid.sum()
    assert fp.geometry.iloc[0].area == pytest.approx(valid.sum() * 4.0)


def test_all_nodata_scene_is_an_error_and_writes_nothing(tmp_path):
    raw = _rgb(40, 40, 0)
    scene = write_tif(tmp_path / "empty.tif", raw, nodata=0)
    out = tmp_path / "o.gpkg"
    with pytest.raises(DataError, match="no valid pixels"):
        predict_scenes(scene, out, model=bright_standin(), tile=32)
    assert not out.exists() and not list(tmp_path.glob(".*"))


# ----------------------------------------------------------------------- polygons across borders


def test_landslide_crossing_block_borders_is_one_polygon_with_its_hole(tmp_path):
    h, w = 120, 120
    raw = _rgb(h, w, 30)
    # tile 32, overlap 0.25 -> blocks ~24 px: this ring spans many blocks and has a hole
    raw[:, 10:70, 15:80] = 210
    raw[:, 30:45, 35:55] = 30  # the hole (15 x 20 px)
    # two squares touching only at a corner: 4-connectivity keeps them apart
    raw[:, 90:100, 90:100] = 200
    raw[:, 100:110, 100:110] = 240
    scene = write_tif(tmp_path / "s.tif", raw, transform=from_origin(1000.0, 2000.0, 0.5, 0.5))
    out = tmp_path / "o.gpkg"
    summary = predict_scenes(scene, out, model=bright_standin(), tile=32, overlap=0.25)
    slides = _read(out).sort_values("area_m2", ascending=False)
    assert len(slides) == 3 == summary.polygons
    big = slides.geometry.iloc[0]
    assert big.geom_type == "Polygon" and big.is_valid
    assert len(big.interiors) == 1
    pixels = 60 * 65 - 15 * 20
    assert slides.area_m2.iloc[0] == pytest.approx(pixels * 0.25)
    assert big.area == pytest.approx(pixels * 0.25)
    assert slides.perimeter_m.iloc[0] == pytest.approx((2 * (60 + 65) + 2 * (15 + 20)) * 0.5)
    small = slides.iloc[1:]
    assert list(small.area_m2) == pytest.approx([25.0, 25.0])
    # statistics: the 240-valued square is more confident than the 200-valued one
    assert small.max_prob.max() > small.max_prob.min()
    assert (slides.mean_prob <= slides.max_prob + 1e-12).all()
    assert (slides.mean_prob > 0.5).all()
    assert sorted(slides.id) == [1, 2, 3]
    assert set(slides.scene) == {"s.tif"}


def test_min_area_and_simplify(tmp_path):
    raw = _rgb(100, 100, 30)
    raw[:, 10:14, 10:14] = 220  # 16 px = 64 m2 at 2 m
    raw[:, 40:80, 40:80] = 220  # 1600 px = 6400 m2
    yy, xx = np.mgrid[0:100, 0:100]
    raw[:, ((yy - 60) ** 2 + (xx - 20) ** 2) < 12 ** 2] = 220  # a staircase disc
    scene = write_tif(tmp_path / "s.tif", raw)
    exact, simple = tmp_path / "a.gpkg", tmp_path / "b.gpkg"
    predict_scenes(scene, exact, model=bright_standin(), tile=48, min_area=100.0)
    predict_scenes(scene, simple, model=bright_standin(), tile=48, min_area=100.0,
                   simplify=3.0)
    a, b = _read(exact), _read(simple)
    assert len(a) == len(b) == 2  # the 64 m2 speck is dropped
    disc_a = a.loc[a.area_m2 < 6000].geometry.iloc[0]
    disc_b = b.loc[b.area_m2 < 6000].geometry.iloc[0]
    assert shapely.get_num_coordinates(disc_b) < shapely.get_num_coordinates(disc_a)
    assert disc_b.is_valid
    assert disc_b.area == pytest.approx(disc_a.area, rel=0.1)


# ----------------------------------------------------------------------- CRS and measures


def test_geographic_scene_areas_are_equal_area_metres(tmp_path):
    from pyproj import Geod

    raw = _rgb(80, 80, 30)
    raw[:, 20:50, 30:60] = 220
    deg = 1e-4  # ~11 m at the equator, ~7.6 m in x at 46.7 N
    scene = write_tif(tmp_path / "geo.tif", raw, crs="EPSG:4326",
                      transform=from_origin(7.0, 46.7, deg, deg))
    out = tmp_path / "o.gpkg"
    predict_scenes(scene, out, model=bright_standin(), tile=32)
    slides = _read(out)
    assert pyogrio.read_info(out, layer="landslides")["crs"] == "EPSG:4326"
    geom = slides.geometry.iloc[0]
    area, perimeter = Geod(ellps="WGS84").geometry_area_perimeter(geom)
    assert slides.area_m2.iloc[0] == pytest.approx(abs(area), rel=1e-4)
    assert slides.perimeter_m.iloc[0] == pytest.approx(perimeter, rel=1e-3)


def test_projected_crs_in_feet_reports_square_metres(tmp_path):
    raw = _rgb(50, 50, 30)
    raw[:, 10:20, 10:30] = 220  # 200 px of 3 x 3 US survey feet
    scene = write_tif(tmp_path / "ft.tif", raw, crs="EPSG:2227",
                      transform=from_origin(6000000.0, 2000000.0, 3.0, 3.0))
    out = tmp_path / "o.gpkg"
    predict_scenes(scene, out, model=bright_standin(), tile=32)
    slides = _read(out)
    ft = 1200.0 / 3937.0
    assert slides.area_m2.iloc[0] == pytest.approx(200 * 9 * ft * ft, rel=1e-9)
    assert slides.geometry.iloc[0].area == pytest.approx(200 * 9)  # CRS units kept


def test_scenes_in_different_crs_are_reprojected_into_one_file(tmp_path):
    raw = _rgb(64, 64, 30)
    raw[:, 20:40, 20:40] = 220
    a = write_tif(tmp_path / "a.tif", raw, crs="EPSG:32633",
                  transform=from_origin(500000.0, 5000000.0, 10.0, 10.0))
    b = write_tif(tmp_path / "b.tif", raw, crs="EPSG:32634",
                  transform=from_origin(300000.0, 5000000.0, 10.0, 10.0))
    out = tmp_path / "o.gpkg"
    summary = predict_scenes([a, b], out, model=bright_standin(), tile=32)
    assert summary.polygons == 2 and summary.crs == "EPSG:32633"
    slides = _read(out)
    assert pyogrio.read_info(out, layer="landslides")["crs"] == "EPSG:32633"
    assert list(slides.scene) == ["a.tif", "b.tif"]
    assert list(slides.id) == [1, 2]
    # area is measured in each scene's own CRS, before reprojection
    assert list(slides.area_m2) == pytest.approx([40000.0, 40000.0])
    fps = _read(out, "footprints")
    assert list(fps.scene) == ["a.tif", "b.tif"]
    for poly, fp in zip(slides.geometry, fps.geometry, strict=True):
        assert fp.buffer(1e-6).contains(poly)
    runs = _read(out, "runs")
    assert list(runs.scene) == ["a.tif", "b.tif"]
    # --crs overrides
    out2 = tmp_path / "o2.gpkg"
    predict_scenes([a, b], out2, model=bright_standin(), tile=32, crs="EPSG:4326")
    assert pyogrio.read_info(out2, layer="landslides")["crs"] == "EPSG:4326"
    assert _read(out2).total_bounds[0] == pytest.approx(15.0, abs=3)


def test_raster_without_crs_is_allowed_in_pixel_coordinates(tmp_path, capfd):
    raw = _rgb(40, 60, 30)
    raw[:, 5:15, 10:30] = 220
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=60, height=40, count=3,
                       dtype="uint8") as ds:
        ds.write(raw)
    out = tmp_path / "o.gpkg"
    rec = RecordingReporter()
    summary = predict_scenes(path, out, model=bright_standin(), tile=32, reporter=rec)
    assert any("no CRS" in w for w in summary.warnings)
    assert rec.warnings == summary.warnings  # through the reporter, not printed
    assert capfd.readouterr() == ("", "")
    slides = _read(out)
    assert pyogrio.read_info(out, layer="landslides")["crs"] is None
    assert slides.geometry.iloc[0].bounds == (10.0, 5.0, 30.0, 15.0)  # col/row pixels
    assert slides.area_m2.iloc[0] == pytest.approx(200.0)


def test_default_reporter_prints_nothing_and_a_reporter_gets_the_progress(tmp_path, capfd):
    a = write_tif(tmp_path / "a.tif", _rgb(40, 60, 200))
    b = write_tif(tmp_path / "b.tif", _rgb(70, 50, 30))
    capfd.readouterr()
    summary = predict_scenes([a, b], tmp_path / "quiet.gpkg", model=bright_standin(), tile=32)
    assert summary.tiles > 0
    assert capfd.readouterr() == ("", "")  # called from Python the library says nothing

    rec = RecordingReporter()
    summary = predict_scenes([a, b], tmp_path / "told.gpkg", model=bright_standin(), tile=32,
                             reporter=rec)
    assert capfd.readouterr() == ("", "")
    [bar] = rec.bars
    assert bar.total == bar.advanced == summary.tiles and bar.closed
    assert bar.labels == ["a.tif", "b.tif"] and rec.warnings == []


# ----------------------------------------------------------------------- GeoPackage contents


def test_geopackage_layers_runs_and_qgis_style(tmp_path):
    raw = _rgb(64, 64, 30)
    raw[:, 8:20, 8:20] = 220
    scene = write_tif(tmp_path / "s.tif", raw)
    out = tmp_path / "o.gpkg"
    predict_scenes(scene, out, model=bright_standin(), tile=32)
    layers = dict(pyogrio.list_layers(out))
    assert layers["landslides"] == "Polygon" and layers["footprints"] == "MultiPolygon"
    assert "runs" in layers and "layer_styles" in layers
    info = pyogrio.read_info(out, layer="landslides")
    assert list(info["fields"]) == ["id", "scene", "area_m2", "perimeter_m", "mean_prob",
                                    "max_prob"]
    assert info["crs"] == "EPSG:32633"
    run = _read(out, "runs").iloc[0]
    for key in ("model", "model_sha256", "threshold", "tile", "overlap", "bands", "version",
                "started", "duration_s", "backend", "device"):
        assert key in run.index
    assert run.model == "conv1x1" and run.tile == 32 and run.bands == "1,2,3"
    with sqlite3.connect(out) as con:
        row = con.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML "
                          "FROM layer_styles").fetchone()
    assert row[0] == "landslides" and row[1] == info["geometry_name"] and row[2] == 1
    assert "SimpleFill" in row[3] and "227,26,28,102" in row[3]


def test_no_landslides_still_writes_a_valid_empty_layer(tmp_path):
    scene = write_tif(tmp_path / "s.tif", _rgb(40, 40, 30))
    out = tmp_path / "o.gpkg"
    summary = predict_scenes(scene, out, model=bright_standin(), tile=32)
    assert summary.polygons == 0
    assert pyogrio.read_info(out, layer="landslides")["features"] == 0
    assert pyogrio.read_info(out, layer="footprints")["features"] == 1


# ----------------------------------------------------------------------- safety


def test_existing_output_is_kept_without_overwrite(tmp_path):
    scene = write_tif(tmp_path / "s.tif", _rgb(40, 40, 220))
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"keep me")
    with pytest.raises(LandslideError, match="already exists"):
        predict_scenes(scene, out, model=bright_standin(), tile=32)
    assert out.read_bytes() == b"keep me"
    predict_scenes(scene, out, model=bright_standin(), tile=32, overwrite=True)
    assert len(_read(out)) == 1


def test_failure_mid_run_leaves_nothing_behind(tmp_path):
    scene = write_tif(tmp_path / "s.tif", _rgb(200, 200, 220))

    class Exploding(ConvStandIn):
        def predict(self, batch):
            if self.calls >= 2:
                raise LandslideError("boom")
            return super().predict(batch)

    out, prob = tmp_path / "o.gpkg", tmp_path / "p.tif"
    with pytest.raises(LandslideError, match="boom"):
        predict_scenes(scene, out, model=Exploding(), tile=32, batch_size=2, prob_out=prob)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_fixed_tile_backend_is_respected(tmp_path):
    scene = write_tif(tmp_path / "s.tif", _rgb(70, 90, 220))
    model = bright_standin()
    model.fixed_tile = 48
    summary = predict_scenes(scene, tmp_path / "o.gpkg", model=model)
    assert summary.tile == 48
    with pytest.raises(LandslideError, match="48x48"):
        predict_scenes(scene, tmp_path / "o2.gpkg", model=model, tile=64)


def test_probability_maps_for_several_scenes(tmp_path):
    raw = _rgb(40, 40, 220)
    a = write_tif(tmp_path / "a.tif", raw)
    b = write_tif(tmp_path / "b.tif", raw)
    folder = tmp_path / "probs"
    folder.mkdir()
    summary = predict_scenes([a, b], tmp_path / "o.gpkg", model=bright_standin(), tile=32,
                             prob_out=folder)
    assert sorted(p.name for p in folder.iterdir()) == ["a_prob.tif", "b_prob.tif"]
    assert summary.prob_out == [str(folder / "a_prob.tif"), str(folder / "b_prob.tif")]
    predict_scenes([a, b], tmp_path / "o2.gpkg", model=bright_standin(), tile=32,
                   prob_out=tmp_path / "{scene}.p.tif")
    assert (tmp_path / "a.p.tif").exists() and (tmp_path / "b.p.tif").exists()
    with pytest.raises(LandslideError, match="folder or contain"):
        predict_scenes([a, b], tmp_path / "o3.gpkg", model=bright_standin(), tile=32,
                       prob_out=tmp_path / "one.tif")


# ----------------------------------------------------------------------- options object


def test_options_object_runs_like_the_keywords(tmp_path):
    scene = write_tif(tmp_path / "s.tif", _rgb(60, 60, 220))
    by_keywords = predict_scenes(scene, tmp_path / "a.gpkg", model=bright_standin(), tile=32,
                                 overlap=0.5, min_area=10.0)
    by_options = predict_scenes(scene, tmp_path / "b.gpkg", model=bright_standin(),
                                options=PredictOptions(tile=32, overlap=0.5, min_area=10.0))
    drop = ("out", "seconds", "forward_seconds", "peak_rss_mb", "scenes")
    a, b = by_keywords.to_dict(), by_options.to_dict()
    assert {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}
    assert _read(tmp_path / "a.gpkg").area_m2.tolist() == \
        _read(tmp_path / "b.gpkg").area_m2.tolist()
    with pytest.raises(LandslideError, match="--overlap 2"):
        predict_scenes(scene, tmp_path / "c.gpkg", model=bright_standin(),
                       options=PredictOptions(overlap=2))
    with pytest.raises(TypeError, match="not both"):
        predict_scenes(scene, tmp_path / "c.gpkg", model=bright_standin(), tile=32,
                       options=PredictOptions())
    assert not (tmp_path / "c.gpkg").exists()
