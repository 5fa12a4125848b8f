"""The five GRAD-SUM modules as LangGraph nodes, plus `finalize`.

generate -> evaluate -(route)-> gradient -> summarize -> edit -> generate ...

Each node reads the state, makes its LLM calls through one `LLMCaller` (budget,
retries, trace names, usage) and returns only what it changed. `evaluate` also
writes what the beam decisions (`beam.advance`) make of the new scores; the `route`
edge only reads them. Once a node has set ``stop_reason`` (say, the budget ran out
mid-step) the later nodes of the iteration do nothing and `route` goes to `finalize`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from langchain_gradsum import beam as beam_mod
from langchain_gradsum._llm import BudgetExhausted, CallBudget, LLMCaller, resolve_model
from langchain_gradsum._templates import (
    PromptSlot,
    copied_example,
    example_words,
    heal_template,
    template_variables,
)
from langchain_gradsum.data import minibatch_indices
from langchain_gradsum.evaluators import EvalResult, EvaluatorError, JudgeVerdict, run_evaluator
from langchain_gradsum.feedback import edit_history, evidence, kind_counts
from langchain_gradsum.state import (
    Candidate,
    Example,
    GradSumContext,
    GradSumState,
    Record,
    add_usage,
    record_key,
)

__all__ = ["edit", "evaluate", "finalize", "generate", "gradient", "summarize"]

Ctx = Runtime[GradSumContext]
_SHOW_LIMIT = 2000


# --- the five modules ------------------------------------------------------------------


def generate(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Run every candidate in the beam over its rows: this iteration's batch, or, for a
    new child under screening, the few failures it was written to fix."""
    ctx = runtime.context
    update: dict[str, Any] = {}
    if not state.get("candidates"):  # first step: the user's prompt is candidate c0
        c0 = new_candidate("c0", state["prompt"], parent_id=None, iteration=0, summary=None)
        update = {"candidates": {"c0": c0}, "beam": ["c0"], "iteration": 0}
        state = {**state, **update}  # type: ignore[typeddict-item]
        update["batch"] = beam_mod.current_batch(state, ctx)
        state = {**state, **update}  # type: ignore[typeddict-item]
    if state.get("stop_reason"):
        return update
    it = state["iteration"]
    if "c0" in update.get("candidates", {}):  # later iterations are announced by `edit`
        runtime.stream_writer({"event": "iteration", "iteration": 0, "beam": ["c0"]})
    jobs = [
        (cid, "train", i)
        for cid in state["beam"]
        for i in beam_mod.rows_to_score(state, ctx, cid)
        if record_key(cid, "train", i) not in state.get("records", {})
    ]
    caller = _caller(state, runtime, config, phase="loop")
    records, stop = _run_task(caller, ctx, state, jobs, iteration=it)
    return {**update, **_result(caller, stop), "records": records}


def evaluate(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Score each new output (judge and/or evaluators), then decide what follows
    (`beam.advance`): screens, more rows, or the pruned beam and any stop reason."""
    ctx = runtime.context
    if state.get("stop_reason"):  # set by `generate` (the budget ran out mid-step)
        return {"beam": beam_mod.beam_on_stop(state, ctx)}
    it = state["iteration"]
    records = state.get("records", {})
    jobs = [
        (cid, "train", i)
        for cid in state["beam"]
        for i in beam_mod.rows_to_score(state, ctx, cid)
        if "score" not in records.get(record_key(cid, "train", i), {"score": None})
    ]
    caller = _caller(state, runtime, config, phase="loop")
    scored, stop = _score(caller, ctx, state, jobs, iteration=it)
    update = {**_result(caller, stop), "records": scored}
    merged: GradSumState = {**state, "records": {**records, **scored},  # type: ignore[typeddict-item]
                            "usage": add_usage(state.get("usage"), caller.usage)}
    if stop:
        return {**update, "beam": beam_mod.beam_on_stop(merged, ctx)}
    decided, events = beam_mod.advance(merged, ctx)
    calls = _spent(merged)
    for event in events:
        runtime.stream_writer({**event, "calls": calls})
    return {**update, **decided}


def gradient(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Critique each beam member once per output short of full marks (worst first).

    Each critique names the kind of mistake on its first line (``Kind: format``...).
    """
    ctx = runtime.context
    if reason := _halted(state, ctx):
        return {"stop_reason": reason}
    it = state["iteration"]
    records = state["records"]
    batch = beam_mod.current_batch(state, ctx)
    jobs = [(cid, i) for cid in state["beam"]
            for i in beam_mod.failed_rows(records, cid, batch)[: ctx.max_gradients_per_prompt]]
    caller = _caller(state, runtime, config, phase="loop")
    _, _, optimizer_model = _models(ctx)
    prompts = ctx.meta_prompts

    def critique(job: tuple[str, int]) -> str:
        cid, i = job
        ex = state["train"][i]
        rec = records[record_key(cid, "train", i)]
        message = prompts.gradient.format(
            task_description=ctx.task_description or "(not given)",
            prompt=state["candidates"][cid]["template"],
            inputs=_show_inputs(ex),
            output=_clip(rec.get("output") or f"(the call failed: {rec.get('error')})"),
            reference=_show_reference(ex),
            score=f"{rec['score']:.2f}",
            feedback=rec.get("feedback") or "(no comment)",
        )
        return caller.text("gradient", optimizer_model, message, iteration=it,
                           candidate_id=cid, example=i)

    results = caller.map(critique, jobs)
    stop = _check_failures(caller, results, "gradient")
    gradients: dict[str, list[str]] = {}
    for (cid, _), res in zip(jobs, results, strict=True):
        if isinstance(res, str) and res.strip():
            gradients.setdefault(cid, []).append(res.strip())
    candidates = {
        cid: {**state["candidates"][cid],
              "gradients": {**state["candidates"][cid]["gradients"], str(it): grads}}
        for cid, grads in gradients.items()
    }
    return {**_result(caller, stop), "candidates": candidates}


def summarize(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Merge each candidate's gradients into one general paragraph (GRAD-SUM's addition)."""
    ctx = runtime.context
    if reason := _halted(state, ctx):
        return {"stop_reason": reason}
    if not ctx.summarize:
        return {}
    it = str(state["iteration"])
    todo = [cid for cid in state["beam"] if state["candidates"][cid]["gradients"].get(it)]
    caller = _caller(state, runtime, config, phase="loop")
    _, _, optimizer_model = _models(ctx)

    def summary(cid: str) -> str:
        cand = state["candidates"][cid]
        grads = cand["gradients"][it]
        message = ctx.meta_prompts.summarize.format(
            task_description=ctx.task_description or "(not given)",
            prompt=cand["template"],
            gradients="\n".join(f"<critique>{g}</critique>" for g in grads),
            evidence=_evidence(state, ctx, cid) + f"\n- Kinds of mistake the critiques name: "
                     f"{kind_counts(grads)}.",
        )
        return caller.text("summarize", optimizer_model, message, iteration=state["iteration"],
                           candidate_id=cid)

    results = caller.map(summary, todo)
    stop = _check_failures(caller, results, "summarize")
    candidates = {
        cid: {**state["candidates"][cid],
              "summaries": {**state["candidates"][cid]["summaries"], it: res.strip()}}
        for cid, res in zip(todo, results, strict=True)
        if isinstance(res, str) and res.strip()
    }
    return {**_result(caller, stop), "candidates": candidates}


EditJob = tuple[str, int, str, str]
"""(parent id, child number, feedback, strategy: "instruction" or "rewrite:<k>")."""


def edit(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Write `candidates_per_prompt` new prompts per beam member from its summary.

    A parent's first child adds one instruction to it (``instruction_edits``); the
    others are rewrites, each asked for differently (the edit variants). With
    ``summarize=False`` (the paper's ablation) each child comes from a single gradient.
    The editor sees the measured evidence and the earlier edits of this parent that did
    not help. Every new prompt passes the variable guard and the copied-example check
    and differs from every earlier prompt; one that does not is re-asked once, told
    why (``retry_unusable_edits``). Each child is then screened on the failures it was
    written for before it is scored on a whole batch (``screen_size``).
    """
    ctx = runtime.context
    if reason := _halted(state, ctx):
        return {"stop_reason": reason}
    it = state["iteration"]
    jobs = _edit_jobs(state, ctx)
    caller = _caller(state, runtime, config, phase="loop")
    _, _, optimizer_model = _models(ctx)
    asks = [_edit_ask(state, ctx, job) for job in jobs]
    guard = _EditGuard(state, ctx, caller, runtime)

    def rewrite(j: int) -> str:
        return caller.text("edit", optimizer_model, asks[j], iteration=it,
                           candidate_id=jobs[j][0], variant=jobs[j][1], strategy=jobs[j][3])

    results = caller.map(rewrite, range(len(jobs)))
    stop = _check_failures(caller, results, "edit")
    usable: dict[int, str] = {}  # job index -> new prompt
    unusable: list[tuple[int, str, str]] = []  # (job index, reply, why)
    for j, res in enumerate(results):
        if isinstance(res, str):
            template, why = guard.check(jobs[j], res)
            if template is not None:
                usable[j] = template
            else:
                unusable.append((j, res, why or ""))
    # One more try for each unusable reply, told why. Its child was budgeted (scoring
    # it costs at least one call), so the retry fits the iteration's plan.
    remaining = caller.budget.remaining
    if ctx.retry_unusable_edits and not stop and unusable:
        retries = unusable if remaining is None else unusable[:remaining]

        def retry(item: tuple[int, str, str]) -> str:
            j, reply, why = item
            messages = [HumanMessage(asks[j]), AIMessage(reply),
                        HumanMessage(ctx.meta_prompts.edit_retry.format(why=why))]
            caller.count("edit_retries")
            return caller.text("edit", optimizer_model, messages, iteration=it,
                               candidate_id=jobs[j][0], variant=jobs[j][1], retry=True)

        for (j, _, _), res in zip(retries, caller.map(retry, retries), strict=True):
            if isinstance(res, str):
                template, _ = guard.check(jobs[j], res)
                if template is not None:
                    usable[j] = template
            elif not isinstance(res, BudgetExhausted):
                caller.count("failed_calls")
    children = _children(state, ctx, jobs, usable)
    for child in children.values():
        runtime.stream_writer({"event": "candidate", "candidate": child["id"],
                               "parent": child["parent_id"], "iteration": it + 1,
                               "strategy": child["strategy"]})
    if stop:
        return {**_result(caller, stop), "candidates": children}
    runtime.stream_writer({"event": "iteration", "iteration": it + 1,
                           "beam": list(state["beam"]) + list(children)})
    return {
        **_result(caller, stop),
        "candidates": children,
        "beam": list(state["beam"]) + list(children),
        "iteration": it + 1,
        "batch": minibatch_indices(len(state["train"]), ctx.minibatch_size, ctx.seed, it + 1),
    }


def _edit_jobs(state: GradSumState, ctx: GradSumContext) -> list[EditJob]:
    """The children to write: per parent, its summary (or gradients) and a strategy each."""
    key = str(state["iteration"])
    jobs: list[EditJob] = []
    for cid in state["beam"]:
        cand = state["candidates"][cid]
        if ctx.summarize:
            feedback = [cand["summaries"][key]] * ctx.candidates_per_prompt \
                if key in cand["summaries"] else []
        else:
            feedback = cand["gradients"].get(key, [])[: ctx.candidates_per_prompt]
        offset = 1 if ctx.instruction_edits else 0
        jobs += [(cid, k, fb, "instruction" if k < offset else f"rewrite:{k - offset}")
                 for k, fb in enumerate(feedback)]
    return jobs


def _edit_ask(state: GradSumState, ctx: GradSumContext, job: EditJob) -> str:
    """The editor's message for one child."""
    cid, k, feedback, strategy = job
    fields = {
        "task_description": ctx.task_description or "(not given)",
        "prompt": state["candidates"][cid]["template"],
        "feedback": feedback,
        "evidence": _evidence(state, ctx, cid),
        "history": edit_history(state["candidates"], cid),
    }
    if strategy == "instruction":
        return ctx.meta_prompts.edit_instruction.format(**fields)
    variants = ctx.meta_prompts.edit_variants
    r = int(strategy.split(":")[1])
    n = ctx.candidates_per_prompt if ctx.summarize else 1
    variant = "" if n == 1 else f"- This is version {k + 1} of {n}: {variants[r % len(variants)]}"
    required = template_variables(state["prompt"])
    edit = ctx.meta_prompts.edit
    if not required:  # a system prompt in an app: no placeholder to keep (drop that rule)
        edit = "\n".join(line for line in edit.splitlines() if "{variables}" not in line)
    return edit.format(
        **fields, variables=", ".join("{" + v + "}" for v in required), variant=variant)


class _EditGuard:
    """Turns an editor reply into a usable new prompt, or says why it cannot be used."""

    def __init__(self, state: GradSumState, ctx: GradSumContext, caller: LLMCaller,
                 runtime: Ctx) -> None:
        self.state, self.ctx, self.caller, self.runtime = state, ctx, caller, runtime
        self.required = template_variables(state["prompt"])
        self.seen = {_normalize(c["template"]) for c in state["candidates"].values()}
        self.examples = [_show_inputs(ex) for ex in [*state["train"], *(state.get("val") or [])]
                         ] if ctx.reject_copied_examples else []
        # the words the editor was given by the meta-prompts are not an example's details
        mp = ctx.meta_prompts
        self.meta_words = "\n".join([mp.gradient, mp.summarize, mp.edit, mp.edit_instruction,
                                      *mp.edit_variants])

    def critiqued(self, cid: str) -> list[str]:
        """The inputs of the rows `cid` was critiqued on (the editor saw their details)."""
        rows = beam_mod.failed_rows(self.state.get("records", {}), cid,
                                    beam_mod.current_batch(self.state, self.ctx))
        return [_show_inputs(self.state["train"][i])
                for i in rows[: self.ctx.max_gradients_per_prompt]]

    def evidence(self, cid: str) -> str:
        return _evidence(self.state, self.ctx, cid)

    def proposal(self, job: EditJob, reply: str) -> str:
        """The new prompt text a reply proposes (an added instruction is appended)."""
        if job[3] != "instruction":
            return extract_prompt(reply)
        text = extract_instruction(reply)
        try:
            full = set(self.required) <= set(template_variables(text))
        except ValueError:
            full = False
        if full and self.required:  # the editor wrote a whole prompt: take it as such
            # (with no placeholder to tell, e.g. a system message, the text is appended:
            # taken whole, "Reply with only the answer." would replace the system prompt)
            return text
        parent = self.state["candidates"][job[0]]["template"]
        if _normalize(text).lower() in _normalize(parent).lower():
            return parent  # nothing new: the duplicate check says so
        return parent.rstrip() + "\n" + text.replace("{", "{{").replace("}", "}}")

    def check(self, job: EditJob, reply: str) -> tuple[str | None, str | None]:
        """The usable new prompt in a reply, or why it cannot be used (and counts it)."""
        template, status = heal_template(self.proposal(job, reply), self.required,
                                         append_missing=self.ctx.repair_missing_variables)
        why = None
        if template is None:
            why = status
        elif self.examples and (copied := copied_example(
                template, self.examples, original=self.state["prompt"])) is not None:
            why = f"rejected: copies example {copied} of the data"
        elif self.examples and (seen := self.critiqued(job[0])) and (copied_example(
                template, seen, min_words=4, original=(known := "\n".join(
                    [self.state["candidates"][job[0]]["template"],
                     self.ctx.task_description]))) is not None
                or len(example_words(template, seen, self.examples,
                                     known=known + self.meta_words)) >= 2):
            # "end with the number of children on the bus": one example's details in an
            # instruction overfit it (the 1.5B editor does this)
            why = ("rejected: mentions the details of an example it was shown; write "
                   "instructions that hold for every input")
        elif copied_example(template, [self.evidence(job[0])],
                            original=self.state["prompt"]) is not None:
            # small editors paste the measurements in: they describe past outputs, they
            # are not instructions
            why = ("rejected: copies the evaluation's measurements into the prompt; write "
                   "instructions instead")
        elif _normalize(template) in self.seen:
            self.caller.count("duplicate_candidates")
            if template == self.state["candidates"][job[0]]["template"]:
                return None, "duplicate: the current prompt already says that; add another"
            return None, "duplicate: the same as a prompt already tried"
        if why is not None:
            self.caller.count("rejected_candidates")
            self.runtime.stream_writer({"event": "rejected", "parent": job[0], "why": why})
            return None, why
        if status == "repaired":
            self.caller.count("repaired_candidates")
        self.seen.add(_normalize(template))
        return template, None


def _children(state: GradSumState, ctx: GradSumContext, jobs: list[EditJob],
              usable: dict[int, str]) -> dict[str, Candidate]:
    """The new candidates, each with its screen: the parent's worst failures."""
    batch = beam_mod.current_batch(state, ctx)
    children: dict[str, Candidate] = {}
    next_id = len(state["candidates"])
    for j, template in sorted(usable.items()):
        cid, _, fb, strategy = jobs[j]
        child_id = f"c{next_id}"
        next_id += 1
        child = new_candidate(child_id, template, parent_id=cid,
                              iteration=state["iteration"] + 1, summary=fb)
        child["strategy"] = strategy
        rows = beam_mod.failed_rows(state["records"], cid, batch)[: ctx.screen_size]
        if rows:
            parent_score = beam_mod.mean_score(state["records"], cid, rows) or 0.0
            child["screen"] = {"rows": rows, "parent_score": parent_score, "score": None,
                               "passed": None}
        children[child_id] = child
    return children


def finalize(state: GradSumState, runtime: Ctx, config: RunnableConfig) -> dict[str, Any]:
    """Score the final beam and the initial prompt on validation; pick the best.

    Uses `val` when given, else every training row. The initial prompt always
    competes, so the result is never worse on that split than the start.
    """
    ctx = runtime.context
    split = "val" if state.get("val") else "train"
    rows = state["val"] if split == "val" else state["train"]
    # Ranked order (ties go to the higher-ranked); the initial prompt always competes.
    finalists = list(state.get("beam", [])) + (["c0"] if "c0" not in state.get("beam", []) else [])
    runtime.stream_writer({"event": "finalize", "split": split, "finalists": finalists,
                           "stop_reason": state.get("stop_reason"), "calls": _spent(state)})
    caller = _caller(state, runtime, config, phase="final")
    records = dict(state.get("records", {}))
    # Spend on the initial prompt first: it is generated *and scored* before the others
    # start, so a reserve that retries ate into still validates it.
    generated: dict[str, Record] = {}
    scored: dict[str, Record] = {}
    stop1 = stop2 = None
    for group in (["c0"], [c for c in finalists if c != "c0"]):
        jobs = [(cid, split, i) for cid in group for i in range(len(rows))
                if record_key(cid, split, i) not in records]
        new, stop = _run_task(caller, ctx, state, jobs, iteration=state.get("iteration", 0))
        records.update(new)
        generated.update(new)
        stop1 = stop1 or stop
        jobs = [(cid, split, i) for cid in group for i in range(len(rows))
                if "score" not in records.get(record_key(cid, split, i), {"score": None})]
        new, stop = _score(caller, ctx, {**state, "records": records}, jobs,
                           iteration=state.get("iteration", 0))
        records.update(new)
        scored.update(new)
        stop2 = stop2 or stop
        for cid in group:
            if (val := _split_score(records, cid, split, len(rows))) is not None:
                runtime.stream_writer({"event": "validated", "candidate": cid, "split": split,
                                       "score": val,
                                       "calls": _spent(state) + caller.budget.used})
    candidates: dict[str, Candidate] = {}
    ranked: list[tuple[float, float, int, str]] = []  # (-score, output tokens, rank, id)
    for rank, cid in enumerate(finalists):
        val = _split_score(records, cid, split, len(rows))
        if val is None:
            continue  # incomplete (budget ran out): cannot be compared fairly
        candidates[cid] = {**state["candidates"][cid], "val_score": val}
        cost = mean_output_tokens(records, cid, split, len(rows)) if ctx.prefer_short_outputs \
            else 0.0
        ranked.append((-round(val, 9), cost or 0.0, rank, cid))
    best_id, best = "c0", -1.0
    if ranked:  # best score; at equal score the shorter outputs; then the beam's rank
        best_id, best = min(ranked)[3], -min(ranked)[0]
    runtime.stream_writer({"event": "best", "candidate": best_id,
                           "score": best if best >= 0 else None,
                           "calls": _spent(state) + caller.budget.used})
    reason = state.get("stop_reason") or stop1 or stop2 or "done"
    return {**_result(caller, None), "records": {**generated, **scored},
            "candidates": candidates, "best_id": best_id, "stop_reason": reason}


# --- shared pieces ---------------------------------------------------------------------


def mean_output_tokens(records: Mapping[str, Record], cid: str, split: str, n: int
                       ) -> float | None:
    """Mean generated tokens per output of `cid` on `split` (None if not reported)."""
    counts = [r["output_tokens"] for i in range(n)
              if "output_tokens" in (r := records.get(record_key(cid, split, i), {}))]
    return sum(counts) / len(counts) if counts else None


def _split_score(records: Mapping[str, Record], cid: str, split: str, n: int) -> float | None:
    """Mean score of `cid` on every row of `split`, or None if any row is unscored."""
    scores = [records.get(record_key(cid, split, i), {}).get("score") for i in range(n)]
    if any(s is None for s in scores):
        return None
    return sum(scores) / n  # type: ignore[arg-type]


def new_candidate(
    cid: str, template: str, *, parent_id: str | None, iteration: int, summary: str | None
) -> Candidate:
    return {"id": cid, "template": template, "parent_id": parent_id, "iteration": iteration,
            "summary": summary, "gradients": {}, "summaries": {}, "scores": {}, "val_score": None,
            "strategy": None, "screen": None}


_TAGGED = re.compile(r"<prompt>\s*(.*?)\s*(?:</prompt>|$)", re.S | re.I)
_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n```$", re.S)


def extract_prompt(reply: str) -> str:
    """The new prompt from an editor reply: inside <prompt> tags, else the reply."""
    found = [m for m in _TAGGED.findall(reply) if m.strip()]
    text = found[-1] if found else reply
    text = text.strip()
    fenced = _FENCE.match(text)
    text = (fenced.group(1) if fenced else text).strip()
    # small editors echo the tags the edit prompt shows the current prompt in
    return _ECHOED.sub("", text).strip()


_ECHOED = re.compile(r"</?current_prompt>", re.I)


_INSTRUCTION = re.compile(r"<instruction>\s*(.*?)\s*(?:</instruction>|$)", re.S | re.I)


def extract_instruction(reply: str) -> str:
    """The added instruction from an editor reply: in <instruction> tags, else as a prompt."""
    found = [m for m in _INSTRUCTION.findall(reply) if m.strip()]
    return found[-1].strip() if found else extract_prompt(reply)


def _evidence(state: GradSumState, ctx: GradSumContext, cid: str) -> str:
    return evidence(state.get("records", {}), cid, beam_mod.current_batch(state, ctx),
                    state["train"])


def _halted(state: GradSumState, ctx: GradSumContext) -> str | None:
    """A stop already decided, or a graceful stop asked for (Ctrl-C, stop file)."""
    return state.get("stop_reason") or (ctx.should_stop() if ctx.should_stop else None)


def _normalize(text: str) -> str:
    return " ".join(text.split())


def _models(ctx: GradSumContext) -> tuple[Any, Any, Any]:
    task = resolve_model(ctx.model, "model")
    judge = resolve_model(ctx.judge_model, "judge_model") if ctx.judge_model else task
    opt = resolve_model(ctx.optimizer_model, "optimizer_model") if ctx.optimizer_model else task
    return task, judge, opt


def _spent(state: GradSumState) -> int:
    return sum(u["calls"] for u in state.get("usage", {}).values())


def _caller(state: GradSumState, runtime: Ctx, config: RunnableConfig, *, phase: str) -> LLMCaller:
    """The node's caller, with the budget it may spend.

    Loop nodes may not touch the reserve kept for the final validation.
    """
    ctx = runtime.context
    limit = None
    if ctx.max_llm_calls is not None:
        reserve = beam_mod.final_reserve(state, ctx) if phase == "loop" else 0
        limit = max(0, ctx.max_llm_calls - _spent(state) - reserve)
    return LLMCaller(CallBudget(limit), config, max_retries=ctx.max_retries,
                     max_parse_retries=ctx.max_parse_retries,
                     max_concurrency=ctx.max_concurrency,
                     backoff=ctx.retry_backoff, cache=ctx.cache,
                     paid=state.get("paid", ()) if ctx.cache is not None else ())


def _result(caller: LLMCaller, stop: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"usage": caller.usage, "counters": caller.counters}
    if caller.paid_now:
        out["paid"] = caller.paid_now
    if stop:
        out["stop_reason"] = stop
    return out


def _check_failures(caller: LLMCaller, results: list[Any], role: str) -> str | None:
    """Budget exhaustion stops the run. A call that failed for good costs only its own
    candidate or row, counted once in ``failed_calls`` (jobs that shared one judge call
    share its error). Only when every call failed with an error that is not transient
    (a wrong key, an unknown model: no point going on) is the error raised."""
    from langchain_gradsum._llm import is_transient

    errors = [r for r in results if isinstance(r, BaseException)]
    failed = [e for e in errors if not isinstance(e, BudgetExhausted)]
    if failed:
        caller.count("failed_calls", len({id(e) for e in failed}))
    if len(failed) < len(errors):
        return "budget"
    if errors and len(errors) == len(results) and not any(is_transient(e) for e in errors):
        raise errors[0]
    return None


def _run_task(
    caller: LLMCaller,
    ctx: GradSumContext,
    state: GradSumState,
    jobs: list[tuple[str, str, int]],
    *,
    iteration: int,
) -> tuple[dict[str, Record], str | None]:
    """Task-model outputs for (candidate, split, row) jobs."""
    task_model, _, _ = _models(ctx)
    slot: PromptSlot = ctx.prompt_slot or PromptSlot("str")

    def run(job: tuple[str, str, int]) -> Record:
        cid, split, i = job
        ex = _rows(state, split)[i]
        if ctx.app is not None:  # a prompt inside a user's app: run the whole app (apps.py)
            return ctx.app.run(caller, state["candidates"][cid]["template"],  # type: ignore
                               ex["inputs"], record_key(cid, split, i), iteration=iteration,
                               candidate_id=cid, split=split, example=i)
        messages = slot.render(state["candidates"][cid]["template"], ex["inputs"])
        info: dict[str, Any] = {}
        text = caller.text("generate", task_model, messages, info, iteration=iteration,
                           candidate_id=cid, split=split, example=i)
        return {"output": text, **info}  # type: ignore[typeddict-item]

    results = caller.map(run, jobs)
    stop = _check_failures(caller, results, "generate")
    records: dict[str, Record] = {}
    for (cid, split, i), res in zip(jobs, results, strict=True):
        if isinstance(res, BudgetExhausted):
            continue
        key = record_key(cid, split, i)
        records[key] = res if isinstance(res, dict) else {"error": _err(res)}
    return records, stop


def _score(
    caller: LLMCaller,
    ctx: GradSumContext,
    state: GradSumState,
    jobs: list[tuple[str, str, int]],
    *,
    iteration: int,
) -> tuple[dict[str, Record], str | None]:
    """Evaluate the outputs of (candidate, split, row) jobs: score in 0..1 and feedback."""
    _, judge_model, _ = _models(ctx)
    records = state["records"]
    # The same output on the same row (from another candidate, or another iteration:
    # common with short answers) is scored once: earlier scores are reused, and identical
    # judge messages within this step are judged once while the others wait for it.
    scored_before = {
        (k.split("|", 2)[1], int(k.split("|", 2)[2]), r["output"]): r
        for k, r in records.items()
        if "score" in r and "output" in r and not r.get("judge_failed")
    }
    verdicts: dict[str, Future[Any]] = {}
    lock = threading.Lock()

    def judge(message: str, cid: str, split: str, i: int) -> Any:
        with lock:
            pending = verdicts.get(message)
            if pending is None:
                verdicts[message] = mine = Future()
        if pending is not None:
            caller.count("judge_calls_saved")
            return pending.result()
        try:
            verdict = caller.structured("judge", judge_model, message, JudgeVerdict,
                                        iteration=iteration, candidate_id=cid, split=split,
                                        example=i)
        except BaseException as e:
            mine.set_exception(e)
            raise
        mine.set_result(verdict)
        return verdict

    def score(job: tuple[str, str, int]) -> Record:
        cid, split, i = job
        ex = _rows(state, split)[i]
        rec = records[record_key(cid, split, i)]
        if "output" not in rec:
            return {**rec, "score": 0.0, "feedback": f"the model call failed: {rec.get('error')}"}
        if (same := scored_before.get((split, i, rec["output"]))) is not None:
            if ctx.criteria:
                caller.count("judge_calls_saved")
            return {**rec, "score": same["score"], "feedback": same["feedback"]}
        # An app's output goes to evaluators as the object it returned (apps.py).
        output = rec["output"] if ctx.app is None else ctx.app.value(rec, record_key(cid, split, i))
        results: list[EvalResult] = [
            run_evaluator(fn, ex["inputs"], output, ex["outputs"]) for fn in ctx.evaluators
        ]
        failed = False
        if ctx.criteria:
            message = ctx.meta_prompts.judge.format(
                task_description=ctx.task_description or "(not given)",
                criteria=ctx.criteria,
                inputs=_show_inputs(ex),
                reference=_show_reference(ex),
                output=_clip(rec["output"]),
            )
            verdict = judge(message, cid, split, i)
            if isinstance(verdict, JudgeVerdict):
                results.append(EvalResult(key="judge", score=min(1.0, max(0.0, verdict.score)),
                                          comment=verdict.reasoning))
            else:  # counted once per failed call by the caller, not per row
                failed = True
                results.append(EvalResult(key="judge", score=0.0,
                                          comment="the judge's reply could not be parsed"))
        mean = sum(r.score for r in results) / len(results)
        feedback = "\n".join(f"{r.key}: {r.score:g}" + (f" ({r.comment})" if r.comment else "")
                             for r in results)
        out: Record = {**rec, "score": mean, "feedback": feedback}
        if failed:
            out["judge_failed"] = True
        return out

    results = caller.map(score, jobs)
    stop = _check_failures(caller, results, "judge") if ctx.criteria else None
    scored: dict[str, Record] = {}
    for (cid, split, i), res in zip(jobs, results, strict=True):
        if isinstance(res, BudgetExhausted):
            continue
        if isinstance(res, BaseException):
            if not ctx.criteria or isinstance(res, EvaluatorError):
                raise res  # a broken evaluator is a bug to fix, not a fault to count
            rec = records[record_key(cid, split, i)]
            scored[record_key(cid, split, i)] = {**rec, "score": 0.0, "judge_failed": True,
                                                 "feedback": f"the judge call failed: {_err(res)}"}
            continue
        scored[record_key(cid, split, i)] = res
    return scored, stop


def _rows(state: GradSumState, split: str) -> list[Example]:
    return state["val"] if split == "val" else state["train"]


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _clip(text: str, limit: int = _SHOW_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + " …(truncated)"


def _show(values: Mapping[str, Any]) -> str:
    if len(values) == 1:
        return _clip(str(next(iter(values.values()))))
    return "\n".join(f"{k}: {_clip(str(v))}" for k, v in values.items())


def _show_inputs(ex: Example) -> str:
    return _show(ex["inputs"])


def _show_reference(ex: Example) -> str:
    ref = ex.get("outputs") or {}
    if not ref:
        return "(none given)"
    if "answer" in ref:
        return _clip(str(ref["answer"]))
    return _show(ref)
