"""What the page's typed fields must hold, checked where a single run and a comparison share them: each refusal
names the field and its limit, and nothing is cut."""

from __future__ import annotations

from search.compare import MAX_INSTRUCTION_CHARS

MAX_QUERY_CHARS = 2_000
MAX_CANDIDATES = 50


def query_problem(query: str) -> str | None:
    """Why ``query`` (already stripped) cannot be searched, or None."""
    if not query:
        return "Type a query to search."
    if len(query) > MAX_QUERY_CHARS:
        return (f"The query is {len(query):,} characters long; the limit is {MAX_QUERY_CHARS:,}. Shorten it: "
                "nothing was cut.")
    return None


def instruction_problem(instruction: str, whose: str) -> str | None:
    """Why ``instruction`` is too long (the limit links and ``--a``/``--b`` keep too), or None."""
    if len(instruction) <= MAX_INSTRUCTION_CHARS:
        return None
    return f"{whose} instruction is {len(instruction):,} characters long; the limit is {MAX_INSTRUCTION_CHARS:,}."


def count_problem(value: float | None, name: str, high: int) -> str | None:
    """Why ``value`` is not a whole number from 1 to ``high`` (the API takes any JSON number), or None."""
    if value is None or isinstance(value, bool) or value != int(value) or not 1 <= value <= high:
        return f"{name} must be a whole number from 1 to {high:,}; got {value!r}."
    return None
