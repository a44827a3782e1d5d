"""User-facing errors.

Every problem a user can cause (bad path, wrong band count, corrupt checkpoint...) is raised as
a :class:`LandslideError`. The CLI prints its message as a single line and exits with
``exit_code``; library users catch it like any other exception.
"""

from __future__ import annotations


class LandslideError(Exception):
    """An error caused by the user's input or environment, shown as one line."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class CheckpointError(LandslideError):
    """A checkpoint file is missing, corrupt, foreign or incompatible."""


class DataError(LandslideError):
    """A data set or raster is missing, unpaired or malformed."""


class WeightsUnavailable(LandslideError):
    """Pretrained weights are needed but cannot be obtained (offline, no file)."""
