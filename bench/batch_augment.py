"""What MixUp, CutMix, TrivialAugmentWide and RandAugment give: test accuracy and training speed against the recipe's own
augmentation, on the CIFAR-10 JPEG folder and on a photo-sized folder, one run each, measured in one session.

    python bench/batch_augment.py --data-dir ../shared/data                  # both folders, the settings below, seed 0
    options: --only cifar|photos --settings recipe "mixup 0.2" --recipe quick --seeds 0 1 2 --json

cifar: CIFAR-10's JPEG folder (45,000 train / 5,000 val held out / 10,000 test) with the quick recipe (--recipe).
photos: 250 airplanes and 250 birds of it (and 200 of each to test), upscaled to 128 px (--image-size 128), trained from
scratch with the fast recipe (speednet; offline no ImageNet weights are to be had). Each setting adds its option to the
recipe's settings; "recipe" is the recipe alone.
"""

import argparse
import json
import tempfile
from pathlib import Path

import imgcls

SETTINGS = {
    "recipe": {},
    "trivial": {"auto_augment": "trivial"},
    "rand": {"auto_augment": "rand"},
    "mixup 0.2": {"mixup": 0.2},
    "cutmix 1.0": {"cutmix": 1.0},
}


def photos(cifar: Path, root: Path, train: int = 250, test: int = 200) -> Path:
    for split, count in (("train", train), ("test", test)):
        for name in ("airplane", "bird"):
            (root / split / name).mkdir(parents=True)
            for f in sorted((cifar / split / name).iterdir())[:count]:
                (root / split / name / f.name).symlink_to(f)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--only", choices=["cifar", "photos"])
    parser.add_argument("--recipe", default="quick", help="the CIFAR-10 runs' recipe [quick]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="[all]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cifar = Path(args.data_dir).resolve() / "cifar10-jpeg"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {
            "cifar": (cifar, {"recipe": args.recipe}),
            "photos": (photos(cifar, Path(tmp) / "photos"), {"image_size": 128}),
        }
        for task, (folder, base) in tasks.items():
            if args.only and task != args.only:
                continue
            for seed in args.seeds:
                for name in args.settings:
                    run = imgcls.train(str(folder), seed=seed, report=False, progress=False, out=Path(tmp) / f"{task}-{name}-{seed}",
                                       **base, **SETTINGS[name])  # fmt: skip
                    s = run.summary
                    rows.append({"task": task, "setting": name, "seed": seed, "accuracy": s["test_accuracy"], "epochs": s["epochs_run"],
                                 "train_seconds": s["train_seconds"], "images_per_second": s["images_per_second"]})  # fmt: skip
                    print(f"{task:<7} {name:<11} seed {seed}  test {s['test_accuracy']:.2%}  {s['epochs_run']} epochs  "
                          f"{s['train_seconds']:6.1f}s  {s['images_per_second']:7,.0f} img/s", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
