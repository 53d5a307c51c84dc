"""The `fracscan` command line: predict | serve | export | calibrate | evaluate | health."""

from __future__ import annotations

import typer

from fracscan.cli import calibrate as calibrate_module
from fracscan.cli import evaluate as evaluate_module
from fracscan.cli import export as export_module
from fracscan.cli import health as health_module
from fracscan.cli import predict as predict_module
from fracscan.cli import serve as serve_module

app = typer.Typer(
    name="fracscan",
    help="Fracture detection on musculoskeletal radiographs, served on NVIDIA Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("predict")(predict_module.predict)
app.command("serve")(serve_module.serve)
app.command("export")(export_module.export)
app.command("calibrate")(calibrate_module.calibrate)
app.command("evaluate")(evaluate_module.evaluate)
app.command("health")(health_module.health)


def main() -> None:
    app()
