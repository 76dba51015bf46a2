"""The sink's anatomy (minisink/anatomy.py) against transformers' attention probabilities and hidden states.

The sink metric is recomputed here the way sail-sg/Attention-Sink's `compute_attention_sink` does it (key k's
column of the attention divided by T - k, summed over queries, thresholded at eps, averaged over samples, layers and
heads), from transformers' eager attention probabilities on the same weights: tiny random models and SmolLM2.
"""

import numpy as np
import pytest

from minisink import anatomy
from minisink.spec import new_cache
from tiny import tiny_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def gu_metric(attentions: list, eps: float):
    """attentions: per sample, a tuple of per-layer [1, H, T, T] tensors -> (importance [S, L, H, T], metric [T])."""
    A = torch.stack([torch.cat(list(layers), dim=0) for layers in attentions]).double()  # [S, L, H, T, T]
    S, L, H, T, _ = A.shape
    ratios = torch.arange(T, 0, -1)[None, None, None, :].expand(S, L, H, T, T).to(A)
    scores = (A / ratios).sum(dim=-2)  # [S, L, H, T]
    return scores.numpy(), ((scores > eps).double().mean(dim=(0, 1, 2)) * 100).numpy()


def hf_attentions(model, token_samples):
    with torch.no_grad():
        return [model(torch.tensor([ids.tolist()]), output_attentions=True).attentions for ids in token_samples]


def compare(minisink_model, hf, token_samples, eps):
    alphas = anatomy.sample_alphas(minisink_model, token_samples)
    oracle_alphas, oracle_metric = gu_metric(hf_attentions(hf, token_samples), eps)
    np.testing.assert_allclose(alphas, oracle_alphas, atol=1e-4)
    near = np.abs(oracle_alphas - eps) < 1e-4  # a score this close to eps could fall either way in float32
    assert not near.any(), "pick another seed: an importance score sits on the threshold"
    np.testing.assert_allclose(anatomy.sink_metric(alphas, eps), oracle_metric, atol=1e-9)
    return alphas


def test_sink_metric_matches_gu_et_al_on_tiny_models(tmp_path):
    from test_oracle import hf_model

    for seed, overrides in [(0, {}), (1, dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3))]:
        hf = hf_model(seed, **overrides)
        hf.save_pretrained(tmp_path / str(seed))
        model = __import__("minisink").load_model(tmp_path / str(seed))
        rng = np.random.default_rng(seed)
        token_samples = [rng.integers(0, 97, 24) for _ in range(3)]
        alphas = compare(model, hf, token_samples, eps=0.3)
        assert 0 < anatomy.sink_metric(alphas)[0] < 100  # the threshold splits the heads: the test can fail
        per_layer = anatomy.sink_metric_per_layer(alphas)
        assert per_layer.shape == (len(alphas[0]),) and np.isclose(per_layer.mean(), anatomy.sink_metric(alphas)[0])


def test_hidden_states_match_transformers(tmp_path):
    from test_oracle import hf_model

    hf = hf_model(2, num_hidden_layers=3)
    hf.save_pretrained(tmp_path)
    model = __import__("minisink").load_model(tmp_path)
    ids = np.random.default_rng(2).integers(0, 97, 30)
    ours = anatomy.hidden_states(model, ids)  # [layers, T, d_model]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids.tolist()]), output_hidden_states=True).hidden_states  # embeddings, layer 0..
    for n in range(len(ours) - 1):  # transformers' last entry is after the final norm
        np.testing.assert_allclose(ours[n], theirs[n + 1][0].numpy(), rtol=1e-4, atol=1e-4)


def test_massive_activations_found_and_intervened():
    states = np.random.default_rng(0).standard_normal((3, 10, 16)).astype(np.float32)
    states[1:, 0, 5] = 5000.0  # a massive activation appears at layer 1, token 0, dim 5, and stays
    states[2, 4, 9] = -3000.0
    m = anatomy.massive_activations(states)
    assert m.first_layer() == 1 and (m.position[1, 0], m.dim[1, 0]) == (0, 5)
    assert (m.position[2, 0], m.dim[2, 0], m.top[2, 1], m.dim[2, 1]) == (0, 5, 3000.0, 9)
    assert not m.is_massive()[0].any() and "massive at token positions 0 'a', 4 'e'" in anatomy.format_massive(
        m, list("abcdefghij"))
    x = states[2].copy()
    hook = anatomy.Intervention(2, [5, 9], [7.0, 0.0])
    hook(1, x)  # another layer: untouched
    assert np.array_equal(x, states[2]) and hook.changed == 0
    hook(2, x)
    assert (x[0, 5], x[4, 9], hook.changed) == (7.0, 0.0, 2)
    assert np.array_equal(np.delete(x.ravel(), [5, 4 * 16 + 9]), np.delete(states[2].ravel(), [5, 4 * 16 + 9]))


def test_layer_hook_can_change_the_forward():
    model = tiny_model()
    ids = np.arange(12)
    plain = model.forward(ids, new_cache(model))
    assert np.array_equal(model.forward(ids, new_cache(model), layer_hook=lambda n, x: None), plain)

    def zero_last(n, x):
        if n == 2:
            x[:] = 0
    assert np.allclose(model.forward(ids, new_cache(model), layer_hook=zero_last), 0)  # norm(0) = 0: logits 0


@pytest.mark.parametrize("n", [0, -1, 4, 10**11])
def test_sample_counts_out_of_range_are_refused_before_any_work(n):
    """Issue 22: `attn --sink-metric -1` / `--massive -1` ended in "need at least one array to stack" after the
    table printed; a huge count would ask np.linspace for hundreds of GB."""
    with pytest.raises(ValueError, match=rf"asked for {n} samples, and the text has 3 lines .* 1 to 3 samples"):
        anatomy.samples(None, "one line\ntwo lines\n\nthree lines\n", n)


from test_cli_experiments import WORDS, checkpoint, run  # noqa: E402,F401  (the tiny checkpoint with a tokenizer)


def test_attn_sink_metric_and_massive_flags(checkpoint, tmp_path, capsys):  # noqa: F811
    text = tmp_path / "lines.txt"
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(WORDS[i] for i in rng.integers(0, 96, 300)) for _ in range(6)))
    code, out, _ = run(capsys, "attn", "--model", checkpoint, "--prompt", "w1 w2 w3 w4 w5 w6 w7 w8",
                       "--sink-metric", 3, "--massive", 2, "--samples-from", text)
    assert code == 0 and "Sink_1 =" in out and "per layer:" in out and "top/median" in out


@pytest.mark.real
def test_sink_metric_matches_gu_et_al_on_smollm2(real_model, real_tokenizer, real_model_dir):
    hf = transformers.AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    text = "\n".join(["In the beginning God created the heaven and the earth. And the earth was without form, "
                      "and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the "
                      "face of the waters. And God said, Let there be light: and there was light."] * 3)
    token_samples = anatomy.samples(real_tokenizer, text, 2)
    alphas = compare(real_model, hf, token_samples, eps=0.3)
    assert anatomy.sink_metric(alphas)[0] > 50  # SmolLM2 has a sink on the first token in most heads


@pytest.mark.real
def test_massive_activation_at_the_first_token_and_its_intervention(real_model, real_tokenizer):
    """Sun et al.'s finding on SmolLM2: one huge entry at the first token; zeroing it wrecks the model, setting it
    to its mean does not."""
    text = open(__import__("weights_fetch").fetch_kjv(progress=False), encoding="utf-8").read()[:400_000]
    token_samples = anatomy.samples(real_tokenizer, text, 3, 128)
    m = anatomy.massive_activations(anatomy.hidden_states(real_model, token_samples[0]))
    layer = m.first_layer()
    assert layer is not None and m.position[layer, 0] == 0 and m.top[layer, 0] > 1000 * m.median[layer]
    dims = [int(m.dim[layer, 0])]
    means = anatomy.massive_means(real_model, token_samples[1:], layer, dims)
    plain = anatomy.intervention_ppl(real_model, token_samples[:1])
    zero = anatomy.intervention_ppl(real_model, token_samples[:1], anatomy.Intervention(layer, dims, [0.0]))
    mean = anatomy.intervention_ppl(real_model, token_samples[:1], anatomy.Intervention(layer, dims, means))
    assert zero > 10 * plain and abs(mean / plain - 1) < 0.1
