import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.core import Dataset, Split

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason=f"real datasets not found at {SHARED_DATA} (the repo's ../shared/data)"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, request):
    """Every test runs offline, in its own folder, with its own data dir and cache."""
    monkeypatch.setenv("IMGCLS_OFFLINE", "1")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(os.cpu_count() or 1)
    if request.node.get_closest_marker("report") is None:  # drawing plots after each of dozens of test runs costs a minute
        monkeypatch.setattr("imgcls.report.write_report", lambda *args, **kwargs: None)


def make_folder(root: Path, classes=("cat", "dog"), per_class=12, size=(16, 16), mode="RGB", ext="png", seed=0) -> Path:
    """Class folders of solid-ish images whose colour depends on the class, so a model can learn them."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 160 * c / max(1, len(classes) - 1)
            pixels = np.clip(rng.normal(base, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").convert(mode).save(root / name / f"{i:03d}.{ext}")
    return root


def tiny_dataset(n_train=64, n_val=32, n_test=32, shape=(1, 12, 12), classes=3, seed=0) -> Dataset:
    """A learnable in-memory dataset: the class sets the image brightness."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.randint(0, classes, (n,), generator=g)
        noise = torch.randint(0, 60, (n, *shape), generator=g)
        images = (labels.view(-1, 1, 1, 1) * (180 // max(1, classes - 1)) + noise).clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    names = [f"c{i}" for i in range(classes)]
    return Dataset("tiny", names, split(n_train), split(n_val), split(n_test), (0.5,) * shape[0], (0.25,) * shape[0], flips_ok=False)
