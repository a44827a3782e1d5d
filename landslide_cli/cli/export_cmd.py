"""`landslide export`: a checkpoint -> a self-describing ONNX file, checked for parity."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from landslide_cli.cli import common, options
from landslide_cli.cli.reporting import cli_reporter
from landslide_cli.errors import LandslideError

#: smallest --tile an export accepts (the library's limit, checked here before any work)
MIN_TILE = 32


def command(
    model: str | None = typer.Argument(
        None, show_default=False,
        help="Checkpoint (.safetensors) path or shipped model name; omitted: the default model."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write.",
                             show_default=False),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (13-20)."),
    fp16: bool = typer.Option(False, "--fp16", help="Float16 weights and compute (inputs and "
                              "outputs stay float32)."),
    tile: int | None = typer.Option(None, "--tile", show_default=False,
                                    help="Tile size baked into the graph, at least 32 "
                                         "(default: the checkpoint's tile)."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch",
                                       help="Dynamic batch axis, or batch fixed to 1."),
    overwrite: bool = options.overwrite("Replace an existing --out."),
    parity: bool = typer.Option(True, "--parity/--no-parity",
                                help="Compare ONNX Runtime with PyTorch before writing."),
    parity_data: Path | None = typer.Option(
        None, "--parity-data", show_default=False,
        help="Image or folder of real tiles for the parity check (default: "
             "$LANDSLIDE_SHARED/data/landslides when that variable is set, else none)."),
    optimize: bool = typer.Option(
        True, "--optimize/--no-optimize",
        help="Export-time rewrites with the same math that ONNX Runtime runs faster "
             "(checked by the parity test)."),
    exporter: str = options.exporter(),
    quantize: str | None = typer.Option(
        None, "--quantize", metavar="<int8>", show_default=False,
        help="Also quantize: int8 = ONNX Runtime static quantization (QDQ), calibrated on "
             "--calibration-data or the tiles shipped in the package; written only if its "
             "masks match fp32 (IoU >= 0.9)."),
    calibration_data: Path | None = typer.Option(
        None, "--calibration-data", show_default=False,
        help="Image or folder of tiles for the int8 calibration (default: the shipped RGB "
             "tiles)."),
    device: str = options.device("cpu", help="Device for tracing and the PyTorch reference: "
                                 "cpu, cuda, cuda:N, auto."),
    as_json: bool = options.json_flag("Print the report as JSON."),
) -> None:
    """Export a segmentation model to ONNX (probabilities, fixed tile, metadata embedded)."""
    if tile is not None and tile < MIN_TILE:
        raise LandslideError(f"--tile {tile} is too small; use at least {MIN_TILE} pixels")
    if quantize is not None:
        _export_int8(model, out, quantize=quantize, calibration_data=calibration_data,
                     as_json=as_json, opset=opset, fp16=fp16, tile=tile,
                     dynamic_batch=dynamic_batch, check_parity=parity, device=device,
                     exporter=exporter, optimize=optimize, parity_data=parity_data,
                     overwrite=overwrite)
        return
    from landslide_cli.export import export_onnx

    report = export_onnx(
        model, out, opset=opset, fp16=fp16, tile=tile, dynamic_batch=dynamic_batch,
        check_parity=parity, device=device, overwrite=overwrite, exporter=exporter,
        optimize=optimize,
        parity_data=parity_data, reporter=cli_reporter(),
    )
    if as_json:
        common.print_json(report.to_dict())
        return
    common.out.print(f"wrote {report.path}", highlight=False, overflow="ignore")
    table = Table(title=f"exported {report.model_name}", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("size", f"{report.size_bytes / 1e6:.2f} MB ({report.size_bytes:,} bytes)")
    table.add_row("opset", f"{report.opset} ({report.exporter} exporter)")
    table.add_row("input", f"image (N, {len(report.bands)}, {report.tile}, {report.tile}) "
                           f"float32, batch {'dynamic' if report.dynamic_batch else 1}")
    table.add_row("output", f"probability (N, {report.tile}, {report.tile}) float32")
    table.add_row("precision", report.precision)
    table.add_row("rewrites", "; ".join(report.rewrites) or "none (--no-optimize)")
    if report.parity is None:
        table.add_row("parity", "not checked (--no-parity)")
    else:
        p = report.parity
        table.add_row("parity random", f"max |Δp| = {p.random_max_diff:.2e} "
                                       f"(≤ {p.tolerance:g}) on {p.provider}")
        if p.real_max_diff is None:
            table.add_row("parity real", f"n/a: {p.real_note}")
        else:
            table.add_row("parity real", f"max |Δp| = {p.real_max_diff:.2e} "
                                         f"(≤ {p.tolerance:g}) on {len(p.real_sources)} tile(s)")
    table.add_row("source", f"{report.source_path} (sha256 {report.source_sha256[:12]}…)")
    table.add_row("onnx sha256", report.onnx_sha256)
    table.add_row("time", f"{report.seconds:.1f} s")
    common.out.print(table)


def _export_int8(model: str | None, out: Path, *, quantize: str,
                 calibration_data: Path | None, as_json: bool, overwrite: bool,
                 **export_options: object) -> None:
    """``--quantize int8``: the fp32 export, then its checked int8 quantization into ``out``."""
    from landslide_cli.quantize import check_quantize, export_int8

    check_quantize(quantize)
    fp32, report = export_int8(model, out, calibration_data=calibration_data,
                               overwrite=overwrite, reporter=cli_reporter(), **export_options)
    if as_json:
        common.print_json({"export": fp32.to_dict(), "quantize": report.to_dict()})
        return
    c = report.check
    common.out.print(f"wrote {report.path} (int8, {report.size_bytes / 1e6:.2f} MB; fp32 "
                     f"{report.source_size_bytes / 1e6:.2f} MB): {c.describe()}",
                     highlight=False, overflow="ignore")
