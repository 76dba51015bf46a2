"""minisink: a pure-NumPy reference implementation of attention sinks (StreamingLLM) on a real Llama model.

    model = minisink.load_model(path)          # config + weights
    tok = minisink.load_tokenizer(path)
    cache = model.new_cache()                   # full KV cache; new_cache(n_sink=4, window=1020): sink cache
    logits = model.forward(token_ids, cache)    # [T, V] float32 for the T new tokens; cache advanced
"""

from .cache import CacheError, FullCache, RecomputeWindow, SinkCache
from .config import ConfigError, LlamaConfig
from .model import InputError, Llama, load_model
from .weights import WeightsError


def load_tokenizer(path):
    """The tokenizer of a Hugging Face model folder (tokenizer.json + tokenizer_config.json)."""
    from .tokenizer import load_tokenizer as _load

    return _load(path)


__all__ = ["load_model", "load_tokenizer", "Llama", "LlamaConfig", "FullCache", "SinkCache", "RecomputeWindow",
           "ConfigError", "WeightsError", "CacheError", "InputError"]
