"""Pickle-free serialization of training state (for ``--resume``).

A training state is a nested structure of dicts, lists, tuples, scalars, strings, tensors and
numpy arrays (model/optimizer/scheduler/scaler state dicts, RNG states, counters). It is stored as
ONE ``.safetensors`` file: every tensor becomes a safetensors entry named after its path in the
structure, and the structure itself (with ``{"__tensor__": key}`` placeholders) is JSON in the
safetensors header metadata. Loading never unpickles anything.

JSON encoding of values JSON cannot represent directly:

* tensor -> ``{"__tensor__": "<key>"}`` (the key of the safetensors entry)
* tuple -> ``{"__tuple__": [...]}``
* dict with non-string keys (e.g. optimizer ``state`` keyed by int) ->
  ``{"__items__": [[key, value], ...]}``
* numpy array -> ``{"__ndarray__": [...], "dtype": "uint32", "shape": [...]}``
* numpy scalar -> the Python scalar
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landslide_cli.checkpoint import atomic_write
from landslide_cli.errors import CheckpointError

FORMAT = "landslide-train-state"
FORMAT_VERSION = "1"
_SPECIAL = ("__tensor__", "__tuple__", "__items__", "__ndarray__")


def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Turn ``obj`` into JSON-able data, moving tensors into ``tensors`` (keyed by path)."""
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        if key in tensors:
            raise ValueError(f"duplicate tensor key {key}")
        # clone: safetensors refuses tensors that share storage
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _SPECIAL for k in obj):
            return {k: encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        items = []
        for i, (k, v) in enumerate(obj.items()):
            items.append([encode(k, tensors, f"{path}.k{i}"), encode(v, tensors, f"{path}.{k}")])
        return {"__items__": items}
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} at {path or 'root'}")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"training state lacks tensor {key}")
            return tensors[key]
        if "__tuple__" in obj:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in obj["__items__"]}
        if "__ndarray__" in obj:
            arr = np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
            return arr.reshape(obj["shape"])
        return {k: decode(v, tensors) for k, v in obj.items()}
    return obj


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (safetensors tensors + JSON structure)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = encode(state, tensors)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "state": json.dumps(structure, allow_nan=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), suffix=".tmp")
    return path


def load_state(path: str | Path, *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by :func:`save_state`; problems are one-line CheckpointErrors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            header = handle.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a landslide training state")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        structure = json.loads(header["state"])
    except CheckpointError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"{path}: unreadable training state ({first})") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: training state version {header.get('format_version')!r} "
                              "is not supported")
    return decode(structure, tensors)


# --------------------------------------------------------------------------- RNG states

def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and (if present) CUDA generator states."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only when both sides have it)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), int(np_state[2]),
                         int(np_state[3]), float(np_state[4])))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i].to(torch.uint8).cpu(), i)
