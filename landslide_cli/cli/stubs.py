"""Placeholder for subcommands that are not built yet (exit code 2)."""

from __future__ import annotations

from landslide_cli.errors import NotBuiltYet


def not_built(name: str) -> None:
    raise NotBuiltYet(f"`landslide {name}` is not built yet in this version")
