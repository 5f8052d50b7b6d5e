"""`imgcls train` and `imgcls lr-find`: the train options (from TrainConfig's metadata) in, imgcls.train out."""

import os
import shlex
import signal
import sys

from imgcls.cli.flags import add_config_option, add_train_options, as_flags, given, only_machine_options, writable
from imgcls.errors import ImgclsError
from imgcls.options import SETUP, TRAIN


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: digitnet on the embedded MNIST sample, offline)",
        description="Train a model and write a run folder with config, metrics, best/last checkpoints and a summary. "
        "Unset options get defaults that suit the dataset.",
    )
    add_train_options(p, (SETUP, TRAIN))
    add_config_option(p)
    p.add_argument("--out", metavar="DIR", help="run folder [runs/<dataset>-<model>-<n>]")
    p.add_argument(
        "--resume", metavar="RUN", help="continue a run (its folder or last.pt) with its saved settings; --device and --data-dir may change"
    )
    p.add_argument(
        "--nproc",
        metavar="N",
        type=int,
        help="train on N processes of this machine (torchrun's launcher; DistributedDataParallel, --batch-size is the global batch)",
    )
    add_logger_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "lr-find",
        help="find a learning rate: a short run over growing learning rates, the loss plotted and an lr suggested",
        description="Train a fresh model for --steps steps with the lr growing exponentially from --start-lr to --end-lr "
        "(stopping early once the loss diverges), plot the smoothed loss against the lr, and suggest the lr of its steepest "
        "descent for `imgcls train --lr`. Takes train's data and model options; saves no weights.",
    )
    add_train_options(p, (SETUP,))
    add_config_option(p)
    p.add_argument("--steps", metavar="N", type=int, default=100, help="steps of the probe [100]")
    p.add_argument("--start-lr", metavar="LR", type=float, default=1e-7, help="lr of the first step [1e-7]")
    p.add_argument("--end-lr", metavar="LR", type=float, default=10.0, help="lr of the last step [10]")
    p.add_argument("--out", metavar="DIR", help="folder for lr_find.csv, .json and .png [runs/<dataset>-<model>-lr-find-<n>]")
    p.set_defaults(func=cmd_lr_find)


def add_logger_options(p) -> None:
    """Live curves and tracking: train's, and tune's for each of its trials."""
    p.add_argument(
        "--tensorboard", action="store_true", help="log live curves and sample images to RUN/tensorboard (needs imgcls[tensorboard])"
    )
    p.add_argument(
        "--visdom",
        metavar="URL",
        nargs="?",
        const="http://localhost:8097",
        help="plot live curves on a Visdom server [http://localhost:8097]",
    )
    p.add_argument(
        "--mlflow",
        metavar="URI",
        nargs="?",
        const="",
        help="track the run in MLflow (needs imgcls[mlflow]): the config as params, each epoch's metrics (step = epoch), the "
        "summary's figures, dataset, model and recipe tags, and report.html, the plots, summary.json and best.pt as artifacts; "
        "`imgcls export` adds the exported model. A tracked run resumes into its own MLflow run, with or without --mlflow. "
        "URI: a tracking server (http://host:5000) or a local store [sqlite:///mlflow.db in this folder; with --resume, the run's own]",
    )
    p.add_argument(
        "--mlflow-experiment", metavar="NAME", help="the MLflow experiment of a new tracked run (implies --mlflow) [the dataset's name]"
    )


def cmd_train(args) -> int:
    if args.nproc is not None:
        return launch(args.nproc)
    import imgcls
    from imgcls import distributed

    distributed.quiet_unless_main(distributed.from_env())
    options = given(args, (SETUP, TRAIN))
    callbacks = loggers(args)
    if args.resume:
        only_machine_options(options, args.out, args.config)
        run = imgcls.resume(args.resume, device=args.device, data_dir=args.data_dir, callbacks=callbacks)
    else:
        run = imgcls.train(config=args.config, out=writable("--out", args.out, folder=True), callbacks=callbacks, **options)
    if run.interrupted is not None:
        stop = run.interrupted
        print(f"resume with: imgcls train --resume {stop.run_dir}", file=sys.stderr)  # imgcls.train said where it stopped
        return 128 + stop.signum if isinstance(stop.signum, int) else 1  # the shell's status for a process ended by that signal
    summary = run.summary
    epochs = f"{summary['epochs_run']} epoch{'s' * (summary['epochs_run'] != 1)} in {summary['train_seconds']:.1f}s"
    if summary.get("task") == "multi-label":
        print(f"test mAP {summary['mean_average_precision']:.4f}, F1 micro {summary['f1_micro']:.4f} macro {summary['f1_macro']:.4f}, "
              f"exact match {summary['test_accuracy']:.2%} with the best epoch {summary['best_epoch']} (val mAP {summary['best_val_map']:.4f}); {epochs}")  # fmt: skip
    else:
        print(f"test accuracy {summary['test_accuracy']:.2%} (loss {summary['test_loss']:.4f}) with the best epoch "
              f"{summary['best_epoch']} (val {summary['best_val_accuracy']:.2%}); {epochs}")  # fmt: skip
    print(f"saved to {run.dir}, plots in {run.dir / 'report.html'}")
    return 0


def loggers(args) -> list:
    """Live loggers and MLflow tracking, created before training so a missing package or server is reported at once."""
    from imgcls.training.loggers import TensorBoardLogger, VisdomLogger

    loggers = [*([TensorBoardLogger()] if args.tensorboard else []), *([VisdomLogger(args.visdom)] if args.visdom else [])]
    if args.mlflow is not None or args.mlflow_experiment:
        from imgcls.training.mlflow import MLflowLogger

        loggers.append(MLflowLogger(args.mlflow or None, args.mlflow_experiment))  # --mlflow alone: the default store
    return loggers


def launch(nproc: int) -> int:
    """`imgcls train --nproc N ...`: the same command on N processes of this machine, started by torchrun's launcher
    (which ends them all when one fails); its exit status is theirs."""
    from imgcls.cli.flags import positive

    positive("--nproc", nproc)
    if os.environ.get("WORLD_SIZE"):
        raise ImgclsError("--nproc inside torchrun: drop --nproc (torchrun's --nproc-per-node sets the processes)")
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):  # drop --nproc N / --nproc=N, keep the rest as typed
        if arg == "--nproc":
            del argv[i : i + 2]
            break
        if arg.startswith("--nproc="):
            del argv[i]
            break
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", "--nproc-per-node", str(nproc), "-m", "imgcls", *argv])
    except SignalException as e:  # Ctrl-C or SIGTERM: the processes got it too, and rank 0 said where it saved
        return 128 + e.sigval
    except ChildFailedError as e:  # each failed process printed its own error
        failures = sorted((rank, failure.exitcode) for rank, failure in e.failures.items())
        how = "; ".join(f"rank {rank} {_ended(code)}" for rank, code in failures)
        print(f"imgcls: {len(failures)} of {nproc} training processes failed: {how}", file=sys.stderr)
        codes = {code for _, code in failures}
        return codes.pop() if len(codes) == 1 and min(codes) > 0 else 1
    return 0


def _ended(code: int) -> str:
    """How a process ended, from its exit status (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def cmd_lr_find(args) -> int:
    import imgcls

    options = given(args, (SETUP,))
    result = imgcls.lr_find(config=args.config, out=writable("--out", args.out, folder=True), steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr,
                            **options)  # fmt: skip
    stopped = f"diverged at step {len(result.rows)}, lr {result.rows[-1]['lr']:.2g}" if result.diverged else "did not diverge"
    print(
        f"{len(result.rows)} steps in {result.seconds:.1f}s, {stopped}\n"
        f"lr at the steepest descent of the loss {result.steepest:.2g}; at the minimum loss / 10 {result.minimum:.2g}; "
        f"the recipe's {result.config.lr:g}\n"
        f"suggested lr {result.steepest:.2g} (steepest descent); train with it:\n"
        f"  {shlex.join(['imgcls', 'train', *as_flags(options), '--lr', f'{result.steepest:.2g}'])}\n"
        f"saved lr_find.csv, lr_find.json and lr_find.png in {result.dir}"
    )
    return 0
