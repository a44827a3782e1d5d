"""``predict_scenes``: GeoTIFF scenes -> landslide polygons in one GeoPackage (+ probability COGs).

Data flow per scene (memory bounded by tile, overlap and batch size, see docs/predict.md)::

    reader thread: windowed read + mask + normalize -> bounded queue of batches
    main thread:   backend.predict(batch) -> Stitcher (overlap margins only) -> final blocks
                   -> probability COG stream, Polygonizer (merge across borders), footprint
                   -> finished polygons measured, filtered, reprojected, appended to the GPKG
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from landslide_cli import __version__
from landslide_cli.backends import Backend
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.precision import check_precision, precision_fields, precision_row
from landslide_cli.predict.merge import Inventory, LandslideSink, output_measure, scene_extent
from landslide_cli.predict.raster import (
    PROB_DTYPES,
    BatchItem,
    PrefetchReader,
    ProbWriter,
    SceneInfo,
    check_dtype,
    gdal_env,
    open_scene,
    parse_bands,
    select_bands,
)
from landslide_cli.predict.remote import RemoteScene, local_inputs, open_source, scene_arg
from landslide_cli.predict.resample import (
    ResolutionCheck,
    WindowResampler,
    check_resolution,
    parse_resample_to,
    scene_ground_sampling,
)
from landslide_cli.predict.terrain import (
    DemInfo,
    TerrainSource,
    check_dem_covers,
    check_terrain_request,
    open_dem,
    plan_terrain,
)
from landslide_cli.predict.vectors import (
    FootprintBuilder,
    PolygonBatch,
    Polygonizer,
    Reprojector,
    SceneGeo,
    check_vector_targets,
    open_vector_writer,
)
from landslide_cli.predict.windows import GridLayout, Stitcher
from landslide_cli.preprocess import InputSpec
from landslide_cli.radiometry import (
    BandMapping,
    check_nodata,
    identity_mapping,
    parse_rescale,
    scene_mapping,
)
from landslide_cli.reporting import ProgressHandle, Reporter, as_reporter
from landslide_cli.safety import Staged, check_distinct, check_target, first_line, same_file
from landslide_cli.terrain import spectral_spec
from landslide_cli.tta import check_tta, tta_of, with_tta

#: finished polygons are appended to the GeoPackage in chunks of this many
WRITE_CHUNK = 5000


@dataclass
class SceneSummary:
    scene: str
    path: str
    width: int
    height: int
    crs: str | None
    bands: list[int]
    tiles: int = 0
    tiles_skipped: int = 0
    polygons: int = 0
    landslide_area_m2: float = 0.0
    valid_pixels: int = 0
    seconds: float = 0.0
    prob_out: str | None = None
    #: the ``--rescale`` mapping applied (per band, scene units -> model units), see
    #: :meth:`landslide_cli.radiometry.BandMapping.to_dict`
    rescale: dict[str, Any] | None = None
    #: ground sampling distance in metres (None: no CRS), the GSD windows were resampled to
    #: (``--resample-to``; None: native) and the resolution warning, if any
    gsd_m: float | None = None
    resample_m: float | None = None
    resolution_warning: str | None = None
    #: ``--dem``: the DEM the model's terrain bands came from (None: no terrain band)
    dem: str | None = None


@dataclass
class PredictSummary:
    """What a ``predict`` run did; ``to_dict()`` is the ``--json`` output."""

    out: str
    scenes: list[SceneSummary]
    tiles: int
    tiles_skipped: int
    polygons: int
    landslide_area_m2: float
    seconds: float
    forward_seconds: float
    peak_rss_mb: float
    device: str
    backend: str
    model: str
    model_sha256: str
    threshold: float
    tile: int
    overlap: float
    batch_size: int
    crs: str | None
    prob_out: list[str] = field(default_factory=list)
    quicklooks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: test-time augmentation (``--tta``) and BatchNorm re-estimation (``--adapt-bn``:
    #: ``{"layers", "windows", "batches"}``, ``None`` when off)
    tta: str = "none"
    adapt_bn: dict[str, Any] | None = None
    #: ``--precision`` used (fp32, bf16, fp16, int8) and its check against fp32 (``None``: none)
    precision: str = "fp32"
    precision_check: dict[str, Any] | None = None

    #: polygons of overlapping scenes dissolved into others by the overlap rule (merge.py)
    dissolved: int = 0
    #: scenes that failed twice (distributed runs): ``{"scene", "path", "error"}``
    failed: list[dict[str, str]] = field(default_factory=list)
    #: scenes taken from the resume state of an earlier run (``--resume``), not read again
    resumed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scenes"] = [asdict(s) for s in self.scenes]
        for key in ("landslide_area_m2", "seconds", "forward_seconds", "peak_rss_mb"):
            data[key] = round(float(data[key]), 3)
        return data


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``getrusage`` maxrss), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------- options

#: the smallest window predict runs
MIN_TILE = 16


@dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` windows, thresholds, filters and writes; checked by :meth:`validate`.

    Attributes:
        tile: window size (default: the backend's fixed tile or the model's ``InputSpec.tile``).
        overlap: fraction of the tile shared by neighbouring windows, in ``[0, 0.9]``.
        batch_size: windows per forward pass.
        bands: 1-based bands to read (``"1,2,3"`` or a list); default from the model.
        threshold: probability at or above which a pixel is a landslide (default: the model's).
        min_area: drop polygons smaller than this many square metres.
        simplify: simplification tolerance in metres (topology preserving), 0 = exact pixels.
        prob_out: also write the probability map as a COG (a folder or a ``{scene}`` pattern
            when there are several scenes).
        prob_dtype: ``"uint8"`` (``round(p*254)``, nodata 255) or ``"float32"`` (nodata NaN).
        crs: output CRS for the vector output (anything rasterio's ``CRS.from_user_input``
            reads; default: the first scene's).
        quicklook: also write a PNG of each scene with its polygons drawn over it (several
            scenes: ``<stem>_<scene stem>.png``); published together with the vector output.
        overwrite: replace existing outputs (never an input of the run).
        rescale: radiometric conversion into the model's input domain, ``auto``, ``none``,
            ``percentile[:LOW,HIGH]`` or ``range:MIN,MAX`` (see :mod:`landslide_cli.radiometry`).
        nodata: supplies or replaces the scenes' nodata value (alpha bands and masks still
            apply).
        tta: test-time augmentation, a name of :data:`landslide_cli.tta.TTA_MODES`
            (``none``, ``flips``, ``d4``): probabilities averaged over flips/rotations.
        adapt_bn: re-estimate the model's BatchNorm statistics on up to ``adapt_bn_windows``
            windows of the scenes before predicting (torch backend only, see
            :mod:`landslide_cli.adapt`).
        resample_to: ``None``/``"none"`` (windows at the scene's resolution), ``"auto"``
            (scenes outside the model's ``resolution_m`` are resampled to its nearest end) or
            a ground sampling distance in metres; see :mod:`landslide_cli.predict.resample`.
        dem: the elevation model (a raster in metres, any CRS) that the model's terrain
            bands (``dem``, ``slope``) are made from, window by window on each scene's grid;
            required by such a model and refused by any other (see
            :mod:`landslide_cli.predict.terrain`).
    """

    tile: int | None = None
    overlap: float = 0.25
    batch_size: int = 4
    bands: str | Sequence[int] | None = None
    threshold: float | None = None
    min_area: float = 0.0
    simplify: float = 0.0
    prob_out: str | os.PathLike[str] | None = None
    prob_dtype: str = "uint8"
    crs: Any = None
    quicklook: str | os.PathLike[str] | None = None
    overwrite: bool = False
    rescale: str = "auto"
    nodata: float | None = None
    tta: str = "none"
    adapt_bn: bool = False
    adapt_bn_windows: int = 64
    resample_to: str | float | None = None
    #: ``auto``, ``fp32``, ``bf16`` or ``int8`` (:mod:`landslide_cli.precision`)
    precision: str = "auto"
    dem: str | os.PathLike[str] | None = None

    def validate(self) -> None:
        """Raise a one-line :class:`LandslideError` for the first value out of range."""
        if self.tile is not None and int(self.tile) < MIN_TILE:
            raise LandslideError(f"--tile {self.tile}: must be at least {MIN_TILE}")
        if not 0.0 <= self.overlap <= 0.9:
            raise LandslideError(f"--overlap {self.overlap}: must be between 0 and 0.9")
        if self.batch_size < 1:
            raise LandslideError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise LandslideError(f"--threshold {self.threshold}: must be between 0 and 1")
        if self.min_area < 0 or self.simplify < 0:
            raise LandslideError("--min-area and --simplify must not be negative")
        if self.prob_dtype not in PROB_DTYPES:
            raise LandslideError(
                f"--prob-dtype {self.prob_dtype!r}: use {' or '.join(PROB_DTYPES)}")
        self.band_list()
        parse_rescale(self.rescale)
        check_tta(self.tta)
        if self.adapt_bn_windows < 1:
            raise LandslideError(f"--adapt-bn-windows {self.adapt_bn_windows}: must be at "
                                 "least 1")
        parse_resample_to(self.resample_to)
        check_precision(self.precision)

    def band_list(self) -> list[int | str] | None:
        """:attr:`bands` parsed: numbers and names (``None``: the model's bands)."""
        return parse_bands(self.bands)


def _chosen_options(options: PredictOptions | None, keywords: PredictOptions) -> PredictOptions:
    """``options`` when given (then the option keywords must keep their defaults), else the
    options built from the keywords (validated later, by :func:`plan_predict`)."""
    if options is None:
        options = keywords
    elif keywords != PredictOptions():
        raise TypeError("predict_scenes: pass the options either as options= or as keywords, "
                        "not both")
    return options


# ---------------------------------------------------------------------------- planning


@dataclass
class PlannedScene:
    """One input scene of a run and what is read from and written for it."""

    info: SceneInfo
    label: str  # the ``scene`` column: the file name, or the path where names repeat
    bands: list[int]  # 1-based band indexes read
    prob_target: Path | None
    look_target: Path | None
    rescale: BandMapping | None = None  # the --rescale mapping (None: values as read)
    resolution: ResolutionCheck | None = None  # GSD vs the model's range (--resample-to)
    resampler: WindowResampler | None = None  # None: windows run at native resolution
    terrain: TerrainSource | None = None  # the model's terrain bands from --dem (None: none)

    def reader_options(self) -> dict[str, Any]:
        """The keywords of the scene's :class:`~landslide_cli.predict.raster.PrefetchReader`
        besides its layout, bands and spec."""
        return {"rescale": self.rescale, "resampler": self.resampler, "terrain": self.terrain}


@dataclass
class PredictPlan:
    """Everything decided before any output is written: targets checked, scenes opened,
    backend resolved, window size, threshold and output CRS chosen."""

    out: Path
    options: PredictOptions
    scenes: list[PlannedScene]
    backend: Backend
    tile: int
    threshold: float
    crs: Any
    warnings: list[str]
    #: set by :func:`prepare_backend` when ``--adapt-bn`` re-estimated BatchNorm statistics
    adaptation: dict[str, Any] | None = None

    def total_windows(self) -> int:
        return sum(len(self.layout(s.info, s.resampler)) for s in self.scenes)

    def layout(self, info: SceneInfo, resampler: WindowResampler | None = None) -> GridLayout:
        """The scene's windows, in native pixels (with ``resampler``: sized so that each one
        resampled to the model's scale fills at most one tile)."""
        if resampler is not None:
            rows, cols = resampler.native_tile
            return GridLayout(info.height, info.width, rows, self.options.overlap, cols)
        return GridLayout(info.height, info.width, self.tile, self.options.overlap)


def plan_predict(scenes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 out: str | os.PathLike[str], options: PredictOptions, *, model: Any,
                 backend: str, device: str) -> PredictPlan:
    """Check every input and output and open the backend; raise before anything is written."""
    paths = _scene_paths(scenes)
    options.validate()
    if options.adapt_bn:
        from landslide_cli.adapt import check_adapt_request

        check_adapt_request(model, backend)
    band_list = options.band_list()
    dem = open_dem(options.dem) if options.dem is not None else None
    sources = _open_sources(paths, model)  # URLs and STAC Items -> what GDAL opens
    paths = local_inputs(sources)  # the local files read (never overwritten)
    if dem is not None:
        paths = [*paths, Path(dem.path)]
    vector_targets = check_vector_targets(out, overwrite=options.overwrite, inputs=paths)
    infos = [open_scene(p) for p in sources]
    infos = _with_nodata(infos, options.nodata)
    if dem is not None:  # (before a model is built: these do not depend on it)
        for info, label in zip(infos, _scene_labels(infos), strict=True):
            check_dem_covers(dem, info, label)
    prob_targets = _check_targets(_prob_targets(options.prob_out, infos), options, paths,
                                  what="--prob-out", suffixes=(".tif", ".tiff"))
    look_targets = _check_targets(_quicklook_targets(options.quicklook, sources), options,
                                  paths, what="--quicklook", suffixes=(".png",))
    check_distinct([*vector_targets, *(("--prob-out", t) for t in prob_targets),
                    *(("--quicklook", t) for t in look_targets)])
    requested_crs = _resolve_crs(options.crs)
    _check_scenes_against_header(model, infos, band_list, options.rescale, options.dem)
    be = _resolve_backend(model, backend, device, options)
    check_terrain_request(be.spec, options.dem)
    if options.adapt_bn:
        from landslide_cli.adapt import torch_model

        torch_model(be)  # a one-line error for ONNX, baselines and stand-ins
    tile = _window_size(be, options.tile)
    threshold = float(be.threshold if options.threshold is None else options.threshold)
    bands = [_scene_bands(info, spectral_spec(be.spec), band_list, options.rescale)
             for info in infos]
    out_crs, warnings = _output_crs(infos, requested_crs)
    if getattr(be, "precision_note", ""):
        warnings.append(str(be.precision_note))  # e.g. bf16 failed its check: fp32
    planned = [PlannedScene(*row) for row in zip(infos, _scene_labels(infos), bands,
                                                  prob_targets, look_targets, strict=True)]
    _plan_rescale(planned, spectral_spec(be.spec), options, warnings)
    _plan_resolution(planned, be.spec, options, tile, warnings)
    _plan_terrain(planned, be.spec, dem)
    return PredictPlan(out=Path(out), options=options, scenes=planned, backend=be, tile=tile,
                       threshold=threshold, crs=out_crs, warnings=warnings)


def prepare_backend(plan: PredictPlan, reporter: Reporter | None = None) -> None:
    """Make ``plan.backend`` the model the run predicts with: BatchNorm statistics
    re-estimated on the plan's scenes (``--adapt-bn``, on a copy of the model; recorded in
    ``plan.adaptation``), then wrapped for test-time augmentation (``--tta``)."""
    opts = plan.options
    if opts.adapt_bn:
        from landslide_cli.adapt import SceneWindows, adapt_backend, choose_windows, scene_batches

        scenes = [SceneWindows(s.info, s.bands, plan.layout(s.info, s.resampler),
                               s.reader_options())
                  for s in plan.scenes]  # read exactly as SceneRun reads them
        chosen = choose_windows(scenes, opts.adapt_bn_windows)
        batches = scene_batches(scenes, chosen, spec=plan.backend.spec,
                                batch_size=opts.batch_size)
        plan.backend, done = adapt_backend(plan.backend, batches, total=len(chosen),
                                           reporter=reporter)
        plan.adaptation = done.to_dict()
        if done.note:
            plan.warnings.append(done.note)
            as_reporter(reporter).warn(done.note)
    plan.backend = with_tta(plan.backend, opts.tta)


def _scene_paths(scenes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                 ) -> list[Any]:
    """The scene paths (one or several; URLs stay text), refusing none and one scene given
    twice (it would duplicate every polygon)."""
    given = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
    out: list[Any] = []
    for p in map(scene_arg, given):
        for q in out:
            if same_file(p, q):
                raise LandslideError(
                    f"scene {p} is given twice (as {q}): every polygon would be counted twice")
        out.append(p)
    if not out:
        raise LandslideError("no scene given")
    return out


def _quicklook_targets(quicklook: str | os.PathLike[str] | None,
                       scenes: Sequence[Path]) -> list[Path | None]:
    if quicklook is None:
        return [None] * len(scenes)
    base = Path(quicklook)
    if len(scenes) == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{s.stem}{base.suffix or '.png'}") for s in scenes]


def _prob_targets(prob_out: str | os.PathLike[str] | None,
                  scenes: Sequence[SceneInfo]) -> list[Path | None]:
    if prob_out is None:
        return [None] * len(scenes)
    text = str(prob_out)
    if "{scene}" in text:
        targets = [Path(text.replace("{scene}", s.path.stem)) for s in scenes]
    elif Path(text).is_dir():
        targets = [Path(text) / f"{s.path.stem}_prob.tif" for s in scenes]
    elif len(scenes) == 1:
        targets = [Path(text)]
    else:
        raise LandslideError(
            "--prob-out with several scenes must be a folder or contain {scene}, "
            "e.g. --prob-out probs/{scene}_prob.tif")
    if len(set(targets)) != len(targets):
        raise LandslideError("--prob-out: two scenes would write the same probability file")
    return targets


def _check_targets(targets: list[Path | None], options: PredictOptions, inputs: list[Path], *,
                   what: str, suffixes: tuple[str, ...]) -> list[Path | None]:
    """``targets`` after :func:`~landslide_cli.safety.check_target` accepted each one."""
    for target in targets:
        if target is not None:
            check_target(target, overwrite=options.overwrite, what=what, suffixes=suffixes,
                         inputs=inputs)
    return targets


def _resolve_crs(crs: Any) -> Any:
    if crs is None:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    if isinstance(crs, CRS):
        return crs
    try:
        return CRS.from_user_input(crs)
    except CRSError:
        raise LandslideError(f"--crs {crs!r}: not a CRS (use e.g. EPSG:4326)") from None


def _peek_spec(model: Any) -> InputSpec | None:
    """The input spec of a checkpoint from its header alone (cheap), to fail fast on band or
    data-type mismatches before a model is built; ``None`` when it cannot be peeked."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return getattr(model, "spec", None)
    if str(model or "").lower().endswith(".onnx"):
        return None
    from landslide_cli.checkpoint import read_metadata
    from landslide_cli.zoo.loading import resolve_model_path

    try:
        meta = read_metadata(resolve_model_path(model))
        return meta.input_spec if meta.kind == "segmenter" else None
    except LandslideError:
        return None  # opening the backend reports it properly


def _check_scenes_against_header(model: Any, infos: Sequence[SceneInfo],
                                 band_list: list[int | str] | None, rescale: str = "auto",
                                 dem: Any = None) -> None:
    """Refuse scenes whose bands (or, with ``--rescale none``, data type) do not fit the
    model, and a missing or needless ``--dem``, from the checkpoint header alone (before a
    model is built), when it can be read."""
    peeked = _peek_spec(model)
    if peeked is not None:
        check_terrain_request(peeked, dem)
        for info in infos:
            _scene_bands(info, spectral_spec(peeked), band_list, rescale)


def _resolve_backend(model: Any, backend: str, device: str,
                     options: PredictOptions | None = None) -> Backend:
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if not all(hasattr(model, a) for a in ("predict", "spec", "threshold")):
            raise LandslideError("model must be a path, a model name or an open Backend")
        return model  # an already-open Backend (or a stand-in implementing the protocol)
    from landslide_cli.onnx_cache import open_auto_backend

    opts = options or PredictOptions()
    if opts.adapt_bn and backend == "auto":
        backend = "torch"  # --adapt-bn re-estimates a torch model's BatchNorm statistics
    return open_auto_backend(model, backend=backend, device=device, precision=opts.precision,
                             tile=opts.tile)


def _window_size(be: Backend, tile: int | None) -> int:
    """The window size: the backend's fixed tile (``tile`` must match it), else ``tile``, else
    the model's ``InputSpec.tile``."""
    fixed = getattr(be, "fixed_tile", None)
    if fixed and tile and int(tile) != int(fixed):
        raise LandslideError(f"--tile {tile}: this model only runs on {fixed}x{fixed} tiles")
    size = int(fixed or tile or be.spec.tile)
    if size < MIN_TILE:
        raise LandslideError(f"--tile {size}: must be at least {MIN_TILE}")
    return size


def _scene_bands(info: SceneInfo, spec: InputSpec, band_list: list[int | str] | None,
                 rescale: str = "auto") -> list[int]:
    """The bands read from ``info`` for a model with input ``spec``; with ``--rescale none``
    the data type is checked (any other mode converts it)."""
    chosen = select_bands(info, spec, band_list)
    if parse_rescale(rescale).mode == "none":
        check_dtype(info, spec, chosen)
    return chosen


def _with_nodata(infos: list[SceneInfo], nodata: float | None) -> list[SceneInfo]:
    """The scenes with ``--nodata`` supplying or replacing their nodata value."""
    if nodata is None:
        return infos
    for info in infos:
        check_nodata(float(nodata), info.dtypes)
    return [replace(info, nodata_override=float(nodata)) for info in infos]


def _plan_rescale(planned: Sequence[PlannedScene], spec: InputSpec, options: PredictOptions,
                  warnings: list[str]) -> None:
    """Each scene's ``--rescale`` mapping (statistics from overviews or sampled windows)."""
    for scene in planned:
        info = scene.info
        scene.rescale = scene_mapping(
            options.rescale, spec, info.path, scene.bands,
            [info.dtypes[i - 1] for i in scene.bands], nodata=info.nodata_override,
            name=scene.label)
        warnings.extend(f"{scene.label}: --rescale: {note}" for note in scene.rescale.notes)


def _open_sources(paths: Sequence[Any], model: Any) -> list[Path | RemoteScene]:
    """Local scenes as they are; URLs and STAC Items as what GDAL opens (a STAC Item's assets
    chosen for the bands the model expects, by the checkpoint's header when it can be read)."""
    spec = _peek_spec(model) or InputSpec()
    spec = spectral_spec(spec)  # (terrain bands come from --dem)
    return [open_source(p, bands=list(spec.bands), dtype=spec.dtype) for p in paths]


def _plan_resolution(planned: Sequence[PlannedScene], spec: InputSpec, options: PredictOptions,
                     tile: int, warnings: list[str]) -> None:
    """Each scene's GSD against the model's ``resolution_m``: its warning, and the window
    resampler of ``--resample-to`` (``None``: native windows)."""
    mode = parse_resample_to(options.resample_to)
    for scene in planned:
        gsd = scene_ground_sampling(scene.info)
        check = check_resolution(scene.label, gsd, spec.resolution_m, mode)
        scene.resolution = check
        if check.target_m is not None and gsd is not None:
            scene.resampler = WindowResampler.for_scene(gsd, check.target_m, tile,
                                                        label=scene.label)
        if check.warning:
            warnings.append(check.warning)


def _plan_terrain(planned: Sequence[PlannedScene], spec: InputSpec, dem: DemInfo | None
                  ) -> None:
    """Each scene's :class:`~landslide_cli.predict.terrain.TerrainSource` (``--dem``): the
    scene must have a CRS and the DEM must cover it."""
    if dem is None:
        return
    for scene in planned:
        scene.terrain = plan_terrain(spec, dem, scene.info, scene.label)


def _output_crs(infos: Sequence[SceneInfo], requested: Any) -> tuple[Any, list[str]]:
    """The CRS of the vector output (``requested``, else the first scene's) and the warnings
    for scenes without a CRS; a scene without one cannot join an output that has one."""
    georef = [i for i in infos if i.crs is not None]
    out_crs = georef[0].crs if requested is None and georef else requested
    warnings = []
    for info in infos:
        if info.crs is None:
            if out_crs is not None:
                raise DataError(
                    f"{info.path} has no CRS, so it cannot go into a GeoPackage in "
                    f"{_crs_text(out_crs)}; predict it on its own")
            warnings.append(f"{info.path} has no CRS: polygons are in its pixel/geotransform "
                            "coordinates and areas in those units squared")
    return out_crs, warnings


def _crs_text(crs: Any) -> str | None:
    if crs is None:
        return None
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.to_wkt()


def _scene_labels(infos: Sequence[SceneInfo]) -> list[str]:
    names = [s.path.name for s in infos]
    return [str(s.path) if names.count(s.path.name) > 1 else s.path.name for s in infos]


class RowBand:
    """Window rows ``[start, stop)`` of a scene's :class:`GridLayout` (one task of a
    distributed run; the whole scene by default), read like a layout by the reader.

    Reading starts at :attr:`first`, the first earlier row whose windows reach the band: those
    rows are stitched but not kept, so the band's first block rows blend exactly as in the
    whole scene.
    """

    def __init__(self, layout: GridLayout, start: int, stop: int) -> None:
        rows = layout.rows
        if not 0 <= start < stop <= len(rows):
            raise LandslideError(f"window rows {start}..{stop} outside 0..{len(rows)}")
        self.layout, self.start, self.stop, self.tile = layout, start, stop, layout.tile
        first = start
        while first > 0 and rows.starts[first - 1] + rows.extent(first - 1) > rows.starts[start]:
            first -= 1
        self.first = first

    def __getattr__(self, name: str) -> Any:  # anything else: the scene's layout
        return getattr(self.layout, name)

    def __len__(self) -> int:
        return (self.stop - self.start) * len(self.layout.cols)

    def windows(self):
        """``(r, c, y0, x0, h, w)`` of rows ``first..stop-1`` (like ``GridLayout.windows``)."""
        rows, cols = self.layout.rows, self.layout.cols
        for r in range(self.first, self.stop):
            y0, h = rows.starts[r], rows.extent(r)
            for c in range(len(cols)):
                yield r, c, y0, cols.starts[c], h, cols.extent(c)

    def stitcher(self) -> Stitcher:
        """A stitcher that starts at row :attr:`first` (with nothing carried into it)."""
        stitcher = Stitcher(self.layout)
        stitcher._next = self.first * len(self.layout.cols)  # windows before it: none
        return stitcher

    def pixel_rows(self) -> tuple[int, int]:
        """The scene rows whose blocks this band finishes."""
        rows = self.layout.rows
        return rows.starts[self.start], rows.final_end(self.stop - 1)


class _Worker:
    """Run ``fn(*args)`` for submitted jobs, in order, in one background thread.

    Post-processing (stitching, probability writing, polygonizing) overlaps the next forward
    pass; the queue holds at most ``depth`` pending jobs. An exception in the worker is raised
    in the submitting thread at the next ``submit``/``drain``.
    """

    def __init__(self, fn: Any, depth: int = 2) -> None:
        self.fn = fn
        self.jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="landslide-post", daemon=True)

    def __enter__(self) -> _Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _run(self) -> None:
        # one GDAL environment for the thread's life: rasterio's polygonize and rasterize
        # calls otherwise set one up (and probe its data folders) on every block
        with gdal_env():
            self._loop()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                self.fn(*job)
            except BaseException as exc:
                self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, *args: Any) -> None:
        self._raise()
        while True:
            try:
                self.jobs.put(args, timeout=0.1)
                return
            except queue.Full:
                self._raise()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self.jobs.put(None)
            self._thread.join()

    def drain(self) -> None:
        """Wait for every submitted job; re-raise a worker error."""
        self._stop()
        self._raise()



# ---------------------------------------------------------------------------- main entry


def predict_scenes(
    scenes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | Backend | None = None,
    backend: str = "auto",
    device: str = "auto",
    tile: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    bands: str | Sequence[int] | None = None,
    threshold: float | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    prob_out: str | os.PathLike[str] | None = None,
    prob_dtype: str = "uint8",
    crs: Any = None,
    quicklook: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    rescale: str = "auto",
    nodata: float | None = None,
    tta: str = "none",
    adapt_bn: bool = False,
    adapt_bn_windows: int = 64,
    resample_to: str | float | None = None,
    precision: str = "auto",
    dem: str | os.PathLike[str] | None = None,
    reporter: Reporter | None = None,
    options: PredictOptions | None = None,
) -> PredictSummary:
    """Map landslides in GeoTIFF ``scenes`` and write them to the vector file ``out``.

    Args:
        scenes: one path or several; several scenes go into the same output, tagged by
            their file name, reprojected to the first scene's CRS (or ``crs``).
        out: the ``.gpkg``, ``.fgb`` or ``.parquet`` to write (the writer is chosen by the
            suffix, see :data:`~landslide_cli.predict.vectors.VECTOR_FORMATS`; atomically;
            refused if it exists unless ``overwrite``).
        model: checkpoint path, ONNX file, shipped model name, ``None`` for the default model,
            or an already-open :class:`~landslide_cli.backends.Backend`.
        backend, device, precision: passed to
            :func:`~landslide_cli.onnx_cache.open_auto_backend`.
        tile, overlap, batch_size, bands, threshold, min_area, simplify, prob_out, prob_dtype,
            crs, quicklook, overwrite, rescale, nodata: the run's options, see
            :class:`PredictOptions`.
        tta, adapt_bn, adapt_bn_windows: test-time augmentation and BatchNorm re-estimation
            on the scenes (opt-in), see :class:`PredictOptions`.
        resample_to: ``--resample-to`` (``None``, ``"auto"`` or metres), see
            :class:`PredictOptions`.
        dem: ``--dem``, the elevation model of a model with terrain bands, see
            :class:`PredictOptions`.
        reporter: where warnings and the progress (in windows) go; ``None`` says nothing
            (the CLI passes its Rich reporter).
        options: all the options at once, instead of the option keywords (then those must
            keep their defaults).

    Raises:
        LandslideError: (or a subclass) for any problem with inputs, model or outputs; every
            output is checked before work starts, and on failure none is written or changed.
    """
    started = time.perf_counter()
    options = _chosen_options(options, PredictOptions(
        tile=tile, overlap=overlap, batch_size=batch_size, bands=bands, threshold=threshold,
        min_area=min_area, simplify=simplify, prob_out=prob_out, prob_dtype=prob_dtype,
        crs=crs, quicklook=quicklook, overwrite=overwrite, rescale=rescale, nodata=nodata,
        tta=tta, adapt_bn=adapt_bn,
        adapt_bn_windows=adapt_bn_windows, resample_to=resample_to, precision=precision,
        dem=dem))
    plan = plan_predict(scenes, out, options, model=model, backend=backend, device=device)
    rep = as_reporter(reporter)
    for message in plan.warnings:
        rep.warn(message)
    prepare_backend(plan, rep)
    run = PredictRun(plan, rep)
    run.execute()
    return run.summary(time.perf_counter() - started)


# ---------------------------------------------------------------------------- the run


class StagedOutputs:
    """Every file a run publishes, staged beside its target: the vector output, the
    probability COGs and the quicklooks; published together by :meth:`publish`."""

    def __init__(self, plan: PredictPlan) -> None:
        self.plan = plan
        self.writer = open_vector_writer(plan.out, plan.crs)
        self.prob_writers: list[ProbWriter] = []
        self.looks = [Staged(s.look_target, ".tmp.png") for s in plan.scenes
                      if s.look_target is not None]

    def open_prob_writer(self, scene: PlannedScene) -> ProbWriter | None:
        """The probability COG writer for ``scene`` (``None`` without ``--prob-out``)."""
        if scene.prob_target is None:
            return None
        be = self.plan.backend
        pw = ProbWriter(scene.prob_target, scene.info, self.plan.options.prob_dtype,
                        model=be.model_name,
                        tags={"model_sha256": be.model_sha256, "threshold": self.plan.threshold,
                              "landslide_version": __version__})
        self.prob_writers.append(pw)
        return pw

    def publish(self) -> None:
        """Draw the quicklooks from the finished vector output, then rename every file onto
        its target."""
        _draw_quicklooks(self.looks, [s.info for s in self.plan.scenes], self.writer.gpkg)
        self.writer.commit()
        for pw in self.prob_writers:
            pw.commit()
        for look in self.looks:
            look.commit()

    def cleanup(self) -> None:
        """Remove every staged file; no target is touched."""
        self.writer.cleanup()
        for pw in self.prob_writers:
            pw.cleanup()
        for look in self.looks:
            look.cleanup()


def _draw_quicklooks(looks: Sequence[Staged], infos: Sequence[SceneInfo], gpkg: Path) -> None:
    """Render each scene's quicklook from the finished (not yet published) GeoPackage."""
    if not looks:
        return
    from landslide_cli.quicklook import save_quicklook

    for look, info in zip(looks, infos, strict=True):
        try:
            save_quicklook(info.path, gpkg, look.tmp)
        except OSError as exc:
            raise LandslideError(f"cannot write {look.target}: {first_line(exc)}") from None


class PredictRun:
    """One planned run: each scene through a :class:`SceneRun`, then the ``footprints`` and
    ``runs`` tables and the style, then every output published (or every one removed)."""

    def __init__(self, plan: PredictPlan, reporter: Reporter) -> None:
        self.plan = plan
        total = plan.total_windows()
        self.outputs = StagedOutputs(plan)
        self.bar = reporter.progress(total, "predict")
        self.scenes: list[SceneSummary] = []
        self.footprint_rows: dict[str, list[Any]] = {"scene": [], "valid_pixels": [],
                                                     "area_m2": []}
        self.footprint_geoms: list[Any] = []
        self.run_rows: list[dict[str, Any]] = []
        self.forward_seconds = 0.0
        #: the landslides layer, with the overlap rule applied (see :mod:`.merge`)
        self.inventory = self.make_inventory([scene_extent(s.info, plan.crs)
                                              for s in plan.scenes])

    def make_inventory(self, extents: list[Any]) -> Inventory:
        """The run's :class:`~landslide_cli.predict.merge.Inventory` over scene ``extents``."""
        return Inventory(self.outputs.writer, extents, output_measure(self.plan.crs, extents))

    def execute(self) -> None:
        with gdal_env(), self.committing():
            for index, scene in enumerate(self.plan.scenes):
                self.run_scene(scene, index)

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Around the scenes of a run: when they all succeed, finish the landslides layer,
        write the tables and publish every staged output; on any failure (publishing
        included) remove every staged output. The progress bar is closed either way."""
        try:
            yield
            self.inventory.finish()
            self.write_tables()
            self.bar.close()
            self.outputs.publish()
        except BaseException:
            self.bar.close()
            self.outputs.cleanup()
            raise

    def run_scene(self, scene: PlannedScene, index: int = 0) -> None:
        """Predict one scene into the vector output (and its COG), and record it."""
        self.bar.describe(scene.label)
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        pw = self.outputs.open_prob_writer(scene)
        run = SceneRun(self.plan, scene, self.inventory, pw, self.bar, index=index)
        footprint, footprint_area = run.run()
        self.forward_seconds += run.forward_seconds
        summary = run.summary
        if pw is not None:
            pw.finish()
            summary.prob_out = str(scene.prob_target)
        summary.seconds = time.perf_counter() - t0
        self.record_scene(scene, summary, footprint, footprint_area, started)

    def record_scene(self, scene: PlannedScene, summary: SceneSummary, footprint: Any,
                     footprint_area: float, started: datetime) -> None:
        """Add a finished scene to the summary and the ``footprints``/``runs`` tables."""
        self.scenes.append(summary)
        self.footprint_rows["scene"].append(scene.label)
        self.footprint_rows["valid_pixels"].append(summary.valid_pixels)
        self.footprint_rows["area_m2"].append(footprint_area)
        self.footprint_geoms.append(footprint)
        self.run_rows.append(self.run_row(scene, summary, started))

    def run_row(self, scene: PlannedScene, summary: SceneSummary,
                started: datetime) -> dict[str, Any]:
        """The scene's row of the ``runs`` table (its provenance)."""
        plan, be, opts = self.plan, self.plan.backend, self.plan.options
        return {
            "scene": scene.label, "path": str(scene.info.path),
            "model": be.model_name, "model_sha256": be.model_sha256,
            "threshold": plan.threshold, "tile": plan.tile, "overlap": float(opts.overlap),
            "batch_size": int(opts.batch_size), "bands": ",".join(map(str, scene.bands)),
            "version": __version__, "started": started.isoformat(timespec="seconds"),
            "duration_s": round(summary.seconds, 3), "backend": be.name,
            "device": str(be.device), "crs": _crs_text(plan.crs),
            "tiles": summary.tiles, "polygons": summary.polygons,
            "min_area_m2": float(opts.min_area), "simplify_m": float(opts.simplify),
            "tta": tta_of(be),
            "adapt_bn_windows": int((plan.adaptation or {}).get("windows", 0)),
            **precision_row(be),
            **(scene.rescale or identity_mapping(opts.rescale)).columns(be.spec.scale),
            **(scene.resolution.record() if scene.resolution is not None else {}),
            **({"dem": scene.terrain.dem.path} if scene.terrain is not None else {}),
        }

    def write_tables(self) -> None:
        writer = self.outputs.writer
        writer.write_footprints(self.footprint_rows, self.footprint_geoms)
        writer.write_runs(self.run_rows)
        writer.write_style()

    def summary(self, seconds: float) -> PredictSummary:
        plan, be, scenes = self.plan, self.plan.backend, self.scenes
        return PredictSummary(
            out=str(plan.out), scenes=scenes,
            tiles=sum(s.tiles for s in scenes),
            tiles_skipped=sum(s.tiles_skipped for s in scenes),
            polygons=self.inventory.polygons,  # after the overlap rule
            landslide_area_m2=self.inventory.area_m2,
            dissolved=self.inventory.dissolved,
            seconds=seconds, forward_seconds=self.forward_seconds,
            peak_rss_mb=peak_rss_mb(), device=str(be.device), backend=be.name,
            model=be.model_name, model_sha256=be.model_sha256, threshold=plan.threshold,
            tile=plan.tile, overlap=float(plan.options.overlap),
            batch_size=int(plan.options.batch_size), crs=_crs_text(plan.crs),
            prob_out=[str(s.prob_target) for s in plan.scenes if s.prob_target is not None],
            quicklooks=[str(look.target) for look in self.outputs.looks],
            warnings=list(plan.warnings),
            tta=tta_of(be), adapt_bn=plan.adaptation, **precision_fields(be),
        )


class SceneRun:
    """One scene through the model, in bounded memory.

    :meth:`run` reads batches of windows in a reader thread and runs the forward passes
    (:meth:`forward`); :meth:`post` stitches, writes and polygonizes each batch in a worker
    thread beside the next forward pass; finished polygons go to :meth:`emit` (measured,
    filtered) and are appended to the vector output in chunks by :meth:`flush`.
    """

    def __init__(self, plan: PredictPlan, scene: PlannedScene, sink: LandslideSink,
                 prob_writer: ProbWriter | None, bar: ProgressHandle, *, index: int = 0,
                 rows: tuple[int, int] | None = None) -> None:
        """``sink`` receives the finished polygons (see :mod:`.merge`) as scene ``index``;
        ``rows``: only this range of window rows (a band of a distributed run)."""
        info, opts = scene.info, plan.options
        self.scene, self.backend, self.sink, self.prob_writer, self.bar = (
            scene, plan.backend, sink, prob_writer, bar)
        self.index = index
        self.tile, self.batch_size, self.min_area = plan.tile, opts.batch_size, opts.min_area
        self.layout = plan.layout(info, scene.resampler)
        self.band = RowBand(self.layout, *(rows or (0, len(self.layout.rows))))
        self.stitcher = self.band.stitcher()
        self.geo = SceneGeo(info.crs, info.transform, info.width, info.height)
        self.reproject = Reprojector(info.crs, plan.crs)
        self.summary = SceneSummary(scene=scene.label, path=str(info.path), width=info.width,
                                    height=info.height, crs=_crs_text(info.crs),
                                    bands=list(scene.bands),
                                    rescale=None if scene.rescale is None
                                    else scene.rescale.to_dict(plan.backend.spec.scale))
        if scene.resolution is not None:
            res = scene.resolution.record()
            self.summary.gsd_m, self.summary.resample_m = res["gsd_m"], res["resample_m"]
            self.summary.resolution_warning = scene.resolution.warning
        if scene.terrain is not None:
            self.summary.dem = scene.terrain.dem.path
        pixel = self.geo.pixel_size_m
        self.tol_px = opts.simplify / pixel if opts.simplify > 0 and pixel > 0 else 0.0
        self.buffered: list[dict[str, Any]] = []  # emitted polygons not yet written
        self.pending = 0  # polygons in ``buffered``
        self.forward_seconds = 0.0
        self.polygonizer = Polygonizer(info.width, plan.threshold, self.emit,
                                       open_top=self.band.start > 0)
        all_valid = not info.needs_mask(scene.bands) and not info.is_float(scene.bands) \
            and scene.terrain is None  # (DEM nodata makes pixels invalid)
        self.footprint = FootprintBuilder(info.height, info.width, all_valid=all_valid)

    def run(self) -> tuple[Any, float]:
        """Predict the whole scene; return its footprint (in the output CRS) and its area."""
        self.predict()
        return self.finish_footprint()

    def predict(self) -> None:
        """Read, predict, stitch and polygonize the windows (of the band), then flush."""
        info = self.scene.info
        with PrefetchReader(info, self.band, self.scene.bands, self.backend.spec,
                            self.batch_size, **self.scene.reader_options()) as reader, \
                _Worker(self.post) as worker:
            for item in reader:
                worker.submit(item, self.forward(item))
            worker.drain()
        self.flush()

    def forward(self, item: BatchItem) -> np.ndarray | None:
        """The model's probabilities for the batch (``None`` when every window is skipped)."""
        if item.batch is None:
            return None
        t0 = time.perf_counter()
        preds = np.asarray(self.backend.predict(item.batch))
        self.forward_seconds += time.perf_counter() - t0
        if preds.shape != (item.batch.shape[0], self.tile, self.tile):
            raise LandslideError(
                f"model returned probabilities of shape {preds.shape} for a batch of "
                f"shape {item.batch.shape}")
        item.batch = None  # free the input batch while the post-processing runs
        return preds

    def post(self, item: BatchItem, preds: np.ndarray | None) -> None:
        """Stitch, write and polygonize one batch (runs beside the next forward pass)."""
        for win in item.windows:
            pred = None if win.slot is None or preds is None else preds[win.slot]
            if pred is not None and self.scene.resampler is not None:  # back to native pixels
                pred = self.scene.resampler.to_scene(pred, self.layout.rows.extent(win.row),
                                                     self.layout.cols.extent(win.col))
            if win.row < self.band.start:  # read only to blend the band's first rows
                self.stitcher.add(pred, win.valid)
                continue
            if pred is None:
                self.summary.tiles_skipped += 1
            else:
                self.summary.tiles += 1
            block = self.stitcher.add(pred, win.valid)
            if self.prob_writer is not None:
                self.prob_writer.write(block)
            self.polygonizer.add(block)
            self.footprint.add(block)
            self.bar.advance()

    def emit(self, polys: PolygonBatch) -> None:
        """Simplify, georeference, measure and filter finished polygons; buffer the kept."""
        geoms = polys.geoms
        if self.tol_px > 0:
            geoms = shapely.simplify(geoms, self.tol_px, preserve_topology=True)
        geoms = self.geo.to_crs(geoms)
        area, perim = self.geo.measure(geoms)
        keep = (area > 0) & (area >= self.min_area) & ~shapely.is_empty(geoms)
        if not keep.any():
            return
        self.buffered.append({
            "geometry": geoms[keep], "area_m2": area[keep], "perimeter_m": perim[keep],
            "mean_prob": polys.mean_prob[keep], "max_prob": polys.prob_max[keep],
        })
        kept = int(keep.sum())
        self.pending += kept
        self.summary.polygons += kept
        self.summary.landslide_area_m2 += float(area[keep].sum())
        if self.pending >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered polygons (in the output CRS) to the sink."""
        if not self.buffered:
            return
        n = self.pending
        rows = {
            "scene": [self.scene.label] * n,
            **{k: np.concatenate([b[k] for b in self.buffered])
               for k in ("area_m2", "perimeter_m", "mean_prob", "max_prob")},
        }
        geoms = np.concatenate([b["geometry"] for b in self.buffered])
        self.sink.add(self.index, rows, self.reproject(geoms))
        self.buffered.clear()
        self.pending = 0

    def band_footprint(self) -> tuple[Any, int]:
        """The band's valid-pixel outline (pixel coordinates) and its valid pixels."""
        if self.footprint.all_valid:
            y0, y1 = self.band.pixel_rows()
            return shapely.box(0, y0, self.scene.info.width, y1), (y1 - y0) * \
                self.scene.info.width
        return self.footprint.geometry(), self.footprint.valid_pixels

    def finish_footprint(self, pixels: tuple[Any, int] | None = None) -> tuple[Any, float]:
        """The scene's valid-pixel footprint in the output CRS and its area in m²; refuse a
        scene without any valid pixel. ``pixels``: the outline (pixel coordinates) and valid
        pixels merged from the scene's bands (default: this run's)."""
        outline, valid = pixels or (self.footprint.geometry(), self.footprint.valid_pixels)
        self.summary.valid_pixels = valid
        if self.summary.valid_pixels == 0:
            raise DataError(
                f"{self.scene.info.path}: no valid pixels (every pixel is nodata or masked)")
        fp = self.geo.to_crs(outline)
        fp_area = float(self.geo.measure([fp])[0][0])
        return self.reproject(fp), fp_area
