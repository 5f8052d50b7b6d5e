"""Using a trained model from the command line: `imgcls evaluate`, `report`, `predict`, `export` and `serve`."""

import math
import sys

from imgcls.cli.flags import positive, writable
from imgcls.errors import ImgclsError

DEVICES = ["auto", "cpu", "cuda", "mps"]
PLOT_LIMIT = 32  # images in the --plot figure; more would not be readable


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="test a trained model: loss, accuracy, per-class accuracy, confusion matrix")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--data", metavar="NAME|PATH", help="dataset name or folder [the one the model was trained on]")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument("--split", choices=["test", "val", "train"], default="test", help="[test]")
    p.add_argument("--batch-size", metavar="N", type=int, help="images per batch [by image size: 1,024 at 32 px, 170 at 128 px]")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--out", metavar="DIR", help="folder for confusion_matrix.csv and evaluation.json [the run folder]")
    p.add_argument(
        "--coverage",
        action="store_true",
        help="also the accuracy on the most confident 100/95/90/80/70/50%% of the images, "
        "with the --min-confidence that keeps each, and their curve in coverage_SPLIT.png",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="(re)draw a run's plots and report.html from its best checkpoint")
    p.add_argument("run", metavar="RUN", help="a run folder made by `imgcls train`")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument("--batch-size", metavar="N", type=int, help="images per batch [by image size: 1,024 at 32 px, 170 at 128 px]")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "predict",
        help="classify image files, folders or globs with a trained model",
        description="Print the top classes of each image, preprocessed exactly as the model's training images were. "
        "Unreadable files are reported and the rest still predicted (exit status 1 when any was unreadable).",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt), a .pt file, or an exported .onnx file")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, folders (searched recursively) or glob patterns ('**' recurses)")
    p.add_argument("--top-k", metavar="K", type=int, default=5, help="classes shown per image [5]")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output on stdout [table]")
    p.add_argument("--batch-size", metavar="N", type=int, default=256, help="images decoded and predicted at a time [256]")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="onnx runs the run's `imgcls export` model [torch]")
    p.add_argument("--device", choices=DEVICES, default="auto", help="torch backend device [auto]")
    p.add_argument("--plot", metavar="PATH", help=f"also save a figure of the first {PLOT_LIMIT} images with their probability bars")
    p.add_argument(
        "--min-confidence",
        metavar="P",
        type=float,
        default=0.0,
        help="answer 'unknown' where the top probability (calibrated) is below P; the report suggests one [0: always answer]",
    )
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="also write where the model looked: NAME.png (heatmap over the image) and NAME.npy "
        "(the heatmap in [0, 1] at the image's size) per image, by Grad-CAM (occlusion for models without a feature map)",
    )
    p.add_argument("--explain-class", metavar="CLASS", help="with --explain: the class to explain [the predicted one]")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript, checked against PyTorch",
        description="Export with a dynamic batch size, compare its logits with PyTorch's on test images of the run's data "
        "(fails above --tolerance, writing nothing), and store the preprocessing next to it in NAME.json.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt) or a .pt file")
    p.add_argument("--format", default="onnx", metavar="onnx|torchscript", help="[onnx]")
    p.add_argument("--out", metavar="PATH", help="model file [next to the checkpoint: best.onnx or best.torchscript.pt]")
    p.add_argument("--tolerance", metavar="T", type=float, default=1e-3, help="largest allowed abs difference on logits [1e-3]")
    p.add_argument("--parity-images", metavar="N", type=int, default=64, help="test images the parity check runs on [64]")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve",
        help="a web page and JSON API to try a trained model (FastAPI + uvicorn)",
        description="Serve a page at / (upload an image or, for 1-channel models, draw a digit) and a JSON API: "
        "POST /predict (multipart field 'file'), GET /model, GET /health.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best.pt), a .pt file, or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="[8000]")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="[torch]")
    p.add_argument("--device", choices=DEVICES, default="auto", help="torch backend device [auto]")
    p.add_argument("--top-k", metavar="K", type=int, default=5, help="classes returned per image [5]")
    p.add_argument("--max-upload-mb", metavar="MB", type=float, default=10, help="largest request accepted [10]")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--upload-timeout", metavar="S", type=float, default=30, help="408 for an upload that sends nothing for S seconds [30]")
    p.add_argument(
        "--min-confidence",
        metavar="P",
        type=float,
        default=0.0,
        help="answer 'unknown' where the top probability (calibrated) is below P [0: always answer]",
    )
    p.set_defaults(func=cmd_serve)


def cmd_evaluate(args) -> int:
    import imgcls
    from imgcls.evaluation import MultiLabelEvaluation, format_confusion, format_per_class, format_per_label

    positive("--batch-size", args.batch_size, optional=True)
    out = writable("--out", args.out, folder=True)
    result = imgcls.evaluate(args.checkpoint, args.data, split=args.split, device=args.device, batch_size=args.batch_size,
                             data_dir=args.data_dir, out=out, coverage=args.coverage)  # fmt: skip
    if isinstance(result, MultiLabelEvaluation):
        print(
            f"{result.name} {args.split}: {result.images:,} images, loss {result.loss:.4f}, mAP {result.mean_average_precision:.4f}, "
            f"F1 micro {result.f1_micro:.4f} macro {result.f1_macro:.4f}, exact match {result.accuracy:.2%}\n"
        )
        print(format_per_label(result.per_label, result.thresholds))
    else:
        print(
            f"{result.name} {args.split}: {result.images:,} images, loss {result.loss:.4f}, accuracy {result.accuracy:.2%}, "
            f"balanced accuracy {result.balanced_accuracy:.2%}, macro F1 {result.macro_f1:.4f}, ECE {result.ece:.4f} "
            f"(temperature {result.temperature:.3g})\n"
        )
        print(format_per_class(result.per_class_accuracy, result.confusion, result.per_class_precision) + "\n")
        print(format_confusion(result.confusion, result.classes))
        if result.coverage:
            print("\ncoverage  accuracy  --min-confidence")
            print("\n".join(f"{r['coverage']:>8.1%}  {r['accuracy']:>8.2%}  {r['min_confidence']:>16.3f}" for r in result.coverage))
            if result.suggested_min_confidence is not None:
                print(f"the run suggests --min-confidence {result.suggested_min_confidence:.2f} (it keeps 95% of its val images)")
    print(f"\nsaved {' and '.join(map(str, result.files))}")
    return 0


def cmd_report(args) -> int:
    from imgcls.report import PLOTS, report_run

    positive("--batch-size", args.batch_size, optional=True)
    path = report_run(args.run, args.data_dir, args.device, args.batch_size)
    print(f"saved {', '.join(PLOTS)} and {path.name} in {path.parent}\nopen {path}")
    return 0


def cmd_predict(args) -> int:
    import imgcls
    from imgcls.inference import collect_files, format_predictions, predict_files

    positive("--top-k", args.top_k)
    positive("--batch-size", args.batch_size)
    writable("--plot", args.plot)
    explain_dir = writable("--explain", args.explain, folder=True)
    if args.explain_class and not args.explain:
        raise ImgclsError("--explain-class needs --explain DIR: the folder for the heatmaps")
    predictor = imgcls.load(args.checkpoint, args.device, args.backend, min_confidence=args.min_confidence)
    files = collect_files(args.paths)
    results = list(predict_files(predictor, files, args.batch_size, keep_images=PLOT_LIMIT if args.plot else 0))
    print(format_predictions(results, predictor, args.top_k, args.format))
    bad = [r for r in results if r.error is not None]
    for r in bad:
        print(f"imgcls: cannot read {r.file} ({r.error})", file=sys.stderr)
    if bad:
        print(f"imgcls: {len(bad)} of {len(results)} files could not be read", file=sys.stderr)
    if args.plot and any(r.image is not None for r in results):
        from imgcls.report.plots import plot_file_predictions

        plot_file_predictions(results, predictor.classes, args.plot, args.top_k)
        print(f"saved {args.plot}", file=sys.stderr)
    if explain_dir is not None:
        explained = [e for e in predictor.explain(files, args.explain_class, out=explain_dir) if e.files]
        if explained:
            print(f"saved {len(explained)} overlays and heatmaps ({explained[0].method}) in {args.explain}", file=sys.stderr)
    return 1 if bad else 0


def cmd_export(args) -> int:
    import imgcls

    if not 0 <= args.tolerance < math.inf:
        raise ImgclsError(f"--tolerance must be zero or a positive number, got {args.tolerance}")
    positive("--parity-images", args.parity_images)
    writable("--out", args.out)
    result = imgcls.export(args.checkpoint, args.format, out=args.out, tolerance=args.tolerance, parity_images=args.parity_images)
    print(
        f"parity on {result.inputs} (batches of 1 and all): max abs difference on logits {result.max_abs_diff:.3g} (tolerance {args.tolerance:g})"
    )
    print(f"saved {result.path} and {result.metadata}")
    return 0


def cmd_serve(args) -> int:
    from imgcls.server import serve

    positive("--max-upload-mb", args.max_upload_mb, integer=False)
    serve(args.checkpoint, host=args.host, port=args.port, backend=args.backend, device=args.device, top_k=args.top_k,
          max_bytes=int(args.max_upload_mb * 2**20), access_log=args.access_log, upload_timeout=args.upload_timeout,
          min_confidence=args.min_confidence)  # fmt: skip
    return 0
