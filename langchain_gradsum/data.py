"""Data in: rows as dicts, langsmith Examples or a JSONL file; checked before any call."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from langchain_gradsum.state import Example

__all__ = ["load_examples", "minibatch_indices"]

DataLike = str | os.PathLike[str] | Iterable[Any]


def load_examples(data: DataLike, *, name: str = "train") -> list[Example]:
    """Normalize data to ``[{"inputs": {...}, "outputs": {...}}, ...]``.

    Accepts a list of such dicts, langsmith ``Example`` objects (anything with
    ``.inputs`` and ``.outputs``), or the path of a JSONL file of such dicts.

    Raises:
        ValueError: the data is empty, or a row has the wrong shape (the message
            names the row and what to fix).
    """
    if isinstance(data, str | os.PathLike):
        rows: list[Any] = _read_jsonl(Path(data), name)
    elif isinstance(data, Mapping):
        raise TypeError(
            f"{name} must be a list of rows, a JSONL path or langsmith Examples, got a dict; "
            "wrap a single row in a list"
        )
    else:
        try:
            rows = list(data)
        except TypeError:
            raise TypeError(
                f"{name} must be a list of rows, a JSONL path or langsmith Examples, got "
                f"{type(data).__name__}"
            ) from None
    if not rows:
        raise ValueError(f"{name} is empty: give at least one example")
    return [_to_example(row, i, name) for i, row in enumerate(rows)]


def _read_jsonl(path: Path, name: str) -> list[Any]:
    if not path.is_file():
        raise ValueError(f"{name}: no such file {str(path)!r} (expected a JSONL file of rows)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}: {path}:{n} is not valid JSON ({e.msg})") from None
    return rows


def _to_example(row: Any, i: int, name: str) -> Example:
    if hasattr(row, "inputs") and hasattr(row, "outputs") and not isinstance(row, Mapping):
        inputs, outputs = row.inputs, row.outputs
    elif isinstance(row, Mapping):
        if "inputs" not in row:
            raise ValueError(
                f"{name} row {i} has no 'inputs' key (keys: {sorted(row)}); each row must be "
                "{'inputs': {...variables...}, 'outputs': {...reference...}}"
            )
        inputs, outputs = row["inputs"], row.get("outputs")
    else:
        raise ValueError(
            f"{name} row {i} is a {type(row).__name__}; each row must be a dict "
            "{'inputs': {...}, 'outputs': {...}} or a langsmith Example"
        )
    if not isinstance(inputs, Mapping):
        raise ValueError(f"{name} row {i}: 'inputs' must be a dict, got {type(inputs).__name__}")
    if outputs is None:
        outputs = {}
    if not isinstance(outputs, Mapping):
        outputs = {"answer": outputs}
    return {"inputs": dict(inputs), "outputs": dict(outputs)}


def check_variables(examples: list[Example], variables: list[str], name: str) -> None:
    """Every row must provide every variable the prompt uses."""
    for i, ex in enumerate(examples):
        missing = [v for v in variables if v not in ex["inputs"]]
        if missing:
            raise ValueError(
                f"{name} row {i} has no {', '.join(repr(v) for v in missing)} in its inputs, "
                f"but the prompt uses {', '.join('{' + v + '}' for v in missing)}; the row's "
                f"inputs have {sorted(ex['inputs'])}"
            )


def minibatch_indices(n: int, size: int, seed: int, iteration: int) -> list[int]:
    """The training rows scored in one iteration: a fresh seeded sample each time."""
    if size >= n:
        return list(range(n))
    return sorted(random.Random(f"gradsum-{seed}-{iteration}").sample(range(n), size))
