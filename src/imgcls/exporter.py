"""Exporting a trained model to ONNX or TorchScript: checked against PyTorch on real images before anything is
written, with a dynamic batch size, and with the preprocessing a user must apply stored next to it (NAME.json)."""

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from imgcls import checkpoint, files
from imgcls.checkpoint import load_model, normalisation
from imgcls.data import DATASETS
from imgcls.data.augment import prepare
from imgcls.errors import ImgclsError, missing_extra
from imgcls.evaluation import checkpoint_data
from imgcls.interrupt import during

LOG = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": checkpoint.PROGRAM}  # file suffix of each format
METADATA_FORMAT = "imgcls-export-v1"
OPSET = 17
TOLERANCE = 1e-3  # on logits; float32 reassociation differences are ~1e-6
PARITY_IMAGES = 64
PREPROCESSING = (
    "decode, rotate upright by EXIF orientation, convert to L (1 channel) or RGB (3), resize and centre-crop to H x W "
    "(PIL ImageOps.fit, bilinear), scale pixels to [0, 1], subtract mean and divide by std per channel; input is float32 N x C x H x W"
)


@dataclass
class Exported:
    path: Path
    metadata: Path
    max_abs_diff: float
    inputs: str  # what the parity check ran on


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ImgclsError(f"unknown export format '{fmt}': choose {' or '.join(FORMATS)}")
    return fmt


def metadata_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def exported_path(run_or_checkpoint: str | Path, fmt: str) -> Path:
    """Where `imgcls export` put a run's (or checkpoint's) model in this format; it must exist."""
    ckpt = checkpoint.resolve(run_or_checkpoint)
    path = ckpt.with_name(ckpt.stem + FORMATS[check_format(fmt)])
    if not path.is_file():
        raise ImgclsError(
            f"{run_or_checkpoint} has no {fmt} export ({path.name}): run `imgcls export {run_or_checkpoint} --format {fmt}` first"
        )
    return path


def read_metadata(model_path: str | Path) -> dict:
    path = metadata_path(model_path)
    if not Path(model_path).is_file():
        raise ImgclsError(f"exported model {model_path} does not exist: run `imgcls export RUN --format onnx` first")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImgclsError(f"{model_path} has no metadata file {path.name} next to it: export it again with `imgcls export`") from None
    except (OSError, ValueError) as e:
        raise ImgclsError(f"cannot read {path} ({type(e).__name__}): export the model again with `imgcls export`") from None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ImgclsError(f"{path} is not imgcls export metadata: export the model again with `imgcls export`")
    return meta


def parity_images(ckpt: dict, n: int) -> tuple[torch.Tensor, str]:
    """Up to n test images of the run's own data; random pixels (said so) when that data cannot be loaded."""
    try:
        data = checkpoint_data(ckpt)
        return data.test.images[:n], f"{min(n, len(data.test))} images of the {data.name} test split"
    except ImgclsError as e:
        # Said on a line of its own: a check on random pixels is weaker than one on the images the model knows.
        spec = ckpt["config"]["data"]
        where = spec if spec in DATASETS else os.path.abspath(spec)
        LOG.warning(f"warning: the run's data {where} was not found, the parity check runs on random pixels instead ({e})")
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, *ckpt["in_shape"]), dtype=torch.uint8, generator=generator)
        return images, f"{n} random images (the run's data could not be loaded: {e})"


def onnx_session(model: bytes | str | Path):
    """An ONNX Runtime CPU session that uses as many threads as torch does (OMP_NUM_THREADS and the like)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise missing_extra("ONNX inference", "export", e) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise to users
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime has its own exception types (InvalidProtobuf, Fail, ...) for bad files
        what = "the exported model" if isinstance(model, bytes) else model
        raise ImgclsError(
            f"cannot load {what} ({type(e).__name__}): damaged or not an ONNX model: export it again with `imgcls export`"
        ) from None


def _serialise(model: torch.nn.Module, fmt: str, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # Both exporters warn that they are deprecated in favour of torch.export; they are the ones that work offline
        # with no extra packages (the dynamo ONNX exporter needs onnxscript) and handle every registry model.
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
        else:
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)  # our parity check is stricter
    return buffer.getvalue()


def _runner(blob: bytes, fmt: str):
    """The exported model, loaded back from its bytes: a function from a float batch to logits."""
    if fmt == "onnx":
        session = onnx_session(blob)
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    return lambda x: module(x)


def export(
    run_or_checkpoint: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    tolerance: float = TOLERANCE,
    images: int = PARITY_IMAGES,
) -> Exported:
    """Export, compare with PyTorch on batches of 1 and of all parity images, and only then write model + metadata."""
    check_format(fmt)
    if images < 1:
        raise ImgclsError("--parity-images must be at least 1")
    if fmt == "onnx":
        try:  # fail before the export work, not after it
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise missing_extra("--format onnx", "export", e) from None
    ckpt = checkpoint.load(run_or_checkpoint)
    model = load_model(ckpt, "cpu")
    pixels, inputs = parity_images(ckpt, images)
    ckpt_path = Path(ckpt["path"])
    path = Path(out) if out else ckpt_path.with_name(ckpt_path.stem + FORMATS[fmt])
    return _export(model, ckpt, fmt, path, tolerance, pixels, inputs)


def write_program(checkpoint_path: Path, model: torch.nn.Module, images: torch.Tensor) -> Exported:
    """A user's model as a TorchScript program beside its checkpoint (best.torchscript.pt, and its .json), checked as
    `imgcls export` checks: where the model's class cannot be imported (it was defined in a notebook), predict, export
    and serve run this. TorchScript, not torch.export: torch.export.load falls back to unpickling arbitrary objects
    (weights_only=False) for what it cannot read otherwise, so a program file could run code when loaded."""
    ckpt = checkpoint.load(checkpoint_path)
    inputs = f"{min(len(images), PARITY_IMAGES)} test images" if len(images) else f"{PARITY_IMAGES} random images"
    pixels = images[:PARITY_IMAGES] if len(images) else torch.randint(0, 256, (PARITY_IMAGES, *ckpt["in_shape"]), dtype=torch.uint8)
    model = model.to("cpu").eval()
    return _export(
        model, ckpt, "torchscript", checkpoint_path.with_name(checkpoint_path.stem + FORMATS["torchscript"]), TOLERANCE, pixels, inputs
    )


def _export(model: torch.nn.Module, ckpt: dict, fmt: str, path: Path, tolerance: float, pixels: torch.Tensor, inputs: str) -> Exported:
    mean, std = normalisation(ckpt)
    x = prepare(pixels, mean, std)
    with during(f"exporting to {fmt}", "nothing was written"):
        # Traced on a batch of 2 so that nothing specialises on a batch of 1; checked on 1 and on all of them.
        blob = _serialise(model, fmt, x[:2] if len(x) > 1 else x)
        run = _runner(blob, fmt)
        with torch.inference_mode():
            diff = max((run(batch) - model(batch)).abs().max().item() for batch in (x[:1], x))
    if not diff <= tolerance:  # also catches NaN
        raise ImgclsError(
            f"parity check failed: max abs difference on logits {diff:.3g} > tolerance {tolerance:g} ({inputs}); nothing was written"
        )
    meta = {
        "format": METADATA_FORMAT, "export_format": fmt, "file": path.name, "model": ckpt["model"],
        "model_options": ckpt.get("model_options", {}), "classes": ckpt["classes"], "in_shape": ckpt["in_shape"],
        "mean": ckpt["mean"], "std": ckpt["std"], "preprocessing": PREPROCESSING,
        "task": ckpt.get("task", "single-label"), "thresholds": ckpt.get("thresholds"),  # multi-label: a sigmoid per label, decided so
        "temperature": ckpt.get("temperature", 1.0),  # probabilities are softmax(logits / temperature), fitted on val
        "tta": bool(ckpt["config"].get("tta")),  # the run averaged each image's logits with its mirror image's
        "tta_shift": ckpt["config"].get("tta_shift") or 0,  # and with those of its views shifted by +-this many pixels
        "input": {"name": "images", "shape": ["batch", *ckpt["in_shape"]], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(ckpt["classes"])], "dtype": "float32"},
        "checkpoint": ckpt["path"], "epoch": ckpt.get("epoch"), "torch": torch.__version__,
        "opset": OPSET if fmt == "onnx" else None,
        "parity": {"max_abs_diff": diff, "tolerance": tolerance, "inputs": inputs, "batch_sizes": sorted({1, len(x)})},
    }  # fmt: skip
    files.atomic_write(path, lambda f: f.write(blob))
    files.atomic_write(metadata_path(path), lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return Exported(path, metadata_path(path), diff, inputs)
