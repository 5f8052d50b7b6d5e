"""Every kind of data and training of the data-and-tasks issue goes through every command: a table with a header, the
course's headerless images.csv, a multi-label table, a saved Hugging Face dataset, skewed classes sampled evenly, and
batch augmentations each train from Python, then report, export (its parity check re-reads the run's own data),
predict, evaluate and serve."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgcls
from conftest import api_train, make_folder, run_cli


def header_table(root: Path) -> tuple[str, dict]:
    from test_table import pokemon

    rows = pokemon(root)
    (root / "labels.csv").write_text("filename,label\n" + "".join(f"{p},{['bulbasaur', 'charmander', 'squirtle'][c]}\n" for p, c in rows))
    return str(root / "labels.csv"), {}


def images_csv(root: Path) -> tuple[str, dict]:
    from test_table import CLASSES, pokemon

    rows = pokemon(root)
    (root / "images.csv").write_text("".join(f"{p},{c}\n" for p, c in rows))
    return str(root / "images.csv"), {"classes": ",".join(CLASSES)}


def multi_label(root: Path) -> tuple[str, dict]:
    from test_multilabel import squares

    return str(squares(root, n=120)), {"label_delim": " "}


def hugging_face(root: Path) -> tuple[str, dict]:
    pytest.importorskip("datasets")
    from test_hf import saved, split

    return f"hf:{saved(root / 'shades', train=split(60), test=split(30, 2))}", {}


def skewed_sampled(root: Path) -> tuple[str, dict]:
    folder = make_folder(root / "skewed", classes=("common", "rare"), per_class=40)
    for i in range(30):
        (folder / "rare" / f"{i:03d}.png").unlink()
    return str(folder), {"balance": "sample"}


def batch_augmented(root: Path) -> tuple[str, dict]:
    return str(make_folder(root / "photos", classes=("cat", "dog", "owl"), per_class=16)), {
        "mixup": 0.2,
        "cutmix": 1.0,
        "auto_augment": "rand",
    }


@pytest.mark.parametrize("make", [header_table, images_csv, multi_label, hugging_face, skewed_sampled, batch_augmented])
def test_each_kind_of_data_trains_reports_exports_predicts_evaluates_and_serves(tmp_path, capsys, make):
    data, options = make(tmp_path)
    run = api_train(data, epochs=1, out=tmp_path / "run", **options)
    classes = run.summary["classes"]
    assert run.config["data"] == data and all(run.config[k] == v for k, v in options.items())
    image = tmp_path / "new.png"
    Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(image)

    code, out, err = run_cli(capsys, "report", run.dir)
    assert code == 0 and (run.dir / "report.html").is_file(), err
    code, out, err = run_cli(capsys, "export", run.dir, "--format", "onnx", "--parity-images", "8")
    assert code == 0 and "parity on 8 images of the" in out and "random" not in out + err, err  # parity on the run's own test images
    assert json.loads((run.dir / "best.onnx.json").read_text())["classes"] == classes
    code, out, err = run_cli(capsys, "predict", run.dir, image, "--format", "json")
    assert code == 0 and json.loads(out)[0]["predictions"][0]["label"] in classes, err

    assert imgcls.evaluate(run).images == run.summary["test_images"]
    prediction = imgcls.load(run.dir / "best.onnx", backend="onnx").predict(image)[0]
    assert prediction.label in classes and set(prediction.labels) <= set(classes)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imgcls.server.app import create_app

    with TestClient(create_app(imgcls.load(run))) as client:
        answer = client.post("/predict", files={"file": ("new.png", image.read_bytes(), "image/png")})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in classes
