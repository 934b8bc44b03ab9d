"""``rerank-run --ray`` on a real Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``), the demo
model on the transformers engine one request at a time (``--batch-size 1``: the same numbers whatever runs beside):
the same judgments as one machine, by id; a node removed mid-run; the driver killed and resumed; a cluster that
cannot be reached; and no worker process left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from ray.cluster_utils import Cluster

from search.settings import REPO_ROOT, SAMPLE_CORPUS

pytestmark = pytest.mark.xdist_group("ray")  # one cluster for the module
QUERIES = ("q01", "q02", "q05", "q06")
WORKER_PROCESSES = ("RerankWorker", "_Encoder")
"""Ray names a worker process after its actor's class (``ray::RerankWorker``; Ray Data's
``MapWorker(MapBatches(_Encoder))``)."""


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each query's judged documents (up to five) as its first-stage run."""
    qrels: dict[str, list[str]] = {}
    for line in (SAMPLE_CORPUS / "qrels.tsv").read_text().splitlines()[1:]:
        query, doc, _ = line.split("\t")
        qrels.setdefault(query, []).append(doc)
    run = tmp_path_factory.mktemp("ray") / "candidates.trec"
    run.write_text("".join(f"{query} Q0 {doc} {rank} {10 - rank} bm25\n" for query in QUERIES
                           for rank, doc in enumerate(qrels[query][:5], 1)))
    return run


@pytest.fixture
def cluster(demo_model: Path) -> Iterator[Cluster]:
    """A head and a second node, one CPU each: two workers, one per node."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def rerank_run(candidates: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``rerank-run`` with one torch thread, as Ray gives a worker of one CPU: the same sums in the same order."""
    return subprocess.Popen([sys.executable, "-m", "search", "rerank-run", "--corpus", str(SAMPLE_CORPUS), "--run",
                             str(candidates), "--out", str(out), "--model", "demo", "--engine", "transformers",
                             "--budget", "8", "--batch-size", "1", "--top-k", "5", *extra],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def finished(process: subprocess.Popen, timeout: float = 600) -> str:
    """What the command printed (stdout, then stderr), once it has exited with 0."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stdout + stderr


def judgments(out: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """(query, document) → (P(true), reasoning), from the traces."""
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    return {(trace["query_id"], trace["doc_id"]): (trace["p_true"], trace["reasoning"]) for trace in traces}


def kept(out: Path) -> dict[tuple[str, str], float]:
    """Each kept event's subject and when it was written."""
    with sqlite3.connect(out / "batch.sqlite3") as db:
        return {(query, subject): updated for query, subject, updated in
                db.execute("SELECT query_id, subject, updated FROM kept_events")}


def kept_so_far(out: Path) -> dict[tuple[str, str], float]:
    """``kept`` while the batch may still be creating its store: nothing until the file and its tables exist (the
    file appears a moment before its schema)."""
    try:
        return kept(out) if (out / "batch.sqlite3").is_file() else {}
    except sqlite3.OperationalError:
        return {}


def no_workers_left(printed: str = "") -> bool:
    """Within 30 s, no process of a worker: those the command named (``pid N on``), and none by Ray's name."""
    pids = [int(pid) for pid in re.findall(r"pid (\d+) on ", printed)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids
                   ) and not [process for process in psutil.process_iter(["cmdline"])
                              if any(name in " ".join(process.info["cmdline"] or []) for name in WORKER_PROCESSES)]:
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def here(candidates: Path, tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Path:
    """The batch on this machine alone: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("here") / "out"
    finished(rerank_run(candidates, out))
    return out


def test_a_batch_on_two_nodes_equals_one_machines_by_id(cluster: Cluster, candidates: Path, here: Path,
                                                        tmp_path: Path) -> None:
    printed = finished(rerank_run(candidates, tmp_path / "out", "--ray", cluster.address))
    assert "reranking on Ray: 2 workers" in printed and len(re.findall(r"pid \d+ on ", printed)) == 2
    assert judgments(tmp_path / "out") == judgments(here)
    assert (tmp_path / "out" / "run.trec").read_text() == (here / "run.trec").read_text()
    assert no_workers_left(printed)


def test_a_node_lost_mid_run_and_its_queries_finish_on_the_other(cluster: Cluster, candidates: Path, here: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = rerank_run(candidates, out, "--ray", cluster.address)
    deadline = time.monotonic() + 300
    while not kept_so_far(out):  # the workers are judging
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.2)
    cluster.remove_node(next(node for node in cluster.list_all_nodes() if node is not cluster.head_node))
    printed = finished(process)
    assert judgments(out) == judgments(here)  # every judgment, each once
    report = (out / "report.md").read_text()
    assert "Retried after a lost worker" in report and "retrying" in printed, report
    assert no_workers_left(printed)


def test_a_killed_driver_resumes_without_recomputing_what_was_kept(cluster: Cluster, candidates: Path,
                                                                    here: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = rerank_run(candidates, out, "--ray", cluster.address)
    deadline = time.monotonic() + 300
    while len(kept_so_far(out)) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = kept(out)
    assert no_workers_left()  # Ray ends the actors of a driver that died
    printed = finished(rerank_run(candidates, out, "--ray", cluster.address))
    after = kept(out)
    assert {subject: after[subject] for subject in before} == before  # nothing kept was written again
    assert (out / "run.trec").read_text() == (here / "run.trec").read_text()
    assert f"({len(before)} judged before" in printed
    assert no_workers_left(printed)

def test_a_cluster_that_cannot_be_reached_is_one_line_before_anything_starts(candidates: Path,
                                                                               tmp_path: Path) -> None:
    process = rerank_run(candidates, tmp_path / "out", "--ray", "127.0.0.1:9")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--ray 127.0.0.1:9: no Ray cluster could be reached" in lines[0], stderr[-2000:]
    assert not (tmp_path / "out" / "batch.sqlite3").exists()


def test_a_cluster_without_room_for_the_workers_is_one_line(cluster: Cluster, candidates: Path,
                                                            tmp_path: Path) -> None:
    process = rerank_run(candidates, tmp_path / "out", "--ray", cluster.address, "--ray-workers", "5")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: --ray-workers 5: the cluster has 2 CPUs free and no GPU; each worker needs a CPU"], (
        stderr[-2000:])
    assert no_workers_left()


def test_index_on_ray_equals_a_local_index(cluster: Cluster, tmp_path: Path) -> None:
    import faiss
    import numpy as np

    def index(folder: Path, *extra: str) -> dict[str, np.ndarray]:
        done = subprocess.run([sys.executable, "-m", "search", "index", "--corpus", str(SAMPLE_CORPUS),
                               "--index-dir", str(folder), *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        found = {}
        for path in folder.rglob("index.faiss"):
            stored = faiss.read_index(str(path))
            found[str(path.relative_to(folder))] = stored.reconstruct_n(0, stored.ntotal)
        return found

    local, on_ray = index(tmp_path / "local"), index(tmp_path / "ray", "--ray", cluster.address)
    assert list(on_ray) == list(local) and len(local) == 1  # the same fingerprint: the same folder
    for name, vectors in local.items():
        assert vectors.shape == on_ray[name].shape and np.allclose(vectors, on_ray[name], atol=1e-5)
    assert no_workers_left()
