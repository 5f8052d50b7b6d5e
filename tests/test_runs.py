"""Run folders under stress: full disks, failed cache writes, and two processes on one run."""

import errno
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_folder
from imgcls import checkpoint, files
from imgcls.cli import main
from imgcls.errors import ImgclsError
from imgcls.rundir import lock_run


def no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """A file whose writes fail as on a full disk, for the real torch.save: its zip writer then raises what it raises there."""

    def __init__(self, f):
        self.f = f

    write = no_space

    def flush(self):
        self.f.flush()


def test_a_failed_write_names_the_folder_and_cause_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    checkpoint.atomic_save({"epoch": 1}, path)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FullDisk(f)))
    with pytest.raises(
        ImgclsError, match=rf"^cannot write last.pt in {tmp_path / 'run'} \(No space left on device\); the previous last.pt is kept"
    ):
        checkpoint.atomic_save({"epoch": 2}, path)
    with pytest.raises(ImgclsError, match=r"cannot write summary.json .*\(No space left on device\); no summary.json was written"):
        files.atomic_write(tmp_path / "run" / "summary.json", no_space)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary files left behind


def test_a_cache_that_cannot_be_written_warns_and_training_goes_on(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "shapes", per_class=10)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # Only the decoded-images cache, which reserves its space first, hits the full disk; the run's own checkpoints still fit.
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    assert main(["train", "--data", str(root), "--epochs", "1", "--model", "mlp", "--out", "r"]) == 0
    err = capsys.readouterr().err
    assert "could not cache the decoded images, going on without" in err and "No space left on device" in err
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_images_that_neither_the_cache_nor_memory_hold_are_one_line_before_decoding(tmp_path, monkeypatch, capsys):
    from imgcls.data import mapped

    root = make_folder(tmp_path / "shapes", per_class=10)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    monkeypatch.setattr(mapped, "available_memory", lambda: 20 * 3 * 64 * 64 - 1)  # a byte short of the 20 images at 64 px
    for data in (str(root), "mnist-sample"):  # a folder decoded, a named dataset resized
        assert main(["train", "--data", data, "--image-size", "64", "--epochs", "1", "--out", "r"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("imgcls: error: the decoded images take ") and "GB of memory free: use a smaller --image-size" in err
    assert main(["train", "--data", str(root), "--image-size", "32", "--epochs", "1", "--model", "mlp", "--out", "r"]) == 0  # 32 px fits


def test_a_run_folder_in_use_is_refused_with_the_holders_pid(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from imgcls.rundir import lock_run\nwith lock_run(sys.argv[1]):\n print('held', flush=True); time.sleep(120)", "r"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        for args in (["train", "--epochs", "1", "--model", "mlp", "--out", "r"], ["train", "--resume", "r"]):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert (
                err
                == f"imgcls: error: r is in use by another imgcls process (pid {holder.pid}): wait for it to end or choose another --out\n"
            )
    finally:
        holder.kill()
        holder.wait(10)
    with lock_run(tmp_path / "r"):  # the lock ended with its process: none goes stale
        pass


def test_a_run_folder_is_named_after_the_class_of_a_users_model(tmp_path):
    from imgcls.rundir import new_run_dir

    assert new_run_dir("mnist-sample", "/home/me/project/nets.py:Net", None, root=str(tmp_path)).name == "mnist-sample-Net-1"
    assert new_run_dir("mnist-sample", "__main__:Net", None, root=str(tmp_path)).name == "mnist-sample-Net-2"
    assert new_run_dir("photos", "tv:resnet18", None, root=str(tmp_path)).name == "photos-tv-resnet18-1"
    assert new_run_dir("photos", "timm:convnext_nano", None, root=str(tmp_path)).name == "photos-timm-convnext_nano-1"
