"""Re-run the paper's comparison tables by name: ``dva reproduce table9 --dataset ... --data ...``.

::

    from dva.config import RunConfig
    from dva.reproduce import TABLES, run_rows, summarize, to_markdown

    base = RunConfig()                       # dataset, image size, epochs, boxes: the paper's defaults
    base.data.dataset, base.data.root = "cub100", "shared/data/cub100"
    base.opa.boxes = "boxes/cub100_train.jsonl"
    table = TABLES["table9"]
    results = run_rows(table.rows, base, "reproduce/", seeds=(0, 1))
    print(to_markdown(summarize(table, results)))

Rows are plain data (:class:`Row`: name, config overrides, test view, the paper's numbers), so
a benchmark can mix rows of several tables or define its own; identical configs are trained
once, in ``OUT/runs/<run_key>``, whichever table asks for them.
"""

from dva.reproduce.report import setting_line, summarize, to_markdown, write_table
from dva.reproduce.rows import LATENCY, PARAMS, RECALL_COLUMNS, TEST_DISCRIMINATIVE, TEST_ORIGINAL, Row, Table
from dva.reproduce.run import (
    PlannedRow,
    RowResult,
    check_rows,
    evaluate_run,
    plan_rows,
    row_config,
    run_key,
    run_rows,
    time_detector,
)
from dva.reproduce.tables import DVA, FINE_TUNE_LR, FULL_FINE_TUNING, TABLES, dva_row, get_table, method_row

__all__ = [
    "TEST_DISCRIMINATIVE",
    "DVA",
    "FINE_TUNE_LR",
    "FULL_FINE_TUNING",
    "LATENCY",
    "TEST_ORIGINAL",
    "PARAMS",
    "RECALL_COLUMNS",
    "TABLES",
    "PlannedRow",
    "Row",
    "RowResult",
    "Table",
    "check_rows",
    "dva_row",
    "evaluate_run",
    "get_table",
    "method_row",
    "plan_rows",
    "row_config",
    "run_key",
    "run_rows",
    "setting_line",
    "summarize",
    "time_detector",
    "to_markdown",
    "write_table",
]
