"""Throughput of imgcls's batched random resized crop against torchvision's per-image one, measured in one run.

    python bench/augment.py [--device cpu|cuda] [--repeats 9]

Times `prepare` on a batch of 64 uint8 images at 128x128 and 224x224 with a resized crop (35-100%) and a flip,
with the flip alone, and the baseline: torchvision.transforms.v2 RandomResizedCrop + RandomHorizontalFlip +
ToDtype + Normalize applied image by image in a Python loop (each call draws one parameter set), then stacked,
as a DataLoader's per-sample transforms and collate do. Each figure is the median of --repeats timed batches after
two warm-up batches. Prints a table, then one JSON object as the last line.
"""

import argparse
import json
import statistics
import time

import torch
from torchvision.transforms import v2

from imgcls.data.augment import Augment, prepare

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH, MIN_SCALE = 64, 0.35


def images_per_second(step, device: torch.device, repeats: int) -> float:
    for _ in range(2):  # warm-up: the first calls of an op can pay one-off setup
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    device = torch.device(args.device)
    mean, std = torch.tensor(MEAN, device=device).view(-1, 1, 1), torch.tensor(STD, device=device).view(-1, 1, 1)
    rows = []
    for size in (128, 224):
        batch = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
        generator = torch.Generator(device).manual_seed(0)
        crop, flip = Augment(flip=True, crop_scale=MIN_SCALE), Augment(flip=True)
        baseline = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(MIN_SCALE, 1.0)),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )
        rates = {
            "imgcls crop+flip": images_per_second(lambda: prepare(batch, mean, std, crop, generator), device, args.repeats),
            "imgcls flip": images_per_second(lambda: prepare(batch, mean, std, flip, generator), device, args.repeats),
            "torchvision loop crop+flip": images_per_second(lambda: torch.stack([baseline(im) for im in batch]), device, args.repeats),
        }
        rows.append({"size": size, **{k: round(v, 1) for k, v in rates.items()}})
        rows[-1]["speedup"] = round(rates["imgcls crop+flip"] / rates["torchvision loop crop+flip"], 2)
    print(f"{BATCH} uint8 images per batch, {torch.get_num_threads()} threads on {device}, images/s (median of {args.repeats} batches)")
    print(f"{'size':>5} {'imgcls crop+flip':>17} {'imgcls flip':>12} {'torchvision loop':>17} {'crop+flip vs loop':>18}")
    for r in rows:
        s = r["size"]
        print(
            f"{s:>5} {r['imgcls crop+flip']:>17,.0f} {r['imgcls flip']:>12,.0f} {r['torchvision loop crop+flip']:>17,.0f} {r['speedup']:>17.2f}x"
        )
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "batch": BATCH, "min_scale": MIN_SCALE, "rows": rows}))


if __name__ == "__main__":
    main()
