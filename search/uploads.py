"""Corpora the user uploads: checked by type and size, archives unpacked without leaving their folder, and
each corpus opened once and shared by every session."""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from search.corpus import JSONL_SUFFIXES, TABLE_SUFFIXES
from search.progress import Progress, no_progress
from search.retrieval.first_stage import FirstStage, open_first_stage
from search.settings import RetrievalMethod, Settings

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
MAX_UNPACKED_BYTES = 500 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 50_000
ARCHIVE_SUFFIX = ".zip"
UPLOAD_SUFFIXES = (*sorted(JSONL_SUFFIXES), *sorted(TABLE_SUFFIXES), ARCHIVE_SUFFIX)


class UploadError(ValueError):
    """An upload that cannot be a corpus; the message names the file and what is wrong."""


def _unzip(archive: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise UploadError(f"{archive.name}: {len(members)} files; the limit is {MAX_ARCHIVE_MEMBERS}")
            unpacked = sum(member.file_size for member in members)
            if unpacked > MAX_UNPACKED_BYTES:
                raise UploadError(f"{archive.name}: unpacks to {unpacked:,} bytes; the limit is "
                                  f"{MAX_UNPACKED_BYTES:,}")
            for member in members:
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise UploadError(f"{archive.name}: {member.filename!r} would be written outside the archive's "
                                      "folder")
            bundle.extractall(into)
    except zipfile.BadZipFile as error:
        raise UploadError(f"{archive.name}: not a readable zip archive ({error})") from None
    entries = [entry for entry in into.iterdir() if not entry.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def unpack_upload(upload: Path, into: Path) -> Path:
    """The corpus path for an uploaded file: a JSONL/CSV/TSV file as it is, or the folder a .zip (a BEIR
    folder, or .txt/.md files) unpacks to inside ``into``."""
    suffix = upload.suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadError(f"{upload.name}: unsupported type; upload one of {', '.join(UPLOAD_SUFFIXES)} "
                          "(a .zip holding a BEIR folder or .txt/.md files)")
    size = upload.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{upload.name}: {size:,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    if suffix != ARCHIVE_SUFFIX:
        return upload
    into.mkdir(parents=True, exist_ok=True)
    return _unzip(upload, into)


class CorpusLibrary:
    """Opened corpora by display name; opening is slow (indexing), looking up is not."""

    def __init__(self, settings: Settings, methods: Iterable[RetrievalMethod]) -> None:
        self.settings = settings
        self.methods = tuple(methods)
        self._stages: dict[str, FirstStage] = {}
        self._lock = threading.Lock()

    def add(self, name: str, first_stage: FirstStage) -> str:
        """Register ``first_stage`` under ``name`` (numbered when taken); returns the name used."""
        with self._lock:
            unique, number = name, 2
            while unique in self._stages:
                unique, number = f"{name} ({number})", number + 1
            self._stages[unique] = first_stage
            return unique

    def open(self, path: Path, name: str, progress: Progress = no_progress) -> str:
        """Load and index the corpus at ``path``. Raises ``CorpusError`` with file and line on bad input."""
        first_stage = open_first_stage(self.settings.replace(corpus=path), self.methods, progress)
        return self.add(name, first_stage)

    def get(self, name: str) -> FirstStage:
        with self._lock:
            return self._stages[name]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._stages)
