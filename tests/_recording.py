"""A Reporter that records what a library call reports (a module with a unique name, so
test files in any folder can import it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordedProgress:
    total: int
    label: str
    advanced: int = 0
    labels: list[str] = field(default_factory=list)
    closed: bool = False

    def advance(self, n: int = 1) -> None:
        assert not self.closed, "advance after close"
        self.advanced += n

    def describe(self, text: str) -> None:
        self.labels.append(text)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> RecordedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RecordingReporter:
    infos: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bars: list[RecordedProgress] = field(default_factory=list)

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def progress(self, total: int, label: str) -> RecordedProgress:
        bar = RecordedProgress(total, label)
        self.bars.append(bar)
        return bar
