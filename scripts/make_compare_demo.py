"""Make the picture of `imgcls compare` in the docs (docs/experiments/compare.png): three short runs on the embedded MNIST
sample (the recipe's lr, a tenth of it, and an MLP), their compare page, and a screenshot of its top in Debian's
headless Chromium through Playwright. A few minutes on a CPU. Usage:

    python scripts/make_compare_demo.py [RUNS_DIR]       # RUNS_DIR: where the runs go [a temporary folder]
    imgcls runs RUNS_DIR                                 # the table shown beside the picture
"""

import io
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

import imgcls

OUT = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "compare.png"
RUNS = {"digitnet": {}, "digitnet-low-lr": {"lr": 0.02}, "mlp": {"model": "mlp"}}
WIDTH = 1400  # the page's own largest width
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main(runs_dir: Path) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(runs_dir)  # the page names the run folders as given: short relative paths
    runs = [imgcls.train("mnist-sample", epochs=4, report=False, progress=False, out=name, **options) for name, options in RUNS.items()]
    page = imgcls.compare(runs, out="compare.html").page
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_page(viewport={"width": WIDTH, "height": 900})
        tab.goto(page.resolve().as_uri())
        # From the top to the per-class section's end: the summaries below are long tables of numbers.
        bottom = tab.locator("h2", has_text="Summaries").bounding_box()["y"]
        shot = tab.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": WIDTH, "height": bottom})
        browser.close()
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=128)  # flat colours: a palette keeps it small
    OUT.parent.mkdir(parents=True, exist_ok=True)
    image.save(OUT, optimize=True)
    print(f"saved {OUT} ({OUT.stat().st_size // 1024} KB) from {page.resolve()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="compare-demo-")))
