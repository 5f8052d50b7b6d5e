"""`imgcls gan` and `imgcls generate`: a class-conditional GAN's run, and new images from it (imgcls.gan)."""

import argparse
import sys

from imgcls.cli.flags import positive, writable

GAN_KEYS = ["data", "data_dir", "image_size", "epochs", "steps", "batch_size", "lr", "z_dim", "width", "ema", "conditional", "seed",
            "device", "precision"]  # fmt: skip


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "gan",
        help="train a GAN (DCGAN-style, class-conditional, hinge loss) and draw its images",
        description="Train a generator and a spectrally normalised discriminator with the hinge loss, conditional on the classes "
        "when the data has several. The run folder gets losses.csv (per step), generator.pt and last.pt, a fixed-noise grid per "
        "epoch in samples/, classes.png (a row per class), losses.png, summary.json and report.html.",
    )
    p.add_argument("--data", metavar="NAME|PATH", default="mnist-sample", help="dataset name or image folder path [mnist-sample]")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live")
    p.add_argument("--image-size", metavar="PX", type=int, help="resize folder images to this square size [their own, else 64]")
    p.add_argument("--epochs", metavar="N", type=int, default=5, help="passes over the training images [5]")
    p.add_argument("--steps", metavar="N", type=int, help="stop after N steps in all (a short run) [the epochs']")
    p.add_argument("--batch-size", metavar="N", type=int, default=64, help="real (and as many generated) images per step [64]")
    p.add_argument("--lr", metavar="LR", type=float, default=2e-3, help="Adam learning rate of both networks [2e-3]")
    p.add_argument("--z-dim", metavar="N", type=int, default=128, help="size of the generator's noise [128]")
    p.add_argument(
        "--width", metavar="N", type=int, default=32, help="channels of the largest feature maps, doubling at each smaller one [32]"
    )
    p.add_argument(
        "--ema", metavar="DECAY", type=float, default=0.999, help="the saved generator is an EMA of its weights; 0 = the last [0.999]"
    )
    p.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=True, help="condition on the classes [on]")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="[0]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="[auto]")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="[auto: bf16 where native, else fp32]")
    p.add_argument("--out", metavar="DIR", help="run folder [runs/<dataset>-gan-<n>]")
    p.add_argument(
        "--judge", metavar="RUN", help="an imgcls classifier run on the same data: its accuracy and confidence on generated images"
    )
    p.add_argument(
        "--judge-images", metavar="N", type=int, default=1000, help="generated images the judge sees, as many of each class [1000]"
    )
    p.set_defaults(func=cmd_gan)

    p = sub.add_parser("generate", help="draw new images from a GAN run's generator into one grid PNG")
    p.add_argument("run", metavar="RUN", help="a run folder made by `imgcls gan` (or its generator.pt)")
    p.add_argument("--n", metavar="N", type=int, default=64, help="images to draw [64]")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="draw only this class [each class in turn, a column each]")
    p.add_argument("--out", metavar="PATH", default="generated.png", help="the grid's PNG file [generated.png]")
    p.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the noise: the same seed draws the same images [0]")
    p.add_argument("--judge", metavar="RUN", help="an imgcls classifier run on the same data: print its per-class accuracy and confidence")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="[auto]")
    p.set_defaults(func=cmd_generate)


def cmd_gan(args) -> int:
    from imgcls.gan.train import GanConfig, train_gan
    from imgcls.interrupt import Interrupted

    positive("--judge-images", args.judge_images)
    cfg = GanConfig(**{k: getattr(args, k) for k in GAN_KEYS if getattr(args, k) is not None})
    try:
        run_dir, summary = train_gan(cfg, writable("--out", args.out, folder=True), args.judge, args.judge_images)
    except Interrupted as stop:
        print(f"\ninterrupted ({stop.why}): generator.pt and last.pt in {stop.run_dir} hold where it stopped", file=sys.stderr)
        return 128 + stop.signum
    print(f"{summary['steps']} steps in {summary['train_seconds']:.1f}s; saved to {run_dir}, draw more with: imgcls generate {run_dir}")
    return 0


def cmd_generate(args) -> int:
    from imgcls.gan.report import draw, format_judge

    positive("--n", args.n)
    out = writable("--out", args.out)
    what, verdict = draw(args.run, args.n, out, args.class_name, args.seed, args.judge, args.device)
    print(f"saved {what} to {out}")
    if verdict is not None:
        print(format_judge(verdict))
    return 0
