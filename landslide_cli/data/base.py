"""Tiles on disk: :class:`Sample`, raster/HDF5 readers and the :class:`TileSet` every data set
returns.

A *sample* is one image tile plus its mask, identified by a stable key ``region/name`` (``name``
is the image file stem, Unicode NFC-normalized). Images are returned in their native dtype as
``(C, H, W)``; masks as ``(H, W)`` uint8 in ``{0, 1}``.
"""

from __future__ import annotations

import logging
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np

from landslide_cli.errors import DataError
from landslide_cli.preprocess import InputSpec

log = logging.getLogger("landslide.data")

#: File suffixes treated as rasters GDAL can read (others, e.g. ``.aux.xml``, are ignored).
RASTER_SUFFIXES = frozenset(
    {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".jp2", ".img", ".vrt", ".webp"}
)
#: Mask value policies: ``strict`` accepts only 0/1/255 (255 -> 1); ``nonzero``: any value > 0
#: is landslide (used for Bijie, whose PNG masks are conventionally read that way).
MASK_POLICIES = ("strict", "nonzero")


def nfc(text: str) -> str:
    """Unicode NFC form, so keys do not depend on how a file system spells accents."""
    return unicodedata.normalize("NFC", text)


@dataclass(frozen=True)
class Sample:
    """One tile: image file, mask file (``None`` = all background), region and name."""

    image_path: Path
    mask_path: Path | None
    region: str
    name: str

    @property
    def key(self) -> str:
        """Stable identifier ``region/name`` used in split files."""
        return f"{self.region}/{self.name}"


# --------------------------------------------------------------------------- raster helpers


def _silence_not_georeferenced() -> None:
    """Tiles (PNG, plain TIF) have no georeference by nature: drop rasterio's warning.

    A process-wide filter (re-added if something reset the filters) rather than
    ``warnings.catch_warnings``, which is not thread-safe (tiles are read from a thread pool).
    """
    from rasterio.errors import NotGeoreferencedWarning

    if not any(f[2] is NotGeoreferencedWarning and f[0] == "ignore" for f in warnings.filters):
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


@contextmanager
def open_raster(path: Path) -> Iterator[Any]:
    """``rasterio.open`` without NotGeoreferencedWarning noise; errors become DataError."""
    import rasterio
    from rasterio.errors import RasterioIOError

    _silence_not_georeferenced()
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0][:160]
        raise DataError(f"cannot read raster {path}: {first}") from None
    with ds:
        yield ds


def read_raster(path: Path, bands: Sequence[int] | None = None) -> np.ndarray:
    """Read ``(C, H, W)`` in the file's dtype; ``bands`` are 1-based indices (None = all)."""
    with open_raster(path) as ds:
        idx = list(bands) if bands else list(range(1, ds.count + 1))
        if max(idx) > ds.count or min(idx) < 1:
            raise DataError(f"{path}: has {ds.count} band(s); bands {idx} were requested")
        return ds.read(idx)


def raster_shape(path: Path) -> tuple[int, int, int, str]:
    """``(count, height, width, dtype)`` from the header only."""
    with open_raster(path) as ds:
        return ds.count, ds.height, ds.width, str(ds.dtypes[0])


def binarize_mask(mask: np.ndarray, source: str | Path, policy: str = "strict") -> np.ndarray:
    """Map a raw mask to uint8 ``{0, 1}``; ``strict`` rejects values other than 0, 1 and 255."""
    if policy == "nonzero":
        return (np.nan_to_num(mask) > 0).astype(np.uint8)
    if mask.dtype == np.uint8:
        counts = np.bincount(mask.ravel(), minlength=256)
        bad = np.flatnonzero(counts)
        bad = bad[(bad != 0) & (bad != 1) & (bad != 255)]
        if bad.size == 0:
            return (mask != 0).astype(np.uint8) if counts[255] else mask.astype(np.uint8)
    else:
        bad_px = (mask != 0) & (mask != 1) & (mask != 255)
        if not bad_px.any():
            return (mask != 0).astype(np.uint8)
        bad = np.unique(mask[bad_px])
    shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
    raise DataError(f"{source}: mask values must be 0/1 or 0/255, found {shown}")


# --------------------------------------------------------------------------------- readers


class Reader(Protocol):
    """Reads one sample; every problem is a DataError naming the file."""

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]: ...

    def check(self, sample: Sample) -> None:
        """Cheaper validation (image header + mask) used by ``skip_bad``."""
        ...

    def image_info(self, sample: Sample) -> tuple[int, int, int, str]:
        """``(bands, height, width, dtype)`` of the image as :meth:`read` returns it."""
        ...


@dataclass
class RasterReader:
    """Any GDAL raster (PNG, GeoTIFF, JPEG...) for images and masks."""

    bands: list[int] | None = None
    mask_policy: str = "strict"

    def _mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        if sample.mask_path is None:
            return np.zeros(shape, dtype=np.uint8)
        raw = read_raster(sample.mask_path, [1])[0]
        if raw.shape != tuple(shape):
            raise DataError(
                f"{sample.mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} px but image "
                f"{sample.image_path} is {shape[1]}x{shape[0]} px"
            )
        return binarize_mask(raw, sample.mask_path, self.mask_policy)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = read_raster(sample.image_path, self.bands)
        return image, self._mask(sample, image.shape[1:])

    def check(self, sample: Sample) -> None:
        count, h, w, _ = raster_shape(sample.image_path)
        if self.bands and max(self.bands) > count:
            raise DataError(f"{sample.image_path}: has {count} band(s); bands {self.bands} "
                            "were requested")
        self._mask(sample, (h, w))

    def image_info(self, sample: Sample) -> tuple[int, int, int, str]:
        count, h, w, dtype = raster_shape(sample.image_path)
        return (len(self.bands) if self.bands else count), h, w, dtype


# ---------------------------------------------------------------------------------- TileSet


@dataclass
class SplitInfo:
    """How a TileSet was selected (kept for reports)."""

    split: str = "all"
    mode: str | None = None
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    file: Path | None = None


class TileSet(Sequence[Sample]):
    """An ordered, indexable list of samples with a reader.

    ``tiles[i]`` is a :class:`Sample`; ``tiles.read(i)`` returns ``(image (C,H,W) native dtype,
    mask (H,W) uint8 in {0,1})``. Samples are sorted by key, so indices are stable.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        reader: Reader,
        *,
        dataset: str = "folder",
        root: Path | str = ".",
        split: SplitInfo | None = None,
        bands: Sequence[int] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        spec_hint: InputSpec | Callable[[TileSet], InputSpec] | None = None,
    ) -> None:
        self.samples: list[Sample] = list(samples)
        self.reader = reader
        self.dataset = dataset
        self.root = Path(root)
        self.split = split or SplitInfo()
        #: band indices chosen when the set was opened (``None``: every band of the file)
        self.bands: list[int] | None = list(bands) if bands else None
        #: ``(region or key, reason)`` for every sample left out by ``skip_bad``
        self.skipped: list[tuple[str, str]] = list(skipped)
        self._spec_hint = spec_hint

    # -- sequence protocol
    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> TileSet: ...

    def __getitem__(self, i: int | slice) -> Sample | TileSet:
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        return self.samples[i]

    def __repr__(self) -> str:
        return (f"TileSet({self.dataset!r}, root={str(self.root)!r}, split={self.split.split!r}, "
                f"n={len(self)}, regions={self.regions})")

    # -- reading
    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C,H,W) native dtype, mask (H,W) uint8 in {0,1})`` of sample ``i``."""
        return self.reader.read(self.samples[i])

    def subset(self, indices: Sequence[int] | range) -> TileSet:
        """A TileSet with only ``indices`` (same reader, split info and hint)."""
        return TileSet([self.samples[i] for i in indices], self.reader, dataset=self.dataset,
                       root=self.root, split=self.split, bands=self.bands,
                       skipped=self.skipped, spec_hint=self._spec_hint)

    def select_bands(self, image: np.ndarray, spec: InputSpec) -> np.ndarray:
        """Pick the bands ``spec`` wants from an image returned by :meth:`read`.

        An image that already has ``spec.num_bands`` bands is used as is (bands were chosen
        when the set was opened); otherwise ``spec.indices`` (1-based) select them.
        """
        return select_bands(image, spec, source=self.dataset)

    # -- description
    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    @property
    def regions(self) -> list[str]:
        """Sorted names of the regions present in this set."""
        return sorted({s.region for s in self.samples})

    def region_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[s.region] = counts.get(s.region, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def input_spec_hint(self) -> InputSpec:
        """A suggested :class:`InputSpec` (bands, scale, dtype) for training on this set."""
        hint = self._spec_hint
        if isinstance(hint, InputSpec):
            return hint
        if hint is not None:
            self._spec_hint = hint(self)
            return self._spec_hint  # type: ignore[return-value]
        return default_spec_hint(self)

    def info(self) -> dict[str, Any]:
        """JSON-friendly description (used in evaluation reports)."""
        return {
            "name": self.dataset,
            "root": str(self.root),
            "split": self.split.split,
            "split_mode": self.split.mode,
            "split_file": str(self.split.file) if self.split.file else None,
            "seed": self.split.seed,
            "ratios": list(self.split.ratios),
            "regions": self.regions,
            "tiles": len(self),
            "skipped": len(self.skipped),
            "bands": self.bands,
        }

    def validate(self, *, skip_bad: bool = False) -> list[tuple[str, str]]:
        """Check every sample (image header, mask values and size).

        Raises the first :class:`DataError`, or with ``skip_bad`` drops bad samples from this set
        and returns ``(file, reason)`` for each of them.
        """
        good: list[Sample] = []
        bad: list[tuple[str, str]] = []
        for sample in self.samples:
            try:
                self.reader.check(sample)
            except DataError as exc:
                if not skip_bad:
                    raise
                bad.append((sample.key, str(exc)))
            else:
                good.append(sample)
        self.samples = good
        self.skipped.extend(bad)
        return bad


def select_bands(image: np.ndarray, spec: InputSpec, *, source: str = "image") -> np.ndarray:
    """Return the ``spec.num_bands`` bands a model expects from a ``(C,H,W)`` or ``(N,C,H,W)``
    array (see :meth:`TileSet.select_bands`)."""
    c = image.shape[-3]
    if c == spec.num_bands:
        return image
    idx = spec.indices
    if max(idx) <= c:
        return np.take(image, [i - 1 for i in idx], axis=-3)
    raise DataError(
        f"{source}: tiles have {c} band(s) but the model expects {spec.num_bands} band(s) "
        f"({', '.join(spec.bands)}; band indices {idx})"
    )


_DTYPE_SCALE = {"uint8": 255.0, "uint16": 10000.0, "int16": 10000.0}


def default_spec_hint(tiles: TileSet) -> InputSpec:
    """RGB 8-bit -> ImageNet statistics; anything else -> per-dtype scale, mean 0.5, std 0.25."""
    if not len(tiles):
        return InputSpec()
    count, _, _, dtype = tiles.reader.image_info(tiles.samples[0])
    if count == 3 and dtype == "uint8":
        return InputSpec(band_indices=tiles.bands)
    return InputSpec(
        bands=[f"band{i}" for i in (tiles.bands or range(1, count + 1))],
        band_indices=tiles.bands,
        scale=_DTYPE_SCALE.get(dtype, 1.0),
        mean=[0.5] * count,
        std=[0.25] * count,
        dtype=dtype,
    )


@dataclass
class Listing:
    """What a data-set layout finds under its root (before splitting)."""

    samples: list[Sample]
    reader: Reader
    #: ``(region, reason)`` for unpaired images/masks and ambiguous stems
    problems: list[tuple[str, str]] = field(default_factory=list)
    default_split_mode: str = "random"
    spec_hint: InputSpec | Callable[[TileSet], InputSpec] | None = None
    #: key -> split for the ``official`` split mode (data sets that ship their own split)
    official: dict[str, str] | None = None
