"""Scene access for ``predict``: opening, band/dtype checks, windowed reads with validity masks,
a background prefetch reader, and the streaming probability GeoTIFF (COG) writer."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from landslide_cli.errors import DataError, LandslideError
from landslide_cli.predict.windows import Block, GridLayout
from landslide_cli.preprocess import InputSpec, normalize
from landslide_cli.radiometry import (
    BandMapping,
    band_validity,
    bands_by_name,
    parse_band_tokens,
    resolve_bands,
)
from landslide_cli.safety import Staged, first_line, temp_path

#: GDAL block cache while predicting. GDAL's default (5 % of RAM) would let the cache of
#: decoded scene blocks grow with the scene; 64 MiB holds a full window row of a 16k-wide RGB
#: scene at tile 512, so overlapping rows are decoded once.
GDAL_CACHE_BYTES = 64 * 1024 * 1024

#: Data-type families: a model trained on one family accepts any member of it.
DTYPE_FAMILY = {
    "uint8": "8-bit", "int8": "8-bit",
    "uint16": "16-bit", "int16": "16-bit",
    "uint32": "32-bit integer", "int32": "32-bit integer",
    "float32": "floating point", "float64": "floating point",
}


def gdal_env(**options: Any) -> rasterio.Env:
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, **options)


#: GDAL's names of numpy data types (for the gdal_translate hint)
GDAL_TYPE_NAMES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
                   "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
                   "float64": "Float64"}


@dataclass
class SceneInfo:
    """What ``predict`` needs to know about a scene, read from its header only.

    ``path`` is a local :class:`~pathlib.Path` or a
    :class:`~landslide_cli.predict.remote.RemoteScene` (a URL or STAC Item: ``os.fspath`` is
    what GDAL opens, ``str`` the input as given, ``name``/``stem`` label it).
    """

    path: Path  # or a RemoteScene (os.PathLike with name and stem)
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs: Any  # rasterio CRS or None
    transform: Any  # affine.Affine
    nodata: float | None
    mask_flags: tuple[tuple[MaskFlags, ...], ...]
    colorinterp: tuple[str, ...] = field(default=())
    descriptions: tuple[str | None, ...] = field(default=())
    #: ``--nodata``: replaces the file's nodata value (alpha bands and masks still apply)
    nodata_override: float | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def needs_mask(self, indexes: list[int]) -> bool:
        """Whether some pixel of the chosen bands can be invalid (nodata, alpha, mask)."""
        if self.nodata_override is not None:
            return True
        return any(MaskFlags.all_valid not in self.mask_flags[i - 1] for i in indexes)

    def is_float(self, indexes: list[int]) -> bool:
        return any(np.dtype(self.dtypes[i - 1]).kind == "f" for i in indexes)


def open_scene(path: str | os.PathLike[str]) -> SceneInfo:
    """Read a scene's header; any problem is a one-line :class:`DataError`. ``path``: a local
    file, a raster URL or a :class:`~landslide_cli.predict.remote.RemoteScene`."""
    from landslide_cli.predict.remote import RemoteScene, open_source, scene_arg

    p: Any = scene_arg(path)
    if isinstance(p, str):  # a raster URL
        p = open_source(p)
    if not isinstance(p, RemoteScene):
        if not p.exists():
            raise DataError(f"scene not found: {p}")
        if not p.is_file():
            raise DataError(f"scene is not a file: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as ds:
                info = SceneInfo(
                    path=p, width=ds.width, height=ds.height, count=ds.count,
                    dtypes=tuple(ds.dtypes), crs=ds.crs, transform=ds.transform,
                    nodata=ds.nodata, mask_flags=tuple(tuple(f) for f in ds.mask_flag_enums),
                    colorinterp=tuple(ci.name for ci in ds.colorinterp),
                    descriptions=tuple(ds.descriptions),
                )
    except RasterioError as exc:
        what = "cannot read the remote scene" if isinstance(p, RemoteScene) \
            else "not a raster GDAL can read"
        raise DataError(f"{p}: {what} ({first_line(exc)})") from None
    if info.count == 0 or info.width == 0 or info.height == 0:
        raise DataError(f"{p}: raster has no pixels or no bands")
    return info


def parse_bands(bands: str | Sequence[int | str] | None) -> list[int | str] | None:
    """``"1,2,3"``, ``"red,green,blue"`` or a list -> 1-based numbers and band names (resolved
    per scene by :func:`select_bands`); ``None`` stays ``None``."""
    return parse_band_tokens(bands)


def select_bands(scene: SceneInfo, spec: InputSpec,
                 bands: Sequence[int | str] | None) -> list[int]:
    """1-based band indices to read from ``scene`` for a model with ``spec``.

    ``bands`` (``--bands``: numbers or names, see :func:`~landslide_cli.radiometry.resolve_bands`)
    wins; else the model's ``band_indices``; else, when the scene has more bands than the
    model and its descriptions/colour interpretation name the model's bands, those; else, when
    the scene has exactly as many bands as the model expects, all of them. Anything else is a
    one-line error that says what the model expects.
    """
    expects = f"{spec.num_bands} bands ({', '.join(spec.bands)})"
    named = None
    if bands is None and not spec.band_indices and scene.count > spec.num_bands:
        named = bands_by_name(spec.bands, scene.descriptions, scene.colorinterp)
    if bands is not None:
        if len(bands) != spec.num_bands:
            raise DataError(f"--bands {','.join(map(str, bands))}: the model expects {expects}")
        chosen = resolve_bands(bands, scene.descriptions, scene.colorinterp, scene=scene.name)
    elif spec.band_indices:
        chosen = list(spec.band_indices)
    elif named is not None:
        chosen = named
    else:
        if scene.count != spec.num_bands:
            hint = " (an alpha band is not a data band)" if "alpha" in scene.colorinterp else ""
            raise DataError(
                f"{scene.name} has {scene.count} bands but the model expects {expects}{hint}; "
                "choose them with --bands, e.g. --bands "
                + ",".join(str(i) for i in range(1, spec.num_bands + 1))
            )
        chosen = list(range(1, spec.num_bands + 1))
    bad = [b for b in chosen if b > scene.count]
    if bad:
        raise DataError(
            f"{scene.name} has {scene.count} bands, cannot read band {bad[0]} "
            f"(the model expects {expects})"
        )
    return chosen


def check_dtype(scene: SceneInfo, spec: InputSpec, indexes: list[int]) -> None:
    """Refuse data of another type family than the model was trained on (see docs/predict.md).

    Scaling is taken verbatim from the checkpoint (``raw / scale``), so feeding 16-bit
    reflectance to an 8-bit model (scale 255) would silently give garbage.
    """
    want = DTYPE_FAMILY.get(spec.dtype, spec.dtype)
    for i in indexes:
        have = scene.dtypes[i - 1]
        if DTYPE_FAMILY.get(have, have) != want:
            raise DataError(
                f"{scene.name} band {i} is {have} but the model expects {spec.dtype} data "
                f"({', '.join(spec.bands)} divided by {spec.scale:g}) and --rescale none "
                f"passes values unchanged; use --rescale auto (or percentile:2,98, "
                f"range:MIN,MAX)"
            )


# --------------------------------------------------------------------------- windowed reading


@dataclass
class WindowItem:
    """One window in stitching order: its batch slot (None: skipped) and validity mask."""

    row: int
    col: int
    slot: int | None
    valid: np.ndarray | None  #: (h, w) bool or None (all valid)


@dataclass
class BatchItem:
    batch: np.ndarray | None  #: (k, C, T, T) float32 normalized, or None if all skipped
    windows: list[WindowItem]


def read_window(ds: Any, indexes: list[int], y0: int, x0: int, h: int, w: int, *,
                use_mask: bool, is_float: bool, nodata: float | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw ``(C, h, w)`` pixels and an ``(h, w)`` validity mask (None: all valid);
    ``nodata`` (``--nodata``) replaces the file's nodata value."""
    win = Window(x0, y0, w, h)
    raw = ds.read(indexes, window=win)
    if not (use_mask or is_float or nodata is not None):
        return raw, None
    return raw, band_validity(ds, raw, indexes, window=win, nodata=nodata, use_mask=use_mask)


def prepare_tile(raw: np.ndarray, valid: np.ndarray | None, spec: InputSpec,
                 tile: int, out: np.ndarray) -> None:
    """Normalize ``raw`` per ``spec`` into ``out`` (C, tile, tile), padding by mirroring.

    Invalid pixels are set to 0 after normalization (the band mean), so nodata fill values do
    not leak extreme inputs into their valid neighbours' receptive fields.
    """
    h, w = raw.shape[1:]
    whole = h == tile and w == tile
    # per-tile statistics over the valid pixels only; a whole window goes straight into out
    x = normalize(raw, spec, valid, out=out if whole else None)
    if valid is not None:
        x[:, ~valid] = 0.0
    if not whole:
        out[...] = np.pad(x, ((0, 0), (0, tile - h), (0, tile - w)), mode="symmetric")


class PrefetchReader:
    """Read, mask and normalize windows in a background thread, a few batches ahead.

    The thread owns its own dataset handle (GDAL handles are not thread-safe); batches travel
    through a bounded queue, so at most ``prefetch + 2`` batches exist at once.
    """

    _END = object()

    def __init__(self, scene: SceneInfo, layout: GridLayout, indexes: list[int],
                 spec: InputSpec, batch_size: int, *, prefetch: int = 2,
                 rescale: BandMapping | None = None, resampler: Any = None,
                 terrain: Any = None) -> None:
        """``resampler``: a :class:`~landslide_cli.predict.resample.WindowResampler` that
        turns each native window into model pixels (``--resample-to``), or ``None``;
        ``terrain``: a :class:`~landslide_cli.predict.terrain.TerrainSource` that adds the
        model's terrain bands from ``--dem`` to each window (after ``--rescale``), or
        ``None``."""
        self.scene, self.layout, self.indexes, self.spec = scene, layout, indexes, spec
        self.resampler = resampler
        self.terrain = terrain
        self.rescale = rescale  # the scene's --rescale mapping (None: values as read)
        self.batch_size = max(1, int(batch_size))
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="landslide-reader", daemon=True)
        self.read_seconds = 0.0

    def __enter__(self) -> PrefetchReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.05)
            self._thread.join(timeout=0.05)

    def __iter__(self) -> Iterator[BatchItem]:
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import time

        scene, spec, tile = self.scene, self.spec, self.layout.tile
        if self.resampler is not None:
            tile = self.resampler.tile  # native windows become (at most) one model tile
        use_mask = scene.needs_mask(self.indexes)
        is_float = scene.is_float(self.indexes)
        try:
            with warnings.catch_warnings(), gdal_env():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(scene.path) as ds, (
                        self.terrain.open() if self.terrain is not None
                        else contextlib.nullcontext()) as terrain:
                    pending: list[WindowItem] = []
                    batch: np.ndarray | None = None
                    k = 0
                    for r, c, y0, x0, h, w in self.layout.windows():
                        if self._stop.is_set():
                            return
                        t0 = time.perf_counter()
                        try:
                            raw, valid = read_window(ds, self.indexes, y0, x0, h, w,
                                                     use_mask=use_mask, is_float=is_float,
                                                     nodata=scene.nodata_override)
                        except RasterioError as exc:
                            raise DataError(
                                f"{scene.path}: cannot read pixels at row {y0}, column {x0} "
                                f"(damaged or truncated file? {first_line(exc)})"
                            ) from None
                        skip = valid is not None and not valid.any()
                        if not skip:
                            if self.rescale is not None:
                                raw = self.rescale.apply(raw)
                            if terrain is not None:  # the model's bands, scene and DEM valid
                                raw, valid = terrain.window(raw, valid, y0, x0)
                                skip = valid is not None and not valid.any()
                        if skip:
                            pending.append(WindowItem(r, c, None, valid))
                        else:
                            if batch is None:
                                batch = np.empty((self.batch_size, spec.model_channels, tile, tile),
                                                 dtype=np.float32)
                            if self.resampler is None:
                                prepare_tile(raw, valid, spec, tile, batch[k])
                            else:
                                prepare_tile(*self.resampler.to_model(raw, valid), spec, tile,
                                             batch[k])
                            pending.append(WindowItem(r, c, k, valid))
                            k += 1
                        self.read_seconds += time.perf_counter() - t0
                        if k == self.batch_size:
                            if not self._put(BatchItem(batch, pending)):
                                return
                            pending, batch, k = [], None, 0
                    if pending and not self._put(
                            BatchItem(None if batch is None else batch[:k], pending)):
                        return
            self._put(self._END)
        except BaseException as exc:  # forwarded to the consumer thread
            self._put(exc)


# --------------------------------------------------------------------------- probability raster

PROB_DTYPES = ("uint8", "float32")
#: uint8 probabilities are stored as round(p * 254); 255 marks nodata.
UINT8_SCALE = 254
UINT8_NODATA = 255


class ProbWriter:
    """Stream stitched blocks into a temporary tiled GeoTIFF, then publish a COG atomically.

    Blocks arrive in window order with arbitrary (non tile-aligned) offsets, so the streaming
    file is uncompressed (GDAL rewrites uncompressed tiles in place); :meth:`commit` then builds
    overviews and writes the compressed Cloud Optimized GeoTIFF next to the target and renames
    it onto the target.
    """

    #: band description a GIS shows for the probability band
    BAND_DESCRIPTION = "landslide probability"

    def __init__(self, target: Path, scene: SceneInfo, dtype: str = "uint8", *,
                 model: str | None = None, tags: dict[str, Any] | None = None) -> None:
        """``model`` (its name) and ``tags`` go into the file's metadata (GDAL tags)."""
        if dtype not in PROB_DTYPES:
            raise LandslideError(f"--prob-dtype must be one of {', '.join(PROB_DTYPES)}")
        self.target, self.scene, self.dtype = Path(target), scene, dtype
        self.nodata = UINT8_NODATA if dtype == "uint8" else float("nan")
        self._staged = Staged(self.target, ".cog.tif")  # also removes stale temporaries
        self.stream_path = temp_path(self.target, ".stream.tif")
        self.cog_path = self._staged.tmp
        profile = {
            "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1,
            "dtype": dtype, "crs": scene.crs, "transform": scene.transform,
            "nodata": self.nodata, "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "none", "bigtiff": "if_safer", "sparse_ok": True,
        }
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.stream_path, "w", **profile)
        except RasterioError as exc:
            raise LandslideError(f"cannot write {self.target}: {first_line(exc)}") from None
        self._describe(model, tags)

    def _describe(self, model: str | None, tags: dict[str, Any] | None) -> None:
        """Band description, the uint8 encoding as scale/offset (``p = value * scale +
        offset``, so GIS tools show probabilities) and the model in the tags; the COG copy
        keeps them."""
        ds = self._ds
        ds.set_band_description(1, self.BAND_DESCRIPTION)
        if self.dtype == "uint8":
            ds.scales, ds.offsets = (1.0 / UINT8_SCALE,), (0.0,)
            encoding = f"p = value / {UINT8_SCALE} (scale 1/{UINT8_SCALE}, offset 0), " \
                       f"nodata {UINT8_NODATA}"
        else:
            encoding = "p = value, nodata NaN"
        meta = {"LANDSLIDE_PROBABILITY": encoding, "SCENE": self.scene.path.name}
        if model:
            meta["MODEL"] = model
        meta.update({str(k).upper(): str(v) for k, v in (tags or {}).items() if v is not None})
        ds.update_tags(**meta)

    def encode(self, block: Block) -> np.ndarray:
        valid = block.valid
        if self.dtype == "uint8":
            data = np.rint(np.clip(block.prob, 0.0, 1.0) * UINT8_SCALE).astype(np.uint8)
            if valid is not None:
                data[~valid] = UINT8_NODATA
        else:
            data = block.prob.astype(np.float32, copy=True)
            if valid is not None:
                data[~valid] = np.nan
        return data

    def write(self, block: Block) -> None:
        h, w = block.shape
        self._ds.write(self.encode(block), 1, window=Window(block.x0, block.y0, w, h))

    def finish(self) -> None:
        """Compress with overviews into a COG-layout temporary file beside the target."""
        from rasterio.enums import Resampling
        from rasterio.shutil import copy as rio_copy

        self._ds.close()
        predictor = "2" if self.dtype == "uint8" else "3"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                if _has_cog():
                    rio_copy(self.stream_path, self.cog_path, driver="COG", COMPRESS="DEFLATE",
                             PREDICTOR=predictor, BLOCKSIZE="512", BIGTIFF="IF_SAFER",
                             OVERVIEW_RESAMPLING="AVERAGE")
                else:  # pragma: no cover - GDAL < 3.1
                    with rasterio.open(self.stream_path, "r+") as ds:
                        factors = _overview_factors(self.scene.width, self.scene.height)
                        if factors:
                            ds.build_overviews(factors, Resampling.average)
                    rio_copy(self.stream_path, self.cog_path, driver="GTiff", TILED="YES",
                             BLOCKXSIZE="512", BLOCKYSIZE="512", COMPRESS="DEFLATE",
                             PREDICTOR=predictor, COPY_SRC_OVERVIEWS="YES", BIGTIFF="IF_SAFER")
        except RasterioError as exc:
            raise LandslideError(f"cannot write {self.target}: {first_line(exc)}") from None
        finally:
            self.stream_path.unlink(missing_ok=True)
            Path(str(self.stream_path) + ".ovr").unlink(missing_ok=True)

    def commit(self) -> None:
        """Rename the finished COG onto the target."""
        self._staged.commit()

    def cleanup(self) -> None:
        if not self._ds.closed:
            self._ds.close()
        self._staged.cleanup()
        for side in ("", ".ovr", ".aux.xml"):
            Path(str(self.stream_path) + side).unlink(missing_ok=True)


def _has_cog() -> bool:
    with rasterio.Env() as env:
        return "COG" in env.drivers()


def _overview_factors(width: int, height: int, smallest: int = 256) -> list[int]:
    factors, f = [], 2
    while max(width, height) // f >= smallest:
        factors.append(f)
        f *= 2
    return factors
