"""Backbones, one file each, registered by name; :func:`build_model` builds one from a config."""
from . import dien, din, eta, hstu, sdim, sim, twin  # noqa: F401  (each registers its backbone)
from .base import (Backbone, BackboneOutput, CTRModel, ModelOutput, SeqInputs, backbone_doc, backbone_names,
                   backbone_options, build_model, check_model_config, check_options, register)
from .trained import load_trained

__all__ = ["Backbone", "BackboneOutput", "CTRModel", "ModelOutput", "SeqInputs", "backbone_doc", "backbone_names",
           "backbone_options", "build_model", "check_model_config", "check_options", "load_trained", "register"]
