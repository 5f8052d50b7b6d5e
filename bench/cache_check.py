"""What checking the decode cache's checksum costs on a folder's cached load.

    python bench/cache_check.py --data ../shared/data/cifar10-jpeg            # 5 rounds, cache in a temporary folder
    options: --rounds N --cache DIR --json

Decodes the folder into the cache once (untimed), then, in each round and in one process: the cached load
(`load_dataset`, which scans the folder, maps the entry and checks its checksum) and the checksum alone
(`mapped.digest` of the entry's data file). The figure is the checksum's share of the cached load, per round, as the
median and range over rounds; both are timed back to back, so a busy machine slows both.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an image folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", help="cache folder [a temporary one]")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["IMGCLS_CACHE"] = args.cache or tempfile.mkdtemp(prefix="imgcls-cache-check-")

    from imgcls.data import load_dataset, mapped
    from imgcls.paths import cache_dir

    load_dataset(args.data)  # the first decode, and the rearrangement into the split's order
    [data_file] = cache_dir().glob("*.u8")
    size = data_file.stat().st_size
    loads, checks = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        load_dataset(args.data)
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        mapped.digest(data_file)
        checks.append(time.perf_counter() - start)
    shares = [c / t for c, t in zip(checks, loads)]
    result = {
        "data": str(Path(args.data).resolve()), "cache_bytes": size, "rounds": args.rounds,
        "cached_load_seconds": statistics.median(loads), "checksum_seconds": statistics.median(checks),
        "checksum_share": statistics.median(shares), "checksum_share_range": [min(shares), max(shares)],
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['data']}: {size / 2**20:.0f} MB cached; cached load {result['cached_load_seconds']:.3f} s, checksum "
        f"{result['checksum_seconds'] * 1000:.1f} ms: {result['checksum_share']:.1%} of the load "
        f"({min(shares):.1%}-{max(shares):.1%} over {args.rounds} rounds)",
        file=sys.stdout,
    )


if __name__ == "__main__":
    main()
