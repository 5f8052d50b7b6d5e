"""`imgcls tune`: an Optuna study whose trials are imgcls runs (runs/tune-<study>/trial-<n>), pruned per epoch.

Any number of workers, on one machine or many, share a study through its storage (SQLite by default, PostgreSQL or
MySQL for several machines): Optuna hands each a trial, and `--trials` counts the whole study's, so that two workers
asked for 20 run 20 between them.

Pruning is the median rule by default: from the fifth trial on, a trial whose best val figure so far is below the
median of the other trials' at the same epoch stops there. Hyperband is the other choice; its brackets need more
trials than a study of tens runs to fill (Optuna's own benchmarks pair it with samplers given hundreds of trials),
and it stops most trials after one epoch, when the recipes' schedules have barely begun to decay the lr.
"""

import json
import logging
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from imgcls.config import TrainConfig
from imgcls.data import dataset_name
from imgcls.errors import ImgclsError
from imgcls.experiments.space import canonical, describe, inside, recipe_space, suggest
from imgcls.files import write_text
from imgcls.interrupt import Interrupted
from imgcls.training import run as training
from imgcls.training.callbacks import Callback, standard

LOG = logging.getLogger(__name__)
PRUNERS = ("median", "hyperband", "none")
PRUNED = "pruned by Optuna"  # the reason a pruned trial's run gives for stopping
MACHINE = ("data_dir", "device")  # what may differ between the workers of one study
# The package of each database driver SQLAlchemy imports (postgresql:// is psycopg 3 from SQLAlchemy 2.1 on, psycopg2 before).
DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "pymysql", "MySQLdb": "mysqlclient"}


class Pruning(Callback):
    """Reports each epoch's best val figure so far to the trial (the objective is the best epoch's), and stops the
    run cleanly, last.pt kept, when the pruner says so."""

    def __init__(self, trial, key: str):
        self.trial, self.key = trial, key
        self.best, self.epochs, self.seconds = -float("inf"), 0, 0.0

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.best, self.epochs, self.seconds = max(self.best, row[self.key]), row["epoch"], self.seconds + row["seconds"]
        self.trial.report(self.best, row["epoch"])
        if row["epoch"] < trainer.cfg.epochs and self.trial.should_prune():
            trainer.request_stop(PRUNED)


@dataclass
class Tuned:
    """What a study gave: `best` (the best trial: number, value, params, run, test_accuracy) and `best_options`
    (every train option of it, as `config_file` holds them), `defaults` (the trial of the recipe's settings), the report
    page, the Optuna `study` itself."""

    study: object
    dir: Path
    storage: str
    space: dict
    objective: str
    best: dict | None = None
    best_options: dict | None = None
    config_file: Path | None = None
    report: Path | None = None
    interrupted: Interrupted | None = None
    trials: list[dict] = field(default_factory=list)
    defaults: dict | None = None  # the trial of the recipe's own settings (the first of a study of its space), once complete


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImgclsError("imgcls tune needs Optuna: pip install 'imgcls[tune]'") from None
    # imgcls says what each trial did, once; Optuna's warning of a failed trial carries a traceback, which a stopped
    # trial (Ctrl-C) is not worth: the command says how it stopped.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def open_storage(url: str):
    """Optuna's database storage; a stale trial (its worker killed) is failed after 3 minutes without a heartbeat."""
    optuna = _optuna()
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise ImgclsError(f"--storage {url} is not a database URL: give sqlite:///study.db or postgresql://user@host/db") from None
    # SQLite locks the whole file per write: workers wait their turn rather than fail at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(10):
        try:
            with warnings.catch_warnings():  # "heartbeat_interval is experimental": it has been since Optuna 2.9 (2021)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=60, grace_period=180), shown
        except (IntegrityError, OperationalError, ProgrammingError) as e:  # PostgreSQL's DuplicateTable is a ProgrammingError
            # Workers started together race to create a new database's tables: the loser finds them made.
            if attempt == 9 or not (isinstance(e, IntegrityError) or "locked" in str(e) or "already exists" in str(e)):
                reason = str(e.orig).strip().splitlines()[0]
                raise ImgclsError(f"cannot open --storage {shown} ({reason}): check that the server runs and the URL's user, "
                                  "password and database") from None  # fmt: skip
            time.sleep(0.5 + random.random())
        except ImportError as e:  # SQLAlchemy's dialect imports the driver
            package = DRIVERS.get(e.name, e.name or "its driver")
            raise ImgclsError(f"--storage {shown} needs its database driver: pip install '{package}'") from None
        except SQLAlchemyError as e:
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise ImgclsError(f"cannot open --storage {shown} ({reason}): check the URL") from None


def make_pruner(name, epochs: int):
    """A pruner by name, or Optuna's own pruner object as it is (a PercentilePruner, a ThresholdPruner, ...)."""
    optuna = _optuna()
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":  # from the epoch after the first third on, when the lr has had time to do its work
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=epochs // 3 + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ImgclsError(f"unknown pruner '{name}': choose one of {', '.join(PRUNERS)}")


def tune(
    given: dict, *, trials: int = 20, timeout: float | None = None, space: dict | None = None, storage: str | None = None,
    study: str | None = None, pruner: str = "median", out: str | Path | None = None, callbacks=(), progress: bool = True, data=None,
) -> Tuned:  # fmt: skip
    """Run trials of the study until it holds `trials` finished (complete or pruned) ones, or `timeout` seconds have
    passed (no trial starts after it). `given`: the train options the user set, held fixed; `space`: what is
    searched (None: the recipe's space for this data, less the options given); `data`: a Dataset a Python caller
    handed over (None: loaded once from given["data"]). Returns the study's best trial so far."""
    optuna = _optuna()
    if os.environ.get("WORLD_SIZE"):
        raise ImgclsError("imgcls tune runs each trial on one process: run it without torchrun (start more workers instead)")
    if not (isinstance(trials, int) and trials >= 1) or (timeout is not None and not timeout > 0):
        raise ImgclsError(f"--trials must be at least 1 and --timeout positive, got {trials} and {timeout}")
    base = TrainConfig.from_options(**given)
    filled, dataset = _filled(base, data)
    objective_key = "best_val_map" if dataset.multi_label else "best_val_accuracy"
    space = _space(space, given, filled, len(dataset.train))
    name = study or f"{dataset_name(base.data)}-{filled.model}".replace(":", "-").replace("/", "-")
    study_dir = Path(out).expanduser() if out else Path("runs") / f"tune-{name}"
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    backend, shown = open_storage(url)
    found = optuna.create_study(
        storage=backend, study_name=name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(constant_liar=True),  # running trials count as done, so workers spread out
        pruner=make_pruner(pruner, filled.epochs),
    )  # fmt: skip
    _same_study(found, {"options": {k: v for k, v in given.items() if k not in MACHINE}, "space": canonical(space),
                        "objective": objective_key})  # fmt: skip
    defaults = {k: getattr(filled, k) for k in space}
    if all(inside(space[k], v) for k, v in defaults.items()):  # the recipe's own settings first: the baseline to beat
        found.enqueue_trial(defaults, user_attrs={"recipe_defaults": True}, skip_if_exists=True)
    LOG.info(f"study {name} in {shown}: {trials} trials of {describe(space)}, {objective_key.replace('_', ' ')} maximised, "
             f"{pruner if isinstance(pruner, str) else type(pruner).__name__} pruning; runs in {study_dir}")  # fmt: skip
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    result = Tuned(found, study_dir, shown, space, objective_key)

    def objective(trial):
        params = suggest(trial, space)
        cfg = replace(base, **params)
        run_dir = study_dir / f"trial-{trial.number}"
        for key, value in (("run", str(run_dir.resolve())), ("host", socket.gethostname()), ("pid", os.getpid())):
            trial.set_user_attr(key, value)
        LOG.info(f"trial {trial.number}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
                 + (" (the recipe's settings)" if trial.user_attrs.get("recipe_defaults") else ""))  # fmt: skip
        pruning = Pruning(trial, "val_map" if dataset.multi_label else "val_acc")
        reuse = None if "image_size" in space else dataset  # a trial of another size decodes its own
        try:
            _, summary = training.train(cfg, run_dir, standard(progress, cfg.report, [pruning, *callbacks]), data=reuse)
        except Interrupted as stop:
            trial.set_user_attr("epochs_run", pruning.epochs)
            trial.set_user_attr("train_seconds", pruning.seconds)
            if stop.signum == PRUNED:
                LOG.info(f"trial {trial.number} pruned after epoch {pruning.epochs} (best val {pruning.best:.4f})")
                raise optuna.TrialPruned() from None
            raise
        for key in ("test_accuracy", "epochs_run", "train_seconds", "best_epoch"):
            trial.set_user_attr(key, summary[key])
        return summary[objective_key]

    def after_trial(study_, trial) -> None:
        _write(result)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            LOG.info(f"trial {trial.number}: {objective_key.replace('_', ' ')} {trial.value:.4f}; best so far {study_.best_value:.4f} "
                     f"(trial {study_.best_trial.number})")  # fmt: skip

    if len(found.get_trials(deepcopy=False, states=counted)) >= trials:
        LOG.info(f"study {name} already holds {trials} trials")
    else:
        try:
            found.optimize(
                objective, timeout=timeout, callbacks=[optuna.study.MaxTrialsCallback(trials, states=counted), after_trial],
                gc_after_trial=True,
            )  # fmt: skip
        except Interrupted as stop:  # Ctrl-C: that trial's run is resumable on its own, the study keeps the rest
            result.interrupted = stop
    return _write(result, given)


def _filled(base: TrainConfig, data):
    """The config as the recipe fills it for this data (the default space is drawn around it), and the data, loaded
    once for all the trials of this worker."""
    dataset = data if data is not None else training.load_run_data(training.findable(base))
    filled, _, _ = training.setup(base, dataset)
    return filled, dataset


def _space(space: dict | None, given: dict, filled: TrainConfig, train_images: int) -> dict:
    if space is None:
        space = {k: v for k, v in recipe_space(filled, train_images).items() if k not in given}
        if not space:
            raise ImgclsError("every option of the recipe's search space is set: give --search to say what to tune")
        return space
    both = sorted(set(space) & set(given))
    if both:
        raise ImgclsError(f"{', '.join(both)}: both set as an option and searched: drop one of the two")
    return space


def _same_study(study, settings: dict) -> None:
    """The first worker records what the study searches; the others must search the same, on the same data."""
    saved = study.user_attrs
    if "settings" not in saved:
        study.set_user_attr("settings", json.dumps(settings, sort_keys=True, default=str))
        return
    theirs = json.loads(saved["settings"])
    mine = json.loads(json.dumps(settings, sort_keys=True, default=str))
    differ = []
    if mine["space"] != theirs.get("space"):
        differ.append(f"search space {describe(json.loads(theirs['space']))}")
    options, their_options = mine["options"], theirs.get("options", {})
    for key in sorted(set(options) | set(their_options)):
        if options.get(key) != their_options.get(key):
            differ.append(f"{key} {their_options[key]}" if key in their_options else f"no {key}")
    if mine["objective"] != theirs.get("objective"):
        differ.append(f"objective {theirs.get('objective')}")
    if differ:
        raise ImgclsError(f"study {study.study_name} was started with {'; '.join(differ)}: run the same command as its other "
                          "workers, or choose another --study")  # fmt: skip


def _write(result: Tuned, given: dict | None = None) -> Tuned:
    """The report page; at the end (given), also the best trial, its options and config file."""
    from imgcls.experiments.tune_page import trial_rows, write_tune_report

    result.trials = trial_rows(result.study)
    result.report = write_tune_report(result.study, result.trials, result.dir, result.space, result.objective)
    if given is None:
        return result
    import yaml

    complete = [t for t in result.trials if t["state"] == "COMPLETE"]
    if complete:
        best = result.study.best_trial
        result.best = {"number": best.number, "value": best.value, "params": best.params, **best.user_attrs}
        result.defaults = next((t for t in complete if t.get("recipe_defaults")), None)
        result.best_options = {**given, **best.params}
        result.config_file = result.dir / "best.yaml"
        write_text(result.config_file, yaml.safe_dump(result.best_options, sort_keys=False))
    return result
