import io
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="imgcls[serve] is not installed")
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")  # starlette now prefers httpx2 for TestClient; httpx still works
    from fastapi.testclient import TestClient

from conftest import serving  # noqa: E402
from imgcls.inference import Predictor  # noqa: E402
from imgcls.server import app as app_module  # noqa: E402
from imgcls.server.app import create_app  # noqa: E402

CAP = 200_000  # bytes: small, so a "huge" upload stays cheap


@pytest.fixture(scope="module")
def mnist():
    with resources.files("imgcls.assets").joinpath("mnist_sample.npz").open("rb") as f:
        sample = np.load(f)
        return sample["test_images"][:40], sample["test_labels"][:40]


@pytest.fixture(scope="module")
def predictor(digit_run):
    return Predictor.open(digit_run, device="cpu")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, top_k=3, max_bytes=CAP)) as c:
        yield c


def png(pixels: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buf, "PNG")
    return buf.getvalue()


def post(client, data: bytes, name="x.png", kind="image/png"):
    return client.post("/predict", files={"file": (name, data, kind)})


def test_health_model_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    model = client.get("/model").json()
    assert model["name"] == "digitnet" and model["classes"] == list("0123456789") and model["input_size"] == [1, 28, 28]
    assert model["drawing"] is True and model["top_k"] == 3 and model["max_upload_bytes"] == CAP
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and 'id="canvas"' in page.text
    assert "digitImage" in client.get("/static/app.js").text and client.get("/static/style.css").status_code == 200


def test_predict_returns_the_top_classes(client, mnist, predictor):
    images, labels = mnist
    for i in range(5):
        response = post(client, png(images[i], "RGBA"))  # any mode: converted as in training
        assert response.status_code == 200, response.text
        top = response.json()["predictions"]
        assert [set(p) for p in top] == [{"label", "probability"}] * 3
        expected = predictor.top(predictor.probabilities(images[i][None, None]), 3)[0]
        assert [p["label"] for p in top] == [p["label"] for p in expected]
        assert top[0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-6)
    big = np.asarray(Image.fromarray(images[0]).resize((300, 200)))  # not the model's size, octet-stream type
    assert post(client, png(big), "big", "application/octet-stream").status_code == 200


def truncated_png(images) -> bytes:
    data = png(images[0])
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("empty", 400, "empty"),
        ("huge", 413, "too large"),
        ("text", 415, "not an image"),
        ("text as octet-stream", 422, "not a readable image"),
        ("truncated png", 422, "not a readable image"),
        ("eps", 422, "not a readable image"),
    ],
)
def test_bad_uploads_get_a_4xx_json_error(client, mnist, case, status, message):
    data, kind = {
        "empty": (b"", "image/png"),
        "huge": (np.random.default_rng(0).bytes(CAP + 1), "image/png"),
        "text": (b"hello, not an image\n", "text/plain"),
        "text as octet-stream": (b"hello, not an image\n", "application/octet-stream"),
        "truncated png": (truncated_png(mnist[0]), "image/png"),
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "image/x-eps"),  # no Ghostscript for uploads
    }[case]
    response = post(client, data, kind=kind)
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert message in response.json()["detail"]


def test_malformed_requests_get_a_4xx_json_error(client):
    for response, status in [
        (client.post("/predict", json={"file": "x"}), 415),
        (client.post("/predict", files={"other": ("x.png", b"123", "image/png")}), 400),
        (client.post("/predict", data={"file": "just a string"}, files={"x": ("y", b"1")}), 400),
        (client.get("/predict"), 405),
    ]:
        assert response.status_code == status and "detail" in response.json(), response.text


def test_the_size_cap_holds_without_a_content_length(client):
    """A chunked upload has no Content-Length: it is cut off as soon as it passes the cap."""
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'

    def body():
        yield head.encode()
        for _ in range(100):  # 100 x 64 KB = 6.4 MB if nobody stops it
            yield b"\0" * 65536

    response = client.post("/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_concurrent_requests_get_their_own_answers(client, mnist, predictor):
    """32 requests at once: each answer must be the one its own image gets alone."""
    images, _ = mnist
    expected = [r[0]["label"] for r in predictor.top(predictor.probabilities(images[:32, None]), 3)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: post(client, png(images[i])), range(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert [r.json()["predictions"][0]["label"] for r in responses] == expected


def test_serve_refuses_clearly_before_starting(digit_run, tmp_path, capsys, monkeypatch):
    from imgcls.cli import main

    assert main(["serve", str(tmp_path / "no-run")]) == 2
    assert capsys.readouterr().err.startswith("imgcls: error: checkpoint")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(digit_run), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    assert main(["serve", str(digit_run), "--upload-timeout", "0"]) == 2
    assert "--upload-timeout must be positive" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert main(["serve", str(digit_run)]) == 2
    assert "pip install 'imgcls[serve]'" in capsys.readouterr().err


def test_the_cli_starts_without_the_optional_packages():
    """FastAPI, uvicorn and onnxruntime are imported only by the commands that use them."""
    code = "import sys, imgcls.cli as c; c.build_parser().parse_args(['predict', 'r', 'x']); print(sorted(m for m in ('fastapi', 'uvicorn', 'onnxruntime', 'onnx') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_a_bad_upload_in_a_batch_fails_alone(client, mnist, predictor):
    """Uploads that arrive together are predicted together: a broken one gets its 422, its neighbours their answers."""
    images, _ = mnist
    expected = [r[0]["label"] for r in predictor.top(predictor.probabilities(images[:24, None]), 3)]
    broken = truncated_png(images)
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda i: post(client, broken if i % 3 == 0 else png(images[i])), range(24)))
    for i, response in enumerate(responses):
        if i % 3 == 0:
            assert response.status_code == 422 and "not a readable image" in response.json()["detail"]
        else:
            assert response.status_code == 200 and response.json()["predictions"][0]["label"] == expected[i]


def test_a_slow_decode_does_not_hold_up_the_other_uploads(predictor, mnist, monkeypatch):
    """Uploads decode on a pool as they arrive and only forward passes are batched: while three uploads take
    2 s each to decode (say, large 16-bit images), a normal one is still answered at once."""
    digit = png(mnist[0][0])
    decode = app_module.decode

    def slow_decode(predictor, data):
        if data.startswith(b"slow"):
            time.sleep(2)
            data = data[4:]
        return decode(predictor, data)

    monkeypatch.setattr(app_module, "decode", slow_decode)
    with TestClient(create_app(predictor, top_k=3, max_bytes=CAP)) as client, ThreadPoolExecutor(3) as pool:
        start = time.monotonic()
        slow = [pool.submit(post, client, b"slow" + digit) for _ in range(3)]
        time.sleep(0.3)  # the slow ones are decoding
        normal = post(client, digit)
        normal_seconds = time.monotonic() - start
        assert [f.result().status_code for f in slow] == [200] * 3 and time.monotonic() - start >= 2
    assert normal.status_code == 200 and normal_seconds < 1.5, normal_seconds


UPLOAD_TIMEOUT = 1.0  # seconds: short, so the stall tests are quick


@pytest.fixture(scope="module")
def impatient(digit_run, tmp_path_factory):
    """`imgcls serve --upload-timeout 1` in a subprocess: its port and the file its output goes to."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(digit_run, log, "--upload-timeout", str(UPLOAD_TIMEOUT)) as url:
        yield urllib.parse.urlsplit(url).port, log


BOUNDARY = "b0undary"
PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'.encode()


def request_head(length: int, connection="keep-alive") -> bytes:
    """Request line and headers of a multipart upload whose body is `length` bytes."""
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\nConnection: {connection}\r\n\r\n"
    ).encode()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (10 s at most between two reads)."""
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_an_aborted_upload_logs_one_line(impatient):
    port, log = impatient
    before = len(log.read_text().splitlines())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request_head(100_000) + PART + b"\0" * 1000)
            time.sleep(0.1)  # the server is reading the body
    deadline = time.monotonic() + 10
    while len(lines := log.read_text().splitlines()[before:]) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(lines) == 3 and all("client disconnected during the upload" in line for line in lines), lines


def test_a_stalled_upload_gets_a_408_and_its_connection_closed(impatient, mnist):
    port, log = impatient
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head(100_000) + PART + b"\0" * 1000)  # then nothing
        start = time.monotonic()
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower() and b"no data for 1 s" in answer, answer
    assert UPLOAD_TIMEOUT <= time.monotonic() - start < UPLOAD_TIMEOUT + 3
    assert "upload stalled" in log.read_text()

    # An upload that is slow but keeps sending is no stall, even when it takes longer than the timeout.
    body = PART + png(mnist[0][0]) + f"\r\n--{BOUNDARY}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head(len(body), "close"))
        for piece in np.array_split(np.frombuffer(body, np.uint8), 5):
            sock.sendall(piece.tobytes())
            time.sleep(UPLOAD_TIMEOUT / 3)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"predictions"' in answer, answer


def test_a_connection_that_never_completes_its_request_head_is_closed(impatient):
    """uvicorn alone waits forever for a request line and headers; here they get the upload timeout too."""
    port, _ = impatient
    for sent in [b"", b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(sent)
            start = time.monotonic()
            assert read_all(sock) == b""
        assert time.monotonic() - start < UPLOAD_TIMEOUT + 3
