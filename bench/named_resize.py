"""What `--image-size` costs a named dataset: resized once into the cache, then mapped like the native images.

    python bench/named_resize.py --data-dir ../shared/data [--dataset mnist] [--size 64] [--repeats 3]

In a fresh cache folder: the native load (decoding the dataset's files into the cache), the resize into the cache,
then the warm loads of both, each the median of --repeats. The resize is what every epoch would pay if batches were
resized on the fly instead; the warm loads are what every later run pays.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ["IMGCLS_CACHE"] = tempfile.mkdtemp(prefix="imgcls-bench-cache-")
    os.environ["IMGCLS_OFFLINE"] = "1"
    from imgcls.data import load_dataset

    def load(size=None):
        data = load_dataset(args.dataset, data_dir=args.data_dir, image_size=size)
        return sum(int(s.images[::997].sum()) for s in (data.train, data.val, data.test))  # touch pages across the splits

    native_cold = timed(load)
    resize_cold = timed(lambda: load(args.size))
    native_warm = statistics.median(timed(load) for _ in range(args.repeats))
    resized_warm = statistics.median(timed(lambda: load(args.size)) for _ in range(args.repeats))
    data = load_dataset(args.dataset, data_dir=args.data_dir, image_size=args.size)
    images = len(data.train) + len(data.val) + len(data.test)
    print(f"{args.dataset}: {images:,} images, native {tuple(load_dataset(args.dataset, data_dir=args.data_dir).shape)} -> {data.shape}")
    print(f"native load into the cache  {native_cold:7.2f} s")
    print(f"resize into the cache       {resize_cold:7.2f} s  ({images / resize_cold:,.0f} images/s)")
    print(f"warm load, native           {native_warm:7.3f} s")
    print(
        f"warm load, resized          {resized_warm:7.3f} s  ({resized_warm / native_warm:.1f}x native, {resize_cold / resized_warm:.0f}x faster than resizing)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
