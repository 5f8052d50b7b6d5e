"""`imgcls runs` and `imgcls compare`: the table of a folder's runs, and the page comparing several."""

from imgcls.cli.flags import writable


def add_parsers(sub) -> None:
    from imgcls.experiments.table import FORMATS, SORT_KEYS

    p = sub.add_parser(
        "runs",
        help="list the runs in a folder: data, model, recipe, epochs, test and best val accuracy, time, parameters, date",
        description="One row per run found in DIR and up to two folder levels below it (so a study's runs/tune-STUDY/trial-N "
        "too). Unfinished runs show as training (a live process holds the run) or interrupted (`imgcls train --resume` "
        "continues it); a run whose files cannot be read gets a line saying which.",
    )
    p.add_argument("dir", metavar="DIR", nargs="?", default="runs", help="folder holding the runs [runs]")
    p.add_argument("--sort", metavar="KEY", choices=SORT_KEYS, default="name",
                   help=f"order by {', '.join(SORT_KEYS)}: text A to Z, numbers and dates largest and newest first [name]")  # fmt: skip
    p.add_argument("--reverse", action="store_true", help="the other way round")
    p.add_argument("--format", choices=FORMATS, default="table", help="csv and json give every column, accuracies in %% [table]")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "compare",
        help="compare runs on one HTML page: curves overlaid, the settings that differ, summaries, per-class accuracy",
        description="Write one self-contained HTML page comparing the runs: their validation accuracy and loss curves "
        "overlaid, the config settings that differ, their summaries side by side and their per-class test accuracy (per-label "
        "AP for multi-label runs) over all their classes; print the headline figures and the settings that differ.",
    )
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folders made by `imgcls train` (`imgcls runs` lists them)")
    p.add_argument("--out", metavar="PAGE", default="compare.html", help="the page to write [compare.html]")
    p.set_defaults(func=cmd_compare)


def cmd_runs(args) -> int:
    from imgcls.experiments.table import collect, format_rows

    rows = collect(args.dir, args.sort, args.reverse)
    if not rows and args.format == "table":
        print(f"no runs in {args.dir}")
        return 0
    print(format_rows(rows, args.format))
    return 0


def cmd_compare(args) -> int:
    import imgcls

    result = imgcls.compare(args.runs, out=writable("--out", args.out))
    print(result.table())
    print(f"\nsaved {result.page}")
    return 0
