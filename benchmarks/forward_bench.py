"""The model's forward pass alone, per way of running it on the CPU (issue 14).

Times a shipped model (default: the default model) or checkpoint on random inputs of
``--batch`` x ``--tile``², channels-last as :class:`~landslide_cli.backends.TorchBackend` runs
it, in each ``--variants``:

* ``fp32``: float32 weights and inputs;
* ``autocast``: float32 weights under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what
  ``--precision bf16`` runs);
* ``bf16``: a bfloat16 copy of the model on bfloat16 inputs (whole-model bf16: layer norms,
  GELUs and the residual stream in bf16 too; measured, not used by ``predict``).

Variants are interleaved (``--rounds`` rounds of ``--reps`` timed passes each, after two warm-up
passes) so that a drifting machine affects them alike; the table gives the best and median round
in ms per tile, GFLOP/s (counted with ``torch.utils.flop_counter``) and the largest probability
difference from fp32 on the same inputs. glibc's heap is tuned as the CLI does.

    python benchmarks/forward_bench.py --threads 2
    python benchmarks/forward_bench.py --variants autocast,bf16 --batch 4 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("fp32", "autocast", "bf16")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="shipped model name or checkpoint "
                                                  "(default: the default model)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3, help="timed passes per round")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")

    from landslide_cli.runtime import tune_allocator, tune_openmp

    tune_openmp()
    tune_allocator()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from landslide_cli.precision import landslide_probability
    from landslide_cli.zoo.loading import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=torch.device("cpu"))
    model = loaded.model.eval().to(memory_format=torch.channels_last)
    channels = loaded.meta.input_spec.model_channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, channels, args.tile, args.tile, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops() / args.batch
    half = copy.deepcopy(model).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)

    def run(name: str) -> torch.Tensor:
        with torch.inference_mode():
            if name == "fp32":
                return model(x)
            if name == "autocast":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(x)
            return half(xb)

    reference = landslide_probability(run("fp32"))
    diffs = {}
    for name in variants:
        for _ in range(2):
            out = run(name)
        diffs[name] = float((landslide_probability(out) - reference).abs().max())
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            t0 = time.perf_counter()
            for _ in range(args.reps):
                run(name)
            times[name].append((time.perf_counter() - t0) / (args.reps * args.batch))

    print(f"{loaded.name}: batch {args.batch} x {args.tile}², {args.threads} threads, "
          f"torch {torch.__version__}, {flops / 1e9:.2f} GFLOP per tile")
    print("| variant | best ms/tile | median ms/tile | GFLOP/s (best) | max abs dp vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    rows = {}
    for name in variants:
        best, med = min(times[name]), statistics.median(times[name])
        rows[name] = {"best_s_per_tile": best, "median_s_per_tile": med,
                      "gflops": flops / best / 1e9, "max_prob_diff": diffs[name],
                      "rounds_s_per_tile": times[name]}
        print(f"| {name} | {1e3 * best:.1f} | {1e3 * med:.1f} | {flops / best / 1e9:.0f} | "
              f"{diffs[name]:.4f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": loaded.name, "batch": args.batch,
                                         "tile": args.tile, "threads": args.threads,
                                         "flops_per_tile": flops, "variants": rows},
                                        indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
