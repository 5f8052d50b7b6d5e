"""Hugging Face datasets (`--data hf:...`), built and saved locally with save_to_disk: never the network."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import api_train, one_line_error, run_cli

datasets = pytest.importorskip("datasets", reason="the hf extra is not installed: pip install -e '.[dev]'")
NAMES = ["dark", "mid", "light"]
datasets.disable_progress_bars()  # save_to_disk's bars would land in the captured stderr


def split(n: int, seed: int = 0, image="picture", label="kind", size=(20, 20)) -> "datasets.Dataset":
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(np.clip(rng.normal([40, 120, 200][i % 3], 20, (*size, 3)), 0, 255).astype(np.uint8)) for i in range(n)]
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=NAMES), "note": datasets.Value("string")})
    return datasets.Dataset.from_dict({image: images, label: [i % 3 for i in range(n)], "note": ["x"] * n}, features=features)


def saved(path: Path, **splits) -> Path:
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_a_saved_dataset_trains_with_its_splits_and_is_found_again_from_anywhere(tmp_path, capsys):
    folder = saved(tmp_path / "shades", train=split(120), validation=split(30, 1), test=split(30, 2))
    code, out, err = run_cli(capsys, "train", "--data", f"hf:{folder}", "--epochs", "12", "--out", "r")
    assert code == 0, err
    assert "data shades: 120 train / 30 val / 30 test, 3x20x20, 3 classes" in out
    summary = json.loads(Path("r/summary.json").read_text())
    assert summary["classes"] == NAMES and summary["test_accuracy"] > 0.6
    config = json.loads(Path("r/config.json").read_text())
    assert config["data"] == f"hf:{folder}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = subprocess.run([sys.executable, "-m", "imgcls", "evaluate", str(Path("r").resolve())], capture_output=True, text=True,
                               cwd=elsewhere, timeout=300)  # fmt: skip
    assert evaluated.returncode == 0 and "shades test: 30 images" in evaluated.stdout, evaluated.stderr
    code, out, err = run_cli(capsys, "train", "--data", f"hf:{folder}", "--epochs", "1", "--out", "again")
    assert code == 0 and "decoding" not in err  # the second run maps the cached decode


def test_missing_splits_are_held_out_and_columns_may_be_named(tmp_path):
    features = datasets.Features({"a": datasets.Image(), "b": datasets.Image(), "y": datasets.ClassLabel(names=NAMES)})
    images = [Image.fromarray(np.full((12, 12, 3), 40 * (i % 3), np.uint8)) for i in range(100)]
    only = datasets.Dataset.from_dict({"a": images, "b": images, "y": [i % 3 for i in range(100)]}, features=features)
    only.save_to_disk(str(tmp_path / "one"))
    run = api_train(f"hf:{tmp_path / 'one'}", image_column="b", label_column="y", epochs=1, out=tmp_path / "run")
    assert abs(run.summary["test_images"] - 20) <= 2 and run.config["image_column"] == "b"  # 20% held out for test, then val


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (lambda p: saved(p, train=split(9)), ["--label-column", "nope"], "has no column 'nope'"),
        (lambda p: saved(p, train=split(9)), ["--label-column", "note"], "'note' column is no ClassLabel"),
        (lambda p: saved(p, validation=split(9)), [], "has no train split (validation)"),
        (lambda p: p, [], "cannot load the Hugging Face dataset"),
    ],
    ids=["unknown-column", "not-classes", "no-train", "nothing-there"],
)
def test_a_dataset_that_cannot_train_is_one_line(tmp_path, capsys, make, args, fragment):
    make(tmp_path / "ds")
    err = one_line_error(capsys, "train", "--data", f"hf:{tmp_path / 'ds'}", "--epochs", "1", *args)
    assert fragment in err, err
