"""Generalization benchmark: leave-one-source-out (LOSO) over the shared landslide sources.

The shared sample (``../shared/data/landslides``) holds four sources from different sensors and
processing chains: ``sichuan`` (aerial, 36 tiles of 1024²), ``bijie`` (TripleSat, 36 tiles of
~512²), ``hokkaido`` (satellite, 20 tiles of 256²) and ``amunet_uav`` (UAV, 642 patches of 128²
from three scenes A/B/C). For each held-out source the benchmark measures what a user with new
imagery gets: a model that never saw that source, at a threshold chosen without it.

Three kinds of table, each printed as Markdown (paste into docs/benchmarks.md):

* **Colour-index baselines** (``baseline:rg`` and the others of ``landslide_cli.baselines``;
  weight-free, cheap): per held-out source, the threshold is the best F1 (= best IoU, the same
  argmax on one confusion matrix) on the 1000-step grid over the pooled pixels of *all* tiles of
  the other three sources; the held-out source is then scored through
  ``landslide_cli.evaluate.evaluate()`` at that threshold.
* **A training recipe** (``--recipe CONFIG.yaml``, default the shipped model's
  ``models/landslide-pvtb0-dcf-v1.yaml``; ``--set KEY=VALUE`` overrides): per held-out source
  a model is trained with the library's ``train segment`` function on the other three sources
  for ``--steps`` optimizer steps. Each fold writes a split file (``OUT/splits/``):

  - ``sichuan``, ``bijie``, ``hokkaido`` as training sources: seeded random 80/20 train/val per
    source (``--split-seed``; seed 0 reproduces the shipped model's split for them);
  - ``amunet_uav`` as a training source: split by scene, never at random (its patches touch):
    scene ``--amunet-val-scene`` (default A, 152 of the 642 patches) validates, B and C train;
  - the held-out source: all its tiles in ``test``, never used for training, validation,
    checkpoint or threshold choice.

  The threshold is the recipe's own rule: the one stored in the checkpoint (``train segment``
  stores the best-F1 threshold of its validation tiles, i.e. of the training sources). The
  schedule is counted in steps: ``--steps`` is ``train segment``'s ``steps`` option (the LR
  schedule spans exactly that many optimizer steps; the run has ``ceil(steps /
  steps_per_epoch)`` epochs, ``steps_per_epoch = train_tiles // batch_size``, the last one
  partial, and validates after each); the tables report the steps done. Runs are resumable:
  a fold whose run finished is not retrained (its held-out score is cached in
  ``OUT/heldout-<source>/heldout.json``, keyed by the checkpoint's sha256), a killed fold
  continues from its last completed epoch (``train segment --resume``).
* **Few-shot adaptation** (``--few-shot``, with a recipe): after a fold's model is trained, it
  is fine-tuned with ``train segment --preset few-shot --init <fold checkpoint>`` (whole model,
  ``--few-shot-steps``, default the preset's 300) on the held-out source's few-shot *train*
  tiles of the committed split ``benchmarks/splits/few-shot.json`` (its rule is written in it:
  7 of 36 Sichuan and Bijie tiles, 8 of 20 Hokkaido tiles, AMU-Net scene B), and scored on that
  source's few-shot *test* tiles, beside the fold model (zero-shot) on the same test tiles.
  Validation (``--few-shot-val``): ``train`` (default) re-picks the threshold (best F1) on the
  few-shot train tiles after fine-tuning, the only labels of the new source a user has;
  ``none`` keeps the fold model's threshold. Cached in ``OUT/heldout-<source>/few-shot.json``
  (keyed by both checkpoints' and the split file's sha256); the run folder
  ``OUT/heldout-<source>/few-shot`` resumes like a fold.
* **An existing model** (``--model NAME_OR_PATH``, e.g. the shipped ``landslide-pvtb0-dcf-v1``):
  evaluated at its own threshold on every selected source its metadata says it was *not*
  trained or validated on (``--include-seen`` adds the others, flagged as in-domain).

Usage::

    python benchmarks/generalization.py --baseline-only                  # baselines, ~1 min
    python benchmarks/generalization.py --baseline-only --baselines all  # every colour index
    python benchmarks/generalization.py --model landslide-pvtb0-dcf-v1 --no-baseline
    python benchmarks/generalization.py --steps 1500 --out runs/loso --json loso.json
    python benchmarks/generalization.py --steps 5 --folds hokkaido --set size=64 \\
        --out /tmp/loso-smoke --no-baseline                              # smoke test
    python benchmarks/generalization.py --steps 1500 --few-shot --out runs/loso  # + few-shot

Keep ``OMP_NUM_THREADS`` at the machine's free cores. Not a test: nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LANDSLIDE_SHARED", REPO.parent / "shared"))
DEFAULT_DATA = SHARED / "data" / "landslides"
DEFAULT_RECIPE = REPO / "models" / "landslide-pvtb0-dcf-v1.yaml"
SOURCES = ("sichuan", "bijie", "hokkaido", "amunet_uav")
#: the shipped default model's training sources (the baselines' default thresholds use them)
V1_SOURCES = ("sichuan", "bijie", "hokkaido")
AMU = "amunet_uav"
AMU_STEM = re.compile(r"^amu([A-Za-z])_\d+_\d+$")
#: the committed few-shot split (``--write-few-shot-split`` makes it from :func:`few_shot_split`)
FEW_SHOT_SPLIT = REPO / "benchmarks" / "splits" / "few-shot.json"
#: few-shot training tiles per source: a fraction of the tiles or a count (seeded draw);
#: amunet_uav: the scene :data:`FEW_SHOT_AMU_SCENE`
FEW_SHOT_TRAIN: dict[str, float | int] = {"sichuan": 0.2, "bijie": 0.2, "hokkaido": 8}
FEW_SHOT_AMU_SCENE = "B"
#: ``val_every`` of a few-shot run: validate (pick the threshold) only after the last epoch
VAL_ONCE = 10**9
BINS = 1000
METRICS = ("iou", "precision", "recall", "f1")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- data


class Sources:
    """The four shared sources as TileSets (opened once)."""

    def __init__(self, root: Path) -> None:
        from landslide_cli.data import open_dataset

        if not root.is_dir():
            raise SystemExit(f"data folder not found: {root} (set --data or LANDSLIDE_SHARED)")
        self.root = root
        self.all = open_dataset("folder", root, split="all")
        missing = [s for s in SOURCES if s not in self.all.regions]
        if missing:
            raise SystemExit(f"{root}: missing source folder(s) {', '.join(missing)}")
        self._tiles: dict[str, Any] = {}

    def tiles(self, source: str) -> Any:
        if source not in self._tiles:
            idx = [i for i, s in enumerate(self.all.samples) if s.region == source]
            self._tiles[source] = self.all.subset(idx)
        return self._tiles[source]

    def samples(self, source: str) -> list[Any]:
        return list(self.tiles(source).samples)

    def subset(self, keys: list[str]) -> Any:
        """The tiles whose ``region/name`` keys are ``keys``; a key not found is an error."""
        wanted = set(keys)
        idx = [i for i, s in enumerate(self.all.samples) if s.key in wanted]
        if len(idx) != len(wanted):
            found = {self.all.samples[i].key for i in idx}
            raise SystemExit(f"{self.root}: {len(wanted - found)} key(s) of the split are not "
                             f"there (e.g. {sorted(wanted - found)[0]})")
        return self.all.subset(idx)


def scores(cm: Any) -> dict[str, float]:
    m = cm.compute()
    return {k: float(m[k]) for k in METRICS}


def positive_share(report: Any) -> float:
    cm = report.overall
    return cm.positives / cm.total if cm.total else 0.0


def mean_row(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows.values()) / len(rows) for k in METRICS} if rows else {}


# --------------------------------------------------------------------------- baselines


def run_baselines(names: list[str], data: Sources, folds: list[str]) -> dict[str, Any]:
    """LOSO table of every baseline in ``names`` (thresholds from the other three sources)."""
    from landslide_cli.baselines import BaselineBackend
    from landslide_cli.evaluate import evaluate

    out: dict[str, Any] = {}
    for name in names:
        t0 = time.perf_counter()
        be = BaselineBackend(f"baseline:{name}")
        # one pass per source for its score histogram (threshold-free), then the folds
        hists = {s: evaluate(be, data.tiles(s), bins=BINS).histogram
                 for s in SOURCES}

        default = _pooled(hists, V1_SOURCES).best_f1()
        rows: dict[str, dict[str, Any]] = {}
        for src in folds:
            train = [s for s in SOURCES if s != src]
            best = _pooled(hists, train).best_f1()
            report = evaluate(be, data.tiles(src), threshold=best["threshold"],
                              bins=BINS)
            rows[src] = {"tiles": len(report.tiles), "landslide_share": positive_share(report),
                         "threshold": best["threshold"], "tuned_on": train,
                         "train_f1": best["f1"], **scores(report.overall),
                         "oracle_iou": _oracle_iou(report)}
        out[name] = {"model": be.model_name, "formula": be.metadata["extra"]["formula"],
                     "registered_threshold": be.threshold,
                     "default_threshold_retuned": default["threshold"],
                     "rule": "best F1 (= best IoU) on the pooled pixels of the other three "
                             "sources, 1000-step grid",
                     "folds": rows, "mean": mean_row(rows),
                     "seconds": round(time.perf_counter() - t0, 1)}
        say(f"baseline:{name}: {out[name]['seconds']} s")
    return out


def _pooled(hists: dict[str, Any], sources: tuple[str, ...] | list[str]) -> Any:
    """One PR histogram over the pixels of ``sources`` (one pooled confusion matrix)."""
    from landslide_cli.metrics import PRHistogram

    total = PRHistogram(BINS)
    for s in sources:
        total += hists[s]
    return total


def baseline_markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for res in results.values():
        lines += [f"**{res['model']}** `{res['formula']}`; threshold per fold: {res['rule']} "
                  f"(registered default {res['registered_threshold']:.3f}, re-tuned on "
                  f"{' + '.join(V1_SOURCES)}: {res['default_threshold_retuned']:.3f})", "",
                  "| held-out source | tiles | landslide px % | threshold | IoU | precision | "
                  "recall | F1 | IoU at its own best threshold (oracle) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for src, r in res["folds"].items():
            lines.append(f"| {src} | {r['tiles']} | {100 * r['landslide_share']:.1f} | "
                         f"{r['threshold']:.3f} | {_pcts(r)} | {100 * r['oracle_iou']:.1f} |")
        lines += [_mean_line(res["mean"], len(res["folds"]), 3, extra=1), ""]
    if len(results) > 1:
        folds = list(next(iter(results.values()))["folds"])
        lines += ["LOSO landslide IoU (%) per held-out source:", "",
                  "| baseline | " + " | ".join(folds) + " | mean |",
                  "|---|" + "---:|" * (len(folds) + 1)]
        for res in results.values():
            lines.append(f"| {res['model']} | "
                         + " | ".join(f"{100 * res['folds'][f]['iou']:.1f}" for f in folds)
                         + f" | {100 * res['mean']['iou']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _pcts(r: dict[str, Any]) -> str:
    return " | ".join(f"{100 * r[k]:.1f}" for k in METRICS)


def _mean_line(mean: dict[str, float], n: int, blanks: int, extra: int = 0) -> str:
    if not mean:
        return ""
    cells = " | ".join(f"**{100 * mean[k]:.1f}**" for k in METRICS)
    return (f"| **mean ({n} source{'s' if n != 1 else ''})** |" + " |" * blanks + f" {cells} |"
            + " |" * extra)


# ------------------------------------------------------------------------ existing model


def _oracle_iou(report: Any) -> float:
    """IoU at the best-F1 threshold of the evaluated tiles themselves (not allowed in practice:
    shows how much of the gap is the threshold)."""
    return scores(report.histogram.at(report.best_threshold["threshold"]))["iou"]


def _seen_sources(meta: dict[str, Any]) -> set[str]:
    training = meta.get("training") or {}
    seen: set[str] = set()
    for key in ("dataset", "val_dataset"):
        info = training.get(key) or {}
        seen.update(str(r) for r in info.get("regions") or [])
    return seen


def run_model(ref: str, data: Sources, folds: list[str], *, device: str, batch_size: int,
              include_seen: bool) -> dict[str, Any]:
    from landslide_cli.backends import open_backend
    from landslide_cli.evaluate import evaluate

    be = open_backend(ref, device=device)
    seen = _seen_sources(be.metadata or {})
    rows: dict[str, dict[str, Any]] = {}
    skipped = [s for s in folds if s in seen and not include_seen]
    t0 = time.perf_counter()
    for src in folds:
        if src in skipped:
            continue
        report = evaluate(be, data.tiles(src), batch_size=batch_size, bins=BINS)
        rows[src] = {"tiles": len(report.tiles), "landslide_share": positive_share(report),
                     "threshold": report.threshold, "seen_in_training": src in seen,
                     "best_f1_threshold": report.best_threshold["threshold"],
                     "oracle_iou": _oracle_iou(report), **scores(report.overall)}
        say(f"{be.model_name} on {src}: IoU {100 * rows[src]['iou']:.1f}")
    unseen = {s: r for s, r in rows.items() if not r["seen_in_training"]}
    return {"model": be.model_name, "sha256": be.model_sha256, "threshold": be.threshold,
            "seen_sources": sorted(seen), "skipped_seen": skipped, "folds": rows,
            "mean_unseen": mean_row(unseen), "seconds": round(time.perf_counter() - t0, 1)}


def model_markdown(res: dict[str, Any]) -> str:
    lines = [f"**{res['model']}** (sha256 `{res['sha256'][:12]}`) at its own threshold "
             f"{res['threshold']:.3f}; trained/validated on: "
             f"{', '.join(res['seen_sources']) or 'unknown'}"
             + (f" (not scored: {', '.join(res['skipped_seen'])})" if res["skipped_seen"] else ""),
             "", "| source | tiles | landslide px % | seen in training | threshold | IoU | "
             "precision | recall | F1 | oracle: best-F1 threshold on it, IoU there |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for src, r in res["folds"].items():
        lines.append(f"| {src} | {r['tiles']} | {100 * r['landslide_share']:.1f} | "
                     f"{'yes (in-domain)' if r['seen_in_training'] else 'no'} | "
                     f"{r['threshold']:.3f} | {_pcts(r)} | {r['best_f1_threshold']:.3f}, "
                     f"{100 * r['oracle_iou']:.1f} |")
    n = sum(1 for r in res["folds"].values() if not r["seen_in_training"])
    if n > 1:
        lines.append(_mean_line(res["mean_unseen"], n, 4, extra=1).replace(
            "**mean (", "**mean of unseen (", 1))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- recipe


def fold_split(data: Sources, heldout: str | None, *, seed: int, amu_val_scene: str) -> Any:
    """Train/val from the other three sources (see the module docstring), test = held out.

    ``heldout=None``: the split of a final model, over all four sources, no test tiles."""
    from landslide_cli.data.splits import SplitAssignment, make_split

    train_sources = [s for s in SOURCES if s != heldout]
    random_sources = [s for s in train_sources if s != AMU]
    samples = [x for s in random_sources for x in data.samples(s)]
    split = make_split(samples, mode="random", seed=seed, ratios=(0.8, 0.2, 0.0))
    train, val = list(split.train), list(split.val)
    if AMU in train_sources:
        for x in data.samples(AMU):
            m = AMU_STEM.match(x.name)
            if m is None:
                raise SystemExit(f"{x.image_path}: not an amu<scene>_<row>_<col> patch name")
            (val if m.group(1).upper() == amu_val_scene.upper() else train).append(x.key)
    test = [x.key for x in data.samples(heldout)] if heldout else []
    return SplitAssignment(mode="loso", seed=seed, ratios=(0.8, 0.2, 0.0), train=sorted(train),
                           val=sorted(val), test=sorted(test),
                           extra={"heldout": heldout or "none",
                                  "train_sources": train_sources,
                                  "amunet_val_scene": amu_val_scene.upper(),
                                  "rule": "random 80/20 per source (seeded); amunet_uav by "
                                          "scene; test = the held-out source"})


def _write_split(path: Path, split: Any) -> None:
    from landslide_cli.data.splits import load_split_file, save_split_file

    if path.is_file():
        old = load_split_file(path)
        if (old.train, old.val, old.test) != (split.train, split.val, split.test):
            raise SystemExit(f"{path} holds another split than these options give (other "
                             "--split-seed or --amunet-val-scene?); use another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split_file(path, split, dataset="folder")


def few_shot_split(data: Sources, *, seed: int = 0) -> Any:
    """The few-shot split of every source: ``train`` = the few labelled tiles a user of a new
    source would have, ``test`` = the rest of that source, ``val`` empty (the rule below)."""
    import random

    from landslide_cli.data.splits import SplitAssignment

    train: list[str] = []
    test: list[str] = []
    sources: dict[str, dict[str, Any]] = {}
    for src in SOURCES:
        keys = sorted(x.key for x in data.samples(src))
        if src == AMU:
            chosen = [k for k in keys if _amu_scene(k) == FEW_SHOT_AMU_SCENE]
            how = f"scene {FEW_SHOT_AMU_SCENE}"
        else:
            want = FEW_SHOT_TRAIN[src]
            n = round(len(keys) * want) if isinstance(want, float) else int(want)
            order = list(keys)
            random.Random(f"few-shot:{seed}:{src}").shuffle(order)
            chosen = sorted(order[:n])
            how = f"{n} of {len(keys)} drawn"
        train += chosen
        test += [k for k in keys if k not in set(chosen)]
        sources[src] = {"tiles": len(keys), "train": len(chosen),
                        "test": len(keys) - len(chosen), "train_rule": how}
    rule = ("per source: the few-shot train tiles, the rest of the source test (val empty). "
            "sichuan, bijie: round(n / 5) tiles, hokkaido: 8 tiles, each the first ones of the "
            "source's keys (sorted) shuffled by Python's random.Random('few-shot:<seed>:"
            "<source>'); amunet_uav: every patch of scene B (stem amuB_<row>_<col>) trains, "
            "scenes A and C test (never at random: neighbouring patches touch). Made by "
            "benchmarks/generalization.py --write-few-shot-split; ratios are nominal")
    return SplitAssignment(mode="few-shot", seed=seed, ratios=(0.2, 0.0, 0.8),
                           train=sorted(train), val=[], test=sorted(test),
                           extra={"rule": rule, "sources": sources})


def _amu_scene(key: str) -> str:
    m = AMU_STEM.match(key.split("/", 1)[-1])
    if m is None:
        raise SystemExit(f"{key}: not an amu<scene>_<row>_<col> patch name")
    return m.group(1).upper()


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches per epoch of ``train segment`` on one process (drop_last when n >= batch)."""
    return n_train // batch_size if n_train >= batch_size else 1


def _parse_sets(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


def run_recipe(args: argparse.Namespace, data: Sources, folds: list[str]) -> dict[str, Any]:
    from landslide_cli.checkpoint import file_sha256, read_metadata
    from landslide_cli.cli.reporting import cli_reporter
    from landslide_cli.evaluate import evaluate
    from landslide_cli.train.config import SegmentConfig, resolve_config
    from landslide_cli.train.engine import STATE_FILE
    from landslide_cli.train.segment import train_segment

    out_dir = Path(args.out)
    sets = _parse_sets(args.set)
    rows: dict[str, dict[str, Any]] = {}
    for src in folds:
        fold_dir = out_dir / f"heldout-{src}"
        split_path = out_dir / "splits" / f"heldout-{src}.json"
        split = fold_split(data, src, seed=args.split_seed, amu_val_scene=args.amunet_val_scene)
        _write_split(split_path, split)
        overrides: dict[str, Any] = {
            **sets, "data": str(data.root), "dataset": "folder", "split_file": str(split_path),
            "train_split": "train", "val_split": "val", "name": f"loso-heldout-{src}",
            "out": str(fold_dir), "device": args.device, "quiet": args.quiet or None,
        }
        base = resolve_config(SegmentConfig, overrides, config_file=args.recipe)
        spe = steps_per_epoch(len(split.train), base.batch_size)
        epochs = max(1, math.ceil(args.steps / spe))
        if (fold_dir / STATE_FILE).is_file():
            say(f"[{src}] resuming {fold_dir} (its config.yaml fixes the recipe)")
            cfg = resolve_config(SegmentConfig, {"resume": str(fold_dir), "steps": args.steps,
                                                 "device": args.device,
                                                 "quiet": args.quiet or None})
        else:
            say(f"[{src}] training {fold_dir}: {len(split.train)} train / {len(split.val)} val "
                f"tiles, {args.steps} steps = {epochs} epochs of at most {spe} steps")
            cfg = resolve_config(SegmentConfig, {**overrides, "steps": args.steps},
                                 config_file=args.recipe)
        t0 = time.perf_counter()
        result = train_segment(cfg, reporter=cli_reporter(args.quiet))
        wall = time.perf_counter() - t0
        if not result.finished:
            say(f"[{src}] stopped before the end; run again to resume")
            continue
        ckpt = fold_dir / f"{args.checkpoint}.safetensors"
        sha = file_sha256(ckpt)
        cache = fold_dir / "heldout.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else {}
        if cached.get("sha256") == sha and "histogram" in cached["row"]:
            row = cached["row"]
            say(f"[{src}] held-out score cached in {cache}")
        else:
            report = evaluate(str(ckpt), data.tiles(src), device=args.device,
                              batch_size=args.batch_size, bins=BINS)
            meta = read_metadata(ckpt)
            hist = result.history  # rows read back from metrics.csv on resume are strings
            train_s, prev = 0.0, 0
            for r in hist:  # training time of an epoch = its images / its img/s
                step = int(float(r["step"]))
                if r.get("img_per_s") not in (None, ""):
                    train_s += (step - prev) * cfg.batch_size / float(r["img_per_s"])
                prev = step
            steps_done = prev
            row = {"tiles": len(report.tiles), "landslide_share": positive_share(report),
                   "train_tiles": len(split.train), "val_tiles": len(split.val),
                   "epochs": int(meta.training.get("epoch", epochs)), "steps": steps_done,
                   "batch_size": cfg.batch_size, "size": cfg.size,
                   "threshold": report.threshold, "checkpoint": args.checkpoint,
                   "val_iou_at_threshold": (meta.metrics.get("val", {}).get("overall", {})
                                            .get("iou_at_threshold")),
                   "best_f1_threshold": report.best_threshold["threshold"],
                   "oracle_iou": _oracle_iou(report),
                   "train_seconds": round(train_s, 1),
                   "seconds_per_step": round(train_s / max(steps_done, 1), 3),
                   "run_seconds": round(sum(float(r.get("seconds", 0)) for r in hist), 1),
                   **scores(report.overall), "histogram": _hist_dict(report.histogram)}
            cache.write_text(json.dumps({"sha256": sha, "row": row}, indent=1) + "\n")
        variants = row.setdefault("variants", {})
        for name in args.variants:
            if name in variants:
                continue
            say(f"[{src}] held-out score with {name}")
            report = evaluate(str(ckpt), data.tiles(src), device=args.device,
                              batch_size=args.batch_size, bins=BINS, **VARIANTS[name])
            variants[name] = {**scores(report.overall), "oracle_iou": _oracle_iou(report),
                              "best_f1_threshold": report.best_threshold["threshold"],
                              "histogram": _hist_dict(report.histogram)}
            cache.write_text(json.dumps({"sha256": sha, "row": row}, indent=1) + "\n")
        row["wall_seconds_this_call"] = round(wall, 1)
        rows[src] = row
        say(f"[{src}] IoU {100 * row['iou']:.1f} at threshold {row['threshold']:.3f}, "
            f"{row['steps']} steps, {row['seconds_per_step']} s/step")
        if args.few_shot:
            few = run_few_shot(args, data, src, ckpt, fold_dir, num_workers=cfg.num_workers)
            if few is not None:
                row["few_shot"] = few
    if args.joint:
        for src, row in rows.items():
            if args.joint not in row.get("joint", {}):
                say(f"[{src}] joint histogram of the fold model and baseline:{args.joint}")
                ckpt = out_dir / f"heldout-{src}" / f"{args.checkpoint}.safetensors"
                row.setdefault("joint", {})[args.joint] = joint_histogram(
                    str(ckpt), args.joint, data.tiles(src), device=args.device)
                cache = out_dir / f"heldout-{src}" / "heldout.json"
                cached = json.loads(cache.read_text())
                cached["row"]["joint"] = row["joint"]
                cache.write_text(json.dumps(cached, indent=1) + "\n")
    out: dict[str, Any] = {"recipe": str(args.recipe), "overrides": sets,
                           "steps_requested": args.steps, "checkpoint": args.checkpoint,
                           "out": str(out_dir), "folds": rows,
                           "mean": mean_row(rows) if len(rows) == len(folds) else {}}
    if len(rows) >= 2 and len(rows) == len(folds):
        out["transfer"] = transfer_thresholds(rows, ["plain", *args.variants])
        if args.joint:
            out["fusion"] = fusion_rules(rows, args.joint)
    if args.few_shot:
        few_rows = {s: r["few_shot"] for s, r in rows.items() if "few_shot" in r}
        out["few_shot"] = {
            "split_file": str(args.few_shot_split), "steps_requested": args.few_shot_steps,
            "val": args.few_shot_val,
            "mean": {k: mean_row({s: r[k] for s, r in few_rows.items()})
                     for k in ("zero_shot", "few_shot")} if len(few_rows) == len(folds) else {}}
    return out


def run_few_shot(args: argparse.Namespace, data: Sources, src: str, ckpt: Path, fold_dir: Path,
                 *, num_workers: int | None) -> dict[str, Any] | None:
    """Fine-tune the fold model ``ckpt`` on ``src``'s few-shot train tiles (preset few-shot),
    score it and the fold model on ``src``'s few-shot test tiles (see the module docstring)."""
    from landslide_cli.checkpoint import file_sha256, read_metadata
    from landslide_cli.cli.reporting import cli_reporter
    from landslide_cli.data.splits import load_split_file
    from landslide_cli.evaluate import evaluate
    from landslide_cli.train.config import SegmentConfig, resolve_config
    from landslide_cli.train.engine import STATE_FILE
    from landslide_cli.train.segment import train_segment

    split_path = Path(args.few_shot_split).resolve()
    split = load_split_file(split_path)
    train = [k for k in split.train if k.split("/", 1)[0] == src]
    test = [k for k in split.test if k.split("/", 1)[0] == src]
    if not train or not test:
        raise SystemExit(f"{split_path}: no few-shot train or test tiles of {src}")
    fs_dir = fold_dir / "few-shot"
    fold_sha = file_sha256(ckpt)
    last = fs_dir / "last.safetensors"
    if last.is_file() and read_metadata(last).training.get("init", {}).get("sha256") != fold_sha:
        raise SystemExit(f"{fs_dir} fine-tuned another model than {ckpt}; remove it to redo")
    if (fs_dir / STATE_FILE).is_file():
        cfg = resolve_config(SegmentConfig, {"resume": str(fs_dir),
                                             "steps": args.few_shot_steps,
                                             "device": args.device, "quiet": args.quiet or None})
    else:
        say(f"[{src}] few-shot: fine-tuning on {len(train)} tiles, {args.few_shot_steps} steps")
        cfg = resolve_config(SegmentConfig, {
            "preset": "few-shot", "init": str(ckpt), "data": str(data.root),
            "dataset": "folder", "split_file": str(split_path), "regions": [src],
            "train_split": "train", "val_split": args.few_shot_val, "val_every": VAL_ONCE,
            "steps": args.few_shot_steps, "num_workers": num_workers,
            "name": f"loso-heldout-{src}-few-shot", "out": str(fs_dir), "device": args.device,
            "quiet": args.quiet or None})
    t0 = time.perf_counter()
    result = train_segment(cfg, reporter=cli_reporter(args.quiet))
    if not result.finished:
        say(f"[{src}] few-shot run stopped before the end; run again to resume")
        return None
    key = {"sha256": fold_sha, "few_shot_sha256": file_sha256(last),
           "split_sha256": file_sha256(split_path)}
    cache = fold_dir / "few-shot.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if {k: cached.get(k) for k in key} == key:
        say(f"[{src}] few-shot scores cached in {cache}")
        return dict(cached["row"])
    tiles = data.subset(test)
    zero = evaluate(str(ckpt), tiles, device=args.device, batch_size=args.batch_size, bins=BINS)
    few = evaluate(str(last), tiles, device=args.device, batch_size=args.batch_size, bins=BINS)
    meta = read_metadata(last)
    row = {"train_tiles": len(train), "test_tiles": len(tiles), "val": args.few_shot_val,
           "steps": int(meta.training.get("steps_done") or 0),
           "test_landslide_share": positive_share(few),
           "zero_shot": {"threshold": zero.threshold, **scores(zero.overall)},
           "few_shot": {"threshold": few.threshold, **scores(few.overall)},
           "seconds": round(time.perf_counter() - t0, 1)}
    cache.write_text(json.dumps({**key, "row": row}, indent=1) + "\n")
    say(f"[{src}] few-shot IoU {100 * row['few_shot']['iou']:.1f} (zero-shot "
        f"{100 * row['zero_shot']['iou']:.1f}) on {len(tiles)} test tiles")
    return row


#: extra held-out evaluations of each fold model (``--variants``): evaluate() keyword arguments
VARIANTS: dict[str, dict[str, Any]] = {
    "flips": {"tta": "flips"},
    "d4": {"tta": "d4"},
    "adapt-bn": {"adapt_bn": True},
    "flips+adapt-bn": {"tta": "flips", "adapt_bn": True},
}


def _hist_dict(hist: Any) -> dict[str, Any]:
    return {"bins": hist.bins, "pos": hist.pos.tolist(), "neg": hist.neg.tolist()}


def _iou_curve(h: dict[str, Any]) -> Any:
    """IoU at every grid threshold ``k / bins`` of a stored held-out histogram."""
    import numpy as np

    pos, neg = np.asarray(h["pos"], np.float64), np.asarray(h["neg"], np.float64)
    tp, fp = np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)


def _logit(p: Any) -> Any:
    import numpy as np

    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


#: logit shifts tried by the ``shift`` rule (a shift of 0 keeps the model's own threshold)
SHIFTS = [round(-4 + 0.05 * i, 2) for i in range(161)]


def transfer_thresholds(rows: dict[str, dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Threshold rules learnt from the *other* folds' held-out predictions (nested LOSO).

    For each fold ``k`` and evaluation variant, two rules are fitted on the held-out histograms
    of the other folds only, so fold ``k`` is never seen by its own threshold:

    * ``absolute``: the one grid threshold with the highest mean held-out IoU over them;
    * ``shift``: the logit shift ``d`` (grid :data:`SHIFTS`) with the highest mean held-out IoU
      when every fold ``j`` uses ``sigmoid(logit(t_j) + d)``, ``t_j`` its own validation
      threshold; fold ``k`` then uses ``sigmoid(logit(t_k) + d)``.

    The ``all folds`` entry fits both rules on every fold: the rule to apply to a model trained
    on all sources (the shipped one).
    """

    out: dict[str, Any] = {}
    for var in variants:
        hists, own = {}, {}
        for src, r in rows.items():
            h = r["histogram"] if var == "plain" else r.get("variants", {}).get(var, {}).get(
                "histogram")
            if h is None:
                break
            hists[src], own[src] = h, float(r["threshold"])
        else:
            out[var] = _transfer_one(hists, own)
    return out


def _transfer_one(hists: dict[str, Any], own: dict[str, float]) -> dict[str, Any]:
    """:func:`transfer_thresholds` for one evaluation variant."""
    import numpy as np

    curves = {s: _iou_curve(h) for s, h in hists.items()}
    bins = next(iter(hists.values()))["bins"]
    grid = np.arange(bins + 1) / bins

    def at(src: str, t: float) -> float:
        return float(curves[src][int(np.clip(round(t * bins), 0, bins))])

    def shifted(src: str, d: float) -> float:
        return float(1 / (1 + np.exp(-(_logit(own[src]) + d))))

    def fit(others: list[str]) -> tuple[float, float]:
        mean = np.mean([curves[s] for s in others], axis=0)
        t_abs = float(grid[int(np.argmax(mean))])
        scores_d = [np.mean([at(s, shifted(s, d)) for s in others]) for d in SHIFTS]
        return t_abs, SHIFTS[int(np.argmax(scores_d))]

    entry: dict[str, Any] = {"folds": {}}
    for src in hists:
        t_abs, d = fit([s for s in hists if s != src])
        t_sh = shifted(src, d)
        entry["folds"][src] = {
            "own_threshold": own[src], "own_iou": at(src, own[src]),
            "absolute_threshold": t_abs, "absolute_iou": at(src, t_abs),
            "shift": d, "shift_threshold": t_sh, "shift_iou": at(src, t_sh),
            "oracle_iou": float(curves[src].max())}
    t_abs, d = fit(list(hists))
    entry["all_folds"] = {"absolute_threshold": t_abs, "shift": d}
    entry["mean"] = {k: float(np.mean([f[k] for f in entry["folds"].values()]))
                     for k in ("own_iou", "absolute_iou", "shift_iou", "oracle_iou")}
    return entry


JOINT_BINS = 100
#: weights of the colour index in the fused score ``(1 - w) * p_model + w * index``
FUSION_WEIGHTS = [round(0.05 * i, 2) for i in range(21)]


def joint_histogram(ckpt: str, index: str, tiles: Any, *, device: str = "auto") -> dict[str, Any]:
    """2-D histograms (model probability x colour-index score, :data:`JOINT_BINS` bins each)
    of the landslide and the background pixels of ``tiles``, so that any rule combining the
    two scores can be scored afterwards without running the model again."""
    from dataclasses import replace

    import numpy as np

    from landslide_cli.backends import open_backend
    from landslide_cli.baselines import derived_channels
    from landslide_cli.data import select_bands
    from landslide_cli.evaluate import predict_tiles
    from landslide_cli.preprocess import normalize

    be = open_backend(ckpt, backend="torch", device=device)
    index_spec = replace(be.spec, derived=[index])  # the index as InputSpec.derived computes it
    n = JOINT_BINS
    pos, neg = np.zeros(n * n, np.int64), np.zeros(n * n, np.int64)
    for i in range(len(tiles)):
        raw, mask = tiles.read(i)
        raw = select_bands(raw, be.spec)
        prob = predict_tiles(be, normalize(raw[None], be.spec))[0]
        idx_score = derived_channels(raw, index_spec)[0]
        a = np.clip((prob * n).astype(np.int64), 0, n - 1)
        b = np.clip((idx_score * n).astype(np.int64), 0, n - 1)
        cell = (a * n + b).ravel()
        t = np.asarray(mask).astype(bool).ravel()
        pos += np.bincount(cell[t], minlength=n * n)
        neg += np.bincount(cell[~t], minlength=n * n)
    return {"bins": n, "pos": pos.tolist(), "neg": neg.tolist()}


def _fused_iou(joint: dict[str, Any], w: float) -> Any:
    """IoU on the grid ``t = k / 100`` of the fused score ``(1 - w) * p + w * index``
    (cell centres stand for their pixels)."""
    import numpy as np

    n = joint["bins"]
    centres = (np.arange(n) + 0.5) / n
    fused = ((1 - w) * centres[:, None] + w * centres[None, :]).ravel()
    k = np.clip((fused * 100).astype(np.int64), 0, 100)
    pos = np.bincount(k, weights=np.asarray(joint["pos"], np.float64), minlength=101)
    neg = np.bincount(k, weights=np.asarray(joint["neg"], np.float64), minlength=101)
    tp, fp = np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)


def fusion_rules(rows: dict[str, dict[str, Any]], index: str) -> dict[str, Any]:
    """Nested LOSO of the fused score: for each fold, the weight ``w`` and threshold ``t`` with
    the best mean IoU over the *other* folds' joint histograms, scored on that fold."""
    import numpy as np

    joints = {s: r["joint"][index] for s, r in rows.items() if index in r.get("joint", {})}
    if len(joints) != len(rows):
        return {}
    curves = {s: np.stack([_fused_iou(j, w) for w in FUSION_WEIGHTS]) for s, j in joints.items()}

    def fit(others: list[str]) -> tuple[float, float]:
        mean = np.mean([curves[s] for s in others], axis=0)
        wi, k = np.unravel_index(int(np.argmax(mean)), mean.shape)
        return FUSION_WEIGHTS[int(wi)], k / 100

    out: dict[str, Any] = {"index": index, "folds": {}}
    for src in rows:
        w, t = fit([s for s in rows if s != src])
        c = curves[src]
        out["folds"][src] = {"weight": w, "threshold": t,
                             "iou": float(c[FUSION_WEIGHTS.index(w), round(t * 100)]),
                             "oracle_iou": float(c.max()),
                             "index_only_oracle": float(c[-1].max()),
                             "model_only_oracle": float(c[0].max())}
    w, t = fit(list(rows))
    out["all_folds"] = {"weight": w, "threshold": t}
    out["mean_iou"] = float(np.mean([f["iou"] for f in out["folds"].values()]))
    return out


def fusion_markdown(res: dict[str, Any]) -> str:
    f = res["fusion"]
    lines = [f"**model + `baseline:{f['index']}` fused** (`(1 - w) * p_model + w * index`, w and "
             "threshold fitted on the other folds' held-out pixels; IoU in %)", "",
             "| held-out source | w | threshold | IoU | oracle (w, t on itself) | model-only "
             "oracle | index-only oracle |", "|---|---:|---:|---:|---:|---:|---:|"]
    for src, r in f["folds"].items():
        lines.append(f"| {src} | {r['weight']:.2f} | {r['threshold']:.2f} | {100 * r['iou']:.1f}"
                     f" | {100 * r['oracle_iou']:.1f} | {100 * r['model_only_oracle']:.1f} | "
                     f"{100 * r['index_only_oracle']:.1f} |")
    a = f["all_folds"]
    lines.append(f"| **mean** | | | **{100 * f['mean_iou']:.1f}** | | | |")
    lines.append(f"| fitted on all folds | {a['weight']:.2f} | {a['threshold']:.2f} | | | | |")
    return "\n".join(lines)


def transfer_markdown(res: dict[str, Any]) -> str:
    lines = ["**thresholds learnt from the other folds' held-out predictions** (nested "
             "leave-one-source-out; IoU in %, threshold in brackets)", "",
             "| evaluation | held-out source | own threshold | absolute rule | logit-shift rule "
             "| oracle |", "|---|---|---:|---:|---:|---:|"]
    for var, e in res.get("transfer", {}).items():
        for src, f in e["folds"].items():
            lines.append(f"| {var} | {src} | {100 * f['own_iou']:.1f} ({f['own_threshold']:.3f})"
                         f" | {100 * f['absolute_iou']:.1f} ({f['absolute_threshold']:.3f}) | "
                         f"{100 * f['shift_iou']:.1f} ({f['shift']:+.2f} → "
                         f"{f['shift_threshold']:.3f}) | {100 * f['oracle_iou']:.1f} |")
        m, a = e["mean"], e["all_folds"]
        lines.append(f"| {var} | **mean** | **{100 * m['own_iou']:.1f}** | "
                     f"**{100 * m['absolute_iou']:.1f}** | **{100 * m['shift_iou']:.1f}** | "
                     f"{100 * m['oracle_iou']:.1f} |")
        lines.append(f"| {var} | fitted on all folds | | {a['absolute_threshold']:.3f} | "
                     f"shift {a['shift']:+.2f} | |")
    return "\n".join(lines)


def recipe_markdown(res: dict[str, Any]) -> str:
    sets = ", ".join(f"{k}={v}" for k, v in res["overrides"].items())
    lines = [f"**recipe** `{res['recipe']}`" + (f" with {sets}" if sets else "")
             + f", {res['steps_requested']} steps requested per fold, `{res['checkpoint']}` "
               "checkpoint at its own threshold (best F1 on the training sources' validation "
               "tiles)", "",
             "| held-out source | tiles | train / val tiles | steps (epochs) | s/step | "
             "threshold | IoU | precision | recall | F1 | oracle IoU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for src, r in res["folds"].items():
        lines.append(f"| {src} | {r['tiles']} | {r['train_tiles']} / {r['val_tiles']} | "
                     f"{r['steps']} ({r['epochs']}) | {r['seconds_per_step']:.2f} | "
                     f"{r['threshold']:.3f} | {_pcts(r)} | {100 * r['oracle_iou']:.1f} |")
    lines.append(_mean_line(res["mean"], len(res["folds"]), 5, extra=1))
    if res.get("transfer"):
        lines += ["", transfer_markdown(res)]
    if res.get("fusion"):
        lines += ["", fusion_markdown(res)]
    if "few_shot" in res:
        lines += ["", few_shot_markdown(res)]
    return "\n".join(lines) + "\n"


def few_shot_markdown(res: dict[str, Any]) -> str:
    fs = res["few_shot"]
    rows = {s: r["few_shot"] for s, r in res["folds"].items() if "few_shot" in r}
    lines = [f"**few-shot** (`train segment --preset few-shot --init <fold model>`, "
             f"{fs['steps_requested']} steps requested) on the few-shot train tiles of "
             f"`{Path(fs['split_file']).name}`, threshold "
             + ("re-picked on those tiles" if fs["val"] == "train" else "the fold model's")
             + "; both models scored on the same few-shot test tiles", "",
             "| held-out source | few-shot train / test tiles | steps | zero-shot IoU, all tiles "
             "| zero-shot threshold, IoU | few-shot threshold, IoU | few-shot precision | "
             "recall | F1 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for src, r in rows.items():
        z, f = r["zero_shot"], r["few_shot"]
        lines.append(f"| {src} | {r['train_tiles']} / {r['test_tiles']} | {r['steps']} | "
                     f"{100 * res['folds'][src]['iou']:.1f} | {z['threshold']:.3f}, "
                     f"{100 * z['iou']:.1f} | {f['threshold']:.3f}, {100 * f['iou']:.1f} | "
                     f"{100 * f['precision']:.1f} | {100 * f['recall']:.1f} | "
                     f"{100 * f['f1']:.1f} |")
    if fs["mean"]:
        z, f = fs["mean"]["zero_shot"], fs["mean"]["few_shot"]
        n = f"{len(rows)} source{'s' if len(rows) != 1 else ''}"
        lines.append(f"| **mean ({n})** | | | **{100 * res['mean']['iou']:.1f}** "
                     f"| **{100 * z['iou']:.1f}** | **{100 * f['iou']:.1f}** | "
                     f"**{100 * f['precision']:.1f}** | **{100 * f['recall']:.1f}** | "
                     f"**{100 * f['f1']:.1f}** |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "processor": platform.processor() or None}


def _csv(text: str, choices: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(choices)
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise SystemExit(f"--{what} {text!r}: choose from {', '.join(choices)} (or all)")
    return items


def main(argv: list[str] | None = None) -> int:
    from landslide_cli.baselines import BASELINES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder with sichuan/, bijie/, hokkaido/, amunet_uav/ "
                        "(default: %(default)s)")
    p.add_argument("--folds", default="all",
                   help="held-out sources, comma-separated (default: all four)")
    p.add_argument("--baselines", default="rg",
                   help=f"baselines to tabulate: {', '.join(BASELINES.names())} or all "
                        "(default: rg)")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline tables")
    p.add_argument("--baseline-only", action="store_true",
                   help="only the baseline tables (no training, no --model)")
    p.add_argument("--model", help="evaluate this checkpoint / shipped model instead of "
                                   "training a recipe")
    p.add_argument("--include-seen", action="store_true",
                   help="--model: also score sources it was trained on (flagged in-domain)")
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                   help="train segment config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe option (repeatable), e.g. --set size=64")
    p.add_argument("--steps", type=int, default=1500,
                   help="optimizer steps per fold (train segment --steps; default: 1500)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="which checkpoint of a fold is scored (default: last, as v1 ships)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "loso",
                   help="run folders and split files (default: %(default)s)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--amunet-val-scene", default="A", choices=("A", "B", "C"),
                   help="amunet_uav scene used for validation when it is a training source")
    p.add_argument("--write-full-split", type=Path, metavar="PATH",
                   help="write the split of a final model over all four sources (same rule, no "
                        "held-out source) to PATH and exit")
    p.add_argument("--few-shot", action="store_true",
                   help="also fine-tune each fold's model on the held-out source's few-shot "
                        "train tiles and score both on its few-shot test tiles")
    p.add_argument("--few-shot-steps", type=int, default=None,
                   help="steps of the few-shot fine-tuning (default: the preset's, 300)")
    p.add_argument("--few-shot-split", type=Path, default=FEW_SHOT_SPLIT,
                   help="few-shot split file (default: %(default)s)")
    p.add_argument("--few-shot-val", choices=("train", "none"), default="train",
                   help="train: re-pick the threshold on the few-shot train tiles after "
                        "fine-tuning (default); none: keep the fold model's")
    p.add_argument("--write-few-shot-split", type=Path, metavar="PATH",
                   help="write the few-shot split of all four sources to PATH and exit")
    p.add_argument("--variants", default="",
                   help="extra held-out evaluations of each fold model, comma-separated: "
                        + ", ".join(VARIANTS) + " (stored with their histograms, which the "
                        "nested threshold-transfer table also uses)")
    p.add_argument("--joint", choices=BASELINES.names(), default=None,
                   help="also store each fold's joint (model, colour index) histogram on the "
                        "held-out pixels and print the nested table of the fused score")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=4, help="evaluation batch size")
    p.add_argument("--quiet", action="store_true", help="no training progress output")
    p.add_argument("--json", type=Path, help="write all results as JSON")
    p.add_argument("--no-mallopt", action="store_true",
                   help="leave glibc's allocator alone (the CLI tunes it, see runtime.py)")
    args = p.parse_args(argv)
    if not args.no_mallopt:
        from landslide_cli.runtime import tune_allocator

        tune_allocator()  # as `landslide train` does: several times faster on some VMs
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    if args.few_shot_steps is None:
        from landslide_cli.train.presets import get_preset

        args.few_shot_steps = int(get_preset("few-shot", "segment").values["steps"])
    if args.few_shot_steps < 1:
        raise SystemExit("--few-shot-steps must be >= 1")
    if args.few_shot and (args.model or args.baseline_only):
        raise SystemExit("--few-shot fine-tunes the models of a recipe's folds: not with "
                         "--model or --baseline-only")
    folds = _csv(args.folds, SOURCES, "folds")
    args.variants = _csv(args.variants, list(VARIANTS), "variants") if args.variants else []
    names = _csv(args.baselines, BASELINES.names(), "baselines")

    t0 = time.perf_counter()
    data = Sources(args.data)
    if args.write_full_split:
        _write_split(args.write_full_split, fold_split(data, None, seed=args.split_seed,
                                                       amu_val_scene=args.amunet_val_scene))
        say(f"wrote {args.write_full_split}")
        return 0
    if args.write_few_shot_split:
        _write_split(args.write_few_shot_split, few_shot_split(data, seed=args.split_seed))
        say(f"wrote {args.write_few_shot_split}")
        return 0
    command = " ".join(["benchmarks/generalization.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {"machine": machine(), "command": command, "data": str(args.data),
                               "folds": folds}
    md: list[str] = []
    if not args.no_baseline:
        results["baselines"] = run_baselines(names, data, folds)
        md.append(baseline_markdown(results["baselines"]))
    if not args.baseline_only:
        if args.model:
            results["model"] = run_model(args.model, data, folds, device=args.device,
                                         batch_size=args.batch_size,
                                         include_seen=args.include_seen)
            md.append(model_markdown(results["model"]))
        else:
            results["recipe"] = run_recipe(args, data, folds)
            md.append(recipe_markdown(results["recipe"]))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    m = results["machine"]
    md.append(f"({m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} thread(s), "
              f"{results['seconds']:.0f} s in all)")
    print("\n".join(md))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
