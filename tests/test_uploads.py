"""Uploaded corpora: type and size checks, archives unpacked without escaping their folder."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from conftest import write

from search import uploads
from search.uploads import UploadError, unpack_upload


def zipped(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)
    return path


def test_a_jsonl_file_is_used_as_it_is(tmp_path: Path) -> None:
    upload = write(tmp_path / "notes.jsonl", '{"_id": "a", "text": "x"}\n')
    assert unpack_upload(upload, tmp_path / "out") == upload


def test_a_zipped_beir_folder_unpacks_to_that_folder(tmp_path: Path) -> None:
    upload = zipped(tmp_path / "scifact.zip", {"scifact/corpus.jsonl": '{"_id": "a", "text": "x"}\n',
                                               "scifact/queries.jsonl": '{"_id": "q", "text": "y"}\n'})
    folder = unpack_upload(upload, tmp_path / "out")
    assert folder == tmp_path / "out" / "scifact" and (folder / "corpus.jsonl").is_file()


def test_an_archive_that_would_write_outside_its_folder_is_refused(tmp_path: Path) -> None:
    upload = zipped(tmp_path / "evil.zip", {"../../escaped.txt": "boo"})
    with pytest.raises(UploadError, match=r"evil.zip: '../../escaped.txt' would be written outside"):
        unpack_upload(upload, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_wrong_type_and_oversized_uploads_are_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    with pytest.raises(UploadError, match=r"report.pdf: unsupported type; upload one of .json, .jsonl"):
        unpack_upload(write(tmp_path / "report.pdf", "%PDF"), tmp_path / "out")
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(UploadError, match=r"big.jsonl: 26 bytes; the limit is 10"):
        unpack_upload(write(tmp_path / "big.jsonl", '{"_id": "a", "text": "xy"}'), tmp_path / "out")
    with pytest.raises(UploadError, match="not a readable zip archive"):
        unpack_upload(write(tmp_path / "broken.zip", "not a zip"), tmp_path / "out")
