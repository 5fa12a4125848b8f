"""Draw the GRAD-SUM graph as Mermaid from the code.

    python graphs/draw.py            # rewrite gradsum_graph.mmd and the drawings in
                                     # graphs/README.md and the project's README.md
    python graphs/draw.py --check    # exit 1 if a committed drawing is stale

The drawings are generated, never edited by hand; a unit test keeps them current.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MMD = HERE / "gradsum_graph.mmd"
README = HERE / "README.md"
ROOT_README = HERE.parent / "README.md"
"""The project's README shows the drawing without styles (as the unit test's snapshot)."""
_BLOCK = re.compile(r"(```mermaid\n)(.*?)(```)", re.S)


def render(with_styles: bool = True) -> str:
    """The Mermaid source of the compiled graph (what ``langgraph dev`` serves)."""
    sys.path.insert(0, str(HERE))
    try:
        from gradsum_graph import graph
    finally:
        sys.path.remove(str(HERE))
    text = graph.get_graph().draw_mermaid(with_styles=with_styles)
    return text if text.endswith("\n") else text + "\n"


def readme_with(drawing: str, readme: str) -> str:
    """`readme` with its (first) mermaid block replaced by `drawing`."""
    if not _BLOCK.search(readme):
        return readme.rstrip("\n") + f"\n\n```mermaid\n{drawing}```\n"
    return _BLOCK.sub(lambda m: m.group(1) + drawing + m.group(3), readme, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed drawings instead of writing them")
    args = parser.parse_args(argv)
    drawing = render()
    readme = README.read_text(encoding="utf-8") if README.is_file() else "# graphs/\n"
    wanted = {MMD: drawing, README: readme_with(drawing, readme)}
    if ROOT_README.is_file():
        wanted[ROOT_README] = readme_with(render(with_styles=False),
                                          ROOT_README.read_text(encoding="utf-8"))
    if args.check:
        stale = [p for p, text in wanted.items()
                 if not p.is_file() or p.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is stale: run `python graphs/draw.py`", file=sys.stderr)
        if not stale:
            print("the drawings are up to date")
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
