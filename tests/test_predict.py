import csv
import io
import json
import shutil
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_checkpoint
from imgcls.cli import main
from imgcls.data.folder import decode
from imgcls.data.images import load_image
from imgcls.errors import ImgclsError
from imgcls.inference import Predictor, collect_files, predict_files

EXIF_ROTATE_90_CW = 6  # orientation tag: the stored pixels must be turned 90 degrees clockwise to stand upright


def picture(width=40, height=30, seed=0) -> Image.Image:
    """An RGB picture with structure (a gradient and a bright block), so that rotations and crops show."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] += np.linspace(0, 150, width, dtype=np.uint8)
    pixels[: height // 3, : width // 4] = 250
    return Image.fromarray(pixels, "RGB")


def save_every_mode(folder, base: Image.Image) -> dict[str, str]:
    """The same picture in every image mode a user may have: file name -> what it is."""
    folder.mkdir(parents=True, exist_ok=True)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)  # 16-bit, values above 255
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90_CW
    files = {
        "l.png": base.convert("L"),
        "la.png": base.convert("LA"),
        "rgb.png": base,
        "rgba.png": base.convert("RGBA"),
        "p.gif": base.convert("P"),
        "bilevel.png": base.convert("1"),
        "i16.png": Image.fromarray(grey16),
        "cmyk.jpg": base.convert("CMYK"),
        "rgb.jpg": base,
    }
    for name, image in files.items():
        image.save(folder / name)
    base.save(folder / "exif.png", exif=exif)
    return {**{n: im.mode for n, im in files.items()}, "exif.png": "RGB + EXIF rotation"}


@pytest.mark.parametrize("channels", [1, 3])
def test_preprocessing_is_the_training_decode_for_every_image_mode(tmp_path, channels):
    kinds = save_every_mode(tmp_path / "imgs", picture())
    assert Image.open(tmp_path / "imgs" / "i16.png").mode.startswith("I")
    ckpt = save_checkpoint(tmp_path / "m.pt", "mlp", in_shape=(channels, 24, 24))
    predictor = Predictor.open(ckpt)
    names = sorted(kinds)
    trained = decode(tmp_path / "imgs", names, channels, 24)  # what `imgcls train --data FOLDER --image-size 24` decodes
    assert trained.ids == names and not trained.meta["skipped"]
    for name, expected in zip(names, trained.images.numpy()):
        assert np.array_equal(predictor.read(tmp_path / "imgs" / name), expected), f"{kinds[name]} differs from training"
    # The EXIF-rotated file is decoded upright: like the picture turned by hand, not like its stored pixels.
    upright = load_image(picture().transpose(Image.Transpose.ROTATE_270), channels, (24, 24))
    assert np.array_equal(predictor.read(tmp_path / "imgs" / "exif.png"), upright)
    assert not np.array_equal(upright, load_image(picture(), channels, (24, 24)))
    # And 16-bit pixels are scaled down, not clipped to white.
    assert np.array_equal(predictor.read(tmp_path / "imgs" / "i16.png"), predictor.read(tmp_path / "imgs" / "l.png"))


def test_batched_probabilities_match_the_model_on_the_training_decode(tmp_path):
    save_every_mode(tmp_path / "imgs", picture())
    ckpt = save_checkpoint(tmp_path / "m.pt", "cnn", in_shape=(3, 24, 24))
    predictor = Predictor.open(ckpt)
    files = collect_files([str(tmp_path / "imgs")])
    by_two = [r.probs for r in predict_files(predictor, files, batch_size=2)]
    all_at_once = [r.probs for r in predict_files(predictor, files, batch_size=256)]
    assert torch.allclose(torch.stack(by_two), torch.stack(all_at_once), atol=1e-6)
    from imgcls.checkpoint import load_model, normalisation

    ck = torch.load(ckpt, weights_only=True)
    ck["path"] = str(ckpt)
    mean, std = normalisation(ck)
    images = decode(tmp_path / "imgs", [f.relative_to(tmp_path / "imgs").as_posix() for f in files], 3, 24).images
    with torch.no_grad():
        expected = load_model(ck)((images.float() / 255 - mean) / std).softmax(1)
    assert torch.allclose(torch.stack(all_at_once), expected, atol=1e-6)


@pytest.fixture
def digits(tmp_path, digit_run):
    """A folder of mixed MNIST test digits the digit run is sure about: every mode, a subfolder, a corrupt
    file and a text file. Returns (folder, {file: true label})."""
    with resources.files("imgcls.assets").joinpath("mnist_sample.npz").open("rb") as f:
        sample = dict(np.load(f))
    predictor = Predictor.open(digit_run)
    images, labels = sample["test_images"][:60], sample["test_labels"][:60]
    probs = predictor.probabilities(torch.from_numpy(images).unsqueeze(1))
    # Sure: right with a wide margin (label smoothing 0.1 caps a trained digit model's top probability near 0.91).
    sure = [i for i in range(60) if probs[i].argmax() == labels[i] and probs[i].max() > 0.85][:8]
    assert len(sure) == 8, f"the digit run is sure of only {len(sure)} of 60 test digits"
    folder, truth = tmp_path / "mixed", {}
    modes = [
        ("a.png", "L"),
        ("b.png", "RGB"),
        ("c.png", "RGBA"),
        ("d.gif", "P"),
        ("e.png", "LA"),
        ("f.jpg", "CMYK"),
        ("sub/g.tif", "I;16"),
        ("sub/deeper/h.bmp", "RGB"),
    ]
    for (name, mode), i in zip(modes, sure):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray(images[i]).resize((56, 56), Image.Resampling.BILINEAR)  # not the model's size
        (Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257) if mode == "I;16" else grey.convert(mode)).save(path)
        truth[str(path)] = str(labels[i])
    (folder / "sub" / "corrupt.png").write_bytes((folder / "a.png").read_bytes()[:80])  # a truncated PNG
    (folder / "notes.txt").write_text("not an image")
    return folder, truth


def test_predict_a_mixed_folder_reports_the_corrupt_file_and_predicts_the_rest(digits, digit_run, capsys):
    folder, truth = digits
    code = main(["predict", str(digit_run), str(folder), "--format", "json", "--top-k", "3", "--batch-size", "3"])
    out, err = capsys.readouterr()
    assert code == 1  # some file was unreadable
    results = {r["file"]: r for r in json.loads(out)}
    corrupt = str(folder / "sub" / "corrupt.png")
    assert set(results) == {*truth, corrupt}  # recursive; the .txt file is not an image
    assert "error" in results[corrupt] and f"cannot read {corrupt}" in err and "1 of 9 files could not be read" in err
    for file, label in truth.items():
        top = results[file]["predictions"]
        assert len(top) == 3 and top[0]["label"] == label, file
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


def test_predict_table_and_csv(digits, digit_run, capsys):
    folder, truth = digits
    assert main(["predict", str(digit_run), str(folder / "a.png"), str(folder / "b.png")]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["file", "top-1", "top-2", "top-3", "top-4", "top-5"]
    assert lines[1].split()[:2] == [str(folder / "a.png"), truth[str(folder / "a.png")]] and lines[1].split()[2].endswith("%")
    assert main(["predict", str(digit_run), str(folder), "--format", "csv", "--top-k", "2"]) == 1
    out, _ = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["file", "label_1", "probability_1", "label_2", "probability_2", "error"]
    by_file = {r["file"]: r for r in rows}
    assert all(by_file[f]["label_1"] == label and float(by_file[f]["probability_1"]) > 0.5 for f, label in truth.items())
    assert by_file[str(folder / "sub" / "corrupt.png")]["error"].startswith(("OSError", "UnidentifiedImageError", "SyntaxError"))


def test_globs_recurse_and_missing_paths_are_one_line_errors(digits, digit_run, capsys, tmp_path):
    folder, _ = digits
    files = collect_files([str(folder / "**" / "*.png")])
    assert {f.name for f in files} == {"a.png", "b.png", "c.png", "e.png", "corrupt.png"}
    assert collect_files([str(folder / "*.png"), str(folder / "a.png")]) == sorted(folder.glob("*.png"))  # no repeats
    (tmp_path / "empty").mkdir()
    for paths, message in [
        (["nowhere.png"], "does not exist"),
        ([str(folder / "*.webp")], "no files match"),
        ([str(tmp_path / "empty")], "no image files in"),
    ]:
        with pytest.raises(ImgclsError, match=message):
            collect_files(paths)
    assert main(["predict", str(digit_run), "nowhere.png"]) == 2
    assert capsys.readouterr().err.startswith("imgcls: error: nowhere.png does not exist")
    assert main(["predict", str(tmp_path / "no-run"), str(folder)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_plot_saves_the_probability_figure(digits, digit_run, capsys, tmp_path):
    folder, _ = digits
    assert main(["predict", str(digit_run), str(folder), "--plot", str(tmp_path / "probs.png")]) == 1
    assert Image.open(tmp_path / "probs.png").format == "PNG"


def test_predict_on_a_copied_run_without_its_data(digit_run, digits, capsys, tmp_path):
    """A run folder is self-contained for predict: the checkpoint carries classes, size and normalisation."""
    folder, truth = digits
    shutil.copy(digit_run / "best.pt", tmp_path / "model.pt")
    assert main(["predict", str(tmp_path / "model.pt"), str(folder / "a.png"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"] == truth[str(folder / "a.png")]


def test_predict_uses_the_runs_flip_tta(tmp_path):
    """A run that evaluated with flip TTA predicts the same way: logits averaged with the mirror image's."""
    ckpt_path = save_checkpoint(tmp_path / "m.pt", "cnn", in_shape=(3, 16, 16))
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["config"]["tta"] = True
    torch.save(ckpt, ckpt_path)
    predictor = Predictor.open(ckpt_path, device="cpu")
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    x = (images.float() / 255 - 0.13) / 0.31
    with torch.inference_mode():
        model = predictor._forward
        expected = ((model(x) + model(x.flip(3))) / 2).softmax(1)
        plain = model(x).softmax(1)
    assert predictor.tta and torch.allclose(predictor.probabilities(images), expected, atol=1e-6)
    assert not torch.allclose(expected, plain, atol=1e-4)
