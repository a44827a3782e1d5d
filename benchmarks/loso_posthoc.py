"""Post-hoc levers on finished leave-one-source-out folds (issue 11), without retraining.

Takes the fold models of two finished ``benchmarks/generalization.py`` runs (``--fixed``: a
fixed-normalization recipe, default ``runs/loso-scale-rg-fixed``; ``--tile``: a per-tile one,
default ``runs/loso-scale-rg``), scores every held-out source's tiles once per model and
caches each pixel's *calibrated logit* ``z = logit(p) - logit(own threshold)`` (``--cache``).
Then it measures, per held-out source (landslide IoU in %):

* ``ensemble a``: ``z = a * z_fixed + (1 - a) * z_tile`` at the models' own thresholds
  (``z >= 0``), its oracle, and the nested rule: weight ``a`` and offset chosen on the other
  three folds' held-out pixels (fold k never sees itself), as the generalization benchmark's
  logit-shift rule does;
* ``otsu``: an unsupervised threshold per held-out source (Otsu's between-class variance on
  the histogram of its pixels' ``z``: what a user could compute on an unlabelled scene);
* ``percentile``: the fixed model on tiles whose bands were linearly mapped so that the held-out
  source's pooled ``--low``/``--high`` percentiles meet the percentiles stored with the model
  (a per-scene radiometric match), with the nested logit shift.

    python benchmarks/loso_posthoc.py                 # both runs under runs/, shared data
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ("hokkaido", "bijie", "sichuan", "amunet_uav")
EDGES = np.linspace(-12.0, 12.0, 481)  # z grid for thresholds (0.05 logit steps)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fold_logits(run: Path, src: str, tiles: Any, match: tuple[float, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits and truth of every pixel of ``tiles`` under ``run``'s fold model."""
    from landslide_cli.backends import TorchBackend
    from landslide_cli.preprocess import normalize

    be = TorchBackend(run / f"heldout-{src}" / "last.safetensors", device="cpu")
    n = be.spec.num_bands
    images = [tiles.read(i) for i in range(len(tiles))]
    lut = None
    if match is not None:  # per-band linear map: source percentiles -> model percentiles
        pixels = np.concatenate([im[:n].reshape(n, -1) for im, _ in images], axis=1)
        lo, hi = (np.percentile(pixels, q, axis=1) for q in match)
        stored = be.spec.percentiles or {}
        key = [f"{q:g}" for q in match]
        if key[0] not in stored or key[1] not in stored:
            raise SystemExit(f"{run}: the model stores no {key[0]}/{key[1]} percentiles")
        dlo, dhi = (np.asarray(stored[k], np.float64) for k in key)
        lut = (lo, (dhi - dlo) / np.maximum(hi - lo, 1e-6), dlo)
    zs, ys = [], []
    for image, mask in images:
        x = image[:n]
        if lut is not None:
            lo, gain, dlo = (v[:, None, None] for v in lut)
            x = np.clip(np.round((x - lo) * gain + dlo), 0, 255).astype(np.uint8)
        p = be.predict(normalize(x, be.spec)[None])[0]
        zs.append((logit(p) - logit(be.threshold)).ravel().astype(np.float32))
        ys.append(mask.ravel() > 0)
    return np.concatenate(zs), np.concatenate(ys)


class Hist:
    """Positive/negative pixel counts of one fold's ``z`` on :data:`EDGES`."""

    def __init__(self, z: np.ndarray, y: np.ndarray) -> None:
        self.pos = np.histogram(z[y], EDGES)[0]
        self.neg = np.histogram(z[~y], EDGES)[0]

    def iou(self, j: int) -> float:  # landslide where z >= EDGES[j]
        tp = self.pos[j:].sum()
        return float(tp / max(tp + self.neg[j:].sum() + self.pos[:j].sum(), 1))

    def oracle(self) -> float:
        return max(self.iou(j) for j in range(len(EDGES)))


def nested(hists: dict[str, Hist]) -> dict[str, tuple[float, float]]:
    """Per fold: (IoU, offset) with the offset that is best on the other folds."""
    out = {}
    for src in hists:
        others = [hists[s] for s in hists if s != src]
        j = max(range(len(EDGES)), key=lambda j: float(np.mean([h.iou(j) for h in others])))
        out[src] = (hists[src].iou(j), float(EDGES[j]))
    return out


def otsu(z: np.ndarray, bins: int = 256) -> float:
    h, e = np.histogram(z, bins=bins, range=(EDGES[0], EDGES[-1]))
    c = (e[:-1] + e[1:]) / 2
    w0 = np.cumsum(h)
    w1 = w0[-1] - w0
    s0 = np.cumsum(h * c)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(c[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def pct(values: list[float]) -> str:
    return " | ".join(f"{100 * v:.1f}" for v in values) + f" | **{100 * np.mean(values):.1f}**"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path,
                   default=Path(os.environ.get("LANDSLIDE_SHARED", ROOT.parent / "shared"))
                   / "data" / "landslides")
    p.add_argument("--fixed", type=Path, default=ROOT / "runs" / "loso-scale-rg-fixed")
    p.add_argument("--tile", type=Path, default=ROOT / "runs" / "loso-scale-rg")
    p.add_argument("--low", type=float, default=2.0)
    p.add_argument("--high", type=float, default=98.0)
    p.add_argument("--cache", type=Path, default=ROOT / "runs" / "loso-posthoc")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from landslide_cli.runtime import tune_allocator

    tune_allocator()
    import torch

    from landslide_cli.data import open_dataset

    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    everything = open_dataset("folder", args.data, split="all")
    z: dict[str, dict[str, np.ndarray]] = {}
    truth: dict[str, np.ndarray] = {}
    variants = {"fixed": (args.fixed, None), "tile": (args.tile, None),
                "percentile": (args.fixed, (args.low, args.high))}
    for src in SOURCES:
        tiles = everything.subset([i for i, s in enumerate(everything.samples)
                                   if s.region == src])
        z[src] = {}
        for name, (run, match) in variants.items():
            f = args.cache / f"{src}-{name}.npz"
            if not f.exists():
                zz, yy = fold_logits(run, src, tiles, match)
                np.savez(f, z=zz, y=yy)
            data = np.load(f)
            z[src][name], truth[src] = data["z"], data["y"]
        print(f"scored {src}", file=sys.stderr, flush=True)

    j0 = int(np.searchsorted(EDGES, 0.0))
    head = " | ".join(SOURCES)
    print(f"| lever | {head} | mean |\n|---|" + "---:|" * (len(SOURCES) + 1))
    per_a: dict[float, dict[str, Hist]] = {}
    for a in WEIGHTS:
        per_a[a] = {s: Hist(a * z[s]["fixed"] + (1 - a) * z[s]["tile"], truth[s])
                    for s in SOURCES}
        hs = per_a[a]
        print(f"| ensemble a={a:g}, own thresholds | {pct([hs[s].iou(j0) for s in SOURCES])} |")
        print(f"| ensemble a={a:g}, oracle | {pct([hs[s].oracle() for s in SOURCES])} |")
        ns = nested(hs)
        print(f"| ensemble a={a:g}, nested offset | {pct([ns[s][0] for s in SOURCES])} |")
    rows = []
    for src in SOURCES:  # nested choice of weight and offset together
        others = [s for s in SOURCES if s != src]
        _, a, j = max((float(np.mean([per_a[a][o].iou(j) for o in others])), a, j)
                      for a in WEIGHTS for j in range(0, len(EDGES), 2))
        rows.append(per_a[a][src].iou(j))
        print(f"nested choice for {src}: a={a:g}, offset {EDGES[j]:+.2f}", file=sys.stderr)
    print(f"| ensemble, nested weight and offset | {pct(rows)} |")
    for name in ("fixed", "tile"):
        vals = []
        for s in SOURCES:
            t = otsu(z[s][name])
            vals.append(float(np.count_nonzero((z[s][name] >= t) & truth[s])
                              / max(np.count_nonzero((z[s][name] >= t) | truth[s]), 1)))
        print(f"| Otsu per source, {name} model | {pct(vals)} |")
    hp = {s: Hist(z[s]["percentile"], truth[s]) for s in SOURCES}
    ns = nested(hp)
    print(f"| percentile match {args.low:g}/{args.high:g}, fixed model, nested shift | "
          f"{pct([ns[s][0] for s in SOURCES])} |")
    print(f"| percentile match, oracle | {pct([hp[s].oracle() for s in SOURCES])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
