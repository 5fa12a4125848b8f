"""Execute the notebooks in this folder top to bottom in a fresh kernel (nbclient).

    # CI (what `make test-notebooks` does through pytest): the scripted fake model,
    # executed copies go to a temp dir, the committed notebooks are left alone
    GRADSUM_NOTEBOOK_MODEL=fake python notebooks/run_notebooks.py --out /tmp/nb

    # Refresh the committed outputs with a real run on the embedded local model
    python -m langchain_gradsum.local_llm run -- \\
        env GRADSUM_NOTEBOOK_MODEL=local python notebooks/run_notebooks.py --inplace

The kernel is the ``python3`` kernel of the interpreter running this script (the
venv's), started in this folder, so ``import gradsum_notebook`` works.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(source: Path, dest: Path, *, timeout: float = 120) -> nbformat.NotebookNode:
    """Run `source` top to bottom (any error raises ``CellExecutionError``); write
    the executed notebook to `dest` and return it."""
    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--inplace", action="store_true", help="overwrite the notebooks")
    where.add_argument("--out", type=Path, help="write executed copies to this folder")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    p.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    args = p.parse_args(argv)
    chosen = [(HERE / Path(n).name).with_suffix(".ipynb") for n in args.names] or NOTEBOOKS
    for path in chosen:
        dest = path if args.inplace else args.out / path.name
        start = time.monotonic()
        print(f"executing {path.name} ...", flush=True)
        execute(path, dest, timeout=args.timeout)
        print(f"  done in {time.monotonic() - start:.0f} s -> {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
