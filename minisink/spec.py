"""One cache spec: which policy, how many sinks, how large a window; parsed once, shown once, built by one factory.

Every command, experiment and test makes its cache here: `new_cache(model, "sink", sinks=4, window=1020)`, or from
a `CacheSpec` (what the command line parses, `minisink/cli.py::cache_spec`). `str(spec)` is what a run prints.
The model imports no policy: it talks to whatever this returns through the Cache protocol (cache.py).

The words, with one meaning everywhere (the paper's "4 + 1020", Xiao et al. 2024, Sec. 3.2):
- sinks S: the first S tokens of the stream, pinned.
- window W: the W most recent tokens, the current one included, NOT counting the sinks. A sink cache holds at
  most S + W tokens; window attention is the sink cache with S = 0.
- budget N: for the policies that choose by attention (h2o, tova), the tokens a query attends to, itself
  included: the same memory as a sink cache with S + W = N.

Policies and their defaults (DEFAULT_CACHE = 1024 tokens in all, as the paper's 4 + 1020):
    dense       every token (FullCache); takes no sizes
    sink        S sinks + W recent (SinkCache); S = 4, W = 1024 - S
    window      W recent, no sinks (SinkCache with S = 0); W = 1024
    recompute   sliding window with re-computation (RecomputeWindow): S + W tokens, S = 0, W = 1024 - S
    h2o, tova   budget N (eviction.py); N = 1024; h2o's `heavy` option defaults to N // 2
    snapkv      the prompt compressed to `capacity` tokens (an option) + W recent (eviction.py)
renumber=False keeps positions in the text instead of positions within the cache (sink and window only).
Other options: position_offset (dense, sink, window), heavy and positions (h2o, tova), capacity, w, kernel,
positions (snapkv).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cache import CacheError, FullCache, RecomputeWindow, SinkCache
from .eviction import H2OCache, SnapKVCache, TOVACache

POLICIES = ("dense", "sink", "window", "recompute", "h2o", "tova", "snapkv")
BY_ATTENTION = ("h2o", "tova")  # choose what to keep by attention, within a budget; decide per token
DEFAULT_CACHE = 1024  # tokens in all, for every bounded policy: sink 4 + 1020, window 1024, h2o budget 1024
DEFAULT_SINKS = 4  # the paper's default (Table 2: 4 sinks as good as 8)
OPTIONS = {"dense": {"position_offset"}, "sink": {"position_offset"}, "window": {"position_offset"},
           "recompute": set(), "h2o": {"heavy", "positions"}, "tova": {"positions"},
           "snapkv": {"capacity", "w", "kernel", "positions"}}


def is_size(value) -> bool:
    """An integer >= 0 that is not a bool (True would count as 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class CacheSpec:
    """A cache, described: `CacheSpec.parse` fills the defaults and checks every field, `build` makes the cache."""

    policy: str  # one of POLICIES
    sinks: int = 0  # pinned first tokens (sink, recompute; window: always 0)
    window: int | None = None  # recent tokens, the current one included, excluding the sinks; None: unbounded
    budget: int | None = None  # h2o, tova: tokens a query attends to, itself included
    renumber: bool = True  # positions within the cache (the paper); False: positions in the text (sink, window)
    options: dict = field(default_factory=dict)  # policy-specific: see OPTIONS

    @classmethod
    def parse(cls, policy: str = "sink", sinks: int | None = None, window: int | None = None,
              budget: int | None = None, renumber: bool = True, **options) -> "CacheSpec":
        """The spec of `policy` with its defaults filled in; a CacheError names any size or option it does not take."""
        if policy not in POLICIES:
            raise CacheError(f"the cache policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        unknown = set(options) - OPTIONS[policy]
        if unknown:
            takes = ", ".join(sorted(OPTIONS[policy])) or "none"
            raise CacheError(f"the {policy} cache takes no option {', '.join(sorted(unknown))} (its options: {takes})")
        if "heavy" in options and options["heavy"] is None:
            del options["heavy"]
        if not renumber and policy not in ("sink", "window"):
            raise CacheError(f"renumber=False applies to the sink and window caches, not to {policy}")
        if budget is not None and policy not in BY_ATTENTION:
            raise CacheError("a budget goes with the h2o or tova policy (the sink cache takes sinks and a window)")
        if policy == "dense":
            if sinks is not None or window is not None:
                raise CacheError("the dense policy keeps every token: it takes neither sinks nor a window")
            return cls("dense", options=options)
        if policy in BY_ATTENTION:
            if sinks:
                raise CacheError(f"{policy} has no sinks: it keeps what attention points at (a budget N, "
                                 f"{'and heavy H' if policy == 'h2o' else 'nothing else'})")
            if window is not None:
                raise CacheError(f"{policy} takes a budget (the tokens a query attends to), not a window")
            return cls(policy, budget=DEFAULT_CACHE if budget is None else budget, options=options)
        if policy == "window":
            if sinks:
                raise CacheError("the window policy has no sinks (it is the sink cache with 0 sinks): use the sink "
                                 "policy")
            return cls("window", 0, DEFAULT_CACHE if window is None else window, renumber=renumber, options=options)
        if policy == "snapkv":
            if sinks:
                raise CacheError("snapkv has no sinks: the compressed prompt is pinned instead")
            if "capacity" not in options:
                raise CacheError("snapkv needs its prompt capacity: new_cache(model, 'snapkv', window=W, capacity=C)")
            return cls("snapkv", 0, DEFAULT_CACHE if window is None else window, options=options)
        sinks = (DEFAULT_SINKS if policy == "sink" else 0) if sinks is None else sinks
        if window is None and is_size(sinks):  # a bad size is left to the cache, whose error names it
            window = DEFAULT_CACHE - sinks
        return cls(policy, sinks, window, renumber=renumber, options=options)

    @property
    def tokens(self) -> int | None:
        """Tokens a query attends to at most, itself included (None: every token so far)."""
        if self.policy == "dense":
            return None
        if self.policy in BY_ATTENTION:
            return self.budget
        return self.sinks + self.window + self.options.get("capacity", 0)

    def __str__(self) -> str:
        S, W, N = self.sinks, self.window, self.budget
        if self.policy == "h2o":
            heavy = self.options.get("heavy", N // 2)
            what = f"budget {N} = {heavy} heavy + {N - heavy} recent"
        else:
            what = {"dense": "full cache", "window": f"window {W}", "tova": f"budget {N}",
                    "recompute": f"recompute, window {W}" + (f" + {S} sinks" if S else ""),
                    "sink": f"{S} sink{'s' * (S != 1)} + window {W}",
                    "snapkv": f"prompt {self.options.get('capacity')} + window {W}"}[self.policy]
        if self.policy in ("sink", "window") and not self.renumber:
            what += ", text positions (no renumbering)"
        return f"{self.policy}: {what}"

    def build(self, config):
        """The cache this spec describes, for a model of `config` (a LlamaConfig): the one cache factory."""
        o = self.options
        if self.policy == "dense":
            return FullCache(config, **o)
        if self.policy in ("sink", "window"):
            return SinkCache(config, self.sinks, self.window, self.renumber, **o)
        if self.policy == "recompute":
            return RecomputeWindow(config, self.window, self.sinks)
        if self.policy == "h2o":
            return H2OCache(config, self.budget, **o)
        if self.policy == "tova":
            return TOVACache(config, self.budget, **o)
        return SnapKVCache(config, window=self.window, **o)


def new_cache(model, policy: str | CacheSpec = "dense", **fields):
    """A fresh cache for `model` (a Llama, or its LlamaConfig): `policy` is a CacheSpec, or a policy name with the
    spec's fields (sinks, window, budget, renumber, options). `new_cache(model)` is the full cache;
    `new_cache(model, "sink", sinks=4, window=1020)` StreamingLLM's."""
    spec = policy if isinstance(policy, CacheSpec) else CacheSpec.parse(policy, **fields)
    if isinstance(policy, CacheSpec) and fields:
        raise CacheError("give a CacheSpec or a policy name with its fields, not both")
    return spec.build(getattr(model, "config", model))
