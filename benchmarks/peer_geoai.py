"""Side by side with geoai (issue 14): the same weights, scene and windowing in both tools.

    python benchmarks/peer_geoai.py                       # 4096² scene, tile 512, overlap 128
    python benchmarks/peer_geoai.py --size 512 --threads 1  # a quick check of the script

What it does, in this order:

1. builds a ``size x size`` RGB GeoTIFF of real Hokkaido texture by mirroring the bundled
   ``examples/hokkaido_iburi_2018_rgb.tif`` (``numpy.pad`` symmetric), in ``--work``;
2. creates a virtual environment for the peer (``--venv``, default ``runs/peer-venv``) that sees
   this project's environment through a ``.pth`` file (same torch, rasterio, landslide_cli) and
   installs ``geoai-py==0.40.1`` into it (never a dependency of this project); if the registry
   lacks it or one of its dependencies, says so in one line and exits with status 2;
3. runs each pipeline in its own process, measuring wall time and peak RSS (``getrusage`` of
   the child): geoai ``predict_geotiff`` (the project's checkpoint wrapped as an ``nn.Module``
   returning P(landslide), with the project's normalization as ``preprocess_fn``) +
   ``raster_to_vector``; ``landslide predict`` with ``--backend torch``, ``--backend onnx`` (an
   exported file) and the default command (``--backend auto``, its export cache primed first);
   same tile, overlap (pixels), batch size and threads everywhere;
4. measures the fp32 and bf16 GEMM rate (2048³ matmul) and counts the model's FLOPs per tile
   (``torch.utils.flop_counter.FlopCounterMode``), then reports each landslide run's achieved
   model GFLOP/s (FLOPs x tiles / forward seconds) and its fraction of the GEMM peak of the
   precision it ran in, and times the model alone through the torch backend as ``predict``
   runs it (channels-last, ``--precision auto``, batch ``--batch``, random input), which is
   the model's throughput without the reader and polygonizer threads beside it;
5. prints one table with MPix/s, peak RSS and the ratios to geoai, and writes
   ``--work/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_SCENE = ROOT / "examples" / "hokkaido_iburi_2018_rgb.tif"
GEOAI = "geoai-py==0.40.1"

#: runs ``argv`` and writes {"wall_s", "max_rss_kb", "rc"} to the file named first
MEASURE = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    out, argv = sys.argv[1], sys.argv[2:]
    t0 = time.perf_counter()
    rc = subprocess.run(argv).returncode
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    open(out, "w").write(json.dumps({"wall_s": wall, "max_rss_kb": rss, "rc": rc}))
""")

#: the geoai side, run with the peer venv's python
GEOAI_WORKER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import torch
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    from geoai.inference import predict_geotiff
    from geoai.utils.raster import raster_to_vector
    from landslide_cli.zoo.loading import load_model

    loaded = load_model(args["model"], device=torch.device("cpu"))
    spec = loaded.meta.input_spec

    class LandslideProbability(torch.nn.Module):
        # the project's segmenter -> (B, 1, H, W) landslide probability
        def __init__(self, segmenter):
            super().__init__()
            self.segmenter = segmenter

        def forward(self, x):
            return torch.softmax(self.segmenter(x).float(), dim=1)[:, 1:2]

    model = LandslideProbability(loaded.model).eval()
    t0 = time.perf_counter()
    predict_geotiff(model, args["scene"], args["prob"], tile_size=args["tile"],
                    overlap=args["overlap_px"], batch_size=args["batch"], num_classes=1,
                    preprocess_fn=lambda tile: spec.normalize(tile), device="cpu",
                    verbose=False)
    t1 = time.perf_counter()
    gdf = raster_to_vector(args["prob"], args["out"], threshold=loaded.meta.threshold,
                           min_area=0)
    json.dump({"predict_s": t1 - t0, "vector_s": time.perf_counter() - t1,
               "polygons": int(len(gdf))}, open(args["report"], "w"))
""")

#: GEMM rates and the model's FLOPs per tile, in one process with the benchmark's threads
PROBE = textwrap.dedent("""
    import json, sys, time
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])

    def gemm(dtype, n=2048, reps=5):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9

    from landslide_cli.zoo.loading import load_model
    loaded = load_model(args["model"], device=torch.device("cpu"))
    model = loaded.model.eval()
    channels = loaded.meta.input_spec.model_channels  # bands + derived index channels
    x = torch.zeros(args["batch"], channels, args["tile"], args["tile"])
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    # the model alone, as predict runs it (TorchBackend: channels-last, --precision auto)
    import numpy as np
    from landslide_cli.backends import TorchBackend
    from landslide_cli.runtime import tune_allocator
    tune_allocator()
    be = TorchBackend(args["model"], device="cpu")
    xb = np.random.default_rng(0).standard_normal(tuple(x.shape), dtype=np.float32)
    for _ in range(2):
        be.predict(xb)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        be.predict(xb)
    alone = (time.perf_counter() - t0) / (reps * args["batch"])
    print(json.dumps({"gemm_fp32_gflops": gemm(torch.float32),
                      "gemm_bf16_gflops": gemm(torch.bfloat16),
                      "model_flops_per_tile": counter.get_total_flops() / args["batch"],
                      "model_alone_s_per_tile": alone, "model_alone_precision": be.precision}))
""")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_scene(path: Path, size: int) -> Path:
    """``size x size`` mirrored real texture of the bundled Hokkaido scene (same CRS)."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    if path.exists():
        return path
    with rasterio.open(SOURCE_SCENE) as src:
        data, profile, transform = src.read(), src.profile, src.transform
    _, h, w = data.shape
    data = np.pad(data, ((0, 0), (0, max(0, size - h)), (0, max(0, size - w))),
                  mode="symmetric")[:, :size, :size]
    profile.update(width=size, height=size, tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", transform=Affine(*transform[:6]))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def peer_venv(venv: Path) -> Path:
    """The peer's python with geoai installed (created on first use); exits 2 on failure."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        ours = [p for p in sys.path if p.endswith("site-packages")]
        # the same torch, rasterio and landslide_cli as this environment ("one environment")
        Path(site, "landslide_env.pth").write_text("\n".join([str(ROOT), *ours]) + "\n")
    probe = subprocess.run([str(python), "-c", "import geoai"], capture_output=True)
    if probe.returncode != 0:
        log(f"installing {GEOAI} into {venv} ...")
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", GEOAI],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            print(f"cannot install {GEOAI} (or one of its dependencies) from the registry: "
                  f"{last}")
            sys.exit(2)
    return python


def measured(argv: list[str], env: dict[str, str], work: Path, name: str) -> dict:
    report = work / f"{name}.measure.json"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(report), *argv], env=env,
                          capture_output=True, text=True)
    data = json.loads(report.read_text()) if report.exists() else {"rc": proc.returncode}
    if data.get("rc") != 0:
        log(f"{name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    data["stdout"] = proc.stdout
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=128, help="pixels")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--venv", type=Path, default=ROOT / "runs" / "peer-venv")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "peer-geoai")
    ap.add_argument("--no-peer", action="store_true", help="landslide rows and probes only")
    args = ap.parse_args(argv)
    if args.size < args.tile:
        ap.error("--size must be at least --tile")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(work / f"hokkaido_{args.size}.tif", args.size)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads),
           "LANDSLIDE_CACHE": str(work / "cache")}
    env.pop("LANDSLIDE_CPU_BACKEND", None)
    landslide = [sys.executable, "-m", "landslide_cli"]
    common = ["--tile", str(args.tile), "--overlap", str(args.overlap / args.tile),
              "--batch-size", str(args.batch), "--device", "cpu", "--json", "--quiet",
              "--overwrite"]
    model_args = [] if args.model == "default" else ["--model", args.model]
    rows: dict[str, dict] = {}

    if not args.no_peer:
        python = peer_venv(args.venv)
        spec = {"model": None if args.model == "default" else args.model, "scene": str(scene),
                "prob": str(work / "geoai_prob.tif"), "out": str(work / "geoai.gpkg"),
                "report": str(work / "geoai.report.json"), "tile": args.tile,
                "overlap_px": args.overlap, "batch": args.batch, "threads": args.threads}
        rows["geoai 0.40.1 predict_geotiff + raster_to_vector"] = measured(
            [str(python), "-c", GEOAI_WORKER, json.dumps(spec)], env, work, "geoai")

    onnx = work / "model.onnx"
    if not onnx.exists():
        subprocess.run([*landslide, "export", *([args.model] if args.model != "default"
                                                 else []), "--out", str(onnx), "--tile",
                        str(args.tile), "--overwrite"], env=env, check=True,
                       capture_output=True)
    # prime the export cache of `--backend auto` (not timed): one window at the same tile
    prime = make_scene(work / f"hokkaido_{args.tile}.tif", args.tile)
    subprocess.run([*landslide, "predict", str(prime), "--out", str(work / "prime.gpkg"),
                    *model_args, *common], env=env, check=False, capture_output=True)
    for label, extra in (("landslide predict --backend torch", ["--backend", "torch",
                                                               *model_args]),
                         ("landslide predict --backend onnx", ["--backend", "onnx",
                                                              "--model", str(onnx)]),
                         ("landslide predict (the default: auto)", model_args)):
        name = label.split()[-1].strip("():")
        rows[label] = measured([*landslide, "predict", str(scene), "--out",
                                str(work / f"{name}.gpkg"), *extra, *common], env, work, name)

    probe = subprocess.run([sys.executable, "-c", PROBE, json.dumps(
        {"model": None if args.model == "default" else args.model, "tile": args.tile,
         "batch": args.batch, "threads": args.threads})], env=env, capture_output=True,
        text=True)
    rates = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {}
    mpix = args.size * args.size / 1e6
    results = {"size": args.size, "tile": args.tile, "overlap_px": args.overlap,
               "batch": args.batch, "threads": args.threads, **rates, "runs": {}}
    base = next(iter(rows.values())) if not args.no_peer else None
    print(f"\n{args.size}² scene, tile {args.tile}, overlap {args.overlap} px, batch "
          f"{args.batch}, {args.threads} threads")
    if rates:
        print(f"GEMM 2048³: fp32 {rates['gemm_fp32_gflops']:.1f} GFLOP/s, bf16 "
              f"{rates['gemm_bf16_gflops']:.1f} GFLOP/s; model "
              f"{rates['model_flops_per_tile'] / 1e9:.2f} GFLOP per {args.tile}² tile")
        alone, prec = rates["model_alone_s_per_tile"], rates["model_alone_precision"]
        peak = rates["gemm_bf16_gflops" if prec == "bf16" else "gemm_fp32_gflops"]
        flops = rates["model_flops_per_tile"] / alone / 1e9
        print(f"model alone (torch backend, batch {args.batch}, {prec}): "
              f"{1000 * alone:.1f} ms per tile, {flops:.1f} GFLOP/s, "
              f"{100 * flops / peak:.0f} % of the {prec} GEMM rate")
    print("| pipeline | scene time | MPix/s | vs geoai | peak RSS | vs geoai | precision | "
          "model GFLOP/s | of peak |\n|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for label, row in rows.items():
        if row.get("rc") != 0:
            print(f"| {label} | failed | | | | | | | |")
            continue
        wall, rss = row["wall_s"], row["max_rss_kb"] / 1024 ** 2
        speed = f"{(base['wall_s'] / wall):.2f}×" if base and base.get("rc") == 0 else "n/a"
        mem = (f"{rss / (base['max_rss_kb'] / 1024 ** 2):.2f}×"
               if base and base.get("rc") == 0 else "n/a")
        precision, achieved, frac = "fp32", "", ""
        if label.startswith("landslide") and row["stdout"].strip():
            summary = json.loads(row["stdout"])
            precision = summary.get("precision", "fp32")
            if rates and summary.get("forward_seconds"):
                gflops = rates["model_flops_per_tile"] * summary["tiles"] / \
                    summary["forward_seconds"] / 1e9
                peak = rates["gemm_bf16_gflops" if precision == "bf16" else "gemm_fp32_gflops"]
                achieved, frac = f"{gflops:.1f}", f"{100 * gflops / peak:.0f} %"
            row["summary"] = summary
        row.pop("stdout", None)
        results["runs"][label] = row
        print(f"| {label} | {wall:.1f} s | {mpix / wall:.3f} | {speed} | {rss:.2f} GB | {mem} "
              f"| {precision} | {achieved} | {frac} |")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {work / 'results.json'} ({time.strftime('%Y-%m-%d %H:%M')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
