"""Load test for `imgcls serve`: N POST /predict requests at a fixed concurrency on loopback.

    python bench/load.py RUN_OR_CHECKPOINT                   # starts `imgcls serve RUN` on a free port, then stops it
    python bench/load.py --url http://127.0.0.1:8000         # a server that is already running
    options: --requests 2000 --concurrency 32 --image PATH --json

Reports latency percentiles (p50/p95/p99/max), throughput and errors (any non-200 answer or failed request).
The client runs on the same machine, so on a small one it competes with the server for the CPU.
"""

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def mnist_digit_png() -> bytes:
    """A real 28x28 test digit from the MNIST sample shipped in imgcls."""
    with resources.files("imgcls.assets").joinpath("mnist_sample.npz").open("rb") as f:
        pixels = np.load(f)["test_images"][0]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@contextmanager
def started_server(run: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", run, "--port", str(port)], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"imgcls serve {run} did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(10)


async def load(url: str, payload: bytes, requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in remaining:  # the workers share one iterator: each request is sent once
            start = time.perf_counter()
            try:
                response = await client.post("/predict", files={"file": ("digit.png", payload, "image/png")})
                status = str(response.status_code)
            except httpx.HTTPError as e:
                status = type(e).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "errors": requests - statuses.get("200", 0),
        "statuses": statuses,
        "seconds": round(wall, 3),
        "throughput_rps": round(requests / wall, 1),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
        "max_ms": round(float(ms.max()), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a run folder or checkpoint to serve for the test (else --url)")
    parser.add_argument("--url", help="base URL of a running `imgcls serve`")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--image", type=Path, help="image to upload [an MNIST test digit]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if bool(args.run) == bool(args.url):
        parser.error("give a RUN to serve or the --url of a running server")
    payload = args.image.read_bytes() if args.image else mnist_digit_png()
    with started_server(args.run) if args.run else nullcontext(args.url) as url:
        result = asyncio.run(load(url, payload, args.requests, args.concurrency))
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['requests']} requests at concurrency {result['concurrency']} in {result['seconds']:.1f}s: "
            f"{result['throughput_rps']:.0f} req/s, latency p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; errors {result['errors']} {result['statuses']}"
        )
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
