"""Model registry and the built-in architectures."""

from imgcls.models import fast, zoo  # noqa: F401 - registers the built-in models
from imgcls.models.registry import MODELS, check_input, create_model, get_model_info, model_options, num_params

__all__ = ["MODELS", "check_input", "create_model", "get_model_info", "model_options", "num_params"]
