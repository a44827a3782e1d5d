"""Block-wise polygonizing against a whole-image reference, footprints and measures."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine

from landslide_cli.predict.vectors import FootprintBuilder, Polygonizer, SceneGeo
from landslide_cli.predict.windows import GridLayout, Stitcher


def _blobby(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random field in [0, 1] (blobs of many sizes, with holes and touching corners)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 6 + 2, w // 6 + 2))
    field = np.kron(coarse, np.ones((6, 6)))[:h, :w]
    return (0.7 * field + 0.3 * rng.random((h, w))).astype(np.float32)


def _blocks(prob: np.ndarray, tile: int, overlap: float, valid: np.ndarray | None = None):
    h, w = prob.shape
    layout = GridLayout(h, w, tile, overlap)
    st = Stitcher(layout)
    for _, _, y0, x0, hh, ww in layout.windows():
        v = None if valid is None else valid[y0:y0 + hh, x0:x0 + ww]
        yield st.add(prob[y0:y0 + hh, x0:x0 + ww], v)


@pytest.mark.parametrize(("seed", "tile", "overlap"), [(0, 32, 0.25), (1, 24, 0.5), (2, 64, 0)])
def test_block_polygons_equal_whole_image_polygons(seed, tile, overlap):
    h, w = 131, 157
    prob = _blobby(h, w, seed)
    thr = 0.55
    found = []
    poly = Polygonizer(w, thr, found.append)
    for block in _blocks(prob, tile, overlap):
        poly.add(block)
    geoms = np.concatenate([b.geoms for b in found])
    pixels = np.concatenate([b.pixels for b in found])
    means = np.concatenate([b.mean_prob for b in found])
    maxs = np.concatenate([b.prob_max for b in found])

    mask = prob >= thr
    ref = [shapely.geometry.shape(g) for g, _ in
           rasterio.features.shapes(mask.view(np.uint8), mask=mask, connectivity=4)]
    assert len(geoms) == len(ref) > 20
    assert all(g.is_valid and g.geom_type == "Polygon" for g in geoms)
    # same polygons: match each reference polygon to exactly one block-merged polygon
    key = lambda g: (round(g.area), round(g.length), g.bounds)  # noqa: E731
    assert sorted(map(key, geoms)) == sorted(map(key, ref))
    assert sum(len(g.interiors) for g in geoms) == sum(len(g.interiors) for g in ref)
    np.testing.assert_array_equal(pixels, shapely.area(geoms).round().astype(int))
    # probability statistics of each merged polygon against the pixels it covers
    labels = rasterio.features.rasterize(zip(geoms, range(1, len(geoms) + 1), strict=True),
                                         out_shape=(h, w), dtype="int32")
    np.testing.assert_array_equal(labels > 0, mask)
    for i, (mean, mx) in enumerate(zip(means, maxs, strict=True), start=1):
        sel = labels == i
        assert mean == pytest.approx(prob[sel].mean(), rel=1e-6)
        assert mx == pytest.approx(prob[sel].max(), rel=1e-6)


def test_footprint_from_masked_blocks():
    h, w = 90, 110
    valid = np.ones((h, w), bool)
    valid[:40, :50] = False
    valid[70:, 90:] = False
    fp = FootprintBuilder(h, w, all_valid=False)
    for block in _blocks(np.zeros((h, w), np.float32), 32, 0.25, valid):
        fp.add(block)
    geom = fp.geometry()
    assert fp.valid_pixels == valid.sum()
    assert geom.area == pytest.approx(valid.sum())
    assert geom.is_valid
    assert shapely.get_num_coordinates(geom) <= 12  # collinear block-border vertices removed
    full = FootprintBuilder(h, w, all_valid=True)
    assert full.geometry().equals(shapely.box(0, 0, w, h))


def test_scene_geo_measures():
    from rasterio.crs import CRS

    t = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5000000.0)
    geo = SceneGeo(CRS.from_epsg(32632), t, 100, 100)
    sq = geo.to_crs(shapely.box(0, 0, 3, 2))
    assert sq.bounds == (400000.0, 4999980.0, 400030.0, 5000000.0)
    area, perim = geo.measure([sq])
    assert area[0] == pytest.approx(600.0) and perim[0] == pytest.approx(100.0)
    assert geo.pixel_size_m == pytest.approx(10.0)
    plain = SceneGeo(None, Affine.identity(), 10, 10)
    assert plain.kind == "none" and plain.pixel_size_m == pytest.approx(1.0)
