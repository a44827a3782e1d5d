"""--precision: CPU feature detection (flags injected), the parity guard, reporting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landslide_cli import precision as P
from landslide_cli.errors import LandslideError
from landslide_cli.preprocess import InputSpec

EPYC = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
        "bugs\t\t: sysret_ss_attrs\n")
SAPPHIRE = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni\n"


def test_cpu_flags_from_cpuinfo_and_the_override(monkeypatch):
    monkeypatch.delenv(P.FLAGS_ENV, raising=False)
    assert P.cpu_flags(EPYC) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert not P.cpu_has_bf16(P.cpu_flags(EPYC)) and not P.cpu_has_vnni(P.cpu_flags(EPYC))
    assert P.cpu_has_bf16(P.cpu_flags(SAPPHIRE)) and P.cpu_has_vnni(P.cpu_flags(SAPPHIRE))
    assert P.cpu_has_bf16(frozenset({"avx512_bf16"})) and P.cpu_has_bf16(frozenset({"amx_bf16"}))
    assert P.cpu_flags("no flags here") == frozenset()
    monkeypatch.setenv(P.FLAGS_ENV, "avx2 amx_bf16")
    assert P.cpu_flags(EPYC) == {"avx2", "amx_bf16"} and P.cpu_has_bf16()


def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.delenv(P.FLAGS_ENV, raising=False)
    epyc, spr = P.cpu_flags(EPYC), P.cpu_flags(SAPPHIRE)
    assert P.cpu_precision("auto", epyc) == ("fp32", "")
    assert P.cpu_precision("auto", spr) == ("bf16", "")
    assert P.cpu_precision("fp32", spr) == ("fp32", "")
    chosen, note = P.cpu_precision("bf16", epyc)  # explicit: honoured, with a warning
    assert chosen == "bf16" and "emulated" in note
    with pytest.raises(LandslideError, match="int8 runs on ONNX Runtime"):
        P.cpu_precision("int8", spr)
    with pytest.raises(LandslideError, match="choose one of auto, fp32, bf16, int8"):
        P.check_precision("fp8")
    assert P.check_precision(" BF16 ") == "bf16"


def test_compare_counts_flipped_pixels_and_iou():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 32, 32))
    same = P.compare(ref, ref.copy(), 0.5, precision="bf16")
    assert same.passed and same.max_prob_diff == 0 and same.mask_iou == 1.0
    cand = ref.copy()
    near = np.argwhere((ref >= 0.5) & (ref < 0.52))[:40]  # push 40 pixels below the threshold
    for i, y, x in near:
        cand[i, y, x] = 0.49
    check = P.compare(ref, cand, 0.5, precision="bf16")
    a, b = ref >= 0.5, cand >= 0.5
    assert check.mask_diff_fraction == pytest.approx(len(near) / ref.size)
    assert check.mask_iou == pytest.approx((a & b).sum() / (a | b).sum())
    assert check.max_prob_diff <= 0.03
    assert check.passed is False  # 40 / 3072 = 1.3 % of the pixels flipped > 0.5 %
    assert "failed" in check.describe() and "1.30% of mask pixels" in check.describe()
    assert P.compare(ref, np.full_like(ref, np.nan), 0.5, precision="int8").passed is False


def test_shipped_parity_tiles_are_real_rgb_crops(shared_data):
    paths = P.parity_tile_paths()
    assert len(paths) == 3 and all(p.stat().st_size < 16_000 for p in paths)
    raw = P.read_parity_tiles()
    assert raw.shape == (3, 3, 128, 128) and raw.dtype == np.uint8
    from PIL import Image

    # the crops of the Sichuan tiles named in the README (JPEG: close, not equal)
    for path, tile in zip(paths, raw, strict=True):
        _, number, y, x = path.stem.split("_")
        src = np.asarray(Image.open(shared_data / "landslides" / "sichuan" / "img" /
                                    f"Landslide{number}.png").convert("RGB"))
        crop = src[int(y[1:]):int(y[1:]) + 128, int(x[1:]):int(x[1:]) + 128]
        assert np.abs(crop.transpose(2, 0, 1).astype(float) - tile).mean() < 6
    spec = InputSpec()
    assert P.parity_tiles(spec).shape == (3, 3, 128, 128)
    assert P.parity_tiles(InputSpec(bands=["B4", "B3", "B2", "B8"], mean=[0.4] * 4,
                                    std=[0.2] * 4)) is None
    big = P.mirror_to(raw, 300)
    assert big.shape == (3, 3, 300, 300)
    pad = (300 - 128) // 2
    np.testing.assert_array_equal(big[..., pad:pad + 128, pad:pad + 128], raw)
    np.testing.assert_array_equal(big[..., pad - 1, pad:pad + 128], raw[..., 0, :])  # mirror


class _Offset(torch.nn.Module):
    """Two-class logits ``big + a * x`` and ``big + b * x``: a large common offset makes the
    class difference vanish in bfloat16 (8 mantissa bits) when ``big`` is large."""

    def __init__(self, big: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 0.8
            self.conv.weight[1, 1] = -0.5
            self.conv.bias.fill_(big)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_settle_bf16_on_a_bf16_cpu_passes_or_falls_back(monkeypatch):
    cpu, spec = torch.device("cpu"), InputSpec()
    spr = P.cpu_flags(SAPPHIRE)
    ok = P.settle_torch_precision(_Offset(0.0).eval(), cpu, "auto", spec=spec, threshold=0.5,
                                  flags=spr)
    assert ok.precision == "bf16" and ok.check.passed and ok.warning == ""
    assert ok.check.tiles == 3 and ok.check.max_prob_diff < P.BF16_TOLERANCE
    bad = P.settle_torch_precision(_Offset(300.0).eval(), cpu, "auto", spec=spec,
                                   threshold=0.5, flags=spr)
    assert bad.precision == "fp32" and bad.check.passed is False
    assert "failed the parity check" in bad.warning and "running in fp32" in bad.warning
    none = P.settle_torch_precision(_Offset(300.0).eval(), cpu, "auto", spec=spec,
                                    threshold=0.5, flags=P.cpu_flags(EPYC))
    assert none.precision == "fp32" and none.check is None and none.warning == ""


def test_predict_reports_precision_in_json_and_runs(tmp_path):
    import pyogrio
    from _tiny_onnx import write_rgb_scene
    from predict._predict_helpers import ConvStandIn

    from landslide_cli.predict import predict_scenes

    scene = write_rgb_scene(tmp_path / "s.tif", height=48, width=48)
    plain = predict_scenes(scene, tmp_path / "a.gpkg", model=ConvStandIn(), tile=32)
    assert plain.precision == "fp32" and plain.precision_check is None
    be = ConvStandIn()
    be.precision = "bf16"
    be.precision_check = P.PrecisionCheck("bf16", True, 0.001, 0.0, 1.0, 3)
    summary = predict_scenes(scene, tmp_path / "b.gpkg", model=be, tile=32).to_dict()
    assert summary["precision"] == "bf16"
    assert summary["precision_check"]["max_prob_diff"] == 0.001
    runs = pyogrio.read_dataframe(tmp_path / "b.gpkg", layer="runs")
    assert runs.precision.iloc[0] == "bf16"
    assert runs.precision_check.iloc[0].startswith("bf16 vs fp32 on 3 tiles")


@pytest.mark.parametrize("classes", [2, 3])
def test_landslide_probability_is_class_one_of_the_softmax(classes):
    logits = torch.randn(2, classes, 5, 7) * 4
    got = P.landslide_probability(logits.to(torch.bfloat16))
    want = torch.softmax(logits.to(torch.bfloat16).float(), dim=1)[:, 1]
    assert got.dtype == torch.float32 and got.shape == (2, 5, 7)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
