"""Runs tracked in MLflow (`imgcls train --mlflow [URI]`, imgcls.MLflowLogger): the config as params, each epoch's
metrics.csv row as metrics (step = epoch), the summary's figures, tags, and the run folder's files as artifacts.

The run folder's mlflow.json names the MLflow run, so that a resumed run goes on logging into it (imgcls.resume adds
the logger itself) and `imgcls export` adds the exported model to it.
"""

import contextlib
import io
import json
import logging
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from imgcls import distributed
from imgcls.errors import ImgclsError, missing_extra
from imgcls.files import read_json, write_json
from imgcls.interrupt import Interrupted
from imgcls.training.callbacks import Callback

LOG = logging.getLogger(__name__)

# MLflow's own default store: a SQLite file in the working folder, its artifacts in ./mlruns. Not a file store
# (file:./mlruns): mlflow 3 refuses those unless MLFLOW_ALLOW_FILE_STORE=true, while SQLite works in mlflow 2 and 3.
DEFAULT_URI = "sqlite:///mlflow.db"
RECORD = "mlflow.json"  # in the run folder: the tracking URI and the MLflow run's id
ARTIFACTS = ("config.json", "metrics.csv", "summary.json", "confusion_matrix.csv", "report.html", "best.pt")  # and the plots, *.png
PROBE_SECONDS = 5  # a tracking server or database must answer this fast, instead of mlflow's minutes of retries
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # the SQL stores mlflow reaches over the network


class MLflowLogger(Callback):
    """Tracks a run in MLflow as `imgcls train --mlflow` does: imgcls.train(..., callbacks=[imgcls.MLflowLogger(...)]).

    uri: the tracking store: a server (http://host:5000) or a local store (sqlite:///path.db). None: a resumed run's
        own, else sqlite:///mlflow.db in the working folder.
    experiment: the MLflow experiment of a new MLflow run, created when missing. None: the dataset's name.

    A resumed run goes on logging into the MLflow run its folder's mlflow.json names: at `uri` when given (continued
    where that store has it, a new MLflow run with every epoch so far where not), else at the saved URI. Only the main
    process of a torchrun logs."""

    def __init__(self, uri: str | None = None, experiment: str | None = None):
        self.mlflow, self.experiment = _mlflow(), experiment
        self.given = self.uri = absolute(uri) if uri else None
        # A store given is checked at once, before any work; by the main process alone, which alone logs (N processes
        # creating one SQLite file's tables at once would collide).
        self.client = connect(self.uri) if self.uri and distributed.from_env().main else None
        self.run_id, self.finished, self.broken = None, False, False

    def on_fit_start(self, trainer) -> None:
        self.run_id, self.finished, self.broken = None, False, False  # one logger may track several runs in turn (tune's trials)
        if not trainer.group.main:
            return
        saved = read_record(trainer.run_dir)
        uri = self.given or (saved["tracking_uri"] if saved else absolute(DEFAULT_URI))
        if self.client is None or uri != self.uri:
            try:
                self.uri, self.client = uri, connect(uri)
            except ImgclsError as e:
                if self.given or saved is None:
                    raise
                raise ImgclsError(f"{e}; it is this run's MLflow store ({RECORD}): delete that file to resume untracked") from None
        with self._calling("start the MLflow run", trainer):
            run = self._saved_run(saved["run_id"]) if saved else None
            if run is not None:
                self.client.update_run(run.info.run_id, "RUNNING")
                logged = {m.step for m in self.client.get_metric_history(run.info.run_id, "val_loss")}
            else:
                run, logged = self._create(trainer), set()
            self.run_id = run.info.run_id
            write_json(trainer.run_dir / RECORD, {"tracking_uri": self.uri, "run_id": self.run_id})
            # Epochs of the run that this MLflow run lacks: all of them when tracking starts on a resumed run.
            self._log_epochs(row for row in trainer.progress.history if row["epoch"] not in logged)
            experiment = self.client.get_experiment(run.info.experiment_id).name
        page = f"{self.uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{self.run_id}"  # the server's web page of the run
        where = page if self.uri.startswith(("http://", "https://")) else self.uri
        LOG.info(f"MLflow run {self.run_id} in experiment {experiment}: {where}")

    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.run_id is not None:
            with self._calling(f"log epoch {row['epoch']}", trainer):
                self._log_epochs([trainer.progress.history[-1]])  # the metrics.csv row, without the callback's extras

    def on_fit_end(self, trainer, summary: dict) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        with self._calling("log the summary and artifacts", trainer):
            # summary.json's figures; per-class tables (nested dicts) and lists stay in summary.json, an artifact.
            figures = {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and math.isfinite(v)}
            now = _now()
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()])
            run_dir = trainer.run_dir
            for path in [*(run_dir / name for name in ARTIFACTS), *sorted(run_dir.glob("*.png"))]:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self._end("FINISHED")
        self.finished = True

    def close(self) -> None:
        if self.run_id is None or self.finished or self.broken:
            return
        # Called while the run's exception unwinds: a stop on request (resumable) is KILLED, anything else FAILED.
        error = sys.exc_info()[1]
        try:
            self._end("KILLED" if error is None or isinstance(error, Interrupted | KeyboardInterrupt) else "FAILED")
        except (self.mlflow.exceptions.MlflowException, OSError) as e:
            LOG.warning(f"warning: MLflow run {self.run_id} was not marked as ended ({_first_line(e)})")

    def _create(self, trainer):
        cfg, name = trainer.cfg, self.experiment or trainer.data.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except self.mlflow.exceptions.MlflowException:  # another run created it meanwhile
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        elif experiment.lifecycle_stage == "deleted":
            raise ImgclsError(
                f"MLflow experiment {name} is deleted: restore it (mlflow experiments restore --experiment-id "
                f"{experiment.experiment_id}) or choose another experiment"
            )
        else:
            experiment_id = experiment.experiment_id
        tags = {"dataset": trainer.data.name, "model": cfg.model, "recipe": cfg.recipe, "task": trainer.task.name,
                "run_dir": str(trainer.run_dir.resolve())}  # fmt: skip
        run = self.client.create_run(experiment_id, run_name=trainer.run_dir.name, tags=tags)
        self.client.log_batch(run.info.run_id, params=params(cfg.to_dict()))
        return run

    def _saved_run(self, run_id: str):
        """The MLflow run of mlflow.json, where this store has it (not deleted); else None."""
        try:
            run = self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return run if run.info.lifecycle_stage != "deleted" else None

    def _log_epochs(self, rows) -> None:
        from mlflow.entities import Metric

        now = _now()
        metrics = [Metric(k, float(v), now, row["epoch"]) for row in rows for k, v in row.items() if k != "epoch"]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _end(self, status: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # mlflow prints "View run ..." links; the library only logs
            self.client.set_terminated(self.run_id, status)

    @contextlib.contextmanager
    def _calling(self, what: str, trainer):
        try:
            yield
        except (self.mlflow.exceptions.MlflowException, OSError) as e:
            self.broken = True
            raise ImgclsError(
                f"MLflow at {self.uri} failed to {what} ({_first_line(e)}); the run folder is kept: once MLflow answers, "
                f"`imgcls train --resume {trainer.run_dir}` logs what is missing"
            ) from None


def params(config: dict) -> list:
    """config.json as MLflow params: unset options (None) left out, values as JSON but strings as they are, cut to
    MLflow's length limit (config.json, an artifact, has them whole)."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as LIMIT  # this mlflow's own

    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items() if v is not None}
    return [Param(k, v if len(v) <= LIMIT else v[: LIMIT - 3] + "...") for k, v in values.items()]


def absolute(uri: str) -> str:
    """The URI with a local store's relative path made absolute, so that resume and export find it from any folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri.removeprefix("file:")).expanduser().resolve().as_uri()
    if "://" not in uri and not uri.startswith("file:"):  # a folder: mlflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def connect(uri: str):
    """An MlflowClient of a store that answers: a server or database is asked once, quickly, before mlflow's own retries
    (minutes of them)."""
    mlflow = _mlflow()
    _probe(uri)
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # a bad URI, a refused file store or a store that will not open fail here
    except Exception as e:  # noqa: BLE001 - database drivers and store plugins raise types of their own
        if "MLFLOW_ALLOW_FILE_STORE" in str(e):
            raise ImgclsError(
                f"mlflow {mlflow.__version__} refuses file stores such as {uri}: track in {DEFAULT_URI} (--mlflow without a URI) "
                "or set MLFLOW_ALLOW_FILE_STORE=true"
            ) from None
        raise ImgclsError(f"cannot use the MLflow store {uri} ({_first_line(e)}): check the URI") from None
    return client


def _probe(uri: str) -> None:
    """Something must answer at a server's or a database's address, within PROBE_SECONDS."""
    scheme = uri.split(":", 1)[0].split("+")[0]  # postgresql+psycopg2://...
    http = scheme in ("http", "https")
    try:
        if http:
            with contextlib.suppress(urllib.error.HTTPError):  # an answer, even an error page: a server is there
                urllib.request.urlopen(uri, timeout=PROBE_SECONDS).close()
        elif scheme in DATABASE_PORTS and urlsplit(uri).hostname:
            url = urlsplit(uri)
            socket.create_connection((url.hostname, url.port or DATABASE_PORTS[scheme]), timeout=PROBE_SECONDS).close()
    except (OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        what = "MLflow tracking server" if http else "database"
        raise ImgclsError(
            f"no {what} answers at {uri} ({why}): start it{' (`mlflow server`)' if http else ''} or give another URI"
        ) from None


def read_record(run_dir: Path) -> dict | None:
    """mlflow.json of a tracked run folder; None for a run not tracked."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        return {"tracking_uri": str(record["tracking_uri"]), "run_id": str(record["run_id"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImgclsError(f"cannot read {path} ({type(e).__name__}): delete it to track the run in a new MLflow run") from None


def continued(run_dir: Path, callbacks) -> list:
    """A resumed run's callbacks: a tracked run (mlflow.json) goes on logging into its MLflow run, unless the caller
    passed an MLflowLogger of their own."""
    callbacks = list(callbacks)
    if (Path(run_dir) / RECORD).is_file() and not any(isinstance(c, MLflowLogger) for c in callbacks):
        callbacks.append(MLflowLogger())
    return callbacks


def log_export(exported) -> None:
    """An exported model (an imgcls.exporter.Exported) and its metadata, logged to the MLflow run of a tracked run. The
    export is done either way, so a store that cannot be reached is only warned about."""
    run_dir = Path(read_json(exported.metadata)["checkpoint"]).parent
    try:
        record = read_record(run_dir)
        if record is None:
            return
        client = connect(record["tracking_uri"])
        try:
            for path in (exported.path, exported.metadata):
                client.log_artifact(record["run_id"], str(path))
        except (_mlflow().exceptions.MlflowException, OSError) as e:
            raise ImgclsError(f"MLflow run {record['run_id']} at {record['tracking_uri']}: {_first_line(e)}") from None
    except ImgclsError as e:
        LOG.warning(f"warning: {exported.path.name} was not logged to MLflow: {e}")
    else:
        LOG.info(f"logged {exported.path.name} and {exported.metadata.name} to MLflow run {record['run_id']}")


def _mlflow():
    try:
        import mlflow
        import mlflow.tracking
    except ImportError as e:
        raise missing_extra("MLflow tracking (--mlflow)", "mlflow", e) from None
    return mlflow


def _now() -> int:
    return int(time.time() * 1000)  # MLflow's timestamps: milliseconds


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
