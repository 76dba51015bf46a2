"""A sink cache written for clarity, not speed: the oracle the ring buffer must equal (issue P2).

It keeps every token's key and value, exactly as computed at that token's step, forever. For the query at stream
index t it selects the first S and the last W tokens (itself included) and numbers them 0 .. n-1 in stream order
(positions within the cache, paper Sec. 3.2). Keys arrive rotated at their stream position (the rotation that
`begin` returns), so it first undoes that rotation, then rotates every selected key to its cache position, and
asks the model to rotate the query from t to its cache position n - 1. It takes one token per call.
"""

import numpy as np

from minisink.cache import KVBlock
from minisink.rope import apply_rope, rotation


class ReferenceSinkCache:
    def __init__(self, config, n_sink, window, renumber=True, position_offset=0):
        self.n_sink, self.window, self.renumber, self.offset = n_sink, window, renumber, position_offset
        self.inv_freq = config.inv_freq()
        self.keys = [[] for _ in range(config.num_hidden_layers)]  # per layer: pre-RoPE keys [Hkv, D], one per token
        self.values = [[] for _ in range(config.num_hidden_layers)]
        self.t = 0  # stream index of the token being fed

    def visible(self, t):
        """Stream indices the query at t attends to: the first S and the last W, in stream order."""
        return sorted(set(range(min(self.n_sink, t + 1))) | set(range(max(0, t - self.window + 1), t + 1)))

    def begin(self, T):
        assert T == 1, "the reference cache takes one token at a time"
        kept = np.array(self.visible(self.t))
        positions = np.arange(len(kept)) if self.renumber else kept  # within the cache, or in the text
        self.kept = kept
        self.unrotate = rotation(-np.array([self.offset + self.t]), self.inv_freq)
        self.key_rotation = rotation(self.offset + positions, self.inv_freq)
        self.query_rotation = rotation(positions[-1:] - self.t, self.inv_freq)  # from t to its cache position
        return rotation(np.array([self.offset + self.t]), self.inv_freq)

    def blocks(self, layer, k, v):
        self.keys[layer].append(apply_rope(k, self.unrotate)[0])  # back to the key before RoPE: [Hkv, D]
        self.values[layer].append(v[0])
        keys = np.stack([self.keys[layer][j] for j in self.kept])  # [n, Hkv, D]
        values = np.stack([self.values[layer][j] for j in self.kept])
        keys = apply_rope(keys, self.key_rotation)  # every retained key at its position in the cache
        return [KVBlock(keys.transpose(1, 2, 0), values.transpose(1, 0, 2), None, self.query_rotation)]

    def end(self):
        self.t += 1

    def retained(self):
        return np.array(self.visible(self.t - 1)) if self.t else np.array([], dtype=int)
