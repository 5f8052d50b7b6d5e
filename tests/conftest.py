import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.core import Dataset, Split
from imgcls.training.callbacks import Callback

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason=f"real datasets not found at {SHARED_DATA} (the repo's ../shared/data)"
)


DRAW_REPORT = {"on": False}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, request):
    """Every test runs offline, in its own folder, with its own data dir and cache."""
    monkeypatch.setenv("IMGCLS_OFFLINE", "1")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(os.cpu_count() or 1)
    # Drawing plots after each of dozens of test runs costs a minute: run_cli passes --no-report unless marked "report".
    DRAW_REPORT["on"] = request.node.get_closest_marker("report") is not None


def make_folder(root: Path, classes=("cat", "dog"), per_class=12, size=(16, 16), mode="RGB", ext="png", seed=0) -> Path:
    """Class folders of solid-ish images whose colour depends on the class, so a model can learn them."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 160 * c / max(1, len(classes) - 1)
            pixels = np.clip(rng.normal(base, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").convert(mode).save(root / name / f"{i:03d}.{ext}")
    return root


def tiny_dataset(n_train=64, n_val=32, n_test=32, shape=(1, 12, 12), classes=3, seed=0) -> Dataset:
    """A learnable in-memory dataset: the class sets the image brightness."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.randint(0, classes, (n,), generator=g)
        noise = torch.randint(0, 60, (n, *shape), generator=g)
        images = (labels.view(-1, 1, 1, 1) * (180 // max(1, classes - 1)) + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    names = [f"c{i}" for i in range(classes)]
    return Dataset("tiny", names, split(n_train), split(n_val), split(n_test), (0.5,) * shape[0], (0.25,) * shape[0], flips_ok=False)


def save_checkpoint(path: Path, model="cnn", in_shape=(1, 28, 28), classes=tuple("0123456789"), data="mnist-sample", seed=0) -> Path:
    """An untrained imgcls checkpoint, as `imgcls train` writes them, without the training."""
    from imgcls.checkpoint import FORMAT, atomic_save
    from imgcls.config import TrainConfig
    from imgcls.models import create_model

    torch.manual_seed(seed)
    net = create_model(model, in_shape, len(classes))
    channels = in_shape[0]
    atomic_save({
        "format": FORMAT, "model": model, "model_options": {}, "in_shape": list(in_shape), "classes": list(classes),
        "mean": [0.13] * channels, "std": [0.31] * channels, "config": TrainConfig(data=data, model=model).to_dict(), "epoch": 1,
        "state_dict": net.state_dict(),
    }, path)  # fmt: skip
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`imgcls ARGS` in-process: exit code, stdout, stderr."""
    from imgcls.cli import main

    args = [str(a) for a in args]
    if args[:1] == ["train"] and "--resume" not in args and not DRAW_REPORT["on"] and "--report" not in args:
        args.append("--no-report")
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args) -> str:
    """`imgcls ARGS` must fail with exit 2 and one `imgcls: error:` line, no traceback: that line."""
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert err.startswith("imgcls: error: ") and len(err.strip().splitlines()) == 1, err
    return err


class WeightsAtStart(Callback):
    """Keeps the model's tensors as training starts (`weights`), to check where a run began."""

    weights: dict = {}

    def on_fit_start(self, trainer):
        self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}


class OnStep(Callback):
    """Calls fn(trainer) after every step."""

    def __init__(self, fn):
        self.fn = fn

    def on_step(self, trainer):
        self.fn(trainer)


class StopAt(Callback):
    """Stops the run after this step of this epoch (both counted from 1), as Ctrl-C would."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch - 1, step)

    def on_step(self, trainer):
        if (trainer.progress.epoch, trainer.progress.step) == self.at:
            trainer.request_stop()


def logged(caplog) -> str:
    """What imgcls logged since the last call, a line per message, as the command line prints them (library calls log)."""
    text = "".join(r.getMessage() + "\n" for r in caplog.records if r.name.split(".")[0] == "imgcls")
    caplog.clear()
    return text


def api_train(*args, **options):
    """imgcls.train without the progress bar and, unless given, the report: a test's run."""
    import imgcls

    return imgcls.train(*args, progress=False, **({"report": False} | options))


def api_resume(run, **options):
    import imgcls

    return imgcls.resume(run, progress=False, **options)


def cache_torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """What torchvision's download of a model's ImageNet weights would leave in torch.hub's cache (TORCH_HOME must point
    into the test's folder): a 1000-class state dict, here random, under the weights' own file name."""
    import torchvision.models as tvm

    from imgcls.models.torchvision_models import base_name, cache_path, default_weights

    torch.manual_seed(1)
    net = tvm.get_model(base_name(name), weights=None)
    # Batch-norm statistics of real activations, as trained weights have: the initial ones blow eval logits up to hundreds.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 32))
    state = net.state_dict()
    path = cache_path(default_weights(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def cli_train(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`imgcls train ARGS --out ROOT/run` in a subprocess (offline, own cache), for fixtures that share one run."""
    env = {**os.environ, "IMGCLS_OFFLINE": "1", "IMGCLS_CACHE": str(root / "cache")}
    command = [sys.executable, "-m", "imgcls", "train", *args, "--out", str(root / "run")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def digit_run(tmp_path_factory):
    """`imgcls train --epochs 3` on the embedded MNIST sample, shared by the predict, export and serve
    tests. Tests that write into a run folder copy it first."""
    root = tmp_path_factory.mktemp("digit-run")
    cli_train(root, "--epochs", "3")
    return root / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, log: Path, *args: str):
    """`imgcls serve RUN ARGS` in a subprocess on a free loopback port, output to `log`: its base URL once it answers."""
    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(run), "--port", str(port), *args], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(server, url, log, "imgcls serve")
        yield url
    finally:
        server.terminate()
        server.wait(10)


def wait_for_health(server: subprocess.Popen, url: str, log: Path, what: str) -> None:
    """Until the server process answers GET /health (60 s at most; its log shown when it exits or never answers)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None, f"{what} exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"{what} did not answer in 60 s: {log.read_text()}"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def served(digit_run, tmp_path_factory):
    """`imgcls serve` of the digit run in a subprocess on a free loopback port: its base URL."""
    with serving(digit_run, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@contextlib.contextmanager
def chromium():
    """Debian's headless Chromium driven by Playwright (its own browser download is not used). Skips with the
    reason when either is missing; CI sets IMGCLS_REQUIRE_BROWSER so a missing browser fails there instead."""
    reason = None
    if shutil.which(CHROMIUM) is None:
        reason = "Chromium not found: apt-get install chromium (CI's .ci/run installs it)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "playwright is not installed: pip install -e '.[dev]'"
    if reason:
        (pytest.fail if os.environ.get("IMGCLS_REQUIRE_BROWSER") else pytest.skip)(reason)
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
