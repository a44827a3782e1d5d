"""`landslide train distill|segment` (not built yet)."""

from __future__ import annotations

import typer

from landslide_cli.cli.stubs import not_built

app = typer.Typer(help="Train models: KDA distillation (phase 1) and segmentation (phase 2).",
                  no_args_is_help=True)


@app.command("distill")
def distill() -> None:
    """Phase 1: distil a frozen DINOv2 teacher into a PVT student (KDA). Not built yet."""
    not_built("train distill")


@app.command("segment")
def segment() -> None:
    """Phase 2: train PVT + DCF decoder for landslide segmentation. Not built yet."""
    not_built("train segment")
