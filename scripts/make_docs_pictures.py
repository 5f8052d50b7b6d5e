"""Regenerate the documentation's pictures from real runs: each is a file that imgcls itself wrote (a plot of a run's
report, a health check's picture, a screenshot of a report page), copied into docs/. Usage:

    python scripts/make_docs_pictures.py --list                         # the pictures, what they need, how long they take
    python scripts/make_docs_pictures.py report                         # only these
    python scripts/make_docs_pictures.py --data ../shared/data          # all of them (about an hour on two CPU cores)

--data is the folder holding MNIST/raw and cifar10-jpeg (the repo's ../shared/data); the pictures from the embedded
MNIST sample need nothing. Screenshots need Chromium (Debian's `chromium`) and Playwright (in the dev extra). The runs
go to --work (a temporary folder unless given), so that a picture can be traced back to its run.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def imgcls(*args, cwd: Path | None = None) -> None:
    command = [sys.executable, "-m", "imgcls", *map(str, args)]
    print("+ imgcls " + " ".join(map(str, args)), flush=True)
    subprocess.run(command, check=True, cwd=cwd)


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"  {target.relative_to(ROOT)}", flush=True)


def screenshot(html: Path, target: Path, width: int = 1100, height: int = 900) -> None:
    """The top of a page as a browser shows it: Debian's chromium driven by Playwright (its own download unused)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(html.resolve().as_uri())
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
        browser.close()
    print(f"  {target.relative_to(ROOT)}", flush=True)


def report(data: Path, work: Path) -> None:
    """Getting started: report.html of the first run, `imgcls train` on the embedded sample."""
    imgcls("train", cwd=work)  # exactly the page's command: the run is runs/mnist-sample-digitnet-<n>
    run = max((work / "runs").glob("mnist-sample-digitnet-*"), key=lambda p: p.stat().st_mtime)
    screenshot(run / "report.html", DOCS / "pictures" / "report.png")


def health(data: Path, work: Path) -> None:
    """Dataset health: a small CIFAR-10 folder with one problem of each kind planted, checked, then trained on."""
    dirty = work / "dirty-cifar"
    subprocess.run([sys.executable, ROOT / "scripts" / "make_health_demo.py", data / "cifar10-jpeg", dirty], check=True)
    imgcls("datasets", "--check", dirty, "--out", work / "dirty-health")
    for picture in sorted((work / "dirty-health").glob("health_*.png")):
        copy(picture, DOCS / "health" / picture.name)
    imgcls("train", "--data", dirty, "--image-size", 32, "--batch-size", 64, "--epochs", 30, "--out", work / "dirty-run")
    copy(work / "dirty-run" / "health_label_errors.png", DOCS / "health" / "health_label_errors.png")


def health_cv(data: Path, work: Path) -> None:
    """Dataset health: cross-validated label errors of the demo folder less its files that are no 32 px images (1,236 left)."""
    dirty = work / "dirty-cifar"
    if not dirty.is_dir():
        subprocess.run([sys.executable, ROOT / "scripts" / "make_health_demo.py", data / "cifar10-jpeg", dirty], check=True)
    same_size = work / "dirty-cifar32"
    for path in sorted(p for p in dirty.rglob("*") if p.is_file()):
        try:
            with Image.open(path) as image:
                if image.size != (32, 32):  # else every image would be resized to 128 px
                    continue
        except OSError:  # the planted file that is no image
            continue
        target = same_size / path.relative_to(dirty)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    imgcls("datasets", "--check", same_size, "--label-errors", "--out", work / "dirty32-health")
    copy(work / "dirty32-health" / "health_label_errors_cv.png", DOCS / "health" / "health_label_errors_cv.png")


def trust(data: Path, work: Path) -> None:
    """Explain and calibrate: the CIFAR-10 quick recipe's top losses with their heatmaps, reliability and coverage."""
    imgcls("train", "--data", data / "cifar10-jpeg", "--recipe", "quick", "--out", work / "cifar10-quick")
    for name in ("top_losses", "reliability", "coverage"):
        copy(work / "cifar10-quick" / f"{name}.png", DOCS / "trust" / f"cifar10-{name.replace('_', '-')}.png")


def autoencode(data: Path, work: Path) -> None:
    """Autoencoders: a one-epoch VAE's latent map of MNIST, a one-epoch autoencoder's CIFAR-10 reconstructions."""
    imgcls("autoencode", "--data", "mnist", "--data-dir", data, "--variational", "--out", work / "mnist-vae")
    copy(work / "mnist-vae" / "latent_map.png", DOCS / "autoencode" / "mnist_vae_latent_map.png")
    imgcls("autoencode", "--data", data / "cifar10-jpeg", "--out", work / "cifar10-ae")
    copy(work / "cifar10-ae" / "reconstructions.png", DOCS / "autoencode" / "cifar10_ae_reconstructions.png")


def gan(data: Path, work: Path) -> None:
    """GANs: a column per class after 864 steps on MNIST, a row per class after 1,500 steps on CIFAR-10."""
    imgcls("gan", "--data", "mnist", "--data-dir", data, "--steps", 864, "--out", work / "mnist-gan")
    copy(work / "mnist-gan" / "classes.png", DOCS / "gan-mnist-classes.png")
    imgcls("gan", "--data", data / "cifar10-jpeg", "--steps", 1500, "--out", work / "cifar10-gan")
    copy(work / "cifar10-gan" / "classes.png", DOCS / "gan-cifar10-classes.png")


def compare(data: Path, work: Path) -> None:
    """Track, compare and tune: the compare page of a few real runs, by its own script."""
    subprocess.run([sys.executable, ROOT / "scripts" / "make_compare_demo.py", work / "compare"], check=True)


def tune(data: Path, work: Path) -> None:
    """Track, compare and tune: the page of a 12-trial study of 3-epoch runs on the embedded sample."""
    imgcls("tune", "--epochs", 3, "--trials", 12, "--no-report", "--out", work / "tune", cwd=work)
    screenshot(work / "tune" / "tune.html", DOCS / "experiments" / "tune.png", height=1250)


# name: (what makes it, needs --data, about how long on two CPU cores)
PICTURES = {
    "report": (report, False, "30 s"),
    "health": (health, True, "2 min"),
    "health-cv": (health_cv, True, "25 min"),
    "trust": (trust, True, "4 min"),
    "autoencode": (autoencode, True, "1 min"),
    "gan": (gan, True, "25 min"),
    "compare": (compare, False, "3 min"),
    "tune": (tune, False, "3 min"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pictures", nargs="*", metavar="PICTURE", help=f"among {', '.join(PICTURES)} [all]")
    parser.add_argument("--data", type=Path, help="the folder of MNIST/raw and cifar10-jpeg (the repo's ../shared/data)")
    parser.add_argument("--work", type=Path, help="where the runs go [a temporary folder]")
    parser.add_argument("--list", action="store_true", help="list the pictures and what they need")
    args = parser.parse_args()
    if args.list:
        for name, (make, needs_data, takes) in PICTURES.items():
            print(f"{name:11} {takes:>7}  {'needs --data  ' if needs_data else ''}{make.__doc__}")
        return
    unknown = [name for name in args.pictures if name not in PICTURES]
    if unknown:
        parser.error(f"no picture {', '.join(unknown)}: choose among {', '.join(PICTURES)}")
    chosen = args.pictures or list(PICTURES)
    lacking = [name for name in chosen if PICTURES[name][1] and not (args.data and (args.data / "cifar10-jpeg").is_dir())]
    if lacking:
        parser.error(f"{', '.join(lacking)} need --data: the folder holding MNIST/raw and cifar10-jpeg")
    work = args.work or Path(tempfile.mkdtemp(prefix="imgcls-pictures-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        print(f"== {name}: {PICTURES[name][0].__doc__}", flush=True)
        PICTURES[name][0](args.data.resolve() if args.data else None, work)
    print(f"the runs are in {work}")


if __name__ == "__main__":
    main()
