"""Fixtures for the hub tests: a loopback HTTP server serving generated checkpoints, isolated caches."""
from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from convscope.models import pretrained as hub


class _Files:
    """What the server serves: path -> bytes; `short[path] = n` sends only the first n bytes of a file while
    announcing its full length (a transfer that breaks off); `requests` records (path, Range header); `delay`
    holds each body back."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.short: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.delay = 0.0        # seconds to wait before sending a body


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _handler(state: _Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _missing(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")   # what the Hub says for a file a repository lacks
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:  # noqa: N802  (the Hub's metadata request, as huggingface_hub sends it)
            state.requests.append(("HEAD " + self.path, None))
            data = state.files.get(self.path)
            if data is None:
                self._missing()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", HUB_COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self._missing()
                return
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:state.short.get(self.path, len(data))]
            time.sleep(state.delay)
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def server():
    """(base URL, files state) of an HTTP server on 127.0.0.1 (a free port), shut down after the test."""
    state = _Files()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Every test gets empty caches (TORCH_HOME, the Hugging Face Hub cache) and downloads switched on."""
    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv(hub.remote.OFFLINE_ENV, raising=False)
    hf_cache = tmp_path / "hf_cache"
    try:
        from huggingface_hub import constants
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    except ImportError:
        pass
    hub.set_offline(None)
    yield {"torch": torch_home / "hub" / "checkpoints", "hf": hf_cache}
    hub.set_offline(None)
