"""Dataset health: duplicates, leaks, odd files, balance and label errors, on folders with known problems."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import one_line_error, run_cli
from imgcls.data import load_dataset
from imgcls.data.core import Dataset, Split
from imgcls.data.duplicates import Group, Items, components, dedupe, duplicate_file_groups, find_duplicates, fingerprints, with_copy_in
from imgcls.data.health import check, check_dataset, label_issues
from imgcls.data.near import hamming_pairs, popcount

CLASSES = ("cat", "dog", "fox")


def picture(rng: np.random.Generator, width: int = 64, height: int = 64) -> Image.Image:
    """A distinct made-up photo: a sky-to-ground gradient, a few shapes, a little noise."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, height)[:, None, None]
    image = Image.fromarray(np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(6, max(7, width // 2)), rng.integers(6, max(7, height // 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


# Every duplicate the dirty folder holds: (files, exact), and the kind of each group.
EXPECTED = {
    frozenset({"train/cat/000.png", "train/cat/copy.bmp"}): (True, "duplicate"),  # same pixels, another format and name
    frozenset({"train/dog/000.png", "train/dog/reencoded.jpg"}): (False, "duplicate"),  # JPEG at quality 60
    frozenset({"train/fox/000.png", "train/fox/resized.png"}): (False, "duplicate"),  # 64 -> 44 px
    frozenset({"train/cat/001.png", "train/cat/cropped.png"}): (False, "duplicate"),  # 4 px off each side
    frozenset({"train/dog/001.png", "train/dog/mirror.png"}): (False, "duplicate"),  # mirror image
    frozenset({"train/fox/001.png", "test/fox/leak.jpg"}): (False, "leak"),  # a train image in test, re-encoded
    frozenset({"train/cat/002.png", "train/fox/mislabeled.png"}): (True, "conflict"),  # a cat filed as a fox
}
UNREADABLE = {"train/cat/corrupt.jpg", "train/dog/truncated.jpg", "train/fox/notes.txt"}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> Path:
    """train/val/test folders of distinct pictures, plus the duplicates of EXPECTED and one odd file of each kind."""
    root = tmp_path_factory.mktemp("dirty")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 3), ("test", 3)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                picture(rng).save(root / split / c / f"{i:03d}.png")

    def original(name: str) -> Image.Image:
        return Image.open(root / "train" / name).convert("RGB")

    original("cat/000.png").save(root / "train/cat/copy.bmp")
    original("dog/000.png").save(root / "train/dog/reencoded.jpg", quality=60)
    original("fox/000.png").resize((44, 44), Image.Resampling.LANCZOS).save(root / "train/fox/resized.png")
    original("cat/001.png").crop((4, 4, 60, 60)).save(root / "train/cat/cropped.png")
    original("dog/001.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "train/dog/mirror.png")
    original("fox/001.png").save(root / "test/fox/leak.jpg", quality=85)
    original("cat/002.png").save(root / "train/fox/mislabeled.png")
    (root / "train/cat/corrupt.jpg").write_bytes(b"not a JPEG at all")
    picture(rng).save(root / "train/dog/truncated.jpg", quality=90)
    data = (root / "train/dog/truncated.jpg").read_bytes()
    (root / "train/dog/truncated.jpg").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    (root / "train/fox/notes.txt").write_text("where these photos came from\n")
    picture(rng, 10, 8).save(root / "train/cat/tiny.png")
    picture(rng, 240, 40).save(root / "train/dog/banner.png")
    picture(rng).convert("L").save(root / "train/fox/grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: viewers turn it 90 degrees clockwise
    picture(rng, 64, 48).save(root / "train/cat/rotated.jpg", exif=exif, quality=90)
    picture(rng).save(root / "train/dog/animated.gif", save_all=True, append_images=[picture(rng)], duration=100)
    return root


def found(health) -> dict[frozenset, tuple[bool, str]]:
    return {frozenset(health.items.names[i] for i in g.members): (g.exact, health.kind(g)) for g in health.groups}


def test_every_planted_duplicate_is_found_and_no_other(dirty):
    data, health = check_dataset(str(dirty))
    assert found(health) == EXPECTED
    assert sorted(map(sorted, duplicate_file_groups(data))) == sorted(map(sorted, EXPECTED))
    leaked = with_copy_in(health.groups, health.items, "test", "train")
    test_files = data.split_files["test"]
    assert [f for f, flag in zip(test_files, leaked.tolist()) if flag] == ["test/fox/leak.jpg"]


def test_mirror_images_count_only_where_training_flips(dirty):
    data = load_dataset(str(dirty))
    health = check(dataclasses.replace(data, flips_ok=False), dirty)
    assert found(health) == {k: v for k, v in EXPECTED.items() if "train/dog/mirror.png" not in k}


def test_odd_files_of_every_kind_are_found(dirty):
    _, health = check_dataset(str(dirty))
    odd = {kind: {name for name, _ in found} for kind, found in health.odd.items()}
    assert odd == {
        "unreadable": UNREADABLE,
        "tiny": {"train/cat/tiny.png"},
        "aspect": {"train/dog/banner.png"},
        "greyscale": {"train/fox/grey.png"},
        "exif_rotated": {"train/cat/rotated.jpg"},
        "animated": {"train/dog/animated.gif"},
    }
    details = dict(health.odd["unreadable"])
    assert "truncated" in details["train/dog/truncated.jpg"] and "cannot identify" in details["train/fox/notes.txt"]


def test_distinct_pictures_are_never_duplicates():
    """Hundreds of made-up photos, many alike in layout (a gradient and shapes): no group."""
    rng = np.random.default_rng(1)
    images = torch.from_numpy(np.stack([np.asarray(picture(rng)) for _ in range(600)])).permute(0, 3, 1, 2).contiguous()
    labels = torch.arange(600) % 3
    split = Split(images[:400], labels[:400])
    data = Dataset("made-up", list(CLASSES), split, Split(images[400:500], labels[400:500]), Split(images[500:], labels[500:]),
                   (0.5,) * 3, (0.25,) * 3)  # fmt: skip
    assert check(data).groups == []
    copies = torch.cat([images[:10], images[:10].flip(-1)])  # the same data with ten mirror copies in test
    data.test = Split(torch.cat([images[500:], copies[10:]]), torch.cat([labels[500:], labels[:10]]))
    health = check(data)
    assert sorted(g.members for g in health.groups) == [(i, 600 + i) for i in range(10)]
    assert all(health.kind(g) == "leak" for g in health.groups)


def test_hamming_pairs_finds_exactly_the_close_hashes():
    g = torch.Generator().manual_seed(0)
    hashes = torch.randint(0, 2**62, (3000,), generator=g) * 2 + torch.randint(0, 2, (3000,), generator=g)
    for k in range(200):  # near copies 0 to 8 bits away
        flips = torch.randperm(63, generator=g)[: k % 9]
        hashes[2000 + k] = hashes[k] ^ int(sum(1 << int(b) for b in flips))
    i, j = hamming_pairs(hashes, hashes, 6, upper=True)
    distance = popcount((hashes.view(-1, 1) ^ hashes.view(1, -1)).flatten()).view(3000, 3000)
    want = torch.nonzero(torch.triu(distance <= 6, 1))
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(map(tuple, want.tolist()))
    assert len(want) >= 150  # the planted ones within 6 bits, at least


def test_popcount_and_components():
    values = torch.randint(0, 2**62, (500,), generator=torch.Generator().manual_seed(0))
    assert popcount(values).tolist() == [bin(v).count("1") for v in values.tolist()]
    # 0-1-2-3 chained from the far end, 5-6, 4 and 7 alone
    root = components(8, torch.tensor([3, 2, 1, 6]), torch.tensor([2, 1, 0, 5]))
    assert root.tolist() == [0, 0, 0, 0, 4, 5, 5, 7]


def test_label_issues_rank_the_mislabeled_first():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    probs = torch.full((300, 3), 0.05).scatter(1, labels.view(-1, 1), 0.9)
    probs += torch.rand(300, 3, generator=g) * 0.02
    wrong = {10: (2, 0.97), 50: (0, 0.95), 200: (1, 0.93)}  # image: (the class it shows, the model's confidence in it)
    for i, (shown, p) in wrong.items():
        probs[i] = (1 - p) / 2
        probs[i, shown] = p
    probs[100] = torch.tensor([0.45, 0.4, 0.15])  # labelled 1, the model unsure: below class 0's threshold, no issue
    probs = probs / probs.sum(1, keepdim=True)
    issues = label_issues(probs, labels)
    assert issues.index.tolist() == [10, 50, 200]  # lowest probability of the given label first
    assert issues.suggested.tolist() == [wrong[i][0] for i in (10, 50, 200)]
    assert issues.given.tolist() == labels[[10, 50, 200]].tolist()


def test_imbalance_is_warned_about(capsys):
    g = torch.Generator().manual_seed(0)
    labels = (torch.arange(50) % 5 == 0).long()  # one in five is "few": 24 against 6 in train
    images = torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8, generator=g)
    data = Dataset("lopsided", ["many", "few"], Split(images[:30], labels[:30]), Split(images[30:40], labels[30:40]),
                   Split(images[40:], labels[40:]), (0.5,), (0.25,), flips_ok=False)  # fmt: skip
    from imgcls.report.health import summary_text, to_json

    health = check(data)
    assert health.counts()["total"] == [40, 10]
    text = summary_text(health)
    assert "imbalance ratio 4.0" in text and "warning: the classes are imbalanced (4.0:1)" in text
    assert to_json(health)["balance"] == {**to_json(health)["balance"], "imbalance_ratio_in_train": 4.0, "warning": True}


def test_datasets_check_prints_findings_and_saves_json_and_pictures(dirty, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "datasets", "--check", dirty, "--out", tmp_path / "health")
    assert code == 0
    assert "7 groups of copies (2 exact, 5 near)" in out
    assert "1 test and 0 val images have a copy in train" in out and "train/fox/001.png (train) = test/fox/leak.jpg (test)" in out
    assert "train/cat/002.png = train/fox/mislabeled.png" in out
    assert "unreadable" in out and "train/cat/corrupt.jpg" in out
    report = json.loads((tmp_path / "health" / "health.json").read_text())
    assert report["duplicates"]["groups"] == 7 and report["duplicates"]["test_images_with_a_copy_in_train"] == 1
    assert {g["kind"] for g in report["duplicates"]["list"]} == {"duplicate", "leak", "conflict"}
    assert {f["file"] for f in report["odd_files"]["unreadable"]} == UNREADABLE
    for name in ("health_duplicates.png", "health_leaks.png", "health_conflicts.png", "health_odd_files.png", "health_balance.png"):
        with Image.open(tmp_path / "health" / name) as image:
            assert min(image.size) >= 200, name


def test_datasets_check_of_a_named_dataset_uses_its_pixels(capsys, monkeypatch):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 16, 16), dtype=torch.uint8, generator=g)
    images[5] = images[5, :1].expand(3, 16, 16)  # a grey picture in a colour dataset
    images[40] = images[0]  # test 0 is train 0
    labels = torch.arange(60) % 2
    parts = Split(images[:30], labels[:30]), Split(images[30:40], labels[30:40]), Split(images[40:], labels[40:])
    data = Dataset("noise", ["a", "b"], *parts, (0.5,) * 3, (0.25,) * 3)  # as a named dataset: no files
    monkeypatch.setattr("imgcls.data.registry.load_dataset", lambda spec, **_: data)
    code, out, _ = run_cli(capsys, "datasets", "--check", "noise")
    assert code == 0 and "odd images (a named dataset: no files to check, only pixels)" in out
    assert "1 test and 0 val images have a copy in train; e.g. train[0] (train) = test[0] (test)" in out
    report = json.loads(Path("noise-health/health.json").read_text())
    assert report["odd_files"]["greyscale"] == [{"file": "train[5]", "detail": "grey pixels"}]


def test_datasets_check_bad_input_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, "datasets", "--check", tmp_path / "missing")
    assert "does not exist" in err
    (tmp_path / "file").write_text("")
    err = one_line_error(capsys, "datasets", "--check", "mnist-sample", "--out", tmp_path / "file")
    assert "is a file, not a folder" in err


@pytest.mark.report
def test_report_of_a_folder_run_has_a_health_section(dirty, tmp_path):
    from imgcls.report import write_report

    data = load_dataset(str(dirty))
    test_files = data.split_files["test"]
    logits = torch.nn.functional.one_hot(data.test.labels, 3).float() * 4  # every test image right...
    wrong = test_files.index("test/cat/000.png")
    logits[wrong] = torch.tensor([0.0, 6.0, 0.0])  # ...but one, which the model takes for a dog
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1, "seconds": 1.0}]
    page = write_report(tmp_path, list(data.classes), data.test.images, data.test.labels, logits, history=history,
                        config={"data": str(dirty)}, summary={}, data=data).read_text()  # fmt: skip
    assert "Dataset health" in page and "test accuracy without the 1 test images copied in train" in page
    report = json.loads((tmp_path / "health.json").read_text())
    n = len(test_files)
    assert report["run"]["test_accuracy"] == pytest.approx((n - 1) / n)
    assert report["run"]["test_accuracy_without_train_copies"] == pytest.approx((n - 2) / (n - 1))
    assert report["run"]["label_errors"][0]["file"] == "test/cat/000.png" and report["run"]["label_errors"][0]["suggested"] == "dog"
    assert (tmp_path / "health_label_errors.png").is_file() and "health_label_errors.png" in page


def test_groups_are_largest_first_and_exact_only_when_the_pixels_match():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[3], images[4], images[5] = images[0], images[0], images[1]
    items = Items([images], torch.zeros(6, dtype=torch.long), ["train"] * 6, [f"{i}.png" for i in range(6)], True)
    groups = find_duplicates(items, fingerprints(items), flips=False)
    assert groups == [Group((0, 3, 4), True), Group((1, 5), True)]
    sizes = torch.tensor([[8, 8], [8, 8], [8, 8], [8, 8], [16, 16], [8, 8]])  # 4.png was resized: not an exact copy
    assert find_duplicates(items, fingerprints(items), flips=False, sizes=sizes)[0] == Group((0, 3, 4), False)


@pytest.mark.report
def test_a_training_run_on_a_folder_writes_the_health_section(dirty, capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "train", "--data", dirty, "--model", "mlp", "--epochs", "1", "--image-size", "32", "--out", tmp_path / "run"
    )
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "health.json").read_text())
    assert report["duplicates"]["groups"] == len(EXPECTED) and "test_accuracy_without_train_copies" in report["run"]
    assert "<h2>Dataset health</h2>" in (tmp_path / "run" / "report.html").read_text()


# --- imgcls train --dedupe -------------------------------------------------------------------------------------

DROPPED = {  # what --dedupe drops of the dirty folder: file -> (reason, the copy kept)
    "train/cat/copy.bmp": ("duplicate", "train/cat/000.png"),
    "train/dog/reencoded.jpg": ("duplicate", "train/dog/000.png"),
    "train/fox/resized.png": ("duplicate", "train/fox/000.png"),
    "train/cat/cropped.png": ("duplicate", "train/cat/001.png"),
    "train/dog/mirror.png": ("duplicate", "train/dog/001.png"),
    "train/fox/001.png": ("leak", "test/fox/leak.jpg"),  # the test copy stays, the train one goes
    "train/cat/002.png": ("conflict", None),  # a cat and a fox: neither label can be trusted
    "train/fox/mislabeled.png": ("conflict", None),
}


def test_dedupe_keeps_one_copy_per_group_and_none_of_a_conflict(dirty):
    data = load_dataset(str(dirty))
    kept, dropped = dedupe(data)
    assert {d["file"]: (d["reason"], d["kept"]) for d in dropped} == DROPPED
    assert {d["file"]: (d["split"], d["class"]) for d in dropped}["train/fox/001.png"] == ("train", "fox")
    assert {s: set(files) for s, files in kept.items()} == {s: set(data.split_files[s]) - set(DROPPED) for s in kept}
    again = load_dataset(str(dirty), split_files=kept)
    assert check(again).groups == []  # no copy left in two splits, nor twice in one


@pytest.mark.report
def test_train_dedupe_records_the_drops_and_evaluate_sees_the_same_data(dirty, capsys, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "train", "--data", dirty, "--dedupe", "--model", "mlp", "--epochs", "1", "--image-size", "32", "--out", run
    )
    assert code == 0, err
    assert "--dedupe dropped 8 images: 5 extra copies within a split, 1 copies of an image kept in a later split, 2 copies" in out
    split = json.loads((run / "split.json").read_text())
    assert {d["file"]: (d["reason"], d["kept"]) for d in split["dropped"]} == DROPPED
    assert not set(DROPPED) & {f for s in ("train", "val", "test") for f in split[s]}
    assert json.loads((run / "config.json").read_text())["dedupe"] is True
    assert json.loads((run / "health.json").read_text())["duplicates"]["groups"] == 0  # the run's own check finds none
    code, out, err = run_cli(capsys, "evaluate", run, "--split", "train")
    assert code == 0, err
    assert f"train: {len(split['train'])} images" in out
    assert len(split["train"]) == len(load_dataset(str(dirty)).train) - len(DROPPED)


def test_without_dedupe_the_split_is_the_seeds(dirty, capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--data", dirty, "--model", "mlp", "--epochs", "1", "--image-size", "32", "--out", tmp_path)
    assert code == 0, err
    assert "--dedupe" not in out
    assert json.loads((tmp_path / "split.json").read_text()) == load_dataset(str(dirty)).split_files
    assert json.loads((tmp_path / "config.json").read_text())["dedupe"] is False


def test_dedupe_of_a_named_dataset_is_refused_in_one_line(capsys):
    err = one_line_error(capsys, "train", "--data", "mnist-sample", "--dedupe")
    assert "mnist-sample is a named dataset without files: drop --dedupe" in err


# --- imgcls datasets --check --label-errors ----------------------------------------------------------------------

TINTS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}
MISLABELED = {"green/wrong0.png": "red", "blue/wrong1.png": "green", "red/wrong2.png": "blue", "green/wrong3.png": "blue"}  # file: shown


def tinted(rng: np.random.Generator, tint: tuple[int, int, int], side: int = 32) -> Image.Image:
    """A picture of a class: its tint (give or take 30) shaded top to bottom, under small blobs of any colour. The tint
    shows in every picture, so the models are sure of each (confident learning's class thresholds, the mean
    probability of a class on the images given it, then sit clear of a typical picture's)."""
    base = np.array(tint) + rng.integers(-30, 31, 3)
    shade = np.linspace(0.7, 1.1, side)[:, None, None]
    image = Image.fromarray(np.broadcast_to(base * shade, (side, side, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, side, 2)
        w, h = rng.integers(3, side // 4, 2)
        draw.ellipse([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image).astype(np.int16) + rng.integers(-10, 11, (side, side, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def mislabeled_folder(root: Path, per_class: int = 40) -> Path:
    """A flat folder of three tinted classes, and MISLABELED: pictures of one class filed under another."""
    rng = np.random.default_rng(0)
    for c, tint in TINTS.items():
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            tinted(rng, tint).save(root / c / f"{i:03d}.png")
    for f, shown in MISLABELED.items():
        tinted(rng, TINTS[shown]).save(root / f)
    return root


@pytest.mark.report
def test_label_errors_cross_validated_rank_the_mislabeled_first(capsys, tmp_path):
    """Every image predicted by a model that never saw it: the planted ones come first, the given label's probability
    near zero (the margins measured over seeds and precisions are in bench/RESULTS.md)."""
    root = mislabeled_folder(tmp_path / "tinted")
    code, out, err = run_cli(capsys, "datasets", "--check", root, "--label-errors", "--folds", "4", "--out", tmp_path / "health")
    assert code == 0, err
    assert "likely label errors (confident learning on 4-fold cross-validated predictions: speednet" in out
    report = json.loads((tmp_path / "health" / "health.json").read_text())["label_errors"]
    top = report["list"][: len(MISLABELED)]
    assert {(e["file"], e["suggested"]) for e in top} == set(MISLABELED.items())
    assert max(e["given_probability"] for e in top) < 0.05
    assert all(e["given_probability"] > 0.15 for e in report["list"][len(MISLABELED) :])
    assert report["folds"] == 4 and report["held_out_accuracy"] > 0.9
    with Image.open(tmp_path / "health" / "health_label_errors_cv.png") as image:
        assert min(image.size) >= 200


def test_label_errors_bad_input_is_one_line(capsys, tmp_path):
    assert "--folds must be between 2 and 20, got 1" in one_line_error(
        capsys, "datasets", "--check", "mnist-sample", "--label-errors", "--folds", "1"
    )
    assert "--label-errors goes with --check" in one_line_error(capsys, "datasets", "--label-errors")
