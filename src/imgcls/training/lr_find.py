"""fastai's lr_find: a short run over exponentially growing learning rates, and the lr to train with.

The steps are the Trainer's own (`Trainer.train_step`: augmentation, autocast, channels_last, the optimizer),
with the lr set before each one instead of by a schedule. Nothing is saved but the curve: the weights are a probe's.
"""

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from imgcls.config import TrainConfig
from imgcls.data import dataset_name
from imgcls.data.core import Dataset
from imgcls.errors import ImgclsError
from imgcls.files import write_json
from imgcls.models.weights import Weights, transfer
from imgcls.progress import progress_bar
from imgcls.rundir import lock_run, new_run_dir, write_rows
from imgcls.training.run import setup
from imgcls.training.trainer import Trainer

LOG = logging.getLogger(__name__)

BETA = 0.98  # smoothing of the loss, as fastai's Recorder
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its best, as fastai
SKIP_END = 5  # points left out of the suggestion at the end, where the loss starts to climb (fastai)
COLUMNS = ["step", "lr", "loss", "smoothed_loss"]
# Settings of a training run that a probe of the lr does not use, so they stay out of lr_find.json.
UNUSED = ("lr", "epochs", "schedule", "patience", "tta", "compile", "freeze_epochs")


@dataclass
class LrFind:
    rows: list[dict]  # step, lr, loss, smoothed_loss of each step run
    steps: int  # steps asked for
    diverged: bool  # stopped early: the smoothed loss exceeded DIVERGED x its best, or was not finite
    steepest: float  # lr at the steepest descent of the smoothed loss against log lr: the suggestion
    minimum: float  # lr at the lowest smoothed loss, divided by 10 (fastai's 'minimum')
    seconds: float
    dir: Path | None = None  # where lr_find.csv, .json and .png were written
    config: TrainConfig | None = None  # the probe's config, filled in as `imgcls train` would fill it


def check_range(steps: int, start_lr: float, end_lr: float) -> None:
    if not steps >= 2:
        raise ImgclsError(f"--steps must be at least 2, got {steps}")
    if not 0 < start_lr < end_lr < math.inf:
        raise ImgclsError(f"--start-lr and --end-lr must satisfy 0 < start < end (finite), got {start_lr:g} and {end_lr:g}")


def lr_at(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The lr of step 0..steps-1: start_lr to end_lr in equal ratios."""
    return start_lr * (end_lr / start_lr) ** (step / (steps - 1))


def suggest(rows: list[dict], steps: int) -> tuple[float, float]:
    """(steepest, minimum / 10) from the finite smoothed losses, leaving out the first tenth of the steps asked for and the
    last SKIP_END points as fastai does, when enough remain."""
    finite = [r for r in rows if math.isfinite(r["smoothed_loss"])]
    if len(finite) < 2:
        raise ImgclsError(f"the loss was not finite by step {len(rows)} (lr {rows[-1]['lr']:g}): check the data, or lower --start-lr")
    kept = finite[steps // 10 : len(finite) - SKIP_END]
    points = kept if len(kept) >= 2 else finite
    lrs = torch.tensor([r["lr"] for r in points], dtype=torch.float64)
    losses = torch.tensor([r["smoothed_loss"] for r in points], dtype=torch.float64)
    slopes = losses.diff() / lrs.log().diff()
    return lrs[slopes.argmin()].item(), lrs[losses.argmin()].item() / 10


def probe(
    cfg: TrainConfig,
    data: Dataset,
    run_dir: Path,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    initial: Weights | None = None,
) -> LrFind:
    """Train a model of the filled-in cfg (fresh, or from `initial` weights) for up to `steps` steps with the lr growing from
    start_lr to end_lr. Discriminative lrs (--lr-mult) keep their ratios to the lr probed."""
    check_range(steps, start_lr, end_lr)
    trainer = Trainer(cfg, data, run_dir)
    if initial:
        transfer(trainer.model, initial, cfg.model)
    trainer.model.train()
    ratios = [peak / cfg.lr for peak in trainer.peak_lrs]
    batches = itertools.chain.from_iterable(trainer.batches(epoch) for epoch in itertools.count())
    rows, average, best, diverged = [], 0.0, math.inf, False
    start = time.perf_counter()
    with progress_bar(total=steps, desc="lr-find", unit="batch") as bar:
        for step, idx in zip(range(steps), batches):
            lr = lr_at(step, steps, start_lr, end_lr)
            for group, ratio in zip(trainer.optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            loss = trainer.train_step(idx)[2].item()
            average = BETA * average + (1 - BETA) * loss
            smoothed = average / (1 - BETA ** (step + 1))  # bias correction: early averages are not pulled towards 0
            rows.append({"step": step + 1, "lr": lr, "loss": loss, "smoothed_loss": smoothed})
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.4f}")
            bar.update()
            if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
                diverged = True
                break
            best = min(best, smoothed)
    steepest, minimum = suggest(rows, steps)
    return LrFind(rows, steps, diverged, steepest, minimum, time.perf_counter() - start)


def lr_find(
    cfg: TrainConfig,
    out: str | Path | None = None,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    data: Dataset | None = None,
) -> LrFind:
    """Probe the data (cfg.data's, or `data`) and model of a training config; write lr_find.csv, .json and .png into
    runs/<dataset>-<model>-lr-find-<n> (or `out`)."""
    check_range(steps, start_lr, end_lr)
    cfg, data, initial = setup(cfg, data)
    run_dir = new_run_dir(dataset_name(cfg.data), f"{cfg.model}-lr-find", out)
    with lock_run(run_dir):
        LOG.info(f"lr-find {run_dir}: {cfg.model} on {data.name}, {cfg.optimizer} batch {cfg.batch_size}, lr {start_lr:g} to {end_lr:g}")
        result = probe(cfg, data, run_dir, steps, start_lr, end_lr, initial)
        write_rows(run_dir / "lr_find.csv", COLUMNS, result.rows)
        write_json(run_dir / "lr_find.json", {
            "suggested_lr": result.steepest, "suggestion": "steepest descent", "minimum_lr_div10": result.minimum,
            "recipe_lr": cfg.lr, "steps": result.steps, "steps_run": len(result.rows), "diverged": result.diverged,
            "start_lr": start_lr, "end_lr": end_lr, "seconds": round(result.seconds, 3),
            "config": {k: v for k, v in cfg.to_dict().items() if k not in UNUSED},
        })  # fmt: skip
        from imgcls.report.plots import plot_lr_find  # matplotlib loads only now, after the probe

        plot_lr_find(result.rows, result.steepest, result.minimum, run_dir / "lr_find.png")
    result.dir, result.config = run_dir, cfg
    return result
