"""convscope: modern ConvNets and conv/attention hybrids, faithful to their papers, with an efficiency lab."""
from .layers.reparam import reparameterize_model
from .models import (
    ModelCard,
    UnknownModelError,
    create_model,
    list_families,
    list_models,
    load_checkpoint,
    model_card,
    save_weights,
)

__version__ = "0.1.0"

__all__ = ["ModelCard", "UnknownModelError", "create_model", "list_families", "list_models", "load_checkpoint",
           "model_card", "reparameterize_model", "save_weights", "__version__"]
