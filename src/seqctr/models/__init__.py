"""Backbones, one file each, registered by name; :func:`build_model` builds one from a config."""
from . import dien, din, eta, hstu, sdim, sim, twin  # noqa: F401  (each registers its backbone)
from .base import (Backbone, BackboneOutput, CTRModel, ModelOutput, SeqInputs, backbone_names, build_model,
                   check_options, register)

__all__ = ["Backbone", "BackboneOutput", "CTRModel", "ModelOutput", "SeqInputs", "backbone_names",
           "build_model", "check_options", "register"]
