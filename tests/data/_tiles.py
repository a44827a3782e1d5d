"""Helpers for the data-layer tests: tiny rasters in the real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_raster(path: Path, array: np.ndarray) -> Path:
    """Write (H, W) or (C, H, W) uint8 as GeoTIFF (.tif) or PNG (.png), no georeference."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    arr = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    driver = "PNG" if path.suffix.lower() == ".png" else "GTiff"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=arr.shape[2], height=arr.shape[1],
                           count=arr.shape[0], dtype=arr.dtype.name) as dst:
            dst.write(arr)
    return path


def tile_pair(rng: np.random.Generator, size: int = 24, value: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB tile whose red band encodes its mask (red > 127 <=> landslide)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    mask[y:y + size // 3, x:x + size // 3] = 1
    image = rng.integers(0, 100, (3, size, size), dtype=np.uint8)
    image[0] = np.where(mask > 0, 200, 50)
    return image, (mask * value).astype(np.uint8)


def tile_folder(root: Path, count: int, seed: int) -> Path:
    """``count`` random 40 x 36 tile pairs in ``root/img`` and ``root/mask`` (folder layout)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        image, mask = tile_pair(rng, 40)
        write_raster(root / "img" / f"t{k}.png", image[:, :, :36])
        write_raster(root / "mask" / f"t{k}.png", mask[:, :36])
    return root


#: the CAS sub-datasets of the miniature tree: (folder name, file prefix, mask value, tiles)
CAS_REGIONS = [
    ("Longxi River（UAV）", "longxi_UAV", 255, 6),
    ("Jiuzhai valley (UAV-0.2m)", "jiuzzhaigou_0.2m_UVA", 1, 5),
    ("palu", "palu", 1, 30),
]


def build_cas_tree(root: Path, *, missing_mask: bool = False, size: int = 24) -> Path:
    """``root/<sub-dataset>/{img,label,mask}/<name>.tif``; ``missing_mask`` adds an image
    ``palu/img/palu0031.tif`` without a mask."""
    rng = np.random.default_rng(0)
    for folder, prefix, value, n in CAS_REGIONS:
        for k in range(1, n + 1):
            name = f"{prefix}{k:04d}"
            image, mask = tile_pair(rng, size, value)
            write_raster(root / folder / "img" / f"{name}.tif", image)
            write_raster(root / folder / "label" / f"{name}.tif", 255 - image)
            write_raster(root / folder / "mask" / f"{name}.tif", mask)
    if missing_mask:
        image, _ = tile_pair(rng, size)
        write_raster(root / "palu" / "img" / "palu0031.tif", image)
    return root
