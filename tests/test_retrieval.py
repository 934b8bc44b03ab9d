from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from search.corpus import Document, Passage
from search.passages import split_documents
from search.retrieval.bm25 import BM25Retriever
from search.retrieval.dense import DenseRetriever
from search.retrieval.first_stage import FirstStage, open_first_stage, open_retrievers
from search.retrieval.fusion import fuse, reciprocal_rank_fusion, weighted_fusion
from search.retrieval.ranking import Candidate, Hit, Ranking, ranking_from_scores, top_documents
from search.retrieval.store import IndexStore
from search.settings import FusionSettings, PassageSettings, Settings


def passage(passage_id: str) -> Passage:
    return Passage(passage_id=passage_id, doc_id=passage_id, index=0, title="", text=passage_id)


def top_ids(first_stage: FirstStage, query: str, method: str, k: int = 5) -> list[str]:
    return [candidate.passage.doc_id for candidate in first_stage.search(query, k, method).candidates]


def test_bm25_finds_keyword_matches_with_stemming(first_stage: FirstStage) -> None:
    assert top_ids(first_stage, "sourdough starters feeding", "bm25")[0] == "cook-sourdough-starter"


def test_bm25_returns_nothing_for_unknown_or_stopword_queries(first_stage: FirstStage) -> None:
    assert first_stage.search("zzyzx qwertyuiop", 5, "bm25").candidates == ()
    assert first_stage.search("the and of", 5, "bm25").candidates == ()


def test_dense_finds_meaning_without_shared_words(first_stage: FirstStage) -> None:
    query = "stopping a throbbing head without pills"
    assert all(doc_id.startswith("med-migraine") for doc_id in top_ids(first_stage, query, "dense", 2))
    assert not top_ids(first_stage, query, "bm25", 1)[0].startswith("med-migraine")


def test_hybrid_keeps_provenance_of_both_retrievers(first_stage: FirstStage) -> None:
    ranking = first_stage.retrievers["hybrid"].search("does coffee make it hard to fall asleep", 10)
    assert ranking.stage == "fused"
    assert [candidate.rank for candidate in ranking.candidates] == list(range(1, 11))
    scores = [candidate.score for candidate in ranking.candidates]
    assert scores == sorted(scores, reverse=True)
    top = ranking.candidates[0]
    assert set(top.provenance) == {"bm25", "dense", "fused"}
    expected = sum(1 / (60 + top.provenance[stage].rank) for stage in ("bm25", "dense"))
    assert top.score == pytest.approx(expected)


def test_documents_are_ranked_by_their_best_passage_and_counted_as_documents() -> None:
    def hit(doc_id: str, index: int, bm25: int, dense: int | None, fused: int) -> Candidate:
        places = {"bm25": Hit(rank=bm25, score=1.0 / bm25), "fused": Hit(rank=fused, score=1.0 / fused)}
        if dense is not None:
            places["dense"] = Hit(rank=dense, score=1.0 / dense)
        return Candidate(passage=Passage(passage_id=f"{doc_id}#{index}", doc_id=doc_id, index=index, title="",
                                         text="t"), stage="fused", provenance=places)

    ranking = Ranking(query="q", stage="fused", candidates=(
        hit("a", 0, 1, 3, 1), hit("a", 1, 2, 1, 2), hit("b", 0, 4, None, 3), hit("c", 0, 3, 2, 4)))
    documents = top_documents(ranking, 2)
    assert [candidate.passage.passage_id for candidate in documents.candidates] == ["a#0", "b#0"]
    a, b = documents.candidates
    # a's best bm25 passage is 1st, its best dense passage (a#1) is 1st; b is the third bm25 document (after c)
    assert {stage: hit.rank for stage, hit in a.provenance.items()} == {"bm25": 1, "dense": 1, "fused": 1}
    assert {stage: hit.rank for stage, hit in b.provenance.items()} == {"bm25": 3, "fused": 2}
    assert a.provenance["dense"].score == 1.0  # the score of a's best dense passage, a#1


@pytest.fixture(scope="module")
def giant_document(tmp_path_factory: pytest.TempPathFactory) -> FirstStage:
    """A document of 440 passages about sea levels and 7 short ones that mention them, among 100 unrelated ones."""
    folder = tmp_path_factory.mktemp("giant")
    giant = " ".join(f"Sea levels rise as oceans warm and glaciers melt, part {number}." for number in range(800))
    small = [f"A note on coastal flooding {number}: the sea level rose here as the ocean warmed."
             for number in range(7)]
    unrelated = [f"Recipe {number}: knead the bread dough and let it prove overnight." for number in range(100)]
    lines = [{"_id": "giant", "text": giant}] + [{"_id": f"small-{n}", "text": text} for n, text in enumerate(small)]
    lines += [{"_id": f"other-{n}", "text": text} for n, text in enumerate(unrelated)]
    corpus = folder / "docs.jsonl"
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = Settings().replace(corpus=corpus, index_dir=folder / "indexes", passage_window=20, passage_overlap=0)
    return open_first_stage(settings, ["hybrid", "bm25", "dense"])


@pytest.mark.parametrize("method", ["bm25", "dense", "hybrid"])
def test_one_giant_document_does_not_crowd_out_the_others(method: str, giant_document: FirstStage) -> None:
    """The top 8 documents are 8 documents, found by searching deeper than the giant document's passages."""
    assert sum(passage.doc_id == "giant" for passage in giant_document.passages) == 440
    ranking = giant_document.search("What causes sea levels to rise?", 8, method)
    doc_ids = [candidate.passage.doc_id for candidate in ranking.candidates]
    assert len(set(doc_ids)) == 8 and "giant" in doc_ids
    if method == "bm25":  # only these 8 share a word with the query
        assert set(doc_ids) == {"giant", *(f"small-{n}" for n in range(7))}
    for candidate in ranking.candidates:
        assert candidate.rank == doc_ids.index(candidate.passage.doc_id) + 1
        assert all(1 <= hit.rank <= len(giant_document.corpus.documents) for hit in candidate.provenance.values())


def test_reciprocal_rank_fusion_by_hand() -> None:
    first = ranking_from_scores("q", "bm25", [(passage("a"), 9.0), (passage("b"), 5.0)])
    second = ranking_from_scores("q", "dense", [(passage("b"), 0.9), (passage("c"), 0.8)])
    assert reciprocal_rank_fusion([first, second], k=1) == {"a": 1 / 2, "b": 1 / 3 + 1 / 2, "c": 1 / 3}
    fused = fuse("q", [first, second], FusionSettings(rrf_k=1), weights=[0.5, 0.5])
    assert [candidate.passage.passage_id for candidate in fused.candidates] == ["b", "a", "c"]
    assert set(fused.candidates[2].provenance) == {"dense", "fused"}


def test_weighted_fusion_normalises_scores() -> None:
    first = ranking_from_scores("q", "bm25", [(passage("a"), 10.0), (passage("b"), 0.0)])
    second = ranking_from_scores("q", "dense", [(passage("b"), 0.9), (passage("a"), 0.5)])
    assert weighted_fusion([first, second], [0.25, 0.75]) == {"a": 0.25, "b": 0.75}
    fused = fuse("q", [first, second], FusionSettings(fusion="weighted", bm25_weight=0.25), weights=[0.25, 0.75])
    assert [candidate.passage.passage_id for candidate in fused.candidates] == ["b", "a"]


def test_store_builds_once_then_loads(tmp_path: Path) -> None:
    store = IndexStore(root=tmp_path)
    calls: list[str] = []

    def open_index(key: str) -> str:
        return store.open("kind", {"key": key}, build=lambda: calls.append("build") or key,
                          save=lambda value, folder: (folder / "value").write_text(value),
                          load=lambda folder: calls.append("load") or (folder / "value").read_text())

    assert open_index("one") == "one"
    assert open_index("one") == "one"
    assert open_index("two") == "two"
    assert calls == ["build", "load", "build"]
    (store.folder("kind", {"key": "one"}) / "value").unlink()
    assert open_index("one") == "one"
    assert calls[-1] == "build"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_second_open_loads_from_disk_and_changed_corpus_rebuilds(tmp_path: Path, monkeypatch) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"_id": "a", "text": "solar power"}\n{"_id": "b", "text": "wind power"}\n')
    settings = Settings().replace(corpus=corpus, index_dir=tmp_path / "indexes")
    builds: list[str] = []
    for retriever in (BM25Retriever, DenseRetriever):
        original = retriever.build.__func__
        monkeypatch.setattr(retriever, "build", classmethod(
            lambda cls, *args, original=original, **kwargs: builds.append(cls.name) or original(cls, *args, **kwargs)))
    open_first_stage(settings, ["hybrid"])
    assert builds == ["bm25", "dense"]
    reopened = open_first_stage(settings, ["hybrid"])
    assert builds == ["bm25", "dense"]
    assert reopened.search("solar", 1).candidates[0].passage.doc_id == "a"
    corpus.write_text('{"_id": "a", "text": "solar power"}\n{"_id": "c", "text": "tidal power"}\n')
    assert open_first_stage(settings, ["hybrid"]).search("tidal", 1).candidates[0].passage.doc_id == "c"
    assert builds == ["bm25", "dense"] * 2


def test_hnsw_above_the_exact_limit_agrees_with_exact_search(first_stage: FirstStage, settings: Settings) -> None:
    small_limit = settings.replace(exact_max_passages=100)
    approximate = open_retrievers(first_stage.passages, small_limit, ["dense"])["dense"]
    assert type(approximate._index).__name__ == "IndexHNSWFlat"
    queries = [query.text for query in first_stage.corpus.queries]
    exact_ids, approx_ids = (
        [{candidate.passage.passage_id for candidate in ranking.candidates} for ranking in rankings]
        for rankings in (first_stage.retrievers["dense"].search_many(queries, 10), approximate.search_many(queries, 10))
    )
    overlap = sum(len(a & b) for a, b in zip(exact_ids, approx_ids, strict=True)) / (10 * len(queries))
    assert overlap >= 0.95


def test_split_passages_map_back_to_their_document(tmp_path: Path) -> None:
    long_text = " ".join(["volcano"] * 5 + ["filler"] * 40 + ["glacier"] * 5)
    settings = Settings().replace(passage_window=20, passage_overlap=5, index_dir=tmp_path)
    passages = split_documents([Document(doc_id="long", title="", text=long_text)], settings.passages)
    assert len(passages) == 3
    bm25 = open_retrievers(passages, settings, ["bm25"])["bm25"]
    ranking = bm25.search("glacier", 5)
    assert ranking.candidates[0].passage.passage_id == "long#3"
    assert ranking.documents()[0][0] == "long"
    assert dataclasses.replace(PassageSettings(), passage_window=0).passage_window == 0


def test_numba_and_numpy_backends_rank_alike(first_stage: FirstStage, settings: Settings) -> None:
    queries = [query.text for query in first_stage.corpus.queries]
    rankings = {
        backend: open_retrievers(first_stage.passages, settings.replace(bm25_backend=backend), ["bm25"])["bm25"]
        .search_many(queries, 10)
        for backend in ("numpy", "numba")
    }
    for numpy_ranking, numba_ranking in zip(rankings["numpy"], rankings["numba"], strict=True):
        numpy_scores, numba_scores = ({c.passage.passage_id: c.score for c in ranking.candidates}
                                      for ranking in (numpy_ranking, numba_ranking))
        assert sorted(numpy_scores.values()) == pytest.approx(sorted(numba_scores.values()))
        shared = numpy_scores.keys() & numba_scores.keys()  # equal scores may be cut at k in either order
        assert [numpy_scores[key] for key in shared] == pytest.approx([numba_scores[key] for key in shared])
