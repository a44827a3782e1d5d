"""Bit-depth check of ``--rescale auto`` (issue #12): the same scene as 8-bit, 16-bit and 12-bit.

Writes two uint16 copies of an 8-bit RGB scene (default: the shared example scene
``hokkaido_iburi_2018_rgb.tif``): values × 257 (the full 16-bit range, as a 16-bit export of
the 8-bit product would be) and values × 16 (12-bit data stored in 16 bits, as many satellite
products are). Each of the three files is mapped with the library's ``predict_scenes`` and
``rescale="auto"`` (the CLI default), and the landslide area of each uint16 inventory is
compared with the 8-bit one's. Target: within 10 %. Also prints the IoU of the uint16 polygons
with the 8-bit polygons (their union area over their intersection area).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bitdepth_check.py --json runs/bitdepth.json

Not a test: nothing here runs in CI (three whole-scene predictions with the default model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LANDSLIDE_SHARED", REPO.parent / "shared"))
DEFAULT_SCENE = SHARED / "data" / "scenes" / "hokkaido_iburi_2018_rgb.tif"
#: name -> factor applied to the 8-bit values of the copy
COPIES = {"uint16 x257 (16-bit)": 257, "uint16 x16 (12-bit)": 16}


def write_copy(src: Path, dst: Path, factor: int) -> None:
    import numpy as np
    import rasterio

    with rasterio.open(src) as ds:
        data = ds.read()
        profile = ds.profile.copy()
        names = ds.descriptions
    if str(data.dtype) != "uint8":
        raise SystemExit(f"{src}: expected an 8-bit scene, got {data.dtype}")
    profile.update(dtype="uint16", compress="deflate", predictor=2)
    nodata = profile.get("nodata")
    if nodata is not None:
        profile["nodata"] = float(nodata) * factor
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data.astype(np.uint16) * np.uint16(factor))
        for i, name in enumerate(names, start=1):
            if name:
                out.set_band_description(i, name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", type=Path, default=DEFAULT_SCENE)
    ap.add_argument("--model", default=None, help="default: the shipped default model")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.scene.is_file():
        raise SystemExit(f"scene not found: {args.scene}")

    import geopandas as gpd

    from landslide_cli.predict import predict_scenes

    results: dict[str, Any] = {"scene": str(args.scene), "model": args.model, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="landslide-bitdepth-") as tmp:
        work = Path(tmp)
        inputs = {"uint8 (reference)": args.scene}
        for name, factor in COPIES.items():
            path = work / f"scene_x{factor}.tif"
            write_copy(args.scene, path, factor)
            inputs[name] = path
        frames = {}
        for name, path in inputs.items():
            out = work / f"{path.stem}.gpkg"
            t0 = time.perf_counter()
            summary = predict_scenes(path, out, model=args.model, backend=args.backend,
                                     rescale="auto")
            frames[name] = gpd.read_file(out, layer="landslides")
            results["runs"][name] = {"area_m2": summary.landslide_area_m2,
                                     "polygons": summary.polygons,
                                     "seconds": round(time.perf_counter() - t0, 1),
                                     "rescale": summary.scenes[0].rescale,
                                     "model": summary.model, "threshold": summary.threshold}
            print(f"{name}: {summary.landslide_area_m2:.0f} m² in {summary.polygons} polygons",
                  file=sys.stderr)
    ref_name = "uint8 (reference)"
    ref = results["runs"][ref_name]["area_m2"]
    ref_geom = frames[ref_name].union_all() if len(frames[ref_name]) else None
    lines = ["| input | landslide area (m²) | polygons | vs 8-bit area | IoU with 8-bit polygons |",
             "|---|---:|---:|---:|---:|"]
    ok = True
    for name, r in results["runs"].items():
        rel = (r["area_m2"] - ref) / ref if ref else float("nan")
        geom = frames[name].union_all() if len(frames[name]) else None
        if ref_geom is not None and geom is not None:
            union = ref_geom.union(geom).area
            iou = ref_geom.intersection(geom).area / union if union else float("nan")
        else:
            iou = float("nan")
        r["relative_area"], r["iou_with_uint8"] = rel, iou
        if name != ref_name:
            ok &= abs(rel) <= 0.10
        lines.append(f"| {name} | {r['area_m2']:.0f} | {r['polygons']} | {100 * rel:+.1f} % | "
                     f"{iou:.3f} |")
    results["within_10_percent"] = ok
    results["model_used"] = results["runs"][ref_name]["model"]
    print("\n".join(lines))
    print(f"\nmodel {results['model_used']}; every uint16 copy within 10 %: {ok}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
