"""Escaped HTML for a first-stage ranking. Document text is untrusted: every piece of it goes through escape()."""

from __future__ import annotations

from html import escape

from search.retrieval.ranking import Candidate, Ranking

STAGE_LABELS = {"bm25": "BM25", "dense": "dense", "fused": "fused"}

CSS = """
.es-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 14px; margin: 8px 0; }
.es-card h4 { margin: 0 0 4px 0; }
.es-meta { font-size: 0.85em; color: var(--body-text-color-subdued); }
.es-badge { display: inline-block; border-radius: 4px; padding: 0 6px; margin-right: 6px;
            background: var(--background-fill-secondary); font-family: var(--font-mono); }
.es-notice { border-left: 4px solid var(--color-accent); padding: 6px 12px; margin: 6px 0; }
.es-notice.es-error { border-left-color: var(--error-border-color, #d33); }
.es-notice ul { margin: 4px 0 0 0; padding-left: 1.2em; font-family: var(--font-mono); font-size: var(--text-sm); }
.es-counter { font-size: var(--text-xs); color: var(--body-text-color-subdued); text-align: right; }
.es-counter.es-over { color: var(--error-text-color, #d33); font-size: var(--text-sm); font-weight: 600; }
"""


def _provenance(candidate: Candidate) -> str:
    return "".join(
        f'<span class="es-badge">{escape(STAGE_LABELS.get(stage, stage))} #{hit.rank} · {hit.score:.3f}</span>'
        for stage, hit in candidate.provenance.items()
    )


def render_candidate(candidate: Candidate) -> str:
    passage = candidate.passage
    return (
        f'<div class="es-card"><h4>{candidate.rank}. {escape(passage.title or passage.doc_id)}</h4>'
        f'<div class="es-meta">{escape(passage.passage_id)} {_provenance(candidate)}</div>'
        f"<p>{escape(passage.text)}</p></div>"
    )


def render_ranking(ranking: Ranking) -> str:
    if not ranking.candidates:
        return '<p class="es-notice">No passage matches this query.</p>'
    return "".join(render_candidate(candidate) for candidate in ranking.candidates)


def render_notice(text: str) -> str:
    return f'<div class="es-notice">{escape(text)}</div>'
