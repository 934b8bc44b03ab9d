"""How the page names a loaded model: "name · engine", the text its Model panel, the sides' model pickers and the
session's choice carry (Gradio components hold text). Parsed and written here only, so that no handler splits the
text by hand. Not the weights' key in caches (``LoadedModel.key``): the same weights on two engines are two models
here. With what loading one did (``Loading``): value types, importing nothing of ours."""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = " · "
"""Between a model's name and its engine; no name a visitor gives may hold it (``name_problem``). The operator's own
model may (a folder named so): its key parses, the engine being what follows the last separator."""


class ModelKeyError(ValueError):
    """A text that is not "name · engine"."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelKey:
    name: str
    """A catalogue name, hub id or local folder; empty for an OpenAI-compatible server's own model."""
    engine: str

    def __post_init__(self) -> None:
        if not self.engine or SEPARATOR in self.engine:
            raise ModelKeyError(f"a model key's engine must be a name without {SEPARATOR.strip()!r}; "
                                f"got {self.engine!r}")

    @classmethod
    def parse(cls, text: str) -> ModelKey:
        """The key ``str`` wrote; the engine is what follows the separator."""
        name, separator, engine = text.rpartition(SEPARATOR)
        if not separator or not engine:
            raise ModelKeyError(f"{text!r} is not a model key: expected 'name{SEPARATOR}engine'")
        return cls(name=name, engine=engine)

    def __str__(self) -> str:
        return f"{self.name}{SEPARATOR}{self.engine}"


def name_problem(name: str) -> str | None:
    """Why ``name``, given by a visitor (a link, the Model panel, Compare), cannot be a model's name on the page: it
    holds the separator, so that it would read as another model on another engine (``demo · vllm`` given as a name);
    None when it can."""
    if SEPARATOR in name:
        return (f"{name!r} is not a model name: {SEPARATOR.strip()!r} separates a model from its engine on this "
                "page; give the name alone and choose the engine in the Model panel")
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Loading:
    """What ``SharedPage.ensure_model`` did: why the model is not loaded (None: it is), and the models it closed
    first to free their memory."""

    problem: str | None = None
    released: str = ""
    """The models closed, as a sentence for the page ("" when none)."""
