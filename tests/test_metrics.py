"""Pixel metrics agree with torchmetrics; objects and PR histogram agree with brute force."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from landslide_cli.metrics import (
    ConfusionMatrix,
    ObjectCounts,
    PRHistogram,
    RegionalMetrics,
    confusion_counts,
    label_components,
    pixel_metrics,
)


def _torchmetrics_reference(preds: list[torch.Tensor], targets: list[torch.Tensor]) -> dict:
    """Accumulate torchmetrics over the same batches (their states are global sums)."""
    metrics = {
        "iou": BinaryJaccardIndex(),
        "precision": BinaryPrecision(),
        "recall": BinaryRecall(),
        "f1": BinaryF1Score(),
        "per_class_iou": MulticlassJaccardIndex(num_classes=2, average="none"),
        "miou": MulticlassJaccardIndex(num_classes=2, average="macro"),
        "mean_f1": MulticlassF1Score(num_classes=2, average="macro"),
        "oa": MulticlassAccuracy(num_classes=2, average="micro"),
    }
    for p, t in zip(preds, targets, strict=True):
        for m in metrics.values():
            m.update(p.flatten(), t.flatten())
    return {k: m.compute() for k, m in metrics.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_metrics_match_torchmetrics_over_several_batches(seed):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    cm = ConfusionMatrix()
    for _ in range(4):
        n, h, w = 2, int(torch.randint(8, 40, (), generator=g)), 33
        rate = float(torch.rand((), generator=g)) * 0.5 + 0.05
        target = (torch.rand(n, h, w, generator=g) < rate).long()
        noise = torch.rand(n, h, w, generator=g) < 0.3
        pred = torch.where(noise, 1 - target, target)
        preds.append(pred)
        targets.append(target)
        cm.update(pred.numpy(), target.numpy())  # numpy path
    ref = _torchmetrics_reference(preds, targets)
    ours = cm.compute()
    for key in ("iou", "precision", "recall", "f1", "miou", "mean_f1", "oa"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-6), key
    assert ours["background_iou"] == pytest.approx(float(ref["per_class_iou"][0]), abs=1e-6)
    assert ours["iou"] == pytest.approx(float(ref["per_class_iou"][1]), abs=1e-6)
    # accumulation over batches == one computation over everything, torch path == numpy path
    once = ConfusionMatrix().update(torch.cat([p.flatten() for p in preds]),
                                    torch.cat([t.flatten() for t in targets]))
    assert once == cm
    assert cm.total == sum(p.numel() for p in preds)


def test_valid_mask_and_probability_threshold():
    rng = np.random.default_rng(3)
    prob = rng.random((3, 20, 20)).astype(np.float32)
    target = rng.random((3, 20, 20)) < 0.3
    valid = rng.random((3, 20, 20)) < 0.8
    cm = ConfusionMatrix().update(prob, target, valid, threshold=0.6)
    ref = BinaryJaccardIndex()(torch.from_numpy((prob >= 0.6)[valid]).long(),
                               torch.from_numpy(target[valid]).long())
    assert cm.compute()["iou"] == pytest.approx(float(ref), abs=1e-6)
    assert cm.total == int(valid.sum())
    tp, fp, fn, tn = confusion_counts(torch.from_numpy(prob >= 0.6), torch.from_numpy(target),
                                      torch.from_numpy(valid))
    assert (tp, fp, fn, tn) == (cm.tp, cm.fp, cm.fn, cm.tn)


def test_zero_division_and_report_shape():
    empty = ConfusionMatrix().update(np.zeros((4, 4)), np.zeros((4, 4)))
    m = empty.compute()
    assert (m["iou"], m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["background_iou"] == 1.0 and m["oa"] == 1.0 and m["miou"] == 0.5
    assert ConfusionMatrix().compute(zero_division=1.0)["iou"] == 1.0
    report = ConfusionMatrix(3, 1, 2, 10).report()
    assert report["confusion"] == {"tp": 3, "fp": 1, "fn": 2, "tn": 10}
    assert report["landslide"] == pytest.approx(
        {"iou": 0.5, "precision": 0.75, "recall": 0.6, "f1": 6 / 9})
    assert report["miou"] == pytest.approx((0.5 + 10 / 13) / 2)
    assert report["mean_f1"] == pytest.approx((6 / 9 + 20 / 23) / 2)
    assert report["oa"] == pytest.approx(13 / 16)
    assert pixel_metrics(3, 1, 2, 10)["background_f1"] == pytest.approx(20 / 23)


def test_regional_metrics_sum_to_overall():
    rng = np.random.default_rng(4)
    acc = RegionalMetrics()
    pred = rng.random((6, 10, 10)) < 0.4
    target = rng.random((6, 10, 10)) < 0.4
    regions = ["a", "b", "a", "c", "b", "a"]
    acc.update(pred, target, regions)
    total = ConfusionMatrix()
    for cm in acc.per_region.values():
        total += cm
    assert total == acc.overall == ConfusionMatrix().update(pred, target)
    assert acc.per_region["c"] == ConfusionMatrix().update(pred[3], target[3])
    assert set(acc.compute()["per_region"]) == {"a", "b", "c"}


def _bfs_labels(mask: np.ndarray, connectivity: int) -> int:
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    n = 0
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                n += 1
                seen[i, j] = True
                queue = deque([(i, j)])
                while queue:
                    a, b = queue.popleft()
                    for da, db in steps:
                        y, x = a + da, b + db
                        if 0 <= y < h and 0 <= x < w and mask[y, x] and not seen[y, x]:
                            seen[y, x] = True
                            queue.append((y, x))
    return n


def test_connected_components_match_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(40):
        mask = rng.random(tuple(rng.integers(1, 25, 2))) < rng.uniform(0.2, 0.7)
        for conn in (4, 8):
            labels, n = label_components(mask, conn)
            assert n == _bfs_labels(mask, conn)
            assert ((labels > 0) == mask).all() and labels.max() == n
    diagonal = np.eye(5, dtype=bool)
    assert label_components(diagonal, 8)[1] == 1 and label_components(diagonal, 4)[1] == 5


def test_object_matching():
    target = np.zeros((40, 40), dtype=bool)
    target[2:10, 2:10] = True  # matched exactly
    target[20:30, 20:30] = True  # predicted far too small -> missed
    pred = np.zeros_like(target)
    pred[2:10, 2:10] = True
    pred[20:23, 20:23] = True  # IoU 0.09 -> false positive
    pred[35:38, 2:5] = True  # nothing there -> false positive
    counts = ObjectCounts().update(pred, target)
    assert (counts.tp, counts.fp, counts.fn) == (1, 2, 1)
    out = counts.compute()
    assert out["precision"] == pytest.approx(1 / 3) and out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(0.4)
    # a shifted but mostly overlapping object still matches (IoU = 56/72 >= 0.5)
    shifted = np.zeros_like(target)
    shifted[3:11, 2:10] = True
    assert ObjectCounts().update(shifted, target).tp == 1
    batch = ObjectCounts().update(np.stack([pred, shifted]), np.stack([target, target]))
    assert (batch.tp, batch.fp, batch.fn) == (2, 2, 2)


def test_pr_histogram_is_exact_on_its_grid():
    rng = np.random.default_rng(6)
    hist = PRHistogram(bins=50)
    probs, targets = [], []
    for _ in range(3):
        prob = rng.random((2, 16, 16)).astype(np.float32)
        prob[0, 0, :5] = [0.0, 0.5, 0.52, 1.0, 0.98]  # values on the grid
        target = rng.random((2, 16, 16)) < prob  # informative probabilities
        hist.update(prob, target)
        probs.append(prob)
        targets.append(target)
    assert hist.pos.shape == hist.neg.shape == (51,)  # flat memory
    prob, target = np.concatenate(probs), np.concatenate(targets)
    curve = hist.curve()
    best_f1 = 0.0
    for k, t in enumerate(hist.thresholds):
        direct = ConfusionMatrix().update(prob, target, threshold=t)
        assert hist.at(t) == direct, t
        m = direct.compute()
        assert curve["precision"][k] == pytest.approx(m["precision"])
        assert curve["recall"][k] == pytest.approx(m["recall"])
        best_f1 = max(best_f1, m["f1"])
    best = hist.best_f1()
    assert best["f1"] == pytest.approx(best_f1)
    assert ConfusionMatrix().update(prob, target, threshold=best["threshold"]).compute()["f1"] \
        == pytest.approx(best_f1)
    assert curve["recall"][0] == 1.0 and np.all(np.diff(curve["recall"]) <= 0)
    assert hist.at(1.0).tp == int((prob[target] == 1.0).sum()) > 0
