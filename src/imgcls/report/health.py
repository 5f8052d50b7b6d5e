"""Dataset health for people: a text summary, health.json, a picture of each finding, and a section of report.html.

`imgcls datasets --check` writes them for a dataset; after a run on a folder, `write_report` adds what only a trained
model can tell: the test accuracy without the test images that have a copy in train, and likely label errors.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.data.core import Dataset
from imgcls.data.duplicates import Group, with_copy_in
from imgcls.data.health import EXTREME_ASPECT, IMBALANCE_WARNING, ODD_KINDS, TINY, Health, LabelIssues, check, label_issues
from imgcls.data.images import ImageReadError, check_size, decoding, load_image, open_image
from imgcls.data.near import MIRROR_CORRELATION, NEAR_BITS, NEAR_CORRELATION, NEAR_MARGIN, ZOOMS
from imgcls.files import write_json

GROUPS_SHOWN = 12  # duplicate groups in a grid, one per row
COPIES_SHOWN = 6  # copies of a group in its row
ODD_PER_KIND = 8  # odd files of each kind in the picture
ISSUES_SHOWN = 24
THUMB = 96  # pixels: the longer side of an odd file's picture
EXAMPLES = 3  # names of each finding in the text summary

KINDS = {  # group kinds (Health.kind): heading of their grid, file, what they mean
    "duplicate": ("Duplicates within one class and split", "health_duplicates.png", "extra copies: they weigh twice in training"),
    "leak": ("Copies across splits (leaks)", "health_leaks.png", "a copy in train makes a val or test image easy: accuracy too high"),
    "conflict": ("The same picture under different labels", "health_conflicts.png", "at most one label is right"),
}
ODD_FILE, BALANCE_FILE, ISSUES_FILE = "health_odd_files.png", "health_balance.png", "health_label_errors.png"
CV_ISSUES_FILE = "health_label_errors_cv.png"
METHOD = (
    f"exact: the same decoded pixels and original size; near: a 64-bit DCT perceptual hash (or that of the picture's centre "
    f"zoomed by up to {max(ZOOMS):g}x, a crop, or of its mirror image) within {NEAR_BITS} bits, confirmed at the best shift "
    f"(2 px of 32) by the correlation of the grey pictures (at least {NEAR_CORRELATION:g}; {MIRROR_CORRELATION:g} for a mirror "
    f"image) and of their detail ({NEAR_MARGIN:g} above how alike each stays moved by a pixel)"
)


@dataclass
class RunFindings:
    """What a trained model adds: accuracy without leaked test images, and likely label errors in the test split."""

    test_accuracy: float
    clean_accuracy: float | None  # on the test images without a copy in train; None when every one has a copy
    clean_images: int
    test_images: int
    issues: LabelIssues  # rows of the test split


def run_findings(health: Health, probs: torch.Tensor) -> RunFindings:
    """From the test split's out-of-sample class probabilities (N x K, in the split's order)."""
    start = health.items.offset("test")
    labels = health.items.labels[start : start + len(probs)]
    right = probs.argmax(1).cpu() == labels
    clean = ~with_copy_in(health.groups, health.items, "test", "train")
    clean_accuracy = right[clean].float().mean().item() if clean.any() else None
    return RunFindings(right.float().mean().item(), clean_accuracy, int(clean.sum()), len(labels), label_issues(probs, labels))


# --- text ----------------------------------------------------------------------------------------------------


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:EXAMPLES])
    return f"e.g. {shown}{', ...' if len(names) > EXAMPLES else ''}" if names else ""


def _named(health: Health, i: int, kind: str) -> str:
    """An image's name, with its split where that is the point (a leak: a split's images may share a folder)."""
    return f"{health.items.names[i]} ({health.items.splits[i]})" if kind == "leak" else health.items.names[i]


def _split_sizes(health: Health) -> str:
    return ", ".join(f"{s} {health.items.splits.count(s):,}" for s in ("train", "val", "test"))


def summary_text(health: Health, run: RunFindings | None = None) -> str:
    h, items = health, health.items
    lines = [f"{h.name}: {len(items):,} images in {len(h.classes)} classes ({_split_sizes(h)})", ""]
    by_kind = {kind: [g for g in h.groups if h.kind(g) == kind] for kind in KINDS}
    extra = sum(len(g.members) - 1 for g in h.groups)
    exact = sum(g.exact for g in h.groups)
    lines.append(
        f"duplicates: {len(h.groups):,} groups of copies ({exact:,} exact, {len(h.groups) - exact:,} near), {extra:,} extra copies"
    )
    leaked = {s: int(with_copy_in(h.groups, items, s, "train").sum()) for s in ("val", "test")}
    notes = {
        "duplicate": KINDS["duplicate"][2],
        "leak": f"{leaked['test']:,} test and {leaked['val']:,} val images have a copy in train",
        "conflict": KINDS["conflict"][2],
    }
    for kind, groups in by_kind.items():
        example = _examples([" = ".join(_named(health, i, kind) for i in _shown(health, g)[:2]) for g in groups])
        lines.append(f"  {KINDS[kind][0].lower():<42} {len(groups):>6,}  {notes[kind]}" + (f"; {example}" if example else ""))
    lines.append(f"  ({METHOD}; {'mirror images count: training flips them' if h.flips else 'mirror images do not count: no flips'})")
    lines.append("")
    lines.append("odd files:" if h.files_checked else "odd images (a named dataset: no files to check, only pixels):")
    for kind, label in ODD_KINDS.items():
        if h.files_checked or kind == "greyscale":
            found = h.odd[kind]
            lines.append(f"  {label:<62} {len(found):>6,}  {_examples([name for name, _ in found])}".rstrip())
    lines.append("")
    counts = h.counts()
    width = max(5, *(len(c) for c in h.classes))
    ratio = h.imbalance()
    lines.append("balance:")
    lines.append(f"  {'class':<{width}}" + "".join(f"  {s:>7}" for s in ("train", "val", "test", "total")))
    for i, c in enumerate(h.classes):
        lines.append(f"  {c:<{width}}" + "".join(f"  {counts[s][i]:>7,}" for s in ("train", "val", "test", "total")))
    lines.append(f"  imbalance ratio {ratio:.1f} (the largest class in train over the smallest)")
    if ratio >= IMBALANCE_WARNING:
        lines.append(f"  warning: the classes are imbalanced ({ratio:.1f}:1): accuracy favours the large classes; read per-class accuracy")
    if h.label_errors is not None:
        lines += ["", *_cv_lines(health)]
    if run is not None:
        lines += ["", *_run_lines(health, run)]
    return "\n".join(lines)


def _run_lines(health: Health, run: RunFindings) -> list[str]:
    clean = "n/a (every test image has a copy in train)" if run.clean_accuracy is None else f"{run.clean_accuracy:.2%}"
    return [
        f"test accuracy {run.test_accuracy:.2%} on all {run.test_images:,} test images; {clean} on the {run.clean_images:,} "
        "without a copy in train",
        f"likely label errors (confident learning on the test predictions): {len(run.issues.index):,}",
        *_issue_lines(health, run.issues, health.items.offset("test")),
    ]


def _cv_lines(health: Health) -> list[str]:
    cv = health.label_errors
    return [
        f"likely label errors (confident learning on {cv.folds}-fold cross-validated predictions: {cv.model} from scratch, "
        f"{cv.epochs} epochs per fold, held-out accuracy {cv.accuracy:.2%}): {len(cv.issues.index):,}",
        *_issue_lines(health, cv.issues, 0),
    ]


def _issue_lines(health: Health, issues: LabelIssues, start: int) -> list[str]:
    """The first issues, their rows counted from the image at `start`."""
    return [
        f"  {health.items.names[start + int(i)]}: given {health.classes[given]} ({p_given:.2f}), "
        f"the model says {health.classes[suggested]} ({p_suggested:.2f})"
        for i, given, suggested, p_given, p_suggested in list(zip(*issues))[:EXAMPLES]
    ]


# --- JSON ----------------------------------------------------------------------------------------------------


def to_json(health: Health, run: RunFindings | None = None) -> dict:
    h, items = health, health.items

    def member(i: int) -> dict:
        return {"file": items.names[i], "split": items.splits[i], "class": h.classes[int(items.labels[i])]}

    counts = h.counts()
    ratio = h.imbalance()
    out = {
        "dataset": h.name,
        "images": len(items),
        "classes": h.classes,
        "method": {
            "exact": "the same decoded pixels (BLAKE2b) and the same original size",
            "near": METHOD.split("; near: ")[1],
            "near_max_bits": NEAR_BITS,
            "near_min_correlation": NEAR_CORRELATION,
            "mirror_images_count": h.flips,
            "odd_files": {"tiny_below_px": TINY, "extreme_aspect_over": EXTREME_ASPECT, "files_checked": h.files_checked},
        },
        "duplicates": {
            "groups": len(h.groups),
            "exact_groups": sum(g.exact for g in h.groups),
            "extra_copies": sum(len(g.members) - 1 for g in h.groups),
            **{f"{kind}_groups": sum(h.kind(g) == kind for g in h.groups) for kind in KINDS},
            "test_images_with_a_copy_in_train": int(with_copy_in(h.groups, items, "test", "train").sum()),
            "val_images_with_a_copy_in_train": int(with_copy_in(h.groups, items, "val", "train").sum()),
            "list": [{"kind": h.kind(g), "exact": g.exact, "members": [member(i) for i in g.members]} for g in h.groups],
        },
        "odd_files": {kind: [{"file": name, "detail": detail} for name, detail in found] for kind, found in h.odd.items()},
        "balance": {
            "per_class": {c: {s: counts[s][i] for s in counts} for i, c in enumerate(h.classes)},
            "imbalance_ratio_in_train": ratio,
            "warning": ratio >= IMBALANCE_WARNING,
        },
        "seconds": {k: round(v, 3) for k, v in h.seconds.items()},
    }
    if h.label_errors is not None:
        cv = h.label_errors
        out["label_errors"] = {
            "method": f"confident learning on {cv.folds}-fold cross-validated predictions of every image",
            "folds": cv.folds, "model": cv.model, "epochs_per_fold": cv.epochs, "held_out_accuracy": cv.accuracy,
            "seconds": round(cv.seconds, 3), "list": _issues_json(h, cv.issues, 0),
        }  # fmt: skip
    if run is not None:
        out["run"] = {
            "test_accuracy": run.test_accuracy,
            "test_accuracy_without_train_copies": run.clean_accuracy,
            "test_images_without_train_copies": run.clean_images,
            "test_images": run.test_images,
            "label_errors": _issues_json(h, run.issues, items.offset("test")),
        }
    return out


def _issues_json(health: Health, issues: LabelIssues, start: int) -> list[dict]:
    items = health.items
    return [
        {"file": items.names[start + i], "split": items.splits[start + i], "given": health.classes[g], "suggested": health.classes[s],
         "given_probability": pg, "suggested_probability": ps}
        for i, g, s, pg, ps in zip(*(t.tolist() for t in issues))
    ]  # fmt: skip


# --- pictures ------------------------------------------------------------------------------------------------


def _tail(name: str, width: int = 22) -> str:
    """The end of a path, which names the file: "…/cat/0001.jpg"."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _shown(health: Health, group: Group) -> list[int]:
    """A group's members in the order to show them: the first, then those of another class or split (what makes it a
    conflict or a leak), then the rest."""
    items, first = health.items, group.members[0]

    def differs(i: int) -> bool:
        return int(items.labels[i]) != int(items.labels[first]) or items.splits[i] != items.splits[first]

    return [first, *sorted(group.members[1:], key=lambda i: not differs(i))]


def _sample(groups: list[Group]) -> list[Group]:
    """GROUPS_SHOWN groups, the same every time: a seeded sample, so that a few large groups do not fill the picture."""
    if len(groups) <= GROUPS_SHOWN:
        return groups
    pick = torch.randperm(len(groups), generator=torch.Generator().manual_seed(0))[:GROUPS_SHOWN].sort().values
    return [groups[i] for i in pick.tolist()]


def _groups_figure(health: Health, groups: list[Group], heading: str):
    from imgcls.report.plots import WRONG, image_grid_figure, short

    items = health.items
    images, titles, colors = [], [], []
    shown = _sample(groups)
    cols = max(3, min(COPIES_SHOWN, max(len(g.members) for g in shown)))  # three at least: room for the title
    pictures = items.take(torch.tensor([i for g in shown for i in _shown(health, g)[:cols]]))
    k = 0
    for g in shown:
        first_label, first_split = int(items.labels[g.members[0]]), items.splits[g.members[0]]
        for n, i in enumerate(_shown(health, g)[:cols]):
            more = f" (+{len(g.members) - cols} more)" if n == cols - 1 and len(g.members) > cols else ""
            label = int(items.labels[i])
            titles.append(
                f"{'exact' if g.exact else 'near'}{more}\n{items.splits[i]}: {short(health.classes[label], 14)}\n{_tail(items.names[i])}"
            )
            colors.append(WRONG if label != first_label or items.splits[i] != first_split else "black")
            images.append(pictures[k])
            k += 1
        images += [None] * (cols - min(cols, len(g.members)))
        titles += [""] * (cols - min(cols, len(g.members)))
        colors += ["black"] * (cols - min(cols, len(g.members)))
    more = f" ({len(shown)} of {len(groups):,}, a sample)" if len(groups) > len(shown) else ""
    suptitle = f"{heading}{more}\none group of copies per row; red: another class or split"
    return image_grid_figure(images, titles, colors, suptitle, columns=cols)


def _thumbnail(path: Path) -> torch.Tensor | None:
    """A file as imgcls decodes it (upright, RGB), its longer side THUMB pixels at most."""
    try:
        with decoding(), open_image(path) as image:
            check_size(image)
            image.draft("RGB", (THUMB, THUMB))
            pixels = torch.from_numpy(load_image(image, 3, None).copy())
    except ImageReadError:
        return None
    h, w = pixels.shape[1:]
    scale = THUMB / max(h, w)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pixels = F.interpolate(pixels[None].float(), size=size, mode="bilinear", antialias=True).round().clamp(0, 255).byte()[0]
    return pixels


def _odd_figure(health: Health, root: Path | None):
    from imgcls.report.plots import image_grid_figure

    position = {name: i for i, name in enumerate(health.items.names)}
    entries = [(kind, name, detail) for kind, found in health.odd.items() if kind != "unreadable" for name, detail in found[:ODD_PER_KIND]]
    images, titles = [], []
    for kind, name, detail in entries:
        picture = _thumbnail(root / name) if root is not None else health.items.take(torch.tensor([position[name]]))[0]
        if picture is not None:
            images.append(picture)
            titles.append(f"{kind.replace('_', ' ')}\n{detail}\n{_tail(name)}")
    if not images:
        return None
    total = sum(len(found) for kind, found in health.odd.items() if kind != "unreadable")
    more = f"{len(images)} of {total:,}, {ODD_PER_KIND} of each kind at most; " if total > len(images) else ""
    return image_grid_figure(images, titles, ["black"] * len(images), f"Odd files ({more}unreadable ones are listed in health.json)")


def _issues_figure(health: Health, issues: LabelIssues, start: int, which: str):
    """The first issues, their rows counted from the image at `start`; `which` says whose predictions they are."""
    from imgcls.report.plots import WRONG, image_grid_figure, short

    items = health.items
    shown = list(zip(*issues))[:ISSUES_SHOWN]
    images = items.take(torch.tensor([start + int(i) for i, *_ in shown]))
    titles = [
        f"given {short(health.classes[g], 12)} ({pg:.2f})\nmodel {short(health.classes[s], 12)} ({ps:.2f})\n{_tail(items.names[start + int(i)])}"
        for i, g, s, pg, ps in shown
    ]
    suptitle = f"Likely label errors: {which} ({len(shown)} of {len(issues.index):,})"
    return image_grid_figure(images, titles, [WRONG] * len(shown), suptitle)


def write_findings(health: Health, out: Path, run: RunFindings | None = None, root: Path | None = None) -> dict[str, str]:
    """health.json and a picture of each finding there is, in `out`: {file name: heading} of the pictures written.
    `root` is the folder the files are read from for the odd files' pictures (None: a named dataset's pixels)."""
    from imgcls.report import plots

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "health.json", to_json(health, run))
    written = {}
    for kind, (heading, name, _) in KINDS.items():
        groups = [g for g in health.groups if health.kind(g) == kind]
        if groups:
            plots.save(_groups_figure(health, groups, heading), out / name)
            written[name] = heading
    odd = _odd_figure(health, root if health.files_checked else None)
    if odd is not None:
        plots.save(odd, out / ODD_FILE)
        written[ODD_FILE] = "Odd files"
    ratio = health.imbalance()
    title = f"Images per class (imbalance ratio in train {ratio:.1f}{': imbalanced' if ratio >= IMBALANCE_WARNING else ''})"
    plots.save(plots.balance_figure(health.counts(), health.classes, title), out / BALANCE_FILE)
    written[BALANCE_FILE] = "Images per class"
    cv = health.label_errors
    if cv is not None and len(cv.issues.index):
        which = f"the images whose given label the model that did not train on them finds least likely ({cv.folds}-fold cross-validation)"
        plots.save(_issues_figure(health, cv.issues, 0, which), out / CV_ISSUES_FILE)
        written[CV_ISSUES_FILE] = "Likely label errors (cross-validated)"
    if run is not None and len(run.issues.index):
        which = "the test images whose given label the model finds least likely"
        plots.save(_issues_figure(health, run.issues, health.items.offset("test"), which), out / ISSUES_FILE)
        written[ISSUES_FILE] = "Likely label errors"
    return written


# --- report.html ---------------------------------------------------------------------------------------------


def html_section(health: Health, out: Path, written: dict[str, str], run: RunFindings | None) -> str:
    """The "Dataset health" part of report.html: the figures, a table of findings and the pictures."""
    from imgcls.report.html import escape, image_tag, table

    h, items = health, health.items
    figures = []
    if run is not None:
        clean = "n/a" if run.clean_accuracy is None else f"{run.clean_accuracy:.2%}"
        figures.append((f"test accuracy without the {run.test_images - run.clean_images:,} test images copied in train", clean))
    leaked = int(with_copy_in(h.groups, items, "test", "train").sum())
    figures += [("duplicate groups", f"{len(h.groups):,}"), ("test images with a copy in train", f"{leaked:,}")]
    ratio = h.imbalance()
    figures.append(("imbalance ratio in train", f"{ratio:.1f}{' (imbalanced)' if ratio >= IMBALANCE_WARNING else ''}"))
    boxes = "".join(f'<div class="figure">{escape(label)}<b>{escape(value)}</b></div>' for label, value in figures)
    rows = [[KINDS[kind][0], sum(h.kind(g) == kind for g in h.groups), KINDS[kind][2]] for kind in KINDS]
    rows += [[label, len(h.odd[kind]), ", ".join(n for n, _ in h.odd[kind][:EXAMPLES])] for kind, label in ODD_KINDS.items()]
    if run is not None:
        rows.append(["Likely label errors (test set, confident learning)", len(run.issues.index), "the grid shows the most likely"])
    pictures = "\n".join(f"<h3>{escape(heading)}</h3>\n<p>{image_tag(out / name, heading)}</p>" for name, heading in written.items())
    return f"""<h2>Dataset health</h2>
<p>{escape(METHOD)}. Every finding is listed in health.json.</p>
<div class="figures">{boxes}</div>
{table(["finding", "count", "note"], rows, numeric={1})}
{pictures}"""


def run_health(run_dir: Path, data: Dataset, probs: torch.Tensor) -> str:
    """After a run on a folder or table: check its data, add what the test predictions tell, write health.json and the
    pictures into the run folder; the report.html section."""
    root = data.root if data.root is not None and data.root.is_dir() else None
    health = check(data, root)
    run = run_findings(health, probs)
    written = write_findings(health, run_dir, run, root)
    return html_section(health, run_dir, written, run)
