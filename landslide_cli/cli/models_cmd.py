"""`landslide models` and `landslide info`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from landslide_cli.cli import common, options


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List registered backbones, decoders, teachers and shipped models."""
    from landslide_cli.model_info import list_models  # torch: only for this command

    data = list_models()
    if as_json:
        common.print_json(data)
        return
    for section, rows in data.items():
        table = Table(title=section, title_justify="left", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("details")
        for row in rows:
            details = ", ".join(f"{k}={v}" for k, v in row.items() if k != "name")
            table.add_row(row["name"], details)
        if not rows:
            table.add_row("-", "none")
        common.out.print(table)


def info(
    model: str = typer.Argument(..., help="Checkpoint path, shipped model name, or spec such as "
                                          "pvt_v2_b0+dcf."),
    size: int = typer.Option(512, "--size", min=32, help="Input size for the FLOP count."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model's card, parameter counts and GFLOPs."""
    from landslide_cli.model_info import model_info  # torch: only for this command

    data = model_info(model, size=size)
    if as_json:
        common.print_json(data)
        return
    table = Table(title=f"model {model}", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    arch = data["architecture"]
    table.add_row("architecture", f"{arch['backbone']} + {arch['decoder']} "
                                  f"(width {arch['decoder_width']}, {arch['num_classes']} classes)")
    for part, n in data["params"].items():
        table.add_row(f"params {part}", f"{n:,} ({n / 1e6:.2f} M)")
    table.add_row("GFLOPs @512²", f"{data['gflops_512']:.2f}")
    if "gflops" in data:
        table.add_row(f"GFLOPs @{size}²", f"{data['gflops']:.2f}")
    for key, value in data["card"].items():
        if key != "architecture" and value not in ({}, [], "", None):
            table.add_row(key, str(value))
    common.out.print(table)


def fuse(
    model: str | None = typer.Argument(
        None, show_default=False,
        help="Checkpoint (.safetensors) path or shipped model name; omitted: the default model."),
    out: Path = typer.Option(..., "--out", "-o", help="The .safetensors file to write.",
                             show_default=False),
    index: str = typer.Option("rg", "--index", help="Colour index to fuse with (a "
                              "baseline name: rg, exr, exg, brightness)."),
    weight: float = typer.Option(..., "--weight", "-w", min=0.0, max=1.0, show_default=False,
                                 help="Weight of the index: probability = (1 - w) * model + "
                                      "w * index."),
    threshold: float = typer.Option(..., "--threshold", min=0.0, max=1.0, show_default=False,
                                    help="Decision threshold of the fused model."),
    name: str | None = typer.Option(None, "--name", show_default=False,
                                    help="Model name in the metadata (default: MODEL+INDEX)."),
    note: str = typer.Option("", "--note", help="How weight and threshold were chosen "
                             "(stored as the threshold source)."),
    overwrite: bool = options.overwrite("Replace an existing --out."),
    as_json: bool = options.json_flag("Print the result as JSON."),
) -> None:
    """Fuse a segmentation model with a colour index (late fusion, same weights)."""
    from landslide_cli.zoo.fusion import fuse_checkpoint  # torch: only for this command

    result = fuse_checkpoint(model, out, index=index, weight=weight, threshold=threshold,
                             name=name, note=note, overwrite=overwrite)
    if as_json:
        common.print_json(result)
        return
    f = result["fusion"]
    common.out.print(f"wrote {result['out']}: {result['name']} = (1 - {f['weight']:g}) x model "
                     f"+ {f['weight']:g} x baseline:{f['index']}, threshold "
                     f"{result['threshold']:g}")
