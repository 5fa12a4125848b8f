"""Stopping a run: a stop file, and Ctrl-C while the graph streams in a worker thread."""

from __future__ import annotations

import contextlib
import contextvars
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["graceful_sigint", "stop_signal"]


def stop_signal(event: threading.Event, stop_file: str | Path | None) -> Callable[[], str | None]:
    def should_stop() -> str | None:
        if event.is_set():
            return "interrupted"
        if stop_file is not None and Path(stop_file).exists():
            return "stop_file"
        return None

    return should_stop


Stream = Callable[[], Iterable[Any]]


@contextlib.contextmanager
def graceful_sigint(event: threading.Event) -> Iterator[Callable[[Stream], Iterator[Any]]]:
    """First Ctrl-C: ask the run to stop at the next safe point. Second: stop now.

    Yields a wrapper for the graph's stream. In the main thread the stream runs in
    a worker thread while the main thread polls for its chunks: Python runs signal
    handlers only in the main thread, and only when it runs, so a main thread
    blocked inside LangGraph for a whole step (minutes on a slow model) would not
    see Ctrl-C until the step ends. A hard stop returns everything finished so
    far; calls still in flight then finish in the background (counted by the run's
    ledger, which `optimize` closes, so that no further call starts).
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda stream: iter(stream())
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield _in_worker_thread
    finally:
        signal.signal(signal.SIGINT, previous)


_DONE = object()


def _in_worker_thread(stream: Stream) -> Iterator[Any]:
    """Iterate `stream()` in a daemon thread (same contextvars), handing items over.

    When the consumer stops early (a hard Ctrl-C), the stream is closed at its next
    item, so no new graph step (and no new LLM call) starts behind the caller's back.
    """
    items: queue.Queue[Any] = queue.Queue()
    abandoned = threading.Event()

    def produce() -> None:
        it: Any = None
        try:
            it = iter(stream())
            for item in it:
                if abandoned.is_set():
                    break
                items.put(item)
        except BaseException as e:  # re-raised in the consumer
            items.put(_Failed(e))
        finally:
            if close := getattr(it, "close", None):
                with contextlib.suppress(Exception):
                    close()
            items.put(_DONE)

    worker = threading.Thread(target=contextvars.copy_context().run, args=(produce,),
                              name="gradsum-graph", daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=0.1)  # wakes the main thread for signal handlers
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        abandoned.set()


@dataclass
class _Failed:
    error: BaseException
