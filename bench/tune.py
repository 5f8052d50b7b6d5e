"""How far `imgcls tune` gets past a recipe's own settings, and what pruning saves: one study of --trials trials on the
CIFAR-10 JPEG folder with the quick recipe, run by --workers `imgcls tune` processes sharing one SQLite storage (each
with cores/workers threads). The study's first trial is the recipe's own settings, so both sides come from one study.

    python bench/tune.py --data-dir ../shared/data [--trials 20] [--workers 2] [--out /tmp/tune-bench]

Prints the recipe's and the best trial's val and test accuracy, the trials pruned, and the epochs and seconds of
training spent against the same trials run to the end.
"""

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--out", default="/tmp/tune-bench")
    args = parser.parse_args()
    data = Path(args.data_dir) / "cifar10-jpeg"
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists: remove it or give another --out")
    out.mkdir(parents=True)
    storage, study = f"sqlite:///{out.resolve() / 'study.db'}", "cifar10-quick"
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    command = [sys.executable, "-m", "imgcls", "tune", "--data", str(data), "--recipe", args.recipe, "--trials", str(args.trials),
               "--storage", storage, "--study", study, "--pruner", args.pruner, "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    with contextlib.ExitStack() as logs:
        workers = []
        for i in range(args.workers):
            log = logs.enter_context(open(out / f"worker-{i}.log", "w"))
            env = {**os.environ, "OMP_NUM_THREADS": threads}
            workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
            time.sleep(5 if i == 0 else 0)  # the first creates the study and enqueues the recipe's settings
        codes = [w.wait() for w in workers]
    wall = time.perf_counter() - started
    if any(codes):
        sys.exit(f"workers exited with {codes}: see {out}/worker-*.log")

    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    recipe = next(t for t in complete if t.user_attrs.get("recipe_defaults"))
    best = max(complete, key=lambda t: t.value)
    epochs = max(t.user_attrs["epochs_run"] for t in complete)
    spent_epochs = sum(t.user_attrs["epochs_run"] for t in complete + pruned)
    spent_seconds = sum(t.user_attrs["train_seconds"] for t in complete + pruned)
    ranked = sorted(complete, key=lambda t: -t.value)
    print(f"{len(trials)} trials ({len(complete)} complete, {len(pruned)} pruned) by {args.workers} workers in {wall / 60:.1f} min")
    print(f"recipe's settings (trial {recipe.number}): val {recipe.value:.2%}, test {recipe.user_attrs['test_accuracy']:.2%}; "
          f"rank {ranked.index(recipe) + 1} of {len(complete)} complete")  # fmt: skip
    print(f"best (trial {best.number}): val {best.value:.2%}, test {best.user_attrs['test_accuracy']:.2%}, params {best.params}")
    unpruned = len(complete + pruned) * epochs
    print(f"training spent: {spent_epochs} epochs of {unpruned} unpruned ({spent_epochs / unpruned:.0%}), {spent_seconds:.0f} s "
          f"against about {spent_seconds / spent_epochs * unpruned:.0f} s at the same seconds per epoch")  # fmt: skip
    for t in sorted(trials, key=lambda t: t.number):
        value = f"{t.value:.4f}" if t.value is not None else "-"
        print(f"  trial {t.number:>2} {t.state.name:<8} val {value}  epochs {t.user_attrs.get('epochs_run')}  "
              f"{t.user_attrs.get('train_seconds', 0):.0f} s  {t.params}")  # fmt: skip


if __name__ == "__main__":
    main()
