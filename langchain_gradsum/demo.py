"""`make demo`: GRAD-SUM on a bundled task with the embedded local model.

The default task solves SVAMP arithmetic word problems with replies capped at 128
tokens, an app's reply budget, scored on the reply's final number. The start prompt
gets worked answers of about 170 tokens, most of them cut off before the number; the
search, on a small training pool with the local Qwen2.5-Coder-1.5B server, looks for a
prompt whose replies fit. It prints the initial and final validation scores next to
the best score a constant reply would get on the same rows, the winning prompt, the
calls spent and the output tokens per call. ``--task date`` (BIG-Bench Hard dates,
exact match on the option label), ``--task sarcasm`` (Arabic tweets, Yes/No) and
``--task gsm8k`` (math; its start prompt already does well) run the earlier demos.

    python -m langchain_gradsum.local_llm run -- python -m langchain_gradsum.demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from langchain_gradsum import GradSumOptimizer, exact_match, numeric_match
from langchain_gradsum.optimizer import OptimizationError, OptimizationResult


@dataclass(frozen=True)
class DemoTask:
    data: str
    start_prompt: str
    task: str
    evaluator: Callable[..., Any]
    max_tokens: int
    val: int = 16  # validation rows by default (after the 24 training rows)
    max_calls: int = 100  # default cap on LLM calls
    iterations: int = 4  # default number of iterations


DEMOS = {
    "date": DemoTask(
        "bbh_date_demo.jsonl", "{question}",
        "Answer date arithmetic questions with options (A)-(F). The reply is read by a "
        "program: it must be exactly the option label, e.g. (B).", exact_match, 64,
        # 64 tokens: the start prompt's worked answers are cut off there (the evaluator
        # says so), which costs less than letting them run to 140 tokens; the cap pays
        # for 3 x 24 validation calls (beam 2 + the start prompt) and about 3 iterations
        val=24, max_calls=170),
    "svamp": DemoTask(
        "svamp_demo.jsonl", "Answer the question: {question}",
        "Solve grade-school math word problems. Replies are capped at 128 tokens; the "
        "reply must end with the final number.", numeric_match, 128,
        # 128 tokens: an app's reply budget. The start prompt's worked answers run to
        # about 170 tokens (svamp benchmark), so most are cut off before the number. Two
        # iterations and the cap that pays for them keep it near 15 minutes here
        val=24, max_calls=130, iterations=2),
    "sarcasm": DemoTask(
        "ar_sarcasm_demo.jsonl", "Is this tweet sarcastic?\n\n{text}",
        "Decide whether an Arabic tweet is sarcastic. The reply is read by a program: it "
        "must be exactly Yes or No.", exact_match, 64),
    "gsm8k": DemoTask(
        "gsm8k_demo.jsonl", "Answer the question: {question}",
        "Solve grade-school math word problems. The reply must end with the final number.",
        numeric_match, 320),
}
START_PROMPT = DEMOS["gsm8k"].start_prompt
TASK = DEMOS["gsm8k"].task


def demo_rows(name: str = "gsm8k") -> list[dict[str, Any]]:
    """A bundled demo set (MIT; see langchain_gradsum/data/README.md)."""
    text = resources.files("langchain_gradsum").joinpath(f"data/{DEMOS[name].data}").read_text(
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

    demo = DEMOS[args.task]
    rows = demo_rows(args.task)
    train, val = rows[: args.train], rows[args.train : args.train + args.val]
    with _server() as base_url:
        task_model = local_chat_model(base_url, max_tokens=args.max_tokens or demo.max_tokens)
        optimizer_model = local_chat_model(base_url, max_tokens=350)
        optimizer = GradSumOptimizer(
            task_model,
            optimizer_model=optimizer_model,
            task_description=demo.task,
            evaluators=[demo.evaluator],
            beam_width=args.beam_width,
            candidates_per_prompt=args.candidates,
            max_iterations=args.iterations,
            minibatch_size=args.minibatch,
            max_gradients_per_prompt=args.max_gradients,
            max_llm_calls=args.max_calls,
            max_concurrency=server_slots(base_url),  # llama-server batches its slots
            seed=args.seed,
        )
        print(f"GRAD-SUM demo ({args.task}): {len(train)} training rows, {len(val)} "
              f"validation rows, beam {args.beam_width}, {args.candidates} candidates per "
              f"prompt, up to {args.iterations} iteration(s), minibatch {args.minibatch}, "
              f"at most {args.max_calls} LLM calls")
        print(f"start prompt: {demo.start_prompt!r}\n")
        if args.fresh and args.checkpoint.exists():
            args.checkpoint.unlink()
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        print(f"checkpoint: {args.checkpoint} (run again to resume; --fresh to start over)\n")
        try:
            return optimizer.optimize(demo.start_prompt, train, val, on_event=_print_event,
                                      checkpoint=args.checkpoint)
        except OptimizationError as e:
            partial = e.partial_result
            if partial is not None:
                print(f"\nthe run failed after {partial.total_calls} calls; best so far "
                      f"({partial.best_id}, minibatch {partial.best_score}):\n"
                      f"{partial.best_template}\nrun `make demo` again to resume.",
                      file=sys.stderr)
            raise


def constant_baseline(rows: list[dict[str, Any]]) -> tuple[str, float]:
    """The most frequent reference answer in `rows` and the share of rows it matches.

    A prompt that makes the model give one fixed reply scores exactly this on an
    exact-match task: a lift only counts as learning where it beats it.
    """
    answers = [str(r["outputs"]["answer"]) for r in rows]
    top = max(sorted(set(answers)), key=answers.count)
    return top, answers.count(top) / len(answers)


def report(result: OptimizationResult, out: Path, val: list[dict[str, Any]]) -> None:
    print("\n" + "=" * 72)
    print(f"validation score: initial {result.initial_score:.2f} -> final "
          f"{result.best_score:.2f}  ({result.split}, {result.best_id}, "
          f"stop: {result.stop_reason})")
    if (cmp := result.comparison) is not None:
        print(f"row by row: {cmp['won']} won, {cmp['lost']} lost of {cmp['rows']} "
              f"(sign test p = {cmp['p']:.2g})")
    top, share = constant_baseline(val)
    print(f"a constant reply ({top!r}) would score {share:.2f} on these rows")
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
    p.add_argument("--task", choices=sorted(DEMOS), default="svamp")
    p.add_argument("--train", type=int, default=24, help="training pool size")
    p.add_argument("--val", type=int, default=None,
                   help="validation rows (default: the task's, 24 for svamp and date, "
                        "else 16)")
    p.add_argument("--minibatch", type=int, default=4)
    p.add_argument("--beam-width", type=int, default=2)
    p.add_argument("--candidates", type=int, default=2, help="candidates per prompt")
    p.add_argument("--iterations", type=int, default=None,
                   help="iterations (default: the task's, 2 for svamp, else 4)")
    p.add_argument("--max-gradients", type=int, default=3)
    p.add_argument("--max-calls", type=int, default=None,
                   help="cap on LLM calls (default: the task's, 130 for svamp, 170 for "
                        "date, else 100)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="task model reply cap (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="SQLite checkpoint + call cache: an interrupted demo resumes "
                        "(default runs/demo/<task>.sqlite)")
    p.add_argument("--fresh", action="store_true", help="delete the checkpoint first")
    args = p.parse_args(argv)
    args.val = DEMOS[args.task].val if args.val is None else args.val
    args.max_calls = DEMOS[args.task].max_calls if args.max_calls is None else args.max_calls
    args.iterations = DEMOS[args.task].iterations if args.iterations is None else args.iterations
    args.checkpoint = args.checkpoint or Path(f"runs/demo/{args.task}.sqlite")
    if args.train + args.val > len(demo_rows(args.task)):
        p.error(f"--train + --val must be at most {len(demo_rows(args.task))}")
    start = time.monotonic()
    result = run(args)
    rows = demo_rows(args.task)
    report(result, args.out, rows[args.train : args.train + args.val])
    print(f"total demo time (with server start): {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
