"""Options and output helpers shared by several commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

DatasetOpt = typer.Option(None, "--dataset", help="Dataset layout: cub, cub100, folder, ... (`dva data list`).")
DataRootOpt = typer.Option(None, "--data", help="Root folder of the dataset, in its publisher's layout.")
SplitOpt = typer.Option(None, "--split", help="Protocol: open (unseen test classes), closed (official split) or all.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
PrecisionOpt = typer.Option("auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.")
WorkersOpt = typer.Option(2, "--workers", help="DataLoader worker processes.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")
# Re-ranking's knobs, shared by `dva search` and `dva eval`; the values are
# dva.index.rerank.DEFAULT_RERANK_K and DEFAULT_ALPHA, written out so the CLI starts without faiss.
RerankKOpt = typer.Option(5, "--rerank-k", help="With --rerank: neighbours per expansion (n).")
RerankAlphaOpt = typer.Option(3.0, "--alpha", help="With --rerank: weight exponent, weights = similarity^alpha.")
MethodOptionOpt = typer.Option(
    None,
    "--method-option",
    metavar="KEY=VALUE",
    help="A method-specific option, repeatable: adaptformer bottleneck=64 scale=0.1 dropout=0.1; "
    "clip-adapter reduction=4 ratio=0.2; lora rank=16 alpha=8; vpt-deep num_prompts=10 bitfit=false; "
    "vptsp-g num_prompts=20 bitfit=true class_prompts=5 class_prompt_depth=1 proxy_ratio=0.4.",
)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """A small markdown table (readable in a terminal, pasteable into a README)."""
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def split_csv(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_method_options(values: list[str] | None) -> dict[str, Any] | None:
    """``["bottleneck=64", "scale=0.1"]`` -> ``{"bottleneck": 64, "scale": 0.1}`` (values read as YAML scalars)."""
    import yaml

    from dva.errors import ConfigError

    if not values:
        return None
    options: dict[str, Any] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--method-option expects KEY=VALUE, got {value!r}")
        try:
            options[key.strip()] = yaml.safe_load(text.strip())
        except yaml.YAMLError:
            raise ConfigError(f"--method-option {value!r}: cannot read the value") from None
    return options
