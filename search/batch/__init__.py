"""Batch reranking of first-stage run files: resumable, observable, on one engine or many servers.

``load_batch`` reads what to rerank, ``BatchStore`` keeps the state in the output folder, ``run_batch``
reranks what is not yet done, and ``view_batch`` / ``write_outputs`` turn the state into a run, traces and a
report. ``python -m search rerank-run`` wires them together; the Evaluation tab reads the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_exports

if TYPE_CHECKING:
    from search.batch.inputs import BatchInputs, BatchSpec, load_batch
    from search.batch.report import BatchView, comparison, view_batch, write_outputs
    from search.batch.runner import BatchProgress, run_batch
    from search.batch.store import BatchStore, BatchStoreError

_EXPORTS = {
    "search.batch.inputs": ("BatchInputs", "BatchSpec", "load_batch"),
    "search.batch.report": ("BatchView", "comparison", "view_batch", "write_outputs"),
    "search.batch.runner": ("BatchProgress", "run_batch"),
    "search.batch.store": ("BatchStore", "BatchStoreError"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "BatchInputs", "BatchProgress", "BatchSpec", "BatchStore", "BatchStoreError", "BatchView", "comparison",
    "load_batch", "run_batch", "view_batch", "write_outputs",
]
