"""PyTerrier: ``ReasoningTransformer``, a reranker stage (``bm25 >> get_text >> reranker``) that reranks each
query's results frame and adds ``reasoning``, ``status``, ``failure`` and the reranker's own columns (rank1's
``p_true`` and ``verdict``, the assessor's ``grade`` and ``expected_grade``, …); ``score`` is the
``relevance_score`` and ``rank`` follows it. No Java is needed for the stage itself.

    from search.integrations.pyterrier import ReasoningTransformer

    pipeline = bm25 % 20 >> pt.text.get_text(dataset, "text") >> ReasoningTransformer(open_reranker("rank1-7b"))
"""

from __future__ import annotations

from typing import Any

from search.integrations.source import RerankOptions, Reranks, reranks, result_metadata

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("search.integrations.pyterrier needs PyTerrier: pip install 'explainable-search[pyterrier]'"
                      ) from error

ADDED = ("reasoning", "status", "failure")
"""Columns every reranked frame gains (besides the reranker's own)."""


class ReasoningTransformer(pt.Transformer):
    """Reranks a results frame (``qid``, ``query``, ``docno`` and the text in ``text_field``) per query, best first;
    a document that failed scores 0 and says why in ``failure``."""

    def __init__(self, reranker: Reranks | str, *, text_field: str = "text", options: RerankOptions | None = None
                 ) -> None:
        self.reranker = reranks(reranker)
        self.text_field = text_field
        self.options = options or RerankOptions()

    def __repr__(self) -> str:
        return f"ReasoningTransformer({self.reranker!r}, text_field={self.text_field!r}, options={self.options!r})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=["query", self.text_field])
        rows: list[dict[str, Any]] = []
        for _, group in inp.groupby("qid", sort=False):
            given = group.to_dict("records")
            results = self.reranker.rerank(given[0]["query"], [str(row[self.text_field]) for row in given],
                                           **self.options.asdict())
            for result in results:
                added = result_metadata(result)
                rows.append({**given[result.index], "score": added.pop("relevance_score"), **added})
        if not rows:
            return inp.assign(**{name: pd.Series(dtype=object) for name in ADDED})
        return pt.model.add_ranks(pd.DataFrame(rows))
