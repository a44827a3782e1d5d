"""Give a trained checkpoint the decision threshold learnt by leave-one-source-out (issue #11).

    python benchmarks/transfer_threshold.py runs/v3/last.safetensors \
        --loso runs/loso-scale-rg-fixed.json --rule shift \
        --out models/landslide-pvtb0-dcf-v3.safetensors

A model's own threshold is the best-F1 threshold of its validation tiles, which come from the
sources it was trained on; on imagery from a new sensor that threshold is too high or too low.
``benchmarks/generalization.py`` fits two rules on the held-out predictions of its folds and
checks them by nested leave-one-source-out (a fold never sees itself): ``absolute`` (one
threshold for every model of the recipe) and ``shift`` (the model's own threshold moved by a
fixed logit shift ``d``: ``sigmoid(logit(t) + d)``). This script reads the rule fitted on *all*
folds of the recipe's run (``transfer.plain.all_folds`` of its ``--json``), applies it to the
checkpoint's own threshold and writes a copy of the checkpoint with the new threshold; the
metadata keeps the old one, the rule, its nested leave-one-source-out IoU and where it came
from (``training.threshold_source`` and ``training.threshold_rule``). The weights are not
touched.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def transferred(threshold: float, rule: str, fitted: dict) -> float:
    """The threshold ``rule`` (``shift`` or ``absolute``) gives a model whose own is
    ``threshold``, from the rule parameters ``fitted`` (``all_folds`` of a LOSO run)."""
    if rule == "absolute":
        return float(fitted["absolute_threshold"])
    t = min(max(threshold, 1e-6), 1 - 1e-6)
    return 1.0 / (1.0 + math.exp(-(math.log(t / (1 - t)) + float(fitted["shift"]))))


def main(argv: list[str] | None = None) -> int:
    from landslide_cli.checkpoint import load_checkpoint, save_checkpoint
    from landslide_cli.errors import LandslideError
    from landslide_cli.safety import check_target

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--loso", type=Path, required=True,
                    help="the --json of a benchmarks/generalization.py run of the same recipe")
    ap.add_argument("--rule", choices=("shift", "absolute"), default="shift")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        check_target(args.out, overwrite=args.overwrite, inputs=[args.checkpoint, args.loso])
        meta, state = load_checkpoint(args.checkpoint)
        try:
            run = json.loads(args.loso.read_text(encoding="utf-8"))["recipe"]
            plain = run["transfer"]["plain"]
        except (OSError, ValueError, KeyError, TypeError):
            raise LandslideError(f"{args.loso}: not the --json of a generalization.py recipe "
                                 "run with its threshold-transfer table") from None
        fitted = plain["all_folds"]
        own = float(meta.threshold)
        new = transferred(own, args.rule, fitted)
        nested = {src: round(100 * f[f"{args.rule}_iou"], 1) for src, f in plain["folds"].items()}
        meta.training = dict(meta.training)
        meta.training["threshold_rule"] = {
            "rule": args.rule, "validation_threshold": own,
            "shift": fitted.get("shift") if args.rule == "shift" else None,
            "absolute_threshold": fitted.get("absolute_threshold"),
            "recipe": run.get("recipe"), "steps_per_fold": run.get("steps_requested"),
            "nested_loso_iou": nested,
            "nested_loso_mean_iou": round(100 * plain["mean"][f"{args.rule}_iou"], 1)}
        what = (f"logit shift {fitted['shift']:+.2f}" if args.rule == "shift"
                else f"absolute threshold {new:.3f}")
        meta.training["threshold_source"] = (
            f"leave-one-source-out rule ({what}, fitted on all folds of "
            f"benchmarks/generalization.py for {run.get('recipe')}) applied to the validation "
            f"best-F1 threshold {own:.3f}")
        meta.threshold = round(new, 3)
        save_checkpoint(args.out, state, meta)
    except LandslideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: threshold {own:.3f} -> {meta.threshold:.3f} ({args.rule}; nested LOSO "
          f"IoU {nested}, mean {meta.training['threshold_rule']['nested_loso_mean_iou']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
