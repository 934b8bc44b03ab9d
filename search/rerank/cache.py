"""Judgments on disk (SQLite), so that a repeated query replays at once instead of reasoning again: pointwise
judgments (rank1's, the assessor's) and ReasonRank's window responses.

A judgment is keyed by everything that determines it: the model, the prompt recipe version, the reasoning
budget and the exact prompt (which holds the query, the instruction or template, and the passage text).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    recipe TEXT NOT NULL,
    budget INTEGER NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    judgment TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def judgment_key(*, model: str, recipe: str, budget: int, prompt: str) -> str:
    prompt_digest = hashlib.sha256(prompt.encode()).hexdigest()
    return hashlib.sha256(json.dumps([model, recipe, budget, prompt_digest]).encode()).hexdigest()


class JudgmentCache:
    """A thread-safe SQLite store of judgments as JSON data, by key (failures are never cached: they may pass
    next time)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)

    def get(self, key: str) -> dict[str, Any] | None:
        """Any recipe's stored output (a pointwise judgment, a ReasonRank window's response) as JSON data."""
        with self._lock:
            row = self._db.execute("SELECT judgment FROM judgments WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, record: dict[str, Any], *, model: str, recipe: str, budget: int, prompt: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, recipe, budget, hashlib.sha256(prompt.encode()).hexdigest(), json.dumps(record),
                 time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
