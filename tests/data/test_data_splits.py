"""Deterministic splits, the blocked split and split files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from landslide_cli.data import Sample, load_split_file, make_split, open_dataset, tile_number
from landslide_cli.errors import DataError, LandslideError


def _samples(region: str, prefix: str, numbers) -> list[Sample]:
    return [Sample(Path(f"{prefix}{n}.tif"), Path(f"m{n}.tif"), region, f"{prefix}{n:04d}")
            for n in numbers]


def _where(split) -> dict[str, str]:
    return {k: name for name in ("train", "val", "test") for k in getattr(split, name)}


def test_tile_number_parsing():
    assert tile_number("Hokkaido1136") == ("Hokkaido", 1136)
    assert tile_number("jiuzzhaigou_0.2m_UVA0500") == ("jiuzzhaigou_0.2m_UVA", 500)
    assert tile_number("no_digits_here") is None


def test_random_split_is_deterministic_stratified_and_disjoint():
    samples = _samples("a", "t", range(100)) + _samples("b", "u", range(40))
    s1 = make_split(samples, mode="random", seed=7)
    s2 = make_split(list(reversed(samples)), mode="random", seed=7)  # order does not matter
    assert s1.to_dict() == s2.to_dict()
    assert make_split(samples, mode="random", seed=8).test != s1.test
    where = _where(s1)
    assert len(where) == 140  # disjoint and complete
    assert (len(s1.train), len(s1.val), len(s1.test)) == (112, 14, 14)
    assert sum(k.startswith("b/") for k in s1.test) == 4  # each region contributes its share


def test_blocked_split_keeps_neighbours_together():
    samples = (_samples("Hokkaido Iburi-Tobu", "Hokkaido", range(1, 301))
               + _samples("palu", "palu", [*range(1, 41), *range(60, 90)]))
    split = make_split(samples, mode="blocked", seed=3)
    where = _where(split)
    assert set(where) | set(split.excluded) == {s.key for s in samples}
    assert not set(where) & set(split.excluded)
    for region, prefix, top in (("Hokkaido Iburi-Tobu", "Hokkaido", 300), ("palu", "palu", 89)):
        for n in range(1, top):
            a, b = f"{region}/{prefix}{n:04d}", f"{region}/{prefix}{n + 1:04d}"
            if a in where and b in where:
                assert where[a] == where[b], (a, b)
    n_used = len(where)
    assert len(split.excluded) < 0.05 * len(samples)
    assert 0.72 < len(split.train) / n_used < 0.88
    assert len(split.val) > 10 and len(split.test) > 10
    assert make_split(samples, mode="blocked", seed=3).to_dict() == split.to_dict()


def test_cas_defaults_to_blocked_and_split_file_round_trip(cas_tree, tmp_path):
    root = cas_tree()
    path = tmp_path / "splits" / "cas.json"
    with pytest.raises(DataError, match="does not exist"):
        open_dataset("cas", root, split="train", split_file=path)
    path.parent.mkdir()
    train = open_dataset("cas", root, split="train", split_file=path, seed=5)
    assert train.split.mode == "blocked" and path.exists()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert {"seed", "ratios", "mode", "train", "val", "test"} <= set(data)
    assert data["seed"] == 5 and data["mode"] == "blocked" and data["ratios"] == [0.8, 0.1, 0.1]
    assert data["train"] == sorted(data["train"]) == train.keys
    assert "Longxi River（UAV）/longxi_UAV0001" in json.dumps(data, ensure_ascii=False) or \
        any(k.startswith("Longxi River（UAV）/") for k in data["train"] + data["val"])
    # the file wins over new arguments; edits to it are honoured
    moved = data["train"].pop(0)
    data["test"].append(moved)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    test = open_dataset("cas", root, split="test", split_file=path, seed=99,
                        split_mode="random")
    assert moved in test.keys and test.split.seed == 5 and test.split.mode == "blocked"
    assert load_split_file(path).test == data["test"]
    # a key the data set does not have is an error
    data["val"].append("palu/palu9999")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="palu9999"):
        open_dataset("cas", root, split="val", split_file=path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        open_dataset("cas", root, split="val", split_file=path)


def test_split_modes_and_ratios_are_validated(cas_tree):
    root = cas_tree()
    with pytest.raises(LandslideError, match="unknown split mode 'stripes'"):
        open_dataset("cas", root, split_mode="stripes")
    with pytest.raises(LandslideError, match="ratios"):
        open_dataset("cas", root, ratios=(0.8, -0.1, 0.3))
    with pytest.raises(LandslideError, match="official"):
        open_dataset("cas", root, split_mode="official")
    parts = [open_dataset("cas", root, split=s, split_mode="random", allow_empty=True)
             for s in ("train", "val", "test")]
    keys = [set(p.keys) for p in parts]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert sum(map(len, keys)) == len(open_dataset("cas", root, split="all"))
