"""The `fracscan` command line: predict | serve | export | calibrate | evaluate | health."""

from __future__ import annotations

import typer

from fracscan.cli import serve as serve_module

app = typer.Typer(
    name="fracscan",
    help="Fracture detection on musculoskeletal radiographs, served on NVIDIA Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("serve")(serve_module.serve)
app.command("export")(serve_module.export)


def main() -> None:
    app()
