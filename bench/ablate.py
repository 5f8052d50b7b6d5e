"""Ablation of the fast recipe for small colour images (issue #13): each of airbench94's methods left out in turn.

    python bench/ablate.py --data ../shared/data/cifar10-jpeg --epochs 4

The recipe has them all (whitening stem, dirac init, norms without scale, 64x lr on their biases, Lookahead, reflected
shifts, alternating flips, flip x shift TTA); each row trains it with one method taken out, at the same epoch count and seed, so the drop
is what that method gives in the company of the others (airbench's own form of ablation). The last rows add what the
recipe does not use (Muon) or change its batch. Test accuracy after a fixed
number of epochs does not depend on how loaded the machine is; the seconds do (shared cores).
--train-images trains every variant on the same N training images, drawn at random (the folder's are in class order),
the whole test set still used: for a machine too loaded for full epochs.
TTA changes only evaluation: it is measured on the recipe's best.pt (none, flips, flips x shifts), each timed.
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
from imgcls.evaluation import metrics, predict_logits
from imgcls.training.run import load_run_data, setup
from imgcls.training.trainer import Trainer

VARIANTS = {  # in order of interest: a run cut short by time still has the first rows
    "fast recipe (all methods)": {},
    "without Lookahead": {"lookahead": False},
    "without the whitening stem (a learnt conv)": {"whiten": False},
    "norm biases at the lr (not 64x)": {"norm_lr_mult": 1.0},
    "without dirac init": {"dirac": False},
    "norms with a learnt scale": {"bn_scale": True},
    "shifts filled with black (not reflected)": {"pad_mode": "zeros"},
    "random flips (not alternating)": {"alternate_flips": False},
    "width 32 (32/128/128)": {"width": 32},
    # Not in the recipe: what it would gain.
    "+ Muon for the conv filters (--optimizer muon)": {"optimizer": "muon"},
    "+ Muon, without Lookahead": {"optimizer": "muon", "lookahead": False},
    "batch 512 (lr scaled with it)": {"batch_size": 512},
}


TTA_LEVELS = {"no TTA": (False, 0), "flip TTA only": (True, 0), "flip x shift TTA (the recipe's)": (True, 1)}


def tta_levels(run_dir: Path, cfg: TrainConfig) -> dict[str, tuple[float, float]]:
    """Test accuracy and seconds of the recipe's best.pt evaluated at each TTA level."""
    ckpt = load(run_dir / "best.pt")
    model, (mean, std) = load_model(ckpt), normalisation(ckpt)
    data = load_run_data(cfg)
    out = {}
    for name, (flip, shift) in TTA_LEVELS.items():
        start = time.perf_counter()
        logits = predict_logits(model, data.test.images, mean, std, tta=flip, tta_shift=shift)
        out[name] = (metrics(logits, data.test.labels, data.num_classes).accuracy, time.perf_counter() - start)
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
        cfg, data, _ = setup(TrainConfig(data=args.data, epochs=args.epochs, seed=args.seed, **{"batch_size": args.batch_size, **options}))
        if args.train_images:
            keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(12345))[: args.train_images]
            data = replace(
                data, train=Split(data.train.images[keep], data.train.labels[keep]), split_files=None
            )  # no file list to report on
        run_dir = out / str(len(rows))
        run_dir.mkdir()
        print(f"{name}: {cfg.augmentation().describe()}, batch {cfg.batch_size}, {len(data.train)} train images", flush=True)
        summary = Trainer(cfg, data, run_dir).fit()
        rows.append({"variant": name, "test_accuracy": summary["test_accuracy"], "train_seconds": summary["train_seconds"],
                     "images_per_second": summary["images_per_second"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        if not options:
            for level, (accuracy, seconds) in tta_levels(run_dir, cfg).items():
                rows.append({"variant": f"recipe's best.pt, {level}", "test_accuracy": accuracy, "eval_seconds": round(seconds, 1)})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n| variant ({args.epochs} epochs, seed {args.seed}) | test acc | train s | img/s |\n|---|---|---|---|")
    for r in rows:
        seconds = f"{r['train_seconds']:.0f}" if "train_seconds" in r else f"(test pass {r['eval_seconds']})"
        print(f"| {r['variant']} | {r['test_accuracy']:.2%} | {seconds} | {r.get('images_per_second', '')} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
