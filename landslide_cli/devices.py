"""Device selection shared by every command (``--device auto|cpu|cuda[:N]``)."""

from __future__ import annotations

import torch

from landslide_cli.errors import LandslideError


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LandslideError("--device cuda was requested but no CUDA device is available")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LandslideError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    raise LandslideError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
