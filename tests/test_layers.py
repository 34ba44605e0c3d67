"""The package's layers import downwards only (read from the source, lazy imports included).

A lower layer that imports a higher one makes the two one component: data that imports the
losses cannot be used without them, models that import runs pull the run directory format into
every model. The rule per layer is the list of ``dva`` packages it may not import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dva"

#: Everything above the model: training, OPA, evaluation, the product, the command line.
ABOVE_MODELS = {"runs", "train", "opa", "evaluate", "index", "serve", "cli", "reproduce", "visualize", "export"}

FORBIDDEN = {
    "geometry": {"data", "models", "losses", *ABOVE_MODELS},
    "view_kinds": {"data", "models", "losses", *ABOVE_MODELS},
    "registry": {"data", "models", "losses", *ABOVE_MODELS},
    "metrics": {"data", "models", "losses", *ABOVE_MODELS},
    "data": {"models", "losses", *ABOVE_MODELS},
    "losses": {"data", "models", *ABOVE_MODELS},
    "models": ABOVE_MODELS,
}


def dva_imports(path: Path) -> set[str]:
    """The ``dva`` subpackages and modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dva."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dva."))
    return found


def layer_files(layer: str) -> list[Path]:
    package = SRC / layer
    return sorted(package.rglob("*.py")) if package.is_dir() else [SRC / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_no_layer_above_it(layer):
    files = layer_files(layer)
    assert files and all(f.is_file() for f in files), f"no source for layer {layer}"
    wrong = {f"{f.relative_to(SRC)} imports dva.{name}" for f in files for name in dva_imports(f) & FORBIDDEN[layer]}
    assert not wrong, sorted(wrong)


def test_the_rule_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from dva.runs import Run\n    import dva.train.trainer\n")
    assert dva_imports(source) == {"runs", "train"}
