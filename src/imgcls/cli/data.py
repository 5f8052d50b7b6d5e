"""`imgcls datasets`: list the named datasets, --show one, or --check its health (imgcls.check_data)."""

from pathlib import Path

from imgcls.cli.flags import add_train_options, given, writable
from imgcls.errors import ImgclsError
from imgcls.options import READING, TrainConfig

MAX_PER_CLASS = 100  # the grid is half an inch per image: wider stops being viewable (and past ~1,300 Agg cannot draw it)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "datasets",
        help="list the named datasets, --show one (class counts and a grid of samples) or --check its health",
        description="List the named datasets. --show prints a dataset's class counts and saves a grid of samples; --check "
        "finds exact and near duplicates (within a class, across classes, across splits), odd files and class imbalance, "
        "and saves health.json and a picture of each finding. Findings are information: the exit status is 0 unless the "
        "data cannot be read.",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument("--show", metavar="NAME|PATH", help="print this dataset's class counts and save a grid of samples per class")
    action.add_argument("--check", metavar="NAME|PATH", help="check this dataset's health: duplicates, leaks, odd files, balance")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument(
        "--label-errors", action="store_true", help="--check: also rank likely label errors, each image predicted by one of --folds "
        "quick models (the fast recipe, from scratch) that did not train on it (confident learning)",
    )  # fmt: skip
    p.add_argument("--folds", metavar="K", type=int, default=5, help="--label-errors: cross-validation folds, models trained [5]")
    p.add_argument("--per-class", metavar="N", type=int, default=8, help="sample images per class in the grid [8]")
    p.add_argument(
        "--out", metavar="PATH", help="--show: the grid's file [<dataset>-samples.png]; --check: the folder for health.json "
        "and the pictures [<dataset>-health]",
    )  # fmt: skip
    add_train_options(p, (), only=READING)  # how to read a table or a Hugging Face dataset, as `train` reads it
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(args) -> int:
    from imgcls.data import DATASETS

    if args.label_errors and not args.check:
        raise ImgclsError("--label-errors goes with --check: imgcls datasets --check NAME_OR_FOLDER --label-errors")
    if args.show:
        return show(args)
    if args.check:
        return check(args)
    width = max(len(n) for n in DATASETS)
    for name, info in DATASETS.items():
        print(f"{name:<{width}}  {info.description}")
    print(f"{'PATH':<{width}}  any folder of class subfolders (optionally split into train/ val/ test/)")
    return 0


def show(args) -> int:
    from imgcls.data import dataset_name, load_dataset
    from imgcls.report import format_class_counts, write_preview

    if not 1 <= args.per_class <= MAX_PER_CLASS:
        raise ImgclsError(f"--per-class must be between 1 and {MAX_PER_CLASS}, got {args.per_class}")
    path = writable("--out", args.out) or Path(f"{dataset_name(args.show)}-samples.png")
    data = load_dataset(args.show, data_dir=args.data_dir, **TrainConfig.from_options(**given(args, (), only=READING)).reading())
    print(f"{data.name}: {data.num_classes} classes, {'x'.join(map(str, data.shape))} images\n")
    print(format_class_counts(data))
    write_preview(data, path, args.per_class)
    print(f"\nsaved {args.per_class} training images per class to {path}")
    return 0


def check(args) -> int:
    import imgcls
    from imgcls.report.health import summary_text

    out = writable("--out", args.out, folder=True)
    reading = given(args, (), only=READING)
    health = imgcls.check_data(args.check, out=out, label_errors=args.label_errors, folds=args.folds, data_dir=args.data_dir, **reading)
    print(summary_text(health))
    seconds = ", ".join(f"{stage} {s:.1f}s" for stage, s in health.seconds.items())
    print(f"\nsaved health.json and {', '.join(health.written)} in {health.out} ({seconds})")
    return 0
