"""Shared CLI state: consoles, verbosity, and a few reusable option types."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from rich.console import Console


@dataclass
class State:
    verbose: int = 0
    quiet: bool = False


state = State()
#: results (tables, JSON) go to stdout
out = Console(soft_wrap=True)
#: progress, warnings and errors go to stderr
err = Console(stderr=True, soft_wrap=True)

log = logging.getLogger("landslide")


def configure_logging() -> None:
    level = logging.WARNING
    if state.quiet:
        level = logging.ERROR
    elif state.verbose >= 2:
        level = logging.DEBUG
    elif state.verbose == 1:
        level = logging.INFO
    from rich.logging import RichHandler

    root = logging.getLogger("landslide")
    root.handlers[:] = [RichHandler(console=err, show_time=False, show_path=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


def info(message: str) -> None:
    """A status line on stderr, hidden by --quiet."""
    if not state.quiet:
        err.print(message, highlight=False)


def warn(message: str) -> None:
    """A one-line warning on stderr (shown even with --quiet)."""
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))
