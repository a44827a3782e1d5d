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

This module holds the exporters and :func:`export_onnx`, which runs the steps; the parts live
beside it: the file format and its metadata in :mod:`landslide_cli.onnx_format`, the PVTv2
rewrites in :mod:`landslide_cli.zoo.pvt_onnx`, the float16 conversion in
:mod:`landslide_cli.export_fp16` and the parity check in :mod:`landslide_cli.export_parity`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landslide_cli.errors import LandslideError
from landslide_cli.export_fp16 import to_float16
from landslide_cli.export_parity import (  # noqa: F401 - default_parity_data re-exported
    ParityResult,
    default_parity_data,
    run_parity,
)
from landslide_cli.onnx_format import (  # noqa: F401 - re-exported
    INPUT_NAME,
    METADATA_KEY,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAME,
    embed_metadata,
    parse_metadata,
    read_onnx_metadata,
)
from landslide_cli.preprocess import InputSpec
from landslide_cli.registry import Registry
from landslide_cli.reporting import Reporter, as_reporter
from landslide_cli.safety import atomic_write, check_target, first_line

#: max |p_onnx - p_torch| accepted by the parity check
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
MIN_OPSET, MAX_OPSET = 13, 20
#: an exporter: (module, example input, path, opset, dynamic_batch) -> writes an .onnx file
Exporter = Callable[[nn.Module, torch.Tensor, Path, int, bool], None]


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
# exporters (see Exporter), by name
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
            (two-class sigmoid head; channels-last reshapes around the convolutions of a timm
            PVTv2, which the loaded torch-only PVTv2 has already); the parity check compares
            against the unmodified model.
        parity_data: a folder of image tiles (searched recursively) or one image for the real
            input parity check; default: ``$LANDSLIDE_SHARED/data/landslides`` when that
            variable is set, else none (the real-tile check is skipped).
        reporter: receives short status lines (``info``); ``None`` says nothing.

    Raises:
        LandslideError: bad arguments, unusable checkpoint, export failure or failed parity;
            ``out`` is then left untouched.
    """
    from landslide_cli.checkpoint import file_sha256

    say = as_reporter(reporter).info
    started = time.perf_counter()
    out = Path(out).expanduser()
    export_fn = _check_request(out, overwrite, model_ref, tile=tile, opset=opset,
                               exporter=exporter)
    loaded, spec, dev = _load(model_ref, device, tile)
    tile = spec.tile
    reference, module, rewrites = _graph_modules(loaded, optimize, dev)

    say(f"exporting {loaded.name} ({loaded.meta.arch.spec}) at tile {tile}, opset {opset} "
        f"with the {exporter} exporter")
    example = torch.zeros(1, spec.model_channels, tile, tile, device=dev)
    model_proto = _trace(export_fn, module, example, source=loaded.path, opset=opset,
                         dynamic_batch=dynamic_batch)
    opset = _graph_opset(model_proto, opset)
    if fp16:
        say("converting weights and activations to float16")
        model_proto = to_float16(model_proto)
    embed_metadata(model_proto, meta_dict=_exported_meta(loaded.meta.to_dict(), tile),
                   source_path=loaded.path, source_sha256=loaded.sha256, opset=opset,
                   fp16=fp16, dynamic_batch=dynamic_batch,
                   exporter=EXPORTERS.resolve(exporter), rewrites=rewrites,
                   torch_version=torch.__version__)
    _check_model(model_proto)
    payload = model_proto.SerializeToString()

    parity: ParityResult | None = None
    if check_parity:
        say("checking parity with PyTorch")
        parity = _check_parity(reference, payload, spec, dev, fp16=fp16,
                               dynamic_batch=dynamic_batch, parity_data=parity_data, out=out)
    _write(out, payload)
    return ExportReport(
        path=out, size_bytes=out.stat().st_size, opset=opset, tile=tile, bands=list(spec.bands),
        fp16=fp16, dynamic_batch=dynamic_batch, exporter=EXPORTERS.resolve(exporter),
        model_name=loaded.name, source_path=loaded.path, source_sha256=loaded.sha256,
        onnx_sha256=file_sha256(out), seconds=time.perf_counter() - started, parity=parity,
        rewrites=rewrites,
    )


# --------------------------------------------------------------------------------------------
# the steps of export_onnx
# --------------------------------------------------------------------------------------------


def _check_request(out: Path, overwrite: bool, model_ref: Any, *, tile: int | None, opset: int,
                   exporter: str) -> Exporter:
    """Refuse a target or option that cannot work, before any work is done; the exporter."""
    inputs = [Path(model_ref)] if isinstance(model_ref, (str, os.PathLike)) else []
    check_target(out, overwrite=overwrite, what="--out", suffixes=(".onnx",), inputs=inputs)
    if tile is not None:
        _check_tile(int(tile))
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LandslideError(f"--opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    export_fn = EXPORTERS.get(exporter)
    if EXPORTERS.resolve(exporter) == "dynamo" and opset < 18:
        raise LandslideError(f"the dynamo exporter needs --opset 18 or newer (got {opset})")
    return export_fn


def _check_tile(tile: int) -> None:
    if tile < 32:
        raise LandslideError(f"--tile {tile} is too small; use at least 32 pixels")


def _load(model_ref: str | Path | None, device: str, tile: int | None
          ) -> tuple[Any, InputSpec, torch.device]:
    """The loaded model, its input spec with the exported tile, and the torch device."""
    from landslide_cli.devices import resolve_device
    from landslide_cli.zoo.loading import load_model

    dev = resolve_device(device)
    loaded = load_model(model_ref, device=dev)
    spec = loaded.meta.input_spec
    spec.tile = int(tile or spec.tile)
    _check_tile(spec.tile)
    return loaded, spec, dev


def _graph_modules(loaded: Any, optimize: bool, dev: torch.device
                   ) -> tuple[nn.Module, nn.Module, list[str]]:
    """The parity reference (the unmodified model), the module to export, and its rewrites."""
    from landslide_cli.zoo.pvt_onnx import rewrite_for_onnx

    reference = ProbabilityModel(loaded.model).eval().to(dev)
    rewrites: list[str] = []
    graph_model: nn.Module = loaded.model
    if optimize:
        graph_model, rewrites = rewrite_for_onnx(loaded.model)
        if loaded.meta.arch.num_classes == 2:
            rewrites.append("two-class softmax as sigmoid(l1 - l0)")
    module = ProbabilityModel(graph_model, two_class_sigmoid=optimize).eval().to(dev)
    return reference, module, rewrites


def _trace(export_fn: Exporter, module: nn.Module, example: torch.Tensor, *, source: Path,
           opset: int, dynamic_batch: bool) -> Any:
    """Run the exporter into a temporary folder; the ``onnx.ModelProto`` it wrote."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="landslide-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        try:
            export_fn(module, example, raw_path, opset, dynamic_batch)
        except LandslideError:
            raise
        except Exception as exc:
            raise LandslideError(f"ONNX export of {source} failed: {first_line(exc)}") from None
        return onnx.load(str(raw_path))


def _exported_meta(meta: dict[str, Any], tile: int) -> dict[str, Any]:
    """The checkpoint metadata as embedded: the input spec's tile is the exported tile."""
    meta = json.loads(json.dumps(meta))
    trained_tile = meta.get("input", {}).get("tile")
    meta.setdefault("input", {})["tile"] = tile
    if trained_tile is not None and trained_tile != tile:
        meta.setdefault("extra", {})["trained_tile"] = trained_tile
    return meta


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
        raise LandslideError(f"exported ONNX graph failed onnx.checker: {first_line(exc)}") \
            from None


def _check_parity(reference: nn.Module, payload: bytes, spec: InputSpec, dev: torch.device, *,
                  fp16: bool, dynamic_batch: bool, parity_data: str | Path | None,
                  out: Path) -> ParityResult:
    """Run the parity check against :data:`TOLERANCE`; refuse a graph that fails it."""
    parity = run_parity(reference, payload, spec, dev,
                        tolerance=TOLERANCE["fp16" if fp16 else "fp32"],
                        dynamic_batch=dynamic_batch, parity_data=parity_data)
    if not parity.passed:
        worst, which = parity.worst()
        raise LandslideError(
            f"parity check failed: max |p_onnx - p_torch| = {worst:.3g} on {which} input "
            f"exceeds {parity.tolerance:g}; {out} was not written"
        )
    return parity


def _write(out: Path, payload: bytes) -> None:
    try:
        atomic_write(out, lambda tmp: tmp.write_bytes(payload), suffix=".onnx.tmp")
    except OSError as exc:
        raise LandslideError(f"cannot write {out}: {exc.strerror or first_line(exc)}") from None
