"""The CLI's :class:`~landslide_cli.reporting.Reporter`: Rich progress bars and warnings on
stderr (``common.err``); ``--quiet`` hides status lines and bars, never warnings."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from landslide_cli.cli import common
from landslide_cli.reporting import NullReporter, ProgressHandle


class RichProgress:
    """A compact bar on stderr: name, bar, M/N, tiles/s, ETA. Left in place when it reached
    its total; removed when closed before (an error or an interrupt)."""

    def __init__(self, console: Console, total: int, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column
        from rich.text import Text

        class Speed(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text("" if speed is None else f"{speed:.2f} tiles/s", style="cyan")

        name = Column(max_width=24, no_wrap=True, overflow="ellipsis")
        self._bar: Any = Progress(TextColumn("{task.description}", table_column=name),
                                  BarColumn(bar_width=16), MofNCompleteColumn(), Speed(),
                                  TextColumn("ETA"), TimeRemainingColumn(),
                                  console=console, transient=False)
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def close(self) -> None:
        if self._bar is not None:
            if not self._bar.finished:  # an error or interrupt: the one-line error stays alone
                self._bar.live.transient = True
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RichReporter:
    """Status lines and progress on ``console`` unless ``quiet``; ``warning:`` lines always."""

    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console if console is not None else common.err

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg, highlight=False)

    def warn(self, msg: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False)

    def progress(self, total: int, label: str) -> ProgressHandle:
        if self.quiet:
            return NullReporter().progress(total, label)
        return RichProgress(self.console, total, label)


def cli_reporter(quiet: bool = False) -> RichReporter:
    """The reporter for one command: quiet with the global ``-q`` or the command's own."""
    return RichReporter(quiet=bool(quiet or common.state.quiet))
