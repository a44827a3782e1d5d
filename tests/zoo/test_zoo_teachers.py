"""Frozen teachers (DINOv2, ConvNeXt) and the KDA discriminator, built tiny via timm overrides."""

from __future__ import annotations

import pytest
import torch

from landslide_cli.errors import LandslideError
from landslide_cli.zoo import DISCRIMINATORS, TEACHERS, build_discriminator
from landslide_cli.zoo.discriminator import evenly_spaced
from landslide_cli.zoo.teachers import pad_to_multiple

TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}
TINY_CNX = {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}

DINO = [e.name for e in TEACHERS if e.info["family"] == "dinov2"]
CNX = [e.name for e in TEACHERS if e.info["family"] == "convnext"]


def test_teacher_registry_names():
    for size in ("small", "base", "large", "giant"):
        assert f"vit_{size}_patch14_dinov2" in TEACHERS
        assert f"vit_{size}_patch14_reg4_dinov2" in TEACHERS
    assert {"convnext_tiny", "convnext_small", "convnext_base"} <= set(CNX)


def _assert_frozen(module: torch.nn.Module) -> None:
    assert all(not p.requires_grad for p in module.parameters())
    module.train()
    assert not module.training
    assert all(not m.training for m in module.modules())


@pytest.mark.parametrize("name", DINO)
def test_dinov2_teacher_grid_levels_and_freezing(name):
    torch.manual_seed(0)
    teacher = TEACHERS.build(name, **TINY_VIT)
    assert (teacher.embed_dim, teacher.patch_size, teacher.num_levels) == (48, 14, 2)
    assert teacher.mean == pytest.approx((0.485, 0.456, 0.406))
    assert teacher.std == pytest.approx((0.229, 0.224, 0.225))
    _assert_frozen(teacher)
    x = torch.randn(2, 3, 56, 70)  # multiples of 14
    out = teacher(x)
    assert out.shape == (2, 48, 4, 5)
    # not a multiple of 14: padded inside, ceil(H/14) x ceil(W/14)
    assert teacher(torch.randn(1, 3, 65, 97)).shape == (1, 48, 5, 7)
    levels = teacher.forward_levels(x, [0, -1])
    assert [tuple(m.shape) for m in levels] == [(2, 48, 4, 5)] * 2
    assert teacher.level_dims([0, 1]) == [48, 48]
    # the last level through the final norm is the output map
    assert torch.allclose(levels[1], out, atol=1e-5)
    with pytest.raises(LandslideError, match="out of range"):
        teacher.forward_levels(x, [2])


def test_dinov2_teacher_matches_timm_forward_features():
    """The hand-run blocks equal timm's own forward (prefix and register tokens dropped)."""
    torch.manual_seed(0)
    teacher = TEACHERS.build("vit_small_patch14_reg4_dinov2", **TINY_VIT)
    assert teacher.num_prefix_tokens == 5  # class + 4 registers
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        ours = teacher(x)
        tokens = teacher.vit.forward_features(pad_to_multiple(x, 14))
    ref = tokens[:, 5:].reshape(1, 5, 8, 48).permute(0, 3, 1, 2)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_full_size_dinov2_small_shape():
    teacher = TEACHERS.build("vit_small_patch14_dinov2")
    assert (teacher.embed_dim, teacher.num_levels, teacher.patch_size) == (384, 12, 14)
    assert TEACHERS.entry("vit_small_patch14_dinov2").info["embed_dim"] == 384


def test_teacher_img_size_is_passed_to_timm():
    teacher = TEACHERS.build("vit_small_patch14_dinov2", img_size=28, **TINY_VIT)
    assert tuple(teacher.vit.patch_embed.grid_size) == (2, 2)
    assert teacher(torch.randn(1, 3, 42, 42)).shape == (1, 48, 3, 3)  # dynamic size


def test_teacher_does_not_force_no_grad():
    teacher = TEACHERS.build("vit_small_patch14_dinov2", **TINY_VIT)
    x = torch.randn(1, 3, 28, 28, requires_grad=True)
    teacher(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", CNX)
def test_convnext_teacher(name):
    torch.manual_seed(0)
    teacher = TEACHERS.build(name, img_size=512, **TINY_CNX)
    assert (teacher.embed_dim, teacher.patch_size, teacher.num_levels) == (64, 32, 4)
    _assert_frozen(teacher)
    x = torch.randn(2, 3, 64, 96)
    out = teacher(x)
    assert out.shape == (2, 64, 2, 3)
    assert teacher(torch.randn(1, 3, 65, 97)).shape == (1, 64, 3, 4)
    levels = teacher.forward_levels(x, [0, 2, 3])
    assert [tuple(m.shape) for m in levels] == [(2, 8, 16, 24), (2, 32, 4, 6), (2, 64, 2, 3)]
    assert teacher.level_dims([0, 2, -1]) == [8, 32, 64]
    assert torch.allclose(levels[-1], out, atol=1e-5)


def test_full_size_convnext_tiny_shape():
    teacher = TEACHERS.build("convnext_tiny")
    assert (teacher.embed_dim, teacher.patch_size) == (768, 32)
    assert teacher.level_dims([0, 1, 2, 3]) == [96, 192, 384, 768]


def test_evenly_spaced_levels():
    assert evenly_spaced(12, 4) == [2, 5, 8, 11]
    assert evenly_spaced(40, 4) == [9, 19, 29, 39]
    assert evenly_spaced(2, 4) == [0, 1]
    assert evenly_spaced(12, 1) == [11]


@pytest.mark.parametrize("fuse", ["concat", "sum"])
def test_discriminator_shape_frozen_vit_and_gradient_to_input(fuse):
    torch.manual_seed(0)
    disc = build_discriminator("vit_small_patch14_reg4_dinov2", 24, levels=3, head_width=16,
                               fuse=fuse, depth=3, embed_dim=48, num_heads=2)
    assert disc.level_indices == [0, 1, 2]
    disc.train()
    assert disc.training and not disc.backbone.training
    x = torch.randn(2, 24, 9, 11, requires_grad=True)
    score = disc(x)
    assert score.shape == (2, 1, 5, 6)
    torch.nn.functional.mse_loss(score, torch.ones_like(score)).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in disc.backbone.parameters())
    trainable = disc.trainable_parameters()
    assert trainable and all(p.grad is not None for p in trainable)
    assert not any(k.startswith("backbone.") for k in disc.trainable_state_dict())
    assert "proj.weight" in disc.trainable_state_dict()


def test_discriminator_gradient_flows_through_the_frozen_blocks():
    """With in_dim == ViT width there is no projection: the input gradient comes via the ViT."""
    torch.manual_seed(0)
    disc = build_discriminator(levels=2, head_width=8, **TINY_VIT)
    assert isinstance(disc.proj, torch.nn.Identity)
    x = torch.randn(1, 48, 6, 6, requires_grad=True)
    disc(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_discriminator_registry_and_errors():
    assert "vit_base_patch14_reg4_dinov2" in DISCRIMINATORS
    assert "convnext_tiny" not in DISCRIMINATORS
    disc = DISCRIMINATORS.build("vit_small_patch14_dinov2", 16, head_width=8, **TINY_VIT)
    assert disc(torch.randn(1, 16, 4, 4)).shape == (1, 1, 2, 2)
    with pytest.raises(LandslideError, match="expects"):
        disc(torch.randn(1, 48, 4, 4))
    with pytest.raises(LandslideError, match="DINOv2"):
        build_discriminator("convnext_tiny", 16, **TINY_CNX)
    with pytest.raises(LandslideError, match="fusion"):
        build_discriminator(in_dim=16, fuse="max", **TINY_VIT)
