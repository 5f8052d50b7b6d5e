"""The training engine: one Trainer that fits a registry model on an in-memory dataset.

The hot loop (`Trainer.train_epoch`) is index -> augment on device -> forward -> backward -> step,
with statistics kept on the device and read back only every few steps.
"""

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from imgcls import checkpoint, distributed, files, finetune, optim
from imgcls.averaging import Lookahead, WeightAverage
from imgcls.config import MODEL_OPTIONS, TrainConfig, check, fill_defaults, saved_model_options
from imgcls.data import dataset_name, load_dataset
from imgcls.data.augment import prepare
from imgcls.data.core import Dataset, Split
from imgcls.data.health import dedupe, dedupe_line
from imgcls.data.registry import is_folder_spec
from imgcls.device import amp_dtype, autocast, pick_device, use_channels_last
from imgcls.errors import ImgclsError
from imgcls.evaluation import EvalResult, metrics, predict_logits, write_confusion_csv
from imgcls.files import read_json, write_json, write_text
from imgcls.interrupt import STOP_SIGNALS, CtrlC, during
from imgcls.models import check_input, create_model, get_model_info, num_params
from imgcls.models.fast import data_initialised, init_from_data
from imgcls.models.pretrained import pretrained_normalised, pretrained_weights
from imgcls.models.weights import Weights, read_state_dict, transfer
from imgcls.recipes import backbone
from imgcls.runs import lock_run, new_run_dir, read_split, write_metrics

SYNC_EVERY = 10  # steps between reading statistics back from the device (and checking for NaN)
LOG_EVERY = 60.0  # seconds between progress lines when there is no terminal for a progress bar
DEVICE_DATA_LIMIT = 4 * 2**30  # datasets up to this size live on the GPU for the whole run
CPU_IMAGE_SIZE, GPU_IMAGE_SIZE = 128, 224  # the side of photo folders without --image-size
DATA_INIT_IMAGES = 2048  # training images that layers set from data (a whitening stem) see: its 12x12 covariance settles long before


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM, SIGHUP); last.pt holds the exact position to resume from."""

    def __init__(self, run_dir: Path, signum: int = signal.SIGINT):
        super().__init__(str(run_dir))
        self.run_dir, self.signum = run_dir, signum


@dataclass
class Progress:
    """Everything about where training stands, saved in last.pt so a resumed run continues exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the current epoch
    totals: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, seen (current epoch)
    seconds: float = 0.0  # training seconds of the current epoch so far
    train_seconds: float = 0.0  # training seconds of completed epochs
    images_seen: int = 0  # training images of completed epochs
    history: list[dict] = field(default_factory=list)
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    finished: bool = False
    frozen_stage: dict | None = None  # what the frozen stage of a fine-tune did, once done (imgcls.finetune)


def make_optimizer(cfg: TrainConfig, model: nn.Module, num_classes: int) -> torch.optim.Optimizer:
    head = finetune.classifier(model, num_classes)
    groups = finetune.param_groups(model, head, cfg.lr, cfg.lr_mult or 1.0, cfg.weight_decay, cfg.norm_lr_mult or 1.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "muon":
        return optim.Muon(optim.filter_groups(groups, cfg.lr, cfg.muon_lr), lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_schedule(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """The LR scheduler and whether it steps per batch (True) or per epoch (False)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle" and total >= 4:  # fewer steps leave OneCycle's warm-up phase empty
        peaks = [group["lr"] for group in optimizer.param_groups]  # discriminative lrs: each group's own peak
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=max(0.25, 2 / total)), True
    if cfg.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: triangle(step, total)), True
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1), False
    return None, False


def triangle(step: int, total: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07) -> float:
    """airbench94's lr schedule, as a fraction of the peak lr: linear from `start` up to 1 at `peak` of the run, then
    linear down to `end`. Unlike one-cycle it leaves momentum alone and ends well above zero, which suits the short runs
    where Lookahead averages the last steps."""
    at = step / max(total, 1)
    return start + (1 - start) * at / peak if at < peak else 1 + (end - 1) * (at - peak) / (1 - peak)


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Batches in an epoch; a last batch that leaves a process (of `world`) fewer than two images is dropped: batch norm
    cannot train on one."""
    count = math.ceil(n / batch_size)
    return count - 1 if count > 1 and 0 < n % batch_size < 2 * world else count


class Trainer:
    def __init__(self, cfg: TrainConfig, data: Dataset, run_dir: Path, on_step: Callable[["Trainer"], None] | None = None, loggers=()):
        self.cfg, self.data, self.run_dir, self.on_step = cfg, data, Path(run_dir), on_step
        self.loggers = list(loggers)  # imgcls.loggers.Logger: live curves (TensorBoard, Visdom)
        self.group, self.device = distributed.setup(pick_device(cfg.device))
        self.amp = amp_dtype(self.device, cfg.precision)
        self.channels_last = use_channels_last(self.device, get_model_info(cfg.model).convolutional)
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, data.shape, data.num_classes, **cfg.model_options()).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.group.active:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # DDP and the compiled module share parameters with self.model, which stays the one saved and evaluated.
        self.forward = DistributedDataParallel(self.model) if self.group.active else self.model
        self.forward = torch.compile(self.forward) if cfg.compile else self.forward
        self.optimizer = make_optimizer(cfg, self.model, data.num_classes)
        self.peak_lrs = [group["lr"] for group in self.optimizer.param_groups]  # before a schedule changes them
        self.steps_per_epoch = batches_per_epoch(len(data.train), cfg.batch_size, self.group.world)
        self.scheduler, self.schedule_per_step = make_schedule(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.augment = cfg.augmentation()
        # Each rank augments its shard with its own draws; rank 0's are a single process's.
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed + self.group.rank * 1_000_003)
        self.mean = torch.tensor(data.mean, device=self.device).view(-1, 1, 1)
        self.std = torch.tensor(data.std, device=self.device).view(-1, 1, 1)
        on_device = self.device.type == "cuda" and data.train.images.nbytes < DEVICE_DATA_LIMIT
        self.home = self.device if on_device else torch.device("cpu")
        self.train_images = data.train.images.to(self.home)
        self.train_labels = data.train.labels.to(self.home)
        if data_initialised(self.model):  # normalising a sample of photos would cost gigabytes for nothing
            init_from_data(self.model, prepare(self.train_images[:DATA_INIT_IMAGES].to(self.device), self.mean, self.std))
        # After the data init: the average starts from the model's weights (and its first update copies them anyway).
        self.ema = WeightAverage(self.model, cfg.ema) if cfg.ema else None
        self.lookahead = Lookahead(self.model, cfg.epochs * self.steps_per_epoch) if cfg.lookahead else None
        self.progress = Progress()
        self.stop_requested = False
        self.stop_signal = signal.SIGINT

    # --- checkpoints -------------------------------------------------------------------------------

    def _payload(self, state_dict: dict) -> dict:
        return {
            "format": checkpoint.FORMAT,
            "model": self.cfg.model,
            "model_options": self.cfg.model_options(),
            "in_shape": list(self.data.shape),
            "classes": list(self.data.classes),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "config": self.cfg.to_dict(),
            "epoch": self.progress.epoch,
            "state_dict": state_dict,
        }

    @property
    def lr(self) -> float:
        """The lr now of the head's weights: the peak of discriminative lrs, without the biases' multiplier."""
        return self.optimizer.param_groups[-1]["lr"]

    @property
    def evaluated(self) -> nn.Module:
        """The model validated, tested and saved as best.pt: the weight average once it has one, else the trained model."""
        return self.ema.module if self.ema and self.ema.updates else self.model

    def _weights(self, model: nn.Module | None = None) -> dict:
        state = (model or self.model).state_dict()
        return {k: v.detach().to("cpu", memory_format=torch.contiguous_format) for k, v in state.items()}

    def save_last(self) -> None:
        """The run's whole state in last.pt, written by rank 0 alone (the weights are the same in every process)."""
        if not self.group.main:
            return
        payload = self._payload(self._weights())
        payload.update(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler else None,
            scaler=self.scaler.state_dict(),
            rng={"torch": torch.get_rng_state(), "augment": self.generator.get_state().cpu()},
            progress=asdict(self.progress),
            ema=self.ema.state_dict() if self.ema else None,
            lookahead=self.lookahead.state_dict() if self.lookahead else None,
        )
        if self.device.type == "cuda":
            payload["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint.atomic_save(payload, self.run_dir / "last.pt")

    def load_last(self, ckpt: dict) -> None:
        """Continue from a last.pt written by save_last."""
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ImgclsError(
                f"{ckpt['path']} does not fit model '{self.cfg.model}' on this data ({str(e).splitlines()[0]}): start a new run"
            ) from None
        if self.scheduler and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        if self.lookahead and ckpt.get("lookahead"):
            self.lookahead.load_state_dict(ckpt["lookahead"])
        if ckpt["scaler"]:  # empty when saved without fp16 loss scaling (on CPU, or a bf16 GPU)
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        augment_state = ckpt["rng"]["augment"]
        # A CPU generator's state does not fit a CUDA one's: resumed on another kind of device, augmentation draws afresh.
        if augment_state.numel() == self.generator.get_state().numel():
            self.generator.set_state(augment_state.to(self.generator.device))
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.progress = Progress(**ckpt["progress"])

    # --- training ----------------------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop at the end of the current step, saving last.pt (what Ctrl-C, SIGTERM and SIGHUP do)."""
        self.stop_requested, self.stop_signal = True, signum

    def _eval(self, split: Split, shifts: bool = True) -> EvalResult:
        """Each process predicts its shard of the split; the metrics come from all the logits, the same on every rank.
        shifts=False leaves out shift TTA (3x the views): validation every epoch ranks epochs as well without it."""
        images = split.images[distributed.shard(len(split), self.group)]  # a view: the whole split for one process
        logits = predict_logits(
            self.evaluated, images, self.mean, self.std, amp=self.amp, channels_last=self.channels_last, tta=self.cfg.tta,
            tta_shift=(self.cfg.tta_shift or 0) if shifts else 0,
        )  # fmt: skip
        return metrics(distributed.gather_rows(logits, len(split), self.group), split.labels, self.data.num_classes)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """This process's training-image indices for each step of an epoch: its share of each global batch of the
        seeded order. The order depends only on (seed, epoch), so a resumed epoch replays it, on any number of processes."""
        order = torch.randperm(len(self.train_labels), generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch))
        steps = order.split(self.cfg.batch_size)[: self.steps_per_epoch]
        return [step[self.group.rank :: self.group.world].to(self.home) for step in steps]

    def train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step on the training images at idx: their labels, logits and loss, left on the device."""
        x = self.train_images[idx].to(self.device, non_blocking=True)
        y = self.train_labels[idx].to(self.device, non_blocking=True)
        x = prepare(x, self.mean, self.std, self.augment, self.generator, index=idx, epoch=self.progress.epoch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad:
            # On the true gradients, not the fp16 loss-scaled ones; under DDP they are already averaged, the same in every process.
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        return y, logits, loss

    def train_epoch(self) -> None:
        cfg, p = self.cfg, self.progress
        self.model.train()
        batches = self.batches(p.epoch)
        # This process's sums; rank 0 carries a resumed epoch's, which were all processes' (p.totals is their sum).
        totals = torch.tensor(p.totals if self.group.main else [0.0] * 3, dtype=torch.float64, device=self.device)
        start = time.perf_counter() - p.seconds
        with EpochBar(self.steps_per_epoch, p.step, f"epoch {p.epoch + 1}/{cfg.epochs}") as bar:
            for step in range(p.step, self.steps_per_epoch):
                y, logits, loss = self.train_step(batches[step])
                if self.schedule_per_step:
                    self.scheduler.step()
                if self.lookahead:
                    self.lookahead.step(self.model, p.epoch * self.steps_per_epoch + step + 1)
                totals[0] += loss.detach() * len(y)
                totals[1] += (logits.argmax(1) == y).sum()
                totals[2] += len(y)
                p.step = step + 1
                if self.on_step:
                    self.on_step(self)
                synced = p.step % SYNC_EVERY == 0 or p.step == self.steps_per_epoch
                stop = self._stop_agreed(synced)
                if synced or stop:
                    p.totals, p.seconds = distributed.sum_(totals.clone(), self.group).tolist(), time.perf_counter() - start
                    if not math.isfinite(p.totals[0]):
                        self._non_finite()
                    bar.show(p.step, p.totals, p.seconds)
                    for logger in self.loggers:
                        logger.step(self)
                if stop:
                    self.save_last()
                    raise Interrupted(self.run_dir, self.stop_signal)
        if self.lookahead:
            self.lookahead.settle(self.model)
        p.seconds = time.perf_counter() - start

    def _stop_agreed(self, synced: bool) -> bool:
        """Whether to stop after this step. One process alone cannot stop (the others would wait for it in their next
        gradient exchange): with several, every process asks whether any was told to stop, at the same steps."""
        if not self.group.active:
            return self.stop_requested
        return synced and distributed.any_(self.stop_requested, self.group, self.device)

    def frozen_stage(self) -> None:
        """Fine-tuning's first stage: the head alone, on the frozen backbone's cached features (imgcls.finetune)."""
        stage = finetune.train_head(self)
        if stage is None:
            self.save_last()  # the initial weights: a resumed run starts the frozen stage over from them
            raise Interrupted(self.run_dir, self.stop_signal)
        self.progress.frozen_stage = stage
        print(finetune.describe(stage), flush=True)

    def _non_finite(self):
        last = self.run_dir / "last.pt"
        kept = f"{last} keeps the last good state (epoch {self.progress.epoch})" if last.exists() else "no checkpoint was written yet"
        raise ImgclsError(
            f"loss became {self.progress.totals[0]} in epoch {self.progress.epoch + 1}, training stopped; {kept}: lower --lr (now {self.cfg.lr:g}) or check the data"
        )

    def end_epoch(self) -> dict:
        """Validate, keep the best weights, record the epoch, and decide on early stopping."""
        p, cfg = self.progress, self.cfg
        if not self.schedule_per_step and self.scheduler:
            self.scheduler.step()
        val = self._eval(self.data.val, shifts=False)
        loss_sum, correct, seen = p.totals
        row = {
            "epoch": p.epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val.loss,
            "val_acc": val.accuracy,
            "lr": self.lr,
            "seconds": p.seconds,
        }
        p.history.append(row)
        p.train_seconds += p.seconds
        p.images_seen += int(seen)
        p.epoch, p.step, p.totals, p.seconds = p.epoch + 1, 0, [0.0, 0.0, 0.0], 0.0
        # Ties in accuracy go to the lower loss: a 50-image val set ties often, and the first of equals is the least trained.
        improved = (val.accuracy, -val.loss) > (p.best_val_accuracy, -p.best_val_loss)
        # The val figures are every process's (sharded, gathered), so all decide the same: best epoch, early stop.
        if improved:
            p.best_val_accuracy, p.best_val_loss, p.best_epoch, p.stale_epochs = val.accuracy, val.loss, p.epoch, 0
            if self.group.main:
                checkpoint.atomic_save(self._payload(self._weights(self.evaluated)), self.run_dir / "best.pt")
        else:
            p.stale_epochs += 1
        p.finished = p.epoch >= cfg.epochs or (cfg.patience > 0 and p.stale_epochs >= cfg.patience)
        self.save_last()
        if self.group.main:
            write_metrics(self.run_dir / "metrics.csv", p.history)
        return {**row, "best": improved, "images_per_second": seen / max(row["seconds"], 1e-9)}

    def fit(self) -> dict:
        """Train to the end (or early stop), then test the best checkpoint once. Returns the summary."""
        with CtrlC(on_press=self.request_stop, signals=STOP_SIGNALS):
            if self.cfg.freeze_epochs and self.progress.frozen_stage is None:
                self.frozen_stage()
            while not self.progress.finished:
                self.train_epoch()
                row = self.end_epoch()
                print(format_epoch(row, self.cfg.epochs), flush=True)
                for logger in self.loggers:
                    logger.epoch(self, row)
                if self._stop_agreed(True):  # asked for while validating: last.pt already holds the epoch's end
                    raise Interrupted(self.run_dir, self.stop_signal)
        if self.cfg.patience and self.progress.epoch < self.cfg.epochs:
            print(f"early stop: no better val accuracy for {self.cfg.patience} epochs", flush=True)
        return self.finish()

    def finish(self) -> dict:
        p = self.progress
        distributed.barrier(self.group)  # best.pt is rank 0's to write
        best = checkpoint.load(self.run_dir / "best.pt")
        self.evaluated.load_state_dict(best["state_dict"])
        kept = f"best.pt and last.pt are kept, `imgcls train --resume {self.run_dir}` tests it again"
        with during("testing the best checkpoint", kept):
            test = self._eval(self.data.test)
        if self.group.main:
            write_confusion_csv(test.confusion, self.data.classes, self.run_dir / "confusion_matrix.csv")
        summary = {
            "dataset": self.data.name,
            "model": self.cfg.model,
            "classes": self.data.classes,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "test_images": len(self.data.test),
            "best_val_accuracy": p.best_val_accuracy,
            "best_epoch": p.best_epoch,
            "epochs_run": p.epoch,
            "stopped_early": p.epoch < self.cfg.epochs,
            "train_seconds": round(p.train_seconds, 3),
            "images_per_second": round(p.images_seen / max(p.train_seconds, 1e-9), 1),
            "num_params": num_params(self.model),
            "device": str(self.device),
            "per_class_accuracy": test.per_class_accuracy(self.data.classes),
            "skipped_files": len(self.data.skipped),
            "frozen_stage": p.frozen_stage,
        }
        if not self.group.main:
            return summary
        write_json(self.run_dir / "summary.json", summary)
        from imgcls.report import write_report  # matplotlib loads only now, after training

        split = self.data.test
        write_report(
            self.run_dir, self.data.classes, split.images, split.labels, test.logits, p.history, self.cfg.to_dict(), summary, self.data
        )
        return summary


class EpochBar:
    """A tqdm bar on a terminal; in logs (no terminal) a plain progress line every LOG_EVERY seconds instead."""

    def __init__(self, total: int, initial: int, desc: str):
        self.total, self.desc = total, desc
        self.bar = tqdm(
            total=total, initial=initial, desc=desc, unit="batch", leave=False, disable=None, file=sys.stderr, dynamic_ncols=True
        )
        self.logged = time.perf_counter()

    def show(self, step: int, totals: list[float], seconds: float) -> None:
        loss, acc, speed = totals[0] / totals[2], totals[1] / totals[2], totals[2] / max(seconds, 1e-9)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2%}", img_s=f"{speed:,.0f}")
            self.bar.update(step - self.bar.n)
        elif time.perf_counter() - self.logged >= LOG_EVERY:
            self.logged = time.perf_counter()
            print(f"{self.desc}  step {step}/{self.total}  loss {loss:.4f} acc {acc:.2%}  {speed:,.0f} img/s", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        return False


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_second']:,.0f} img/s" + ("  *best*" if row["best"] else "")
    )


def _describe(cfg: TrainConfig, data: Dataset, trainer: Trainer) -> str:
    shape = "x".join(map(str, data.shape))
    return (
        f"data {data.name}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test, {shape}, {data.num_classes} classes\n"
        f"model {cfg.model}: {num_params(trainer.model):,} params on {trainer.device}"
        f"{' (AMP ' + str(trainer.amp).removeprefix('torch.') + ')' if trainer.amp else ''}{', compiled' if cfg.compile else ''}\n"
        f"recipe {cfg.recipe}: {cfg.optimizer} lr {cfg.lr:g}{f' (filters {cfg.muon_lr:g})' if cfg.optimizer == 'muon' else ''} wd {cfg.weight_decay:g}, {cfg.schedule} schedule, batch {cfg.batch_size}, "
        f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, label smoothing {cfg.label_smoothing:g}{f', gradient norm clipped to {cfg.clip_grad:g}' if cfg.clip_grad else ''}, "
        f"augment: {cfg.augmentation().describe()}"
        f"{', flip TTA' if cfg.tta else ''}{f', shift TTA ±{cfg.tta_shift}' if cfg.tta_shift else ''}{f', EMA {cfg.ema:g}' if cfg.ema else ''}"
    )


def load_run_data(cfg: TrainConfig, split_files=None) -> Dataset:
    # Folders of photos without --image-size: ImageNet's 224 on a GPU; 128 on a CPU, where ResNet-18 trains 2.3x slower at 224
    # (bench/RESULTS.md). The side chosen goes into config.json, so resume and evaluate decode the same.
    default_size = GPU_IMAGE_SIZE if pick_device(cfg.device).type == "cuda" else CPU_IMAGE_SIZE
    if cfg.dedupe and not is_folder_spec(cfg.data):
        raise ImgclsError(
            f"--dedupe drops files and lists them in the run's split.json; {cfg.data} is a named dataset without files: drop --dedupe "
            f"(`imgcls datasets --check {cfg.data}` shows its duplicates)"
        )
    load = partial(
        load_dataset, cfg.data, data_dir=cfg.data_dir, seed=cfg.seed, val_fraction=cfg.val_fraction, image_size=cfg.image_size,
        default_size=default_size,
    )  # fmt: skip
    if cfg.dedupe and split_files is None:  # the seed's split less the copies; resume and evaluate replay what split.json keeps
        kept, dropped = dedupe(load())
        return replace(load(split_files=kept), dropped=dropped)
    return load(split_files=split_files)


def setup(cfg: TrainConfig) -> tuple[TrainConfig, Dataset, Weights | None]:
    """What `train` and `lr-find` start from: the data, the config filled in for it, and the initial weights
    (--weights, or the model's pretrained ones). Without --model, a run from an imgcls run's weights uses that run's
    model, and photos get the recipe's pretrained backbone when its weights can be had."""
    check(cfg)
    initial = read_state_dict(cfg.weights) if cfg.weights else None  # a bad file fails before the data loads
    data = load_run_data(cfg)
    model = cfg.model or (initial.model if initial else None)
    if initial and initial.model_options and model == initial.model:  # the run's own model: its shape too, unless set anew
        saved = saved_model_options(model, initial.model_options, f"--weights {initial.path}")
        cfg = replace(cfg, **{k: v for k, v in saved.items() if k in MODEL_OPTIONS and getattr(cfg, k) is None})
    if model:
        check_input(model, data.shape)  # before any download
    pretrained, state = pretrained_weights(model or backbone(data), data.shape, cfg.pretrained, cfg.weights)
    model = model or (pretrained.model if pretrained else None)
    cfg = replace(cfg, model=model, pretrained=state, image_size=cfg.image_size or data.resized_to)
    cfg = fill_defaults(findable(cfg), data)
    return cfg, pretrained_normalised(data, cfg.model, cfg.pretrained), initial or pretrained


def _initial_weights(cfg: TrainConfig, data: Dataset) -> Weights | None:
    """A filled-in config's initial weights again (a run that saved no training state starts over from them)."""
    if cfg.weights:
        return read_state_dict(cfg.weights)
    return pretrained_weights(cfg.model, data.shape, "on", None)[0] if cfg.pretrained == "on" else None


def _record_data(data: Dataset, run_dir: Path) -> None:
    if data.split_files is not None:
        write_json(run_dir / "split.json", {**data.split_files, **({"dropped": data.dropped} if data.dropped is not None else {})})
    if data.dropped is not None:
        print(dedupe_line(data.dropped, data.split_files), flush=True)
    if data.skipped:
        write_text(run_dir / "skipped_files.txt", "\n".join(data.skipped) + "\n")
        print(f"skipped {len(data.skipped)} unreadable files (listed in {run_dir / 'skipped_files.txt'})", file=sys.stderr)


def findable(cfg: TrainConfig) -> TrainConfig:
    """The config with its data paths made absolute, so that resume, evaluate, report and export find the data
    from any working directory."""
    data = os.path.abspath(Path(cfg.data).expanduser()) if is_folder_spec(cfg.data) else cfg.data
    data_dir = os.path.abspath(Path(cfg.data_dir).expanduser()) if cfg.data_dir else None
    weights = os.path.abspath(Path(cfg.weights).expanduser()) if cfg.weights else None
    return replace(cfg, data=data, data_dir=data_dir, weights=weights)


def _fit(trainer: Trainer) -> dict:
    try:
        return trainer.fit()
    except files.WriteFailed as e:
        raise ImgclsError(f"{e}, then resume with `imgcls train --resume {trainer.run_dir}`") from None
    except RuntimeError as e:
        # A rank that died (killed, out of memory) fails the others' next collective: gloo's "Connection closed by
        # peer", NCCL's errors (torch.distributed.DistError, or a RuntimeError naming the backend).
        if not (trainer.group.active and (isinstance(e, torch.distributed.DistError) or "gloo" in str(e) or "NCCL" in str(e))):
            raise
        reason = str(e).split("] ")[-1].split(". ")[0]
        raise ImgclsError(
            f"another process of this run stopped ({reason}); the checkpoints written so far are kept: resume with "
            f"`imgcls train --resume {trainer.run_dir}`"
        ) from None


def train(cfg: TrainConfig, out: str | None = None, on_step=None, loggers=()) -> tuple[Path, dict]:
    """A new run: load data, fill defaults, write the run folder, train, test."""
    cfg, data, initial = setup(cfg)
    group, _ = distributed.setup(pick_device(cfg.device))
    # Rank 0 makes the run folder (the next free runs/ name) and tells the others.
    run_dir = distributed.broadcast(new_run_dir(dataset_name(cfg.data), cfg.model, out) if group.main else None, group)
    with lock_run(run_dir) if group.main else contextlib.nullcontext():
        trainer = Trainer(cfg, data, run_dir, on_step=on_step, loggers=loggers)
        # Only here: a resumed run continues from its last.pt, never from these again.
        report = transfer(trainer.model, initial, cfg.model) if initial else None
        if group.main:
            write_json(run_dir / "config.json", cfg.to_dict())
            _record_data(data, run_dir)
        print(f"run {run_dir}\n{_describe(cfg, data, trainer)}" + (f"\n{report}" if report else ""), flush=True)
        return run_dir, _fit(trainer)


def _on_this_machine(cfg: TrainConfig, run_dir: Path, device: str | None, data_dir: str | None) -> TrainConfig:
    """A saved config with what may change with the machine: the device, and where named datasets live."""
    if device is None:
        try:
            pick_device(cfg.device)
        except ImgclsError:
            print(f"{run_dir} trained on --device {cfg.device}, which this machine lacks: resuming with --device auto", file=sys.stderr)
            device = "auto"
    return findable(replace(cfg, device=device or cfg.device, data_dir=data_dir or cfg.data_dir))


def resume(run: str | Path, device: str | None = None, data_dir: str | None = None, on_step=None, loggers=()) -> tuple[Path, dict]:
    """Continue a run from its last.pt, with its saved config and data split; only the device and the named
    datasets' folder may change. A run that stopped before saving any training state (a full disk in its first
    epoch) starts over from its config.json."""
    path = Path(run).expanduser()
    if not path.is_dir():
        path = checkpoint.resolve(path)
    run_dir = path if path.is_dir() else path.parent
    with lock_run(run_dir) if distributed.from_env().main else contextlib.nullcontext():
        if path.is_dir() and not (path / "last.pt").is_file() and (path / "config.json").is_file():
            ckpt, saved = None, read_json(path / "config.json")
        else:
            ckpt = checkpoint.load(path, which="last")
            if "progress" not in ckpt:
                raise ImgclsError(f"{ckpt['path']} holds weights only (no training state): resume from the run folder or its last.pt")
            saved = ckpt["config"]
        cfg = _on_this_machine(TrainConfig.from_dict(saved), run_dir, device, data_dir)
        data = pretrained_normalised(load_run_data(cfg, split_files=read_split(run_dir)), cfg.model, cfg.pretrained)
        if ckpt is not None and (list(data.classes) != ckpt["classes"] or list(data.shape) != ckpt["in_shape"]):
            raise ImgclsError(f"the data of {run_dir} changed since it was trained (classes or image size differ): start a new run")
        trainer = Trainer(cfg, data, run_dir, on_step=on_step, loggers=loggers)
        if ckpt is not None:
            trainer.load_last(ckpt)
        else:
            initial = _initial_weights(cfg, data)
            if initial:
                transfer(trainer.model, initial, cfg.model)
        p = trainer.progress
        if ckpt is None:
            where = "no training state was saved, starting the run over"
        elif p.finished:
            where = "finished, re-testing"
        else:
            where = f"resuming at epoch {p.epoch + 1}/{cfg.epochs}, step {p.step}/{trainer.steps_per_epoch}"
        print(f"run {run_dir}: {where}\n{_describe(cfg, data, trainer)}", flush=True)
        return run_dir, _fit(trainer)
