"""The torch-only PVTv2 (``landslide_cli.zoo.pvt_v2_native``) against timm's ``features_only``
model: state-dict keys and shapes, layer settings, outputs, the shipped checkpoint, the ONNX
graph, and an inference run that never imports timm or torchvision."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from landslide_cli.zoo.backbones import PVT_V2, TimmFeatures
from landslide_cli.zoo.pvt_v2_native import CONFIGS, NativeFeatures
from landslide_cli.zoo.registries import native_backbone

TESTS = Path(__file__).resolve().parent.parent
SHIPPED = TESTS.parent / "models" / "landslide-pvtb0-dcf-v2.safetensors"

#: layer settings that hold no tensor but change the output
SETTINGS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups", "padding_mode"),
    nn.Linear: ("in_features", "out_features"),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.GELU: ("approximate",),
    nn.ReLU: (),
}


def _pair(name: str, in_chans: int = 3) -> tuple[TimmFeatures, NativeFeatures]:
    """The timm model (random init) and the native one holding the same weights, eval mode."""
    torch.manual_seed(0)
    reference = TimmFeatures(name, in_chans=in_chans).eval()
    native = NativeFeatures(name, in_chans=in_chans).eval()
    native.load_state_dict(reference.state_dict(), strict=True)
    return reference, native


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_every_timm_pvt_v2_has_a_native_twin():
    assert set(CONFIGS) == set(PVT_V2)
    for name in PVT_V2:
        assert native_backbone(name) is not None
    assert native_backbone("PVT-V2-B0") is not None  # registry spelling rules
    assert native_backbone("pvt_v1_kda") is None  # no twin: the registered builder is used


@pytest.mark.parametrize("name", PVT_V2)
def test_state_dict_and_layer_settings_match_timm(name):
    with torch.device("meta"):
        reference = TimmFeatures(name, in_chans=4)
        native = NativeFeatures(name, in_chans=4)
    assert native.widths == reference.widths and native.strides == reference.strides
    assert native.reduction == reference.reduction and native.model_name == name
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in native.state_dict().items()}
    assert list(ours) == list(theirs)  # same names, same order
    assert ours == theirs
    checked = 0
    for path, module in reference.named_modules():
        kind = next((k for k in SETTINGS if isinstance(module, k)), None)  # timm subclasses
        if kind is None:
            continue
        twin = native.get_submodule(path)
        assert isinstance(twin, kind), path
        for attr in SETTINGS[kind]:
            assert getattr(twin, attr) == getattr(module, attr), f"{path}.{attr}"
        checked += 1
    assert checked > 10 * sum(CONFIGS[name].depths)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
@pytest.mark.parametrize("shape", [(1, 3, 72, 100), (2, 4, 33, 47)])
def test_forward_matches_timm(name, shape):
    reference, native = _pair(name, in_chans=shape[1])
    with torch.no_grad():
        # scale the weights away from timm's near-identity init so that every layer matters
        for p_ref, p_nat in zip(reference.parameters(), native.parameters(), strict=True):
            p_ref.mul_(1.0 + torch.rand_like(p_ref))
            p_nat.copy_(p_ref)
        x = torch.randn(*shape)
        theirs, ours = reference(x), native(x)
    h, w = shape[-2:]
    assert [tuple(t.shape[-2:]) for t in ours] == [(-(-h // s), -(-w // s))
                                                   for s in (4, 8, 16, 32)]
    assert [t.shape[1] for t in ours] == native.widths
    assert all(t.is_contiguous() for t in ours)
    assert _max_diff(theirs, ours) <= 1e-5


def test_train_mode_runs_the_same_forward():
    _, native = _pair("pvt_v2_b0")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        evaluated = native(x)
        trained = native.train()(x)
    assert _max_diff(evaluated, trained) == 0.0
    loss = sum(t.square().mean() for t in native(x))
    loss.backward()
    assert native.body.patch_embed.proj.weight.grad is not None


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped v2 checkpoint is not present")
def test_shipped_checkpoint_loads_natively_with_the_same_probabilities():
    from landslide_cli.checkpoint import load_checkpoint
    from landslide_cli.zoo.loading import segmenter_from_checkpoint

    meta, state = load_checkpoint(SHIPPED)
    native = segmenter_from_checkpoint(meta, state, source="v2", native=True)
    reference = segmenter_from_checkpoint(meta, state, source="v2", native=False)
    assert isinstance(native.backbone, NativeFeatures)
    assert isinstance(reference.backbone, TimmFeatures)
    prefix = "backbone.body."
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    loaded = native.backbone.body.load_state_dict(body, strict=True)
    assert body and not loaded.missing_keys and not loaded.unexpected_keys
    torch.manual_seed(0)
    x = torch.randn(2, meta.input_spec.model_channels, 96, 80)  # not a multiple of 32
    theirs, ours = reference.predict_proba(x), native.predict_proba(x)
    assert float((theirs - ours).abs().max()) <= 1e-5
    assert float(theirs.std()) > 1e-3  # a real map, not a constant


def test_build_segmenter_native_only_for_random_init_inference():
    from landslide_cli.zoo import build_segmenter

    assert isinstance(build_segmenter("pvt_v2_b0+dcf", native=True).backbone, NativeFeatures)
    assert isinstance(build_segmenter("pvt_v2_b0+dcf").backbone, TimmFeatures)  # training


def _onnx_ops(module: nn.Module) -> tuple[collections.Counter, collections.Counter]:
    """Op types and Transpose permutations of ``module`` exported at 64 x 64."""
    import onnx

    class Maps(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.inner(x))

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(Maps(module).eval(), (torch.randn(1, 3, 64, 64),), str(path),
                          dynamo=False, opset_version=17)
        nodes = onnx.load(str(path)).graph.node
    return (collections.Counter(n.op_type for n in nodes if n.op_type != "Identity"),
            collections.Counter(tuple(n.attribute[0].ints) for n in nodes
                                if n.op_type == "Transpose"))


def test_native_onnx_graph_is_timms_rewritten_graph():
    from landslide_cli.zoo.pvt_onnx import rewrite_for_onnx

    reference, native = _pair("pvt_v2_b0")
    same, none = rewrite_for_onnx(native)
    assert none == [] and same is not native
    rewritten, names = rewrite_for_onnx(reference)
    assert any("MlpWithDepthwiseConv" in n for n in names)
    assert any("Attention" in n for n in names)
    ops, perms = _onnx_ops(native)
    assert (ops, perms) == _onnx_ops(rewritten)  # timm's graph also has Identity (dropout)
    assert perms[(0, 2, 1)] == 0 and perms[(0, 3, 1, 2)] >= 8


PREDICT = """
import sys
sys.path.insert(0, {tests!r})
from _tiny_onnx import write_rgb_scene
from pathlib import Path
tmp = Path({tmp!r})
scene = write_rgb_scene(tmp / "scene.tif")
from landslide_cli.cli.app import main
code = main(["predict", str(scene), "--out", str(tmp / "out.gpkg"), "--model", {model!r},
             "--backend", "torch", "--device", "cpu", "--json", "--quiet"])
print("EXIT", code)
print("TIMM", "timm" in sys.modules)
print("TORCHVISION", "torchvision" in sys.modules)
"""


def test_torch_predict_never_imports_timm_or_torchvision(tiny_checkpoint, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LANDSLIDE_CACHE": str(tmp_path / "cache")}
    script = PREDICT.format(tests=str(TESTS), tmp=str(tmp_path), model=str(tiny_checkpoint))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert "EXIT 0" in lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TIMM False" in lines, "a torch predict imported timm"
    assert "TORCHVISION False" in lines, "a torch predict imported torchvision"
    assert (tmp_path / "out.gpkg").is_file()
