"""imgcls: fast, batteries-included image classification on PyTorch."""

__version__ = "0.1.0"
