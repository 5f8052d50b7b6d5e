"""Load test for `imgcls serve`: N POST /predict requests at a fixed concurrency on loopback.

    python bench/load.py RUN_OR_CHECKPOINT                   # starts `imgcls serve RUN` on a free port, then stops it
    python bench/load.py --url http://127.0.0.1:8000         # a server that is already running
    options: --requests 2000 --concurrency 32 --image PATH --json

Reports latency percentiles (p50/p95/p99/max), throughput and errors (any non-200 answer or failed request).
The client runs on the same machine as the server, so it is kept light: one keep-alive connection per client
thread and one multipart body encoded up front (an httpx AsyncClient used more CPU than the server and made
its own latency tail).
"""

import argparse
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

BOUNDARY = "imgcls-load-test-boundary"


def mnist_digit_png() -> bytes:
    """A real 28x28 test digit from the MNIST sample shipped in imgcls."""
    with resources.files("imgcls.assets").joinpath("mnist_sample.npz").open("rb") as f:
        pixels = np.load(f)["test_images"][0]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def multipart(image: bytes, name: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    return head.encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


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


def load(url: str, body: bytes, requests: int, concurrency: int) -> dict:
    parts = urlsplit(url)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    tickets = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        connection = None
        while True:
            with lock:
                if next(tickets, None) is None:
                    break
            connection = connection or http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=60)
            start = time.perf_counter()
            try:
                connection.request("POST", parts.path.rstrip("/") + "/predict", body, headers)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException) as e:
                status, connection = type(e).__name__, None  # a fresh connection for the next request
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
    body = multipart(args.image.read_bytes(), args.image.name) if args.image else multipart(mnist_digit_png(), "digit.png")
    with started_server(args.run) if args.run else nullcontext(args.url) as url:
        result = load(url, body, args.requests, args.concurrency)
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
