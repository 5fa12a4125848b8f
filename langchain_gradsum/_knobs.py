"""The knobs of a run, read from `GradSumContext`'s fields: the one place they are defined.

Each field gives a knob's type and range (``Annotated[int, Ge(1)]``, from
`annotated_types`), its default and a one-line ``metadata={"description": ...}``. From
them come the checks (`check_knob`), `GradSumOptimizer`'s parameters and docstring, the
``gradsum optimize`` options and the README's knob table (`knob_table`)::

    make docs   # rewrites the README's knob table (and the graph drawings)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types as at

__all__ = ["Knob", "check_knob", "knob_table", "knobs", "knobs_doc"]

MODEL_ROLES = ("model", "judge_model", "optimizer_model")


@dataclass(frozen=True)
class Knob:
    """One field of `GradSumContext`, as the checks and the derived docs see it."""

    name: str
    kind: Any
    """The value's type: ``int``, ``float``, ``bool``, ``str``, a class, or (models,
    evaluators) the field's whole annotation, which no generic check covers."""
    optional: bool
    """``None`` is a valid value."""
    bounds: tuple[Any, ...]
    """`annotated_types` bounds (``Ge``, ``Gt``, ``Le``, ``Lt``)."""
    field: dataclasses.Field[Any]
    hint: Any
    """The field's annotation, resolved."""

    @property
    def description(self) -> str:
        return str(self.field.metadata.get("description", ""))

    @property
    def required(self) -> bool:
        return (self.field.default is dataclasses.MISSING
                and self.field.default_factory is dataclasses.MISSING)

    @property
    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None if self.field.default is dataclasses.MISSING else self.field.default

    def shown_default(self) -> str:
        """The default as the docs show it."""
        if self.required:
            return "required"
        value = self.default
        if self.field.default_factory is not dataclasses.MISSING:
            return "built-in"
        if value is None or value == ():
            return "none"
        if isinstance(value, bool) or value == "":
            return f"`{value!r}`"
        return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def knobs() -> dict[str, Knob]:
    """Every knob, in the order of `GradSumContext`'s fields."""
    from langchain_gradsum.state import GradSumContext

    hints = typing.get_type_hints(GradSumContext, include_extras=True)
    return {f.name: _knob(f, hints[f.name]) for f in dataclasses.fields(GradSumContext)}


def _knob(field: dataclasses.Field[Any], hint: Any) -> Knob:
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    rest = [a for a in args if a is not type(None)]
    kind: Any = rest[0] if len(rest) == 1 else hint
    bounds: tuple[Any, ...] = ()
    if get_origin(kind) is Annotated:
        kind, *meta = get_args(kind)
        bounds = tuple(_expand(meta))
    return Knob(name=field.name, kind=kind, optional=len(rest) < len(args), bounds=bounds,
                field=field, hint=hint)


def _expand(meta: list[Any]) -> Iterator[Any]:
    for m in meta:
        if isinstance(m, at.GroupedMetadata):
            yield from m
        else:
            yield m


def check_knob(name: str, value: Any) -> None:
    """Raise TypeError (wrong type) or ValueError (out of range) for a bad knob value.

    Models and evaluators are checked where they are resolved (`GradSumOptimizer`)."""
    knob = knobs()[name]
    if value is None and knob.optional:
        return
    kind = knob.kind
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    elif kind is int or kind is float:
        is_number = isinstance(value, int | float) if kind is float else isinstance(value, int)
        if isinstance(value, bool) or not is_number:
            what = "a number" if kind is float else "an int"
            raise TypeError(f"{name} must be {what}, got {value!r}")
        _check_bounds(knob, value)
    elif kind is str or isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")


def _check_bounds(knob: Knob, value: float) -> None:
    low = next((b for b in knob.bounds if isinstance(b, at.Ge | at.Gt)), None)
    high = next((b for b in knob.bounds if isinstance(b, at.Le | at.Lt)), None)
    lo = getattr(low, "ge", getattr(low, "gt", None))
    hi = getattr(high, "le", getattr(high, "lt", None))
    lo_open, hi_open = isinstance(low, at.Gt), isinstance(high, at.Lt)
    inside = math.isfinite(value) and (
        lo is None or value > lo or (value == lo and not lo_open)) and (
        hi is None or value < hi or (value == hi and not hi_open))
    if inside:
        return
    if hi is None and lo is not None and not lo_open:
        raise ValueError(f"{knob.name} must be >= {lo}, got {value}")
    bounds = (("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}") + ", "
              + ("inf" if hi is None else f"{hi:g}") + (")" if hi_open else "]"))
    raise ValueError(f"{knob.name} must be in {bounds}, got {value!r}")


# --- the docs derived from the knobs ----------------------------------------------------


def knobs_doc(indent: int = 8, overrides: dict[str, str] | None = None) -> str:
    """Google-style ``Args:`` entries, one per knob (`overrides`: other defaults to show)."""
    lines: list[str] = []
    for knob in knobs().values():
        default = (overrides or {}).get(knob.name, knob.shown_default())
        text = f"{knob.name}: {knob.description} [{default.strip('`')}]"
        lines += textwrap.wrap(text, 92 - indent, initial_indent=" " * indent,
                               subsequent_indent=" " * (indent + 4))
    return "\n".join(lines) + "\n"


_BEGIN = "<!-- knobs: generated from GradSumContext by `make docs` -->"
_END = "<!-- /knobs -->"


def knob_table() -> str:
    """The README's knob table (Markdown), between its markers."""
    rows = [f"| `{k.name}` | {k.shown_default()} | {k.description.replace('|', chr(92) + '|')} |"
            for k in knobs().values()]
    return "\n".join([_BEGIN, "| knob | default | meaning |", "|---|---|---|", *rows, _END])


def readme_with_table(readme: str) -> str:
    """`readme` with its generated knob table replaced by the current one."""
    block = re.compile(re.escape(_BEGIN.split(" by ")[0]) + r".*?" + re.escape(_END), re.S)
    if not block.search(readme):
        raise ValueError(f"no knob table in the README (between {_BEGIN!r} and {_END!r})")
    return block.sub(lambda _: knob_table(), readme, count=1)


def main(argv: list[str]) -> int:
    for name in argv or ["README.md"]:
        path = Path(name)
        path.write_text(readme_with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote the knob table in {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
