"""How fast a user's own data becomes imgcls's uint8 tensors: `imgcls.train(data=...)` decodes it once, item by item.

    python bench/user_data.py --data-dir ../shared/data            # torchvision's MNIST (60,000 training digits)
    options: --repeats 3 --json

Times `imgcls.data.user.from_python` (every item read, converted to uint8 C x H x W, stacked, split and its channel
statistics computed) on torchvision.datasets.MNIST as the course builds it, three ways: items as PIL images (the
dataset as it is), as float tensors (transforms.ToTensor(), the tutorials' way), and the dataset's own tensors handed
over as a pair (images, labels). The issue's goal: 5,000 images/s or more on 2 cores for 28 x 28 digits.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

from imgcls.data.user import from_python


def seconds(make, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        make()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="holds MNIST/raw [../shared/data]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(args.data_dir)
    pil = torchvision.datasets.MNIST(root, train=True, download=False)
    tensors = torchvision.datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
    n = len(pil)
    result = {"images": n, "threads": torch.get_num_threads()}
    for name, data in (("pil_items", pil), ("tensor_items", tensors), ("tensor_pair", (pil.data, pil.targets))):
        taken = seconds(lambda data=data: from_python(data), args.repeats)
        result[name] = {"seconds": round(taken, 3), "images_per_second": round(n / taken)}
    if args.json:
        print(json.dumps(result))
        return
    for name in ("pil_items", "tensor_items", "tensor_pair"):
        print(f"{name:<13} {result[name]['seconds']:6.2f} s  {result[name]['images_per_second']:>9,} images/s  ({n:,} MNIST digits)")


if __name__ == "__main__":
    main()
