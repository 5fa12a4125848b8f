"""``python -m langchain_gradsum.local_llm``: the same commands as ``gradsum local``."""

import sys

from langchain_gradsum.local_llm import main

if __name__ == "__main__":
    sys.exit(main())
