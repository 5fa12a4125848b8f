"""`make demo`: GRAD-SUM on bundled GSM8K problems with the embedded local model.

Starts from the paper's prompt "Answer the question: {question}", optimizes it on
a small training pool with the local Qwen2.5-Coder-1.5B server, and prints the
initial and final validation scores, the winning prompt and the LLM calls spent.

    python -m langchain_gradsum.local_llm run -- python -m langchain_gradsum.demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from langchain_gradsum import GradSumOptimizer, numeric_match
from langchain_gradsum.optimizer import OptimizationError, OptimizationResult

START_PROMPT = "Answer the question: {question}"
TASK = "Solve grade-school math word problems. The reply must end with the final number."


def demo_rows() -> list[dict[str, Any]]:
    """The 40 bundled GSM8K problems (MIT; see langchain_gradsum/data/README.md)."""
    text = resources.files("langchain_gradsum").joinpath("data/gsm8k_demo.jsonl").read_text(
        encoding="utf-8"
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def _server() -> Iterator[str]:
    from langchain_gradsum.local_llm import BASE_URL_ENV, running_local_llm

    if os.environ.get(BASE_URL_ENV):
        yield os.environ[BASE_URL_ENV]
        return
    with running_local_llm() as base_url:
        yield base_url


def _print_event(event: dict[str, Any]) -> None:
    kind = event.get("event")
    calls = event.get("calls", 0)
    if kind == "iteration":
        print(f"[{calls:3d} calls] iteration {event['iteration']}: beam {event['beam']}")
    elif kind == "scored":
        print(f"[{calls:3d} calls]   {event['candidate']} minibatch score {event['score']:.2f}")
    elif kind == "candidate":
        print(f"[{calls:3d} calls]   new candidate {event['candidate']} from {event['parent']}")
    elif kind == "rejected":
        print(f"[{calls:3d} calls]   rejected an edit of {event['parent']}: {event['why']}")
    elif kind == "finalize":
        print(f"[{calls:3d} calls] stop ({event['stop_reason']}); validating "
              f"{event['finalists']} on {event['split']}")
    elif kind == "validated":
        print(f"[{calls:3d} calls]   {event['candidate']} {event['split']} score "
              f"{event['score']:.2f}")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> OptimizationResult:
    from langchain_gradsum.local_llm import local_chat_model, server_slots

    rows = demo_rows()
    train, val = rows[: args.train], rows[args.train : args.train + args.val]
    with _server() as base_url:
        task_model = local_chat_model(base_url, max_tokens=args.max_tokens)
        optimizer_model = local_chat_model(base_url, max_tokens=350)
        optimizer = GradSumOptimizer(
            task_model,
            optimizer_model=optimizer_model,
            task_description=TASK,
            evaluators=[numeric_match],
            beam_width=args.beam_width,
            candidates_per_prompt=args.candidates,
            max_iterations=args.iterations,
            minibatch_size=args.minibatch,
            max_gradients_per_prompt=args.max_gradients,
            max_concurrency=server_slots(base_url),  # llama-server batches its slots
            seed=args.seed,
        )
        print(f"GRAD-SUM demo: {len(train)} training rows, {len(val)} validation rows, "
              f"beam {args.beam_width}, {args.candidates} candidates per prompt, "
              f"{args.iterations} iteration(s), minibatch {args.minibatch}")
        print(f"start prompt: {START_PROMPT!r}\n")
        if args.fresh and args.checkpoint.exists():
            args.checkpoint.unlink()
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        print(f"checkpoint: {args.checkpoint} (run again to resume; --fresh to start over)\n")
        try:
            return optimizer.optimize(START_PROMPT, train, val, on_event=_print_event,
                                      checkpoint=args.checkpoint)
        except OptimizationError as e:
            partial = e.partial_result
            if partial is not None:
                print(f"\nthe run failed after {partial.total_calls} calls; best so far "
                      f"({partial.best_id}, minibatch {partial.best_score}):\n"
                      f"{partial.best_template}\nrun `make demo` again to resume.",
                      file=sys.stderr)
            raise


def report(result: OptimizationResult, out: Path) -> None:
    print("\n" + "=" * 72)
    print(f"validation score: initial {result.initial_score:.2f} -> final "
          f"{result.best_score:.2f}  ({result.split}, {result.best_id}, "
          f"stop: {result.stop_reason})")
    print("winning prompt:\n" + "-" * 72 + f"\n{result.best_template}\n" + "-" * 72)
    by_role = ", ".join(f"{r} {u['calls']}" for r, u in result.usage.items())
    print(f"LLM calls: {result.total_calls} ({by_role}); tokens: {result.total_tokens}")
    start, best = result.mean_output_tokens("c0"), result.mean_output_tokens()
    if start is not None and best is not None:
        print(f"output tokens per task call: initial {start:.0f} -> best {best:.0f}")
    if result.counters:
        print(f"events: {result.counters}")
    print(f"wall time: {result.wall_time_s:.0f} s")
    result.save(out / "result.json")
    try:
        from langchain_gradsum.report import write_report
    except ImportError:
        pass
    else:
        write_report(result, out / "report.html")
        print(f"report: {out / 'report.html'}")
    print(f"result: {out / 'result.json'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m langchain_gradsum.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=20, help="training pool size (max 30)")
    p.add_argument("--val", type=int, default=8, help="validation rows")
    p.add_argument("--minibatch", type=int, default=4)
    p.add_argument("--beam-width", type=int, default=2)
    p.add_argument("--candidates", type=int, default=2, help="candidates per prompt")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--max-gradients", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=320, help="task model reply cap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/checkpoint.sqlite"),
                   help="SQLite checkpoint + call cache: an interrupted demo resumes")
    p.add_argument("--fresh", action="store_true", help="delete the checkpoint first")
    args = p.parse_args(argv)
    if args.train + args.val > len(demo_rows()):
        p.error(f"--train + --val must be at most {len(demo_rows())}")
    start = time.monotonic()
    result = run(args)
    report(result, args.out)
    print(f"total demo time (with server start): {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
