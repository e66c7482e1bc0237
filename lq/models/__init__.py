"""Model zoo: float models built by name; quantize them with `lq.quant.convert.quantize_model`.

Importing the family modules registers their entry points.
"""

from lq.models import mobilenetv2, resnet  # noqa: F401  (registers the models)
from lq.models.registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
