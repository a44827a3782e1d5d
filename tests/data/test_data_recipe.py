"""Recipe levers in the data pipeline: per-tile normalization (train == predict), photometric
sensor augmentation and landslide-centred crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiles import tile_folder, write_raster

from landslide_cli.data import Augment, SegmentationDataset, open_dataset
from landslide_cli.data.photometric import dct_quantise, jpeg, photometric
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import TILE_STD_MIN, InputSpec, normalize

TILE = InputSpec(normalization="tile")


@pytest.fixture
def tiles(tmp_path):
    return open_dataset("folder", tile_folder(tmp_path / "t", 3, 7), split="all")


def test_tile_normalization_formula_and_defaults():
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16)).astype(np.uint8)
    z = normalize(raw, TILE)
    x = raw / 255.0
    m = x.mean(axis=(-2, -1), keepdims=True)
    s = x.std(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(z, (x - m) / s, atol=1e-5)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(-2, -1)), 0, atol=1e-5)
    # a flat band is not amplified; brightness / contrast changes cancel out
    flat = np.full((3, 8, 8), 100, np.uint8)
    assert np.all(normalize(flat, TILE) == 0)
    np.testing.assert_allclose(normalize(raw[0] * 0.5 + 20, TILE), z[0], atol=1e-4)
    assert TILE_STD_MIN > 0
    # old metadata without the field reads as fixed; the field round-trips
    old = InputSpec().to_dict()
    old.pop("normalization")
    assert InputSpec.from_dict(old).normalization == "fixed"
    assert InputSpec.from_dict(TILE.to_dict()) == TILE
    with pytest.raises(LandslideError, match="normalization"):
        InputSpec(normalization="scene")


def test_tile_normalization_over_valid_pixels():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (3, 10, 10)).astype(np.float32)
    valid = np.ones((10, 10), bool)
    valid[:, 7:] = False
    raw[:, ~valid] = 0  # nodata fill must not bias the statistics
    z = normalize(raw, TILE, valid)
    np.testing.assert_allclose(z[:, :, :7], normalize(raw[:, :, :7], TILE), atol=1e-5)
    assert np.all(z[:, ~valid] == 0)


def test_train_time_and_predict_time_tile_normalization_agree(tiles):
    # native size, no augmentation: the dataset item is exactly spec.normalize(raw)
    item = SegmentationDataset(tiles, TILE)[1]
    raw, _ = tiles.read(1)
    np.testing.assert_allclose(item["image"].numpy(), TILE.normalize(raw), atol=1e-5)
    # centre crop: the statistics are the crop's (what a predict window of that size sees)
    crop = SegmentationDataset(tiles, TILE, size=32)[0]
    raw, _ = tiles.read(0)
    np.testing.assert_allclose(crop["image"].numpy(), TILE.normalize(raw[:, 4:36, 2:34]),
                               atol=1e-5)
    # padded crop: padding is excluded from the statistics, as predict's validity mask
    big = SegmentationDataset(tiles, TILE, size=48)[0]
    valid = big["valid"].numpy()
    padded = np.zeros((3, 48, 48), np.float32)
    padded[:, valid] = raw.reshape(3, -1)
    np.testing.assert_allclose(big["image"].numpy(), normalize(padded, TILE, valid), atol=1e-5)


def test_photometric_is_seeded_bounded_and_changes_the_image():
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.random((3, 64, 64)).astype(np.float32))
    assert photometric(image, 0.0) is image
    outs = [photometric(image, 1.0, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    changed = 0
    for s in range(12):
        out = photometric(image, 1.0, torch.Generator().manual_seed(s))
        assert out.shape == image.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        changed += not torch.allclose(out, image, atol=1e-3)
    assert changed >= 10
    one = photometric(image[:1], 1.0, torch.Generator().manual_seed(0))  # any band count
    assert one.shape == (1, 64, 64)
    # JPEG (Pillow) and the DCT fallback keep a smooth picture at high quality
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([yy, xx, (yy + xx) / 2])
    for fn in (jpeg, dct_quantise):
        assert float((fn(smooth, 95) - smooth).abs().mean()) < 0.02, fn
        assert float((fn(smooth, 20) - smooth).abs().mean()) < 0.05, fn
    with pytest.raises(LandslideError):
        Augment(photometric_strength=1.5)


def test_fg_crop_centres_on_landslide_pixels(tmp_path):
    image = np.zeros((3, 128, 128), np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[100:104, 5:9] = 1  # one small scar in a corner
    write_raster(tmp_path / "r" / "img" / "a.png", image)
    write_raster(tmp_path / "r" / "mask" / "a.png", mask)
    tiles = open_dataset("folder", tmp_path / "r", split="all")
    aug = Augment(rot90=False, flips=False, fg_crop=1.0)
    ds = SegmentationDataset(tiles, InputSpec(), augment=aug, size=32, seed=0)
    hits = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        hits.append(int(ds[0]["mask"].sum()))
    assert all(h > 0 for h in hits)
    plain = SegmentationDataset(tiles, InputSpec(), augment=Augment(rot90=False, flips=False),
                                size=32, seed=0)
    misses = 0
    for epoch in range(8):
        plain.set_epoch(epoch)
        misses += int(plain[0]["mask"].sum()) == 0
    assert misses > 0  # without fg_crop most random crops miss the scar
