"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright): `imgcls serve` of a
digit model, a 7 drawn with the mouse on the page's canvas, and the prediction the page shows."""

from importlib import resources

import numpy as np
import pytest
from PIL import Image

from conftest import chromium

SEVEN = [[(60, 55), (215, 55), (200, 80), (165, 140), (130, 200), (115, 240)]]  # canvas pixels, 280 x 280
ONE = [[(140, 40), (140, 240)]]


@pytest.fixture(scope="module")
def page(request):
    with chromium() as browser:
        served = request.getfixturevalue("served")  # only now: no training or server start for a skipped test
        page = browser.new_page()
        page.goto(served)
        page.wait_for_selector("#canvas", state="visible", timeout=15_000)  # a digit model: the canvas is shown
        yield page


def draw(page, strokes):
    page.click("#clear")
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
        page.mouse.up()


def shown_labels(page) -> list[str]:
    page.wait_for_selector("#results li", timeout=15_000)
    return page.locator("#results li").evaluate_all("items => items.map(li => li.dataset.label)")


@pytest.mark.parametrize("strokes, digit", [(SEVEN, "7"), (ONE, "1")], ids=["seven", "one"])
def test_a_drawn_digit_is_predicted(page, strokes, digit):
    draw(page, strokes)
    assert page.locator("#results li").count() == 0  # clearing the canvas cleared the old results
    page.click("#predict-drawing")
    labels = shown_labels(page)
    assert labels[0] == digit and len(labels) == 5
    assert page.locator("#results li >> nth=0 >> .probability").inner_text().endswith("%")
    assert "digitnet" in page.inner_text("#model-info")


def test_an_uploaded_image_is_predicted_and_a_bad_one_explained(page, tmp_path):
    with resources.files("imgcls.assets").joinpath("mnist_sample.npz").open("rb") as f:
        sample = np.load(f)
        pixels, label = sample["test_images"][1], str(sample["test_labels"][1])
    Image.fromarray(pixels).resize((84, 84)).convert("RGB").save(tmp_path / "digit.jpg", quality=95)
    page.set_input_files("#file", str(tmp_path / "digit.jpg"))
    page.wait_for_selector(f'#results li[data-label="{label}"]:first-child', timeout=15_000)
    assert page.locator("#preview").is_visible()
    (tmp_path / "notes.png").write_bytes(b"not really a png")
    page.set_input_files("#file", str(tmp_path / "notes.png"))
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert "not a readable image" in page.inner_text("#error")
    assert page.locator("#results li").count() == 0
