"""Export a segmentation checkpoint to a self-describing ONNX file.

The exported graph maps a batch of *normalized* tiles ``image`` ``(N, C, T, T)`` float32 to the
landslide probability ``probability`` ``(N, T, T)`` float32 (softmax over the two classes, class
1, computed inside the graph), which is exactly what the
:class:`~landslide_cli.backends.Backend` protocol returns. The tile size ``T`` is fixed; the batch
axis is dynamic unless ``dynamic_batch=False`` (then it is 1).

The checkpoint's metadata travels inside the file (ONNX ``metadata_props``): key ``landslide``
holds a JSON document (see :data:`ONNX_FORMAT`) and a few flat ``landslide.*`` keys repeat the
most useful fields for tools that cannot parse JSON. Nothing is written unless the graph passes
``onnx.checker`` and the parity check (ONNX Runtime vs. PyTorch on random and real tiles).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from landslide_cli import __version__
from landslide_cli.errors import LandslideError
from landslide_cli.onnx_format import (  # noqa: F401 - re-exported
    INPUT_NAME,
    METADATA_KEY,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAME,
    parse_metadata,
    read_onnx_metadata,
)
from landslide_cli.preprocess import InputSpec
from landslide_cli.registry import Registry
from landslide_cli.reporting import Reporter, as_reporter
from landslide_cli.safety import atomic_write, check_target

#: max |p_onnx - p_torch| accepted by the parity check
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
MIN_OPSET, MAX_OPSET = 13, 20
#: random tiles (batch) and real tiles (at most) used by the parity check
PARITY_RANDOM = 2
PARITY_REAL = 3
_IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


@dataclass
class ParityResult:
    """Max absolute probability difference between ONNX Runtime and PyTorch (fp32 eager)."""

    tolerance: float
    random_max_diff: float | None = None
    real_max_diff: float | None = None
    #: the real tiles used (file paths); empty when none were found
    real_sources: list[str] = field(default_factory=list)
    #: why there is no real-input number, if there is none
    real_note: str = ""
    provider: str = "CPUExecutionProvider"

    @property
    def passed(self) -> bool:
        diffs = [d for d in (self.random_max_diff, self.real_max_diff) if d is not None]
        return all(d <= self.tolerance for d in diffs)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how it checked it."""

    path: Path
    size_bytes: int
    opset: int
    tile: int
    bands: list[str]
    fp16: bool
    dynamic_batch: bool
    exporter: str
    model_name: str
    source_path: Path
    source_sha256: str
    onnx_sha256: str
    seconds: float
    parity: ParityResult | None = None
    #: export-time graph rewrites applied (see ``optimize``)
    rewrites: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["source_path"] = str(self.source_path)
        data["precision"] = self.precision
        return data


class ProbabilityModel(nn.Module):
    """Wraps a :class:`~landslide_cli.zoo.segmenter.Segmenter`: image -> P(landslide) (N, H, W).

    ``softmax(logits, dim=1)[:, 1]``; for two classes computed as the identical
    ``sigmoid(l1 - l0)`` when ``two_class_sigmoid`` (ONNX Runtime runs a softmax over a
    non-last axis as transpose + softmax + transpose: 7 % of the CPU time at tile 512).
    """

    def __init__(self, segmenter: nn.Module, *, two_class_sigmoid: bool = False) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.two_class_sigmoid = two_class_sigmoid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmenter(image).float()
        if self.two_class_sigmoid and logits.shape[1] == 2:
            return torch.sigmoid(logits[:, 1] - logits[:, 0])
        return torch.softmax(logits, dim=1)[:, 1]


# --------------------------------------------------------------------------------------------
# export-time rewrites: the same math as a graph ONNX Runtime runs faster (guarded by parity)
# --------------------------------------------------------------------------------------------


def _pvt_mlp_forward(self: Any, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
    """timm ``MlpWithDepthwiseConv`` (eval), with the token <-> image moves written as
    NHWC reshape + permute, which ONNX Runtime folds into its NCHWc reorders instead of
    materializing two transposes of the largest tensor in the network."""
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


def _rewrite_for_onnx(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with ORT-friendly forwards on known timm blocks; names of rewrites."""
    import copy
    import types

    try:
        from timm.models import pvt_v2
    except ImportError:  # pragma: no cover - timm is a dependency
        return model, []
    targets = {
        pvt_v2.MlpWithDepthwiseConv: (_pvt_mlp_forward, ("fc1", "dwconv", "relu", "act", "fc2")),
        pvt_v2.Attention: (_pvt_attention_forward,
                           ("q", "kv", "proj", "sr", "pool", "norm", "num_heads", "head_dim",
                            "scale")),
    }
    model = copy.deepcopy(model)
    applied: set[str] = set()
    for module in model.modules():
        entry = targets.get(type(module))
        if entry and all(hasattr(module, a) for a in entry[1]):
            module.forward = types.MethodType(entry[0], module)
            applied.add(f"pvt_v2.{type(module).__name__}: channels-last reshapes")
    return model, sorted(applied)


# --------------------------------------------------------------------------------------------
# exporters: (module, example input, path, opset, dynamic_batch) -> writes an .onnx file
# --------------------------------------------------------------------------------------------

EXPORTERS: Registry = Registry("onnx exporter")


@EXPORTERS.register("torchscript", description="torch.onnx.export(dynamo=False), the default: "
                    "10x faster to export and slightly faster at runtime here")
def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path, opset: int,
                        dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice and TracerWarnings (static tile)
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, do_constant_folding=True)


@EXPORTERS.register("dynamo", description="torch.onnx.export(dynamo=True) via torch.export")
def _export_dynamo(module: nn.Module, example: torch.Tensor, path: Path, opset: int,
                   dynamic_batch: bool) -> None:
    from torch.export import Dim

    if dynamic_batch:  # torch.export specializes a size-1 dimension: trace with batch 2
        example = example.expand(2, *example.shape[1:]).contiguous()
    shapes = {"image": {0: Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    # the dynamo exporter prints progress lines to stdout
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=shapes, verbose=False)
        program.save(str(path))


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def export_onnx(
    model_ref: str | Path | None,
    out: str | Path,
    *,
    opset: int = 17,
    fp16: bool = False,
    tile: int | None = None,
    dynamic_batch: bool = True,
    check_parity: bool = True,
    device: str = "cpu",
    overwrite: bool = False,
    exporter: str = "torchscript",
    optimize: bool = True,
    parity_data: str | Path | None = None,
    reporter: Reporter | None = None,
) -> ExportReport:
    """Export a segmentation checkpoint to ONNX; verify it; write ``out`` atomically.

    Args:
        model_ref: checkpoint path, shipped model name, or ``None`` for the default model.
        out: the ``.onnx`` file to write (its folder must exist).
        opset: ONNX opset (13..20; default 17).
        fp16: store weights and compute in float16 (inputs/outputs stay float32).
        tile: tile size baked into the graph (default: the checkpoint's ``InputSpec.tile``).
        dynamic_batch: dynamic batch axis (``False``: batch fixed to 1).
        check_parity: compare ONNX Runtime with PyTorch; fail if the max absolute
            probability difference exceeds 1e-4 (fp32) or 1e-2 (fp16).
        device: where PyTorch traces and computes the reference (``cpu``, ``cuda``...).
        overwrite: replace an existing ``out``.
        exporter: ``torchscript`` (default) or ``dynamo``.
        optimize: export-time rewrites with the same math that ONNX Runtime runs faster
            (channels-last reshapes around PVTv2 convolutions, two-class sigmoid head); the
            parity check compares against the unmodified model.
        parity_data: a folder of image tiles (searched recursively) or one image for the real
            input parity check; default: ``$LANDSLIDE_SHARED/data/landslides`` when that
            variable is set, else none (the real-tile check is skipped).
        reporter: receives short status lines (``info``); ``None`` says nothing.

    Raises:
        LandslideError: bad arguments, unusable checkpoint, export failure or failed parity;
            ``out`` is then left untouched.
    """
    from landslide_cli.checkpoint import file_sha256
    from landslide_cli.devices import resolve_device
    from landslide_cli.zoo.loading import load_model

    say = as_reporter(reporter).info
    started = time.perf_counter()
    out = Path(out).expanduser()
    _check_target(out, overwrite, model_ref)
    if tile is not None and int(tile) < 32:
        raise LandslideError(f"--tile {tile} is too small; use at least 32 pixels")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LandslideError(f"--opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    export_fn = EXPORTERS.get(exporter)
    if EXPORTERS.resolve(exporter) == "dynamo" and opset < 18:
        raise LandslideError(f"the dynamo exporter needs --opset 18 or newer (got {opset})")

    dev = resolve_device(device)
    loaded = load_model(model_ref, device=dev)
    meta = loaded.meta
    spec = meta.input_spec
    tile = int(tile or spec.tile)
    if tile < 32:
        raise LandslideError(f"--tile {tile} is too small; use at least 32 pixels")
    spec.tile = tile
    reference = ProbabilityModel(loaded.model).eval().to(dev)
    rewrites: list[str] = []
    graph_model: nn.Module = loaded.model
    if optimize:
        graph_model, rewrites = _rewrite_for_onnx(loaded.model)
        if meta.arch.num_classes == 2:
            rewrites.append("two-class softmax as sigmoid(l1 - l0)")
    module = ProbabilityModel(graph_model, two_class_sigmoid=optimize).eval().to(dev)

    say(f"exporting {loaded.name} ({meta.arch.spec}) at tile {tile}, opset {opset} "
        f"with the {exporter} exporter")
    example = torch.zeros(1, spec.num_bands, tile, tile, device=dev)
    with tempfile.TemporaryDirectory(prefix="landslide-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        try:
            export_fn(module, example, raw_path, opset, dynamic_batch)
        except LandslideError:
            raise
        except Exception as exc:
            raise LandslideError(f"ONNX export of {loaded.path} failed: {_short(exc)}") from None
        import onnx

        model_proto = onnx.load(str(raw_path))
    opset = _graph_opset(model_proto, opset)

    if fp16:
        say("converting weights and activations to float16")
        model_proto = _to_float16(model_proto)
    source_sha = loaded.sha256
    _embed_metadata(model_proto, meta_dict=_exported_meta(meta.to_dict(), tile),
                    source_path=loaded.path, source_sha256=source_sha, opset=opset,
                    fp16=fp16, dynamic_batch=dynamic_batch, exporter=exporter,
                    rewrites=rewrites)
    _check_model(model_proto)
    payload = model_proto.SerializeToString()

    parity: ParityResult | None = None
    if check_parity:
        say("checking parity with PyTorch")
        parity = _parity(reference, payload, spec, dev, fp16=fp16, dynamic_batch=dynamic_batch,
                         parity_data=parity_data)
        if not parity.passed:
            worst, which = max(
                (d, name) for d, name in ((parity.random_max_diff, "random"),
                                          (parity.real_max_diff, "real")) if d is not None
            )
            raise LandslideError(
                f"parity check failed: max |p_onnx - p_torch| = {worst:.3g} on {which} input "
                f"exceeds {parity.tolerance:g}; {out} was not written"
            )

    try:
        atomic_write(out, lambda tmp: tmp.write_bytes(payload), suffix=".onnx.tmp")
    except OSError as exc:
        raise LandslideError(f"cannot write {out}: {exc.strerror or _short(exc)}") from None
    return ExportReport(
        path=out, size_bytes=out.stat().st_size, opset=opset, tile=tile, bands=list(spec.bands),
        fp16=fp16, dynamic_batch=dynamic_batch, exporter=EXPORTERS.resolve(exporter),
        model_name=loaded.name, source_path=loaded.path, source_sha256=source_sha,
        onnx_sha256=file_sha256(out), seconds=time.perf_counter() - started, parity=parity,
        rewrites=rewrites,
    )


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_target(out: Path, overwrite: bool, model_ref: Any) -> None:
    """Refuse a target that cannot or should not be written, before any work is done."""
    inputs = [Path(model_ref)] if isinstance(model_ref, (str, os.PathLike)) else []
    check_target(out, overwrite=overwrite, what="--out", suffixes=(".onnx",), inputs=inputs)


def _exported_meta(meta: dict[str, Any], tile: int) -> dict[str, Any]:
    """The checkpoint metadata as embedded: the input spec's tile is the exported tile."""
    meta = json.loads(json.dumps(meta))
    trained_tile = meta.get("input", {}).get("tile")
    meta.setdefault("input", {})["tile"] = tile
    if trained_tile is not None and trained_tile != tile:
        meta.setdefault("extra", {})["trained_tile"] = trained_tile
    return meta


def _embed_metadata(proto: Any, *, meta_dict: dict[str, Any], source_path: Path,
                    source_sha256: str, opset: int, fp16: bool, dynamic_batch: bool,
                    exporter: str, rewrites: list[str]) -> None:
    """Store the checkpoint metadata and export details in ``proto.metadata_props``."""
    spec = InputSpec.from_dict(meta_dict["input"])
    arch = meta_dict.get("architecture", {})
    arch_text = f"{arch.get('backbone', '?')}+{arch.get('decoder', '?')}"
    name = meta_dict.get("name") or source_path.stem
    doc = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "checkpoint": meta_dict,
        "source": {"file": source_path.name, "sha256": source_sha256},
        "export": {
            "opset": opset,
            "tile": spec.tile,
            "precision": "fp16" if fp16 else "fp32",
            "dynamic_batch": dynamic_batch,
            "exporter": EXPORTERS.resolve(exporter),
            "rewrites": rewrites,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "output_meaning": "landslide probability (softmax over classes, class 1), (N, H, W)",
            "landslide_version": __version__,
            "torch_version": torch.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    flat = {
        METADATA_KEY: json.dumps(doc, sort_keys=True),
        "landslide.name": name,
        "landslide.architecture": arch_text,
        "landslide.bands": ",".join(spec.bands),
        "landslide.scale": repr(float(spec.scale)),
        "landslide.mean": json.dumps(list(spec.mean)),
        "landslide.std": json.dumps(list(spec.std)),
        "landslide.tile": str(spec.tile),
        "landslide.threshold": repr(float(meta_dict.get("threshold", 0.5))),
        "landslide.classes": ",".join(meta_dict.get("classes") or []),
        "landslide.version": str(meta_dict.get("version", "")),
        "landslide.source_sha256": source_sha256,
    }
    del proto.metadata_props[:]
    for key, value in flat.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "landslide"
    proto.producer_version = __version__
    proto.doc_string = (f"landslide segmentation model {name} ({arch_text}): {INPUT_NAME} "
                        f"(N, {spec.num_bands}, {spec.tile}, {spec.tile}) normalized float32 -> "
                        f"{OUTPUT_NAME} (N, {spec.tile}, {spec.tile}) landslide probability")


def _graph_opset(proto: Any, requested: int) -> int:
    """The default-domain opset the exporter actually wrote."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return requested


def _check_model(proto: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise LandslideError(f"exported ONNX graph failed onnx.checker: {_short(exc)}") from None


def _to_float16(proto: Any) -> Any:
    """float32 -> float16 weights and activations, float32 inputs/outputs (casts inside)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - depends on the onnxruntime build
        raise LandslideError(
            f"--fp16 needs onnxruntime.transformers.float16, which is unavailable ({exc})"
        ) from None
    import logging

    quiet = logging.getLogger("onnxruntime.transformers.float16")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(proto, keep_io_types=True)
    finally:
        quiet.setLevel(level)
    _toposort(half.graph)  # the helper appends the input casts at the end of the node list
    return half


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` topologically (stable), as onnx.checker requires."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise LandslideError("exported ONNX graph has a cycle or an undefined input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _ort_session(payload: bytes, device: torch.device) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 3  # fp16 graphs warn about CPU constant folding of Sqrt
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    try:
        return ort.InferenceSession(payload, opts, providers=providers)
    except Exception as exc:
        raise LandslideError(f"ONNX Runtime cannot load the exported graph: {_short(exc)}") \
            from None


def _parity(module: nn.Module, payload: bytes, spec: InputSpec, device: torch.device, *,
            fp16: bool, dynamic_batch: bool, parity_data: str | Path | None) -> ParityResult:
    session = _ort_session(payload, device)
    result = ParityResult(tolerance=TOLERANCE["fp16" if fp16 else "fp32"],
                          provider=session.get_providers()[0])
    gen = np.random.default_rng(0)
    n = PARITY_RANDOM if dynamic_batch else 1
    random_batch = gen.standard_normal((n, spec.num_bands, spec.tile, spec.tile),
                                       dtype=np.float32)
    result.random_max_diff = _max_diff(module, session, random_batch, device, dynamic_batch)
    if not result.passed:  # failed already: no need to read real tiles
        result.real_note = "skipped (random-input parity failed)"
        return result

    tiles, sources, note = _real_tiles(spec, parity_data)
    result.real_sources, result.real_note = sources, note
    if tiles is not None:
        result.real_max_diff = _max_diff(module, session, tiles, device, dynamic_batch)
    return result


@torch.inference_mode()
def _max_diff(module: nn.Module, session: Any, batch: np.ndarray, device: torch.device,
              dynamic_batch: bool) -> float:
    reference = module(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    try:
        if dynamic_batch:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        else:
            got = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: batch[i:i + 1]})[0]
                                  for i in range(len(batch))])
    except Exception as exc:
        raise LandslideError(f"ONNX Runtime failed on the exported graph: {_short(exc)}") \
            from None
    if got.shape != reference.shape or got.dtype != np.float32:
        raise LandslideError(f"exported graph returns {got.dtype} {got.shape}, "
                             f"expected float32 {reference.shape}")
    return float(np.max(np.abs(got - reference)))


def default_parity_data() -> Path | None:
    """``$LANDSLIDE_SHARED/data/landslides`` when that variable is set, else ``None``: the
    package never looks for data outside itself (e.g. beside a source checkout)."""
    shared = os.environ.get("LANDSLIDE_SHARED")
    return Path(shared) / "data" / "landslides" if shared else None


def _real_tiles(spec: InputSpec, parity_data: str | Path | None
                ) -> tuple[np.ndarray | None, list[str], str]:
    """Up to :data:`PARITY_REAL` real tiles (one per sub-folder), normalized per ``spec``."""
    root = Path(parity_data).expanduser() if parity_data else default_parity_data()
    if root is None:
        return None, [], "no real tiles given (--parity-data, or set LANDSLIDE_SHARED)"
    if not root.exists():
        if parity_data:
            raise LandslideError(f"parity data not found: {root}")
        return None, [], f"no real tiles ({root} not found)"
    candidates = [root] if root.is_file() else _one_per_folder(root)
    tiles, sources = [], []
    for path in candidates:
        tile = _read_tile(path, spec)
        if tile is not None:
            tiles.append(tile)
            sources.append(str(path))
        if len(tiles) == PARITY_REAL:
            break
    if not tiles:
        return None, [], (f"no readable image with the model's {spec.num_bands} bands "
                          f"under {root}")
    return spec.normalize(np.stack(tiles)), sources, ""


def _one_per_folder(root: Path) -> list[Path]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES
                    and "mask" not in p.parent.name.lower())
    first: dict[Path, Path] = {}
    for path in images:
        first.setdefault(path.parent, path)
    return list(first.values()) + [p for p in images if p not in first.values()]


def _read_tile(path: Path, spec: InputSpec) -> np.ndarray | None:
    """The centre ``tile x tile`` window of ``path`` (padded if smaller), or None if unusable."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if max(spec.indices) > src.count:
                    return None
                data = src.read(spec.indices)
    except Exception:
        return None
    t = spec.tile
    _, h, w = data.shape
    top, left = max(0, (h - t) // 2), max(0, (w - t) // 2)
    data = data[:, top:top + t, left:left + t]
    ph, pw = t - data.shape[1], t - data.shape[2]
    if ph or pw:
        mode = "reflect" if ph < data.shape[1] and pw < data.shape[2] else "edge"
        data = np.pad(data, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
                      mode=mode)
    return data


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
