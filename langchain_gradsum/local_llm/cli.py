"""``gradsum local ...``: build, assemble and serve the embedded local LLM.

``python -m langchain_gradsum.local_llm ...`` runs the same commands (:func:`run_cli`).
Every command exits 1 with one ``error: ...`` line on a :class:`LocalLLMError`, and a
SIGTERM stops it as Ctrl-C does (so ``serve`` and ``run`` stop their server on ``kill``).
The functions are looked up on the package when a command runs, so replacing
``local_llm.running_local_llm`` (say) replaces it for the commands too.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from langchain_gradsum import local_llm as ll
from langchain_gradsum.local_llm.build import _current_build
from langchain_gradsum.local_llm.parts import _stamp_is_valid

__all__ = ["app", "run_cli"]

PROG = "python -m langchain_gradsum.local_llm"

app = typer.Typer(
    name="local",
    help="Build, assemble and serve the embedded local LLM "
    "(Qwen2.5-Coder-1.5B on llama.cpp's llama-server).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_SLOTS_HELP = f"Parallel slots (default: ${ll.SLOTS_ENV}, else {ll.DEFAULT_SLOTS})."
Port = Annotated[int | None, typer.Option("--port", help="Port on 127.0.0.1 (default: a free "
                                          "one).", show_default=False)]
Slots = Annotated[int | None, typer.Option("--slots", help=_SLOTS_HELP, show_default=False)]


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _command(fn: Callable[..., int]) -> Callable[..., None]:
    """A command: its exit code, ``error: ...`` on a LocalLLMError, SIGTERM as Ctrl-C."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # clean up on `kill`
        try:
            code = fn(*args, **kwargs)
        except ll.LocalLLMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code:
            raise typer.Exit(code)

    return wrapper


@app.command()
@_command
def build(
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Compile jobs (default: "
                                             "CPUs).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a build is "
                                        "current.")] = False,
) -> int:
    """Build llama-server from the pinned source (reuses a finished build)."""
    print(ll.build_server(jobs=jobs, force=force))
    return 0


@app.command()
@_command
def assemble() -> int:
    """Assemble and verify the model; print its path."""
    started = time.monotonic()
    path = ll.assemble_model()
    print(f"[local_llm] model ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(path)
    return 0


@app.command()
@_command
def serve(port: Port = None, slots: Slots = None) -> int:
    """Run the server in the foreground until Ctrl-C."""
    server = ll.LocalLLMServer(ll.assemble_model(), port=port, slots=slots)
    try:
        started = time.monotonic()
        server.start().wait_ready()
        print(
            f"[local_llm] serving at {server.base_url} with {server.slots} slots (ready in "
            f"{time.monotonic() - started:.1f} s; log: {server.log_path})\n"
            f"export {ll.BASE_URL_ENV}={server.base_url}\nPress Ctrl-C to stop.",
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


@app.command(context_settings={"allow_interspersed_args": False})
@_command
def run(
    port: Port = None,
    slots: Slots = None,
    cmd: Annotated[list[str] | None, typer.Argument(help="-- CMD [ARGS...]", metavar="CMD",
                                                    show_default=False)] = None,
) -> int:
    """Run CMD with a server up and GRADSUM_LOCAL_BASE_URL exported; exit with its code."""
    command = list(cmd or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ll.LocalLLMError("`run` needs a command, e.g. `run -- python -m pytest`.")
    try:
        with ll.running_local_llm(port=port, slots=slots) as base_url:
            print(f"[local_llm] {ll.BASE_URL_ENV}={base_url}", file=sys.stderr, flush=True)
            return subprocess.call(command, env={**os.environ, ll.BASE_URL_ENV: base_url})
    except KeyboardInterrupt:
        return 130


def _binary_status() -> str:
    binary = ll.server_binary()
    if not binary.is_file():
        return f"{binary} (not built: run `build`)"
    if os.environ.get(ll.SERVER_BINARY_ENV, "").strip():
        return f"{binary} (from {ll.SERVER_BINARY_ENV})"
    stamp = _current_build(binary)
    if stamp is None:
        return f"{binary} (not a current build for this machine: run `build`)"
    source = stamp.get("sdist") or stamp.get("build_dir")
    return (
        f"{binary} (llama.cpp {stamp.get('version')} from llama-cpp-python "
        f"{stamp.get('llama_cpp_python')}, {source}; built {stamp.get('built_at')})"
    )


def _model_status() -> str:
    path = ll.default_model_path()
    if not path.is_file():
        return "not assembled"
    if _stamp_is_valid(path, ll.MODEL_SHA256):
        return "assembled, verified"
    return f"present ({path.stat().st_size} bytes), not verified: run `assemble`"


@app.command()
@_command
def status() -> int:
    """Show model, server binary and server status."""
    try:
        parts = f"all {len(ll.find_parts())} installed"
    except ll.LocalLLMError as exc:
        parts = str(exc)
    url = os.environ.get(ll.BASE_URL_ENV)
    answering = "answering" if url and ll.server_is_ready(url) else "not answering"
    server = f"{url} ({answering})" if url else "-"
    try:
        slots = str(ll.default_slots())
    except ll.LocalLLMError as exc:
        slots = str(exc)
    print(f"model file:       {ll.default_model_path()}\nmodel:            {_model_status()}\n"
          f"model parts:      {parts}")
    print(f"server binary:    {_binary_status()}\nslots:            {slots}")
    print(f"{ll.BASE_URL_ENV}: {server}")
    return 0


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Run the commands as ``python -m langchain_gradsum.local_llm``; return the exit code.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.
    """
    try:
        app(args=list(argv) if argv is not None else None, prog_name=PROG)
    except SystemExit as exc:  # typer ends every run with one (usage errors are printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
