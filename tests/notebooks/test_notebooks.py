"""The notebooks in notebooks/ run top to bottom with the scripted fake model.

Each notebook is executed by nbclient in a fresh kernel of this interpreter (the
venv's), with ``GRADSUM_NOTEBOOK_MODEL=fake``: no LLM server, no network. Any cell
error fails the test. The executed copy and everything the notebook writes go to a
temp dir, so the committed notebooks (with outputs from a real run on the local
model) are never overwritten; the test checks that too.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[notebooks]'")
pytest.importorskip("nbclient", reason="pip install -e '.[notebooks]'")
pytest.importorskip("ipykernel", reason="pip install -e '.[notebooks]'")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 180  # seconds per cell; the fake model answers instantly
RUNS = {"04_optimize_an_app": 2}  # result.json files a notebook writes (else 1)

sys.path.insert(0, str(NOTEBOOKS_DIR))
from run_notebooks import execute  # noqa: E402

from langchain_gradsum._templates import template_variables  # noqa: E402

# A kernel that tries to leave the machine through HTTP(S) hits a dead local proxy.
DEAD_PROXY = "http://127.0.0.1:9"


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The kernel's environment (inherited from this process): fake model, output to a
    temp dir, no tracing, no API keys, no local server, network through a dead proxy."""
    out = tmp_path / "out"
    monkeypatch.setenv("GRADSUM_NOTEBOOK_MODEL", "fake")
    monkeypatch.setenv("GRADSUM_NOTEBOOK_OUT", str(out))
    for var in ("GRADSUM_LOCAL_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING",
                "LANGSMITH_TRACING_V2", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY",
                "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return out


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_langsmith_and_evaluators.ipynb",
        "03_visualize_a_run.ipynb",
        "04_optimize_an_app.ipynb",
    ]


@pytest.mark.allow_hosts(["127.0.0.1", "localhost"])
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_the_fake_model(notebook: Path, fake_env: Path,
                                          tmp_path: Path) -> None:
    before = _digest(NOTEBOOKS_DIR)
    executed = execute(notebook, tmp_path / notebook.name, timeout=CELL_TIMEOUT)
    assert _digest(NOTEBOOKS_DIR) == before, "executing a notebook changed notebooks/"

    code = [c for c in executed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "a code cell did not run"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "fake" in text.splitlines()[0], "the first output must say which model ran"
    # Each notebook saved its runs' results where it was told to (04: two runs).
    results = sorted(fake_env.rglob("result.json"))
    assert len(results) == RUNS.get(notebook.stem, 1), results
    for path in results:
        result = json.loads(path.read_text(encoding="utf-8"))
        assert result["best_score"] is not None and result["total_calls"] > 0
        # the optimized prompt keeps the placeholders of the initial one (a graph's system
        # prompt in notebook 04 has none)
        initial = result["candidates"]["c0"]["template"]
        assert template_variables(result["best_template"]) == template_variables(initial)
        assert result["best_score"] >= result["initial_score"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs(notebook: Path) -> None:
    """The committed notebooks were executed top to bottom, without errors, and say
    which model produced their outputs."""
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert all(counts), f"{notebook.name}: unexecuted cells"
    assert counts == sorted(counts), f"{notebook.name}: cells were run out of order"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert first.startswith("model: "), first
