import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import StopAt, api_train, cli_train, make_folder, run_cli
from imgcls.data import load_dataset


def imgcls(*args, timeout=120):
    """The installed console script in a subprocess: what a user sees, exit code included."""
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short default-data run shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("shared-run")
    return root / "run", cli_train(root, "--epochs", "1")


def test_train_with_no_arguments_uses_the_embedded_sample(trained_run):
    run, result = trained_run
    assert "data mnist-sample: 9,000 train / 1,000 val / 2,000 test" in result.stdout
    assert "epoch 1/1" in result.stdout and "test accuracy" in result.stdout
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.csv", "best.pt", "last.pt", "summary.json", "confusion_matrix.csv"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8 and summary["epochs_run"] == 1 and summary["num_params"] == 422_250
    assert set(summary["per_class_accuracy"]) == {str(d) for d in range(10)}
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "mnist-sample" and config["model"] == "digitnet" and config["recipe"] == "fast" and config["lr"] > 0
    assert config["flip"] is False and config["tta"] is False


def test_default_run_folder_names_count_up(capsys):
    for n in (1, 2):
        code, out, _ = run_cli(capsys, "train", "--epochs", "1", "--model", "mlp", "--val-fraction", "0.5")
        assert code == 0 and f"runs/mnist-sample-mlp-{n}" in out
    assert Path("runs/mnist-sample-mlp-2/best.pt").is_file()


def test_evaluate_prints_per_class_accuracy_and_the_confusion_matrix(trained_run, capsys):
    run, _ = trained_run
    code, out, _ = run_cli(capsys, "evaluate", run, "--out", "eval")
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert f"accuracy {summary['test_accuracy']:.2%}" in out  # the same best checkpoint on the same test set
    assert "true \\ predicted" in out and "class" in out
    rows = Path("eval/confusion_matrix_test.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(sum(map(int, r.split(",")[1:])) for r in rows[1:]) == 2000


def test_folder_training_saves_its_split_and_evaluate_reuses_it(tmp_path, capsys):
    make_folder(tmp_path / "shapes", classes=("dark", "light"), per_class=15)
    code, out, _ = run_cli(capsys, "train", "--data", tmp_path / "shapes", "--epochs", "3", "--out", "r", "--batch-size", "8")
    assert code == 0, out
    split = json.loads(Path("r/split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (18, 6, 6)
    code, out, _ = run_cli(capsys, "evaluate", "r")
    assert code == 0 and "test: 6 images" in out


def test_skipped_files_are_listed_in_the_run_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "d", per_class=10)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code, _, err = run_cli(capsys, "train", "--data", root, "--epochs", "1", "--out", "r")
    assert code == 0 and "skipped 1 unreadable files" in err
    assert Path("r/skipped_files.txt").read_text().startswith("cat/broken.jpg:")


def test_datasets_and_models_are_listed(capsys):
    _, out, _ = run_cli(capsys, "datasets")
    assert all(name in out for name in ("mnist-sample", "mnist", "cifar10", "cifar2", "PATH"))
    _, out, _ = run_cli(capsys, "models")
    assert "76,922" in out and "resnet18" in out
    code, out, _ = run_cli(capsys, "models", "--summary", "lenet5", "--input", "1,28,28", "--classes", "3")
    assert code == 0 and "total params" in out


def test_ctrl_c_saves_last_and_resume_finishes_like_an_uninterrupted_run(tmp_path):
    args = ["train", "--model", "mlp", "--epochs", "4", "--seed", "3", "--device", "cpu"]
    straight = imgcls(*args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgcls", *args, "--out", str(tmp_path / "cut")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"resume with: imgcls train --resume {tmp_path / 'cut'}" in err and "Traceback" not in err
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = imgcls("train", "--resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    expected = json.loads((tmp_path / "straight" / "summary.json").read_text())
    got = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert got["test_loss"] == expected["test_loss"] and got["test_accuracy"] == expected["test_accuracy"]
    assert got["epochs_run"] == 4


def one_line_error(result, *fragments):
    """Bad input: non-zero exit, no traceback, one line on stderr naming the problem."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_subprocess_errors_are_one_line(tmp_path):
    one_line_error(imgcls("train", "--data", "svhn"), "unknown dataset 'svhn'", "mnist-sample")
    one_line_error(imgcls("train", "--model", "vgg"), "unknown model 'vgg'", "resnet18")
    one_line_error(imgcls("train", "--data", tmp_path / "nowhere"), "does not exist")
    one_line_error(imgcls("evaluate", tmp_path / "no-run"), "does not exist")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["train", "--data", "mnist"], ["MNIST not found in", "IMGCLS_DATA"]),
        (["train", "--data", "cifar2"], ["CIFAR10 not found in", "cifar-10-batches-py"]),
        (["train", "--epochs", "0"], ["--epochs must be positive"]),
        (["train", "--patience", "-1"], ["--patience must be zero or more"]),
        (["train", "--lr", "0"], ["--lr must be positive"]),
        (["train", "--model", "cnn", "--dropout", "0.5"], ["--dropout applies to: mlp"]),
        (["train", "--resume", "runs/none"], ["does not exist"]),
        (["train", "--resume", "x", "--epochs", "3"], ["drop --epochs"]),
        (["train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1e9", "--epochs", "1"], ["loss became", "lower --lr"]),
    ],
    ids=["mnist-offline", "cifar-offline", "epochs", "patience", "lr", "dropout", "resume-missing", "resume-flags", "nan"],
)
def test_bad_input_gets_a_clear_error(capsys, args, fragments):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("imgcls: error:") and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err


def test_folder_problems_get_a_clear_error(tmp_path, capsys):
    make_folder(tmp_path / "one", classes=("cat",))
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "one")
    assert code == 2 and "only one class" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "empty")
    assert code == 2 and "no class folders" in err


def test_checkpoint_from_other_classes_is_refused(trained_run, tmp_path, capsys):
    run, _ = trained_run
    make_folder(tmp_path / "two", classes=("a", "b"), size=(28, 28), mode="L")
    code, _, err = run_cli(capsys, "evaluate", run, "--data", tmp_path / "two")
    assert code == 2 and "the model knows 10 classes" in err and "2" in err


def test_damaged_and_foreign_checkpoints_are_refused(tmp_path, capsys, trained_run):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "junk.pt")
    assert code == 2 and "cannot read" in err and "damaged or not an imgcls checkpoint" in err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "foreign.pt")
    assert code == 2 and "not an imgcls checkpoint" in err
    ckpt = torch.load(trained_run[0] / "best.pt", weights_only=True)
    ckpt["model"] = "lenet5"
    torch.save(ckpt, tmp_path / "swapped.pt")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "swapped.pt")
    assert code == 2 and "does not match model 'lenet5'" in err


def test_out_folder_holding_a_run_is_not_overwritten(trained_run, capsys):
    code, _, err = run_cli(capsys, "train", "--out", trained_run[0])
    assert code == 2 and "already holds a run" in err and "--resume" in err


def test_resume_of_a_finished_run_only_retests(trained_run, capsys):
    before = json.loads((trained_run[0] / "summary.json").read_text())
    code, out, _ = run_cli(capsys, "train", "--resume", trained_run[0])
    assert code == 0 and "finished, re-testing" in out
    assert json.loads((trained_run[0] / "summary.json").read_text())["test_loss"] == before["test_loss"]


def test_resume_refuses_data_that_changed_under_the_run(tmp_path, capsys):
    root = make_folder(tmp_path / "d", per_class=10)
    assert run_cli(capsys, "train", "--data", root, "--epochs", "1", "--out", "r")[0] == 0
    make_folder(root, classes=("cat", "dog", "eel"), per_class=10)
    code, _, err = run_cli(capsys, "train", "--resume", "r")
    assert code == 2 and "changed since it was trained" in err


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "imgcls"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("imgcls ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error(capsys):
    code, _, err = run_cli(capsys, "train", "--device", "cuda")
    assert code == 2 and "no CUDA GPU is visible" in err


def test_resume_refuses_a_last_checkpoint_that_does_not_fit_its_model(trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run[0] / "last.pt", weights_only=True)
    ckpt["config"]["model"] = "lenet5"
    (tmp_path / "edited").mkdir()
    torch.save(ckpt, tmp_path / "edited" / "last.pt")
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "edited")
    assert code == 2 and "does not fit model 'lenet5'" in err and "start a new run" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_last_at_the_current_step_like_ctrl_c(tmp_path, signum):
    """Containers, Kubernetes and SLURM stop jobs with SIGTERM; a closed terminal sends SIGHUP."""
    run = tmp_path / "cut"
    command = [sys.executable, "-m", "imgcls", "train", "--model", "mlp", "--epochs", "2", "--device", "cpu", "--out", str(run)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"resume with: imgcls train --resume {run}" in err and "Traceback" not in err
    progress = torch.load(run / "last.pt", weights_only=True)["progress"]
    assert progress["epoch"] == 1 and progress["step"] >= 1  # saved mid-epoch, not at the last epoch's end
    resumed = imgcls("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2/2" in resumed.stdout and json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def limit_file_size(limit: int):
    """What a full disk does to the writes of a subprocess: they fail (EFBIG) past `limit` bytes."""

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_full_disk_is_one_line_and_the_run_resumes_once_space_is_freed(tmp_path):
    run = tmp_path / "full"
    # mlp's best.pt (2.3 MB) fits, its last.pt (4.6 MB, with the optimizer's state) does not: the first epoch
    # leaves best.pt and no training state, which used to make the folder neither resumable nor reusable.
    command = [sys.executable, "-m", "imgcls", "train", "--model", "mlp", "--epochs", "2", "--device", "cpu", "--out", str(run)]
    load_dataset("mnist-sample")  # into the cache the process shares, which would not fit under the limit either
    full = subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size(3 * 2**20))
    one_line_error(full, f"cannot write last.pt in {run} (File too large)", f"resume with `imgcls train --resume {run}`")
    assert (run / "best.pt").is_file() and not (run / "last.pt").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    resumed = imgcls("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "no training state was saved, starting the run over" in resumed.stdout
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def test_a_run_on_a_relative_folder_path_finds_its_data_from_anywhere(tmp_path, monkeypatch, capsys):
    from imgcls.report import report_run

    make_folder(tmp_path / "shapes", per_class=15)
    code, _, err = run_cli(capsys, "train", "--data", "shapes", "--model", "mlp", "--epochs", "1", "--batch-size", "8", "--out", "r")
    assert code == 0, err
    assert json.loads(Path("r/config.json").read_text())["data"] == str(tmp_path / "shapes")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for args in (["train", "--resume", "../r"], ["evaluate", "../r"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 0, (args, err)
    report_run("../r")  # its plots are left out in tests, its data is not
    code, _, err = run_cli(capsys, "evaluate", "../r", "--data", "../shapes")  # the same folder, named relatively: the run's split
    assert code == 0 and err == "", err
    code, out, err = run_cli(capsys, "export", "../r", "--format", "torchscript")
    assert code == 0 and "parity on 6 images of the shapes test split" in out and err == ""
    (tmp_path / "shapes").rename(tmp_path / "moved")
    code, out, err = run_cli(capsys, "export", "../r", "--format", "torchscript")
    assert code == 0 and "random images" in out
    assert err.startswith(f"warning: the run's data {tmp_path / 'shapes'} was not found, the parity check runs on random pixels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_run_trained_on_cuda_resumes_and_evaluates_on_a_cpu_only_machine(tmp_path, capsys):
    root = make_folder(tmp_path / "shapes", per_class=15)
    stopped = api_train(str(root), model="mlp", epochs=2, batch_size=4, out="r", callbacks=[StopAt(2, 1)])  # as if by Ctrl-C
    assert stopped.interrupted is not None
    for name in ("best.pt", "last.pt"):  # what a GPU run writes: its device, and CUDA-sized generator states
        ckpt = torch.load(Path("r", name), weights_only=True)
        ckpt["config"]["device"] = "cuda"
        if "rng" in ckpt:
            ckpt["rng"].update(augment=torch.zeros(16, dtype=torch.uint8), cuda=torch.zeros(16, dtype=torch.uint8))
        torch.save(ckpt, Path("r", name))
    code, out, err = run_cli(capsys, "evaluate", "r")
    assert code == 0, err
    shutil.copytree("r", "r2")
    code, out, err = run_cli(capsys, "train", "--resume", "r")
    assert code == 0, err
    assert err == "r trained on --device cuda, which this machine lacks: resuming with --device auto\n"
    assert "resuming at epoch 2/2" in out
    code, out, err = run_cli(capsys, "train", "--resume", "r2", "--device", "cpu")
    assert code == 0 and err == "" and "params on cpu" in out, err
