"""Cost model of ``landslide predict --workers N``: tiles/s per worker on a local Dask cluster,
task overhead and the client's merge time (docs/predict.md, "Mapping a region on a cluster").

Writes synthetic RGB scenes (bright rectangles on a dark background), then for each worker
count maps them with :func:`landslide_cli.predict.distributed.predict_distributed` on a
``LocalCluster`` (processes, one thread each) and reports:

* ``tiles_s_per_worker``: windows predicted per second of wall time, divided by the workers;
* ``task_overhead_ms``: the round trip of an empty task through the scheduler (submit ->
  result), the fixed cost each scene or band task adds;
* ``merge_s``: client time spent merging the returned results (bands joined, inventory,
  overlap rule, tables, publishing the output);
* ``cluster_start_s``: starting the cluster (not part of a task).

Expected wall time for S scenes of T windows each on N machines of W workers (see docs):
``start + S*T / (N*W*tiles_s_per_worker) + S*bands*task_overhead/(N*W) + merge_s*S/S_bench``.

Usage (tiny check; the full measurement needs an idle machine)::

    python benchmarks/distributed_bench.py --scenes 2 --size 256 --workers 1 --json out.json
    python benchmarks/distributed_bench.py --scenes 16 --size 2048 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np


def write_scenes(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        a = np.full((3, size, size), 40, np.uint8)
        for _ in range(max(1, size // 32)):
            y, x = rng.integers(0, size - 8, 2)
            a[:, y:y + rng.integers(4, 40), x:x + rng.integers(4, 40)] = 220
        p = folder / f"scene{k:03d}.tif"
        profile = {"driver": "GTiff", "width": size, "height": size, "count": 3,
                   "dtype": "uint8", "crs": "EPSG:32633", "tiled": True, "blockxsize": 256,
                   "blockysize": 256,
                   "transform": from_origin(500000.0 + k * size * 2.5, 4000000.0, 2.0, 2.0)}
        with rasterio.open(p, "w", **profile) as ds:
            ds.write(a)
        paths.append(p)
    return paths


def task_overhead_ms(client, n: int = 50) -> float:
    """Mean round trip of an empty task (submit -> result)."""
    t0 = time.perf_counter()
    for _ in range(n):
        client.submit(_noop, pure=False).result()
    return (time.perf_counter() - t0) / n * 1000.0


def _noop() -> None:
    return None


def measure(scenes: list[Path], workers: int, *, model: str | None, tile: int | None,
            band_rows: int | None, out_dir: Path) -> dict:
    from distributed import Client, LocalCluster

    from landslide_cli.predict import distributed as dist

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    start_s = time.perf_counter() - t0
    merge = {"s": 0.0}
    real_merge, real_finish = dist.RegionRun.merge_scene, dist.RegionRun.write_tables

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                merge["s"] += time.perf_counter() - t
        return wrapper

    dist.RegionRun.merge_scene = timed(real_merge)  # type: ignore[method-assign]
    dist.RegionRun.write_tables = timed(real_finish)  # type: ignore[method-assign]
    try:
        overhead = task_overhead_ms(client)
        out = out_dir / f"bench_{workers}.gpkg"
        t1 = time.perf_counter()
        summary = dist.predict_distributed(scenes, out, model=model, client=client,
                                           band_rows=band_rows, tile=tile, overwrite=True,
                                           device="cpu")
        wall = time.perf_counter() - t1
    finally:
        dist.RegionRun.merge_scene, dist.RegionRun.write_tables = real_merge, real_finish
        client.close()
        cluster.close()
    return {"workers": workers, "scenes": len(scenes), "tiles": summary.tiles,
            "wall_s": round(wall, 3), "cluster_start_s": round(start_s, 3),
            "tiles_s_per_worker": round(summary.tiles / wall / workers, 3),
            "task_overhead_ms": round(overhead, 2), "merge_s": round(merge["s"], 3),
            "polygons": summary.polygons, "failed": len(summary.failed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--size", type=int, default=2048, help="scene width and height (pixels)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--model", default=None, help="model (default: the shipped one)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--band-rows", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="landslide-dbench-") as tmp:
        folder = Path(tmp)
        scenes = write_scenes(folder, args.scenes, args.size)
        for n in (int(w) for w in args.workers.split(",")):
            rows.append(measure(scenes, n, model=args.model, tile=args.tile,
                                band_rows=args.band_rows, out_dir=folder))
            print(json.dumps(rows[-1]), flush=True)
    print("| workers | scenes | tiles | wall s | tiles/s/worker | task overhead ms | merge s "
          "| cluster start s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['scenes']} | {r['tiles']} | {r['wall_s']} | "
              f"{r['tiles_s_per_worker']} | {r['task_overhead_ms']} | {r['merge_s']} | "
              f"{r['cluster_start_s']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
