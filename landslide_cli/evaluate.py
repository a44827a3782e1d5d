"""Evaluate a model on a labelled data set: ``landslide eval`` as a library function.

The model is only ever used through :func:`landslide_cli.backends.open_backend` (torch or ONNX),
pixels are normalized with the model's own :class:`~landslide_cli.preprocess.InputSpec`, and all
pixel metrics come from one global confusion matrix (docs/metrics.md).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landslide_cli.adapt import (
    adapt_backend,
    check_adapt_request,
    choose_tiles,
    tile_batches,
    torch_model,
)
from landslide_cli.data import TileSet, open_dataset, select_bands
from landslide_cli.data.base import nfc
from landslide_cli.data.datasets import canonical_region
from landslide_cli.data.splits import SPLITS, load_split_file
from landslide_cli.errors import DataError, LandslideError
from landslide_cli.metrics import (
    ConfusionMatrix,
    ObjectCounts,
    PRHistogram,
    RegionalMetrics,
    confusion_counts,
)
from landslide_cli.precision import precision_fields
from landslide_cli.preprocess import normalize
from landslide_cli.radiometry import TileRescaler, parse_rescale
from landslide_cli.reporting import (
    ProgressBase,
    ProgressHandle,
    QuietReporter,
    Reporter,
    as_reporter,
)
from landslide_cli.safety import atomic_write, check_target
from landslide_cli.tta import check_tta, tta_of, with_tta

log = logging.getLogger("landslide.eval")

#: Published numbers for reference only: KDA (Wang et al., IEEE GRSL 2025), Table II, CAS
#: Landslide test set of the authors' own random 8:1:1 split. Percent. Their "F1" is a
#: class-mean F1; the set cannot all come from one confusion matrix (docs/metrics.md).
KDA_PAPER = {
    "source": "KDA paper (Wang et al. 2025), Table II, CAS, authors' own random 8:1:1 split",
    "iou": 70.76,
    "miou": 86.53,
    "oa": 98.18,
    "mean_f1": 91.44,
    "precision": 91.93,
}


@dataclass
class TileStat:
    """Per-tile confusion counts (kept for every tile; images are not kept)."""

    index: int
    region: str
    name: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def iou(self) -> float | None:
        union = self.tp + self.fp + self.fn
        return self.tp / union if union else None

    @property
    def f1(self) -> float | None:
        den = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / den if den else None


@dataclass
class EvalReport:
    """Everything ``landslide eval`` reports; :meth:`to_json` gives the documented JSON."""

    metrics: RegionalMetrics
    threshold: float
    histogram: PRHistogram
    tiles: list[TileStat]
    model: dict[str, Any]
    dataset: dict[str, Any]
    objects: ObjectCounts | None = None
    objects_per_region: dict[str, ObjectCounts] = field(default_factory=dict)
    seconds: float = 0.0
    #: where ``threshold`` came from: ``"user"`` (``threshold=`` / ``--threshold``) or
    #: ``"model"`` (the checkpoint's metadata)
    threshold_source: str = "model"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: one-line warnings about the evaluation itself (e.g. tiles the model was trained on)
    warnings: list[str] = field(default_factory=list)
    #: how many evaluated tiles are in the model's own training split (:func:`training_overlap`)
    training_overlap: dict[str, Any] = field(default_factory=dict)
    _tileset: TileSet | None = field(default=None, repr=False)
    _backend: Any = field(default=None, repr=False)
    _rescaler: Any = field(default=None, repr=False)  # the run's --rescale (TileRescaler)

    @property
    def overall(self) -> ConfusionMatrix:
        return self.metrics.overall

    @property
    def per_region(self) -> dict[str, ConfusionMatrix]:
        return dict(sorted(self.metrics.per_region.items()))

    @property
    def best_threshold(self) -> dict[str, float]:
        """Best-F1 threshold on the PR histogram grid (store it in the checkpoint if you like)."""
        return self.histogram.best_f1()

    def region_tiles(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tiles:
            counts[t.region] = counts.get(t.region, 0) + 1
        return counts

    # ------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """``{"confusion", "landslide", "background_iou", "miou", "oa", "mean_f1",
        "per_region": {name: same keys}, "model", "dataset", ...}``; metrics in [0, 1]."""
        counts = self.region_tiles()
        out = self.overall.report()
        out["tiles"] = len(self.tiles)
        per_region: dict[str, Any] = {}
        for name, cm in self.per_region.items():
            entry = cm.report()
            entry["tiles"] = counts.get(name, 0)
            if name in self.objects_per_region:
                entry["objects"] = self.objects_per_region[name].compute()
            per_region[name] = entry
        out["per_region"] = per_region
        if self.objects is not None:
            out["objects"] = self.objects.compute()
        out["threshold"] = self.threshold
        out["threshold_source"] = self.threshold_source
        out["best_threshold"] = self.best_threshold
        out["model"] = self.model
        out["dataset"] = {**self.dataset, "skipped": len(self.skipped)}
        out["training_overlap"] = self.training_overlap
        out["warnings"] = list(self.warnings)
        out["runtime"] = {"seconds": round(self.seconds, 3),
                          "tiles_per_second": round(len(self.tiles) / self.seconds, 3)
                          if self.seconds else None}
        return out

    def input_paths(self) -> list[Path]:
        """Files this evaluation read (tiles, masks, model): never a target of its outputs."""
        paths: list[Path] = []
        if self._tileset is not None:
            for sample in self._tileset:
                paths.append(sample.image_path)
                if sample.mask_path is not None:
                    paths.append(sample.mask_path)
        model_path = getattr(self._backend, "model_path", None)
        if model_path is not None:
            paths.append(Path(model_path))
        return paths

    def _target(self, path: str | Path, overwrite: bool, what: str, suffixes: tuple[str, ...]
                ) -> Path:
        return check_target(path, overwrite=overwrite, what=what, suffixes=suffixes,
                            inputs=self.input_paths(), probe=False)

    def write_json(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """The report as JSON (refused over an existing file unless ``overwrite``)."""
        target = self._target(path, overwrite, "--json", ())
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        return _write_text(target, text)

    # ------------------------------------------------------------------------------- CSV
    def csv_rows(self) -> list[dict[str, Any]]:
        counts = self.region_tiles()
        rows = []
        entries = [*self.per_region.items(), ("overall", self.overall)]
        for name, cm in entries:
            m = cm.compute()
            row: dict[str, Any] = {
                "region": name,
                "tiles": len(self.tiles) if name == "overall" else counts.get(name, 0),
                "pixels": cm.total,
                "landslide_pixels": cm.positives,
                **cm.to_dict(),
                **{k: round(m[k], 6) for k in ("iou", "precision", "recall", "f1",
                                               "background_iou", "miou", "oa", "mean_f1",
                                               "mean_precision")},
            }
            obj = self.objects if name == "overall" else self.objects_per_region.get(name)
            if self.objects is not None:
                o = (obj or ObjectCounts()).compute()
                row.update({"object_precision": round(o["precision"], 6),
                            "object_recall": round(o["recall"], 6),
                            "object_f1": round(o["f1"], 6),
                            "objects_matched": o["matched"],
                            "objects_predicted": o["predicted"],
                            "objects_reference": o["reference"]})
            rows.append(row)
        return rows

    def write_csv(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """One CSV row per region plus overall (refused over an existing file unless
        ``overwrite``)."""
        target = self._target(path, overwrite, "--csv", ())
        rows = self.csv_rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return _write_text(target, buf.getvalue())

    # ---------------------------------------------------------------------------- figure
    def chosen_tiles(self, n: int = 3) -> tuple[list[TileStat], list[TileStat]]:
        """``(worst, best)`` tiles by landslide IoU among tiles with landslide in the
        reference or the prediction (tiles where both are empty have no IoU)."""
        ranked = sorted((t for t in self.tiles if t.iou is not None),
                        key=lambda t: (t.iou, t.index))
        if not ranked:
            return list(self.tiles[:n]), []
        worst = ranked[:n]
        best = [t for t in reversed(ranked[n:])][:n]
        return worst, best

    def write_figure(self, path: str | Path, n: int = 3, *, overwrite: bool = False) -> Path:
        """PNG: image / reference / prediction for the ``n`` worst and best tiles, and the
        precision-recall curve with the best-F1 threshold marked. Re-reads only those tiles."""
        if self._tileset is None or self._backend is None:
            raise LandslideError("the figure needs the data and model of this evaluation; "
                                 "call evaluate() in this process")
        return _write_figure(self, self._target(path, overwrite, "--figure", (".png",)), n)


def _write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=path.suffix)
    return path


# ----------------------------------------------------------------------- training overlap


def tile_key(region: str, name: str) -> tuple[str, str]:
    """Key matching a tile across data sets and machines: the region (source) name ignoring
    case, brackets and spaces, and the file stem (NFC, case-folded), as split files record
    them (``region/name``)."""
    return canonical_region(region), nfc(name).casefold()


def _split_key(key: str) -> tuple[str, str]:
    region, _, name = key.rpartition("/")
    return tile_key(region, name)


def find_training_split(metadata: dict[str, Any], model_path: str | Path | None = None,
                        ) -> tuple[str | None, Path | None, str]:
    """``(recorded, found, split)``: the split file a model's metadata names for its training
    data (``training.dataset.split_file``), the file found for it (``None`` if none), and the
    split the model was trained on (``train`` unless recorded otherwise).

    A relative recorded path was relative to the training run's working directory; it is
    looked for next to the model file (by file name), then relative to the current folder.
    """
    training = metadata.get("training") if isinstance(metadata, dict) else None
    dataset = training.get("dataset") if isinstance(training, dict) else None
    if not isinstance(dataset, dict) or not dataset.get("split_file"):
        return None, None, "train"
    recorded = str(dataset["split_file"])
    split = str(dataset.get("split") or "train")
    given = Path(recorded).expanduser()
    candidates: list[Path] = [given] if given.is_absolute() else []
    if model_path is not None:
        candidates.append(Path(model_path).parent / given.name)
    if not given.is_absolute():
        candidates.append(Path.cwd() / given)
    found = next((c for c in candidates if c.is_file()), None)
    return recorded, found, split


def training_overlap(metadata: dict[str, Any], model_path: str | Path | None,
                     tiles: list[tuple[str, str]]) -> dict[str, Any]:
    """Which of ``tiles`` (``(region, name)`` pairs) the model saw in training, from the split
    file its metadata records. Returns ``{"checked", "split_file", "split", "tiles",
    "in_training", "in_validation", "examples"}`` or ``{"checked": False, "reason"}``."""
    recorded, found, split = find_training_split(metadata, model_path)
    if recorded is None:
        return {"checked": False, "reason": "the model's metadata records no training split file"}
    if found is None:
        return {"checked": False, "split_file": recorded,
                "reason": f"training split file {recorded} not found"}
    try:
        assignment = load_split_file(found)
    except LandslideError as exc:
        return {"checked": False, "split_file": str(found), "reason": str(exc)}
    trained = SPLITS if split == "all" else (split,) if split in SPLITS else ("train",)
    train_keys = {_split_key(k) for s in trained for k in assignment.keys(s)}
    val_keys = {_split_key(k) for k in assignment.val} - train_keys
    seen = [f"{r}/{n}" for r, n in tiles if tile_key(r, n) in train_keys]
    return {"checked": True, "split_file": str(found), "split": split, "tiles": len(tiles),
            "in_training": len(seen),
            "in_validation": sum(tile_key(r, n) in val_keys for r, n in tiles),
            "examples": seen[:5]}


def _overlap_warning(overlap: dict[str, Any]) -> str | None:
    k = overlap.get("in_training", 0)
    if not overlap.get("checked") or not k:
        return None
    n = overlap["tiles"]
    which = "all" if k == n else f"{k} of"
    return (f"{which} {n} evaluated tile(s) are in the model's own {overlap['split']} split "
            f"({overlap['split_file']}, e.g. {overlap['examples'][0]}): these metrics are not "
            "on unseen data")


# --------------------------------------------------------------------------- prediction


def predict_tiles(backend: Any, batch: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
    """Landslide probability ``(N, H, W)`` for normalized ``batch (N, C, H, W)``.

    If the backend needs a fixed tile size (``backend.fixed_tile``, e.g. a static ONNX graph),
    smaller tiles are reflect-padded up to it and larger ones are covered by windows of that
    size, laid out and blended as ``landslide predict`` does with ``--overlap 0``
    (:class:`~landslide_cli.predict.windows.GridLayout` / ``Stitcher``: the windows' shift-back
    is spread over each row, shared pixels are blended); probabilities are cropped back to each
    tile's size. ``chunk`` windows go to the backend at a time.
    """
    size = getattr(backend, "fixed_tile", None)
    n, _, h, w = batch.shape
    if not size or (h == size and w == size):
        return np.asarray(backend.predict(batch), dtype=np.float32)
    # predict's package pulls in the raster and vector stack: only this path needs it
    from landslide_cli.predict.windows import GridLayout, Stitcher

    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        mode = "reflect" if h > 1 and w > 1 else "edge"
        batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    layout = GridLayout(h, w, size, overlap=0.0)
    stitchers = [Stitcher(layout) for _ in range(n)]
    windows = [(i, y, x) for i in range(n) for _, _, y, x, _, _ in layout.windows()]
    out = np.empty((n, h, w), dtype=np.float32)
    chunk = chunk or max(1, n)
    for k in range(0, len(windows), chunk):
        part = windows[k:k + chunk]
        crops = np.stack([batch[i, :, y:y + size, x:x + size] for i, y, x in part])
        probs = np.asarray(backend.predict(crops), dtype=np.float32)
        for (i, _, _), prob in zip(part, probs, strict=True):
            block = stitchers[i].add(prob)
            bh, bw = block.shape
            out[i, block.y0:block.y0 + bh, block.x0:block.x0 + bw] = block.prob
    return out


def _prefetch(tiles: TileSet, *, skip_bad: bool, skipped: list[tuple[str, str]],
              workers: int = 2, ahead: int = 8,
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Read tiles in order with a few threads (GDAL decodes outside the GIL)."""
    pending: OrderedDict[int, Future[tuple[np.ndarray, np.ndarray]]] = OrderedDict()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        nxt = 0
        while pending or nxt < len(tiles):
            while nxt < len(tiles) and len(pending) < ahead:
                pending[nxt] = pool.submit(tiles.read, nxt)
                nxt += 1
            i, fut = pending.popitem(last=False)
            try:
                image, mask = fut.result()
            except DataError as exc:
                if not skip_bad:
                    for f in pending.values():
                        f.cancel()
                    raise
                skipped.append((tiles[i].key, str(exc)))
                log.warning("skipped %s", exc)
                continue
            yield i, image, mask


class _CallbackProgress(ProgressBase):
    """A handle calling ``callback(done, total)`` (the deprecated ``progress=callable``)."""

    def __init__(self, callback: Callable[[int, int], None], total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.callback(self.done, self.total)


class _CallbackReporter:
    """``reporter`` with its progress sent to ``callback`` (the deprecated ``progress=``)."""

    def __init__(self, reporter: Reporter, callback: Callable[[int, int], None]) -> None:
        self.reporter, self.callback = reporter, callback

    def info(self, msg: str) -> None:
        self.reporter.info(msg)

    def warn(self, msg: str) -> None:
        self.reporter.warn(msg)

    def progress(self, total: int, label: str) -> ProgressHandle:
        return _CallbackProgress(self.callback, total)


def _legacy_progress(reporter: Reporter | None,
                     progress: bool | Callable[[int, int], None] | None) -> Reporter:
    """The reporter to use, honouring the deprecated ``progress=`` argument."""
    rep = as_reporter(reporter)
    if progress is None:
        return rep
    warnings.warn("evaluate(progress=...) is deprecated; pass reporter= (a "
                  "landslide_cli.reporting.Reporter) instead", DeprecationWarning, stacklevel=3)
    if callable(progress):
        return _CallbackReporter(rep, progress)
    return rep if progress else QuietReporter(rep)  # evaluate has no status lines


def _model_info(backend: Any) -> dict[str, Any]:
    meta = getattr(backend, "metadata", {}) or {}
    path = getattr(backend, "model_path", None)
    return {
        "name": getattr(backend, "model_name", ""),
        "sha256": getattr(backend, "model_sha256", ""),
        "path": str(path) if path else None,
        "backend": getattr(backend, "name", ""),
        "device": str(getattr(backend, "device", "")),
        "threshold": float(getattr(backend, "threshold", 0.5)),
        "architecture": meta.get("architecture"),
        "fixed_tile": getattr(backend, "fixed_tile", None),
    }


def evaluate(
    model_ref: str | Path | Any | None = None,
    dataset: str | TileSet = "folder",
    root: str | Path | None = None,
    split: str = "test",
    regions: list[str] | str | None = None,
    batch_size: int = 4,
    device: str = "auto",
    backend: str = "auto",
    threshold: float | None = None,
    objects: bool = False,
    split_file: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool | Callable[[int, int], None] | None = None,
    *,
    reporter: Reporter | None = None,
    split_mode: str | None = None,
    seed: int = 0,
    bins: int = 1000,
    read_workers: int = 2,
    tta: str = "none",
    adapt_bn: bool = False,
    adapt_bn_windows: int = 64,
    rescale: str = "auto",
    precision: str = "auto",
) -> EvalReport:
    """Evaluate ``model_ref`` on a data set and return an :class:`EvalReport`.

    Args:
        model_ref: checkpoint path, shipped model name, ``.onnx`` file, ``None`` for the
            embedded default model, or an already opened backend object.
        dataset: a registered data-set name (then ``root`` is required) or a :class:`TileSet`.
        threshold: decision threshold (``prob >= threshold`` is landslide); default: the
            model's metadata threshold.
        objects: also compute object-level precision/recall/F1 (IoU >= 0.5 matching).
        reporter: where progress (in tiles) and warnings go; ``None`` says nothing (the CLI
            passes its Rich reporter). The warnings are also in ``EvalReport.warnings``.
        progress: deprecated (use ``reporter``): ``False`` turns the reporter's progress off,
            a ``callback(done, total)`` receives it instead.
        tta: test-time augmentation (``none``, ``flips``, ``d4``; :mod:`landslide_cli.tta`):
            probabilities averaged over flips/rotations of each tile (non-square tiles: only
            the transforms that keep their shape).
        adapt_bn: before evaluating, re-estimate the model's BatchNorm statistics on up to
            ``adapt_bn_windows`` evaluated tiles (images only; torch backend only;
            :mod:`landslide_cli.adapt`). Both are recorded in ``EvalReport.model``.

        rescale: radiometric conversion of each tile into the model's input domain
            (``auto``, ``none``, ``percentile[:LOW,HIGH]``, ``range:MIN,MAX``;
            :mod:`landslide_cli.radiometry`); percentiles are each tile's own. Recorded in
            ``EvalReport.dataset["rescale"]``.

        precision: ``auto``, ``fp32``, ``bf16`` or ``int8`` (:mod:`landslide_cli.precision`;
            ``auto`` keeps PyTorch for checkpoints, bf16 on CPUs with native bfloat16).
            Recorded in ``EvalReport.model`` (``precision``, ``precision_check``).

    Tiles of different sizes are batched by size (each tile runs at its native size; a model
    with a fixed tile size gets padded/windowed input, see :func:`predict_tiles`).
    """
    if batch_size < 1:
        raise LandslideError(f"--batch-size must be at least 1, got {batch_size}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise LandslideError(f"--threshold must be in [0, 1], got {threshold}")
    check_tta(tta)
    parse_rescale(rescale)
    if adapt_bn:
        if adapt_bn_windows < 1:
            raise LandslideError(f"--adapt-bn-windows must be at least 1, got {adapt_bn_windows}")
        check_adapt_request(model_ref, backend)
    if isinstance(dataset, TileSet):
        tiles = dataset
    else:
        if root is None:
            raise LandslideError("a data set root is required (--root PATH)")
        tiles = open_dataset(dataset, root, split=split, split_file=split_file, seed=seed,
                             split_mode=split_mode, regions=regions, skip_bad=skip_bad)
    if not len(tiles):
        raise DataError(f"nothing to evaluate: {tiles!r} is empty")

    if model_ref is not None and hasattr(model_ref, "predict") and hasattr(model_ref, "spec"):
        be = model_ref
    else:
        from landslide_cli.backends import open_backend

        be = open_backend(model_ref, backend=backend, device=device, precision=precision)
    if adapt_bn:
        torch_model(be)  # a one-line error for ONNX, baselines and stand-ins
    spec = be.spec
    thr = float(be.threshold if threshold is None else threshold)
    rescaler = TileRescaler(rescale, spec)

    metrics = RegionalMetrics()
    hist = PRHistogram(bins)
    stats: list[TileStat] = []
    obj_total = ObjectCounts() if objects else None
    obj_region: dict[str, ObjectCounts] = {}
    skipped: list[tuple[str, str]] = list(tiles.skipped)

    def run(items: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        nonlocal obj_total
        raw = np.stack([img for _, img, _ in items])
        probs = predict_tiles(be, normalize(raw, spec), chunk=batch_size)
        for (i, _, mask), prob in zip(items, probs, strict=True):
            sample = tiles[i]
            pred = prob >= thr
            counts = confusion_counts(pred, mask)
            metrics.overall.add(*counts)
            metrics.per_region.setdefault(sample.region, ConfusionMatrix()).add(*counts)
            hist.update(prob, mask)
            stats.append(TileStat(i, sample.region, sample.name, *counts))
            if obj_total is not None:
                tile_obj = ObjectCounts().update(pred, mask)
                region_obj = obj_region.setdefault(sample.region, ObjectCounts())
                region_obj += tile_obj
                obj_total += tile_obj

    rep = _legacy_progress(reporter, progress)
    adaptation, adapt_note = None, None
    if adapt_bn:  # ``run`` above predicts with the adapted, augmented ``be``
        be, done = adapt_backend(be, tile_batches(tiles, spec, windows=adapt_bn_windows,
                                                  batch_size=batch_size, skip_bad=skip_bad,
                                                  rescale=TileRescaler(rescale, spec)),
                                 total=len(choose_tiles(len(tiles), adapt_bn_windows)),
                                 reporter=rep)
        adaptation, adapt_note = done.to_dict(), done.note
    be = with_tta(be, tta)
    bar = rep.progress(len(tiles), "evaluating")
    advance = bar.advance
    start = time.perf_counter()
    pending: OrderedDict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = \
        OrderedDict()
    try:
        for i, image, mask in _prefetch(tiles, skip_bad=skip_bad, skipped=skipped,
                                        workers=read_workers, ahead=2 * batch_size):
            image = select_bands(image, spec, source=str(tiles[i].image_path))
            image = rescaler(image, source=str(tiles[i].image_path))
            key = tuple(image.shape)
            pending.setdefault(key, []).append((i, image, mask))
            if len(pending[key]) >= batch_size:
                run(pending.pop(key))
                advance(batch_size)
            elif sum(len(v) for v in pending.values()) > 2 * batch_size:
                oldest = next(iter(pending))
                items = pending.pop(oldest)
                run(items)
                advance(len(items))
        for key in list(pending):
            items = pending.pop(key)
            run(items)
            advance(len(items))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    if not stats:
        raise DataError("no tile could be evaluated (all were skipped)")
    stats.sort(key=lambda t: t.index)
    info = tiles.info()
    info.update(tiles=len(stats), pixels=metrics.overall.total)
    info["rescale"] = rescaler.summary()
    overlap = training_overlap(getattr(be, "metadata", {}) or {},
                               getattr(be, "model_path", None),
                               [(t.region, t.name) for t in stats])
    notes = [w for w in (_overlap_warning(overlap),) if w]
    notes += [adapt_note] if adapt_note else []
    notes += [be.precision_note] if getattr(be, "precision_note", "") else []
    if skipped:
        rep.warn(f"skipped {len(skipped)} bad tile(s); first: {skipped[0][1]}")
    for note in notes:
        rep.warn(note)
    model_info = {**_model_info(be), "tta": tta_of(be), "adapt_bn": adaptation,
                  **precision_fields(be)}
    return EvalReport(metrics=metrics, threshold=thr, histogram=hist, tiles=stats,
                      model=model_info, dataset=info, objects=obj_total,
                      objects_per_region=dict(sorted(obj_region.items())), seconds=seconds,
                      skipped=skipped, warnings=notes, training_overlap=overlap,
                      threshold_source="model" if threshold is None else "user",
                      _tileset=tiles, _backend=be, _rescaler=rescaler)


# ------------------------------------------------------------------------------- figure


def _display_rgb(raw: np.ndarray, spec: Any) -> np.ndarray:
    """(C,H,W) raw -> (H,W,3) float in [0,1] with a 2-98 % stretch per band."""
    names = [b.lower() for b in spec.bands]
    order = None
    for trio in (("red", "green", "blue"), ("b4", "b3", "b2"), ("r", "g", "b")):
        if all(t in names for t in trio):
            order = [names.index(t) for t in trio]
            break
    if order is None:
        order = [0, 1, 2] if raw.shape[0] >= 3 else [0, 0, 0]
    rgb = raw[order].astype(np.float32)
    out = np.empty_like(rgb)
    for c in range(3):
        lo, hi = np.percentile(rgb[c], (2, 98))
        out[c] = np.clip((rgb[c] - lo) / (hi - lo), 0, 1) if hi > lo else 0.0
    return np.moveaxis(out, 0, -1)


def _overlay(rgb: np.ndarray, layers: list[tuple[np.ndarray, tuple[float, float, float]]],
             alpha: float = 0.45) -> np.ndarray:
    out = rgb.copy()
    for mask, color in layers:
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float32)
    return out


def _write_figure(report: EvalReport, path: Path, n: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tiles, be = report._tileset, report._backend
    assert tiles is not None
    spec = be.spec
    worst, best = report.chosen_tiles(n)
    chosen = [("worst", t) for t in worst] + [("best", t) for t in best]
    rows = max(1, len(chosen))
    fig = Figure(figsize=(13, 3.2 * rows), dpi=90)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 4, width_ratios=[1, 1, 1, 1.25])
    for r, (label, stat) in enumerate(chosen):
        raw, mask = tiles.read(stat.index)
        raw = select_bands(raw, spec)
        model_in = raw if report._rescaler is None else report._rescaler(raw)
        prob = predict_tiles(be, normalize(model_in[None], spec))[0]
        pred = prob >= report.threshold
        rgb = _display_rgb(raw, spec)
        gt = mask.astype(bool)
        panels = [
            (rgb, f"{label}: {stat.region}/{stat.name}"),
            (_overlay(rgb, [(gt, (1.0, 0.85, 0.0))]), "reference (yellow)"),
            (_overlay(rgb, [(pred & gt, (0.1, 0.8, 0.1)), (pred & ~gt, (0.9, 0.1, 0.1)),
                            (~pred & gt, (0.1, 0.3, 1.0))]),
             f"prediction IoU {stat.iou or 0:.2f} (TP green, FP red, FN blue)"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    ax = fig.add_subplot(grid[:, 3])
    cur = report.histogram.curve()
    ax.plot(cur["recall"], cur["precision"], color="0.2", lw=1.5, label="PR curve")
    b = report.best_threshold
    ax.scatter([b["recall"]], [b["precision"]], color="crimson", zorder=3,
               label=f"best F1 {b['f1']:.3f} at t={b['threshold']:.3f}")
    used = report.histogram.at(report.threshold).compute()
    ax.scatter([used["recall"]], [used["precision"]], color="royalblue", marker="s", zorder=3,
               label=f"used t={report.threshold:.3f}: F1 {used['f1']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (landslide)")
    ax.set_ylabel("precision (landslide)")
    ax.set_title("precision-recall over thresholds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{report.model.get('name')} on {report.dataset.get('name')} "
                 f"({report.dataset.get('split')}, {len(report.tiles)} tiles)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return path
