"""Draw the GRAD-SUM graph as Mermaid from the code, into ``gradsum_graph.mmd``.

    python graphs/draw.py            # rewrite graphs/gradsum_graph.mmd
    python graphs/draw.py --check    # exit 1 if the committed drawing is stale

The drawing is generated, never edited by hand; a unit test keeps it current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MMD = HERE / "gradsum_graph.mmd"


def render() -> str:
    """The Mermaid source of the compiled graph (what ``langgraph dev`` serves)."""
    sys.path.insert(0, str(HERE))
    try:
        from gradsum_graph import graph
    finally:
        sys.path.remove(str(HERE))
    text = graph.get_graph().draw_mermaid()
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed drawing instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = MMD.read_text(encoding="utf-8") if MMD.is_file() else ""
        if current != text:
            print(f"{MMD} is stale: run `python graphs/draw.py`", file=sys.stderr)
            return 1
        print(f"{MMD} is up to date")
        return 0
    MMD.write_text(text, encoding="utf-8")
    print(f"wrote {MMD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
