"""Weight-free baseline models: colour indices behind the :class:`~landslide_cli.backends.Backend`
interface, so ``eval`` and ``predict`` run them exactly like a trained model.

A landslide scar is bare soil or rock: redder, brighter and less green than the vegetation
around it. Each baseline maps the red, green and blue bands, scaled to [0, 1] (``raw / scale``,
8-bit RGB by default), to a landslide *score* in [0, 1] that rises monotonically with its
index, so one threshold turns it into a mask. Model references ``baseline:<name>`` (case
insensitive) open them through :func:`landslide_cli.backends.open_backend`; ``landslide models``
lists them.

Default thresholds (:data:`BASELINES` ``threshold``): the best-F1 threshold on the 1000-step
grid over *all* pixels of every tile of the shared ``sichuan``, ``bijie`` and ``hokkaido``
sets pooled into one confusion matrix (92 tiles, 49.7 M pixels; best F1 and best IoU pick the same
threshold on one matrix). Those are the three sources the default model
``landslide-pvtb0-dcf-v1`` was trained on, so on ``amunet_uav`` both are out of sample.
``benchmarks/generalization.py`` recomputes them and measures the baselines leave-one-source-out
(docs/benchmarks.md). Pass ``--threshold`` to use another one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from landslide_cli import __version__
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec, float32_output
from landslide_cli.registry import Registry

#: model references starting with this open a baseline (``baseline:rg``)
PREFIX = "baseline:"
#: keeps ratios finite on black pixels (scores 0.5 there: no colour, no evidence)
EPS = 1e-6
#: how the registered default thresholds were chosen (stored in each baseline's metadata)
THRESHOLD_SOURCE = ("best F1 (= best IoU) on the 1000-step grid, all pixels of all tiles of the "
                    "shared sichuan, bijie and hokkaido sets pooled (the default model's "
                    "training sources)")

Score = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

#: name -> ``score(r, g, b) -> (N, H, W)`` with bands scaled to [0, 1]; info: ``formula``,
#: ``description``, ``threshold`` (the default decision threshold)
BASELINES: Registry[Score] = Registry("baseline")


@BASELINES.register("rg", aliases=("red_green", "rgndi"), threshold=0.516,
                    formula="((R - G) / (R + G) + 1) / 2",
                    description="normalized red-minus-green difference: bare soil and rock "
                                "are redder than vegetation")
def red_green(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    # 0.5 * ((r - g) / (r + g + EPS) + 1), the same operations in place (fewer temporaries)
    out = np.subtract(r, g)
    den = np.add(r, g)
    den += EPS
    out /= den
    out += 1.0
    out *= 0.5
    return out


@BASELINES.register("exr", aliases=("excess_red",), threshold=0.544,
                    formula="(1.4 R - G + 1) / 2.4",
                    description="excess red (Meyer et al. 1998) on [0, 1]-scaled bands")
def excess_red(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (1.4 * r - g + 1.0) / 2.4


@BASELINES.register("exg", aliases=("excess_green", "nonveg"), threshold=0.662,
                    formula="(2 - ExG) / 3, ExG = (2G - R - B) / (R + G + B)",
                    description="absence of excess green (Woebbecke et al. 1995, chromatic "
                                "coordinates): the score falls as vegetation rises")
def excess_green(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (2.0 - (2.0 * g - r - b) / (r + g + b + EPS)) / 3.0


@BASELINES.register("brightness", aliases=("bright",), threshold=0.543,
                    formula="(R + G + B) / 3",
                    description="mean brightness: fresh scars are bright")
def brightness(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (r + g + b) / 3.0


def is_baseline(ref: Any) -> bool:
    """True for a ``baseline:<name>`` model reference."""
    return isinstance(ref, str) and ref.strip().lower().startswith(PREFIX)


def baseline_name(ref: str) -> str:
    """The registered name of ``baseline:<name>`` (one-line error listing the choices)."""
    text = ref.strip()
    name = text[len(PREFIX):] if text.lower().startswith(PREFIX) else text
    if not name:
        raise LandslideError(f"model {ref!r}: name a baseline, one of: "
                             + ", ".join(f"{PREFIX}{n}" for n in BASELINES.names()))
    return BASELINES.resolve(name)


def list_baselines() -> list[dict[str, Any]]:
    """One row per registered baseline (for ``landslide models``)."""
    return [{"name": f"{PREFIX}{e.name}", **e.info} for e in BASELINES]


def _band(names: list[str], wanted: tuple[str, ...], default: int) -> int:
    for i, n in enumerate(names):
        if n.lower() in wanted:
            return i
    return default


def rgb_positions(names: list[str]) -> tuple[int, int, int]:
    """Positions of the red, green and blue bands among ``names`` (else 0, 1, 2)."""
    return (_band(names, ("red", "r", "b4"), 0), _band(names, ("green", "g", "b3"), 1),
            _band(names, ("blue", "b", "b2"), 2))


def index_score(score: Score, r: np.ndarray, g: np.ndarray, b: np.ndarray, *,
                clamped: bool = False) -> np.ndarray:
    """``score(r, g, b)`` of [0, 1]-scaled bands as float32 in [0, 1]; negative values
    (padding, odd normalization) carry no colour and count as black, NaN scores as 0 (and
    infinite ones as 0 or 1). ``clamped``: the bands have no negative values already (no
    clamped copies are made). The bands are never modified."""
    if not clamped:
        r, g, b = (np.maximum(v, 0.0) for v in (r, g, b))
    out = np.asarray(score(r, g, b), dtype=np.float32)
    if not out.flags.writeable or any(np.may_share_memory(out, v) for v in (r, g, b)):
        out = out.copy()  # (a score that returns a band or a view of one)
    np.fmax(out, 0.0, out=out)  # (fmax/fmin: NaN -> 0, -inf -> 0, +inf -> 1)
    np.fmin(out, 1.0, out=out)
    return out


def derived_channels(raw: np.ndarray, spec: InputSpec, valid: np.ndarray | None = None,
                     *, scaled: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """The colour indices ``spec.derived`` of raw ``(C, H, W)`` / ``(N, C, H, W)`` bands as
    ``(k, H, W)`` / ``(N, k, H, W)`` float32 scores in [0, 1] (0 where ``valid`` is false),
    from ``raw / spec.scale`` of the red, green and blue bands (``scaled``: ``raw`` is
    already divided by it, as the training data set's augmented tiles are). ``out``: a float32
    array of that shape to write them into (returned)."""
    div = np.float32(1.0 if scaled else spec.scale)
    out = float32_output(out, (*raw.shape[:-3], len(spec.derived), *raw.shape[-2:]),
                         "derived channels")
    bands = [np.true_divide(raw[..., i, :, :], div, dtype=np.float32)
             for i in rgb_positions(list(spec.bands))]
    for v in bands:  # (fresh arrays: clamped in place, once for every index)
        np.maximum(v, 0.0, out=v)
    mask = None if valid is None else np.asarray(valid, dtype=bool)
    for k, name in enumerate(spec.derived):
        score = index_score(BASELINES.entry(name).builder, *bands, clamped=True)
        if mask is not None:
            score *= mask
        out[..., k, :, :] = score
    return out


class BaselineBackend:
    """A colour index as a :class:`~landslide_cli.backends.Backend` (numpy, on the CPU).

    ``predict`` undoes the normalization of its own :class:`InputSpec` (by default 8-bit RGB,
    ``raw / 255``, mean 0, std 1), picks the red, green and blue bands by name (else bands 1, 2,
    3) and returns the score in [0, 1].
    """

    name = "baseline"
    fixed_tile: int | None = None
    model_path: Path | None = None

    def __init__(self, ref: str = "baseline:rg", *, device: str = "auto",
                 spec: InputSpec | None = None) -> None:
        entry = BASELINES.entry(baseline_name(ref))
        self.score: Score = entry.builder
        self.device = "cpu"  # numpy; a CUDA request has nothing to run there
        self.spec = spec or InputSpec(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
        if self.spec.num_bands < 3:
            raise LandslideError(f"{PREFIX}{entry.name} needs red, green and blue bands, "
                                 f"got {', '.join(self.spec.bands)}")
        self._rgb = rgb_positions(list(self.spec.bands))
        self.threshold = float(entry.info["threshold"])
        self.model_name = f"{PREFIX}{entry.name}"
        definition = {"name": self.model_name, "formula": entry.info["formula"],
                      "input": self.spec.to_dict()}
        self.model_sha256 = hashlib.sha256(
            json.dumps(definition, sort_keys=True).encode("utf-8")).hexdigest()
        self.metadata: dict[str, Any] = {
            "kind": "baseline",
            "name": self.model_name,
            "architecture": None,
            "input": self.spec.to_dict(),
            "threshold": self.threshold,
            "classes": ["background", "landslide"],
            "training": {"weights": None, "threshold_source": THRESHOLD_SOURCE},
            "metrics": {},
            "version": __version__,
            "extra": {"formula": entry.info["formula"],
                      "description": entry.info["description"]},
        }

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) normalized float32 -> (N, H, W) float32 score in [0, 1]."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.spec.num_bands:
            raise LandslideError(f"{self.model_name}: expected a (N, {self.spec.num_bands}, H, W) "
                                 f"batch, got shape {x.shape}")
        mean = np.asarray(self.spec.mean, dtype=np.float32)
        std = np.asarray(self.spec.std, dtype=np.float32)
        r, g, b = (x[:, i] * std[i] + mean[i] for i in self._rgb)
        return index_score(self.score, r, g, b)

    def __repr__(self) -> str:
        return f"BaselineBackend({self.model_name!r}, threshold={self.threshold})"
