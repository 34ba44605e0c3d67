"""Training methods, registered by name (``dva train --method NAME``).

A method decides *what* is trained on top of the frozen backbone: it injects adapters or
unfreezes parameters of a freshly built :class:`RetrievalModel`. Everything else (data,
loss, trainer, evaluation) is shared, so methods compare on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dva.config import ModelConfig
from dva.errors import ConfigError
from dva.models.ica import ICAConfig, inject_ica
from dva.models.retrieval import RetrievalModel

ApplyFn = Callable[[RetrievalModel, ModelConfig], None]


@dataclass(frozen=True)
class Method:
    name: str
    apply: ApplyFn
    description: str
    #: Trains on OPA's object views with the DPT loss (needs boxes).
    uses_opa: bool = False
    #: False for "frozen": nothing to optimise, the run only records the config.
    trains: bool = True
    #: Whatever it trains folds into the backbone's own weights, so a run exports as a plain
    #: timm model (``dva export``). False for adapters with their own non-linear modules.
    mergeable: bool = True


_METHODS: dict[str, Method] = {}


def register_method(
    name: str, *, description: str, uses_opa: bool = False, trains: bool = True, mergeable: bool = True
):
    def decorator(fn: ApplyFn) -> ApplyFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = Method(name, fn, description, uses_opa, trains, mergeable)
        return fn

    return decorator


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(list_methods())}") from None


def list_methods() -> list[str]:
    return list(_METHODS)


def ica_config(config: ModelConfig) -> ICAConfig:
    return ICAConfig(targets=tuple(config.targets), rank=config.rank, scale=config.scale)


@register_method("frozen", description="no training: the pre-trained backbone's embeddings", trains=False)
def _frozen(model: RetrievalModel, config: ModelConfig) -> None:
    pass


@register_method("ica", description="In-Context Adaptation adapters on the qkv projection (Table 8 'Base + ICA')")
def _ica(model: RetrievalModel, config: ModelConfig) -> None:
    inject_ica(model.backbone, ica_config(config))


@register_method("full", description="fine-tune every backbone weight (Table 1 'Fine-tuning')")
def _full(model: RetrievalModel, config: ModelConfig) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(True)


@register_method(
    "dva",
    description="ICA adapters trained on OPA's object views with the DPT loss (the paper's full method)",
    uses_opa=True,
)
def _dva(model: RetrievalModel, config: ModelConfig) -> None:
    inject_ica(model.backbone, ica_config(config))
