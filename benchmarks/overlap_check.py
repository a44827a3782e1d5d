"""Nothing lost (issue 14): window overlap and precision against the fp32, 25 %-overlap run.

``landslide predict`` may only trade accuracy for speed within the issue's bounds: landslide
IoU within 0.5 points of the fp32 run at the old default overlap (25 %) and the stitched
inventory within 1 % of its area. This script measures both on real imagery:

* **scenes with ground truth**: the three AMU-Net UAV scenes (A, B, C), reassembled from their
  128² patches (``amu<scene>_<row>_<col>`` is the patch's pixel offset) into GeoTIFFs with an
  internal mask over the 20 dropped patches, beside their ground-truth masks. Each scene is
  mapped with ``predict_scenes`` at every ``--overlap`` and ``--precision``; the table gives
  the windows, the inventory's area against the reference run, the stitched mask's IoU with
  the reference mask, and landslide IoU / F1 against the ground truth (pooled over scenes).
* **the shared Hokkaido scene** (no ground truth): area and mask agreement only.
* **tiles** (``--tiles``): ``evaluate()`` on every tile of the four shared sources in fp32
  and in each reduced precision (tiles are single windows: overlap plays no part there).

The georeference of the reassembled scenes is arbitrary (0.5 m pixels in UTM 47N, inside the
default model's 0.2–3 m range); only pixel agreement is measured.

    python benchmarks/overlap_check.py                      # overlaps 0.25, 0.125, 0.0625
    python benchmarks/overlap_check.py --overlaps 0.25,0.1 --precisions fp32,auto --tiles
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATCH = 128
STEM = re.compile(r"^amu([A-Z])_(\d+)_(\d+)$")
REFERENCE = ("fp32", 0.25)


def assemble_amunet(src: Path, scene: str, out: Path) -> np.ndarray:
    """Write scene ``scene`` of the AMU-Net patches as a masked GeoTIFF; return its truth."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    patches = []
    for img in sorted((src / "img").glob(f"amu{scene}_*.png")):
        m = STEM.match(img.stem)
        if m:
            patches.append((int(m.group(2)), int(m.group(3)), img))
    if not patches:
        raise SystemExit(f"{src}: no amu{scene}_<row>_<col> patches")
    h = max(r for r, _, _ in patches) + PATCH
    w = max(c for _, c, _ in patches) + PATCH
    rgb = np.zeros((3, h, w), np.uint8)
    valid = np.zeros((h, w), bool)
    truth = np.zeros((h, w), np.uint8)
    for r, c, img in patches:
        pixels = np.asarray(Image.open(img).convert("RGB"))
        rgb[:, r:r + PATCH, c:c + PATCH] = pixels.transpose(2, 0, 1)
        truth[r:r + PATCH, c:c + PATCH] = np.asarray(Image.open(src / "mask" / img.name)) > 0
        valid[r:r + PATCH, c:c + PATCH] = True
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32647", "transform": from_origin(500000.0, 3000000.0, 0.5, 0.5),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as ds:
        ds.write(rgb)
        ds.write_mask(valid.astype(np.uint8) * 255)
    truth[~valid] = 0
    return truth.astype(bool)


def mapped(scene: Path, work: Path, tag: str, overlap: float, precision: str) -> dict[str, Any]:
    """``predict_scenes`` on ``scene``; the stitched mask and the run's numbers."""
    import rasterio

    from landslide_cli.predict import predict_scenes

    prob = work / f"{scene.stem}-{tag}.prob.tif"
    t0 = time.perf_counter()
    summary = predict_scenes(scene, work / f"{scene.stem}-{tag}.gpkg", overlap=overlap,
                             precision=precision, prob_out=prob, prob_dtype="float32",
                             overwrite=True)
    seconds = time.perf_counter() - t0
    with rasterio.open(prob) as ds:
        p = ds.read(1, masked=True)
    mask = (p.filled(0.0) >= summary.threshold) & ~np.ma.getmaskarray(p)
    prob.unlink()
    return {"mask": mask, "area_m2": summary.landslide_area_m2, "tiles": summary.tiles,
            "seconds": seconds, "precision": summary.precision, "polygons": summary.polygons}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def tile_rows(data: Path, precisions: list[str]) -> dict[str, Any]:
    """Landslide IoU of the default model on every shared tile, per precision."""
    from landslide_cli.data import open_dataset
    from landslide_cli.evaluate import evaluate

    tiles = open_dataset("folder", data / "landslides", split="all")
    rows: dict[str, Any] = {}
    for precision in ["fp32", *[p for p in precisions if p != "fp32"]]:
        report = evaluate(None, tiles, precision=precision)
        m = report.overall.compute()
        rows[precision] = {"iou": float(m["iou"]), "f1": float(m["f1"]),
                           "tiles": len(report.tiles)}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path,
                   default=Path(os.environ.get("LANDSLIDE_SHARED", ROOT.parent / "shared"))
                   / "data")
    p.add_argument("--overlaps", default="0.25,0.125,0.0625")
    p.add_argument("--precisions", default="fp32,auto")
    p.add_argument("--scenes", default="A,B,C,hokkaido",
                   help="AMU-Net scenes (A, B, C) and/or 'hokkaido' (the shared scene); "
                        "'' for none")
    p.add_argument("--tiles", action="store_true", help="also evaluate() every shared tile")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "overlap-check")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from landslide_cli.runtime import tune_allocator

    tune_allocator()
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    overlaps = [float(x) for x in args.overlaps.split(",")]
    precisions = args.precisions.split(",")
    configs = [REFERENCE] + [(pr, ov) for pr in precisions for ov in overlaps
                             if (pr, ov) != REFERENCE]

    scenes: list[tuple[str, Path, np.ndarray | None]] = []
    for name in filter(None, args.scenes.split(",")):
        if name == "hokkaido":
            scenes.append((name, args.data / "scenes" / "hokkaido_iburi_2018_rgb.tif", None))
        else:
            path = args.work / f"amunet_{name}.tif"
            truth = assemble_amunet(args.data / "landslides" / "amunet_uav", name, path)
            scenes.append((f"amunet {name}", path, truth))

    results: dict[str, Any] = {"configs": {}, "scenes": [s[0] for s in scenes]}
    for precision, overlap in configs:
        tag = f"{precision}-{overlap:g}"
        rows = {}
        for label, path, _ in scenes:
            run = mapped(path, args.work, tag, overlap, precision)
            rows[label] = run
            print(f"{tag:14s} {label:12s} {run['tiles']:4d} windows {run['seconds']:6.1f} s "
                  f"area {run['area_m2']:12.1f} m² ({run['precision']})", flush=True)
        results["configs"][tag] = rows

    ref = results["configs"][f"{REFERENCE[0]}-{REFERENCE[1]:g}"]
    table = []
    for tag, rows in results["configs"].items() if scenes else []:
        row: dict[str, Any] = {"config": tag}
        row["windows"] = sum(r["tiles"] for r in rows.values())
        row["seconds"] = sum(r["seconds"] for r in rows.values())
        row["area_vs_ref"] = (sum(r["area_m2"] for r in rows.values())
                              / max(sum(r["area_m2"] for r in ref.values()), 1e-9))
        row["worst_scene_area_vs_ref"] = max(
            (abs(r["area_m2"] / ref[k]["area_m2"] - 1.0) if ref[k]["area_m2"] else 0.0)
            for k, r in rows.items())
        row["mask_iou_vs_ref"] = min(iou(r["mask"], ref[k]["mask"]) for k, r in rows.items())
        inter = union = tp = fp = fn = 0
        for (label, _, truth) in scenes:
            if truth is None:
                continue
            m = rows[label]["mask"]
            inter += np.count_nonzero(m & truth)
            union += np.count_nonzero(m | truth)
            fp += np.count_nonzero(m & ~truth)
            fn += np.count_nonzero(~m & truth)
        tp = inter
        if union:
            row["truth_iou"] = inter / union
            row["truth_f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
        table.append(row)
    base_iou = table[0].get("truth_iou") if table else None
    print()
    print("| config | windows | seconds | area vs ref | worst scene | min mask IoU vs ref "
          "| IoU vs truth | Δ IoU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in table:
        d = ("" if base_iou is None or "truth_iou" not in row
             else f"{100 * (row['truth_iou'] - base_iou):+.2f}")
        print(f"| {row['config']} | {row['windows']} | {row['seconds']:.1f} | "
              f"{100 * row['area_vs_ref']:.2f} % | ±{100 * row['worst_scene_area_vs_ref']:.2f} % "
              f"| {row['mask_iou_vs_ref']:.4f} | "
              f"{100 * row.get('truth_iou', float('nan')):.2f} | {d} |")
    out: dict[str, Any] = {"table": table}
    if args.tiles:
        out["tiles"] = tile_rows(args.data, precisions)
        for precision, r in out["tiles"].items():
            print(f"tiles, {precision}: IoU {100 * r['iou']:.2f} F1 {100 * r['f1']:.2f} "
                  f"on {r['tiles']} tiles")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
