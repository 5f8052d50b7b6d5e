"""What explaining costs: Grad-CAM of one 224 px image with resnet18, and the report's top-loss heatmaps at the end of
a run on a 1,000-image folder.

    python bench/explain.py --data-dir ../shared/data
    options: --repeats 5 --keep /tmp/explain-bench (keep the folder and run)

(1) A torchvision resnet18 (random weights: the time does not depend on them) at 224 px, one image: Predictor.explain
beside Predictor.predict, the median of --repeats after a warm-up. (2) 500 airplanes and 500 birds of the CIFAR-10 JPEG
folder upscaled to 128 px, resnet18 trained one epoch; then the report drawn from the same test logits with and without
the heatmaps, alternated --repeats times: the difference is what the heatmaps add to a run's end.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

import imgcls
from imgcls.evaluation import evaluate_checkpoint
from imgcls.inference import Predictor
from imgcls.report import write_report


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, captum's imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_image(repeats: int) -> dict:
    model = torchvision.models.resnet18(num_classes=10).eval()
    meta = {"model": "resnet18", "classes": [str(i) for i in range(10)], "in_shape": [3, 224, 224], "path": "-",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip
    predictor = Predictor(meta, lambda x: model(x).float(), "torch", torch.device("cpu"), model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    return {"explain_224_s": timed(lambda: predictor.explain(image), repeats), "predict_224_s": timed(lambda: predictor.predict(image), repeats),
            "layer": type(predictor.feature_layer()).__name__}  # fmt: skip


def photo_folder(cifar: Path, root: Path, per_class: int = 500, side: int = 128) -> Path:
    for name in ("airplane", "bird"):
        (root / name).mkdir(parents=True)
        for f in sorted((cifar / "train" / name).iterdir())[:per_class]:
            with Image.open(f) as image:
                image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(root / name / f"{f.stem}.jpg", quality=90)
    return root


def report_cost(data_dir: Path, root: Path, repeats: int) -> dict:
    folder = photo_folder(data_dir / "cifar10-jpeg", root / "photos")
    run = imgcls.train(str(folder), model="resnet18", pretrained="off", epochs=1, report=False, progress=False, out=root / "run")
    _, data, result = evaluate_checkpoint(run.dir / "best.pt")
    predictor = Predictor.from_checkpoint(run.dir / "best.pt")

    def draw(with_heatmaps: bool):
        write_report(run.dir, data.classes, data.test.images, data.test.labels, result.logits, data=data,
                     predictor=predictor if with_heatmaps else None)  # fmt: skip

    plain, heat = [], []
    for _ in range(repeats):
        for with_heatmaps, times in ((False, plain), (True, heat)):
            start = time.perf_counter()
            draw(with_heatmaps)
            times.append(time.perf_counter() - start)
    return {"images": len(data.train) + len(data.val) + len(data.test), "report_s": statistics.median(plain),
            "report_with_heatmaps_s": statistics.median(heat)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", help="a folder to keep the photos and the run in [a temporary one]")
    args = parser.parse_args()
    torch.manual_seed(0)
    single = one_image(args.repeats)
    print(f"resnet18, one 224 px image: explain {single['explain_224_s']:.3f}s (Grad-CAM at {single['layer']}), "
          f"predict {single['predict_224_s']:.3f}s", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        cost = report_cost(Path(args.data_dir).resolve(), root, args.repeats)
    print(f"report of a {cost['images']:,}-image folder run: {cost['report_s']:.2f}s, with the top-loss heatmaps "
          f"{cost['report_with_heatmaps_s']:.2f}s (+{cost['report_with_heatmaps_s'] - cost['report_s']:.2f}s)")  # fmt: skip


if __name__ == "__main__":
    main()
