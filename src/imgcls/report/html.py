"""report.html: one self-contained page (plots embedded as data URIs, no network) with a run's config, results and plots."""

import base64
import html
from pathlib import Path

import torch

from imgcls.files import printable

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; } .figure { background: #f5f7fa; padding: 0.6em 1em; border-radius: 6px; }
.figure b { display: block; font-size: 1.5em; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
.columns { display: flex; flex-wrap: wrap; gap: 3em; align-items: flex-start; }
"""


def escape(text) -> str:
    """Text for HTML, with the bytes of a file or class name that are not UTF-8 shown escaped (files.printable)."""
    return html.escape(printable(str(text)))


def table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    def cells(values, tag):
        return "".join(f"<{tag}{' class=num' if i in numeric else ''}>{escape(str(v))}</{tag}>" for i, v in enumerate(values))

    body = "\n".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f"<table><thead><tr>{cells(header, 'th')}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def png_tag(png: bytes, alt: str, title: str | None = None) -> str:
    """An <img> that holds the PNG itself, as a data URL."""
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}"' + (f' title="{escape(title)}">' if title else ">")


def image_tag(path: Path, alt: str) -> str:
    """A PNG file embedded, linked to the file beside the page."""
    return f'<a href="{escape(path.name)}">{png_tag(path.read_bytes(), alt, path.name)}</a>'


def page(title: str, body: str) -> str:
    """A whole self-contained page: the shared head and style, the title as its heading, then body."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
{body}</body>
</html>
"""


def config_table(config: dict) -> str:
    return table(["setting", "value"], [[k, v] for k, v in config.items()])


def _figures(summary: dict, test: dict) -> list[tuple[str, str]]:
    shown = [("test accuracy", f"{test['accuracy']:.2%}"), ("test loss", f"{test['loss']:.4f}"), ("test images", f"{test['images']:,}")]
    known = [
        ("balanced_accuracy", "test balanced accuracy", "{:.2%}"),
        ("macro_f1", "test macro F1", "{:.4f}"),
        ("ece", "test ECE (calibrated)", "{:.4f}"),
        ("ece_uncalibrated", "test ECE before scaling", "{:.4f}"),
        ("temperature", "temperature", "{:.3f}"),
        ("suggested_min_confidence", "suggested --min-confidence", "{:.2f}"),
        ("best_val_accuracy", "best val accuracy", "{:.2%}"),
        ("best_val_map", "best val mAP", "{:.4f}"),
        ("best_epoch", "best epoch", "{}"),
        ("epochs_run", "epochs run", "{}"),
        ("train_seconds", "training time", "{:.1f} s"),
        ("images_per_second", "images / s", "{:,.0f}"),
        ("num_params", "parameters", "{:,}"),
        ("device", "device", "{}"),
    ]
    return shown + [(label, fmt.format(summary[key])) for key, label, fmt in known if summary.get(key) is not None]


def render(
    run_dir: Path,
    plots: dict[str, str],
    config: dict,
    summary: dict,
    test: dict,
    confusion: torch.Tensor,
    classes: list[str],
    history: list[dict],
    health: str = "",
) -> str:
    """The page; `plots` maps each PNG in run_dir to its heading, `test` holds this report's test accuracy, loss and image count,
    `health` is the dataset health section's HTML (folder runs)."""
    title = f"imgcls report: {run_dir.name}"
    about = ", ".join(f"{k} {config[k]}" for k in ("data", "model") if k in config)
    figures = "".join(f'<div class="figure">{escape(label)}<b>{escape(value)}</b></div>' for label, value in _figures(summary, test))
    sections = "\n".join(f"<h2>{escape(heading)}</h2>\n<p>{image_tag(run_dir / name, heading)}</p>" for name, heading in plots.items())
    totals, predicted = confusion.sum(1).tolist(), confusion.sum(0).tolist()
    per_class = [
        [name, f"{confusion[i, i].item() / totals[i]:.2%}" if totals[i] else "n/a",
         f"{confusion[i, i].item() / predicted[i]:.2%}" if predicted[i] else "n/a", confusion[i, i].item(), totals[i]]
        for i, name in enumerate(classes)
    ]  # fmt: skip
    epochs = [
        [r["epoch"], f"{r['train_loss']:.4f}", f"{r['train_acc']:.2%}", f"{r['val_loss']:.4f}", f"{r['val_acc']:.2%}", f"{r['lr']:.3g}", f"{r['seconds']:.1f}"]
        for r in history
    ]  # fmt: skip
    return page(
        title,
        f"""<p>{escape(about)}; everything below is on the test set with the best checkpoint (best.pt) unless it says otherwise.</p>
<div class="figures">{figures}</div>
{sections}
{health}
<div class="columns">
<div><h2>Per-class accuracy (recall) and precision</h2>
{table(["class", "accuracy", "precision", "correct", "images"], per_class, numeric={1, 2, 3, 4})}</div>
<div><h2>Epochs</h2>
{table(["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"], epochs, numeric=set(range(7)))}
<h2>Config</h2>
{config_table(config)}</div>
</div>
""",
    )
