"""``dva export``: a run's model, adapters merged, as a plain timm model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from dva.cli._common import JsonOpt, print_json


def export(
    run: Path = typer.Option(..., "--run", help="Run directory written by `dva train`."),
    out: Path = typer.Option(..., "--out", help="New folder: model.safetensors + config.json (timm's layout)."),
    weights: Path | None = typer.Option(None, "--weights", help="An epoch file instead of model.safetensors."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx (images -> L2-normalised embeddings)."),
    json_out: bool = JsonOpt,
) -> None:
    """Merge the adapters into the backbone and write a model timm loads without dva.

    timm.create_model("local-dir:OUT", pretrained=True), then L2-normalise its output: the
    run's embeddings at the frozen model's cost. config.json holds the preprocessing.
    Methods whose adapters cannot be merged are refused.
    """
    from dva.export import CONFIG, ONNX, WEIGHTS, export_run

    path = export_run(run, out, weights=weights, onnx=onnx)
    files = [str(path / name) for name in (WEIGHTS, CONFIG, ONNX) if (path / name).is_file()]
    if json_out:
        print_json({"out": str(path), "files": files})
    else:
        print(f"exported to {path}: " + ", ".join(Path(f).name for f in files))
        print(f'load with: timm.create_model("local-dir:{path}", pretrained=True)')
