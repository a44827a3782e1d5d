"""The data layer shared by training and evaluation.

```python
from landslide_cli.data import DATASETS, open_dataset, Sample, TileSet, SegmentationDataset, Augment

tiles = open_dataset("cas", "/data/CAS", split="test", regions=["palu"])
image, mask = tiles.read(0)          # (C,H,W) native dtype, (H,W) uint8 in {0,1}
ds = SegmentationDataset(tiles, spec, augment=Augment(), size=512)
```

See docs/data.md for the layouts, split files and augmentations.
"""

from landslide_cli.data.base import (
    RASTER_SUFFIXES,
    Listing,
    RasterReader,
    Sample,
    SplitInfo,
    TileSet,
    binarize_mask,
    read_raster,
    select_bands,
)
from landslide_cli.data.datasets import (
    DATASETS,
    canonical_region,
    match_regions,
    open_dataset,
    pair_by_stem,
)
from landslide_cli.data.splits import (
    SPLIT_MODES,
    SPLITS,
    SplitAssignment,
    load_split_file,
    make_split,
    save_split_file,
    tile_number,
)

__all__ = [
    "DATASETS",
    "RASTER_SUFFIXES",
    "SPLITS",
    "SPLIT_MODES",
    "Augment",
    "Listing",
    "RasterReader",
    "Sample",
    "SegmentationDataset",
    "SplitAssignment",
    "SplitInfo",
    "TileSet",
    "binarize_mask",
    "canonical_region",
    "crop_or_pad",
    "load_split_file",
    "make_split",
    "match_regions",
    "open_dataset",
    "pair_by_stem",
    "read_raster",
    "save_split_file",
    "select_bands",
    "tile_number",
]

#: the torch parts, imported on first use (so that the CLI and ONNX Runtime predict load without
#: torch)
_TORCH_NAMES = ("Augment", "SegmentationDataset", "crop_or_pad")


def __getattr__(name: str) -> object:
    if name in _TORCH_NAMES:
        from landslide_cli.data import torch_data

        return getattr(torch_data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
