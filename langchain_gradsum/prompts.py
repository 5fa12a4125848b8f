"""The meta-prompts of GRAD-SUM's LLM modules: readable constants, overridable.

Each is a ``str.format`` template; the values substituted in (data, outputs,
prompts) may contain braces freely. Override any of them with
``GradSumOptimizer(meta_prompts=MetaPrompts(edit=MY_EDIT_PROMPT))``; an override
must keep the same ``{fields}`` (checked before any LLM call).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields

__all__ = [
    "EDIT_INSTRUCTION_PROMPT",
    "EDIT_PROMPT",
    "EDIT_RETRY_PROMPT",
    "EDIT_SHORTEN_PROMPT",
    "EDIT_VARIANTS",
    "GRADIENT_PROMPT",
    "JUDGE_PROMPT",
    "MISTAKE_KINDS",
    "MetaPrompts",
    "SHORTEN_CALCULATION",
    "SHORTEN_INSTRUCTION",
    "SUMMARY_PROMPT",
]

JUDGE_PROMPT = """\
You are grading the output of an AI assistant.

<task>
{task_description}
</task>

<criteria>
{criteria}
</criteria>

<input>
{inputs}
</input>

<expected_output>
{reference}
</expected_output>

<output>
{output}
</output>

First reason briefly about whether the output meets the criteria. Then give a score \
from 0 to 1: 1 means it fully meets the criteria, 0 means it does not meet them at all."""

MISTAKE_KINDS = ("format", "reasoning", "misread", "knowledge", "incomplete")
"""The fixed set of mistake kinds a critique names (its first line, ``Kind: <kind>``), so
the summary can count the kinds that recur."""

GRADIENT_PROMPT = """\
You are improving a prompt that instructs an AI assistant.

<task>
{task_description}
</task>

<prompt>
{prompt}
</prompt>

The prompt was filled in with the input below, and the assistant's output fell short.

<input>
{inputs}
</input>

<output>
{output}
</output>

<expected_output>
{reference}
</expected_output>

<evaluation score="{score}">
{feedback}
</evaluation>

Read the evaluation first: it says exactly what was wrong. Answer in this form:
Kind: <one word: format, reasoning, misread, knowledge or incomplete>
<one short paragraph>

The kinds: format = the reply has the wrong form (extra words around the answer, no \
clear final answer, the answer not where or how it is expected); reasoning = a wrong \
step or calculation; misread = the question or input was misunderstood; knowledge = \
a fact was wrong or missing; incomplete = the reply stopped before the answer (if it \
was cut off at the length limit, say that the prompt must ask for brief working).
In the paragraph, say which general instruction the prompt lacks that would prevent \
this kind of mistake on any input (if the form is wrong, say exactly what form the \
reply must take). Do not mention the names, numbers or details of this example, and \
do not write a new prompt."""

SUMMARY_PROMPT = """\
You are improving a prompt that instructs an AI assistant.

<task>
{task_description}
</task>

<prompt>
{prompt}
</prompt>

Each critique below was written after the prompt failed on one example.

<critiques>
{gradients}
</critiques>

What the evaluation measured on the examples:
{evidence}

Merge the critiques into one paragraph of general advice for improving the prompt. \
Start with the kind of mistake that recurs most, and say exactly what the prompt must \
ask for to fix it (for a form problem: the exact form of the reply). Leave out the \
names, numbers and details of single examples. Write only the paragraph."""

_EDIT_HEAD = """\
You are improving a prompt that instructs an AI assistant.

Task of the assistant: {task_description}

Current prompt (between the tags):
<current_prompt>
{prompt}
</current_prompt>

"""
"""How every edit ask starts: the task and the current prompt."""

EDIT_PROMPT = _EDIT_HEAD + """\
Feedback on the current prompt:
{feedback}

What the evaluation measured on the examples:
{evidence}
{history}
Write an improved prompt that fixes the problems in the feedback: keep what works, \
and add in words the instructions the feedback asks for.
- Address the assistant directly, as instructions ("Solve...", "Answer...").
- Keep the placeholder {variables} where the input goes: it is replaced by each real input.
- Give instructions that work for every input; do not solve an example yourself.
- State the requirements of the task above in the prompt, such as the form the reply \
must take.
- Do not copy example questions or answers into the prompt.
{variant}
Reply with only the improved prompt, between <prompt> and </prompt>; it must differ \
from the current prompt."""

EDIT_INSTRUCTION_PROMPT = _EDIT_HEAD + """\
Feedback on the current prompt:
{feedback}

What the evaluation measured on the examples:
{evidence}
{history}
Write the one instruction (one or two sentences) that, added at the end of the \
current prompt, fixes the most common problem in the feedback. Address the assistant \
directly. If the problem is the form of the reply, say exactly what form the reply \
must take (for example "Reply with only ..." or "End your reply with ..."). If replies \
were cut off at the length limit, ask for brief working (for example "Keep your working \
short, a few lines at most, ..."). Do not repeat the current prompt and do not mention \
a single example.
Reply with only the instruction, between <instruction> and </instruction>."""

SHORTEN_INSTRUCTION = (
    "Keep your working brief, a few short lines at most, and end your reply with the final "
    "answer ({form}).")
"""The instruction a ``shorten`` child adds to its parent, when most of the parent's
failed replies were cut off at the token cap (``shorten_edits``) and the expected answers
are not numbers (those get `SHORTEN_CALCULATION`); `form` is the measured form of the
batch's expected answers (`feedback.answer_form`: "a single option letter"). Composed, not
written by the editor: asked for such a sentence, the 1.5B editor left out the answer's
form ("... and then give the answer.", svamp, `a411ac2`), and asked to fill in a blank it
copied the ask ("Replace the dots with the final number, as the task above states it.",
replay at `f84432f`). On mmlu the first ``shorten`` child passed its screen and the winner
grew from it (28 -> 48/100, `a411ac2`)."""

SHORTEN_CALCULATION = (
    "Reply in exactly this form, in plain text:\n"
    "Reasoning: <one or two sentences saying which numbers to combine and how>\n"
    "Calculation: <the arithmetic> = <result>\n"
    "Answer: <the final number>")
"""`SHORTEN_INSTRUCTION` for a batch whose expected answers are numbers: a reply form
with labelled lines, put under the parent after a blank line. Asked for "brief working"
the 1.5B model drops its working (svamp: 0.44 against the start prompt's 0.61 on test,
`bb0654f`), and asked for "only the calculation in one or two lines" (the sentence
before this form) it scored 0.65 against the start prompt's 0.69 on 80 svamp rows
outside every split (2026-12-06). The form keeps a sentence of reasoning and drops the
plan, the restatement and the LaTeX that made a third of the replies stop at the
200-token cap: on those 80 rows **0.74** (63 output tokens per reply, none cut off;
the calculation sentence 0.65 in 75, the start prompt 0.69 in 166), and on 80 other
rows 0.70 against 0.64 (67 against 171 tokens; 1 cut off against 29). Exploratory,
2026-12-07, `benchmarks/results/probes/svamp__s0__explore-*__2026-12-07.json`. The same
form for option letters ("Reasoning: ... Answer: <a single option letter>") scored 0.46
on 80 mmlu rows, level with `SHORTEN_INSTRUCTION`'s 0.47 (the start prompt 0.35), so
other answers keep that sentence. Picked by the search on svamp (`2056f51`, seed 0) it
scored 272 of 400 test rows against the start prompt's 264 (p = 0.48) in 66 output
tokens per reply instead of 168: the same accuracy for 40 % of the tokens."""

DEMO_HEADER = "Here is an example of a good reply."
"""The line a ``demo`` child (``demo_edits``) puts above the example it shows: its
parent's shortest right reply on a training row, under the row's inputs. On 80 svamp
rows outside every split the start prompt with one such example scored 0.75 against
0.69 without it (8 rows won, 3 lost, p = 0.23; 2026-12-06, exploratory), where every
shortening instruction tried scored below the start prompt."""

EDIT_SHORTEN_PROMPT = _EDIT_HEAD + """\
Problem: the assistant's replies are too long. Most of them were cut off at the length \
limit before they reached the answer, so they failed.

Write the one instruction (one or two sentences) that, added at the end of the current \
prompt, makes the assistant keep its working brief, a few short lines at most, and then \
give the answer. Say exactly what form the answer must take, as the task above states it \
(for example "End your reply with ..."). Address the assistant directly.
Reply with only the instruction, between <instruction> and </instruction>."""
"""The editor's ask for a ``shorten`` child where `SHORTEN_INSTRUCTION` cannot be used:
the rows have no reference answers to measure the form on, or the parent already says
it. The 1.5B critic and summary call cut-off failures a missing final answer, and
instructions written from them ask for the answer, not for less text; this ask names
the problem alone."""

EDIT_RETRY_PROMPT = """\
That cannot be used ({why}). Write a different one that follows the rules above. \
Reply with only it, between the same tags as asked."""

EDIT_VARIANTS = (
    "write a longer, more detailed prompt: spell out the steps to follow and the exact "
    "form of the final answer.",
    "restructure the prompt from scratch around the problems in the feedback.",
    "make the smallest change that fixes the problems.",
)
"""What the edit prompt's ``{variant}`` asks of a parent's rewritten candidates (the k-th
rewrite gets ``EDIT_VARIANTS[k % len]``): different asks give different children even
from a deterministic editor; the same ask twice gives duplicates. With
``instruction_edits`` (the default) a parent's first child is instead one added
instruction (``EDIT_INSTRUCTION_PROMPT``), and its later children are rewrites."""


@dataclass(frozen=True)
class MetaPrompts:
    """The meta-prompts (judge, gradient, summary, edit, added-instruction edit), the
    edit's retry message, the ask for a shortening edit and the shortening instructions
    composed without it (number answers get their own), the line above a demonstration,
    and the asks that make an edit's children differ. Replace any to change how a module
    talks to its LLM."""

    judge: str = JUDGE_PROMPT
    gradient: str = GRADIENT_PROMPT
    summarize: str = SUMMARY_PROMPT
    edit: str = EDIT_PROMPT
    edit_instruction: str = EDIT_INSTRUCTION_PROMPT
    edit_variants: tuple[str, ...] = EDIT_VARIANTS
    edit_retry: str = EDIT_RETRY_PROMPT
    edit_shorten: str = EDIT_SHORTEN_PROMPT
    shorten_instruction: str = SHORTEN_INSTRUCTION
    shorten_calculation: str = SHORTEN_CALCULATION
    demo_header: str = DEMO_HEADER

    def __post_init__(self) -> None:
        variants = self.edit_variants
        if (not isinstance(variants, tuple | list) or not variants
                or not all(isinstance(v, str) and v.strip() for v in variants)):
            raise TypeError("MetaPrompts.edit_variants must be a non-empty tuple of strings")
        object.__setattr__(self, "edit_variants", tuple(variants))
        for f in fields(self):
            if f.name == "edit_variants":
                continue
            default = f.default
            text = getattr(self, f.name)
            if not isinstance(text, str):
                raise TypeError(f"MetaPrompts.{f.name} must be a str, got {type(text).__name__}")
            need = _fields(default)  # type: ignore[arg-type]
            try:
                have = _fields(text)
            except ValueError as e:
                raise ValueError(
                    f"MetaPrompts.{f.name} is not a valid str.format template ({e}); "
                    "write literal braces as {{ and }}"
                ) from None
            if have - need:
                raise ValueError(
                    f"MetaPrompts.{f.name} uses unknown fields {sorted(have - need)}; "
                    f"available: {sorted(need)}"
                )
            missing = need - have - _OPTIONAL[f.name]
            if missing:
                raise ValueError(
                    f"MetaPrompts.{f.name} must contain the fields {sorted(missing)}"
                )


_OPTIONAL = {
    "judge": {"task_description", "reference", "inputs"},
    "gradient": {"task_description", "reference", "score", "feedback", "inputs"},
    "summarize": {"task_description", "evidence"},
    "edit": {"task_description", "variant", "evidence", "history"},
    "edit_instruction": {"task_description", "evidence", "history"},
    "edit_retry": {"why"},
    "edit_shorten": {"task_description"},
    "shorten_instruction": set(),
    "shorten_calculation": set(),
    "demo_header": set(),
}


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
