"""Using a trained model: rebuilt from its checkpoint (or its ONNX export), images preprocessed exactly as in
training, batched prediction, and the file handling of `imgcls predict`."""

import csv
import glob
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcls import checkpoint, explain
from imgcls.checkpoint import load_model, normalisation
from imgcls.data.augment import prepare
from imgcls.data.images import ImageReadError, load_image, read_image, upright
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.evaluation import tta_views
from imgcls.exporter import exported_path, onnx_session, read_metadata

BACKENDS = ("torch", "onnx")
UNKNOWN = "unknown"  # the answer of a model that abstains (its top probability below min_confidence)


class Predictor:
    """A model ready for inference on uint8 C x H x W images, behind either backend.

    `forward` takes a normalised float32 batch on `device` and returns float32 logits."""

    def __init__(self, meta: dict, forward: Callable[[torch.Tensor], torch.Tensor], backend: str, device: torch.device,
                 model: torch.nn.Module | None = None):  # fmt: skip
        self.name = meta["model"]
        self.classes: list[str] = list(meta["classes"])
        self.in_shape: tuple[int, int, int] = tuple(meta["in_shape"])
        self.source = str(meta["path"])
        self.backend = backend
        self.device = device
        self.mean, self.std = normalisation(meta, device)
        self.multi_label = meta.get("task") == "multi-label"  # a sigmoid per label, each decided by its threshold
        self.thresholds = torch.tensor(meta.get("thresholds") or [0.5] * len(self.classes)) if self.multi_label else None
        self.temperature = float(meta.get("temperature") or 1.0)  # fitted on val (--calibrate): calibrated probabilities
        self._min_confidence = 0.0
        self.tta = bool(meta["tta"] if "tta" in meta else meta.get("config", {}).get("tta"))  # predict as the run evaluated
        self.tta_shift = int(meta["tta_shift"] if "tta_shift" in meta else meta.get("config", {}).get("tta_shift") or 0)
        self._forward = forward
        self.model = model  # the torch backend's module: Grad-CAM needs its layers and gradients
        self._feature_layer: list = []  # found on first use (explain.feature_layer)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Predictor":
        ckpt, where = checkpoint.load(path), pick_device(device)
        model = load_model(ckpt, where)
        return cls(ckpt, lambda x: model(x).float(), "torch", where, model)

    @classmethod
    def from_onnx(cls, path: str | Path) -> "Predictor":
        meta = read_metadata(path)
        session = onnx_session(path)
        name = session.get_inputs()[0].name
        meta["path"] = str(path)
        return cls(meta, lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]), "onnx", torch.device("cpu"))

    @classmethod
    def open(cls, path: str | Path, backend: str = "torch", device: str = "auto") -> "Predictor":
        """A run folder or checkpoint with the torch backend; its ONNX export (or a .onnx file) with the onnx backend."""
        if backend not in BACKENDS:
            raise ImgclsError(f"unknown backend '{backend}': choose {' or '.join(BACKENDS)}")
        if str(path).endswith(".onnx") or backend == "onnx":
            if device not in ("auto", "cpu"):
                raise ImgclsError("the onnx backend runs on the CPU: drop --device or use --backend torch")
            return cls.from_onnx(path if str(path).endswith(".onnx") else exported_path(path, "onnx"))
        return cls.from_checkpoint(path, device)

    @property
    def min_confidence(self) -> float:
        """Single-label: below this top probability (calibrated), the answer is UNKNOWN; 0 answers always."""
        return self._min_confidence

    @min_confidence.setter
    def min_confidence(self, value: float) -> None:
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ImgclsError(f"min_confidence must be a probability from 0 to 1, got {value!r}")
        self._min_confidence = float(value)

    @property
    def channels(self) -> int:
        return self.in_shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.in_shape[1], self.in_shape[2]

    def describe(self) -> dict:
        return {"name": self.name, "classes": self.classes, "input_size": list(self.in_shape), "backend": self.backend,
                "multi_label": self.multi_label, "temperature": self.temperature}  # fmt: skip

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The training decode of image folders (data/images.py), at the model's channels and size."""
        return load_image(image, self.channels, self.size)

    def read(self, path: str | Path) -> np.ndarray:
        return read_image(path, self.channels, self.size)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
        """Probabilities (N x K, float32, on the CPU) of uint8 N x C x H x W images, batch by batch: softmax of the logits
        over the run's temperature, or for a multi-label model a sigmoid per label."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.array(images))  # a copy: decoded PIL pixels are read-only
        out = []
        for start in range(0, len(images), batch_size):
            x = prepare(images[start : start + batch_size].to(self.device), self.mean, self.std)
            views = tta_views(x, self.tta, self.tta_shift)
            logits = sum(self._forward(v) for v in views) / len(views) / self.temperature
            out.append((logits.sigmoid() if self.multi_label else logits.softmax(1)).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def feature_layer(self) -> torch.nn.Module | None:
        """The layer Grad-CAM explains (explain.feature_layer), or None where occlusion stands in."""
        if not self._feature_layer:
            self._feature_layer.append(explain.feature_layer(self.model, self.in_shape, self.device))
        return self._feature_layer[0]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a normalised float batch, without TTA: what occlusion watches drop (a probability near 1
        hardly moves when part of the evidence is hidden; its logit does)."""
        return self._forward(x)

    def explain(self, inputs, class_: str | None = None, out: str | Path | None = None) -> list["explain.Explanation"]:
        """Where the model looked in each input (the inputs of predict): a heatmap in [0, 1] at the image's own size, for
        `class_` or else the predicted class, by Grad-CAM for convolutional models and occlusion for the others. With `out`,
        each image's overlay (NAME.png) and heatmap (NAME.npy) are written into that folder."""
        items: list[tuple[Image.Image | None, Path | None, str | None]] = []
        for kind, group in _grouped(inputs):
            if kind == "images":
                items += [(image, None, None) for image in group]
                continue
            for path in collect_files([str(f) for f in group]):
                try:
                    items.append((upright(path), path, None))
                except ImageReadError as e:
                    items.append((None, path, str(e)))
        return explain.explain_images(self, items, class_, out)

    def predict(self, inputs, top_k: int = 1, batch_size: int = 256) -> list["Prediction"]:
        """The model's answer for each input: image file paths, folders (their images, recursively), PIL images, uint8
        arrays (H x W, H x W x C, or a batch N x H x W x C or N x H x W) or tensors (C x H x W, or a batch N x C x H x W or
        N x H x W; floats in [0, 1]), one of them or a list.
        Each image is preprocessed as training's were. A file that cannot be read is one Prediction with its `error`."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ImgclsError(f"top_k must be a positive integer, got {top_k!r}")
        out = []
        for kind, items in _grouped(inputs):
            if kind == "files":
                for r in predict_files(self, collect_files([str(f) for f in items]), batch_size):
                    out.append(Prediction.of(self, r.probs, top_k, r.file, r.error))
                continue
            pixels = np.stack([self.preprocess(image) for image in items])
            out += [Prediction.of(self, probs, top_k) for probs in self.probabilities(pixels, batch_size)]
        return out

    def decided(self, probs: torch.Tensor) -> list[list[str]]:
        """Each row's label set: for a multi-label model every label at or over its threshold, else the likeliest class
        (none where its probability is below min_confidence)."""
        if not self.multi_label:
            top, index = probs.max(1)
            return [[self.classes[i]] if p >= self.min_confidence else [] for p, i in zip(top.tolist(), index.tolist())]
        return [[self.classes[i] for i in torch.nonzero(row).flatten().tolist()] for row in probs >= self.thresholds]

    def answers(self, probs: torch.Tensor, k: int) -> list[dict]:
        """What `serve` and `predict --format json` return for each row: the top k classes, and a multi-label model's
        label set."""
        tops = self.top(probs, k)
        if self.multi_label:
            return [{"labels": labels, "predictions": top} for labels, top in zip(self.decided(probs), tops)]
        if self.min_confidence:  # the answer, UNKNOWN where the model abstains, beside the top classes
            return [{"label": labels[0] if labels else UNKNOWN, "predictions": top} for labels, top in zip(self.decided(probs), tops)]
        return tops

    def top(self, probs: torch.Tensor, k: int) -> list[list[dict]]:
        """The k most likely classes of each row: [{'label': ..., 'probability': ...}, ...], best first."""
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [{"label": self.classes[i], "probability": p} for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(values.tolist(), indices.tolist())
        ]


@dataclass
class Prediction:
    """One image's answer: the most likely class (UNKNOWN where its probability is below the predictor's min_confidence)
    and its probability, the `top` classes with theirs (best first), the
    label set (`labels`: for a multi-label model, every label over its threshold), and the file it came from, where
    there is one; `error` instead for a file that could not be read."""

    label: str | None
    probability: float | None
    top: list[tuple[str, float]]
    path: Path | None = None
    error: str | None = None
    labels: list[str] = field(default_factory=list)  # the label set: every label over its threshold (multi-label), else [label]

    @classmethod
    def of(cls, predictor: "Predictor", probs: torch.Tensor | None, k: int, path: Path | None = None, error: str | None = None):
        if probs is None:
            return cls(None, None, [], path, error)
        top = [(row["label"], row["probability"]) for row in predictor.top(probs[None], k)[0]]
        labels = predictor.decided(probs[None])[0]
        label = top[0][0] if labels or predictor.multi_label else UNKNOWN  # below min_confidence: the model abstains
        return cls(label, top[0][1], top, path, labels=labels)


def _grouped(inputs) -> list[tuple[str, list]]:
    """Inputs as runs of ("files", paths) and ("images", PIL images): one input, a list of them, or a batch array."""
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        channels = inputs.shape[0] if isinstance(inputs, torch.Tensor) else inputs.shape[-1]  # C x H x W tensors, H x W x C arrays
        batch = inputs.ndim == 4 or (inputs.ndim == 3 and channels not in (1, 3, 4))  # N x C x H x W, N x H x W x C; N x H x W
        inputs = list(inputs) if batch else [inputs]
    elif isinstance(inputs, (str, os.PathLike, Image.Image)):
        inputs = [inputs]
    groups: list[tuple[str, list]] = []
    for item in inputs:
        kind = "files" if isinstance(item, (str, os.PathLike)) else "images"
        image = item if kind == "files" else _as_image(item)
        if groups and groups[-1][0] == kind:
            groups[-1][1].append(image)
        else:
            groups.append((kind, [image]))
    return groups


def _as_image(item) -> Image.Image:
    """A PIL image of an array or tensor input (H x W x C arrays, C x H x W tensors; floats in [0, 1])."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        item = (item * 255).round().clamp(0, 255).to(torch.uint8) if item.is_floating_point() else item
        item = item.numpy()
        item = item if item.ndim == 2 else item.transpose(1, 2, 0)
    if not isinstance(item, np.ndarray):
        raise ImgclsError(f"cannot predict a {type(item).__name__}: pass paths, folders, PIL images, arrays or tensors")
    if item.dtype != np.uint8:
        raise ImgclsError(f"an array image must be uint8 (0-255), got {item.dtype}")
    if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4))):
        raise ImgclsError(f"an image of shape {item.shape}: give H x W or H x W x C arrays, C x H x W tensors")
    return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item)


IMAGE_SUFFIXES = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def collect_files(specs: list[str]) -> list[Path]:
    """Files as given, image files anywhere below folders, and glob matches (`**` recursive), in order, without repeats."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            matches = sorted(
                Path(root, name)
                for root, dirs, files in os.walk(path)
                for name in files
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
            )
            if not matches:
                raise ImgclsError(
                    f"no image files in {path} or its subfolders (.png, .jpg, .bmp, .gif, .tif, .webp or another Pillow format)"
                )
        elif path.exists():
            matches = [path]
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
            if not matches:
                raise ImgclsError(f"no files match {spec}")
        else:
            raise ImgclsError(f"{path} does not exist: pass image files, folders or glob patterns")
        found += matches
    return list(dict.fromkeys(found))


@dataclass
class FileResult:
    file: Path
    probs: torch.Tensor | None  # K probabilities, None when the file could not be read
    image: np.ndarray | None  # the preprocessed uint8 image, when asked to keep it
    error: str | None = None


def predict_files(predictor: Predictor, files: list[Path], batch_size: int = 256, keep_images: int = 0) -> Iterator[FileResult]:
    """Decode and predict `batch_size` files at a time; an unreadable file yields an error and the batch goes on.
    The first `keep_images` preprocessed images are kept (for plots)."""
    kept = 0
    for start in range(0, len(files), batch_size):
        chunk, images, results = files[start : start + batch_size], [], []
        for path in chunk:
            try:
                images.append(predictor.read(path))
                results.append(FileResult(path, None, None))
            except ImageReadError as e:  # whatever went wrong in the decoder, over the pixel cap included
                results.append(FileResult(path, None, None, str(e)))
        probs = iter(predictor.probabilities(np.stack(images), batch_size) if images else [])
        pixels = iter(images)
        for result in results:
            if result.error is None:
                result.probs, image = next(probs), next(pixels)
                if kept < keep_images:
                    result.image, kept = image, kept + 1
            yield result


def format_predictions(results: list[FileResult], predictor: Predictor, k: int, fmt: str = "table") -> str:
    """Each file's top-k classes as an aligned table, CSV (one row per file) or JSON; unreadable files with their error.
    The answer comes first where it is more than the top class: a multi-label model's label set (every label over its
    threshold, joined by '+' in a table or CSV), or with min_confidence the class or UNKNOWN."""
    good = [r for r in results if r.error is None]
    probs = torch.stack([r.probs for r in good]) if good else None
    tops = dict(zip(map(id, good), predictor.top(probs, k))) if good else {}
    column = "labels" if predictor.multi_label else "label" if predictor.min_confidence else None
    decided = predictor.decided(probs) if good and column else []
    answers = dict(zip(map(id, good), decided if predictor.multi_label else [d[0] if d else UNKNOWN for d in decided]))
    rows = [(str(r.file), tops.get(id(r)), r.error, answers.get(id(r))) for r in results]
    k = min(k, len(predictor.classes))
    shown = (lambda a: "+".join(a) or "(none)") if predictor.multi_label else str  # noqa: E731
    if fmt == "json":
        return json.dumps(
            [({"file": f, **({column: answer} if column else {}), "predictions": top} if top else {"file": f, "error": err})
             for f, top, err, answer in rows], indent=2,
        )  # fmt: skip
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(
            ["file", *([column] if column else []), *(f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "probability")), "error"]
        )
        for f, top, err, answer in rows:
            cells = [v for p in top for v in (p["label"], f"{p['probability']:.6f}")] if top else [""] * 2 * k
            writer.writerow(
                [f, *(["+".join(answer or []) if predictor.multi_label else answer or ""] if column else []), *cells, err or ""]
            )
        return buf.getvalue().rstrip("\n")
    head = ["file", *([column] if column else []), *(f"top-{i}" for i in range(1, k + 1))]
    lines = [
        [f, *([shown(answer)] if column else []), *(f"{p['label']} {p['probability']:.1%}" for p in top)]
        if top else [f, f"unreadable ({err})"]
        for f, top, err, answer in rows
    ]  # fmt: skip
    # Column widths from the predictions only: an error message runs on past them.
    columns = len(head)
    widths = [max(len(line[i]) for line in [head, *(line for line, row in zip(lines, rows) if row[1])]) for i in range(columns)]
    widths[0] = max(len(line[0]) for line in [head, *lines])
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in [head, *lines])
