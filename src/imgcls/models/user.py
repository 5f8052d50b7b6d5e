"""The user's own models: an nn.Module class named as `path/to/nets.py:Net` or `package.module:Net`, or handed over
from Python (a class or an instance).

A run records the class's name (its file made absolute) and its arguments, so that every later command rebuilds it in
a new process from any folder. imgcls passes `num_classes`, `in_channels` and `image_size` to those constructor
parameters that the class declares, and `model_args` besides. A class defined in a notebook or a script's `__main__`
cannot be imported by another process: such a run predicts, exports and serves through the TorchScript program saved
beside best.pt (imgcls.exporter.write_program).
"""

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch
import torch.nn as nn

from imgcls.errors import ImgclsError
from imgcls.models.registry import ModelInfo

GIVEN = ("num_classes", "in_channels", "image_size")  # what imgcls passes to a constructor that declares it
RESERVED = ("tv:", "torchvision:", "timm:")


def is_user_model(name: str | None) -> bool:
    """A `module:Class` or `file.py:Class` name, as opposed to the registry's and torchvision's or timm's."""
    return bool(name) and ":" in name and not name.startswith(RESERVED)


def spec_of(cls: type) -> str:
    """The name a class is rebuilt from: its module and qualified name, or for a module of one file outside any
    installed package (nets.py beside the notebook) the file's absolute path, found from any folder."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    installed = path is not None and any(part in ("site-packages", "dist-packages") for part in Path(path).parts)
    if cls.__module__ != "__main__" and "." not in cls.__module__ and path and path.endswith(".py") and not installed:
        return f"{Path(path).resolve()}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def absolute(spec: str) -> str:
    """A file's name made absolute, so that the run rebuilds its model from any working folder."""
    where, _, name = spec.rpartition(":")
    return f"{Path(where).expanduser().resolve()}:{name}" if where.endswith(".py") else spec


def load_class(spec: str) -> type:
    """The class a spec names; one line naming the spec when it cannot be imported or found."""
    where, _, qualname = spec.rpartition(":")
    if not where or not qualname:
        raise ImgclsError(f"--model {spec}: name a class as path/to/file.py:Class or package.module:Class")
    module = _module(where, spec)
    found = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            hint = (
                "a class defined in a notebook or a script is only found in that process: hand it over again, as in "
                "imgcls.resume(run, model=Net)"
                if where == "__main__"
                else f"check the class's name in {where}"
            )
            raise ImgclsError(f"--model {spec}: {where} has no {qualname}: {hint}")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ImgclsError(f"--model {spec}: {qualname} is not an nn.Module class")
    return found


def _module(where: str, spec: str):
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ImgclsError(f"--model {spec}: {path} does not exist: give the path of the file that defines the class")
        return _file_module(str(path.resolve()))
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise ImgclsError(f"--model {spec}: cannot import {where} ({e}): install it, or name its file as path/to/file.py:Class") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed
        raise ImgclsError(f"--model {spec}: importing {where} failed ({type(e).__name__}: {e})") from None


@functools.cache
def _file_module(path: str):
    """A .py file imported once per process, under a name of its own (the file need not be on sys.path)."""
    name = "imgcls_user_" + hashlib.sha256(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes pickle and inspect by their module's name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed
        del sys.modules[name]
        raise ImgclsError(f"--model {path}: running the file failed ({type(e).__name__}: {e})") from None
    return module


def build(cls: type, spec: str, in_shape: tuple[int, int, int], num_classes: int, **args) -> nn.Module:
    """An instance of cls: `num_classes`, `in_channels` and `image_size` where its constructor declares them, and args."""
    declared = inspect.signature(cls).parameters
    given = {"num_classes": num_classes, "in_channels": in_shape[0], "image_size": in_shape[1]}
    kwargs = {k: v for k, v in given.items() if k in declared} | args
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the user's constructor raises
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ImgclsError(f"model {spec}({shown}) failed: {type(e).__name__}: {e}: check the constructor and --model-args") from None


def model_info(name: str) -> ModelInfo | None:
    """The registry entry of a user's class (imgcls.models.registry.RESOLVERS), or None for other names."""
    if not is_user_model(name):
        return None
    cls = load_class(name)

    def builder(in_shape, num_classes, **args):
        return build(cls, name, tuple(in_shape), num_classes, **args)

    own = [p for p in inspect.signature(cls).parameters.values() if p.name not in GIVEN]
    builder.__signature__ = inspect.Signature(  # model_options() reads the class's own arguments from it
        [inspect.Parameter("in_shape", inspect.Parameter.POSITIONAL_OR_KEYWORD), inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind != p.VAR_KEYWORD else p for p in own if p.kind != p.VAR_POSITIONAL]
    )  # fmt: skip
    return ModelInfo(name, f"{cls.__qualname__}, the user's model", builder, convolutional=False)


def check_outputs(model: nn.Module, shape: tuple[int, int, int], num_classes: int, spec: str) -> None:
    """A forward pass on two images of the data's shape must give two rows of num_classes logits; one line otherwise."""
    x = torch.zeros(2, *shape, device=next(model.parameters(), torch.zeros(0)).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - whatever the user's forward raises
        raise ImgclsError(
            f"model {spec} fails on the data's images (a batch of shape {tuple(x.shape)}: N x C x H x W): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ImgclsError(
            f"model {spec} gives outputs of shape {got} for a batch of 2 images; it must give 2 x {num_classes}, one logit per class"
        )
