"""Memory of a training run on 1 and on N processes: peak RSS and PSS per process and in total.

    python bench/memory.py --data ../shared/data/cifar10-jpeg            # 1 process, then --nproc 2
    python bench/memory.py --data ../shared/data/cifar10-jpeg --nproc 1 --image-size 160 --data-limit 2500
    options: --nproc 1 2 --epochs 1 --image-size N --cache DIR --data-limit MB --json, and any further `imgcls train` options after --

--data-limit caps each process's data segment (RLIMIT_DATA: heap and private memory, what a dataset decoded into
memory would take; not the page cache a memory-mapped file is read through), to train on a dataset larger than the
memory the process may use. The folder's first decode runs under the cap too, and is timed.

RSS counts every page a process maps, also the pages it shares with others (the torch libraries, a memory-mapped
dataset), so the RSS of two processes added counts shared pages twice. PSS (proportional set size, from
/proc/PID/smaps_rollup) charges each shared page to its sharers in equal parts: the sum of PSS over processes is
the memory they take together. "anon" is a process's private memory (heap, tensors it made), which nothing shares.
The folder is decoded into the cache first (one untimed run), so the figures are those of training, not of decoding.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FIELDS = ("Rss", "Pss", "Anonymous")


def usage(pid: int) -> dict[str, int] | None:
    """The process's RSS, PSS and anonymous memory in bytes, or None once it has ended."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            found[key] = int(rest.split()[0]) * 1024
    return found


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children + [d for c in children for d in descendants(c)]


def workers(root: int, nproc: int) -> list[int]:
    """The training processes: the command itself on one process; torchrun's workers (the launcher's children) on several."""
    if nproc == 1:
        return [root]
    return [p for p in descendants(root) if "imgcls" in _cmdline(p) and _cmdline(p) != _cmdline(root)] or []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def limited(mb: int | None):
    """A preexec_fn capping the data segment at mb megabytes (None: no cap)."""
    if mb is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_DATA, (mb << 20, mb << 20))


def measure(cmd: list[str], nproc: int, env: dict, limit: int | None = None, every: float = 0.2) -> dict:
    """Run cmd, sampling its training processes' memory; peaks per process and of the sum at one instant."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limited(limit))
    peaks: dict[int, dict[str, int]] = {}
    total = dict.fromkeys(FIELDS, 0)
    done = threading.Event()

    def sample():
        while not done.is_set():
            now = {pid: u for pid in workers(proc.pid, nproc) if (u := usage(pid))}
            for pid, u in now.items():
                peaks[pid] = {k: max(peaks.get(pid, {}).get(k, 0), u[k]) for k in FIELDS}
            if len(now) == nproc:
                for k in FIELDS:
                    total[k] = max(total[k], sum(u[k] for u in now.values()))
            time.sleep(every)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    speed = [m.group(0) for line in out.splitlines() if "train loss" in line and (m := re.search(r"[\d,]+ img/s", line))]
    accuracy = [line.split(" (")[0] for line in out.splitlines() if line.startswith("test accuracy")]
    return {"nproc": nproc, "seconds": seconds, "per_process": list(peaks.values()), "total": total, "speed": speed, "test": accuracy}


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--cache", help="decoded-folder cache to use [a fresh temporary folder]")
    p.add_argument("--image-size", type=int, help="decode the folder at this size (imgcls train --image-size)")
    p.add_argument("--data-limit", type=int, metavar="MB", help="cap each process's data segment (RLIMIT_DATA)")
    p.add_argument("--json", action="store_true")
    p.add_argument("train_options", nargs="*", help="more `imgcls train` options, after --")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "IMGCLS_CACHE": args.cache or str(Path(tmp) / "cache"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
        }
        env = {k: v for k, v in env.items() if v}
        base = [sys.executable, "-m", "imgcls", "train", "--data", args.data, "--epochs", str(args.epochs), *args.train_options]
        if args.image_size:
            base += ["--image-size", str(args.image_size)]
        if args.data_limit is None:  # decode the folder into the cache first, so that the runs measure training
            warm = f"from imgcls.data import load_dataset; load_dataset({args.data!r}, image_size={args.image_size})"
            subprocess.run([sys.executable, "-c", warm], env=env, check=True)
        else:  # the first decode of a run, under the cap, timed
            first = [*base, "--epochs", "1", "--out", str(Path(tmp) / "decode")]
            start = time.perf_counter()
            subprocess.run(first, env=env, check=True, capture_output=True, preexec_fn=limited(args.data_limit))
            print(f"first run (decode + 1 epoch) under a {args.data_limit} MB data limit: {time.perf_counter() - start:.1f} s")
        runs = [[*base, "--out", str(Path(tmp) / f"run-{n}"), *(["--nproc", str(n)] if n > 1 else [])] for n in args.nproc]
        results = [measure(cmd, n, env, args.data_limit) for cmd, n in zip(runs, args.nproc)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        "| processes | time (s) | speed | test | peak RSS per process (MB) | peak PSS per process | peak anon per process | total RSS | total PSS | total anon |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        per = r["per_process"]
        print(
            f"| {r['nproc']} | {r['seconds']:.1f} | {', '.join(r['speed'])} | {', '.join(r['test'])} | {' / '.join(mb(u['Rss']) for u in per)} | {' / '.join(mb(u['Pss']) for u in per)} | "
            f"{' / '.join(mb(u['Anonymous']) for u in per)} | {mb(r['total']['Rss'])} | {mb(r['total']['Pss'])} | {mb(r['total']['Anonymous'])} |"
        )


if __name__ == "__main__":
    main()
