"""`imgcls autoencode` and `imgcls embed`: an autoencoder's run, and codes of image files from it (imgcls.autoencode)."""

import argparse
import sys

from imgcls.cli.flags import only_machine_options, positive, writable
from imgcls.errors import ImgclsError

AE_KEYS = ["data", "data_dir", "variational", "latent_dim", "epochs", "batch_size", "lr", "beta", "seed", "device", "val_fraction",
           "image_size", "precision"]  # fmt: skip


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "autoencode",
        help="train a convolutional autoencoder (or --variational VAE): reconstructions, latent map, anomalies, embeddings",
        description="Train a convolutional autoencoder, or a variational one, on any imgcls dataset or image folder, and write a "
        "run folder (runs/<dataset>-ae-<n> or -vae-<n>) with config, metrics.csv, best/last checkpoints, summary.json, "
        "anomalies.csv (test images ranked by reconstruction error) and report.html. `imgcls embed RUN` encodes image files "
        "with it; `imgcls train --weights RUN` starts a classifier (aenet) from its encoder.",
    )
    p.add_argument("--data", metavar="NAME|PATH", help="dataset name (see `imgcls datasets`) or an image folder path [mnist-sample]")
    p.add_argument("--data-dir", metavar="DIR", help="where named datasets live [$IMGCLS_DATA or a per-user cache folder]")
    p.add_argument("--variational", action=argparse.BooleanOptionalAction, help="a VAE: codes drawn from N(code, var), a KL term [off]")
    p.add_argument("--latent-dim", metavar="N", type=int, help="numbers in a code [16 for greyscale images, 64 for colour]")
    p.add_argument("--epochs", metavar="N", type=int, help="epochs to train [enough to show 45,000 images, at least 1]")
    p.add_argument("--batch-size", metavar="N", type=int, help="images per step [128]")
    p.add_argument("--lr", metavar="LR", type=float, help="AdamW's peak learning rate, cosine-annealed to zero [0.002]")
    p.add_argument(
        "--beta",
        metavar="B",
        type=float,
        help="VAE: weight of the KL term against the summed squared error: higher draws better samples from the prior, lower reconstructs better [0.5]",
    )
    p.add_argument("--seed", metavar="N", type=int, help="seed for init, split, order and noise [0]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="[auto]")
    p.add_argument("--val-fraction", metavar="F", type=float, help="part of train held out for validation without a val split [0.1]")
    p.add_argument("--image-size", metavar="PX", type=int, help="resize folder images to this square size [as `imgcls train`]")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="autocast dtype [auto: bf16 on GPUs and CPUs with native bf16]")
    p.add_argument("--out", metavar="DIR", help="run folder [runs/<dataset>-ae-<n>, or -vae-<n>]")
    p.add_argument("--resume", metavar="RUN", help="continue a run from its last finished epoch; --device and --data-dir may change")
    p.set_defaults(func=cmd_autoencode)

    p = sub.add_parser(
        "embed",
        help="encode image files with an autoencoder run: codes as CSV or NPY, optionally anomaly scores",
        description="Encode image files, folders or globs with an `imgcls autoencode` run's best.pt (images decoded and resized "
        "as `imgcls predict` does). A .csv --out gets one row per image: file, [score,] z0..zN; a .npy one the N x D codes, "
        "with the files in NAME.files.txt and [--scores] the scores in NAME.scores.npy beside it. The score is the "
        "reconstruction MSE per pixel: higher is more anomalous. Unreadable files are reported and skipped (exit status 1).",
    )
    p.add_argument("run", metavar="RUN", help="a run folder made by `imgcls autoencode` (uses best.pt) or one of its checkpoints")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--out", metavar="FILE", default="embeddings.csv", help="a .csv or .npy file [embeddings.csv]")
    p.add_argument("--scores", action="store_true", help="also write each image's anomaly score (reconstruction MSE)")
    p.add_argument("--batch-size", metavar="N", type=int, default=256, help="images decoded and encoded at a time [256]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="[auto]")
    p.set_defaults(func=cmd_embed)


def cmd_autoencode(args) -> int:
    from imgcls.autoencode.train import AEConfig, resume, stopped_message, train
    from imgcls.interrupt import Interrupted

    given = {k: getattr(args, k) for k in AE_KEYS if getattr(args, k) is not None}
    try:
        if args.resume:
            only_machine_options(given, args.out)
            run_dir, summary = resume(args.resume, device=args.device, data_dir=args.data_dir)
        else:
            run_dir, summary = train(AEConfig(**given), out=writable("--out", args.out, folder=True))
    except Interrupted as stop:
        print(stopped_message(stop), file=sys.stderr)
        return 128 + stop.signum
    kl = f", KL {summary['test_kl']:.2f} nats per image" if summary["test_kl"] is not None else ""
    print(
        f"test reconstruction MSE {summary['test_mse']:.5f} per pixel (the mean image: {summary['mean_image_mse']:.5f}){kl}; "
        f"{summary['epochs_run']} epoch{'s' * (summary['epochs_run'] != 1)} in {summary['train_seconds']:.1f}s\n"
        f"saved to {run_dir}, plots in {run_dir / 'report.html'}"
    )
    return 0


def cmd_embed(args) -> int:
    from imgcls.autoencode.embed import embed

    positive("--batch-size", args.batch_size)
    out = writable("--out", args.out)
    if out.suffix.lower() not in (".csv", ".npy"):
        raise ImgclsError(f"--out {out} must end in .csv or .npy")
    count, bad = embed(args.run, args.paths, out, args.scores, args.batch_size, args.device)
    for file, error in bad:
        print(f"imgcls: cannot read {file} ({error})", file=sys.stderr)
    print(
        f"saved {count} embedding{'s' * (count != 1)} to {out}"
        + (f"; {len(bad)} of {count + len(bad)} files could not be read" if bad else "")
    )
    return 1 if bad else 0
