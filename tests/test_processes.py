"""The app and the command line as processes: killed, they take their vLLM engine processes with them; sent
SIGTERM, they stop cleanly; with their OpenAI-compatible server late or gone, they say so within seconds and
rerank once it is back. Real processes, a real vLLM server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client
from servers import VLLMServer, app_process, free_port

from search.batch import BatchStore
from search.batch.store import STATE_FILE
from search.engines.lifeline import Lifeline, follows_us, running
from search.evaluation import retrieve_run
from search.retrieval.first_stage import FirstStage
from search.settings import REPO_ROOT, SAMPLE_CORPUS
from search.trec import write_trec_run

GONE_WITHIN_S = 20
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1"}


def tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant it has now."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def assert_gone_within(processes: list[psutil.Process], seconds: float) -> None:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    for process in alive:
        process.kill()
    assert not alive, f"still running {seconds} s after their parent died: {[p.name() for p in alive]}"


def wait_for(condition: Callable[[], bool], timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_lifeline_ends_what_it_adopted_once_its_pipe_closes() -> None:
    lifeline = Lifeline()
    with lifeline.adopting():
        sleeper = subprocess.Popen(["sleep", "600"])
    lifeline.close()  # as our death would close it
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert not psutil.pid_exists(lifeline.pid)  # the watchdog is gone too


def test_a_lifeline_leaves_alone_what_was_running_before_it_and_what_that_starts() -> None:
    """Another engine, a server, any subprocess started before the engine's lifeline is not the engine's, nor is
    what it starts while the engine loads (seen: in-process vLLM, closed, ended the engine core of a vLLM server
    that had been loading beside it)."""
    elder = subprocess.Popen([sys.executable, "-c", "import subprocess, time; time.sleep(1); "
                              "subprocess.Popen(['sleep', '600']); time.sleep(600)"])
    try:
        lifeline = Lifeline()
        with lifeline.adopting(every_s=0.1):
            own = subprocess.Popen(["sleep", "600"])
            wait_for(lambda: bool(psutil.Process(elder.pid).children()), 30)
        elders_child = psutil.Process(elder.pid).children()[0]
        lifeline.close()
        assert own.wait(timeout=10) == -signal.SIGTERM
        assert elder.poll() is None and elders_child.status() != psutil.STATUS_ZOMBIE  # not ended: unreaped
    finally:
        for process in tree(elder.pid)[::-1]:
            process.kill()
        elder.wait()


def test_a_lifeline_leaves_the_resource_tracker_and_does_not_wait_on_the_exited() -> None:
    """On SIGTERM the app waited 5 s for nothing twice (12.4 s to exit on vLLM, now 7.5 s): for multiprocessing's
    resource tracker, which ignores SIGTERM and ends by itself when we do, and for the engine core, which had exited
    but stays a zombie until its parent reads its status."""
    tracker = subprocess.Popen([sys.executable, "-c", "import time  # multiprocessing.resource_tracker\n"
                                "time.sleep(600)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: psutil.Process(exited.pid).status() == psutil.STATUS_ZOMBIE, 30)
        assert follows_us(psutil.Process(tracker.pid)) and not follows_us(psutil.Process(exited.pid))
        assert not running(psutil.Process(exited.pid))
        assert running(psutil.Process(tracker.pid))
    finally:
        tracker.kill()
        tracker.wait()
        exited.wait()
    assert running(psutil.Process(os.getpid()))


@pytest.fixture(scope="module")
def run_file(first_stage: FirstStage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "bm25.trec"
    write_trec_run(retrieve_run(first_stage.retrievers["bm25"], first_stage.corpus.queries[:3], 3), path, tag="bm25")
    return path


def rerank_run(out: Path, run: Path, log: Path, *extra: str) -> subprocess.Popen:
    """rerank-run on the demo model (budget 16 unless ``extra`` says otherwise)."""
    command = [sys.executable, "-m", "search", "rerank-run", "--corpus", str(SAMPLE_CORPUS), "--run", str(run),
               "--out", str(out), "--model", "demo", "--top-k", "3", "--budget", "16", "--no-judgment-cache", *extra]
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=ENVIRONMENT, stdout=output, stderr=subprocess.STDOUT)


def judged(out: Path) -> int:
    if not (out / STATE_FILE).is_file():
        return 0
    store = BatchStore.read(out)
    try:
        return len(list(store.kept()))
    finally:
        store.close()


@pytest.mark.vllm
def test_killed_the_app_and_rerank_run_take_their_vllm_engine_processes_with_them(
        index_dir: Path, run_file: Path, tmp_path: Path) -> None:
    """Both started at once (each start waits mostly on imports, on one core), each SIGKILLed once its engine is
    up; within GONE_WITHIN_S nothing of either tree is left."""
    log = tmp_path / "rerank-run.log"
    # one long judgment at a time: the batch is still at work when it is killed
    batch = rerank_run(tmp_path / "out", run_file, log, "--engine", "vllm", "--budget", "1024", "--concurrency", "1")
    try:
        with app_process(tmp_path / "annotations.sqlite3", index_dir, tmp_path / "app.log", "--engine", "vllm") as (
                _, app):
            app_tree = tree(app.pid)
            names = [process.name() for process in app_tree]
            assert any(name.startswith("VLLM::EngineCore") for name in names), names
            app.send_signal(signal.SIGKILL)
            app.wait()
        wait_for(lambda: batch.poll() is None and "reranking with" in log.read_text(errors="replace"))
        batch_tree = tree(batch.pid)
        assert any(process.name().startswith("VLLM::EngineCore") for process in batch_tree), log.read_text()[-3000:]
    finally:
        batch.kill()
        batch.wait()
    assert_gone_within([*app_tree[1:], *batch_tree[1:]], GONE_WITHIN_S)


def test_sigterm_stops_a_batch_cleanly_and_keeps_its_judgments(run_file: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "rerank-run.log"
    batch = rerank_run(out, run_file, log, "--engine", "transformers", "--concurrency", "1")
    try:
        wait_for(lambda: batch.poll() is None and judged(out) >= 1)
        batch.terminate()
        status = batch.wait(timeout=30)
    finally:
        batch.kill()
        batch.wait()
    text = log.read_text(errors="replace")
    assert status == 130, text[-3000:]
    assert "interrupted: every finished judgment is kept" in text and "Traceback" not in text
    assert judged(out) >= 1


def rerank_rows(client: Client) -> tuple[str, list[dict]]:
    """One /rerank of three documents: its final summary and rows."""
    job = client.submit("which planets have no moons", "", "hybrid", 3, 12, True, "sample_corpus",
                        api_name="/rerank")
    job.result()
    summary, _, rows = job.outputs()[-1]
    return summary, rows


@pytest.mark.vllm
def test_an_app_started_before_its_server_reranks_once_it_is_up_and_fails_fast_once_it_is_gone(
        demo_model: Path, index_dir: Path, tmp_path: Path) -> None:
    """The server is launched only once the app has asked for it and found nothing (a launch beside the app's start
    raced it: on a busy machine the server once answered first)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    servers: list[VLLMServer] = []
    try:
        with app_process(tmp_path / "annotations.sqlite3", index_dir, tmp_path / "app.log", "--engine", "openai",
                         "--endpoints", endpoint) as (url, _):
            assert "no server reachable" in httpx.get(f"{url}config", timeout=10).text  # the header's badge
            client = Client(url, verbose=False)
            notice, rows = rerank_rows(client)
            assert f"no server reachable: {endpoint}" in notice and "retrying every 2 s" in notice and not rows
            servers.append(VLLMServer(demo_model, tmp_path / "vllm.log", port=port))
            servers[0].wait_healthy()
            deadline = time.monotonic() + 10  # the app probes every 2 s
            while not (rows := rerank_rows(client)[1]) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert len(rows) == 3 and all(row["status"] == "judged" for row in rows), rows
            servers[0].kill()
            started = time.monotonic()
            _, rows = rerank_rows(client)
            assert time.monotonic() - started < GONE_WITHIN_S
            assert len(rows) == 3 and all(row["status"] == "failed" for row in rows), rows
            assert all(endpoint in row["failure"] for row in rows), rows
    finally:
        for server in servers:
            server.kill()
