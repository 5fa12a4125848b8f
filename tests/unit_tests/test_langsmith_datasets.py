"""``train=`` / ``val=`` from a LangSmith dataset, read with the real langsmith client.

The client talks to a loopback HTTP server that answers the endpoints it calls
(``GET /datasets?name=``, ``GET /datasets/{id}``, ``GET /examples?dataset=&offset=
&limit=&splits=``, and ``GET /sessions``, which it asks for the tenant id), paging as
LangSmith does (100 examples a page), with split names in each example's
``metadata.dataset_split``. The test counts what the client asked for.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from gradsum_fakes import Script, optimizer, scripted
from langsmith import Client
from langsmith import utils as ls_utils

from langchain_gradsum.data import LangSmithDataset, load_examples, load_splits

FAKE_KEY = "lsv2_fake_datasets"
CREATED = "2026-11-01T00:00:00+00:00"


class FakeLangSmith:
    """Datasets and examples behind the dataset/example read endpoints."""

    def __init__(self) -> None:
        self.datasets: dict[str, dict[str, Any]] = {}
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                query = parse_qs(url.query)
                with fake.lock:
                    fake.requests.append((url.path, query))
                status, payload = fake.answer(url.path.rstrip("/"), query)
                self._reply(status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, splits: list[str | list[str] | None]) -> str:
        dataset_id = str(uuid.uuid4())
        self.datasets[dataset_id] = {"id": dataset_id, "name": name, "created_at": CREATED,
                                     "description": None, "data_type": "kv",
                                     "example_count": len(splits)}
        rows = []
        for i, split in enumerate(splits):
            metadata = {} if split is None else {
                "dataset_split": [split] if isinstance(split, str) else split}
            rows.append({"id": str(uuid.uuid4()), "dataset_id": dataset_id,
                         "created_at": CREATED, "modified_at": CREATED,
                         "inputs": {"question": f"{name} q{i}"}, "outputs": {"answer": "B"},
                         "metadata": metadata})
        self.examples[dataset_id] = rows
        return dataset_id

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/info":
            return 200, {}
        if path == "/sessions":
            return 200, []
        if path == "/datasets":
            names = query.get("name", [])
            return 200, [d for d in self.datasets.values() if d["name"] in names][:1]
        if path.startswith("/datasets/"):
            found = self.datasets.get(path.rsplit("/", 1)[1])
            return (200, found) if found else (404, {"detail": "Dataset not found"})
        if path == "/examples":
            rows = self.examples.get(query.get("dataset", [""])[0], [])
            if "splits" in query:
                wanted = set(query["splits"])
                rows = [r for r in rows
                        if set(r["metadata"].get("dataset_split", ["base"])) & wanted]
            offset, limit = int(query["offset"][0]), int(query["limit"][0])
            return 200, rows[offset:offset + limit]
        return 404, {"detail": "Not found"}

    def pages(self) -> list[int]:
        """The offsets of the example pages the client asked for, in order."""
        return [int(q["offset"][0]) for path, q in self.requests if path == "/examples"]


@pytest.fixture
def langsmith() -> Iterator[FakeLangSmith]:
    fake = FakeLangSmith()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LANGSMITH_ENDPOINT", fake.url)
        mp.setenv("LANGSMITH_API_KEY", FAKE_KEY)
        for var in ("LANGCHAIN_API_KEY", "LANGCHAIN_ENDPOINT", "LANGSMITH_WORKSPACE_ID"):
            mp.delenv(var, raising=False)
        ls_utils.get_env_var.cache_clear()
        try:
            yield fake
        finally:
            fake.server.shutdown()
            fake.server.server_close()
    ls_utils.get_env_var.cache_clear()


def _questions(rows: list[dict[str, Any]]) -> list[str]:
    return [r["inputs"]["question"] for r in rows]


def test_a_dataset_by_name_is_split_by_its_splits_and_read_page_by_page(
        langsmith: FakeLangSmith) -> None:
    splits = ["train"] * 150 + ["validation"] * 50 + ["test"] * 30
    langsmith.add("qa", splits)
    train, val = load_splits("qa", None)
    assert _questions(train) == [f"qa q{i}" for i in range(150)]
    assert _questions(val) == [f"qa q{i}" for i in range(150, 200)]  # test stays held out
    assert train[0] == {"inputs": {"question": "qa q0"}, "outputs": {"answer": "B"}}
    assert langsmith.pages() == [0, 100, 200]  # 230 examples, 100 a page
    names = [q.get("name") for path, q in langsmith.requests if path == "/datasets"]
    assert names == [["qa"]]  # read once for both splits


def test_optimize_reads_the_dataset_and_runs(langsmith: FakeLangSmith) -> None:
    langsmith.add("small", ["train"] * 4 + ["validation"] * 2 + ["test"])
    model = scripted()
    result = optimizer(model).optimize("Q: {question}", "small")
    assert result.split == "val" and result.best_score == 1.0
    val_keys = {k for k in result.records if "|val|" in k}
    assert {int(k.rsplit("|", 1)[1]) for k in val_keys} == {0, 1}  # the 2 validation rows
    assert not any("small q6" in text for _, text, _ in model.calls)  # never the test row


def test_ids_dataset_objects_and_list_examples(langsmith: FakeLangSmith) -> None:
    dataset_id = langsmith.add("plain", [None] * 5)  # no splits: all of it is train
    client = Client()
    for ref in (dataset_id, uuid.UUID(dataset_id), client.read_dataset(dataset_name="plain"),
                LangSmithDataset(id=dataset_id, client=client)):
        train, val = load_splits(ref, None)
        assert _questions(train) == [f"plain q{i}" for i in range(5)] and val == []
    # an iterable of langsmith Examples is used as it is
    examples = client.list_examples(dataset_name="plain")
    assert _questions(load_examples(examples)) == [f"plain q{i}" for i in range(5)]


def test_named_splits_are_asked_of_the_server(langsmith: FakeLangSmith) -> None:
    langsmith.add("qa", ["train"] * 3 + ["validation"] * 2 + ["test"] * 2 + [["test", "hard"]])
    train, val = load_splits(LangSmithDataset(name="qa", splits=["test"]),
                             LangSmithDataset(name="qa", splits="validation"))
    assert _questions(train) == ["qa q5", "qa q6", "qa q7"]
    assert _questions(val) == ["qa q3", "qa q4"]
    asked = [q.get("splits") for path, q in langsmith.requests if path == "/examples"]
    assert asked == [["test"], ["validation"]]
    # val from another dataset without splits: all of it
    langsmith.add("other", [None] * 2)
    train, val = load_splits("qa", "other")
    assert _questions(train) == ["qa q0", "qa q1", "qa q2"]
    assert _questions(val) == ["other q0", "other q1"]


def test_a_missing_dataset_is_a_clear_error_before_any_call(
        langsmith: FakeLangSmith) -> None:
    model = scripted()
    with pytest.raises(ValueError, match=r"train: there is no LangSmith dataset 'nope' at "
                                         r"http://127\.0\.0\.1:\d+ \(and no such file\)"):
        optimizer(model).optimize("Q: {question}", "nope")
    missing = str(uuid.uuid4())
    with pytest.raises(ValueError, match=f"val: there is no LangSmith dataset '{missing}'"):
        optimizer(model).optimize("Q: {question}", [{"inputs": {"question": "x"},
                                                     "outputs": {"answer": "B"}}], missing)
    assert model.calls == []


def test_bad_datasets_fail_before_any_call(langsmith: FakeLangSmith) -> None:
    model = scripted()
    langsmith.add("nosplit", [None] * 3)
    with pytest.raises(ValueError, match="val is the LangSmith dataset 'nosplit', as train "
                                         "is, and it has no validation split"):
        optimizer(model).optimize("Q: {question}", "nosplit", "nosplit")
    langsmith.add("onlytest", ["test"] * 2)
    with pytest.raises(ValueError, match="train: the LangSmith dataset 'onlytest' has no "
                                         "examples for train"):
        optimizer(model).optimize("Q: {question}", "onlytest")
    with pytest.raises(ValueError, match=r"has no examples in the splits \['nosuch'\]"):
        optimizer(model).optimize("Q: {question}", LangSmithDataset(name="nosplit",
                                                                    splits=["nosuch"]))
    with pytest.raises(ValueError, match="train row 0 has no 'topic' in its inputs"):
        optimizer(model).optimize("About {topic}: {question}", "nosplit")
    assert model.calls == []


def test_no_api_key_for_the_hosted_service_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_ENDPOINT",
                "LANGCHAIN_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    ls_utils.get_env_var.cache_clear()
    model = scripted(Script())
    try:
        with pytest.raises(ValueError, match="needs a LangSmith API key: set LANGSMITH_API_KEY"):
            optimizer(model).optimize("Q: {question}", "my-dataset")
    finally:
        ls_utils.get_env_var.cache_clear()
    assert model.calls == []


def test_paths_stay_paths(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_examples(str(tmp_path / "rows"))  # a path, even without a suffix
    with pytest.raises(ValueError, match="no such file"):
        load_examples("missing.jsonl")


def test_the_cli_reads_a_dataset_by_name(langsmith: FakeLangSmith,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from typer.testing import CliRunner

    from langchain_gradsum import local_llm
    from langchain_gradsum.cli import app

    @contextlib.contextmanager
    def running_local_llm(port: int | None = None) -> Iterator[str]:
        yield "http://127.0.0.1:1/v1"

    model = scripted()
    monkeypatch.setattr(local_llm, "running_local_llm", running_local_llm)
    monkeypatch.setattr(local_llm, "local_chat_model", lambda *a, **kw: model)
    langsmith.add("qa", ["train"] * 4 + ["validation"] * 2 + ["test"] * 3)
    res = CliRunner().invoke(app, ["optimize", "Q: {question}", "--data", "qa", "--model",
                                   "local", "--evaluator", "exact_match", "--max-iterations",
                                   "1", "--minibatch-size", "2", "--max-concurrency", "1"])
    assert res.exit_code == 0, res.output
    assert "4 training rows, 2 validation rows" in res.output
    res = CliRunner().invoke(app, ["optimize", "Q: {question}", "--data", "nope", "--model",
                                   "local", "--evaluator", "exact_match"])
    assert res.exit_code != 0 and "--data: there is no LangSmith dataset 'nope'" in res.output
