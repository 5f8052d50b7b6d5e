"""Labels from a table: a CSV of image paths and labels (with or without a header, a split column, integer labels
named by --classes, paths under --image-root), or a pandas DataFrame from Python."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from conftest import api_train, one_line_error, run_cli

CLASSES = ("bulbasaur", "charmander", "squirtle")
COLOURS = ((60, 160, 60), (220, 90, 40), (60, 110, 220))


def pokemon(root: Path, per_class: int = 20) -> list[tuple[str, int]]:
    """The course's Pokemon shape: root/pokemon/<class>/<file>.jpg, a colour per class; (path, class number) of each."""
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        (root / "pokemon" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(COLOURS[c], 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "pokemon" / name / f"{i:08d}.jpg")
            rows.append((f"pokemon/{name}/{i:08d}.jpg", c))
    return rows


def test_the_seeds_headerless_images_csv_trains_as_it_is_and_lists_the_rows_it_skips(tmp_path, capsys):
    rows = pokemon(tmp_path)
    lines = [f"{path},{label}" for path, label in rows] + ["pokemon/missing/0.jpg,1", "pokemon/squirtle/00000001.jpg,"]
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "pokemon" / "squirtle" / "00000002.jpg").write_bytes(b"not a jpeg")
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "images.csv", "--epochs", "3", "--out", "r")
    assert code == 0, err
    assert f"{tmp_path / 'images.csv'}: 62 rows, 60 used, 2 skipped" in out
    assert "data images: " in out and ", 3 classes" in out
    skipped = Path("r/skipped_files.txt").read_text()
    assert "pokemon/missing/0.jpg: No such file or directory" in skipped and "pokemon/squirtle/00000001.jpg: empty label" in skipped
    assert "pokemon/squirtle/00000002.jpg: " in skipped  # unreadable, as in folders
    config = json.loads(Path("r/config.json").read_text())
    assert config["data"] == str(tmp_path / "images.csv")
    split = json.loads(Path("r/split.json").read_text())
    assert sum(map(len, split.values())) == 59 and split["train"][0].startswith("pokemon/")
    assert json.loads(Path("r/summary.json").read_text())["classes"] == ["0", "1", "2"]  # integers kept as their strings
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = subprocess.run([sys.executable, "-m", "imgcls", "evaluate", str(Path("r").resolve())], capture_output=True, text=True,
                               cwd=elsewhere, timeout=300)  # fmt: skip
    assert evaluated.returncode == 0 and "images test:" in evaluated.stdout, evaluated.stderr


def test_a_header_names_the_columns_labels_may_be_names_and_a_split_column_is_honoured(tmp_path):
    rows = pokemon(tmp_path / "photos")
    splits = ["train"] * 12 + ["val"] * 4 + ["test"] * 4
    table = "id,filename,label,split\n" + "".join(
        f"{i},{path},{CLASSES[label]},{splits[i % 20]}\n" for i, (path, label) in enumerate(rows)
    )  # fmt: skip
    (tmp_path / "labels.csv").write_text(table)
    run = api_train(str(tmp_path / "labels.csv"), image_root=str(tmp_path / "photos"), epochs=2, out=tmp_path / "run")
    split = json.loads((run.dir / "split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (36, 12, 12)
    assert run.summary["classes"] == sorted(CLASSES)
    assert run.config["image_root"] == str(tmp_path / "photos")


def test_integer_labels_are_named_by_classes(tmp_path, capsys):
    rows = pokemon(tmp_path)
    (tmp_path / "images.csv").write_text("".join(f"{path},{label}\n" for path, label in rows))
    code, _, err = run_cli(
        capsys, "train", "--data", tmp_path / "images.csv", "--classes", ",".join(CLASSES), "--epochs", "1", "--out", "r"
    )
    assert code == 0, err
    assert json.loads(Path("r/summary.json").read_text())["classes"] == list(CLASSES)
    code, out, err = run_cli(capsys, "predict", "r", tmp_path / "pokemon" / "squirtle" / "00000003.jpg", "--format", "json")
    assert code == 0 and json.loads(out)[0]["predictions"][0]["label"] in CLASSES, err
    bad = one_line_error(capsys, "train", "--data", tmp_path / "images.csv", "--classes", "a,b", "--epochs", "1")
    assert "has label 2, but --classes names 2 classes (0 to 1)" in bad


def test_a_dataframe_trains_from_python(tmp_path):
    pandas = pytest.importorskip("pandas")
    rows = pokemon(tmp_path)
    frame = pandas.DataFrame({"image": [p for p, _ in rows], "label": [CLASSES[c] for _, c in rows]})
    run = api_train(frame, image_root=str(tmp_path), epochs=3, out=tmp_path / "run")
    assert run.config["data"] == "python:DataFrame" and run.summary["classes"] == sorted(CLASSES)
    assert imgcls.evaluate(run, frame).images == run.summary["test_images"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "has no rows"),
        ("path,label\nnowhere.jpg,cat\n", "has no usable rows (1 skipped, e.g. nowhere.jpg: No such file or directory)"),
        ("path,label\npokemon/bulbasaur/00000000.jpg,a\npokemon/bulbasaur/00000001.jpg,a\n", "has a single class (a)"),
        ("path,kind\npokemon/bulbasaur/00000000.jpg,a\n", "has no label column (path, kind)"),
    ],
    ids=["empty", "no-usable-rows", "one-class", "no-columns"],
)
def test_a_table_that_cannot_train_is_one_line_naming_the_file(tmp_path, capsys, text, fragment):
    pokemon(tmp_path, per_class=2)
    (tmp_path / "t.csv").write_text(text)
    err = one_line_error(capsys, "train", "--data", tmp_path / "t.csv", "--epochs", "1")
    assert str(tmp_path / "t.csv") in err and fragment in err
