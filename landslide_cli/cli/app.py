"""The ``landslide`` command."""

from __future__ import annotations

import sys
import traceback

import typer
from rich.markup import escape

from landslide_cli import __version__
from landslide_cli.cli import common, eval_cmd, export_cmd, models_cmd, predict_cmd, train_cmd
from landslide_cli.errors import LandslideError
from landslide_cli.runtime import tune_allocator, tune_openmp

try:  # typer >= 0.20 vendors its own copy of click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

app = typer.Typer(
    name="landslide",
    help="Map landslides in remote-sensing imagery with compact distilled models (KDA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        common.out.print(f"landslide {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="More output (-vv for debug; shows tracebacks)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and results."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    common.state.verbose = verbose
    common.state.quiet = quiet
    common.configure_logging()


app.add_typer(train_cmd.app, name="train")
app.command("predict", help=predict_cmd.command.__doc__)(predict_cmd.command)
app.command("eval", help=eval_cmd.command.__doc__)(eval_cmd.command)
app.command("export", help=export_cmd.command.__doc__)(export_cmd.command)
app.command("models")(models_cmd.models)
app.command("info")(models_cmd.info)
app.command("fuse")(models_cmd.fuse)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every failure into one line and an exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    tune_allocator()
    tune_openmp()
    try:
        result = app(args=args, prog_name="landslide", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:  # `landslide train`: the help text
        exc.show()
        return exc.exit_code
    except click_exc.UsageError as exc:
        common.err.print(f"[red]error:[/red] {escape(usage_message(exc))}", highlight=False)
        return usage_exit_code(exc)
    except click_exc.ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        common.err.print("aborted")
        return 130
    except KeyboardInterrupt:
        common.err.print("interrupted")
        return 130
    except LandslideError as exc:
        if common.state.verbose >= 2:
            traceback.print_exc()
        common.err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return exc.exit_code
    except Exception as exc:  # last resort: still one line unless -vv
        if common.state.verbose >= 2:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        common.err.print(
            f"[red]error:[/red] {type(exc).__name__}: {first} (run with -vv for the traceback)",
            highlight=False,
        )
        return 1


def usage_message(exc: click_exc.UsageError) -> str:
    """A usage error as one line: click's message and where to find the help."""
    message = " ".join(exc.format_message().split())
    if exc.ctx is not None:
        message += f" (see `{exc.ctx.command_path} --help`)"
    return message


def usage_exit_code(exc: click_exc.UsageError) -> int:
    """1 for a bad value (like a bad choice, checked by the library's rules), 2 for a command
    line that does not parse (an unknown option, a missing argument)."""
    if isinstance(exc, click_exc.BadParameter) and not isinstance(exc,
                                                                  click_exc.MissingParameter):
        return 1
    return exc.exit_code


def run() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
