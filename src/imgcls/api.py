"""imgcls's Python API: everything the command line does, as calls that return objects and raise ImgclsError.

import imgcls
run = imgcls.train("mnist-sample", epochs=3)          # or your own nn.Module class and Dataset
run.summary["test_accuracy"]
imgcls.load(run).predict("digit.png")[0].label
"""

import logging
import os
from pathlib import Path

import torch.nn as nn

from imgcls.config import TrainConfig
from imgcls.data.registry import PYTHON, is_python_data
from imgcls.data.user import handed_over
from imgcls.errors import ImgclsError
from imgcls.files import read_json
from imgcls.interrupt import Interrupted
from imgcls.models.user import absolute, is_user_model, spec_of
from imgcls.options import READING
from imgcls.rundir import read_metrics
from imgcls.training.callbacks import Callback, standard

LOG = logging.getLogger("imgcls")


class Run:
    """A run folder as an object (what imgcls.train returns; `Run.open(path)` for an existing one): its files read
    when asked for, so it shows the run as it is on disk."""

    def __init__(self, path: str | os.PathLike, interrupted=None, summary: dict | None = None):
        self.dir = Path(path)
        self.interrupted = interrupted  # imgcls.interrupt.Interrupted when it stopped early (Ctrl-C, a callback): resumable
        self._summary = summary  # what training returned: the summary of a process that writes no files (a torchrun rank)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise ImgclsError(f"{path} is not a run folder (no config.json): pass a folder made by `imgcls train` or imgcls.train")
        return cls(path)

    @property
    def summary(self) -> dict:
        """summary.json: test accuracy and loss, best epoch, seconds, ...; {} until the run has finished."""
        path = self.dir / "summary.json"
        return read_json(path) if path.is_file() else dict(self._summary or {})

    @property
    def history(self) -> list[dict]:
        """One dict per epoch, as metrics.csv."""
        return read_metrics(self.dir / "metrics.csv")

    @property
    def config(self) -> dict:
        """config.json: every setting, the recipe's defaults filled in."""
        return read_json(self.dir / "config.json")

    @property
    def finished(self) -> bool:
        return (self.dir / "summary.json").is_file()

    def predictor(self, device: str | None = None):
        """The run's best model, ready to predict (imgcls.load)."""
        from imgcls.inference import Predictor

        return Predictor.open(self.dir, device=device or "auto")

    def plot(self) -> dict:
        """Matplotlib figures of the run: "curves" (loss and accuracy per epoch) and, once it has finished,
        "confusion_matrix" (of the test set)."""
        from imgcls.report import plots

        figures = {"curves": plots.curves_figure(self.history)}
        confusion = self.dir / "confusion_matrix.csv"
        if confusion.is_file():
            from imgcls.evaluation import read_confusion_csv

            classes, counts = read_confusion_csv(confusion)
            figures["confusion_matrix"] = plots.confusion_figure(counts, classes)
        return figures

    def __repr__(self) -> str:
        summary = self.summary
        state = (
            f"test accuracy {summary['test_accuracy']:.2%}"
            if summary
            else f"stopped ({self.interrupted.why})"
            if self.interrupted
            else "unfinished"
        )
        return f"Run('{self.dir}', {state})"

    def _repr_html_(self) -> str:
        """A notebook shows the run's headline figures and its curves."""
        from imgcls.report.html import escape, image_tag

        summary = self.summary
        facts = [("run", str(self.dir))]
        if summary:
            if summary.get("task") == "multi-label":
                facts += [("test mAP", f"{summary['mean_average_precision']:.4f}"), ("test F1 micro / macro", f"{summary['f1_micro']:.4f} / {summary['f1_macro']:.4f}"),
                          ("best val mAP", f"{summary['best_val_map']:.4f}")]  # fmt: skip
            else:
                facts += [
                    ("test accuracy", f"{summary['test_accuracy']:.2%}"),
                    ("best val accuracy", f"{summary['best_val_accuracy']:.2%}"),
                ]
            facts += [
                ("best epoch", f"{summary['best_epoch']} of {summary['epochs_run']}"), ("training", f"{summary['train_seconds']:.1f} s"),
                ("model", f"{summary['model']}, {summary['num_params']:,} parameters"),
            ]  # fmt: skip
        else:
            facts.append(
                ("state", f"stopped ({self.interrupted.why}): imgcls.resume(run) continues it" if self.interrupted else "unfinished")
            )
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
        curves = self.dir / "curves.png"
        return f"<table>{rows}</table>" + (image_tag(curves, "training curves") if curves.is_file() else "")


def train(data=None, model=None, *, config: str | Path | dict | None = None, out: str | Path | None = None,
          callbacks: list[Callback] = (), progress: bool = True, **options) -> Run:  # fmt: skip
    """Train a model and return its Run: the run folder with config.json, metrics.csv, best.pt, last.pt, summary.json and
    report.html, as `imgcls train` writes it.

    data: a named dataset ("mnist-sample", "mnist", "cifar10", ...), an image folder's path, or your own data: a
        map-style torch Dataset of (image, label), an (images, labels) pair of tensors or arrays, or a dict of splits
        {"train": ..., "val": ..., "test": ...}. Splits not given are held out. None: the config's, else "mnist-sample".
    model: a registry name ("speednet", "resnet18", "timm:convnext_nano", ...), "path/nets.py:Net", or your own
        nn.Module class (built with num_classes, in_channels and image_size where it declares them, and model_args) or
        instance. None: the recipe's model for the data.
    config: train options from a YAML or JSON file (a run's config.json trains that run again) or a dict; the
        arguments given beside it win.
    out: the run folder (runs/<data>-<model>-<n> by default).
    callbacks: imgcls.Callback objects, called after the progress bar's and report's.
    progress: show a progress bar (a widget in a notebook).
    options: the train options under their Python names: epochs, lr, batch_size, recipe, precision, seed, report, ...
        (`imgcls train --help` lists them), checked as on the command line.

    A run stopped early (Ctrl-C, SIGTERM, a callback's trainer.request_stop()) returns unfinished, with `interrupted`
    set; imgcls.resume(run) continues it."""
    from imgcls.training import run as training

    options = with_config(config, data, model, options)
    spec, instance = _model(options.pop("model", None))
    dataset, data = _python_data(options.pop("data", "mnist-sample"), options)
    cfg = TrainConfig.from_options(data=data, model=spec, **options)
    try:
        run_dir, summary = training.train(cfg, out, standard(progress, cfg.report, callbacks), data=dataset, model=instance)
    except Interrupted as stop:
        return _stopped(stop)
    return Run(run_dir, summary=summary)


def with_config(config, data, model, options: dict) -> dict:
    """The options of `config` (a file or a dict), then data, model and options where given: what train runs with."""
    from imgcls.options import options_from_file

    saved = {} if config is None else dict(config) if isinstance(config, dict) else options_from_file(config)
    if data is None and is_python_data(str(saved.get("data", ""))):
        raise ImgclsError(f"the config's data is {saved['data']}, which only Python can hand over: pass it as data=")
    given = {"data": data, "model": model}
    return saved | {k: v for k, v in given.items() if v is not None} | options


def resume(run, *, data=None, model=None, device: str | None = None, data_dir: str | None = None, callbacks: list[Callback] = (),
           progress: bool = True) -> Run:  # fmt: skip
    """Continue a stopped run (a Run, its folder or its last.pt) from where it stopped, with its saved settings; a
    finished one is tested again. `device` and `data_dir` may change; a run on your own Python data or model is handed
    them again (`data`, `model`: the class, or an instance). A run tracked in MLflow (its folder's mlflow.json) goes on
    logging into its MLflow run."""
    from imgcls.training import run as training
    from imgcls.training.mlflow import continued

    path = run.dir if isinstance(run, Run) else Path(run)
    _, instance = _model(model) if model is not None else (None, None)
    dataset = None
    if data is not None:
        saved = TrainConfig.from_dict(Run.open(training.run_folder(path)[1]).config)
        dataset = handed_over(data, saved.seed, saved.val_fraction, saved.image_size, saved.image_root, saved.class_names(),
                              saved.table_labels())  # fmt: skip
    saved = Run(training.run_folder(path)[1])
    report = saved.config.get("report", True) if (saved.dir / "config.json").is_file() else True
    callbacks = continued(saved.dir, callbacks)
    try:
        run_dir, summary = training.resume(path, device, data_dir, standard(progress, report, callbacks), data=dataset, model=instance)
    except Interrupted as stop:
        return _stopped(stop)
    return Run(run_dir, summary=summary)


def _python_data(data, options: dict):
    """(the Dataset, the name a run records) of what Python handed over as `data`; (None, data) for a name or a path."""
    from imgcls.data.user import is_python_object

    if not is_python_object(data):
        return None, str(data)
    given = TrainConfig.from_options(**options)  # the options that split and size the data, checked first
    dataset = handed_over(
        data, given.seed, given.val_fraction, given.image_size, given.image_root, given.class_names(), given.table_labels()
    )
    return dataset, PYTHON + dataset.name


def _stopped(stop: Interrupted) -> Run:
    LOG.warning(f"interrupted ({stop.why}): progress saved in {stop.run_dir / 'last.pt'}")
    return Run(stop.run_dir, interrupted=stop)


def _model(model) -> tuple[str | None, nn.Module | None]:
    """(the name a run records, the instance to train or None) of train's `model`."""
    if model is None or isinstance(model, str):
        return (absolute(model) if model and is_user_model(model) else model), None
    if isinstance(model, nn.Module):
        return spec_of(type(model)), model
    if isinstance(model, type) and issubclass(model, nn.Module):
        return spec_of(model), None
    raise ImgclsError(f"model must be a model's name, an nn.Module class or an nn.Module, got {type(model).__name__}")


def evaluate(run, data=None, *, split: str = "test", device: str = "auto", batch_size: int | None = None, data_dir: str | None = None,
             out: str | Path | None = None, coverage: bool = False):  # fmt: skip
    """Test a run's best model (a Run, its folder, or a .pt file) on a split of its own data, or of `data` (a named
    dataset, a folder, or your own Python data); writes confusion_matrix_SPLIT.csv and evaluation_SPLIT.json into
    `out` (the run folder). Returns an imgcls.evaluation.Evaluation: accuracy, loss, per_class_accuracy, confusion, ece.
    With `coverage` (single-label), also the accuracy on the most confident 100, 95, 90, 80, 70 and 50% of the images
    with the --min-confidence that keeps each (`Evaluation.coverage`), and their curve in coverage_SPLIT.png."""
    from imgcls.evaluation import MultiLabelEvaluation, evaluate_run

    found = evaluate_run(_path(run), data, data_dir, split, device, batch_size, out, coverage=coverage)
    if coverage and isinstance(found, MultiLabelEvaluation):
        LOG.warning("coverage: not for a multi-label model, whose labels are decided by thresholds of their own")
    elif coverage and found.coverage is not None:
        from imgcls.report import plots
        from imgcls.report.calibration import coverage_figure

        path = found.files[0].parent / f"coverage_{split}.png"
        suggested = found.suggested_min_confidence
        plots.save(coverage_figure(found.logits, found.labels, suggested, split), path)
        found.files.append(path)
    return found


def export(run, format: str = "onnx", *, out: str | Path | None = None, tolerance: float = 1e-3, parity_images: int = 64):
    """Export a run's best model to ONNX or TorchScript, checked against PyTorch on its test images first; the
    preprocessing goes beside it in NAME.json. Returns an imgcls.exporter.Exported (path, metadata, max_abs_diff). A run
    tracked in MLflow gets both files as artifacts of its MLflow run."""
    from imgcls.exporter import export as export_model
    from imgcls.training.mlflow import log_export

    exported = export_model(_path(run), format, out, tolerance, parity_images)
    log_export(exported)
    return exported


def lr_find(data=None, model=None, *, config: str | Path | dict | None = None, out: str | Path | None = None, steps: int = 100,
            start_lr: float = 1e-7, end_lr: float = 10.0, **options):  # fmt: skip
    """fastai's lr_find: a short run over growing learning rates; returns an imgcls.training.lr_find.LrFind whose
    `steepest` is the suggested lr, with `dir` (lr_find.csv, .json, .png) and `config` (filled in as train's).
    `config`: options from a YAML or JSON file or a dict, as train's."""
    from imgcls.training.lr_find import lr_find as probe

    options = with_config(config, data, model, options)
    spec, _ = _model(options.pop("model", None))
    dataset, data = _python_data(options.pop("data", "mnist-sample"), options)
    return probe(TrainConfig.from_options(data=data, model=spec, **options), out, steps, start_lr, end_lr, data=dataset)


def tune(data=None, model=None, *, config: str | Path | dict | None = None, trials: int = 20, timeout: float | None = None,
         search: str | Path | dict | None = None, storage: str | None = None, study: str | None = None, pruner="median",
         out: str | Path | None = None, callbacks: list[Callback] = (), progress: bool = True, **options):  # fmt: skip
    """Tune hyperparameters with Optuna: trials of `imgcls.train` (each a run folder, out/trial-<n>; out is
    runs/tune-<study> by default) until the study holds `trials` complete or pruned ones, or `timeout` seconds have
    passed. Returns an imgcls.experiments.tune.Tuned: `best` (trial number, val figure, params, run, test accuracy),
    `best_options` (every option of the best trial, also written to `config_file` for train's config=), `report`
    (tune.html), `trials` (one dict per trial) and the Optuna `study`.

    data, model, config, options: as train's; the options given are held fixed.
    search: what is searched: {"lr": {"low": 1e-3, "high": 0.1, "log": True}, "batch_size": {"choices": [256, 512]}},
        the same as text ("lr=1e-3:1e-1:log,batch_size=256|512"), or a YAML/JSON file of it. None: the recipe's space
        for this data (lr, weight decay, batch size, label smoothing and its augmentation strength), less the options given.
    storage, study: an Optuna storage URL (sqlite:///..., postgresql://...; default: a SQLite file in out) and study
        name (default <data>-<model>). Workers that share both share the study, on one machine or many.
    pruner: "median" (default), "hyperband", "none", or an Optuna pruner object: how trials are stopped early, per epoch."""
    from imgcls.experiments import tune as tuning
    from imgcls.experiments.space import check_space, parse_spec, read_space

    options = with_config(config, data, model, options)
    spec, instance = _model(options.pop("model", None))
    if instance is not None:
        raise ImgclsError("tune trains a new model in every trial: pass the model's class, not an instance")
    dataset, name = _python_data(options.pop("data", "mnist-sample"), options)
    given = {"data": name, **({"model": spec} if spec else {}), **options}
    if isinstance(search, dict):
        search = check_space(dict(search), "search")
    elif search is not None:
        is_file = Path(search).suffix.lower() in (".yaml", ".yml", ".json")
        search = read_space(search) if is_file else parse_spec(str(search))
    return tuning.tune(given, trials=trials, timeout=timeout, space=search, storage=storage, study=study, pruner=pruner, out=out,
                       callbacks=callbacks, progress=progress, data=dataset)  # fmt: skip


def load(run_or_checkpoint, device: str | None = None, backend: str = "torch", min_confidence: float = 0.0):
    """A trained model ready to predict: an imgcls.Predictor of a Run, run folder, .pt file or exported .onnx file.
    `Predictor.predict(inputs, top_k=1)` takes paths, folders, PIL images, arrays and tensors; `Predictor.explain(inputs)`
    says where the model looked. With `min_confidence`, an image whose top probability is below it is answered
    "unknown" (single-label)."""
    from imgcls.inference import Predictor

    predictor = Predictor.open(_path(run_or_checkpoint), backend, device or "auto")
    predictor.min_confidence = min_confidence
    return predictor


def _path(run) -> Path:
    return run.dir if isinstance(run, Run) else Path(run)


def check_data(data, *, out: str | Path | None = None, label_errors: bool = False, folds: int = 5, data_dir: str | None = None,
               **reading):  # fmt: skip
    """Check a dataset's health as training would load it: exact and near duplicates (within a class, across classes,
    across splits; for multi-label data, one picture under two label sets is a conflict), odd files and class imbalance,
    and with `label_errors` likely label errors from `folds` cross-validated models. Writes health.json and a picture of
    each finding into `out` (<dataset>-health). `reading`: the train options that say how to read it (image_root,
    classes, label_delim, label_columns, multi_label, image_column, label_column). Returns the
    imgcls.data.health.Health, with `out` and `written` (the pictures' names)."""
    from imgcls.data import dataset_name
    from imgcls.data.health import check_dataset
    from imgcls.report.health import write_findings
    from imgcls.training.crossval import check_folds, cross_validated

    out = Path(out) if out is not None else Path(f"{dataset_name(str(data))}-health")
    if label_errors:
        check_folds(folds)
    unknown = set(reading) - set(READING)
    if unknown:
        raise ImgclsError(f"check_data reads data with {', '.join(f'{k}=' for k in READING)}; not {', '.join(sorted(unknown))}")
    dataset, health = check_dataset(str(data), data_dir, **TrainConfig.from_options(**reading).reading())
    if label_errors and dataset.multi_label:
        raise ImgclsError(f"--label-errors ranks images by one class each; {data} has several labels per image: drop --label-errors")
    if label_errors:
        health.label_errors = cross_validated(dataset, folds)
        health.seconds["label_errors"] = health.label_errors.seconds
    health.written = write_findings(health, out, root=dataset.root)
    health.out = out
    return health
