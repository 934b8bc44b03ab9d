"""``--dtype auto`` on a CPU follows the CPU: bf16 where it computes bf16 natively (AVX512-BF16, AMX, Arm's BF16),
float32 elsewhere. The flags are faked here (this machine has none), the reader is checked against the kernel's own
list, and the transformers engine loads the demo model in what ``auto`` chose."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from search import pipeline
from search.engines import base, onednn
from search.engines.base import GenerationRequest, cpu_dtype, native_bf16_flags
from search.engines.hf_engine import TransformersEngine
from search.models import REGISTRY

X86_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
X86_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd atomics bf16 i8mm\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd atomics\n"


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The CPU's native-bf16 flags as the test sets them; ``auto``'s once-per-process choice is forgotten around
    the test."""
    faked: list[str] = []
    monkeypatch.setattr(base, "native_bf16_flags", lambda: tuple(faked))
    base.auto_cpu_dtype.cache_clear()
    yield faked
    base.auto_cpu_dtype.cache_clear()


@pytest.mark.parametrize("native", [["avx512_bf16"], ["amx_bf16"], ["bf16"]])
def test_auto_on_a_cpu_with_native_bf16_is_bf16_and_says_why(
        flags: list[str], native: list[str], caplog: pytest.LogCaptureFixture) -> None:
    flags.extend(native)
    with caplog.at_level(logging.INFO, logger=base.__name__):
        assert cpu_dtype("auto", "cpu") == "bfloat16"
        assert cpu_dtype("auto", "cpu") == "bfloat16"
    [record] = [record for record in caplog.records if record.name == base.__name__]  # logged once
    assert "bfloat16" in record.getMessage() and ", ".join(native) in record.getMessage()


def test_auto_on_a_cpu_without_native_bf16_is_float32_and_says_why(
        flags: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=base.__name__):
        assert cpu_dtype("auto", "cpu") == "float32"
    [record] = [record for record in caplog.records if record.name == base.__name__]
    assert "float32" in record.getMessage() and "no native bf16" in record.getMessage()


@pytest.mark.parametrize("native", [[], ["amx_bf16"]])
def test_a_dtype_given_and_auto_off_the_cpu_are_unchanged(flags: list[str], native: list[str]) -> None:
    flags.extend(native)
    for dtype in ("bfloat16", "float32", "float16"):
        assert cpu_dtype(dtype, "cpu") == dtype
        assert cpu_dtype(dtype, "cuda") == dtype
    assert cpu_dtype("auto", "cuda") == "auto"


@pytest.mark.parametrize(("cpuinfo", "expected"), [(X86_AMX, ("avx512_bf16", "amx_bf16")),
                                                   (X86_AVX2, ()), (ARM_BF16, ("bf16",)), (ARM_PLAIN, ())])
def test_without_pytorchs_reading_the_kernels_cpu_flags_decide(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: str, expected: tuple[str, ...]) -> None:
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert native_bf16_flags(tmp_path / "cpuinfo") == expected
    assert native_bf16_flags(tmp_path / "missing") == ()


def test_pytorchs_reading_agrees_with_the_kernels_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    read_by_pytorch = native_bf16_flags()
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert read_by_pytorch == native_bf16_flags()


@pytest.mark.parametrize(("native", "dtype", "packed"), [([], torch.float32, True), (["amx_bf16"], torch.bfloat16,
                                                                                      False)])
def test_the_transformers_engine_loads_what_auto_chose(
        flags: list[str], demo_model: Path, native: list[str], dtype: torch.dtype, packed: bool) -> None:
    """float32 layers are packed for oneDNN; bf16 ones keep PyTorch's linear layers (the packing is float32 only)
    and still judge: the demo model writes text in bf16 too."""
    flags.extend(native)
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=512, batch_size=2)
    try:
        model = engine._model
        assert {parameter.dtype for parameter in model.parameters()} == {dtype}
        assert any(isinstance(module, onednn.PackedLinear) for module in model.modules()) is packed
        assert any(isinstance(module, torch.nn.Linear) for module in model.modules()) is not packed
        async def text() -> str:
            return "".join([chunk.text async for chunk in engine.generate(
                GenerationRequest(prompt="The planets of the solar system are", max_tokens=4))])

        assert asyncio.run(text()).strip()
    finally:
        engine.close()


@pytest.mark.parametrize(("native", "factor", "dtype"), [([], 2, "float32"), (["avx512_bf16"], 1, "bfloat16")])
def test_the_memory_a_model_needs_on_a_cpu_is_in_what_auto_chose(
        flags: list[str], monkeypatch: pytest.MonkeyPatch, native: list[str], factor: int, dtype: str) -> None:
    """The catalogue's sizes are bf16: float32 weights take twice that, bf16 ones that (the 'does not fit'
    refusal must not turn away a model that fits in bf16)."""
    flags.extend(native)
    monkeypatch.setattr(pipeline, "cuda_available", lambda: False)
    need = pipeline.memory_need("rank1-0.5b", "transformers")
    assert need.needed_gb == pytest.approx(REGISTRY["rank1-0.5b"].size_gb * factor)
    assert f"{dtype} on the CPU" in need.describe("rank1-0.5b")
