"""What a GAN run shows: image grids, the loss curves, report.html, and how recognisable its images are to a
classifier trained by imgcls on real images (the judge)."""

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from imgcls.errors import ImgclsError
from imgcls.files import atomic_write, read_json, write_text
from imgcls.gan.sample import class_labels, generate, noise
from imgcls.inference import Predictor

PER_CLASS = 10  # images per class in classes.png
SMOOTH = 25  # steps in the moving average of the loss curves


def save_grid(images: torch.Tensor, path: str | Path, columns: int) -> None:
    """uint8 images side by side, `columns` to a row, white between them, as one PNG."""
    grid = make_grid(images, nrow=columns, padding=2, pad_value=255)
    atomic_write(path, lambda f: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(f, format="png"))


def open_judge(run: str, device: str = "auto") -> Predictor:
    return Predictor.from_checkpoint(run, device)


def check_judge(judge: Predictor, classes: list[str], shape) -> None:
    """The judge must know every class the generator draws, and take images of its size."""
    missing = [c for c in classes if c not in judge.classes]
    if missing:
        raise ImgclsError(
            f"the --judge model does not know the classes {', '.join(missing[:5])}: pass a classifier trained on the same data"
        )
    if tuple(judge.in_shape) != tuple(shape):
        sizes = "x".join(map(str, judge.in_shape)), "x".join(map(str, shape))
        raise ImgclsError(
            f"the --judge model takes {sizes[0]} images, the generator makes {sizes[1]}: pass a classifier trained on the same data"
        )


def judge(judge: Predictor, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """The judge's accuracy on images meant to be of `labels` (indices into `classes`), and its confidence: the mean
    probability it gives the intended class; overall and per class."""
    probs = judge.probabilities(images)
    target = torch.tensor([judge.classes.index(c) for c in classes])[labels]
    right = (probs.argmax(1) == target).float()
    confidence = probs.gather(1, target[:, None]).squeeze(1)
    per_class = {
        name: {"images": int(mask.sum()), "accuracy": right[mask].mean().item(), "confidence": confidence[mask].mean().item()}
        for i, name in enumerate(classes)
        if (mask := labels == i).any()
    }
    return {
        "judge": judge.source,
        "images": len(labels),
        "accuracy": right.mean().item(),
        "confidence": confidence.mean().item(),
        "per_class": per_class,
    }


def judge_run(trainer, predictor: Predictor, images: int) -> dict:
    """The judge on `images` generated images (the same number of each class) and, for reference, on the real test images."""
    k = trainer.num_classes
    labels = class_labels(k, per_class=max(1, images // k))
    fake = generate(trainer.ema.module, noise(len(labels), trainer.cfg.z_dim, trainer.cfg.seed + 2), labels, trainer.device)
    verdict = judge(predictor, fake, labels, trainer.data.classes)
    test = trainer.data.test
    if len(test):
        verdict["real_test"] = {
            k: v for k, v in judge(predictor, test.images, test.labels, trainer.data.classes).items() if k != "per_class"
        }
    return verdict


def format_judge(verdict: dict) -> str:
    width = max(5, *(len(c) for c in verdict["per_class"]))
    lines = [f"judge {verdict['judge']} on {verdict['images']:,} generated images:", f"{'class':<{width}}  accuracy  confidence"]
    lines += [f"{c:<{width}}  {v['accuracy']:>8.1%}  {v['confidence']:>10.1%}" for c, v in verdict["per_class"].items()]
    lines.append(f"{'all':<{width}}  {verdict['accuracy']:>8.1%}  {verdict['confidence']:>10.1%}")
    if "real_test" in verdict:
        real = verdict["real_test"]
        lines.append(f"(on the {real['images']:,} real test images: accuracy {real['accuracy']:.1%}, confidence {real['confidence']:.1%})")
    return "\n".join(lines)


def losses_figure(rows: list[dict]):
    """The discriminator's and generator's losses per step (with the class losses when conditional), and the mean scores of real and fake images (moving averages)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    losses = [("d_loss", "discriminator (hinge)"), ("g_loss", "generator")]
    # The auxiliary classifier's cross-entropies, on real images (D) and fakes (G); unconditional runs log zeros.
    if any(r.get("d_class") for r in rows):
        losses += [("d_class", "D's class loss (real)"), ("g_class", "G's class loss (fakes)")]
    panels = [(axes[0], "Losses", losses),
              (axes[1], "Discriminator scores", [("d_real", "real images"), ("d_fake", "generated images")])]  # fmt: skip
    for ax, title, series in panels:
        for key, label in series:
            values = torch.tensor([r[key] for r in rows], dtype=torch.float64)
            window = max(1, min(SMOOTH, len(values)))
            smooth = values.cumsum(0)
            smooth[window:] = smooth[window:] - smooth[:-window].clone()
            smooth = smooth / torch.arange(1, len(values) + 1).clamp(max=window)
            ax.plot(steps, values.tolist(), alpha=0.25)
            ax.plot(steps, smooth.tolist(), label=label, color=ax.lines[-1].get_color())
        ax.set(title=title, xlabel="step")
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def _picture(run_dir: Path, name: str, heading: str) -> str:
    """The report's embedded picture, linked to its file: html.image_tag links by file name, and epoch grids lie in samples/."""
    from imgcls.report import html

    link = 'href="' + Path(name).name + '"'
    return html.image_tag(run_dir / name, heading).replace(link, 'href="' + name + '"', 1)


def write_report(run_dir: Path, trainer, summary: dict) -> Path:
    """classes.png (the EMA generator's images, a row per class), losses.png and report.html in the run folder."""
    from imgcls.report import html, plots

    k, classes = trainer.num_classes, trainer.data.classes
    labels = class_labels(k, PER_CLASS)
    images = generate(
        trainer.ema.module, noise(k * PER_CLASS or PER_CLASS**2, trainer.cfg.z_dim, trainer.cfg.seed + 3), labels, trainer.device
    )
    if k:
        title = f"Generated images of each class ({summary['steps']} steps)"
        plots.save(plots.preview_figure(images, labels, classes, PER_CLASS, title), run_dir / "classes.png")
    else:
        save_grid(images, run_dir / "classes.png", PER_CLASS)
    plots.save(losses_figure(trainer.rows), run_dir / "losses.png")
    last = f"samples/epoch_{summary['epochs']:03d}.png"
    figures = [("images", "classes.png", "Generated images of each class (EMA generator, new noise)"), ("losses", "losses.png", "Losses per step"),
               ("epoch", last, f"Fixed noise after epoch {summary['epochs']}")]  # fmt: skip
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n<p>{_picture(run_dir, name, heading)}</p>" for _, name, heading in figures)
    facts = [["dataset", summary["dataset"]], ["image shape", "x".join(map(str, summary["shape"]))], ["steps", summary["steps"]],
             ["training time", f"{summary['train_seconds']:.1f} s"], ["device", f"{summary['device']} ({summary['precision']})"],
             ["parameters", f"G {summary['generator_params']:,}, D {summary['discriminator_params']:,}"]]  # fmt: skip
    verdict = summary.get("judge")
    if verdict:
        rows = [[c, f"{v['accuracy']:.1%}", f"{v['confidence']:.1%}", v["images"]] for c, v in verdict["per_class"].items()]
        rows.append(["all", f"{verdict['accuracy']:.1%}", f"{verdict['confidence']:.1%}", verdict["images"]])
        body += f"\n<h2>Recognisability: {html.escape(verdict['judge'])}</h2>\n" + html.table(
            ["class", "accuracy", "confidence", "images"], rows, numeric={1, 2, 3}
        )
    config = read_json(run_dir / "config.json")
    page = html.page(
        f"imgcls GAN: {run_dir.name}", f"{html.table(['', ''], facts)}\n{body}\n<h2>Config</h2>\n{html.config_table(config)}\n"
    )
    path = run_dir / "report.html"
    write_text(path, page)
    return path


def draw(run: str | Path, n: int, out: str | Path, class_name: str | None = None, seed: int = 0, judge_run: str | None = None,
         device: str = "auto") -> tuple[str, dict | None]:  # fmt: skip
    """`imgcls generate`: n images of a GAN run's generator in one grid PNG (a column per class when conditional, or
    of `class_name` alone), judged by an imgcls classifier run when given. Returns what was drawn, said in words,
    and the judge's verdict (or None)."""
    import math

    from imgcls.device import pick_device
    from imgcls.gan.sample import generate, labels_for, load_generator, noise

    where = pick_device(device)
    G, ckpt = load_generator(run, where)
    labels = labels_for(n, ckpt, class_name)
    judged = open_judge(judge_run, device) if judge_run else None
    if judged is not None:
        if labels is None:
            raise ImgclsError("--judge measures per-class accuracy, which needs a class-conditional generator: drop --judge")
        check_judge(judged, ckpt["classes"], ckpt["shape"])
    images = generate(G, noise(n, ckpt["z_dim"], seed), labels, where)
    conditional_grid = labels is not None and class_name is None
    save_grid(images, out, len(ckpt["classes"]) if conditional_grid else math.ceil(math.sqrt(n)))
    what = f"of class {class_name}" if class_name else "a column per class" if conditional_grid else ""
    return f"{n} generated images {what}".rstrip(), judge(judged, images, labels, ckpt["classes"]) if judged is not None else None
