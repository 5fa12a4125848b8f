"""Data in: rows as dicts, langsmith Examples, a JSONL file or a LangSmith dataset;
checked before any call."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_gradsum.state import Example

__all__ = ["LangSmithDataset", "load_examples", "load_splits", "minibatch_indices"]


@dataclass(frozen=True)
class LangSmithDataset:
    """A LangSmith dataset to read rows from, with the real ``langsmith`` client.

    ``train="my-dataset"`` (a name), a dataset id, or a ``langsmith`` ``Dataset`` does
    the same with the default client and splits; this says more.

    Args:
        name: The dataset's name (or give `id`).
        id: The dataset's id.
        splits: Read only the examples in these LangSmith splits (e.g. ``["test"]``).
            Default: the rules of `load_splits`.
        client: A ``langsmith.Client``; default ``Client()`` (``LANGSMITH_API_KEY``,
            ``LANGSMITH_ENDPOINT``).
    """

    name: str | None = None
    id: str | uuid.UUID | None = None
    splits: Sequence[str] | None = None
    client: Any = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.id is None):
            raise ValueError("LangSmithDataset needs a name or an id (one of them)")
        if isinstance(self.splits, str):
            object.__setattr__(self, "splits", (self.splits,))

    def label(self) -> str:
        return f"LangSmith dataset {self.name or str(self.id)!r}"


DataLike = str | os.PathLike[str] | LangSmithDataset | uuid.UUID | Iterable[Any]

TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("validation", "val", "dev")
HELD_OUT_SPLITS = (*VAL_SPLITS, "test")


def load_examples(data: DataLike, *, name: str = "train") -> list[Example]:
    """Normalize data to ``[{"inputs": {...}, "outputs": {...}}, ...]``.

    Accepts a list of such dicts, langsmith ``Example`` objects (anything with
    ``.inputs`` and ``.outputs``, e.g. ``Client().list_examples(...)``), the path of
    a JSONL file of such dicts, or a LangSmith dataset (`langsmith_source`), read
    whole (see `load_splits` for the split rules).

    Raises:
        ValueError: the data is empty, or a row has the wrong shape (the message
            names the row and what to fix).
    """
    source = langsmith_source(data)
    if source is not None:
        rows: list[Any] = [ex for ex, _ in _read_langsmith(source, name)]
    elif isinstance(data, str | os.PathLike):
        rows = _read_jsonl(Path(data), name)
    elif isinstance(data, Mapping):
        raise TypeError(
            f"{name} must be a list of rows, a JSONL path or langsmith Examples, got a dict; "
            "wrap a single row in a list"
        )
    else:
        try:
            rows = list(data)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{name} must be a list of rows, a JSONL path or langsmith Examples, got "
                f"{type(data).__name__}"
            ) from None
    if not rows:
        raise ValueError(f"{name} is empty: give at least one example")
    return [_to_example(row, i, name) for i, row in enumerate(rows)]


def load_splits(train: DataLike, val: DataLike | None, *,
                names: tuple[str, str] = ("train", "val")
                ) -> tuple[list[Example], list[Example]]:
    """The training and validation rows of `train` and `val` (`load_examples` forms).

    A LangSmith dataset given by reference (a name, an id, a ``Dataset`` or a
    `LangSmithDataset` without `splits`) is split by its LangSmith split names:

    - as `train`: its ``train`` split if it has one, else every example that is in
      no validation (``validation``, ``val``, ``dev``) or ``test`` split;
    - as `val`: its validation split if it has one, else all of it (but the dataset
      that is `train` must have a validation split);
    - `val` not given and `train` a dataset with a validation split: that split.

    ``test`` is never read unless named (``LangSmithDataset(..., splits=["test"])``).
    A list of examples (e.g. ``list_examples(splits=[...])``) is used as it is.

    `names` name the two in error messages.

    Raises:
        ValueError / TypeError: bad data, an unknown dataset, no API key (before any
            LLM call).
    """
    train_name, val_name = names
    train_src = langsmith_source(train)
    val_src = langsmith_source(val) if val is not None else None
    if train_src is None and val_src is None:
        return (load_examples(train, name=train_name),
                load_examples(val, name=val_name) if val is not None else [])
    read: dict[Any, list[tuple[Any, list[str]]]] = {}

    def examples(src: LangSmithDataset, name: str) -> list[tuple[Any, list[str]]]:
        key = (src.name, str(src.id) if src.id else None, tuple(src.splits or ()),
               id(src.client))
        if key not in read:
            read[key] = _read_langsmith(src, name)
        return read[key]

    if train_src is not None:
        train_all = examples(train_src, train_name)
        train_rows = _train_part(train_all, train_src)
        if val is None:
            val_split = _val_split(train_all)
            val_rows = [ex for ex, splits in train_all if val_split in splits] \
                if val_split and not train_src.splits else []
            return _normalized(train_rows, train_name, train_src), \
                _normalized(val_rows, val_name, train_src) if val_rows else []
        train_out = _normalized(train_rows, train_name, train_src)
    else:
        train_out = load_examples(train, name=train_name)
    if val_src is None:
        return train_out, load_examples(val, name=val_name)  # type: ignore[arg-type]
    also_train = train_src is not None and _same(train_src, val_src)
    val_rows = _val_part(examples(val_src, val_name), val_src, also_train=also_train,
                         names=names)
    return train_out, _normalized(val_rows, val_name, val_src)


def _split_names(rows: list[tuple[Any, list[str]]]) -> set[str]:
    return {s for _, splits in rows for s in splits}


def _val_split(rows: list[tuple[Any, list[str]]]) -> str | None:
    """The first of `VAL_SPLITS` the rows have."""
    split_names = _split_names(rows)
    return next((v for v in VAL_SPLITS if v in split_names), None)


def _train_part(rows: list[tuple[Any, list[str]]], src: LangSmithDataset) -> list[Any]:
    """The training rows of a dataset given as `train` (the rules of `load_splits`)."""
    if src.splits:
        return [ex for ex, _ in rows]
    if "train" in _split_names(rows):
        return [ex for ex, splits in rows if "train" in splits]
    return [ex for ex, splits in rows if not set(splits) & set(HELD_OUT_SPLITS)]


def _val_part(rows: list[tuple[Any, list[str]]], src: LangSmithDataset, *, also_train: bool,
              names: tuple[str, str]) -> list[Any]:
    """The validation rows of a dataset given as `val` (the rules of `load_splits`);
    `also_train`: it is the training dataset too."""
    val_split = _val_split(rows)
    if src.splits:
        return [ex for ex, _ in rows]
    if val_split:
        return [ex for ex, splits in rows if val_split in splits]
    if also_train:
        train_name, val_name = names
        raise ValueError(
            f"{val_name} is the {src.label()}, as {train_name} is, and it has no "
            "validation split "
            f"({', '.join(repr(v) for v in VAL_SPLITS)}; its splits: "
            f"{sorted(_split_names(rows))}): "
            f"give {val_name} another dataset, or name the splits with "
            "LangSmithDataset(..., splits=[...])"
        )
    return [ex for ex, _ in rows]


def langsmith_source(data: Any) -> LangSmithDataset | None:
    """The LangSmith dataset `data` names, if it names one: a `LangSmithDataset`, a
    ``langsmith`` ``Dataset``, a ``uuid.UUID``, or a string that is no existing file
    and does not look like a path (a UUID string is an id, anything else a name)."""
    if isinstance(data, LangSmithDataset):
        return data
    if isinstance(data, uuid.UUID):
        return LangSmithDataset(id=data)
    try:
        from langsmith.schemas import Dataset
    except ImportError:  # pragma: no cover - langsmith is a dependency
        Dataset = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(data, Dataset):
        return LangSmithDataset(id=data.id)
    if not isinstance(data, str):
        return None
    text = data.strip()
    if not text or Path(data).exists() or "/" in text or os.sep in text \
            or text.lower().endswith((".jsonl", ".json", ".ndjson")):
        return None
    try:
        return LangSmithDataset(id=uuid.UUID(text))
    except ValueError:
        return LangSmithDataset(name=text)


def _same(a: LangSmithDataset, b: LangSmithDataset) -> bool:
    return (a.name, str(a.id) if a.id else None) == (b.name, str(b.id) if b.id else None)


def _normalized(rows: list[Any], name: str, src: LangSmithDataset) -> list[Example]:
    if not rows:
        raise ValueError(
            f"{name}: the {src.label()} has no examples for {name}"
            + (f" in the splits {list(src.splits)}" if src.splits else "")
        )
    return [_to_example(row, i, name) for i, row in enumerate(rows)]


def _example_splits(example: Any) -> list[str]:
    """An example's LangSmith split names (``metadata.dataset_split``; default ``base``)."""
    split = (getattr(example, "metadata", None) or {}).get("dataset_split")
    if isinstance(split, str):
        return [split]
    return [str(s) for s in split] if split else ["base"]


def _read_langsmith(src: LangSmithDataset, name: str) -> list[tuple[Any, list[str]]]:
    """Every example of the dataset (in `src.splits`, if given), with its split names,
    read with the ``langsmith`` client (paginated by it)."""
    from langsmith import Client
    from langsmith import utils as ls_utils

    client = src.client
    if client is None:
        try:
            client = Client(auto_batch_tracing=False)  # only reads: no tracing thread
        except Exception as e:
            raise ValueError(f"{name}: could not make a LangSmith client to read the "
                             f"{src.label()}: {e}") from None
    if not getattr(client, "api_key", None) and not _is_loopback(client.api_url):
        raise ValueError(
            f"{name}: reading the {src.label()} needs a LangSmith API key: set "
            f"LANGSMITH_API_KEY (endpoint {client.api_url}), or pass "
            f"LangSmithDataset(..., client=Client(...)); a local file is read as JSONL "
            f"only if it exists"
        )
    try:
        dataset = client.read_dataset(dataset_name=src.name) if src.id is None else \
            client.read_dataset(dataset_id=src.id)
        found = list(client.list_examples(dataset_id=dataset.id,
                                          splits=list(src.splits) if src.splits else None))
    except ls_utils.LangSmithNotFoundError:
        hint = " (and no such file)" if src.name is not None else ""
        raise ValueError(
            f"{name}: there is no {src.label()} at {client.api_url}{hint}"
        ) from None
    except ls_utils.LangSmithError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name}: could not read the {src.label()} at {client.api_url}: "
                         f"{first}") from None
    if not found:
        where = f" in the splits {list(src.splits)}" if src.splits else ""
        raise ValueError(f"{name}: the {src.label()} has no examples{where}")
    return [(ex, _example_splits(ex)) for ex in found]


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    host = (urlparse(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


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
