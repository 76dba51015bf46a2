"""The plain, slow, obviously right versions that the tests and the assignment graders compare against.

What it does: each function or class here states one idea of minisink in the plainest code there is (loops over
heads and tokens, float64 where it costs nothing, every key kept), so that it can be read against the paper and
trusted as an oracle. minisink's own code is compared with these in tests/, and a student's code in the graders.
What it does not: run fast. Nothing in minisink's forward pass calls this module.

The forward pass: `reference_forward` computes the logits of a token sequence from the Llama equations, one token
and one head at a time, in float64 (tests/test_model.py holds `Llama.forward` to it, prefill and decode).

The eviction policies (H2O, TOVA, SnapKV; chapter 09): `EvictionReference` runs them the long way: it keeps every
key and value ever computed, and a boolean `kept[layer][kv_head, token]`; each chunk, every query head attends over
all keys with a mask (the kept tokens and the chunk, causally), positions given explicitly per KV head, and the
policy's rule is applied again from scratch to (kept + chunk) with sorted Python lists. No slots, no ring, no
in-place bookkeeping: the fast caches in minisink/eviction.py must give the same logits and keep the same tokens
(tests/test_eviction.py).
"""

from __future__ import annotations

import math

import numpy as np

from .cache import KVBlock
from .model import linear, rms_norm, silu
from .rope import apply_rope, rotation


def reference_forward(model, ids) -> np.ndarray:
    """The Llama equations as a plain float64 loop over tokens and heads, every token seeing every earlier one (the
    full cache): ids [T] -> logits [T, V]. RMSNorm, RoPE on halves (rotate_half), GQA attention, SwiGLU, from the
    model's weights and nothing else of minisink (the oracle of tests/test_model.py)."""
    c = model.config
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    f = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731

    def norm(x, w):
        return x / np.sqrt(np.mean(x**2) + c.rms_norm_eps) * w

    def rope(v, pos):
        out = np.empty(D)
        for i in range(D // 2):
            a = pos * c.rope_theta ** (-2 * i / D)
            out[i] = v[i] * math.cos(a) - v[i + D // 2] * math.sin(a)
            out[i + D // 2] = v[i + D // 2] * math.cos(a) + v[i] * math.sin(a)
        return out

    xs = [f(model.embed_tokens[t]) for t in ids]  # T vectors [d_model]
    for layer in model.layers:
        qkv_w, o_w = f(layer.qkv_proj), f(layer.o_proj)
        keys, values, new_xs = [], [], []
        for pos, x in enumerate(xs):
            qkv = qkv_w @ norm(x, f(layer.input_layernorm))  # [(H + 2 Hkv) D]: q_proj, k_proj, v_proj stacked
            q = qkv[:H * D].reshape(H, D)
            k = qkv[H * D:(H + Hkv) * D].reshape(Hkv, D)
            keys.append([rope(k[j], pos) for j in range(Hkv)])
            values.append(qkv[(H + Hkv) * D:].reshape(Hkv, D))
            heads = []
            for h in range(H):
                j = h // (H // Hkv)
                qh = rope(q[h], pos)
                s = np.array([qh @ keys[t][j] for t in range(pos + 1)]) / math.sqrt(D)
                w = np.exp(s - s.max())
                w /= w.sum()
                heads.append(sum(w[t] * values[t][j] for t in range(pos + 1)))
            x = x + o_w @ np.concatenate(heads)
            g_u = f(layer.gate_up_proj) @ norm(x, f(layer.post_attention_layernorm))
            gate, up = g_u[:c.intermediate_size], g_u[c.intermediate_size:]
            x = x + f(layer.down_proj) @ (gate / (1 + np.exp(-gate)) * up)
            new_xs.append(x)
        xs = new_xs
    return np.stack([f(model.lm_head) @ norm(x, f(model.norm)) for x in xs])


class ExplicitSinkCache:
    """The sink cache written for clarity, not speed (the oracle of tests/test_sink_cache.py): every pre-RoPE key kept
    forever; the query at stream index t sees the first S and the last W tokens (itself included), numbered
    0..n-1 in stream order (or, with renumber=False, at their positions in the text). One token per call; like
    every cache, it changes what it holds only at `end()`."""

    def __init__(self, config, n_sink, window, renumber=True, position_offset=0):
        self.n_sink, self.window, self.renumber, self.offset = n_sink, window, renumber, position_offset
        self.inv_freq = config.inv_freq()
        self.keys = [[] for _ in range(config.num_hidden_layers)]  # per layer: pre-RoPE keys [Hkv, D] per token
        self.values = [[] for _ in range(config.num_hidden_layers)]
        self.t = 0

    def visible(self, t):
        return sorted(set(range(min(self.n_sink, t + 1))) | set(range(max(0, t - self.window + 1), t + 1)))

    def begin(self, T):
        assert T == 1, "the explicit cache takes one token at a time"
        self.kept = np.array(self.visible(self.t))
        self.staged = {}
        positions = np.arange(len(self.kept)) if self.renumber else self.kept  # within the cache, or in the text
        self.unrotate = rotation(-np.array([self.offset + self.t]), self.inv_freq)
        self.key_rotation = rotation(self.offset + positions, self.inv_freq)
        self.query_rotation = rotation(positions[-1:] - self.t, self.inv_freq)  # from t to its cache position
        return rotation(np.array([self.offset + self.t]), self.inv_freq)

    def blocks(self, layer, k, v):
        self.staged[layer] = (apply_rope(k, self.unrotate)[0], v[0])  # this token's pre-RoPE key and value
        keys = self.keys[layer] + [self.staged[layer][0]]
        values = self.values[layer] + [self.staged[layer][1]]
        keys = apply_rope(np.stack([keys[j] for j in self.kept]), self.key_rotation)  # [n, Hkv, D]
        values = np.stack([values[j] for j in self.kept])
        return [KVBlock(keys.transpose(1, 2, 0), values.transpose(1, 0, 2), None, self.query_rotation)]

    def end(self):
        """Commit: the token's key and value join the history (blocks only staged them)."""
        for layer, (k, v) in self.staged.items():
            self.keys[layer].append(k)
            self.values[layer].append(v)
        self.t += 1

    def retained(self):
        """Stream indices the last query saw: the first S and the last W, in stream order."""
        return np.array(self.visible(self.t - 1)) if self.t else np.array([], dtype=int)



def loop_attention(q, blocks, n_kv_heads):
    """Attention head by head and block by block, float64: the plainest statement of GQA."""
    T, H, D = q.shape
    G = H // n_kv_heads
    out, probs = np.zeros((T, H, D)), []
    for h in range(H):
        kv = h // G  # query head h reads KV head h // G (transformers' repeat_kv)
        scores, values = [], []
        for b in blocks:
            qb = q if b.query_rotation is None else apply_rope(q, b.query_rotation)
            sc = qb[:, h].astype(np.float64) @ b.keys[kv] / np.sqrt(D)  # [T, L]
            scores.append(sc if b.mask is None else sc + b.mask)
            values.append(b.values[kv])
        sc = np.concatenate(scores, axis=-1)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, h] = p @ np.concatenate(values)
        probs.append(p)
    return out.reshape(T, H * D), np.stack(probs).reshape(n_kv_heads, G, T, -1)



# --- assignment 5: the streaming evaluator's masks and scores --------------------------------------------------

def banded_visible(query_stream, key_stream, n_sink: int, window: int) -> np.ndarray:
    """bool [T, L]: may the query at stream index query_stream[i] see the token at key_stream[j] (-1: an empty
    slot)? In a sink cache the query at t sees the first S tokens and the last W up to itself (W includes t)."""
    visible = np.zeros((len(query_stream), len(key_stream)), dtype=bool)
    for i, t in enumerate(query_stream):
        for j, s in enumerate(key_stream):
            visible[i, j] = 0 <= s <= t and (s < n_sink or t - s < window)
    return visible


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row in float64: [T, V] + [T] -> [T]. log-sum-exp after taking out the
    row max, which makes it exact for any finite logits."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1)
    lse = top + np.log(np.exp(x - top[:, None]).sum(axis=-1))
    return lse - x[np.arange(len(targets)), targets]


# --- assignment 6: attention with a sink logit ----------------------------------------------------------------

def sink_attention(q, k, v, sink_logits, visible=None):
    """Attention with one sink logit sigma_h per query head, float64, head by head (gpt-oss; softmax1 when sigma=0):

        p_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)),   s_ij = q_i . k_j / sqrt(D) over the visible keys.

    The sink takes probability but adds no value. q [T, H, D]; k, v [L, Hkv, D] (head h reads KV head h // G);
    sink_logits [H]; visible bool [T, L] or None -> (output [T, H, D], probabilities [H, T, L])."""
    T, H, D = q.shape
    G = H // k.shape[1]
    out, probs = np.zeros((T, H, D)), np.zeros((H, T, k.shape[0]))
    for h in range(H):
        s = q[:, h].astype(np.float64) @ k[:, h // G].T.astype(np.float64) / np.sqrt(D)  # [T, L]
        if visible is not None:
            s = np.where(visible, s, -np.inf)
        m = np.maximum(s.max(axis=-1, keepdims=True), sink_logits[h])  # the max over the scores and the sink
        e = np.exp(s - m)
        probs[h] = e / (e.sum(axis=-1, keepdims=True) + np.exp(sink_logits[h] - m))
        out[:, h] = probs[h] @ v[:, h // G]
    return out, probs


# --- assignment 7: eviction by attention ------------------------------------------------------------------------

def tova_victim(probs) -> int:
    """TOVA (Oren et al. 2024): the token the current query attends to least, attention averaged over heads.
    probs [H, L] -> an index into L (the first one on a tie). `top_rule` below, asked to keep all but one."""
    L = len(probs[0])
    mean = {j: sum(probs[h][j] for h in range(len(probs))) / len(probs) for j in range(L)}
    return (set(range(L)) - top_rule(list(range(L)), mean, L - 1)).pop()


def h2o_victim(scores, n_recent: int) -> int:
    """H2O (Zhang et al. 2023): among the tokens older than the n_recent most recent, the one with the least
    accumulated attention. scores [L] in stream order -> an index into L (the first one on a tie). `top_rule`
    below, over the older tokens, asked to keep all but one."""
    older = list(range(len(scores) - n_recent))
    return (set(older) - top_rule(older, dict(enumerate(scores)), len(older) - 1)).pop()


# --- eviction policies: plain references -------------------------------------------------------------------------


def h2o_rule(candidates: list[int], score: dict[int, float], heavy: int, recent: int) -> set[int]:
    """H2O on one KV head: the recent - 1 newest candidates, plus the `heavy` best-scored of the others
    (ties: the newer one stays). The current token of the next step completes the recent window."""
    newest = sorted(candidates)[len(candidates) - (recent - 1):] if recent > 1 else []
    others = sorted((t for t in candidates if t not in newest), key=lambda t: (score[t], t))
    return set(newest) | set(others[len(others) - heavy:] if heavy else [])


def top_rule(candidates: list[int], score: dict[int, float], keep: int) -> set[int]:
    """Keep the `keep` best-scored candidates (ties: the newer one stays): TOVA's rule, and SnapKV's window."""
    ranked = sorted(candidates, key=lambda t: (score[t], t))
    return set(ranked[len(ranked) - keep:]) if keep else set()


def snapkv_votes(window_probs: np.ndarray, w: int, kernel: int) -> np.ndarray:
    """SnapKV's vote for each of the first P - w prompt tokens, one KV head: probs [G, w, P] -> [P - w].
    Summed over the G query heads and the w queries, then averaged over `kernel` neighbours, zeros outside."""
    vote = window_probs.sum(axis=(0, 1), dtype=np.float64)[:-w]
    half = kernel // 2
    return np.array([vote[max(0, j - half):j + half + 1].sum() / kernel for j in range(len(vote))])


class EvictionReference:
    """H2O / TOVA / SnapKV with every key kept and the rule re-applied from scratch at each chunk.

    policy "h2o": budget, heavy (default budget // 2); "tova": budget; "snapkv": capacity, window, w, kernel.
    positions "text" (a token's position is its index in the stream) or "cache" (per KV head, the kept tokens in
    stream order are at 0..n-1 and the chunk follows). `forward(ids)` -> logits [T, V] (float32, as the model).
    """

    def __init__(self, model, policy: str, budget: int | None = None, heavy: int | None = None,
                 positions: str = "text", capacity: int | None = None, window: int | None = None,
                 w: int = 32, kernel: int = 5):
        c = model.config
        self.model, self.policy, self.positions = model, policy, positions
        if policy == "snapkv":
            budget = capacity + window
        self.budget, self.capacity, self.w, self.kernel = budget, capacity, w, kernel
        self.heavy = budget // 2 if heavy is None else heavy
        L, self.Hkv, self.D = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
        self.G = c.num_attention_heads // self.Hkv
        self.k = [np.zeros((0, self.Hkv, self.D), np.float32) for _ in range(L)]  # pre-RoPE keys of every token
        self.v = [np.zeros((0, self.Hkv, self.D), np.float32) for _ in range(L)]
        self.kept = [[set() for _ in range(self.Hkv)] for _ in range(L)]  # stream indices each KV head keeps
        self.score = [[{} for _ in range(self.Hkv)] for _ in range(L)]  # H2O totals, SnapKV pins
        self.seen = 0

    def forward(self, token_ids) -> np.ndarray:
        m, c = self.model, self.model.config
        ids = np.asarray(token_ids)
        T, n_all, H, D = len(ids), self.seen, c.num_attention_heads, self.D
        x = m.embed_tokens[ids].astype(np.float32)  # [T, d_model]
        attended = []  # per layer: probs [H, T, n_all + T]
        for li, layer in enumerate(m.layers):
            h = rms_norm(x, layer.input_layernorm, c.rms_norm_eps)
            qkv = linear(h, layer.qkv_proj, layer.qkv_bias)
            q = qkv[:, :H * D].reshape(T, H, D)
            k = qkv[:, H * D:(H + self.Hkv) * D].reshape(T, self.Hkv, D)
            v = qkv[:, (H + self.Hkv) * D:].reshape(T, self.Hkv, D)
            K, V = np.concatenate([self.k[li], k]), np.concatenate([self.v[li], v])  # [n_all + T, Hkv, D]
            out = np.zeros((T, H, D), np.float32)
            probs = np.zeros((H, T, n_all + T))
            for j in range(self.Hkv):
                kept = sorted(self.kept[li][j])
                visible = np.zeros((T, n_all + T), dtype=bool)  # [T, n_all + T]: query i may see key t
                visible[:, kept] = True
                visible[:, n_all:] = np.tril(np.ones((T, T), dtype=bool))
                if self.positions == "text":
                    key_pos, query_pos = np.arange(n_all + T), n_all + np.arange(T)
                else:  # kept tokens at 0..n-1 in stream order, the chunk after them
                    key_pos = np.zeros(n_all + T, dtype=np.int64)
                    key_pos[kept] = np.arange(len(kept))
                    key_pos[n_all:] = len(kept) + np.arange(T)
                    query_pos = len(kept) + np.arange(T)
                keys = apply_rope(K[:, j:j + 1], rotation(key_pos, c.inv_freq()))[:, 0]  # [n_all + T, D]
                for g in range(self.G):
                    head = j * self.G + g
                    query = apply_rope(q[:, head:head + 1], rotation(query_pos, c.inv_freq()))[:, 0]  # [T, D]
                    s = (query @ keys.T).astype(np.float64) / np.sqrt(D)  # [T, n_all + T]
                    s[~visible] = -np.inf
                    p = np.exp(s - s.max(axis=1, keepdims=True))
                    p /= p.sum(axis=1, keepdims=True)
                    out[:, head] = p @ V[:, j]
                    probs[head] = p
            x = x + linear(out.reshape(T, H * D), layer.o_proj, layer.o_bias)
            h = rms_norm(x, layer.post_attention_layernorm, c.rms_norm_eps)
            gate_up = linear(h, layer.gate_up_proj, layer.gate_up_bias)
            d_ff = gate_up.shape[1] // 2  # intermediate_size
            x = x + linear(silu(gate_up[:, :d_ff]) * gate_up[:, d_ff:], layer.down_proj, layer.down_bias)
            attended.append(probs)
            self.k[li], self.v[li] = K, V
        logits = rms_norm(x, m.norm, c.rms_norm_eps) @ m.lm_head.T
        for li, probs in enumerate(attended):
            self._apply_rule(li, probs, n_all, T)
        self.seen += T
        return logits

    def _apply_rule(self, li: int, probs: np.ndarray, n_all: int, T: int):
        chunk = list(range(n_all, n_all + T))
        slots = self.budget - 1  # tokens kept between chunks
        for j in range(self.Hkv):
            candidates = sorted(self.kept[li][j]) + chunk
            heads = probs[j * self.G:(j + 1) * self.G]  # [G, T, n_all + T]
            score = self.score[li][j]
            if self.policy == "h2o":
                for t in candidates:  # every query of the chunk, every query head of this KV head
                    score[t] = score.get(t, 0.0) + float(heads[:, :, t].sum())
                keep = h2o_rule(candidates, score, self.heavy, self.budget - self.heavy) \
                    if len(candidates) > slots else set(candidates)
            elif self.policy == "tova":
                last = probs[:, -1].mean(axis=0)  # the chunk's last query, averaged over all H heads
                keep = top_rule(candidates, {t: last[t] for t in candidates}, min(slots, len(candidates)))
            else:  # snapkv: the prompt is compressed and pinned; after it, the oldest unpinned token goes first
                if n_all == 0:
                    pinned = list(range(T))
                    if T > self.capacity:
                        votes = snapkv_votes(heads[:, -self.w:], self.w, self.kernel)
                        order = sorted(range(T - self.w), key=lambda t: (-votes[t], t))  # best first, older first
                        pinned = order[:self.capacity - self.w] + list(range(T - self.w, T))
                    for t in pinned:
                        score[t] = np.inf
                    keep = set(pinned)
                else:
                    for t in chunk:
                        score[t] = float(t)
                    keep = top_rule(candidates, score, min(slots, len(candidates)))
            self.kept[li][j] = keep

    def retained(self) -> np.ndarray:
        """[layers, Hkv, n] sorted stream indices, as the fast caches' `retained()`."""
        return np.array([[sorted(s) for s in layer] for layer in self.kept])
