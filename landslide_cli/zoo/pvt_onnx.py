"""Export-time rewrites of the PVTv2 backbone (:mod:`landslide_cli.zoo.backbones`) for ONNX.

The same math as timm's eval forwards, written so that ONNX Runtime runs the graph faster: the
token <-> image moves around the PVTv2 convolutions become NHWC reshape + permute, which ONNX
Runtime folds into its NCHWc reorders instead of materializing two transposes of the largest
tensor in the network. Only the exported copy changes; the export's parity check compares it
with the unmodified model.

Checkpoints loaded for inference build the torch-only PVTv2
(:mod:`landslide_cli.zoo.pvt_v2_native`), whose forwards are written this way already: it
needs no rewrite, and :func:`rewrite_for_onnx` leaves it as it is. The rewrites apply to timm
models (e.g. a backbone built by ``build_segmenter(..., native=False)``).
"""

from __future__ import annotations

import copy
import sys
import types
from typing import Any

import torch
from torch import nn


def _pvt_mlp_forward(self: Any, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
    """timm ``MlpWithDepthwiseConv`` (eval) with NHWC moves around the depthwise convolution."""
    x = self.fc1(x)
    b, n, c = x.shape
    x = x.reshape(b, feat_size[0], feat_size[1], c).permute(0, 3, 1, 2)
    x = self.dwconv(self.relu(x))
    x = x.permute(0, 2, 3, 1).reshape(b, n, c)
    return self.fc2(self.act(x))


def _pvt_attention_forward(self: Any, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
    """timm pvt_v2 ``Attention`` (eval) with the same NHWC moves around the spatial-reduction
    convolution; attention itself is unchanged (scaled dot product, default scale)."""
    b, n, c = x.shape
    h, w = feat_size
    q = self.q(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
    if self.pool is not None:
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        x = self.sr(self.pool(x)).permute(0, 2, 3, 1).reshape(b, -1, c)
        x = self.act(self.norm(x))
    elif self.sr is not None:
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        x = self.sr(x).permute(0, 2, 3, 1).reshape(b, -1, c)
        x = self.norm(x)
    kv = self.kv(x).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    x = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=float(self.scale))
    return self.proj(x.transpose(1, 2).reshape(b, n, c))


def rewrite_for_onnx(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with ORT-friendly forwards on known timm blocks; names of rewrites.

    A block is rewritten only when it has every attribute the new forward reads (a timm
    version with other internals keeps its own forward). timm is never imported here: a model
    with timm blocks has imported it already, and a model without them has nothing to rewrite.
    """
    model = copy.deepcopy(model)
    pvt_v2 = sys.modules.get("timm.models.pvt_v2")
    if pvt_v2 is None:
        return model, []
    targets = {
        pvt_v2.MlpWithDepthwiseConv: (_pvt_mlp_forward, ("fc1", "dwconv", "relu", "act", "fc2")),
        pvt_v2.Attention: (_pvt_attention_forward,
                           ("q", "kv", "proj", "sr", "pool", "norm", "num_heads", "head_dim",
                            "scale")),
    }
    applied: set[str] = set()
    for module in model.modules():
        entry = targets.get(type(module))
        if entry and all(hasattr(module, a) for a in entry[1]):
            module.forward = types.MethodType(entry[0], module)
            applied.add(f"pvt_v2.{type(module).__name__}: channels-last reshapes")
    return model, sorted(applied)
