"""Models: frozen timm backbones, adapters (ICA, AdaptFormer, CLIP-Adapter), training methods, the factory."""

from dva.models.adaptformer import AdaptFormerConfig, AdaptMLP, inject_adaptformer
from dva.models.backbone import OFFLINE_BACKBONES, create_backbone
from dva.models.clip_adapter import CLIPAdapter, CLIPAdapterConfig
from dva.models.factory import ParameterReport, count_parameters, create_model, parameter_report
from dva.models.ica import ICAConfig, ICALinear, inject_ica, merge_ica, unload_ica, unmerge_ica
from dva.models.methods import Method, get_method, list_methods, register_method
from dva.models.retrieval import RetrievalModel

__all__ = [
    "OFFLINE_BACKBONES",
    "AdaptFormerConfig",
    "AdaptMLP",
    "CLIPAdapter",
    "CLIPAdapterConfig",
    "ICAConfig",
    "ICALinear",
    "Method",
    "ParameterReport",
    "RetrievalModel",
    "count_parameters",
    "create_backbone",
    "create_model",
    "get_method",
    "inject_adaptformer",
    "inject_ica",
    "list_methods",
    "merge_ica",
    "parameter_report",
    "register_method",
    "unload_ica",
    "unmerge_ica",
]
