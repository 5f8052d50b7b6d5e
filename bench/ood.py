"""Out-of-distribution images: how well a model's confidence tells its own test images from another dataset's.

    python bench/ood.py --data-dir ../shared/data --out /tmp/ood-runs              # trains both models, then measures
    python bench/ood.py --mnist-run /tmp/ood-runs/mnist --cifar-run /tmp/ood-runs/cifar10   # reuses finished runs
    options: --epochs-mnist N --epochs-cifar N --device cpu

An MNIST model (default recipe) is shown CIFAR-10's test pictures, a CIFAR-10 model (quick recipe, the JPEG copy) MNIST's
test digits, each as imgcls reads a picture for that model (PIL's ITU-R 601 luma for grey, bilinear resize: 28x28 grey,
32x32 RGB). For each model: test accuracy, the temperature fitted on val, and the AUROC (in-distribution = positive) and
the false-positive rate on the other dataset at the threshold that keeps 95% of the model's own test images
(FPR@95TPR) of four scores: the max softmax probability (MSP) before and after the temperature, and the energy score
T * logsumexp(logits / T) (Liu et al., 2020) at T = 1 and at the fitted T. Logits are the predictor's, with its TTA
views, as Predictor.probabilities computes them. Prints a Markdown table, then one JSON line.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.classification import binary_auroc, binary_roc

import imgcls
from imgcls.data import load_dataset
from imgcls.data.augment import prepare
from imgcls.evaluation import tta_views

SCORES = ("msp", "msp_calibrated", "energy", "energy_calibrated")


def trained(name: str, data: str, given: str | None, args, **options) -> Path:
    """The run folder of `name`: the one given, a finished run left in --out by an earlier call, or a new run."""
    path = Path(given) if given else Path(args.out) / name
    if given or (path / "summary.json").is_file():
        print(f"{name}: reusing {path}", flush=True)
        return path
    print(f"{name}: training into {path}", flush=True)
    return imgcls.train(data, data_dir=args.data_dir, out=path, progress=False, report=False, device=args.device, **options).dir


@torch.inference_mode()
def logits_of(predictor, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The logits before the temperature, averaged over the run's TTA views as Predictor.probabilities averages them."""
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare(images[start : start + batch_size].to(predictor.device), predictor.mean, predictor.std)
        views = tta_views(x, predictor.tta, predictor.tta_shift)
        out.append((sum(predictor._forward(v) for v in views) / len(views)).cpu())
    return torch.cat(out).double()


def as_read(predictor, images: torch.Tensor) -> torch.Tensor:
    """Another dataset's uint8 images as `imgcls predict` would read them for this model: its channels and size."""
    pixels = images.permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(np.stack([predictor.preprocess(Image.fromarray(p.squeeze(2) if p.shape[2] == 1 else p)) for p in pixels]))


def scores(logits: torch.Tensor, t: float) -> dict[str, torch.Tensor]:
    """Higher = more in-distribution. The MSP is ranked by its log-odds log(p / (1 - p)), the same order, so that
    confident images do not tie at a probability that rounds to 1.0."""

    def msp_log_odds(z: torch.Tensor) -> torch.Tensor:
        others = (z - z.amax(1, keepdim=True)).scatter(1, z.argmax(1, keepdim=True), float("-inf"))
        return -others.logsumexp(1)

    return {"msp": msp_log_odds(logits), "msp_calibrated": msp_log_odds(logits / t), "energy": logits.logsumexp(1),
            "energy_calibrated": t * (logits / t).logsumexp(1)}  # fmt: skip


def separation(inside: torch.Tensor, outside: torch.Tensor) -> tuple[float, float]:
    """(AUROC, FPR@95TPR) with the in-distribution images as positives."""
    # Dense ranks scaled to [0, 1]: torchmetrics takes scores outside [0, 1] for logits and squashes them by a sigmoid,
    # which in float32 would tie every energy above ~17.
    _, rank = torch.unique(torch.cat([inside, outside]), return_inverse=True)
    preds, target = rank.float() / max(int(rank.max()), 1), torch.cat([torch.ones(len(inside)), torch.zeros(len(outside))]).long()
    fpr, tpr, _ = binary_roc(preds, target)
    return binary_auroc(preds, target).item(), fpr[tpr >= 0.95][0].item()


def measure(name: str, run_dir: Path, test, other, device: str) -> dict:
    predictor = imgcls.load(run_dir, device=device)
    summary = imgcls.Run.open(run_dir).summary
    if "temperature" not in summary:
        print(f"{name}: no temperature in {run_dir / 'summary.json'}; the calibrated scores use the predictor's {predictor.temperature}")
    t = predictor.temperature
    inside, outside = logits_of(predictor, test.images), logits_of(predictor, as_read(predictor, other.images))
    # The logits must be the ones behind the predictor's own probabilities, or the calibrated columns would mean nothing.
    torch.testing.assert_close((inside[:256] / t).softmax(1).float(), predictor.probabilities(test.images[:256]), atol=1e-5, rtol=1e-4)
    accuracy = (inside.argmax(1) == test.labels).double().mean().item()
    row = {"model": name, "run": str(run_dir), "test_accuracy": accuracy, "summary_test_accuracy": summary.get("test_accuracy"),
           "temperature": t, "summary_temperature": summary.get("temperature"), "in_images": len(inside), "ood_images": len(outside)}  # fmt: skip
    score_in, score_out = scores(inside, t), scores(outside, t)
    for key in SCORES:
        row[f"auroc_{key}"], row[f"fpr95_{key}"] = separation(score_in[key], score_out[key])
    print(f"{name}: measured", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="holds MNIST/raw and cifar10-jpeg/ [../shared/data]")
    parser.add_argument("--out", default="/tmp/ood-runs", help="where new runs go: OUT/mnist, OUT/cifar10 [/tmp/ood-runs]")
    parser.add_argument("--mnist-run", help="a finished MNIST run folder to use instead of training one")
    parser.add_argument("--cifar-run", help="a finished CIFAR-10 run folder to use instead of training one")
    parser.add_argument("--epochs-mnist", type=int, help="epochs of the MNIST run [recipe]")
    parser.add_argument("--epochs-cifar", type=int, help="epochs of the CIFAR-10 run [recipe]")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    cifar_folder = f"{args.data_dir}/cifar10-jpeg"
    epochs = lambda n: {"epochs": n} if n else {}  # noqa: E731 - the recipe's own when not given
    mnist_run = trained("mnist", "mnist", args.mnist_run, args, **epochs(args.epochs_mnist))
    cifar_run = trained("cifar10", cifar_folder, args.cifar_run, args, recipe="quick", **epochs(args.epochs_cifar))
    mnist, cifar = load_dataset("mnist", data_dir=args.data_dir, seed=0), load_dataset(cifar_folder, seed=0)
    rows = [
        measure("mnist", mnist_run, mnist.test, cifar.test, args.device),
        measure("cifar10", cifar_run, cifar.test, mnist.test, args.device),
    ]

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; AUROC / FPR@95TPR, in-distribution = positive\n")
    print("| model (OOD) | test acc | T | " + " | ".join(f"{k} AUROC | {k} FPR95" for k in SCORES) + " |")
    print("|---" * (3 + 2 * len(SCORES)) + "|")
    for r, ood in zip(rows, ("CIFAR-10", "MNIST")):
        cells = " | ".join(f"{r[f'auroc_{k}']:.4f} | {r[f'fpr95_{k}']:.4f}" for k in SCORES)
        print(f"| {r['model']} ({ood}) | {r['test_accuracy']:.2%} | {r['temperature']:.3f} | {cells} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
