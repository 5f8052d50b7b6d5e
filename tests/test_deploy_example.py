"""examples/docker/Dockerfile, the deployment example of docs/how-to/export-serve-deploy.md: its ENTRYPOINT (and CMD)
and its HEALTHCHECK, parsed from the file rather than copied here, run against a real run folder laid out as the
Dockerfile's COPY lays it out, on loopback, and serve a prediction. Docker itself is not needed: the test runs the
container's command on this machine, with the image's ENV."""

import fnmatch
import io
import json
import os
import shlex
import subprocess
import sys
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import free_port, wait_for_health

DOCKERFILE = Path(__file__).resolve().parents[1] / "examples" / "docker" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, comments dropped and continued lines joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    found = []
    for line in lines:
        keyword, _, rest = line.strip().partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) command; the shell form is split as the shell would."""
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def parse(text: str) -> dict:
    found = {"env": {}, "copy": [], "command": [], "cmd": []}
    for keyword, arguments in instructions(text):
        if keyword == "ENTRYPOINT":
            found["command"] = exec_form(arguments)
        elif keyword == "CMD":
            found["cmd"] = exec_form(arguments)
        elif keyword == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                found["env"][key] = value
        elif keyword == "COPY":
            *sources, destination = shlex.split(arguments)
            found["copy"].append((sources, destination))
        elif keyword == "EXPOSE":
            found["expose"] = arguments.split("/")[0]
        elif keyword == "HEALTHCHECK":
            found["healthcheck"] = exec_form(arguments[arguments.index("CMD ") + 4 :].strip())
    return found


def test_the_dockerfile_parses_as_expected():
    docker = parse(DOCKERFILE.read_text())
    assert docker["command"][:2] == ["imgcls", "serve"], docker["command"]
    assert docker["copy"] == [(["${RUN}/best*"], "/model/")]
    assert docker["env"].get("IMGCLS_OFFLINE") == "1"
    assert docker["healthcheck"][0] == "python"


def digit_png() -> bytes:
    """A handwritten 7 of the embedded sample's test set, as a PNG upload."""
    with np.load(resources.files("imgcls.assets") / "mnist_sample.npz") as sample:
        image = Image.fromarray(sample["test_images"][1])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def post_image(url: str, data: bytes) -> dict:
    boundary = "imgclsdeploytest"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\nContent-Type: image/png\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_the_dockerfile_entrypoint_serves_a_prediction(digit_run, tmp_path):
    docker = parse(DOCKERFILE.read_text())

    # The image's filesystem: COPY ${RUN}/<pattern> DEST/ with RUN=the digit run.
    (sources, destination) = docker["copy"][0]
    model_dir = tmp_path / "image" / destination.strip("/")
    model_dir.mkdir(parents=True)
    pattern = sources[0].replace("${RUN}/", "")
    copied = [p for p in digit_run.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, pattern)]
    for p in copied:
        (model_dir / p.name).write_bytes(p.read_bytes())
    assert "best.pt" in {p.name for p in copied} and "last.pt" not in {p.name for p in copied}

    # The container's command, with the image's paths mapped here and the server kept on loopback at a free port.
    command = docker["command"] + docker["cmd"]
    container_path = destination.rstrip("/")
    assert container_path in command, f"the command does not serve what COPY put in {destination}: {command}"
    port = free_port()
    args = []
    for i, arg in enumerate(command):
        previous = command[i - 1] if i else None
        if i == 0:
            assert arg == "imgcls"
            args += [sys.executable, "-m", "imgcls"]
        elif arg == container_path:
            args.append(str(model_dir))
        elif previous == "--host":
            assert arg == "0.0.0.0"  # the container listens beyond its own loopback; here, loopback only
            args.append("127.0.0.1")
        elif previous == "--port":
            assert arg == docker["expose"]
            args.append(str(port))
        else:
            args.append(arg)
    env = {**os.environ, **docker["env"]}
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        server = subprocess.Popen(args, stdout=out, stderr=out, env=env, cwd=tmp_path)
    try:
        wait_for_health(server, url, log, "the Dockerfile's command")

        # The HEALTHCHECK, pointed at this port, passes.
        check = [sys.executable if a == "python" else a.replace(f":{docker['expose']}/", f":{port}/") for a in docker["healthcheck"]]
        assert subprocess.run(check, env=env, timeout=30).returncode == 0

        answer = post_image(f"{url}/predict", digit_png())
        assert answer["model"] == "digitnet"
        best = answer["predictions"][0]
        assert best["label"] == "7" and best["probability"] > 0.5, answer
    finally:
        server.terminate()
        server.wait(10)
