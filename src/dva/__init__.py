"""dva: fine-grained image retrieval with a frozen ViT adapted by Dual-Vision Adaptation.

The Python API mirrors the CLI::

    import dva
    model = dva.create_model(backbone="dinov2_vits14.imgfocus", method="ica")
    dva.metrics.recall_at_k(embeddings, labels)          # {1: 0.87, 2: ..., 4: ..., 8: ...}
    run = dva.Run("runs/cub100"); model = run.load_model()
    searcher = dva.Searcher("gallery_index"); searcher.search("query.jpg", k=10)   # after `dva index`
"""

from dva._version import __version__

from dva import metrics  # noqa: E402
from dva.config import DataConfig, ModelConfig, OPAConfig, RunConfig, TrainConfig  # noqa: E402
from dva.errors import CheckpointError, ConfigError, DataError, DvaError  # noqa: E402
from dva.index import Searcher  # noqa: E402
from dva.models import count_parameters, create_model  # noqa: E402
from dva.runs import Run  # noqa: E402

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
