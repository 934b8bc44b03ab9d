from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from search.settings import Settings, SettingsError, add_arguments, from_arguments, options


def parse(*flags: str, environ: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_arguments(parser.parse_args(flags), Settings.from_env(environ or {}))


def test_every_setting_has_one_flag_and_one_variable() -> None:
    flags = [option.flag for option in options()]
    assert len(flags) == len(set(flags))
    assert "--corpus" in flags and "--rrf-k" in flags and "--skip-bad" in flags


def test_environment_then_flags() -> None:
    settings = parse("--rrf-k", "10", environ={"EXPLAINABLE_SEARCH_RRF_K": "30", "EXPLAINABLE_SEARCH_ENCODER": "x/y"})
    assert settings.fusion.rrf_k == 10
    assert settings.dense.encoder == "x/y"
    assert parse("--corpus", "here", "--skip-bad").loading == Settings().loading.__class__(corpus=Path("here"),
                                                                                         skip_bad=True)


def test_bad_values_name_their_source() -> None:
    with pytest.raises(SettingsError, match="EXPLAINABLE_SEARCH_BM25_K1 must be float; got 'high'"):
        Settings.from_env({"EXPLAINABLE_SEARCH_BM25_K1": "high"})
    with pytest.raises(SettingsError, match="EXPLAINABLE_SEARCH_SKIP_BAD must be true or false"):
        Settings.from_env({"EXPLAINABLE_SEARCH_SKIP_BAD": "maybe"})
    with pytest.raises(SettingsError, match="--passage-window must be int"):
        parse("--passage-window", "wide")
    with pytest.raises(SettingsError, match="passage_overlap must be at least 0 and smaller than passage_window"):
        parse("--passage-window", "10", "--passage-overlap", "10")
    with pytest.raises(SystemExit):
        parse("--fusion", "sum")


def test_replace_reads_text_given_for_a_path_or_a_number_as_its_flag_would() -> None:
    """``open_reranker(..., judgment_cache_path="runs/j.sqlite3", budget="64")`` must not keep strings."""
    settings = Settings().replace(judgment_cache_path="runs/j.sqlite3", budget="64", evidence="true")
    assert settings.rerank.judgment_cache_path == Path("runs/j.sqlite3")
    assert (settings.rerank.budget, settings.rerank.evidence) == (64, True)
    with pytest.raises(SettingsError, match="setting budget must be int"):
        Settings().replace(budget="many")
