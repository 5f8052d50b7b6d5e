"""Live training curves: TensorBoard (`--tensorboard`) and Visdom (`--visdom`), both optional packages, as callbacks.

`step` runs each time the Trainer reads statistics back from the device (every SYNC_EVERY steps) and `epoch` after
validation. Loggers never touch the trainer's random generators, so runs stay reproducible.
"""

from urllib.parse import urlsplit

import torch

from imgcls.data.augment import denormalize, prepare
from imgcls.errors import ImgclsError
from imgcls.training.callbacks import Callback

SAMPLE_IMAGES = 16  # augmented training images logged per epoch


class Logger(Callback):
    """A live-curve callback: `step` at each read-back of the statistics, `epoch` after validation."""

    def step(self, trainer) -> None:
        """Running train loss and accuracy since the last call."""

    def epoch(self, trainer, row: dict) -> None:
        """One finished epoch: its metrics.csv row."""

    def on_sync(self, trainer) -> None:
        self.step(trainer)

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.epoch(trainer, row)


def global_step(trainer) -> int:
    return trainer.progress.epoch * trainer.steps_per_epoch + trainer.progress.step


class Interval:
    """Loss and accuracy over the steps since the previous read-back (the totals themselves add up over an epoch)."""

    def __init__(self):
        self.epoch, self.totals = -1, [0.0, 0.0, 0.0]

    def update(self, progress) -> tuple[float, float] | None:
        before = self.totals if self.epoch == progress.epoch else [0.0, 0.0, 0.0]
        loss, correct, seen = (now - then for now, then in zip(progress.totals, before))
        self.epoch, self.totals = progress.epoch, list(progress.totals)
        return (loss / seen, correct / seen) if seen > 0 else None


def augmented_samples(trainer, count: int = SAMPLE_IMAGES) -> torch.Tensor:
    """The first training images as the model sees them this epoch (augmented), back in uint8, on the CPU."""
    generator = torch.Generator(trainer.device).manual_seed(trainer.cfg.seed * 1_000_003 + trainer.progress.epoch)
    images = trainer.train_images[:count].to(trainer.device)
    return denormalize(prepare(images, trainer.mean, trainer.std, trainer.augment, generator), trainer.mean, trainer.std).cpu()


class TensorBoardLogger(Logger):
    """Scalars under train/ (every read-back) and epoch/, plus augmented sample images each epoch, in RUN/tensorboard."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImgclsError("--tensorboard needs the tensorboard package: pip install 'imgcls[tensorboard]'") from None
        self.make_writer, self.writer, self.interval = SummaryWriter, None, Interval()

    def _writer(self, trainer):
        if self.writer is None:  # the run folder exists only once training starts
            self.writer = self.make_writer(log_dir=str(trainer.run_dir / "tensorboard"))
        return self.writer

    def step(self, trainer) -> None:
        running = self.interval.update(trainer.progress)
        if running is None:
            return
        writer, at = self._writer(trainer), global_step(trainer)
        writer.add_scalar("train/loss", running[0], at)
        writer.add_scalar("train/accuracy", running[1], at)
        writer.add_scalar("train/lr", trainer.lr, at)

    def epoch(self, trainer, row: dict) -> None:
        writer, at = self._writer(trainer), global_step(trainer)
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            writer.add_scalar(f"epoch/{key}", row[key], at)
        writer.add_images("epoch/augmented_train_images", augmented_samples(trainer), at, dataformats="NCHW")
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class VisdomLogger(Logger):
    """Loss, accuracy and learning-rate windows plus augmented sample images, in a Visdom environment named after the run."""

    def __init__(self, server: str = "http://localhost:8097", client=None):
        if client is None:
            client = connect_visdom(server)
        self.client, self.windows, self.interval = client, set(), Interval()

    def _line(self, trainer, window: str, trace: str, x: float, y: float, ylabel: str) -> None:
        first = window not in self.windows
        self.windows.add(window)
        self.client.line(
            Y=[y], X=[x], win=window, env=trainer.run_dir.name, name=trace, update=None if first else "append",
            opts={"title": window, "xlabel": "epoch", "ylabel": ylabel, "showlegend": True},
        )  # fmt: skip

    def step(self, trainer) -> None:
        running = self.interval.update(trainer.progress)
        if running is not None:
            at = global_step(trainer) / trainer.steps_per_epoch
            self._line(trainer, "loss", "train (running)", at, running[0], "cross-entropy loss")
            self._line(trainer, "accuracy", "train (running)", at, running[1], "accuracy")

    def epoch(self, trainer, row: dict) -> None:
        epoch = row["epoch"]
        self._line(trainer, "loss", "validation", epoch, row["val_loss"], "cross-entropy loss")
        self._line(trainer, "accuracy", "validation", epoch, row["val_acc"], "accuracy")
        self._line(trainer, "learning rate", "lr", epoch, row["lr"], "learning rate")
        self.client.images(
            augmented_samples(trainer).numpy(), nrow=8, win="augmented train images", env=trainer.run_dir.name,
            opts={"title": f"augmented train images, epoch {epoch}"},
        )  # fmt: skip


def connect_visdom(server: str):
    try:
        import visdom
    except ImportError:
        raise ImgclsError("--visdom needs the visdom package: pip install 'imgcls[visdom]'") from None
    url = urlsplit(server if "://" in server else f"http://{server}")
    client = visdom.Visdom(server=f"{url.scheme}://{url.hostname}", port=url.port or 8097, raise_exceptions=False)
    if not client.check_connection(timeout_seconds=3):
        raise ImgclsError(f"no Visdom server answers at {server}: start one with `python -m visdom.server`, or drop --visdom")
    return client
