"""`imgcls serve`: a web page and JSON API around one trained model (FastAPI + uvicorn, the `serve` extra).

Nothing here imports FastAPI at module level, so the rest of imgcls starts fast without it."""

import logging
import socket
from pathlib import Path

from imgcls.errors import ImgclsError, missing_extra
from imgcls.inference import Predictor
from imgcls.interrupt import STOP_SIGNALS, CtrlC, during, stopped

LOG = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**20


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "torch",
    device: str = "auto",
    top_k: int = 5,
    max_bytes: int = DEFAULT_MAX_BYTES,
    access_log: bool = False,
    upload_timeout: float = 30.0,
    min_confidence: float = 0.0,
) -> None:
    if not 1 <= port <= 65535:  # socket.bind raises OverflowError, not OSError, outside 0-65535; 0 would serve on a random port
        raise ImgclsError(f"--port must be between 1 and 65535, got {port}")
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise missing_extra("imgcls serve", "serve", e) from None
    from imgcls.server.app import create_app
    from imgcls.server.protocol import with_head_timeout

    if top_k < 1 or max_bytes < 1 or not upload_timeout > 0:
        raise ImgclsError("--top-k, --max-upload-mb and --upload-timeout must be positive")
    predictor = Predictor.open(checkpoint, backend, device)  # once, for every request
    predictor.min_confidence = min_confidence  # "unknown" below it
    app = create_app(predictor, top_k=top_k, max_bytes=max_bytes, upload_timeout=upload_timeout)
    try:  # a clear message instead of uvicorn's log line and exit when the port is taken
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ImgclsError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host") from None
    LOG.info(
        f"serving {predictor.source} ({predictor.name}, {len(predictor.classes)} classes, {predictor.backend}) "
        f"at http://{host}:{port}/ - Ctrl-C stops"
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        LOG.warning(f"warning: --host {host} makes the server reachable from other machines")
    config = uvicorn.Config(app, host=host, port=port, log_level="info" if access_log else "warning", access_log=access_log,
                            http=with_head_timeout(upload_timeout))  # fmt: skip
    server = _server_class(uvicorn.Server)(config)
    server.run()
    if getattr(server, "stop", None) is not None and server.stop.pressed:
        with during("serving", "stopped after answering the requests in flight"):
            raise stopped(server.stop.signum)


def _server_class(base):
    """uvicorn's Server, stopped gracefully by SIGHUP as well as by Ctrl-C and SIGTERM (uvicorn takes those two only,
    and a bare SIGHUP unwound its event loop with a traceback), remembering which signal stopped it."""

    class Server(base):
        def capture_signals(self) -> CtrlC:
            self.stop = CtrlC(on_press=self.handle_exit_signal, signals=STOP_SIGNALS)
            return self.stop

        def handle_exit_signal(self, signum: int) -> None:
            self.should_exit = True

    return Server
