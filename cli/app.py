"""The `fracscan` command line: predict | serve | export | calibrate | evaluate | health | listen | monitor."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from fracscan.cli import calibrate as calibrate_module
from fracscan.cli import evaluate as evaluate_module
from fracscan.cli import export as export_module
from fracscan.cli import health as health_module
from fracscan.cli import listen as listen_module
from fracscan.cli import monitor as monitor_module
from fracscan.cli import predict as predict_module
from fracscan.cli import serve as serve_module


def _flags_without_value(command: TyperCommand | TyperGroup, ctx: Any) -> None:
    """Help shows a flag as `--x/--no-x` alone: no `<bool>` value beside it, since a flag takes none."""
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class Group(TyperGroup):
    """The `fracscan` group; every command it hands out shows its flags without a value."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_without_value(self, ctx)
        super().format_help(ctx, formatter)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if isinstance(command, TyperCommand):
            _flags_without_value(command, ctx)
        return command


app = typer.Typer(
    name="fracscan",
    cls=Group,
    help="Fracture detection on musculoskeletal radiographs, served on NVIDIA Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"fracscan {version('fracscan')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool | None,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the fracscan version and exit."),
    ] = None,
) -> None:
    """Fracture detection on musculoskeletal radiographs, served on NVIDIA Triton."""


app.command("predict")(predict_module.predict)
app.command("serve")(serve_module.serve)
app.command("export")(export_module.export)
app.command("calibrate")(calibrate_module.calibrate)
app.command("evaluate")(evaluate_module.evaluate)
app.command("health")(health_module.health)
app.command("listen")(listen_module.listen)
app.command("monitor")(monitor_module.monitor)


def main() -> None:
    app()
