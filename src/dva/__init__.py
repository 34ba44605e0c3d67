"""dva: fine-grained image retrieval with a frozen ViT adapted by Dual-Vision Adaptation.

The Python API mirrors the CLI::

    import dva
    model = dva.create_model(backbone="dinov2_vits14.imgfocus", method="ica")
    dva.metrics.recall_at_k(embeddings, labels)          # {1: 0.87, 2: ..., 4: ..., 8: ...}
    run = dva.Run("runs/cub100"); model = run.load_model()
    searcher = dva.Searcher("gallery_index"); searcher.search("query.jpg", k=10)   # after `dva index`
"""

from typing import TYPE_CHECKING, Any

from dva._version import __version__

#: Public names and the module each lives in, imported on first use (PEP 562): ``import
#: dva.metrics`` must not pay for timm, faiss and the models (tests/test_imports.py).
_LAZY = {
    "metrics": "dva.metrics",
    "DataConfig": "dva.config",
    "ModelConfig": "dva.config",
    "OPAConfig": "dva.config",
    "RunConfig": "dva.config",
    "TrainConfig": "dva.config",
    "CheckpointError": "dva.errors",
    "ConfigError": "dva.errors",
    "DataError": "dva.errors",
    "DvaError": "dva.errors",
    "Searcher": "dva.index",
    "count_parameters": "dva.models",
    "create_model": "dva.models",
    "Run": "dva.runs",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dva' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(_LAZY[name])
    value = module if name == "metrics" else getattr(module, name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # what type checkers and IDEs see
    from dva import metrics
    from dva.config import DataConfig, ModelConfig, OPAConfig, RunConfig, TrainConfig
    from dva.errors import CheckpointError, ConfigError, DataError, DvaError
    from dva.index import Searcher
    from dva.models import count_parameters, create_model
    from dva.runs import Run

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DvaError",
    "ModelConfig",
    "OPAConfig",
    "Run",
    "RunConfig",
    "Searcher",
    "TrainConfig",
    "__version__",
    "count_parameters",
    "create_model",
    "metrics",
]
