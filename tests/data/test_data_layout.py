"""Data-set layouts: pairing by stem, bad files, regions, bijie, landslide4sense, folder."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
from _tiles import CAS_REGIONS, tile_pair, write_raster

from landslide_cli.data import DATASETS, Sample, TileSet, match_regions, open_dataset
from landslide_cli.errors import DataError, LandslideError


def _check_pairs(tiles: TileSet) -> None:
    """Every image's red band encodes its own mask, so a mis-pairing cannot go unnoticed."""
    for i in range(len(tiles)):
        image, mask = tiles.read(i)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        np.testing.assert_array_equal(image[0] > 127, mask.astype(bool), err_msg=tiles[i].key)


def test_registry_names():
    assert {"folder", "cas", "bijie", "landslide4sense"} <= set(DATASETS.names())
    assert DATASETS.resolve("L4S") == "landslide4sense"


def test_cas_tree_regions_pairs_and_255_masks(cas_tree):
    root = cas_tree()
    tiles = open_dataset("cas", root, split="all")
    assert tiles.regions == sorted(f for f, *_ in CAS_REGIONS)
    assert len(tiles) == sum(n for *_, n in CAS_REGIONS)
    assert tiles.region_counts()["Longxi River（UAV）"] == 6
    assert isinstance(tiles[0], Sample) and tiles[0].mask_path is not None
    assert tiles[0].mask_path.parent.name == "mask"  # label/ (inverted preview) is ignored
    _check_pairs(tiles)  # includes the 0/255 masks of Longxi River（UAV）
    longxi = open_dataset("cas", root, split="all", regions="Longxi River（UAV）")
    assert max(int(longxi.read(i)[1].max()) for i in range(len(longxi))) == 1
    assert tiles.keys == sorted(tiles.keys)
    image, _ = tiles.read(0)
    assert image.shape == (3, 24, 24) and image.dtype == np.uint8


def test_missing_mask_is_an_error_naming_the_file(cas_tree, caplog):
    root = cas_tree(missing_mask=True)
    with pytest.raises(DataError, match=r"palu0031\.tif"):
        open_dataset("cas", root, split="all")
    with caplog.at_level(logging.WARNING, logger="landslide"):
        tiles = open_dataset("cas", root, split="all", skip_bad=True)
    assert len(tiles) == 41 and len(tiles.skipped) == 1
    assert "palu0031" in tiles.skipped[0][1]
    assert any("skipped 1 bad" in r.getMessage() for r in caplog.records)
    _check_pairs(tiles)  # the unpaired image shifts nothing: pairing is by stem


def test_pairing_is_by_stem_not_listing_order(tmp_path):
    rng = np.random.default_rng(1)
    # image and mask folders list in different orders (different names sort differently with
    # their extensions) and the masks are PNG while the images are TIF
    for name in ("b", "a10", "a9", "A", "c_1"):
        image, mask = tile_pair(rng, 16)
        write_raster(tmp_path / "r" / "img" / f"{name}.tif", image)
        write_raster(tmp_path / "r" / "mask" / f"{name}.png", mask * 255)
    write_raster(tmp_path / "r" / "mask" / "zz_orphan.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"zz_orphan\.png has no image"):
        open_dataset("folder", tmp_path / "r", split="all")
    tiles = open_dataset("folder", tmp_path / "r", split="all", skip_bad=True)
    assert [s.name for s in tiles] == sorted(["b", "a10", "a9", "A", "c_1"])
    assert tiles.regions == ["r"]
    _check_pairs(tiles)


def test_bad_mask_values_and_size_mismatch(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "set"
    for name in ("ok", "bad", "small"):
        image, mask = tile_pair(rng, 16)
        write_raster(root / "img" / f"{name}.png", image)
        if name == "bad":
            mask[0, 0] = 7
        if name == "small":
            mask = mask[:8]
        write_raster(root / "mask" / f"{name}.png", mask)
    tiles = open_dataset("folder", root, split="all")  # pairing is fine; checks run on read
    by_name = {s.name: i for i, s in enumerate(tiles)}
    with pytest.raises(DataError, match=r"bad\.png: mask values must be 0/1 or 0/255, found 7"):
        tiles.read(by_name["bad"])
    with pytest.raises(DataError, match=r"small\.png: mask is 16x8 px but image"):
        tiles.read(by_name["small"])
    kept = open_dataset("folder", root, split="all", skip_bad=True)
    assert [s.name for s in kept] == ["ok"] and len(kept.skipped) == 2


def test_region_matching_ignores_case_brackets_and_spaces(cas_tree):
    available = [f for f, *_ in CAS_REGIONS] + ["Longxi River(SAT)", "Hokkaido Iburi-Tobu"]
    assert match_regions(["longxi river (uav)"], available) == ["Longxi River（UAV）"]
    assert match_regions("LongxiRiver（SAT）", available) == ["Longxi River(SAT)"]
    assert match_regions(["Jiuzhai Valley（UAV-0.2m）"], available) == \
        ["Jiuzhai valley (UAV-0.2m)"]
    assert match_regions("PALU, hokkaido", available) == ["Hokkaido Iburi-Tobu", "palu"]
    with pytest.raises(LandslideError, match="ambiguous"):
        match_regions("longxi", available)
    with pytest.raises(LandslideError, match="region 'atlantis' not found; available"):
        match_regions("atlantis", available)
    root = cas_tree()
    tiles = open_dataset("cas", root, split="all", regions=["jiuzhai valley (uav-0.2m)", "PALU"])
    assert tiles.regions == ["Jiuzhai valley (UAV-0.2m)", "palu"]
    assert len(tiles) == 35


def test_bad_roots_and_empty_splits(tmp_path, cas_tree):
    with pytest.raises(DataError, match="data set root not found"):
        open_dataset("cas", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no tiles found"):
        open_dataset("folder", tmp_path / "empty")
    with pytest.raises(LandslideError, match="unknown dataset 'nosuch'"):
        open_dataset("nosuch", tmp_path)
    root = cas_tree()
    with pytest.raises(LandslideError, match="unknown split"):
        open_dataset("cas", root, split="holdout")
    # 5 Jiuzhai tiles: the 10 % test share rounds to nothing
    with pytest.raises(DataError, match=r"split 'test' of cas data .* is empty"):
        open_dataset("cas", root, split="test", split_mode="random", regions="jiuzhai")
    empty = open_dataset("cas", root, split="test", split_mode="random", regions="jiuzhai",
                         allow_empty=True)
    assert len(empty) == 0


def test_folder_layouts_on_shared_tiles(shared_data):
    base = shared_data / "landslides"
    tiles = open_dataset("folder", base, split="all")
    assert tiles.regions == ["amunet_uav", "bijie", "hokkaido", "sichuan"]
    assert tiles.region_counts() == {"amunet_uav": 642, "bijie": 36, "hokkaido": 20,
                                     "sichuan": 36}
    hok = next(i for i, s in enumerate(tiles) if s.region == "hokkaido")
    assert tiles[hok].image_path.suffix == ".tif" and tiles[hok].mask_path.suffix == ".png"
    image, mask = tiles.read(hok)
    assert image.shape == (3, 256, 256) and mask.shape == (256, 256) and mask.max() == 1
    one = open_dataset("folder", base / "bijie", split="all")
    assert one.regions == ["bijie"] and len(one) == 36
    assert one.input_spec_hint.bands == ["red", "green", "blue"]
    assert one.input_spec_hint.scale == 255.0


def test_bijie_layout(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "Bijie-landslide-dataset"
    for k in range(4):
        image, mask = tile_pair(rng, 20)
        write_raster(root / "landslide" / "image" / f"df{k:03d}.png", image)
        write_raster(root / "landslide" / "mask" / f"df{k:03d}.png", mask * 255)
    for k in range(3):
        image, _ = tile_pair(rng, 18)
        image[0] = 10  # no landslide: red band low everywhere
        write_raster(root / "non-landslide" / "image" / f"n{k:03d}.png", image)
    tiles = open_dataset("bijie", tmp_path, split="all")  # finds the inner folder
    assert tiles.regions == ["landslide", "non-landslide"]
    assert tiles.region_counts() == {"landslide": 4, "non-landslide": 3}
    neg = [i for i, s in enumerate(tiles) if s.region == "non-landslide"]
    assert all(tiles[i].mask_path is None for i in neg)
    image, mask = tiles.read(neg[0])
    assert mask.shape == image.shape[1:] == (18, 18) and mask.max() == 0
    _check_pairs(tiles)


def _write_h5(path, key, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset(key, data=array)


def test_landslide4sense_h5_bands_and_official_split(tmp_path):
    rng = np.random.default_rng(4)
    for part, n in (("TrainData", 5), ("ValidData", 2), ("TestData", 2)):
        for k in range(1, n + 1):
            img = rng.normal(size=(8, 8, 14)).astype(np.float32)
            img[..., 3] = 40 + k  # B4 marks the tile
            mask = (rng.random((8, 8)) > 0.7).astype(np.uint8)
            _write_h5(tmp_path / part / "img" / f"image_{k}.h5", "img", img)
            _write_h5(tmp_path / part / "mask" / f"mask_{k}.h5", "mask", mask)
    val = open_dataset("landslide4sense", tmp_path, split="val")
    assert val.split.mode == "official" and val.regions == ["ValidData"] and len(val) == 2
    image, mask = val.read(0)
    assert image.shape == (14, 8, 8) and image.dtype == np.float32 and mask.shape == (8, 8)
    rgb = open_dataset("l4s", tmp_path, split="train", bands="rgb")
    image, _ = rgb.read(0)
    assert image.shape == (3, 8, 8) and np.all(image[0] == 41)  # B4 first
    spec = rgb.input_spec_hint
    assert spec.bands == ["B4", "B3", "B2"] and spec.band_indices == [4, 3, 2]
    assert spec.mean[0] == pytest.approx(-0.0625) and spec.scale == 1.0
    named = open_dataset("l4s", tmp_path, split="test", bands=["B2", "slope", 14])
    assert named.read(0)[0].shape[0] == 3
    assert named.input_spec_hint.bands == ["B2", "slope", "dem"]
    with pytest.raises(LandslideError, match="unknown Landslide4Sense band 'B13x'"):
        open_dataset("l4s", tmp_path, split="test", bands="B13x")
    (tmp_path / "TestData" / "mask" / "mask_2.h5").unlink()
    with pytest.raises(DataError, match=r"no mask for image .*image_2\.h5"):
        open_dataset("l4s", tmp_path, split="test")
