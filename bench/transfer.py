"""Transfer learning, proved offline: pretrain on CIFAR-10's eight classes other than airplane and bird, then fine-tune
(`imgcls train --weights RUN`) on a small airplane-vs-bird folder, against training that folder from scratch.

    python bench/transfer.py --data-dir ../shared/data [--per-class 250] [--seeds 0 1 2]

Real ImageNet weights cannot be downloaded here, so the pretrained network is made here: the pipeline is the same one
ImageNet weights go through. The folders are symbolic links into the CIFAR-10 JPEG copy. Scratch gets the fast recipe as a
user would (its image count sizes its epochs); a second scratch run gets the fine-tune's seconds ("same time budget").
Every run is timed in the same process, one after another. Prints a table, then one JSON object as the last line.
"""

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcls.config import TrainConfig
from imgcls.data.augment import prepare
from imgcls.device import autocast
from imgcls.training import finetune
from imgcls.training.run import train
from imgcls.training.trainer import Trainer

TARGET = ("airplane", "bird")


def link_folder(src: Path, dst: Path, classes: list[str], per_class: int | None, test: bool = True) -> Path:
    """dst/train/<class>/ (the first per_class images of each class) and dst/test/<class>/ (all of them), as links."""
    for split in ("train", "test") if test else ("train",):
        for name in classes:
            files = sorted((src / split / name).iterdir())
            if split == "train" and per_class:
                files = files[:per_class]
            (dst / split / name).mkdir(parents=True, exist_ok=True)
            for f in files:
                (dst / split / name / f.name).symlink_to(f)
    return dst


def fastai_frozen_stage(trainer) -> None:
    """fastai's frozen stage, to compare with imgcls's cached features: every epoch a forward pass over augmented batches,
    the backbone frozen but its batch norms training (fastai's train_bn: their statistics and affine parameters learn)."""
    cfg, model = trainer.cfg, trainer.model
    head = finetune.classifier(model, trainer.data.num_classes)
    norms = [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()]
    trainable = {id(p) for p in [*head.parameters(), *norms]}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=finetune.HEAD_LR * cfg.lr, weight_decay=cfg.weight_decay)
    total = max(2, cfg.freeze_epochs * trainer.steps_per_epoch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=finetune.HEAD_LR * cfg.lr, total_steps=total)
    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.freeze_epochs):
        for idx in trainer.batches(epoch):
            x = prepare(trainer.train_images[idx], trainer.mean, trainer.std, trainer.augment, trainer.generator)
            with autocast(trainer.device, trainer.amp):
                loss = F.cross_entropy(
                    model(x.contiguous(memory_format=torch.channels_last)), trainer.train_labels[idx], label_smoothing=cfg.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    for p in model.parameters():
        p.requires_grad_(True)
    seconds = time.perf_counter() - start
    val = trainer._eval(trainer.data.val)
    trainer.progress.frozen_stage = {
        "epochs": cfg.freeze_epochs,
        "feature_seconds": 0.0,
        "head_seconds": round(seconds, 3),
        "val_acc": val.accuracy,
    }
    print(finetune.describe(trainer.progress.frozen_stage).replace("on cached features", "fastai-style (norms training)"), flush=True)


class FastaiStage(Trainer):
    """The Trainer with fastai's frozen stage in place of imgcls's cached features."""

    def frozen_stage(self) -> None:
        fastai_frozen_stage(self)


def run(cfg: TrainConfig, out: Path, trainer_class: type[Trainer] = Trainer) -> dict:
    """A run as `imgcls train` makes it, without the report (plots are not what is measured)."""
    start = time.perf_counter()
    _, summary = train(cfg, out=str(out), trainer_class=trainer_class)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--per-class", type=int, default=250, help="airplane and bird training images per class")
    parser.add_argument("--pretrain-per-class", type=int, default=None, help="CIFAR-8 training images per class [all 5,000]")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="[the fast recipe's]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--frozen-stage",
        choices=["cached", "fastai", "both"],
        default="cached",
        help="cached: imgcls's (head on cached features, norms frozen); fastai: forward passes every epoch, norms training",
    )
    parser.add_argument("--freeze-epochs", type=int, help="[the recipe's]")
    parser.add_argument("--lr", type=float, help="fine-tune lr [the recipe's]")
    parser.add_argument("--skip-scratch", action="store_true", help="fine-tune only (to compare fine-tune settings)")
    parser.add_argument("--pretrained-run", type=Path, help="reuse this CIFAR-8 run (else one is trained and kept there when given)")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    cifar = (Path(args.data_dir) / "cifar10-jpeg").resolve()
    others = sorted(p.name for p in (cifar / "train").iterdir() if p.name not in TARGET)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        eight = link_folder(cifar, tmp / "cifar8", others, args.pretrain_per_class)
        two = link_folder(cifar, tmp / "cifar2", list(TARGET), args.per_class)
        base = TrainConfig(device="cpu", precision=args.precision)
        pre_dir = args.pretrained_run or tmp / "pre"
        if (pre_dir / "summary.json").is_file():
            pre = json.loads((pre_dir / "summary.json").read_text())
        else:
            pre = run(replace(base, data=str(eight), epochs=args.pretrain_epochs), pre_dir)
        print(f"pretrained on CIFAR-8: test {pre['test_accuracy']:.2%} in {pre['train_seconds']:.0f}s", flush=True)
        for seed in args.seeds:
            cfg = replace(base, data=str(two), seed=seed)
            row = {"seed": seed}
            tuned_cfg = replace(cfg, weights=str(pre_dir), freeze_epochs=args.freeze_epochs, lr=args.lr)
            for stage in ("cached", "fastai") if args.frozen_stage == "both" else (args.frozen_stage,):
                key = "fine_tuned" if stage == "cached" else "fine_tuned_fastai_stage"
                row[key] = run(tuned_cfg, tmp / f"tuned-{stage}-{seed}", FastaiStage if stage == "fastai" else Trainer)
                stage_seconds = sum(row[key]["frozen_stage"][k] for k in ("feature_seconds", "head_seconds"))
                row[key]["seconds_with_frozen_stage"] = row[key]["train_seconds"] + stage_seconds
                print(
                    f"seed {seed}: fine-tuned ({stage} frozen stage) {row[key]['test_accuracy']:.2%} in {row[key]['seconds_with_frozen_stage']:.1f}s "
                    f"(frozen stage {stage_seconds:.1f}s, val {row[key]['frozen_stage']['val_acc']:.2%})",
                    flush=True,
                )
            if not args.skip_scratch:
                row["scratch"] = run(cfg, tmp / f"scratch-{seed}")
                # Same time budget: scratch epochs scaled to the fine-tune's training seconds (frozen stage included).
                tuned_seconds = next(row[k]["seconds_with_frozen_stage"] for k in ("fine_tuned", "fine_tuned_fastai_stage") if k in row)
                per_epoch = row["scratch"]["train_seconds"] / row["scratch"]["epochs_run"]
                row["scratch_same_time"] = run(replace(cfg, epochs=max(1, round(tuned_seconds / per_epoch))), tmp / f"budget-{seed}")
                print(
                    f"seed {seed}: scratch {row['scratch']['test_accuracy']:.2%} ({row['scratch']['train_seconds']:.1f}s, "
                    f"{row['scratch']['epochs_run']} epochs); in the fine-tune's time {row['scratch_same_time']['test_accuracy']:.2%} "
                    f"({row['scratch_same_time']['train_seconds']:.1f}s)",
                    flush=True,
                )
            rows.append(row)
    kinds = [k for k in ("fine_tuned", "fine_tuned_fastai_stage", "scratch", "scratch_same_time") if k in rows[0]]
    mean = {k: statistics.mean(r[k]["test_accuracy"] for r in rows) for k in kinds}
    print("\n| run | test accuracy (mean over seeds) |\n| --- | --- |")
    for k, v in mean.items():
        print(f"| {k} | {v:.2%} |")
    print(json.dumps({"pretrain": {k: pre[k] for k in ("test_accuracy", "train_seconds", "epochs_run")}, "mean": mean,
                      "runs": [{k: (v if not isinstance(v, dict) else {m: v.get(m) for m in ("test_accuracy", "train_seconds", "epochs_run",
                                "seconds_with_frozen_stage", "frozen_stage")}) for k, v in r.items()} for r in rows]}))  # fmt: skip


if __name__ == "__main__":
    main()
