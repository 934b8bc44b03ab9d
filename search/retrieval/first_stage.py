"""The first stage as one object: corpus loaded, split into passages, indexes opened (or built) and fused."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from search.corpus import Corpus, Passage, load_corpus
from search.passages import fingerprint_passages, split_documents
from search.progress import Progress, no_progress
from search.retrieval.bm25 import BM25Retriever
from search.retrieval.dense import DenseRetriever, encoder_identity, load_encoder
from search.retrieval.fusion import FusedRetriever
from search.retrieval.ranking import Ranking, Retriever
from search.retrieval.store import IndexStore
from search.settings import BM25Settings, RetrievalMethod, Settings


def _dense_structure(passage_count: int, settings: Settings) -> str:
    dense = settings.dense
    if passage_count <= dense.exact_max_passages:
        return "flat"
    return f"hnsw(m={dense.hnsw_m},ef_construction={dense.hnsw_ef_construction})"


def _index_shaping(bm25: BM25Settings) -> dict[str, object]:
    """The BM25 settings stored in the index; the scoring backend is chosen again at every load."""
    return {name: value for name, value in dataclasses.asdict(bm25).items() if name != "bm25_backend"}


def open_retrievers(passages: Sequence[Passage], settings: Settings, methods: Iterable[RetrievalMethod],
                    progress: Progress = no_progress) -> dict[RetrievalMethod, Retriever]:
    """One retriever per method; each index is opened once even when several methods share it."""
    wanted = set(methods)
    store = IndexStore(root=settings.index_dir)
    corpus_key = fingerprint_passages(passages)
    opened: dict[str, Retriever] = {}
    if wanted & {"bm25", "hybrid"}:
        opened["bm25"] = store.open(
            "bm25",
            {"corpus": corpus_key, "settings": _index_shaping(settings.bm25),
             "bm25s": importlib.metadata.version("bm25s")},
            build=lambda: BM25Retriever.build(passages, settings.bm25, progress),
            save=BM25Retriever.save,
            load=lambda folder: BM25Retriever.load(folder, passages, settings.bm25),
        )
    if wanted & {"dense", "hybrid"}:
        opened["dense"] = store.open(
            "dense",
            {"corpus": corpus_key, "encoder": encoder_identity(settings.dense.encoder),
             "structure": _dense_structure(len(passages), settings)},
            build=lambda: _dense_build(passages, settings, progress),
            save=DenseRetriever.save,
            load=lambda folder: DenseRetriever.load(folder, passages, settings.dense),
        )
    if "hybrid" in wanted:
        opened["hybrid"] = FusedRetriever([opened["bm25"], opened["dense"]], settings.fusion)
    return {method: opened[method] for method in wanted}


def _dense_build(passages: Sequence[Passage], settings: Settings, progress: Progress) -> DenseRetriever:
    """The dense index, its passages embedded here or, with ``--ray``, on the cluster."""
    if not settings.cluster.ray:
        return DenseRetriever.build(passages, settings.dense, progress)
    from search.retrieval.embedding import embed_on_ray

    embeddings = embed_on_ray([passage.contents for passage in passages], settings.dense, settings.cluster, progress)
    return DenseRetriever.from_embeddings(load_encoder(settings.dense.encoder), embeddings, passages, settings.dense,
                                          progress)


@dataclass(frozen=True, kw_only=True, slots=True)
class FirstStage:
    """Everything needed to answer queries over one corpus with the configured retrievers."""

    corpus: Corpus
    passages: tuple[Passage, ...]
    retrievers: Mapping[RetrievalMethod, Retriever]
    method: RetrievalMethod

    def search(self, query: str, k: int, method: RetrievalMethod | None = None) -> Ranking:
        """The top ``k`` documents for ``query``, each by its best passage, ranked as documents
        (``Retriever.search_documents``): what is shown, exported and reranked."""
        return self.retrievers[method or self.method].search_documents([query], k)[0]


def open_first_stage(settings: Settings, methods: Iterable[RetrievalMethod] | None = None,
                     progress: Progress = no_progress) -> FirstStage:
    """Load the corpus and open its indexes, building what is missing. Raises ``CorpusError`` on bad input."""
    corpus = load_corpus(settings.loading)
    passages = split_documents(corpus.documents, settings.passages)
    methods = tuple(methods) if methods is not None else (settings.fusion.method,)
    retrievers = open_retrievers(passages, settings, methods, progress)
    return FirstStage(corpus=corpus, passages=passages, retrievers=retrievers, method=methods[0])
