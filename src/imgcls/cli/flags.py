"""The train options as command-line flags, generated from TrainConfig's field metadata (imgcls.config.opt), and the
checks every command's output paths and counts share."""

import argparse
import json
import math
import types
from dataclasses import fields
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.options import TrainConfig


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): give an object such as '{{\"hidden\": 256}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"give a JSON object of named arguments such as '{{\"hidden\": 256}}', got {text}")
    return value


def _kind(annotation) -> type:
    """int, float, str, bool or dict, from a field's type (`int | None` and the like)."""
    if isinstance(annotation, types.UnionType):
        return next(a for a in annotation.__args__ if a is not type(None))
    return annotation


def add_train_options(parser: argparse.ArgumentParser, groups: tuple[str, ...], only: tuple[str, ...] | None = None) -> None:
    """A flag for each TrainConfig field of `groups` (or those named in `only`), its help, metavar, choices and type from
    the field's metadata. Every default is None, so that the config layer (and --resume) can tell what the user set."""
    for f in fields(TrainConfig):
        meta = f.metadata
        if (meta.get("group") not in groups) if only is None else (f.name not in only):
            continue
        kind = _kind(f.type)
        kwargs = {"help": meta["help"], "default": None}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _json_object if kind is dict else kind
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            else:
                kwargs["metavar"] = meta.get("metavar")
        parser.add_argument(flag(f.name), **kwargs)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE",
        help="train options from a YAML or JSON file, under the names of config.json (a run's config.json trains that run "
        "again); options given beside it win",
    )  # fmt: skip


def given(args: argparse.Namespace, groups: tuple[str, ...], only: tuple[str, ...] | None = None) -> dict:
    """The options of `groups` (or those named in `only`) the user set on the command line, under their Python names."""
    names = [f.name for f in fields(TrainConfig) if (f.metadata.get("group") in groups if only is None else f.name in only)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def as_flags(options: dict) -> list[str]:
    """Options back as command-line arguments, so that a printed command repeats what the user set."""
    out = []
    for key, value in options.items():
        if isinstance(value, bool):
            out.append(flag(key) if value else "--no-" + flag(key)[2:])
        else:
            out += [flag(key), json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


def only_machine_options(given: dict, out: str | None, config: str | None = None) -> None:
    """--resume continues with the run's saved settings: only --device and --data-dir, which change with the machine,
    may be given beside it."""
    fixed = [k for k in given if k not in ("device", "data_dir")] + [k for k, v in (("out", out), ("config", config)) if v]
    if fixed:
        flags = ", ".join(flag(k) for k in fixed)
        raise ImgclsError(f"--resume continues with the run's saved settings: drop {flags}")


def writable(option: str, path: str | None, folder: bool = False) -> Path | None:
    """An output path option, refused before any work when a file stands where a folder is needed (or, for a file
    option, a folder where the file would go)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise ImgclsError(f"{option} {path} is a folder: give a file name in it, such as {path / 'out.png'}")
    for above in path.parents if not folder else (path, *path.parents):
        if above.exists() and not above.is_dir():
            where = "is a file, not a folder" if above == path else f"lies under {above}, which is a file"
            raise ImgclsError(f"{option} {path} {where}: choose another {option}")
    return path


def positive(option: str, value: float | None, integer: bool = True, optional: bool = False) -> None:
    """Numbers (NaN and infinity excluded) that must be above zero, or at least 1 for counts; None where `optional`."""
    if optional and value is None:
        return
    if not (value >= 1 if integer else 0 < value < math.inf):
        raise ImgclsError(f"{option} must be {'at least 1' if integer else 'a positive number'}, got {value}")
