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
  (a per-scene radiometric match), with the nested logit shift;
* ``scales`` (``--scales``): multi-scale test-time augmentation of the fixed model, each tile
  also run at 0.5x and 2x its size, the logits resized back and averaged, with the nested shift;
* ``hysteresis`` (``--hysteresis``): the fixed model's components of ``z >= low`` kept only
  when they hold a pixel with ``z >= high`` (low and high nested as the shift is).

    python benchmarks/loso_posthoc.py                 # both runs under runs/, shared data
    python benchmarks/loso_posthoc.py --hysteresis --scales 0.5,2
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


def rescaled_predict(be: Any, x: np.ndarray, scale: float) -> np.ndarray:
    """P(landslide) of the normalized ``(C, H, W)`` input ``x`` run at ``scale`` times its
    size (bilinear, antialiased when shrinking) and resized back to ``H x W`` as logits."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    size = (max(32, round(h * scale)), max(32, round(w * scale)))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    z = torch.from_numpy(logit(be.predict(t.numpy())))[:, None]
    z = F.interpolate(z.float(), size=(h, w), mode="bilinear", align_corners=False)
    return 1 / (1 + np.exp(-z[0, 0].numpy()))


def fold_logits(run: Path, src: str, tiles: Any, match: tuple[float, float] | None = None,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits and truth of every pixel of ``tiles`` under ``run``'s fold model
    (``scale``: run at that multiple of the tiles' size, see :func:`rescaled_predict`)."""
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
        if scale == 1.0:
            p = be.predict(normalize(x, be.spec)[None])[0]
        else:
            p = rescaled_predict(be, normalize(x, be.spec), scale)
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


def components(fg: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labels of ``fg`` (as ``predict``'s polygonizer finds them:
    GDAL's polygonize, rasterized back) and their number."""
    import rasterio.features

    polys = [g for g, _ in rasterio.features.shapes(fg.view(np.uint8), mask=fg, connectivity=4)]
    if not polys:
        return np.zeros(fg.shape, np.int32), 0
    lab = rasterio.features.rasterize(zip(polys, range(1, len(polys) + 1), strict=True),
                                      out_shape=fg.shape, fill=0, dtype="int32")
    return lab, len(polys)


def hysteresis_iou(tiles: list[tuple[np.ndarray, np.ndarray]], low: float,
                   highs: list[float | None]) -> dict[float | None, float]:
    """Pooled IoU of the components of ``z >= low`` that hold a pixel with ``z >= high``
    (``None``: every component, the plain threshold), per ``high``."""
    counts = {h: [0, 0, 0] for h in highs}
    for z, y in tiles:
        fg = z >= low
        lab, n = components(fg)
        peak = np.full(n + 1, -np.inf)
        if n:
            np.maximum.at(peak, lab[fg], z[fg])
        for h in highs:
            keep = (lab > 0) if h is None else (peak >= h)[lab] & (lab > 0)
            c = counts[h]
            c[0] += np.count_nonzero(keep & y)
            c[1] += np.count_nonzero(keep & ~y)
            c[2] += np.count_nonzero(~keep & y)
    return {h: c[0] / max(sum(c), 1) for h, c in counts.items()}


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
    p.add_argument("--hysteresis", action="store_true",
                   help="also measure hysteresis thresholding of the fixed model (components "
                        "of z >= low kept when they hold a pixel with z >= high)")
    p.add_argument("--scales", default="0.5,2",
                   help="multi-scale test-time levels for the fixed model, comma-separated "
                        "multiples of the tile size ('' for none)")
    args = p.parse_args(argv)
    args.scales = [float(v) for v in args.scales.split(",") if v.strip()]

    from landslide_cli.runtime import tune_allocator

    tune_allocator()
    import torch

    from landslide_cli.data import open_dataset

    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    everything = open_dataset("folder", args.data, split="all")
    z: dict[str, dict[str, np.ndarray]] = {}
    truth: dict[str, np.ndarray] = {}
    variants = {"fixed": (args.fixed, None, 1.0), "tile": (args.tile, None, 1.0),
                "percentile": (args.fixed, (args.low, args.high), 1.0)}
    for sc in args.scales:
        variants[f"fixed-x{sc:g}"] = (args.fixed, None, sc)
    for src in SOURCES:
        tiles = everything.subset([i for i, s in enumerate(everything.samples)
                                   if s.region == src])
        z[src] = {}
        for name, (run, match, sc) in variants.items():
            f = args.cache / f"{src}-{name}.npz"
            if not f.exists():
                zz, yy = fold_logits(run, src, tiles, match, sc)
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
    if args.hysteresis:
        print_hysteresis(everything, z, truth)
    levels = [1.0, *args.scales]
    combos = [(sc,) for sc in levels] + [(1.0, sc) for sc in args.scales]
    if len(args.scales) > 1:
        combos.append(tuple(levels))
    for combo in combos:  # multi-scale TTA: mean calibrated logit over the levels
        key = ["fixed" if sc == 1.0 else f"fixed-x{sc:g}" for sc in combo]
        hm = {s: Hist(np.mean([z[s][k] for k in key], axis=0), truth[s]) for s in SOURCES}
        ns = nested(hm)
        label = "+".join(f"x{sc:g}" for sc in combo)
        print(f"| scales {label}, fixed model, own threshold | "
              f"{pct([hm[s].iou(j0) for s in SOURCES])} |")
        print(f"| scales {label}, nested shift | {pct([ns[s][0] for s in SOURCES])} |")
        print(f"| scales {label}, oracle | {pct([hm[s].oracle() for s in SOURCES])} |")
    return 0


def print_hysteresis(everything: Any, z: dict[str, dict[str, np.ndarray]],
                     truth: dict[str, np.ndarray]) -> None:
    """Hysteresis rows: the low threshold nested per ``high`` (a shift below the model's own
    threshold, fitted on the other folds as the shipped rule is), and both nested."""
    import itertools

    lows = [round(v, 2) for v in np.arange(-2.5, 0.01, 0.1)]
    highs: list[float | None] = [None, -0.5, 0.0, 0.5, 1.0]
    table: dict[tuple[str, float, float | None], float] = {}
    for src in SOURCES:
        shapes = [everything.read(i)[1].shape for i, s in enumerate(everything.samples)
                  if s.region == src]
        cuts = np.cumsum([0, *[a * b for a, b in shapes]])
        tiles = [(z[src]["fixed"][cuts[k]:cuts[k + 1]].reshape(shapes[k]),
                  truth[src][cuts[k]:cuts[k + 1]].reshape(shapes[k])) for k in range(len(shapes))]
        for low in lows:
            for h, v in hysteresis_iou(tiles, low, highs).items():
                table[(src, low, h)] = v
        print(f"hysteresis {src}", file=sys.stderr, flush=True)

    def nested_rows(pairs: list[tuple[float, float | None]]) -> list[float]:
        rows = []
        for src in SOURCES:
            others = [o for o in SOURCES if o != src]
            low, h = max(pairs, key=lambda lh: float(np.mean([table[(o, *lh)] for o in others])))
            rows.append(table[(src, low, h)])
        return rows

    for h in highs:
        label = "plain (no high threshold)" if h is None else f"high z >= {h:+g}"
        print(f"| hysteresis, {label}, nested low | "
              f"{pct(nested_rows([(lo, h) for lo in lows]))} |")
    print(f"| hysteresis, low and high both nested | "
          f"{pct(nested_rows(list(itertools.product(lows, highs))))} |")


if __name__ == "__main__":
    raise SystemExit(main())
