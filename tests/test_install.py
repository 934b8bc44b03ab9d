"""A non-editable install (``pip install .``, as Spaces and most users install a package): every package and the
sample corpus, the default corpus, come with it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from search.settings import REPO_ROOT


def test_a_non_editable_install_has_every_package_and_the_sample_corpus(
        fresh_venv: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    python, environment = fresh_venv
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(REPO_ROOT)],
                               cwd=tmp_path, env=environment, capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = ("import json, pkgutil, search, ui; from search.corpus import load_corpus; "
             "from search.settings import SAMPLE_CORPUS, CorpusSettings; "
             "corpus = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS)); "
             "packages = [name for _, name, is_package in pkgutil.walk_packages(search.__path__, 'search.') "
             "if is_package]; print(json.dumps({'corpus': str(SAMPLE_CORPUS), 'documents': len(corpus.documents), "
             "'queries': len(corpus.queries), 'qrels': len(corpus.qrels), 'packages': packages}))")
    answer = json.loads(subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=environment,
                                       capture_output=True, text=True, check=True).stdout)
    assert "site-packages" in answer["corpus"]  # not this checkout's folder
    assert answer["documents"] == 310 and answer["queries"] == 35 and answer["qrels"] > 0
    ours = {".".join(path.parent.relative_to(REPO_ROOT).parts) for path in (REPO_ROOT / "search").rglob("__init__.py")}
    assert ours - {"search"} <= set(answer["packages"])
