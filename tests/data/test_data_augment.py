"""SegmentationDataset normalization, crops/pads and seeded augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiles import tile_folder, tile_pair, write_raster

from landslide_cli.data import Augment, SegmentationDataset, open_dataset
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec, normalize


@pytest.fixture
def tiles(tmp_path):
    return open_dataset("folder", tile_folder(tmp_path / "t", 4, 5), split="all")


def _red_is_mask(item: dict, spec: InputSpec) -> np.ndarray:
    """Per valid pixel: does the (denormalized) red band still agree with the mask?"""
    red = item["image"][0] * spec.std[0] + spec.mean[0]  # scaled space (raw / 255)
    agree = (red > 0.5) == (item["mask"] == 1)
    return agree[item["valid"]].numpy()


def test_native_size_matches_the_spec_normalization(tiles):
    spec = InputSpec()
    ds = SegmentationDataset(tiles, spec)
    item = ds[1]
    raw, mask = tiles.read(1)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 40, 36)
    np.testing.assert_allclose(item["image"].numpy(), normalize(raw, spec), atol=1e-5)
    assert item["mask"].dtype == torch.int64
    np.testing.assert_array_equal(item["mask"].numpy(), mask)
    assert item["valid"].all() and item["name"] == "t1" and item["region"] == "t"
    assert item["index"] == 1


@pytest.mark.parametrize("normalization", ["fixed", "tile"])
def test_derived_index_channels_match_inference(tiles, normalization):
    """A model trained with ``input.derived`` sees the same index channels at training as
    ``preprocess.normalize`` gives it in eval/predict/export; padding scores 0."""
    spec = InputSpec(derived=["rg"], normalization=normalization)
    item = SegmentationDataset(tiles, spec)[2]
    raw, _ = tiles.read(2)
    assert item["image"].shape == (4, 40, 36)
    np.testing.assert_allclose(item["image"].numpy(), normalize(raw, spec), atol=1e-5)
    padded = SegmentationDataset(tiles, spec, size=48)[2]
    assert padded["image"].shape == (4, 48, 48)
    assert float(padded["image"][3][~padded["valid"]].abs().max()) == 0.0
    aug = SegmentationDataset(tiles, spec, Augment(color_jitter=0.3), size=32, seed=1)[2]
    rg = aug["image"][3][aug["valid"]]
    assert aug["image"].shape == (4, 32, 32) and 0.0 <= float(rg.min()) <= float(rg.max()) <= 1.0


def test_centre_crop_and_pad_without_augment(tiles):
    spec = InputSpec()
    small = SegmentationDataset(tiles, spec, size=32)[0]
    assert small["image"].shape == (3, 32, 32) and small["valid"].all()
    raw, _ = tiles.read(0)
    np.testing.assert_allclose(small["image"].numpy(), normalize(raw[:, 4:36, 2:34], spec),
                               atol=1e-5)
    big = SegmentationDataset(tiles, spec, size=48)[0]
    assert big["image"].shape == (3, 48, 48)
    assert int(big["valid"].sum()) == 40 * 36
    assert torch.all(big["image"][:, ~big["valid"]] == 0)  # pad = band mean -> 0
    assert torch.all(big["mask"][~big["valid"]] == 0)
    assert torch.all(SegmentationDataset(tiles, spec, size=48, pad_label=255)[0]["mask"]
                     [~big["valid"]] == 255)


def test_augment_moves_image_and_mask_together_and_is_seeded(tiles):
    spec = InputSpec()
    ds = SegmentationDataset(tiles, spec, Augment(), size=32, seed=11)
    for i in range(len(ds)):
        assert _red_is_mask(ds[i], spec).all()
    a, b = ds[2], ds[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    changed = False
    for epoch in range(1, 4):
        ds.set_epoch(epoch)
        changed |= not torch.equal(ds[2]["image"], a["image"])
    assert changed
    # rot90 really rotates: over many seeds a non-square tile comes back transposed
    free = SegmentationDataset(tiles, spec, Augment(flips=False), seed=0)
    shapes = set()
    for epoch in range(12):
        free.set_epoch(epoch)
        shapes.add(tuple(free[0]["image"].shape))
    assert shapes == {(3, 40, 36), (3, 36, 40)}


def test_scale_and_colour_jitter(tiles):
    spec = InputSpec()
    aug = Augment(color_jitter=0.3, scale_jitter=0.25)
    ds = SegmentationDataset(tiles, spec, aug, size=32, seed=2)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
        assert set(item["mask"].unique().tolist()) <= {0, 1}
        assert _red_is_mask(item, spec).mean() > 0.9  # bilinear image vs nearest mask edges
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8)
    out = Augment(rot90=False, flips=False, color_jitter=0.5).photometric(image, g)
    assert not torch.equal(out, image) and out.min() >= 0 and out.max() <= 1
    big, mask = Augment(scale_jitter=0.5).rescale(torch.rand(3, 20, 20),
                                                  torch.ones(20, 20, dtype=torch.int64),
                                                  torch.Generator().manual_seed(1))
    assert big.shape[-2:] == mask.shape and mask.dtype == torch.int64
    with pytest.raises(LandslideError, match="color_jitter"):
        Augment(color_jitter=1.5)


def test_band_selection_follows_the_spec(tmp_path):
    rng = np.random.default_rng(6)
    image, mask = tile_pair(rng, 16)
    rgba = np.concatenate([image, np.full((1, 16, 16), 255, np.uint8)])
    write_raster(tmp_path / "s" / "img" / "x.tif", rgba)
    write_raster(tmp_path / "s" / "mask" / "x.tif", mask)
    tiles = open_dataset("folder", tmp_path / "s", split="all")
    assert tiles.read(0)[0].shape[0] == 4
    item = SegmentationDataset(tiles, InputSpec())[0]  # 3-band model: bands 1..3
    np.testing.assert_allclose(item["image"].numpy(), normalize(image, InputSpec()), atol=1e-5)
    bgr = InputSpec(band_indices=[3, 2, 1])
    item = SegmentationDataset(tiles, bgr)[0]
    np.testing.assert_allclose(item["image"].numpy(), normalize(image[::-1].copy(), bgr),
                               atol=1e-5)
    pre = open_dataset("folder", tmp_path / "s", split="all", bands="3,2,1")
    assert pre.read(0)[0].shape[0] == 3 and pre.input_spec_hint.band_indices == [3, 2, 1]
    with pytest.raises(LandslideError, match="expects 5 band"):
        SegmentationDataset(tiles, InputSpec(bands=list("abcde"), mean=[0] * 5,
                                             std=[1] * 5))[0]


def test_scale_range_is_log_uniform_and_checked():
    aug = Augment(rot90=False, flips=False, scale_range=(0.25, 1.0))
    g = torch.Generator().manual_seed(3)
    sides = []
    for _ in range(400):
        image, mask = aug.rescale(torch.rand(3, 64, 64), torch.ones(64, 64, dtype=torch.int64), g)
        assert image.shape[-2:] == mask.shape and set(mask.unique().tolist()) == {1}
        sides.append(image.shape[-1])
    sides = np.asarray(sides)
    assert sides.min() >= 16 and sides.max() <= 64
    # log-uniform on [1/4, 1]: half of the factors below 1/2 (uniform would give a third)
    assert 0.42 < np.mean(sides < 32) < 0.58
    # it overrides the linear jitter; strings from the command line parse
    assert Augment(scale_jitter=0.1, scale_range="0.5,0.5").rescale(
        torch.rand(3, 20, 20), torch.zeros(20, 20, dtype=torch.int64))[0].shape[-1] == 10
    for bad in ("0,1", "2,1", "1", "a,b", (0.5, 9)):
        with pytest.raises(LandslideError, match="scale range"):
            Augment(scale_range=bad)


def test_scale_range_in_the_training_config():
    from landslide_cli.train.config import SegmentConfig

    cfg = SegmentConfig(scale_range="0.33,1.5")
    cfg.validate()
    assert cfg.scale_range == [0.33, 1.5]
    with pytest.raises(LandslideError, match="--scale-range"):
        SegmentConfig(scale_range=[2, 1]).validate()


def test_density_jitter_reweights_the_tile_statistics(tiles):
    from landslide_cli.data.torch_data import standardize_tile

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 6, 5)))
    mask = torch.from_numpy((rng.random((6, 5)) < 0.3).astype(np.int64))
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[0, 0] = False
    # integer weights = the statistics of a tile whose landslide pixels appear twice
    w = torch.where(mask == 1, 2.0, 1.0).double() * valid
    x = image.numpy()[:, valid.numpy()]
    dup = np.concatenate([x, image.numpy()[:, (valid & (mask == 1)).numpy()]], axis=1)
    want = (image.numpy() - dup.mean(1)[:, None, None]) / dup.std(1)[:, None, None]
    got = standardize_tile(image, valid, w).numpy()
    np.testing.assert_allclose(got[:, valid.numpy()], want[:, valid.numpy()], rtol=1e-5)
    assert got[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(standardize_tile(image, valid, valid.double()).numpy(),
                               standardize_tile(image, valid).numpy(), atol=1e-6)
    aug = Augment(density_jitter=2.0)
    factors = set()
    for seed in range(20):
        sw = aug.stat_weights(mask, valid, torch.Generator().manual_seed(seed))
        assert torch.all(sw[mask == 0] == valid[mask == 0].double())
        f = float(sw[(mask == 1) & valid][0])
        assert np.exp(-2) <= f <= np.exp(2)
        factors.add(round(f, 6))
    assert len(factors) == 20
    # in the data set: the same crop standardised differently from epoch to epoch
    spec = InputSpec(normalization="tile")
    ds = SegmentationDataset(tiles, spec, Augment(rot90=False, flips=False, density_jitter=2.0),
                             size=None, seed=0)
    ref = SegmentationDataset(tiles, spec, Augment(rot90=False, flips=False), size=None, seed=0)
    assert not torch.allclose(ds[0]["image"], ref[0]["image"])
    with pytest.raises(LandslideError, match="density_jitter"):
        Augment(density_jitter=-1)
