"""Corpora the user uploads: checked by type, size and what indexing them would cost, archives unpacked without
leaving their folder, and each corpus opened once and shared by every session."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from search.corpus import JSONL_SUFFIXES, TABLE_SUFFIXES, CorpusError, load_corpus
from search.passages import count_passages
from search.progress import Progress, no_progress
from search.retrieval.first_stage import FirstStage, open_first_stage
from search.settings import RetrievalMethod, Settings

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
"""The most an uploaded corpus may hold: the file, or what an archive unpacks to (the one limit the README
states)."""
MAX_ARCHIVE_MEMBERS = 50_000
MAX_KEPT_CORPORA = 20
MAX_KEPT_BYTES = 2 * 1024**3
"""Uploaded corpora kept at once, and the bytes their folder may hold (archives count unpacked too)."""
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
            unpacked = sum(member.file_size for member in members)  # zipfile reads no member past its size
            if unpacked > MAX_UPLOAD_BYTES:
                raise UploadError(f"{archive.name}: unpacks to {unpacked:,} bytes; the limit is {MAX_UPLOAD_BYTES:,} "
                                  "(unpacked)")
            for member in members:
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise UploadError(f"{archive.name}: {member.filename!r} would be written outside the archive's "
                                      "folder")
            bundle.extractall(into)
    except zipfile.BadZipFile as error:
        raise UploadError(f"{archive.name}: not a readable zip archive ({error})") from None
    return _corpus_root(into)


def check_upload(upload: Path) -> None:
    """Refuse a file of a type or size that cannot be a corpus, naming it."""
    if upload.suffix.lower() not in UPLOAD_SUFFIXES:
        raise UploadError(f"{upload.name}: unsupported type; upload one of {', '.join(UPLOAD_SUFFIXES)} "
                          "(a .zip holding a BEIR folder or .txt/.md files)")
    size = upload.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{upload.name}: {size:,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")


def unpack_upload(upload: Path, into: Path) -> Path:
    """The corpus path for an uploaded file: a JSONL/CSV/TSV file as it is, or the folder a .zip (a BEIR
    folder, or .txt/.md files) unpacks to inside ``into``."""
    check_upload(upload)
    if upload.suffix.lower() != ARCHIVE_SUFFIX:
        return upload
    into.mkdir(parents=True, exist_ok=True)
    return _unzip(upload, into)


@dataclass(frozen=True, kw_only=True, slots=True)
class KeptUpload:
    """An uploaded corpus as kept on disk: its folder under the library's store, the name it is listed under and
    whether it was loaded without its bad records."""

    folder: Path
    name: str
    file: str
    skip_bad: bool

    @property
    def corpus_path(self) -> Path:
        unpacked = self.folder / UNPACKED
        return _corpus_root(unpacked) if unpacked.is_dir() else self.folder / self.file


UNPACKED = "unpacked"
META = "upload.json"


LOCK_SUFFIX = ".lock"


def _claim_folder(store: Path) -> tuple[Path, int]:
    """A new, empty upload folder, and the lock file beside it that this process holds (``flock``) while it writes
    the folder. The kernel frees the lock when the process dies, however it dies: a folder with no ``upload.json``
    whose lock is free was cut off (``_remove_cut_off``)."""
    descriptor, lock = tempfile.mkstemp(prefix="upload-", suffix=LOCK_SUFFIX, dir=store)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    folder = Path(lock.removesuffix(LOCK_SUFFIX))
    try:
        folder.mkdir()
    except BaseException:
        _release(folder, descriptor)
        raise
    return folder, descriptor


def _release(folder: Path, lock: int) -> None:
    """Done writing ``folder`` (kept, with its ``upload.json``, or removed): its lock file goes, then the lock."""
    Path(f"{folder}{LOCK_SUFFIX}").unlink(missing_ok=True)
    os.close(lock)


def _written_by_none(folder: Path) -> bool:
    """Whether no live process holds ``folder``'s lock (an upload kept before locks existed has no lock file)."""
    try:
        descriptor = os.open(f"{folder}{LOCK_SUFFIX}", os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def _remove_cut_off(store: Path) -> list[str]:
    """Remove each upload that a process stopped writing before it was kept (killed while indexing): it would
    never be listed, yet count against ``MAX_KEPT_BYTES``. Returns a line for each."""
    removed = []
    for folder in sorted(store.glob("upload-*")):
        # META is looked for after the lock: a writer keeps it before freeing the lock, so it cannot appear later
        if not folder.is_dir() or not _written_by_none(folder) or (folder / META).exists():
            continue
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        Path(f"{folder}{LOCK_SUFFIX}").unlink(missing_ok=True)
        removed.append(f"{folder}: removed an upload cut off before it was kept (no {META}; {size:,} bytes)")
    return removed


def _corpus_root(folder: Path) -> Path:
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def _as_uploaded(error: CorpusError, kept: Path, shown_as: str) -> CorpusError:
    """The error with every path inside the kept folder named as the user knows it: the uploaded file, or
    ``archive.zip/member`` for a file inside an archive, never where the server keeps it."""

    def named(path: Path) -> Path:
        try:
            inside = path.relative_to(kept)
        except ValueError:
            return path
        parts = inside.parts[1:] if inside.parts[:1] == (UNPACKED,) else ()
        return Path(shown_as, *parts)

    problems = [dataclasses.replace(problem, path=named(problem.path)) for problem in error.problems]
    summary = error.summary
    for folder in sorted({str(path) for path in kept.rglob("*")} | {str(kept)}, key=len, reverse=True):
        summary = summary.replace(folder, str(named(Path(folder))))
    return CorpusError(summary, problems, good=error.good)


class CorpusLibrary:
    """Opened corpora by display name; opening is slow (indexing), looking up is not. With a ``store`` folder,
    uploads are kept there and listed again after a restart (``restore``); they can be removed."""

    def __init__(self, settings: Settings, methods: Iterable[RetrievalMethod], store: Path | None = None) -> None:
        self.settings = settings
        self.methods = tuple(methods)
        self.store = store
        self._stages: dict[str, FirstStage] = {}
        self._kept: dict[str, KeptUpload] = {}
        self._lock = threading.Lock()

    def add(self, name: str, first_stage: FirstStage) -> str:
        """Register ``first_stage`` under ``name`` (numbered when taken); returns the name used."""
        with self._lock:
            return self._register(name, first_stage)

    def _register(self, name: str, first_stage: FirstStage) -> str:
        unique, number = name, 2
        while unique in self._stages:
            unique, number = f"{name} ({number})", number + 1
        self._stages[unique] = first_stage
        return unique

    def open(self, path: Path, name: str, progress: Progress = no_progress, *, skip_bad: bool = False) -> str:
        """Load and index the corpus at ``path``. Raises ``CorpusError`` with file and line on bad input."""
        settings = self.settings.replace(corpus=path, skip_bad=skip_bad)
        return self.add(name, open_first_stage(settings, self.methods, progress))

    def upload(self, upload: Path, name: str, progress: Progress = no_progress, *, skip_bad: bool = False) -> str:
        """Check, keep (in the store, when there is one) and open an uploaded corpus; returns its listed name.
        Raises ``UploadError`` or ``CorpusError``, naming the uploaded file (and the file inside an archive)."""
        if self.store is None:
            raise UploadError("uploads are not kept anywhere (no uploads folder)")
        check_upload(upload)
        self._check_room(upload)
        folder, lock = _claim_folder(self._store())
        try:
            try:
                shutil.copyfile(upload, folder / name)
                if upload.suffix.lower() == ARCHIVE_SUFFIX:
                    unpack_upload(folder / name, folder / UNPACKED)
                kept = KeptUpload(folder=folder, name=name, file=name, skip_bad=skip_bad)
                settings = self.settings.replace(corpus=kept.corpus_path, skip_bad=skip_bad)
                try:
                    self._check_cost(name, settings)
                    first_stage = open_first_stage(settings, self.methods, progress)
                except CorpusError as error:
                    raise _as_uploaded(error, folder, name) from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            with self._lock:
                listed = self._register(name, first_stage)
                self._kept[listed] = dataclasses.replace(kept, name=listed)
            (folder / META).write_text(json.dumps({"name": listed, "file": name, "skip_bad": skip_bad}),
                                       encoding="utf-8")
        finally:
            _release(folder, lock)
        return listed

    def _check_cost(self, name: str, settings: Settings) -> None:
        """Refuse, before any indexing, a corpus with more passages than ``upload_max_passages``: uploads are
        indexed one at a time, so a small file of many short documents would hold the indexer for everyone."""
        documents = load_corpus(settings.loading).documents
        passages, limit = count_passages(documents, settings.passages), self.settings.upload_max_passages
        if passages > limit:
            raise UploadError(f"{name}: {passages:,} passages to index ({len(documents):,} documents); an upload may "
                              f"have at most {limit:,} (upload_max_passages)")

    def _store(self) -> Path:
        assert self.store is not None
        self.store.mkdir(parents=True, exist_ok=True)
        return self.store

    def _check_room(self, upload: Path) -> None:
        with self._lock:
            count = len(self._kept)
        if count >= MAX_KEPT_CORPORA:
            raise UploadError(f"{upload.name}: {count} uploaded corpora are kept, the most there can be; remove one "
                              "first")
        used = sum(path.stat().st_size for path in self._store().rglob("*") if path.is_file())
        if used + upload.stat().st_size * 2 > MAX_KEPT_BYTES:
            raise UploadError(f"{upload.name}: the uploads folder holds {used:,} bytes and the limit is "
                              f"{MAX_KEPT_BYTES:,}; remove an uploaded corpus first")

    def restore_in_background(self, report: Callable[[str], None], progress: Progress = no_progress
                              ) -> threading.Thread:
        """``restore`` on a thread of its own, so that kept uploads (re-indexed when their index is not cached)
        never hold up serving: each is listed once it is open; ``report`` gets each problem."""

        def restore() -> None:
            for problem in self.restore(progress):
                report(problem)

        thread = threading.Thread(target=restore, name="restore-uploads", daemon=True)
        thread.start()
        return thread

    def restore(self, progress: Progress = no_progress) -> list[str]:
        """Open the uploads kept by earlier runs; returns a line for each that could not be opened (it stays on
        disk, unlisted), and for each upload that was cut off before it was kept (it is removed)."""
        if self.store is None or not self.store.is_dir():
            return []
        problems = _remove_cut_off(self.store)
        for meta in sorted(self.store.glob(f"*/{META}"), key=lambda path: path.stat().st_mtime):
            try:
                record = json.loads(meta.read_text(encoding="utf-8"))
                kept = KeptUpload(folder=meta.parent, name=str(record["name"]), file=str(record["file"]),
                                  skip_bad=bool(record["skip_bad"]))
                first_stage = open_first_stage(self.settings.replace(corpus=kept.corpus_path,
                                                                     skip_bad=kept.skip_bad), self.methods, progress)
            except (OSError, ValueError, KeyError, CorpusError) as error:
                problems.append(f"{meta.parent}: the uploaded corpus kept here could not be opened: {error}")
                continue
            with self._lock:
                listed = self._register(kept.name, first_stage)
                self._kept[listed] = dataclasses.replace(kept, name=listed)
        return problems

    def uploaded(self, name: str) -> bool:
        with self._lock:
            return name in self._kept

    def remove(self, name: str) -> None:
        """Forget an uploaded corpus and delete what was kept of it (not its cached indexes, which are keyed by
        content and pruned with the cache)."""
        with self._lock:
            kept = self._kept.pop(name, None)
            if kept is None:
                raise UploadError(f"{name}: not an uploaded corpus; only uploads can be removed")
            del self._stages[name]
        shutil.rmtree(kept.folder, ignore_errors=True)

    def get(self, name: str) -> FirstStage:
        """The corpus listed as ``name``; ``UploadError`` naming it when there is none (e.g. removed)."""
        with self._lock:
            try:
                return self._stages[name]
            except KeyError:
                raise UploadError(f"corpus {name!r}: no such corpus; choose one of "
                                  f"{', '.join(self._stages)}") from None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._stages)
