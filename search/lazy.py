"""Package ``__init__``s that import nothing until a name is asked for: ``import search.rerank.events`` (or any
small module) then runs no sibling module's imports (FAISS, the stemmer, ir-measures, an engine)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, modules: Mapping[str, tuple[str, ...]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports each name's module (by module: its names) when the name
    is first read."""
    home = {name: module for module, names in modules.items() for name in names}

    def attribute(name: str) -> object:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home[name]), name)

    return attribute
