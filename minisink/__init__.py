"""minisink: a pure-NumPy reference implementation of attention sinks (StreamingLLM) on a real Llama model.

    model = minisink.load_model(path)          # config + weights
    tok = minisink.load_tokenizer(path)
    cache = minisink.new_cache(model)           # the full KV cache; new_cache(model, "sink", sinks=4, window=1020):
                                                # StreamingLLM's sink cache (minisink/spec.py: every policy)
    logits = model.forward(token_ids, cache)    # [T, V] float32 for the T new tokens; cache advanced
"""

from .cache import CacheError, FullCache, RecomputeWindow, SinkCache
from .config import ConfigError, LlamaConfig
from .model import InputError, Llama, load_model
from .spec import CacheSpec, new_cache
from .weights import WeightsError


def load_tokenizer(path):
    """The tokenizer of a Hugging Face model folder (tokenizer.json + tokenizer_config.json)."""
    from .tokenizer import load_tokenizer as _load

    return _load(path)


__all__ = ["load_model", "load_tokenizer", "new_cache", "CacheSpec", "Llama", "LlamaConfig", "FullCache", "SinkCache",
           "RecomputeWindow", "ConfigError", "WeightsError", "CacheError", "InputError"]
