"""Checkpoints: written atomically, read back with weights_only=True, checked against what they are loaded into."""

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from imgcls.config import saved_model_options
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write
from imgcls.models import create_model, get_model_info
from imgcls.models.user import is_user_model

FORMAT = "imgcls-checkpoint-v1"
KEYS = ("model", "in_shape", "classes", "mean", "std", "config", "state_dict")  # what every reader of a checkpoint uses
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng")  # what last.pt adds to its "progress" for --resume
PROGRAM = ".torchscript.pt"  # best.torchscript.pt: `imgcls export --format torchscript`'s file, and a user model's program


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def resolve(path: str | os.PathLike, which: str = "best") -> Path:
    """A run folder means its best.pt (or last.pt); a file means itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (f"{which}.pt", "last.pt", "best.pt"):
            if (path / name).is_file():
                return path / name
        raise ImgclsError(f"{path} holds no checkpoint (best.pt or last.pt): pass a run folder made by `imgcls train` or a .pt file")
    if not path.exists():
        raise ImgclsError(f"checkpoint {path} does not exist: pass a run folder (runs/NAME) or a .pt file")
    return path


def read_file(path: Path, what: str):
    """What torch.save wrote to path, loaded with weights_only=True; a file it cannot read is one line: damaged or not `what`."""
    try:
        with warnings.catch_warnings():  # torch's warnings on a foreign file (its pickle protocol) would come before our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or foreign files all get the same advice
        raise ImgclsError(f"cannot read {path} ({type(e).__name__}): it is damaged or not {what}") from None


def read_tagged(path: Path, fmt: str, what: str, fix: str) -> dict:
    """A dict saved with {"format": fmt} (read_file); anything else is one line saying it is not `what`, and `fix`."""
    ckpt = read_file(path, what)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ImgclsError(f"{path} is not {what}: {fix}")
    return ckpt


def load(path: str | os.PathLike, which: str = "best") -> dict:
    path = resolve(path, which)
    ckpt = read_tagged(path, FORMAT, "an imgcls checkpoint", "pass a run folder or a best.pt/last.pt written by `imgcls train`")
    missing = [key for key in (*KEYS, *(RESUME_KEYS if "progress" in ckpt else ())) if key not in ckpt]
    if missing:
        raise ImgclsError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: it was edited or written by another version; retrain or use the run's own best.pt"
        )
    ckpt["path"] = str(path)
    return ckpt


def load_model(ckpt: dict, device: torch.device | str = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode on `device`; refused in one line when the checkpoint's
    options cannot build it, or when its weights or normalisation cannot give a number (NaN, a std of 0)."""
    fix = "the file was edited or written by another version; retrain or use the run's own best.pt"
    check_values(ckpt)
    if is_user_model(ckpt["model"]):
        try:
            get_model_info(ckpt["model"])
        except ImgclsError as e:  # a class defined in a notebook: its run's program stands in for it
            program = load_program(ckpt["path"])
            if program is None:
                raise ImgclsError(f"{e}; {ckpt['path']} has no {PROGRAM} program beside it to predict with instead") from None
            return program.to(device)
    options = saved_model_options(ckpt["model"], ckpt.get("model_options"), ckpt["path"])
    try:
        model = create_model(ckpt["model"], tuple(ckpt["in_shape"]), len(ckpt["classes"]), **options)
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ImgclsError(f"{ckpt['path']} cannot build model '{ckpt['model']}' ({reason}): {fix}") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ImgclsError(
            f"{ckpt['path']} does not match model '{ckpt['model']}' with {len(ckpt['classes'])} classes ({str(e).splitlines()[0]}): {fix}"
        ) from None
    return model.to(device).eval()


def load_program(checkpoint_path: str | os.PathLike) -> nn.Module | None:
    """The TorchScript program beside a checkpoint (export.write_program), in eval mode on the CPU; None without one.
    torch.jit.load runs no Python pickle: the program's code is TorchScript's."""
    path = Path(checkpoint_path).with_name(Path(checkpoint_path).stem + PROGRAM)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - a damaged file, whatever torch raises
        raise ImgclsError(f"cannot read {path} ({type(e).__name__}): it is damaged; export it again with `imgcls export`") from None


def check_values(ckpt: dict) -> None:
    """Weights and normalisation that give numbers: a diverged or edited checkpoint would answer NaN for every image."""
    stats = [*ckpt["mean"], *ckpt["std"]]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in stats) or not all(v > 0 for v in ckpt["std"]):
        raise ImgclsError(
            f"{ckpt['path']} has a normalisation that cannot work (mean {ckpt['mean']}, std {ckpt['std']}: each std must be a "
            "positive number): the file was edited; use the run's own best.pt or retrain"
        )
    bad = [k for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ImgclsError(
            f"{ckpt['path']} holds weights that are not numbers (NaN or infinity in {bad[0]}{more}): the run diverged or the file "
            "was edited; retrain with a lower --lr, or use another checkpoint"
        )


def normalisation(ckpt: dict, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpoint's mean and std as C x 1 x 1 tensors, ready to normalise a batch."""
    return (
        torch.tensor(ckpt["mean"], device=device).view(-1, 1, 1),
        torch.tensor(ckpt["std"], device=device).view(-1, 1, 1),
    )
