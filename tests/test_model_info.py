"""`landslide models` / `landslide info` and the library functions behind them."""

from __future__ import annotations

import json

import pytest
import torch

from landslide_cli.errors import LandslideError
from landslide_cli.model_info import count_params, gflops, list_models, model_info
from landslide_cli.zoo import build_segmenter, parse_spec


def test_list_models_has_every_registry():
    data = list_models()
    names = {section: {row["name"] for row in rows} for section, rows in data.items()}
    assert {"pvt_v2_b0", "pvt_v2_b5"} <= names["backbones"]
    assert {"dcf", "segformer", "upernet", "unet"} <= names["decoders"]
    assert {"vit_small_patch14_dinov2", "vit_giant_patch14_reg4_dinov2",
            "convnext_tiny"} <= names["teachers"]
    assert "vit_small_patch14_dinov2" in names["discriminators"]
    assert "shipped" in data


def test_models_json_cli(run_cli):
    res = run_cli("models", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert "pvt_v2_b0" in {r["name"] for r in data["backbones"]}
    assert "unet" in {r["name"] for r in data["decoders"]}
    teachers = {r["name"]: r for r in data["teachers"]}
    assert teachers["vit_base_patch14_reg4_dinov2"]["embed_dim"] == 768
    assert teachers["vit_base_patch14_reg4_dinov2"]["registers"] == 4
    assert teachers["convnext_base"]["patch_size"] == 32


def test_models_table_cli(run_cli):
    res = run_cli("models")
    assert res.exit_code == 0
    for word in ("backbones", "decoders", "teachers", "pvt_v2_b3", "upernet",
                 "vit_large_patch14_dinov2"):
        assert word in res.stdout


def test_info_spec_json(run_cli):
    res = run_cli("info", "pvt_v2_b0+dcf", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    params = data["params"]
    assert all(isinstance(params[k], int) for k in ("backbone", "decoder", "total"))
    assert params["total"] == params["backbone"] + params["decoder"]
    model = build_segmenter(parse_spec("pvt_v2_b0+dcf"))
    assert params["backbone"] == count_params(model.backbone)
    assert params["decoder"] == count_params(model.decoder)
    assert isinstance(data["gflops_512"], float) and data["gflops_512"] > 0
    assert data["architecture"]["decoder"] == "dcf"


def test_gflops_scale_with_the_input_area():
    model = build_segmenter(parse_spec("pvt_v2_b0+segformer", decoder_width=32))
    small, big = gflops(model, 64), gflops(model, 128)
    assert small > 0 and 3.0 < big / small < 5.0  # roughly x4 for twice the side
    model.train()
    gflops(model, 64)
    assert model.training  # the caller's mode is left alone


class _ConvAttention(torch.nn.Module):
    """Conv stem + one self-attention over the pixels: FLOPs countable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.qkv = torch.nn.Linear(8, 24, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x).flatten(2).transpose(1, 2)  # (1, N, 8)
        q, k, v = self.qkv(f).unsqueeze(1).chunk(3, dim=-1)  # one head of width 8
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_gflops_matches_a_hand_count_whatever_attention_kernel_runs():
    """The count must not depend on the kernels a torch build dispatches (a fused CPU
    attention kernel records no FLOPs); it is checked against arithmetic instead."""
    size = 32
    n = (size // 2) ** 2  # tokens after the stride-2 conv
    conv = 2 * 8 * 3 * 3 * 3 * n
    qkv = 2 * 8 * 24 * n
    attention = 2 * (2 * n * n * 8)  # Q @ K^T and A @ V
    assert gflops(_ConvAttention(), size) * 1e9 == pytest.approx(conv + qkv + attention)


def test_info_checkpoint_prints_its_card(run_cli, tiny_checkpoint):
    res = run_cli("info", tiny_checkpoint)
    assert res.exit_code == 0, res.stderr
    for word in ("pvt_v2_b0 + dcf", "params total", "GFLOPs", "threshold", "tiny"):
        assert word in res.stdout
    res = run_cli("info", tiny_checkpoint, "--json", "--size", "64")
    data = json.loads(res.stdout)
    card = data["card"]
    assert card["kind"] == "segmenter" and card["name"] == "tiny"
    assert len(card["sha256"]) == 64
    assert len(card["input"]["bands"]) == 3 and card["threshold"] == 0.5
    assert data["size"] == 64 and 0 < data["gflops"] < data["gflops_512"]
    assert data["architecture"]["decoder_width"] == 32


def test_info_unknown_model_is_one_line(run_cli, tmp_path):
    res = run_cli("info", "pvt_v2_b9+dcf")
    assert res.exit_code == 1
    assert "unknown backbone" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("info", tmp_path / "missing.safetensors")
    assert res.exit_code == 1 and "not found" in res.stderr
    with pytest.raises(LandslideError):
        model_info("pvt_v2_b0+nodecoder")


def test_count_params_matches_torch():
    layer = torch.nn.Conv2d(3, 8, 3)
    assert count_params(layer) == 3 * 8 * 9 + 8
