"""Prompt templates: which text is optimized, how it is rendered, and the variable guard."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.prompts import (
    BasePromptTemplate,
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    PromptTemplate,
    SystemMessagePromptTemplate,
)

__all__ = ["PromptSlot", "copied_example", "example_words", "heal_template", "literal",
           "sentences", "template_variables"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")


def literal(text: str) -> str:
    """`text` as f-string template text: its braces escaped, so none is a variable."""
    return text.replace("{", "{{").replace("}", "}}")


def template_variables(text: str) -> list[str]:
    """Variables of an f-string template, in order of first use.

    Raises:
        ValueError: the text is not a valid f-string template.
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(
            f"the prompt is not a valid f-string template ({e}): write literal braces as "
            "{{ and }}"
        ) from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(
                f"the prompt uses {{{name}}}, which is not a plain variable name: use names "
                "like {question}, and write literal braces as {{ and }}"
            )
        if name not in names:
            names.append(name)
    return names


def heal_template(
    text: str, required: list[str], *, append_missing: bool = False
) -> tuple[str | None, str]:
    """The variable guard: make `text` use exactly the `required` variables.

    A sentence holding a placeholder the editor invented, and no required one, is
    dropped: it asks for a value nobody fills in (the 1.5B editor wrote "The correct
    answer is {expected_answer}." into four mmlu candidates of `5a58f22`, which scored
    0.25 and 0.30 on validation to the start prompt's 0.60). Other invented
    placeholders and stray braces are escaped so they render literally. A candidate
    that lost a required variable is rejected, or, with `append_missing`, repaired by
    appending the lost placeholders at the end (where the input of an
    instruction-style prompt usually goes).

    Returns:
        ``(template, "ok" | "repaired")``, or ``(None, "rejected: <why>")``.
    """
    required_set = set(required)
    seen: set[str] = set()
    kept = _without_invented(text, required_set)
    repaired = kept != text
    text = kept

    def fix(m: re.Match[str]) -> str:
        nonlocal repaired
        tok = m.group(0)
        if tok in ("{{", "}}"):
            return tok
        name = m.group(1)
        if name is not None and name in required_set:
            seen.add(name)
            return tok
        repaired = True
        return literal(tok)

    healed = _TOKEN.sub(fix, text)
    missing = [v for v in required if v not in seen]
    if missing and not (append_missing and healed.strip()):
        return None, "rejected: lost " + ", ".join("{" + v + "}" for v in missing)
    if missing:
        if len(required) == 1:
            block = "{" + missing[0] + "}"
        else:
            block = "\n".join(f"{v}: {{{v}}}" for v in missing)
        return healed.rstrip() + "\n\n" + block, "repaired"
    return healed, "repaired" if repaired else "ok"


_SENTENCE = re.compile(r".*?(?:[.!?]+(?=\s|$)|$)")


def sentences(line: str) -> list[str]:
    """`line` cut after each run of ``.``, ``!`` or ``?`` that ends a word ("3.5" is
    not cut); the pieces keep their whitespace, so joined they give `line` back."""
    return [m.group(0) for m in _SENTENCE.finditer(line) if m.group(0)]


def _without_invented(text: str, required: set[str]) -> str:
    """`text` without its sentences that hold an invented ``{name}`` placeholder and no
    required one (unchanged if nothing else would be left)."""
    def invented(sentence: str) -> bool:
        names = [m.group(1) for m in _TOKEN.finditer(sentence) if m.group(1) is not None]
        return any(n.isidentifier() and n not in required for n in names) and not any(
            n in required for n in names)

    lines: list[str] = []
    dropped = False  # a whole line: the blank lines around it would pile up
    for line in text.splitlines():
        pieces = sentences(line)
        if not any(invented(x) for x in pieces):
            lines.append(line)
        elif kept := "".join(x for x in pieces if not invented(x)).strip():
            lines.append(kept)
        else:
            dropped = True
    out = "\n".join(lines)
    if dropped:
        out = re.sub(r"\n{3,}", "\n\n", out)
    return out if out.strip() else text


@dataclass(frozen=True)
class PromptSlot:
    """Where the optimized text sits in the user's prompt, and how to rebuild it.

    For a plain string or `PromptTemplate`, the whole template is optimized and
    sent as one human message. For a `ChatPromptTemplate`, the system message is
    optimized (else the last human message); the other messages are kept.
    """

    kind: str  # "str" | "prompt" | "chat"
    chat: ChatPromptTemplate | None = None
    index: int = -1

    @classmethod
    def from_prompt(cls, prompt: Any) -> tuple[PromptSlot, str]:
        """Split a user prompt into (slot, text to optimize)."""
        if isinstance(prompt, str):
            return cls("str"), prompt
        if isinstance(prompt, PromptTemplate):
            if prompt.template_format != "f-string":
                raise ValueError(
                    f"only f-string templates can be optimized, got template_format="
                    f"{prompt.template_format!r}"
                )
            if prompt.partial_variables:
                raise ValueError("PromptTemplate with partial_variables is not supported yet")
            return cls("prompt"), prompt.template
        if isinstance(prompt, ChatPromptTemplate):
            index = _pick_message(prompt)
            msg = prompt.messages[index]
            if isinstance(msg, BaseMessage):
                text = literal(str(msg.content))
            else:
                tmpl = msg.prompt  # type: ignore[union-attr]
                if not isinstance(tmpl, PromptTemplate) or tmpl.template_format != "f-string":
                    raise ValueError(
                        "the chat message to optimize must be a plain f-string text template"
                    )
                text = tmpl.template
            return cls("chat", prompt, index), text
        if isinstance(prompt, BasePromptTemplate):
            raise TypeError(
                f"cannot optimize a {type(prompt).__name__}: pass a str, PromptTemplate or "
                "ChatPromptTemplate"
            )
        raise TypeError(
            f"prompt must be a str, PromptTemplate or ChatPromptTemplate, got "
            f"{type(prompt).__name__}"
        )

    def all_variables(self, text: str) -> list[str]:
        """Every variable the full prompt needs when `text` fills the slot."""
        names = template_variables(text)
        if self.chat is not None:
            for i, msg in enumerate(self.chat.messages):
                if i != self.index and not isinstance(msg, BaseMessage):
                    names += [v for v in msg.input_variables if v not in names]
        return names

    def render(self, text: str, inputs: dict[str, Any]) -> list[BaseMessage]:
        """The messages the task model sees for one example."""
        if self.chat is None:
            return [HumanMessage(PromptTemplate.from_template(text).format(**inputs))]
        return self.rebuild(text).format_messages(**inputs)  # type: ignore[union-attr]

    def rebuild(self, text: str) -> Any:
        """The user's prompt, same type, with `text` in the slot."""
        if self.kind == "str":
            return text
        if self.kind == "prompt":
            return PromptTemplate.from_template(text)
        assert self.chat is not None
        messages = list(self.chat.messages)
        old = messages[self.index]
        if isinstance(old, BaseMessage):
            cls: type[SystemMessagePromptTemplate] | type[HumanMessagePromptTemplate] = (
                SystemMessagePromptTemplate if old.type == "system" else HumanMessagePromptTemplate
            )
        else:
            cls = type(old)  # type: ignore[assignment]
        messages[self.index] = cls.from_template(text)
        return ChatPromptTemplate.from_messages(messages)


def _pick_message(prompt: ChatPromptTemplate) -> int:
    def role(m: Any) -> str | None:
        if isinstance(m, BaseMessage):
            return m.type if isinstance(m.content, str) else None
        if isinstance(m, SystemMessagePromptTemplate):
            return "system"
        if isinstance(m, HumanMessagePromptTemplate):
            return "human"
        return None

    roles = [role(m) for m in prompt.messages]
    if "system" in roles:
        return roles.index("system")
    humans = [i for i, r in enumerate(roles) if r == "human"]
    if humans:
        return humans[-1]
    raise ValueError(
        "the ChatPromptTemplate has no system or human text message to optimize"
    )


_WORD = re.compile(r"\w+")


def copied_example(
    text: str, examples: list[str], *, original: str = "", min_words: int = 8
) -> int | None:
    """The index of an example whose text `text` copies, else ``None``.

    A copy is a run of `min_words` consecutive words shared with an example
    (case and punctuation ignored) that the `original` prompt did not already
    contain. Editors, small ones especially, paste a training question into the
    prompt instead of writing instructions: such a prompt overfits that example
    and leaks data into the result.
    """

    def grams(s: str) -> set[tuple[str, ...]]:
        words = _WORD.findall(s.lower())
        return {tuple(words[i:i + min_words]) for i in range(len(words) - min_words + 1)}

    mine = grams(text) - grams(original)
    if not mine:
        return None
    for i, example in enumerate(examples):
        if mine & grams(example):
            return i
    return None


# Frequent English words: never an example's detail, however rare in a small dataset.
_COMMON = frozenset("""
the and for are but not you all any can had her was one our out day get has him his how
man new now old see two way who boy did its let put say she too use that with have this
will your from they know want been good much some time very when come here just like long
make many more only over such take than them well were what which their there these those
then into also each other about after again could first given would should must every
where while being both does done same most least used using give given gets make made
""".split())


def example_words(
    text: str, seen: list[str], corpus: list[str], *, known: str = "", max_share: float = 0.2
) -> list[str]:
    """The words of `text` that come from the examples in `seen`, not from the task.

    A word counts when it is not in `known` (the prompt before the edit and the task
    description), appears in one of the `seen` examples, and in at most `max_share` of
    the `corpus` examples: "end with the number of children on the bus" fits the one
    question about a bus; "end with the final number" fits them all.
    """
    def words(s: str) -> set[str]:
        return {w for w in _WORD.findall(s.lower())
                if len(w) >= 3 and not w.isdigit() and w not in _COMMON}

    candidates = words(text) - words(known)
    candidates &= set().union(*(words(e) for e in seen)) if seen else set()
    if not candidates or not corpus:
        return []
    limit = max(1, int(max_share * len(corpus)))
    corpus_words = [words(e) for e in corpus]  # each example tokenized once
    counts = {w: sum(1 for ws in corpus_words if w in ws) for w in candidates}
    return sorted(w for w, n in counts.items() if n <= limit)
