"""The paper's comparison tables as :class:`Table` objects (``dva reproduce NAME``).

Every number under ``paper=`` is copied from the paper (CUB-200-2011, ViT-B/16; recalls in
percent, parameters in millions, latency in milliseconds). Rows that name the same training
config (the full DVA appears in Tables 8, 9, 10 and the lambda sweep) share one run.

Choices the paper leaves open, made here and stated in docs/reproduce.md:

- Table 9 varies the ICA targets *inside the full DVA* (OPA + DPT, lambda 3): its Q+V row
  equals the DVA row of Tables 8 and 10 to the last digit (84.9 / 90.6 / 94.5 / 96.7), while
  ICA alone scores 83.6 (Table 8). The extracted text lost the Q/K/V symbols; the rows are
  read as Q, K, V, then Q+V (the stated best), K+V, Q+K, then Q+K+V, which fits the text
  ("V alone or in combination with Q and K leads to better performance").
- Fine-tuning rows (Table 1 and "Fine-tuning ViT") train the backbone at ``FINE_TUNE_LR``,
  the fine-tuning methods' own default (``dva.models.methods``): the adapter learning rate
  would wreck pre-trained weights, and the paper gives none. The rows still name it, so that
  their run (and its name) does not depend on where the default lives.
- "Base + ICA + OPA" is DVA trained with lambda = 0 (L_proxy on the object views alone) and
  evaluated on the test images' discriminative views, the detector running at test time.
"""

from __future__ import annotations

from typing import Any

from dva.errors import ConfigError
from dva.models.methods import FINE_TUNE_LR
from dva.reproduce.rows import LATENCY, PARAMS, RECALL_COLUMNS, TEST_DISCRIMINATIVE, TEST_ORIGINAL, Row, Table

#: DPT's lambda (docs/method.md section 4), the value Fig. 3 settles on.
PAPER_LAMBDA = 3.0


def _paper(*recalls: float, params: float | None = None, latency: float | None = None) -> dict[str, float]:
    numbers: dict[str, float] = dict(
        zip(RECALL_COLUMNS, recalls, strict=False)
    )  # the paper reports fewer K for some rows
    if params is not None:
        numbers[PARAMS] = params
    if latency is not None:
        numbers[LATENCY] = latency
    return numbers


def method_row(
    name: str,
    method: str,
    paper: dict[str, float],
    *,
    lr: float | None = None,
    options: dict[str, Any] | None = None,
    note: str = "",
) -> Row:
    """A row that only changes the training method, its options and (for fine-tuning) the learning rate."""
    model: dict[str, Any] = {"method": method}
    if options:
        model["method_options"] = dict(options)
    overrides: dict[str, dict[str, Any]] = {"model": model}
    if lr is not None:
        overrides["train"] = {"lr": lr}
    return Row(name, overrides, paper=paper, note=note)


def dva_row(
    name: str,
    paper: dict[str, float],
    *,
    targets: tuple[str, ...] = ("q", "v"),
    lambda_dist: float = PAPER_LAMBDA,
    test_view: str = TEST_ORIGINAL,
    options: dict[str, Any] | None = None,
    note: str = "",
) -> Row:
    """A row of the full method with its ICA targets, DPT weight or DPT options (``transfer``, ...) changed."""
    model: dict[str, Any] = {"method": "dva", "method_options": {"targets": list(targets), **(options or {})}}
    overrides = {"model": model, "train": {"lambda_dist": lambda_dist}}
    return Row(name, overrides, test_view=test_view, paper=paper, note=note)


_FT_NOTE = f"backbone trained at lr {FINE_TUNE_LR:g} (the paper gives none)"
FULL_FINE_TUNING = method_row(
    "Fine-tuning", "full", _paper(82.7, 88.7, 92.5, 95.2, params=85.6), lr=FINE_TUNE_LR, note=_FT_NOTE
)
DVA = dva_row("DVA (Ours)", _paper(84.9, 90.6, 94.5, 96.7, params=0.590))

TABLE1 = Table(
    "table1",
    "Table 1: fine-tuning preferences of ViT (which part of every block is trained)",
    (
        FULL_FINE_TUNING,
        method_row(
            "Attention Projector",
            "partial-attn",
            _paper(82.7, 89.0, 92.8, 95.2, params=21.5),
            lr=FINE_TUNE_LR,
            note=_FT_NOTE,
        ),
        method_row(
            "Output Projector",
            "partial-proj",
            _paper(82.6, 88.8, 92.6, 95.0, params=7.3),
            lr=FINE_TUNE_LR,
            note=_FT_NOTE,
        ),
        method_row("MLP", "partial-mlp", _paper(82.0, 88.9, 92.9, 95.2, params=56.8), lr=FINE_TUNE_LR, note=_FT_NOTE),
    ),
    (*RECALL_COLUMNS, PARAMS),
    label="Methods",
    notes=(
        "The paper's counts (21.5 / 7.3 / 56.8 / 85.6M) are not timm ViT-B/16's "
        "(21.3 / 7.1 / 56.7 / 85.8M: qkv, proj and MLP weights with biases, all backbone weights).",
    ),
)

TABLE8 = Table(
    "table8",
    "Table 8: efficacy of DVA's components",
    (
        method_row("Base", "frozen", _paper(72.5, 82.6, 89.1, latency=1.51)),
        method_row("Base + ICA", "ica", _paper(83.6, 90.3, 93.9, latency=1.51)),
        dva_row(
            "Base + ICA + OPA",
            _paper(86.8, 92.0, 94.7, latency=3.65),
            lambda_dist=0.0,
            test_view=TEST_DISCRIMINATIVE,
            note="DVA trained with lambda 0; test images replaced by their discriminative views",
        ),
        dva_row("Base + ICA + OPA + DPT", _paper(84.9, 90.6, 94.5, latency=1.51)),
    ),
    ("recall@1", "recall@2", "recall@4", LATENCY),
    notes=(
        "Latency: one image (batch 1) through the model with its adapters merged, median after warm-up, "
        "all rows timed interleaved on the machine that ran the table (one thread on a CPU); the OPA row adds "
        "the test-time detector and crop per image. The paper's milliseconds are ViT-B/16 on its GPU.",
    ),
)

TABLE9 = Table(
    "table9",
    "Table 9: which attention projectors get ICA adapters (inside the full DVA)",
    (
        dva_row("Q", _paper(82.7, 89.1, 92.9, 95.6, params=0.295), targets=("q",)),
        dva_row("K", _paper(81.8, 88.8, 93.1, 95.5, params=0.295), targets=("k",)),
        dva_row("V", _paper(84.0, 90.0, 93.6, 95.6, params=0.295), targets=("v",)),
        dva_row("Q, V", _paper(84.9, 90.6, 94.5, 96.7, params=0.590), targets=("q", "v")),
        dva_row("K, V", _paper(84.5, 90.5, 93.9, 95.7, params=0.590), targets=("k", "v")),
        dva_row("Q, K", _paper(82.6, 89.0, 93.4, 95.4, params=0.590), targets=("q", "k")),
        dva_row("Q, K, V", _paper(84.4, 90.2, 93.8, 95.9, params=0.885), targets=("q", "k", "v")),
    ),
    (*RECALL_COLUMNS, PARAMS),
    notes=(
        "The extracted paper lost the Q/K/V symbols of this table; the row order is inferred "
        "(the Q, V row equals the paper's DVA numbers exactly).",
    ),
)

TABLE10 = Table(
    "table10",
    "Table 10: comparison with other parameter-efficient fine-tuning methods",
    (
        FULL_FINE_TUNING,
        method_row("CLIP-Adapter", "clip-adapter", _paper(69.8, 80.0, 87.5, 92.1, params=0.295)),
        method_row("AdaptFormer", "adaptformer", _paper(73.3, 83.4, 89.3, 93.2, params=0.590)),
        DVA,
    ),
    (*RECALL_COLUMNS, PARAMS),
    label="Methods",
    notes=(
        "AdaptFormer as released (bottleneck 64, biases, every block) has 1.19M parameters on ViT-B/16, "
        "not the paper's 0.590M (bottleneck 32 would give 0.599M: --method-option bottleneck=32).",
    ),
)

LAMBDA = Table(
    "lambda",
    "Fig. 3: sensitivity to lambda, the weight of L_dist",
    tuple(
        dva_row(f"{value:g}", _paper(84.9, 90.6, 94.5, 96.7) if value == PAPER_LAMBDA else {}, lambda_dist=value)
        for value in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    ),
    RECALL_COLUMNS,
    label="lambda",
    notes=(
        "Fig. 3 is a plot; the paper states only lambda = 3's numbers (its DVA row) and that R@1 rises up to "
        "lambda = 3 and falls beyond.",
    ),
)

#: Adam learning rate of the prompt rows (VPT-deep, VPT-deep + BitFit), chosen on cub100's
#: validation classes 40-49 (bench/lr_sweep.py, 3 epochs, 112 px, seed 0): val R@1 / MAP@R
#: 84.3 / 39.5 at 3e-4, 88.7 / 47.9 at 1e-3, 83.8 / 41.1 at 3e-3, 58.3 at 1e-2 (after 2 of 3
#: epochs); docs/reproduce.md, "PEFT peers".
PROMPT_LR = 1e-3
#: VPTSP-G trained as its authors' CUB config (config/cub200_basic.yaml): SGD (momentum 0.9, as
#: dva's), lr 1e-3 for prompts, biases and GRU, lr_proxy 1e-2 for the learnable proxies, decay 1e-6.
VPTSP_TRAIN = {"optimizer": "sgd", "lr": 1e-3, "proxy_lr": 1e-2, "weight_decay": 1e-6}

PEERS = Table(
    "peers",
    "PEFT peers in the same harness (issue 12): LoRA, VPT-deep, VPTSP-G beside ICA and DVA",
    (
        method_row("ICA", "ica", _paper(83.6, 90.3, 93.9, params=0.590)),
        DVA,
        method_row("LoRA (q, v; r 16, alpha 8)", "lora", {}, note="ICA's layer at scale alpha/r = 0.5; lr as ICA"),
        method_row("VPT-deep", "vpt-deep", {}, lr=PROMPT_LR, note=f"10 prompts per block; Adam lr {PROMPT_LR:g}"),
        method_row(
            "VPT-deep + BitFit",
            "vpt-deep",
            {},
            lr=PROMPT_LR,
            options={"bitfit": True},
            note=f"prompts and every bias; Adam lr {PROMPT_LR:g}",
        ),
        Row(
            "VPTSP-G",
            {"model": {"method": "vptsp-g"}, "train": dict(VPTSP_TRAIN)},
            paper={"recall@1": 88.5},
            note="20 prompts + BitFit + semantic proxies; SGD lr 1e-3, proxy lr 1e-2 (authors' CUB config)",
        ),
    ),
    (*RECALL_COLUMNS, PARAMS),
    label="Methods",
    notes=(
        "Paper numbers: ICA and DVA from this paper (Tables 8, 10; ViT-B/16). VPTSP-G's 88.5 R@1 is its authors' "
        "CUB result (README of Noahsark/ParameterEfficient-DML, ViT-B/16 in21k with a 512-d head, 60 epochs); "
        "its other recalls and any published LoRA / VPT-deep numbers on this protocol are not given here.",
        "Params count the retrieval network only; VPTSP-G's proxy generator (GRU, 5 prompts per class) lives "
        "with the loss like the proxies (docs/reproduce.md, 'PEFT peers').",
    ),
)

DPT_VARIANTS = Table(
    "dpt",
    "DPT's transfer term: the readings of the paper dva implements (docs/opa.md, 'DPT transfer variants')",
    (
        method_row("ICA alone", "ica", _paper(83.6, 90.3, 93.9)),
        *(
            dva_row(
                f"transfer={transfer}",
                _paper(84.9, 90.6, 94.5, 96.7) if transfer == "proxy" else {},
                options={"transfer": transfer},
            )
            for transfer in ("proxy", "teacher", "embedding", "relation")
        ),
        dva_row(
            "transfer=teacher, two-stage",
            {},
            options={"transfer": "teacher", "object_first": 0.5},
            note="object views alone for the first half of the steps, then the transfer term",
        ),
        dva_row("transfer=proxy, no background class", {}, options={"transfer": "proxy", "background": False}),
    ),
    (*RECALL_COLUMNS, "map@r"),
    notes=(
        "The paper's number stands beside the reading it was first implemented as; the paper does not say "
        "which reading produced it.",
    ),
)

TABLES: dict[str, Table] = {t.name: t for t in (TABLE1, TABLE8, TABLE9, TABLE10, LAMBDA, PEERS, DPT_VARIANTS)}


def get_table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise ConfigError(f"unknown table {name!r}; choose from {', '.join(TABLES)}") from None
