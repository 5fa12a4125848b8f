"""llama.cpp's ``llama-server``: built from the llama.cpp tree vendored in the pinned
llama-cpp-python sdist (CPU, native, no curl/OpenSSL), installed into the cache dir, stamped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_gradsum.local_llm._base import (
    BUILD_DIR_ENV,
    BUILD_HINT,
    BUILD_RECIPE,
    CMAKE_ARGS,
    LLAMA_CPP_PYTHON_VERSION,
    SDIST_SHA256,
    SERVER_BINARY_ENV,
    LocalLLMError,
    _file_lock,
    _remove_quietly,
    _sha256_of,
    _tail,
    cache_dir,
)

__all__ = ["build_server", "read_build_stamp", "server_binary"]


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
            binary_dir, source_info = _configured_dir(cmake, reuse, work, jobs, log)
            compile_ = [cmake, "--build", str(binary_dir), "-j", str(jobs),
                        "--target", "llama-server"]  # fmt: skip
            _run_step("compile", compile_, log, BUILD_HINT)
            seconds = time.monotonic() - started
            _install_binary(binary_dir / "bin" / "llama-server", dest)
            version = _check_runs(dest)
        finally:
            log.close()
        _write_build_stamp(dest, version, seconds, source_info, configured=reuse is None)
        if reuse is None:
            shutil.rmtree(work, ignore_errors=True)  # sources and objects; the binary is all
        print(
            f"[local_llm] llama-server {version} installed in {dest} ({seconds:.0f} s)",
            file=sys.stderr,
        )
        return dest


def _write_build_stamp(
    dest: Path, version: str, seconds: float, source_info: dict[str, Any], *, configured: bool
) -> None:
    stamp = {
        **_expected_stamp(),
        "binary_sha256": _sha256_of(dest),
        "version": version,
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cmake_args": list(CMAKE_ARGS) if configured else None,
        **source_info,
    }
    _build_stamp_path(dest).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")


def _configured_dir(
    cmake: str, reuse: Path | None, work: Path, jobs: int, log: _BuildLog
) -> tuple[Path, dict[str, Any]]:
    """The cmake build dir to compile in, and where its source came from (for the stamp):
    ``reuse`` as it is (checked), else the pinned sdist's ``vendor/llama.cpp`` unpacked
    and configured in ``work``."""
    if reuse is not None:
        source_info = _check_existing_build_dir(reuse)
        print(f"[local_llm] reusing the llama-server build in {reuse}", file=sys.stderr)
        return reuse, source_info
    sdist = _obtain_sdist(work, log)
    source = _unpack_llama_cpp(sdist, work)
    binary_dir = work / "cmake-build"
    print(
        f"[local_llm] building llama-server from {sdist.name}'s vendor/llama.cpp "
        f"with {jobs} jobs (about 10 CPU-minutes); log: {log.path}",
        file=sys.stderr,
    )
    configure = [cmake, "-S", str(source), "-B", str(binary_dir), *CMAKE_ARGS]
    _run_step("configure", configure, log, BUILD_HINT)
    return binary_dir, {"sdist": sdist.name, "sdist_sha256": SDIST_SHA256}
