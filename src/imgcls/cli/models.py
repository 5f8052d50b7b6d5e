"""`imgcls models`: the built-in models' table, every torchvision and timm model (--all), or one model's --summary."""

import sys

from imgcls.cli.flags import positive


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list the models with parameter counts, or --summary one of them")
    p.add_argument(
        "--all",
        action="store_true",
        help="list every torchvision classification model and, with timm installed, every timm:NAME (any works as --model)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the torchvision models with ImageNet weights (file name, cached or not) and the timm ones in the Hugging Face cache",
    )
    p.add_argument("--summary", metavar="NAME", help="print layers, output shapes and parameters of this model")
    p.add_argument("--input", default="3,32,32", help="input shape C,H,W for --summary [3,32,32]")
    p.add_argument("--classes", type=int, default=10, help="number of classes for --summary [10]")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from imgcls.models import create_model
    from imgcls.models.summary import parse_shape, summarize, table

    if args.all or args.pretrained:
        from imgcls.models import timm_models, torchvision_models

        print("\n".join(torchvision_models.listing(pretrained_only=args.pretrained)))
        # The notes go to stderr: stdout stays one model per line, for grep and scripts.
        try:
            timm_lines = timm_models.listing(pretrained_only=args.pretrained)
        except ImportError:
            print("timm's models (--model timm:NAME) need timm: pip install 'imgcls[timm]'", file=sys.stderr)
            return 0
        if timm_lines:
            print("\n".join(timm_lines))
        if args.pretrained:
            print(f"timm: only weights already in the Hugging Face cache ({timm_models.hub_cache()}) are listed; "
                  "the other timm models download theirs on first use (--pretrained auto or on)", file=sys.stderr)  # fmt: skip
        return 0
    if args.summary:
        shape = parse_shape(args.input)
        positive("--classes", args.classes)
        print(summarize(create_model(args.summary, shape, args.classes), shape))
        return 0
    print(table())
    print(
        "(parameters for 10 classes)\n"
        "any torchvision classification model also works as --model (tv:NAME for one a built-in shadows, such as tv:resnet18),\n"
        "and any timm model as timm:NAME, such as timm:convnext_nano (pip install 'imgcls[timm]'):\n"
        "`imgcls models --all` lists them, `imgcls models --pretrained` those with ImageNet weights and whether these are cached"
    )
    return 0
