"""Built indexes kept on disk, keyed by a fingerprint of everything that shaped them.

A second start on the same corpus and settings loads instead of building; any change to the corpus, the
encoder or an index setting gives a new key and so a fresh build. A folder is complete once its manifest
is written, and it is moved into place whole, so an interrupted build is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

INDEX_FORMAT = 1
MANIFEST = "manifest.json"

Index = TypeVar("Index")
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class IndexStore:
    root: Path

    def folder(self, kind: str, key_parts: Mapping[str, object]) -> Path:
        """Where the index of ``kind`` built from ``key_parts`` lives."""
        text = json.dumps({"kind": kind, "format": INDEX_FORMAT, **key_parts}, sort_keys=True, default=str)
        return self.root / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"

    def open(self, kind: str, key_parts: Mapping[str, object], *, build: Callable[[], Index],
             save: Callable[[Index, Path], None], load: Callable[[Path], Index]) -> Index:
        """Load the stored index for these parts, or build, store and return it."""
        folder = self.folder(kind, key_parts)
        if (folder / MANIFEST).is_file():
            try:
                return load(folder)
            except Exception:  # a damaged folder is rebuilt rather than trusted
                log.warning("stored %s index at %s could not be read; rebuilding it", kind, folder, exc_info=True)
        index = build()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=self.root))
        try:
            save(index, staging)
            (staging / MANIFEST).write_text(json.dumps({"kind": kind, **key_parts}, indent=2, default=str))
            shutil.rmtree(folder, ignore_errors=True)
            staging.replace(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return index
