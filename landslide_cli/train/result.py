"""What a training run returns to a Python caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    run_dir: Path
    #: epochs completed so far (including those of earlier invocations of a resumed run)
    epochs_done: int
    #: False when ``stop_after`` ended this invocation early (continue with ``--resume``)
    finished: bool
    #: ``last`` (and for segmentation ``best``) checkpoint paths
    outputs: dict[str, Path] = field(default_factory=dict)
    #: best validation score (segmentation: landslide IoU), if any
    best: float | None = None
    #: rows of metrics.csv
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_fit(cls, data: dict[str, Any]) -> TrainResult:
        return cls(run_dir=Path(data["run_dir"]), epochs_done=int(data["epochs_done"]),
                   finished=bool(data["finished"]), outputs=dict(data.get("outputs") or {}),
                   best=data.get("best"), history=list(data.get("history") or []))
