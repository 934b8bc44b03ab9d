"""Passage encoding at lower precision: the dense encoder (all-MiniLM-L6-v2) through sentence-transformers in
float32 against the same network exported to ONNX and run by onnxruntime in float32 and with int8 weights
(onnxruntime's dynamic quantisation, with and without ``reduce_range``), on a BEIR collection.

    .venv/bin/python -m pip install -e ".[bench]"   # onnxruntime, onnx, onnxscript: not the app's dependencies
    .venv/bin/python benchmarks/encoder_precision.py ../shared/data/cranfield

For each: passages/s over the collection's passages (2 threads, batches sorted by length, the project's batch
size), the lowest cosine to the float32 vectors, and dense nDCG@10 with the passages encoded that way and the
queries in float32 (only building an index is slow; a query is encoded in milliseconds). sentence-transformers'
own ONNX and OpenVINO backends need optimum, which needs an older transformers than this project's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from common import print_table

from search.evaluation import evaluate, retrieve_run
from search.retrieval.dense import DenseRetriever, encode_texts, load_encoder
from search.retrieval.first_stage import open_first_stage
from search.settings import Settings

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Hidden(torch.nn.Module):
    """The encoder's transformer with positional inputs and one output, as the ONNX exporter wants it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def export(encoder: object, folder: Path) -> dict[str, Path]:
    """The encoder's transformer as ONNX in float32 and in two int8 variants."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    sample = encoder.tokenizer(["a short text", "another"], return_tensors="pt", padding=True)
    models = {"onnxruntime float32": folder / "model.onnx"}
    torch.onnx.export(_Hidden(encoder[0].auto_model.eval()), tuple(sample[name] for name in INPUTS),
                      str(models["onnxruntime float32"]), input_names=list(INPUTS), output_names=["hidden"],
                      dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "hidden")},
                      opset_version=17, dynamo=False)
    for label, reduce_range in (("onnxruntime int8", False), ("onnxruntime int8, reduce_range", True)):
        models[label] = folder / f"model-int8-{reduce_range}.onnx"
        quantize_dynamic(str(models["onnxruntime float32"]), str(models[label]), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=reduce_range)
    return models


def onnx_encoder(encoder: object, model: Path, batch_size: int) -> Callable[[Sequence[str]], np.ndarray]:
    """Mean-pooled, unit-length vectors from ``model``, as the sentence-transformers pipeline makes them."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def encode(texts: Sequence[str]) -> np.ndarray:
        order = np.argsort([-len(text) for text in texts])
        vectors = np.zeros((len(texts), encoder.get_embedding_dimension()), np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            features = encoder.tokenizer([texts[row] for row in rows], padding=True, truncation=True,
                                         max_length=encoder.max_seq_length, return_tensors="np")
            hidden = session.run(None, {name: features[name].astype(np.int64) for name in INPUTS})[0]
            mask = features["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            vectors[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return vectors

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="BEIR folder with queries and qrels")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="encoder-precision-") as temporary:
        settings = Settings.from_env().replace(corpus=arguments.dataset, skip_bad=True,
                                               index_dir=Path(temporary) / "indexes")
        first_stage = open_first_stage(settings, ("bm25",))
        corpus, passages = first_stage.corpus, first_stage.passages
        queries = [query for query in corpus.queries if query.query_id in corpus.qrels]
        encoder = load_encoder(settings.dense.encoder)
        batch = settings.dense.encode_batch_size
        texts = [passage.contents for passage in passages]
        encoders = {"sentence-transformers float32": lambda chunk: encode_texts(encoder, chunk, batch)}
        for label, model in export(encoder, Path(temporary)).items():
            encoders[label] = onnx_encoder(encoder, model, batch)
        rows, reference, baseline = [], None, None
        for label, encode in encoders.items():
            encode(texts[:batch])
            began = time.perf_counter()
            vectors = encode(texts)
            rate = len(texts) / (time.perf_counter() - began)
            reference = vectors if reference is None else reference
            baseline = baseline or rate
            retriever = DenseRetriever.from_embeddings(encoder, vectors, passages, settings.dense)
            ndcg = evaluate(corpus.qrels, retrieve_run(retriever, queries, 100))["nDCG@10"]
            rows.append({"encoder": label, "passages/s": f"{rate:.1f}", "vs float32": f"{rate / baseline:.2f}x",
                         "min cosine": f"{float((vectors * reference).sum(axis=1).min()):.4f}",
                         "nDCG@10": f"{ndcg:.4f}"})
    print(f"{arguments.dataset}: {len(passages)} passages, {len(queries)} judged queries, "
          f"{torch.get_num_threads()} threads")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
