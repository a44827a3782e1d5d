"""Regional mapping: many scenes on Dask distributed, merged by the client into one output.

:func:`predict_distributed` plans the run on the client exactly like
:func:`~landslide_cli.predict.pipeline.predict_scenes` (every input and output checked before
any work), then sends one task per scene, or per *row band* of a large scene, to Dask
(``workers=N``: a :class:`distributed.LocalCluster` of N processes; ``scheduler=ADDRESS``: a
running cluster; ``client=``: your own :class:`distributed.Client`; none of them: the tasks
run one after another in this process, which is what ``--resume`` without ``--workers``
uses). Each task streams its scene or band through the same
:class:`~landslide_cli.predict.pipeline.SceneRun` as a single-process run (memory flat per
worker) and returns its finished polygons (output CRS), the pieces still open at its band's
borders, its valid-pixel outline and its counts: a few MB at most.

The client merges in scene order: a scene's bands are joined with
:meth:`Polygonizer.add_band <landslide_cli.predict.vectors.Polygonizer.add_band>` (the row
merge of the single-process pipeline), then the scene's polygons join the
:class:`~landslide_cli.predict.merge.Inventory` (the one overlap rule of every run) and the
staged output, published once at the end (:mod:`landslide_cli.safety`).

Faults: a task that raises is retried once (``retries=1``; the in-process executor does the
same); a scene whose task fails twice is left out, reported in
:attr:`PredictSummary.failed <landslide_cli.predict.pipeline.PredictSummary.failed>` and by
one warning, and every other scene is written.

Resume: every distributed or ``resume=True`` run keeps ``NAME.resume.json`` beside the
output, rewritten atomically after each merged scene, and the scene's polygons (before the
overlap rule), footprint and ``runs`` row in ``NAME.parts/`` (one GeoParquet-like file per
scene). A scene is done when its key matches: the absolute path, size and modification time
(``os.stat``; a URL: its ETag or Last-Modified from a HEAD request), so done scenes are
skipped without being opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from landslide_cli.errors import LandslideError
from landslide_cli.predict.merge import MEASURES, PolygonCollector, scene_extent
from landslide_cli.predict.pipeline import (
    PlannedScene,
    PredictOptions,
    PredictPlan,
    PredictRun,
    PredictSummary,
    SceneRun,
    SceneSummary,
    _chosen_options,
    _resolve_backend,
    _resolve_crs,
    _window_size,
    plan_predict,
    prepare_backend,
)
from landslide_cli.predict.raster import gdal_env, open_scene
from landslide_cli.predict.remote import RemoteScene, open_source, scene_arg
from landslide_cli.predict.vectors import OpenPieces, check_vector_targets
from landslide_cli.reporting import ProgressBase, Reporter, as_reporter
from landslide_cli.safety import atomic_write, first_line, is_url

INSTALL_HINT = "pip install 'landslide-kda[distributed]'"
#: a scene with more windows than this is split into row bands (``band_rows=None``)
AUTO_BAND_WINDOWS = 4096
#: attempts per task before its scene is reported as failed (Dask ``retries=1``)
ATTEMPTS = 2
#: seconds a HEAD request for a URL's ETag may take
HEAD_TIMEOUT_S = 20
RESUME_FORMAT = "landslide-resume"


def require_dask() -> Any:
    """``distributed``, or a one-line error saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise LandslideError(
            f"--workers/--scheduler need Dask distributed: {INSTALL_HINT}") from None
    return distributed


# ---------------------------------------------------------------------------- scene keys


def source_id(source: Any) -> str:
    """How a scene is named in the resume state: its URL, or its absolute local path."""
    text = str(source)
    return text if is_url(text) else str(Path(text).resolve())


def scene_key(source: Any) -> dict[str, Any]:
    """What identifies the scene's content without reading it: size and modification time
    of a local file; ETag (or Last-Modified) and size of a URL (``etag`` ``None``: unknown,
    the scene is never skipped)."""
    sid = source_id(source)
    if not is_url(sid):
        try:
            st = os.stat(sid)
        except OSError:
            return {"source": sid, "size": None, "mtime_ns": None}
        return {"source": sid, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    etag = size = None
    try:
        request = urllib.request.Request(sid, method="HEAD")
        with urllib.request.urlopen(request, timeout=HEAD_TIMEOUT_S) as resp:
            etag = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            size = resp.headers.get("Content-Length")
    except (OSError, ValueError):
        pass
    return {"source": sid, "etag": etag, "size": size}


def _key_known(key: dict[str, Any]) -> bool:
    return key.get("mtime_ns") is not None or key.get("etag") is not None


# ---------------------------------------------------------------------------- resume state


class ResumeState:
    """``NAME.resume.json`` (settings and done scenes) and ``NAME.parts/`` (one file per done
    scene) beside the output ``NAME``; the JSON is rewritten atomically after each scene."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out.with_name(f"{self.out.name}.resume.json")
        self.parts = self.out.with_name(f"{self.out.name}.parts")
        self.settings: dict[str, Any] = {}
        self.scenes: dict[str, dict[str, Any]] = {}

    def load(self) -> bool:
        """Read the state; ``False`` when there is none."""
        if not self.path.is_file():
            return False
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LandslideError(f"cannot read {self.path}: {first_line(exc)} (delete it to "
                                 "start over)") from None
        if not isinstance(doc, dict) or doc.get("format") != RESUME_FORMAT:
            raise LandslideError(f"{self.path} is not a landslide resume state")
        self.settings = dict(doc.get("settings") or {})
        self.scenes = dict(doc.get("scenes") or {})
        return True

    def done(self, keys: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """``{input index: entry}`` of the inputs done with the same key and a part file."""
        out = {}
        for i, key in enumerate(keys):
            entry = self.scenes.get(key["source"])
            if entry and _key_known(key) and entry.get("key") == key \
                    and (self.parts / entry["part"]).is_file():
                out[i] = entry
        return out

    def start(self, settings: dict[str, Any], *, keep: bool) -> None:
        """Begin a run with ``settings``: keep the done scenes (resuming, same settings
        checked by the caller) or forget them (a fresh run)."""
        if not keep:
            for entry in self.scenes.values():
                with contextlib.suppress(OSError):
                    (self.parts / entry.get("part", "")).unlink(missing_ok=True)
            self.scenes = {}
        self.settings = settings
        try:
            self.parts.mkdir(exist_ok=True)
        except OSError as exc:
            raise LandslideError(f"cannot write {self.parts}: {first_line(exc)}") from None
        self.save()

    def save(self) -> None:
        doc = {"format": RESUME_FORMAT, "version": 1, "output": self.out.name,
               "settings": self.settings, "scenes": self.scenes}
        text = json.dumps(doc, indent=1, default=str) + "\n"
        atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"),
                     suffix=".json")

    def add(self, key: dict[str, Any], label: str, part: ScenePart) -> None:
        """Store a finished scene's part, then record it as done."""
        name = hashlib.sha1(key["source"].encode("utf-8")).hexdigest()[:16] + ".parquet"
        atomic_write(self.parts / name, part.write, suffix=".parquet")
        self.scenes[key["source"]] = {"key": key, "label": label, "part": name}
        self.save()

    def part(self, entry: dict[str, Any]) -> ScenePart:
        return ScenePart.read(self.parts / entry["part"])


@dataclass
class ScenePart:
    """What a finished scene adds to the output: its polygons before the overlap rule
    (output CRS), its footprint, extent, summary and ``runs`` row."""

    rows: dict[str, Any]
    geoms: np.ndarray
    footprint: Any
    footprint_area: float
    extent: Any
    summary: SceneSummary
    run_row: dict[str, Any]

    def write(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = {"footprint": shapely.to_wkb(self.footprint, hex=True),
                "footprint_area": self.footprint_area,
                "extent": shapely.to_wkb(self.extent, hex=True),
                "summary": dataclasses.asdict(self.summary), "run_row": self.run_row}
        table = pa.table({"scene": pa.array(list(self.rows["scene"]), pa.string()),
                          **{k: pa.array(np.asarray(self.rows[k], np.float64))
                             for k in MEASURES},
                          "geometry": pa.array(list(shapely.to_wkb(self.geoms)), pa.binary())})
        table = table.replace_schema_metadata(
            {"landslide": json.dumps(meta, default=str)})
        pq.write_table(table, path)

    @classmethod
    def read(cls, path: Path) -> ScenePart:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"landslide"])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise LandslideError(f"cannot read {path}: {first_line(exc)} (delete the "
                                 "resume state to start over)") from None
        rows = {"scene": table.column("scene").to_pylist(),
                **{k: table.column(k).to_numpy() for k in MEASURES}}
        geoms = np.asarray(shapely.from_wkb(table.column("geometry").to_pylist()), dtype=object)
        known = {f.name for f in dataclasses.fields(SceneSummary)}
        summary = SceneSummary(**{k: v for k, v in meta["summary"].items() if k in known})
        return cls(rows, geoms, shapely.from_wkb(meta["footprint"]),
                   float(meta["footprint_area"]), shapely.from_wkb(meta["extent"]), summary,
                   dict(meta["run_row"]))


def run_settings(plan: PredictPlan) -> dict[str, Any]:
    """What must not change between a run and its resumption (the same output)."""
    opts, be = plan.options, plan.backend
    return {"model_sha256": be.model_sha256, "threshold": plan.threshold, "tile": plan.tile,
            "overlap": float(opts.overlap), "bands": None if opts.bands is None
            else ",".join(map(str, opts.band_list() or [])),
            "min_area": float(opts.min_area), "simplify": float(opts.simplify),
            "tta": str(getattr(opts, "tta", "none")),
            "crs": None if plan.crs is None else plan.crs.to_wkt()}


# ---------------------------------------------------------------------------- tasks


@dataclass
class SceneTask:
    """One task: window rows ``rows`` (``None``: all) of scene ``index`` of the run."""

    index: int
    band: int
    bands: int
    rows: tuple[int, int] | None
    scene: PlannedScene  # with a picklable ``info.path`` (the location of a remote scene)
    plan: PredictPlan  # without scenes and backend (the worker adds its own)
    windows: int
    recipe: tuple[Any, str, str, str] | None = None  # (model, backend, device, tta)
    hook: Callable[[SceneTask], None] | None = None


@dataclass
class TaskResult:
    """What a task returns to the client (small): finished polygons in the output CRS, the
    pieces open at its band's borders, its valid-pixel outline (pixel coordinates), counts."""

    index: int
    band: int
    rows: dict[str, Any]
    geoms: np.ndarray
    open: OpenPieces | None
    outline: Any
    valid_pixels: int
    tiles: int
    tiles_skipped: int
    forward_seconds: float
    seconds: float


_WORKER_BACKENDS: dict[tuple[Any, ...], Any] = {}


def _worker_backend(recipe: tuple[Any, str, str, str]) -> Any:
    """The backend of ``recipe``, opened once per worker process."""
    if recipe not in _WORKER_BACKENDS:
        from landslide_cli.tta import with_tta

        model, backend, device, tta = recipe
        _WORKER_BACKENDS[recipe] = with_tta(_resolve_backend(model, backend, device), tta)
    return _WORKER_BACKENDS[recipe]


def run_task(task: SceneTask, backend: Any = None) -> TaskResult:
    """Run one task (on a worker): stream the scene's band through a :class:`SceneRun`."""
    t0 = time.perf_counter()
    if task.hook is not None:
        task.hook(task)
    be = backend if backend is not None else _worker_backend(task.recipe)  # type: ignore[arg-type]
    info = task.scene.info
    if isinstance(info.path, str):  # a remote scene: open it here (GDAL handles do not travel)
        info = open_scene(open_source(scene_arg(info.path), bands=list(be.spec.bands),
                                      dtype=be.spec.dtype))
    scene = replace(task.scene, info=info)
    plan = replace(task.plan, scenes=[scene], backend=be)
    collector = PolygonCollector()
    with gdal_env():
        run = SceneRun(plan, scene, collector, None, ProgressBase(), index=task.index,
                       rows=task.rows)
        run.predict()
        outline, valid = run.band_footprint()
        pieces = run.polygonizer.open_pieces() if task.bands > 1 else None
    rows, geoms = collector.table()
    return TaskResult(task.index, task.band, rows, geoms, pieces, outline, valid,
                      run.summary.tiles, run.summary.tiles_skipped, run.forward_seconds,
                      time.perf_counter() - t0)


def band_ranges(n_rows: int, n_cols: int, band_rows: int | None) -> list[tuple[int, int]]:
    """Window-row ranges of a scene's bands (``band_rows`` ``None``: bands of at most
    :data:`AUTO_BAND_WINDOWS` windows; 0: never split)."""
    if band_rows is None:
        band_rows = max(1, AUTO_BAND_WINDOWS // max(1, n_cols))
    if band_rows <= 0 or band_rows >= n_rows:
        return [(0, n_rows)]
    return [(s, min(s + band_rows, n_rows)) for s in range(0, n_rows, band_rows)]


def _portable(scene: PlannedScene) -> PlannedScene:
    """``scene`` with a remote scene's path replaced by its location (re-opened by the
    worker; an in-memory VRT cannot travel)."""
    if isinstance(scene.info.path, RemoteScene):
        return replace(scene, info=replace(scene.info, path=str(scene.info.path)))
    return scene


# ---------------------------------------------------------------------------- executors


Outcome = tuple[SceneTask, TaskResult | None, BaseException | None]


def _run_here(tasks: Sequence[SceneTask], backend: Any) -> Iterator[Outcome]:
    """Run the tasks one after another in this process, each retried once."""
    for task in tasks:
        error: BaseException | None = None
        for _ in range(ATTEMPTS):
            try:
                result = run_task(task, backend)
            except Exception as exc:
                error = exc
                continue
            yield task, result, None
            break
        else:
            yield task, None, error


def _run_dask(client: Any, tasks: Sequence[SceneTask], backend: Any) -> Iterator[Outcome]:
    """Submit every task (``retries=1``) and yield each as it completes."""
    from distributed import as_completed

    shipped = None if backend is None else client.scatter(backend, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:8]
    futures = {client.submit(run_task, t, shipped, retries=ATTEMPTS - 1, pure=False,
                             key=f"landslide-{run_id}-{t.index}-{t.band}"): t for t in tasks}
    try:
        for future in as_completed(futures):
            task = futures[future]
            if future.status == "error":
                yield task, None, future.exception()
            else:
                yield task, future.result(), None
            future.release()
    finally:
        for future in futures:
            future.cancel()


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None, threads_per_worker: int,
                 processes: bool) -> Iterator[Any]:
    """A client of a new :class:`LocalCluster` (``workers``) or of a running scheduler."""
    distributed = require_dask()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise LandslideError(f"--scheduler {scheduler}: cannot reach the Dask scheduler "
                                 f"({first_line(exc)})") from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                       processes=processes, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    try:
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# ---------------------------------------------------------------------------- the run


@dataclass
class _Pending:
    """A scene's tasks as their results arrive."""

    scene: PlannedScene
    tasks: int
    results: dict[int, TaskResult] = field(default_factory=dict)
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is not None or len(self.results) == self.tasks


class RegionRun(PredictRun):
    """A :class:`PredictRun` whose scenes come from tasks (or the resume state): merged in
    input order into the one staged output."""

    def __init__(self, plan: PredictPlan, reporter: Reporter, extents: list[Any]) -> None:
        self._extents = extents
        super().__init__(plan, reporter)
        self.failed: list[dict[str, str]] = []
        self.resumed: list[str] = []

    def make_inventory(self, extents: list[Any]) -> Any:
        return super().make_inventory(self._extents)  # every input scene, resumed ones too

    def add_part(self, index: int, part: ScenePart) -> None:
        """A scene done in an earlier run, from the resume state."""
        self.inventory.add(index, part.rows, part.geoms)
        self.scenes.append(part.summary)
        self.footprint_rows["scene"].append(part.summary.scene)
        self.footprint_rows["valid_pixels"].append(part.summary.valid_pixels)
        self.footprint_rows["area_m2"].append(part.footprint_area)
        self.footprint_geoms.append(part.footprint)
        self.run_rows.append(part.run_row)
        self.resumed.append(part.summary.scene)

    def merge_scene(self, index: int, pending: _Pending, extent: Any) -> ScenePart:
        """Join a scene's band results (in band order) like the pipeline joins window rows;
        return its part and add it to the output."""
        scene = pending.scene
        results = [pending.results[b] for b in range(pending.tasks)]
        collector = PolygonCollector()
        run = SceneRun(self.plan, scene, collector, None, ProgressBase(), index=index)
        for k, res in enumerate(results):
            collector.add(index, res.rows, res.geoms)
            if res.open is not None:
                run.polygonizer.add_band(res.open, final=k == len(results) - 1)
                run.flush()
        outline = results[0].outline if len(results) == 1 else shapely.simplify(
            shapely.union_all([r.outline for r in results]), 0.0)
        footprint, area = run.finish_footprint((outline, sum(r.valid_pixels for r in results)))
        rows, geoms = collector.table()
        summary = run.summary
        summary.tiles = sum(r.tiles for r in results)
        summary.tiles_skipped = sum(r.tiles_skipped for r in results)
        summary.polygons = len(geoms)
        summary.landslide_area_m2 = float(np.sum(rows["area_m2"]))
        summary.seconds = sum(r.seconds for r in results)
        self.forward_seconds += sum(r.forward_seconds for r in results)
        started = datetime.now(UTC)
        self.inventory.add(index, rows, geoms)
        self.record_scene(scene, summary, footprint, area, started)
        return ScenePart(rows, geoms, footprint, area, extent, summary, self.run_rows[-1])

    def fail(self, scene: PlannedScene, error: str) -> None:
        self.failed.append({"scene": scene.label, "path": str(scene.info.path),
                            "error": error})


def predict_distributed(
    scenes: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: Any = None,
    backend: str = "auto",
    device: str = "auto",
    options: PredictOptions | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    threads_per_worker: int = 1,
    processes: bool = True,
    band_rows: int | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    task_hook: Callable[[SceneTask], None] | None = None,
    **option_keywords: Any,
) -> PredictSummary:
    """Map ``scenes`` into the one vector output ``out`` on Dask distributed (module
    docstring).

    Args:
        scenes, out, model, backend, device, options: as for
            :func:`~landslide_cli.predict.pipeline.predict_scenes` (``--prob-out`` is not
            supported here; ``--quicklook`` not with ``resume``); the option keywords of
            ``predict_scenes`` (``tile=``, ``min_area=`` ...) are accepted instead of
            ``options``.
        workers: start a local cluster of this many worker processes.
        scheduler: the address of a running Dask scheduler (``tcp://host:8786``).
        client: an open ``distributed.Client`` to use (tests, notebooks).
        threads_per_worker: threads of each local worker (1: one task at a time).
        processes: local workers as processes (``False``: threads of this process).
        band_rows: window rows per task (``None``: split scenes of more than
            :data:`AUTO_BAND_WINDOWS` windows; 0: one task per scene).
        resume: skip the scenes done by an earlier run into ``out`` (its resume state) and
            replace ``out`` with the old and the new scenes.
        reporter: warnings (one per failed scene) and progress in windows.
        task_hook: called with each task on the worker before it runs (instrumentation and
            fault-injection tests); must be picklable for process workers.

    Raises:
        LandslideError: a bad input, option or output (before any work), an unreachable
            scheduler, a missing Dask, or every scene failing (nothing is written then).
    """
    started = time.perf_counter()
    options = _chosen_options(options, PredictOptions(**option_keywords))
    rep = as_reporter(reporter)
    distributed = workers is not None or scheduler is not None or client is not None
    if distributed and client is None:
        require_dask()
    if workers is not None and scheduler is not None:
        raise LandslideError("--workers and --scheduler: give one of them")
    if workers is not None and workers < 1:
        raise LandslideError(f"--workers {workers}: must be at least 1")
    if threads_per_worker < 1:
        raise LandslideError(f"--threads-per-worker {threads_per_worker}: must be at least 1")
    if band_rows is not None and band_rows < 0:
        raise LandslideError(f"--band-rows {band_rows}: must not be negative")
    if options.prob_out is not None and (distributed or resume):
        raise LandslideError("--prob-out is not supported with --workers, --scheduler or "
                             "--resume (run those scenes on their own)")
    if options.quicklook is not None and resume:
        raise LandslideError("--quicklook does not work with --resume (it would read the "
                             "skipped scenes)")
    given = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
    if not given:
        raise LandslideError("no scene given")
    out = Path(out)
    state = ResumeState(out)
    keys = [scene_key(s) for s in given]
    done: dict[int, dict[str, Any]] = {}
    if resume and state.load():
        done = state.done(keys)
        if done:
            options = replace(options, crs=state.settings.get("crs") or options.crs)
    if resume and out.exists():  # the output being resumed is replaced (never an input)
        options = replace(options, overwrite=True)
    todo = [i for i in range(len(given)) if i not in done]
    if todo:
        plan = plan_predict([given[i] for i in todo], out, options, model=model,
                            backend=backend, device=device)
    else:
        plan = _plan_resumed(out, options, model=model, backend=backend, device=device)
    settings = run_settings(plan)
    if done and state.settings != settings:
        changed = sorted(k for k in settings if state.settings.get(k) != settings[k])
        raise LandslideError(
            f"--resume: {state.path} was made with other settings ({', '.join(changed)}); "
            "run without --resume (and with --overwrite) to start over")
    for message in plan.warnings:
        rep.warn(message)
    prepare_backend(plan, rep)
    planned = dict(zip(todo, plan.scenes, strict=True))
    parts = {i: state.part(e) for i, e in done.items()}
    extents = [parts[i].extent if i in parts else scene_extent(planned[i].info, plan.crs)
               for i in range(len(given))]
    keep_state = resume or distributed
    if keep_state:
        state.start(settings, keep=resume)

    shipped, recipe = _backend_for_workers(plan, model, backend, device, distributed)
    tasks = _make_tasks(plan, planned, band_rows, recipe, task_hook)
    pending = {i: _Pending(s, sum(1 for t in tasks if t.index == i)) for i, s in planned.items()}
    run = RegionRun(plan, rep, extents)
    with gdal_env(), contextlib.ExitStack() as stack, run.committing():
        if distributed:
            dask_client = client or stack.enter_context(
                _dask_client(workers, scheduler, threads_per_worker, processes))
            outcomes = _run_dask(dask_client, tasks, shipped)
        else:
            outcomes = _run_here(tasks, plan.backend)
        next_index = 0

        def merge_ready() -> None:
            nonlocal next_index
            while next_index < len(given):
                i = next_index
                if i in parts:
                    run.add_part(i, parts.pop(i))
                elif pending[i].complete:
                    _finish_scene(run, state if keep_state else None, i, pending.pop(i),
                                  keys[i], extents[i], rep)
                else:
                    return
                next_index += 1

        merge_ready()
        for task, result, error in outcomes:
            scene = pending.get(task.index)
            if scene is None:
                continue
            if error is not None:
                scene.error = scene.error or first_line(error)
            elif scene.error is None and result is not None:
                scene.results[result.band] = result
            run.bar.advance(task.windows)
            merge_ready()
        merge_ready()
        if not run.scenes:
            raise LandslideError(f"every scene failed: {run.failed[0]['scene']}: "
                                 f"{run.failed[0]['error']}" if run.failed else
                                 "no scene was predicted")
    summary = run.summary(time.perf_counter() - started)
    summary.failed = list(run.failed)
    summary.resumed = list(run.resumed)
    return summary


def _finish_scene(run: RegionRun, state: ResumeState | None, index: int, pending: _Pending,
                  key: dict[str, Any], extent: Any, rep: Reporter) -> None:
    """Merge a complete scene into the output (and the resume state), or report it."""
    if pending.error is None:
        try:
            part = run.merge_scene(index, pending, extent)
        except LandslideError as exc:
            pending.error = first_line(exc)
        else:
            if state is not None:
                state.add(key, pending.scene.label, part)
            return
    run.fail(pending.scene, pending.error)
    rep.warn(f"{pending.scene.label}: failed twice, left out of {run.plan.out.name} "
             f"({pending.error})")


def _make_tasks(plan: PredictPlan, planned: dict[int, PlannedScene], band_rows: int | None,
                recipe: tuple[Any, str, str, str] | None,
                hook: Callable[[SceneTask], None] | None) -> list[SceneTask]:
    skeleton = replace(plan, scenes=[], backend=None, warnings=[])
    tasks = []
    for i, scene in planned.items():
        layout = plan.layout(scene.info, scene.resampler)
        ranges = band_ranges(len(layout.rows), len(layout.cols), band_rows)
        for b, (r0, r1) in enumerate(ranges):
            tasks.append(SceneTask(
                index=i, band=b, bands=len(ranges), rows=None if len(ranges) == 1 else (r0, r1),
                scene=_portable(scene), plan=skeleton, windows=(r1 - r0) * len(layout.cols),
                recipe=recipe, hook=hook))
    return tasks


def _backend_for_workers(plan: PredictPlan, model: Any, backend: str, device: str,
                         distributed: bool) -> tuple[Any, tuple[Any, str, str, str] | None]:
    """``(object, recipe)``: the prepared backend sent once to every worker when it pickles
    (a PyTorch model, a stand-in), else the recipe each worker opens the model from (an ONNX
    Runtime session does not travel); ``(None, None)`` in-process."""
    if not distributed:
        return None, None
    import cloudpickle

    try:
        cloudpickle.dumps(plan.backend)
    except Exception:
        if not isinstance(model, (str, os.PathLike, type(None))):
            raise LandslideError("this model object cannot be sent to Dask workers; pass "
                                 "the model's path or name") from None
        from landslide_cli.backends import backend_choices
        from landslide_cli.onnx_backend import OnnxBackend

        tta = str(getattr(plan.options, "tta", "none"))
        inner = plan.backend
        while not isinstance(inner, OnnxBackend) and hasattr(inner, "backend"):
            inner = inner.backend  # e.g. the TTA wrapper
        if isinstance(inner, OnnxBackend):
            # `auto` on CPU runs a checkpoint through its cached ONNX export: workers open
            # that very file (on a remote cluster it must be on a path they share)
            return None, (str(inner.model_path), "onnx", device, tta)
        chosen = str(getattr(plan.backend, "name", backend))  # the runtime the client chose
        return None, (None if model is None else str(model),
                      chosen if chosen in backend_choices() else backend, device, tta)
    return plan.backend, None


def _plan_resumed(out: Path, options: PredictOptions, *, model: Any, backend: str,
                  device: str) -> PredictPlan:
    """The plan of a resumed run whose scenes are all done: only the output is checked and
    the model opened (for the summary); no scene is read."""
    options.validate()
    check_vector_targets(out, overwrite=options.overwrite)
    be = _resolve_backend(model, backend, device)
    tile = _window_size(be, options.tile)
    threshold = float(be.threshold if options.threshold is None else options.threshold)
    return PredictPlan(out=out, options=options, scenes=[], backend=be, tile=tile,
                       threshold=threshold, crs=_resolve_crs(options.crs), warnings=[])


__all__ = ["ResumeState", "SceneTask", "TaskResult", "band_ranges", "predict_distributed",
           "require_dask", "run_task", "scene_key"]
