"""Attention maps and sink mass (attention_maps.py): against probabilities recomputed by hand, and on the real model
the paper's Fig. 2 observation (beyond the first two layers, much of the attention goes to the first token)."""

import numpy as np
import pytest

from minisink import attention_maps as am
from minisink.model import softmax
from minisink.rope import apply_rope, rotation
from tiny import tiny_model


def test_capture_shapes_rows_and_causality():
    model = tiny_model(0)
    ids = np.arange(3, 23)
    probs = am.capture(model, ids)
    H, T = model.config.num_attention_heads, len(ids)
    assert len(probs) == model.config.num_hidden_layers
    for p in probs:
        assert p.shape == (H, T, T)
        np.testing.assert_allclose(p.sum(-1), 1, atol=1e-5)
        assert np.all(np.triu(p, k=1) == 0)  # a query never sees a later key
        np.testing.assert_allclose(p[:, 0, 0], 1)  # the first query can only look at itself


def test_capture_layer0_matches_hand_computed_attention():
    """Layer 0's probabilities from the weights directly: RMSNorm, q/k projections, RoPE, causal softmax."""
    model = tiny_model(1)
    c = model.config
    ids = np.arange(10, 26)
    T, H, Hkv, D = len(ids), c.num_attention_heads, c.num_key_value_heads, c.head_dim
    x = model.embed_tokens[ids]
    layer = model.layers[0]
    h = x / np.sqrt((x * x).mean(-1, keepdims=True) + c.rms_norm_eps) * layer.input_layernorm
    qkv = h @ layer.qkv_proj.T
    rot = rotation(np.arange(T), c.inv_freq())
    q = apply_rope(qkv[:, :H * D].reshape(T, H, D), rot)
    k = apply_rope(qkv[:, H * D:(H + Hkv) * D].reshape(T, Hkv, D), rot)
    G = H // Hkv
    want = np.empty((H, T, T))
    for head in range(H):
        s = q[:, head] @ k[:, head // G].T / np.sqrt(D)
        want[head] = softmax(np.where(np.tril(np.ones((T, T), bool)), s, -np.inf))
    np.testing.assert_allclose(am.capture(model, ids)[0], want, atol=1e-5)


def test_sink_mass_and_uniform():
    T, H = 10, 2
    p = np.zeros((H, T, T), dtype=np.float32)
    p[0, :, 0] = 1  # head 0: everything on token 0
    for t in range(T):
        p[1, t, :t + 1] = 1 / (t + 1)  # head 1: uniform
    mass = am.sink_mass([p, p], first_query=4)
    assert mass.shape == (2, H)
    np.testing.assert_allclose(mass[:, 0], 1)
    np.testing.assert_allclose(mass[:, 1], am.uniform_mass(T, 4))
    assert am.uniform_mass(T, 4) == pytest.approx(np.mean([1 / 5, 1 / 6, 1 / 7, 1 / 8, 1 / 9, 1 / 10]))
    with pytest.raises(ValueError):
        am.sink_mass([p[:, :3, :3]], first_query=4)


def test_format_table():
    mass = np.array([[0.1, 0.2, 0.9], [0.6, 0.7, 0.8], [0.0, 1.0, 0.5]])
    summary = am.format_table(mass, 0.05)
    assert summary.splitlines()[2].split()[:5] == ["1", "0.700", "0.600", "0.800", "3"]
    full = am.format_table(mass, 0.05, heads=True)
    assert "h2" in full and "0.900" in full and "uniform attention would give 0.050" in full
    assert "layers >= 2: 0.500" in full and "nan" not in am.format_table(mass[:1], 0.05)  # a 1-layer model has none


def test_capture_rejects_long_prompts():
    with pytest.raises(ValueError, match="one forward"):
        am.capture(tiny_model(0), np.zeros(am.PREFILL_CHUNK + 1, dtype=int))


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    model = tiny_model(0)
    probs = am.capture(model, np.arange(30))
    a = am.plot_maps(probs, tmp_path / "maps.png")
    b = am.plot_sink_mass(am.sink_mass(probs), tmp_path / "mass.png", 0.1)
    for f in (a, b):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'minisink\[plot\]'"):
        am.plot_sink_mass(np.zeros((2, 2)), tmp_path / "x.png")


@pytest.mark.real
def test_real_model_puts_attention_on_the_first_token(real_model, real_tokenizer):
    """Fig. 2: from layer 2 on, SmolLM2's heads put far more attention on token 0 than uniform attention would."""
    ids = real_tokenizer.encode(am.DEFAULT_PROMPT)
    assert 80 <= len(ids) <= 140
    mass = am.sink_mass(am.capture(real_model, ids))
    uniform = am.uniform_mass(len(ids))
    assert mass.shape == (30, 9)
    assert mass[2:].mean() > 5 * uniform
    assert (mass[2:] > 0.5).mean() > 0.2  # many heads put most of their attention there


def test_the_sink_column_is_visible_in_the_map(tmp_path):
    """Key 0 is the first column of the map: it must show as a bright vertical line, not hide under the axis."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    T = 109  # the default prompt's length
    p = np.full((1, T, T), 1e-4, dtype=np.float32)
    p[0, :, 0] = 1.0  # everything on the sink: a bright column (the diagonal stays dark)
    png = imread(am.plot_maps([p], tmp_path / "maps.png", layers=(0,)))  # [rows, cols, RGBA] in 0..1
    bright = (png[..., 0] > 0.8) & (png[..., 1] > 0.8) & (png[..., 2] < 0.4)  # viridis' yellow at 1.0
    left = bright[:, : png.shape[1] // 2].sum(axis=0)  # per pixel column, left of the colorbar
    assert left.max() >= 0.5 * png.shape[0]  # one column is bright over most of the figure's height: the sink's
