"""`landslide eval`: metrics of a model on a labelled data set, overall and per region."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from landslide_cli.cli import common, options
from landslide_cli.cli.reporting import cli_reporter
from landslide_cli.errors import LandslideError
from landslide_cli.evaluate import KDA_PAPER, EvalReport, evaluate
from landslide_cli.safety import check_distinct, check_target


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _inference_note(model: dict) -> str:
    """``", TTA d4, BatchNorm adapted on 64 tiles"`` (empty for a plain run)."""
    tta, adapted = model.get("tta") or "none", model.get("adapt_bn")
    note = f", TTA {tta}" if tta != "none" else ""
    if adapted:
        note += f", BatchNorm adapted on {adapted['windows']} tiles"
    return note


def report_table(report: EvalReport) -> Table:
    """Overall and per-region metrics (percent) with pixel counts, plus the KDA paper's
    published numbers as a clearly labelled reference row."""
    m = report.model
    d = report.dataset
    table = Table(
        title=(f"model {m.get('name')} (sha256 {str(m.get('sha256'))[:12]}, "
               f"{m.get('backend')} on {m.get('device')}), threshold {report.threshold:.3f}"
               + (" (--threshold)" if report.threshold_source == "user" else " (the model's)")
               + _inference_note(m) + "\n"
               f"{d.get('name')} {d.get('root')}, split {d.get('split')}"
               + (f" ({d.get('split_mode')})" if d.get("split") != "all" else "")),
        caption=("metrics in %, from one confusion matrix per row (docs/metrics.md); F1/P/R/IoU "
                 "= landslide class, mean F1 / mean P = class-mean F1 / precision (mean over "
                 "landslide and background), LS px % = share of reference landslide pixels.\n"
                 f"Reference row: {KDA_PAPER['source']} — other work, other split, not "
                 "comparable; its precision is read as class-mean, like its F1."),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    cols = ["region", "tiles", "pixels", "LS px %", "IoU", "P", "R", "F1", "bg IoU", "mIoU",
            "OA", "mean F1", "mean P"]
    if report.objects is not None:
        cols += ["obj P", "obj R", "obj F1"]
    for i, col in enumerate(cols):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i > 0)
    counts = report.region_tiles()

    def row(name: str, cm, n_tiles: int, objects=None, style: str | None = None,
            end_section: bool = False) -> None:
        r = cm.compute()
        cells = [name, str(n_tiles), f"{cm.total:,}",
                 _pct(cm.positives / cm.total if cm.total else None)]
        cells += [_pct(r[k]) for k in ("iou", "precision", "recall", "f1", "background_iou",
                                       "miou", "oa", "mean_f1", "mean_precision")]
        if report.objects is not None:
            o = objects.compute() if objects is not None else None
            cells += [_pct(o["precision"]) if o else "–", _pct(o["recall"]) if o else "–",
                      _pct(o["f1"]) if o else "–"]
        table.add_row(*cells, style=style, end_section=end_section)

    regions = report.per_region
    for j, (name, cm) in enumerate(regions.items()):
        row(name, cm, counts.get(name, 0), report.objects_per_region.get(name),
            end_section=j == len(regions) - 1)
    row("overall", report.overall, len(report.tiles), report.objects, style="bold",
        end_section=True)
    ref = ["KDA paper, CAS (reference)", "", "", ""]
    ref += [f"{KDA_PAPER['iou']:.2f}", "", "", "", "",
            f"{KDA_PAPER['miou']:.2f}", f"{KDA_PAPER['oa']:.2f}", f"{KDA_PAPER['mean_f1']:.2f}",
            f"{KDA_PAPER['precision']:.2f}"]
    if report.objects is not None:
        ref += ["", "", ""]
    table.add_row(*ref, style="dim italic")
    return table


def _check_outputs(outputs: list[tuple[str, Path | None, tuple[str, ...]]], *, overwrite: bool,
                   model: str | None) -> None:
    """Every output checked before the evaluation runs (never the model file, never an
    existing file without --overwrite, never two outputs on one file)."""
    inputs = [Path(model)] if model and Path(model).is_file() else []
    for what, path, suffixes in outputs:
        if path is not None:
            check_target(path.expanduser(), overwrite=overwrite, what=what, suffixes=suffixes,
                         inputs=inputs)
    check_distinct([(what, path) for what, path, _ in outputs])


def command(
    dataset: str = options.dataset("folder"),
    root: Path = typer.Option(..., "--root", help="Root folder of the data set."),
    split: str = options.split("test", help="Split to evaluate."),
    regions: list[str] | None = typer.Option(
        None, "--regions", "--region",
        help="Regions (sub-datasets) to evaluate; repeat or separate with commas. Case and "
             "bracket style are ignored; a unique prefix is enough."),
    model: str | None = options.model(),
    backend: str = options.backend(),
    precision: str = options.precision(),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, help="Tiles per batch."),
    device: str = options.device(),
    threshold: float | None = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                           help="Decision threshold (default: the model's); "
                                                "0.5 compares the two classes (argmax), as the "
                                                "KDA paper does."),
    objects: bool = typer.Option(False, "--objects",
                                 help="Also score connected landslide objects (IoU >= 0.5)."),
    split_file: Path | None = typer.Option(None, "--split-file",
                                           help="JSON split file: read if it exists, else "
                                                "written."),
    split_mode: str | None = options.split_mode(
        "How tiles are split (default: the data set's: blocked for cas, random otherwise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Skip unpaired or malformed tiles with a warning."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON."),
    csv_path: Path | None = typer.Option(None, "--csv",
                                         help="Write one CSV row per region plus overall."),
    figure: Path | None = typer.Option(None, "--figure",
                                       help="Write a PNG: worst/best tiles and the PR curve."),
    overwrite: bool = options.overwrite("Replace existing --json/--csv/--figure files."),
    tta: str = options.tta(),
    adapt_bn: bool = options.adapt_bn(),
    adapt_bn_windows: int = options.adapt_bn_windows("tiles of the evaluated set"),
    rescale: str = options.rescale("the tiles"),
) -> None:
    """Evaluate a model on labelled tiles: IoU, precision, recall, F1, mIoU, OA per region."""
    _check_outputs([("--json", json_path, ()), ("--csv", csv_path, ()),
                    ("--figure", figure, (".png",))], overwrite=overwrite, model=model)
    if split_file is not None and not split_file.expanduser().resolve().parent.is_dir():
        raise LandslideError(f"cannot write {split_file}: its folder does not exist")
    report = evaluate(
        model, dataset=dataset, root=root, split=split, regions=regions,
        batch_size=batch_size, device=device, backend=backend, threshold=threshold,
        objects=objects, split_file=split_file, skip_bad=skip_bad,
        reporter=cli_reporter(), split_mode=split_mode, seed=seed,
        tta=tta, adapt_bn=adapt_bn, adapt_bn_windows=adapt_bn_windows, rescale=rescale,
        precision=precision,
    )
    table = report_table(report)
    if common.out.is_terminal:
        common.out.print(table)
    else:  # a wide table: keep it whole when stdout is a file or a pipe
        Console(file=common.out.file, width=max(common.out.width, 160), soft_wrap=True,
                no_color=common.out.no_color).print(table)
    best = report.best_threshold
    common.out.print(
        f"best-F1 threshold {best['threshold']:.3f}: F1 {100 * best['f1']:.2f}, precision "
        f"{100 * best['precision']:.2f}, recall {100 * best['recall']:.2f} "
        f"(used {report.threshold:.3f})",
        highlight=False,
    )
    if json_path is not None:
        common.info(f"wrote {report.write_json(json_path, overwrite=overwrite)}")
    if csv_path is not None:
        common.info(f"wrote {report.write_csv(csv_path, overwrite=overwrite)}")
    if figure is not None:
        common.info(f"wrote {report.write_figure(figure, overwrite=overwrite)}")
