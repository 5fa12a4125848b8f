"""New prompts from the editor: the work behind the node `edit`.

`edit_jobs` lists the children to write, `EditWriter` asks the editor for each, checks
each reply (`EditGuard`: the variable guard, the copied-example checks, the duplicate
check) and re-asks once, told why, for a reply that cannot be used; `new_children`
makes the usable prompts candidates, each with its screen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage

from langchain_gradsum import beam as beam_mod
from langchain_gradsum._llm import BudgetExhausted, LLMCaller, check_failures, role_models
from langchain_gradsum._templates import (
    copied_example,
    example_words,
    heal_template,
    literal,
    sentences,
    template_variables,
)
from langchain_gradsum.evaluators import _NUMBER, exact_match
from langchain_gradsum.feedback import (
    answer_form,
    answer_shape,
    edit_history,
    evidence,
    labels,
    show_inputs,
)
from langchain_gradsum.state import (
    FULL_MARKS,
    Candidate,
    GradSumContext,
    GradSumState,
    record_key,
)

EditJob = tuple[str, int, str, str]
"""(parent id, child number, feedback, strategy: "instruction", "shorten", "demo" or
"rewrite:<k>")."""

ADDED = ("instruction", "shorten")
"""The strategies whose edit is one instruction added to the parent."""


def new_candidate(
    cid: str, template: str, *, parent_id: str | None, iteration: int, summary: str | None
) -> Candidate:
    """A candidate not yet scored; `summary` is what it was written from."""
    return {"id": cid, "template": template, "parent_id": parent_id, "iteration": iteration,
            "summary": summary, "gradients": {}, "summaries": {}, "scores": {}, "val_score": None,
            "strategy": None, "screen": None}


def batch_evidence(state: GradSumState, ctx: GradSumContext, cid: str) -> str:
    """The measured facts about `cid` on this iteration's batch (`feedback.evidence`), as
    the summary and the editor are shown them."""
    return evidence(state.get("records", {}), cid, beam_mod.current_batch(state, ctx),
                    state["train"])


def edit_jobs(state: GradSumState, ctx: GradSumContext) -> list[EditJob]:
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
        added = "shorten" if ctx.shorten_edits and not whole_reply_scored(ctx) \
            and mostly_cut_off(state, ctx, cid) and not shorten_tried(state, ctx, cid) \
            else "instruction"
        mine = [(cid, k, fb, added if k < offset else f"rewrite:{k - offset}")
                for k, fb in enumerate(feedback)]
        if ctx.demo_edits and mine and mine[-1][3].startswith("rewrite") \
                and with_demo(state, ctx, cid) is not None:
            mine[-1] = (*mine[-1][:3], "demo")
        jobs += mine
    return jobs


def with_demo(state: GradSumState, ctx: GradSumContext, cid: str) -> str | None:
    """`cid`'s template with a demonstration in front: the header
    (`prompts.DEMO_HEADER`), the inputs of the training row where `cid`'s reply was right
    and shortest (not cut off at the token cap; the lower row at a tie), and that reply
    (braces escaped: text, not template variables). ``None`` when `cid` has no such reply,
    when its template already shows an example, or when the prompt has no template
    variables (an app's system message: the inputs arrive elsewhere)."""
    template = state["candidates"][cid]["template"]
    header = ctx.meta_prompts.demo_header
    if header in template or not template_variables(state["prompt"]):
        return None
    records = state.get("records", {})
    right = [(r["output_tokens"] if "output_tokens" in r else len(r["output"]), i)
             for i in range(len(state["train"]))
             if (r := records.get(record_key(cid, "train", i))) is not None
             and r.get("score", 0.0) >= FULL_MARKS and not r.get("truncated")
             and (r.get("output") or "").strip()]
    if not right:
        return None
    row = min(right)[1]
    inputs = "\n".join(f"{k[:1].upper()}{k[1:]}: {v}"
                       for k, v in state["train"][row]["inputs"].items())
    example = f"{inputs}\nReply: {records[record_key(cid, 'train', row)]['output'].strip()}"
    return f"{header}\n\n{literal(example)}\n\n{template.lstrip()}"


def whole_reply_scored(ctx: GradSumContext) -> bool:
    """Whether the built-in `exact_match` scores the replies: the whole reply must be the
    answer, so brief working before it still fails, and the added instruction must ask
    for the answer alone (the date demo: cut off at 64 tokens, fixed by "reply with
    exactly the option label")."""
    return any(e is exact_match for e in ctx.evaluators)


def mostly_cut_off(state: GradSumState, ctx: GradSumContext, cid: str) -> bool:
    """Whether at least half of `cid`'s failed replies on the batch stopped at the token
    cap: then less text, not another instruction about the answer, is the fix."""
    failed = beam_mod.failed_rows(state.get("records", {}), cid, beam_mod.current_batch(state, ctx))
    return bool(failed) and 2 * beam_mod.cut_off_count(state, cid, failed) >= len(failed)


def shorten_tried(state: GradSumState, ctx: GradSumContext, cid: str) -> bool:
    """Whether `cid` with the composed shortening sentence is a prompt already tried (its
    ``shorten`` child of an earlier iteration): then its added-instruction child is
    written from the summary instead. Asked again for a shortening, told that the
    sentence was a duplicate, the 1.5B editor wrote "Use a different prompt that does not
    repeat any previous one." (svamp, `127ff90`), and that child reached the final beam."""
    sentence = shorten_instruction(state, ctx)
    if sentence is None:
        return False
    template = with_instruction(state["candidates"][cid]["template"], sentence)
    return any(_normalize(c["template"]) == _normalize(template)
               for c in state["candidates"].values())


def with_instruction(parent: str, text: str) -> str:
    """`parent` with the instruction `text` added on a line of its own, after a blank
    line when `text` has several lines (a reply form, `prompts.SHORTEN_CALCULATION`);
    its braces escaped: they are text, not template variables."""
    return parent.rstrip() + ("\n\n" if "\n" in text.strip() else "\n") + literal(text)


def edit_ask(state: GradSumState, ctx: GradSumContext, job: EditJob) -> str:
    """The editor's message for one child."""
    cid, k, feedback, strategy = job
    fields = {
        "task_description": ctx.task_description or "(not given)",
        "prompt": state["candidates"][cid]["template"],
        "feedback": feedback,
        "evidence": batch_evidence(state, ctx, cid),
        "history": edit_history(state["candidates"], cid),
    }
    if strategy == "shorten":
        return ctx.meta_prompts.edit_shorten.format(**fields)
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


def shorten_instruction(state: GradSumState, ctx: GradSumContext) -> str | None:
    """A ``shorten`` child's instruction, composed from the form of the batch's expected
    answers (`prompts.SHORTEN_CALCULATION` for numbers, else `prompts.SHORTEN_INSTRUCTION`);
    ``None`` when the rows have no reference answers: the editor writes it then."""
    batch = beam_mod.current_batch(state, ctx)
    form = answer_form([state["train"][i] for i in batch])
    if form is None:
        return None
    mp = ctx.meta_prompts
    sentence = mp.shorten_calculation if form == "a number" else mp.shorten_instruction
    return sentence.format(form=form)


class EditWriter:
    """Asks the editor for each child's prompt; returns the usable ones. A ``shorten``
    child's instruction is composed where it can be (`shorten_instruction`), a ``demo``
    child always is (`with_demo`): no call."""

    def __init__(self, state: GradSumState, ctx: GradSumContext, caller: LLMCaller,
                 write_event: Callable[[Any], None], jobs: list[EditJob]) -> None:
        self.state, self.ctx, self.caller, self.jobs = state, ctx, caller, jobs
        self.model = role_models(ctx).optimizer
        self.demos = {j: demo for j, job in enumerate(jobs)
                      if job[3] == "demo" and (demo := with_demo(state, ctx, job[0]))}
        self.asks = [edit_ask(state, ctx, job) if j not in self.demos else ""
                     for j, job in enumerate(jobs)]
        self.guard = EditGuard(state, ctx, caller, write_event)
        sentence = shorten_instruction(state, ctx)
        self.composed = {j: f"<instruction>{sentence}</instruction>"
                         for j, job in enumerate(jobs) if job[3] == "shorten" and sentence}

    def write(self) -> tuple[dict[int, str], str | None]:
        """The usable new prompts by job index, and a stop reason if any."""
        asked = [j for j in range(len(self.jobs))
                 if j not in self.composed and j not in self.demos]
        if self.composed or self.demos:
            self.caller.count("composed_edits", len(self.composed) + len(self.demos))
        replies = dict(zip(asked, self.caller.map(self._ask, asked), strict=True))
        stop = check_failures(self.caller, list(replies.values()))
        results = [self.composed.get(j, replies.get(j)) for j in range(len(self.jobs))]
        usable: dict[int, str] = {}  # job index -> new prompt
        unusable: list[tuple[int, str, str]] = []  # (job index, reply, why)
        for j, demo in self.demos.items():  # the example is meant: only the duplicate check
            if self.guard.new(demo):
                usable[j] = demo
        for j, res in enumerate(results):  # (a demo's is None: it was not asked)
            if isinstance(res, str):
                template, why = self.guard.check(self.jobs[j], res, composed=j in self.composed)
                if template is not None:
                    usable[j] = template
                else:
                    unusable.append((j, res, why or ""))
        # One more try for each unusable reply, told why. Its child was budgeted (scoring
        # it costs at least one call), so the retry fits the iteration's plan.
        remaining = self.caller.budget.remaining
        if self.ctx.retry_unusable_edits and not stop and unusable:
            retries = unusable if remaining is None else unusable[:remaining]
            for (j, _, _), res in zip(retries, self.caller.map(self._retry, retries),
                                      strict=True):
                if isinstance(res, str):
                    template, _ = self.guard.check(self.jobs[j], res)
                    if template is not None:
                        usable[j] = template
                elif not isinstance(res, BudgetExhausted):
                    self.caller.count("failed_calls")
        return usable, stop

    def _ask(self, j: int) -> str:
        job = self.jobs[j]
        return self.caller.text("edit", self.model, self.asks[j],
                                iteration=self.state["iteration"], candidate_id=job[0],
                                variant=job[1], strategy=job[3])

    def _retry(self, item: tuple[int, str, str]) -> str:
        j, reply, why = item
        messages = [HumanMessage(self.asks[j]), AIMessage(reply),
                    HumanMessage(self.ctx.meta_prompts.edit_retry.format(why=why))]
        self.caller.count("edit_retries")
        return self.caller.text("edit", self.model, messages, iteration=self.state["iteration"],
                                candidate_id=self.jobs[j][0], variant=self.jobs[j][1],
                                retry=True)


class EditGuard:
    """Turns an editor reply into a usable new prompt, or says why it cannot be used."""

    def __init__(self, state: GradSumState, ctx: GradSumContext, caller: LLMCaller,
                 write_event: Callable[[Any], None]) -> None:
        self.state, self.ctx, self.caller, self.write_event = state, ctx, caller, write_event
        self.required = template_variables(state["prompt"])
        self.seen = {_normalize(c["template"]) for c in state["candidates"].values()}
        self.examples = [show_inputs(ex) for ex in [*state["train"], *(state.get("val") or [])]
                         ] if ctx.reject_copied_examples else []
        self.labels = labels(state["train"]) if ctx.reject_copied_examples else []
        # the words the editor was given by the meta-prompts are not an example's details
        mp = ctx.meta_prompts
        self.meta_words = "\n".join([mp.gradient, mp.summarize, mp.edit, mp.edit_instruction,
                                      mp.edit_shorten, mp.shorten_instruction,
                                      mp.shorten_calculation, *mp.edit_variants])

    def critiqued_rows(self, cid: str) -> list[int]:
        """The training rows `cid` was critiqued on: its first failed rows of the batch."""
        rows = beam_mod.failed_rows(self.state.get("records", {}), cid,
                                    beam_mod.current_batch(self.state, self.ctx))
        return rows[: self.ctx.max_gradients_per_prompt]

    def critiqued(self, cid: str) -> list[str]:
        """The inputs of the rows `cid` was critiqued on (the editor saw their details)."""
        return [show_inputs(self.state["train"][i]) for i in self.critiqued_rows(cid)]

    def critiqued_answers(self, cid: str) -> list[str]:
        """The expected answers of the rows `cid` was critiqued on (the critiques, and so
        the summary the editor reads, name them)."""
        return [str(a) for i in self.critiqued_rows(cid)
                if (a := (self.state["train"][i].get("outputs") or {}).get("answer"))
                is not None]

    def proposal(self, job: EditJob, reply: str) -> str:
        """The new prompt text a reply proposes (an added instruction is appended)."""
        if job[3] not in ADDED:
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
        return with_instruction(parent, text)

    def check(self, job: EditJob, reply: str, *, composed: bool = False
              ) -> tuple[str | None, str | None]:
        """The usable new prompt in a reply, or why it cannot be used (and counts it). A
        `composed` reply is the package's own text (`shorten_instruction`): only the
        variable and duplicate checks apply (the reply form's "<the arithmetic>" is not
        the editor speaking to the user)."""
        template, status = heal_template(self.proposal(job, reply), self.required,
                                         append_missing=self.ctx.repair_missing_variables)
        if template is None:
            return self._rejected(job, status)
        if not composed and (why := self.rejection(job, template)) is not None:
            return self._rejected(job, why)
        if not self.new(template):
            if template == self.state["candidates"][job[0]]["template"]:
                return None, "duplicate: the current prompt already says that; add another"
            return None, "duplicate: the same as a prompt already tried"
        if status == "repaired":
            self.caller.count("repaired_candidates")
        return template, None

    def new(self, template: str) -> bool:
        """Whether `template` differs from every prompt tried so far (then it counts as
        tried); a duplicate is counted."""
        if _normalize(template) in self.seen:
            self.caller.count("duplicate_candidates")
            return False
        self.seen.add(_normalize(template))
        return True

    def _rejected(self, job: EditJob, why: str) -> tuple[None, str]:
        self.caller.count("rejected_candidates")
        self.write_event({"event": "rejected", "parent": job[0], "why": why})
        return None, why

    def rejection(self, job: EditJob, template: str) -> str | None:
        """Why a (well-formed) new prompt must not be used: it copies the data or the
        measurements; ``None`` if it does not."""
        cid, state = job[0], self.state
        # the parent's own text is not a copy (a ``demo`` parent shows an example)
        original = "\n".join([state["prompt"], state["candidates"][cid]["template"]])
        if self.examples and (copied := copied_example(
                template, self.examples, original=original)) is not None:
            return f"rejected: copies example {copied} of the data"
        if self.examples and (seen := self.critiqued(cid)) and (copied_example(
                template, seen, min_words=4, original=(known := "\n".join(
                    [state["candidates"][cid]["template"], self.ctx.task_description]))
                ) is not None
                or len(example_words(template, seen, self.examples,
                                     known=known + self.meta_words)) >= 2):
            # "end with the number of children on the bus": one example's details in an
            # instruction overfit it (the 1.5B editor does this)
            return ("rejected: mentions the details of an example it was shown; write "
                    "instructions that hold for every input")
        if self.examples and (answer := pasted_answer(
                template, self.critiqued_answers(cid),
                known=original + "\n" + self.ctx.task_description)) is not None:
            # "Ensure the reply ends with the final number, which is 12 in this case."
            # (svamp, f552244): one example's answer, wrong for every other input
            return (f"rejected: states {answer!r}, the expected answer of an example it was "
                    "shown; write instructions that hold for every input")
        if (label := example_label(template, self.labels, known=original)) is not None:
            # "The answer should be a single letter, such as A." (hellaswag seed 1): the
            # task model then answers A on 77 of 100 rows
            return (f"rejected: gives {label!r} as an example of the answer; the model "
                    "copies it on every input: name all the allowed answers, or none")
        shown = batch_evidence(state, self.ctx, cid)
        if copied_example(template, [shown], original=original) is not None or \
                pasted_length(template, [shown, str(job[2]), *self._comments(cid)],
                              known=state["candidates"][cid]["template"]) or \
                pasted_verdict(template, known=original):
            # small editors paste the measurements in: they describe past outputs, they
            # are not instructions
            return ("rejected: copies the evaluation's measurements into the prompt; write "
                    "instructions instead")
        if (said := misaddressed(template, known=state["candidates"][cid]["template"])):
            return (f"rejected: {said!r} speaks to the user or about prompts; the prompt is "
                    "read by the model that answers, with the input already filled in: "
                    "write instructions to that model")
        return None

    def _comments(self, cid: str) -> list[str]:
        """The evaluator comments on `cid`'s replies in this iteration's batch."""
        records = self.state.get("records", {})
        return [str(records.get(record_key(cid, "train", i), {}).get("feedback") or "")
                for i in beam_mod.current_batch(self.state, self.ctx)]


_VERDICT = re.compile(
    r"\byet fails?\b|\b(?:its|their) form is the problem\b|\bfell short of full marks\b",
    re.I)


def pasted_verdict(template: str, known: str) -> bool:
    """Whether `template` repeats a verdict of the evidence on past replies ("The reply
    contains the expected answer, yet fails: its form is the problem, not its
    content.", hellaswag, `38276ba`) that `known` (the prompts before the edit) does not
    have. Reworded from plural to singular, it shares no run of words long enough for
    `copied_example`; it describes replies the model never sees and instructs nothing."""
    return any(m.group(0).lower() not in known.lower() for m in _VERDICT.finditer(template))


def pasted_answer(template: str, answers: Sequence[str], known: str) -> str | None:
    """The first of `answers` that `template` states and `known` (the prompts before
    the edit, the task description) does not, or ``None``. Only answers that cannot be
    part of an instruction about the form count: numbers of two or more digits and
    phrases of four or more characters that are not a label (an option letter, yes/no,
    true/false); "in at most 3 lines" or "reply with yes or no" is not a pasted answer."""
    for answer in answers:
        text = answer.strip()
        if _NUMBER.fullmatch(text):
            if sum(ch.isdigit() for ch in text) < 2:
                continue
        elif len(text) < 4 or not answer_shape([text]).startswith("short phrases"):
            continue
        pattern = re.compile(rf"(?<![\w.,]){re.escape(text)}(?![\w]|[.,]\d)", re.I)
        if pattern.search(template) and not pattern.search(known):
            return text
    return None


_EXAMPLE_OF = re.compile(r"\b(?:such as|e\.\s?g\.?|for example|for instance|like)[\s,:]*"
                         r"[\"'“‘]?", re.I)


def example_label(template: str, labels: Sequence[str], known: str) -> str | None:
    """The first of `labels` (a task's answers such as ``A``, ``(B)``, ``yes``) that
    `template` gives as the one example of a reply ("a single letter, such as A", "e.g.
    (A)") and `known` (the prompts before the edit) does not, or ``None``. A series
    ("such as A, B, C or D") is not one example. Letters match in their case only ("such
    as a" is an article)."""
    def one(label: str, text: str) -> re.Match[str] | None:
        flags = re.I if len(label.strip("()")) > 1 else 0
        return re.match(rf"\(?{re.escape(label.strip('()'))}\)?(?!\w)[\"'”’]?", text,
                        flags)

    for m in _EXAMPLE_OF.finditer(template):
        rest = template[m.end():]
        for label in labels:
            if not (first := one(label, rest)):
                continue
            after = _SERIES.match(rest, first.end())
            if after and (_LETTER.match(rest, after.end())
                          or any(one(other, rest[after.end():]) for other in labels)):
                continue  # "such as A, B or C", "A-D": the series, not one label
            if (m.group(0) + first.group(0)).lower() not in known.lower():
                return label
    return None


_SERIES = re.compile(r"\s*(?:,|/|-|–|or\b|and\b|to\b|through\b)\s*(?:or |and )?")
_LETTER = re.compile(r"\(?[A-Z]\)?(?!\w)")


_LENGTH = re.compile(r"\b(\d+)\s+(?:words?|tokens?|characters?)\b", re.I)
_REPLY_LENGTH = re.compile(r"Replies are (\d+) words? long|\((\d+) words?: ")


def pasted_length(template: str, shown: Sequence[str], known: str) -> bool:
    """Whether `template` states a length ("126 words") that the editor was shown as the
    measured length of past replies (the evidence's average, an evaluator comment's
    "(126 words: ...)"), and that `known` (the parent prompt) does not already state.
    That describes past replies; it is not an instruction (a svamp child ended "... and
    is 126 words long on average"). The expected answers' length ("about 2 words") is
    a form the prompt may ask for."""
    measured = {n for text in shown for m in _REPLY_LENGTH.finditer(text)
                for n in m.groups() if n}
    known_numbers = {m.group(1) for m in _LENGTH.finditer(known)}
    return any(m.group(1) in measured and m.group(1) not in known_numbers
               for m in _LENGTH.finditer(template))


_MISADDRESSED = re.compile(
    r"\b(?:please )?provide (?:me with )?(?:the|a|an) "
    r"(?:(?!answer|solution|reply|response|result|calculation)[a-z]+ ){0,3}"
    r"(?:passage|question|sentence|problem|text|input|context|choice|option)s?\b"
    r"(?! (?:is|are|as)\b)"
    r"|\b(?:a |an )?(?:different|new|previous|another|better|improved) "
    r"(?:prompts?|versions? of the prompt)\b"
    r"|\b(?:the|this) (?:current |original )?prompt\b"
    r"|\bif you have any (?:further |other |more )?questions\b|\bplease let me know\b"
    r"|\bthank you for your (?:cooperation|help|time|understanding|attention)\b"
    r"|<the [a-z ]+>", re.I)


def misaddressed(template: str, known: str) -> str | None:
    """The first words of `template` that speak to the wrong reader and that `known`
    (the parent prompt) does not already say, or ``None``.

    The 1.5B editor confuses the prompt it edits with a request to itself: it writes
    "Please provide the Wikipedia passage and the question." (the input is already in
    the prompt), "Use a different prompt that does not repeat any previous one.", or
    "The expected answer is <the expected answer>.", signs off as in a letter ("If you
    have any questions or need further clarification, please let me know. Thank you for
    your cooperation.", hellaswag seed 1), or pastes its critique in ("The
    current prompt does not specify this, which leads to incorrect choices"): 23 of the
    97 children of the committed benchmark runs (2026-12-04) did one of these, and none
    of them helps the model that answers. A phrase the parent already has is the
    user's wording, not the editor's.
    """
    seen = known.lower()  # (a line the parent has holds only phrases it has)
    return next((m.group(0) for m in _MISADDRESSED.finditer(template)
                 if m.group(0).lower() not in seen), None)


def new_children(state: GradSumState, ctx: GradSumContext, jobs: list[EditJob],
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
        rows = beam_mod.failed_rows(state["records"], cid, batch)
        if strategy == "shorten":  # screened first on the cut-off failures it is to fix
            rows.sort(key=lambda i: not beam_mod.cut_off_count(state, cid, [i]))
        rows = rows[: ctx.screen_size]
        if rows:
            parent_score = beam_mod.mean_score(state["records"], cid, rows) or 0.0
            child["screen"] = {"rows": rows, "parent_score": parent_score, "score": None,
                               "passed": None}
        children[child_id] = child
    return children


# --- reading an editor's reply ---------------------------------------------------------

_TAGGED = re.compile(r"<prompt>\s*(.*?)\s*(?:</prompt>|$)", re.S | re.I)
_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n```$", re.S)
_ECHOED = re.compile(r"</?current_prompt>", re.I)
_INSTRUCTION = re.compile(r"<instruction>\s*(.*?)\s*(?:</instruction>|$)", re.S | re.I)


def extract_prompt(reply: str) -> str:
    """The new prompt from an editor reply: inside <prompt> tags, else the reply."""
    found = [m for m in _TAGGED.findall(reply) if m.strip()]
    text = found[-1] if found else reply
    text = text.strip()
    fenced = _FENCE.match(text)
    text = (fenced.group(1) if fenced else text).strip()
    # small editors echo the tags the edit prompt shows the current prompt in
    return _without_repeats(_ECHOED.sub("", text).strip())


_EMPTY_ITEM = re.compile(r"\d+[.)]")


def _without_repeats(text: str) -> str:
    """`text` without the lines, and the sentences within a line, that repeat an
    earlier one word for word: a small editor can loop on one sentence until its reply
    cap (the mmlu winner of 2026-12-02 said "If your reply is not in the correct
    format, ..." on six lines; a svamp rewrite said "The answer must be a whole number,
    not a decimal or fraction." twenty times on one line). Runs of blank lines become
    one, and a last line that only begins an earlier one goes too: a hellaswag rewrite
    of `5a58f22` looped through a dozen blank lines to its cap and ended "The AI
    assistant must choose the letter (A-D) of the most". A numbered item with no text
    goes as well (a rag_nq_open rewrite of `cfaff92` ended its list with "8." to "14."
    on lines of their own)."""
    seen: set[str] = set()
    kept: list[str] = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        key = " ".join(line.split()).lower()
        if key and key in seen or _EMPTY_ITEM.fullmatch(key):
            continue
        if not key and kept and not kept[-1].strip():
            continue
        if n == len(lines) - 1 and _cut_short(key, seen):
            continue
        seen.add(key)
        pieces = sentences(line)
        if len(pieces) > 1:
            new: list[str] = []
            for sentence in pieces:
                skey = " ".join(sentence.split()).lower()
                if skey in seen and skey.endswith((".", "!", "?")):
                    continue
                seen.add(skey)
                new.append(sentence)
            line = "".join(new)
            line = line if new[:1] == pieces[:1] else line.lstrip()
        kept.append(line)
    return "\n".join(kept).rstrip()


def _cut_short(key: str, seen: set[str]) -> bool:
    """Whether the (normalized) line `key` is an unfinished start of an earlier line or
    sentence: five words or more, no placeholder, no closing punctuation."""
    return len(key.split()) >= 5 and "{" not in key and not key.endswith(
        (".", "!", "?", ":", '"')) and any(s.startswith(key) and s != key for s in seen)


def extract_instruction(reply: str) -> str:
    """The added instruction from an editor reply: in <instruction> tags, else as a prompt."""
    found = [m for m in _INSTRUCTION.findall(reply) if m.strip()]
    return found[-1].strip() if found else extract_prompt(reply)


def _normalize(text: str) -> str:
    return " ".join(text.split())
