"""Optimizing the prompt inside a LangChain app: chains, structured output, RAG, the CLI."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from gradsum_fakes import GOOD, Script, optimizer, qa_rows, scripted
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from pydantic import BaseModel
from typer.testing import CliRunner

from langchain_gradsum import GradSumOptimizer
from langchain_gradsum._llm import BudgetExhausted, CallBudget, LLMCaller
from langchain_gradsum.apps import AppRunner, find_prompts, show
from langchain_gradsum.testing import ScriptedChatModel


class Answer(BaseModel):
    answer: str
    confidence: float = 1.0


def chain(model: ScriptedChatModel, template: str = "Q: {question}", **kwargs: Any) -> Any:
    return PromptTemplate.from_template(template, **kwargs) | model | StrOutputParser()


def generate_calls(model: ScriptedChatModel) -> int:
    return model.calls_by_role().get("generate", 0)


# --- a sequence with a parser; best_app; the user's app unchanged -----------------------


def test_a_chain_with_a_parser_is_optimized_with_its_own_model() -> None:
    model = scripted()  # stands in for the app's real chat model
    app = chain(model)
    result = optimizer(None).optimize(app, qa_rows(4), qa_rows(2, "v"))

    assert result.initial_score == 0.0 and result.best_score == 1.0
    assert GOOD in result.best_template and "{question}" in result.best_template
    assert isinstance(result.best_prompt, PromptTemplate)
    # every call (the app's, and judge/optimizer defaulting to the app's model) counted
    assert result.total_calls == len(model.calls)
    assert result.usage["generate"]["calls"] == generate_calls(model)
    assert result.settings["app"]["target"] == "app[0]"
    assert result.records["c0|train|0"]["output"] == "A"


def test_best_app_invokes_with_the_new_prompt_and_the_app_is_unchanged() -> None:
    model = scripted()
    app = chain(model)
    prompt, parser = app.first, app.last
    result = optimizer(None).optimize(app, qa_rows(3))

    assert app.invoke({"question": "q9"}) == "A"  # the user's app: the old prompt
    assert app.first is prompt and prompt.template == "Q: {question}" and app.last is parser
    assert result.best_app is not app
    assert result.best_app.invoke({"question": "q9"}) == "B"
    assert result.best_app.first.template == result.best_template
    assert result.best_app.steps[1] is model and result.best_app.last is parser


def test_a_bare_prompt_still_needs_a_model() -> None:
    with pytest.raises(ValueError, match="model= is required"):
        optimizer(None).optimize("Q: {question}", qa_rows(2))


# --- structured output, evaluated as an object -----------------------------------------


def test_structured_output_reaches_evaluators_as_the_object_and_critiques_as_json() -> None:
    seen: list[Any] = []

    def right_answer(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> float:
        seen.append(outputs["output"])
        assert isinstance(outputs["output"], Answer)
        return float(outputs["output"].answer == reference_outputs["answer"])

    app_model = ScriptedChatModel(  # stands in for the app's real model
        respond=lambda text, role: {"answer": "B" if GOOD in text else "A"})
    opt_model = scripted()
    app = PromptTemplate.from_template("Q: {question}") | app_model.with_structured_output(Answer)
    result = optimizer(opt_model, evaluators=[right_answer]).optimize(app, qa_rows(3))

    assert result.best_score == 1.0 and result.initial_score == 0.0
    assert seen and all(isinstance(v, Answer) for v in seen)
    record = result.records["c0|train|0"]
    assert json.loads(record["output"]) == {"answer": "A", "confidence": 1.0}
    assert record["output_type"].endswith(":Answer")
    gradients = [text for role, text, _ in opt_model.calls if role == "gradient"]
    assert gradients and all('{"answer": "A", "confidence": 1.0}' in g for g in gradients)
    assert generate_calls(opt_model) == 0  # the app runs its own model only
    assert set(app_model.calls_by_role()) == {"generate"}
    assert result.best_app.invoke({"question": "q7"}) == Answer(answer="B")


def test_a_pydantic_output_is_rebuilt_from_its_record_after_a_resume() -> None:
    runner = AppRunner.from_app(chain(scripted()))
    record = {"output": show(Answer(answer="B")), "output_type": f"pydantic:{__name__}:Answer"}
    assert runner.value(record, "c0|train|0") == Answer(answer="B")  # no live value held
    assert runner.value({"output": '{"a": 1}', "output_type": "json"}, "k") == {"a": 1}
    assert runner.value({"output": "plain"}, "k") == "plain"


def test_a_dict_output_is_shown_as_json() -> None:
    model = scripted()
    app = chain(model) | RunnableLambda(lambda text: {"answer": text, "n": 1})

    def answer_key(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> bool:
        return outputs["output"]["answer"] == reference_outputs["answer"]

    result = optimizer(None, evaluators=[answer_key]).optimize(app, qa_rows(2))
    assert result.records["c0|train|0"]["output"] == '{"answer": "A", "n": 1}'
    assert result.best_score == 1.0


# --- a parallel RAG-style chain ---------------------------------------------------------

DOCS = {f"{p}{i}": f"Document {p}{i} says the answer is B." for p in "qv" for i in range(6)}


def test_a_parallel_rag_chain_runs_its_retrieval_for_each_row() -> None:
    retrieved: list[str] = []

    def retrieve(question: str) -> list[Document]:  # a retriever-like lambda
        retrieved.append(question)
        return [Document(page_content=DOCS[question])]

    def format_docs(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    def respond(text: str, role: str) -> Any:
        if role == "generate":
            assert "says the answer is B" in text  # the context reached the prompt
        return Script()(text, role)

    model = ScriptedChatModel(respond=respond)
    prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    app = ({"context": RunnableLambda(retrieve) | format_docs,
            "question": RunnablePassthrough()} | prompt | model | StrOutputParser())
    result = optimizer(None).optimize(app, qa_rows(4), qa_rows(2, "v"), input_key="question")

    assert result.best_score == 1.0 and result.initial_score == 0.0
    assert {"q0", "v0", "v1"} <= set(retrieved) <= set(DOCS)
    assert "{context}" in result.best_template and "{question}" in result.best_template
    assert result.settings["app"]["target"] == "app[1]"
    assert result.best_app.invoke("q5") == "B"
    assert app.invoke("q5") == "A"


def test_rows_need_only_what_the_app_takes() -> None:
    model = scripted()
    app = ({"context": RunnableLambda(lambda q: "ctx"), "question": RunnablePassthrough()}
           | PromptTemplate.from_template("{context} {question}") | model)
    with pytest.raises(ValueError, match="question"):
        optimizer(None).optimize(app, [{"inputs": {"other": "x"}, "outputs": {"answer": "B"}}],
                                 input_key="question")
    assert model.calls == []


# --- a chat template inside a chain -----------------------------------------------------


def test_a_chat_template_inside_a_chain_has_its_system_message_optimized() -> None:
    n = itertools.count(1)
    model = scripted(edit=lambda text: f"<prompt>Reply with one letter. {GOOD} {next(n)}</prompt>")
    prompt = ChatPromptTemplate.from_messages([("system", "Answer the question."),
                                               ("human", "{question}")])
    app = prompt | model | StrOutputParser()
    result = optimizer(None).optimize(app, qa_rows(3))

    assert result.best_score == 1.0
    assert isinstance(result.best_prompt, ChatPromptTemplate)
    messages = result.best_app.first.format_messages(question="q1")
    assert GOOD in messages[0].content and messages[0].type == "system"
    assert messages[1].content == "q1" and messages[1].type == "human"
    assert result.best_app.invoke({"question": "q1"}) == "B"
    assert prompt.messages[0].prompt.template == "Answer the question."


# --- several prompts: target= -----------------------------------------------------------


def two_prompt_app(model: ScriptedChatModel) -> tuple[Any, PromptTemplate, PromptTemplate]:
    rewrite = PromptTemplate.from_template("Rewrite: {question}", name="rewrite")
    answer = PromptTemplate.from_template("Q: {question}", name="answer")
    app = (rewrite | model | StrOutputParser() | RunnableLambda(lambda s: {"question": s})
           | answer | model | StrOutputParser())
    return app, rewrite, answer


def two_prompt_script(text: str, role: str) -> Any:
    if role == "generate" and text.startswith("Rewrite: "):
        return text[len("Rewrite: "):]  # the rewrite step echoes the question
    return Script()(text, role)


def test_several_prompts_need_target_and_the_error_lists_them_with_no_call() -> None:
    model = ScriptedChatModel(respond=two_prompt_script)
    app, _, _ = two_prompt_app(model)
    with pytest.raises(ValueError, match="holds 2 prompts") as err:
        optimizer(None).optimize(app, qa_rows(2))
    message = str(err.value)
    assert "app[0]: PromptTemplate name='rewrite' 'Rewrite: {question}'" in message
    assert "app[4]: PromptTemplate name='answer' 'Q: {question}'" in message
    assert "target=" in message
    with pytest.raises(ValueError, match="target='nope' is none of the app's 2") as err:
        optimizer(None).optimize(app, qa_rows(2), target="nope")
    assert "name='answer'" in str(err.value)
    assert model.calls == []


@pytest.mark.parametrize("by", ["name", "object"])
def test_target_picks_the_prompt_by_name_or_object(by: str) -> None:
    model = ScriptedChatModel(respond=two_prompt_script)
    app, rewrite, answer = two_prompt_app(model)
    result = optimizer(None, max_llm_calls=200).optimize(
        app, qa_rows(3), target="answer" if by == "name" else answer)

    assert result.settings["app"]["target"] == "app[4]"
    assert result.best_score == 1.0 and GOOD in result.best_template
    assert result.best_app.first is rewrite  # the other prompt is kept as it is
    assert result.best_app.steps[4].name == "answer"
    # two model calls per run of the app, each counted (and planned for)
    assert result.settings["app"]["models"] == ["app[1]", "app[5]"]
    assert result.usage["generate"]["calls"] == generate_calls(model)
    assert result.usage["generate"]["calls"] == 2 * sum(
        1 for k, r in result.records.items() if "output" in r)
    assert result.total_calls == len(model.calls)
    assert result.best_app.invoke({"question": "q1"}) == "B"


def test_a_prompt_named_by_with_config_and_found_in_a_binding() -> None:
    model = scripted()
    prompt = PromptTemplate.from_template("Q: {question}").with_config(run_name="qa")
    other = PromptTemplate.from_template("Other: {question}")
    app = {"a": prompt | model, "b": other | model} | RunnableLambda(lambda d: d["a"].content)
    found = find_prompts(app)
    assert [f.path for f in found] == ["app[0]['a'][0]", "app[0]['b'][0]"]
    assert found[0].names == ("qa",)
    result = optimizer(None).optimize(app, qa_rows(2), target="qa")
    assert result.best_score == 1.0
    assert result.best_app.invoke({"question": "q1"}) == "B"


def test_no_prompt_found_is_an_error_with_no_call() -> None:
    model = scripted()
    hidden = RunnableLambda(lambda x: PromptTemplate.from_template("Q: {question}").invoke(x))
    with pytest.raises(ValueError, match="holds no PromptTemplate or ChatPromptTemplate"):
        optimizer(None).optimize(hidden | model, qa_rows(2))
    assert model.calls == []


def test_an_app_without_a_visible_model_needs_model() -> None:
    hidden = scripted()
    app = PromptTemplate.from_template("Q: {question}") | RunnableLambda(hidden.invoke)
    with pytest.raises(ValueError, match="no chat model the optimizer can see"):
        optimizer(None).optimize(app, qa_rows(2))
    assert hidden.calls == []


# --- the cap, retries and the cache inside the app --------------------------------------


def test_the_cap_counts_every_call_made_inside_the_app() -> None:
    model = ScriptedChatModel(respond=two_prompt_script)
    hidden = scripted()  # called inside a function: the optimizer cannot swap it

    def ask_twice(value: Any) -> Any:  # more calls per run than the plan expects
        hidden.invoke(value)
        return hidden.invoke(value)

    rewrite = PromptTemplate.from_template("Rewrite: {question}", name="rewrite")
    answer = PromptTemplate.from_template("Q: {question}", name="answer")
    app = (rewrite | model | StrOutputParser() | RunnableLambda(lambda s: {"question": s})
           | answer | RunnableLambda(ask_twice) | StrOutputParser())
    cap = 38
    result = optimizer(model, max_llm_calls=cap, minibatch_size=3, max_iterations=3).optimize(
        app, qa_rows(6), qa_rows(2, "v"), target="answer")

    made = len(model.calls) + len(hidden.calls)
    assert result.total_calls == made == cap  # the cap was reached inside the app, not passed
    assert result.stop_reason == "budget"
    assert result.usage["generate"]["calls"] == generate_calls(model) + len(hidden.calls)
    assert result.counters["app_unseen_calls"] == len(hidden.calls) > 0
    assert result.usage["generate"]["output_tokens"] > 0


@pytest.mark.parametrize("seen", [True, False])
def test_a_spent_budget_stops_a_call_inside_the_app_before_it_starts(seen: bool) -> None:
    model = scripted()
    step: Any = model if seen else RunnableLambda(lambda value: model.invoke(value))
    app = PromptTemplate.from_template("Q: {question}") | step | StrOutputParser()
    runner = AppRunner.from_app(app)
    caller = LLMCaller(CallBudget(1), None, backoff=0)
    assert runner.run(caller, "Q: {question}", {"question": "q0"}, "c0|train|0")["output"] == "A"
    with pytest.raises(BudgetExhausted):
        runner.run(caller, "Q: {question}", {"question": "q1"}, "c0|train|1")
    assert len(model.calls) == 1 and caller.usage["generate"]["calls"] == 1
    assert caller.counters.get("app_unseen_calls", 0) == (0 if seen else 1)


def test_a_transient_failure_inside_the_app_is_retried_and_counted() -> None:
    fails = itertools.count()

    def flaky(text: str, role: str) -> Any:
        if role == "generate" and next(fails) == 0:
            return TimeoutError("slow")
        return Script()(text, role)

    model = ScriptedChatModel(respond=flaky)
    result = optimizer(None).optimize(chain(model), qa_rows(3))
    assert result.counters["retries"] == 1 and result.counters["transient_errors"] == 1
    assert result.total_calls == len(model.calls)
    assert result.best_score == 1.0


def test_an_app_error_that_is_not_a_model_call_costs_only_its_row() -> None:
    model = scripted()

    def picky(text: str) -> str:
        if text == "A":
            raise ValueError("cannot parse the reply")
        return text

    app = chain(model) | RunnableLambda(picky)
    result = optimizer(None).optimize(app, qa_rows(3))
    record = result.records["c0|train|0"]
    assert record["error"].startswith("the app raised ValueError: cannot parse")
    assert record["score"] == 0.0
    assert result.counters["app_errors"] >= 3
    assert result.best_score == 1.0


def test_the_call_cache_answers_the_app_model_calls_of_a_rerun(tmp_path: Path) -> None:
    model = scripted()
    app = chain(model)
    cache = tmp_path / "calls.sqlite"
    first = optimizer(None).optimize(app, qa_rows(3), cache=cache)
    made = len(model.calls)
    again = optimizer(None).optimize(app, qa_rows(3), cache=cache)
    assert len(model.calls) == made  # every call of the re-run came from the cache
    assert again.best_template == first.best_template and again.best_score == first.best_score
    assert again.counters["cache_hits"] > 0


# --- the CLI ----------------------------------------------------------------------------

APP_MODULE = '''
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_gradsum.testing import ScriptedChatModel


def respond(text, role):
    if role == "gradient":
        return "Ask for B."
    if role == "summarize":
        return "Ask for B."
    if role == "edit":
        return "<prompt>BETTER: {question}</prompt>"
    return "B" if "BETTER" in text else "A"


model = ScriptedChatModel(respond=respond)
chain = PromptTemplate.from_template("Q: {question}", name="qa") | model | StrOutputParser()
'''


def test_cli_optimizes_an_app_loaded_from_a_module(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_gradsum.cli import app as cli_app

    (tmp_path / "my_gradsum_app.py").write_text(APP_MODULE, encoding="utf-8")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(3)), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_gradsum_app", raising=False)
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(cli_app, ["optimize", "--app", "my_gradsum_app:chain", "--target", "qa",
                                  "--data", str(data), "--evaluator", "exact_match",
                                  "--max-iterations", "1", "--minibatch-size", "2",
                                  "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["best_template"] == "BETTER: {question}" and result["best_score"] == 1.0
    assert result["run"]["app"] == "my_gradsum_app:chain"
    assert result["total_calls"] == len(sys.modules["my_gradsum_app"].model.calls)

    for args, message in (
            (["--app", "nope_no_such_module:chain"], "cannot import"),
            (["--app", "my_gradsum_app:missing"], "has no attribute"),
            (["--app", "my_gradsum_app:respond"], "not a LangChain Runnable"),
            (["--app", "my_gradsum_app"], "module:attribute"),
            (["--app", "my_gradsum_app:chain", "--target", "other"], "none of the app's"),
            (["--app", "my_gradsum_app:chain", "Q: {question}"], "not both"),
            (["Q: {question}"], "--model is required")):
        res = runner.invoke(cli_app, ["optimize", *args, "--data", str(data),
                                      "--evaluator", "exact_match"])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (args, res.stderr)


def test_optimizer_model_is_optional_only_with_an_app() -> None:
    opt = GradSumOptimizer(evaluators=[lambda outputs: 1.0])
    assert opt.model is None and opt.describe_settings()["model"] is None


def test_aoptimize_runs_an_app_too() -> None:
    import asyncio

    model = scripted()
    result = asyncio.run(optimizer(None).aoptimize(chain(model), qa_rows(3)))
    assert result.best_score == 1.0 and result.total_calls == len(model.calls)
    assert result.best_app.invoke({"question": "q1"}) == "B"


# --- a LangGraph graph whose system prompt comes from its context -----------------------


def test_a_langgraph_graph_reading_its_system_prompt_from_context_is_optimized() -> None:
    """The pattern of notebook 04: the system prompt is a PromptTemplate step (no
    placeholder: the question reaches the graph's model in its state), and a function
    runs the graph with the candidate's text as ``context``. The graph's model is not
    visible to the optimizer: its calls are counted through the callback."""
    from dataclasses import dataclass
    from operator import itemgetter
    from typing import TypedDict

    from langchain_core.messages import HumanMessage, SystemMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime

    system_text = "You are a helpful assistant."
    model = scripted(edit=lambda text: f"<instruction>Say {GOOD}.</instruction>")

    @dataclass
    class AgentContext:
        system_prompt: str = system_text

    class State(TypedDict):
        question: str
        answer: str

    def answer(state: State, runtime: Runtime[AgentContext]) -> dict[str, str]:
        reply = model.invoke([SystemMessage(runtime.context.system_prompt),
                              HumanMessage(state["question"])])
        return {"answer": str(reply.content)}

    builder = StateGraph(State, context_schema=AgentContext)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    graph = builder.compile()

    def run_graph(x: dict[str, Any], config: Any) -> str:
        out = graph.invoke({"question": x["question"]}, config,
                           context=AgentContext(system_prompt=x["system"].to_string()))
        return out["answer"]

    system = PromptTemplate.from_template(system_text, name="system")
    app = {"system": system, "question": itemgetter("question")} | RunnableLambda(run_graph)
    assert [p.prompt for p in find_prompts(app)] == [system]

    result = optimizer(model).optimize(app, qa_rows(4), qa_rows(2, "v"))
    assert result.initial_score == 0.0 and result.best_score == 1.0
    assert result.best_template == f"{system_text}\nSay {GOOD}."  # appended, not replaced
    assert result.total_calls == len(model.calls)
    assert result.counters["app_unseen_calls"] == generate_calls(model) > 0
    assert result.best_app.invoke({"question": "q1"}) == "B"
    assert app.invoke({"question": "q1"}) == "A" and system.template == system_text


def test_a_bare_prompt_with_no_placeholder_is_still_an_error() -> None:
    with pytest.raises(ValueError, match="no {variables}"):
        optimizer(scripted()).optimize("Answer the question.", qa_rows(2))


def test_a_chain_and_its_bare_prompt_send_the_same_calls_and_get_the_same_result() -> None:
    # the benchmark's agreement row (rag_nq_open, bare vs `prompt | model | parser`):
    # with a deterministic model both paths send identical messages in every role, so a
    # difference on a real server comes from the server, not from the app path
    def respond(text: str, role: str) -> Any:
        if role == "edit":  # the edit depends on every character the editor was shown
            return f"<prompt>{GOOD} {sum(map(ord, text)) % 97}: {{question}}</prompt>"
        if role == "generate":
            return "B" if GOOD in text and text.endswith(("0", "2", "4")) else "A"
        return Script()(text, role)

    runs = []
    for use_chain in (False, True):
        task, meta = ScriptedChatModel(respond=respond), ScriptedChatModel(respond=respond)
        target = chain(task) if use_chain else "Q: {question}"
        result = optimizer(None if use_chain else task, optimizer_model=meta, max_iterations=3,
                           minibatch_size=3).optimize(target, qa_rows(9), qa_rows(5, "v"))
        runs.append((result, sorted(task.calls, key=str), sorted(meta.calls, key=str)))
    (bare, bare_task, bare_meta), (app, app_task, app_meta) = runs
    assert [c[:2] for c in bare_task] == [c[:2] for c in app_task]
    assert [c[:2] for c in bare_meta] == [c[:2] for c in app_meta]
    assert (bare.best_template, bare.best_score, bare.total_calls) == (
        app.best_template, app.best_score, app.total_calls)
    assert bare.best_score > bare.initial_score  # the search did something to agree on


def test_a_chain_and_its_bare_prompt_send_byte_identical_requests_over_http() -> None:
    # the same check through a real OpenAI client and HTTP: every request body (messages,
    # model, temperature, token cap, tools) of the app path equals the bare path's
    from fake_openai_server import FakeOpenAIServer

    from langchain_gradsum.local_llm import local_chat_model

    bodies = []
    for use_chain in (False, True):
        server = FakeOpenAIServer(Script())
        with server.serving():
            task = local_chat_model(server.base_url, max_tokens=64)
            meta = local_chat_model(server.base_url, max_tokens=350)
            target = chain(task) if use_chain else "Q: {question}"
            optimizer(None if use_chain else task, optimizer_model=meta, criteria="Say B.",
                      max_iterations=2, minibatch_size=2, max_concurrency=1).optimize(
                target, qa_rows(4), qa_rows(2, "v"))
        bodies.append(sorted(json.dumps(b, sort_keys=True) for b in server.bodies))
    assert len(bodies[0]) > 10 and bodies[0] == bodies[1]
