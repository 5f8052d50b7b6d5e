"""`imgcls autoencode`: train a convolutional autoencoder or VAE on any imgcls dataset, in a run folder of its own kind
(runs/<dataset>-ae-<n> or -vae-<n>): config.json, metrics.csv, best.pt and last.pt, summary.json, anomalies.csv, report.html.

The loss of an image is its summed squared error with pixels in [0, 1], plus beta times the KL divergence of its code's
distribution from the prior N(0, I) for a VAE. metrics.csv records the error per pixel (MSE) and the KL per image (nats).
Each epoch's order and a VAE's noise are seeded by (seed, epoch), so a run resumed from last.pt replays the epochs it missed.
"""

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from imgcls import checkpoint
from imgcls.autoencode.codes import EVAL_BATCH, encode, losses
from imgcls.config import LIMITS, TrainConfig, check_limits
from imgcls.data import dataset_name
from imgcls.data.core import Dataset
from imgcls.data.registry import is_folder_spec
from imgcls.device import amp_dtype, pick_device, use_channels_last
from imgcls.errors import ImgclsError
from imgcls.files import read_json, write_json
from imgcls.interrupt import STOP_SIGNALS, CtrlC, Interrupted
from imgcls.models import num_params
from imgcls.models.autoencoder import AutoEncoder, default_latent_dim
from imgcls.recipes import epochs_for
from imgcls.rundir import lock_run, new_run_dir, read_split, write_rows
from imgcls.training.run import load_run_data
from imgcls.training.trainer import DEVICE_DATA_LIMIT, batches_per_epoch

LOG = logging.getLogger(__name__)

FORMAT = "imgcls-autoencoder-v1"
CLASSIFIER = "aenet"  # the classifier that `imgcls train --weights RUN` builds from a run's checkpoint: its encoder + a head
IMAGES_SHOWN = 45_000  # training images a run shows without --epochs: 5 epochs of mnist-sample, 1 of MNIST or CIFAR-10
COLUMNS = ["epoch", "train_loss", "train_mse", "train_kl", "val_loss", "val_mse", "val_kl", "lr", "seconds"]
PRECISIONS = ("auto", "fp32", "bf16")
AE_LIMITS = {
    **{k: LIMITS[k] for k in ("epochs", "batch_size", "lr", "seed", "val_fraction", "image_size")},
    "latent_dim": (int, lambda v: v >= 1, "positive"),
    "beta": (float, lambda v: 0 <= v < math.inf, "zero or more and finite"),
}


@dataclass
class AEConfig:
    data: str = "mnist-sample"
    data_dir: str | None = None
    variational: bool = False
    latent_dim: int | None = None  # 16 for greyscale images, 64 for colour
    epochs: int | None = None  # enough to show IMAGES_SHOWN training images
    batch_size: int = 128
    lr: float = 2e-3  # AdamW's peak, annealed to zero over the run (cosine)
    beta: float = 0.5  # a VAE's KL weight against the summed squared error: a Gaussian decoder of std sqrt(beta / 2) = 0.5
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.1
    image_size: int | None = None
    precision: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AEConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def kind(self) -> str:
        return "vae" if self.variational else "ae"


def check(cfg: AEConfig) -> None:
    check_limits(cfg, AE_LIMITS)
    if cfg.precision not in PRECISIONS:
        raise ImgclsError(f"unknown precision '{cfg.precision}': choose one of {', '.join(PRECISIONS)}")
    pick_device(cfg.device)


def load_data(cfg: AEConfig, split_files=None) -> Dataset:
    """The dataset as `imgcls train` loads it (same splits and sizes for the same seed)."""
    as_train = TrainConfig(data=cfg.data, data_dir=cfg.data_dir, seed=cfg.seed, val_fraction=cfg.val_fraction, image_size=cfg.image_size,
                           device=cfg.device)  # fmt: skip
    return load_run_data(as_train, split_files=split_files)


def filled(cfg: AEConfig, data: Dataset) -> AEConfig:
    """Defaults that depend on the data, and the data paths made absolute (resume works from any folder)."""
    absolute = os.path.abspath(Path(cfg.data).expanduser()) if is_folder_spec(cfg.data) else cfg.data
    return replace(
        cfg, data=absolute, data_dir=os.path.abspath(Path(cfg.data_dir).expanduser()) if cfg.data_dir else None,
        latent_dim=cfg.latent_dim or default_latent_dim(data.shape), epochs=cfg.epochs or epochs_for(IMAGES_SHOWN, len(data.train)),
        image_size=cfg.image_size or data.resized_to,
    )  # fmt: skip


def mean_image_mse(train: torch.Tensor, test: torch.Tensor) -> float:
    """The baseline: the MSE per pixel of predicting every test image as the mean training image."""
    mean = torch.zeros(train.shape[1:], dtype=torch.float64)
    for start in range(0, len(train), EVAL_BATCH):
        mean += train[start : start + EVAL_BATCH].double().sum(0)
    mean /= 255 * len(train)
    return sum(((test[s : s + EVAL_BATCH].double() / 255 - mean) ** 2).sum().item() for s in range(0, len(test), EVAL_BATCH)) / test.numel()


class Run:
    """One autoencoder run: the model, its optimizer and schedule, the data on the device, and where training stands."""

    def __init__(self, cfg: AEConfig, data: Dataset, run_dir: Path):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.device = pick_device(cfg.device)
        self.amp = amp_dtype(self.device, cfg.precision)
        self.channels_last = use_channels_last(self.device, True)
        torch.manual_seed(cfg.seed)
        self.model = AutoEncoder(data.shape, cfg.latent_dim, cfg.variational).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.steps_per_epoch = batches_per_epoch(len(data.train), cfg.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs * self.steps_per_epoch)
        self.mean = torch.tensor(data.mean, device=self.device).view(-1, 1, 1)
        self.std = torch.tensor(data.std, device=self.device).view(-1, 1, 1)
        on_device = self.device.type == "cuda" and data.train.images.nbytes < DEVICE_DATA_LIMIT
        self.train_images = data.train.images.to(self.device if on_device else "cpu")
        self.epoch, self.history, self.best_val_loss, self.best_epoch = 0, [], math.inf, 0
        self.stop_signal = None

    def payload(self, last: bool) -> dict:
        state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format) for k, v in self.model.state_dict().items()}
        payload = {
            "format": FORMAT, "model": CLASSIFIER, "variational": self.cfg.variational, "latent_dim": self.cfg.latent_dim,
            "in_shape": list(self.data.shape), "classes": list(self.data.classes), "mean": list(self.data.mean),
            "std": list(self.data.std), "config": self.cfg.to_dict(), "epoch": self.epoch, "state_dict": state,
        }  # fmt: skip
        if last:
            payload.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), history=self.history,
                           best_val_loss=self.best_val_loss, best_epoch=self.best_epoch)  # fmt: skip
        return payload

    def load_last(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.history = ckpt["epoch"], ckpt["history"]
        self.best_val_loss, self.best_epoch = ckpt["best_val_loss"], ckpt["best_epoch"]

    def train_epoch(self) -> dict:
        """One epoch over the seeded order; a stop request (Ctrl-C) ends it after the current step, unfinished."""
        cfg, seed = self.cfg, self.cfg.seed * 1_000_003 + self.epoch
        self.model.train()
        order = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(seed))
        noise = torch.Generator(self.device).manual_seed(seed)
        totals, seen = torch.zeros(2, dtype=torch.float64, device=self.device), 0  # squared error and KL summed over images
        start = time.perf_counter()
        for idx in order.split(cfg.batch_size)[: self.steps_per_epoch]:
            if self.stop_signal is not None:
                raise Interrupted(self.run_dir, self.stop_signal)
            images = self.train_images[idx].to(self.device, non_blocking=True)
            squared, kl, _, _ = losses(self.model, images, self.mean, self.std, self.amp, self.channels_last, noise)
            loss = (squared + cfg.beta * kl).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            totals += torch.stack([squared.detach().sum(), kl.detach().sum()])
            seen += len(idx)
        squared, kl = totals.tolist()
        if not math.isfinite(squared + kl):
            raise ImgclsError(f"the loss became {squared + kl} in epoch {self.epoch + 1}, training stopped: lower --lr (now {cfg.lr:g})")
        pixels = self.train_images[0].numel()
        return {"train_loss": (squared + cfg.beta * kl) / seen, "train_mse": squared / seen / pixels, "train_kl": kl / seen,
                "seconds": time.perf_counter() - start, "images": seen}  # fmt: skip

    def end_epoch(self, row: dict) -> dict:
        """Validate, keep the best weights (lowest val loss), record the epoch in metrics.csv and last.pt."""
        val = encode(self.model, self.data.val.images, self.mean, self.std, self.amp, self.channels_last)
        pixels = self.train_images[0].numel()
        val_loss = (val.errors.mean() * pixels + self.cfg.beta * val.kl.mean()).item()
        self.epoch += 1
        row = {"epoch": self.epoch, **row, "val_loss": val_loss, "val_mse": val.errors.mean().item(), "val_kl": val.kl.mean().item(),
               "lr": self.optimizer.param_groups[0]["lr"]}  # fmt: skip
        self.history.append(row)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
            checkpoint.atomic_save(self.payload(last=False), self.run_dir / "best.pt")
        checkpoint.atomic_save(self.payload(last=True), self.run_dir / "last.pt")
        write_rows(self.run_dir / "metrics.csv", COLUMNS, self.history)
        return row

    def fit(self) -> dict:
        def stop(signum):
            self.stop_signal = signum

        with CtrlC(on_press=stop, signals=STOP_SIGNALS):
            while self.epoch < self.cfg.epochs:
                row = self.end_epoch(self.train_epoch())
                LOG.info(format_epoch(row, self.cfg))
        return self.finish()

    def finish(self) -> dict:
        """Test the best weights, write summary.json, anomalies.csv and the report."""
        self.model.load_state_dict(checkpoint_file(self.run_dir / "best.pt")["state_dict"])
        test = encode(self.model, self.data.test.images, self.mean, self.std, self.amp, self.channels_last)
        seconds = sum(r["seconds"] for r in self.history)
        summary = {
            "dataset": self.data.name, "kind": self.cfg.kind, "latent_dim": self.cfg.latent_dim, "test_images": len(test.errors),
            "test_mse": test.errors.mean().item(), "mean_image_mse": mean_image_mse(self.data.train.images, self.data.test.images),
            "test_kl": test.kl.mean().item() if self.cfg.variational else None, "best_epoch": self.best_epoch,
            "epochs_run": self.epoch, "train_seconds": round(seconds, 3),
            "images_per_second": round(sum(r["images"] for r in self.history) / max(seconds, 1e-9), 1),
            "num_params": num_params(self.model), "device": str(self.device),
        }  # fmt: skip
        write_json(self.run_dir / "summary.json", summary)
        write_anomalies(self.run_dir / "anomalies.csv", test.errors, self.data)
        from imgcls.autoencode.report import write_report  # matplotlib loads only now, after training

        write_report(self.run_dir, self.model, self.data, test, self.history, self.cfg.to_dict(), summary)
        return summary


def write_anomalies(path: Path, errors: torch.Tensor, data: Dataset) -> None:
    """Test images from the worst reconstructed down: their anomaly score is their reconstruction MSE."""
    files = (data.split_files or {}).get("test")
    rows = [
        {
            "rank": rank,
            "index": i,
            "class": data.classes[data.test.labels[i]],
            "mse": errors[i].item(),
            **({"file": files[i]} if files else {}),
        }
        for rank, i in enumerate(errors.argsort(descending=True).tolist(), 1)
    ]
    write_rows(path, ["rank", "index", "class", "mse", *(["file"] if files else [])], rows)


def format_epoch(row: dict, cfg: AEConfig) -> str:
    kl = f" kl {row['train_kl']:.2f}" if cfg.variational else ""
    val_kl = f" kl {row['val_kl']:.2f}" if cfg.variational else ""
    return (
        f"epoch {row['epoch']:>{len(str(cfg.epochs))}}/{cfg.epochs}  train mse {row['train_mse']:.5f}{kl}  "
        f"val mse {row['val_mse']:.5f}{val_kl}  lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images'] / max(row['seconds'], 1e-9):,.0f} img/s"
    )


def describe(run: Run) -> str:
    cfg, data = run.cfg, run.data
    return (
        f"data {data.name}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test, {'x'.join(map(str, data.shape))}\n"
        f"{'variational autoencoder' if cfg.variational else 'autoencoder'}: {cfg.latent_dim}-number code, {num_params(run.model):,} params "
        f"on {run.device}{' (AMP ' + str(run.amp).removeprefix('torch.') + ')' if run.amp else ''}; AdamW lr {cfg.lr:g} (cosine), "
        f"batch {cfg.batch_size}, {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}{f', KL weight {cfg.beta:g}' if cfg.variational else ''}"
    )


def checkpoint_file(path: Path) -> dict:
    """An autoencoder checkpoint file, read with weights_only=True; anything else is a one-line error."""
    ckpt = checkpoint.read_file(path, "an imgcls checkpoint")
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == checkpoint.FORMAT:
        raise ImgclsError(f"{path} is a classifier's (`imgcls train`), not an autoencoder's: pass a run folder made by `imgcls autoencode`")
    if fmt != FORMAT:
        raise ImgclsError(f"{path} is not an imgcls autoencoder checkpoint: pass a run folder made by `imgcls autoencode`")
    ckpt["path"] = str(path)
    return ckpt


def load_checkpoint(run: str | Path, which: str = "best") -> dict:
    """The best.pt (or last.pt) of an autoencoder run folder, or a checkpoint file itself."""
    path = Path(run).expanduser()
    if path.is_dir():
        found = [path / name for name in (f"{which}.pt", "last.pt", "best.pt") if (path / name).is_file()]
        if not found:
            raise ImgclsError(f"{path} holds no checkpoint (best.pt or last.pt): pass a run folder made by `imgcls autoencode`")
        path = found[0]
    elif not path.exists():
        raise ImgclsError(f"{path} does not exist: pass a run folder made by `imgcls autoencode` (runs/NAME)")
    return checkpoint_file(path)


def load_model(ckpt: dict, device: str | torch.device = "cpu") -> AutoEncoder:
    model = AutoEncoder(tuple(ckpt["in_shape"]), ckpt["latent_dim"], ckpt["variational"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ImgclsError(f"{ckpt['path']} does not fit its autoencoder ({str(e).splitlines()[0]}): it was edited; retrain") from None
    return model.to(device).eval()


def train(cfg: AEConfig, out: str | Path | None = None) -> tuple[Path, dict]:
    """A new run: load the data, fill in the defaults, make the run folder, train, test, report."""
    check(cfg)
    if out is not None and ((Path(out) / "last.pt").exists() or (Path(out) / "best.pt").exists()):
        raise ImgclsError(f"{out} already holds a run: resume it with `imgcls autoencode --resume {out}` or choose another --out")
    data = load_data(cfg)
    cfg = filled(cfg, data)
    run_dir = new_run_dir(dataset_name(cfg.data), cfg.kind, out)
    with lock_run(run_dir):
        run = Run(cfg, data, run_dir)
        write_json(run_dir / "config.json", cfg.to_dict())
        if data.split_files is not None:
            write_json(run_dir / "split.json", data.split_files)
        LOG.info(f"run {run_dir}\n{describe(run)}")
        return run_dir, run.fit()


def resume(run: str | Path, device: str | None = None, data_dir: str | None = None) -> tuple[Path, dict]:
    """Continue a run from its last.pt (the end of its last finished epoch) on the same data split; a run stopped in its
    first epoch starts over from its config.json."""
    run_dir = Path(run).expanduser()
    if not (run_dir / "config.json").is_file():
        raise ImgclsError(f"{run_dir} is not an autoencoder run folder (no config.json): pass a folder made by `imgcls autoencode`")
    ckpt = checkpoint_file(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None
    cfg = AEConfig.from_dict(ckpt["config"] if ckpt else read_json(run_dir / "config.json"))
    cfg = replace(cfg, device=device or cfg.device, data_dir=data_dir or cfg.data_dir)
    check(cfg)
    with lock_run(run_dir):
        data = load_data(cfg, split_files=read_split(run_dir))
        if ckpt is not None and (list(data.shape) != ckpt["in_shape"] or list(data.classes) != ckpt["classes"]):
            raise ImgclsError(f"the data of {run_dir} changed since it was trained (classes or image size differ): start a new run")
        run = Run(cfg, data, run_dir)
        if ckpt is not None:
            run.load_last(ckpt)
        where = f"resuming at epoch {run.epoch + 1}/{cfg.epochs}" if ckpt else "no epoch had finished, starting over"
        LOG.info(f"run {run_dir}: {where if run.epoch < cfg.epochs else 'finished, re-testing'}\n{describe(run)}")
        return run_dir, run.fit()


def stopped_message(stop: Interrupted) -> str:
    saved = "the last finished epoch is saved in last.pt" if (stop.run_dir / "last.pt").exists() else "no epoch had finished"
    return f"\ninterrupted: {saved}\nresume with: imgcls autoencode --resume {stop.run_dir}"
