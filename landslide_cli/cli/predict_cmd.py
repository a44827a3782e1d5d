"""`landslide predict` (not built yet)."""

from __future__ import annotations

import typer

from landslide_cli.cli.stubs import not_built


def command(ctx: typer.Context) -> None:
    """Not built yet."""
    not_built("predict")
