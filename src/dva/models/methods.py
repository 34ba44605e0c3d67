"""Training methods, registered by name (``dva train --method NAME``).

A method decides *what* is trained on top of the frozen backbone: it injects adapters or
unfreezes parameters of a freshly built :class:`RetrievalModel`. Everything else (data,
loss, trainer, evaluation) is shared, so methods compare on equal terms.

==================  ==============================================================  =========
method              trained                                                         paper
==================  ==============================================================  =========
``frozen``          nothing                                                         Table 8 "Base"
``full``            every backbone weight                                           Tables 1, 10
``partial-attn``    the attention projector (``attn.qkv``) of every block           Table 1
``partial-proj``    the output projector (``attn.proj``) of every block             Table 1
``partial-mlp``     the MLP (``mlp.fc1``, ``mlp.fc2``) of every block               Table 1
``ica``             ICA adapters on the ``qkv`` slices ``targets``                  Tables 8, 9
                    (option ``also_train``: biases, norms, LayerScale beside them)
``adaptformer``     AdaptFormer's parallel MLP adapters                             Table 10
``clip-adapter``    CLIP-Adapter on the final embedding                             Table 10
``dva``             ICA adapters, trained on OPA's object views with DPT            all
                    (options: ``transfer``, ``background``, see ``DPTOptions``)
``dva-adaptformer`` AdaptFormer's adapters, trained on OPA's object views with DPT  (ours)
==================  ==============================================================  =========

PEFT peers the paper does not compare with, run in the same harness (issue 12,
docs/reproduce.md "PEFT peers"):

==================  ==============================================================  ===========
method              trained                                                         source
==================  ==============================================================  ===========
``lora``            LoRA on q and v: ICA's layer with scale ``alpha / rank``        Hu 2022
``vpt-deep``        VPT-deep prompts in every block (``bitfit``: and every bias)    Jia 2022
``vptsp-g``         VPT-deep + BitFit; proxies made from class prompts and a GRU    Ren 2024
==================  ==============================================================  ===========

Method-specific settings go in ``ModelConfig.method_options`` (``--method-option KEY=VALUE``)
and are checked against the method's options dataclass: ICA's ``targets``, ``rank`` and
``scale`` are the options of ``ica`` and ``dva`` (:class:`DVAOptions` adds DPT's). A method
also brings its own defaults for training settings (:attr:`Method.defaults`): the fine-tuning
methods train at :data:`FINE_TUNE_LR`, not at the adapters' learning rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dva.config import WHEN_SET, ModelConfig, from_dict, setting
from dva.errors import ConfigError
from dva.losses.dpt import DPTOptions
from dva.models.adaptformer import AdaptFormerConfig, inject_adaptformer
from dva.models.clip_adapter import CLIPAdapter, CLIPAdapterConfig
from dva.models.ica import ICAConfig, inject_ica
from dva.models.lora import LoRAConfig
from dva.models.retrieval import RetrievalModel
from dva.models.tuning import TUNABLE_GROUPS, also_train_option, train_also
from dva.models.vpt import VPTConfig, inject_vpt
from dva.models.vptsp import SemanticProxies, VPTSPConfig
from dva.registry import Registry

#: Learning rate of the backbone weights the fine-tuning methods train (Adam, as for adapters):
#: the adapters' 1e-3 would wreck the pre-trained weights, and the paper gives none.
FINE_TUNE_LR = 1e-5

#: ``apply(model, model_config, options)``; ``options`` is the method's parsed options dataclass (or None).
ApplyFn = Callable[[RetrievalModel, ModelConfig, Any], None]


@dataclass(frozen=True)
class Method:
    name: str
    apply: ApplyFn
    description: str
    #: Trains on OPA's object views with the DPT loss (needs boxes).
    uses_opa: bool = False
    #: False for "frozen": nothing to optimise, the run only records the config.
    trains: bool = True
    #: Dataclass of the options it reads from ``ModelConfig.method_options``; None: takes none.
    options: type | None = None
    #: Whatever it trains folds into the backbone's own weights, so a run exports as a plain
    #: timm model (``dva export``). False for adapters with their own non-linear modules.
    mergeable: bool = True
    #: Where the loss's proxies come from when not from Proxy-Anchor's own learnable ones:
    #: ``proxy_source(model, proxy_anchor, options)`` builds a module that the trainer attaches
    #: to the loss (so it is optimised, saved and resumed with the proxies) and calls every step
    #: as ``source(model, images, labels, proxy_anchor.proxies) -> (num_classes, d) proxies``.
    #: VPTSP-G's semantic proxies; None (every other method): the learnable proxies as they are.
    proxy_source: Callable[[RetrievalModel, Any, Any], nn.Module] | None = None
    #: The method's own defaults for other config sections, ``{"train": {"lr": 1e-5}}``: they
    #: replace the general defaults wherever the user set nothing (:func:`apply_method_defaults`).
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Options that older versions kept as ``ModelConfig`` fields (ICA's ``targets``, ``rank``,
    #: ``scale``); read from there in old files (:meth:`dva.config.ModelConfig.upgrade`).
    legacy_fields: tuple[str, ...] = ()

    def parse_options(self, raw: Mapping[str, Any]) -> Any:
        """``method_options`` as the method's options dataclass, defaults filled in; errors name the option."""
        if self.options is None:
            if raw:
                raise ConfigError(f"method {self.name!r} takes no method options (got {', '.join(sorted(raw))})")
            return None
        return from_dict(self.options, dict(raw), where=f"method options of {self.name!r}")

    def resolve_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``method_options`` with every default written out (``{}`` for methods without options)."""
        parsed = self.parse_options(raw)
        return dataclasses.asdict(parsed) if parsed is not None else {}

    def default_options(self) -> dict[str, Any]:
        """Every option at its default (``{}`` for methods without options)."""
        return self.resolve_options({})


_METHODS: Registry[Method] = Registry("method", ConfigError)


def register_method(
    name: str,
    *,
    description: str,
    uses_opa: bool = False,
    trains: bool = True,
    options: type | None = None,
    mergeable: bool = True,
    proxy_source: Callable[[RetrievalModel, Any, Any], nn.Module] | None = None,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    legacy_fields: tuple[str, ...] = (),
) -> Callable[[ApplyFn], ApplyFn]:
    def decorator(fn: ApplyFn) -> ApplyFn:
        _METHODS.add(
            name,
            Method(
                name,
                fn,
                description,
                uses_opa,
                trains,
                options,
                mergeable,
                proxy_source=proxy_source,
                defaults=dict(defaults or {}),
                legacy_fields=legacy_fields,
            ),
        )
        return fn

    return decorator


def get_method(name: str) -> Method:
    return _METHODS.get(name)


def list_methods() -> list[str]:
    return _METHODS.names()


def apply_method(model: RetrievalModel, config: ModelConfig) -> None:
    """Apply ``config.method`` to a freshly built (all-frozen) model."""
    method = get_method(config.method)
    method.apply(model, config, method.parse_options(config.method_options))


def dpt_options(config: ModelConfig) -> DPTOptions | None:
    """The DPT options of a method that trains with DPT (``dva``), parsed once here; None for others."""
    options = get_method(config.method).parse_options(config.method_options)
    return options if isinstance(options, DPTOptions) else None


def apply_method_defaults(raw: dict[str, Any], given: Iterable[Mapping[str, Any]]) -> None:
    """Set the method's own defaults (:attr:`Method.defaults`) in ``raw``, a RunConfig as plain data.

    ``given``: the layers the user wrote (a config file, command-line options), as sections of
    plain data; a field set in any of them keeps its value. So ``dva train --method full``
    trains at :data:`FINE_TUNE_LR`, and ``--method full --lr 1e-4`` at 1e-4.
    """
    given = list(given)
    method = get_method(raw["model"]["method"])
    for section, values in method.defaults.items():
        for key, value in values.items():
            if not any(key in (layer.get(section) or {}) for layer in given):
                raw[section][key] = value


def _also_train_setting() -> Any:
    # WHEN_SET: added after runs of ``ica`` and ``dva`` were finished, which keep their names
    return setting(
        "",
        help=f"backbone weights trained besides the adapters, '+'-joined: {', '.join(TUNABLE_GROUPS)} "
        "(dva.models.tuning); '' trains the adapters alone (the paper).",
        identity=WHEN_SET,
    )


@dataclass(frozen=True)
class ICAOptions(ICAConfig):
    """Options of ``--method ica``: ICA's adapters, and backbone weights trained beside them."""

    also_train: str = _also_train_setting()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "also_train", also_train_option(self.also_train))

    def ica_config(self) -> ICAConfig:
        """The adapter's own config (what ``inject_ica`` and each ``ICALinear`` keep), without ``also_train``."""
        return ICAConfig(targets=self.targets, rank=self.rank, scale=self.scale)


@dataclass(frozen=True)
class DVAOptions(DPTOptions):
    """Options of ``--method dva``: ICA's adapters (``targets``, ``rank``, ``scale``) and DPT's."""

    targets: tuple[str, ...] = ICAConfig.targets
    rank: int = ICAConfig.rank
    scale: float = ICAConfig.scale
    also_train: str = _also_train_setting()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "targets", self.ica_config().targets)  # validated, canonical q, k, v order
        object.__setattr__(self, "also_train", also_train_option(self.also_train))

    def ica_config(self) -> ICAConfig:
        return ICAConfig(targets=tuple(self.targets), rank=self.rank, scale=self.scale)


@dataclass(frozen=True)
class DVAAdaptFormerOptions(DPTOptions, AdaptFormerConfig):
    """Options of ``--method dva-adaptformer``: AdaptFormer's (``bottleneck``, ``scale``, ``dropout``) and DPT's."""

    def __post_init__(self) -> None:
        DPTOptions.__post_init__(self)
        AdaptFormerConfig.__post_init__(self)

    def adaptformer_config(self) -> AdaptFormerConfig:
        return AdaptFormerConfig(bottleneck=self.bottleneck, scale=self.scale, dropout=self.dropout)


def unfreeze(model: RetrievalModel, module_suffix: str) -> None:
    """Train every backbone module whose name ends with ``module_suffix`` (all of its parameters)."""
    found = [m for name, m in model.backbone.named_modules() if name.endswith(module_suffix)]
    if not found:
        raise ConfigError(f"the backbone has no `{module_suffix}` module to fine-tune; a timm ViT is needed")
    for module in found:
        module.requires_grad_(True)


@register_method("frozen", description="no training: the pre-trained backbone's embeddings", trains=False)
def _frozen(model: RetrievalModel, config: ModelConfig, options: None) -> None:
    pass


_FINE_TUNING = {"train": {"lr": FINE_TUNE_LR}}
_ICA_FIELDS = ("targets", "rank", "scale")


@register_method(
    "full", description="fine-tune every backbone weight (Tables 1, 10 'Fine-tuning')", defaults=_FINE_TUNING
)
def _full(model: RetrievalModel, config: ModelConfig, options: None) -> None:
    model.backbone.requires_grad_(True)


@register_method(
    "partial-attn", description="fine-tune only the attention projectors attn.qkv (Table 1)", defaults=_FINE_TUNING
)
def _partial_attn(model: RetrievalModel, config: ModelConfig, options: None) -> None:
    unfreeze(model, "attn.qkv")


@register_method(
    "partial-proj",
    description="fine-tune only the attention output projectors attn.proj (Table 1)",
    defaults=_FINE_TUNING,
)
def _partial_proj(model: RetrievalModel, config: ModelConfig, options: None) -> None:
    unfreeze(model, "attn.proj")


@register_method("partial-mlp", description="fine-tune only the blocks' MLPs (Table 1)", defaults=_FINE_TUNING)
def _partial_mlp(model: RetrievalModel, config: ModelConfig, options: None) -> None:
    unfreeze(model, ".mlp")


@register_method(
    "ica",
    description="In-Context Adaptation adapters on the qkv projection (Table 8 'Base + ICA')",
    options=ICAOptions,
    legacy_fields=_ICA_FIELDS,
)
def _ica(model: RetrievalModel, config: ModelConfig, options: ICAOptions) -> None:
    inject_ica(model.backbone, options.ica_config())
    train_also(model.backbone, options.also_train)


@register_method(
    "adaptformer",
    description="AdaptFormer's parallel MLP adapters, bottleneck 64, scale 0.1 (Table 10)",
    options=AdaptFormerConfig,
    mergeable=False,
)
def _adaptformer(model: RetrievalModel, config: ModelConfig, options: AdaptFormerConfig) -> None:
    inject_adaptformer(model.backbone, options)


@register_method(
    "clip-adapter",
    description="CLIP-Adapter on the final embedding, reduction 4, ratio 0.2 (Table 10)",
    options=CLIPAdapterConfig,
    mergeable=False,
)
def _clip_adapter(model: RetrievalModel, config: ModelConfig, options: CLIPAdapterConfig) -> None:
    model.head = CLIPAdapter(model.embed_dim, options)


@register_method(
    "dva",
    description="ICA adapters trained on OPA's object views with the DPT loss (the paper's full method)",
    uses_opa=True,
    options=DVAOptions,
    legacy_fields=_ICA_FIELDS,
)
def _dva(model: RetrievalModel, config: ModelConfig, options: DVAOptions) -> None:
    # The model is ICA's; the DPT options choose the loss, which the trainer builds from them.
    inject_ica(model.backbone, options.ica_config())
    train_also(model.backbone, options.also_train)


@register_method(
    "dva-adaptformer",
    description="AdaptFormer's MLP adapters trained on OPA's object views with the DPT loss (DPT on another adapter)",
    uses_opa=True,
    options=DVAAdaptFormerOptions,
    mergeable=False,
)
def _dva_adaptformer(model: RetrievalModel, config: ModelConfig, options: DVAAdaptFormerOptions) -> None:
    # OPA and DPT do not depend on the adapter: the same loss, over AdaptFormer's model
    inject_adaptformer(model.backbone, options.adaptformer_config())


@register_method(
    "vpt-deep",
    description="VPT-deep: learnable prompt tokens in every block (Jia et al. 2022); bitfit=true adds every bias",
    options=VPTConfig,
    mergeable=False,
)
def _vpt_deep(model: RetrievalModel, config: ModelConfig, options: VPTConfig) -> None:
    inject_vpt(model.backbone, options)


@register_method(
    "vptsp-g",
    description="VPTSP-G: VPT-deep + BitFit, proxies generated from class-wise prompts and a GRU (Ren et al. 2024)",
    options=VPTSPConfig,
    mergeable=False,
    proxy_source=SemanticProxies,
)
def _vptsp_g(model: RetrievalModel, config: ModelConfig, options: VPTSPConfig) -> None:
    inject_vpt(model.backbone, VPTConfig(num_prompts=options.num_prompts, bitfit=options.bitfit))


@register_method(
    "lora",
    description="LoRA on the q and v slices (Hu et al. 2021): ICA's layer with scale alpha/rank (rank 16, alpha 8)",
    options=LoRAConfig,
)
def _lora(model: RetrievalModel, config: ModelConfig, options: LoRAConfig) -> None:
    inject_ica(model.backbone, options.ica_config())
