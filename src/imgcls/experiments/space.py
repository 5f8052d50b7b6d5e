"""The search space of `imgcls tune`: the recipe's own (around its lr, weight decay, batch size, label smoothing and
augmentation strength), or the user's, from `--search lr=1e-3:1e-1:log,batch_size=256|512` or a YAML/JSON file.

A parameter is a dict, so that the space is stored in the study as it is (JSON) and compared across workers:
{"low": 0.001, "high": 0.1, "log": true}, {"low": 0, "high": 8} for an integer option, {"choices": [256, 512]}."""

import difflib
import json
import math
from dataclasses import fields
from pathlib import Path

from imgcls.errors import ImgclsError
from imgcls.options import LIMITS, TrainConfig

# Options that say what the data is, where things are, or what a run writes: tuning them compares runs on other data
# (val_fraction changes the val set the objective is measured on) or changes nothing that is learnt.
NOT_TUNABLE = {
    "data", "data_dir", "device", "image_root", "classes", "label_delim", "label_columns", "multi_label", "image_column",
    "label_column", "weights", "report", "dedupe", "val_fraction", "model_args", "seed",
}  # fmt: skip
SPEC_HELP = "NAME=LOW:HIGH[:log], NAME=A|B|C, comma-separated, such as lr=1e-3:1e-1:log,batch_size=256|512"
OPTION_TYPES = {f.name: f.type for f in fields(TrainConfig)}
OPTION_CHOICES = {f.name: f.metadata.get("choices") for f in fields(TrainConfig)}


def kind(name: str) -> type:
    """int, float, str or bool: the type of a train option."""
    annotation = OPTION_TYPES[name]
    return next((t for t in getattr(annotation, "__args__", (annotation,)) if t is not type(None)), annotation)


def check_name(name: str, where: str) -> None:
    if name not in OPTION_TYPES:
        close = difflib.get_close_matches(name, list(OPTION_TYPES), n=1)
        raise ImgclsError(f"{where}: unknown option '{name}'{f': did you mean {close[0]}?' if close else ''}")
    if name in NOT_TUNABLE or kind(name) is dict:
        raise ImgclsError(f"{where}: {name} cannot be tuned (it says what the data is or where things go): set it as a train option")


def _value(name: str, text: str, where: str):
    """One value of option `name` from text, in the option's type."""
    typ = kind(name)
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "on", "off"):
                raise ValueError
            return text.lower() in ("true", "on")
        return typ(float(text)) if typ is int and float(text).is_integer() else typ(text)
    except ValueError:
        raise ImgclsError(f"{where}: {name} takes {typ.__name__} values, got '{text}'") from None


def parse_spec(spec: str) -> dict:
    """`--search`'s text as a space."""
    space = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, values = part.partition("=")
        name, where = name.strip().replace("-", "_"), f"--search {part}"
        if not eq or not values:
            raise ImgclsError(f"--search {part}: give a range or choices: {SPEC_HELP}")
        check_name(name, "--search")
        if "|" in values:
            space[name] = {"choices": [_value(name, v.strip(), where) for v in values.split("|")]}
            continue
        bounds = values.split(":")
        if len(bounds) not in (2, 3) or (len(bounds) == 3 and bounds[2] != "log"):
            raise ImgclsError(f"{where}: {SPEC_HELP}")
        space[name] = {"low": _value(name, bounds[0], where), "high": _value(name, bounds[1], where), "log": len(bounds) == 3}
    return check_space(space, "--search")


def read_space(path: str | Path) -> dict:
    """A space file: YAML or JSON mapping each option to {low, high[, log]}, {choices: [...]}, [low, high] or a spec
    string such as "1e-3:1e-1:log"."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ImgclsError(f"--search {path}: no such file: give a YAML or JSON file such as `lr: {{low: 0.001, high: 0.1, log: true}}`")
    try:
        values = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError as e:
        raise ImgclsError(f"--search {path} is not valid YAML or JSON ({getattr(e, 'problem', None) or e}): fix the file") from None
    if not isinstance(values, dict) or not values:
        raise ImgclsError(f"--search {path} must map option names to ranges, such as `lr: {{low: 0.001, high: 0.1, log: true}}`")
    space = {}
    for name, value in values.items():
        if isinstance(value, str):
            space |= parse_spec(f"{name}={value}")
        elif isinstance(value, list) and len(value) == 2:
            space[str(name)] = {"low": value[0], "high": value[1], "log": False}
        elif isinstance(value, dict) and (
            set(value) <= {"low", "high", "log"} and {"low", "high"} <= set(value) or set(value) == {"choices"}
        ):
            space[str(name)] = {"log": False, **value} if "low" in value else dict(value)
        else:
            raise ImgclsError(f"--search {path}: {name} must be {{low, high[, log]}}, {{choices: [...]}}, [low, high] or LOW:HIGH[:log]")
    return check_space(space, f"--search {path}")


def check_space(space: dict, where: str) -> dict:
    """Names tunable, ranges ordered and within each option's limits (imgcls.options), choices allowed."""
    for name, param in space.items():
        check_name(name, where)
        typ, limit, choices = kind(name), LIMITS.get(name), OPTION_CHOICES[name]
        values = param["choices"] if "choices" in param else [param["low"], param["high"]]
        if "choices" in param and not values:
            raise ImgclsError(f"{where}: {name} has no choices")
        if "low" in param and typ not in (int, float):
            raise ImgclsError(f"{where}: {name} takes choices (A|B), not a range")
        for value in values:
            if typ in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
                raise ImgclsError(f"{where}: {name} takes numbers, got {value!r}")
            if limit and not limit[1](value):
                raise ImgclsError(f"{where}: {name} must be {limit[2]}, got {value}")
            if choices and value not in choices:
                raise ImgclsError(f"{where}: {name} '{value}' is not one of {', '.join(choices)}")
        if "low" in param:
            if not param["low"] < param["high"]:
                raise ImgclsError(f"{where}: {name}'s range {param['low']}:{param['high']} must go from low to high")
            if param.get("log") and param["low"] <= 0:
                raise ImgclsError(f"{where}: {name}'s log range must start above 0, got {param['low']}")
    return space


def recipe_space(cfg: TrainConfig, train_images: int) -> dict:
    """The default space around a filled-in config (the recipe's values for this data): lr x/÷5, weight decay
    x/÷10, half and double the batch, label smoothing 0-0.3, and up to twice the recipe's shifts, rotation and crops."""
    space = {"lr": {"low": cfg.lr / 5, "high": cfg.lr * 5, "log": True}}
    if cfg.weight_decay:
        space["weight_decay"] = {"low": cfg.weight_decay / 10, "high": cfg.weight_decay * 10, "log": True}
    space["batch_size"] = {
        "choices": sorted({max(1, min(b, train_images)) for b in (cfg.batch_size // 2, cfg.batch_size, cfg.batch_size * 2)})
    }
    space["label_smoothing"] = {"low": 0.0, "high": 0.3, "log": False}
    if cfg.augment:
        if cfg.crop_padding:
            space["crop_padding"] = {"low": 0, "high": 2 * cfg.crop_padding, "log": False}
        if cfg.rotate:
            space["rotate"] = {"low": 0.0, "high": min(180.0, 2 * cfg.rotate), "log": False}
        if cfg.crop_scale and cfg.crop_scale < 1:
            space["crop_scale"] = {"low": cfg.crop_scale / 2, "high": min(1.0, cfg.crop_scale * 2), "log": False}
    if len(space["batch_size"]["choices"]) == 1:
        del space["batch_size"]
    return space


def inside(param: dict, value) -> bool:
    """Whether a parameter's range or choices hold `value`."""
    return value in param["choices"] if "choices" in param else value is not None and param["low"] <= value <= param["high"]


def suggest(trial, space: dict) -> dict:
    """One trial's options, drawn by Optuna's sampler."""
    options = {}
    for name, param in space.items():
        if "choices" in param:
            options[name] = trial.suggest_categorical(name, param["choices"])
        elif kind(name) is int:
            options[name] = trial.suggest_int(name, int(param["low"]), int(param["high"]), log=bool(param.get("log")))
        else:
            options[name] = trial.suggest_float(name, float(param["low"]), float(param["high"]), log=bool(param.get("log")))
    return options


def describe(space: dict) -> str:
    """The space on one line, in the syntax of --search."""

    def one(name, p):
        if "choices" in p:
            return f"{name}={'|'.join(map(str, p['choices']))}"
        return f"{name}={p['low']:.3g}:{p['high']:.3g}{':log' if p.get('log') else ''}"

    return ",".join(one(name, p) for name, p in space.items())


def canonical(space: dict) -> str:
    """The space as JSON with sorted keys: what workers of one study compare."""
    return json.dumps(space, sort_keys=True)
