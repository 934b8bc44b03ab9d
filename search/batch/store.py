"""A batch's state on disk (``OUT/batch.sqlite3``), written as it goes, so that a killed run resumes where it
stopped and the Evaluation tab can read a running batch.

It holds the batch's fingerprint, the events each query's run keeps (a pointwise judgment's outcome as it
lands, by document; a listwise query's windows and final order once it is done) and the judgment cache (the
same table and keys as the app's), so whatever the killed process finished but had not yet recorded is
replayed, not reasoned again.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from search.batch.inputs import BatchInputs, BatchSpec
from search.corpus import Qrels
from search.rerank.cache import JudgmentCache
from search.rerank.events import Event, event_from_json, event_to_json, subject

STATE_FILE = "batch.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS batch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    spec TEXT NOT NULL,
    sources TEXT NOT NULL,
    qrels TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (
    position INTEGER PRIMARY KEY,
    query_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    instruction TEXT NOT NULL,
    candidates TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kept_events (
    query_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    event TEXT NOT NULL,
    replayed INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated REAL NOT NULL,
    PRIMARY KEY (query_id, subject)
);
CREATE TABLE IF NOT EXISTS retries (
    query_id TEXT NOT NULL,
    lost TEXT NOT NULL,
    reason TEXT NOT NULL,
    documents INTEGER NOT NULL,
    at REAL NOT NULL
);
"""


def batch_folders(root: Path) -> list[str]:
    """The names of the folders directly under ``root`` that hold a batch, sorted."""
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if (child / STATE_FILE).is_file())


class BatchStoreError(ValueError):
    """The output folder cannot hold this batch; the message says why and what to do."""


def _other_batch(out: Path, differences: list[str]) -> BatchStoreError:
    return BatchStoreError(f"--out {out} holds a batch with other settings ({'; '.join(differences)}): run it with "
                           "the same arguments to resume it, or give another --out")


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredQuery:
    query_id: str
    text: str
    instruction: str
    first_stage: tuple[tuple[str, float], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Kept:
    """An event a batch keeps, with how it came about."""

    query_id: str
    event: Event
    replayed: bool
    """It came from the judgment cache: a process before this one computed it."""
    attempts: int
    """How many times its subject (a document, a window) was recorded: a failure is replaced by a later try."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Retry:
    """A query sent again because the worker reranking it was lost (``--ray``): where it was, why, and how many
    of its documents were still unfinished (the rest had arrived and were kept)."""

    query_id: str
    lost: str
    reason: str
    documents: int

    def describe(self) -> str:
        return f"{self.query_id}: {self.documents} documents re-run, the worker on {self.lost} lost ({self.reason})"


class BatchStore:
    """One batch's state. ``open`` creates it, or reopens it when the fingerprint matches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Batches written before ``kept_events`` held rank1 outcomes and ReasonRank rankings in tables of their
        own, without the event envelope: their events move over, so such a batch reads and resumes as before."""
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables & {"outcomes", "rankings"}:
            return
        rows = []
        if "outcomes" in tables:
            for query_id, status, event, replayed, attempts, updated in self._db.execute(
                    "SELECT query_id, status, event, replayed, attempts, updated FROM outcomes ORDER BY rowid"):
                rows.append((query_id, {**json.loads(event), "type": status, "reranker": "rank1"}, replayed, attempts,
                             updated))
        if "rankings" in tables:
            for query_id, events, updated in self._db.execute("SELECT query_id, events, updated FROM rankings"):
                records = json.loads(events)
                for record in records:
                    if record["type"] == "done":
                        record.update(type="ranking_done", window=len(records) // 2)
                    rows.append((query_id, {**record, "reranker": "reasonrank"}, bool(record.get("from_cache")), 1,
                                 updated))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO kept_events VALUES (?, ?, ?, ?, ?, ?)", [
                (query_id, subject(event_from_json(record)), json.dumps(record), replayed, attempts, updated)
                for query_id, record, replayed, attempts, updated in rows])
            self._db.execute("DROP TABLE IF EXISTS outcomes")
            self._db.execute("DROP TABLE IF EXISTS rankings")

    @classmethod
    def open(cls, out: Path, spec: BatchSpec, inputs: BatchInputs, *, sources: dict[str, str],
             qrels: Qrels | None = None) -> BatchStore:
        """The store in ``out`` for ``spec``; refused when ``out`` holds a batch of other inputs or settings.
        ``sources`` (the files given) is shown to readers, not compared; the judgments of the batch's queries
        in ``qrels`` are kept for its report (the latest given win)."""
        if out.exists() and not out.is_dir():
            raise BatchStoreError(f"--out {out}: is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        store = cls(out / STATE_FILE)
        stored = store.spec()
        if stored is None:
            with store._db:
                store._db.execute("BEGIN")
                store._db.execute("INSERT INTO batch (id, spec, sources, created) VALUES (1, ?, ?, ?)",
                                  (spec.to_json(), json.dumps(sources), time.time()))
                store._db.executemany("INSERT INTO queries VALUES (?, ?, ?, ?, ?)", [
                    (position, item.query.query_id, item.query.text, item.query.instruction,
                     json.dumps([[c.passage.doc_id, c.score] for c in item.candidates]))
                    for position, item in enumerate(inputs.queries)])
        elif stored != spec:
            store.close()
            raise _other_batch(out, stored.differences(spec))
        if qrels is not None:
            kept = {item.query.query_id: dict(qrels[item.query.query_id]) for item in inputs.queries
                    if item.query.query_id in qrels}
            store._db.execute("UPDATE batch SET qrels = ?", (json.dumps(kept),))
        return store

    @classmethod
    def refuse_other(cls, out: Path, spec: BatchSpec, digest_at: Callable[[int], str]) -> None:
        """Refuse an ``out`` that holds a batch of other settings, naming only what differs; cheap, so it runs
        before the engine starts. ``digest_at(top_k)`` is the inputs' digest cut at another top_k: when only
        top_k changed, the inputs are compared at the stored one, so they are not called different too."""
        if not (out / STATE_FILE).is_file():
            return
        store = cls(out / STATE_FILE)
        try:
            stored = store.spec()
        finally:
            store.close()
        if stored is None or stored == spec:
            return
        same_cut = spec if stored.top_k == spec.top_k else dataclasses.replace(spec, inputs=digest_at(stored.top_k))
        raise _other_batch(out, stored.differences(same_cut))

    @classmethod
    def read(cls, out: Path) -> BatchStore:
        """An existing batch, for reading (the Evaluation tab)."""
        if not (out / STATE_FILE).is_file():
            raise BatchStoreError(f"{out}: no {STATE_FILE}, not a rerank-run output folder")
        return cls(out / STATE_FILE)

    def spec(self) -> BatchSpec | None:
        row = self._db.execute("SELECT spec FROM batch").fetchone()
        return None if row is None else BatchSpec.from_json(row[0])

    def sources(self) -> dict[str, str]:
        row = self._db.execute("SELECT sources FROM batch").fetchone()
        return json.loads(row[0]) if row else {}

    def queries(self) -> list[StoredQuery]:
        """The batch's queries in run order, each with its first-stage documents and scores, best first."""
        rows = self._db.execute("SELECT query_id, text, instruction, candidates FROM queries ORDER BY position")
        return [StoredQuery(query_id=query_id, text=text, instruction=instruction,
                            first_stage=tuple((doc_id, score) for doc_id, score in json.loads(candidates)))
                for query_id, text, instruction, candidates in rows.fetchall()]

    def qrels(self) -> dict[str, dict[str, int]] | None:
        """The judgments given with the batch (its queries only), or None when none were."""
        row = self._db.execute("SELECT qrels FROM batch").fetchone()
        return json.loads(row[0]) if row and row[0] is not None else None

    def judgment_cache(self) -> JudgmentCache:
        return JudgmentCache(self.path)

    def record(self, query_id: str, event: Event) -> None:
        """Keep one event of a query (committed before this returns), replacing an earlier one about the same
        subject (a document's failure, when a later try succeeds) and counting the attempts."""
        self._db.execute(
            "INSERT INTO kept_events VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (query_id, subject) DO UPDATE SET "
            "event = excluded.event, replayed = excluded.replayed, attempts = attempts + 1, updated = excluded.updated",
            (query_id, subject(event), json.dumps(event_to_json(event)), bool(getattr(event, "from_cache", False)),
             time.time()))

    def kept(self) -> Iterator[Kept]:
        """Every kept event, in the order first recorded."""
        rows = self._db.execute("SELECT query_id, event, replayed, attempts FROM kept_events ORDER BY rowid")
        for query_id, event, replayed, attempts in rows.fetchall():
            yield Kept(query_id=query_id, event=event_from_json(json.loads(event)), replayed=bool(replayed),
                       attempts=attempts)

    def record_retry(self, retry: Retry) -> None:
        self._db.execute("INSERT INTO retries VALUES (?, ?, ?, ?, ?)",
                         (retry.query_id, retry.lost, retry.reason, retry.documents, time.time()))

    def retries(self) -> list[Retry]:
        return [Retry(query_id=query_id, lost=lost, reason=reason, documents=documents) for query_id, lost, reason,
                documents in self._db.execute("SELECT query_id, lost, reason, documents FROM retries ORDER BY at")]

    def kept_by_query(self) -> dict[str, list[Event]]:
        found: dict[str, list[Event]] = {}
        for item in self.kept():
            found.setdefault(item.query_id, []).append(item.event)
        return found

    def close(self) -> None:
        self._db.close()
