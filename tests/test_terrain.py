"""Terrain bands: Horn slope against analytic planes and a hand computation, band naming, the
spectral part of a spec, and the Landslide4Sense terrain units on the real files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec
from landslide_cli.terrain import (
    horn_slope,
    slope_degrees,
    spectral_indices,
    spectral_spec,
    terrain_kind,
    terrain_positions,
)


def _plane(h: int, w: int, gx: float, gy: float, dx: float, dy: float) -> np.ndarray:
    """z = gx * x_m + gy * y_m on an h x w grid of dx x dy metre pixels (rows go down)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return 100.0 + gx * x * dx + gy * y * dy


def test_ten_percent_ramp_is_atan_point_one():
    z = _plane(9, 11, 0.1, 0.0, 10.0, 10.0)  # 1 m up per 10 m east
    s = slope_degrees(z, 10.0, 10.0)
    inner = s[1:-1, 1:-1]
    assert inner == pytest.approx(math.degrees(math.atan(0.1)), abs=1e-5)  # 5.7106 degrees
    # at the left/right edge the repeated edge pixel halves the east-west difference
    assert s[4, 0] == pytest.approx(math.degrees(math.atan(0.05)), abs=1e-5)
    assert s[0, 5] == pytest.approx(math.degrees(math.atan(0.1)), abs=1e-5)  # (top: x only)


@pytest.mark.parametrize(("gx", "gy", "dx", "dy"), [(0.0, -0.1, 2.0, 3.0), (0.3, 0.4, 1.0, 1.0),
                                                      (-1.0, 0.0, 0.5, 4.0)])
def test_planes_with_any_pixel_size(gx, gy, dx, dy):
    z = _plane(7, 8, gx, gy, dx, dy)
    expected = math.degrees(math.atan(math.hypot(gx, gy)))  # 0.3/0.4: atan(0.5); -1: 45 degrees
    assert horn_slope(z, dx, dy) == pytest.approx(expected, abs=1e-4)
    # the same elevations read as if pixels were twice as large: half the gradient
    half = math.degrees(math.atan(math.hypot(gx, gy) / 2))
    assert horn_slope(z, 2 * dx, 2 * dy) == pytest.approx(half, abs=1e-4)


def test_horn_slope_by_hand():
    z = np.array([[1.0, 2.0, 3.0],
                  [4.0, 5.0, 6.0],
                  [7.0, 8.0, 10.0]])
    # dz/dx = ((c + 2f + i) - (a + 2d + g)) / 8 = ((3 + 12 + 10) - (1 + 8 + 7)) / 8 = 9/8
    # dz/dy = ((g + 2h + i) - (a + 2b + c)) / 8 = ((7 + 16 + 10) - (1 + 4 + 3)) / 8 = 25/8
    got = horn_slope(z, 1.0, 1.0)
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(math.degrees(math.atan(math.hypot(9 / 8, 25 / 8))),
                                      abs=1e-4)  # 73.245 degrees
    assert horn_slope(z, 2.0, 4.0)[0, 0] == pytest.approx(
        math.degrees(math.atan(math.hypot(9 / 16, 25 / 32))), abs=1e-4)


def test_flat_and_nodata():
    z = np.full((5, 6), 42.0)
    assert np.all(slope_degrees(z, 1.0, 1.0) == 0.0)
    z[2, 3] = np.nan
    s = slope_degrees(z, 1.0, 1.0)
    bad = np.isnan(s)
    assert bad[1:4, 2:5].all() and bad.sum() == 9  # the NaN and its 8 neighbours
    with pytest.raises(ValueError):
        horn_slope(np.zeros((2, 5)), 1.0, 1.0)


def test_windows_with_halo_equal_the_whole_array():
    rng = np.random.default_rng(0)
    z = np.cumsum(np.cumsum(rng.normal(size=(40, 50)), 0), 1)  # rough terrain
    whole = slope_degrees(z, 3.0, 2.0)
    padded = np.pad(z, 1, mode="edge")
    out = np.full_like(whole, np.nan)
    for y0 in range(0, 40, 13):
        for x0 in range(0, 50, 17):
            h, w = min(13, 40 - y0), min(17, 50 - x0)
            out[y0:y0 + h, x0:x0 + w] = horn_slope(padded[y0:y0 + h + 2, x0:x0 + w + 2], 3.0, 2.0)
    np.testing.assert_array_equal(out, whole)


def test_band_names_and_spectral_spec():
    assert terrain_kind("Slope") == "slope" and terrain_kind("elevation") == "dem"
    assert terrain_kind("DEM") == "dem" and terrain_kind("red") is None
    spec = InputSpec(bands=["red", "slope", "green", "blue", "dem"], band_indices=[1, 9, 2, 3, 9],
                     mean=[0.4, 20.0, 0.5, 0.6, 800.0], std=[0.2, 15.0, 0.2, 0.2, 500.0],
                     percentiles={"2": [1, 2, 3, 4, 5], "98": [6, 7, 8, 9, 10]})
    assert terrain_positions(spec) == [(1, "slope"), (4, "dem")]
    assert spectral_indices(spec) == [0, 2, 3]
    rgb = spectral_spec(spec)
    assert rgb.bands == ["red", "green", "blue"] and rgb.band_indices == [1, 2, 3]
    assert rgb.mean == [0.4, 0.5, 0.6] and rgb.std == [0.2, 0.2, 0.2]
    assert rgb.percentiles == {"2": [1.0, 3.0, 4.0], "98": [6.0, 8.0, 9.0]}
    plain = InputSpec()
    assert spectral_spec(plain) is plain
    with pytest.raises(LandslideError, match="all terrain bands"):
        spectral_spec(InputSpec(bands=["dem", "slope"], mean=[0, 0], std=[1, 1]))


def test_landslide4sense_terrain_units_on_real_files(shared_data):
    """The real L4S patches: slope in whole degrees, DEM in whole metres, the slope computed
    from the DEM at 10 m agrees with the slope band, and the normalised values are exactly the
    L4S baseline's (published mean/std on the file values)."""
    import h5py

    from landslide_cli.data import open_dataset
    from landslide_cli.data.l4s import L4S_MEAN, L4S_STD

    root = shared_data / "landslide4sense"
    tiles = open_dataset("l4s", root, split="all", bands="red,green,blue,slope,dem",
                         skip_bad=True)  # mask_1006.h5 has no image
    assert len(tiles) == 6
    spec = tiles.input_spec_hint
    assert spec.bands == ["B4", "B3", "B2", "slope", "dem"]
    assert spec.band_indices == [4, 3, 2, 13, 14]
    for i in range(len(tiles)):
        image, _ = tiles.read(i)
        slope, dem = image[3], image[4]
        assert np.abs(slope - np.round(slope)).max() < 1e-9 and slope.min() >= 0
        assert slope.max() <= 90
        assert np.abs(dem - np.round(dem)).max() < 1e-9 and 300 < dem.min() < dem.max() < 3000
        computed = slope_degrees(dem, 10.0, 10.0)[2:-2, 2:-2]
        band = slope[2:-2, 2:-2]
        steep = band > 5
        assert 0.8 < float(np.median(computed[steep] / band[steep])) < 1.3
        assert np.corrcoef(computed.ravel(), band.ravel())[0, 1] > 0.75
        with h5py.File(tiles[i].image_path) as fh:
            raw = np.moveaxis(fh["img"][()], -1, 0)[[3, 2, 1, 12, 13]]
        baseline = (raw - np.array([L4S_MEAN[k] for k in (3, 2, 1, 12, 13)])[:, None, None]) \
            / np.array([L4S_STD[k] for k in (3, 2, 1, 12, 13)])[:, None, None]
        np.testing.assert_allclose(spec.normalize(image), baseline, atol=1e-4)


def test_training_pipeline_leaves_terrain_bands_unscaled_and_unjittered(tmp_path):
    """An 8-bit RGB + slope tile: the image bands are divided by 255 and jittered, the slope
    (degrees) is only normalised with its own mean/std."""
    import rasterio

    from landslide_cli.data import Augment, SegmentationDataset, open_dataset

    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    raw = rng.integers(0, 255, (4, 32, 32)).astype(np.uint8)
    raw[3] = rng.integers(0, 60, (32, 32))  # slope in degrees
    for path, data in ((tmp_path / "img" / "t.tif", raw),
                       (tmp_path / "mask" / "t.tif", np.zeros((1, 32, 32), np.uint8))):
        with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=len(data),
                           dtype="uint8") as ds:
            ds.write(data)
    tiles = open_dataset("folder", tmp_path, split="all")
    spec = InputSpec(bands=["red", "green", "blue", "slope"], mean=[0.5, 0.5, 0.5, 20.0],
                     std=[0.25, 0.25, 0.25, 10.0])
    assert spec.band_scales() == [255.0, 255.0, 255.0, 1.0]
    plain = SegmentationDataset(tiles, spec)[0]["image"].numpy()
    np.testing.assert_allclose(plain, spec.normalize(raw), atol=1e-5)
    np.testing.assert_allclose(plain[3], (raw[3] - 20.0) / 10.0, atol=1e-5)
    jitter = Augment(rot90=False, flips=False, color_jitter=0.5, photometric_strength=1.0)
    seen = SegmentationDataset(tiles, spec, augment=jitter, seed=0)[0]["image"].numpy()
    np.testing.assert_allclose(seen[3], plain[3], atol=1e-5)  # slope untouched
    assert np.abs(seen[:3] - plain[:3]).max() > 0.05  # the image bands were jittered
