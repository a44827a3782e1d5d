"""Test-time augmentation (``--tta``): landslide probabilities averaged over dihedral transforms.

:func:`with_tta` wraps any :class:`~landslide_cli.backends.Backend` (PyTorch, ONNX Runtime, a
baseline or a stand-in): each batch goes through the backend once per transform of the chosen
mode, every probability map is transformed back onto the input's pixel grid, and the maps are
averaged (probabilities, not logits, so every backend, whatever it returns internally, is
treated the same). Windowing, stitching and thresholding never notice the difference.

Modes (:data:`TTA_MODES`):

* ``none``: the backend itself, unchanged (the default);
* ``flips``: identity, left-right flip, up-down flip and both (= a half turn): 4 passes;
* ``d4``: the 8 symmetries of the square: quarter turns 0-3, each with and without a
  left-right flip: 8 passes.

A quarter turn swaps height and width, so on a non-square batch (``eval`` runs each tile at its
native size, which need not be square) only the transforms that keep the shape are used: ``d4``
then runs the 4 transforms of ``flips``. ``predict`` windows are always square.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from landslide_cli.errors import LandslideError
from landslide_cli.registry import Registry


@dataclass(frozen=True)
class Dihedral:
    """One symmetry of the square on the last two axes: an optional left-right flip, then
    ``k`` quarter turns (counter-clockwise, as :func:`numpy.rot90`)."""

    k: int
    flip: bool

    @property
    def name(self) -> str:
        if self.flip and self.k == 2:
            return "vflip"  # a left-right flip then a half turn is an up-down flip
        turn = f"rot{90 * self.k}" if self.k else ""
        return "+".join(p for p in ("hflip" if self.flip else "", turn) if p) or "identity"

    @property
    def keeps_shape(self) -> bool:
        """Whether a non-square ``(H, W)`` stays ``(H, W)`` (an even number of turns)."""
        return self.k % 2 == 0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The transformed array (a view; axes -2, -1 are height and width)."""
        if self.flip:
            x = x[..., ::-1]
        return np.rot90(x, self.k, axes=(-2, -1)) if self.k else x

    def invert(self, y: np.ndarray) -> np.ndarray:
        """Undo :meth:`apply` (a view)."""
        if self.k:
            y = np.rot90(y, -self.k, axes=(-2, -1))
        return y[..., ::-1] if self.flip else y


IDENTITY = Dihedral(0, False)
#: identity, left-right flip, up-down flip (= flip then a half turn), both (= a half turn)
FLIPS = (IDENTITY, Dihedral(0, True), Dihedral(2, True), Dihedral(2, False))
#: all 8 symmetries of the square
D4 = tuple(Dihedral(k, flip) for flip in (False, True) for k in range(4))

#: name -> ``() -> tuple[Dihedral, ...]``; info: ``description``
TTA_MODES: Registry[Callable[[], tuple[Dihedral, ...]]] = Registry("test-time augmentation")
TTA_MODES.add("none", lambda: (IDENTITY,), aliases=("off", "identity"),
              description="no augmentation: one forward pass per batch")
TTA_MODES.add("flips", lambda: FLIPS, aliases=("flip",),
              description="identity, left-right, up-down and both flips: 4 passes")
TTA_MODES.add("d4", lambda: D4, aliases=("dihedral",),
              description="quarter turns 0-3, each with and without a flip: 8 passes (on "
                          "non-square tiles only the 4 that keep the shape)")

NONE = "none"


def tta_names() -> list[str]:
    """``["none", "flips", "d4"]``: what ``--tta`` accepts."""
    return TTA_MODES.names()


def check_tta(mode: str) -> str:
    """The registered name of ``mode``, else a one-line error listing the choices."""
    return TTA_MODES.resolve(str(mode or NONE))


def transforms(mode: str, height: int | None = None, width: int | None = None
               ) -> tuple[Dihedral, ...]:
    """The transforms of ``mode``; for a non-square ``height x width`` only those that keep
    the shape."""
    chosen = TTA_MODES.build(mode)
    if height is not None and width is not None and height != width:
        chosen = tuple(t for t in chosen if t.keeps_shape)
    return chosen


class TTABackend:
    """A backend whose :meth:`predict` is the mean probability over the transforms of a mode.

    Every other attribute (``name``, ``device``, ``spec``, ``threshold``, ``model_name``,
    ``model_sha256``, ``metadata``, ``fixed_tile``, ``model_path``, ...) is the wrapped
    backend's, so reports and run metadata still name the real runtime; :attr:`tta` names the
    mode and :attr:`inner` is the wrapped backend.
    """

    def __init__(self, backend: Any, mode: str) -> None:
        self.inner = backend
        self.tta = check_tta(mode)
        self.transforms = transforms(self.tta)

    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":  # not set yet (copy/pickle): never recurse
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"TTABackend({self.inner!r}, tta={self.tta!r})"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) normalized float32 -> (N, H, W) float32: the mean of the wrapped
        backend's probabilities over the transforms (those that keep a non-square shape)."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            return np.asarray(self.inner.predict(batch), dtype=np.float32)  # its own error
        h, w = batch.shape[-2:]
        chosen = transforms(self.tta, h, w)
        total: np.ndarray | None = None
        for t in chosen:
            moved = t.apply(batch)
            prob = np.asarray(self.inner.predict(np.ascontiguousarray(moved)),
                              dtype=np.float32)
            if prob.shape != (moved.shape[0], *moved.shape[-2:]):
                raise LandslideError(f"test-time augmentation: the model returned shape "
                                     f"{prob.shape} for a batch of shape {moved.shape}")
            back = t.invert(prob)
            total = back.astype(np.float64) if total is None else total + back
        assert total is not None
        return (total / len(chosen)).astype(np.float32)


def with_tta(backend: Any, mode: str | None) -> Any:
    """``backend`` wrapped for test-time augmentation ``mode``; ``none`` (or ``None``) returns
    ``backend`` itself, so the default path is unchanged."""
    name = check_tta(mode or NONE)
    if name == NONE:
        return backend
    return TTABackend(backend, name)


def tta_of(backend: Any) -> str:
    """The test-time augmentation mode a backend runs (``"none"`` when not wrapped)."""
    return str(getattr(backend, "tta", NONE)) if isinstance(backend, TTABackend) else NONE
