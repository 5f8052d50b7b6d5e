"""imgcls: fast, batteries-included image classification on PyTorch.

    import imgcls
    run = imgcls.train("mnist-sample", epochs=3)       # a named dataset, a folder, or your own Dataset and nn.Module
    print(run.summary["test_accuracy"])
    imgcls.load(run).predict("digit.png")

The names below load on first use, so `import imgcls` (and the command line) start fast.
"""

import importlib

from imgcls import logs  # noqa: F401 - the console handler of the "imgcls" logger
from imgcls.errors import ImgclsError

__version__ = "0.1.0"

_LAZY = {
    "train": "imgcls.api", "resume": "imgcls.api", "evaluate": "imgcls.api", "export": "imgcls.api", "lr_find": "imgcls.api", "tune": "imgcls.api",
    "load": "imgcls.api", "check_data": "imgcls.api", "Run": "imgcls.api", "Predictor": "imgcls.inference", "Prediction": "imgcls.inference",
    "Callback": "imgcls.training.callbacks", "Interrupted": "imgcls.interrupt", "MLflowLogger": "imgcls.training.mlflow",
    "runs": "imgcls.experiments.table", "compare": "imgcls.experiments.compare",
}  # fmt: skip
__all__ = ["ImgclsError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgcls' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
