"""`landslide predict`: map landslides in GeoTIFF scenes into a GeoPackage."""

from __future__ import annotations

from pathlib import Path

import typer

from landslide_cli.cli import common, options
from landslide_cli.cli.reporting import cli_reporter
from landslide_cli.errors import LandslideError

#: smallest --tile (window size) predict accepts
MIN_TILE = 16


def command(
    scenes: list[str] = typer.Argument(
        None, show_default=False,
        help="GeoTIFF scene(s), http(s) URLs of COGs or STAC Item JSON (files or URLs); "
             "several go into one file."),
    out: Path = typer.Option(..., "--out", "-o", show_default=False,
                             help="Output: GeoPackage (.gpkg), FlatGeobuf (.fgb) or GeoParquet "
                                  "(.parquet; footprints and runs go beside the last two)."),
    model: str | None = options.model(),
    backend: str = options.backend(),
    device: str = options.device(),
    precision: str = options.precision(),
    tile: int | None = typer.Option(None, "--tile",
                                    help="Window size in pixels (default: the model's)."),
    overlap: float = typer.Option(0.25, "--overlap", help="Overlap between windows (0-0.9)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Windows per forward pass."),
    bands: str | None = typer.Option(
        None, "--bands", help="Bands to read, by 1-based number or by name (description or "
                              "colour), e.g. 1,2,3 or red,green,blue (default: the model's)."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Landslide probability threshold (default: the model's)."),
    min_area: float = typer.Option(0.0, "--min-area", help="Drop polygons below this many m²."),
    simplify: float = typer.Option(0.0, "--simplify",
                                   help="Simplification tolerance in metres (0: exact pixels)."),
    prob_out: Path | None = typer.Option(
        None, "--prob-out",
        help="Also write the probability map as a COG GeoTIFF (a folder or a {scene} "
             "pattern for several scenes)."),
    prob_dtype: str = options.prob_dtype(),
    rescale: str = options.rescale("the scenes"),
    nodata: float | None = typer.Option(
        None, "--nodata", help="Nodata value of the scenes (supplies or replaces the file's; "
                               "alpha bands and masks still apply)."),
    crs: str | None = typer.Option(
        None, "--crs", help="Output CRS, e.g. EPSG:4326 (default: the first scene's)."),
    quicklook: Path | None = typer.Option(
        None, "--quicklook",
        help="Also write a PNG of each scene with its polygons drawn over it (several scenes: "
             "the scene name is added to the file name)."),
    overwrite: bool = options.overwrite("Replace existing outputs."),
    resample_to: str = options.resample_to(),
    dem: Path | None = typer.Option(
        None, "--dem",
        help="Elevation model (metres, any CRS) for a model with terrain bands (dem, slope): "
             "resampled onto each scene's grid window by window, slope computed on the fly."),
    tta: str = options.tta(),
    adapt_bn: bool = options.adapt_bn(),
    adapt_bn_windows: int = options.adapt_bn_windows("windows of the scenes"),
    scene_list: Path | None = options.scene_list(),
    workers: int | None = options.workers(),
    scheduler: str | None = options.scheduler(),
    threads_per_worker: int = options.threads_per_worker(),
    band_rows: int | None = options.band_rows(),
    resume: bool = options.resume(),
    as_json: bool = options.json_flag("Print a JSON summary on stdout."),
    quiet: bool = options.quiet("No progress bar."),
) -> None:
    """Map landslides in GeoTIFF scenes into a GeoPackage (sliding windows, seamless blending).

    Writes layers `landslides` (id, scene, area_m2, perimeter_m, mean_prob, max_prob),
    `footprints` and the table `runs`, in the first scene's CRS, with a default QGIS style.
    """
    from landslide_cli.backends import check_backend
    from landslide_cli.predict import predict_scenes

    check_backend(backend)
    if tile is not None and tile < MIN_TILE:
        raise LandslideError(f"--tile {tile}: must be at least {MIN_TILE}")
    quiet = quiet or common.state.quiet
    from landslide_cli.predict.inputs import expand_inputs

    # globs, @FILE / --scene-list and STAC ItemCollections -> one entry per scene
    scenes = expand_inputs(scenes or [], scene_list=scene_list)
    run_predict, regional = predict_scenes, {}
    if workers is not None or scheduler is not None or resume:
        from landslide_cli.predict.distributed import predict_distributed as run_predict

        regional = {"workers": workers, "scheduler": scheduler, "resume": resume,
                    "threads_per_worker": threads_per_worker, "band_rows": band_rows}
    summary = run_predict(
        scenes, out, model=model, backend=backend, device=device, precision=precision,
        tile=tile, overlap=overlap,
        batch_size=batch_size, bands=bands, threshold=threshold, min_area=min_area,
        simplify=simplify, prob_out=prob_out, prob_dtype=prob_dtype, crs=crs,
        quicklook=quicklook, overwrite=overwrite, reporter=cli_reporter(quiet),
        resample_to=resample_to, dem=dem,
        rescale=rescale, nodata=nodata,
        tta=tta, adapt_bn=adapt_bn, adapt_bn_windows=adapt_bn_windows,
        **regional,
    )
    if as_json:
        common.print_json(summary.to_dict())
        _exit_if_failed(summary)
        return
    if not quiet:
        from rich.table import Table

        table = Table(title=None, show_edge=False)
        for col in ("scene", "tiles", "polygons", "landslide area m²", "seconds"):
            table.add_column(col, justify="left" if col == "scene" else "right")
        for s in summary.scenes:
            table.add_row(s.scene, str(s.tiles), str(s.polygons),
                          f"{s.landslide_area_m2:,.0f}", f"{s.seconds:.1f}")
        common.out.print(table)
    common.out.print(
        f"wrote {summary.out}: {summary.polygons} landslide polygons from {summary.tiles} tiles "
        f"in {summary.seconds:.1f} s with model {summary.model} "
        f"({summary.backend} {summary.precision} on {summary.device})", highlight=False)
    for path in [*summary.prob_out, *summary.quicklooks]:
        common.out.print(f"wrote {path}", highlight=False)
    _exit_if_failed(summary)


def _exit_if_failed(summary: object) -> None:
    """A non-zero exit when scenes of a regional run failed (the rest was written)."""
    failed = getattr(summary, "failed", None)
    if failed:
        names = ", ".join(f["scene"] for f in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise LandslideError(f"{len(failed)} scene(s) failed and were left out: {names} "
                             "(rerun with --resume to retry only them)")
