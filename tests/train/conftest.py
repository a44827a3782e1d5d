"""Fixtures for the training tests: a tiny synthetic two-region data set (folder layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_tile(folder: Path, name: str, h: int, w: int, rng: np.random.Generator) -> None:
    from PIL import Image

    img = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y0:y0 + h // 3, x0:x0 + w // 3] = 1
    img[mask == 1] = (160 + img[mask == 1] // 2).astype(np.uint8)  # bright "scars"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "mask").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / "img" / f"{name}.png")
    Image.fromarray(mask).save(folder / "mask" / f"{name}.png")


def make_tiles(root: Path, sizes: dict[str, list[tuple[int, int]]], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for region, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes):
            write_tile(root / region, f"{region}_{i}", h, w, rng)
    return root


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two regions, four tiles; one tile is not square and not a multiple of 32."""
    root = tmp_path_factory.mktemp("tiles")
    return make_tiles(root, {"alpha": [(64, 64), (64, 64)], "beta": [(80, 72), (64, 64)]})


@pytest.fixture(autouse=True)
def _one_thread():
    """Training tests run single-threaded (the CI box shares two cores among many jobs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
