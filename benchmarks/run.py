"""GRAD-SUM vs. no optimization vs. DSPy (COPRO, MIPROv2 zero-shot, GEPA) on offline tasks.

Every optimizer talks to the same OpenAI-compatible server through a counting proxy
started by this script. The proxy counts every chat request that reaches the server
(retries and DSPy's adapter fallbacks included), sums the token usage the server
reports, and refuses requests beyond the call budget of the optimization phase with
HTTP 400 (not retried by either client). So the budget is a hard cap on what reaches the
model for every optimizer, whatever its own knobs do; each optimizer's own knobs are
also set to fit the budget (see `dspy_knobs`), so the cap is a safety net.

Run (starts the embedded local LLM if GRADSUM_LOCAL_BASE_URL is not set):

    python -m langchain_gradsum.local_llm run -- \\
        python benchmarks/run.py --tasks svamp --optimizers initial gradsum copro
    python benchmarks/run.py table        # regenerate the README table from results/runs
    python benchmarks/run.py rescore [TASK...]  # re-apply the metrics to stored outputs
    python benchmarks/run.py plot [TASK...]     # results/<task>.png: score vs calls spent

Results: benchmarks/results/runs/<task>__<optimizer>__s<seed>.json (one per run,
overwritten by a re-run with the same task/optimizer/seed; a budget other than the default
adds `__b<budget>`; the date and settings are inside; older `<task>__<optimizer>.json`
files are still read, their seed taken from their settings).
Test outputs are cached in benchmarks/results/cache/ per exact (task, seed, model label,
template, max_tokens) for the LangChain-side runs: `initial` and a GRAD-SUM run that
returned the start prompt share one test phase (`--no-cache` to re-test).

The table compares each run with the `initial` run and the `gradsum` run of the same task
and seed on the same test rows: difference in mean score with a paired bootstrap 95%
interval (10,000 seeded resamples) and McNemar's exact p-value (benchmarks/stats.py).
Where GRAD-SUM and another optimizer (or the start prompt) both ran on two seeds or more,
a second table pools them: each seed's paired rows, concatenated.
Data: ../shared/data/<task>/data.jsonl (override with --data-dir); never copied here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import json
import os
import platform
import random
import socketserver
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from langchain_gradsum import choice_match, contains_answer, exact_match, numeric_match
from langchain_gradsum.evaluators import run_evaluator

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from stats import (  # noqa: E402
    TestCache,
    bootstrap_mean,
    compare,
    wilson,
)

RESULTS = HERE / "results" / "runs"
CACHE = HERE / "results" / "cache"
PLOTS = HERE / "results"
DEFAULT_BUDGET = 150
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
README = HERE / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"

OPTIMIZERS = ["initial", "gradsum", "gradsum_nosum", "gradsum_demos", "gradsum_chain", "copro",
              "miprov2", "gepa", "initial_dspy"]


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    inputs: tuple[str, ...]
    template: str
    """Starting prompt for LangChain-side optimizers (GRAD-SUM, `initial`)."""
    instruction: str
    """The same starting instruction as DSPy signature instructions."""
    description: str
    metric: Callable[..., dict]
    max_tokens: int


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("svamp", "svamp", ("question",),
         "Answer the question: {question}",
         "Answer the question.",
         "Solve grade-school math word problems. The reply must end with the final number.",
         numeric_match, 200),
    Task("gsm8k", "gsm8k", ("question",),
         "Answer the question: {question}",
         "Answer the question.",
         "Solve grade-school math word problems. The reply must end with the final number.",
         numeric_match, 320),
    Task("mmlu", "mmlu", ("subject", "question", "choices"),
         "Answer this multiple-choice question about {subject}.\n\n{question}\n\n{choices}",
         "Answer this multiple-choice question.",
         "Answer multiple-choice exam questions (57 subjects). The reply must name the "
         "letter (A-D) of the correct option.",
         choice_match, 150),
    Task("hellaswag", "hellaswag", ("context", "choices"),
         "Choose the most likely continuation.\n\n{context}\n\n{choices}",
         "Choose the most likely continuation.",
         "Pick the most plausible continuation of a short description (HellaSwag). The "
         "reply must name the letter (A-D) of the chosen option.",
         choice_match, 200),
    Task("bbh_sports_understanding", "bbh_sports_understanding", ("question",),
         "{question}",
         "Answer the question.",
         "Decide whether a sentence about sports is plausible. The reply must be exactly "
         "'yes' or 'no' (exact match).",
         exact_match, 128),
    Task("bbh_date_understanding", "bbh_date_understanding", ("question",),
         "{question}",
         "Answer the question.",
         "Answer date arithmetic questions with options (A)-(F). The reply must be exactly "
         "the option label, e.g. (B) (exact match).",
         exact_match, 200),
    Task("rag_nq_open", "rag_nq_open", ("context", "question"),
         "Answer the question using the passage.\n\nPassage: {context}\n\nQuestion: {question}",
         "Answer the question using the passage.",
         "Answer an open-domain question from a Wikipedia passage; a short answer is "
         "scored by whether it contains an accepted answer.",
         contains_answer, 64),
    Task("hotpotqa", "hotpotqa", ("context", "question"),
         "Answer the question using the paragraphs.\n\n{context}\n\nQuestion: {question}",
         "Answer the question using the paragraphs.",
         "Answer multi-hop questions from Wikipedia paragraphs; scored by whether the reply "
         "contains the reference answer.",
         contains_answer, 96),
]}


def load_rows(data_dir: Path, task: Task) -> list[dict[str, Any]]:
    path = data_dir / task.dataset / "data.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_indices(n_rows: int, task: Task, seed: int, n_train: int, n_val: int,
                  n_test: int) -> dict[str, list[int]]:
    """Seeded shuffle of line indices; disjoint train/val/test, same for every optimizer
    (the seed changes all three splits)."""
    idx = list(range(n_rows))
    random.Random(f"gradsum-bench-{task.name}-{seed}").shuffle(idx)
    need = n_train + n_val + n_test
    if need > len(idx):
        raise SystemExit(f"{task.name}: {need} rows requested, {len(idx)} available")
    return {"train": idx[:n_train], "val": idx[n_train:n_train + n_val],
            "test": idx[n_train + n_val:need]}


def split_rows(rows: list[dict[str, Any]], task: Task, seed: int, n_train: int, n_val: int,
               n_test: int) -> dict[str, list[dict[str, Any]]]:
    cut = split_indices(len(rows), task, seed, n_train, n_val, n_test)
    return {k: [rows[i] for i in v] for k, v in cut.items()}


# --------------------------------------------------------------------------- proxy


class CallMeter:
    """A loopback HTTP proxy in front of the model server that counts and caps calls."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.lock = threading.Lock()
        self.limit: int | None = None
        self.reset()
        meter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self._forward(self.rfile.read(n))

            def _forward(self, body: bytes | None) -> None:
                is_call = body is not None and "completions" in self.path
                if is_call and not meter.admit():
                    self._reply(400, json.dumps({"error": {
                        "message": "benchmark call budget exhausted",
                        "type": "invalid_request_error", "code": "budget_exhausted"}}).encode())
                    return
                path = self.path[3:] if self.path.startswith("/v1") else self.path
                req = urllib.request.Request(meter.upstream + path, data=body,
                                             method="POST" if body is not None else "GET")
                req.add_header("Content-Type", "application/json")
                try:
                    with urllib.request.urlopen(req, timeout=600) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                except Exception as e:  # upstream down
                    status, data = 502, json.dumps({"error": {"message": str(e)}}).encode()
                if is_call:
                    meter.record(status, data)
                self._reply(status, data)

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self, limit: int | None = None) -> None:
        with self.lock:
            self.limit = limit
            self.calls = 0
            self.refused = 0
            self.errors = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0

    def admit(self) -> bool:
        with self.lock:
            if self.limit is not None and self.calls >= self.limit:
                self.refused += 1
                return False
            self.calls += 1
            return True

    def record(self, status: int, data: bytes) -> None:
        with self.lock:
            if status != 200:
                self.errors += 1
                return
            try:
                usage = json.loads(data).get("usage") or {}
            except ValueError:
                return
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"calls": self.calls, "refused_over_budget": self.refused,
                    "http_errors": self.errors, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "tokens": self.prompt_tokens + self.completion_tokens}

    def close(self) -> None:
        self.server.shutdown()


# --------------------------------------------------------------------------- stats


def score(task: Task, row: dict[str, Any], output: str) -> tuple[float, str]:
    r = run_evaluator(task.metric, row["inputs"], output, row["outputs"])
    return r.score, r.comment


# --------------------------------------------------------------------------- runners


@dataclass
class Ctx:
    task: Task
    splits: dict[str, list[dict[str, Any]]]
    meter: CallMeter
    args: argparse.Namespace
    log: Callable[[str], None]
    extra: dict[str, Any] = field(default_factory=dict)
    test_idx: list[int] | None = None
    """Data line index of each test row (pairing and the cache key); positions if None."""
    git: dict[str, Any] = field(default_factory=dict)
    """`git_state()` when the run started: the code that ran (a commit made while it
    runs does not change what this process imported)."""


def _pool_map(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    """`fn` over `items` in a thread pool of `workers`, results in input order."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _output_tokens(msg: Any) -> int | None:
    usage = getattr(msg, "usage_metadata", None) or {}
    n = usage.get("output_tokens") if isinstance(usage, dict) else None
    return int(n) if n is not None else None


def test_template(ctx: Ctx, template: str, model: Any = None) -> list[dict[str, Any]]:
    """Score a LangChain prompt template on the test split (one call per row, through a
    thread pool of --concurrency). Outputs are cached per exact template (see TestCache):
    a row already in the cache is not sent to the model again."""
    from langchain_core.prompts import PromptTemplate

    a = ctx.args
    if model is None:
        from langchain_gradsum.local_llm import local_chat_model

        model = local_chat_model(ctx.meter.base_url, max_tokens=ctx.task.max_tokens,
                                 timeout=900)
    prompt = PromptTemplate.from_template(template)
    test = ctx.splits["test"]
    idx = ctx.test_idx if ctx.test_idx is not None else list(range(len(test)))
    cache = None
    if not getattr(a, "no_cache", False):
        cache = TestCache(getattr(a, "cache_dir", CACHE), ctx.task.name, a.seed,
                          a.model_label, template, ctx.task.max_tokens)

    def one(i: int) -> dict[str, Any]:
        row = test[i]
        hit = cache.get(idx[i]) if cache is not None else None
        if hit is not None:
            text, ntok, cached = hit["output"], hit.get("output_tokens"), True
        else:
            ntok, cached = None, False
            try:
                msg = model.invoke(prompt.format(**row["inputs"]))
                text, ntok = str(msg.content), _output_tokens(msg)
                if cache is not None:
                    cache.put(idx[i], text, ntok)
            except Exception as e:  # counted as wrong, not cached
                text = f"<error {type(e).__name__}: {e}>"
        s, c = score(ctx.task, row, text)
        return {"row": idx[i], "score": s, "comment": c, "output": text,
                "output_tokens": ntok, "cached": cached}

    out = _pool_map(one, list(range(len(test))), getattr(a, "concurrency", 1))
    if cache is not None:
        ctx.extra["cache"] = {"file": cache.path.name, "hits": cache.hits,
                              "misses": cache.misses}
    return out


def run_initial(ctx: Ctx) -> dict[str, Any]:
    return {"final_prompt": ctx.task.template, "opt": None}


def run_gradsum(ctx: Ctx, summarize: bool = True, chain: bool = False,
                demos: bool = False) -> dict[str, Any]:
    """GRAD-SUM on the bare prompt; with `chain`, on the app ``prompt | model |
    StrOutputParser()`` (the app path of `optimize`: it should score the same); with
    `demos`, with ``demo_edits`` on."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate

    from langchain_gradsum import GradSumOptimizer, OptimizationError
    from langchain_gradsum.local_llm import local_chat_model

    a = ctx.args
    task_model = local_chat_model(ctx.meter.base_url, max_tokens=ctx.task.max_tokens,
                                  timeout=900)
    target: Any = ctx.task.template
    if chain:
        target = PromptTemplate.from_template(ctx.task.template) | task_model | StrOutputParser()
    opt = GradSumOptimizer(
        None if chain else task_model,
        optimizer_model=local_chat_model(ctx.meter.base_url, max_tokens=a.optimizer_max_tokens,
                                         timeout=900),
        task_description=ctx.task.description,
        evaluators=[ctx.task.metric],
        beam_width=a.beam_width, candidates_per_prompt=a.candidates,
        max_iterations=a.iterations, minibatch_size=a.minibatch,
        max_gradients_per_prompt=a.max_gradients, max_llm_calls=a.budget,
        max_concurrency=a.concurrency, summarize=summarize, seed=a.seed, demo_edits=demos,
    )

    def on_event(e: dict[str, Any]) -> None:
        if e.get("event") in ("scored", "candidate", "finalize", "rejected"):
            ctx.log(f"    [{e.get('calls', 0):3d}] {e.get('event')} "
                    f"{e.get('candidate', e.get('parent', ''))} {e.get('score', '')}")

    try:
        res = opt.optimize(target, ctx.splits["train"], ctx.splits["val"], on_event=on_event)
    except OptimizationError as e:
        if e.partial_result is None:
            raise
        res = e.partial_result
    return {"final_prompt": res.best_template,
            "opt": {"best_score": res.best_score, "initial_score": res.initial_score,
                    "split": res.split, "stop_reason": res.stop_reason,
                    "iterations": res.iterations, "reported_calls": res.total_calls,
                    "usage": res.usage, "counters": res.counters, "warnings": res.warnings,
                    "candidates": {k: {"template": v["template"], "parent": v["parent_id"],
                                       "scores": v["scores"], "val_score": v["val_score"],
                                       "screen": v.get("screen"),
                                       "strategy": v.get("strategy")}
                                   for k, v in res.candidates.items()}}}


# --- DSPy


def _dspy_lms(ctx: Ctx) -> tuple[Any, Any]:
    import dspy

    def lm(max_tokens: int) -> Any:
        return dspy.LM("openai/local", api_base=ctx.meter.base_url, api_key="unused",
                       max_tokens=max_tokens, temperature=0, cache=False, num_retries=0,
                       timeout=900)

    return lm(ctx.task.max_tokens), lm(ctx.args.optimizer_max_tokens)


def _dspy_program(task: Task) -> Any:
    import dspy

    sig = dspy.Signature({**{k: dspy.InputField() for k in task.inputs},
                          "answer": dspy.OutputField()}, task.instruction)
    return dspy.Predict(sig)


def _dspy_examples(task: Task, rows: list[dict[str, Any]]) -> list[Any]:
    import dspy

    return [dspy.Example(**r["inputs"], answer=r["outputs"]["answer"], _row=r)
            .with_inputs(*task.inputs) for r in rows]


def _dspy_metric(task: Task, feedback: bool) -> Callable[..., Any]:
    import dspy

    def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None,
               pred_trace: Any = None) -> Any:
        text = str(getattr(pred, "answer", "") or "")
        s, c = score(task, gold._row, text)
        if feedback:
            return dspy.Prediction(score=s, feedback=c)
        return s

    return metric


def _dspy_instructions(program: Any) -> str:
    return "\n---\n".join(p.signature.instructions for p in program.predictors())


def test_dspy(ctx: Ctx, program: Any, task_lm: Any) -> list[dict[str, Any]]:
    """Score a DSPy program on the test split (not cached; --concurrency threads, each
    with its own dspy.context)."""
    import dspy

    test = ctx.splits["test"]
    idx = ctx.test_idx if ctx.test_idx is not None else list(range(len(test)))
    examples = _dspy_examples(ctx.task, test)

    def one(i: int) -> dict[str, Any]:
        ex = examples[i]
        with dspy.context(lm=task_lm):
            try:
                text = str(program(**ex.inputs()).answer)
            except Exception as e:
                text = f"<error {type(e).__name__}: {str(e)[:200]}>"
        s, c = score(ctx.task, ex._row, text)
        return {"row": idx[i], "score": s, "comment": c, "output": text}

    return _pool_map(one, list(range(len(test))), ctx.args.concurrency)


def dspy_knobs(ctx: Ctx) -> dict[str, Any]:
    """Each DSPy optimizer's own budget knobs, chosen so its expected calls fit the cap."""
    a, n_train, n_val = ctx.args, len(ctx.splits["train"]), len(ctx.splits["val"])
    b = a.budget
    # COPRO: depth x breadth candidates, each scored on the whole trainset, + 1 proposal
    # call per depth (n=breadth-1 completions in one request).
    copro_train = max(2, min(n_train, (b - 2) // 4))  # breadth 2, depth 2 -> 4 evaluations
    # MIPROv2 zero-shot, no minibatching: ~1-2 program-description calls + one proposal
    # call per candidate (two when DSPy's JSON fallback is needed), 1 full val eval of
    # the baseline, then 1 full val eval per trial.
    n_cand = 3
    trials = max(1, (b - 4 - 2 * n_cand - n_val) // n_val)
    # GEPA: max_metric_calls counts program runs; each iteration adds one reflection call
    # (about one per 2 x reflection_minibatch_size metric calls), two when the reply
    # needs DSPy's JSON fallback; keep a third of the budget for them.
    gepa_metric_calls = max(n_val + 6, int((b - 2) * 2 / 3))
    return {"copro": {"breadth": 2, "depth": 2, "trainset_size": copro_train,
                      "init_temperature": 1.0},
            "miprov2": {"num_candidates": n_cand, "num_trials": trials, "minibatch": False,
                        "data_aware_proposer": False, "program_aware_proposer": False,
                        "max_bootstrapped_demos": 0, "max_labeled_demos": 0},
            "gepa": {"max_metric_calls": gepa_metric_calls, "reflection_minibatch_size": 3,
                     "use_merge": False, "candidate_selection_strategy": "pareto"}}


def run_dspy(ctx: Ctx, which: str) -> dict[str, Any]:
    import logging

    import dspy

    for name in ("dspy", "optuna", "LiteLLM", "litellm", "gepa"):
        logging.getLogger(name).setLevel(logging.WARNING)

    task_lm, prompt_lm = _dspy_lms(ctx)
    dspy.configure(lm=task_lm)
    knobs = dspy_knobs(ctx)
    student = _dspy_program(ctx.task)
    train = _dspy_examples(ctx.task, ctx.splits["train"])
    val = _dspy_examples(ctx.task, ctx.splits["val"])
    program = student
    if which == "initial_dspy":
        pass
    elif which == "copro":
        k = knobs["copro"]
        tp = dspy.COPRO(prompt_model=prompt_lm, metric=_dspy_metric(ctx.task, False),
                        breadth=k["breadth"], depth=k["depth"],
                        init_temperature=k["init_temperature"])
        program = tp.compile(student, trainset=train[:k["trainset_size"]],
                             eval_kwargs={"num_threads": ctx.args.concurrency,
                                          "display_progress": False, "display_table": 0})
    elif which == "miprov2":
        k = knobs["miprov2"]
        tp = dspy.MIPROv2(metric=_dspy_metric(ctx.task, False), prompt_model=prompt_lm,
                          task_model=task_lm, max_bootstrapped_demos=0, max_labeled_demos=0,
                          auto=None, num_candidates=k["num_candidates"],
                          num_threads=ctx.args.concurrency,
                          seed=ctx.args.seed, verbose=False)
        program = tp.compile(student, trainset=train, valset=val,
                             num_trials=k["num_trials"], minibatch=False,
                             data_aware_proposer=k["data_aware_proposer"],
                             program_aware_proposer=k["program_aware_proposer"])
    elif which == "gepa":
        k = knobs["gepa"]
        tp = dspy.GEPA(metric=_dspy_metric(ctx.task, True),
                       max_metric_calls=k["max_metric_calls"], reflection_lm=prompt_lm,
                       reflection_minibatch_size=k["reflection_minibatch_size"],
                       use_merge=False, num_threads=ctx.args.concurrency, seed=ctx.args.seed,
                       candidate_selection_strategy=k["candidate_selection_strategy"])
        program = tp.compile(student, trainset=train, valset=val)
    else:
        raise ValueError(which)
    ctx.extra["program"], ctx.extra["task_lm"] = program, task_lm
    return {"final_prompt": _dspy_instructions(program),
            "opt": {"knobs": knobs.get(which)}}


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "initial": run_initial,
    "gradsum": run_gradsum,
    "gradsum_nosum": lambda ctx: run_gradsum(ctx, summarize=False),
    "gradsum_demos": lambda ctx: run_gradsum(ctx, demos=True),
    "gradsum_chain": lambda ctx: run_gradsum(ctx, chain=True),
    "copro": lambda ctx: run_dspy(ctx, "copro"),
    "miprov2": lambda ctx: run_dspy(ctx, "miprov2"),
    "gepa": lambda ctx: run_dspy(ctx, "gepa"),
    "initial_dspy": lambda ctx: run_dspy(ctx, "initial_dspy"),
}


def run_one(ctx: Ctx, name: str) -> dict[str, Any]:
    meter, a = ctx.meter, ctx.args
    ctx.extra.clear()
    meter.reset(limit=None if name in ("initial", "initial_dspy") else a.budget)
    t0 = time.monotonic()
    error = None
    try:
        got = RUNNERS[name](ctx)
    except Exception as e:  # keep going: record the failure, test the starting prompt
        error = f"{type(e).__name__}: {e}"
        ctx.log("    optimization failed: " + error)
        traceback.print_exc()
        got = {"final_prompt": None, "opt": None}
    opt_time = time.monotonic() - t0
    opt_meter = meter.snapshot()
    meter.reset(limit=None)
    t1 = time.monotonic()
    if name in ("copro", "miprov2", "gepa", "initial_dspy"):
        if "program" not in ctx.extra:  # failed: test the unoptimized DSPy program
            ctx.extra["program"] = _dspy_program(ctx.task)
            ctx.extra["task_lm"] = _dspy_lms(ctx)[0]
            got["final_prompt"] = ctx.task.instruction
        rows = test_dspy(ctx, ctx.extra["program"], ctx.extra["task_lm"])
    else:
        got["final_prompt"] = got["final_prompt"] or ctx.task.template
        rows = test_template(ctx, got["final_prompt"])
    test_time = time.monotonic() - t1
    test_meter = meter.snapshot()
    k = sum(r["score"] for r in rows)
    lo, hi = wilson(k, len(rows))
    budget = None if name in ("initial", "initial_dspy") else a.budget
    row_tokens = [r["output_tokens"] for r in rows if r.get("output_tokens") is not None]
    if row_tokens and len(row_tokens) == len(rows):  # per row (cached rows included)
        mean_out = sum(row_tokens) / len(row_tokens)
    else:  # what the proxy saw in the test phase (DSPy: no per-row usage)
        mean_out = (test_meter["completion_tokens"] / test_meter["calls"]
                    if test_meter["calls"] else None)
    details = got["opt"] if isinstance(got["opt"], dict) else None
    return {
        "task": ctx.task.name, "optimizer": name,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": a.model_label, "machine": machine(), "git": ctx.git or git_state(),
        "metric": ctx.task.metric.__name__,
        "seed": a.seed,
        "sizes": {k2: len(v) for k2, v in ctx.splits.items()},
        "settings": {k2: v for k2, v in vars(a).items() if k2 not in ("func",)
                     and not isinstance(v, Path)},
        "test_score": k / len(rows), "test_correct": k, "test_n": len(rows),
        "ci95_wilson": [round(lo, 3), round(hi, 3)],
        "optimization": {**opt_meter, "wall_s": round(opt_time, 1), "budget": budget,
                         "cap_used": (round(opt_meter["calls"] / budget, 3) if budget
                                      else None),
                         "stop_reason": (details or {}).get("stop_reason")},
        "test": {**test_meter, "wall_s": round(test_time, 1),
                 "mean_output_tokens": None if mean_out is None else round(mean_out, 1),
                 "cache": ctx.extra.get("cache"), "concurrency": a.concurrency},
        "total_calls": opt_meter["calls"] + test_meter["calls"],
        "total_tokens": opt_meter["tokens"] + test_meter["tokens"],
        "wall_s": round(opt_time + test_time, 1),
        "error": error,
        "final_prompt": got["final_prompt"],
        "details": got["opt"],
        "test_rows": rows,
    }


def git_state() -> dict[str, Any]:
    """Commit of the checkout, and whether the package sources differ from it (the
    package is installed editable: uncommitted edits are what ran)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=HERE.parent, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    return {"commit": git("rev-parse", "HEAD"),
            "package_dirty": bool(git("status", "--porcelain", "langchain_gradsum")),
            "benchmarks_dirty": bool(git("status", "--porcelain", "benchmarks/run.py",
                                         "benchmarks/stats.py"))}


def machine() -> str:
    return (f"{os.cpu_count()} cores, no GPU, {platform.machine()}, "
            f"Python {platform.python_version()}")


@contextlib.contextmanager
def model_server(base_url: str | None, n_threads: int | None = None) -> Iterator[str]:
    from langchain_gradsum.local_llm import (
        BASE_URL_ENV,
        LocalLLMServer,
        assemble_model,
        running_local_llm,
    )

    url = base_url or os.environ.get(BASE_URL_ENV)
    if url:
        yield url
        return
    if n_threads:  # our own server with this many threads
        with LocalLLMServer(assemble_model(), n_threads=n_threads) as server:
            yield server.base_url
        return
    with running_local_llm() as url:
        yield url


# --------------------------------------------------------------------------- table


def run_seed(r: dict[str, Any]) -> int:
    return int(r.get("seed", (r.get("settings") or {}).get("seed", 0)))


def run_budget(r: dict[str, Any]) -> int | None:
    return (r.get("settings") or {}).get("budget")


def result_name(task: str, optimizer: str, seed: int, budget: int | None) -> str:
    """`<task>__<optimizer>__s<seed>[__b<budget>].json` (the budget only when it is not the
    default and the optimizer spends one)."""
    name = f"{task}__{optimizer}__s{seed}"
    if optimizer not in ("initial", "initial_dspy") and budget not in (None, DEFAULT_BUDGET):
        name += f"__b{budget}"
    return name + ".json"


def load_runs(results_dir: Path = RESULTS) -> list[dict[str, Any]]:
    """Every result in results_dir (new and old file names), one per (task, optimizer,
    seed, budget): the latest by date when two files describe the same run."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for p in sorted(results_dir.glob("*.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if not isinstance(r, dict) or "task" not in r or "optimizer" not in r:
            continue
        r["_file"] = p.name
        budget = None if r["optimizer"] in ("initial", "initial_dspy") else run_budget(r)
        key = (r["task"], r["optimizer"], run_seed(r), budget)
        if key not in best or r.get("date_utc", "") >= best[key].get("date_utc", ""):
            best[key] = r
    order = {n: i for i, n in enumerate(OPTIMIZERS)}
    return sorted(best.values(), key=lambda r: (r["task"], run_seed(r),
                                                order.get(r["optimizer"], 99),
                                                run_budget(r) or 0))


def _split_sig(r: dict[str, Any]) -> tuple[Any, ...]:
    st = r.get("settings") or {}
    return (run_seed(r), st.get("train"), st.get("val"), st.get("test"),
            st.get("data_dir"))


def paired_scores(ref: dict[str, Any], run: dict[str, Any]
                  ) -> tuple[list[float], list[float]] | None:
    """Score vectors of `ref` and `run` on the same test rows: matched by stored data row
    index when both runs have it, else by position when both used the same split (same
    seed and sizes); None when they cannot be paired."""
    a, b = ref.get("test_rows") or [], run.get("test_rows") or []
    if not a or not b:
        return None
    if all("row" in x for x in a) and all("row" in x for x in b):
        sa = {x["row"]: float(x["score"]) for x in a}
        common = [x for x in b if x["row"] in sa]
        if not common:
            return None
        return [sa[x["row"]] for x in common], [float(x["score"]) for x in common]
    if len(a) == len(b) and _split_sig(ref) == _split_sig(run):
        return [float(x["score"]) for x in a], [float(x["score"]) for x in b]
    return None


def reference(runs: list[dict[str, Any]], run: dict[str, Any],
              optimizer: str) -> dict[str, Any] | None:
    """The `optimizer` run of the same task and seed (for gradsum: the same budget)."""
    same = [r for r in runs if r["task"] == run["task"] and r["optimizer"] == optimizer
            and run_seed(r) == run_seed(run)]
    if optimizer == "gradsum":
        same = [r for r in same if run_budget(r) == run_budget(run)] or (
            [r for r in same if run_budget(r) == DEFAULT_BUDGET]
            if run["optimizer"] in ("initial", "initial_dspy") else [])
    return same[0] if same else None


def comparisons(runs: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """Paired comparison of `run` with the `initial` and `gradsum` runs of its task/seed
    (diff = run - reference)."""
    out: dict[str, Any] = {}
    for ref_name in ("initial", "gradsum"):
        ref = reference(runs, run, ref_name)
        if ref is None or ref is run:
            out[ref_name] = None
            continue
        pair = paired_scores(ref, run)
        out[ref_name] = compare(*pair) if pair else None
    return out


LABEL_METRICS = ("exact_match", "choice_match")
"""Metrics scoring a label, where one fixed reply for every row has a score to beat."""


@cache
def _answers(task: str) -> tuple[str, ...] | None:
    """Every reference answer of `task`'s data set (None when the data is not here)."""
    try:
        rows = load_rows(DEFAULT_DATA, TASKS[task])
    except (OSError, KeyError):
        return None
    return tuple(str(r["outputs"].get("answer", "")).strip() for r in rows)


def constant_reply(run: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The best fixed reply on `run`'s test rows (a label task's most frequent answer) and
    the paired comparison of `run` with it; None for other metrics or without the data."""
    answers = _answers(run["task"])
    rows = run.get("test_rows") or []
    if TASKS[run["task"]].metric.__name__ not in LABEL_METRICS or answers is None or \
            not rows or not all("row" in x for x in rows):
        return None
    labels = [answers[x["row"]] for x in rows]
    top = max(sorted(set(labels)), key=labels.count)
    return top, compare([float(a == top) for a in labels], [float(x["score"]) for x in rows])


def _fmt_cmp(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    lo, hi = c["ci95"]
    p = c["p_mcnemar"]
    ps = f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"
    return f"{c['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}], p={ps}"


def table(results_dir: Path = RESULTS) -> str:
    runs = load_runs(results_dir)
    lines = ["| task | optimizer | seed | test score | 95% CI (Wilson) | "
             "vs initial: diff [95% CI], p | vs gradsum: diff [95% CI], p | "
             "vs best constant reply: diff [95% CI], p | "
             "opt calls / cap | stop | test calls | out tok / test call | tokens | "
             "opt wall s | total wall s | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        o, t = r["optimization"], r["test"]
        budget = f"{o['calls']} / {o['budget']}" if o.get("budget") else "0"
        if o.get("refused_over_budget"):
            budget += f" (+{o['refused_over_budget']} refused)"
        stop = o.get("stop_reason") or ((r.get("details") or {}).get("stop_reason")
                                        if isinstance(r.get("details"), dict) else None)
        err = " (failed, see JSON)" if r.get("error") else ""
        mean_out = t.get("mean_output_tokens")
        if mean_out is None and t.get("calls"):
            mean_out = t.get("completion_tokens", 0) / t["calls"]
        cmp_ = comparisons(runs, r)
        const = constant_reply(r)
        vs_const = f"'{const[0]}' always: {_fmt_cmp(const[1])}" if const else "-"
        lines.append(
            f"| {r['task']} | {r['optimizer']}{err} | {run_seed(r)} | "
            f"{r['test_correct']:g}/{r['test_n']} = {r['test_score']:.2f} | "
            f"{r['ci95_wilson'][0]:.2f}-{r['ci95_wilson'][1]:.2f} | "
            f"{_fmt_cmp(cmp_['initial'])} | {_fmt_cmp(cmp_['gradsum'])} | {vs_const} | "
            f"{budget} | {stop or '-'} | {t['calls']} | "
            f"{'-' if mean_out is None else f'{mean_out:.0f}'} | {r['total_tokens']} | "
            f"{o['wall_s']:.0f} | {r['wall_s']:.0f} | {r['date_utc'][:10]} |")
    return "\n".join(lines)


def pooled(runs: list[dict[str, Any]], task: str, ref_name: str, run_name: str
           ) -> tuple[list[int], dict[str, Any]] | None:
    """`run_name` against `ref_name` on `task` over every seed both ran at the default
    budget: each seed's paired rows, concatenated (a data row in two seeds' test splits
    counts once per seed). The seeds and the comparison; None without two seeds."""
    seeds: list[int] = []
    a: list[float] = []
    b: list[float] = []
    for ref in runs:
        if ref["task"] != task or ref["optimizer"] != ref_name or (
                ref_name not in ("initial", "initial_dspy")
                and run_budget(ref) != DEFAULT_BUDGET):
            continue
        mine = [r for r in runs if r["task"] == task and r["optimizer"] == run_name
                and run_seed(r) == run_seed(ref) and run_budget(r) == DEFAULT_BUDGET]
        pair = paired_scores(ref, mine[0]) if mine else None
        if pair:
            seeds.append(run_seed(ref))
            a += pair[0]
            b += pair[1]
    return (seeds, compare(a, b)) if len(seeds) > 1 else None


def pooled_table(results_dir: Path = RESULTS) -> str:
    """GRAD-SUM against the start prompt and each other optimizer, seeds pooled (only
    where both ran on two seeds or more)."""
    runs = load_runs(results_dir)
    lines = ["| task | comparison | seeds | paired rows | diff [95% CI], McNemar p |",
             "|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in runs}):
        for other in [o for o in OPTIMIZERS if o != "gradsum"]:
            ref, run = ("initial", "gradsum") if other == "initial" else ("gradsum", other)
            got = pooled(runs, task, ref, run)
            if got:
                seeds, c = got
                lines.append(f"| {task} | {run} vs {ref} | {', '.join(map(str, seeds))} | "
                             f"{c['n']} | {_fmt_cmp(c)} |")
    return "\n".join(lines)


def plot(tasks: list[str] | None = None, results_dir: Path = RESULTS,
         out_dir: Path = PLOTS) -> list[Path]:
    """One PNG per task: test score against the optimization LLM calls spent, one point per
    optimizer/seed (initial at 0 calls), bootstrap 95% interval of the score as error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("run.py plot needs matplotlib: pip install -e '.[bench]' "
                         "(or .venv/bin/pip install matplotlib)") from None
    runs = load_runs(results_dir)
    names = sorted({r["task"] for r in runs} if not tasks else set(tasks))
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    colors = {n: f"C{i}" for i, n in enumerate(OPTIMIZERS)}
    written = []
    for task in names:
        mine = [r for r in runs if r["task"] == task and r.get("test_rows")]
        if not mine:
            continue
        seeds = sorted({run_seed(r) for r in mine})
        fig, ax = plt.subplots(figsize=(7, 4.5))
        seen: set[str] = set()
        for r in mine:
            scores = [float(x["score"]) for x in r["test_rows"]]
            mean, lo, hi = bootstrap_mean(scores)
            x = 0 if r["optimizer"] in ("initial", "initial_dspy") else \
                r["optimization"]["calls"]
            label = r["optimizer"] if r["optimizer"] not in seen else None
            seen.add(r["optimizer"])
            ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt=markers[
                seeds.index(run_seed(r)) % len(markers)], color=colors.get(
                r["optimizer"], "k"), capsize=3, label=label)
        ax.set_xlabel("optimization LLM calls spent")
        sizes = "/".join(str(n) for n in sorted({r["test_n"] for r in mine}))
        ax.set_ylabel(f"test score (n={sizes}), bootstrap 95% CI")
        ax.set_title(f"{task} (seeds {', '.join(map(str, seeds))}; marker = seed)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = out_dir / f"{task}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def prompts_md(results_dir: Path = RESULTS) -> str:
    out = []
    for r in load_runs(results_dir):
        if r["optimizer"] in ("initial", "initial_dspy"):
            continue
        fp = (r.get("final_prompt") or "").strip().replace("```", "'''")
        out.append(f"**{r['task']} / {r['optimizer']} / seed {run_seed(r)}** "
                   f"({r['test_score']:.2f}):\n\n```\n{fp[:1200]}\n```\n")
    return "\n".join(out)


def rescore(tasks: list[str], results_dir: Path = RESULTS,
            data_dir: Path = DEFAULT_DATA) -> list[Path]:
    """Re-apply each task's current metric to the stored test outputs (no LLM call),
    e.g. after a metric fix, so every row of the table is scored the same way."""
    done = []
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        if r["task"] not in tasks or not r.get("test_rows"):
            continue
        task = TASKS[r["task"]]
        st = r["settings"]
        test = split_rows(load_rows(data_dir, task), task, st["seed"], st["train"], st["val"],
                          st["test"])["test"]
        if len(test) != len(r["test_rows"]):
            raise ValueError(f"{path}: {len(r['test_rows'])} stored rows, split has {len(test)}")
        for row, stored in zip(test, r["test_rows"], strict=True):
            stored["score"], stored["comment"] = score(task, row, stored["output"])
        k = sum(x["score"] for x in r["test_rows"])
        lo, hi = wilson(k, len(test))
        before = r["test_correct"]
        r.update(test_score=k / len(test), test_correct=k,
                 ci95_wilson=[round(lo, 3), round(hi, 3)])
        if k != before:
            r.setdefault("rescored", []).append(
                {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "test_correct_before": before, "test_correct_after": k})
        path.write_text(json.dumps(r, indent=2, ensure_ascii=False, default=str),
                        encoding="utf-8")
        done.append(path)
    return done


def update_readme() -> None:
    text = README.read_text(encoding="utf-8")
    block = (f"{TABLE_BEGIN}\n{table()}\n\nSeeds pooled (each seed's paired test rows, "
             f"concatenated; a comparison appears once both ran on two seeds):\n\n"
             f"{pooled_table()}\n\n<details><summary>Final prompts / instructions"
             f"</summary>\n\n{prompts_md()}\n</details>\n{TABLE_END}")
    if TABLE_BEGIN in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text += "\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        update_readme()
        print(table())
        return 0
    if argv[:1] == ["plot"]:
        for path in plot(argv[1:] or None):
            print(f"wrote {path}")
        return 0
    if argv[:1] == ["rescore"]:
        for path in rescore(argv[1:] or sorted(TASKS)):
            print(f"rescored {path}")
        update_readme()
        print(table())
        return 0
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["svamp"], choices=sorted(TASKS))
    p.add_argument("--optimizers", nargs="+", default=OPTIMIZERS, choices=OPTIMIZERS)
    p.add_argument("--train", type=int, default=30)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                   help="cap on LLM calls of each optimizer's optimization phase")
    p.add_argument("--beam-width", type=int, default=2)
    p.add_argument("--candidates", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10,
                   help="GRAD-SUM iteration cap (it normally stops by --budget first)")
    p.add_argument("--minibatch", type=int, default=4)
    p.add_argument("--max-gradients", type=int, default=3)
    p.add_argument("--optimizer-max-tokens", type=int, default=350)
    p.add_argument("--seed", type=int, default=0,
                   help="splits, optimizer seeds, and part of the result file name")
    p.add_argument("--concurrency", type=int, default=4,
                   help="LLM calls in flight: GRAD-SUM's max_concurrency, DSPy's "
                        "num_threads, and the test phase's thread pool")
    p.add_argument("--no-cache", action="store_true",
                   help="don't read or write the test-output cache (results/cache/)")
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    p.add_argument("--base-url", default=None, help="model server (default: env or start one)")
    p.add_argument("--n-threads", type=int, default=None,
                   help="start the local server with this many threads (1 is more robust "
                        "than 2 when other processes load the 2 cores)")
    p.add_argument("--model-label", default="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (llama.cpp)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-readme", action="store_true", help="don't update README's table")
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S ") + msg, flush=True)

    a.results_dir.mkdir(parents=True, exist_ok=True)
    started = git_state()  # the package was imported with this checkout
    with model_server(a.base_url, a.n_threads) as url:
        meter = CallMeter(url)
        try:
            for tname in a.tasks:
                task = TASKS[tname]
                rows = load_rows(a.data_dir, task)
                cut = split_indices(len(rows), task, a.seed, a.train, a.val, a.test)
                splits = {k: [rows[i] for i in v] for k, v in cut.items()}
                for opt in a.optimizers:
                    log(f"{tname} / {opt} / seed {a.seed}: start")
                    res = run_one(Ctx(task, splits, meter, a, log, test_idx=cut["test"],
                                      git=started), opt)
                    path = a.results_dir / result_name(tname, opt, a.seed, a.budget)
                    path.write_text(json.dumps(res, indent=2, ensure_ascii=False,
                                               default=str), encoding="utf-8")
                    log(f"{tname} / {opt}: test {res['test_correct']:g}/{res['test_n']} "
                        f"opt calls {res['optimization']['calls']} "
                        f"(refused {res['optimization']['refused_over_budget']}) "
                        f"test calls {res['test']['calls']} wall {res['wall_s']:.0f}s "
                        f"-> {path}")
                    if not a.no_readme and a.results_dir == RESULTS:
                        update_readme()
        finally:
            meter.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
