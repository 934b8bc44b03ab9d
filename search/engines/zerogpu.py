"""Hugging Face ZeroGPU: a Space whose GPU exists only inside functions decorated with ``spaces.GPU``, each call
run in a process of its own (forked; arguments and results pickled) for at most its ``duration``.

Outside ZeroGPU ``spaces.GPU`` returns the function unchanged, so the transformers engine takes the same path
everywhere: its generation goes through the decorator whenever the ``spaces`` package is installed (it is on
every Space), and through a plain call where it is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])


def on_zero_gpu() -> bool:
    """Whether this process is a ZeroGPU Space (the variable Spaces sets there, as ``spaces`` itself reads it)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def gpu_function(function: Function, duration: Callable[..., int]) -> Function:
    """``function`` as ``spaces.GPU`` decorates it, asking for ``duration(*arguments)`` seconds a call; the
    function itself where ``spaces`` is not installed."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(function, duration=duration)


if on_zero_gpu():
    # ZeroGPU patches torch when ``spaces`` is imported, which must happen before anything touches CUDA: here,
    # since every engine is opened through this package.
    import spaces  # noqa: F401
