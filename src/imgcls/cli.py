"""The `imgcls` command line: train, lr-find, evaluate, report, predict, export, serve, datasets, models, gan, generate."""

import argparse
import math
import os
import shlex
import signal
import sys
from pathlib import Path

from imgcls import __version__
from imgcls.autoencode import commands as autoencode_commands
from imgcls.errors import ImgclsError
from imgcls.interrupt import describe, signal_of, stop_signals_raise


def _add_setup(p) -> None:
    """The data, model and optimizer options of `train`, shared with `lr-find` so that both set up the same run."""
    # Every default is None so that the config layer (and --resume) can tell what the user set.
    p.add_argument("--data", metavar="NAME|PATH", help="dataset name (see `imgcls datasets`) or an image folder path [mnist-sample]")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live [$IMGCLS_DATA or a per-user cache folder]")
    p.add_argument("--recipe", choices=["fast", "quick", "accurate"], help="tuned settings for every option left unset (see README) [fast]")
    p.add_argument(
        "--model",
        metavar="NAME",
        help="a built-in, torchvision or timm model (resnet50, tv:resnet18, timm:convnext_nano; see `imgcls models`) "
        "[recipe: digitnet for digits, speednet for small images; photos: resnet18 when its ImageNet weights can be had, else speednet]",
    )
    p.add_argument("--batch-size", metavar="N", type=int, help="images per step [recipe: digits 128, small images 1024, large 64]")
    p.add_argument(
        "--optimizer", choices=["sgd", "adam", "adamw", "muon"],
        help="sgd is SGD with Nesterov momentum (--momentum); muon: Muon for conv filters (--muon-lr), sgd for the rest [recipe: sgd]",
    )  # fmt: skip
    p.add_argument(
        "--muon-lr", metavar="LR", type=float, help="--optimizer muon: the conv filters' peak lr, each filter held at unit norm [0.24]"
    )
    p.add_argument("--weight-decay", metavar="WD", type=float, help="[recipe: 5e-4; another optimizer: sgd 5e-4, adam 0, adamw 0.01]")
    p.add_argument("--momentum", metavar="M", type=float, help="sgd's Nesterov momentum [recipe: 0.85 for small colour images, else 0.9]")
    p.add_argument(
        "--norm-lr-mult",
        metavar="M",
        type=float,
        help="norm layers' parameters learn at lr x M [recipe: 64 for small colour images, else 1]",
    )
    p.add_argument("--label-smoothing", metavar="EPS", type=float, help="[recipe: digits 0.1, others 0.2]")
    p.add_argument("--seed", metavar="N", type=int, help="seed for init, splits, order and augmentation [0]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="[auto]")
    p.add_argument(
        "--dedupe",
        action="store_true",
        default=None,
        help="image folders: keep one copy of each group of exact or near duplicates (in test, else val, else train) and none of a "
        "picture filed under two classes; split.json lists the files dropped and why [off]",
    )
    p.add_argument("--val-fraction", metavar="F", type=float, help="part of train held out for validation when there is no val split [0.1]")
    p.add_argument(
        "--image-size",
        metavar="PX",
        type=int,
        help="resize folder images to this square size [their own size if all share one up to 256 px, else 128 on a CPU, 224 on a GPU]",
    )
    p.add_argument("--weights", metavar="PATH", help="initial weights: a run folder or a .pt/.pth/.safetensors state dict")
    p.add_argument(
        "--pretrained",
        choices=["auto", "on", "off"],
        help="the model's ImageNet weights (torchvision: $TORCH_HOME/hub/checkpoints, timm: the Hugging Face cache): "
        "auto uses them when cached or downloadable [auto]",
    )
    p.add_argument(
        "--lr-mult", metavar="M", type=float, help="starting from weights: the first layers learn at lr/M, rising to lr at the head [100]"
    )
    p.add_argument("--dropout", metavar="P", type=float, help="dropout probability (mlp)")
    p.add_argument("--hidden-size", metavar="N", type=int, help="units per layer and direction (rnn, lstm, gru) [128]")
    p.add_argument("--layers", metavar="N", type=int, help="stacked recurrent layers (rnn, lstm, gru) [1]")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, help="also read the rows bottom to top (rnn, lstm, gru) [off]")
    p.add_argument(
        "--pool",
        choices=["last", "mean", "max"],
        help="into the classifier: the max or mean of the outputs over the rows, or the last hidden state (rnn, lstm, gru) [max]",
    )
    p.add_argument(
        "--whiten",
        action=argparse.BooleanOptionalAction,
        help="speednet: frozen stem whitening 2x2 patches of the training images [recipe]",
    )
    p.add_argument("--width", metavar="N", type=int, help="speednet: channels of the first conv group, the others 4x [recipe]")
    p.add_argument("--dirac", action=argparse.BooleanOptionalAction, help="speednet: 3x3 convs initialised as the identity [recipe]")
    p.add_argument("--bn-scale", action=argparse.BooleanOptionalAction, help="speednet: batch norms with a learnt scale [recipe]")
    p.add_argument(
        "--logit-scale",
        metavar="F",
        type=float,
        help="speednet: a fixed factor on the logits [recipe: 1/9 for small colour images, else 1]",
    )
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, help="random augmentation of training batches [on]")
    p.add_argument("--crop-padding", metavar="PX", type=int, help="random shifts of up to this many pixels [recipe]")
    p.add_argument(
        "--pad-mode", choices=["zeros", "reflect"], help="how shifts fill the border [recipe: reflect for small colour images, else zeros]"
    )
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, help="random horizontal flips [on, off for digits and greyscale]")
    p.add_argument(
        "--alternate-flips", action=argparse.BooleanOptionalAction, help="with --flip: each image mirrored on every other epoch [recipe]"
    )
    p.add_argument("--rotate", metavar="DEG", type=float, help="random rotation range in degrees [recipe: accurate digits 5, else 0]")
    p.add_argument(
        "--crop-scale",
        metavar="F",
        type=float,
        help="random resized crops of at least this part of the area [recipe: fine-tuned photos 0.35, else 1: none]",
    )
    p.add_argument(
        "--clip-grad",
        metavar="NORM",
        type=float,
        help="clip each step's gradient norm to NORM; 0 = off [recipe: rnn, lstm, gru 1, others off]",
    )
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype [auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), fp16 on older GPUs, else fp32]",
    )  # fmt: skip


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: digitnet on the embedded MNIST sample, offline)",
        description="Train a model and write a run folder with config, metrics, best/last checkpoints and a summary. "
        "Unset options get defaults that suit the dataset.",
    )
    _add_setup(p)
    p.add_argument("--epochs", metavar="N", type=int, help="epochs to train [recipe: sized by the number of training images]")
    p.add_argument(
        "--lr", metavar="LR", type=float, help="(peak) learning rate [recipe; another model or optimizer: sgd 0.05, adam/adamw 0.004]"
    )
    p.add_argument(
        "--schedule",
        choices=["cosine", "onecycle", "linear", "step", "none"],
        help="learning-rate schedule; linear: up from lr/5 over the first 23%%, down to 7%% [recipe]",
    )
    p.add_argument(
        "--patience",
        metavar="N",
        type=int,
        help="stop after this many epochs without a better val accuracy (or the same at a lower loss); 0 = off [0]",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="evaluate on each image and its mirror image [on where flips are, off for digits]",
    )
    p.add_argument("--tta-shift", metavar="PX", type=int, help="also evaluate on views shifted by +-PX pixels diagonally; 0 = off [recipe]")
    p.add_argument(
        "--ema", metavar="DECAY", type=float, help="evaluate and save an EMA of the weights with this decay (e.g. 0.99); 0 = off [0]"
    )
    p.add_argument(
        "--lookahead",
        action=argparse.BooleanOptionalAction,
        help="every 5 steps set the weights to their running average, pulled harder as the run ends (airbench's) [recipe]",
    )
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model (pays off on GPUs for long runs) [off]"
    )
    p.add_argument("--out", metavar="DIR", help="run folder [runs/<dataset>-<model>-<n>]")
    p.add_argument(
        "--freeze-epochs",
        metavar="N",
        type=int,
        help="starting from weights: epochs of the head alone on the frozen backbone's cached features, before --epochs of everything [5]",
    )
    p.add_argument(
        "--resume", metavar="RUN", help="continue a run (its folder or last.pt) with its saved settings; --device and --data-dir may change"
    )
    p.add_argument(
        "--nproc",
        metavar="N",
        type=int,
        help="train on N processes of this machine (torchrun's launcher; DistributedDataParallel, --batch-size is the global batch)",
    )
    p.add_argument(
        "--sync-bn", action=argparse.BooleanOptionalAction, help="several processes: batch norm over the global batch (CUDA) [off]"
    )
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
    p.set_defaults(func=cmd_train)


def _add_lr_find(sub) -> None:
    p = sub.add_parser(
        "lr-find",
        help="find a learning rate: a short run over growing learning rates, the loss plotted and an lr suggested",
        description="Train a fresh model for --steps steps with the lr growing exponentially from --start-lr to --end-lr "
        "(stopping early once the loss diverges), plot the smoothed loss against the lr, and suggest the lr of its steepest "
        "descent for `imgcls train --lr`. Takes train's data and model options; saves no weights.",
    )
    _add_setup(p)
    p.add_argument("--steps", metavar="N", type=int, default=100, help="steps of the probe [100]")
    p.add_argument("--start-lr", metavar="LR", type=float, default=1e-7, help="lr of the first step [1e-7]")
    p.add_argument("--end-lr", metavar="LR", type=float, default=10.0, help="lr of the last step [10]")
    p.add_argument("--out", metavar="DIR", help="folder for lr_find.csv, .json and .png [runs/<dataset>-<model>-lr-find-<n>]")
    p.set_defaults(func=cmd_lr_find)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test a trained model: loss, accuracy, per-class accuracy, confusion matrix")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--data", metavar="NAME|PATH", help="dataset name or folder [the one the model was trained on]")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="[test]")
    p.add_argument("--batch-size", metavar="N", type=int, help="images per batch [by image size: 1,024 at 32 px, 170 at 128 px]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--out", metavar="DIR", help="folder for confusion_matrix.csv and evaluation.json [the run folder]")
    p.set_defaults(func=cmd_evaluate)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)draw a run's plots and report.html from its best checkpoint")
    p.add_argument("run", metavar="RUN", help="a run folder made by `imgcls train`")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument("--batch-size", metavar="N", type=int, help="images per batch [by image size: 1,024 at 32 px, 170 at 128 px]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.set_defaults(func=cmd_report)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files, folders or globs with a trained model",
        description="Print the top classes of each image, preprocessed exactly as the model's training images were. "
        "Unreadable files are reported and the rest still predicted (exit status 1 when any was unreadable).",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt), a .pt file, or an exported .onnx file")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, folders (searched recursively) or glob patterns ('**' recurses)")
    p.add_argument("--top-k", metavar="K", type=int, default=5, help="classes shown per image [5]")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output on stdout [table]")
    p.add_argument("--batch-size", metavar="N", type=int, default=256, help="images decoded and predicted at a time [256]")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="onnx runs the run's `imgcls export` model [torch]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="torch backend device [auto]")
    p.add_argument("--plot", metavar="PATH", help=f"also save a figure of the first {PLOT_LIMIT} images with their probability bars")
    p.set_defaults(func=cmd_predict)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript, checked against PyTorch",
        description="Export with a dynamic batch size, compare its logits with PyTorch's on test images of the run's data "
        "(fails above --tolerance, writing nothing), and store the preprocessing next to it in NAME.json.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--format", default="onnx", metavar="onnx|torchscript", help="[onnx]")
    p.add_argument("--out", metavar="PATH", help="model file [next to the checkpoint: best.onnx or best.torchscript.pt]")
    p.add_argument("--tolerance", metavar="T", type=float, default=1e-3, help="largest allowed abs difference on logits [1e-3]")
    p.add_argument("--parity-images", metavar="N", type=int, default=64, help="test images the parity check runs on [64]")
    p.set_defaults(func=cmd_export)


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page and JSON API to try a trained model (FastAPI + uvicorn)",
        description="Serve a page at / (upload an image or, for 1-channel models, draw a digit) and a JSON API: "
        "POST /predict (multipart field 'file'), GET /model, GET /health.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt), a .pt file, or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="[8000]")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="[torch]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="torch backend device [auto]")
    p.add_argument("--top-k", metavar="K", type=int, default=5, help="classes returned per image [5]")
    p.add_argument("--max-upload-mb", metavar="MB", type=float, default=10, help="largest request accepted [10]")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--upload-timeout", metavar="S", type=float, default=30, help="408 for an upload that sends nothing for S seconds [30]")
    p.set_defaults(func=cmd_serve)


def _add_datasets(sub) -> None:
    p = sub.add_parser(
        "datasets",
        help="list the named datasets, --show one (class counts and a grid of samples) or --check its health",
        description="List the named datasets. --show prints a dataset's class counts and saves a grid of samples; --check "
        "finds exact and near duplicates (within a class, across classes, across splits), odd files and class imbalance, "
        "and saves health.json and a picture of each finding. Findings are information: the exit status is 0 unless the "
        "data cannot be read.",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument("--show", metavar="NAME|PATH", help="print this dataset's class counts and save a grid of samples per class")
    action.add_argument("--check", metavar="NAME|PATH", help="check this dataset's health: duplicates, leaks, odd files, balance")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument(
        "--label-errors", action="store_true", help="--check: also rank likely label errors, each image predicted by one of --folds "
        "quick models (the fast recipe, from scratch) that did not train on it (confident learning)",
    )  # fmt: skip
    p.add_argument("--folds", metavar="K", type=int, default=5, help="--label-errors: cross-validation folds, models trained [5]")
    p.add_argument("--per-class", metavar="N", type=int, default=8, help="sample images per class in the grid [8]")
    p.add_argument(
        "--out", metavar="PATH", help="--show: the grid's file [<dataset>-samples.png]; --check: the folder for health.json "
        "and the pictures [<dataset>-health]",
    )  # fmt: skip
    p.set_defaults(func=cmd_datasets)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the models with parameter counts, or --summary one of them")
    p.add_argument(
        "--all",
        action="store_true",
        help="list every torchvision classification model and, with timm installed, every timm:NAME (any works as --model)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the torchvision models with ImageNet weights (file name, cached or not) and the timm ones in the Hugging Face cache",
    )
    p.add_argument("--summary", metavar="NAME", help="print layers, output shapes and parameters of this model")
    p.add_argument("--input", default="3,32,32", help="input shape C,H,W for --summary [3,32,32]")
    p.add_argument("--classes", type=int, default=10, help="number of classes for --summary [10]")
    p.set_defaults(func=cmd_models)


def _add_gan(sub) -> None:
    p = sub.add_parser(
        "gan",
        help="train a GAN (DCGAN-style, class-conditional, hinge loss) and draw its images",
        description="Train a generator and a spectrally normalised discriminator with the hinge loss, conditional on the classes "
        "when the data has several. The run folder gets losses.csv (per step), generator.pt and last.pt, a fixed-noise grid per "
        "epoch in samples/, classes.png (a row per class), losses.png, summary.json and report.html.",
    )
    p.add_argument("--data", metavar="NAME|PATH", default="mnist-sample", help="dataset name or image folder path [mnist-sample]")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument("--image-size", metavar="PX", type=int, help="resize folder images to this square size [their own, else 64]")
    p.add_argument("--epochs", metavar="N", type=int, default=5, help="passes over the training images [5]")
    p.add_argument("--steps", metavar="N", type=int, help="stop after N steps in all (a short run) [the epochs']")
    p.add_argument("--batch-size", metavar="N", type=int, default=64, help="real (and as many generated) images per step [64]")
    p.add_argument("--lr", metavar="LR", type=float, default=2e-3, help="Adam learning rate of both networks [2e-3]")
    p.add_argument("--z-dim", metavar="N", type=int, default=128, help="size of the generator's noise [128]")
    p.add_argument(
        "--width", metavar="N", type=int, default=32, help="channels of the largest feature maps, doubling at each smaller one [32]"
    )
    p.add_argument(
        "--ema", metavar="DECAY", type=float, default=0.999, help="the saved generator is an EMA of its weights; 0 = the last [0.999]"
    )
    p.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=True, help="condition on the classes [on]")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="[0]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="[auto]")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="[auto: bf16 where native, else fp32]")
    p.add_argument("--out", metavar="DIR", help="run folder [runs/<dataset>-gan-<n>]")
    p.add_argument(
        "--judge", metavar="RUN", help="an imgcls classifier run on the same data: its accuracy and confidence on generated images"
    )
    p.add_argument(
        "--judge-images", metavar="N", type=int, default=1000, help="generated images the judge sees, as many of each class [1000]"
    )
    p.set_defaults(func=cmd_gan)

    p = sub.add_parser("generate", help="draw new images from a GAN run's generator into one grid PNG")
    p.add_argument("run", metavar="RUN", help="a run folder made by `imgcls gan` (or its generator.pt)")
    p.add_argument("--n", metavar="N", type=int, default=64, help="images to draw [64]")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="draw only this class [each class in turn, a column each]")
    p.add_argument("--out", metavar="PATH", default="generated.png", help="the grid's PNG file [generated.png]")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the noise: the same seed draws the same images [0]")
    p.add_argument("--judge", metavar="RUN", help="an imgcls classifier run on the same data: print its per-class accuracy and confidence")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="[auto]")
    p.set_defaults(func=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Fast, batteries-included image classification on PyTorch.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_train,
        _add_lr_find,
        _add_evaluate,
        _add_report,
        _add_predict,
        _add_export,
        _add_serve,
        _add_datasets,
        _add_models,
        _add_gan,
    ):
        add(sub)
    autoencode_commands.add_parsers(sub)  # autoencode, embed
    return parser


SETUP_KEYS = [
    "data", "data_dir", "recipe", "model", "batch_size", "optimizer", "weight_decay", "label_smoothing", "seed", "device",
    "val_fraction", "image_size", "dropout", "hidden_size", "layers", "bidirectional", "pool", "clip_grad", "augment", "crop_padding",
    "flip", "rotate", "crop_scale", "precision", "weights", "pretrained", "lr_mult", "whiten", "dirac", "bn_scale", "alternate_flips",
    "momentum", "norm_lr_mult", "muon_lr", "width", "logit_scale", "pad_mode", "dedupe",
]  # fmt: skip
TRAIN_KEYS = [
    *SETUP_KEYS, "epochs", "lr", "schedule", "patience", "tta", "tta_shift", "ema", "lookahead", "compile", "freeze_epochs", "sync_bn",
]  # fmt: skip


def cmd_train(args) -> int:
    if args.nproc is not None:
        return launch(args.nproc)
    from imgcls import distributed
    from imgcls.config import TrainConfig
    from imgcls.engine import Interrupted, resume, train

    distributed.quiet_unless_main(distributed.from_env())

    given = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k) is not None}
    loggers = _loggers(args)
    try:
        if args.resume:
            fixed = [k for k in given if k not in ("device", "data_dir")]  # these two may change with the machine
            if fixed or args.out:
                flags = ", ".join("--" + k.replace("_", "-") for k in [*fixed, *(["out"] if args.out else [])])
                raise ImgclsError(f"--resume continues with the run's saved settings: drop {flags}")
            run_dir, summary = resume(args.resume, device=args.device, data_dir=args.data_dir, loggers=loggers)
        else:
            run_dir, summary = train(TrainConfig(**given), out=writable("--out", args.out, folder=True), loggers=loggers)
    except Interrupted as stop:
        print(
            f"\ninterrupted ({signal.Signals(stop.signum).name}): progress saved in {stop.run_dir / 'last.pt'}\n"
            f"resume with: imgcls train --resume {stop.run_dir}",
            file=sys.stderr,
        )
        return 128 + stop.signum  # the shell's status for a process ended by that signal
    finally:
        for logger in loggers:
            logger.close()
    print(
        f"test accuracy {summary['test_accuracy']:.2%} (loss {summary['test_loss']:.4f}) with the best epoch "
        f"{summary['best_epoch']} (val {summary['best_val_accuracy']:.2%}); {summary['epochs_run']} epoch{'s' * (summary['epochs_run'] != 1)} in {summary['train_seconds']:.1f}s\n"
        f"saved to {run_dir}, plots in {run_dir / 'report.html'}"
    )
    return 0


def launch(nproc: int) -> int:
    """`imgcls train --nproc N ...`: the same command on N processes of this machine, started by torchrun's launcher
    (which ends them all when one fails); its exit status is theirs."""
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
    from imgcls.config import TrainConfig
    from imgcls.lr_find import lr_find

    given = {k: getattr(args, k) for k in SETUP_KEYS if getattr(args, k) is not None}
    run_dir, result, cfg = lr_find(TrainConfig(**given), writable("--out", args.out, folder=True), args.steps, args.start_lr, args.end_lr)
    stopped = f"diverged at step {len(result.rows)}, lr {result.rows[-1]['lr']:.2g}" if result.diverged else "did not diverge"
    print(
        f"{len(result.rows)} steps in {result.seconds:.1f}s, {stopped}\n"
        f"lr at the steepest descent of the loss {result.steepest:.2g}; at the minimum loss / 10 {result.minimum:.2g}; "
        f"the recipe's {cfg.lr:g}\n"
        f"suggested lr {result.steepest:.2g} (steepest descent); train with it:\n"
        f"  {shlex.join(['imgcls', 'train', *_flags(given), '--lr', f'{result.steepest:.2g}'])}\n"
        f"saved lr_find.csv, lr_find.json and lr_find.png in {run_dir}"
    )
    return 0


def _flags(given: dict) -> list[str]:
    """Options back as command-line arguments, so that a printed command repeats what the user set."""
    flags = []
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        flags += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return flags


def _loggers(args) -> list:
    """Live loggers, created before training so a missing package or server is reported at once."""
    from imgcls.loggers import TensorBoardLogger, VisdomLogger

    return [*([TensorBoardLogger()] if args.tensorboard else []), *([VisdomLogger(args.visdom)] if args.visdom else [])]


def writable(option: str, path: str | None, folder: bool = False) -> Path | None:
    """An output path option, refused before any work when a file stands where a folder is needed (or, for a file
    option, a folder where the file would go)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise ImgclsError(f"{option} {path} is a folder: give a file name in it, such as {path / 'out.png'}")
    for above in path.parents if not folder else (path, *path.parents):
        if above.exists() and not above.is_dir():
            where = "is a file, not a folder" if above == path else f"lies under {above}, which is a file"
            raise ImgclsError(f"{option} {path} {where}: choose another {option}")
    return path


def positive(option: str, value: float | None, integer: bool = True, optional: bool = False) -> None:
    """Numbers (NaN and infinity excluded) that must be above zero, or at least 1 for counts; None where `optional`."""
    if optional and value is None:
        return
    if not (value >= 1 if integer else 0 < value < math.inf):
        raise ImgclsError(f"{option} must be {'at least 1' if integer else 'a positive number'}, got {value}")


def cmd_report(args) -> int:
    from imgcls.report import PLOTS, report_run

    positive("--batch-size", args.batch_size, optional=True)
    path = report_run(args.run, args.data_dir, args.device, args.batch_size)
    print(f"saved {', '.join(PLOTS)} and {path.name} in {path.parent}\nopen {path}")
    return 0


def cmd_evaluate(args) -> int:
    from imgcls.evaluation import evaluate_checkpoint, format_confusion, format_per_class, write_confusion_csv
    from imgcls.files import write_json

    positive("--batch-size", args.batch_size, optional=True)
    out = writable("--out", args.out, folder=True)
    ckpt, data, result = evaluate_checkpoint(args.checkpoint, args.data, args.data_dir, args.split, args.device, args.batch_size)
    per_class = result.per_class_accuracy(data.classes)
    images = int(result.confusion.sum())
    print(f"{data.name} {args.split}: {images:,} images, loss {result.loss:.4f}, accuracy {result.accuracy:.2%}\n")
    print(format_per_class(per_class, result.confusion) + "\n")
    print(format_confusion(result.confusion, data.classes))
    out = out or Path(ckpt["path"]).parent
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"confusion_matrix_{args.split}.csv", out / f"evaluation_{args.split}.json"
    write_confusion_csv(result.confusion, data.classes, csv_path)
    write_json(json_path, {
        "checkpoint": ckpt["path"], "data": args.data or ckpt["config"]["data"], "split": args.split, "images": images,
        "loss": result.loss, "accuracy": result.accuracy, "per_class_accuracy": per_class,
    })  # fmt: skip
    print(f"\nsaved {csv_path} and {json_path}")
    return 0


PLOT_LIMIT = 32  # images in the --plot figure; more would not be readable


def cmd_predict(args) -> int:
    import numpy as np
    import torch

    from imgcls.inference import Predictor, collect_files, format_predictions, predict_files

    positive("--top-k", args.top_k)
    positive("--batch-size", args.batch_size)
    writable("--plot", args.plot)
    predictor = Predictor.open(args.checkpoint, args.backend, args.device)
    files = collect_files(args.paths)
    results = list(predict_files(predictor, files, args.batch_size, keep_images=PLOT_LIMIT if args.plot else 0))
    print(format_predictions(results, predictor, args.top_k, args.format))
    bad = [r for r in results if r.error is not None]
    for r in bad:
        print(f"imgcls: cannot read {r.file} ({r.error})", file=sys.stderr)
    if bad:
        print(f"imgcls: {len(bad)} of {len(results)} files could not be read", file=sys.stderr)
    shown = [r for r in results if r.image is not None]
    if args.plot and shown:
        from imgcls.report.plots import plot_predictions

        images, probs = torch.from_numpy(np.stack([r.image for r in shown])), torch.stack([r.probs for r in shown])
        plot_predictions(images, probs, predictor.classes, args.plot, titles=[r.file.name for r in shown], top_k=args.top_k)
        print(f"saved {args.plot}", file=sys.stderr)
    return 1 if bad else 0


def cmd_export(args) -> int:
    from imgcls.export import export

    if not 0 <= args.tolerance < math.inf:
        raise ImgclsError(f"--tolerance must be zero or a positive number, got {args.tolerance}")
    positive("--parity-images", args.parity_images)
    writable("--out", args.out)
    result = export(args.checkpoint, args.format, args.out, args.tolerance, args.parity_images)
    print(
        f"parity on {result.inputs} (batches of 1 and all): max abs difference on logits {result.max_abs_diff:.3g} (tolerance {args.tolerance:g})"
    )
    print(f"saved {result.path} and {result.metadata}")
    return 0


def cmd_serve(args) -> int:
    from imgcls.server import serve

    positive("--max-upload-mb", args.max_upload_mb, integer=False)
    serve(args.checkpoint, host=args.host, port=args.port, backend=args.backend, device=args.device, top_k=args.top_k,
          max_bytes=int(args.max_upload_mb * 2**20), access_log=args.access_log, upload_timeout=args.upload_timeout)  # fmt: skip
    return 0


def cmd_datasets(args) -> int:
    from imgcls.data import DATASETS

    if args.label_errors and not args.check:
        raise ImgclsError("--label-errors goes with --check: imgcls datasets --check NAME_OR_FOLDER --label-errors")
    if args.show:
        return show_dataset(args)
    if args.check:
        return check_health(args)
    width = max(len(n) for n in DATASETS)
    for name, info in DATASETS.items():
        print(f"{name:<{width}}  {info.description}")
    print(f"{'PATH':<{width}}  any folder of class subfolders (optionally split into train/ val/ test/)")
    return 0


MAX_PER_CLASS = 100  # the grid is half an inch per image: wider stops being viewable (and past ~1,300 Agg cannot draw it)


def show_dataset(args) -> int:
    from imgcls.data import dataset_name, load_dataset
    from imgcls.report import format_class_counts, write_preview

    if not 1 <= args.per_class <= MAX_PER_CLASS:
        raise ImgclsError(f"--per-class must be between 1 and {MAX_PER_CLASS}, got {args.per_class}")
    path = writable("--out", args.out) or Path(f"{dataset_name(args.show)}-samples.png")
    data = load_dataset(args.show, data_dir=args.data_dir)
    print(f"{data.name}: {data.num_classes} classes, {'x'.join(map(str, data.shape))} images\n")
    print(format_class_counts(data))
    write_preview(data, path, args.per_class)
    print(f"\nsaved {args.per_class} training images per class to {path}")
    return 0


def check_health(args) -> int:
    from imgcls.data import dataset_name
    from imgcls.data.health import check_dataset
    from imgcls.data.registry import is_folder_spec
    from imgcls.report.health import summary_text, write_findings

    out = writable("--out", args.out, folder=True) or Path(f"{dataset_name(args.check)}-health")
    if args.label_errors:
        from imgcls.crossval import check_folds, cross_validated

        check_folds(args.folds)
    data, health = check_dataset(args.check, args.data_dir)
    if args.label_errors:
        health.label_errors = cross_validated(data, args.folds)
        health.seconds["label_errors"] = health.label_errors.seconds
    written = write_findings(health, out, root=Path(args.check).expanduser() if is_folder_spec(args.check) else None)
    print(summary_text(health))
    seconds = ", ".join(f"{stage} {s:.1f}s" for stage, s in health.seconds.items())
    print(f"\nsaved health.json and {', '.join(written)} in {out} ({seconds})")
    return 0


GAN_KEYS = ["data", "data_dir", "image_size", "epochs", "steps", "batch_size", "lr", "z_dim", "width", "ema", "conditional", "seed",
            "device", "precision"]  # fmt: skip


def cmd_gan(args) -> int:
    from imgcls.engine import Interrupted
    from imgcls.gan.train import GanConfig, train_gan

    positive("--judge-images", args.judge_images)
    cfg = GanConfig(**{k: getattr(args, k) for k in GAN_KEYS if getattr(args, k) is not None})
    try:
        run_dir, summary = train_gan(cfg, writable("--out", args.out, folder=True), args.judge, args.judge_images)
    except Interrupted as stop:
        print(
            f"\ninterrupted ({signal.Signals(stop.signum).name}): generator.pt and last.pt in {stop.run_dir} hold where it stopped",
            file=sys.stderr,
        )
        return 128 + stop.signum
    print(f"{summary['steps']} steps in {summary['train_seconds']:.1f}s; saved to {run_dir}, draw more with: imgcls generate {run_dir}")
    return 0


def cmd_generate(args) -> int:
    from imgcls.device import pick_device
    from imgcls.gan.report import check_judge, format_judge, judge, open_judge, save_grid
    from imgcls.gan.sample import generate, labels_for, load_generator, noise

    positive("--n", args.n)
    out = writable("--out", args.out)
    device = pick_device(args.device)
    G, ckpt = load_generator(args.run, device)
    labels = labels_for(args.n, ckpt, args.class_name)
    judged = open_judge(args.judge, args.device) if args.judge else None
    if judged is not None:
        if labels is None:
            raise ImgclsError("--judge measures per-class accuracy, which needs a class-conditional generator: drop --judge")
        check_judge(judged, ckpt["classes"], ckpt["shape"])
    images = generate(G, noise(args.n, ckpt["z_dim"], args.seed), labels, device)
    conditional_grid = labels is not None and args.class_name is None
    save_grid(images, out, len(ckpt["classes"]) if conditional_grid else math.ceil(math.sqrt(args.n)))
    what = f"of class {args.class_name}" if args.class_name else "a column per class" if conditional_grid else ""
    print(f"saved {args.n} generated images {what} to {out}".replace("  ", " "))
    if judged is not None:
        print(format_judge(judge(judged, images, labels, ckpt["classes"])))
    return 0


def cmd_models(args) -> int:
    from imgcls.models import MODELS, create_model, num_params
    from imgcls.models.summary import summarize

    if args.all or args.pretrained:
        from imgcls.models import timm_models, torchvision_models

        print("\n".join(torchvision_models.listing(pretrained_only=args.pretrained)))
        # The notes go to stderr: stdout stays one model per line, for grep and scripts.
        try:
            timm_lines = timm_models.listing(pretrained_only=args.pretrained)
        except ImportError:
            print("timm's models (--model timm:NAME) need timm: pip install 'imgcls[timm]'", file=sys.stderr)
            return 0
        if timm_lines:
            print("\n".join(timm_lines))
        if args.pretrained:
            from huggingface_hub import constants

            print(
                f"timm: only weights already in the Hugging Face cache ({constants.HF_HUB_CACHE}) are listed; "
                "the other timm models download theirs on first use (--pretrained auto or on)",
                file=sys.stderr,
            )
        return 0
    if args.summary:
        try:
            shape = tuple(int(v) for v in args.input.split(","))
            assert len(shape) == 3 and min(shape) >= 1
        except (ValueError, AssertionError):
            raise ImgclsError(f"--input must be C,H,W sizes of at least 1, such as 3,32,32, got '{args.input}'") from None
        positive("--classes", args.classes)
        print(summarize(create_model(args.summary, shape, args.classes), shape))
        return 0
    width = max(len(n) for n in MODELS)
    print(f"{'model':<{width}}  {'1x28x28':>11}  {'3x32x32':>11}  description")
    for name, info in MODELS.items():
        counts = [f"{num_params(create_model(name, s, 10)):>11,}" for s in ((1, 28, 28), (3, 32, 32))]
        print(f"{name:<{width}}  {counts[0]}  {counts[1]}  {info.description}")
    print(
        "(parameters for 10 classes)\n"
        "any torchvision classification model also works as --model (tv:NAME for one a built-in shadows, such as tv:resnet18),\n"
        "and any timm model as timm:NAME, such as timm:convnext_nano (pip install 'imgcls[timm]'):\n"
        "`imgcls models --all` lists them, `imgcls models --pretrained` those with ImageNet weights and whether these are cached"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # File names need not be UTF-8 on Linux: printed as the bytes they are, as `ls` and `find` print them. Only the
    # process's own stdout: a caller's replacement (a notebook's, a test's capture) is not ours to change.
    if sys.stdout is sys.__stdout__ and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        with stop_signals_raise():
            return args.func(args)
    except ImgclsError as e:
        from imgcls.distributed import errors

        print(f"imgcls: error: {e}", file=errors())
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM or SIGHUP outside the phases that stop at a safe point
        print(f"\nimgcls: {describe(e)}", file=sys.stderr)
        return 128 + signal_of(e)
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(f"imgcls: error: out of memory ({str(e).splitlines()[0][:200] or type(e).__name__}): use a smaller --image-size, "
              "--batch-size or model", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the last resort for what no check foresaw: permissions, a full disk, a file in a folder's place
        where = " -> ".join(str(name) for name in (e.filename, e.filename2) if name is not None)
        print(
            f"imgcls: error: {where + ': ' if where else ''}{e.strerror or e}: check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's on a GPU (OutOfMemoryError), or its CPU allocator's RuntimeError."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(error)
