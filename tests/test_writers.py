"""A rule of the suite, over every writer of the project: never the input, never partial,
never silently replaced.

Each writer is run three ways: with a failure injected in the middle of its write (after part
of the bytes reached the disk), over an existing file of the user's, and normally. A failed
write leaves the folder exactly as it was; a finished one leaves only its target.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from landslide_cli.errors import LandslideError

sys.path.insert(0, str(Path(__file__).parent / "predict"))
sys.path.insert(0, str(Path(__file__).parent / "data"))
from _predict_helpers import bright_standin, write_tif
from _tiles import tile_pair, write_raster

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _staged(path: Any, target: Path) -> bool:
    """Whether ``path`` is a temporary being written for ``target`` (not some other file)."""
    return Path(path).name.startswith(f".{target.name}.")


def _half_then_fail(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, target: Path,
                    *, arg: int = 0, raise_exc: BaseException = ENOSPC) -> None:
    """Patch ``owner.name`` so that writing ``target``'s temporary stops half-way."""
    real = getattr(owner, name)

    def broken(*args: Any, **kwargs: Any) -> Any:
        dest = args[arg] if len(args) > arg else kwargs.get("filename") or kwargs.get("fname")
        if dest is not None and _staged(dest, target):
            real(*args, **kwargs)
            data = Path(dest).read_bytes()
            Path(dest).write_bytes(data[: max(1, len(data) // 2)])
            raise raise_exc
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, broken)


@dataclass
class Writer:
    name: str
    suffix: str
    #: write(ctx, target, overwrite) -> produces target
    write: Callable[[Any, Path, bool], Any]
    #: inject(monkeypatch, target): make the next write fail half-way
    inject: Callable[[pytest.MonkeyPatch, Path], None]
    #: refuses an existing target unless overwrite (user-facing outputs)
    guards_existing: bool = True
    #: input files of the write (must never be a target)
    inputs: Callable[[Any], list[Path]] = field(default=lambda ctx: [])


class Ctx:
    """Inputs shared by the writers, made once per test in its own folder."""

    def __init__(self, root: Path, tiny_checkpoint: Path) -> None:
        self.root = root
        self.inputs = root / "inputs"
        self.inputs.mkdir()
        rng = np.random.default_rng(0)
        self.scene = write_tif(self.inputs / "scene.tif",
                               rng.integers(0, 255, (3, 60, 70), np.uint8))
        self.checkpoint = tiny_checkpoint
        self.tiles = self.inputs / "tiles"
        for k in range(2):
            image, mask = tile_pair(rng, 32)
            write_raster(self.tiles / "img" / f"t{k}.png", image)
            write_raster(self.tiles / "mask" / f"t{k}.png", mask)
        self._report = None

    def report(self) -> Any:
        if self._report is None:
            from landslide_cli.evaluate import evaluate

            self._report = evaluate(bright_standin(), dataset="folder", root=self.tiles,
                                    split="all")
        return self._report


def _predict(ctx: Ctx, target: Path, overwrite: bool, **kw: Any) -> Any:
    from landslide_cli.predict import predict_scenes

    out = kw.pop("out", target)
    return predict_scenes(ctx.scene, out, model=bright_standin(), tile=32, overwrite=overwrite,
                          **kw)


def _gpkg_inject(mp: pytest.MonkeyPatch, target: Path) -> None:
    import pyogrio

    real, calls = pyogrio.write_dataframe, []

    def broken(frame: Any, path: Any, *a: Any, **k: Any) -> Any:
        calls.append(k.get("layer"))
        real(frame, path, *a, **k)
        if _staged(path, target) and len(calls) == 2:  # one layer written, then the disk fills
            raise ENOSPC
    mp.setattr(pyogrio, "write_dataframe", broken)


def _prob_inject(mp: pytest.MonkeyPatch, target: Path) -> None:
    import rasterio.shutil
    from rasterio.errors import RasterioIOError

    _half_then_fail(mp, rasterio.shutil, "copy", target, arg=1,
                    raise_exc=RasterioIOError("TIFFAppendToStrip: write error"))


def _figure_inject(mp: pytest.MonkeyPatch, target: Path) -> None:
    from matplotlib.figure import Figure

    _half_then_fail(mp, Figure, "savefig", target, arg=1)


def _text_inject(mp: pytest.MonkeyPatch, target: Path) -> None:
    def broken_text(self: Path, data: str, *a: Any, **k: Any) -> int:
        if _staged(self, target):
            with open(self, "w", encoding="utf-8") as fh:
                fh.write(data[: len(data) // 2])
            raise ENOSPC
        return real_text(self, data, *a, **k)

    def broken_bytes(self: Path, data: bytes) -> int:
        if _staged(self, target):
            with open(self, "wb") as fh:
                fh.write(data[: len(data) // 2])
            raise ENOSPC
        return real_bytes(self, data)

    real_text, real_bytes = Path.write_text, Path.write_bytes
    mp.setattr(Path, "write_text", broken_text)
    mp.setattr(Path, "write_bytes", broken_bytes)


def _safetensors_inject(mp: pytest.MonkeyPatch, target: Path) -> None:
    import safetensors.torch

    _half_then_fail(mp, safetensors.torch, "save_file", target, arg=1)


def _export(ctx: Ctx, target: Path, overwrite: bool) -> Any:
    from landslide_cli.export import export_onnx

    return export_onnx(ctx.checkpoint, target, tile=64, check_parity=False, optimize=False,
                       overwrite=overwrite)


def _checkpoint(ctx: Ctx, target: Path, overwrite: bool) -> Any:
    from landslide_cli.checkpoint import load_checkpoint, save_checkpoint

    meta, tensors = load_checkpoint(ctx.checkpoint)
    return save_checkpoint(target, tensors, meta)


def _state(ctx: Ctx, target: Path, overwrite: bool) -> Any:
    from landslide_cli.train.state import save_state

    return save_state(target, {"epoch": 3, "model": {"w": torch.ones(4)}})


def _split(ctx: Ctx, target: Path, overwrite: bool) -> Any:
    from landslide_cli.data.splits import SplitAssignment, save_split_file

    split = SplitAssignment(mode="random", seed=0, ratios=(0.8, 0.1, 0.1), train=["a"],
                            val=["b"], test=["c"])
    return save_split_file(target, split)


def _config(ctx: Ctx, target: Path, overwrite: bool) -> Any:
    from landslide_cli.train.config import SegmentConfig, save_config

    return save_config(SegmentConfig(), target)


WRITERS = [
    Writer("geopackage", ".gpkg", _predict, _gpkg_inject,
           inputs=lambda ctx: [ctx.scene]),
    Writer("probability COG", ".tif",
           lambda ctx, t, ow: _predict(ctx, t, ow, out=t.with_name("slides.gpkg"), prob_out=t),
           _prob_inject, inputs=lambda ctx: [ctx.scene]),
    Writer("quicklook", ".png",
           lambda ctx, t, ow: _predict(ctx, t, ow, out=t.with_name("slides.gpkg"), quicklook=t),
           _figure_inject, inputs=lambda ctx: [ctx.scene]),
    Writer("onnx", ".onnx", _export, _text_inject),
    Writer("checkpoint", ".safetensors", _checkpoint, _safetensors_inject,
           guards_existing=False),
    Writer("train state", ".safetensors", _state, _safetensors_inject, guards_existing=False),
    Writer("split file", ".json", _split, _text_inject, guards_existing=False),
    Writer("train config", ".yaml", _config, _text_inject, guards_existing=False),
    Writer("metrics json", ".json", lambda ctx, t, ow: ctx.report().write_json(t, overwrite=ow),
           _text_inject),
    Writer("metrics csv", ".csv", lambda ctx, t, ow: ctx.report().write_csv(t, overwrite=ow),
           _text_inject),
    Writer("eval figure", ".png",
           lambda ctx, t, ow: ctx.report().write_figure(t, overwrite=ow), _figure_inject),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def ctx(tmp_path: Path, tiny_checkpoint: Path) -> Ctx:
    return Ctx(tmp_path, tiny_checkpoint)


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_a_failure_mid_write_leaves_the_old_file_and_no_litter(writer: Writer, ctx: Ctx,
                                                              monkeypatch: pytest.MonkeyPatch):
    out = ctx.root / "out"
    out.mkdir()
    target = out / f"result{writer.suffix}"
    target.write_bytes(b"the user's own file")
    ctx.report() if "metrics" in writer.name or "figure" in writer.name else None
    before = _snapshot(out)
    writer.inject(monkeypatch, target)
    with pytest.raises(LandslideError) as info:
        writer.write(ctx, target, True)
    assert len(str(info.value).splitlines()) == 1
    assert "No space left" in str(info.value) or "write error" in str(info.value)
    assert _snapshot(out) == before, "a failed write changed or left files"


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_a_finished_write_leaves_only_its_target(writer: Writer, ctx: Ctx):
    out = ctx.root / "out"
    out.mkdir()
    target = out / f"result{writer.suffix}"
    writer.write(ctx, target, False)
    names = {p.name for p in out.iterdir()}
    assert target.name in names and not [n for n in names if n.startswith(".")]
    assert target.stat().st_size > 0


@pytest.mark.parametrize("writer", [w for w in WRITERS if w.guards_existing],
                         ids=lambda w: w.name)
def test_an_existing_file_is_never_silently_replaced(writer: Writer, ctx: Ctx):
    out = ctx.root / "out"
    out.mkdir()
    target = out / f"result{writer.suffix}"
    target.write_bytes(b"the user's own file")
    with pytest.raises(LandslideError, match="already exists"):
        writer.write(ctx, target, False)
    assert target.read_bytes() == b"the user's own file"
    assert {p.name for p in out.iterdir()} == {target.name}


def test_eval_outputs_never_replace_a_tile_or_the_model(ctx: Ctx, run_cli, tiny_checkpoint):
    tile = ctx.tiles / "img" / "t0.png"
    before = tile.read_bytes()
    report = ctx.report()
    for write in (report.write_json, report.write_csv, report.write_figure):
        with pytest.raises(LandslideError, match="input of this run"):
            write(tile, overwrite=True)
    assert tile.read_bytes() == before
    res = run_cli("eval", "--root", ctx.tiles, "--split", "all", "--model", tiny_checkpoint,
                  "--json", tiny_checkpoint, "--overwrite")
    assert res.exit_code == 1 and "input of this run" in res.stderr
    res = run_cli("eval", "--root", ctx.tiles, "--split", "all", "--model", tiny_checkpoint,
                  "--json", ctx.root / "m.json", "--csv", ctx.root / "m.json")
    assert res.exit_code == 1 and "same file" in res.stderr
    assert not (ctx.root / "m.json").exists()


@pytest.mark.parametrize("writer", [w for w in WRITERS if w.name in
                                    ("geopackage", "probability COG", "quicklook")],
                         ids=lambda w: w.name)
def test_an_input_is_never_a_target_even_with_overwrite(writer: Writer, ctx: Ctx):
    for source in writer.inputs(ctx):
        renamed = source.with_suffix(writer.suffix)  # the input under the writer's suffix
        source.rename(renamed)
        try:
            ctx.scene = renamed
            before = renamed.read_bytes()
            with pytest.raises(LandslideError, match="input of this run"):
                writer.write(ctx, renamed, True)
            assert renamed.read_bytes() == before
        finally:
            renamed.rename(source)
            ctx.scene = source
