"""A table's results in the paper's layout, our numbers beside the paper's (markdown and JSON).

Recalls are shown in percent like the paper's; with several seeds a cell reads
``mean ± sample standard deviation``. Every cell is ``ours / paper``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dva._io import atomic_write_json, atomic_write_text
from dva.config import RunConfig
from dva.reproduce.rows import COLUMN_TITLES, LATENCY, PARAMS, Table
from dva.reproduce.run import RowResult

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


def summarize(table: Table, results: Sequence[RowResult]) -> dict[str, Any]:
    """JSON-ready summary: per row, every seed's metrics, their mean and spread, costs, the paper's numbers."""
    rows = []
    for row in table.rows:
        mine = [r for r in results if r.row.name == row.name]
        if not mine:
            continue
        ours: dict[str, Any] = {}
        for metric in METRICS:
            values = [100.0 * r.metrics[metric] for r in mine if metric in r.metrics]
            if values:
                ours[metric] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
        ours[PARAMS] = mine[0].trainable_params / 1e6
        latency = next((r.latency for r in mine if r.latency is not None), None)
        if latency is not None:
            ours[LATENCY] = latency
        rows.append(
            {
                "name": row.name,
                "method": mine[0].config.model.method,
                "test_view": row.test_view,
                "overrides": {k: dict(v) for k, v in row.overrides.items()},
                "note": row.note,
                "seeds": [r.seed for r in mine],
                "runs": [str(r.run_dir) for r in mine],
                "test_views": mine[0].metrics.get("test_views"),
                "ours": ours,
                "paper": dict(row.paper),
            }
        )
    return {
        "table": table.name,
        "title": table.title,
        "label": table.label,
        "columns": list(table.columns),
        "notes": list(table.notes),
        "rows": rows,
    }


def setting_line(config: RunConfig, seeds: Sequence[int]) -> str:
    """What our numbers were measured on, in one line."""
    m, d, t = config.model, config.data, config.train
    return (
        f"Ours: {d.dataset} ({d.split} split), {m.backbone} at {m.img_size} px, {t.epochs} epoch(s), "
        f"seed(s) {', '.join(map(str, seeds))}. Paper: CUB-200-2011 (open split), ViT-B/16 at 224 px, 10 epochs."
    )


def to_markdown(summary: dict[str, Any], setting: str = "") -> str:
    """The table in the paper's layout (from :func:`summarize`), each cell ``ours / paper``."""
    columns = summary["columns"]
    header = [summary["label"]] + [f"{COLUMN_TITLES[c]} (ours / paper)" for c in columns]
    lines = [f"### {summary['title']}", ""]
    if setting:
        lines += [setting, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in summary["rows"]:
        cells = [row["name"]] + [_cell(row, column) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    notes = list(summary["notes"])
    for row in summary["rows"]:
        if row["note"]:
            notes.append(f"{row['name']}: {row['note']}.")
        latency = row["ours"].get(LATENCY)
        if LATENCY in columns and latency and latency.get("detector_ms") is not None:
            notes.append(
                f"{row['name']}: {latency['model_ms']:.2f} ms model + {latency['detector_ms']:.2f} ms "
                f"detector ({latency.get('detector', 'test-time detector')})."
            )
        elif LATENCY in columns and latency and "detector_ms" in latency:
            notes.append(f"{row['name']}: detector time not included ({latency.get('detector', 'not measured')}).")
        if row["test_views"]:
            seen = ", ".join(f"{k} {v}" for k, v in row["test_views"].items())
            notes.append(f"{row['name']}: test images seen as {seen}.")
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], column: str) -> str:
    ours, paper = row["ours"].get(column), row["paper"].get(column)
    if column == PARAMS:
        mine = _millions(ours) if ours is not None else "-"
        theirs = _millions(paper) if paper is not None else "-"
    elif column == LATENCY:
        mine = f"{ours['total_ms']:.2f}" if ours else "-"
        theirs = f"{paper:.2f}" if paper is not None else "-"
    else:
        if ours is None:
            mine = "-"
        elif len(ours["values"]) > 1:
            mine = f"{ours['mean']:.1f} ± {ours['std']:.1f}"
        else:
            mine = f"{ours['mean']:.1f}"
        theirs = f"{paper:.1f}" if paper is not None else "-"
    return f"{mine} / {theirs}"


def _millions(value: float) -> str:
    """The paper's style: 0.295 below a million, 85.6 above."""
    return "0" if value == 0 else f"{value:.3f}" if value < 1 else f"{value:.1f}"


def write_table(out_dir: str | Path, summary: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``OUT/NAME.md`` and ``OUT/NAME.json``, written atomically."""
    out_dir = Path(out_dir)
    md = atomic_write_text(out_dir / f"{summary['table']}.md", markdown)
    js = atomic_write_json(out_dir / f"{summary['table']}.json", summary)
    return md, js
