"""Benchmark `landslide predict`: throughput, peak memory and pipeline overhead vs scene size.

For each size (default 2048, 8192, 16384 pixels square) it writes a tiled, compressed uint8 RGB
GeoTIFF block by block (never the whole scene in memory), then runs ``predict_scenes`` in a
fresh subprocess (so ``ru_maxrss`` is that run's peak) with a random-init ``pvt_v2_b0+dcf``
(decoder width 128) checkpoint at tile 512, overlap 0.25, batch 4, threshold 0.56 (see
``--threshold``), and reports:

* tiles/s and megapixels/s of the scene pass (read -> forward -> stitch -> polygons -> GPKG),
* achieved model GFLOP/s (``landslide_cli.model_info.gflops`` per tile x tiles / forward time),
* peak RSS of the subprocess,
* overhead = scene pass time / pure forward time of the same number of tiles; the pure forward
  time per tile is measured in the same process just before and just after the run (mean of
  both, ``--forward-tiles`` tiles of real scene data each, same batch size) and scaled to the
  run's tile count. Because the machine may be shared, two steadier companions are reported:
  ``overhead_in_run`` = scene time / time spent inside ``backend.predict`` during the run, and
  ``overhead_cpu`` = process CPU time of the whole call / CPU time of pure forward passes
  (the model gets one warm-up batch before the run, so one-off first-call costs are not
  counted as pipeline overhead; model loading is not part of the scene pass either).

Usage::

    python benchmarks/predict_bench.py                       # 2k, 8k, 16k (16k: ~15+ min)
    python benchmarks/predict_bench.py --sizes 2048,8192
    python benchmarks/predict_bench.py --sizes 2048 --tile 256 --max-tiles 40   # quick check

``--max-tiles`` caps the tiles per run by lowering the scene *height* (the width, which is what
the stitcher's memory depends on, is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_checkpoint(path: Path, width: int = 128) -> Path:
    import torch

    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo import build_segmenter, parse_spec

    if path.exists():
        return path
    torch.manual_seed(0)
    arch = parse_spec("pvt_v2_b0+dcf", decoder_width=width)
    model = build_segmenter(arch)
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(),
                          input=InputSpec().to_dict(), name="bench-pvtb0-dcf128-random")
    save_checkpoint(path, model.state_dict(), meta)
    return path


def make_scene(path: Path, width: int, height: int, *, seed: int = 0,
               dtype: str = "uint8") -> Path:
    """Random-ish RGB terrain: smooth fields plus noise, written 512 rows at a time;
    ``dtype="uint16"`` stores the same 8-bit values x 257 (a 16-bit scene, which
    ``--rescale auto`` maps onto the 8-bit model by streamed percentiles)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": dtype,
        "crs": "EPSG:32633", "transform": from_origin(500000.0, 5000000.0, 1.0, 1.0),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "bigtiff": "if_safer",
    }
    fx = rng.uniform(0.002, 0.02, size=(3, 4))
    fy = rng.uniform(0.002, 0.02, size=(3, 4))
    ph = rng.uniform(0, 2 * np.pi, size=(3, 4))
    xs = np.arange(width, dtype=np.float32)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        for y0 in range(0, height, 512):
            h = min(512, height - y0)
            ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
            band = np.empty((3, h, width), dtype=np.uint8)
            for c in range(3):
                f = np.zeros((h, width), dtype=np.float32)
                for k in range(4):
                    f += np.sin(fx[c, k] * xs[None, :] + fy[c, k] * ys + ph[c, k])
                f = 128 + 22 * f + rng.normal(0, 12, size=(h, width)).astype(np.float32)
                band[c] = np.clip(f, 0, 255).astype(np.uint8)
            ds.write(band if dtype == "uint8" else band.astype(np.uint16) * np.uint16(257),
                     window=Window(0, y0, width, h))
    os.replace(tmp, path)
    return path


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process)."""
    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import Window

    from landslide_cli.backends import open_backend
    from landslide_cli.model_info import gflops
    from landslide_cli.predict import predict_scenes
    from landslide_cli.predict.pipeline import peak_rss_mb
    from landslide_cli.predict.raster import prepare_tile
    from landslide_cli.predict.windows import GridLayout

    if not args.no_mallopt:  # as the `landslide` CLI does at start-up
        from landslide_cli.runtime import tune_allocator

        tune_allocator()
    be = open_backend(args.model, device=args.device)
    with rasterio.open(args.scene) as ds:
        n_tiles = len(GridLayout(ds.height, ds.width, args.tile, args.overlap))
    n_batches = max(1, min(args.forward_tiles, n_tiles) // args.batch_size)

    def pure_forward() -> tuple[float, float]:
        """(wall, CPU) seconds per tile of backend.predict alone on real scene tiles."""
        wall = cpu = 0.0
        with rasterio.open(args.scene) as ds:
            w, h = min(args.tile, ds.width), min(args.tile, ds.height)
            b = np.empty((args.batch_size, 3, args.tile, args.tile), np.float32)
            for i in range(n_batches):
                for k in range(args.batch_size):
                    x0 = ((i * args.batch_size + k) * 397) % max(1, ds.width - w + 1)
                    y0 = ((i * args.batch_size + k) * 211) % max(1, ds.height - h + 1)
                    raw = ds.read([1, 2, 3], window=Window(x0, y0, w, h))
                    if raw.dtype != np.uint8:  # timing only: 16-bit back to the model range
                        raw = (raw // 257).astype(np.uint8)
                    prepare_tile(raw, None, be.spec, args.tile, b[k])
                t0, c0 = time.perf_counter(), time.process_time()
                be.predict(b)
                wall += time.perf_counter() - t0
                cpu += time.process_time() - c0
        n = n_batches * args.batch_size
        return wall / n, cpu / n

    # warm-up: the first call of a torch model pays one-off allocation costs
    be.predict(np.zeros((args.batch_size, 3, args.tile, args.tile), np.float32))
    before = pure_forward()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = predict_scenes(args.scene, args.out, model=be, tile=args.tile,
                             overlap=args.overlap, batch_size=args.batch_size,
                             threshold=args.threshold, overwrite=True)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = peak_rss_mb()
    after = pure_forward()
    scene_s = summary.scenes[0].seconds
    per_tile = (before[0] + after[0]) / 2
    cpu_per_tile = (before[1] + after[1]) / 2
    pure = per_tile * summary.tiles
    gf = gflops(be.model, args.tile) if hasattr(be, "model") else float("nan")
    result = {
        "size": [summary.scenes[0].width, summary.scenes[0].height],
        "tiles": summary.tiles, "polygons": summary.polygons,
        "scene_seconds": scene_s, "call_seconds": total, "call_cpu_seconds": total_cpu,
        "forward_in_pipeline_seconds": summary.forward_seconds,
        "pure_forward_seconds": pure, "pure_forward_tiles_measured": 2 * n_batches
        * args.batch_size, "pure_forward_s_per_tile_before_after": [before[0], after[0]],
        "pure_forward_cpu_seconds": cpu_per_tile * summary.tiles,
        "tiles_per_s": summary.tiles / scene_s,
        "mp_per_s": summary.scenes[0].width * summary.scenes[0].height / 1e6 / scene_s,
        "gflop_per_tile": gf, "achieved_gflop_per_s": gf / per_tile,
        "peak_rss_mb": rss, "overhead": scene_s / pure,
        "overhead_in_run": scene_s / summary.forward_seconds,
        "overhead_cpu": total_cpu / (cpu_per_tile * summary.tiles),
        "device": summary.device, "torch_threads": torch.get_num_threads(),
        "rescale": (summary.scenes[0].rescale or {}).get("mode"),
    }
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2048,8192,16384")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.56,
                    help="the random model's output sits around 0.5 on these scenes; 0.56 "
                         "marks ~2%% of pixels (inventory-like); the model's own 0.5 marks "
                         "~60%% and merges them into scene-sized polygons (a stress test)")
    ap.add_argument("--max-tiles", type=int, default=None)
    ap.add_argument("--dtype", choices=("uint8", "uint16"), default="uint8",
                    help="scene data type; uint16 = the 8-bit scene x 257, mapped by the "
                         "default --rescale auto (memory must stay flat in scene size too)")
    ap.add_argument("--forward-tiles", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-mallopt", action="store_true",
                    help="leave glibc's allocator as it is (the CLI tunes it at start-up)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "landslide-bench"))
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from landslide_cli.predict.windows import GridLayout

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = make_checkpoint(work / "pvtb0-dcf128-random.safetensors")
    results = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        height = size
        if args.max_tiles:
            while height > args.tile and len(GridLayout(height, size, args.tile,
                                                        args.overlap)) > args.max_tiles:
                height = max(args.tile, int(height * 0.8))
        tag = "" if args.dtype == "uint8" else f"_{args.dtype}"
        scene = make_scene(work / f"scene_{size}x{height}{tag}.tif", size, height,
                           dtype=args.dtype)
        out = work / f"out_{size}x{height}{tag}.gpkg"
        result_file = work / f"result_{size}x{height}{tag}.json"
        cmd = [sys.executable, __file__, "--child", "--scene", str(scene), "--model", str(model),
               "--out", str(out), "--result", str(result_file), "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
               "--forward-tiles", str(args.forward_tiles), "--device", args.device,
               *(["--no-mallopt"] if args.no_mallopt else [])]
        if args.threshold is not None:
            cmd += ["--threshold", str(args.threshold)]
        print(f"# {size}x{height}: running predict ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        res = json.loads(result_file.read_text())
        results.append(res)
        print(f"{res['size'][0]}x{res['size'][1]}: {res['tiles']} tiles, "
              f"{res['tiles_per_s']:.3f} tiles/s, {res['mp_per_s']:.3f} MP/s, "
              f"{res['achieved_gflop_per_s']:.1f} GFLOP/s, peak RSS {res['peak_rss_mb']:.0f} MB, "
              f"overhead {100 * (res['overhead'] - 1):+.1f} % "
              f"(scene {res['scene_seconds']:.1f} s, pure forward {res['pure_forward_seconds']:.1f}"
              f" s; in-run {100 * (res['overhead_in_run'] - 1):+.1f} %, "
              f"CPU {100 * (res['overhead_cpu'] - 1):+.1f} %), {res['polygons']} polygons",
              flush=True)
    info = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "dtype": args.dtype,
            "results": results}
    if len(results) > 1:
        base = results[0]["peak_rss_mb"]
        for r in results[1:]:
            print(f"peak RSS {r['size'][0]}x{r['size'][1]} / {results[0]['size'][0]}x"
                  f"{results[0]['size'][1]}: {r['peak_rss_mb'] / base:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
