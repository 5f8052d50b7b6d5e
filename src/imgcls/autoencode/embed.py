"""`imgcls embed`: the codes (and anomaly scores) of image files under an autoencoder run, as CSV or NPY."""

import csv
import io
from pathlib import Path

import numpy as np
import torch

from imgcls.autoencode.codes import encode
from imgcls.autoencode.train import load_checkpoint, load_model
from imgcls.checkpoint import normalisation
from imgcls.data.images import ImageReadError, read_image
from imgcls.device import pick_device
from imgcls.errors import ImgclsError
from imgcls.files import atomic_write, write_text
from imgcls.inference import collect_files


def embed(
    run: str | Path, paths: list[str], out: Path, scores: bool = False, batch_size: int = 256, device: str = "auto"
) -> tuple[int, list[tuple[Path, str]]]:
    """Encode the files `paths` name, `batch_size` at a time, into `out` (.csv or .npy). Returns the number encoded and the
    unreadable files with their errors; none readable is an error."""
    ckpt = load_checkpoint(run)
    where = pick_device(device)
    model = load_model(ckpt, where)
    mean, std = normalisation(ckpt, where)
    channels, size = ckpt["in_shape"][0], tuple(ckpt["in_shape"][1:])
    files = collect_files(paths)
    kept, bad, codes, errors = [], [], [], []
    for start in range(0, len(files), batch_size):
        images = []
        for path in files[start : start + batch_size]:
            try:
                images.append(read_image(path, channels, size))  # resized and cropped as predict does
                kept.append(path)
            except ImageReadError as e:
                bad.append((path, str(e)))
        if images:
            result = encode(model, torch.from_numpy(np.stack(images)), mean, std)
            codes.append(result.codes)
            errors.append(result.errors)
    if not kept:
        raise ImgclsError(f"none of the {len(files)} files could be read as an image (the first: {bad[0][0]}: {bad[0][1]})")
    write_embeddings(out, kept, torch.cat(codes), torch.cat(errors) if scores else None)
    return len(kept), bad


def write_embeddings(out: Path, files: list[Path], codes: torch.Tensor, scores: torch.Tensor | None) -> None:
    """CSV: file, [score,] z0..zD-1 per row. NPY: the codes, the files in NAME.files.txt, the scores in NAME.scores.npy."""
    if out.suffix.lower() == ".npy":
        atomic_write(out, lambda f: np.save(f, codes.numpy()))
        write_text(out.with_suffix(".files.txt"), "".join(f"{file}\n" for file in files))
        if scores is not None:
            atomic_write(out.with_suffix(".scores.npy"), lambda f: np.save(f, scores.numpy()))
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", *(["score"] if scores is not None else []), *(f"z{i}" for i in range(codes.shape[1]))])
    for i, (file, code) in enumerate(zip(files, codes.tolist())):
        writer.writerow([file, *([f"{scores[i].item():.6g}"] if scores is not None else []), *(f"{v:.6g}" for v in code)])
    write_text(out, buf.getvalue())
