"""Weights policy: offline errors name the file, local files load exactly, no network ever."""

from __future__ import annotations

import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

from landslide_cli.errors import WeightsUnavailable
from landslide_cli.zoo import BACKBONES, TEACHERS, build_discriminator, build_segmenter

TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline, with an empty HF cache, and any network connection is a test failure."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.mark.parametrize("build", [
    lambda: BACKBONES.build("pvt_v2_b0", pretrained=True),
    lambda: build_segmenter("pvt_v2_b0+dcf", pretrained=True),
    lambda: TEACHERS.build("vit_small_patch14_dinov2", pretrained=True),
    lambda: TEACHERS.build("convnext_tiny", pretrained=True),
    lambda: build_discriminator("vit_small_patch14_reg4_dinov2", 64, pretrained=True),
])
def test_offline_pretrained_names_the_file_to_supply(offline, build):
    with pytest.raises(WeightsUnavailable) as info:
        build()
    msg = str(info.value)
    assert "\n" not in msg
    assert "hf-hub:timm/" in msg and "--weights" in msg


def test_landslide_offline_variable_is_respected(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("LANDSLIDE_OFFLINE", "yes")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="pvt_v2_b1"):
        BACKBONES.build("pvt_v2_b1", pretrained=True)


def test_backbone_weights_from_a_local_safetensors_file(offline, tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("pvt_v2_b0")
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / "pvt_v2_b0.safetensors"
    save_file(state, str(path))
    backbone = BACKBONES.build("pvt_v2_b0", weights=path)
    loaded = backbone.body.state_dict()
    assert len(loaded) == len(state) - 2  # all but the classifier head
    for key, value in loaded.items():
        assert torch.equal(value, state[key.replace("stages_", "stages.", 1)]), key
    # a fresh random build differs, so the equality above is not an accident
    other = BACKBONES.build("pvt_v2_b0").body.state_dict()
    assert not torch.equal(other["patch_embed.proj.weight"], loaded["patch_embed.proj.weight"])


def test_teacher_weights_from_a_local_safetensors_file(offline, tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0,
                               dynamic_img_size=True, **TINY_VIT)
    path = tmp_path / "tiny_dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    teacher = TEACHERS.build("vit_small_patch14_reg4_dinov2", weights=path, **TINY_VIT)
    for key, value in source.state_dict().items():
        assert torch.equal(teacher.vit.state_dict()[key], value), key
    assert all(not p.requires_grad for p in teacher.parameters())


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for build in (lambda: BACKBONES.build("pvt_v2_b0", weights=missing),
                  lambda: TEACHERS.build("vit_small_patch14_dinov2", weights=missing)):
        with pytest.raises(WeightsUnavailable, match="weights file not found") as info:
            build()
        assert str(missing) in str(info.value)


def test_unreadable_weights_file_is_one_line(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(WeightsUnavailable) as info:
        BACKBONES.build("pvt_v2_b0", weights=bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_pickled_weights_file_is_never_executed(tmp_path):
    """timm loads .pth files with weights_only=True: a malicious pickle is refused, not run."""
    import pickle

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"patch_embed.proj.weight": _Evil(str(marker))}, protocol=2))
    with pytest.raises(WeightsUnavailable) as info:
        BACKBONES.build("pvt_v2_b0", weights=bad)
    assert not marker.exists()
    assert "\n" not in str(info.value)
