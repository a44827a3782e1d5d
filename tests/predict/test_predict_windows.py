"""Window layout, blending weights and the overlap-margin stitcher."""

from __future__ import annotations

import numpy as np
import pytest

from landslide_cli.errors import LandslideError
from landslide_cli.predict.windows import AxisLayout, GridLayout, Stitcher, axis_starts


@pytest.mark.parametrize(("length", "tile", "overlap"), [
    (1000, 128, 0.25), (129, 128, 0.25), (128, 128, 0.25), (50, 128, 0.5), (777, 64, 0.0),
    (300, 64, 0.75),
])
def test_axis_starts_cover_the_axis_with_at_least_the_requested_overlap(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile  # the last window is shifted back inside the scene
    steps = np.diff(starts)
    assert (steps >= 1).all()
    assert steps.max() <= max(1, round(tile * (1 - overlap)))  # overlap never below request
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()


@pytest.mark.parametrize(("length", "tile", "overlap"), [
    (1000, 128, 0.25), (200, 64, 0.5), (300, 64, 0.75), (100, 64, 0.0), (40, 64, 0.25),
])
def test_weights_are_positive_and_sum_to_one(length, tile, overlap):
    axis = AxisLayout.build(length, tile, overlap)
    total = np.zeros(length)
    for i, s in enumerate(axis.starts):
        w = axis.weights[i]
        assert w.shape == (axis.extent(i),)
        assert (w > 0).all()
        total[s:s + w.size] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # border windows keep full weight up to the scene edge (no neighbour there)
    assert axis.weights[0][0] == pytest.approx(1.0)
    assert axis.weights[-1][-1] == pytest.approx(1.0)


def test_raw_ramps_form_a_smooth_partition_of_unity():
    axis = AxisLayout.build(448, 128, 0.25)  # regular stride 96, overlap 32
    assert axis.starts == [0, 80, 160, 240, 320]  # evenly spread: overlap 48 each
    w0, w1 = axis.weights[0], axis.weights[1]
    o = axis.starts[0] + 128 - axis.starts[1]
    ramp_down, ramp_up = w0[-o:], w1[:o]
    np.testing.assert_allclose(ramp_down + ramp_up, 1.0, atol=1e-6)
    assert (np.diff(ramp_up) > 0).all() and (np.diff(ramp_down) < 0).all()
    assert ramp_up[0] < 0.01  # window edges, where CNN predictions are weakest, count little


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [
    (100, 130, 32, 0.25), (300, 200, 64, 0.5), (20, 50, 64, 0.25), (65, 65, 64, 0.25),
    (97, 300, 32, 0.8), (64, 64, 64, 0.25),
])
def test_stitcher_reassembles_the_scene_from_final_blocks(h, w, tile, overlap):
    rng = np.random.default_rng(0)
    image = rng.random((h, w)).astype(np.float32)
    layout = GridLayout(h, w, tile, overlap)
    stitcher = Stitcher(layout)
    out = np.full((h, w), np.nan, np.float32)
    seen = np.zeros((h, w), int)
    blocks = 0
    for _, _, y0, x0, hh, ww in layout.windows():
        pred = np.zeros((tile, tile), np.float32)  # padded like a real batch
        pred[:hh, :ww] = image[y0:y0 + hh, x0:x0 + ww]
        block = stitcher.add(pred)
        bh, bw = block.shape
        out[block.y0:block.y0 + bh, block.x0:block.x0 + bw] = block.prob
        seen[block.y0:block.y0 + bh, block.x0:block.x0 + bw] += 1
        blocks += 1
    assert stitcher.done and blocks == len(layout)
    assert (seen == 1).all()  # final blocks partition the scene
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_stitcher_memory_depends_on_width_not_height():
    short = GridLayout(600, 2000, 128, 0.25)
    tall = GridLayout(6000, 2000, 128, 0.25)
    peaks = []
    for layout in (short, tall):
        st = Stitcher(layout)
        for _ in range(len(layout)):
            st.add(None)
        peaks.append(st.peak_bytes)
        assert st.peak_bytes <= layout.accumulator_bytes()
    assert peaks[0] == peaks[1]
    # overlap margins only: far less than a full band one tile tall across the width
    assert peaks[1] < 4 * 128 * 2000


def test_stitcher_refuses_extra_windows_and_bad_overlap():
    layout = GridLayout(10, 10, 16, 0.25)
    st = Stitcher(layout)
    st.add(None)
    with pytest.raises(RuntimeError):
        st.add(None)
    with pytest.raises(LandslideError):
        GridLayout(10, 10, 16, 1.0)


@pytest.mark.parametrize("normalization", ["fixed", "tile"])
def test_nodata_fill_values_never_reach_valid_pixels(normalization):
    """Whatever value nodata pixels hold, the model sees the same valid pixels: with per-tile
    normalization the statistics come from the valid pixels only (as in training)."""
    from landslide_cli.predict.raster import prepare_tile
    from landslide_cli.preprocess import InputSpec

    spec = InputSpec(normalization=normalization)
    rng = np.random.default_rng(0)
    raw = rng.integers(20, 200, (3, 12, 10)).astype(np.uint8)
    valid = np.zeros((12, 10), bool)
    valid[:, :6] = True
    outs = []
    for fill in (0, 255):
        filled = raw.copy()
        filled[:, ~valid] = fill
        out = np.empty((3, 16, 16), np.float32)
        prepare_tile(filled, valid, spec, 16, out)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    expected = spec.normalize(raw[:, :, :6])
    np.testing.assert_allclose(outs[0][:, :12, :6], expected, rtol=1e-5, atol=1e-5)
