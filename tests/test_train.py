"""The trainer (minisink/train.py, `minisink train`): AdamW against torch.optim.AdamW, the schedule and clipping,
bit-exact resume (in process, after a kill -9, and with a larger --steps), the model folder against transformers,
and bad input (too short a text, an unknown variant, a non-finite loss, a full disk)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minisink
import minisink.atomic
import minisink.train as train_module
from minisink import new_cache
from minisink.cli import main
from minisink.train import (CHECKPOINT, AdamW, TrainError, TrainSettings, clip_grad_norm, learning_rate,
                            read_checkpoint, train)

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("the quick brown fox jumps over the lazy dog. " * 3 + "pack my box with five dozen liquor jugs!\n") * 40
TINY = dict(layers=2, hidden=32, heads=4, kv_heads=2, seq_len=16, batch=4, lr=3e-3, warmup=3, decay_steps=40)


def weights(folder) -> dict[str, np.ndarray]:
    return minisink.weights.read_safetensors(Path(folder) / "model.safetensors")


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name  # bit for bit


def run_cli(*args, capsys=None) -> int:
    try:
        return main(["train", *map(str, args)])
    except SystemExit as e:
        if capsys is not None:
            print(e.code, file=sys.stderr)
        return 1 if isinstance(e.code, str) else e.code


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# --- the optimizer, the schedule, clipping -------------------------------------------------------------------------

def test_adamw_matches_torch():
    """10 steps on the same gradients, a varying learning rate, decay on matrices only: within 1e-5 of torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = {"w": (6, 5), "b": (5,), "e": (7, 3)}
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    ref = {n: torch.nn.Parameter(torch.from_numpy(p.copy())) for n, p in params.items()}
    opt = AdamW(params, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    torch_opt = torch.optim.AdamW([{"params": [ref["w"], ref["e"]], "weight_decay": 0.1},
                                   {"params": [ref["b"]], "weight_decay": 0.0}], lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    settings = TrainSettings(lr=3e-2, min_lr=1e-3, warmup=3, decay_steps=10)
    for step in range(10):
        grads = {n: (rng.standard_normal(s) * 10 ** rng.uniform(-3, 1)).astype(np.float32) for n, s in shapes.items()}
        lr = learning_rate(step, settings)
        opt.step(grads, lr)
        for group in torch_opt.param_groups:
            group["lr"] = lr
        for n, p in ref.items():
            p.grad = torch.from_numpy(grads[n].copy())
        torch_opt.step()
    for n in params:
        np.testing.assert_allclose(params[n], ref[n].detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=n)
    assert not np.allclose(params["w"], ref["w"].detach().numpy() * 0 + 1)  # it moved


def test_learning_rate_schedule():
    s = TrainSettings(lr=1e-3, min_lr=1e-4, warmup=10, decay_steps=110)
    lrs = [learning_rate(i, s) for i in range(200)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then down, never up
    assert lrs[60] == pytest.approx((1e-3 + 1e-4) / 2)  # the cosine's midpoint
    assert lrs[110] == pytest.approx(1e-4) and lrs[199] == pytest.approx(1e-4)


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    tensors = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads.values()]
    for t, g in zip(tensors, grads.values(), strict=True):
        t.grad = torch.from_numpy(g.copy())
    expected = float(torch.nn.utils.clip_grad_norm_(tensors, 1.5))
    norm = clip_grad_norm(grads, 1.5)
    assert norm == pytest.approx(expected, rel=1e-6) and norm > 1.5
    for t, g in zip(tensors, grads.values(), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)
    assert clip_grad_norm({"a": np.ones(2, np.float32)}, 10.0) == pytest.approx(2 ** 0.5)  # under the limit: kept


# --- runs, checkpoints, resume -------------------------------------------------------------------------------------

def test_resume_in_process_is_bit_exact(tmp_path):
    """2k steps in one run give the same weights as k steps, then a resume for k more (the log is continuous)."""
    s = TrainSettings(**TINY, steps=12)
    train(s, tmp_path / "one", text=TEXT, progress=False, save_every=6, probe_every=4)
    train(TrainSettings(**TINY, steps=6), tmp_path / "two", text=TEXT, progress=False, save_every=6, probe_every=4)
    train(s, tmp_path / "two", text=TEXT, progress=False, resume=True, save_every=6, probe_every=4)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    logs = [[json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    assert [r["step"] for r in logs[1]] == list(range(1, 13))
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert logs[0][3]["sink1"] >= 0 and len(logs[0][3]["first_mass"]) == 2 and "bos_mass" in logs[0][3]
    assert logs[0][-1]["loss"] < logs[0][0]["loss"]  # it learns


def test_resume_with_more_steps_via_cli(tmp_path, text_file):
    """After a 15-step run, `--resume --steps 30` ends with the weights of one 30-step run, bit for bit."""
    flags = ["--text", text_file, "--layers", 1, "--hidden", 32, "--heads", 2, "--seq-len", 16, "--batch", 4,
             "--warmup", 3, "--decay-steps", 40, "--no-progress"]
    assert run_cli(*flags, "--steps", 30, "--out", tmp_path / "a") == 0
    assert run_cli(*flags, "--steps", 15, "--out", tmp_path / "b", "--save-every", 7) == 0
    assert read_checkpoint(tmp_path / "b" / CHECKPOINT)[1]["step"] == "15"
    assert run_cli("--resume", "--steps", 30, "--out", tmp_path / "b", "--no-progress") == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")


def test_kill_9_then_resume_is_bit_exact(tmp_path, text_file):
    """A real `minisink train` killed with SIGKILL after a checkpoint, resumed for k more steps, ends where one
    uninterrupted run of as many steps does."""
    flags = ["--text", str(text_file), "--layers", "1", "--hidden", "32", "--heads", "2", "--seq-len", "16",
             "--batch", "4", "--warmup", "3", "--no-progress", "--save-every", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "minisink.cli", "train"]
    run = subprocess.Popen(cmd + flags + ["--steps", "100000", "--out", str(tmp_path / "killed")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + 120
    while time.time() < deadline and run.poll() is None:
        if checkpoint.is_file() and read_checkpoint(checkpoint)[1]["step"] != "0":
            break
        time.sleep(0.02)
    assert run.poll() is None, run.stderr.read().decode()
    run.send_signal(signal.SIGKILL)
    run.wait()
    k = int(read_checkpoint(checkpoint)[1]["step"])
    assert k > 0 and k % 4 == 0
    subprocess.run(cmd + ["--resume", "--steps", str(k + 4), "--out", str(tmp_path / "killed"), "--no-progress"],
                   env=env, check=True, capture_output=True)
    subprocess.run(cmd + flags + ["--steps", str(k + 4), "--out", str(tmp_path / "whole")], env=env, check=True,
                   capture_output=True)
    assert_same_weights(tmp_path / "killed", tmp_path / "whole")


def test_trained_folder_loads_everywhere(tmp_path):
    """The folder loads in minisink (model and tokenizer) and, unchanged, in transformers' LlamaForCausalLM, which
    gives minisink's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = train(TrainSettings(**TINY, steps=5), tmp_path / "run", text=TEXT, progress=False)
    model, tok = minisink.load_model(out), minisink.load_tokenizer(out)
    ids = np.asarray([tok.bos_token_id] + tok.encode("the lazy dog jumps over the quick fox"))
    ours = model.forward(ids, new_cache(model))
    hf = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["attention_variant"] == "softmax" and config["bos_token_id"] == tok.bos_token_id


# --- bad input -----------------------------------------------------------------------------------------------------

def test_text_shorter_than_a_sample(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("In the beginning.\n" * 4, encoding="utf-8")
    assert run_cli("--data", "text", "--text", short, "--bpe-vocab", 300, "--seq-len", 256, "--out",
                   tmp_path / "r", "--no-progress", capsys=capsys) == 1
    err = capsys.readouterr().err
    assert "fewer than one sample" in err and "--seq-len" in err and "--text" in err
    assert not (tmp_path / "r" / CHECKPOINT).exists()


def test_unknown_variant(tmp_path, capsys):
    assert run_cli("--variant", "relu", "--out", tmp_path / "r", capsys=capsys) == 1
    assert "--variant takes softmax, softmax1, sink-logit, sink-token, sigmoid" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real, calls = train_module.loss_and_grads, []

    def breaks_at_step_8(model, ids):
        calls.append(1)
        loss, grads = real(model, ids)
        return (float("nan") if len(calls) == 8 else loss), grads

    monkeypatch.setattr(train_module, "loss_and_grads", breaks_at_step_8)
    with pytest.raises(TrainError, match=r"loss nan at step 8.*last good checkpoint \(step 5\)"):
        train(TrainSettings(**TINY, steps=20), tmp_path / "r", text=TEXT, progress=False, save_every=5)
    assert read_checkpoint(tmp_path / "r" / CHECKPOINT)[1]["step"] == "5"
    assert all(np.isfinite(w).all() for w in weights(tmp_path / "r").values())


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "r"
    train(TrainSettings(**TINY, steps=4), out, text=TEXT, progress=False, save_every=4)
    before = (out / CHECKPOINT).read_bytes()

    real_save = train_module.save_checkpoint

    def save_on_a_full_disk(*args):  # the real atomic write, whose fsync finds the disk full
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(minisink.atomic.os, "fsync", full)
        real_save(*args)

    monkeypatch.setattr(train_module, "save_checkpoint", save_on_a_full_disk)
    with pytest.raises(TrainError, match=r"step 8: the disk is full; the last checkpoint \(step 4\).*--resume"):
        train(TrainSettings(**TINY, steps=8), out, text=TEXT, progress=False, save_every=4, resume=True)
    assert (out / CHECKPOINT).read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no half-written sibling


def test_resume_refuses_a_different_run(tmp_path, capsys):
    assert run_cli("--resume", "--out", tmp_path / "none", capsys=capsys) == 1
    assert "nothing to resume" in capsys.readouterr().err
    train(TrainSettings(**TINY, steps=2), tmp_path / "r", text=TEXT, progress=False)
    with pytest.raises(TrainError, match="pass --resume"):
        train(TrainSettings(**TINY, steps=4), tmp_path / "r", text=TEXT, progress=False)
    with pytest.raises(TrainError, match="training text differs"):
        train(TrainSettings(**TINY, steps=4), tmp_path / "r", text=TEXT + "x", progress=False, resume=True)


@pytest.mark.parametrize("variant", ["softmax", "softmax1", "sink-logit", "sink-token", "sigmoid"])
def test_every_variant_trains_and_its_folder_runs_at_inference(tmp_path, variant):
    """A few steps per variant; the folder records the variant, and minisink's inference forward over the folder
    gives the training loss (the loss `loss_and_grads` computes on the same rows)."""
    from minisink.data import BigramBackcopy
    from minisink.evaluate import token_nll

    out = train(TrainSettings(**TINY, steps=3, variant=variant), tmp_path / variant, text=TEXT, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["attention_variant"] == variant
    model = minisink.load_model(out)
    if variant == "sink-logit":
        assert model.sink_logits.shape == (2, 4) and "model.layers.1.self_attn.sinks" in weights(out)
    data = BigramBackcopy(TEXT, sink_token=variant == "sink-token")
    assert config.get("sink_token_id") == data.sink_id
    ids = data.batch(np.random.default_rng(5), 3, 16)  # [3, 17]
    loss, _ = train_module.loss_and_grads(model, ids)
    nll = np.concatenate([token_nll(model.forward(row[:-1], new_cache(model)), row[1:]) for row in ids])
    assert loss == pytest.approx(nll.mean(), rel=1e-5)


def test_samples_is_a_fixed_training_set(tmp_path, capsys, monkeypatch):
    """--samples N: every batch is rows of one set of N samples drawn once (seed, 3), and a resume keeps to it."""
    s = TrainSettings(**TINY, steps=6, samples=3)
    seen = []
    real = minisink.train.loss_and_grads

    def spy(model, ids):
        seen.append(ids.copy())
        return real(model, ids)

    monkeypatch.setattr(minisink.train, "loss_and_grads", spy)
    train(s, tmp_path / "one", text=TEXT, progress=False)
    train(TrainSettings(**TINY, steps=3, samples=3), tmp_path / "two", text=TEXT, progress=False, save_every=3)
    train(s, tmp_path / "two", text=TEXT, progress=False, resume=True)
    rows = {tuple(r) for ids in seen[:6] for r in ids}
    assert len(rows) <= 3 and sum(len(ids) for ids in seen[:6]) == 6 * TINY["batch"]
    assert {tuple(r) for ids in seen[6:] for r in ids} <= rows  # the second run and its resume draw from the same set
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    with pytest.raises(TrainError, match="--samples 0"):
        train(TrainSettings(**TINY, samples=0), tmp_path / "bad", text=TEXT, progress=False)
    assert run_cli("--samples", "0", "--out", tmp_path / "c", capsys=capsys) == 2  # argparse: an integer >= 1
