"""Speed of `imgcls datasets --check` against the folder's first decode, and how the duplicate search scales.

    python bench/health.py ../shared/data/cifar10-jpeg --repeats 3 [--pairs-sheet pairs.png] [--json]

1. first decode: `load_dataset` in a fresh process with an empty IMGCLS_CACHE (what the first `imgcls train` or
   `imgcls datasets --show` of the folder costs), --repeats times;
2. the check on the decoded folder (the cache of step 1): seconds of its stages (file headers, hashing, grouping),
   --repeats times, in this process;
3. scaling: the duplicate search (hashing excluded) on the first 1/8, 1/4, 1/2 and all of the images;
4. with --pairs-sheet, 60 random confirmed near-duplicate pairs drawn side by side, to count false ones by eye.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

DECODE = "import sys, time; from imgcls.data import load_dataset; t = time.perf_counter(); load_dataset(sys.argv[1]); print(time.perf_counter() - t)"


def first_decode(spec: str) -> float:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "IMGCLS_CACHE": cache}
        out = subprocess.run([sys.executable, "-c", DECODE, spec], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])


def scaling(items, fp, flips: bool) -> list[dict]:
    from imgcls.data import duplicates

    rows = []
    for part in (8, 4, 2, 1):
        n = len(items) // part
        sub = duplicates.Items([items.take(torch.arange(n))], items.labels[:n], items.splits[:n], items.names[:n], items.from_files)
        sub_fp = duplicates.Fingerprints(*(t[:n] for t in fp))
        start = time.perf_counter()
        with duplicates.one_thread():
            groups = duplicates.find_duplicates(sub, sub_fp, flips)
        rows.append({"images": n, "seconds": round(time.perf_counter() - start, 2), "groups": len(groups)})
    return rows


def pairs_sheet(items, fp, flips: bool, path: str, count: int = 60) -> int:
    from matplotlib.figure import Figure

    from imgcls.data import duplicates

    with duplicates.one_thread():
        a, b = duplicates.near_pairs(items, fp, torch.arange(len(items)), flips)
    pick = torch.randperm(len(a), generator=torch.Generator().manual_seed(42))[:count]
    fig = Figure(figsize=(count // 3 * 0.9, 6 * 1.0))
    axes = fig.subplots(6, count // 3)
    for k, (i, j) in enumerate(zip(a[pick].tolist(), b[pick].tolist())):
        row, col = 2 * (k // (count // 3)), k % (count // 3)
        for r, index in ((row, i), (row + 1, j)):
            image = items.take(torch.tensor([index]))[0]
            axes[r, col].imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=255)
            axes[r, col].set_axis_off()
        axes[row, col].set_title(str(k), fontsize=7)
    fig.savefig(path, dpi=80)
    return len(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a folder or named dataset")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pairs-sheet", metavar="PNG", help="draw 60 random confirmed near-duplicate pairs here")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line too")
    args = p.parse_args()
    from imgcls.data import duplicates, health

    result = {"data": args.data, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    result["first_decode_seconds"] = [round(first_decode(args.data), 2) for _ in range(args.repeats)]
    print(f"first decode: {', '.join(f'{s:.1f}' for s in result['first_decode_seconds'])} s", flush=True)
    checks = []
    for _ in range(args.repeats):
        data, h = health.check_dataset(args.data)
        checks.append({k: round(v, 2) for k, v in h.seconds.items()})
        stages = ", ".join(f"{k} {v:.1f}" for k, v in checks[-1].items())
        print(f"check: {stages} s; without the load {sum(v for k, v in checks[-1].items() if k != 'load'):.1f} s", flush=True)
    result["check_seconds"] = checks
    result["groups"] = len(h.groups)
    result["kinds"] = {kind: sum(h.kind(g) == kind for g in h.groups) for kind in ("duplicate", "leak", "conflict")}
    result["test_with_a_copy_in_train"] = int(duplicates.with_copy_in(h.groups, h.items, "test", "train").sum())
    print(f"{len(h.groups)} groups {result['kinds']}, {result['test_with_a_copy_in_train']} test images with a copy in train")
    with duplicates.one_thread():
        fp = duplicates.fingerprints(h.items)
    result["scaling"] = scaling(h.items, fp, data.flips_ok)
    for row in result["scaling"]:
        print(f"duplicate search on {row['images']:,} images: {row['seconds']:.2f} s, {row['groups']} groups")
    if args.pairs_sheet:
        result["confirmed_pairs"] = pairs_sheet(h.items, fp, data.flips_ok, args.pairs_sheet)
        print(f"{result['confirmed_pairs']} confirmed pairs; 60 of them in {args.pairs_sheet}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
