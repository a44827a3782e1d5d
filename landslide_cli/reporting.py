"""How the library tells its caller what it is doing: one small interface, no terminal code.

Library functions (``predict_scenes``, ``evaluate``, ``export_onnx``, the training phases)
take ``reporter: Reporter | None = None``. ``None`` means :class:`NullReporter`: called from
Python, the library prints nothing. :class:`LoggingReporter` sends the same events to the
``logging`` logger ``"landslide"``; the CLI passes a Rich reporter (``landslide_cli.cli``)
that draws progress bars and ``warning:`` lines on stderr. This module imports nothing
outside the standard library.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = [
    "LoggingReporter",
    "NullReporter",
    "ProgressHandle",
    "QuietReporter",
    "Reporter",
    "as_reporter",
]


@runtime_checkable
class ProgressHandle(Protocol):
    """One running progress display, from :meth:`Reporter.progress`."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the total are done."""

    def describe(self, text: str) -> None:
        """Replace the label (e.g. the scene being processed, or a status line)."""

    def close(self) -> None:
        """The work is over (also on error); safe to call twice."""

    def __enter__(self) -> ProgressHandle: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class Reporter(Protocol):
    """Where status lines, warnings and progress of a library call go."""

    def info(self, msg: str) -> None:
        """A status line (hidden by ``--quiet`` in the CLI)."""

    def warn(self, msg: str) -> None:
        """A one-line warning (the CLI shows it even with ``--quiet``)."""

    def progress(self, total: int, label: str) -> ProgressHandle:
        """Start a progress display of ``total`` units named ``label``."""


class ProgressBase:
    """A do-nothing progress handle with the context-manager plumbing; handles subclass it and
    override what they show."""

    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> ProgressBase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class NullReporter:
    """Says nothing: the library default."""

    def info(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        pass

    def progress(self, total: int, label: str) -> ProgressHandle:
        return ProgressBase()


class _LoggedProgress(ProgressBase):
    def __init__(self, logger: logging.Logger, total: int, label: str) -> None:
        self.logger, self.total, self.label, self.done = logger, total, label, 0
        self.closed = False

    def advance(self, n: int = 1) -> None:
        self.done += n

    def describe(self, text: str) -> None:
        self.label = text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.logger.debug("%s: %d/%d", self.label, self.done, self.total)


class LoggingReporter:
    """To the ``logging`` logger ``"landslide"``: info -> INFO, warn -> WARNING, and one
    DEBUG line per progress display when it closes."""

    def __init__(self, logger: logging.Logger | str = "landslide") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def info(self, msg: str) -> None:
        self.logger.info("%s", msg)

    def warn(self, msg: str) -> None:
        self.logger.warning("%s", msg)

    def progress(self, total: int, label: str) -> ProgressHandle:
        return _LoggedProgress(self.logger, total, label)


class QuietReporter:
    """Only the warnings of ``reporter`` (what ``--quiet`` keeps): no status lines, no
    progress."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def info(self, msg: str) -> None:
        pass

    def warn(self, msg: str) -> None:
        self.reporter.warn(msg)

    def progress(self, total: int, label: str) -> ProgressHandle:
        return ProgressBase()


def as_reporter(reporter: Reporter | None) -> Reporter:
    """``reporter``, or a :class:`NullReporter` for ``None``."""
    return NullReporter() if reporter is None else reporter
