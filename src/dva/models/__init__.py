"""Models: frozen timm backbones, ICA adapters, training methods and the model factory."""

from dva.models.backbone import OFFLINE_BACKBONES, create_backbone
from dva.models.factory import ParameterReport, count_parameters, create_model
from dva.models.ica import ICAConfig, ICALinear, inject_ica, merge_ica, unload_ica, unmerge_ica
from dva.models.methods import Method, get_method, list_methods, register_method
from dva.models.retrieval import RetrievalModel

__all__ = [
    "OFFLINE_BACKBONES",
    "ICAConfig",
    "ICALinear",
    "Method",
    "ParameterReport",
    "RetrievalModel",
    "count_parameters",
    "create_backbone",
    "create_model",
    "get_method",
    "inject_ica",
    "list_methods",
    "merge_ica",
    "register_method",
    "unload_ica",
    "unmerge_ica",
]
