"""Surrogate DR classifiers: a name -> MONAI network factory plus each model's preprocessing."""

from monai_medlocker.networks.factory import (
    NETWORK_NAMES,
    ModelSpec,
    Surrogate,
    get_network,
    load_classifier,
    load_surrogate,
    model_spec,
)
from monai_medlocker.networks.preprocess import ModelPreprocess, preprocess_for_model
from monai_medlocker.networks.zoo import load_protect_surrogates, load_zoo_surrogates

__all__ = [
    "NETWORK_NAMES",
    "ModelSpec",
    "ModelPreprocess",
    "Surrogate",
    "get_network",
    "load_classifier",
    "load_protect_surrogates",
    "load_surrogate",
    "load_zoo_surrogates",
    "model_spec",
    "preprocess_for_model",
]
