"""Decoding robustness: any decoder failure is that one image's error, the pixel cap holds from the header, deep
(16/32-bit, float) images convert without big copies, and Pillow's warnings stay off the terminal."""

import asyncio
import io
import json
import random
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import make_folder, save_checkpoint
from imgcls.cli import main
from imgcls.data import folder as folder_module
from imgcls.data.images import MAX_PIXELS, ImageReadError, ImageTooLarge, load_image, peek, read_image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def ifd_entries(tiff: bytes | bytearray) -> list[int]:
    """Offsets of the 12-byte entries (tag, type, count, value) of a little-endian TIFF's first IFD."""
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, ifd)
    return [ifd + 2 + 12 * i for i in range(count)]


def hostile_tiff() -> bytes:
    """A 16x16 TIFF whose StripOffsets tag (273) claims the RATIONAL type: Pillow opens it, then raises TypeError
    loading it, like the 1.6 KB TIFF that fuzzing found."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (200, 30, 60)), "TIFF"))
    for entry in ifd_entries(data):
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<H", data, entry + 2, 5)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: a few bytes that ask for a huge image."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG"))
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts after the signature, length and type
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    return bytes(data)


def test_any_decoder_exception_is_that_images_error(monkeypatch):
    with pytest.raises(TypeError), Image.open(io.BytesIO(hostile_tiff())) as image:  # Pillow's own behaviour
        image.load()
    with pytest.raises(ImageReadError, match="^TypeError: "):
        read_image(io.BytesIO(hostile_tiff()), 3, (8, 8))
    good = encoded(Image.new("RGB", (16, 16), "red"), "PNG")
    for error, message in [(MemoryError, "^MemoryError: "), (ZeroDivisionError, "^ZeroDivisionError: ")]:
        monkeypatch.setattr(ImageOps, "fit", lambda *a, error=error, **k: (_ for _ in ()).throw(error()))
        with pytest.raises(ImageReadError, match=message):
            read_image(io.BytesIO(good), 3, (8, 8))
    monkeypatch.setattr(ImageOps, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the program
        read_image(io.BytesIO(good), 3, (8, 8))


def fuzz_bases() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    deep = Image.fromarray(rng.integers(0, 65536, (16, 16), dtype=np.uint16))
    return {
        "png": encoded(rgb, "PNG"),
        "png-palette": encoded(rgb.convert("P"), "PNG"),
        "png-16bit": encoded(deep, "PNG"),
        "jpeg": encoded(rgb, "JPEG"),
        "jpeg-progressive": encoded(rgb, "JPEG", progressive=True),
        "gif": encoded(rgb.convert("P"), "GIF"),
        "bmp": encoded(rgb, "BMP"),
        "tiff": encoded(rgb, "TIFF"),
        "tiff-16bit": encoded(deep, "TIFF"),
        "tiff-float": encoded(deep.convert("F"), "TIFF"),
        "tiff-deflate": encoded(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "webp": encoded(rgb, "WEBP"),
    }


def mutate(data: bytes, rng: random.Random, tiff: bool) -> bytes:
    """Bit flips, truncation or a duplicated run of bytes; for TIFFs also a tag retyped, the fuzzer's TypeError case."""
    data = bytearray(data)
    kind = rng.choice(["flip", "truncate", "duplicate", *(["retype"] * tiff)])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(len(data)) :]
    elif kind == "duplicate":
        start = rng.randrange(len(data))
        at = rng.randrange(len(data))
        data[at:at] = data[start : start + rng.randint(1, 64)]
    else:
        struct.pack_into("<H", data, rng.choice(ifd_entries(data)) + 2, rng.randint(1, 12))
    return bytes(data)


def test_fuzzed_files_decode_or_fail_as_that_image_alone():
    """Seeded, bounded fuzzing (12 x 150 mutants of 16x16 files): each decodes to the asked shape, or raises
    ImageReadError, whatever went wrong inside Pillow; never another exception."""
    rng = random.Random(10)
    outcomes = {"decoded": 0, "refused": 0}
    for name, data in fuzz_bases().items():
        for _ in range(150):
            mutant = mutate(data, rng, name.startswith("tiff"))
            channels = rng.choice((1, 3))
            try:
                peek(io.BytesIO(mutant))
                pixels = read_image(io.BytesIO(mutant), channels, (12, 12))
            except ImageReadError:
                outcomes["refused"] += 1
            else:
                assert pixels.dtype == np.uint8 and pixels.shape == (channels, 12, 12), name
                outcomes["decoded"] += 1
    assert min(outcomes.values()) > 50, outcomes  # both paths exercised


@pytest.mark.parametrize("width, height", [(8000, 8000), (10000, 10000), (20000, 20000)], ids=["over-cap", "bomb-warning", "bomb-error"])
def test_images_over_the_pixel_cap_are_refused_from_the_header(width, height, recwarn):
    """Over MAX_PIXELS, under Pillow's DecompressionBombWarning (89 Mpx), and over its DecompressionBombError (179 Mpx):
    all refused as too large, before any pixel is decoded, without a warning."""
    data = png_declaring(width, height)
    for decode in (peek, lambda f: read_image(f, 3, (16, 16))):
        with pytest.raises(ImageTooLarge, match=f"^image too large: .*the limit is {MAX_PIXELS:,}"):
            decode(io.BytesIO(data))
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


def test_pillow_warnings_do_not_reach_the_terminal(recwarn):
    """A palette PNG with byte transparency makes Pillow warn when converted; the warning is silenced."""
    palette = Image.new("P", (8, 8))
    palette.putpalette(list(range(48)) * 16)
    data = encoded(palette, "PNG", transparency=bytes(range(16)))
    assert isinstance(Image.open(io.BytesIO(data)).info["transparency"], bytes)
    assert read_image(io.BytesIO(data), 3, None).shape == (3, 8, 8)
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.fromarray(np.array([[0, 128, 257, 32768, 65535]], np.uint16)), [0, 0, 1, 128, 255]),  # I;16: / 257
        (lambda: Image.frombytes("I;16B", (3, 1), np.array([0, 32768, 65535], ">u2").tobytes()), [0, 128, 255]),
        (lambda: Image.fromarray(np.array([[0, 100, 255]], np.int32)), [0, 100, 255]),  # 8-bit values in an I image: kept
        (lambda: Image.fromarray(np.array([[-5, 0, 32768, 70000]], np.int32)), [0, 0, 128, 255]),
        (lambda: Image.fromarray(np.array([[0, 0.25, 1.0]], np.float32)), [0, 64, 255]),  # F up to 1: x 255
        (lambda: Image.fromarray(np.array([[0, 5, 10]], np.float32)), [0, 128, 255]),  # F: / max
        (lambda: Image.fromarray(np.array([[np.nan, np.inf, -np.inf, 0.5, -3e38]], np.float32)), [0, 255, 0, 128, 0]),
    ],
    ids=["I;16", "I;16B", "I-8bit", "I", "F-unit", "F", "F-nonfinite"],
)
def test_deep_images_are_scaled_to_8_bit_not_clipped(make, expected, recwarn):
    image = make()
    assert load_image(image, 1, None)[0, 0].tolist() == expected, image.mode
    assert load_image(image, 3, None)[:, 0].tolist() == [expected] * 3
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


def test_deep_images_convert_without_float64_copies():
    """A 3000x3000 16-bit image: the old whole-image float64 copies took 72 MB each; now the numpy temporaries are
    banded, and the result is the 8-bit picture's."""
    grey = np.add.outer(np.arange(3000), np.arange(3000)).astype(np.uint8)
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    tracemalloc.start()
    try:
        pixels = load_image(deep, 3, (32, 32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3000 * 3000 * 8 / 3, f"{peak / 2**20:.0f} MB"  # well under one float64 copy
    assert np.array_equal(pixels, load_image(Image.fromarray(grey), 3, (32, 32)))


@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    """Two classes of good PNGs, a TIFF Pillow raises TypeError on, and a PNG over the pixel cap."""
    root = make_folder(tmp_path / "d", per_class=8)
    (root / "cat" / "hostile.tif").write_bytes(hostile_tiff())
    (root / "dog" / "huge.png").write_bytes(png_declaring(20000, 20000))
    return root


def test_hostile_files_in_worker_processes_are_skipped(hostile_folder, monkeypatch):
    monkeypatch.setattr(folder_module, "CHUNK", 4)  # 18 files: five chunks, decoded by worker processes
    rels = sorted(e.rel for e in folder_module.scan(hostile_folder)[1])
    decoded = folder_module.decode(hostile_folder, rels, None, None)
    assert len(decoded.ids) == 16 and decoded.images.shape == (16, 3, 16, 16)
    assert sorted(decoded.meta["skipped"]) == [
        "cat/hostile.tif: TypeError: 'IFDRational' object cannot be interpreted as an integer",
        f"dog/huge.png: image too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, the limit is {MAX_PIXELS:,}",
    ]


def test_train_and_datasets_show_skip_hostile_files(hostile_folder, capsys):
    assert main(["train", "--data", str(hostile_folder), "--model", "mlp", "--epochs", "1", "--out", "r"]) == 0
    skipped = Path("r/skipped_files.txt").read_text().splitlines()
    assert sorted(skipped) == [
        "cat/hostile.tif: TypeError: 'IFDRational' object cannot be interpreted as an integer",
        f"dog/huge.png: image too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, the limit is {MAX_PIXELS:,}",
    ]
    assert main(["datasets", "--show", str(hostile_folder), "--out", "grid.png"]) == 0
    assert Path("grid.png").exists() and "Traceback" not in capsys.readouterr().err


def test_predict_reports_hostile_files_and_predicts_the_rest(hostile_folder, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", "mlp", in_shape=(3, 16, 16), classes=("cat", "dog"))
    assert main(["predict", str(ckpt), str(hostile_folder), "--format", "json"]) == 1
    out, err = capsys.readouterr()
    results = {Path(r["file"]).relative_to(hostile_folder).as_posix(): r for r in json.loads(out)}
    assert len(results) == 18 and sum("predictions" in r for r in results.values()) == 16
    assert results["cat/hostile.tif"]["error"].startswith("TypeError: ") and "image too large" in results["dog/huge.png"]["error"]
    assert "2 of 18 files could not be read" in err and "Traceback" not in err


def test_serve_answers_the_good_uploads_batched_with_a_hostile_one(tmp_path):
    pytest.importorskip("fastapi", reason="imgcls[serve] is not installed")
    from fastapi import HTTPException

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2")  # as in test_server.py
        from fastapi.testclient import TestClient
    from imgcls.inference import Predictor
    from imgcls.server.app import Batcher, create_app

    predictor = Predictor.open(save_checkpoint(tmp_path / "m.pt", "mlp", in_shape=(3, 16, 16), classes=("cat", "dog")), device="cpu")
    good = encoded(Image.new("RGB", (20, 20), "red"), "PNG")

    async def together(uploads):
        batcher = Batcher(predictor, 2)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(u) for u in uploads), return_exceptions=True)
        finally:
            batcher.stop()

    results = asyncio.run(together([good, hostile_tiff(), good, png_declaring(20000, 20000)]))
    assert isinstance(results[0], list) and results[0] == results[2]
    assert isinstance(results[1], HTTPException) and results[1].status_code == 422 and "TypeError" in results[1].detail
    assert isinstance(results[3], HTTPException) and results[3].status_code == 413
    with TestClient(create_app(predictor)) as client:
        for data, status, message in [
            (hostile_tiff(), 422, "not a readable image"),
            (png_declaring(8000, 8000), 413, "image too large: 8000x8000 pixels"),
            (png_declaring(20000, 20000), 413, "image too large"),  # Pillow's own bomb check fires first: 422 before
            (good, 200, None),
        ]:
            response = client.post("/predict", files={"file": ("x", data, "application/octet-stream")})
            assert response.status_code == status, response.text
            assert message is None or message in response.json()["detail"]
