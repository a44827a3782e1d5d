"""The model registries. Builders register themselves when their module is imported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from landslide_cli.registry import Registry, canonical

#: name -> ``builder(*, in_chans, pretrained, weights) -> nn.Module`` returning 4 feature maps
#: (strides 4/8/16/32); the module exposes ``.widths`` (list of 4 channel counts).
BACKBONES: Registry = Registry("backbone")
#: canonical backbone name -> ``builder(*, in_chans) -> nn.Module``: a torch-only twin of that
#: :data:`BACKBONES` entry (the same state-dict keys, shapes and outputs, default init) that
#: loads checkpoints for inference without importing the entry's library (timm); see
#: :func:`native_backbone`
NATIVE_BACKBONES: dict[str, Callable[..., Any]] = {}
#: name -> ``builder(in_channels: list[int], num_classes: int, width: int) -> nn.Module``;
#: ``forward(features) -> logits`` at stride 4, or at the module's ``output_stride`` when it has
#: one (``dcf_paper``: 1, ``unet_paper``: 2); the segmenter resizes them to the input.
DECODERS: Registry = Registry("decoder")
#: name -> ``builder(*, pretrained, weights, img_size) -> Teacher`` (frozen, NCHW feature map).
TEACHERS: Registry = Registry("teacher")
#: name (a DINOv2 teacher) -> ``builder(in_dim=None, **kw) -> Discriminator`` (KDA); filled
#: from :data:`TEACHERS` when :mod:`landslide_cli.zoo.discriminator` is imported.
DISCRIMINATORS: Registry = Registry("discriminator")


def native_backbone(name: str) -> Callable[..., Any] | None:
    """The torch-only inference twin of backbone ``name`` (registered or alias), or ``None``."""
    return NATIVE_BACKBONES.get(canonical(BACKBONES.resolve(name)))
