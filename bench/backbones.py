"""CPU throughput of ImageNet backbones (training, frozen features, inference) and of a whole default fine-tune, in one run.

    python bench/backbones.py [--models resnet18 mobilenet_v3_large efficientnet_b0] [--sizes 128 160 224] [--batch 32]
                              [--seconds 8] [--warmup 3] [--precision auto] [--fine-tune-images 500]

For every model x size, on random uint8 batches of --batch images, images per second of
  train:      a training step as the fine-tune recipe takes it: prepare() with a flip and a 35-100% resized crop,
              channels_last, autocast where imgcls.device.amp_dtype says so (bf16 on CPUs with native bf16, else fp32),
              cross-entropy with label smoothing 0.1, backward, AdamW step over the recipe's discriminative-lr groups;
  features:   imgcls.training.finetune.features itself on one batch (eval mode, torch.no_grad, forward only);
  inference:  imgcls.evaluation.predict_logits on one batch (eval mode, torch.inference_mode).
Features and inference run the same forward pass (features records the head's input, the head still runs), so they
differ only by no_grad against inference_mode. One baseline row: imgcls's small-image ResNet-18 (3x3 stem, no max pool:
what the registry builds up to 64 px) fed 128x128 images, against which the ImageNet ResNet-18 at 128 px is compared
in training images/s (the goal is at least 5x).
Each figure is the median over timed steps of batch / step time, after --warmup untimed steps (oneDNN builds its
kernels on the first steps of each shape), timing steps for --seconds (at least 3 steps).

--fine-tune-images N (0: skip) times `imgcls.train(FOLDER, device="cpu")` end to end, as a
user's first run (decode cache empty): FOLDER holds N JPEGs of two classes, CIFAR-10 airplanes and birds from
../shared/data/cifar10-jpeg upscaled to 160x120 and 150x120 (generated pictures when that folder is missing). Their two
sizes make imgcls resize them to its CPU default side, as it does a phone's photos. The resnet18 "ImageNet" weight file
is random weights with batch-norm statistics of real activations (as tests/conftest.py's cache_torchvision_weights),
put in a temporary TORCH_HOME so `--pretrained auto` finds it; accuracies are therefore meaningless. The HTML report
(report=False: no plots) is not drawn, nor timed. The recipe sizes the run to show about 6,000 training
images (60% of N train; 3 to 100 epochs), so a small N is not a short run: 40 images train 100 epochs of 24.

Prints the CPU model, a markdown table and the baseline ratio, then one JSON object as the last line.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transfer import FastaiStage  # bench/transfer.py, beside this script

import imgcls
from imgcls.config import PRECISIONS, TrainConfig
from imgcls.data.augment import Augment, prepare
from imgcls.device import amp_dtype, autocast, use_channels_last
from imgcls.errors import ImgclsError
from imgcls.evaluation import predict_logits
from imgcls.models import create_model
from imgcls.models.registry import check_input, get_model_info
from imgcls.models.torchvision_models import IMAGENET_MEAN, IMAGENET_STD, cache_path, default_weights
from imgcls.training import finetune
from imgcls.training.run import train

CPU = torch.device("cpu")
CLASSES = 10
AUGMENT = Augment(flip=True, crop_scale=0.35)  # what the fine-tune recipe trains photos with
LABEL_SMOOTHING, LR, LR_MULT, WEIGHT_DECAY = 0.1, 1e-3, 100.0, 0.01  # the fine-tune recipe's
MIN_STEPS = 3
BASELINE_SIZE, SMALL_SHAPE = 128, (3, 64, 64)  # up to 64 px the registry builds the small-image ResNet-18
PHOTO_SIZES = ((160, 120), (150, 120))  # (width, height), alternating: a folder of mixed sizes is resized to the CPU default
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def images_per_second(step, batch: int, seconds: float, warmup: int) -> tuple[float, int]:
    """Median of batch / step time over the timed steps, and how many there were."""
    for _ in range(warmup):
        step()
    times, start = [], time.perf_counter()
    while len(times) < MIN_STEPS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), len(times)


def measure(name: str, build_shape: tuple[int, int, int], size: int, args, amp: torch.dtype | None) -> dict:
    """Train, features and inference images/s of model `name` built for build_shape and fed size x size batches."""
    torch.manual_seed(0)
    model = create_model(name, build_shape, CLASSES)
    channels_last = use_channels_last(CPU, get_model_info(name).convolutional)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    head = finetune.classifier(model, CLASSES)
    optimizer = torch.optim.AdamW(finetune.param_groups(model, head, LR, LR_MULT, WEIGHT_DECAY), lr=LR)
    images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (args.batch,))
    mean, std = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    generator = torch.Generator().manual_seed(0)

    def train_step() -> None:
        x = prepare(images, mean, std, AUGMENT, generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(CPU, amp):
            loss = F.cross_entropy(model(x), labels, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # What finetune.features reads from the Trainer.
    trainer = SimpleNamespace(
        model=model, cfg=SimpleNamespace(batch_size=args.batch), device=CPU, mean=mean, std=std, channels_last=channels_last, amp=amp,
        stop_requested=False,
    )  # fmt: skip
    row = {"model": name, "size": size, "built_for": list(build_shape)}
    print(f"{name} at {size} px (built for {build_shape[1]} px):", end="", flush=True)
    model.train()
    row["train"], row["train_steps"] = images_per_second(train_step, args.batch, args.seconds, args.warmup)
    print(f" train {row['train']:.1f}", end="", flush=True)
    row["features"], row["features_steps"] = images_per_second(
        lambda: finetune.features(trainer, head, images, flip=False), args.batch, args.seconds, args.warmup
    )
    print(f", features {row['features']:.1f}", end="", flush=True)
    row["inference"], row["inference_steps"] = images_per_second(
        lambda: predict_logits(model, images, mean, std, batch_size=args.batch, amp=amp, channels_last=channels_last),
        args.batch, args.seconds, args.warmup,
    )  # fmt: skip
    print(f", inference {row['inference']:.1f} img/s", flush=True)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


# --- the whole fine-tune -----------------------------------------------------------------------------


def make_photos(root: Path, n: int, data_dir: Path) -> str:
    """n JPEGs in two class folders; what they were made from."""
    sources = [data_dir / "cifar10-jpeg" / "train" / c for c in ("airplane", "bird")]
    real = all(s.is_dir() for s in sources)
    rng = np.random.default_rng(0)
    for c, source in enumerate(sources):
        folder = root / source.name
        folder.mkdir(parents=True)
        files = sorted(source.iterdir()) if real else []
        for i in range(n // 2 + (c < n % 2)):
            size = PHOTO_SIZES[i % len(PHOTO_SIZES)]
            if real:  # more images than CIFAR has repeat, which costs the same
                image = Image.open(files[i % len(files)]).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            else:  # a smooth class-coloured gradient with noise, so the JPEGs compress like pictures, not like noise
                w, h = size
                ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.5, 1, h)[:, None, None]
                base = np.array([200, 80, 40] if c else [40, 120, 220]) * ramp + rng.normal(0, 12, (h, w, 3))
                image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
            image.save(folder / f"{i:05d}.jpg", quality=90)
    return "CIFAR-10 airplane/bird upscaled" if real else f"generated gradients, no CIFAR-10 folder at {sources[0].parents[1]}"


def cache_resnet18_weights() -> Path:
    """A 1000-class resnet18 state dict where torch.hub's download would leave it: random weights, but batch-norm
    statistics of real activations (the initial ones blow eval logits up to hundreds)."""
    import torchvision.models as tvm

    torch.manual_seed(1)
    net = tvm.resnet18(weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        net(torch.randn(16, 3, 64, 64))
    path = cache_path(default_weights("resnet18"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def fine_tune(n: int, data_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = make_photos(tmp / "photos", n, data_dir)
        env = {"TORCH_HOME": str(tmp / "torch"), "IMGCLS_CACHE": str(tmp / "cache"), "IMGCLS_OFFLINE": "1"}
        with mock.patch.dict(os.environ, env):
            cache_resnet18_weights()
            print(f"\nfine-tune: {n} JPEGs ({source}), imgcls.train(FOLDER, device='cpu', report=False)", flush=True)
            start = time.perf_counter()
            run = imgcls.train(str(tmp / "photos"), device="cpu", report=False, progress=False, out=tmp / "run")
            run_dir, summary = run.dir, run.summary
            wall = time.perf_counter() - start
            # The same run with fastai's frozen stage (forward passes every epoch, norms training): what caching saves.
            _, fastai = train(TrainConfig(data=str(tmp / "photos"), device="cpu"), out=str(tmp / "run-fastai"), trainer_class=FastaiStage)
        cfg = json.loads((run_dir / "config.json").read_text())
    if cfg["pretrained"] != "on":
        raise SystemExit("bench/backbones.py: the fine-tune did not start from the placed resnet18 weights: nothing fine-tuned to time")
    frozen = summary["frozen_stage"] or {}
    return {
        "images": n, "source": source, "model": cfg["model"], "image_size": cfg["image_size"], "batch_size": cfg["batch_size"],
        "epochs": summary["epochs_run"], "freeze_epochs": cfg["freeze_epochs"], "wall_seconds": round(wall, 1),
        "train_seconds": summary["train_seconds"], "train_images_per_second": summary["images_per_second"],
        "frozen_feature_seconds": frozen.get("feature_seconds"), "frozen_head_seconds": frozen.get("head_seconds"),
        # decoding, validation after each epoch, checkpoints, the test: what the wall time holds beyond the two stages
        "other_seconds": round(wall - summary["train_seconds"] - frozen.get("feature_seconds", 0) - frozen.get("head_seconds", 0), 1),
        "report_written": False, "test_accuracy": summary["test_accuracy"],
        "fastai_frozen_stage_seconds": fastai["frozen_stage"]["head_seconds"], "fastai_test_accuracy": fastai["test_accuracy"],
    }  # fmt: skip


# --- report ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_large", "efficientnet_b0"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 160, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per model, size and measure [8]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, at least 3 [3]")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--fine-tune-images", type=int, default=500, help="images of the timed fine-tune, 0 to skip [500]")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help=f"holds cifar10-jpeg/ [{SHARED_DATA}]")
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be at least 2: batch norm cannot train on one image")
    if args.warmup < 3 or args.seconds <= 0:
        parser.error("--warmup must be at least 3 and --seconds positive")
    if args.fine_tune_images and args.fine_tune_images < 20:
        parser.error("--fine-tune-images must be 0 (skip) or at least 20: a 60/20/20 split of fewer leaves too little to train on")
    try:
        for name in args.models:
            for size in args.sizes:
                check_input(name, (3, size, size))
    except ImgclsError as e:
        parser.error(str(e))

    torch.set_num_threads(os.cpu_count() or 1)
    amp = amp_dtype(CPU, args.precision)
    result = {
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": args.precision,
        "bf16": amp == torch.bfloat16, "autocast": str(amp).removeprefix("torch.") if amp else "fp32", "batch": args.batch,
        "seconds": args.seconds, "warmup": args.warmup, "statistic": "median over steps of batch / step time",
    }  # fmt: skip
    print(
        f"CPU: {result['cpu']}, {result['threads']} threads, torch {result['torch']}; autocast: {result['autocast']} (bf16 used: {result['bf16']})"
    )

    rows = [measure(name, (3, size, size), size, args, amp) for name in args.models for size in args.sizes]
    imagenet = next((r for r in rows if r["model"] == "resnet18" and r["size"] == BASELINE_SIZE), None)
    if imagenet is None:  # the ratio needs it even when the grid leaves it out
        imagenet = measure("resnet18", (3, BASELINE_SIZE, BASELINE_SIZE), BASELINE_SIZE, args, amp)
        rows.append(imagenet)
    baseline = measure("resnet18", SMALL_SHAPE, BASELINE_SIZE, args, amp)
    result["rows"], result["baseline"] = rows, baseline
    result["train_ratio_imagenet_vs_small_resnet18_128"] = round(imagenet["train"] / baseline["train"], 2)
    if args.fine_tune_images:
        result["fine_tune"] = fine_tune(args.fine_tune_images, args.data_dir)

    print(
        f"\nCPU: {result['cpu']}, {result['threads']} threads, batch {args.batch}, autocast {result['autocast']} (bf16 used: {result['bf16']})\n"
    )
    print("| model | size | train img/s | features img/s | inference img/s |\n| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['train']:,.1f} | {r['features']:,.1f} | {r['inference']:,.1f} |")
    b = baseline
    print(
        f"| resnet18 small-image (3x3 stem, no max pool; baseline) | {b['size']} | {b['train']:,.1f} | {b['features']:,.1f} | {b['inference']:,.1f} |"
    )
    ratio = result["train_ratio_imagenet_vs_small_resnet18_128"]
    print(
        f"\ntraining at {BASELINE_SIZE} px: ImageNet ResNet-18 {imagenet['train']:,.1f} img/s / small-image ResNet-18 {baseline['train']:,.1f} img/s "
        f"= {ratio:.2f}x (goal >= 5x: {'met' if ratio >= 5 else 'not met'})"
    )
    if args.fine_tune_images:
        f = result["fine_tune"]
        print(
            f"fine-tune of {f['images']} images ({f['model']} at {f['image_size']} px, batch {f['batch_size']}): {f['wall_seconds']:.1f}s wall; "
            f"frozen stage {f['freeze_epochs']} epochs (features {f['frozen_feature_seconds']}s, head {f['frozen_head_seconds']}s), "
            f"then {f['epochs']} epochs in {f['train_seconds']:.1f}s ({f['train_images_per_second']:,.1f} img/s), "
            f"{f['other_seconds']:.1f}s else (decoding, validation, checkpoints, test); report (plots) patched out, not timed\n"
            f"frozen stage on cached features {f['frozen_feature_seconds'] + f['frozen_head_seconds']:.1f}s against fastai's (a forward pass "
            f"every epoch, norms training) {f['fastai_frozen_stage_seconds']:.1f}s: "
            f"{f['fastai_frozen_stage_seconds'] / max(f['frozen_feature_seconds'] + f['frozen_head_seconds'], 1e-9):.1f}x"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
