"""Speed at the real models' size, through the project's own engines and rerankers: random-weight models with the
exact configurations of the models the app runs (rank1-0.5b and the assessor's qwen2.5-1.5b-instruct on a CPU;
rank1-7b on a GPU), built here without downloading anything. A model's arithmetic and memory traffic, and so its
speed, do not depend on its weights' values.

    .venv/bin/python benchmarks/real_shape.py [--shapes rank1-0.5b qwen2.5-1.5b-instruct] [--engines transformers vllm]
        [--candidates 20] [--budget 256]
    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python benchmarks/real_shape.py ...   # that checkout's engines, same cases

For each shape and engine, in a fresh process: the engine's start, then rank1 over one query's candidates (the
sample corpus's first query) at the budget: the first reasoning text, the time to judge them all, forced verdict
steps included; then the same prompts sent straight to the engine, without stop strings, for the aggregate
tokens/s of that many streams; peak memory (this process and its largest child: vLLM's engine runs in children).
Random weights never write rank1's stop strings, so every judgment runs to the budget, as the table's "to budget"
column checks: every engine does the same work. With ``PYTHONPATH`` naming another checkout of the project (a
worktree of an older commit), the same cases run through its engines: before-and-after figures from one machine.

The tokenizer is the demo model's byte-level BPE grown to the shape's vocabulary with merges of two of its own
tokens, so that the random tokens the model writes decode to text that reads back as about as many tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

from common import in_fresh_process, print_table

SHAPES: dict[str, dict] = {
    # Qwen/Qwen2.5-0.5B's config.json (rank1-0.5b is fine-tuned from it).
    "rank1-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                   "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    # Qwen/Qwen2.5-1.5B-Instruct's: the assessor's model on a CPU.
    "qwen2.5-1.5b-instruct": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                              "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                              "tie_word_embeddings": True},
    # Qwen/Qwen2.5-7B's (rank1-7b): the GPU model (benchmarks/gpu.sh).
    "rank1-7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
}
QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
         "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "use_sliding_window": False,
         "sliding_window": 32768, "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "bfloat16"}
MAX_MODEL_LEN = 4096
QUERY = "which planets have no moons"


def shape_dir(name: str) -> Path:
    from search.settings import STORAGE

    return STORAGE.cache / "shapes" / name


def build_tokenizer(name: str, folder: Path) -> None:
    """``name``'s tokenizer files in ``folder``: the demo model's, grown to the shape's vocabulary."""
    from search.engines.demo_model import ensure_demo_model

    demo = ensure_demo_model()
    tokenizer = grown_tokenizer(json.loads((demo / "tokenizer.json").read_text(encoding="utf-8")),
                                SHAPES[name]["vocab_size"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (folder / "tokenizer_config.json").write_bytes((demo / "tokenizer_config.json").read_bytes())


def build_shape(name: str, tokenizer_from: Path | None = None) -> Path:
    """A folder with ``name``'s configuration, random bf16 weights (made on the GPU when there is one) and a
    tokenizer of its vocabulary size, from ``tokenizer_from`` when given (a machine without the demo model),
    else grown here. Built once: seconds for 0.5B, a few minutes for 7B on a CPU."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = shape_dir(name)
    if (folder / "config.json").is_file():
        return folder
    staged = folder.with_name(folder.name + ".partial")
    if tokenizer_from is not None:
        shutil.copytree(tokenizer_from, staged, dirs_exist_ok=True)
    else:
        build_tokenizer(name, staged)
    special = {token["content"]: token["id"]
               for token in json.loads((staged / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]}
    config = Qwen2Config(**QWEN2, **SHAPES[name], max_window_layers=SHAPES[name]["num_hidden_layers"],
                         bos_token_id=special["<|im_start|>"], eos_token_id=special["<|im_end|>"])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(staged)
    staged.rename(folder)
    return folder


def grown_tokenizer(tokenizer: dict, size: int) -> dict:
    """The byte-level BPE ``tokenizer`` (tokenizer.json's content) with new tokens up to ``size``, each a word-start
    token joined with a word-continuation token by a new last merge, so that its text reads back as itself."""
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    merges: list = tokenizer["model"]["merges"]
    starts = [token for token in vocab if token.startswith("Ġ") and token[1:].isalpha() and token[1:].isascii()]
    middles = [token for token in vocab if token.isalpha() and token.isascii()]
    taken = set(vocab)
    for middle in middles:
        for start in starts:
            if len(vocab) >= size:
                tokenizer["model"]["merges"] = merges
                return tokenizer
            joined = start + middle
            if joined not in taken:
                taken.add(joined)
                vocab[joined] = len(vocab)
                merges.append([start, middle] if merges and isinstance(merges[0], list) else f"{start} {middle}")
    raise ValueError(f"cannot grow the tokenizer to {size} tokens")


def _open_engine(kind: str, location: str) -> Any:
    if kind == "vllm":
        from search.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model="shape", location=location, max_model_len=MAX_MODEL_LEN)
    from search.engines.hf_engine import TransformersEngine

    return TransformersEngine(model="shape", location=location, max_model_len=MAX_MODEL_LEN)


def case(shape: str, kind: str, candidates: int, budget: int) -> dict:
    """One engine on one shape, in this (fresh) process."""
    from common import sample_workload

    import search
    from search.engines.base import GenerationRequest
    from search.rerank.events import Judged, Reasoning
    from search.rerank.rank1 import Rank1Reranker, render_prompt
    from search.settings import RerankSettings

    location = str(shape_dir(shape))
    began = time.perf_counter()
    engine = _open_engine(kind, location)
    row: dict = {"checkout": Path(search.__file__).parent.parent.name, "shape": shape, "engine": kind,
                 "start s": f"{time.perf_counter() - began:.1f}"}
    query, chosen = sample_workload(candidates)
    reranker = Rank1Reranker(engine, model_key="shape", budget=budget, settings=RerankSettings(judgment_cache=False))

    async def judge(text: str, documents: list) -> tuple[float | None, float, list[Judged]]:
        start = time.perf_counter()
        first, judged = None, []
        async for event in reranker.stream(text, documents):
            if isinstance(event, Reasoning) and first is None:
                first = time.perf_counter() - start
            if isinstance(event, Judged):
                judged.append(event)
        return first, time.perf_counter() - start, judged

    async def stream_all(requests: list[GenerationRequest]) -> int:
        async def one(request: GenerationRequest) -> int:
            return sum([len(chunk.token_ids) async for chunk in engine.generate(request)])

        return sum(await asyncio.gather(*(one(request) for request in requests)))

    try:
        asyncio.run(judge("how do engines warm up", chosen[:1]))
        first, seconds, judged = asyncio.run(judge(query, chosen))
        row["first text s"] = "" if first is None else f"{first:.2f}"
        row[f"judge {candidates} s"] = f"{seconds:.1f}"
        row["to budget"] = f"{sum(event.end_reason == 'budget' for event in judged)}/{candidates}"
        requests = [GenerationRequest(prompt=render_prompt(f"{query} {number}", candidate.passage.contents),
                                      max_tokens=budget) for number, candidate in enumerate(chosen)]
        start = time.perf_counter()
        tokens = asyncio.run(stream_all(requests))
        row[f"{candidates} streams tok/s"] = f"{tokens / (time.perf_counter() - start):.1f}"
    finally:
        engine.close()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row["peak MiB"] = f"{own:.0f}" + (f" + {child:.0f}" if child > 64 else "")
    import torch

    if torch.cuda.is_available():
        row["peak GPU GiB"] = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}"
    return row


def processor() -> str:
    """The CPU's model name (and the GPU's, when there is one)."""
    import torch

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").is_file() else []
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (names[0] if names else platform.machine()) + gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["rank1-0.5b", "qwen2.5-1.5b-instruct"], choices=list(SHAPES))
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--tokenizer-from", type=Path, help="a folder of tokenizer files to use (made elsewhere with "
                                                             "--write-tokenizer) instead of growing the demo model's")
    parser.add_argument("--write-tokenizer", type=Path, help="only write the first shape's tokenizer into this folder")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    if arguments.write_tokenizer:
        build_tokenizer(arguments.shapes[0], arguments.write_tokenizer)
        return
    for shape in arguments.shapes:
        build_shape(shape, arguments.tokenizer_from)
    rows = [in_fresh_process(case, shape, kind, arguments.candidates, arguments.budget)
            for shape in arguments.shapes for kind in arguments.engines]
    print(f"rank1 over {arguments.candidates} sample-corpus candidates at budget {arguments.budget}; "
          f"{os.cpu_count()} cores, {processor()}")
    print_table(rows, ["checkout", "shape", "engine", "start s", "first text s", f"judge {arguments.candidates} s",
                       "to budget", f"{arguments.candidates} streams tok/s", "peak MiB",
                       *(["peak GPU GiB"] if "peak GPU GiB" in rows[0] else [])])


if __name__ == "__main__":
    main()
