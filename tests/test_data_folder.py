import numpy as np
import pytest
import torch
from PIL import Image

from conftest import logged, make_folder
from imgcls.data import folder as folder_module
from imgcls.data import load_dataset
from imgcls.data.images import read_image
from imgcls.errors import ImgclsError


def test_flat_folder_gets_a_seeded_stratified_60_20_20_split(tmp_path):
    make_folder(tmp_path / "pets", classes=("dog", "cat", "bird"), per_class=10)
    data = load_dataset(str(tmp_path / "pets"), seed=3)
    assert data.classes == ["bird", "cat", "dog"]  # sorted folder names
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    assert torch.bincount(data.test.labels).tolist() == [2, 2, 2]
    assert sorted(sum(data.split_files.values(), [])) == sorted(f"{c}/{i:03d}.png" for c in data.classes for i in range(10))
    again = load_dataset(str(tmp_path / "pets"), seed=3)
    assert again.split_files == data.split_files
    assert load_dataset(str(tmp_path / "pets"), seed=4).split_files != data.split_files


def test_split_folders_are_used_and_val_is_held_out_of_train(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=20)
    make_folder(tmp_path / "d" / "test", per_class=5, seed=1)
    data = load_dataset(str(tmp_path / "d"), val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert all(f.startswith("test/") for f in data.split_files["test"])
    assert all(f.startswith("train/") for f in data.split_files["val"])


def test_val_folder_is_used_when_present(tmp_path):
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        make_folder(tmp_path / "d" / split, per_class=n)
    data = load_dataset(str(tmp_path / "d"))
    assert (len(data.train), len(data.val), len(data.test)) == (16, 6, 8)


def test_saved_split_is_replayed(tmp_path):
    make_folder(tmp_path / "d", per_class=10)
    first = load_dataset(str(tmp_path / "d"), seed=0)
    replay = load_dataset(str(tmp_path / "d"), seed=99, split_files=first.split_files)
    assert torch.equal(replay.test.images, first.test.images)
    (tmp_path / "d" / first.split_files["test"][0]).unlink()
    with pytest.raises(ImgclsError, match="split.json lists 1 files"):
        load_dataset(str(tmp_path / "d"), split_files=first.split_files)


def test_normalisation_comes_from_the_training_split(tmp_path):
    make_folder(tmp_path / "d", per_class=10)
    data = load_dataset(str(tmp_path / "d"))
    x = data.train.images.double() / 255
    assert data.mean[0] == pytest.approx(x[:, 0].mean().item(), abs=1e-3)
    assert data.std[2] == pytest.approx(x[:, 2].std(unbiased=False).item(), abs=1e-3)


def test_mixed_formats_and_modes_decode_to_rgb(tmp_path):
    root = tmp_path / "d"
    make_folder(root, per_class=6)
    rgb = np.full((16, 16, 3), (200, 30, 60), np.uint8)
    Image.fromarray(rgb).save(root / "cat" / "a.jpg", quality=95)
    Image.fromarray(rgb).save(root / "cat" / "b.bmp")
    Image.fromarray(rgb).convert("P").save(root / "cat" / "c.gif")
    Image.fromarray(rgb).convert("RGBA").save(root / "dog" / "d.png")
    Image.fromarray(rgb[..., 0]).save(root / "dog" / "e.webp")
    data = load_dataset(str(root))
    assert data.shape == (3, 16, 16)
    assert len(data.train) + len(data.val) + len(data.test) == 17
    assert data.skipped == []


def test_greyscale_folders_have_one_channel_and_are_not_flipped(tmp_path):
    make_folder(tmp_path / "d", mode="L", per_class=6)
    data = load_dataset(str(tmp_path / "d"))
    assert data.shape == (1, 16, 16) and not data.flips_ok


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert read_image(path, 1, None)[0, 0].tolist() == [0, 128, 255]


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 20 wide, 10 high, shown 10 wide, 20 high
    Image.new("RGB", (20, 10), "white").save(path, exif=exif)
    assert read_image(path, 3, None).shape == (3, 20, 10)


def test_mixed_sizes_are_resized_to_a_common_square(tmp_path, caplog):
    root = make_folder(tmp_path / "d", per_class=6)
    Image.new("RGB", (40, 30), "red").save(root / "cat" / "big.png")
    assert load_dataset(str(root)).shape == (3, 128, 128)
    assert "different sizes" in logged(caplog)
    assert load_dataset(str(root), image_size=24).shape == (3, 24, 24)


def test_large_images_are_scaled_down_unless_a_size_is_given(tmp_path, caplog):
    root = make_folder(tmp_path / "d", per_class=6, size=(300, 400))
    assert load_dataset(str(root)).shape == (3, 128, 128)
    assert "are 400x300, large to hold in memory" in logged(caplog)
    assert load_dataset(str(root), image_size=200).shape == (3, 200, 200)


def test_non_square_images_of_one_size_keep_their_shape(tmp_path):
    assert load_dataset(str(make_folder(tmp_path / "d", per_class=6, size=(20, 36)))).shape == (3, 20, 36)


def test_corrupt_and_non_image_files_are_skipped_and_listed(tmp_path):
    root = make_folder(tmp_path / "d", per_class=6)
    (root / "cat" / "notes.txt").write_text("not an image")
    good = (root / "dog" / "000.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    data = load_dataset(str(root))
    assert len(data.train) + len(data.val) + len(data.test) == 12
    assert sorted(s.split(":")[0] for s in data.skipped) == ["cat/notes.txt", "dog/empty.jpg", "dog/truncated.png"]


def test_hidden_files_are_ignored(tmp_path):
    root = make_folder(tmp_path / "d", per_class=6)
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".git").mkdir()
    assert load_dataset(str(root)).skipped == []


def test_decoded_folders_are_cached(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=6)
    first = load_dataset(str(root))
    monkeypatch.setattr(folder_module, "decode", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    second = load_dataset(str(root))
    assert torch.equal(first.train.images, second.train.images)
    Image.new("RGB", (16, 16), "blue").save(root / "cat" / "new.png")  # a changed folder is decoded anew
    monkeypatch.undo()
    assert sum(map(len, load_dataset(str(root)).split_files.values())) == sum(map(len, first.split_files.values())) + 1


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.write_text("x"), "is a file, not a folder"),
        (lambda r: r.mkdir(), "no class folders \\(it is empty\\)"),
        (lambda r: (r.mkdir(), Image.new("RGB", (8, 8)).save(r / "x.png")), "image files but no class folders"),
        (lambda r: make_folder(r, classes=("only",)), "only one class \\(only\\)"),
        (lambda r: ((r / "a").mkdir(parents=True), (r / "b").mkdir()), "no files in them"),
        (lambda r: make_folder(r / "test"), "no train/ folder"),
        (lambda r: (make_folder(r / "train"), make_folder(r / "test", classes=("cat", "cow"))), "classes that train/ lacks \\(cow\\)"),
    ],
    ids=["missing", "file", "empty", "loose-images", "one-class", "empty-classes", "no-train", "unknown-class"],
)
def test_bad_folders_get_one_clear_error(tmp_path, setup, message):
    root = tmp_path / "bad"
    setup(root)
    with pytest.raises(ImgclsError, match=message):
        load_dataset(str(root))


def test_a_folder_of_only_unreadable_files_fails(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        (tmp_path / "d" / c / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ImgclsError, match="no readable images.*2 files"):
        load_dataset(str(tmp_path / "d"))


def test_parallel_decoding_matches_decoding_in_one_process(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", per_class=9)
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG broken")
    inline = folder_module.decode(root, sorted(e.rel for e in folder_module.scan(root)[1]), None, None)
    monkeypatch.setattr(folder_module, "CHUNK", 4)  # 19 files: five chunks on worker processes
    parallel = folder_module.decode(root, sorted(e.rel for e in folder_module.scan(root)[1]), None, None)
    assert torch.equal(parallel.images, inline.images)
    assert parallel.ids == inline.ids and len(parallel.ids) == 18
    assert [s.split(":")[0] for s in parallel.meta["skipped"]] == ["dog/bad.png"]


def test_a_symlink_loop_in_a_class_folder_is_skipped_with_a_line(tmp_path, caplog):
    root = make_folder(tmp_path / "d", per_class=10)
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)  # os.scandir would recurse until ELOOP
    (root / "dog" / "self").symlink_to(root / "dog" / "self")  # a link to itself: stat fails with ELOOP
    data = load_dataset(str(root))
    assert len(data.train) + len(data.val) + len(data.test) == 20
    err = logged(caplog)
    assert "skipping cat/loop: a link to a folder already scanned" in err and "skipping dog/self" in err


def test_an_empty_class_folder_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "d", per_class=10)
    (root / "bird").mkdir()
    (root / "bird" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(ImgclsError, match=r"d/bird has no files: add images to it or remove it"):
        load_dataset(str(root))


def test_a_class_whose_files_are_all_unreadable_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "d", per_class=10)
    (root / "bird").mkdir()
    for i in range(3):
        (root / "bird" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(ImgclsError, match=r"d/bird has no readable training images"):
        load_dataset(str(root))


def test_a_class_too_small_for_val_and_test_gets_a_warning(tmp_path, caplog):
    root = make_folder(tmp_path / "d", per_class=10)
    (root / "bird").mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "bird" / "only.png")
    data = load_dataset(str(root))
    assert data.classes == ["bird", "cat", "dog"] and 0 in data.train.labels.tolist()
    err = logged(caplog)
    assert "warning: too few images to put any of bird in val" in err and "in test" in err
    load_dataset(str(root), split_files=data.split_files)  # a replayed split (resume, evaluate) does not warn again
    assert "warning" not in logged(caplog)
