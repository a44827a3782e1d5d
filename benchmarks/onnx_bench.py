"""Torch eager vs ONNX Runtime on CPU, through the Backend interface that predict uses.

Builds a random-init segmentation model (default pvt_v2_b0+dcf, decoder width 128), saves it as
a checkpoint, exports it with :func:`landslide_cli.export.export_onnx`, then times
``TorchBackend.predict`` and ``OnnxBackend.predict`` on the same normalized batches
(warm-up runs, then the median of timed repeats). Prints a markdown table.

    .venv/bin/python benchmarks/onnx_bench.py --tile 512 --batch 1 4 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_interleaved(fns: list, batch: np.ndarray, warmup: int, repeats: int
                     ) -> list[list[float]]:
    """Per function, ``repeats`` wall times; rounds alternate between the functions so that
    load from other processes on a shared machine hits all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn(batch)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn(batch)
            times[i].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="pvt_v2_b0+dcf")
    parser.add_argument("--width", type=int, default=128, help="decoder width")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both backends (default: all cores)")
    parser.add_argument("--exporter", nargs="+", default=["torchscript"],
                        help="ONNX exporters to compare (torchscript, dynamo)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--fp16", action="store_true", help="also time an fp16 ONNX export")
    parser.add_argument("--plain", action="store_true",
                        help="also time an export without the ORT-friendly rewrites")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    from landslide_cli.backends import TorchBackend
    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.export import export_onnx
    from landslide_cli.onnx_backend import OnnxBackend, cpu_cores
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo import build_segmenter, parse_spec

    threads = args.threads or cpu_cores()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    arch = parse_spec(args.spec, decoder_width=args.width)
    model = build_segmenter(arch)
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(),
                          input=InputSpec(tile=args.tile).to_dict(), name="bench")

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as tmp:
        ckpt = save_checkpoint(Path(tmp) / "bench.safetensors", model.state_dict(), meta)
        variants: list[tuple[str, object]] = [("torch eager", TorchBackend(ckpt, device="cpu"))]
        configs = [(e, False, True) for e in args.exporter]
        if args.fp16:
            configs += [(e, True, True) for e in args.exporter]
        if args.plain:
            configs += [(e, False, False) for e in args.exporter]
        for exporter, fp16, optimize in configs:
            opset = max(args.opset, 18) if exporter == "dynamo" else args.opset
            out = Path(tmp) / f"bench-{exporter}-{int(fp16)}-{int(optimize)}.onnx"
            export_onnx(ckpt, out, opset=opset, fp16=fp16, exporter=exporter,
                        optimize=optimize, check_parity=False)
            label = (f"onnxruntime ({exporter}, opset {opset}{', fp16' if fp16 else ''}"
                     f"{', no rewrites' if not optimize else ''})")
            variants.append((label, OnnxBackend(out, device="cpu", threads=threads)))

        rng = np.random.default_rng(0)
        for b in args.batch:
            batch = rng.standard_normal((b, 3, args.tile, args.tile), dtype=np.float32)
            reference = None
            all_times = time_interleaved([b_.predict for _, b_ in variants], batch,
                                         args.warmup, args.repeats)
            for (label, backend), times in zip(variants, all_times, strict=True):
                out = backend.predict(batch)
                if reference is None:
                    reference = out
                med = statistics.median(times)
                rows.append({
                    "backend": label, "batch": b, "median_s": med, "ms_per_tile": 1e3 * med / b,
                    "tiles_per_s": b / med, "min_s": min(times),
                    "max_abs_diff_vs_torch": float(np.abs(out - reference).max()),
                })
                print(f"  {label} batch {b}: {1e3 * med:.0f} ms", file=sys.stderr, flush=True)

    base = {r["batch"]: r["tiles_per_s"] for r in rows if r["backend"] == "torch eager"}
    load_after = os.getloadavg()
    print(f"\nmachine: {cpu_name()}, {os.cpu_count()} logical cores, {threads} thread(s) used; "
          f"torch {torch.__version__}, onnxruntime {_ort_version()}, python "
          f"{platform.python_version()}")
    print(f"model: {args.spec} (decoder width {args.width}), random init, tile {args.tile}, "
          f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up; load average "
          f"{load_before[0]:.1f} before / {load_after[0]:.1f} after\n")
    print("| backend | batch | ms / batch | ms / tile | tiles/s | speed-up vs torch | "
          "max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = r["tiles_per_s"] / base[r["batch"]]
        r["speedup"] = speedup
        print(f"| {r['backend']} | {r['batch']} | {1e3 * r['median_s']:.0f} | "
              f"{r['ms_per_tile']:.0f} | {r['tiles_per_s']:.2f} | {speedup:.2f}x | "
              f"{r['max_abs_diff_vs_torch']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "threads": threads, "cpu": cpu_name(),
                                         "load": [load_before, load_after]}, indent=2))
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
