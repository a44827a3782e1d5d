"""The layer rule: the library never imports the CLI; it reports through ``Reporter``."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

from _recording import RecordingReporter

import landslide_cli
from landslide_cli.reporting import LoggingReporter, NullReporter, QuietReporter, Reporter

PACKAGE = Path(landslide_cli.__file__).resolve().parent
#: ``python -m landslide_cli``: the console entry point, part of the CLI
ENTRY_POINTS = {PACKAGE / "__main__.py"}


def _imported(tree: ast.AST, module: str) -> list[str]:
    """Every module an ``import`` anywhere in ``tree`` (top level or inside functions) names;
    relative imports resolved against ``module``."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[:-node.level]
                base = ".".join([*parts, base] if base else parts)
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.parts[:2] == ("landslide_cli", "cli") or path in ENTRY_POINTS:
            continue
        module = ".".join(rel.with_suffix("").parts)
        if path.name == "__init__.py":
            module += ".__init__"  # relative imports resolve against the package itself
        for name in _imported(ast.parse(path.read_text(encoding="utf-8")), module):
            if name == "landslide_cli.cli" or name.startswith("landslide_cli.cli."):
                offenders.append(f"{rel}: {name}")
    assert offenders == []


def test_the_library_loads_without_rich_or_typer():
    code = ("import sys, landslide_cli.predict, landslide_cli.evaluate, landslide_cli.export, "
            "landslide_cli.train, landslide_cli.reporting\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'typer') "
            "or m.startswith('landslide_cli.cli')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    assert proc.stdout.strip() == "[]", proc.stdout


def _loaded_after(module: str, prefixes: tuple[str, ...]) -> list[str]:
    code = (f"import sys, {module}\n"
            f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=300)
    return ast.literal_eval(proc.stdout)


def test_light_imports():
    """ONNX Runtime deployments load without torch or the exporter; metadata readers and the
    data layer load without the model zoo (timm)."""
    assert _loaded_after("landslide_cli.onnx_backend",
                         ("torch", "timm", "landslide_cli.export", "landslide_cli.zoo")) == []
    for module in ("landslide_cli.checkpoint", "landslide_cli.data"):
        assert _loaded_after(module, ("timm", "landslide_cli.zoo")) == [], module


def test_null_and_logging_reporters(caplog, capfd):
    for rep in (NullReporter(), LoggingReporter(), QuietReporter(RecordingReporter())):
        assert isinstance(rep, Reporter)
    null = NullReporter()
    null.info("a")
    null.warn("b")
    with null.progress(3, "x") as bar:
        bar.advance()
        bar.describe("y")
    with caplog.at_level(logging.DEBUG, logger="landslide"):
        rep = LoggingReporter()
        rep.info("status")
        rep.warn("careful")
        with rep.progress(4, "predict") as bar:
            bar.advance(3)
            bar.describe("scene.tif")
        bar.close()  # twice is fine
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [("landslide", logging.INFO, "status"),
                   ("landslide", logging.WARNING, "careful"),
                   ("landslide", logging.DEBUG, "scene.tif: 3/4")]
    rec = RecordingReporter()
    quiet = QuietReporter(rec)
    quiet.info("hidden")
    quiet.warn("shown")
    quiet.progress(2, "hidden").close()
    assert (rec.infos, rec.warnings, rec.bars) == ([], ["shown"], [])
    assert capfd.readouterr() == ("", "")
