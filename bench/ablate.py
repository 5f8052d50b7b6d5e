"""Ablation of the speed methods (issue #13): each added alone to the fast recipe at a fixed epoch count, then all together.

    IMGCLS_CACHE=/work/exp/speedcache python bench/ablate.py --data /work/shared/data/cifar10-jpeg --epochs 3 --train-images 6000 --batch-size 128

Test accuracy after a fixed number of epochs does not depend on how loaded the machine is; the seconds do (shared cores).
--train-images trains every variant on the same N training images, drawn at random (the folder's are in class order),
the whole test set still used: for a machine too loaded for full epochs.
Shift TTA changes only evaluation: it is measured on the baseline's best.pt, both evaluations timed back to back.
Prints a markdown table, then one JSON object as the last line.
"""

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from imgcls.checkpoint import load, load_model, normalisation
from imgcls.config import TrainConfig
from imgcls.data.core import Split
from imgcls.engine import Trainer, load_run_data, setup
from imgcls.evaluation import metrics, predict_logits

VARIANTS = {  # in order of interest: a run cut short by time still has the first rows
    "baseline (fast recipe)": {},
    "all of the below + shift TTA": {
        "whiten": True,
        "dirac": True,
        "bn_scale": False,
        "ema": 0.98,
        "alternate_flips": True,
        "tta_shift": 1,
    },
    "whitened 2x2 stem, frozen": {"whiten": True},
    "EMA 0.98": {"ema": 0.98},
    "BN without scale": {"bn_scale": False},
    "dirac init": {"dirac": True},
    "alternating flips": {"alternate_flips": True},
}


def shift_tta(run_dir: Path, cfg: TrainConfig) -> dict:
    """Test accuracy and seconds of the baseline's best.pt evaluated with flip TTA, then with flip x shift TTA."""
    ckpt = load(run_dir / "best.pt")
    model, (mean, std) = load_model(ckpt), normalisation(ckpt)
    data = load_run_data(cfg)
    out = {}
    for shift in (0, 1):
        start = time.perf_counter()
        logits = predict_logits(model, data.test.images, mean, std, tta=True, tta_shift=shift)
        out[shift] = (metrics(logits, data.test.labels, data.num_classes).accuracy, time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, help="train on N training images drawn at random (the same for every variant)")
    p.add_argument("--batch-size", type=int, help="instead of the recipe's (a subset needs smaller batches for enough steps)")
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = p.parse_args()
    rows, out = [], Path(tempfile.mkdtemp(prefix="imgcls-ablate-"))
    for name, options in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cfg, data, _ = setup(TrainConfig(data=args.data, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, **options))
        if args.train_images:
            keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(12345))[: args.train_images]
            data = replace(data, train=Split(data.train.images[keep], data.train.labels[keep]))
        run_dir = out / str(len(rows))
        run_dir.mkdir()
        print(f"{name}: {cfg.augmentation().describe()}, batch {cfg.batch_size}, {len(data.train)} train images", flush=True)
        summary = Trainer(cfg, data, run_dir).fit()
        rows.append({"variant": name, "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"],
                     "images_per_second": summary["images_per_second"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        if not options:
            tta = shift_tta(run_dir, cfg)
            rows.append({"variant": "baseline + shift TTA (eval only)", "test_accuracy": tta[1][0], "train_seconds": summary["train_seconds"],
                         "eval_seconds": {"flip": round(tta[0][1], 1), "flip x shift": round(tta[1][1], 1)}})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n| variant ({args.epochs} epochs, seed {args.seed}) | test acc | train s | img/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['test_accuracy']:.2%} | {r['train_seconds']:.0f} | {r.get('images_per_second', '')} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
