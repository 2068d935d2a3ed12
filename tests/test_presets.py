"""The papers' presets (experiments/_presets.py): parameter counts against the published models (never
allocated: `jax.eval_shape`), the registry's errors, and two training steps of every reduced variant."""

import pathlib
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments._presets import get_preset, PRESETS  # noqa: E402


# --- reference counts, from the layer shapes of the published Flax code (independent of vdmpp) ---------


def _dense(fan_in, fan_out, bias=True):
    return fan_in * fan_out + (fan_out if bias else 0)


def _conv(k, cin, cout):
    return k * k * cin * cout + cout


def vdm_score_unet(n_embd=128, n_layer=32, channels=3, fourier_freqs=2):
    """google-research/vdm@dc27b98 model_vdm.py `ScoreUNet` under configs/cifar10.py."""
    gn = lambda c: 2 * c  # Flax GroupNorm: scale and bias
    cond = _dense(n_embd + 1, 4 * n_embd) + _dense(4 * n_embd, 4 * n_embd)  # temb ++ conditioning scalar
    conv_in = _conv(3, channels * (1 + 2 * fourier_freqs), n_embd)

    def resnet(cin, cout):
        return (
            gn(cin)
            + _conv(3, cin, cout)
            + _dense(4 * n_embd, cout, bias=False)  # cond_proj
            + gn(cout)
            + _conv(3, cout, cout)
            + (_dense(cin, cout) if cin != cout else 0)  # nin_shortcut
        )

    attn = gn(n_embd) + 4 * _dense(n_embd, n_embd)  # q, k, v, proj_out (num_heads=1)
    down = n_layer * resnet(n_embd, n_embd)
    mid = 2 * resnet(n_embd, n_embd) + attn
    up = (n_layer + 1) * resnet(2 * n_embd, n_embd)
    out = gn(n_embd) + _conv(3, n_embd, channels)
    return cond + conv_in + down + mid + up + out


def md4_text_transformer(vocab=27, feature_dim=64, heads=12, layers=12):
    """google-deepmind/md4@b9fbf29: backward.py `DiscreteClassifier` (outside_embed) + `CondEmbedding` +
    networks/transformer.py `Transformer` (glu, adaln_zero) under configs/md4/text8.py."""
    dim = feature_dim * heads
    hidden = 32 * ((int(2 * 4 * dim / 3) + 31) // 32)  # FeedForward, multiple_of=32
    embed = (vocab + 1) * feature_dim
    cond = _dense(feature_dim, 4 * feature_dim) + _dense(4 * feature_dim, feature_dim)
    inp = _dense(feature_dim, dim)  # embed_input=False: Dense(dim)
    block = 4 * dim * dim + 3 * dim * hidden + _dense(feature_dim, 6 * dim)  # no biases; adaLN-zero Dense
    final = _dense(feature_dim, 2 * dim) + dim * vocab  # adaLN Dense, output Dense without bias
    return embed + cond + inp + layers * block + final


def md4_uvit(vocab=256, channels=3, features=256, n_layers=8, dit_layers=20, hidden=768, image=64, patch=2):
    """md4@b9fbf29: backward.py (Embed, CondEmbedding, UNet5DWrapper) + networks/uvit.py + dit.py under
    configs/md4/imagenet64.py (unconditional: classes=-1)."""
    embed = (vocab + 1) * features
    cond = _dense(features, 4 * features) + _dense(4 * features, features)
    cond_gn = lambda c: _dense(features, 2 * c)  # CondGroupNorm: Dense(2c) of the conditioning

    def res(cin, cout):
        return (
            cond_gn(cin)
            + _conv(3, cin, cout)
            + cond_gn(cout)
            + _conv(3, cout, cout)
            + (_dense(cin, cout) if cin != cout else 0)
        )

    conv_in = _conv(3, channels * features, features)
    dit_block = 3 * _dense(hidden, hidden) + hidden * hidden + _dense(hidden, 4 * hidden) + _dense(4 * hidden, hidden)
    dit_block += _dense(features, 6 * hidden)  # adaLN-zero
    num_patches = (image // patch) ** 2
    dit = patch * patch * features * hidden + hidden + num_patches * hidden  # patch conv, learned positions
    dit += dit_layers * dit_block + _dense(features, 2 * hidden) + _dense(hidden, patch * patch * features)
    out = cond_gn(features) + _conv(3, features, channels * vocab)
    return (
        embed
        + cond
        + conv_in
        + n_layers * res(features, features)
        + dit
        + (n_layers + 1) * res(2 * features, features)
        + out
    )


# name, reference count, where it comes from, our count minus the reference (architectural, explained)
REFERENCES = {
    "vdm_cifar10": (vdm_score_unet(), "VDM ScoreUNet from configs/cifar10.py", -512),  # no class-scalar input column
    "md4_text8": (md4_text_transformer(), "MD4 text8 transformer from configs/md4/text8.py", 0),
    "md4_imagenet64": (md4_uvit(), "MD4 imagenet64 UViT (unconditional) from configs/md4/imagenet64.py", 1001 * 256),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_parameter_counts_match_the_published_models(name):
    """Within 5 % (in fact exact, up to the stated architectural difference); counted by `jax.eval_shape`."""
    preset = get_preset(name)
    abstract = preset.abstract()
    assert not any(isinstance(x, jax.Array) for x in jax.tree.leaves(abstract))  # nothing allocated
    ours = vd.nn.num_parameters(abstract)
    reference, _, delta = REFERENCES[name]
    assert ours == reference + delta
    assert abs(ours - reference) / reference < 0.05
    assert abs(ours - preset.reference_params) / preset.reference_params < 0.05


def test_reference_formulas_match_the_numbers_in_the_docs():
    assert vdm_score_unet() == 30_578_179
    assert md4_text_transformer() == 88_734_272
    assert md4_uvit() == 204_595_712  # Shi & Titsias' table: 204M


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown preset 'vdm_cifar100'; choose one of vdm_cifar10, vdm_cifar10_tiny"):
        get_preset("vdm_cifar100")


def test_tiny_variants_keep_the_published_structure():
    for name in REFERENCES:
        full, tiny = get_preset(name), get_preset(name + "_tiny")
        assert tiny.network is full.network and tiny.kind == full.kind
        for option in ("fourier_features", "scale_shift", "glu", "depth_scaled_init", "channel_mults", "patch_size"):
            assert tiny.network_kwargs.get(option) == full.network_kwargs.get(option), (name, option)
        assert tiny.num_parameters() < 200_000


class _Denoiser(eqx.Module):
    """The masked denoiser `(z, lam) -> logits` of a network, with per-example dropout keys."""

    model: eqx.Module
    key: jax.Array

    def __call__(self, z, lam):
        key = jr.fold_in(
            self.key, jnp.sum(z.astype(jnp.uint32) * jnp.arange(1, z.size + 1, dtype=jnp.uint32).reshape(z.shape))
        )
        return self.model(z, lam, key=key, inference=False)  # pyright: ignore[reportCallIssue]


def _loss(model, x, key, preset):
    if preset.kind == "gaussian":
        den = vd.nn.as_denoiser(model, inference=False, key=key)
        z = vd.losses.uint8_to_float(x, preset.num_levels)
        return jnp.mean(vd.losses.weighted_loss(den, z, key=key, schedule=preset.schedule, weighting=preset.weighting))
    return jnp.mean(
        vd.masked.elbo(_Denoiser(model, key), x, key=key, schedule=preset.schedule, mask_id=preset.num_levels)
    )


@eqx.filter_jit
def _step(model, opt_state, x, key, preset, optimizer):
    loss, grads = eqx.filter_value_and_grad(_loss)(model, x, key, preset)
    with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss


# XLA's CPU compile of the U-Net and U-ViT gradients takes 10+ s even at toy sizes: those two are `slow`;
# their forward passes (both precisions) and jaxprs are checked in CI by tests/test_nn_precision.py.
_TWO_STEPS = [
    "md4_text8_tiny",
    pytest.param("vdm_cifar10_tiny", marks=pytest.mark.slow),
    pytest.param("md4_imagenet64_tiny", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", _TWO_STEPS)
def test_tiny_variants_train_two_steps(name):
    """Two AdamW steps with the preset's optimiser settings, loss, schedule and dropout on random data."""
    preset = get_preset(name)
    model = preset.build(jr.key(0))
    optimizer = optax.adamw(preset.lr, b1=preset.b1, b2=preset.b2, eps=preset.eps, weight_decay=preset.weight_decay)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    dtype = jnp.uint8 if preset.kind == "gaussian" else jnp.int32
    x = jr.randint(jr.key(1), (preset.batch_size, *preset.data_shape), 0, preset.num_levels).astype(dtype)
    before = eqx.filter(model, eqx.is_inexact_array)
    losses = []
    for i in range(2):
        model, opt_state, loss = _step(model, opt_state, x, jr.key(10 + i), preset, optimizer)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[0] > 0
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), before, eqx.filter(model, eqx.is_inexact_array))
    assert max(jax.tree.leaves(moved)) > 0


def test_registry_has_every_preset_and_its_tiny_variant():
    assert set(PRESETS) == {n for base in REFERENCES for n in (base, base + "_tiny")}
    for preset in PRESETS.values():
        assert {"lr", "batch_size", "ema_decay", "warmup", "steps", "lr_schedule"} <= set(preset.run_overrides())
