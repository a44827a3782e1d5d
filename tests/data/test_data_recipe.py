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


def test_reference_percentiles_skip_fill_and_weigh_images_equally():
    from landslide_cli.preprocess import reference_percentiles

    rng = np.random.default_rng(1)
    small = rng.integers(100, 201, size=(3, 16, 16)).astype(np.uint8)   # 256 pixels
    big = np.zeros((3, 64, 64), np.uint8)                               # 4096 pixels
    big[:, :32] = rng.integers(1, 51, size=(3, 32, 64))                 # half fill (0)
    pct = reference_percentiles([small, big], percents=(0.0, 50.0, 100.0), max_pixels=512)
    assert list(pct) == ["0", "50", "100"]
    # pixels that are 0 in every band are fill and never count; both images give 256 pixels
    valid_big = big.reshape(3, -1)[:, np.any(big.reshape(3, -1) != 0, axis=0)]
    assert all(v >= 0 for v in pct["0"])
    assert pct["100"] == [float(small[c].max()) for c in range(3)]
    # equal weight: the median sits between the two images' ranges (the big one has more
    # valid pixels but contributes the same number)
    assert all(40 <= v <= 110 for v in pct["50"]), pct["50"]
    assert valid_big.shape[1] > 256


def test_input_spec_percentiles_round_trip_and_validation():
    spec = InputSpec(percentiles={"2": [1, 2, 3], "98.0": [200, 201, 202]})
    assert spec.percentile(2) == [1.0, 2.0, 3.0] and spec.percentile(98) == [200.0, 201.0, 202.0]
    assert spec.percentile(50) is None and InputSpec().percentile(2) is None
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(LandslideError, match="percentiles"):
        InputSpec(percentiles={"2": [1, 2]})
    with pytest.raises(LandslideError, match="percentiles"):
        InputSpec(percentiles={"p2": [1, 2, 3]})


def test_training_records_the_training_percentiles(tiles):
    from landslide_cli.train import common
    from landslide_cli.train.config import SegmentConfig

    cfg = SegmentConfig(data=str(tiles.root), out="unused", size=32)
    spec = common.input_spec_for(tiles, cfg)
    assert spec.percentiles is not None and set(spec.percentiles) >= {"2", "50", "98"}
    pix = np.concatenate([tiles.read(i)[0].reshape(3, -1) for i in range(len(tiles))], axis=1)
    assert spec.percentile(50) == pytest.approx(np.percentile(pix, 50, axis=1), abs=8)
