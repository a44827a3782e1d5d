"""Fixtures for the data-layer tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _tiles import build_cas_tree


@pytest.fixture
def cas_tree(tmp_path: Path) -> Callable[..., Path]:
    """``cas_tree(missing_mask=False)`` builds a miniature CAS tree under tmp_path/CAS."""

    def build(**kwargs: object) -> Path:
        return build_cas_tree(tmp_path / "CAS", **kwargs)  # type: ignore[arg-type]

    return build
