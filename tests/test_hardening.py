"""The second hardening pass: stop signals at any moment, special files, names that are not UTF-8, sizes and
checkpoint contents that cannot work, a cache that lost its content, stale temporary files, and library noise."""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import logged, make_folder, one_line_error, run_cli, save_checkpoint

# Names that are not UTF-8 (Linux allows any bytes but / and NUL), as Python holds them: surrogate escapes.
BAD_NAME = os.fsdecode(b"bad\xffname.jpg")
ODD_NAME = os.fsdecode(b"odd\xfe.png")
ODD_CLASS = os.fsdecode(b"caf\xe9")


def imgcls(*args, timeout=180, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], capture_output=True, text=True, timeout=timeout, errors="surrogateescape",
                          env={**os.environ, **(env or {})}, **kwargs)  # fmt: skip


def single_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


# --- 1. stop signals while a folder decodes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """3,000 JPEGs of 96 px: decoding them keeps the workers busy for a second or more on two cores."""
    root = tmp_path_factory.mktemp("jpegs") / "photos"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(1500):
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg", quality=80)
    return root


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the task ended meanwhile
            found.update(int(p) for p in (task / "children").read_text().split())
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


COMMANDS = {
    "train": ["train", "--epochs", "1", "--batch-size", "512"],
    "check": ["datasets", "--check"],
}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to find the worker processes")
@pytest.mark.parametrize(
    "command,signum,delay",
    [
        ("train", signal.SIGTERM, 0.0),
        ("train", signal.SIGTERM, 0.4),
        ("train", signal.SIGTERM, 1.0),
        ("train", signal.SIGHUP, 0.3),
        ("train", signal.SIGKILL, 0.3),
        ("check", signal.SIGTERM, 0.3),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_a_stop_signal_while_decoding_leaves_no_process_behind_and_never_blocks_the_next_run(jpeg_folder, tmp_path, command, signum, delay):
    cache = tmp_path / "cache"
    env = {**os.environ, "IMGCLS_CACHE": str(cache), "IMGCLS_OFFLINE": "1"}
    args = [*COMMANDS[command], str(jpeg_folder)] if command == "check" else [*COMMANDS[command], "--data", str(jpeg_folder)]
    out = ["--out", str(tmp_path / "out")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgcls", *args, *out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline, workers = time.monotonic() + 120, set()
    while not workers and proc.poll() is None and time.monotonic() < deadline:
        workers = children(proc.pid)
        time.sleep(0.005)
    assert workers, f"no decode workers started: {proc.communicate()}"
    end = time.monotonic() + delay
    while time.monotonic() < end:
        workers |= children(proc.pid)
        time.sleep(0.005)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)  # would time out while an orphan holds the stderr pipe
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + signum, err
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(f"imgcls: interrupted ({signal.Signals(signum).name})"), err
    deadline = time.monotonic() + 10
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(running, workers)), f"workers outlived imgcls: {[w for w in workers if running(w)]}"
    if signum != signal.SIGKILL:
        assert not list(cache.glob(".*.tmp"))  # its half-written cache entry is gone
    # The next run on the same folder takes the cache lock and decodes, instead of waiting forever.
    again = imgcls("datasets", "--show", jpeg_folder, "--out", tmp_path / "grid.png", env=env, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "waiting for another imgcls process" not in again.stderr
    assert not list(cache.glob(".*.tmp"))  # what a killed run left half-written is removed too


def test_a_lock_held_by_a_dead_process_does_not_block_even_when_its_forked_child_lives(tmp_path):
    """flock locks are shared with forked children, so a decode worker that outlived its parent held the lock forever."""
    from imgcls.data import mapped

    script = (
        "import os, time\nfrom imgcls.data import mapped\n"
        "with mapped.locked('k', 'test'):\n"
        "    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n"
        "    print(os.getpid(), flush=True)\n    os._exit(0)\n"
    )
    env = {**os.environ, "IMGCLS_CACHE": os.environ["IMGCLS_CACHE"]}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60, stdout=subprocess.DEVNULL)
    taken = threading.Event()

    def take():
        with mapped.locked("k", "test"):
            taken.set()

    threading.Thread(target=take, daemon=True).start()
    try:
        assert taken.wait(20), "the lock of a dead process blocked"
    finally:
        subprocess.run(["pkill", "-f", "time.sleep\\(60\\)"], check=False)


# --- 2. special files --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_predict_and_train_skip_fifos_and_devices_instead_of_hanging(tmp_path, capsys):
    photos = make_folder(tmp_path / "photos", size=(28, 28), mode="L")
    os.mkfifo(photos / "cat" / "pipe.png")
    (photos / "dog" / "zero.png").symlink_to("/dev/zero")
    ckpt = save_checkpoint(tmp_path / "model.pt", classes=("cat", "dog"))
    # In a subprocess: on a FIFO, open() would wait for a writer forever.
    result = imgcls("predict", ckpt, photos, photos / "cat" / "pipe.png", "--format", "csv", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "cat/pipe.png (not a regular file: a named pipe (FIFO))" in result.stderr
    assert "dog/zero.png (not a regular file: a character device)" in result.stderr
    assert "2 of 26 files could not be read" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 27  # a header and every file, the unreadable ones with their error
    code, _, err = run_cli(capsys, "train", "--data", photos, "--epochs", "1", "--out", tmp_path / "run")
    assert code == 0, err
    skipped = (tmp_path / "run" / "skipped_files.txt").read_text()
    assert "cat/pipe.png: not a regular file: a named pipe (FIFO)" in skipped
    assert "dog/zero.png: not a regular file: a character device" in skipped


# --- 3. names that are not UTF-8 ------------------------------------------------------------------------------------


@pytest.mark.report
def test_names_that_are_not_utf8_train_skip_report_and_resume(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=("dog", ODD_CLASS), per_class=12)
    (root / "dog" / BAD_NAME).write_bytes(b"\xff\xd8\xff not a jpeg")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(root / ODD_CLASS / ODD_NAME)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", root, "--epochs", "2", "--out", run)
    assert code == 0, err
    assert (run / "skipped_files.txt").read_bytes().startswith(b"dog/bad\xffname.jpg: ")  # the name's own bytes
    split = json.loads((run / "split.json").read_bytes().decode("ascii"))  # escaped: ASCII, so valid UTF-8
    assert f"{ODD_CLASS}/{ODD_NAME}" in split["train"] + split["val"] + split["test"]
    assert "caf\\xe9" in (run / "report.html").read_text(encoding="utf-8")  # drawn and shown escaped
    evaluated = imgcls("evaluate", run)  # replays split.json by name; prints the class names as their bytes
    assert evaluated.returncode == 0 and "caf\udce9" in evaluated.stdout, evaluated.stderr


def test_label_errors_and_outputs_named_in_bytes_that_are_not_utf8(tmp_path):
    root = make_folder(tmp_path / "d", classes=("dark", "light"), per_class=16)
    Image.fromarray(np.full((16, 16, 3), 230, np.uint8)).save(root / "dark" / ODD_NAME)  # grey, light, filed as dark
    out = tmp_path / os.fsdecode(b"health\xff")
    checked = imgcls("datasets", "--check", root, "--label-errors", "--folds", "2", "--out", out)  # names the file on stdout
    assert checked.returncode == 0, checked.stderr
    grey = json.loads((out / "health.json").read_text())["odd_files"]["greyscale"]  # a grey picture in colour images
    assert grey == [{"file": f"dark/{ODD_NAME}", "detail": "grey pixels"}]
    assert (out / "health_odd_files.png").is_file()  # drawn with the name in it
    result = imgcls("train", "--epochs", "1", "--out", tmp_path / os.fsdecode(b"run\xff"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / os.fsdecode(b"run\xff") / "summary.json").is_file()


# --- 4. sizes that cannot work --------------------------------------------------------------------------------------


def test_sizes_that_cannot_work_are_one_line_before_any_allocation(tmp_path):
    single_line(imgcls("train", "--image-size", "100000"), "--image-size must be between 1 and 7,071")
    single_line(imgcls("train", "--width", "100000"), "--width must be between 1 and 4,096")
    single_line(imgcls("train", "--model", "lstm", "--hidden-size", "1000000000"), "--hidden-size must be between 1 and 65,536")
    single_line(imgcls("gan", "--image-size", "13", "--steps", "1"), "--image-size must be a multiple of 4 from 12 to 128")
    single_line(imgcls("gan", "--width", "100000", "--steps", "1"), "--width must be at most 512")


def test_speednet_refuses_images_its_whitening_stem_cannot_take(tmp_path, capsys):
    root = make_folder(tmp_path / "tiny", size=(8, 8))
    err = one_line_error(capsys, "train", "--data", root, "--epochs", "1")
    assert "model 'speednet' needs images of at least 9x9, got 8x8" in err


# --- 5. checkpoints whose contents do not fit -----------------------------------------------------------------------


@pytest.fixture
def digits(tmp_path) -> Path:
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "0.png")
    return folder


def edited(tmp_path: Path, name: str, **changes) -> Path:
    path = save_checkpoint(tmp_path / name, model="digitnet")
    ckpt = torch.load(path, weights_only=True)
    for key, change in changes.items():
        ckpt[key] = change(ckpt[key]) if callable(change) else change
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"model_options": {"hidden_size": 10**9}}, "holds model options that model 'digitnet' does not take (hidden_size)"),
        ({"state_dict": lambda s: {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in s.items()}},
         "holds weights that are not numbers (NaN or infinity in"),
        ({"std": [0.0]}, "has a normalisation that cannot work"),
    ],
    ids=["foreign-options", "nan-weights", "zero-std"],
)  # fmt: skip
def test_checkpoints_that_cannot_predict_are_refused_by_every_command(tmp_path, capsys, digits, changes, fragment):
    path = edited(tmp_path, "edited.pt", **changes)
    for args in (["predict", path, digits], ["evaluate", path], ["export", path], ["serve", path, "--port", "8999"]):
        err = one_line_error(capsys, *args)
        assert str(path) in err and fragment in err, (args, err)


def test_weights_with_foreign_options_name_the_file_not_an_option_never_passed(tmp_path, capsys):
    path = edited(tmp_path, "edited.pt", model_options={"hidden_size": 10})
    err = one_line_error(capsys, "train", "--weights", path, "--epochs", "1")
    assert f"--weights {path} holds model options that model 'digitnet' does not take (hidden_size)" in err
    assert "--hidden-size applies to" not in err


def test_a_torch_warning_never_comes_before_the_one_line_error(tmp_path, digits):
    path = tmp_path / "old.pt"
    torch.save({"format": "x", "a": torch.zeros(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=5)
    single_line(imgcls("predict", path, digits), f"cannot read {path}")


# --- 6. a cache that lost its content -------------------------------------------------------------------------------


def test_a_cache_whose_data_was_zeroed_is_detected_and_decoded_again(tmp_path, caplog):
    from imgcls.data import load_dataset
    from imgcls.paths import cache_dir

    root = make_folder(tmp_path / "d", per_class=20)
    first = load_dataset(str(root)).train.images.clone()  # a copy: the mapping would show the zeros written below
    logged(caplog)
    for data in cache_dir().glob("*.u8"):  # what a power loss after an unsynced write can leave: the size, not the bytes
        data.write_bytes(bytes(data.stat().st_size))
    again = load_dataset(str(root))
    assert "is damaged (its checksum differs): decoding it again" in logged(caplog)
    assert torch.equal(again.train.images, first) and first.max() > 0
    load_dataset(str(root))
    assert "damaged" not in logged(caplog)  # rebuilt, and intact from then on


# --- 7. stale temporary files, and library noise --------------------------------------------------------------------


def test_resume_removes_what_a_killed_write_left_in_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "mlp", "--epochs", "1", "--out", run)
    assert code == 0, err
    # A process killed (kill -9) in the middle of an atomic write of best.pt.
    script = "import os, sys\nfrom imgcls.files import atomic_write\natomic_write(sys.argv[1], lambda f: (f.write(b'x'), os.kill(os.getpid(), 9)))"
    killed = subprocess.run([sys.executable, "-c", script, str(run / "best.pt")], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    (run / ".last.pt.abc1_xyz.tmp").write_bytes(b"x")  # the same, as imgcls named it before temporary names held a pid
    mine = run / f".metrics.csv.{os.getpid()}-live.tmp"  # a live process's write in progress is left alone
    mine.write_bytes(b"x")
    assert len(list(run.glob(".*.tmp"))) == 3
    code, _, err = run_cli(capsys, "train", "--resume", run)
    assert code == 0, err
    assert list(run.glob(".*.tmp")) == [mine]


def test_libtiff_messages_go_to_logging_not_bare_to_stderr(tmp_path, capfd, caplog):
    import struct

    from imgcls.data.images import ImageReadError, read_image

    path = tmp_path / "damaged.tif"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path, compression="tiff_adobe_deflate")
    tiff = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for i in range(struct.unpack("<H", tiff[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", tiff[entry : entry + 2])[0] == 279:  # StripByteCounts: too few bytes for zlib
            tiff[entry + 8 : entry + 12] = struct.pack("<I", 3)
    path.write_bytes(bytes(tiff))
    with caplog.at_level(logging.DEBUG, logger="imgcls"), pytest.raises(ImageReadError):
        read_image(path, 1, (16, 16))
    assert "ZIPDecode" not in capfd.readouterr().err
    assert any("libtiff: ZIPDecode" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_a_malformed_multipart_upload_logs_no_warning_outside_the_server_log(digit_run, caplog):
    pytest.importorskip("fastapi", reason="imgcls[serve] is not installed")
    from fastapi.testclient import TestClient

    from imgcls.inference import Predictor
    from imgcls.server.app import create_app

    with TestClient(create_app(Predictor.open(digit_run, device="cpu"))) as client, caplog.at_level(logging.DEBUG):
        body = b'--b0unXary\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\nxx\r\n--b0undary--\r\n'
        response = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 400
    boundary = [r for r in caplog.records if "Expected boundary character" in r.getMessage()]
    assert boundary and all(r.levelno == logging.DEBUG for r in boundary)
