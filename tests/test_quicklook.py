import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landslide_cli.errors import LandslideError
from landslide_cli.quicklook import render_quicklook


def _scene(path, h=60, w=90):
    data = np.zeros((3, h, w), dtype=np.uint8)
    data[1] = 120
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 2, 2)) as dst:
        dst.write(data)
    return path


def test_quicklook_draws_polygons_in_red(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    scene = _scene(tmp_path / "s.tif")
    # a 40 m x 40 m square in the middle of the 180 m x 120 m scene
    gdf = gpd.GeoDataFrame({"scene": ["s.tif"]},
                           geometry=[box(500060, 3999920, 500100, 3999960)], crs="EPSG:32633")
    gpkg = tmp_path / "s.gpkg"
    gdf.to_file(gpkg, layer="landslides", driver="GPKG")
    png = render_quicklook(scene, gpkg, tmp_path / "q.png")
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    reddish = (img[..., 0] > 150) & (img[..., 1] < 110) & (img[..., 2] < 110)
    assert reddish.sum() > 50  # polygon outline drawn
    assert not list(tmp_path.glob(".q.png*"))  # no temp file left behind


def test_quicklook_missing_output_folder_is_a_clear_error(tmp_path):
    scene = _scene(tmp_path / "s.tif")
    with pytest.raises(LandslideError, match="does not exist"):
        render_quicklook(scene, tmp_path / "x.gpkg", tmp_path / "nope" / "q.png")


def test_predict_cli_writes_a_quicklook_beside_the_geopackage(tmp_path, run_cli, tiny_checkpoint):
    scene = _scene(tmp_path / "s.tif", h=70, w=90)
    res = run_cli("predict", scene, "--out", tmp_path / "s.gpkg", "--model", tiny_checkpoint,
                  "--tile", "64", "--threshold", "0.0", "--quicklook", tmp_path / "s.png", "-q")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert "tiny" in res.stdout  # says which model it used


def test_predict_cli_refuses_a_quicklook_in_a_missing_folder_before_working(tmp_path, run_cli,
                                                                             tiny_checkpoint):
    scene = _scene(tmp_path / "s.tif")
    res = run_cli("predict", scene, "--out", tmp_path / "s.gpkg", "--model", tiny_checkpoint,
                  "--quicklook", tmp_path / "missing" / "s.png")
    assert res.exit_code == 1
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s.gpkg").exists()
