"""Window layout, blending weights and a streaming stitcher with overlap-margin accumulators.

Layout
    Along each axis of length ``L`` the windows of size ``T`` start at evenly spread integer
    offsets ``0 = s_0 < s_1 < ... < s_{n-1} = L - T`` with ``n = ceil((L - T) / S) + 1`` and
    nominal stride ``S = round(T * (1 - overlap))``. Spreading the shift-back of the last window
    over the whole row keeps every overlap at least ``T - S`` and at most slightly more, instead
    of one much larger overlap at the scene's far edge. A scene shorter than ``T`` gets one
    window starting at 0 (the reader pads it to ``T``).

Weights
    Each window's 1-D weight is 1 in its interior and a raised-cosine ramp over exactly the
    pixels it shares with its neighbour: ``sin^2`` going up where the previous window ends and
    ``cos^2`` going down where the next one begins. Two overlapping ramps therefore add up to 1
    (a partition of unity), every weight is strictly positive (``sin^2(pi/2 * 0.5/O) > 0``)
    and windows on the scene border keep full weight up to the border. The weights are
    divided by their (analytic, separable) per-pixel sum, so the stitched value is a convex
    combination of the windows' predictions and needs no weight accumulator at all.

Stitching order
    Windows are added in row-major order. Window ``(r, c)`` owns the *final block*
    ``rows [s_r, s_{r+1}) x cols [t_c, t_{c+1})``: once it has been added no later window
    touches that block, so :meth:`Stitcher.add` returns it finished. Only two overlap margins
    are kept: the part of the current window that the next window in the row will also cover
    (``T x overlap`` pixels) and the band of rows that the next row of windows will also cover
    (``overlap x scene width``). Peak accumulator memory is
    ``4 bytes * (O_y * W + T * O_x + T * T)`` for overlaps ``O`` (~8 MB for a 16384-pixel-wide
    scene at ``T=512``, 25 %), independent of the scene's height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from landslide_cli.errors import LandslideError


def axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window start offsets along one axis (see module docstring)."""
    if length <= 0:
        raise LandslideError(f"cannot lay out windows over an empty axis (length {length})")
    if tile <= 0:
        raise LandslideError(f"tile size must be positive, got {tile}")
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def _ramp_up(n: int) -> np.ndarray:
    k = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.sin(0.5 * np.pi * k) ** 2


@dataclass
class AxisLayout:
    """Windows along one axis: starts, in-scene extents, final ranges and normalized weights."""

    length: int
    tile: int
    starts: list[int]
    weights: list[np.ndarray] = field(repr=False, default_factory=list)

    @classmethod
    def build(cls, length: int, tile: int, overlap: float) -> AxisLayout:
        starts = axis_starts(length, tile, overlap)
        layout = cls(length, tile, starts)
        raw = [layout._raw_weight(i) for i in range(len(starts))]
        total = np.zeros(length, dtype=np.float64)
        for i, w in enumerate(raw):
            total[starts[i]:starts[i] + w.size] += w
        layout.weights = [
            (w / total[starts[i]:starts[i] + w.size]).astype(np.float32) for i, w in enumerate(raw)
        ]
        return layout

    def __len__(self) -> int:
        return len(self.starts)

    def extent(self, i: int) -> int:
        """Pixels of window ``i`` inside the scene (``tile`` unless the scene is shorter)."""
        return min(self.tile, self.length - self.starts[i])

    def final_end(self, i: int) -> int:
        """End of the range that window ``i`` finalizes (start of the next window)."""
        return self.starts[i + 1] if i + 1 < len(self.starts) else self.length

    def _raw_weight(self, i: int) -> np.ndarray:
        ext = self.extent(i)
        w = np.ones(ext, dtype=np.float64)
        if i > 0:  # shared with the previous window: ramp up
            o = self.starts[i - 1] + self.extent(i - 1) - self.starts[i]
            if o > 0:
                w[:o] *= _ramp_up(o)
        if i + 1 < len(self.starts):  # shared with the next window: ramp down
            o = self.starts[i] + ext - self.starts[i + 1]
            if o > 0:
                w[ext - o:] *= _ramp_up(o)[::-1]
        return w


@dataclass
class GridLayout:
    """The 2-D window grid of one scene (windows ``tile`` rows by ``tile_x`` columns;
    ``tile_x`` defaults to ``tile``: square windows)."""

    height: int
    width: int
    tile: int
    overlap: float
    tile_x: int | None = None
    rows: AxisLayout = field(init=False)
    cols: AxisLayout = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise LandslideError(f"overlap must be in [0, 1), got {self.overlap}")
        self.rows = AxisLayout.build(self.height, self.tile, self.overlap)
        self.cols = AxisLayout.build(self.width, self.tile_x or self.tile, self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def windows(self):
        """``(r, c, y0, x0, h, w)`` for each window in row-major order (in-scene extent)."""
        for r in range(len(self.rows)):
            y0, h = self.rows.starts[r], self.rows.extent(r)
            for c in range(len(self.cols)):
                yield r, c, y0, self.cols.starts[c], h, self.cols.extent(c)

    def weight(self, r: int, c: int) -> np.ndarray:
        """Normalized 2-D blending weight of window ``(r, c)`` (in-scene extent)."""
        return self.rows.weights[r][:, None] * self.cols.weights[c][None, :]

    def accumulator_bytes(self) -> int:
        """Upper bound of the stitcher's float32 accumulators for this layout."""
        rows, cols = self.rows, self.cols
        carry_y = max((rows.starts[i] + rows.extent(i) - rows.final_end(i)
                       for i in range(len(rows))), default=0)
        carry_x = max((cols.starts[i] + cols.extent(i) - cols.final_end(i)
                       for i in range(len(cols))), default=0)
        t = min(self.tile, self.height), min(self.tile_x or self.tile, self.width)
        return 4 * (carry_y * self.width + t[0] * carry_x + t[0] * t[1])


@dataclass
class Block:
    """A finished part of the stitched probability map, owned by window ``(row, col)``."""

    row: int
    col: int
    y0: int
    x0: int
    prob: np.ndarray  #: (h, w) float32; meaningless where ``valid`` is False
    valid: np.ndarray | None  #: (h, w) bool, or None when every pixel is valid
    last_row: bool
    last_col: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.prob.shape  # type: ignore[return-value]

    def valid_mask(self) -> np.ndarray:
        return np.ones(self.prob.shape, bool) if self.valid is None else self.valid


class Stitcher:
    """Blend window predictions added in row-major order; each add returns one final block."""

    def __init__(self, layout: GridLayout) -> None:
        self.layout = layout
        self._next = 0
        rows = layout.rows
        carry = max((rows.starts[i] + rows.extent(i) - rows.final_end(i)
                     for i in range(len(rows) - 1)), default=0)
        # One buffer holds both the carry coming in from the previous window row and the carry
        # going out to the next: a column range is overwritten only after it was consumed.
        self._carry = np.zeros((carry, layout.width), dtype=np.float32)
        self._carry_in: np.ndarray | None = None  # rows shared with the previous window row
        self._carry_out: np.ndarray | None = None
        self._right: np.ndarray | None = None  # columns shared with the previous window
        self.peak_bytes = 0

    def add(self, pred: np.ndarray | None, valid: np.ndarray | None = None) -> Block:
        """Add the next window's prediction ``(>=h, >=w)`` (None: skipped, counts as 0)."""
        lay = self.layout
        n_rows, n_cols = lay.shape
        if self._next >= n_rows * n_cols:
            raise RuntimeError("all windows have already been stitched")
        r, c = divmod(self._next, n_cols)
        self._next += 1
        y0, h = lay.rows.starts[r], lay.rows.extent(r)
        x0, w = lay.cols.starts[c], lay.cols.extent(c)
        fy = lay.rows.final_end(r) - y0  # rows of this window that are final after this row
        fx = lay.cols.final_end(c) - x0
        last_row, last_col = r == n_rows - 1, c == n_cols - 1

        if c == 0:
            self._carry_in = self._carry_out
            self._right = None
            self._carry_out = None if last_row else self._carry[:h - fy]

        if pred is None:
            local = np.zeros((h, w), dtype=np.float32)
        else:
            local = pred[:h, :w].astype(np.float32, copy=False) * lay.weight(r, c)
        # columns already accumulated by the previous window in this row (and its carry)
        shared = 0
        if self._right is not None:
            shared = self._right.shape[1]
            local[:, :shared] += self._right
        if self._carry_in is not None:
            ch = self._carry_in.shape[0]
            local[:ch, shared:] += self._carry_in[:, x0 + shared:x0 + w]

        block = Block(r, c, y0, x0, local[:fy, :fx],
                      None if valid is None else valid[:fy, :fx], last_row, last_col)
        if self._carry_out is not None:
            self._carry_out[:, x0:x0 + fx] = local[fy:, :fx]
        self._right = None if last_col else local[:, fx:].copy()
        held = sum(a.nbytes for a in (self._carry, self._right, local) if a is not None)
        self.peak_bytes = max(self.peak_bytes, held)
        return block

    @property
    def done(self) -> bool:
        return self._next == len(self.layout)
