"""Time to target test accuracy: imgcls's recipes against the tutorial training loop, measured in one run.

    python bench/tta.py --task mnist --data-dir ../shared/data
    python bench/tta.py --task cifar10 --data-dir ../shared/data --baseline-cap 900

CIFAR-10's targets are 90% (fast recipe) and 94% (accurate), with the fast run's time to 85% also printed, and
85% again for the quick recipe, whose shorter schedule gets there sooner.
The clock counts training only (data already in memory, as a user's run after loading): at every check
the model is tested on the test set with the clock stopped, and the first check at or above a target
stops the clock for that target. The test set is read for nothing else. The baseline is the tutorial
way (torchvision dataset + DataLoader with per-sample transforms), checked at the same interval and
stopped at --baseline-cap seconds. Prints a table, then one JSON object as the last line.
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcls.config import TrainConfig, check, fill_defaults
from imgcls.data import load_dataset
from imgcls.device import pick_device
from imgcls.evaluation import predict_logits
from imgcls.interrupt import Interrupted
from imgcls.training.callbacks import Callback
from imgcls.training.trainer import Trainer


@dataclass
class Task:
    data: str  # imgcls dataset spec, relative to --data-dir for folders
    targets: tuple[float, float]  # first (fast recipe, and the baseline), second (accurate recipe)
    check_images: int  # training images between test-set checks, for imgcls and the baseline alike
    baseline_cap: float  # seconds
    milestones: tuple[float, ...] = ()  # lower accuracies whose time the fast recipe's run also reports
    quick_target: float | None = None  # the quick recipe's own run, to this accuracy


TASKS = {
    "mnist": Task("mnist", (0.99, 0.995), 15_000, 900.0),
    "cifar10": Task("cifar10-jpeg", (0.90, 0.94), 45_000, 900.0, milestones=(0.85,), quick_target=0.85),
}


@dataclass
class Curve:
    """Test accuracy against training seconds, and when each target was first reached."""

    targets: tuple[float, ...]
    points: list[tuple[float, int, float]] = field(default_factory=list)  # (train seconds, images seen, test accuracy)
    eval_seconds: float = 0.0

    def add(self, seconds: float, images: int, accuracy: float) -> None:
        self.points.append((seconds, images, accuracy))
        print(f"  {seconds:8.1f}s  {images:>9,} images  test {accuracy:.2%}", flush=True)

    def reached(self, target: float) -> tuple[float, float] | None:
        return next(((s, a) for s, _, a in self.points if round(a, 6) >= target), None)  # 9,000 of 10,000 in float32 is 0.89999998

    @property
    def best(self) -> float:
        return max((a for *_, a in self.points), default=0.0)

    @property
    def done(self) -> bool:
        return all(self.reached(t) for t in self.targets)


class Clock:
    """Training seconds: wall time minus the time spent in checks."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def __call__(self) -> float:
        return time.perf_counter() - self.start - self.paused

    @contextlib.contextmanager
    def pause(self):
        start = time.perf_counter()
        yield
        self.paused += time.perf_counter() - start


# --- imgcls ------------------------------------------------------------------------------------------


def run_imgcls(data, task: Task, recipe: str, targets: tuple[float, ...], seed: int, device: str) -> tuple[Curve, Trainer]:
    cfg = fill_defaults(TrainConfig(data=data.name, recipe=recipe, seed=seed, device=device), data)
    curve, every = Curve(targets), max(1, task.check_images // cfg.batch_size)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, data, Path(run_dir))
        total = trainer.steps_per_epoch * cfg.epochs
        print(f"imgcls, recipe {recipe}: {cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size}, seed {seed}", flush=True)
        clock = Clock()

        class Checkpoints(Callback):
            """The test accuracy every `every` steps, with the clock stopped; a stop once every target is reached."""

            def on_step(self, t: Trainer) -> None:
                step = t.progress.epoch * t.steps_per_epoch + t.progress.step
                if step % every and step != total:
                    return
                seconds = clock()
                with clock.pause():
                    t0 = time.perf_counter()
                    accuracy = t._eval(data.test).accuracy
                    t.model.train()
                    curve.eval_seconds += time.perf_counter() - t0
                curve.add(seconds, step * cfg.batch_size, accuracy)
                if curve.done:
                    t.request_stop()

        trainer.callbacks = Checkpoints()
        with contextlib.suppress(Interrupted):  # stopped once every target was reached
            trainer.fit()
    return curve, trainer


def run_to_target(data, task: Task, recipe: str, target: float, device: str) -> dict:
    """One run of another recipe (seed 0) to its own target: when it got there, or its best accuracy and when it had it."""
    curve, _ = run_imgcls(data, task, recipe, (target,), 0, device)
    hit = curve.reached(target)
    result = {"target": target, "recipe": recipe, "imgcls_seconds": hit and hit[0], "imgcls_accuracy": hit[1] if hit else curve.best}
    if hit is None and curve.points:
        result.update(best_at_seconds=curve.reached(curve.best)[0], train_seconds=curve.points[-1][0])
    return result


def inference_speed(trainer: Trainer, images: torch.Tensor) -> float:
    start = time.perf_counter()
    predict_logits(trainer.model, images, trainer.mean, trainer.std, amp=trainer.amp, channels_last=trainer.channels_last)
    return len(images) / (time.perf_counter() - start)


# --- the tutorial baseline ---------------------------------------------------------------------------


class ExamplesNet(nn.Module):
    """The CNN of pytorch/examples' mnist/main.py."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.relu(self.fc1(torch.flatten(self.dropout1(x), 1)))
        return F.log_softmax(self.fc2(self.dropout2(x)), dim=1)


def baseline_setup(task_name: str, data_dir: Path):
    """(model, optimizer, per-epoch scheduler, train loader, test loader, loss) as the tutorials write them."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    if task_name == "mnist":
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        train = datasets.MNIST(str(data_dir), train=True, download=False, transform=tf)
        test = datasets.MNIST(str(data_dir), train=False, transform=tf)
        model = ExamplesNet()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        return model, optimizer, scheduler, DataLoader(train, 64, shuffle=True), DataLoader(test, 1000), F.nll_loss
    from imgcls.models import create_model

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    root = data_dir / TASKS["cifar10"].data
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    test = datasets.ImageFolder(str(root / "test"), transform=test_tf)
    model = create_model("resnet18", (3, 32, 32), 10)  # the same ResNet-18 as `imgcls train --model resnet18`
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
    loaders = DataLoader(train, 128, shuffle=True, num_workers=2), DataLoader(test, 100, num_workers=2)
    return model, optimizer, scheduler, *loaders, F.cross_entropy


def run_baseline(task_name: str, task: Task, data_dir: Path, cap: float) -> Curve:
    torch.manual_seed(0)
    model, optimizer, scheduler, train_loader, test_loader, loss_fn = baseline_setup(task_name, data_dir)
    curve, clock, seen, next_check = Curve(task.targets[:1]), Clock(), 0, task.check_images

    def test() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        model.train()
        return correct / len(test_loader.dataset)

    print(f"baseline (tutorial loop), capped at {cap:.0f}s", flush=True)
    model.train()
    while True:
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            seen += len(y)
            if seen >= next_check or clock() >= cap:
                next_check += task.check_images
                seconds = clock()
                with clock.pause():
                    t0 = time.perf_counter()
                    curve.add(seconds, seen, test())
                    curve.eval_seconds += time.perf_counter() - t0
                if curve.done or seconds >= cap:
                    return curve
        scheduler.step()


# --- report ------------------------------------------------------------------------------------------


def folder_load_times(root: Path) -> tuple[float, float]:
    """Seconds to load an image folder with an empty decode cache, then from the cache."""
    times = []
    with tempfile.TemporaryDirectory() as cache:
        old, os.environ["IMGCLS_CACHE"] = os.environ.get("IMGCLS_CACHE"), cache
        try:
            for _ in range(2):
                start = time.perf_counter()
                load_dataset(str(root))
                times.append(time.perf_counter() - start)
        finally:
            if old is None:
                del os.environ["IMGCLS_CACHE"]
            else:
                os.environ["IMGCLS_CACHE"] = old
    return times[0], times[1]


def fmt_seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--data-dir", default="../shared/data", help="holds MNIST/raw and cifar10-jpeg/ [../shared/data]")
    parser.add_argument("--repeats", type=int, default=1, help="imgcls runs (seeds 0..N-1); the median time is reported [1]")
    parser.add_argument("--baseline-cap", type=float, help="seconds before the baseline is stopped [900]")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline (its fields become null)")
    parser.add_argument("--no-second", action="store_true", help="skip the accurate recipe's run to the second target")
    parser.add_argument("--no-quick", action="store_true", help="skip the quick recipe's run (CIFAR-10)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    task, data_dir = TASKS[args.task], Path(args.data_dir).resolve()
    spec = task.data if args.task == "mnist" else str(data_dir / task.data)
    check(TrainConfig(data=spec, device=args.device))
    device = pick_device(args.device)

    result: dict = {"task": args.task, "target": task.targets[0], "torch_threads": torch.get_num_threads(), "device": str(device)}
    if args.task == "cifar10":
        result["folder_first_load_seconds"], result["folder_cached_load_seconds"] = folder_load_times(data_dir / task.data)
    start = time.perf_counter()
    data = load_dataset(spec, data_dir=data_dir)
    result["load_seconds"] = round(time.perf_counter() - start, 2)
    print(f"{args.task}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test, loaded in {result['load_seconds']}s")

    runs = [run_imgcls(data, task, "fast", task.targets[:1], seed, args.device) for seed in range(args.repeats)]
    hits = [c.reached(task.targets[0]) for c, _ in runs]
    result["imgcls_runs"] = [{"seconds": h[0] if h else None, "accuracy": h[1] if h else c.best} for h, (c, _) in zip(hits, runs)]
    result["imgcls_seconds"] = statistics.median(h[0] for h in hits) if all(hits) else None
    result["imgcls_accuracy"] = statistics.median(r["accuracy"] for r in result["imgcls_runs"])
    curve, trainer = runs[0]
    for milestone in task.milestones:
        hit = curve.reached(milestone)
        result[f"imgcls_seconds_to_{milestone:g}"] = hit and hit[0]
    # A user's run ends with one test pass, with TTA's views: its time is the part of the checks' time per check.
    result["test_pass_seconds"] = round(curve.eval_seconds / len(curve.points), 1)
    # From the benchmark's clock, which stops during the test-set checks (the Trainer's epoch timer does not).
    seconds, images, _ = curve.points[-1]
    result["train_images_per_second"] = round(images / max(seconds, 1e-9), 1)
    result["inference_images_per_second"] = round(inference_speed(trainer, data.test.images), 1)
    result["imgcls_eval_seconds"] = round(curve.eval_seconds, 1)
    result["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    if task.quick_target and not args.no_quick:
        result["quick"] = run_to_target(data, task, "quick", task.quick_target, args.device)
    if not args.no_second:
        result["second"] = run_to_target(data, task, "accurate", task.targets[1], args.device)

    result.update(baseline_seconds=None, baseline_accuracy=None, speedup=None)
    if not args.no_baseline:
        cap = args.baseline_cap or task.baseline_cap
        base = run_baseline(args.task, task, data_dir, cap)
        hit = base.reached(task.targets[0])
        result["baseline_seconds"] = hit and hit[0]
        result["baseline_accuracy"] = hit[1] if hit else base.best
        result["baseline_cap_seconds"] = cap
        result["baseline_images"] = base.points[-1][1]
        if result["imgcls_seconds"]:
            # Never reached: the cap is a lower bound on the baseline's time, so the speedup is one too.
            result["speedup"] = round((hit[0] if hit else cap) / result["imgcls_seconds"], 1)
            result["speedup_is_lower_bound"] = hit is None
        if hit is None and (imgcls_hit := runs[0][0].reached(base.best)):
            # The baseline stopped short of the target: compare the time to the best accuracy it did reach instead.
            result["imgcls_seconds_to_baseline_accuracy"] = imgcls_hit[0]
            result["speedup_at_baseline_accuracy"] = round(base.reached(base.best)[0] / imgcls_hit[0], 1)

    rows = [("imgcls fast", m, *(runs[0][0].reached(m) or (None, runs[0][0].best))) for m in task.milestones]
    rows.append(("imgcls fast", task.targets[0], result["imgcls_seconds"], result["imgcls_accuracy"]))
    if "quick" in result:
        rows.append(("imgcls quick", result["quick"]["target"], result["quick"]["imgcls_seconds"], result["quick"]["imgcls_accuracy"]))
    if "second" in result:
        rows.append(("imgcls accurate", task.targets[1], result["second"]["imgcls_seconds"], result["second"]["imgcls_accuracy"]))
    if not args.no_baseline:
        rows.append(("baseline", task.targets[0], result["baseline_seconds"], result["baseline_accuracy"]))
    print(f"\n{'run':<16} {'target':>7} {'time to target':>15} {'accuracy':>9}")
    for name, target, seconds, accuracy in rows:
        print(f"{name:<16} {target:>7.1%} {fmt_seconds(seconds):>15} {accuracy:>9.2%}")
    for name in ("quick", "second"):
        if "best_at_seconds" in result.get(name, {}):
            run = result[name]
            print(f"{run['recipe']}: best {run['imgcls_accuracy']:.2%} at {run['best_at_seconds']:.1f}s of its {run['train_seconds']:.1f}s")
    bound = " (at least)" if result.get("speedup_is_lower_bound") else ""
    speedup = "n/a" if result["speedup"] is None else f"{result['speedup']}x{bound}"
    print(f"one test pass (with the recipe's TTA) takes {result['test_pass_seconds']}s more, not in the times above")
    print(
        f"speedup {speedup}; train {result['train_images_per_second']:,} img/s, inference "
        f"{result['inference_images_per_second']:,} img/s, peak memory {result['peak_memory_mb']} MB, {result['torch_threads']} threads on {device}"
    )
    if "speedup_at_baseline_accuracy" in result:
        print(
            f"to the baseline's best {result['baseline_accuracy']:.2%}: imgcls {result['imgcls_seconds_to_baseline_accuracy']:.1f}s, "
            f"{result['speedup_at_baseline_accuracy']}x faster (at least: imgcls is checked every {task.check_images:,} images)"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
