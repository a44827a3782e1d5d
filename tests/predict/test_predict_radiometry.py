"""predict/eval --rescale, --bands by name and --nodata on real-looking scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from _predict_helpers import ConvStandIn, write_tif
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from landslide_cli.errors import DataError
from landslide_cli.predict import predict_scenes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hokkaido_iburi_2018_rgb.tif"


def _crop(dst: Path, col: int, row: int, size: int, factor: int = 1,
          dtype: str = "uint8") -> Path:
    """A crop of the example scene, values × ``factor`` in ``dtype``."""
    with rasterio.open(EXAMPLE) as ds:
        win = Window(col, row, size, size)
        data = ds.read(window=win).astype(dtype) * np.array(factor, dtype=dtype)
        profile = ds.profile
        profile.update(width=size, height=size, transform=ds.window_transform(win),
                       dtype=dtype, blockxsize=128, blockysize=128)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def _prob(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _percentiles(path: Path) -> dict[str, list[float]]:
    with rasterio.open(path) as ds:
        data = ds.read().reshape(ds.count, -1).astype(float)
    return {str(p): np.percentile(data, p, axis=1).tolist() for p in (2, 50, 98)}


def _one_line_error(res, out: Path, *words: str) -> None:
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for word in words:
        assert word.lower() in res.stderr.lower(), res.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- 8/12/16-bit


@pytest.fixture(scope="module")
def example_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("copies")
    return {"8": _crop(d / "h8.tif", 900, 400, 256),
            "16": _crop(d / "h16.tif", 900, 400, 256, 257, "uint16"),
            "12": _crop(d / "h12.tif", 900, 400, 256, 16, "uint16")}


@pytest.fixture(scope="module")
def default_model(example_copies: dict[str, Path]):
    """The embedded default model, its spec carrying the 8-bit crop's own percentiles (as a
    model whose training imagery looks like this scene records them)."""
    from landslide_cli.backends import open_backend

    be = open_backend(None, backend="torch", device="cpu")
    be.spec.percentiles = _percentiles(example_copies["8"])
    return be


def test_uint16_copies_with_auto_give_the_8bit_inventory(example_copies, default_model,
                                                         tmp_path):
    """×257 (16-bit) and ×16 (12-bit) copies of the example crop, mapped by ``auto``, feed the
    default model the same input as the 8-bit crop: probabilities and area agree."""
    runs = {}
    for key, scene in example_copies.items():
        prob = tmp_path / f"p{key}.tif"
        s = predict_scenes(scene, tmp_path / f"o{key}.gpkg", model=default_model, tile=256,
                           prob_out=prob, prob_dtype="float32")
        runs[key] = (s, _prob(prob))
    s8, p8 = runs["8"]
    assert s8.scenes[0].rescale["mode"] == "none"  # 8-bit scene, 8-bit model: unchanged
    assert s8.landslide_area_m2 > 0
    for key in ("16", "12"):
        s, p = runs[key]
        record = s.scenes[0].rescale
        assert record["mode"] == "percentile" and record["target"] == "model percentiles"
        assert np.abs(p - p8).max() < 0.02, key
        assert abs(s.landslide_area_m2 - s8.landslide_area_m2) <= 0.1 * s8.landslide_area_m2


def test_bit_depths_map_alike_without_model_percentiles(example_copies, tmp_path):
    """A model without percentiles (the v1 fallback): the 8, 12 and 16-bit copies under
    ``percentile``/``auto`` get the same stretch, so the same probabilities."""
    be = ConvStandIn(weight=[3.0, -2.0, 1.0], bias=0.2)
    probs = {}
    for key, mode in (("8", "percentile"), ("16", "auto"), ("12", "auto")):
        prob = tmp_path / f"q{key}.tif"
        s = predict_scenes(example_copies[key], tmp_path / f"q{key}.gpkg", model=be, tile=128,
                           prob_out=prob, prob_dtype="float32", rescale=mode)
        assert s.scenes[0].rescale["target"].startswith("default")
        probs[key] = _prob(prob)
    np.testing.assert_allclose(probs["16"], probs["8"], atol=1e-4)
    np.testing.assert_allclose(probs["12"], probs["8"], atol=1e-4)


def test_run_metadata_records_the_statistics_and_repeats(example_copies, tmp_path):
    be = ConvStandIn(weight=[2.0, 0.5, -1.0])
    out = tmp_path / "m.gpkg"
    s = predict_scenes(example_copies["16"], out, model=be, tile=128, prob_out=tmp_path / "a.tif",
                       prob_dtype="float32")
    with rasterio.open(example_copies["16"]) as ds:
        data = ds.read().reshape(3, -1).astype(float)
    record = s.to_dict()["scenes"][0]["rescale"]
    np.testing.assert_allclose(record["src_low"], np.percentile(data, 2, axis=1), atol=1e-3)
    np.testing.assert_allclose(record["src_high"], np.percentile(data, 98, axis=1), atol=1e-3)
    assert record["stats"] == "full" and record["pixels"] == 256 * 256
    assert len(record["dst_low"]) == 3 and record["requested"] == "auto"
    runs = pyogrio.read_dataframe(out, layer="runs")
    row = runs.iloc[0]
    assert row.rescale == "auto" and row.rescale_mode == "percentile"
    lows = [float(v) for v in row.rescale_src_low.split(",")]
    np.testing.assert_allclose(lows, np.percentile(data, 2, axis=1), rtol=1e-5)
    assert row.rescale_repeat == record["repeat"] and row.rescale_repeat.startswith("range:")
    # the recorded range: value repeats the run
    s2 = predict_scenes(example_copies["16"], tmp_path / "m2.gpkg", model=be, tile=128,
                        prob_out=tmp_path / "b.tif", prob_dtype="float32",
                        rescale=row.rescale_repeat)
    assert s2.scenes[0].rescale["mode"] == "range"
    np.testing.assert_allclose(_prob(tmp_path / "b.tif"), _prob(tmp_path / "a.tif"), atol=1e-4)


def test_rescale_none_on_uint16_is_one_line(run_cli, example_copies, tiny_checkpoint,
                                            tmp_path):
    out = tmp_path / "n.gpkg"
    res = run_cli("predict", example_copies["16"], "--out", out, "--model", tiny_checkpoint,
                  "--rescale", "none")
    _one_line_error(res, out, "uint16", "--rescale")
    res = run_cli("predict", example_copies["16"], "--out", out, "--model", tiny_checkpoint,
                  "--rescale", "stretch")
    _one_line_error(res, out, "--rescale")


def test_cli_rescale_range_json(run_cli, example_copies, tiny_checkpoint, tmp_path):
    out = tmp_path / "r.gpkg"
    res = run_cli("predict", example_copies["12"], "--out", out, "--model", tiny_checkpoint,
                  "--tile", 128, "--rescale", "range:0,4080", "--json", "-q")
    assert res.exit_code == 0, res.stderr
    record = json.loads(res.stdout)["scenes"][0]["rescale"]
    assert record["mode"] == "range" and record["src_high"] == [4080.0] * 3
    assert record["dst_high"] == [255.0] * 3 and record["repeat"] == (
        "range:0,4080/0,4080/0,4080")


# --------------------------------------------------------------------------- bands by name


def _named_scene(path: Path, descriptions=None, colorinterp=None, count: int = 4,
                 dtype: str = "uint16") -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(100, 3000, (count, 48, 48)).astype(dtype)
    write_tif(path, data)
    with rasterio.open(path, "r+") as ds:
        for i, d in enumerate(descriptions or [], 1):
            ds.set_band_description(i, d)
        if colorinterp:
            ds.colorinterp = colorinterp
    return path


def test_bands_by_description_and_default_choice_by_name(tmp_path):
    scene = _named_scene(tmp_path / "s2.tif", ["B08 nir", "B02 blue", "B03 green", "B04 red"])
    be = ConvStandIn()
    s = predict_scenes(scene, tmp_path / "a.gpkg", model=be, tile=32, bands="red,green,blue")
    assert s.scenes[0].bands == [4, 3, 2]
    s = predict_scenes(scene, tmp_path / "b.gpkg", model=be, tile=32)  # default: by name
    assert s.scenes[0].bands == [4, 3, 2]
    s = predict_scenes(scene, tmp_path / "c.gpkg", model=be, tile=32, bands="B04,3,b2")
    assert s.scenes[0].bands == [4, 3, 2]
    runs = pyogrio.read_dataframe(tmp_path / "c.gpkg", layer="runs")
    assert runs.bands.iloc[0] == "4,3,2"


def test_bands_by_colour_interpretation(tmp_path):
    ci = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.alpha]
    scene = _named_scene(tmp_path / "bgra.tif", colorinterp=ci, dtype="uint8")
    s = predict_scenes(scene, tmp_path / "a.gpkg", model=ConvStandIn(), tile=32)
    assert s.scenes[0].bands == [3, 2, 1]


def test_unknown_band_name_and_unnamed_bands(run_cli, tmp_path, tiny_checkpoint):
    scene = _named_scene(tmp_path / "s2.tif", ["B04 red", "B03 green", "B02 blue", "B08 nir"])
    out = tmp_path / "o.gpkg"
    res = run_cli("predict", scene, "--out", out, "--model", tiny_checkpoint,
                  "--bands", "red,green,swir1")
    _one_line_error(res, out, "swir1", "1: B04 red/", "4: B08 nir/")
    plain = _named_scene(tmp_path / "plain.tif")  # four bands, no names: still --bands
    res = run_cli("predict", plain, "--out", out, "--model", tiny_checkpoint)
    _one_line_error(res, out, "4 bands", "expects 3 bands", "--bands")


# --------------------------------------------------------------------------- --nodata


def test_nodata_override_supplies_and_replaces(tmp_path):
    data = np.full((3, 40, 40), 200, np.uint8)
    data[:, :, :10] = 7  # fill the file does not declare
    scene = write_tif(tmp_path / "n.tif", data, nodata=200)  # declares the wrong value
    be = ConvStandIn()
    s = predict_scenes(scene, tmp_path / "x.gpkg", model=be, tile=32)
    assert s.scenes[0].valid_pixels == 40 * 10  # the file's nodata: only the fill is valid
    s = predict_scenes(scene, tmp_path / "a.gpkg", model=be, tile=32, nodata=7)
    assert s.scenes[0].valid_pixels == 40 * 30
    fp = pyogrio.read_dataframe(tmp_path / "a.gpkg", layer="footprints")
    assert fp.valid_pixels.iloc[0] == 40 * 30
    with pytest.raises(DataError, match="--nodata 300"):
        predict_scenes(scene, tmp_path / "y.gpkg", model=be, tile=32, nodata=300)


def test_nodata_override_keeps_alpha_and_masks(tmp_path):
    data = np.full((4, 40, 40), 120, np.uint8)
    data[3] = 255
    data[3, :5] = 0  # alpha: 5 transparent rows
    data[:3, :, :8] = 9  # nodata given on the command line: 8 columns
    scene = write_tif(tmp_path / "rgba.tif", data, photometric="RGB", alpha="YES")
    with rasterio.open(scene) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    s = predict_scenes(scene, tmp_path / "a.gpkg", model=ConvStandIn(), tile=32, nodata=9,
                       bands="1,2,3")
    assert s.scenes[0].valid_pixels == 35 * 32
    # 16-bit with nodata: statistics leave the nodata pixels out
    d16 = (np.arange(3 * 40 * 40).reshape(3, 40, 40) % 3000 + 1).astype(np.uint16)
    d16[:, :, :8] = 0
    s16 = write_tif(tmp_path / "n16.tif", d16)
    s = predict_scenes(s16, tmp_path / "b.gpkg", model=ConvStandIn(), tile=32, nodata=0)
    valid = d16[:, :, 8:].reshape(3, -1).astype(float)
    np.testing.assert_allclose(s.scenes[0].rescale["src_low"],
                               np.percentile(valid, 2, axis=1), atol=1e-3)


# --------------------------------------------------------------------------- eval


def _tile_folder(root: Path, factor: int, dtype: str) -> Path:
    from rasterio.errors import NotGeoreferencedWarning

    rng = np.random.default_rng(3)
    for k in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + k:20, 6:22 + k] = 1
        image = rng.integers(0, 100, (3, 32, 32)).astype(np.uint8)
        image[0] = np.where(mask > 0, 200, 50)
        for sub, arr in (("img", image.astype(dtype) * factor), ("mask", mask[None])):
            (root / sub).mkdir(parents=True, exist_ok=True)
            with pytest.warns(NotGeoreferencedWarning), rasterio.open(
                    root / sub / f"t{k}.tif", "w", driver="GTiff", width=32, height=32,
                    count=arr.shape[0], dtype=arr.dtype.name) as ds:
                ds.write(arr)
    return root


def test_eval_rescale_on_a_uint16_tile_folder(run_cli, tmp_path, tiny_checkpoint):
    from landslide_cli.evaluate import evaluate

    t8 = _tile_folder(tmp_path / "t8", 1, "uint8")
    t16 = _tile_folder(tmp_path / "t16", 257, "uint16")
    bright = ConvStandIn(weight=[8.0, 0.0, 0.0], bias=-0.5)  # fires where red > ~131
    r8 = evaluate(bright, dataset="folder", root=t8, split="all")
    assert r8.overall.compute()["iou"] == 1.0
    exact = evaluate(bright, dataset="folder", root=t16, split="all", rescale="range:0,65535")
    assert exact.overall == r8.overall
    auto = evaluate(bright, dataset="folder", root=t16, split="all")
    assert auto.dataset["rescale"]["tiles_mapped"] == 3
    assert auto.overall.compute()["iou"] > 0.9
    with pytest.raises(DataError, match="--rescale"):
        evaluate(bright, dataset="folder", root=t16, split="all", rescale="none")
    out = tmp_path / "m.json"
    res = run_cli("eval", "--dataset", "folder", "--root", t16, "--split", "all",
                  "--model", tiny_checkpoint, "--rescale", "percentile:1,99", "--json", out)
    assert res.exit_code == 0, res.stderr
    rescale = json.loads(out.read_text())["dataset"]["rescale"]
    assert rescale["requested"] == "percentile:1,99" and rescale["tiles_mapped"] == 3
