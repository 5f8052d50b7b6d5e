"""Callbacks: code of the user's (or of imgcls: the progress bar, the epoch lines, the report, live curves) that the
Trainer calls at fixed points of a run. A callback can stop the run cleanly, as Ctrl-C does: `trainer.request_stop()`
ends it after the current step, with last.pt saved to resume from.

    class Printer(imgcls.Callback):
        def on_epoch_end(self, trainer, row):
            print(row["epoch"], row["val_acc"])
"""

import logging
import time

from imgcls.errors import ImgclsError
from imgcls.progress import progress_bar

LOG = logging.getLogger(__name__)
LOG_EVERY = 60.0  # seconds between progress lines when there is no terminal for a progress bar


class Callback:
    """Override the hooks you need; each gets the Trainer (`trainer.cfg`, `trainer.progress`, `trainer.model`, ...)."""

    def on_fit_start(self, trainer) -> None:
        """Before the first step (of this process: a resumed run starts again here)."""

    def on_epoch_start(self, trainer) -> None:
        """Before the first step of an epoch (or of what is left of it, when resumed)."""

    def on_step(self, trainer) -> None:
        """After each optimizer step. Statistics stay on the device: read them in on_sync instead."""

    def on_sync(self, trainer) -> None:
        """Every few steps, once the running loss and accuracy were read back: trainer.progress.totals."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        """After validation: the epoch's metrics.csv row, with "best" (a new best epoch) and "images_per_second"."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        """After the test of the best checkpoint: the run's summary.json."""

    def close(self) -> None:
        """Whatever way the run ended (finished, stopped, failed): release what the callback holds."""


class Callbacks(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer) -> None:
        for c in self.callbacks:
            c.on_fit_start(trainer)

    def on_epoch_start(self, trainer) -> None:
        for c in self.callbacks:
            c.on_epoch_start(trainer)

    def on_step(self, trainer) -> None:
        for c in self.callbacks:
            c.on_step(trainer)

    def on_sync(self, trainer) -> None:
        for c in self.callbacks:
            c.on_sync(trainer)

    def on_epoch_end(self, trainer, row: dict) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, row)

    def on_fit_end(self, trainer, summary: dict) -> None:
        for c in self.callbacks:
            c.on_fit_end(trainer, summary)

    def close(self) -> None:
        for c in self.callbacks:
            c.close()


class ProgressBar(Callback):
    """A bar per epoch (tqdm: on a terminal, and as a widget in a notebook); in logs, where there is no terminal, a
    plain progress line every LOG_EVERY seconds instead."""

    def __init__(self):
        self.bar = None

    def on_epoch_start(self, trainer) -> None:
        p = trainer.progress
        self.desc = f"epoch {p.epoch + 1}/{trainer.cfg.epochs}"
        self.bar = progress_bar(total=trainer.steps_per_epoch, initial=p.step, desc=self.desc, unit="batch")
        self.logged = time.perf_counter()

    def on_sync(self, trainer) -> None:
        p = trainer.progress
        loss, acc, speed = p.totals[0] / p.totals[2], p.totals[1] / p.totals[2], p.totals[2] / max(p.seconds, 1e-9)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2%}", img_s=f"{speed:,.0f}")
            self.bar.update(p.step - self.bar.n)
        elif time.perf_counter() - self.logged >= LOG_EVERY:
            self.logged = time.perf_counter()
            LOG.info(f"{self.desc}  step {p.step}/{trainer.steps_per_epoch}  loss {loss:.4f} acc {acc:.2%}  {speed:,.0f} img/s")

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLog(Callback):
    """One line per epoch, and one when patience stops the run early."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        LOG.info(format_epoch(row, trainer.cfg.epochs))

    def on_fit_end(self, trainer, summary: dict) -> None:
        if summary["stopped_early"]:
            LOG.info(f"early stop: no better val accuracy for {trainer.cfg.patience} epochs")


class Report(Callback):
    """report.html and its plots in the run folder, drawn from the test logits the run already has."""

    def on_fit_end(self, trainer, summary: dict) -> None:
        if not trainer.group.main:
            return
        from imgcls.inference import Predictor
        from imgcls.report import write_report  # matplotlib loads only now, after training

        try:  # the best model as `imgcls predict` loads it, for the top losses' heatmaps
            predictor = Predictor.from_checkpoint(trainer.run_dir / "best.pt", trainer.device.type)
        except ImgclsError as e:
            LOG.info(f"the report draws no heatmaps: {e}")
            predictor = None
        data, split = trainer.data, trainer.data.test
        write_report(
            trainer.run_dir, data.classes, split.images, split.labels, trainer.test.logits, trainer.progress.history,
            trainer.cfg.to_dict(), summary, data, trainer.val_logits, predictor,
        )  # fmt: skip


def format_epoch(row: dict, epochs: int) -> str:
    """An epoch's line; a multi-label run's accuracies are exact matches, and its val mAP picks the best epoch."""
    mean_ap = f" mAP {row['val_map']:.4f}" if "val_map" in row else ""
    return (
        f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}{mean_ap}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_second']:,.0f} img/s" + ("  *best*" if row["best"] else "")
    )


def standard(progress: bool = True, report: bool = True, extra=()) -> Callbacks:
    """What every run has: the epoch lines, the progress bar and the report unless switched off, then `extra`."""
    return Callbacks([EpochLog(), *([ProgressBar()] if progress else []), *([Report()] if report else []), *extra])
