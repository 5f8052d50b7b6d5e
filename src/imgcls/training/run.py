"""Setting a run up and resuming it: the data, the config filled in for it, the run folder, the initial weights,
then the Trainer's fit. `imgcls.train` and `imgcls.resume` (imgcls.api) are these, returning an imgcls.Run."""

import contextlib
import logging
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from imgcls import checkpoint, distributed, files
from imgcls.config import MODEL_OPTIONS, TrainConfig, check, fill_defaults, saved_model_options
from imgcls.data import dataset_name, load_dataset
from imgcls.data.augment import Augment
from imgcls.data.core import Dataset, as_label_sets, imbalance
from imgcls.data.duplicates import dedupe, dedupe_line
from imgcls.data.hf import local, parse
from imgcls.data.registry import HF, is_folder_spec, is_hf
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.files import read_json, write_json, write_text
from imgcls.models import check_input, create_model, num_params
from imgcls.models.pretrained import pretrained_normalised, pretrained_weights
from imgcls.models.user import check_outputs, is_user_model
from imgcls.models.weights import Weights, read_state_dict, transfer
from imgcls.recipes import IMBALANCE, backbone
from imgcls.rundir import lock_run, new_run_dir, read_split
from imgcls.training.callbacks import Callback
from imgcls.training.trainer import Trainer

LOG = logging.getLogger(__name__)
CPU_IMAGE_SIZE, GPU_IMAGE_SIZE = 128, 224  # the side of photo folders without --image-size


def describe(cfg: TrainConfig, data: Dataset, trainer: Trainer) -> str:
    shape = "x".join(map(str, data.shape))
    return (
        f"data {data.name}: {len(data.train):,} train / {len(data.val):,} val / {len(data.test):,} test, {shape}, "
        f"{f'{data.num_classes} labels (multi-label)' if data.multi_label else f'{data.num_classes} classes'}\n"
        f"model {cfg.model}: {num_params(trainer.model):,} params on {trainer.device}"
        f"{' (AMP ' + str(trainer.amp).removeprefix('torch.') + ')' if trainer.amp else ''}{', compiled' if cfg.compile else ''}\n"
        f"recipe {cfg.recipe}: {cfg.optimizer} lr {cfg.lr:g}{f' (filters {cfg.muon_lr:g})' if cfg.optimizer == 'muon' else ''} wd {cfg.weight_decay:g}, {cfg.schedule} schedule, batch {cfg.batch_size}, "
        f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, label smoothing {cfg.label_smoothing:g}{f', gradient norm clipped to {cfg.clip_grad:g}' if cfg.clip_grad else ''}, "
        f"augment: {Augment.of(cfg).describe()}{f', MixUp {cfg.mixup:g}' if cfg.mixup else ''}{f', CutMix {cfg.cutmix:g}' if cfg.cutmix else ''}"
        f"{f', balance {cfg.balance}' if cfg.balance != 'none' else ''}"
        f"{', flip TTA' if cfg.tta else ''}{f', shift TTA ±{cfg.tta_shift}' if cfg.tta_shift else ''}{f', EMA {cfg.ema:g}' if cfg.ema else ''}"
    )


def load_run_data(cfg: TrainConfig, split_files=None) -> Dataset:
    # Folders of photos without --image-size: ImageNet's 224 on a GPU; 128 on a CPU, where ResNet-18 trains 2.3x slower at 224
    # (bench/RESULTS.md). The side chosen goes into config.json, so resume and evaluate decode the same.
    default_size = GPU_IMAGE_SIZE if pick_device(cfg.device).type == "cuda" else CPU_IMAGE_SIZE
    if cfg.dedupe and not is_folder_spec(cfg.data):
        raise ImgclsError(
            f"--dedupe drops files and lists them in the run's split.json; {cfg.data} is a named dataset without files: drop --dedupe "
            f"(`imgcls datasets --check {cfg.data}` shows its duplicates)"
        )
    load = partial(
        load_dataset, cfg.data, data_dir=cfg.data_dir, seed=cfg.seed, val_fraction=cfg.val_fraction, image_size=cfg.image_size,
        default_size=default_size, **cfg.reading(),
    )  # fmt: skip
    if cfg.dedupe and split_files is None:  # the seed's split less the copies; resume and evaluate replay what split.json keeps
        kept, dropped = dedupe(as_label_sets(load()))  # multi-label: a conflict is one picture under two label sets
        return replace(load(split_files=kept), dropped=dropped)
    return load(split_files=split_files)


def setup(cfg: TrainConfig, data: Dataset | None = None) -> tuple[TrainConfig, Dataset, Weights | None]:
    """What `train` and `lr-find` start from: the data (`data`, a user's, already decoded, or loaded for cfg.data),
    the config filled in for it, and the initial weights (--weights, or the model's pretrained ones). Without --model,
    a run from an imgcls run's weights uses that run's model, and photos get the recipe's pretrained backbone when its
    weights can be had."""
    check(cfg)
    initial = read_state_dict(cfg.weights) if cfg.weights else None  # a bad file fails before the data loads
    data = data if data is not None else load_run_data(cfg)
    model = cfg.model or (initial.model if initial else None)
    if initial and initial.model_options and model == initial.model:  # the run's own model: its shape too, unless set anew
        saved = saved_model_options(model, initial.model_options, f"--weights {initial.path}")
        cfg = replace(cfg, **{k: v for k, v in saved.items() if k in MODEL_OPTIONS and getattr(cfg, k) is None})
    if model:
        check_input(model, data.shape)  # before any download
    pretrained, state = pretrained_weights(model or backbone(data), data.shape, cfg.pretrained, cfg.weights)
    model = model or (pretrained.model if pretrained else None)
    cfg = replace(cfg, model=model, pretrained=state, image_size=cfg.image_size or data.resized_to)
    cfg = fill_defaults(findable(cfg), data)
    return cfg, pretrained_normalised(data, cfg.model, cfg.pretrained), initial or pretrained


def _initial_weights(cfg: TrainConfig, data: Dataset) -> Weights | None:
    """A filled-in config's initial weights again (a run that saved no training state starts over from them)."""
    if cfg.weights:
        return read_state_dict(cfg.weights)
    return pretrained_weights(cfg.model, data.shape, "on", None)[0] if cfg.pretrained == "on" else None


def _record_data(data: Dataset, run_dir: Path) -> None:
    if data.split_files is not None:
        write_json(run_dir / "split.json", {**data.split_files, **({"dropped": data.dropped} if data.dropped is not None else {})})
    if data.dropped is not None:
        LOG.info(dedupe_line(data.dropped, data.split_files))
    if data.skipped:
        write_text(run_dir / "skipped_files.txt", "\n".join(data.skipped) + "\n")
        LOG.warning(f"skipped {len(data.skipped)} unreadable files (listed in {run_dir / 'skipped_files.txt'})")


def findable(cfg: TrainConfig) -> TrainConfig:
    """The config with its data paths made absolute, so that resume, evaluate, report and export find the data
    from any working directory."""
    data = os.path.abspath(Path(cfg.data).expanduser()) if is_folder_spec(cfg.data) else cfg.data
    if is_hf(data) and local(parse(data)[0]) is not None:  # a saved folder: found from anywhere too
        name, config = parse(data)
        data = HF + str(local(name)) + (f":{config}" if config else "")
    data_dir = os.path.abspath(Path(cfg.data_dir).expanduser()) if cfg.data_dir else None
    weights = os.path.abspath(Path(cfg.weights).expanduser()) if cfg.weights else None
    image_root = os.path.abspath(Path(cfg.image_root).expanduser()) if cfg.image_root else None
    return replace(cfg, data=data, data_dir=data_dir, weights=weights, image_root=image_root)


def fit(trainer: Trainer) -> dict:
    """The Trainer's fit, with the failures a run can resume from said so; a user's model also gets its TorchScript
    program beside best.pt, so that it predicts, exports and serves where its class cannot be imported."""
    try:
        summary = trainer.fit()
    except files.WriteFailed as e:
        raise ImgclsError(f"{e}, then resume with `imgcls train --resume {trainer.run_dir}`") from None
    except RuntimeError as e:
        # A rank that died (killed, out of memory) fails the others' next collective: gloo's "Connection closed by
        # peer", NCCL's errors (torch.distributed.DistError, or a RuntimeError naming the backend).
        if not (trainer.group.active and (isinstance(e, torch.distributed.DistError) or "gloo" in str(e) or "NCCL" in str(e))):
            raise
        reason = str(e).split("] ")[-1].split(". ")[0]
        raise ImgclsError(
            f"another process of this run stopped ({reason}); the checkpoints written so far are kept: resume with "
            f"`imgcls train --resume {trainer.run_dir}`"
        ) from None
    if is_user_model(trainer.cfg.model) and trainer.group.main:
        from imgcls.exporter import write_program

        write_program(trainer.run_dir / "best.pt", trainer.evaluated, trainer.data.test.images)
    distributed.leave(trainer.group)
    return summary


def train(
    cfg: TrainConfig, out: str | None = None, callbacks: Callback | list[Callback] = (), data: Dataset | None = None,
    model: nn.Module | None = None, trainer_class: type[Trainer] = Trainer,
) -> tuple[Path, dict]:  # fmt: skip
    """A new run: load data (or take `data`), fill defaults, write the run folder, train (cfg.model, or the `model`
    instance the caller built) with a Trainer (or a subclass: a benchmark's variant of a stage), test."""
    cfg, data, initial = setup(cfg, data)
    if is_user_model(cfg.model):  # before the run folder: a model that cannot train leaves none behind
        built = model if model is not None else create_model(cfg.model, data.shape, data.num_classes, **cfg.model_options())
        check_outputs(built, data.shape, data.num_classes, cfg.model)
    group, _ = distributed.setup(pick_device(cfg.device))
    # Rank 0 makes the run folder (the next free runs/ name) and tells the others.
    run_dir = distributed.broadcast(new_run_dir(dataset_name(cfg.data), cfg.model, out) if group.main else None, group)
    with lock_run(run_dir) if group.main else contextlib.nullcontext():
        trainer = trainer_class(cfg, data, run_dir, callbacks=callbacks, model=model)
        # Only here: a resumed run continues from its last.pt, never from these again.
        report = transfer(trainer.model, initial, cfg.model) if initial else None
        if group.main:
            write_json(run_dir / "config.json", cfg.to_dict())
            _record_data(data, run_dir)
        LOG.info(f"run {run_dir}\n{describe(cfg, data, trainer)}" + (f"\n{report}" if report else ""))
        _say_if_out_of_balance(cfg, data)
        return run_dir, fit(trainer)


def _say_if_out_of_balance(cfg: TrainConfig, data: Dataset) -> None:
    ratio, big, small = imbalance(data.train.labels, data.num_classes)
    if ratio < IMBALANCE:
        return
    skew = f"the training classes are out of balance ({ratio:.1f}:1, {data.classes[big]} against {data.classes[small]})"
    if cfg.balance == "none":
        LOG.warning(f"{skew}: --balance weight or --balance sample corrects for it; balanced accuracy and macro F1 are in the summary")
    else:
        LOG.warning(f"{skew}: --balance {cfg.balance} corrects for it; --balance none to train without")


def _on_this_machine(cfg: TrainConfig, run_dir: Path, device: str | None, data_dir: str | None) -> TrainConfig:
    """A saved config with what may change with the machine: the device, and where named datasets live."""
    if device is None:
        try:
            pick_device(cfg.device)
        except ImgclsError:
            LOG.warning(f"{run_dir} trained on --device {cfg.device}, which this machine lacks: resuming with --device auto")
            device = "auto"
    return findable(replace(cfg, device=device or cfg.device, data_dir=data_dir or cfg.data_dir))


def run_folder(run: str | Path) -> tuple[Path, Path]:
    """(what was given, resolved: a folder or a checkpoint file; the run's folder)."""
    path = Path(run).expanduser()
    if not path.is_dir():
        path = checkpoint.resolve(path)
    return path, path if path.is_dir() else path.parent


def resume(
    run: str | Path, device: str | None = None, data_dir: str | None = None, callbacks: Callback | list[Callback] = (),
    data: Dataset | None = None, model: nn.Module | None = None,
) -> tuple[Path, dict]:  # fmt: skip
    """Continue a run from its last.pt, with its saved config and data split; only the device and the named
    datasets' folder may change (a Python dataset or model is handed over again as `data` and `model`). A run that
    stopped before saving any training state (a full disk in its first epoch) starts over from its config.json."""
    path, run_dir = run_folder(run)
    with lock_run(run_dir) if distributed.from_env().main else contextlib.nullcontext():
        if path.is_dir() and not (path / "last.pt").is_file() and (path / "config.json").is_file():
            ckpt, saved = None, read_json(path / "config.json")
        else:
            ckpt = checkpoint.load(path, which="last")
            if "progress" not in ckpt:
                raise ImgclsError(f"{ckpt['path']} holds weights only (no training state): resume from the run folder or its last.pt")
            saved = ckpt["config"]
        cfg = _on_this_machine(TrainConfig.from_dict(saved), run_dir, device, data_dir)
        data = data if data is not None else load_run_data(cfg, split_files=read_split(run_dir))
        data = pretrained_normalised(data, cfg.model, cfg.pretrained)
        if ckpt is not None and (list(data.classes) != ckpt["classes"] or list(data.shape) != ckpt["in_shape"]):
            raise ImgclsError(f"the data of {run_dir} changed since it was trained (classes or image size differ): start a new run")
        trainer = Trainer(cfg, data, run_dir, callbacks=callbacks, model=model)
        if ckpt is not None:
            trainer.load_last(ckpt)
        else:
            initial = _initial_weights(cfg, data)
            if initial:
                transfer(trainer.model, initial, cfg.model)
        p = trainer.progress
        if ckpt is None:
            where = "no training state was saved, starting the run over"
        elif p.finished:
            where = "finished, re-testing"
        else:
            where = f"resuming at epoch {p.epoch + 1}/{cfg.epochs}, step {p.step}/{trainer.steps_per_epoch}"
        LOG.info(f"run {run_dir}: {where}\n{describe(cfg, data, trainer)}")
        return run_dir, fit(trainer)
