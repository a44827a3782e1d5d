"""Every registered backbone and decoder: forward passes on random weights, any input size."""

from __future__ import annotations

import pytest
import torch

from landslide_cli.errors import LandslideError
from landslide_cli.model_info import count_params
from landslide_cli.zoo import BACKBONES, DECODERS, build_segmenter, parse_spec
from landslide_cli.zoo.dcf import build_dcf

ODD_SIZES = [(65, 97), (33, 33), (100, 77)]


def test_registries_hold_the_expected_names():
    for name in ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5"):
        assert name in BACKBONES
    assert {"dcf", "segformer", "upernet", "unet"} <= set(DECODERS.names())
    assert DECODERS.resolve("SegFormer") == "segformer"
    assert DECODERS.resolve("all-mlp") == "segformer"
    with pytest.raises(LandslideError, match="unknown decoder 'fpn'"):
        DECODERS.resolve("fpn")


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_gives_four_maps_at_strides_4_to_32(name):
    torch.manual_seed(0)
    backbone = BACKBONES.build(name).eval()
    assert len(backbone.widths) == 4
    assert backbone.strides == [4, 8, 16, 32]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 96))
    assert [m.shape[1] for m in maps] == backbone.widths
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(torch.isfinite(m).all() for m in maps)


def test_backbone_accepts_other_band_counts():
    backbone = BACKBONES.build("pvt_v2_b0", in_chans=5).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 5, 64, 64))
    assert maps[0].shape == (1, 32, 16, 16)


@pytest.mark.parametrize("decoder", DECODERS.names())
def test_every_decoder_keeps_the_input_size_for_odd_sizes(decoder):
    torch.manual_seed(0)
    model = build_segmenter(parse_spec(f"pvt_v2_b0+{decoder}", decoder_width=32)).eval()
    with torch.no_grad():
        for h, w in ODD_SIZES:
            logits = model(torch.randn(1, 3, h, w))
            assert logits.shape == (1, 2, h, w), (decoder, h, w)
            assert torch.isfinite(logits).all()
            proba = model.predict_proba(torch.randn(2, 3, h, w))
            assert proba.shape == (2, h, w)
            assert float(proba.min()) >= 0.0 and float(proba.max()) <= 1.0


@pytest.mark.parametrize("decoder", DECODERS.names())
def test_every_decoder_returns_stride4_logits_and_trains(decoder):
    """Decoder contract: stride-4 logits (or ``output_stride``); a training step reaches every
    decoder parameter."""
    torch.manual_seed(0)
    widths = [32, 64, 160, 256]
    head = DECODERS.build(decoder, widths, num_classes=3, width=16).train()
    feats = [torch.randn(2, c, 32 // s, 48 // s) for c, s in zip(widths, (1, 2, 4, 8),
                                                                   strict=True)]
    out = head(feats)
    up = 4 // getattr(head, "output_stride", 4)  # dcf_paper: stride 1, unet_paper: stride 2
    assert out.shape == (2, 3, 32 * up, 48 * up)
    out.square().mean().backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None]
    assert not no_grad, f"{decoder}: parameters without gradient: {no_grad[:3]}"


def test_upernet_trains_with_batch_size_one():
    """The PPM's 1x1 pooled branch has no BatchNorm, so batch-1 training works."""
    model = build_segmenter(parse_spec("pvt_v2_b0+upernet", decoder_width=16)).train()
    model(torch.randn(1, 3, 64, 64)).mean().backward()


def test_bigger_backbone_with_each_decoder_in_a_segmenter():
    torch.manual_seed(0)
    backbone = BACKBONES.build("pvt_v2_b1").eval()
    for decoder in DECODERS.names():
        head = DECODERS.build(decoder, backbone.widths, width=32).eval()
        with torch.no_grad():
            out = head(backbone(torch.randn(1, 3, 64, 64)))
        side = 64 // getattr(head, "output_stride", 4)
        assert out.shape == (1, 2, side, side), decoder


def test_dcf_parameter_count_matches_the_paper():
    """KDA paper: 0.27M decoder parameters for widths [128, 256, 512, 1024] at width 128."""
    n = count_params(build_dcf([128, 256, 512, 1024], num_classes=2, width=128))
    assert abs(n - 0.27e6) <= 0.1 * 0.27e6, n


def test_dcf_gsoftmax_weights_sum_to_one_across_stages_per_channel():
    torch.manual_seed(0)
    dcf = build_dcf([32, 64, 160, 256], width=32).eval()
    projected = [torch.randn(3, 32, s, s) * (i + 1) for i, s in enumerate((16, 8, 4, 2))]
    with torch.no_grad():
        weights = dcf.stage_weights(projected)
    assert weights.shape == (3, 4, 32)  # (N, stages, channels)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3, 32), atol=1e-6)
    assert (weights > 0).all()
    # the weights really depend on the stage content (not a constant 1/4)
    assert float((weights - 0.25).abs().max()) > 1e-4


def test_segmenter_output_is_independent_of_batch_padding():
    """Padding to /32 is per input: a 65x97 tile gives the same logits alone or cropped."""
    torch.manual_seed(0)
    model = build_segmenter(parse_spec("pvt_v2_b0+dcf", decoder_width=32)).eval()
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        a = model(x)
        b = model(x.clone())
    assert torch.equal(a, b)


def test_dcf_classifies_per_stage_exactly_as_fusing_first() -> None:
    """The DCF decoder classifies each stage before the top-down fusion; this must equal the
    paper's order (fuse the d-channel maps, then the 1x1 classifier) up to rounding."""
    import torch.nn.functional as F

    from landslide_cli.zoo.dcf import DCFDecoder

    torch.manual_seed(0)
    dec = DCFDecoder([8, 16, 24, 32], num_classes=2, width=16).eval()
    feats = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 24, 32])]
    with torch.no_grad():
        projected = [proj(f) for proj, f in zip(dec.proj, feats, strict=True)]
        weights = dec.stage_weights(projected)
        fused = [p * weights[:, i, :, None, None] for i, p in enumerate(projected)]
        out = fused[-1]
        for finer in reversed(fused[:-1]):
            out = F.interpolate(out, size=finer.shape[-2:], mode="bilinear",
                                align_corners=False) + finer
        expected = dec.classifier(out)
        got = dec(feats)
    assert got.shape == expected.shape == (2, 2, 32, 32)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
