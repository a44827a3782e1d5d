"""The KDA paper's architectures: PVT v1 student, published DCF with DySample, Table IV heads,
ConvNeXt-L/XL teachers. Parameter counts are pinned; maths is checked against independent
computations (hand-written bilinear sampling, torch's MultiheadAttention)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landslide_cli.errors import LandslideError, WeightsUnavailable
from landslide_cli.model_info import count_params
from landslide_cli.zoo import BACKBONES, DECODERS, TEACHERS
from landslide_cli.zoo.dcf_paper import DCFPaperDecoder
from landslide_cli.zoo.dysample import DySample
from landslide_cli.zoo.pvt_v1 import KDA_PARAMS, PVTv1, SRAttention, load_pvt_v1_weights
from landslide_cli.zoo.segnext import NMF2D

PAPER_WIDTHS = [128, 256, 512, 1024]


def _meta_count(build, *args, **kwargs) -> int:
    with torch.device("meta"):
        return count_params(build(*args, **kwargs))


def _features(widths: list[int], size: int = 64, batch: int = 1) -> list[torch.Tensor]:
    return [torch.randn(batch, c, size // s, size // s)
            for c, s in zip(widths, (4, 8, 16, 32), strict=True)]


# ------------------------------------------------------------------ parameter counts


def test_pvt_v1_kda_counts_the_authors_66_1m():
    assert KDA_PARAMS == 66_140_800
    assert _meta_count(BACKBONES.get("pvt_v1_kda")) == KDA_PARAMS
    assert BACKBONES.entry("pvt_v1_kda").info["params"] == KDA_PARAMS


def test_timm_pvt_v2_at_the_same_widths_counts_more():
    """The documented comparison: timm's PVTv2 at widths 128..1024, depths 2/4/6/2, 69.2 M."""
    import timm

    n = _meta_count(timm.create_model, "pvt_v2_b0", embed_dims=PAPER_WIDTHS, depths=(2, 4, 6, 2),
                    num_heads=(1, 2, 4, 8), mlp_ratios=(8, 8, 4, 4), features_only=True)
    assert n == 69_151_488


@pytest.mark.parametrize(("name", "expected"), [
    ("dcf", 249_226),  # the project's lighter DCF keeps its count
    ("dcf_paper", 267_106),
    ("dcf_paper_3x3", 2_102_114),
    ("segformer_paper", 758_018),
    ("upernet_paper", 972_674),
    ("unet_paper", 12_155_586),
    ("segnext", 657_666),
])
def test_decoder_counts_with_the_paper_encoder(name, expected):
    assert _meta_count(DECODERS.get(name), PAPER_WIDTHS, num_classes=2, width=128) == expected


@pytest.mark.parametrize(("name", "paper_m"), [
    ("segformer_paper", 0.76), ("upernet_paper", 0.97), ("unet_paper", 12.16)])
def test_head_presets_are_within_one_percent_of_table_iv(name, paper_m):
    n = _meta_count(DECODERS.get(name), PAPER_WIDTHS, num_classes=2, width=128)
    assert abs(n - paper_m * 1e6) <= 0.01 * paper_m * 1e6
    assert DECODERS.entry(name).info["params_paper"] == n


def test_dysample_parameter_count():
    assert count_params(DySample(128, scale=2, groups=4)) == 128 * 32 + 32
    assert count_params(DySample(128, scale=4, groups=4)) == 128 * 128 + 128


# ------------------------------------------------------------------ PVT v1


@pytest.fixture(scope="module")
def kda_backbone() -> PVTv1:
    torch.manual_seed(0)
    return BACKBONES.build("pvt_v1_kda").eval()


def test_pvt_v1_kda_gives_four_maps(kda_backbone):
    assert kda_backbone.widths == PAPER_WIDTHS
    assert kda_backbone.strides == [4, 8, 16, 32]
    with torch.no_grad():
        maps = kda_backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 128, 16, 16), (1, 256, 8, 8), (1, 512, 4, 4),
                                             (1, 1024, 2, 2)]
    assert all(torch.isfinite(m).all() for m in maps)


def test_pvt_v1_kda_with_dcf_paper_segmenter(kda_backbone):
    from landslide_cli.zoo import Segmenter, parse_spec

    arch = parse_spec("pvt_v1_kda+dcf_paper")
    decoder = DECODERS.build("dcf_paper", kda_backbone.widths).eval()
    model = Segmenter(kda_backbone, decoder, arch).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 2, 50, 70)


def _tiny_pvt(**kw) -> PVTv1:
    cfg = dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
               mlp_ratios=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), img_size=64)
    return PVTv1(**{**cfg, **kw})


def test_sr_attention_matches_torch_multihead_attention():
    """SRA = standard attention with keys/values from the SR-conv + LayerNorm reduced map."""
    torch.manual_seed(0)
    dim, heads, h, w = 16, 2, 6, 8
    sra = SRAttention(dim, heads, sr_ratio=2).eval()
    x = torch.randn(2, h * w, dim)
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        k_w, v_w = sra.kv.weight.chunk(2)
        k_b, v_b = sra.kv.bias.chunk(2)
        mha.in_proj_weight.copy_(torch.cat([sra.q.weight, k_w, v_w]))
        mha.in_proj_bias.copy_(torch.cat([sra.q.bias, k_b, v_b]))
        mha.out_proj.weight.copy_(sra.proj.weight)
        mha.out_proj.bias.copy_(sra.proj.bias)
        grid = x.transpose(1, 2).reshape(2, dim, h, w)
        reduced = sra.norm(sra.sr(grid).flatten(2).transpose(1, 2))
        assert reduced.shape == (2, (h // 2) * (w // 2), dim)
        expected, _ = mha(x, reduced, reduced, need_weights=False)
        got = sra(x, h, w)
    assert torch.allclose(got, expected, atol=1e-5)


def test_pvt_v1_position_tables_resize_only_when_needed():
    torch.manual_seed(0)
    model = _tiny_pvt()
    assert model.pos_embed1.shape == (1, 16 * 16, 8)
    assert model.pos_embed4.shape == (1, 2 * 2 + 1, 64)  # + the unused class-token slot
    assert model._pos(0, 16, 16) is model.pos_embed1
    assert torch.equal(model._pos(3, 2, 2), model.pos_embed4[:, 1:])
    resized = model._pos(0, 8, 12)
    table = model.pos_embed1.reshape(1, 16, 16, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(table, size=(8, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(resized, expected.flatten(2).transpose(1, 2))


def test_pvt_v1_other_band_counts_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = _tiny_pvt()
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(2, 2)  # foreign keys are ignored
    path = tmp_path / "pvt.safetensors"
    save_file(state, str(path))
    target = load_pvt_v1_weights(_tiny_pvt(in_chans=5), path)
    assert torch.equal(target.block2[0].attn.kv.weight, source.block2[0].attn.kv.weight)
    assert target.patch_embed1.proj.weight.shape[1] == 5
    with torch.no_grad():
        assert target(torch.randn(1, 5, 64, 64))[0].shape == (1, 8, 16, 16)
    broken = tmp_path / "broken.safetensors"
    save_file({"encoder.pos_embed1": torch.zeros(1)}, str(broken))
    with pytest.raises(WeightsUnavailable, match="not a matching PVT v1 state dict"):
        load_pvt_v1_weights(_tiny_pvt(), broken)
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_pvt_v1_weights(_tiny_pvt(), tmp_path / "missing.pth")


def test_pvt_v1_kda_refuses_pretrained_without_a_file():
    with pytest.raises(WeightsUnavailable, match="no published pretrained weights"):
        BACKBONES.build("pvt_v1_kda", pretrained=True)


# ------------------------------------------------------------------ DySample


@pytest.mark.parametrize("scale", [2, 4])
def test_dysample_with_zero_offsets_is_bilinear_upsampling(scale):
    torch.manual_seed(0)
    up = DySample(16, scale=scale, groups=4)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        assert up(x).shape == (2, 16, 5 * scale, 7 * scale)
        up.offset.weight.zero_()
        expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        assert torch.allclose(up(x), expected, atol=1e-5)


def test_dysample_matches_hand_written_bilinear_sampling():
    """Large random offsets (crossing pixels and the border) against a per-pixel loop."""
    torch.manual_seed(0)
    s, g = 2, 2
    up = DySample(4, scale=s, groups=g)
    x = torch.randn(1, 4, 3, 4)
    with torch.no_grad():
        up.offset.weight.normal_(0.0, 2.0)
        got = up(x).numpy()
        off = up.offsets(x).numpy()
    xn = x.numpy()
    _, c, h, w = xn.shape
    ref = np.zeros_like(got)
    for ch in range(c):
        grp = ch // (c // g)
        for yy in range(h * s):
            for xx in range(w * s):
                # pixel-centre coordinates, clamped (border padding)
                px = min(max((xx + 0.5) / s + off[0, 0, grp, yy, xx] - 0.5, 0.0), w - 1)
                py = min(max((yy + 0.5) / s + off[0, 1, grp, yy, xx] - 0.5, 0.0), h - 1)
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                fx, fy = px - x0, py - y0
                img = xn[0, ch]
                ref[0, ch, yy, xx] = (img[y0, x0] * (1 - fx) * (1 - fy)
                                      + img[y0, x1] * fx * (1 - fy)
                                      + img[y1, x0] * (1 - fx) * fy + img[y1, x1] * fx * fy)
    assert np.abs(off).max() > 1.0  # the check really moves points across pixels
    assert np.allclose(got, ref, atol=1e-5)


# ------------------------------------------------------------------ DCF as published


def test_dcf_paper_structure_and_forward():
    torch.manual_seed(0)
    dcf = DECODERS.build("dcf_paper", PAPER_WIDTHS).eval()
    assert isinstance(dcf.proj[0], torch.nn.Identity)  # stage 1 is already 128 wide
    assert len(dcf.attention) == 4 and len(dcf.up) == 3 and dcf.final_up.scale == 4
    feats = _features(PAPER_WIDTHS, 64, batch=2)
    with torch.no_grad():
        out = dcf(feats)
        projected = [p(f) for p, f in zip(dcf.proj, feats, strict=True)]
        weights = dcf.stage_weights(projected)
    assert out.shape == (2, 2, 64, 64)  # stride 1
    assert torch.allclose(weights.sum(dim=1), torch.ones(2, 128), atol=1e-6)


def test_dcf_paper_fused_head_equals_the_literal_order():
    torch.manual_seed(0)
    dcf = DCFPaperDecoder([32, 64, 160, 256], num_classes=3, width=32).eval()
    with torch.no_grad():
        dcf.final_up.offset.weight.normal_(0.0, 0.5)  # non-trivial offsets
        feats = _features([32, 64, 160, 256], 64)
        fused = dcf(feats)
        dcf.fused_head = False
        literal = dcf(feats)
    assert fused.shape == (1, 3, 64, 64)
    assert torch.allclose(fused, literal, atol=1e-5)


def test_dcf_paper_3x3_and_bad_widths():
    dcf3 = DECODERS.build("dcf_paper_3x3", [32, 64, 160, 256], width=32)
    assert dcf3.proj[1][0].kernel_size == (3, 3)
    assert isinstance(DECODERS.build("dcf_paper", [16, 64, 160, 256], width=32).proj[0],
                      torch.nn.Sequential)  # stage 1 projected when its width differs
    with pytest.raises(LandslideError, match="multiple of the 4 DySample groups"):
        DECODERS.build("dcf_paper", PAPER_WIDTHS, width=30)


# ------------------------------------------------------------------ Table IV heads


@pytest.mark.parametrize(("name", "side"), [
    ("segformer_paper", 16), ("upernet_paper", 16), ("unet_paper", 32), ("segnext", 16)])
def test_paper_heads_forward_with_the_paper_encoder_widths(name, side):
    torch.manual_seed(0)
    head = DECODERS.build(name, PAPER_WIDTHS, num_classes=2, width=128).eval()
    with torch.no_grad():
        out = head(_features(PAPER_WIDTHS, 64))
    assert out.shape == (1, 2, side, side)
    assert torch.isfinite(out).all()


def test_segnext_is_deterministic_and_its_nmf_reduces_the_error():
    torch.manual_seed(0)
    head = DECODERS.build("segnext", [32, 64, 160, 256], width=16).eval()
    feats = _features([32, 64, 160, 256], 64)
    with torch.no_grad():
        assert torch.equal(head(feats), head(feats))  # fixed bases: no run-to-run noise
    # multiplicative updates never increase ||X - D C^T|| (Lee & Seung)
    nmf = NMF2D(24, rank=6)
    z = torch.rand(2, 24, 5, 6)
    errors = []
    for steps in (0, 1, 3, 7, 15):
        nmf.eval_steps = steps
        with torch.no_grad():
            errors.append(float((nmf.eval()(z) - z).norm()))
    assert all(b <= a + 1e-5 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.8 * errors[0]
    assert float(nmf(z).min()) >= 0.0


# ------------------------------------------------------------------ teachers


@pytest.mark.parametrize(("name", "dim"), [("convnext_large", 1536), ("convnext_xlarge", 2048)])
def test_convnext_large_teachers(name, dim):
    entry = TEACHERS.entry(name)
    assert entry.info["family"] == "convnext" and entry.info["embed_dim"] == dim
    with torch.device("meta"):
        teacher = TEACHERS.build(name)  # random init, never a download
    assert (teacher.embed_dim, teacher.patch_size, teacher.num_levels) == (dim, 32, 4)
    assert teacher.level_dims([0, -1]) == [dim // 8, dim]
    tiny = TEACHERS.build(name, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    assert tiny(torch.randn(1, 3, 64, 64)).shape == (1, 64, 2, 2)


# ------------------------------------------------------------------ CLI


def test_models_and_info_list_the_paper_architectures(run_cli):
    res = run_cli("models", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert "pvt_v1_kda" in {r["name"] for r in data["backbones"]}
    assert {"dcf_paper", "dcf_paper_3x3", "segformer_paper", "upernet_paper", "unet_paper",
            "segnext"} <= {r["name"] for r in data["decoders"]}
    assert {"convnext_large", "convnext_xlarge"} <= {r["name"] for r in data["teachers"]}
    res = run_cli("info", "pvt_v1_kda+dcf_paper", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["architecture"]["backbone"] == "pvt_v1_kda"
    assert info["params"] == {"backbone": 66_140_800, "decoder": 267_106,
                              "total": 66_140_800 + 267_106}
    assert info["gflops_512"] > 0


# ------------------------------------------------------------------ ONNX


def test_dcf_paper_exports_to_onnx_with_parity(tmp_path):
    """DySample's grid_sample exports from opset 16 (default 17); older opsets fail in one line."""
    from landslide_cli.checkpoint import CheckpointMeta, save_checkpoint
    from landslide_cli.export import export_onnx
    from landslide_cli.preprocess import InputSpec
    from landslide_cli.zoo import build_segmenter, parse_spec

    torch.manual_seed(1)
    arch = parse_spec("pvt_v2_b0+dcf_paper", decoder_width=32)
    meta = CheckpointMeta(kind="segmenter", architecture=arch.to_dict(),
                          input=InputSpec(tile=64).to_dict(), threshold=0.5, name="tiny-dcf-paper",
                          metrics={})
    ckpt = save_checkpoint(tmp_path / "m.safetensors", build_segmenter(arch).state_dict(), meta)
    report = export_onnx(ckpt, tmp_path / "m.onnx")  # raises if the parity check fails
    assert report.opset == 17 and report.path.is_file()
    with pytest.raises(LandslideError, match="opset"):
        export_onnx(ckpt, tmp_path / "old.onnx", opset=15)
    assert not (tmp_path / "old.onnx").exists()
