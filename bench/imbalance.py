"""Classes out of balance: CIFAR-10 (the JPEG copy) with five classes cut to a tenth of their training images, trained
with --balance none, weight and sample, tested on the untouched test set.

    python bench/imbalance.py --data-dir ../shared/data                      # the quick recipe, seed 0
    options: --recipe fast --seeds 0 1 --keep 500 --json

The first five classes keep their 5,000 training images, the last five (dog, frog, horse, ship, truck) keep --keep
(500: 10:1). The test split is CIFAR-10's own 1,000 per class. Prints accuracy, balanced accuracy and macro F1 (on the
test set, by imgcls's own summary) and training seconds per setting.
"""

import argparse
import json
import tempfile
from pathlib import Path

import imgcls

BALANCES = ("none", "weight", "sample")


def skewed_folder(cifar: Path, root: Path, keep: int) -> Path:
    """root/train/<class>/ and root/test/<class>/ as links to the JPEGs, the last five classes cut to `keep` in train."""
    classes = sorted(p.name for p in (cifar / "train").iterdir())
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            files = sorted((cifar / split / name).iterdir())
            if split == "train" and i >= 5:
                files = files[:keep]
            (root / split / name).mkdir(parents=True)
            for f in files:
                (root / split / name / f.name).symlink_to(f)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--keep", type=int, default=500, help="training images kept of each of the last five classes [500]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = skewed_folder(Path(args.data_dir).resolve() / "cifar10-jpeg", Path(tmp) / "skewed", args.keep)
        for seed in args.seeds:
            for balance in BALANCES:
                run = imgcls.train(str(folder), recipe=args.recipe, seed=seed, balance=balance, report=False, progress=False,
                                   out=Path(tmp) / f"{balance}-{seed}")  # fmt: skip
                s = run.summary
                rows.append({"seed": seed, "balance": balance, "accuracy": s["test_accuracy"], "balanced_accuracy": s["balanced_accuracy"],
                             "macro_f1": s["macro_f1"], "train_seconds": s["train_seconds"]})  # fmt: skip
                print(f"seed {seed} balance {balance:<6} accuracy {s['test_accuracy']:.2%}  balanced {s['balanced_accuracy']:.2%}  "
                      f"macro F1 {s['macro_f1']:.4f}  {s['train_seconds']:.0f}s", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
