"""Deterministic train/val/test splits and the split-file format.

A split file is JSON::

    {"seed": 0, "ratios": [0.8, 0.1, 0.1], "mode": "blocked",
     "train": ["region/name", ...], "val": [...], "test": [...],
     "excluded": [...], "dataset": "cas", "format": "landslide-split", "version": 1}

Keys are ``region/name`` (image stem), sorted, so a file made on one machine selects the same
tiles on another. Splits are stratified by region: every region contributes in proportion.

Modes (registry :data:`SPLIT_MODES`):

* ``random``: shuffle each region's keys with ``random.Random(f"{seed}:{region}")`` and cut.
* ``blocked``: group tiles by trailing tile number (``Hokkaido1136`` -> prefix ``Hokkaido``,
  number 1136), cut contiguous runs of numbers into blocks and assign whole blocks, so tiles
  that overlap their neighbours stay in the same split. At each boundary between blocks of
  different splits ``gap`` tiles of the val/test side are excluded, so no two consecutive tile
  numbers end up in different splits.
* ``official``: the data set's own split (Landslide4Sense TrainData/ValidData/TestData).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landslide_cli.data.base import Sample
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.registry import Registry
from landslide_cli.safety import atomic_write

SPLITS = ("train", "val", "test")
FORMAT = "landslide-split"
_NUMBERED = re.compile(r"^(.*?)(\d+)$")

#: name -> ``assign(samples, seed=, ratios=, **options) -> SplitAssignment``
SPLIT_MODES: Registry = Registry("split mode")


@dataclass
class SplitAssignment:
    """Which keys belong to train, val and test (``excluded``: in no split)."""

    mode: str
    seed: int
    ratios: tuple[float, float, float]
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def keys(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise LandslideError(f"unknown split {split!r}; choose one of: train, val, test, all")
        return list(getattr(self, split))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "version": 1,
            "seed": self.seed,
            "ratios": list(self.ratios),
            "mode": self.mode,
            **self.extra,
        }
        for name in (*SPLITS, "excluded"):
            data[name] = sorted(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "split file") -> SplitAssignment:
        if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in SPLITS):
            raise DataError(f"{source}: not a split file (needs lists 'train', 'val', 'test')")
        seen: dict[str, str] = {}
        for split in SPLITS:
            for key in data[split]:
                if not isinstance(key, str):
                    raise DataError(f"{source}: split {split!r} holds a non-string key {key!r}")
                if key in seen:
                    raise DataError(f"{source}: key {key!r} is in both {seen[key]} and {split}")
                seen[key] = split
        extra = {k: v for k, v in data.items()
                 if k not in {*SPLITS, "excluded", "seed", "ratios", "mode", "format", "version"}}
        ratios = data.get("ratios") or (0.8, 0.1, 0.1)
        return cls(mode=str(data.get("mode", "unknown")), seed=int(data.get("seed", 0)),
                   ratios=tuple(float(r) for r in ratios),  # type: ignore[arg-type]
                   train=list(data["train"]), val=list(data["val"]), test=list(data["test"]),
                   excluded=list(data.get("excluded") or []), extra=extra)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate and normalize three non-negative ratios (train, val, test)."""
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise LandslideError(f"split ratios must be three numbers, got {ratios!r}") from None
    if len(values) != 3 or any(r < 0 or not math.isfinite(r) for r in values) or sum(values) <= 0:
        raise LandslideError(f"split ratios must be three non-negative numbers, got {ratios!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total  # type: ignore[return-value]


def _by_region(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.key):
        groups.setdefault(s.region, []).append(s)
    return dict(sorted(groups.items()))


def _counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    n_val = round(n * ratios[1])
    n_test = round(n * ratios[2])
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    return n - n_val - n_test, n_val, n_test


@SPLIT_MODES.register("random", description="seeded shuffle per region, cut by ratios")
def random_split(samples: Sequence[Sample], *, seed: int = 0,
                 ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 **_: Any) -> SplitAssignment:
    out = SplitAssignment("random", seed, ratios)
    for region, items in _by_region(samples).items():
        keys = [s.key for s in items]
        random.Random(f"{seed}:{region}").shuffle(keys)
        n_train, n_val, _ = _counts(len(keys), ratios)
        out.train += keys[:n_train]
        out.val += keys[n_train:n_train + n_val]
        out.test += keys[n_train + n_val:]
    return out


def tile_number(name: str) -> tuple[str, int] | None:
    """``("Hokkaido", 1136)`` for ``Hokkaido1136``; None when the name has no trailing digits."""
    m = _NUMBERED.match(name)
    return (m.group(1), int(m.group(2))) if m else None


@SPLIT_MODES.register("blocked", description="contiguous runs of tile numbers stay together")
def blocked_split(samples: Sequence[Sample], *, seed: int = 0,
                  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  block_size: int | None = None, gap: int = 1, blocks_per_region: int = 20,
                  **_: Any) -> SplitAssignment:
    """Assign blocks of consecutive tile numbers to splits (see module docstring).

    ``block_size`` defaults to ``max(4, n_region / blocks_per_region)`` tiles.
    """
    out = SplitAssignment("blocked", seed, ratios,
                          extra={"gap": gap, "block_size": block_size})
    for region, items in _by_region(samples).items():
        size = block_size or max(4, round(len(items) / blocks_per_region))
        # group by name prefix, then cut runs of consecutive numbers into blocks
        groups: dict[str, list[tuple[int, str]]] = {}
        blocks: list[list[tuple[str, int, str]]] = []
        for s in items:
            parsed = tile_number(s.name)
            if parsed is None:
                blocks.append([("", -1, s.key)])  # unnumbered tile: a block of its own
            else:
                groups.setdefault(parsed[0], []).append((parsed[1], s.key))
        for prefix, numbered in sorted(groups.items()):
            numbered.sort()
            run: list[tuple[str, int, str]] = []
            for num, key in numbered:
                if run and (num != run[-1][1] + 1 or len(run) >= size):
                    blocks.append(run)
                    run = []
                run.append((prefix, num, key))
            if run:
                blocks.append(run)
        rng = random.Random(f"{seed}:{region}")
        rng.shuffle(blocks)
        total = sum(len(b) for b in blocks)
        target = [total * r for r in ratios]
        filled = [0, 0, 0]
        where: dict[str, int] = {}
        for block in blocks:
            deficit = [target[i] - filled[i] for i in range(3)]
            choice = max(range(3), key=lambda i: (deficit[i], -i))
            filled[choice] += len(block)
            for _, _, key in block:
                where[key] = choice
        # guard band: drop `gap` tiles on the val/test side of every boundary between splits
        dropped: set[str] = set()
        if gap > 0:
            for numbered in groups.values():
                by_num = {num: key for num, key in numbered}
                for num, key in sorted(numbered):
                    nxt = by_num.get(num + 1)
                    if nxt is None or where[nxt] == where[key]:
                        continue
                    # the later tile's side loses `gap` tiles unless it is train
                    if where[nxt] != 0:
                        side, step, start = where[nxt], 1, num + 1
                    else:
                        side, step, start = where[key], -1, num
                    for k in range(gap):
                        cand = by_num.get(start + step * k)
                        if cand is None or where[cand] != side:
                            break
                        dropped.add(cand)
        for key, split in sorted(where.items()):
            if key in dropped:
                out.excluded.append(key)
            else:
                (out.train, out.val, out.test)[split].append(key)
    return out


@SPLIT_MODES.register("official", description="the data set's own train/val/test split")
def official_split(samples: Sequence[Sample], *, seed: int = 0,
                   ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   official: dict[str, str] | None = None, **_: Any) -> SplitAssignment:
    if not official:
        raise LandslideError("split mode 'official' is only available for data sets that ship "
                             "their own split (landslide4sense TrainData/ValidData/TestData)")
    out = SplitAssignment("official", seed, ratios)
    for s in sorted(samples, key=lambda s: s.key):
        split = official.get(s.key)
        (getattr(out, split) if split in SPLITS else out.excluded).append(s.key)
    return out


def make_split(samples: Sequence[Sample], *, mode: str, seed: int = 0,
               ratios: Sequence[float] = (0.8, 0.1, 0.1), **options: Any) -> SplitAssignment:
    """Compute a split of ``samples`` with the registered ``mode``."""
    builder: Callable[..., SplitAssignment] = SPLIT_MODES.get(mode)
    return builder(samples, seed=int(seed), ratios=check_ratios(ratios), **options)


def load_split_file(path: str | Path) -> SplitAssignment:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"split file {path} is not valid JSON") from None
    return SplitAssignment.from_dict(data, source=str(path))


def save_split_file(path: str | Path, split: SplitAssignment, **extra: Any) -> Path:
    """Write ``split`` atomically (temp file + rename) as pretty JSON."""
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"cannot write split file {path}: folder {path.parent} does not exist")
    data = split.to_dict()
    data.update(extra)
    text = json.dumps(data, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".json")
    return path
