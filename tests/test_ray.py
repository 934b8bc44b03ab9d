"""``rerank-run --ray`` on a real Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``), the demo
model on the transformers engine one request at a time (``--batch-size 1``: the same numbers whatever runs beside):
the same judgments as one machine, by id; a node removed mid-run; the driver killed and resumed; a ReasonRank
worker killed mid-query; workers that disagree; a cluster that cannot be reached, is not Ray, or has no room; and
no worker process left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
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


def traces(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]


def judgments(out: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """(query, document) → (P(true), reasoning), from the traces."""
    return {(trace["query_id"], trace["doc_id"]): (trace["p_true"], trace["reasoning"]) for trace in traces(out)}


P_TRUE_TOLERANCE = 1e-5
"""How far two runs' P(true) of one judgment may lie apart. Seen in a fresh-clone CI run: 0.0480828 against
0.0480835 for a query resumed on a fresh worker; the likeliest cause is the transformers engine's prefix cache,
which serves a prompt's shared start only where the worker judged the query's other documents before it (a prompt
prefilled whole or in parts sums in another order)."""


def same_judgments(out: Path, here: Path) -> None:
    """The same judgments as ``here``, by id: the same reasoning, P(true) within ``P_TRUE_TOLERANCE``, and the same
    documents in each query's ranking."""
    mine, theirs = judgments(out), judgments(here)
    assert mine.keys() == theirs.keys()
    for subject, (p_true, reasoning) in mine.items():
        assert reasoning == theirs[subject][1], subject
        assert abs(p_true - theirs[subject][0]) <= P_TRUE_TOLERANCE, (subject, p_true, theirs[subject][0])
    assert ranked(out) == ranked(here)


def ranked(out: Path) -> list[tuple[str, str, str]]:
    """run.trec's (query, document, rank) lines, without their scores."""
    return [tuple(line.split()[i] for i in (0, 2, 3)) for line in (out / "run.trec").read_text().splitlines()]


def attempts(out: Path) -> Counter[tuple[str, str]]:
    """How many times each kept event's subject was recorded (a judgment that arrived twice counts 2)."""
    with sqlite3.connect(out / "batch.sqlite3") as db:
        return Counter({(query, subject): count for query, subject, count in
                        db.execute("SELECT query_id, subject, attempts FROM kept_events")})


def cached_so_far(out: Path) -> dict[str, float]:
    """The batch's judgment cache (key → when written), while the batch may still be creating it."""
    try:
        with sqlite3.connect(out / "batch.sqlite3") as db:
            return dict(db.execute("SELECT key, created FROM judgments"))
    except sqlite3.OperationalError:
        return {}


def refused(process: subprocess.Popen, timeout: float) -> list[str]:
    """The error lines of a command that must stop with a usage or cluster error (exit 2) within ``timeout`` s."""
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 2, stderr[-2000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


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
    same_judgments(tmp_path / "out", here)
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
    same_judgments(out, here)
    assert Counter((trace["query_id"], trace["doc_id"]) for trace in traces(out)) == Counter(judgments(here).keys())
    assert set(attempts(out).values()) == {1}  # every judgment arrived once
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
    same_judgments(out, here)
    assert f"({len(before)} judged before" in printed
    assert no_workers_left(printed)

@pytest.fixture
def not_ray() -> Iterator[int]:
    """A port on the loopback only that accepts connections and answers like a web server, not like Ray."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed
                return
            with connection:
                connection.sendall(b"HTTP/1.0 200 OK\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize("address", ["127.0.0.1:9", "NOT_RAY", "127.0.0.1:\u00b2"])
def test_a_cluster_that_cannot_be_reached_is_one_line_before_anything_starts(candidates: Path, tmp_path: Path,
                                                                               not_ray: int, address: str) -> None:
    """A closed port; an open one that is not Ray (Ray itself would dial this host's own address, not the
    loopback, and retry for minutes); a port that is not a number (``²`` passes ``str.isdigit``)."""
    address = address.replace("NOT_RAY", f"127.0.0.1:{not_ray}")
    lines = refused(rerank_run(candidates, tmp_path / "out", "--ray", address), 60)  # Ray's own retries: minutes
    expected = "not a cluster address" if address.endswith("\u00b2") else "no Ray cluster could be reached"
    assert len(lines) == 1 and f"--ray {address}: {expected}" in lines[0], lines
    assert not (tmp_path / "out" / "batch.sqlite3").exists()


def test_a_ray_without_the_internals_of_the_gcs_probe_still_gets_a_plain_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe uses Ray's private modules; a Ray that moved them still refuses a closed port in one line."""
    from search.cluster import ClusterError, _check_reachable

    monkeypatch.setitem(sys.modules, "ray._private.services", None)  # importing it raises ImportError
    with pytest.raises(ClusterError, match=r"^--ray 127.0.0.1:9: no Ray cluster could be reached"):
        _check_reachable("127.0.0.1:9")
    _check_reachable("auto")  # ray.init finds the local cluster, or says there is none


def test_a_cluster_without_room_for_the_workers_is_one_line(cluster: Cluster, candidates: Path,
                                                            tmp_path: Path) -> None:
    lines = refused(rerank_run(candidates, tmp_path / "out", "--ray", cluster.address, "--ray-workers", "5"), 300)
    assert lines == ["error: --ray-workers 5: the cluster has no room for the workers: they need 5 CPU (1 CPU, 1 CPU, "
                     "1 CPU, 1 CPU, 1 CPU) and it has 2 CPUs and 0 GPUs free (see `ray status`)"]
    assert no_workers_left()


def test_cores_taken_on_a_mixed_cluster_are_one_line_within_seconds(candidates: Path, tmp_path: Path,
                                                                     demo_model: Path) -> None:
    """Nodes of 1 and 2 cores, one core taken by other work: each worker asks for its own node's cores (1 and 2),
    which no longer fit, and the batch is refused at once rather than left waiting for them."""
    import ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        taken = ray.util.placement_group([{"CPU": 1}])
        ray.get(taken.ready(), timeout=60)
        # the workers would otherwise wait 30 minutes for room
        lines = refused(rerank_run(candidates, tmp_path / "out", "--ray", cluster.address), 120)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert lines == ["error: --ray-workers 2: the cluster has no room for the workers: they need 3 CPU (1 CPU, 2 CPU) "
                     "and it has 2 CPUs and 0 GPUs free (see `ray status`)"]
    assert no_workers_left()


def test_workers_whose_nodes_choose_different_models_are_refused_in_one_line(candidates: Path, tmp_path: Path,
                                                                              demo_model: Path) -> None:
    """``--model auto`` on two nodes: one has rank1-0.5b in its Hub cache (here the demo weights under that name,
    at a commit of their own), the other has no Hub and falls back to the demo model. One batch, one model."""
    snapshot = tmp_path / "hub" / "models--jhu-clsp--rank1-0.5b" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    for path in demo_model.iterdir():
        (snapshot / path.name).symlink_to(path)
    (tmp_path / "empty").mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": {
        "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")}})
    cluster.add_node(num_cpus=1, env_vars={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    cluster.wait_for_nodes()
    try:
        lines = refused(rerank_run(candidates, tmp_path / "out", "--ray", cluster.address, "--model", "auto"), 300)
    finally:
        cluster.shutdown()
    assert len(lines) == 1 and lines[0].startswith("error: --ray: the workers differ"), lines
    assert re.search(r"model demo:\S+ \(pid \d+ on \S+\) vs jhu-clsp/rank1-0\.5b \(pid \d+ on \S+\)", lines[0])
    assert re.search(r"revision \(none\) \(pid \d+ on \S+\) vs 0123abc \(pid \d+ on \S+\)", lines[0]), lines[0]
    assert not (tmp_path / "out" / "batch.sqlite3").exists()
    assert no_workers_left()


def test_a_reasonrank_query_whose_worker_is_lost_replays_its_finished_windows(cluster: Cluster, tmp_path: Path
                                                                              ) -> None:
    """One query of 5 documents in 4 windows on one worker, killed once a window is done: Ray restarts it, and the
    query's windows done before come back from the driver instead of being reasoned again; progress counts each
    document once."""
    candidates = tmp_path / "candidates.trec"
    qrels = [line.split("\t") for line in (SAMPLE_CORPUS / "qrels.tsv").read_text().splitlines()[1:]]
    candidates.write_text("".join(f"q01 Q0 {doc} {rank} {10 - rank} bm25\n" for rank, doc in enumerate(
        [doc for query, doc, _ in qrels if query == "q01"][:5], 1)))
    out = tmp_path / "out"
    process = rerank_run(candidates, out, "--ray", cluster.address, "--ray-workers", "1", "--reranker",
                         "reasonrank", "--window", "2", "--step", "1", "--passage-tokens", "32", "--budget", "96")
    deadline = time.monotonic() + 300
    while not (before := cached_so_far(out)):  # a window is done
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.1)
    worker = next(found for found in psutil.process_iter(["cmdline"])
                  if "RerankWorker" in " ".join(found.info["cmdline"] or []))
    worker.kill()
    printed = finished(process)
    assert "retrying q01" in printed and "Retried after a lost worker" in (out / "report.md").read_text()
    after = cached_so_far(out)
    assert {key: after[key] for key in before} == before  # no window done before was reasoned (and written) again
    windows = [trace for trace in traces(out) if trace["type"] == "window"]
    assert sorted(trace["window"] for trace in windows) == [0, 1, 2, 3] and len(after) == 4  # each reasoned once
    kept_windows = attempts(out)
    assert len(kept_windows) == 9 and set(kept_windows.values()) == {1}  # 4 starts, 4 outcomes, the order
    replayed = int(re.search(r"(\d+) outcomes replayed from the cache", printed).group(1))
    assert replayed >= len(before)
    assert "judged 5 documents in this run (0 judged before" in printed, printed[-2000:]
    assert no_workers_left(printed)


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
