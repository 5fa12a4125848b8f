"""``gradsum``: optimize a prompt from the command line and see the run.

    gradsum optimize "Answer: {question}" --data train.jsonl --val val.jsonl \\
        --task "grade-school math" --evaluator numeric_match --model local --out run/
    gradsum report run/result.json -o report.html
    gradsum local run -- CMD ...     # the embedded local model (see `gradsum local --help`)

Exit codes: 0 done, 1 the run failed (what finished is still written), 2 bad
input (one ``error: ...`` line, no traceback), 130 interrupted (the result so
far is written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from langchain_gradsum._knobs import MODEL_ROLES, Knob, knobs
from langchain_gradsum.local_llm.cli import app as local_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="gradsum",
    help="GRAD-SUM prompt optimization (arXiv 2407.12865): optimize a prompt template on a "
    "dataset, then see the run as a self-contained HTML report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# `gradsum local build|assemble|serve|run|status`: the embedded local model.
app.add_typer(local_app, name="local")


class EvaluatorName(str, Enum):
    numeric_match = "numeric_match"
    exact_match = "exact_match"
    contains_answer = "contains_answer"
    choice_match = "choice_match"


class InputError(ValueError):
    """Bad input found by the CLI itself."""


# --- helpers -------------------------------------------------------------------------


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print one ``error:`` line to stderr (secrets redacted) and return the exit to raise."""
    from langchain_gradsum._llm import redact

    message = redact(" ".join(str(message).split())) or "unknown error"
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"error: {message}", markup=False
    )
    return typer.Exit(code)


def _text_arg(value: str | None, what: str) -> str | None:
    """A string, or ``@FILE`` for the contents of FILE (``@-`` reads stdin)."""
    if value is None or not value.startswith("@"):
        return value
    name = value[1:]
    if name == "-":
        return sys.stdin.read()
    path = Path(name)
    if not path.is_file():
        raise InputError(f"{what}: no such file {name!r} (a leading @ reads the text from a file)")
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what}: cannot read {name!r}: {e}") from None


def _evaluators(names: list[EvaluatorName]) -> list[Any]:
    from langchain_gradsum import evaluators as ev

    out: list[Any] = []
    for name in names:
        fn = getattr(ev, EvaluatorName(name).value)
        if fn not in out:
            out.append(fn)
    return out


def _prompt_variables(template: str) -> list[str]:
    """The prompt's {variables}; a broken or variable-less template is an input error
    found here, before a local server is started for nothing."""
    from langchain_core.prompts import PromptTemplate

    try:
        variables = list(PromptTemplate.from_template(template).input_variables)
    except Exception as e:
        raise InputError(
            f"the prompt is not a valid template ({e}); write literal braces as {{{{ and }}}}"
        ) from None
    if not variables:
        raise InputError(
            "the prompt has no {variables}: without one, no example can be filled in. "
            "Add a placeholder such as {question}"
        )
    return variables


def _open_models(specs: dict[str, str | None], stack: contextlib.ExitStack) -> dict[str, Any]:
    """Model objects or strings for GradSumOptimizer; ``local`` starts the embedded
    server once (or reuses ``$GRADSUM_LOCAL_BASE_URL``) for every role that asks."""
    resolved: dict[str, Any] = {}
    local: Any = None
    for role, spec in specs.items():
        if spec is None:
            resolved[role] = None
        elif spec.strip().lower() == "local":
            if local is None:
                from langchain_gradsum import local_llm

                base_url = stack.enter_context(local_llm.running_local_llm())
                local = local_llm.local_chat_model(base_url)
            resolved[role] = local
        else:
            resolved[role] = spec
    return resolved


def _tracing_enabled() -> bool:
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING_V2",
                 "LANGCHAIN_TRACING"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _flush_traces() -> None:
    with contextlib.suppress(Exception):
        from langchain_core.tracers.langchain import wait_for_all_tracers

        wait_for_all_tracers()


def _meta_prompts(path: Path) -> Any:
    """`MetaPrompts` from a JSON object of the fields to override."""
    from langchain_gradsum.prompts import MetaPrompts

    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--meta-prompts: cannot read {str(path)!r}: {e}") from None
    if not isinstance(fields, dict):
        raise InputError("--meta-prompts: the file must hold a JSON object")
    if isinstance(fields.get("edit_variants"), list):
        fields["edit_variants"] = tuple(fields["edit_variants"])
    try:
        return MetaPrompts(**fields)
    except TypeError as e:
        raise InputError(f"--meta-prompts: {e}") from None


# --- one option per knob -------------------------------------------------------------

_BY_HAND = {"model": "--model", "judge_model": "--judge-model",
            "optimizer_model": "--optimizer-model", "task_description": "--task",
            "criteria": "--criteria", "evaluators": "--evaluator",
            "meta_prompts": "--meta-prompts"}
"""Knobs whose option `optimize` declares itself (model specs, @FILE texts, names)."""
_FLAG_ALIASES = {"repair_missing_variables": "--no-repair",
                 "reject_copied_examples": "--allow-copied-examples",
                 "retry_unusable_edits": "--no-edit-retry",
                 "prefer_short_outputs": "--no-prefer-short"}
"""Earlier names of some knobs' off-switches, still accepted."""


def knob_option(name: str) -> str:
    """The ``gradsum optimize`` option of a `GradSumContext` knob."""
    return _BY_HAND.get(name) or "--" + name.replace("_", "-")


def _help(name: str, more: str = "") -> str:
    """A knob's description as option help: `other_knob` reads as its option."""
    text = knobs()[name].description + more
    return re.sub(r"`(\w+)`", lambda m: knob_option(m.group(1)) if m.group(1) in knobs()
                  else m.group(0), text)


def _knob_parameter(knob: Knob) -> inspect.Parameter:
    """The typer parameter of one knob: ``--beam-width N``, ``--summarize/--no-summarize``.

    Its default is ``None`` (not given: the optimizer's default applies); the help shows
    the context's default."""
    flag = knob_option(knob.name)
    shown: str | bool = False if knob.default is None else knob.shown_default().strip("`")
    if knob.kind is bool:
        decls = [f"{flag}/--no-{flag[2:]}"]
        if knob.name in _FLAG_ALIASES:
            decls.append(f" /{_FLAG_ALIASES[knob.name]}")
        shown = flag if knob.default else f"--no-{flag[2:]}"
        option = typer.Option(*decls, help=_help(knob.name), show_default=shown)
    elif knob.kind in (int, float, str):
        option = typer.Option(flag, help=_help(knob.name), show_default=shown)
    else:
        raise TypeError(f"knob {knob.name!r} has no command-line form: declare its option in "
                        "cli.optimize and list it in cli._BY_HAND")
    return inspect.Parameter(knob.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                             annotation=Annotated[knob.kind | None, option])


def _with_knob_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with one option per knob of `GradSumContext` (but those in `_BY_HAND`),
    in place of its ``knobs`` parameter; the values given reach it as ``knobs={name: value}``."""
    derived = [_knob_parameter(k) for k in knobs().values() if k.name not in _BY_HAND]
    names = [p.name for p in derived]
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = [p.name for p in params].index("knobs")
    params[at:at + 1] = derived

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        given = {n: v for n in names if (v := kwargs.pop(n)) is not None}
        command(**kwargs, knobs=given)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # type: ignore[attr-defined]
    return wrapper


# --- live progress -------------------------------------------------------------------


class ProgressView:
    """Turns the optimizer's events into a live status line (terminal) or log lines."""

    def __init__(self, console: Console, *, max_iterations: int, budget: int | None,
                 live: bool | None = None, quiet: bool = False) -> None:
        self.console = console
        self.max_iterations = max_iterations
        self.budget = budget
        self.live = console.is_terminal if live is None else live
        self.quiet = quiet
        self.iteration = 0
        self.scored = 0
        self.written = 0
        self.best: tuple[float, str] | None = None
        self.calls = 0
        self.phase = "starting"
        self._progress: Progress | None = None
        self._task: Any = None

    # context manager: the live display runs while the optimizer does
    def __enter__(self) -> ProgressView:
        if self.live and not self.quiet:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "gradsum", total=self.max_iterations + 1, phase=self.phase, status=self._status()
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None

    def finish(self, total_calls: int) -> None:
        """The run is over: show the exact call count (events may lag behind it)."""
        self.calls = total_calls
        self.phase = "done"
        self._refresh()

    def _calls_text(self) -> str:
        return f"calls {self.calls}" + (f"/{self.budget}" if self.budget else "")

    def _best_text(self) -> str:
        return f"best {self.best[0]:.3f} ({self.best[1]})" if self.best else "best –"

    def _status(self) -> str:
        return (f"iteration {self.iteration}/{self.max_iterations} · scored {self.scored} · "
                f"{self._best_text()} · {self._calls_text()}")

    def _refresh(self) -> None:
        if self._progress is not None:
            done = self.max_iterations + 1 if self.phase == "done" else min(
                self.iteration, self.max_iterations) + (1 if self.phase == "final" else 0)
            self._progress.update(self._task, completed=done, phase=self.phase,
                                  status=self._status())

    def _log(self, line: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        elif not self.live:
            self.console.print(f"[gradsum] {line}", markup=False, highlight=False,
                               soft_wrap=True)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if isinstance(event.get("calls"), int):
            self.calls = max(self.calls, event["calls"])
        if kind == "iteration":
            self.iteration = int(event.get("iteration", self.iteration))
            self.phase = "iteration"
            beam = ", ".join(event.get("beam") or [])
            self._log(f"iteration {self.iteration}/{self.max_iterations} · beam {beam} · "
                      f"{self._calls_text()}")
        elif kind == "scored":
            self.scored += 1
            score = float(event.get("score", 0.0))
            cid = str(event.get("candidate"))
            new_best = self.best is None or score > self.best[0]
            if new_best:
                self.best = (score, cid)
            if not self.live:
                self._log(f"  {cid} scored {score:.3f} (minibatch, iteration "
                          f"{event.get('iteration')})" + (" · new best" if new_best else ""))
        elif kind == "candidate":
            self.written += 1
            if not self.live:
                self._log(f"  {event.get('candidate')} written from {event.get('parent')}")
        elif kind == "rejected":
            self._log(f"  rejected an edit of {event.get('parent')}: {event.get('why')}")
        elif kind == "finalize":
            self.phase = "final"
            finalists = ", ".join(event.get("finalists") or [])
            reason = event.get("stop_reason") or "done"
            self._log(f"stopped ({reason}); scoring {finalists} on {event.get('split')}")
        elif kind == "validated":
            self._log(f"  {event.get('candidate')} scored {float(event.get('score', 0.0)):.3f} "
                      f"on {event.get('split')}")
        elif kind == "best":
            self.phase = "done"
            best = event.get("score")
            shown = f"{best:.3f}" if isinstance(best, int | float) else "–"
            self._log(f"best {event.get('candidate')}: {shown}")
        self._refresh()


# --- commands ------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        from langchain_gradsum import __version__

        typer.echo(f"gradsum {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """GRAD-SUM prompt optimization from the command line."""


# The options of `optimize` that are not derived from a knob (see `_with_knob_options`).
_Data = Annotated[Path, typer.Option(
    "--data", "-d", help="Training rows: JSONL, one {\"inputs\": {...}, \"outputs\": "
    "{...}} per line; or the name or id of a LangSmith dataset (its train split, and "
    "its validation split as --val, when it has them).", show_default=False,
    dir_okay=False, metavar="FILE")]
_Prompt = Annotated[str | None, typer.Argument(
    help="The prompt template to optimize, with {variables} named like the data's inputs; "
    "or @FILE to read it from a file (@- reads stdin). Left out with --app.",
    show_default=False, metavar="PROMPT")]
_Model = Annotated[str | None, typer.Option(
    "--model", "-m", help="Task model: 'provider:model' (e.g. openai:gpt-4o-mini) or "
    "'local' for the embedded Qwen2.5-Coder-1.5B server (started for the run, or "
    "$GRADSUM_LOCAL_BASE_URL). With --app: optional, the judge and optimizer model "
    "(default: the app's own).", show_default=False, metavar="MODEL")]
_App = Annotated[str | None, typer.Option(
    "--app", help="Optimize the prompt inside a LangChain app (a Runnable such as "
    "prompt | model | parser), loaded as module:attribute from an importable module; "
    "each candidate runs as the whole app.", show_default=False,
    metavar="MODULE:ATTR")]
_Target = Annotated[str | None, typer.Option(
    "--target", help="With --app: the name of the prompt to optimize, when the app "
    "holds several.", show_default=False, metavar="NAME")]
_InputKey = Annotated[str | None, typer.Option(
    "--input-key", help="With --app: invoke the app with this input of each row "
    "(e.g. question) instead of the row's inputs dict.", show_default=False,
    metavar="KEY")]
_Val = Annotated[Path | None, typer.Option(
    "--val", help="Validation rows (JSONL, or a LangSmith dataset) to pick the final "
    "prompt on; default: the training rows.", dir_okay=False, metavar="FILE")]
_Task = Annotated[str, typer.Option(
    "--task", "-t", help=_help("task_description", " Or @FILE."),
    metavar="TEXT")]
_Criteria = Annotated[str | None, typer.Option(
    "--criteria", "-c", help="Criteria for the LLM judge, scored 0..1 (or @FILE). Give "
    "--criteria, --evaluator, or both (scores are averaged).", metavar="TEXT")]
_Evaluator = Annotated[list[EvaluatorName] | None, typer.Option(
    "--evaluator", "-e", help="Built-in programmatic evaluator: numeric_match, exact_match, "
    "contains_answer or choice_match; repeat for several.",
    case_sensitive=False, metavar="NAME")]
_JudgeModel = Annotated[str | None, typer.Option(
    "--judge-model", help=_help("judge_model"),
    metavar="MODEL")]
_OptimizerModel = Annotated[str | None, typer.Option(
    "--optimizer-model", help=_help("optimizer_model"),
    metavar="MODEL")]
_MetaPrompts = Annotated[Path | None, typer.Option(
    "--meta-prompts", help="A JSON object overriding any of the meta-prompts (keys: "
    "judge, gradient, summarize, edit, edit_instruction, edit_variants, edit_retry).",
    dir_okay=False, show_default=False, metavar="FILE")]
_Out = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Directory to write result.json and report.html into.",
    file_okay=False, show_default=False, metavar="DIR")]
_Checkpoint = Annotated[str | None, typer.Option(
    "--checkpoint", help="Persist the run in this SQLite file (or a postgresql:// "
    "database); run the same command again to resume after a crash (finished calls "
    "are not repeated) or to get a finished run's result.", show_default=False,
    metavar="FILE|URL")]
_Cache = Annotated[str | None, typer.Option(
    "--cache", help="Answer identical LLM calls from this SQLite file or postgresql:// "
    "database (default with --checkpoint: the checkpoint's).", show_default=False,
    metavar="FILE|URL")]
_StopFile = Annotated[Path | None, typer.Option(
    "--stop-file", help="If this file appears, stop at the next safe point and keep "
    "the best prompt so far (like Ctrl-C).", dir_okay=False, show_default=False,
    metavar="FILE")]
_Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress output; only the summary.")]


@app.command()
@_with_knob_options
def optimize(
    data: _Data,
    prompt: _Prompt = None,
    model: _Model = None,
    app_spec: _App = None,
    target: _Target = None,
    input_key: _InputKey = None,
    val: _Val = None,
    task: _Task = "",
    criteria: _Criteria = None,
    evaluator: _Evaluator = None,
    judge_model: _JudgeModel = None,
    optimizer_model: _OptimizerModel = None,
    meta_prompts: _MetaPrompts = None,
    knobs: dict[str, Any] | None = None,  # the other knobs' options, in this place
    out: _Out = None,
    checkpoint: _Checkpoint = None,
    cache: _Cache = None,
    stop_file: _StopFile = None,
    quiet: _Quiet = False,
) -> None:
    """Optimize PROMPT on --data; write result.json and report.html with --out.

    Progress shows live on a terminal and as plain log lines otherwise. Set
    LANGSMITH_TRACING=true (and LANGSMITH_API_KEY) to trace the run to LangSmith:
    one "GradSum" trace, a run per graph node and per LLM call.

    Example:

    \b
      gradsum optimize "Solve: {question}" --data train.jsonl --val val.jsonl \\
          --task "grade-school math word problems" --evaluator numeric_match \\
          --model local --max-iterations 3 --max-llm-calls 400 --out run/
    """
    console = Console(highlight=False, soft_wrap=True)
    try:
        run = _read_run(data, prompt, app_spec=app_spec, model=model, target=target,
                        input_key=input_key, val=val, task=task, criteria=criteria,
                        evaluator=evaluator, meta_prompts=meta_prompts, knobs=knobs)
    except (ValueError, TypeError) as e:
        raise _fail(str(e)) from None
    specs = {"model": model, "judge_model": judge_model, "optimizer_model": optimizer_model}
    result, failure, optimizer = _run_optimizer(
        console, run, specs, quiet=quiet, checkpoint=checkpoint, cache=cache,
        stop_file=stop_file)
    if _tracing_enabled():
        _flush_traces()
    written: list[Path] = []
    if result is not None and out is not None:
        try:
            written = _write_outputs(result, _run_info(run, specs, optimizer), out)
        except OSError as e:
            raise _fail(f"cannot write to {str(out)!r}: {e}", 1) from None
    if result is not None:
        _print_summary(console, result, written)
    if isinstance(failure, KeyboardInterrupt):
        raise _fail("interrupted", 130)
    if failure is not None:
        raise _fail(str(failure), 1)
    if result is not None and result.stop_reason == "interrupted":
        raise typer.Exit(130)


@dataclasses.dataclass
class _CliRun:
    """What ``gradsum optimize`` was asked to do, read and checked."""

    data: Path
    val: Path | None
    template: Any
    """The prompt text, or the app of ``--app``."""
    train_rows: list[Any]
    val_rows: list[Any] | None
    knobs: dict[str, Any]
    app_spec: str | None
    app_args: dict[str, Any]
    """``target`` and ``input_key`` with ``--app``."""
    model: str | None


def _read_run(data: Path, prompt: str | None, *, app_spec: str | None, model: str | None,
              target: str | None, input_key: str | None, val: Path | None, task: str,
              criteria: str | None, evaluator: list[EvaluatorName] | None,
              meta_prompts: Path | None, knobs: dict[str, Any] | None) -> _CliRun:
    """The prompt (or app), data and knobs, checked now (before a local server starts)."""
    loaded = _app_arg(app_spec, prompt, model, target, input_key)  # None without --app
    template = _text_arg(prompt, "prompt")
    task_text = _text_arg(task, "--task") or ""
    criteria_text = _text_arg(criteria, "--criteria")
    if loaded is None and (not template or not template.strip()):
        raise InputError("the prompt is empty")
    from langchain_gradsum.data import check_variables, load_splits

    train_rows, val_split = load_splits(str(data), str(val) if val is not None else None,
                                        names=("--data", "--val"))
    val_rows = val_split or None
    if loaded is None:  # an app's prompt is checked by the optimizer (_check_settings)
        variables = _prompt_variables(template)  # type: ignore[arg-type]
        check_variables(train_rows, variables, "--data")
        if val_rows:
            check_variables(val_rows, variables, "--val")
    knobs = {**(knobs or {}), "task_description": task_text,
             "criteria": criteria_text or None,
             "evaluators": _evaluators(list(evaluator or []))}
    if meta_prompts is not None:
        knobs["meta_prompts"] = _meta_prompts(meta_prompts)
    app_args: dict[str, Any] = (
        {"target": target, "input_key": input_key} if loaded is not None else {})
    _check_settings(knobs, loaded or template, train_rows, val_rows, **app_args)
    return _CliRun(data=data, val=val, template=loaded or template, train_rows=train_rows,
                   val_rows=val_rows, knobs=knobs, app_spec=app_spec, app_args=app_args,
                   model=model)


def _run_optimizer(console: Console, run: _CliRun, specs: dict[str, str | None], *,
                   quiet: bool, checkpoint: str | None, cache: str | None,
                   stop_file: Path | None) -> tuple[Any, BaseException | None, Any]:
    """Run the optimizer with live progress: (result or None, failure or None, optimizer).

    The local server of ``--model local`` runs for the length of the run."""
    from langchain_gradsum.optimizer import GradSumOptimizer, OptimizationError

    result = None
    failure: BaseException | None = None
    with contextlib.ExitStack() as stack:
        try:
            models = _open_models(specs, stack)
            optimizer = GradSumOptimizer(models["model"], judge_model=models["judge_model"],
                                         optimizer_model=models["optimizer_model"], **run.knobs)
        except (ValueError, TypeError) as e:
            raise _fail(str(e)) from None
        except Exception as e:  # the local server could not start, etc.
            raise _fail(f"{type(e).__name__}: {e}", 1) from None
        if not quiet:
            _print_header(console, run)
        settings = optimizer.settings
        view = ProgressView(console, max_iterations=settings["max_iterations"],
                            budget=settings["max_llm_calls"], quiet=quiet)
        try:
            with view:
                result = optimizer.optimize(run.template, run.train_rows, run.val_rows,
                                            on_event=view, checkpoint=checkpoint, cache=cache,
                                            stop_file=stop_file, **run.app_args)
                view.finish(result.total_calls)
        except (ValueError, TypeError) as e:
            raise _fail(str(e)) from None
        except OptimizationError as e:
            failure = e
            result = e.partial_result
        except KeyboardInterrupt as e:  # a second Ctrl-C, or one outside the graph
            failure = e
    return result, failure, optimizer


def _print_header(console: Console, run: _CliRun) -> None:
    console.print(
        f"gradsum: {len(run.train_rows)} training rows"
        + (f", {len(run.val_rows)} validation rows" if run.val_rows else "")
        + (f" · app {run.app_spec}" if run.app_spec else "")
        + (f" · model {run.model}" if run.model else "")
        + (" · tracing to LangSmith" if _tracing_enabled() else ""),
        markup=False,
    )


def _run_info(run: _CliRun, specs: dict[str, str | None], optimizer: Any) -> dict[str, Any]:
    """The ``run`` entry of result.json: the command, its models, settings and data."""
    return {
        "command": "gradsum optimize",
        "models": {k: v for k, v in specs.items() if v is not None},
        **({"app": run.app_spec, **run.app_args} if run.app_spec else {}),
        "settings": {k: v for k, v in optimizer.describe_settings().items()
                     if k not in (*MODEL_ROLES, "meta_prompts")},
        "data": {"train": str(run.data), **({"val": str(run.val)} if run.val is not None else {})},
        "examples": {"train": run.train_rows, **({"val": run.val_rows} if run.val_rows else {})},
    }


def _check_settings(knobs: dict[str, Any], template: Any, train_rows: list[Any],
                    val_rows: list[Any] | None, **app_args: Any) -> None:
    """Validate knobs, prompt (or app) and data now (before a local server starts), with
    a stand-in model that is never called."""
    from langchain_gradsum.optimizer import GradSumOptimizer
    from langchain_gradsum.testing import ScriptedChatModel

    def never(text: str, role: str) -> str:  # pragma: no cover - never called
        raise AssertionError("the settings check makes no calls")

    GradSumOptimizer(ScriptedChatModel(respond=never), **knobs).validate(
        template, train_rows, val_rows or None, **app_args)


def _app_arg(spec: str | None, prompt: str | None, model: str | None, target: str | None,
             input_key: str | None) -> Any:
    """The app of ``--app module:attribute`` (`None` without it); what cannot go
    together is an input error."""
    if spec is None:
        if prompt is None:
            raise InputError("give the PROMPT to optimize (or --app module:attribute)")
        if model is None:
            raise InputError("--model is required: the task model that runs the prompt")
        if target is not None or input_key is not None:
            raise InputError("--target and --input-key go with --app")
        return None
    if prompt is not None:
        raise InputError("give PROMPT or --app, not both (--target names a prompt in the app)")
    from langchain_gradsum.apps import load_app

    return load_app(spec)


def _write_outputs(result: Any, run_info: dict[str, Any], out: Path) -> list[Path]:
    from langchain_gradsum.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    data["run"] = run_info
    result_path = out / "result.json"
    result_path.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str),
                           encoding="utf-8")
    report_path = write_report(data, out / "report.html")
    return [result_path, report_path]


def _row_by_row(cmp: dict[str, Any] | None) -> str:
    return "" if cmp is None else (
        f"; {cmp['won']} rows won, {cmp['lost']} lost, p = {cmp['p']:.2g}")


def _print_summary(console: Console, result: Any, written: list[Path]) -> None:
    def fmt(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, int | float) else "–"

    console.print(
        f"best {result.best_id}: {fmt(result.best_score)} on {result.split} "
        f"(initial {fmt(result.initial_score)}{_row_by_row(result.comparison)}) · "
        f"stop: {result.stop_reason} · "
        f"{result.iterations} iteration(s) · {result.total_calls} calls · "
        f"{result.total_tokens:,} tokens · {result.wall_time_s:.1f} s",
        markup=False,
    )
    for warning in result.warnings:
        console.print(f"warning: {warning}", markup=False)
    console.print("--- best prompt ---", markup=False)
    console.print(result.best_template, markup=False, highlight=False)
    console.print("---", markup=False)
    for path in written:
        console.print(f"wrote {path}", markup=False)


@app.command()
def report(
    result: Annotated[Path, typer.Argument(
        help="A result.json written by `gradsum optimize --out` or OptimizationResult.save.",
        show_default=False, dir_okay=False, metavar="RESULT")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="The HTML file to write (default: report.html next to "
        "RESULT).", dir_okay=False, show_default=False, metavar="FILE")] = None,
    title: Annotated[str, typer.Option("--title", help="Title of the page.")] =
        "GRAD-SUM report",
) -> None:
    """Render RESULT (result.json) as one self-contained HTML report."""
    from langchain_gradsum.report import load_result, write_report

    try:
        data = load_result(result)
        path = write_report(data, output or result.with_name("report.html"), title=title)
    except (ValueError, TypeError) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"cannot write the report: {e}", 1) from None
    typer.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``gradsum`` script."""
    app(args=argv, prog_name="gradsum")


if __name__ == "__main__":  # pragma: no cover
    main()
