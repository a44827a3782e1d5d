"""A terrain band in training: one tiny step on the real Landslide4Sense files with
``--bands red,green,blue,slope`` through the CLI (CPU), and what the checkpoint records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from _train_args import TINY_SEGMENT
from rasterio.transform import from_origin

from landslide_cli.checkpoint import load_checkpoint, read_metadata
from landslide_cli.data.l4s import L4S_MEAN, L4S_SLOPE_STEP, L4S_STD


def test_segment_on_real_l4s_with_a_slope_band(run_cli, shared_data, tmp_path):
    root = shared_data / "landslide4sense"
    run = tmp_path / "seg"
    res = run_cli("train", "segment", "--root", root, "-d", "l4s", "--bands",
                  "red,green,blue,slope", "--skip-bad", "--out", run, "--steps", "1",
                  *TINY_SEGMENT, "--val-size", "64")
    assert res.exit_code == 0, res.stderr
    meta = read_metadata(run / "best.safetensors")
    spec = meta.input_spec
    assert spec.bands == ["B4", "B3", "B2", "slope"] and spec.band_indices == [4, 3, 2, 13]
    assert meta.arch.in_chans == 4 and spec.band_scales() == [1.0] * 4
    # the slope band's statistics are in degrees (the L4S baseline's, converted)
    assert spec.mean[3] == pytest.approx(L4S_MEAN[12] / L4S_SLOPE_STEP)  # 6.77 degrees
    assert spec.std[3] == pytest.approx(L4S_STD[12] / L4S_SLOPE_STEP)  # 18.3 degrees
    assert spec.mean[:3] == pytest.approx([L4S_MEAN[3], L4S_MEAN[2], L4S_MEAN[1]])
    # the training percentiles of the slope band are degrees too (0..74 in these files)
    assert 0.0 <= spec.percentile(2)[3] < spec.percentile(98)[3] <= 90.0
    assert meta.training["dataset"]["bands"] == [4, 3, 2, 13]
    _, state = load_checkpoint(run / "best.safetensors")
    first = next(v for k, v in state.items() if k.endswith("patch_embed.proj.weight"))
    assert first.shape[1] == 4 and torch.isfinite(first).all()  # the backbone takes 4 bands

    # the trained model maps a 16-bit RGB scene (10 m, UTM) with a 30 m DEM of the same area
    rng = np.random.default_rng(0)
    scene, dem, out = tmp_path / "s2.tif", tmp_path / "dem30.tif", tmp_path / "s2.gpkg"
    _tif(scene, rng.integers(200, 3000, (3, 64, 64)).astype(np.uint16),
         from_origin(600000.0, 3000000.0, 10.0, 10.0))
    y, x = np.mgrid[0:24, 0:24]
    _tif(dem, (800.0 + 30.0 * 0.3 * x + 10.0 * y)[None].astype(np.float32),
         from_origin(599940.0, 3000060.0, 30.0, 30.0))
    res = run_cli("predict", scene, "--out", out, "--model", run / "best.safetensors",
                  "--dem", dem, "--bands", "1,2,3", "--backend", "torch", "--tile", "64",
                  "--json")  # (--bands: the scene's bands only; L4S indices differ)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["scenes"][0]["dem"] == str(dem) and out.is_file()


def _tif(path, data, transform) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype.name, crs="EPSG:32645",
                       transform=transform) as ds:
        ds.write(data)


def test_unknown_l4s_band_is_one_line(run_cli, shared_data, tmp_path):
    res = run_cli("train", "segment", "--root", shared_data / "landslide4sense", "-d", "l4s",
                  "--bands", "red,green,blue,aspect", "--skip-bad", "--out", tmp_path / "x",
                  *TINY_SEGMENT)
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert "unknown Landslide4Sense band 'aspect'" in res.stderr
    assert not (tmp_path / "x").exists()
