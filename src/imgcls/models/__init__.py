"""Model registry and the built-in architectures; torchvision's and timm's models by name."""

from imgcls.models import fast, recurrent, timm_models, torchvision_models, user, zoo
from imgcls.models.registry import MODELS, RESOLVERS, check_input, create_model, get_model_info, model_options, num_params

RESOLVERS.append(user.model_info)  # first: a user's 'file.py:Class' is no other family's name
RESOLVERS.append(torchvision_models.model_info)
RESOLVERS.append(timm_models.model_info)
# Registering the built-ins is what importing fast, recurrent and zoo does.
__all__ = ["MODELS", "check_input", "create_model", "fast", "get_model_info", "model_options", "num_params", "recurrent", "zoo"]
