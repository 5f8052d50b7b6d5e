import base64
import json
import shutil
import warnings
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from conftest import chromium, cli_train, make_folder, run_cli
from imgcls.data.augment import Augment, denormalize, prepare
from imgcls.data.registry import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD
from imgcls.report import PLOTS, plots, write_report
from imgcls.report.interpret import top_losses

pytestmark = pytest.mark.report
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short default run (mlp for speed) whose report the tests below read."""
    root = tmp_path_factory.mktemp("report-run")
    cli_train(root, "--epochs", "2", "--model", "mlp")
    return root / "run"


def assert_png(path: Path, min_side: int = 180) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
        assert min(image.size) >= min_side, (path, image.size)


class Page(HTMLParser):
    """Collects images and table rows, and checks that every opened element is closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.images, self.rows, self.stack = [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "tr":
            self.rows.append([])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes nothing"

    def handle_data(self, data):
        if self.rows and "tr" in self.stack and data.strip():
            self.rows[-1].append(data.strip())


def test_training_leaves_every_plot_and_a_self_contained_report(trained_run):
    for name in PLOTS:
        assert_png(trained_run / name)
    page = Page((trained_run / "report.html").read_text())
    assert page.stack == []
    embedded = {img["title"]: img["src"] for img in page.images}
    assert set(embedded) == set(PLOTS)
    for name, src in embedded.items():  # each plot is embedded byte for byte: the page needs nothing beside it
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (trained_run / name).read_bytes()
    text = (trained_run / "report.html").read_text()
    assert "http://" not in text and "https://" not in text
    summary = json.loads((trained_run / "summary.json").read_text())
    assert f"{summary['test_accuracy']:.2%}" in text  # the page's accuracy is the run's
    per_class = [r for r in page.rows if r and r[0] in {str(d) for d in range(10)} and len(r) == 5]  # class, accuracy, precision, ...
    assert len(per_class) == 10 and sum(int(r[4]) for r in per_class) == 2000 and all(r[2].endswith("%") for r in per_class)
    assert ["model", "mlp"] in page.rows and ["data", "mnist-sample"] in page.rows


def test_report_command_regenerates_the_plots(trained_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    for name in [*PLOTS, "report.html"]:
        (run / name).unlink()
    code, out, _ = run_cli(capsys, "report", run)
    assert code == 0 and f"open {run / 'report.html'}" in out
    for name in PLOTS:
        assert_png(run / name)
    assert (run / "report.html").read_text().count("data:image/png;base64,") == len(PLOTS)


def test_report_of_something_that_is_not_a_finished_run_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", tmp_path / "nowhere")
    assert code == 2 and "is not a run folder" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "report", tmp_path / "empty")
    assert code == 2 and "holds no best.pt" in err
    (tmp_path / "empty" / "last.pt").write_bytes(b"")
    code, _, err = run_cli(capsys, "report", tmp_path / "empty")
    assert code == 2 and "imgcls train --resume" in err and len(err.strip().splitlines()) == 1


def test_top_losses_are_the_highest_losses_highest_first():
    probs = torch.tensor(
        [
            [0.90, 0.05, 0.05],  # true 0: right, loss -log 0.9
            [0.01, 0.98, 0.01],  # true 0: confidently wrong, the top loss
            [0.30, 0.40, 0.30],  # true 2: mildly wrong
            [0.02, 0.03, 0.95],  # true 2: right, the lowest loss
            [0.10, 0.10, 0.80],  # true 1: wrong, second
        ]
    )
    labels = torch.tensor([0, 0, 2, 2, 1])
    index, losses = top_losses(probs.log(), labels, 3)
    assert index.tolist() == [1, 4, 2]
    assert torch.allclose(losses, -torch.tensor([0.01, 0.10, 0.30]).log())
    assert top_losses(probs.log(), labels, 10)[0].tolist() == [1, 4, 2, 0, 3]  # k beyond n: all, still ordered


@pytest.mark.parametrize("mean,std", [(MNIST_MEAN, MNIST_STD), (CIFAR_MEAN, CIFAR_STD)], ids=["mnist", "cifar"])
def test_denormalize_restores_the_exact_pixels(mean, std):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, len(mean), 9, 9), generator=g, dtype=torch.uint8)
    images[0] = 0
    images[1] = 255  # both ends of the range
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    assert torch.equal(denormalize(prepare(images, m, s), m, s), images)
    # Augmented images come back as valid uint8 too: the shifted-in border is black.
    shifted = denormalize(prepare(images, m, s, Augment(crop_padding=3), torch.Generator().manual_seed(1)), m, s)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape


# --- legibility ---------------------------------------------------------------------------------------


def drawn_texts(fig) -> list[tuple[str, object]]:
    """Every text the Agg renderer actually draws, with its box in pixels."""
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    seen, drawn, draw_text = set(), [], renderer.draw_text

    def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if mtext is not None and s.strip() and id(mtext) not in seen:
            seen.add(id(mtext))
            drawn.append((mtext.get_text(), mtext.get_window_extent(renderer)))
        return draw_text(gc, x, y, s, prop, angle, ismath, mtext)

    renderer.draw_text = record
    canvas.draw()
    return drawn


def assert_legible(fig) -> list[str]:
    texts = drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    for text, box in texts:
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, f"'{text}' is cut off"
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            overlap = box_a.shrunk(0.95, 0.95).overlaps(box_b.shrunk(0.95, 0.95))
            assert not overlap, f"'{a}' overlaps '{b}'"
    return [t for t, _ in texts]


def fake_results(k: int, n: int = 40, channels: int = 3):
    g = torch.Generator().manual_seed(k)
    names = ["aquarium_fish", "sweet_pepper", "a_very_long_class_name_indeed", "x", "pickup_truck"]
    classes = ["airplane", "bird"] if k == 2 else [f"{names[i % len(names)]}_{i}" for i in range(k)]
    labels = torch.randint(0, k, (n,), generator=g)
    probs = (torch.randn(n, k, generator=g) * 2 + 3 * torch.nn.functional.one_hot(labels, k)).softmax(1)
    images = torch.randint(0, 256, (n, channels, 20, 24), generator=g, dtype=torch.uint8)
    confusion = torch.randint(0, 30, (k, k), generator=g) + 200 * torch.eye(k, dtype=torch.long)
    return classes, labels, probs, images, confusion


@pytest.mark.parametrize("k", [2, 100])
def test_plots_are_legible_for_2_and_100_classes(k):
    classes, labels, probs, images, confusion = fake_results(k)
    texts = assert_legible(plots.confusion_figure(confusion, classes))
    assert sum(t == plots.short(classes[-1], 18) for t in texts) == 2  # every class is named on both axes
    texts = assert_legible(plots.per_class_figure(confusion, classes))
    assert plots.short(classes[-1], 24) in texts
    assert_legible(plots.samples_figure(images[:32], labels[:32], probs[:32].argmax(1), classes))
    index, losses = top_losses(probs.log(), labels, 16)
    assert_legible(plots.top_losses_figure(images[index], labels[index], probs[index], losses, classes))
    assert_legible(plots.predictions_figure(images[:6], probs[:6], classes, titles=[f"photo_{i}_from_holidays.jpeg" for i in range(6)]))
    assert_legible(plots.preview_figure(images, labels, classes, 4, "preview"))
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 1, "val_acc": 0.6, "lr": 0.01 / e} for e in (1, 2, 3)]
    assert_legible(plots.curves_figure(history))


def test_top_losses_beside_their_heatmaps_draw_without_warnings():
    classes, labels, probs, images, _ = fake_results(2)
    index, losses = top_losses(probs.log(), labels, 4)
    heatmaps = torch.rand(len(index), 20, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only PIL buffer handed to torch.from_numpy warned once per run
        fig = plots.top_losses_figure(images[index], labels[index], probs[index], losses, classes, heatmaps)
    assert any("where the model looked" in t for t in assert_legible(fig))


@pytest.mark.parametrize("n,k,channels", [(1, 2, 1), (12, 100, 3)])
def test_plot_predictions_draws_one_png(tmp_path, n, k, channels):
    classes, _, probs, images, _ = fake_results(k, n=n, channels=channels)
    plots.plot_predictions(images, probs, classes, tmp_path / "p.png", titles=[f"img{i}.png" for i in range(n)])
    assert_png(tmp_path / "p.png")


# --- datasets --show ------------------------------------------------------------------------------------


def test_datasets_show_prints_class_counts_and_saves_a_grid(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "datasets", "--show", "mnist-sample", "--per-class", "4")
    assert code == 0 and "total    9,000    1,000    2,000" in out and "saved 4 training images per class" in out
    assert_png(Path("mnist-sample-samples.png"))
    root = make_folder(tmp_path / "pets", per_class=10)
    code, out, _ = run_cli(capsys, "datasets", "--show", root, "--out", "pets.png")
    counts = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("cat", "dog", "total"))}
    assert counts == {"cat": ["6", "2", "2"], "dog": ["6", "2", "2"], "total": ["12", "4", "4"]}  # the 60/20/20 split training uses
    assert_png(Path("pets.png"))
    code, _, err = run_cli(capsys, "datasets", "--show", "svhn")
    assert code == 2 and "unknown dataset 'svhn'" in err


# --- the page in a real browser ---------------------------------------------------------------------------


def test_report_renders_every_image_in_headless_chromium(trained_run):
    with chromium() as browser:
        page = browser.new_page()
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((trained_run / "report.html").as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.title, i.complete, i.naturalWidth])")
    assert sorted(t for t, _, _ in images) == sorted(PLOTS)
    assert all(complete and width > 0 for _, complete, width in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # no network


# --- names drawn as written ---------------------------------------------------------------------------------

MATH_LIKE = ["$x$", "a$b", "50$", "\\alpha", "$x_$"]  # math text to Matplotlib, which cannot parse the last one


def drawn_strings(fig) -> list[tuple[str, bool]]:
    """Every string the Agg renderer draws, with whether it was drawn as math text."""
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    drawn, draw_text = [], renderer.draw_text

    def record(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        drawn.append((s, bool(ismath)))
        return draw_text(gc, x, y, s, prop, angle, ismath, mtext)

    renderer.draw_text = record
    canvas.draw()
    return drawn


def test_class_and_file_names_with_dollars_are_drawn_literally(tmp_path):
    k = len(MATH_LIKE)
    labels = torch.arange(8) % k
    logits = torch.nn.functional.one_hot((labels + 1) % k, k).float() * 3  # every image wrong: both names in each title
    images = torch.randint(0, 256, (8, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    history = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1, "seconds": 1.0}]
    page = write_report(tmp_path, MATH_LIKE, images, labels, logits, history=history, config={"data": "$5 bills"}, summary={})
    for name in PLOTS:
        assert_png(tmp_path / name, min_side=100)
    html = page.read_text()
    assert all(escape(c) in html for c in MATH_LIKE) and "<td>a$b</td>" in html
    probs = logits.softmax(1)
    confusion = torch.ones(k, k, dtype=torch.long)
    index, losses = top_losses(probs.log(), labels, 8)
    figures = [
        plots.confusion_figure(confusion, MATH_LIKE),
        plots.per_class_figure(confusion, MATH_LIKE),
        plots.samples_figure(images, labels, probs.argmax(1), MATH_LIKE),
        plots.top_losses_figure(images[index], labels[index], probs[index], losses, MATH_LIKE),
        plots.predictions_figure(images[:2], probs[:2], MATH_LIKE, titles=["a$b.png", "50$.png"]),
        plots.preview_figure(images, labels, MATH_LIKE, 2, "$5 bills: a preview"),
    ]
    for fig in figures:
        drawn = drawn_strings(fig)
        assert not any(math for s, math in drawn if "$" in s or "\\" in s), drawn
        assert any(c in s for s, _ in drawn for c in MATH_LIKE), drawn
