"""A batch's state on disk (``OUT/batch.sqlite3``), written as it goes, so that a killed run resumes where it
stopped and the Evaluation tab can read a running batch.

It holds the batch's fingerprint, each judgment's outcome by (query, document), each ReasonRank query's
windows and final order, and the judgment cache (rank1's judgments and ReasonRank's window responses; the
same table and keys as the app's), so whatever the killed process finished but had not yet recorded is
replayed, not reasoned again.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from search.batch.inputs import BatchInputs, BatchSpec
from search.corpus import Qrels
from search.rerank.cache import JudgmentCache
from search.rerank.events import Failed, Judged, ListwiseEvent, RankingDone, WindowRanked, WindowStarted

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
CREATE TABLE IF NOT EXISTS outcomes (
    query_id TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('judged', 'failed')),
    event TEXT NOT NULL,
    replayed INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    updated REAL NOT NULL,
    PRIMARY KEY (query_id, doc_id)
);
CREATE TABLE IF NOT EXISTS rankings (
    query_id TEXT PRIMARY KEY,
    events TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


def batch_folders(root: Path) -> list[str]:
    """The names of the folders directly under ``root`` that hold a batch, sorted."""
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir() if (child / STATE_FILE).is_file())


class BatchStoreError(ValueError):
    """The output folder cannot hold this batch; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredQuery:
    query_id: str
    text: str
    instruction: str
    first_stage: tuple[tuple[str, float], ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    query_id: str
    event: Judged | Failed
    replayed: bool
    """The judgment came from the cache: a process before this one computed it."""
    attempts: int


def _listwise_event(record: dict) -> ListwiseEvent:
    kind = record.pop("type")
    cls = {"window_started": WindowStarted, "window_ranked": WindowRanked, "done": RankingDone}[kind]
    return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in record.items()})


class BatchStore:
    """One batch's state. ``open`` creates it, or reopens it when the fingerprint matches."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

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
            raise BatchStoreError(
                f"--out {out} holds a batch with other settings ({'; '.join(stored.differences(spec))}): run it "
                "with the same arguments to resume it, or give another --out")
        if qrels is not None:
            kept = {item.query.query_id: dict(qrels[item.query.query_id]) for item in inputs.queries
                    if item.query.query_id in qrels}
            store._db.execute("UPDATE batch SET qrels = ?", (json.dumps(kept),))
        return store

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

    def record(self, query_id: str, event: Judged | Failed) -> None:
        """Keep one judgment's outcome (committed before this returns); a failure counts its attempts and is
        replaced when a later attempt succeeds."""
        status = "judged" if isinstance(event, Judged) else "failed"
        replayed = isinstance(event, Judged) and event.from_cache
        self._db.execute(
            "INSERT INTO outcomes VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT (query_id, doc_id) DO UPDATE SET "
            "status = excluded.status, event = excluded.event, replayed = excluded.replayed, "
            "attempts = attempts + 1, updated = excluded.updated",
            (query_id, event.doc_id, status, json.dumps(dataclasses.asdict(event)), replayed, time.time()))

    def outcomes(self) -> Iterator[Outcome]:
        rows = self._db.execute("SELECT query_id, status, event, replayed, attempts FROM outcomes ORDER BY rowid")
        for query_id, status, event, replayed, attempts in rows.fetchall():
            cls = Judged if status == "judged" else Failed
            yield Outcome(query_id=query_id, event=cls(**json.loads(event)), replayed=bool(replayed),
                          attempts=attempts)

    def record_ranking(self, query_id: str, events: list[ListwiseEvent]) -> None:
        """Keep a ReasonRank query's windows and final order (the reasoning deltas are in each window's
        ``WindowRanked``)."""
        records = [{"type": event.type, **dataclasses.asdict(event)} for event in events
                   if isinstance(event, WindowStarted | WindowRanked | RankingDone)]
        self._db.execute("INSERT OR REPLACE INTO rankings VALUES (?, ?, ?)",
                         (query_id, json.dumps(records), time.time()))

    def rankings(self) -> dict[str, list[ListwiseEvent]]:
        rows = self._db.execute("SELECT query_id, events FROM rankings ORDER BY rowid").fetchall()
        return {query_id: [_listwise_event(record) for record in json.loads(events)] for query_id, events in rows}

    def close(self) -> None:
        self._db.close()
