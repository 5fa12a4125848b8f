"""Serving throughput of the embedded model: llama.cpp's llama-server vs llama-cpp-python's.

Both servers run the same GGUF (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) on loopback, one
after the other (never both at once: two llama.cpp servers on 2 cores thrash), and get
the same requests: a GSM8K question with "solve step by step" (``PROMPT``), temperature
0, ``max_tokens`` 150, sent as raw OpenAI chat-completion requests.

Per server:

1. start it and send one short warm-up request;
2. throughput: at each concurrency in ``--levels`` (1 2 4 8), ``--calls`` requests (16)
   with that many in flight; every level gets its own rows, so no level is helped by
   another's prompt cache. Reported: aggregate generated tokens/s (sum of
   ``completion_tokens`` / wall time), calls/min, mean and max latency;
3. batching vs determinism: ``--same`` rows (16) at concurrency 1, then the same rows
   at concurrency 4: how many replies are identical, how many end in the same number,
   and how many are correct (last number == GSM8K answer) in each pass. The second
   pass may reuse prompts cached by the first, as a real run would.

    .venv/bin/python benchmarks/serving.py --server both     # ~25 min on 2 idle cores
    .venv/bin/python benchmarks/serving.py --server new      # llama-server only, ~8 min
    .venv/bin/python benchmarks/serving.py --server new --levels 1 4 --calls 4 --same 4 \\
        --max-tokens 24 --out /tmp/serving-smoke.json             # a 1-minute smoke check

``new``: ``python -m langchain_gradsum.local_llm build`` must have run (``make
local-llm``); started through ``LocalLLMServer`` with ``--slots`` (4) parallel slots.
``old``: needs llama-cpp-python in this venv (``.venv/bin/pip install
'llama-cpp-python[server]==0.3.36'``: a ~6 minute source build); started as
``python -m llama_cpp.server`` with the flags of ../shared/LOCAL_LLM.md (n_ctx 4096,
2 threads, ``--interrupt_requests False``).

Writes ``benchmarks/results/serving-<date>.json`` (``--out``) and prints a Markdown table.
Run it on an idle machine: the load average is recorded at every step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from langchain_gradsum import local_llm

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "gsm8k" / "data.jsonl"
PACKAGE_DATA = HERE.parent / "langchain_gradsum" / "data" / "gsm8k_demo.jsonl"
PROMPT = "Solve the problem step by step, then give the final answer as a number.\n\n{question}"
OLD_INSTALL = ".venv/bin/pip install 'llama-cpp-python[server]==0.3.36'"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


# ------------------------------------------------------------------------ requests


def load_rows(path: Path | None, needed: int) -> tuple[list[dict[str, Any]], str]:
    """GSM8K rows (question, answer): ``path``, else the shared set, else the demo rows."""
    for candidate in [path] if path else [DEFAULT_DATA, PACKAGE_DATA]:
        if candidate.is_file():
            with candidate.open(encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            if len(rows) < needed:
                print(f"warning: {candidate} has {len(rows)} rows, {needed} wanted: rows are "
                      "reused, so the prompt cache helps some requests", file=sys.stderr)
                rows = [rows[i % len(rows)] for i in range(needed)]
            return rows[:needed], str(candidate)
    raise SystemExit(f"no GSM8K data: {path or DEFAULT_DATA} not found")


def chat(base_url: str, question: str, max_tokens: int, timeout: float = 900) -> dict[str, Any]:
    """One chat-completion request; the reply text, token counts and latency."""
    body = {
        "model": local_llm.MODEL_ALIAS,
        "messages": [{"role": "user", "content": PROMPT.format(question=question)}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    request = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    with opener.open(request, timeout=timeout) as response:
        reply = json.loads(response.read().decode("utf-8"))
    latency = time.monotonic() - started
    usage = reply.get("usage") or {}
    choice = reply["choices"][0]
    return {
        "text": choice["message"].get("content") or "",
        "finish_reason": choice.get("finish_reason"),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "latency_s": latency,
    }


def run_batch(
    base_url: str, questions: list[str], concurrency: int, max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """Send ``questions`` with ``concurrency`` requests in flight; replies in order, wall s."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(lambda q: chat(base_url, q, max_tokens), questions))
    return replies, time.monotonic() - started


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = numbers[-1].replace(",", "").rstrip(".")
    try:
        number = float(value)
    except ValueError:
        return None
    return str(int(number)) if number.is_integer() else str(number)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------- servers


def _check_machine_is_free() -> None:
    """Refuse to run beside another gradsum server: the figures would be meaningless."""
    try:
        info = json.loads(local_llm._registry_path().read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return
    raise SystemExit(
        f"another local LLM server is running ({info.get('base_url')}, started by pid "
        f"{info.get('pid')}): stop it first, two servers on one machine slow each other"
    )


def make_server(kind: str, model: Path, slots: int, threads: int) -> local_llm.LocalLLMServer:
    if kind == "new":
        return local_llm.LocalLLMServer(model, slots=slots, n_threads=threads)
    port = local_llm._free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model), "--model_alias", local_llm.MODEL_ALIAS,
        "--host", local_llm.LOOPBACK, "--port", str(port),
        "--n_ctx", str(local_llm.CTX_PER_SLOT),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--interrupt_requests", "False",
    ]  # fmt: skip
    return local_llm.LocalLLMServer(model, port=port, command=command)


def server_version(kind: str) -> str:
    if kind == "new" and local_llm.server_binary().is_file():
        return f"llama-server {local_llm._check_runs(local_llm.server_binary())}"
    import importlib.metadata

    try:
        return f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_available(kinds: list[str]) -> None:
    if "old" in kinds and importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(
            "--server old needs llama-cpp-python's server in this venv: "
            f"{OLD_INSTALL} (a source build, about 6 minutes on 2 cores)"
        )
    if "new" in kinds and not local_llm.server_binary().is_file():
        raise SystemExit(
            "--server new needs llama-server: run `make local-llm` "
            "(or `python -m langchain_gradsum.local_llm build`)"
        )


# ----------------------------------------------------------------------- benchmark


def level_summary(concurrency: int, replies: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    generated = sum(r["completion_tokens"] for r in replies)
    latencies = [r["latency_s"] for r in replies]
    return {
        "concurrency": concurrency,
        "calls": len(replies),
        "wall_s": round(wall, 2),
        "completion_tokens": generated,
        "prompt_tokens": sum(r["prompt_tokens"] for r in replies),
        "gen_tok_s": round(generated / wall, 2),
        "calls_per_min": round(60 * len(replies) / wall, 2),
        "mean_latency_s": round(sum(latencies) / len(latencies), 2),
        "max_latency_s": round(max(latencies), 2),
        "cut_at_max_tokens": sum(r["finish_reason"] == "length" for r in replies),
        "loadavg_after": loadavg(),
    }


def determinism(
    rows: list[dict[str, Any]], first: list[dict[str, Any]], second: list[dict[str, Any]]
) -> dict[str, Any]:
    answers = [str(row["outputs"]["answer"]).replace(",", "") for row in rows]
    differences = []
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if a["text"] != b["text"]:
            pairs = enumerate(zip(a["text"], b["text"], strict=False))
            at = next((j for j, (x, y) in pairs if x != y), min(len(a["text"]), len(b["text"])))
            differences.append({"row": i, "first_difference_at_char": at,
                                "chars": [len(a["text"]), len(b["text"])],
                                "final_numbers": [last_number(a["text"]),
                                                  last_number(b["text"])]})  # fmt: skip
    return {
        "rows": len(rows),
        "identical": len(rows) - len(differences),
        "same_final_number": sum(
            last_number(a["text"]) == last_number(b["text"])
            for a, b in zip(first, second, strict=True)
        ),
        "correct_at_1": sum(
            last_number(a["text"]) == ans for a, ans in zip(first, answers, strict=True)
        ),
        "correct_at_4": sum(
            last_number(b["text"]) == ans for b, ans in zip(second, answers, strict=True)
        ),
        "differences": differences,
    }


def measure(
    kind: str, base_url: str, args: argparse.Namespace, level_rows: list[list[dict[str, Any]]],
    same_rows: list[dict[str, Any]], warmup: dict[str, Any],
) -> dict[str, Any]:
    """The throughput levels, then the determinism passes, against a running server."""
    result: dict[str, Any] = {}
    chat(base_url, warmup["inputs"]["question"], 8)
    result["levels"] = []
    for concurrency, rows in zip(args.levels, level_rows, strict=True):
        questions = [row["inputs"]["question"] for row in rows]
        replies, wall = run_batch(base_url, questions, concurrency, args.max_tokens)
        summary = level_summary(concurrency, replies, wall)
        result["levels"].append(summary)
        print(f"[{kind}] concurrency {concurrency}: {summary['gen_tok_s']} gen tok/s, "
              f"{summary['calls_per_min']} calls/min ({wall:.0f} s)", file=sys.stderr)
    if args.same:
        questions = [row["inputs"]["question"] for row in same_rows]
        first, _ = run_batch(base_url, questions, 1, args.max_tokens)
        second, _ = run_batch(base_url, questions, 4, args.max_tokens)
        result["determinism"] = d = determinism(same_rows, first, second)
        print(f"[{kind}] concurrency 1 vs 4: {d['identical']}/{d['rows']} identical, "
              f"{d['same_final_number']} same final number", file=sys.stderr)
    return result


def bench_server(
    kind: str, args: argparse.Namespace, level_rows: list[list[dict[str, Any]]],
    same_rows: list[dict[str, Any]], warmup: dict[str, Any],
) -> dict[str, Any]:
    result: dict[str, Any] = {"version": server_version(kind), "loadavg_before": loadavg()}
    if args.base_url:  # a server someone else runs: measured as it is
        result.update(command=None, base_url=args.base_url)
        result.update(measure(kind, args.base_url, args, level_rows, same_rows, warmup))
        result["loadavg_after"] = loadavg()
        return result
    model = local_llm.assemble_model()
    server = make_server(kind, model, args.slots, args.threads)
    result["command"] = server.command()
    started = time.monotonic()
    with server:
        result["ready_s"] = round(time.monotonic() - started, 1)
        result["slots"] = server.slots if kind == "new" else 1
        print(f"[{kind}] ready in {result['ready_s']} s: {result['version']}", file=sys.stderr)
        result.update(measure(kind, server.base_url, args, level_rows, same_rows, warmup))
    result["loadavg_after"] = loadavg()
    return result


def comparison(servers: dict[str, Any]) -> dict[str, Any]:
    if not {"new", "old"} <= servers.keys():
        return {}
    rate = {kind: {lv["concurrency"]: lv["gen_tok_s"] for lv in s["levels"]}
            for kind, s in servers.items()}  # fmt: skip
    out: dict[str, Any] = {}
    if 4 in rate["new"] and 4 in rate["old"]:
        out["new_at_4_over_old_at_4"] = round(rate["new"][4] / rate["old"][4], 2)
    if 4 in rate["new"] and rate["old"]:
        out["new_at_4_over_old_best"] = round(rate["new"][4] / max(rate["old"].values()), 2)
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| server | in flight | calls | wall s | gen tok/s | calls/min | mean latency s "
             "| cut at cap |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, s in results["servers"].items():
        for lv in s["levels"]:
            lines.append(f"| {kind} | {lv['concurrency']} | {lv['calls']} | {lv['wall_s']} | "
                         f"{lv['gen_tok_s']} | {lv['calls_per_min']} | {lv['mean_latency_s']} | "
                         f"{lv['cut_at_max_tokens']} |")  # fmt: skip
    for kind, s in results["servers"].items():
        if d := s.get("determinism"):
            lines.append(f"\n{kind}: concurrency 1 vs 4 on the same {d['rows']} rows: "
                         f"{d['identical']} identical replies, {d['same_final_number']} with "
                         f"the same final number; correct {d['correct_at_1']} vs "
                         f"{d['correct_at_4']}")  # fmt: skip
    for key, value in results.get("comparison", {}).items():
        lines.append(f"{key}: {value}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", choices=["new", "old", "both"], default="both")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="requests in flight, one level after the other")
    p.add_argument("--calls", type=int, default=16, help="requests per level")
    p.add_argument("--same", type=int, default=16,
                   help="rows sent at concurrency 1 and again at 4 (0: skip)")
    p.add_argument("--max-tokens", type=int, default=150)
    p.add_argument("--slots", type=int, default=local_llm.DEFAULT_SLOTS,
                   help="llama-server parallel slots")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=None, help="GSM8K JSONL (default: shared set)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--base-url", default=None,
                   help="measure this running server (http://127.0.0.1:PORT/v1) as --server "
                        "new or old instead of starting one")
    args = p.parse_args(argv)
    if args.base_url and args.server == "both":
        p.error("--base-url measures one server: give --server new or --server old")

    kinds = ["new", "old"] if args.server == "both" else [args.server]
    if not args.base_url:
        check_available(kinds)
        _check_machine_is_free()
    needed = 1 + args.calls * len(args.levels) + args.same
    rows, source = load_rows(args.data, needed)
    warmup, rows = rows[0], rows[1:]
    level_rows = [rows[i * args.calls:(i + 1) * args.calls] for i in range(len(args.levels))]
    same_rows = rows[args.calls * len(args.levels):]
    if os.getloadavg()[0] > 0.7:
        print(f"warning: load average {loadavg()}: the machine is not idle, figures will be "
              "low", file=sys.stderr)
    now = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {
        "benchmark": "serving",
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": loadavg()},
        "settings": {"prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0,
                     "levels": args.levels, "calls_per_level": args.calls,
                     "same_rows": args.same, "slots": args.slots, "threads": args.threads,
                     "data": source, "model": local_llm.MODEL_FILENAME},
        "servers": {},
    }  # fmt: skip
    started = time.monotonic()
    for kind in kinds:
        results["servers"][kind] = bench_server(kind, args, level_rows, same_rows, warmup)
    results["comparison"] = comparison(results["servers"])
    results["wall_s"] = round(time.monotonic() - started, 1)

    suffix = "" if args.server == "both" else f"-{args.server}"
    out = args.out or HERE / "results" / f"serving-{now:%Y-%m-%d}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\n(wrote {out}; {results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
