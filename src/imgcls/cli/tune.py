"""`imgcls tune`: train's options in (those given are held fixed), imgcls.tune out, the best trial's command printed."""

import shlex
import sys

from imgcls.cli.flags import add_config_option, add_train_options, as_flags, given, positive, writable
from imgcls.cli.train import add_logger_options, loggers
from imgcls.options import SETUP, TRAIN


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="tune hyperparameters with Optuna: trials of `imgcls train`, pruned per epoch, shared by any number of workers",
        description="Search the options of `imgcls train` with Optuna for the best val accuracy (val mAP for multi-label "
        "data). Each trial is a run folder under runs/tune-<study>/trial-<n>; trials that fall behind are stopped per epoch. "
        "The options given are held fixed; the others of the search space are tuned. Workers started with the same "
        "--storage and --study share the study, on one machine or many. At the end, the best trial's `imgcls train` "
        "command is printed and written as a config file (best.yaml) for `imgcls train --config`.",
    )
    add_train_options(p, (SETUP, TRAIN))
    add_config_option(p)
    add_logger_options(p)
    p.add_argument("--trials", metavar="N", type=int, default=20, help="finished (complete or pruned) trials the study should hold, "
                   "counting every worker's [20]")  # fmt: skip
    p.add_argument("--timeout", metavar="SECONDS", type=float, help="start no trial after this many seconds (the running one finishes)")
    p.add_argument(
        "--search", metavar="SPEC|FILE",
        help="what to search, instead of the recipe's space (lr x/÷5, weight decay x/÷10, half and double the batch, label "
        "smoothing 0-0.3, and the recipe's shifts, rotation and crops up to twice): NAME=LOW:HIGH[:log] or NAME=A|B|C, "
        "comma-separated (lr=1e-3:1e-1:log,weight_decay=0:1e-3,batch_size=256|512), or a YAML/JSON file mapping each "
        "option to {low, high, log} or {choices: [...]}",
    )  # fmt: skip
    p.add_argument("--storage", metavar="URL", help="Optuna storage shared by the workers: sqlite:///FILE, "
                   "postgresql://USER:PASSWORD@HOST/DB, mysql+pymysql://... [sqlite:///runs/tune-<study>/study.db]")  # fmt: skip
    p.add_argument("--study", metavar="NAME", help="the study's name: running the command again continues it [<data>-<model>]")
    p.add_argument(
        "--pruner", choices=("median", "hyperband", "none"), default="median",
        help="stop trials early: median stops a trial below the median of the others at the same epoch (from the 5th "
        "trial, after the first third of the epochs); hyperband stops more, sooner [median]",
    )  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="the study's folder: trial runs, study.db, tune.html, best.yaml [runs/tune-<study>]")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    import imgcls

    positive("--trials", args.trials)
    positive("--timeout", args.timeout, integer=False, optional=True)
    result = imgcls.tune(
        config=args.config, trials=args.trials, timeout=args.timeout, search=args.search, storage=args.storage, study=args.study,
        pruner=args.pruner, out=writable("--out", args.out, folder=True), callbacks=loggers(args), **given(args, (SETUP, TRAIN)),
    )  # fmt: skip
    states = [t["state"] for t in result.trials]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING") if s in states)
    print(f"study {result.study.study_name}: {len(states)} trials ({counts}); report in {result.report}")
    if result.best is not None:
        best, what = result.best, result.objective.removeprefix("best_").replace("_", " ")

        def figures(trial: dict) -> str:
            value = f"{trial['value']:.2%}" if what == "val accuracy" else f"{trial['value']:.4f}"
            return f"{what} {value}" + (f", test accuracy {trial['test_accuracy']:.2%}" if trial.get("test_accuracy") is not None else "")

        if result.defaults is not None and result.defaults["number"] != best["number"]:
            print(f"the recipe's settings: trial {result.defaults['number']}, {figures(result.defaults)}")
        print(f"best: trial {best['number']}, {figures(best)} ({best['run']})\n"
              f"train it with:\n  {shlex.join(['imgcls', 'train', *as_flags(result.best_options)])}\n"
              f"or: imgcls train --config {result.config_file}")  # fmt: skip
    if result.interrupted is not None:
        stop = result.interrupted
        print(f"stopped ({stop.why}); the study is kept in {result.storage}: run the same command to continue it", file=sys.stderr)
        return 128 + stop.signum if isinstance(stop.signum, int) else 1
    return 0
