"""The Trainer: one loop that fits a model on an in-memory dataset, for every task (imgcls.training.tasks).

The hot loop (`Trainer.train_epoch`) is index -> augment on device -> forward -> backward -> step,
with statistics kept on the device and read back only every few steps.
"""

import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from imgcls import checkpoint, distributed
from imgcls.config import TrainConfig
from imgcls.data.augment import Augment, mix_rows, prepare
from imgcls.data.core import Dataset, Split
from imgcls.device import amp_dtype, autocast, pick_device, use_channels_last
from imgcls.errors import ImgclsError
from imgcls.evaluation import EvalResult, predict_logits, write_confusion_csv
from imgcls.files import write_json
from imgcls.interrupt import STOP_SIGNALS, CtrlC, Interrupted, during
from imgcls.models import create_model, get_model_info, num_params
from imgcls.models.fast import data_initialised, init_from_data
from imgcls.rundir import write_metrics
from imgcls.training import finetune
from imgcls.training.averaging import Lookahead, WeightAverage
from imgcls.training.callbacks import Callback, Callbacks
from imgcls.training.optim import make_optimizer, make_schedule
from imgcls.training.tasks import Task, image_weights, task_for

LOG = logging.getLogger(__name__)
SYNC_EVERY = 10  # steps between reading statistics back from the device (and checking for NaN)
DEVICE_DATA_LIMIT = 4 * 2**30  # datasets up to this size live on the GPU for the whole run
DATA_INIT_IMAGES = 2048  # training images that layers set from data (a whitening stem) see: its 12x12 covariance settles long before


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
    best_score: list | None = None  # the task's score of the best epoch (Task.score): what a new epoch must beat
    best_epoch: int = 0
    stale_epochs: int = 0
    finished: bool = False
    frozen_stage: dict | None = None  # what the frozen stage of a fine-tune did, once done (imgcls.finetune)


def batch_mix(cfg: TrainConfig, num_classes: int, multi_label: bool = False):
    """torchvision's MixUp and CutMix (v2) over whole normalised batches, giving soft targets; with both, each batch takes
    one of them at random, as timm does; None when neither is asked for. Normalisation is affine, so mixing normalised
    images is mixing the pixels. torchvision's take class indices only: multi-hot targets are mixed by
    data.augment.mix_rows instead."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    if multi_label:
        return partial(mix_rows, mixup=cfg.mixup or 0.0, cutmix=cfg.cutmix or 0.0)
    from torchvision.transforms import v2  # imported on use: torchvision adds a second to start-up

    mixes = [*([v2.MixUp(alpha=cfg.mixup, num_classes=num_classes)] if cfg.mixup else []),
             *([v2.CutMix(alpha=cfg.cutmix, num_classes=num_classes)] if cfg.cutmix else [])]  # fmt: skip
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Batches in an epoch; a last batch that leaves a process (of `world`) fewer than two images is dropped: batch norm
    cannot train on one."""
    count = math.ceil(n / batch_size)
    return count - 1 if count > 1 and 0 < n % batch_size < 2 * world else count


class Trainer:
    """Fits cfg.model (or `model`, built by the caller) on `data`, writing checkpoints and metrics into run_dir.
    `callbacks` are called at fixed points (imgcls.training.callbacks); `task` says what the labels are."""

    def __init__(
        self, cfg: TrainConfig, data: Dataset, run_dir: Path, callbacks: Callback | list[Callback] = (), task: Task | None = None,
        model: nn.Module | None = None,
    ):  # fmt: skip
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.callbacks = callbacks if isinstance(callbacks, Callback) else Callbacks(callbacks)
        self.group, self.device = distributed.setup(pick_device(cfg.device))
        self.task = task or task_for(cfg, data, self.device)
        self.amp = amp_dtype(self.device, cfg.precision)
        torch.manual_seed(cfg.seed)
        if model is None:
            model = create_model(cfg.model, data.shape, data.num_classes, **cfg.model_options())
        self.model = model.to(self.device)
        self.channels_last = use_channels_last(self.device, get_model_info(cfg.model).convolutional)
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
        self.augment = Augment.of(cfg)
        self.mix = batch_mix(cfg, data.num_classes, data.multi_label)
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
        self.stop_signal: int | str = signal.SIGINT
        self.test: EvalResult | None = None  # the best checkpoint's, once tested
        self.val_logits: torch.Tensor | None = None  # the best checkpoint's on val, calibrated, once tested

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
            "task": self.task.name,
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
        if self.progress.best_score is None and self.progress.best_val_accuracy >= 0:  # a last.pt from before best_score
            self.progress.best_score = [self.progress.best_val_accuracy, -self.progress.best_val_loss]

    # --- training ----------------------------------------------------------------------------------

    def request_stop(self, why: int | str = "stopped by a callback") -> None:
        """Stop at the end of the current step, saving last.pt to resume from: what Ctrl-C, SIGTERM and SIGHUP do
        (`why` is then the signal's number), and what a callback may do."""
        self.stop_requested, self.stop_signal = True, why

    def _eval(self, split: Split, shifts: bool = True) -> EvalResult:
        """Each process predicts its shard of the split; the metrics come from all the logits, the same on every rank.
        shifts=False leaves out shift TTA (3x the views): validation every epoch ranks epochs as well without it."""
        images = split.images[distributed.shard(len(split), self.group)]  # a view: the whole split for one process
        logits = predict_logits(
            self.evaluated, images, self.mean, self.std, amp=self.amp, channels_last=self.channels_last, tta=self.cfg.tta,
            tta_shift=(self.cfg.tta_shift or 0) if shifts else 0,
        )  # fmt: skip
        return self.task.evaluate(distributed.gather_rows(logits, len(split), self.group), split.labels, self.data.num_classes)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """This process's training-image indices for each step of an epoch: its share of each global batch of the
        seeded order. The order depends only on (seed, epoch), so a resumed epoch replays it, on any number of processes.
        With --balance sample an epoch is as many draws as there are images, each class drawn as often."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        if self.cfg.balance == "sample":  # as many draws as images, every class as likely (rare images repeat)
            per_image = image_weights(self.data.train.labels, self.data.num_classes)
            order = torch.multinomial(per_image, len(per_image), replacement=True, generator=generator)
        else:
            order = torch.randperm(len(self.train_labels), generator=generator)
        steps = order.split(self.cfg.batch_size)[: self.steps_per_epoch]
        return [step[self.group.rank :: self.group.world].to(self.home) for step in steps]

    def train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step on the training images at idx: their labels, logits and loss, left on the device."""
        x = self.train_images[idx].to(self.device, non_blocking=True)
        y = self.train_labels[idx].to(self.device, non_blocking=True)
        x = prepare(x, self.mean, self.std, self.augment, self.generator, index=idx, epoch=self.progress.epoch)
        target = y
        if self.mix is not None:  # soft targets; the running accuracy still counts the images' own labels
            x, target = self.mix(x, y, self.generator) if self.data.multi_label else self.mix(x, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.forward(x)
            loss = self.task.loss(logits, target)
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
        p = self.progress
        self.model.train()
        batches = self.batches(p.epoch)
        # This process's sums; rank 0 carries a resumed epoch's, which were all processes' (p.totals is their sum).
        totals = torch.tensor(p.totals if self.group.main else [0.0] * 3, dtype=torch.float64, device=self.device)
        start = time.perf_counter() - p.seconds
        self.callbacks.on_epoch_start(self)
        for step in range(p.step, self.steps_per_epoch):
            y, logits, loss = self.train_step(batches[step])
            if self.schedule_per_step:
                self.scheduler.step()
            if self.lookahead:
                self.lookahead.step(self.model, p.epoch * self.steps_per_epoch + step + 1)
            totals[0] += loss.detach() * len(y)
            totals[1] += self.task.hits(logits, y)
            totals[2] += len(y)
            p.step = step + 1
            self.callbacks.on_step(self)
            synced = p.step % SYNC_EVERY == 0 or p.step == self.steps_per_epoch
            stop = self._stop_agreed(synced)
            if synced or stop:
                p.totals, p.seconds = distributed.sum_(totals.clone(), self.group).tolist(), time.perf_counter() - start
                if not math.isfinite(p.totals[0]):
                    self._non_finite()
                self.callbacks.on_sync(self)
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
        LOG.info(finetune.describe(stage))

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
            **self.task.row(val),
            "lr": self.lr,
            "seconds": p.seconds,
        }
        p.history.append(row)
        p.train_seconds += p.seconds
        p.images_seen += int(seen)
        p.epoch, p.step, p.totals, p.seconds = p.epoch + 1, 0, [0.0, 0.0, 0.0], 0.0
        score = list(self.task.score(val))
        improved = p.best_score is None or score > p.best_score
        # The val figures are every process's (sharded, gathered), so all decide the same: best epoch, early stop.
        if improved:
            p.best_val_accuracy, p.best_val_loss, p.best_epoch, p.stale_epochs, p.best_score = val.accuracy, val.loss, p.epoch, 0, score
            if self.group.main:
                checkpoint.atomic_save(self._payload(self._weights(self.evaluated)), self.run_dir / "best.pt")
        else:
            p.stale_epochs += 1
        p.finished = p.epoch >= cfg.epochs or (cfg.patience > 0 and p.stale_epochs >= cfg.patience)
        self.save_last()
        if self.group.main:
            write_metrics(self.run_dir / "metrics.csv", p.history, self.task.columns)
        return {**row, "best": improved, "images_per_second": seen / max(row["seconds"], 1e-9)}

    def fit(self) -> dict:
        """Train to the end (or early stop), then test the best checkpoint once. Returns the summary."""
        try:
            with CtrlC(on_press=self.request_stop, signals=STOP_SIGNALS):
                self.callbacks.on_fit_start(self)
                if self.cfg.freeze_epochs and self.progress.frozen_stage is None:
                    self.frozen_stage()
                while not self.progress.finished:
                    self.train_epoch()
                    row = self.end_epoch()
                    self.callbacks.on_epoch_end(self, row)
                    if self._stop_agreed(True):  # asked for while validating: last.pt already holds the epoch's end
                        raise Interrupted(self.run_dir, self.stop_signal)
            summary = self.finish()
            self.callbacks.on_fit_end(self, summary)
            return summary
        finally:
            self.callbacks.close()

    def finish(self) -> dict:
        p = self.progress
        distributed.barrier(self.group)  # best.pt is rank 0's to write
        best = checkpoint.load(self.run_dir / "best.pt")
        self.evaluated.load_state_dict(best["state_dict"])
        kept = f"best.pt and last.pt are kept, `imgcls train --resume {self.run_dir}` tests it again"
        with during("testing the best checkpoint", kept):
            val_logits = self._eval(self.data.val).logits
            settled = self.task.settle(val_logits, self.data.val.labels)  # a temperature, or multi-label thresholds
            self.val_logits = self.task.calibrated(val_logits)  # the report's reliability diagram of val
            if settled and self.group.main:
                checkpoint.atomic_save({k: v for k, v in best.items() if k != "path"} | settled, self.run_dir / "best.pt")
            test = self.test = self._eval(self.data.test)
        if self.group.main and hasattr(test, "confusion"):
            write_confusion_csv(test.confusion, self.data.classes, self.run_dir / "confusion_matrix.csv")
        summary = {
            "dataset": self.data.name,
            "model": self.cfg.model,
            "task": self.task.name,
            "classes": self.data.classes,
            **self.task.summary(test, self.data.classes),
            "test_images": len(self.data.test),
            "best_val_accuracy": p.best_val_accuracy,
            **self.task.best(p.best_score),
            "best_epoch": p.best_epoch,
            "epochs_run": p.epoch,
            "stopped_early": p.epoch < self.cfg.epochs,
            "train_seconds": round(p.train_seconds, 3),
            "images_per_second": round(p.images_seen / max(p.train_seconds, 1e-9), 1),
            "num_params": num_params(self.model),
            "device": str(self.device),
            "skipped_files": len(self.data.skipped),
            "frozen_stage": p.frozen_stage,
        }
        if self.group.main:
            write_json(self.run_dir / "summary.json", summary)
        return summary
