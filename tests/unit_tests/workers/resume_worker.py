"""Runs a small optimization in its own process, for the kill-and-resume tests.

    python resume_worker.py CHECKPOINT CALL_LOG RESULT_JSON [KILL_AT]

The scripted model appends each call's prompt to CALL_LOG (flushed and fsynced)
when the call completes. With KILL_AT=n, the process SIGKILLs itself when call
n+1 starts, i.e. after exactly n completed calls.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.testing import ScriptedChatModel


def logged_script(log_path: Path, kill_at: int | None) -> Callable[[str, str], Any]:
    """The scripted model's responder: logs each completed call to `log_path` (flushed
    and fsynced) and SIGKILLs the process when call ``kill_at + 1`` starts. Shared with
    tests/postgres_tests/pg_worker.py."""
    done = [0]

    def respond(text: str, role: str) -> Any:
        if kill_at is not None and done[0] >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        reply: Any
        if role == "generate":
            reply = "so 4" if "step" in text else "5"
        elif role == "judge":
            reply = {"reasoning": "checked", "score": 1.0 if "so 4" in text else 0.0}
        elif role == "gradient":
            reply = "Ask the model to work step by step."
        elif role == "summarize":
            reply = "Ask for step-by-step work."
        else:
            n = text.count("version 2")  # two variants: two different prompts
            reply = f"<prompt>Work step by step ({n}). {{question}}</prompt>"
        with log_path.open("a") as f:
            f.write(json.dumps([role, text]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done[0] += 1
        return reply

    return respond


def main() -> None:
    checkpoint, log_path, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    respond = logged_script(log_path, kill_at)

    rows = [{"inputs": {"question": f"2+2, case {i}"}, "outputs": {"answer": "4"}}
            for i in range(6)]
    optimizer = GradSumOptimizer(
        ScriptedChatModel(respond=respond), criteria="the final number is right",
        evaluators=[numeric_match], beam_width=2, candidates_per_prompt=2,
        max_iterations=2, minibatch_size=3, max_concurrency=1, retry_backoff=0,
    )
    result = optimizer.optimize("Q: {question}", rows, rows[:3], checkpoint=checkpoint)
    data = result.to_dict()
    data.pop("wall_time_s")
    Path(out).write_text(json.dumps(data, sort_keys=True))


if __name__ == "__main__":
    main()
