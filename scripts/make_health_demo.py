"""Build the dirty folder that the README's dataset-health pictures (docs/health/) come from: CIFAR-10 JPEGs of
airplanes, cars and frogs with one problem of each kind planted. Usage:

    python scripts/make_health_demo.py ../shared/data/cifar10-jpeg /tmp/dirty-cifar
    imgcls datasets --check /tmp/dirty-cifar --out docs/health
    imgcls train --data /tmp/dirty-cifar --image-size 32 --batch-size 64 --epochs 30 --out /tmp/dirty-run
    cp /tmp/dirty-run/health_label_errors.png docs/health/    # what the trained model adds: likely label errors
"""

import shutil
import sys
from pathlib import Path

from PIL import Image

TRAIN = {"airplane": 400, "automobile": 400, "frog": 120}  # training images per class: few frogs, an imbalance
TEST = 100  # per class
FILED_WRONG = 8  # test frogs put in test/automobile: label errors for the trained model to find


def main(source: str, out: str) -> None:
    src, dst = Path(source), Path(out)
    if dst.exists():
        raise SystemExit(f"{dst} exists: remove it or choose another folder")
    for split, counts in (("train", TRAIN), ("test", dict.fromkeys(TRAIN, TEST))):
        for name, n in counts.items():
            (dst / split / name).mkdir(parents=True)
            for f in sorted((src / split / name).iterdir())[:n]:
                shutil.copy(f, dst / split / name / f.name)

    def photo(split: str, name: str, i: int) -> Image.Image:
        return Image.open(src / split / name / f"{i:04d}.jpg").convert("RGB")

    train = dst / "train"
    # Duplicates within a class: the same pixels under another format and name; re-encoded; resized; cropped; mirrored.
    photo("train", "airplane", 1).save(train / "airplane" / "copy-of-0001.png")
    photo("train", "automobile", 2).save(train / "automobile" / "0002-recompressed.jpg", quality=40)
    photo("train", "frog", 3).resize((24, 24), Image.Resampling.LANCZOS).save(train / "frog" / "0003-small.png")
    photo("train", "airplane", 4).crop((2, 2, 30, 30)).save(train / "airplane" / "0004-cropped.png")
    photo("train", "automobile", 5).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(train / "automobile" / "0005-mirrored.png")
    # A leak: a test frog copied into train. A conflict: a training airplane copied into automobile.
    photo("test", "frog", 6).save(train / "frog" / "from-test.jpg", quality=90)
    photo("train", "airplane", 7).save(train / "automobile" / "airplane-0007.jpg", quality=90)
    # Label errors: test frogs filed as cars (moved, so the trained model has not seen them).
    for i in range(TEST, TEST + FILED_WRONG):
        photo("test", "frog", i).save(dst / "test" / "automobile" / f"frog-{i:04d}.jpg", quality=90)
    # Odd files.
    (train / "airplane" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    photo("train", "automobile", 8).resize((12, 12)).save(train / "automobile" / "tiny.png")
    strip = Image.new("RGB", (160, 32))
    for k in range(5):
        strip.paste(photo("train", "frog", 10 + k), (32 * k, 0))
    strip.save(train / "frog" / "contact-sheet.png")
    photo("train", "airplane", 9).convert("L").save(train / "airplane" / "0009-grey.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side; viewers, and imgcls, turn it upright
    sideways = photo("train", "automobile", 11).transpose(Image.Transpose.ROTATE_90)
    sideways.save(train / "automobile" / "sideways.jpg", exif=exif, quality=90)
    frames = [photo("train", "frog", 20), photo("train", "frog", 21)]
    frames[0].save(train / "frog" / "animated.gif", save_all=True, append_images=frames[1:], duration=500)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
