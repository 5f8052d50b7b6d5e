"""Where a model looks: a heatmap of the evidence for a class in each image, in [0, 1].

Grad-CAM (Selvaraju et al., 2017) for models with a late feature map: the channels of the last module whose output is
an N x C x H x W map (H, W > 1), weighted by the class score's mean gradient, summed, clipped at 0 and upsampled. It
takes one backward pass and is the method users know; Grad-CAM++ only differs where one class has several instances.
Both methods are captum's (well kept, and it needs nothing imgcls does not have; pytorch-grad-cam brings OpenCV and
scikit-learn). Models without such a map (mlp, rnn/lstm/gru, ViTs, TorchScript programs, ONNX exports) get occlusion
(Zeiler and Fergus, 2014): how much the class's probability drops when a patch is set to the mean colour.
"""

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw

from imgcls.data.augment import prepare
from imgcls.data.images import to_mode
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write

LATE = 8  # a feature map is late when at most this many leaf modules run after it (pooling, norm, the head)
OCCLUSION_PATCHES = 8  # occlusion's patch: an eighth of the image's side, moved by half a patch
OVERLAY_SIDE = 1024  # overlays of larger photos are drawn at this longest side (the .npy keeps the full size)
BATCH = 16
GRAD_VALUES = 1 << 18  # input values explained at once: 5 images at 128 px, 1 at 256 px (a run's memory cap holds)


@dataclass
class Explanation:
    """Where the model looked for `label` in one image: `heatmap`, H x W float32 in [0, 1] at the image's own size, the
    label's probability, the class the model predicted, the method (grad-cam or occlusion), the image's path where it
    came from a file, the overlay and heatmap files written; `error` instead for a file that could not be read."""

    heatmap: np.ndarray | None = field(repr=False)
    label: str | None
    probability: float | None
    predicted: str | None
    method: str
    path: Path | None = None
    error: str | None = None
    files: list[Path] = field(default_factory=list)


def explain_images(predictor, items: list[tuple[Image.Image | None, Path | None, str | None]], class_: str | None = None,
                   out: str | Path | None = None) -> list[Explanation]:  # fmt: skip
    """An Explanation of each (upright image, its path, its read error), for `class_` or else the predicted class; with
    `out`, each image's overlay (NAME.png) and heatmap (NAME.npy) are written into that folder."""
    if class_ is not None and class_ not in predictor.classes:
        raise ImgclsError(f"unknown class {class_!r} to explain: the model's classes are {', '.join(predictor.classes)}")
    method = method_of(predictor.feature_layer())
    folder = Path(out).expanduser() if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    names = file_names([path for _, path, _ in items])
    found = [Explanation(None, None, None, None, method, path, error) for _, path, error in items]
    readable = [i for i, (image, _, _) in enumerate(items) if image is not None]
    for start in range(0, len(readable), BATCH):
        chunk = readable[start : start + BATCH]
        pixels = torch.from_numpy(np.stack([predictor.preprocess(items[i][0]) for i in chunk]))
        probs = predictor.probabilities(pixels)
        targets = [predictor.classes.index(class_) if class_ is not None else int(p.argmax()) for p in probs]
        for i, heat, p, t in zip(chunk, heatmaps(predictor, pixels, targets), probs, targets):
            image = items[i][0]
            e = found[i]
            e.heatmap = to_image_size(heat, (image.height, image.width))
            e.label, e.probability, e.predicted = predictor.classes[t], p[t].item(), predictor.classes[int(p.argmax())]
            if folder is not None:
                e.files = write(folder / names[i], image, e)
    return found


def write(stem: Path, image: Image.Image, e: Explanation) -> list[Path]:
    """STEM.png, the overlay captioned with the class explained, and STEM.npy, the heatmap at the image's size."""
    caption = f"{e.label} {e.probability:.1%}" + ("" if e.label == e.predicted else f" (predicted {e.predicted})")
    picture, heat = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".npy")
    atomic_write(picture, lambda f: overlay(image, e.heatmap, caption).save(f, format="PNG"))
    buffer = io.BytesIO()
    np.save(buffer, e.heatmap)
    atomic_write(heat, lambda f: f.write(buffer.getvalue()))
    return [picture, heat]


def feature_layer(model: nn.Module | None, in_shape: tuple[int, ...], device: torch.device) -> nn.Module | None:
    """The module whose output is the model's last spatial feature map, if that map is late; None otherwise (or for a
    TorchScript program, which takes no hooks). Found by running one blank image through the model."""
    if model is None or isinstance(model, torch.jit.ScriptModule):
        return None
    finished: list[tuple[nn.Module, bool]] = []  # each module as its forward ends: (module, its output is a map)

    def record(module, _inputs, output):
        spatial = isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] > 1 and output.shape[-2] > 1
        finished.append((module, spatial))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *in_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    last = max((i for i, (_, spatial) in enumerate(finished) if spatial), default=None)
    if last is None:
        return None
    leaves_after = sum(1 for module, _ in finished[last + 1 :] if not list(module.children()))
    return finished[last][0] if leaves_after <= LATE else None


def method_of(layer: nn.Module | None) -> str:
    return "grad-cam" if layer is not None else "occlusion"


def heatmaps(predictor, pixels: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """N x H x W heatmaps in [0, 1] at the model's input size, of uint8 N x C x H x W images, each for its target class,
    GRAD_VALUES input values at a time: Grad-CAM keeps every activation for its backward pass."""
    if len(pixels) == 0:
        return torch.empty(0, *pixels.shape[-2:])
    step = max(1, GRAD_VALUES // pixels[0].numel())
    return torch.cat([_heatmaps(predictor, pixels[i : i + step], targets[i : i + step]) for i in range(0, len(pixels), step)])


def _heatmaps(predictor, pixels: torch.Tensor, targets: list[int]) -> torch.Tensor:
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion

    x = prepare(pixels.to(predictor.device), predictor.mean, predictor.std)
    target = torch.tensor(targets, device=x.device)
    layer = predictor.feature_layer()
    if layer is not None:
        with torch.enable_grad():
            maps = LayerGradCam(predictor.model, layer).attribute(x.requires_grad_(), target=target, relu_attributions=True)
        maps = LayerAttribution.interpolate(maps.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    else:
        side = max(1, min(x.shape[-2:]) // OCCLUSION_PATCHES)
        stride = max(1, side // 2)
        channels = x.shape[1]
        with torch.inference_mode():
            maps = Occlusion(predictor.scores).attribute(
                x, target=target, sliding_window_shapes=(channels, side, side), strides=(channels, stride, stride), baselines=0.0,
                perturbations_per_eval=16,
            )  # fmt: skip
        maps = maps.float().mean(1).clamp(min=0)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    return (maps / peak).clamp(0, 1).cpu()


def to_image_size(heatmap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A heatmap of the model's input (the image resized and centre-cropped, as ImageOps.fit does) laid back over the
    whole image of `size` (H, W): 0 outside the crop."""
    h, w = heatmap.shape
    height, width = size
    if width * h > height * w:  # wider than the input: the sides were cut
        crop_h, crop_w = height, max(1, round(height * w / h))
    else:
        crop_h, crop_w = max(1, round(width * h / w)), width
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    out = np.zeros((height, width), np.float32)
    resized = F.interpolate(heatmap[None, None].float(), size=(crop_h, crop_w), mode="bilinear", align_corners=False)[0, 0]
    out[top : top + crop_h, left : left + crop_w] = resized.clamp(0, 1).numpy()
    return out


def overlay(image: Image.Image, heatmap: np.ndarray, caption: str = "") -> Image.Image:
    """The heatmap (jet colours, more opaque where it is high) over the picture, with the caption on top."""
    from matplotlib import colormaps

    picture = to_mode(image, 3)
    if max(picture.size) > OVERLAY_SIDE:
        scale = OVERLAY_SIDE / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.BILINEAR)
    heat = Image.fromarray((heatmap * 255).astype(np.uint8)).resize(picture.size, Image.Resampling.BILINEAR)
    levels = np.asarray(heat, np.float32) / 255
    colours = colormaps["jet"](levels)[..., :3] * 255
    alpha = (0.25 + 0.45 * levels)[..., None]
    blended = np.asarray(picture, np.float32) * (1 - alpha) + colours * alpha
    out = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    if not caption:
        return out
    draw = ImageDraw.Draw(out)
    box = draw.textbbox((0, 0), caption)
    draw.rectangle((0, 0, box[2] + 6, box[3] + 4), fill=(0, 0, 0))
    draw.text((3, 2), caption, fill=(255, 255, 255))
    return out


def file_names(paths: list[Path | None]) -> list[str]:
    """A stem per image for its overlay and heatmap files: the image's own name, numbered where two would clash."""
    seen: dict[str, int] = {}
    out = []
    for i, path in enumerate(paths):
        stem = path.stem if path is not None else f"image-{i + 1}"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out
