"""Fixtures for predict tests (plain helpers live in _predict_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _predict_helpers import make_checkpoint

from landslide_cli.preprocess import InputSpec


@pytest.fixture(scope="session")
def s2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random model for 16-bit reflectance RGB (scale 10000)."""
    spec = InputSpec(bands=["red", "green", "blue"], scale=10000.0, dtype="uint16")
    return make_checkpoint(tmp_path_factory.mktemp("s2ckpt") / "tiny_s2.safetensors",
                           input_spec=spec)
