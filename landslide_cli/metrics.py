"""Segmentation metrics you can trust (definitions: docs/metrics.md).

* :class:`ConfusionMatrix`: one *global* binary confusion matrix (tp, fp, fn, tn as exact
  integers) accumulated over every evaluated pixel; every pixel metric is computed from it once,
  never averaged over batches or images.
* :class:`RegionalMetrics`: one confusion matrix per region plus the overall one.
* :class:`ObjectCounts`: connected landslide regions (8-connectivity) matched one-to-one at
  IoU >= 0.5 -> object precision / recall / F1.
* :class:`PRHistogram`: histograms of predicted probability for landslide and background pixels;
  precision/recall at every threshold ``k / bins`` and the best-F1 threshold, in one pass with
  flat memory.

Inputs may be numpy arrays or torch tensors of any shape (a batch or one tile). Zero
denominators give ``zero_division`` (default 0.0, like torchmetrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PIXEL_KEYS = ("iou", "precision", "recall", "f1", "background_iou", "miou", "oa", "mean_f1")


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _bool(x: Any) -> np.ndarray:
    arr = _np(x)
    return arr if arr.dtype == np.bool_ else arr != 0


def _count(x: Any) -> int:
    if hasattr(x, "count_nonzero"):  # torch: count on the tensor's own device
        return int(x.count_nonzero())
    return int(np.count_nonzero(x))


def confusion_counts(pred: Any, target: Any, valid: Any | None = None) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of binary ``pred`` vs ``target`` (nonzero = landslide).

    ``valid`` (same shape, nonzero = counted) excludes pixels such as padding or nodata.
    Torch tensors are counted on their own device.
    """
    if hasattr(pred, "detach") and hasattr(target, "detach"):
        p, t = pred != 0, target != 0
        if valid is not None:
            v = valid != 0
            p, t = p & v, t & v
            n = _count(v)
        else:
            n = p.numel()
    else:
        p, t = _bool(pred), _bool(target)
        if p.shape != t.shape:
            raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
        if valid is not None:
            v = _bool(valid)
            p, t = p & v, t & v
            n = _count(v)
        else:
            n = p.size
    tp = _count(p & t)
    npred, npos = _count(p), _count(t)
    fp, fn = npred - tp, npos - tp
    return tp, fp, fn, int(n) - tp - fp - fn


def _div(num: float, den: float, zero_division: float) -> float:
    return num / den if den else zero_division


def pixel_metrics(tp: int, fp: int, fn: int, tn: int,
                  zero_division: float = 0.0) -> dict[str, float]:
    """All pixel metrics from one confusion matrix (fractions in [0, 1]).

    Keys: ``iou``, ``precision``, ``recall``, ``f1`` (landslide class), ``background_iou``,
    ``background_precision``, ``background_recall``, ``background_f1``, ``miou`` (mean of the two
    IoUs), ``oa`` (overall accuracy), ``mean_f1`` (class-mean F1, the CAS/KDA "F1"),
    ``mean_precision`` (class-mean precision: mean of the landslide and background precision,
    the KDA paper's "precision").
    """
    z = zero_division
    iou = _div(tp, tp + fp + fn, z)
    bg_iou = _div(tn, tn + fn + fp, z)
    f1 = _div(2 * tp, 2 * tp + fp + fn, z)
    bg_f1 = _div(2 * tn, 2 * tn + fp + fn, z)
    precision, bg_precision = _div(tp, tp + fp, z), _div(tn, tn + fn, z)
    return {
        "iou": iou,
        "precision": precision,
        "recall": _div(tp, tp + fn, z),
        "f1": f1,
        "background_iou": bg_iou,
        "background_precision": bg_precision,
        "background_recall": _div(tn, tn + fp, z),
        "background_f1": bg_f1,
        "miou": (iou + bg_iou) / 2,
        "oa": _div(tp + tn, tp + fp + fn + tn, z),
        "mean_f1": (f1 + bg_f1) / 2,
        "mean_precision": (precision + bg_precision) / 2,
    }


@dataclass
class ConfusionMatrix:
    """Global binary confusion matrix; Python ints, so counts never overflow."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, pred: Any, target: Any, valid: Any | None = None, *,
               threshold: float | None = None) -> ConfusionMatrix:
        """Add a prediction (binary, or probabilities with ``threshold``: ``prob >= t``)."""
        if threshold is not None:
            pred = pred >= threshold
        self.add(*confusion_counts(pred, target, valid))
        return self

    def add(self, tp: int, fp: int, fn: int, tn: int) -> ConfusionMatrix:
        self.tp += int(tp)
        self.fp += int(fp)
        self.fn += int(fn)
        self.tn += int(tn)
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.add(other.tp, other.fp, other.fn, other.tn)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix(self.tp, self.fp, self.fn, self.tn).add(
            other.tp, other.fp, other.fn, other.tn)

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def positives(self) -> int:
        """Ground-truth landslide pixels."""
        return self.tp + self.fn

    def compute(self, zero_division: float = 0.0) -> dict[str, float]:
        """Flat dict of :func:`pixel_metrics`."""
        return pixel_metrics(self.tp, self.fp, self.fn, self.tn, zero_division)

    def to_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}

    def report(self, zero_division: float = 0.0) -> dict[str, Any]:
        """The nested shape of ``landslide eval --json``."""
        m = self.compute(zero_division)
        return {
            "confusion": self.to_dict(),
            "landslide": {k: m[k] for k in ("iou", "precision", "recall", "f1")},
            "background_iou": m["background_iou"],
            "miou": m["miou"],
            "oa": m["oa"],
            "mean_f1": m["mean_f1"],
            "background_precision": m["background_precision"],
            "mean_precision": m["mean_precision"],
            "pixels": self.total,
        }


@dataclass
class RegionalMetrics:
    """Overall confusion matrix plus one per region."""

    overall: ConfusionMatrix = field(default_factory=ConfusionMatrix)
    per_region: dict[str, ConfusionMatrix] = field(default_factory=dict)

    def update(self, pred: Any, target: Any, region: str | Sequence[str],
               valid: Any | None = None) -> None:
        """``region`` is one name for the whole input, or one name per item of a batch."""
        if isinstance(region, str):
            counts = confusion_counts(pred, target, valid)
            self.overall.add(*counts)
            self.per_region.setdefault(region, ConfusionMatrix()).add(*counts)
            return
        for i, name in enumerate(region):
            self.update(pred[i], target[i], name, None if valid is None else valid[i])

    def compute(self, zero_division: float = 0.0) -> dict[str, Any]:
        return {
            "overall": self.overall.compute(zero_division),
            "per_region": {k: v.compute(zero_division)
                           for k, v in sorted(self.per_region.items())},
        }


# ---------------------------------------------------------------------- connected components


def label_components(mask: Any, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label connected regions of a 2-D binary mask (numpy only, no scipy).

    Returns ``(labels int32 (H, W), n)`` with labels ``1..n`` in row-major order of first
    appearance and 0 for background. Works on horizontal runs: runs in consecutive rows that
    touch (``connectivity`` 8 includes diagonals, 4 does not) are merged with a vectorized
    union-find (min-label hooking + pointer jumping).
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    m = _bool(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    labels = np.zeros((h, w), dtype=np.int32)
    if not m.any():
        return labels, 0
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)  # run starts (row-major order)
    _, ends = np.nonzero(d == -1)  # exclusive ends, same order
    n_runs = rows.size
    stride = w + 2
    key_start = rows.astype(np.int64) * stride + starts
    key_end = rows.astype(np.int64) * stride + ends
    off = 1 if connectivity == 8 else 0
    prev = (rows.astype(np.int64) - 1) * stride
    # runs a of row r-1 touching run b of row r: a.end > b.start - off and a.start < b.end + off
    lo = np.searchsorted(key_end, prev + starts - off, side="right")
    hi = np.searchsorted(key_start, prev + ends + off, side="left")
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    parent = np.arange(n_runs, dtype=np.int64)
    if total:
        b_idx = np.repeat(np.arange(n_runs), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        a_idx = np.repeat(lo, counts) + (np.arange(total) - first)
        while True:
            pa, pb = parent[a_idx], parent[b_idx]
            differ = pa != pb
            if not differ.any():
                break
            low = np.minimum(pa[differ], pb[differ])
            np.minimum.at(parent, pa[differ], low)
            np.minimum.at(parent, pb[differ], low)
            while True:  # pointer jumping until every node points at its root
                nxt = parent[parent]
                if np.array_equal(nxt, parent):
                    break
                parent = nxt
    roots, lab = np.unique(parent, return_inverse=True)
    lengths = ends - starts
    flat = np.repeat(rows.astype(np.int64) * w + starts - np.cumsum(lengths) + lengths, lengths)
    flat += np.arange(int(lengths.sum()))
    labels.ravel()[flat] = np.repeat(lab.astype(np.int32) + 1, lengths)
    return labels, int(roots.size)


def match_objects(pred_labels: np.ndarray, n_pred: int, gt_labels: np.ndarray, n_gt: int,
                  iou_threshold: float = 0.5) -> int:
    """Number of one-to-one matches between labelled objects with IoU >= ``iou_threshold``
    (greedy by decreasing IoU; at 0.5 or above a match is unique anyway)."""
    if n_pred == 0 or n_gt == 0:
        return 0
    area_p = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    area_g = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)
    both = (pred_labels > 0) & (gt_labels > 0)
    pair = pred_labels[both].astype(np.int64) * (n_gt + 1) + gt_labels[both]
    if pair.size == 0:
        return 0
    uniq, inter = np.unique(pair, return_counts=True)
    pi, gi = uniq // (n_gt + 1), uniq % (n_gt + 1)
    iou = inter / (area_p[pi] + area_g[gi] - inter)
    keep = np.flatnonzero(iou >= iou_threshold)
    used_p: set[int] = set()
    used_g: set[int] = set()
    for j in keep[np.argsort(-iou[keep], kind="stable")]:
        p, g = int(pi[j]), int(gi[j])
        if p not in used_p and g not in used_g:
            used_p.add(p)
            used_g.add(g)
    return len(used_p)


@dataclass
class ObjectCounts:
    """Object-level counts: matched (tp), unmatched predictions (fp), missed objects (fn)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_threshold: float = 0.5
    connectivity: int = 8
    min_area: int = 0

    def update(self, pred: Any, target: Any, valid: Any | None = None) -> ObjectCounts:
        """Add one tile (2-D) or a batch (N, H, W) of binary masks."""
        p, t = _bool(pred), _bool(target)
        if valid is not None:
            v = _bool(valid)
            p, t = p & v, t & v
        if p.ndim == 3:
            for i in range(p.shape[0]):
                self._tile(p[i], t[i])
        else:
            self._tile(p, t)
        return self

    def _tile(self, p: np.ndarray, t: np.ndarray) -> None:
        pl, n_p = label_components(p, self.connectivity)
        gl, n_g = label_components(t, self.connectivity)
        if self.min_area > 1:
            pl, n_p = _drop_small(pl, n_p, self.min_area)
            gl, n_g = _drop_small(gl, n_g, self.min_area)
        matched = match_objects(pl, n_p, gl, n_g, self.iou_threshold)
        self.tp += matched
        self.fp += n_p - matched
        self.fn += n_g - matched

    def __iadd__(self, other: ObjectCounts) -> ObjectCounts:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def compute(self, zero_division: float = 0.0) -> dict[str, float | int]:
        z = zero_division
        return {
            "precision": _div(self.tp, self.tp + self.fp, z),
            "recall": _div(self.tp, self.tp + self.fn, z),
            "f1": _div(2 * self.tp, 2 * self.tp + self.fp + self.fn, z),
            "matched": self.tp,
            "predicted": self.tp + self.fp,
            "reference": self.tp + self.fn,
        }


def _drop_small(labels: np.ndarray, n: int, min_area: int) -> tuple[np.ndarray, int]:
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = area >= min_area
    keep[0] = False
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[labels], int(keep.sum())


# ---------------------------------------------------------------------------- PR histogram


class PRHistogram:
    """Histograms of landslide probability for positive and negative pixels.

    Bin ``k`` (``k = 0..bins-1``) holds probabilities in ``[k/bins, (k+1)/bins)`` and bin
    ``bins`` holds exactly 1.0, so "``prob >= k / bins``" is exactly "bin index >= k": precision,
    recall and F1 at every grid threshold ``k / bins`` (``k = 0..bins``) are exact (up to
    floating-point ties), from ``2 * (bins + 1)`` integers whatever the data size.
    """

    def __init__(self, bins: int = 1000) -> None:
        if bins < 2:
            raise ValueError("bins must be >= 2")
        self.bins = bins
        self.pos = np.zeros(bins + 1, dtype=np.int64)
        self.neg = np.zeros(bins + 1, dtype=np.int64)

    def update(self, prob: Any, target: Any, valid: Any | None = None) -> PRHistogram:
        p = _np(prob).astype(np.float64, copy=False)
        t = _bool(target)
        n = self.bins + 1
        idx = np.clip(np.nan_to_num(p * self.bins, nan=0.0), 0, self.bins).astype(np.int64)
        idx = idx + n * t
        if valid is not None:
            idx = idx[_bool(valid)]
        counts = np.bincount(idx.ravel(), minlength=2 * n)
        self.neg += counts[:n]
        self.pos += counts[n:]
        return self

    def __iadd__(self, other: PRHistogram) -> PRHistogram:
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        self.pos += other.pos
        self.neg += other.neg
        return self

    @property
    def thresholds(self) -> np.ndarray:
        """The grid ``k / bins``, ``k = 0..bins``."""
        return np.arange(self.bins + 1, dtype=np.float64) / self.bins

    def counts(self) -> dict[str, np.ndarray]:
        """tp/fp/fn/tn arrays (one per grid threshold)."""
        tp = np.cumsum(self.pos[::-1])[::-1]
        fp = np.cumsum(self.neg[::-1])[::-1]
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        return {"tp": tp, "fp": fp, "fn": n_pos - tp, "tn": n_neg - fp}

    def curve(self) -> dict[str, np.ndarray]:
        """``thresholds``, ``precision``, ``recall``, ``f1`` arrays (0 where undefined)."""
        c = self.counts()
        tp, fp, fn = (c[k].astype(np.float64) for k in ("tp", "fp", "fn"))
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        return {"thresholds": self.thresholds, "precision": precision, "recall": recall,
                "f1": f1}

    def at(self, threshold: float) -> ConfusionMatrix:
        """Confusion matrix at the grid threshold nearest ``threshold``."""
        k = int(np.clip(round(threshold * self.bins), 0, self.bins))
        c = self.counts()
        return ConfusionMatrix(int(c["tp"][k]), int(c["fp"][k]), int(c["fn"][k]),
                               int(c["tn"][k]))

    def best_f1(self) -> dict[str, float]:
        """The grid threshold with the highest landslide F1 (lowest threshold on ties)."""
        cur = self.curve()
        k = int(np.argmax(cur["f1"]))
        return {"threshold": float(cur["thresholds"][k]), "f1": float(cur["f1"][k]),
                "precision": float(cur["precision"][k]), "recall": float(cur["recall"][k])}
