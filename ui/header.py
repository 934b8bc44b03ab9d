"""The page's one-line header: the title, then model · engine · device, with the notices a click away (the demo
model's warning, how every score is measured, or why no model is loaded)."""

from __future__ import annotations

from html import escape

from search.pipeline import LoadedModel

HEADER_CSS = """
.es-header { display: flex; gap: 4px 10px; align-items: baseline; flex-wrap: wrap; }
.es-header h1 { font-size: var(--text-xl); margin: 0; font-weight: 700; white-space: nowrap; }
.es-header .es-line { font-size: var(--text-sm); color: var(--body-text-color-subdued); overflow-wrap: anywhere; }
.es-header details { display: inline-block; font-size: var(--text-sm); }
.es-header details > summary { cursor: pointer; list-style: none; display: inline-block; border-radius: 10px;
                               padding: 0 8px; border: 1px solid var(--border-color-primary); white-space: nowrap; }
.es-header details > summary::-webkit-details-marker { display: none; }
.es-header details.es-warn > summary { background: #fff3cd; color: #664d03; border-color: #ffda6a; }
.dark .es-header details.es-warn > summary { background: #3d2f00; color: #ffda6a; }
.es-header details[open] { display: block; flex-basis: 100%; }
.es-header details[open] > div { margin: 4px 0; max-width: 70em; }
@media (max-width: 480px) {
  .es-header { gap: 2px 6px; }
  .es-header h1 { font-size: var(--text-lg); }
  .es-header .es-line, .es-header details { font-size: var(--text-xs); }
  .es-header details > summary { padding: 0 6px; }
}
"""
"""Each badge stays whole (the line wraps between badges, never inside one); on a phone the header is compact, so
that the first result card starts on the first screen."""

MEASURED = (
    "Every score is measured, never made up: rank1's P(true) from its two verdict tokens; the assessor's grade "
    "distribution from its four grade tokens (UMBRELA's reference reads a digit from the text and silently gives "
    "0 when there is none; here the expected grade Σ g·p(g) ranks); ReasonRank gives ranks only, read from its "
    "answer, never from digits in its reasoning. \"forced\" marks a judgment the model did not give on its own, "
    "read in one extra step after closing its reasoning; a document with nothing measurable is marked failed. "
    "Evidence shading is measured too: each sentence removed in turn, the model's reasoning held fixed, the verdict "
    "read again; the shade is how far the score moves (\"≈\" where long passages are estimated from random "
    "removals)."
)
DEMO = (
    "Demo model: SmolLM2-135M runs offline so that every part of the page works, but it is not a trained reranker "
    "and its verdicts are not meaningful. For real rank1 judgments run on a GPU with vLLM (rank1-7b is chosen "
    "automatically there), or point --endpoints at an OpenAI-compatible server running a rank1 model."
)


def _badge(label: str, text: str, *, warn: bool = False) -> str:
    return (f'<details class="es-badge-note{" es-warn" if warn else ""}"><summary>{escape(label)}</summary>'
            f"<div>{escape(text)}</div></details>")


def model_line(loaded: LoadedModel | None, problem: str = "") -> str:
    """model · engine · device, and its badges."""
    if loaded is None:
        return ('<span class="es-line">no reasoning reranker</span>'
                + _badge("why", f"The reasoning reranker is not available: {problem} The first-stage results still "
                                "work.", warn=True))
    engine = loaded.engine
    parts = [loaded.model.name or engine.model, engine.kind, engine.device or "remote"]
    badges = _badge("demo model: verdicts not meaningful", DEMO, warn=True) if loaded.model.is_demo else ""
    if (failure := engine.unhealthy()) is not None:
        badges += _badge("engine failed", f"{failure}. Reranking fails until the model is loaded again; the "
                                          "first-stage results still work.", warn=True)
    elif (problem := engine.unavailable()) is not None:
        badges += _badge("no server reachable", f"{problem}; retrying every {engine.retry_every_s:g} s. Reranking "
                                                "works as soon as a server answers.", warn=True)
    measured = _badge("how scores are measured", MEASURED)
    return f'<span class="es-line">{escape(" · ".join(parts))}</span>{badges}{measured}'


def render_header(loaded: LoadedModel | None, problem: str = "") -> str:
    return f'<div class="es-header"><h1>Explainable Search</h1>{model_line(loaded, problem)}</div>'
