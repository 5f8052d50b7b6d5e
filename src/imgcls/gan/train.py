"""Training a GAN: the data, the run folder, and the hot loop (a discriminator step, then a generator step).

Loss: hinge (SNGAN, BigGAN). The discriminator pushes real scores above +1 and fake ones below -1 and stops pushing
once they are there, so it cannot run away from the generator; spectral norm in every discriminator layer bounds
its slope. Together they train stably without WGAN-GP's gradient penalty, whose double backward would about double
the cost of each discriminator step on a CPU. Conditional GANs add AC-GAN's auxiliary classifier: the discriminator's
class head learns the real images' classes and the generator is also trained to make its images classified as the class
asked for, the class signal that made short runs recognisable (bench/RESULTS.md). The generator that is sampled and
saved is an EMA of its weights.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.checkpoint import atomic_save
from imgcls.data import dataset_name, load_dataset
from imgcls.data.augment import random_flip
from imgcls.data.core import Dataset
from imgcls.device import amp_dtype, autocast, pick_device
from imgcls.errors import ImgclsError
from imgcls.files import write_json
from imgcls.gan.models import MAX_SIDE, Discriminator, Generator
from imgcls.gan.sample import FORMAT, class_labels, generate
from imgcls.interrupt import STOP_SIGNALS, CtrlC, Interrupted
from imgcls.models import num_params
from imgcls.rundir import lock_run, new_run_dir, write_rows
from imgcls.training.averaging import WeightAverage
from imgcls.training.trainer import batches_per_epoch

LOG = logging.getLogger(__name__)

LOSS_COLUMNS = ["step", "epoch", "d_loss", "g_loss", "d_real", "d_fake", "d_class", "g_class"]
GRID_PER_CLASS = 8  # fixed-noise images per class in each epoch's grid (64 in all without classes)
MAX_WIDTH, MAX_Z = 512, 4096  # wider doubles to 16,384 channels at 128 px: a generator no machine holds, refused up front
FOLDER_SIZE = 64  # the side folders of mixed or large images are resized to: 128 px would cost 4x the time on a CPU


@dataclass
class GanConfig:
    data: str = "mnist-sample"
    data_dir: str | None = None
    image_size: int | None = None
    epochs: int = 5
    steps: int | None = None  # stop after this many steps in all, even within an epoch
    batch_size: int = 64
    lr: float = 2e-3
    z_dim: int = 128
    width: int = 32
    ema: float = 0.999
    conditional: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def check(self) -> None:
        counts = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "z_dim": self.z_dim,
            "width": self.width,
            "steps": 1 if self.steps is None else self.steps,
        }
        for name, value in counts.items():
            if value < 1:
                raise ImgclsError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not 0 < self.lr < math.inf:
            raise ImgclsError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise ImgclsError(f"--ema must be in [0, 1), got {self.ema}")
        if self.image_size is not None and not (self.image_size % 4 == 0 and 12 <= self.image_size <= MAX_SIDE):
            raise ImgclsError(f"--image-size must be a multiple of 4 from 12 to {MAX_SIDE} px for a GAN, got {self.image_size}")
        if self.width > MAX_WIDTH or self.z_dim > MAX_Z:
            raise ImgclsError(f"--width must be at most {MAX_WIDTH} and --z-dim at most {MAX_Z}, got {self.width} and {self.z_dim}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ImgclsError(f"--precision must be auto, fp32 or bf16 for a GAN, got {self.precision}")


def hinge_losses(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss on real and fake scores."""
    return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()


def training_images(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val together: a GAN has nothing to validate, and more images to learn from help it."""
    return torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels])


class GanTrainer:
    def __init__(self, cfg: GanConfig, data: Dataset, run_dir: Path):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.device = pick_device(cfg.device)
        # fp16 would need loss scaling; GPUs without bf16 train in fp32.
        self.amp = None if amp_dtype(self.device, cfg.precision) == torch.float16 else amp_dtype(self.device, cfg.precision)
        self.num_classes = data.num_classes if cfg.conditional and data.num_classes > 1 else 0
        torch.manual_seed(cfg.seed)
        self.G = Generator(data.shape, self.num_classes, cfg.z_dim, cfg.width).to(self.device)
        self.D = Discriminator(data.shape, self.num_classes, cfg.width).to(self.device)
        # Adam without momentum (beta1 0), as SNGAN and BigGAN use with hinge loss: momentum carries steps into an opponent
        # that has moved. lr 2e-3, 10x theirs: at 2e-4 a few hundred steps on a CPU learned strokes but no digits.
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(0.0, 0.9))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=(0.0, 0.9))
        self.ema = WeightAverage(self.G, cfg.ema)
        self.images, self.labels = training_images(data)
        self.steps_per_epoch = batches_per_epoch(len(self.labels), cfg.batch_size)
        self.total_steps = min(cfg.epochs * self.steps_per_epoch, cfg.steps or math.inf)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.fixed_labels = class_labels(self.num_classes, per_class=GRID_PER_CLASS)
        self.fixed_noise = torch.randn(
            GRID_PER_CLASS * (self.num_classes or GRID_PER_CLASS), cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)
        )
        self.rows: list[dict] = []  # one per step: losses.csv
        self.step = 0
        self.seconds = 0.0
        self.stop_signal: int | None = None

    def request_stop(self, signum: int) -> None:
        self.stop_signal = signum

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One discriminator step and one generator step on the real images at idx; the losses and mean scores, on the device."""
        real = self.images[idx].to(self.device, non_blocking=True)
        if self.data.flips_ok:
            real = random_flip(real, self.generator)
        real = real.float().div_(127.5).sub_(1)
        # Fakes of the real batch's classes: the projection discriminator compares like with like.
        y = self.labels[idx].to(self.device) if self.num_classes else None
        z = torch.randn(len(idx), self.cfg.z_dim, device=self.device, generator=self.generator)
        zero = torch.zeros((), device=self.device)
        with autocast(self.device, self.amp):
            fake = self.G(z, y)
            if self.num_classes:
                d_real, logits = self.D(real, y, logits=True)
                d_class = F.cross_entropy(logits.float(), y)  # on real images only: fakes would teach it their mistakes
            else:
                d_real, d_class = self.D(real, y), zero
            d_real, d_fake = d_real.float(), self.D(fake.detach(), y).float()
            d_loss = hinge_losses(d_real, d_fake)
        self.opt_d.zero_grad(set_to_none=True)
        (d_loss + d_class).backward()
        self.opt_d.step()
        self.D.requires_grad_(False)  # the generator's step needs gradients through D, not for its weights
        with autocast(self.device, self.amp):
            if self.num_classes:
                g_score, logits = self.D(fake, y, logits=True)
                g_class = F.cross_entropy(logits.float(), y)
            else:
                g_score, g_class = self.D(fake, y), zero
            g_loss = -g_score.float().mean()
        self.opt_g.zero_grad(set_to_none=True)
        (g_loss + g_class).backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        self.ema.update(self.G)
        return torch.stack([d_loss, g_loss, d_real.mean(), d_fake.mean(), d_class, g_class]).detach()

    def train_epoch(self, epoch: int) -> None:
        self.G.train()
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch))
        steps = order.split(self.cfg.batch_size)[: min(self.steps_per_epoch, self.total_steps - self.step)]
        start, stats = time.perf_counter(), []
        for idx in steps:
            stats.append(self.train_step(idx))
            self.step += 1
            if self.stop_signal is not None:
                break
        self.seconds += time.perf_counter() - start
        first = self.step - len(stats) + 1
        for step, values in enumerate(torch.stack(stats).tolist(), first):  # one read-back per epoch
            self.rows.append({"step": step, "epoch": epoch + 1, **dict(zip(LOSS_COLUMNS[2:], values))})
        last = self.rows[-1]
        if not all(math.isfinite(last[k]) for k in LOSS_COLUMNS[2:]):
            raise ImgclsError(
                f"the losses became {last['d_loss']} (D) and {last['g_loss']} (G) by step {self.step}: lower --lr (now {self.cfg.lr:g})"
            )

    def fixed_samples(self) -> torch.Tensor:
        """The EMA generator's images of the fixed noise (and classes), uint8, the same every epoch."""
        return generate(self.ema.module, self.fixed_noise, self.fixed_labels, self.device)

    def save(self) -> None:
        """generator.pt, the EMA generator that `imgcls generate` draws from, and last.pt, the whole state."""
        meta = {
            "format": FORMAT, "shape": list(self.data.shape), "classes": list(self.data.classes), "num_classes": self.num_classes,
            "z_dim": self.cfg.z_dim, "width": self.cfg.width, "config": asdict(self.cfg), "step": self.step,
        }  # fmt: skip
        cpu = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()}  # noqa: E731
        atomic_save({**meta, "state_dict": cpu(self.ema.module)}, self.run_dir / "generator.pt")
        state = {"generator": cpu(self.G), "discriminator": cpu(self.D), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}
        atomic_save({**meta, "state_dict": cpu(self.ema.module), **state}, self.run_dir / "last.pt")
        write_rows(self.run_dir / "losses.csv", LOSS_COLUMNS, self.rows)

    def fit(self) -> dict:
        from imgcls.gan.report import save_grid

        with CtrlC(on_press=self.request_stop, signals=STOP_SIGNALS):
            for epoch in range(self.epochs):
                self.train_epoch(epoch)
                save_grid(self.fixed_samples(), self.run_dir / "samples" / f"epoch_{epoch + 1:03d}.png", GRID_PER_CLASS)
                self.save()
                last = self.rows[-1]
                LOG.info(
                    f"epoch {epoch + 1}/{self.epochs}  step {self.step}/{self.total_steps}  D loss {last['d_loss']:.3f} "
                    f"G loss {last['g_loss']:.3f}  D(real) {last['d_real']:+.2f} D(fake) {last['d_fake']:+.2f}  {self.seconds:.1f}s"
                )
                if self.stop_signal is not None:
                    raise Interrupted(self.run_dir, self.stop_signal)
        return {
            "dataset": self.data.name, "classes": self.data.classes, "conditional": bool(self.num_classes), "shape": list(self.data.shape),
            "loss": "hinge", "steps": self.step, "epochs": self.epochs, "train_images": len(self.labels),
            "train_seconds": round(self.seconds, 3), "images_per_second": round(self.step * self.cfg.batch_size / max(self.seconds, 1e-9), 1),
            "generator_params": num_params(self.G), "discriminator_params": num_params(self.D), "device": str(self.device),
            "precision": str(self.amp).removeprefix("torch.") if self.amp else "fp32",
        }  # fmt: skip


def train_gan(cfg: GanConfig, out: Path | None = None, judge: str | None = None, judge_images: int = 1000) -> tuple[Path, dict]:
    """A new GAN run: load the data, train, then write the per-class grid, the loss plot, the judge's verdict and report.html."""
    from imgcls.gan import report

    cfg.check()
    judge_predictor = report.open_judge(judge, cfg.device) if judge else None  # a bad --judge fails before training
    data = load_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed, image_size=cfg.image_size, default_size=FOLDER_SIZE)
    if judge_predictor:
        if not (cfg.conditional and data.num_classes > 1):
            raise ImgclsError("--judge measures per-class accuracy, which needs a class-conditional GAN: drop --judge or --no-conditional")
        report.check_judge(judge_predictor, data.classes, data.shape)
    run_dir = new_run_dir(dataset_name(cfg.data), "gan", out)
    with lock_run(run_dir):
        trainer = GanTrainer(cfg, data, run_dir)
        write_json(run_dir / "config.json", asdict(cfg))
        kind = f"conditional on {data.num_classes} classes" if trainer.num_classes else "unconditional"
        LOG.info(
            f"run {run_dir}\ndata {data.name}: {len(trainer.labels):,} training images, {'x'.join(map(str, data.shape))}, {kind}\n"
            f"GAN: generator {num_params(trainer.G):,} params, discriminator {num_params(trainer.D):,} (spectral norm), hinge loss"
            f"{' + auxiliary classifier' if trainer.num_classes else ''}, "
            f"Adam lr {cfg.lr:g}, batch {cfg.batch_size}, {trainer.total_steps} steps ({trainer.epochs} epoch{'s' * (trainer.epochs != 1)}), "
            f"EMA {cfg.ema:g}, on {trainer.device}{' (AMP ' + str(trainer.amp).removeprefix('torch.') + ')' if trainer.amp else ''}"
        )
        summary = trainer.fit()
        summary["judge"] = report.judge_run(trainer, judge_predictor, judge_images) if judge_predictor else None
        write_json(run_dir / "summary.json", summary)
        report.write_report(run_dir, trainer, summary)
    if summary["judge"]:
        LOG.info(report.format_judge(summary["judge"]))
    return run_dir, summary
