"""Corpus embedding on a Ray cluster (``index --ray``, and the app's first start on a corpus with ``--ray``): the
passages go through Ray Data's ``map_batches`` to encoder workers on the cluster's accelerators (one per GPU; one
per node without GPUs), and the vectors come back here, in passage order, for FAISS. The index is the one a local
build makes: the same fingerprint (how it was embedded is not part of it), the same vectors within float
tolerance."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from search.cluster import alive_nodes, connect
from search.progress import Progress, no_progress
from search.settings import ClusterSettings, DenseSettings

STAGE = "encoding passages on Ray"


class _Encoder:
    """One encoder per Ray Data worker, on its GPU when it has one."""

    def __init__(self, name: str, batch_size: int) -> None:
        import torch

        from search.retrieval.dense import load_encoder

        self.encoder = load_encoder(name, device="cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from search.retrieval.dense import encode_texts

        return {"row": batch["row"], "vector": encode_texts(self.encoder, list(batch["text"]), self.batch_size)}


def embed_on_ray(texts: Sequence[str], settings: DenseSettings, cluster: ClusterSettings,
                 progress: Progress = no_progress) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, one row each in their order, computed on the cluster."""
    ray = connect(cluster.ray)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts the passages
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = cluster.ray_workers or gpus or len(alive_nodes())
    per_worker: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    rows = ray.data.from_items([{"row": row, "text": text} for row, text in enumerate(texts)])
    vectors = rows.map_batches(_Encoder, fn_constructor_kwargs={"name": settings.encoder,
                                                                "batch_size": settings.encode_batch_size},
                               batch_size=settings.encode_batch_size * 8, concurrency=workers, **per_worker)
    embeddings: np.ndarray | None = None
    done = 0
    progress(STAGE, 0, len(texts))
    for batch in vectors.iter_batches(batch_format="numpy", batch_size=None):
        if embeddings is None:
            embeddings = np.empty((len(texts), batch["vector"].shape[1]), dtype=np.float32)
        embeddings[batch["row"]] = batch["vector"]
        done += len(batch["row"])
        progress(STAGE, done, len(texts))
    if embeddings is None or done != len(texts):
        raise RuntimeError(f"Ray Data returned {done} of {len(texts)} embeddings")
    return embeddings
