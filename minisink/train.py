"""Training a tiny Llama in NumPy: AdamW, the learning-rate schedule, the loop, checkpoints, the model folder.

What it does:
- `loss_and_grads(model, token_ids [B, T + 1])` -> (mean next-token cross-entropy, {Hugging Face name: gradient}),
  from minisink/backward.py, through the same decoder layer as inference.
- `AdamW`: Adam with decoupled weight decay and bias correction (Loshchilov & Hutter 2019), the update of
  `torch.optim.AdamW` step for step (the tests compare them); `learning_rate`: linear warmup, then cosine decay to a
  floor; `clip_grad_norm`: one global L2 norm over every gradient.
- `train(settings, out)`: a fresh model (or the checkpoint under `out` with resume=True), batches from data.py,
  the optimizer, a progress bar (tqdm when installed) and `train_log.jsonl`: per step the loss, the gradient norm,
  the learning rate, and every `probe_every` steps Sink_1 (Gu et al. 2024, eps 0.3) and the attention on the first
  token per layer (on Bigram-Backcopy also the non-trigger queries' attention on BOS, Guo et al.'s measure).
- Checkpoints every `save_every` steps: one file, `checkpoint.safetensors` (the weights, AdamW's two moments, and in
  its metadata the step, the data generator's state and the settings), written atomically; the model folder
  (config.json, model.safetensors, tokenizer.json) is rewritten beside it, so that every command loads `out` at
  any time. A resumed run continues bit for bit: the same weights as a run that was never stopped.

Determinism: the model's initial weights come from a generator seeded by (seed, 0), the batches from one seeded by
(seed, 1), the probes from (seed, 2), a `--samples` training set from (seed, 3); nothing else draws random numbers.
Bit-exact holds for one number of BLAS threads: OpenBLAS splits a matrix product's sums differently on 1 and 2
threads, so the same run on each ends with weights that differ in the last bits (the class preset's two runs in
docs/results.md did, and both grew their sink at the same step). A resume must run with the threads of the run it
continues. The learning-rate schedule depends on the settings, never on `steps` (the cosine runs over
`decay_steps`), so that `steps` only says where to stop: a 15-step run resumed to 30 steps ends where one 30-step
run does.

What it does not: mixed precision, data parallelism, gradient accumulation, or any torch at run time.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from .anatomy import SINK_EPS, SINK_TOKENS, importance, sink_metric
from .atomic import atomic_write
from .attention_maps import capture
from .backward import loss_and_grads
from .config import LlamaConfig
from .data import BigramBackcopy, DataError, TextData, make_dataset, read_text, save_tokenizer
from .model import Llama

__all__ = ["loss_and_grads", "AdamW", "learning_rate", "clip_grad_norm", "TrainSettings", "TrainError", "train",
           "init_weights", "model_config", "write_model_folder", "read_checkpoint"]

VARIANTS = ("softmax", "softmax1", "sink-logit", "sink-token", "sigmoid")
CHECKPOINT, LOG = "checkpoint.safetensors", "train_log.jsonl"
PROBE_SAMPLES = 8  # samples of SINK_TOKENS tokens on which Sink_1 is measured during training
MAX_SAMPLE_TOKENS = 2**26  # --samples' training set: at most this many token ids (512 MiB of int64)
INIT_STD = 0.02  # transformers' initializer_range: every matrix ~ N(0, 0.02^2); norms start at 1, sinks at 0


class TrainError(Exception):
    """Training cannot start or go on: bad settings, a run folder that does not match, a non-finite loss, a disk
    that refuses the checkpoint. The message names the problem and the fix."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a run's numbers (saved in the checkpoint; a resume must give the same, but `steps`).
    The names are `minisink train`'s flags."""

    data: str = "bigram-backcopy"  # "bigram-backcopy" (Guo et al.) or "text" (a BPE over the text)
    text: str | None = None  # the text file (None: the KJV, fetched by minisink/corpus.py)
    variant: str = "softmax"  # how attention weights are made: one of VARIANTS
    layers: int = 1  # num_hidden_layers
    hidden: int = 256  # hidden_size (d_model)
    heads: int = 1  # num_attention_heads (H)
    kv_heads: int | None = None  # num_key_value_heads (Hkv); None: as many as heads
    seq_len: int = 64  # T: tokens the model reads per sample
    batch: int = 64  # B: samples per step
    steps: int = 600  # where to stop (the total, counting the steps of the run resumed)
    seed: int = 0
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 2e-4  # the cosine's floor
    warmup: int = 50  # steps of linear warmup
    decay_steps: int = 2000  # the step where the cosine reaches min_lr (constant after)
    weight_decay: float = 0.1  # AdamW's decoupled decay, on matrices only (not norms, not sink logits)
    clip: float = 1.0  # global gradient norm limit (0: no clipping)
    bpe_vocab: int = 4096  # "text": the BPE's vocabulary size
    samples: int | None = None  # a training set of this many samples, drawn once and revisited (None: a fresh batch
    #                             every step; Gu et al.'s amount-of-data knob)

    def check(self) -> None:
        """TrainError naming the flag for a setting that cannot work."""
        if self.variant not in VARIANTS:
            raise TrainError(f"unknown variant {self.variant!r}: --variant takes {', '.join(VARIANTS)}")
        if self.data not in ("bigram-backcopy", "text"):
            raise TrainError(f"unknown data {self.data!r}: --data takes bigram-backcopy or text")
        kv = self.kv_heads or self.heads
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise TrainError(f"--hidden {self.hidden} must be a multiple of --heads {self.heads} with an even "
                             f"quotient (the head width, which RoPE rotates in pairs)")
        if self.heads % kv:
            raise TrainError(f"--heads {self.heads} must be a multiple of --kv-heads {kv}")
        if self.samples is not None and not 1 <= self.samples * (self.seq_len + 1) <= MAX_SAMPLE_TOKENS:
            raise TrainError(f"--samples {self.samples} x (--seq-len {self.seq_len} + 1) tokens is not between 1 "
                             f"and {MAX_SAMPLE_TOKENS:,}: choose fewer --samples (or leave it out for fresh batches)")
        if self.seq_len < 2 + (self.variant == "sink-token"):
            raise TrainError(f"--seq-len {self.seq_len} is too short: a sample needs BOS and a token after it")


# --- the optimizer ---------------------------------------------------------------------------------------------

class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2), as torch.optim.AdamW computes it.

    For each parameter p with gradient g, at step t (from 1):
        p <- p * (1 - lr * wd)                          decoupled: the decay is not part of the gradient
        m <- beta1 * m + (1 - beta1) * g                 first moment
        v <- beta2 * v + (1 - beta2) * g^2               second moment
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)   bias-corrected step
    `params` are the model's own arrays (Llama.parameters(): views into its storage), updated in place. `decay`
    names the parameters that get weight decay (default: the matrices, not the norms' or sinks' vectors)."""

    def __init__(self, params: dict[str, np.ndarray], weight_decay: float = 0.1, betas=(0.9, 0.95),
                 eps: float = 1e-8, decay: set[str] | None = None):
        self.params = params
        self.beta1, self.beta2 = betas
        self.eps = eps
        decay = {n for n, p in params.items() if p.ndim >= 2} if decay is None else decay
        self.weight_decay = {n: weight_decay if n in decay else 0.0 for n in params}
        self.exp_avg = {n: np.zeros_like(p) for n, p in params.items()}  # m, float32, the parameters' shapes
        self.exp_avg_sq = {n: np.zeros_like(p) for n, p in params.items()}  # v
        self.t = 0  # steps taken

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One update of every parameter from `grads` (same names and shapes)."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        step_size = lr / (1 - b1 ** self.t)
        root_bc2 = math.sqrt(1 - b2 ** self.t)
        for name, p in self.params.items():
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            assert g.shape == p.shape, f"{name}: gradient {g.shape} for a parameter {p.shape}"
            if self.weight_decay[name]:
                p *= np.float32(1 - lr * self.weight_decay[name])
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * (g * g)
            denom = np.sqrt(v) / np.float32(root_bc2)
            denom += np.float32(self.eps)
            p -= np.float32(step_size) * (m / denom)


def learning_rate(step: int, s: TrainSettings) -> float:
    """The learning rate of update number `step` (0-based): linear warmup to s.lr over s.warmup steps, then a
    half cosine down to s.min_lr at s.decay_steps, constant after."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, s.decay_steps - s.warmup))
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * progress))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient by max_norm / norm when the global L2 norm over all of them exceeds max_norm (as
    torch.nn.utils.clip_grad_norm_). Returns the norm before clipping. max_norm 0: no clipping."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))  # float64 sums of float32 squares
    if max_norm and norm > max_norm:
        scale = np.float32(max_norm / (norm + 1e-6))
        for g in grads.values():
            g *= scale
    return norm


# --- a fresh model, and the Hugging Face folder ------------------------------------------------------------------

def model_config(s: TrainSettings, vocab_size: int, bos_token_id: int, sink_token_id: int | None) -> dict:
    """The config.json of the model the settings describe (Hugging Face field names, minisink's variant fields)."""
    head_dim = s.hidden // s.heads
    raw = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
           "vocab_size": vocab_size, "hidden_size": s.hidden,
           "intermediate_size": 64 * math.ceil(8 * s.hidden / 3 / 64),  # Llama's 8/3 * d_model, a multiple of 64
           "num_hidden_layers": s.layers, "num_attention_heads": s.heads,
           "num_key_value_heads": s.kv_heads or s.heads, "head_dim": head_dim, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": s.seq_len, "tie_word_embeddings": False,
           "attention_bias": False, "mlp_bias": False, "bos_token_id": bos_token_id, "eos_token_id": bos_token_id,
           "torch_dtype": "float32", "attention_variant": s.variant}
    if s.variant == "sink-token":
        raw["sink_token_id"] = sink_token_id
    if s.variant == "sigmoid":
        # b = 0, as in Gu et al.'s own code (sail-sg/Attention-Sink, sigmoid without normalization: sigmoid(q.k /
        # sqrt(D)) times the causal mask). Ramapuram et al. 2024 (arXiv 2409.04431) start at b = -log T instead.
        raw["sigmoid_bias"] = 0.0
    return raw


def init_weights(config: LlamaConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh weights: matrices ~ N(0, INIT_STD^2), norm weights 1, sink logits 0 (float32, every expected name)."""
    from .weights import expected_shapes

    weights = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = np.ones(shape, dtype=np.float32)
        elif name.endswith("self_attn.sinks"):
            weights[name] = np.zeros(shape, dtype=np.float32)
        else:
            weights[name] = (INIT_STD * rng.standard_normal(shape)).astype(np.float32)
    return weights


def write_model_folder(model: Llama, raw_config: dict, folder, tokenizer=None) -> None:
    """config.json and model.safetensors (and tokenizer.json if given) into `folder`, each atomically: a Hugging
    Face folder that minisink and transformers' LlamaForCausalLM (for the softmax variant) load unchanged."""
    folder = Path(folder)
    tensors = {name: np.ascontiguousarray(p) for name, p in model.parameters().items()}
    data = safetensors.numpy.save(tensors, metadata={"format": "pt"})  # "pt": what transformers expects to read
    with atomic_write(folder / "model.safetensors") as f:
        f.write(data)
    with atomic_write(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(raw_config, f, indent=2)
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder)


# --- checkpoints ---------------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, model: Llama, opt: AdamW, step: int, rng: np.random.Generator,
                    settings: TrainSettings, text_sha256: str) -> None:
    """Weights, AdamW's moments and counter, the batch generator's state and the settings, in one safetensors file
    written atomically: after a crash at any point the file is the previous checkpoint or this one."""
    tensors = {}
    for name, p in model.parameters().items():
        tensors["param/" + name] = np.ascontiguousarray(p)
        tensors["exp_avg/" + name] = opt.exp_avg[name]
        tensors["exp_avg_sq/" + name] = opt.exp_avg_sq[name]
    meta = {"step": str(step), "adamw_t": str(opt.t), "rng": json.dumps(rng.bit_generator.state),
            "settings": json.dumps(dataclasses.asdict(settings)), "text_sha256": text_sha256}
    with atomic_write(path) as f:
        f.write(safetensors.numpy.save(tensors, metadata=meta))


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, metadata) of a checkpoint file; TrainError if it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise TrainError(f"cannot read the checkpoint {path} ({e}): it is damaged; start a new run with another "
                         f"--out") from None
    return tensors, meta


# --- what the log records: the sink, measured ----------------------------------------------------------------------

def probe_samples(dataset, rng: np.random.Generator, sink_token: bool) -> np.ndarray:
    """PROBE_SAMPLES fixed samples of SINK_TOKENS tokens, never trained on (held-out text, or sequences from their
    own generator), starting as training samples do: [PROBE_SAMPLES, SINK_TOKENS]."""
    if isinstance(dataset, BigramBackcopy):
        return dataset.batch(rng, PROBE_SAMPLES, SINK_TOKENS - 1)
    ids = dataset.held_out_ids
    heads = [dataset.bos_id] if dataset.sink_id is None else [dataset.sink_id, dataset.bos_id]
    n = SINK_TOKENS - len(heads)
    if len(ids) < n:
        raise DataError(f"the held-out part of the text has {len(ids)} tokens, fewer than a probe sample "
                        f"({n}): give a longer --text")
    starts = np.linspace(0, len(ids) - n, PROBE_SAMPLES, dtype=int)
    return np.stack([np.concatenate([heads, ids[a:a + n]]) for a in starts])


def sink_probe(model: Llama, probes: np.ndarray, dataset) -> dict:
    """Sink_1 (percent), the attention on the first token per layer, and on Bigram-Backcopy the non-trigger
    queries' attention on BOS per layer (Guo et al.), each averaged over the probe samples and heads."""
    probs = [capture(model, ids) for ids in probes]  # per sample, per layer [H, T, T]
    alphas = np.stack([importance(p) for p in probs])  # [samples, layers, H, T]
    record = {"sink1": float(sink_metric(alphas, SINK_EPS)[0]),
              "first_mass": [round(float(a), 4) for a in alphas[..., 0].mean(axis=(0, 2))]}
    if isinstance(dataset, BigramBackcopy):
        bos = int(np.flatnonzero(probes[0] == dataset.bos_id)[0])  # 0, or 1 after the sink token
        A = np.stack([np.stack(p) for p in probs])  # [samples, layers, H, T, T]
        queries = ~dataset.trigger_mask(probes)  # [samples, T]: non-trigger tokens...
        queries[:, :bos + 1] = False  # ...after BOS (BOS itself has nothing else to look at)
        on_bos = A[..., bos]  # [samples, layers, H, T]: each query's attention on BOS
        weights = queries[:, None, None, :]
        record["bos_mass"] = [round(float(x), 4) for x in
                              (on_bos * weights).sum(axis=(0, 2, 3)) / (weights.sum() * A.shape[2])]
    return record


def text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the loop ------------------------------------------------------------------------------------------------------

def load_text(s: TrainSettings) -> str:
    if s.text is not None:
        return read_text(s.text)
    from .corpus import fetch_kjv

    return read_text(fetch_kjv(progress=False))


def _resume_state(out: Path, s: TrainSettings, text_sha: str):
    """The checkpoint under `out`, checked against the settings: (tensors, metadata)."""
    tensors, meta = read_checkpoint(out / CHECKPOINT)
    saved = json.loads(meta["settings"])
    now = dataclasses.asdict(s)
    differ = [k for k in now if k != "steps" and saved.get(k) != now[k]]
    if differ:
        k = differ[0]
        raise TrainError(f"{out} was trained with {k} = {saved.get(k)!r}, not {now[k]!r}: --resume continues a run "
                         f"with its own settings (only --steps may change); drop --resume and choose another --out")
    if meta.get("text_sha256") != text_sha:
        raise TrainError(f"the training text differs from the one {out} was trained on: --resume needs the same "
                         f"--text")
    return tensors, meta


def _trim_log(path: Path, step: int) -> None:
    """Keep the log's records of steps up to `step` (a resumed run rewrites the rest); drop a line cut by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.writelines(kept)


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def train(s: TrainSettings, out, *, resume: bool = False, save_every: int = 100, probe_every: int = 25,
          progress: bool = True, text: str | None = None) -> Path:
    """Train the model `s` describes into the folder `out` (see the module docstring); returns `out`.

    `text` overrides reading s.text (tests). Raises TrainError / DataError with a message for the user."""
    s.check()
    out = Path(out)
    text = load_text(s) if text is None else text
    text_sha = text_fingerprint(text)
    checkpoint = out / CHECKPOINT
    sink_token = s.variant == "sink-token"
    if resume and not checkpoint.is_file():
        raise TrainError(f"nothing to resume: {out} holds no {CHECKPOINT}; run without --resume first")
    if not resume and checkpoint.is_file():
        raise TrainError(f"{out} already holds a run ({CHECKPOINT}): pass --resume to continue it, or choose "
                         f"another --out")
    state = _resume_state(out, s, text_sha) if resume else None

    if s.data == "text" and resume:  # the BPE the run was trained with, not a new one
        import tokenizers

        dataset = TextData(text, s.bpe_vocab, sink_token,
                           tokenizer=tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")))
    else:
        dataset = make_dataset(s.data, text, sink_token=sink_token, vocab_size=s.bpe_vocab)
    if isinstance(dataset, TextData):
        dataset.check_length(s.seq_len)
    raw = model_config(s, dataset.vocab_size, dataset.bos_id, dataset.sink_id)
    config = LlamaConfig.from_dict(raw)
    if state is None:
        model = Llama(config, init_weights(config, np.random.default_rng([s.seed, 0])))
    else:
        tensors, meta = state
        model = Llama(config, {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")})
    params = model.parameters()
    opt = AdamW(params, s.weight_decay)
    rng = np.random.default_rng([s.seed, 1])
    start = 0
    if state is not None:
        for name in params:
            opt.exp_avg[name][...] = tensors["exp_avg/" + name]
            opt.exp_avg_sq[name][...] = tensors["exp_avg_sq/" + name]
        opt.t, start = int(meta["adamw_t"]), int(meta["step"])
        rng.bit_generator.state = json.loads(meta["rng"])
    probes = probe_samples(dataset, np.random.default_rng([s.seed, 2]), sink_token)

    try:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            write_model_folder(model, raw, out, dataset.tokenizer)
            save_checkpoint(checkpoint, model, opt, 0, rng, s, text_sha)
        log_path = out / LOG
        _trim_log(log_path, start)
    except OSError as e:
        raise TrainError(f"cannot write the run folder {out}: {e.strerror or e}") from None

    bar, sink1 = _progress(s.steps, start, progress), "-"
    saved_step = start
    tokens = s.batch * s.seq_len
    # --samples: a fixed training set from its own generator (seed, 3); each step then draws rows of it with `rng`
    pool = None if s.samples is None else dataset.batch(np.random.default_rng([s.seed, 3]), s.samples, s.seq_len)
    with open(log_path, "a", encoding="utf-8") as log:
        clock = time.perf_counter()
        for step in range(start, s.steps):
            if pool is None:
                ids = dataset.batch(rng, s.batch, s.seq_len)  # [B, T + 1]
            else:
                ids = pool[rng.integers(len(pool), size=s.batch)]  # [B, T + 1] rows of the training set
            loss, grads = loss_and_grads(model, ids)
            norm = clip_grad_norm(grads, s.clip)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
                raise TrainError(f"{what} at step {step + 1}: training stopped; the last good checkpoint (step "
                                 f"{saved_step}) is in {out}. Lower --lr or raise --warmup, then run again "
                                 f"(--resume continues from that checkpoint)")
            lr = learning_rate(step, s)
            opt.step(grads, lr)
            now = time.perf_counter()
            record = {"step": step + 1, "loss": round(float(loss), 5), "grad_norm": round(norm, 5),
                      "lr": lr, "tokens_per_s": round(tokens / (now - clock))}
            clock = now
            if (step + 1) % probe_every == 0 or step + 1 == s.steps:
                record.update(sink_probe(model, probes, dataset))
                clock = time.perf_counter()  # the probe's time is not training's
            log.write(json.dumps(record) + "\n")
            log.flush()
            if bar is not None:
                bar.update(1)
                sink1 = f"{record['sink1']:.0f}%" if "sink1" in record else sink1  # the last probe's until the next
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=record["tokens_per_s"], sink1=sink1, refresh=False)
            if (step + 1) % save_every == 0 or step + 1 == s.steps:
                try:
                    save_checkpoint(checkpoint, model, opt, step + 1, rng, s, text_sha)
                    saved_step = step + 1
                    write_model_folder(model, raw, out)
                except OSError as e:
                    hint = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                    raise TrainError(f"cannot save step {step + 1}: {hint}; the last checkpoint (step {saved_step}) "
                                     f"in {out} is intact: free space and run again with --resume") from None
                clock = time.perf_counter()
    if bar is not None:
        bar.close()
    return out
