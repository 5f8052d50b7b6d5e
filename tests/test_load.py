import json
import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).resolve().parents[1] / "bench" / "load.py"


def test_a_small_load_run_on_loopback_has_no_errors(served):
    """bench/load.py in small: 100 requests, 8 at a time, against `imgcls serve` in a subprocess."""
    result = subprocess.run(
        [sys.executable, str(LOAD), "--url", served, "--requests", "100", "--concurrency", "8", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == 0 and report["statuses"] == {"200": 100}
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"] <= report["max_ms"] and report["throughput_rps"] > 0
