"""The ``dva`` command line: a thin layer over the Python API.

Each sub-command lives in its own module and only parses options, calls the API and prints.
Errors a user can fix (:class:`dva.errors.DvaError`) are printed on one line and exit with 2.
"""

from __future__ import annotations

import sys

import typer

from dva.errors import DvaError

app = typer.Typer(
    name="dva",
    help="Fine-grained image retrieval with a frozen ViT adapted by Dual-Vision Adaptation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from dva.cli import data, evaluate, export, index, opa, params, reproduce, serve, train, visualize

    app.command("train")(train.train)
    app.command("eval")(evaluate.evaluate)
    app.command("export")(export.export)
    app.command("params")(params.params)
    app.command("reproduce")(reproduce.reproduce)
    app.command("detect")(opa.detect)
    app.command("views")(opa.views)
    app.add_typer(data.app, name="data")
    app.command("index")(index.index)
    app.command("search")(index.search)
    app.command("serve")(serve.serve)
    from dva.cli import calibrate, dedup

    app.command("calibrate")(calibrate.calibrate)
    app.command("dedup")(dedup.dedup)
    app.add_typer(visualize.app, name="visualize")


_register()


def main(argv: list[str] | None = None) -> None:
    from dva.train import TrainingInterrupted

    try:
        app(args=argv, standalone_mode=True)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
    except DvaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
