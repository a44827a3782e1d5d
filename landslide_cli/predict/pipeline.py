"""``predict_scenes``: GeoTIFF scenes -> landslide polygons in one GeoPackage (+ probability COGs).

Data flow per scene (memory bounded by tile, overlap and batch size, see docs/predict.md)::

    reader thread: windowed read + mask + normalize -> bounded queue of batches
    main thread:   backend.predict(batch) -> Stitcher (overlap margins only) -> final blocks
                   -> probability COG stream, Polygonizer (merge across borders), footprint
                   -> finished polygons measured, filtered, reprojected, appended to the GPKG
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from landslide_cli import __version__
from landslide_cli.backends import Backend, open_backend
from landslide_cli.errors import DataError, LandslideError
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
from landslide_cli.predict.vectors import (
    FootprintBuilder,
    PolygonBatch,
    Polygonizer,
    Reprojector,
    SceneGeo,
    VectorWriter,
    check_vector_targets,
    open_vector_writer,
)
from landslide_cli.predict.windows import GridLayout, Stitcher
from landslide_cli.preprocess import InputSpec
from landslide_cli.reporting import ProgressHandle, Reporter, as_reporter
from landslide_cli.safety import Staged, check_distinct, check_target, first_line, same_file

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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scenes"] = [asdict(s) for s in self.scenes]
        for key in ("landslide_area_m2", "seconds", "forward_seconds", "peak_rss_mb"):
            data[key] = round(float(data[key]), 3)
        return data


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (``getrusage`` maxrss), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------- validation


def _scene_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The scene paths, refusing one scene given twice (it would duplicate every polygon)."""
    out: list[Path] = []
    for p in map(Path, paths):
        for q in out:
            if same_file(p, q):
                raise LandslideError(
                    f"scene {p} is given twice (as {q}): every polygon would be counted twice")
        out.append(p)
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


def _resolve_backend(model: Any, backend: str, device: str) -> Backend:
    if model is not None and not isinstance(model, (str, os.PathLike)):
        if not all(hasattr(model, a) for a in ("predict", "spec", "threshold")):
            raise LandslideError("model must be a path, a model name or an open Backend")
        return model  # an already-open Backend (or a stand-in implementing the protocol)
    return open_backend(model, backend=backend, device=device)


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


def _crs_text(crs: Any) -> str | None:
    if crs is None:
        return None
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.to_wkt()


def _scene_labels(scenes: Sequence[SceneInfo]) -> list[str]:
    names = [s.path.name for s in scenes]
    return [str(s.path) if names.count(s.path.name) > 1 else s.path.name for s in scenes]


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
    reporter: Reporter | None = None,
) -> PredictSummary:
    """Map landslides in GeoTIFF ``scenes`` and write them to the GeoPackage ``out``.

    Args:
        scenes: one path or several; several scenes go into the same GeoPackage, tagged by
            their file name, reprojected to the first scene's CRS (or ``crs``).
        out: the ``.gpkg``, ``.fgb`` or ``.parquet`` to write (the writer is chosen by the
            suffix, see :data:`~landslide_cli.predict.vectors.VECTOR_FORMATS`; atomically;
            refused if it exists unless ``overwrite``).
        model: checkpoint path, ONNX file, shipped model name, ``None`` for the default model,
            or an already-open :class:`~landslide_cli.backends.Backend`.
        backend, device: passed to :func:`~landslide_cli.backends.open_backend`.
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
        crs: output CRS for the GeoPackage (anything rasterio's ``CRS.from_user_input`` reads).
        quicklook: also write a PNG of each scene with its polygons drawn over it (several
            scenes: ``<stem>_<scene stem>.png``); published together with the GeoPackage.
        overwrite: replace existing outputs (never an input of the run).
        reporter: where warnings and the progress (in windows) go; ``None`` says nothing
            (the CLI passes its Rich reporter).

    Raises:
        LandslideError: (or a subclass) for any problem with inputs, model or outputs; every
            output is checked before work starts, and on failure none is written or changed.
    """
    t_start = time.perf_counter()
    scene_paths = _scene_inputs(
        [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes))
    if not scene_paths:
        raise LandslideError("no scene given")
    if tile is not None and int(tile) < 16:
        raise LandslideError(f"--tile {tile}: must be at least 16")
    out = Path(out)
    if not 0.0 <= overlap <= 0.9:
        raise LandslideError(f"--overlap {overlap}: must be between 0 and 0.9")
    if batch_size < 1:
        raise LandslideError(f"--batch-size {batch_size}: must be at least 1")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise LandslideError(f"--threshold {threshold}: must be between 0 and 1")
    if min_area < 0 or simplify < 0:
        raise LandslideError("--min-area and --simplify must not be negative")
    if prob_dtype not in PROB_DTYPES:
        raise LandslideError(f"--prob-dtype {prob_dtype!r}: use {' or '.join(PROB_DTYPES)}")
    band_list = parse_bands(bands)

    vector_targets = check_vector_targets(out, overwrite=overwrite, inputs=scene_paths)
    infos = [open_scene(p) for p in scene_paths]
    prob_targets = _prob_targets(prob_out, infos)
    for target in prob_targets:
        if target is not None:
            check_target(target, overwrite=overwrite, what="--prob-out",
                         suffixes=(".tif", ".tiff"), inputs=scene_paths)
    look_targets = _quicklook_targets(quicklook, scene_paths)
    for target in look_targets:
        if target is not None:
            check_target(target, overwrite=overwrite, what="--quicklook", suffixes=(".png",),
                         inputs=scene_paths)
    check_distinct([*vector_targets, *(("--prob-out", t) for t in prob_targets),
                    *(("--quicklook", t) for t in look_targets)])
    out_crs = _resolve_crs(crs)

    peeked = _peek_spec(model)
    if peeked is not None:
        for info in infos:
            check_dtype(info, peeked, select_bands(info, peeked, band_list))

    be = _resolve_backend(model, backend, device)
    spec = be.spec
    fixed = getattr(be, "fixed_tile", None)
    if fixed and tile and int(tile) != int(fixed):
        raise LandslideError(f"--tile {tile}: this model only runs on {fixed}x{fixed} tiles")
    tile = int(fixed or tile or spec.tile)
    if tile < 16:
        raise LandslideError(f"--tile {tile}: must be at least 16")
    thr = float(be.threshold if threshold is None else threshold)

    indexes = []
    for info in infos:
        chosen = select_bands(info, spec, band_list)
        check_dtype(info, spec, chosen)
        indexes.append(chosen)

    rep = as_reporter(reporter)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        rep.warn(msg)

    georef = [i for i in infos if i.crs is not None]
    if out_crs is None and georef:
        out_crs = georef[0].crs
    for info in infos:
        if info.crs is None:
            if out_crs is not None:
                raise DataError(
                    f"{info.path} has no CRS, so it cannot go into a GeoPackage in "
                    f"{_crs_text(out_crs)}; predict it on its own")
            note(f"{info.path} has no CRS: polygons are in its pixel/geotransform coordinates "
                 "and areas in those units squared")

    labels = _scene_labels(infos)
    total_windows = sum(len(GridLayout(i.height, i.width, tile, overlap)) for i in infos)
    writer = open_vector_writer(out, out_crs)
    prob_writers: list[ProbWriter] = []
    looks = [Staged(t, ".tmp.png") for t in look_targets if t is not None]
    bar = rep.progress(total_windows, "predict")
    summaries: list[SceneSummary] = []
    footprint_rows: dict[str, list[Any]] = {"scene": [], "valid_pixels": [], "area_m2": []}
    footprint_geoms: list[Any] = []
    run_rows: list[dict[str, Any]] = []
    forward = [0.0]
    next_id = [1]
    try:
        with gdal_env():
            for info, label, idx, target in zip(infos, labels, indexes, prob_targets,
                                                strict=True):
                bar.describe(label)
                scene_started = datetime.now(UTC)
                t0 = time.perf_counter()
                pw = ProbWriter(target, info, prob_dtype, model=be.model_name,
                                tags={"model_sha256": be.model_sha256, "threshold": thr,
                                      "landslide_version": __version__}
                                ) if target is not None else None
                if pw is not None:
                    prob_writers.append(pw)
                summary, footprint = _predict_scene(
                    info, label, idx, be, writer, pw, tile=tile, overlap=overlap,
                    batch_size=batch_size, threshold=thr, min_area=min_area,
                    simplify=simplify, out_crs=out_crs, bar=bar, forward=forward,
                    next_id=next_id)
                if pw is not None:
                    pw.finish()
                    summary.prob_out = str(target)
                summary.seconds = time.perf_counter() - t0
                summaries.append(summary)
                footprint_rows["scene"].append(label)
                footprint_rows["valid_pixels"].append(summary.valid_pixels)
                footprint_rows["area_m2"].append(footprint[1])
                footprint_geoms.append(footprint[0])
                run_rows.append({
                    "scene": label, "path": str(info.path),
                    "model": be.model_name, "model_sha256": be.model_sha256,
                    "threshold": thr, "tile": tile, "overlap": float(overlap),
                    "batch_size": int(batch_size), "bands": ",".join(map(str, idx)),
                    "version": __version__, "started": scene_started.isoformat(timespec="seconds"),
                    "duration_s": round(summary.seconds, 3), "backend": be.name,
                    "device": str(be.device), "crs": _crs_text(out_crs),
                    "tiles": summary.tiles, "polygons": summary.polygons,
                    "min_area_m2": float(min_area), "simplify_m": float(simplify),
                })
            writer.write_footprints(footprint_rows, footprint_geoms)
            writer.write_runs(run_rows)
            writer.write_style()
        bar.close()
        _draw_quicklooks(looks, infos, writer.gpkg)
        writer.commit()
        for pw in prob_writers:
            pw.commit()
        for look in looks:
            look.commit()
    except BaseException:
        bar.close()
        writer.cleanup()
        for pw in prob_writers:
            pw.cleanup()
        for look in looks:
            look.cleanup()
        raise
    finally:
        bar.close()

    return PredictSummary(
        out=str(out), scenes=summaries,
        tiles=sum(s.tiles for s in summaries),
        tiles_skipped=sum(s.tiles_skipped for s in summaries),
        polygons=sum(s.polygons for s in summaries),
        landslide_area_m2=float(sum(s.landslide_area_m2 for s in summaries)),
        seconds=time.perf_counter() - t_start, forward_seconds=forward[0],
        peak_rss_mb=peak_rss_mb(), device=str(be.device), backend=be.name,
        model=be.model_name, model_sha256=be.model_sha256, threshold=thr, tile=tile,
        overlap=float(overlap), batch_size=int(batch_size), crs=_crs_text(out_crs),
        prob_out=[str(t) for t in prob_targets if t is not None],
        quicklooks=[str(look.target) for look in looks], warnings=notes,
    )


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


def _predict_scene(info: SceneInfo, label: str, indexes: list[int], be: Backend,
                   writer: VectorWriter, pw: ProbWriter | None, *, tile: int, overlap: float,
                   batch_size: int, threshold: float, min_area: float, simplify: float,
                   out_crs: Any, bar: ProgressHandle, forward: list[float],
                   next_id: list[int]) -> tuple[SceneSummary, tuple[Any, float]]:
    layout = GridLayout(info.height, info.width, tile, overlap)
    stitcher = Stitcher(layout)
    geo = SceneGeo(info.crs, info.transform, info.width, info.height)
    reproject = Reprojector(info.crs, out_crs)
    summary = SceneSummary(scene=label, path=str(info.path), width=info.width,
                           height=info.height, crs=_crs_text(info.crs), bands=list(indexes))
    tol_px = simplify / geo.pixel_size_m if simplify > 0 and geo.pixel_size_m > 0 else 0.0
    buffered: list[dict[str, Any]] = []
    pending = [0]

    def flush() -> None:
        if not buffered:
            return
        n = pending[0]
        ids = np.arange(next_id[0], next_id[0] + n, dtype=np.int64)
        next_id[0] += n
        rows = {
            "id": ids, "scene": [label] * n,
            **{k: np.concatenate([b[k] for b in buffered])
               for k in ("area_m2", "perimeter_m", "mean_prob", "max_prob")},
        }
        geoms = np.concatenate([b["geometry"] for b in buffered])
        writer.append_landslides(rows, reproject(geoms))
        buffered.clear()
        pending[0] = 0

    def emit(polys: PolygonBatch) -> None:
        geoms = polys.geoms
        if tol_px > 0:
            geoms = shapely.simplify(geoms, tol_px, preserve_topology=True)
        geoms = geo.to_crs(geoms)
        area, perim = geo.measure(geoms)
        keep = (area > 0) & (area >= min_area) & ~shapely.is_empty(geoms)
        if not keep.any():
            return
        buffered.append({
            "geometry": geoms[keep], "area_m2": area[keep], "perimeter_m": perim[keep],
            "mean_prob": polys.mean_prob[keep], "max_prob": polys.prob_max[keep],
        })
        kept = int(keep.sum())
        pending[0] += kept
        summary.polygons += kept
        summary.landslide_area_m2 += float(area[keep].sum())
        if pending[0] >= WRITE_CHUNK:
            flush()

    polygonizer = Polygonizer(info.width, threshold, emit)
    all_valid = not info.needs_mask(indexes) and not info.is_float(indexes)
    footprint = FootprintBuilder(info.height, info.width, all_valid=all_valid)
    expected = (tile, tile)
    def post(item: BatchItem, preds: np.ndarray | None) -> None:
        """Stitch, write and polygonize one batch (runs beside the next forward pass)."""
        for win in item.windows:
            pred = None if win.slot is None or preds is None else preds[win.slot]
            if pred is None:
                summary.tiles_skipped += 1
            else:
                summary.tiles += 1
            block = stitcher.add(pred, win.valid)
            if pw is not None:
                pw.write(block)
            polygonizer.add(block)
            footprint.add(block)
            bar.advance()

    with PrefetchReader(info, layout, indexes, be.spec, batch_size) as reader, \
            _Worker(post) as worker:
        for item in reader:
            preds = None
            if item.batch is not None:
                t0 = time.perf_counter()
                preds = np.asarray(be.predict(item.batch))
                forward[0] += time.perf_counter() - t0
                if preds.shape != (item.batch.shape[0], *expected):
                    raise LandslideError(
                        f"model returned probabilities of shape {preds.shape} for a batch of "
                        f"shape {item.batch.shape}")
                item.batch = None  # free the input batch while the post-processing runs
            worker.submit(item, preds)
        worker.drain()
    flush()
    summary.valid_pixels = footprint.valid_pixels
    if summary.valid_pixels == 0:
        raise DataError(f"{info.path}: no valid pixels (every pixel is nodata or masked)")
    fp = geo.to_crs(footprint.geometry())
    fp_area = float(geo.measure([fp])[0][0])
    return summary, (reproject(fp), fp_area)
