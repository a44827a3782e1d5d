"""Helpers for predict tests: stand-in backends, synthetic GeoTIFFs, tiny checkpoints.

(A module with a unique name, so test files can import it; ``conftest`` names clash.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from landslide_cli.preprocess import InputSpec


class ConvStandIn:
    """A translation-equivariant stand-in model: 1x1 convolution + sigmoid (Backend protocol)."""

    name = "standin"
    device = "cpu"
    model_name = "conv1x1"
    model_sha256 = "0" * 64
    fixed_tile: int | None = None

    def __init__(self, spec: InputSpec | None = None, *, weight: list[float] | None = None,
                 bias: float = 0.0, threshold: float = 0.5) -> None:
        self.spec = spec or InputSpec()
        c = self.spec.num_bands
        self.conv = torch.nn.Conv2d(c, 1, 1)
        with torch.no_grad():
            w = torch.tensor(weight if weight is not None else [1.0] * c, dtype=torch.float32)
            self.conv.weight.copy_(w.view(1, c, 1, 1))
            self.conv.bias.fill_(bias)
        self.threshold = threshold
        self.metadata: dict[str, Any] = {}
        self.calls = 0
        self.tiles = 0

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.tiles += batch.shape[0]
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return torch.sigmoid(self.conv(x))[:, 0].numpy()

    def whole(self, raw: np.ndarray) -> np.ndarray:
        """The same model applied to a whole (C, H, W) raw scene at once."""
        return self.predict(self.spec.normalize(raw)[None])[0]


def bright_standin() -> ConvStandIn:
    """Fires (p ~ 1) where band 1 is bright (> ~128 in 8-bit), p ~ 0 where it is dark."""
    # normalized band 1 = (v/255 - 0.485)/0.229; 8 * that - 0.5 crosses 0 near v = 131
    return ConvStandIn(weight=[8.0, 0.0, 0.0], bias=-0.5)


def write_tif(path: Path, data: np.ndarray, *, crs: Any = "EPSG:32633",
              transform: Any = None, nodata: float | None = None, tiled: bool = True,
              mask: np.ndarray | None = None, **extra: Any) -> Path:
    """Write a (C, H, W) array as a GeoTIFF (optionally with an internal mask)."""
    c, h, w = data.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": c, "dtype": data.dtype.name,
        "crs": crs, "transform": transform or from_origin(500000.0, 4000000.0, 2.0, 2.0),
        "nodata": nodata, **extra,
    }
    if tiled and h >= 16 and w >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    env = {"GDAL_TIFF_INTERNAL_MASK": True} if mask is not None else {}
    with rasterio.Env(**env), rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if mask is not None:
            ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def make_checkpoint(path: Path, *, input_spec: InputSpec | None = None, width: int = 32,
                    seed: int = 0) -> Path:
    """A random-init pvt_v2_b0+dcf checkpoint (copy of the pattern in tests/conftest.py)."""
    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(seed)
    spec = input_spec or InputSpec()
    arch = parse_spec("pvt_v2_b0+dcf", decoder_width=width)
    arch.in_chans = spec.num_bands
    model = build_segmenter(arch)
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(), input=spec.to_dict(),
                          name=path.stem)
    save_checkpoint(path, model.state_dict(), meta)
    return path


def assert_clean_failure(res: Any, out: Path, *words: str) -> None:
    """A failed CLI run: non-zero exit, one ``error:`` line naming ``words``, no traceback,
    and neither ``out`` nor a temporary of it left behind."""
    assert res.exit_code != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for word in words:
        assert word.lower() in res.stderr.lower(), res.stderr
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
