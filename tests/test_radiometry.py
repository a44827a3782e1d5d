"""landslide_cli.radiometry: --rescale parsing and mappings, scene statistics, bands by name."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.radiometry import (
    RESCALE_MODES,
    TileRescaler,
    band_names,
    bands_by_name,
    default_targets,
    describe_bands,
    dtype_family,
    model_targets,
    parse_band_tokens,
    parse_rescale,
    plan_mapping,
    resolve_bands,
    sample_windows,
    scene_mapping,
    scene_statistics,
    tile_statistics,
)

RGB_PCT = {"2": [10.0, 20.0, 30.0], "50": [80.0, 90.0, 100.0], "98": [230.0, 220.0, 210.0]}


def _write(path: Path, data: np.ndarray, **extra: object) -> Path:
    c, h, w = data.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c,
               "dtype": data.dtype.name, "crs": "EPSG:32633",
               "transform": from_origin(500000.0, 4000000.0, 10.0, 10.0), **extra}
    if h >= 16 and w >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def _stats_of(data: np.ndarray, valid: np.ndarray | None = None):
    def stats(percents):
        flat = data.reshape(data.shape[0], -1)
        if valid is not None:
            flat = flat[:, valid.reshape(-1)]
        return np.percentile(flat.astype(float), list(percents), axis=1), "test", flat.shape[1]
    return stats


# --------------------------------------------------------------------------- parsing


def test_parse_rescale_modes() -> None:
    assert parse_rescale(None).mode == "auto"
    assert parse_rescale("auto").mode == "auto"
    assert parse_rescale("NONE").mode == "none"
    p = parse_rescale("percentile")
    assert (p.mode, p.percents, p.text) == ("percentile", (2.0, 98.0), "percentile:2,98")
    p = parse_rescale("percentile:1,99.5")
    assert p.percents == (1.0, 99.5) and p.text == "percentile:1,99.5"
    r = parse_rescale("range:100,4000")
    assert r.mode == "range" and r.ranges == ((100.0, 4000.0),)
    r = parse_rescale("range:1,2/3,4/5,6.5")
    assert r.ranges == ((1.0, 2.0), (3.0, 4.0), (5.0, 6.5))
    assert set(RESCALE_MODES.names()) == {"auto", "none", "percentile", "range"}


@pytest.mark.parametrize("bad", ["stretch", "percentile:98,2", "percentile:5", "range",
                                 "range:5,1", "range:a,b", "percentile:0,101", "auto:3",
                                 "range:1,2,3", "range:nan,4"])
def test_parse_rescale_refuses_bad_values(bad: str) -> None:
    with pytest.raises(LandslideError) as err:
        parse_rescale(bad)
    msg = str(err.value)
    assert "--rescale" in msg and "\n" not in msg


def test_dtype_family() -> None:
    assert dtype_family("uint8") == dtype_family("int8") == "8-bit"
    assert dtype_family("uint16") == dtype_family("int16") == "16-bit"
    assert dtype_family("float32") == dtype_family("float64") == "floating point"
    assert dtype_family("uint16") != dtype_family("uint8")


# --------------------------------------------------------------------------- mappings


def test_auto_is_identity_for_the_models_dtype_and_percentile_otherwise() -> None:
    spec = InputSpec(percentiles=RGB_PCT)
    data8 = np.random.default_rng(0).integers(0, 255, (3, 20, 20)).astype(np.uint8)
    m = plan_mapping(parse_rescale("auto"), spec, ["uint8"] * 3, _stats_of(data8))
    assert m.identity and m.apply(data8) is data8
    data16 = data8.astype(np.uint16) * 257
    m = plan_mapping(parse_rescale("auto"), spec, ["uint16"] * 3, _stats_of(data16))
    assert not m.identity and m.mode == "percentile" and m.percents == (2.0, 98.0)
    assert m.target == "model percentiles"


def test_percentile_maps_scene_percentiles_onto_model_percentiles() -> None:
    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 600.0, (3, 40, 50)).astype(np.uint16)
    spec = InputSpec(percentiles=RGB_PCT)
    m = plan_mapping(parse_rescale("auto"), spec, ["uint16"] * 3, _stats_of(data))
    flat = data.reshape(3, -1).astype(float)
    lo, hi = np.percentile(flat, 2, axis=1), np.percentile(flat, 98, axis=1)
    np.testing.assert_allclose(m.src_low, lo)
    np.testing.assert_allclose(m.src_high, hi)
    out = m.apply(data)
    assert out.dtype == np.float32
    for c in range(3):
        # the scene's p2/p98 land on the model's, linearly in between, clipped to 0..255
        gain = (RGB_PCT["98"][c] - RGB_PCT["2"][c]) / (hi[c] - lo[c])
        want = np.clip((flat[c] - lo[c]) * gain + RGB_PCT["2"][c], 0, 255)
        np.testing.assert_allclose(out[c].reshape(-1), want, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(np.percentile(out[c], [2, 98]),
                                   [RGB_PCT["2"][c], RGB_PCT["98"][c]], atol=1e-2)
    assert out.min() >= 0 and out.max() <= 255


def test_percentile_low_high_and_interpolated_targets() -> None:
    data = np.arange(3 * 1000, dtype=np.uint16).reshape(3, 10, 100)
    spec = InputSpec(percentiles=RGB_PCT)
    m = plan_mapping(parse_rescale("percentile:10,90"), spec, ["uint16"] * 3, _stats_of(data))
    flat = data.reshape(3, -1).astype(float)
    np.testing.assert_allclose(m.src_low, np.percentile(flat, 10, axis=1))
    np.testing.assert_allclose(m.src_high, np.percentile(flat, 90, axis=1))
    # targets between recorded percents: linear interpolation (10 % between 2 and 50)
    r = (10 - 2) / (50 - 2)
    np.testing.assert_allclose(m.dst_low, [10 + r * 70, 20 + r * 70, 30 + r * 70])
    lows, highs, where = model_targets(spec, (2.0, 98.0))
    assert lows == RGB_PCT["2"] and highs == RGB_PCT["98"] and where == "model percentiles"


def test_model_without_percentiles_uses_normal_quantile_default() -> None:
    spec = InputSpec()  # v1-like: no percentiles
    lows, highs = default_targets(spec, (2.0, 98.0))
    z = NormalDist().inv_cdf(0.98)
    for c in range(3):
        want_hi = (spec.mean[c] + z * spec.std[c]) * 255
        want_lo = max(0.0, (spec.mean[c] - z * spec.std[c]) * 255)
        assert highs[c] == pytest.approx(want_hi) and lows[c] == pytest.approx(want_lo)
    assert 240 < highs[0] < 245 and 220 < highs[2] < 223 and lows[1] == 0.0
    _, _, where = model_targets(spec, (2.0, 98.0))
    assert where.startswith("default")


def test_range_maps_min_max_onto_model_scale_and_clips() -> None:
    spec = InputSpec()
    data = np.array([[[0, 100, 2100, 4100, 9000]]] * 3, dtype=np.uint16)
    m = plan_mapping(parse_rescale("range:100,4100"), spec, ["uint16"] * 3, None)
    np.testing.assert_allclose(m.apply(data)[0, 0], [0, 0, 127.5, 255, 255])
    per_band = plan_mapping(parse_rescale("range:0,255/0,510/100,355"), spec,
                            ["uint16"] * 3, None)
    out = per_band.apply(np.full((3, 1, 1), 255, np.uint16))
    np.testing.assert_allclose(out[:, 0, 0], [255, 127.5, 155])
    with pytest.raises(LandslideError, match="2 MIN,MAX pairs"):
        plan_mapping(parse_rescale("range:0,1/0,2"), spec, ["uint16"] * 3, None)


def test_repeat_gives_the_same_mapping() -> None:
    rng = np.random.default_rng(2)
    data = rng.integers(200, 3000, (3, 30, 30)).astype(np.uint16)
    spec = InputSpec(percentiles=RGB_PCT)
    m = plan_mapping(parse_rescale("auto"), spec, ["uint16"] * 3, _stats_of(data))
    again = plan_mapping(parse_rescale(m.repeat(spec.scale)), spec, ["uint16"] * 3, None)
    np.testing.assert_allclose(again.apply(data), m.apply(data), atol=1e-3)
    record = m.to_dict(spec.scale)
    assert record["repeat"].startswith("range:") and len(record["src_low"]) == 3
    cols = m.columns(spec.scale)
    assert cols["rescale_mode"] == "percentile" and cols["rescale_src_low"].count(",") == 2


def test_none_refuses_another_dtype_family_in_one_line() -> None:
    with pytest.raises(DataError) as err:
        plan_mapping(parse_rescale("none"), InputSpec(), ["uint16"] * 3, None, where="s.tif")
    msg = str(err.value)
    assert "--rescale" in msg and "uint16" in msg and "\n" not in msg
    assert plan_mapping(parse_rescale("none"), InputSpec(), ["uint8"] * 3, None).identity


def test_float_scene_maps_and_flat_band_is_noted() -> None:
    data = np.random.default_rng(3).random((3, 20, 20)).astype(np.float32)
    data[2] = 0.25
    m = plan_mapping(parse_rescale("auto"), InputSpec(percentiles=RGB_PCT), ["float32"] * 3,
                     _stats_of(data))
    out = m.apply(data)
    assert np.isfinite(out).all() and out.max() <= 255
    assert m.notes and "band 3 is flat" in m.notes[0]


# --------------------------------------------------------------------------- eval tiles


def test_tile_rescaler_uses_each_tiles_valid_pixels() -> None:
    spec = InputSpec(percentiles=RGB_PCT)
    tile = np.random.default_rng(4).integers(500, 4000, (3, 32, 32)).astype(np.uint16)
    tile[:, :4] = 0  # fill, left out of the statistics
    r = TileRescaler("auto", spec)
    out = r(tile)
    vals = tile[:, 4:].reshape(3, -1).astype(float)
    lo, hi = np.percentile(vals, 2, axis=1), np.percentile(vals, 98, axis=1)
    stats, source, n = tile_statistics(tile, (2.0, 98.0))
    np.testing.assert_allclose(stats, np.stack([lo, hi])) and source == "per tile"
    assert n == vals.shape[1]
    np.testing.assert_allclose(np.percentile(out[:, 4:].reshape(3, -1), 98, axis=1),
                               RGB_PCT["98"], atol=0.05)
    eight = np.zeros((3, 8, 8), np.uint8)
    assert r(eight) is eight  # 8-bit tile for an 8-bit model: unchanged
    s = r.summary()
    assert s["tiles"] == 2 and s["tiles_mapped"] == 1 and s["requested"] == "auto"


# --------------------------------------------------------------------------- scene statistics


def test_scene_statistics_full_read_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(1, 5000, (3, 50, 60)).astype(np.uint16)
    data[:, :5, :] = 0
    path = _write(tmp_path / "s.tif", data, nodata=0)
    s = scene_statistics(path, [1, 2, 3], (2.0, 98.0))
    valid = data[:, 5:, :].reshape(3, -1).astype(float)
    np.testing.assert_allclose(s.values, np.percentile(valid, [2, 98], axis=1))
    assert s.source == "full" and s.pixels == valid.shape[1]


def test_scene_statistics_honour_masks_nodata_override_and_nan(tmp_path: Path) -> None:
    data = np.random.default_rng(6).random((2, 40, 40)).astype(np.float32) * 100
    data[0, :10] = np.nan
    data[1, 30:] = -9999
    path = _write(tmp_path / "f.tif", data)
    s = scene_statistics(path, [1, 2], (5.0, 95.0), nodata=-9999)
    valid = np.isfinite(data).all(0) & (data != -9999).all(0)
    want = np.percentile(data[:, valid].astype(float), [5, 95], axis=1)
    np.testing.assert_allclose(s.values, want, rtol=1e-6)
    # an internal mask (alpha-like) still applies with a --nodata override
    mask = np.ones((40, 40), bool)
    mask[:, :20] = False
    p2 = tmp_path / "m.tif"
    band = (np.arange(1600).reshape(40, 40) + 1).astype(np.uint16)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            p2, "w", driver="GTiff", width=40, height=40, count=1, dtype="uint16",
            crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)) as ds:
        ds.write(band, 1)
        ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    s = scene_statistics(p2, [1], (0.0, 100.0), nodata=1600)
    keep = mask & (band != 1600)
    assert s.values[:, 0].tolist() == [band[keep].min(), band[keep].max()]


def test_scene_statistics_are_sampled_and_bounded_on_a_larger_raster(tmp_path: Path) -> None:
    h, w = 700, 900
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(7)
    band = (1000 + 2 * xx + yy + rng.integers(0, 200, (h, w))).astype(np.uint16)
    path = _write(tmp_path / "big.tif", band[None])
    s = scene_statistics(path, [1], (2.0, 98.0), max_pixels=40_000)
    assert s.source == "sample"
    assert s.pixels <= 40_000 and 40 <= s.windows <= 64
    full = np.percentile(band.astype(float), [2, 98])
    # spread windows over the whole grid: within 3 % of the full-scene percentiles
    np.testing.assert_allclose(s.values[:, 0], full, rtol=0.03)


def test_sample_windows_are_spread_inside_the_scene() -> None:
    budget = 64 * 64 * 20
    wins = sample_windows(1000, 500, budget, block=(16, 16))
    side = wins[0][2]
    assert len(wins) >= 40 and len(wins) * side * side <= budget
    ys = sorted({y for y, _, _, _ in wins})
    xs = sorted({x for _, x, _, _ in wins})
    # one window per grid cell, centred: the cells cover the scene evenly
    assert len(xs) * len(ys) == len(wins)
    assert xs[0] < 1000 / len(xs) and xs[-1] + side > 1000 * (1 - 1 / len(xs))
    assert ys[0] < 500 / len(ys) and ys[-1] + side > 500 * (1 - 1 / len(ys))
    assert all(x % 16 == 0 or x == 1000 - side for x in xs)
    assert all(y % 16 == 0 or y == 500 - side for y in ys)
    assert all(0 <= y <= 500 - h and 0 <= x <= 1000 - w for y, x, h, w in wins)
    # a stripped file (blocks as wide as the scene) is not aligned to x = 0
    assert len({x for _, x, _, _ in sample_windows(1000, 500, budget,
                                                   block=(1, 1000))}) > 1


def test_scene_statistics_read_overviews_when_present(tmp_path: Path) -> None:
    from rasterio.enums import Resampling

    band = np.tile(np.arange(512, dtype=np.uint16), (512, 1)) * 8
    path = _write(tmp_path / "ov.tif", band[None])
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.nearest)
    s = scene_statistics(path, [1], (2.0, 98.0), max_pixels=20_000)
    assert s.source == "overviews" and s.pixels <= 20_000 and s.windows == 1
    # the 1/8 overview holds every 8th column (values step 64): percentiles within a step
    np.testing.assert_allclose(s.values[:, 0], np.percentile(band.astype(float), [2, 98]),
                               atol=64)


def test_scene_mapping_end_to_end(tmp_path: Path) -> None:
    data = (np.random.default_rng(8).integers(0, 255, (3, 32, 32)) * 16).astype(np.uint16)
    path = _write(tmp_path / "x.tif", data)
    m = scene_mapping("auto", InputSpec(), path, [1, 2, 3], ["uint16"] * 3)
    np.testing.assert_allclose(m.src_low, np.percentile(data.reshape(3, -1), 2, axis=1))
    assert m.stats == "full" and m.target.startswith("default")


# --------------------------------------------------------------------------- bands by name


S2_DESC = ("B04 red", "B03 green", "B02 blue", "B08 nir")
S2_CI = ("gray", "undefined", "undefined", "undefined")


def test_band_names_from_descriptions_and_colorinterp() -> None:
    assert {"red", "b4", "b04 red"} <= band_names("B04 red", "gray")
    assert "red" in band_names("Red", None) and "red" in band_names(None, "red")
    assert "blue" in band_names("B2", "undefined") and "nir" in band_names("B08", None)
    assert "nir" in band_names("Near Infrared", None)
    assert "red" not in band_names("B05 red edge", None)
    assert {"rededge", "b5"} <= band_names("B05 red edge", None)
    assert band_names(None, "gray") == set()


def test_resolve_bands_by_name_number_and_code() -> None:
    assert resolve_bands(["red", "green", "blue"], S2_DESC, S2_CI) == [1, 2, 3]
    assert resolve_bands(["nir", "Red", "g"], S2_DESC, S2_CI) == [4, 1, 2]
    assert resolve_bands(["B04", 3, "b2"], S2_DESC, S2_CI) == [1, 3, 3]
    assert resolve_bands(["red", "green", "blue"], (None,) * 4,
                         ("blue", "green", "red", "alpha")) == [3, 2, 1]
    assert resolve_bands([4, 3, 2], (), ()) == [4, 3, 2]


def test_unknown_band_name_lists_the_scenes_bands() -> None:
    with pytest.raises(DataError) as err:
        resolve_bands(["swir1"], S2_DESC, S2_CI, scene="s2.tif")
    msg = str(err.value)
    assert "\n" not in msg and "swir1" in msg and "s2.tif" in msg
    assert "1: B04 red/gray" in msg and "4: B08 nir/undefined" in msg
    assert describe_bands((None, "x"), ("red",)) == "1: -/red, 2: x/-"


def test_ambiguous_name_prefers_colorinterp_else_refuses() -> None:
    assert resolve_bands(["red"], ("red", "red edge"), ("undefined", "undefined")) == [1]
    assert resolve_bands(["red"], ("red", "red"), ("red", "undefined")) == [1]
    with pytest.raises(DataError, match="several bands"):
        resolve_bands(["red"], ("red", "Red"), ("undefined", "undefined"))


def test_bands_by_name_for_the_default_choice() -> None:
    assert bands_by_name(["red", "green", "blue"], S2_DESC, S2_CI) == [1, 2, 3]
    assert bands_by_name(["red", "green", "blue"], (None,) * 4, ("gray",) * 4) is None
    assert bands_by_name(["band1", "band2"], S2_DESC, S2_CI) is None


def test_parse_band_tokens() -> None:
    assert parse_band_tokens("1,2,3") == [1, 2, 3]
    assert parse_band_tokens("red, green ,B02") == ["red", "green", "B02"]
    assert parse_band_tokens([4, "red"]) == [4, "red"]
    assert parse_band_tokens(None) is None
    for bad in ("0,1,2", "", "1,?", "-1"):
        with pytest.raises(LandslideError, match="--bands"):
            parse_band_tokens(bad)
