import io
import socket
import subprocess
import sys
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

from imgcls.inference import Predictor  # noqa: E402
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
