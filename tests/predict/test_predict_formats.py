"""``predict --out`` formats: GeoPackage (version, descriptions), FlatGeobuf and GeoParquet
(same polygons, CRS and attributes as the GeoPackage), their side files, and the COG's metadata.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from _predict_helpers import ConvStandIn, bright_standin, write_tif
from rasterio.transform import from_origin

from landslide_cli.errors import LandslideError
from landslide_cli.predict import predict_scenes
from landslide_cli.predict.raster import UINT8_SCALE
from landslide_cli.predict.vectors import (
    VECTOR_FORMATS,
    FlatGeobufWriter,
    GeoParquetWriter,
    GpkgWriter,
    open_vector_writer,
    vector_suffixes,
)

OGRINFO = Path("/usr/bin/ogrinfo")


def _scene(folder: Path, *, bright: bool = True) -> Path:
    """80 x 90 px, 0.5 m pixels in UTM 33N: a ring with a hole across block borders, two
    squares touching at a corner (4-connected: two polygons) and a small square."""
    raw = np.full((3, 80, 90), 30, np.uint8)
    if bright:
        raw[:, 5:45, 10:60] = 210
        raw[:, 15:25, 25:40] = 30  # the hole
        raw[:, 55:62, 60:67] = 200
        raw[:, 62:69, 67:74] = 240
        raw[:, 70:74, 5:9] = 180
    return write_tif(folder / "scene.tif", raw, transform=from_origin(1000.0, 2000.0, 0.5, 0.5))


def _predict(scene: Path, out: Path, **kw):
    return predict_scenes(scene, out, model=bright_standin(), tile=32, overlap=0.25, **kw)


def _sorted(frame):
    return frame.sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One scene predicted into each format (each in its own folder)."""
    root = tmp_path_factory.mktemp("formats")
    scene = _scene(root)
    paths = {}
    for suffix in (".gpkg", ".fgb", ".parquet"):
        folder = root / suffix[1:]
        folder.mkdir()
        paths[suffix] = folder / f"slides{suffix}"
        summary = _predict(scene, paths[suffix])
        assert summary.polygons == 4
    return paths


def test_registry_maps_each_suffix_to_its_writer():
    assert vector_suffixes() == (".gpkg", ".fgb", ".parquet")
    assert VECTOR_FORMATS.get(".gpkg") is GpkgWriter
    assert VECTOR_FORMATS.get(".fgb") is FlatGeobufWriter
    assert VECTOR_FORMATS.get(".parquet") is GeoParquetWriter
    assert FlatGeobufWriter.targets(Path("d/slides.fgb")) == {
        "output": Path("d/slides.fgb"), "footprints": Path("d/slides.footprints.fgb"),
        "runs": Path("d/slides.runs.json"), "style": Path("d/slides.qml")}
    assert GpkgWriter.targets(Path("o.GPKG")) == {"output": Path("o.GPKG")}


@pytest.mark.parametrize("suffix", [".fgb", ".parquet"])
def test_one_layer_formats_hold_what_the_geopackage_holds(outputs, suffix):
    gpkg, out = outputs[".gpkg"], outputs[suffix]
    ref = _sorted(pyogrio.read_dataframe(gpkg, layer="landslides"))
    got = _sorted(gpd.read_parquet(out) if suffix == ".parquet"
                  else pyogrio.read_dataframe(out))
    assert len(got) == 4
    assert got.crs == ref.crs == "EPSG:32633"
    columns = ["id", "scene", "area_m2", "perimeter_m", "mean_prob", "max_prob"]
    assert [c for c in got.columns if c != got.geometry.name] == columns
    pd.testing.assert_frame_equal(pd.DataFrame(got[columns]), pd.DataFrame(ref[columns]),
                                  check_dtype=False)
    assert got["id"].dtype == np.int64 and got["area_m2"].dtype == np.float64
    assert (got.geom_type == "Polygon").all()
    assert shapely.equals_exact(got.geometry.values, ref.geometry.values, tolerance=0).all()
    assert sum(len(g.interiors) for g in got.geometry) == 1  # the hole survived

    side = FlatGeobufWriter.targets(out) if suffix == ".fgb" else GeoParquetWriter.targets(out)
    fp_ref = pyogrio.read_dataframe(gpkg, layer="footprints")
    fp = (gpd.read_parquet(side["footprints"]) if suffix == ".parquet"
          else pyogrio.read_dataframe(side["footprints"]))
    assert fp.crs == fp_ref.crs
    assert list(fp.scene) == list(fp_ref.scene) == ["scene.tif"]
    assert list(fp.valid_pixels) == list(fp_ref.valid_pixels) == [80 * 90]
    assert shapely.equals_exact(fp.geometry.values, fp_ref.geometry.values, tolerance=0).all()
    assert (fp.geom_type == "MultiPolygon").all()

    doc = json.loads(side["runs"].read_text())
    assert doc["landslides"] == out.name and doc["footprints"] == side["footprints"].name
    assert doc["crs"] == "EPSG:32633"
    runs_ref = pyogrio.read_dataframe(gpkg, layer="runs", read_geometry=False)
    assert [r.keys() for r in doc["runs"]] == [dict.fromkeys(runs_ref.columns).keys()]
    for key in ("scene", "model", "model_sha256", "threshold", "tile", "polygons", "crs"):
        assert doc["runs"][0][key] == runs_ref[key].iloc[0]
    assert "<qgis" in side["style"].read_text()
    # nothing else in the folder: no temporaries, no staging file
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in side.values())


def test_geoparquet_metadata(outputs):
    import pyarrow.parquet as pq

    geo = json.loads(pq.read_metadata(outputs[".parquet"]).metadata[b"geo"])
    column = geo["columns"][geo["primary_column"]]
    assert geo["version"] == "1.1.0" and column["encoding"] == "WKB"
    assert column["geometry_types"] == ["Polygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 32633}
    ref = pyogrio.read_dataframe(outputs[".gpkg"], layer="landslides")
    assert column["bbox"] == pytest.approx(list(ref.total_bounds))


def test_geopackage_is_version_1_2_with_layer_descriptions(outputs):
    con = sqlite3.connect(outputs[".gpkg"])
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200
        desc = dict(con.execute("SELECT table_name, description FROM gpkg_contents"))
    finally:
        con.close()
    assert set(desc) == {"landslides", "footprints", "runs", "layer_styles"}
    assert all(desc.values())
    assert "landslide polygons" in desc["landslides"]


@pytest.mark.skipif(not OGRINFO.exists(), reason="/usr/bin/ogrinfo (Debian gdal-bin) absent")
def test_system_gdal_opens_the_geopackage_without_warnings(outputs):
    res = subprocess.run([str(OGRINFO), "-so", "-al", str(outputs[".gpkg"])],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""
    for layer in ("landslides", "footprints", "runs"):
        assert f"Layer name: {layer}" in res.stdout
    assert "DESCRIPTION=landslide polygons" in res.stdout


@pytest.mark.skipif(not OGRINFO.exists(), reason="/usr/bin/ogrinfo (Debian gdal-bin) absent")
def test_system_gdal_opens_the_flatgeobuf_without_warnings(outputs):
    res = subprocess.run([str(OGRINFO), "-so", "-al", str(outputs[".fgb"])],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert "Feature Count: 4" in res.stdout


@pytest.mark.parametrize("suffix", [".fgb", ".parquet"])
def test_no_landslides_writes_valid_empty_files(tmp_path, suffix):
    out = tmp_path / f"o{suffix}"
    summary = _predict(_scene(tmp_path, bright=False), out)
    assert summary.polygons == 0
    got = gpd.read_parquet(out) if suffix == ".parquet" else pyogrio.read_dataframe(out)
    assert len(got) == 0 and got.crs == "EPSG:32633"
    assert {"id", "scene", "area_m2", "max_prob"} <= set(got.columns)
    assert json.loads((tmp_path / "o.runs.json").read_text())["runs"][0]["polygons"] == 0


def test_side_files_are_checked_before_any_work(tmp_path):
    scene = _scene(tmp_path)
    runs = tmp_path / "o.runs.json"
    runs.write_text("keep")
    with pytest.raises(LandslideError, match=r"o\.fgb's runs file .*o\.runs\.json already exists"):
        _predict(scene, tmp_path / "o.fgb")
    assert runs.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.runs.json", "scene.tif"]
    _predict(scene, tmp_path / "o.fgb", overwrite=True)
    assert json.loads(runs.read_text())["landslides"] == "o.fgb"


def test_unknown_suffix_is_refused_naming_the_formats(tmp_path):
    with pytest.raises(LandslideError, match=r"expected a \.gpkg or \.fgb or \.parquet file"):
        _predict(_scene(tmp_path), tmp_path / "o.shp")


@pytest.mark.parametrize("suffix", [".fgb", ".parquet"])
def test_failure_mid_run_or_in_the_conversion_leaves_nothing(tmp_path, suffix, monkeypatch):
    scene = write_tif(tmp_path / "s.tif", np.full((3, 120, 120), 220, np.uint8))

    class Exploding(ConvStandIn):
        def predict(self, batch):
            if self.calls >= 2:
                raise LandslideError("boom")
            return super().predict(batch)

    with pytest.raises(LandslideError, match="boom"):
        predict_scenes(scene, tmp_path / f"o{suffix}", model=Exploding(), tile=32,
                       batch_size=2, prob_out=tmp_path / "p.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]

    def broken(self, layer, dest):
        dest.write_bytes(b"half")
        raise LandslideError(f"cannot write {self.target}: disk full")

    cls = FlatGeobufWriter if suffix == ".fgb" else GeoParquetWriter
    monkeypatch.setattr(cls, "_export", broken)
    with pytest.raises(LandslideError, match="disk full"):
        predict_scenes(scene, tmp_path / f"o{suffix}", model=bright_standin(), tile=32,
                       quicklook=tmp_path / "q.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_writer_cleanup_removes_the_staging_geopackage(tmp_path):
    writer = open_vector_writer(tmp_path / "o.parquet", None)
    assert writer.gpkg.exists() and writer.gpkg.parent == tmp_path
    writer.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_quicklook_from_a_one_layer_format(tmp_path):
    scene = _scene(tmp_path)
    _predict(scene, tmp_path / "o.fgb", quicklook=tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probability_cog_metadata(tmp_path):
    scene = _scene(tmp_path)
    _predict(scene, tmp_path / "o.gpkg", prob_out=tmp_path / "p.tif")
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.descriptions == ("landslide probability",)
        assert ds.scales == pytest.approx((1 / UINT8_SCALE,)) and ds.offsets == (0.0,)
        tags = ds.tags()
        raw = ds.read(1)
    assert tags["MODEL"] == "conv1x1" and tags["MODEL_SHA256"] == "0" * 64
    assert tags["THRESHOLD"] == "0.5" and tags["SCENE"] == "scene.tif"
    assert "LANDSLIDE_VERSION" in tags and "1/254" in tags["LANDSLIDE_PROBABILITY"]
    assert raw.max() <= UINT8_SCALE  # values stay the raw encoding; scale turns them into p
    _predict(scene, tmp_path / "f.gpkg", prob_out=tmp_path / "f.tif", prob_dtype="float32")
    with rasterio.open(tmp_path / "f.tif") as ds:
        assert ds.descriptions == ("landslide probability",)
        assert ds.scales == (1.0,) and ds.offsets == (0.0,)
        assert ds.tags()["MODEL"] == "conv1x1"


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo absent")
def test_gdalinfo_shows_the_probability_metadata(tmp_path):
    scene = _scene(tmp_path)
    _predict(scene, tmp_path / "o.gpkg", prob_out=tmp_path / "p.tif")
    res = subprocess.run(["gdalinfo", str(tmp_path / "p.tif")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert "Description = landslide probability" in res.stdout
    assert "Offset: 0,   Scale:0.0039370078" in res.stdout
    assert "MODEL=conv1x1" in res.stdout
