"""Mixed precision (THEORY §15), rematerialisation, and the networks behind the papers' presets (DiT, UViT,
the U-Net's VDM options)."""

import collections
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd
from jax.extend import core as jcore


BF16 = vd.nn.Precision(jnp.bfloat16)


def _perturb(model, seed, scale=0.1):
    """Randomise every float parameter (zero-initialised outputs would hide everything)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape).astype(x.dtype)) for x in leaves]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _eqns(jaxpr):
    """Every equation of a jaxpr, recursing into sub-jaxprs (jit, remat, custom_jvp, cond...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    yield from _eqns(sub.jaxpr)
                elif isinstance(sub, jcore.Jaxpr):
                    yield from _eqns(sub)


def _dtypes(vars_):
    return {str(v.aval.dtype) for v in vars_ if hasattr(v, "aval") and hasattr(v.aval, "dtype")}


# Tiny instances of every network with an example input; `blocks`: how many blocks `remat` wraps.
def _mlp(key):
    return vd.nn.MLP(6, width=16, depth=2, emb_dim=8, num_classes=3, key=key), jnp.linspace(-1.0, 1.0, 6), 2


def _transformer(key):
    return vd.nn.Transformer(5, 12, dim=16, depth=2, num_heads=2, mlp_ratio=2, key=key), jnp.arange(12) % 6, 2


def _unet_vdm(key):  # VDM's options: no downsampling, Fourier features, additive conditioning
    net = vd.nn.UNet(
        3,
        base_channels=8,
        channel_mults=(1,),
        num_res_blocks=2,
        attention_levels=(),
        num_groups=4,
        num_classes=3,
        fourier_features=(6, 8),
        scale_shift=False,
        key=key,
    )
    return net, jnp.sin(jnp.arange(4 * 4 * 3, dtype=jnp.float32)).reshape(4, 4, 3), 2 + 2 + 3


def _dit(key):
    net = vd.nn.DiT(27, 16, dim=32, depth=2, num_heads=2, embed_dim=16, cond_dim=16, key=key)
    return net, jnp.arange(16) % 28, 2


def _uvit(key):
    net = vd.nn.UViT(
        16, (4, 4, 3), features=8, num_res_blocks=1, dit_depth=1, dit_dim=16, dit_heads=2, num_groups=4, num_classes=3,
        key=key,
    )  # fmt: skip
    return net, jnp.arange(48).reshape(4, 4, 3) % 17, 1 + 1 + 2


def _token_unet(key):
    net = vd.nn.TokenUNet(**_rebuild_kwargs("TokenUNet"), key=key)
    return net, jnp.arange(16).reshape(4, 4, 1) % 6, 1 + 2 + 2


NETWORKS = {
    "MLP": _mlp,
    "Transformer": _transformer,
    "UNet_vdm": _unet_vdm,
    "DiT": _dit,
    "UViT": _uvit,
    "TokenUNet": _token_unet,
}
_TAKES_LABEL = {"MLP", "UNet_vdm", "UViT"}


def _call(name):
    def f(model, x, lam):
        kwargs = {"label": 1} if name in _TAKES_LABEL else {}
        return model(x, lam, inference=True, **kwargs)

    return f


@pytest.mark.parametrize("name", NETWORKS)
def test_bfloat16_jaxpr_has_float32_islands(name):
    """Under bf16 every matmul/conv has bf16 operands; λ features, norm statistics, softmax and the output
    are float32; the parameters stay float32; `remat` wraps every block in a checkpoint."""
    net, x, num_blocks = NETWORKS[name](jr.key(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
    model = net.with_precision(BF16)
    closed = jax.make_jaxpr(_call(name))(model, x, jnp.float32(0.3))
    eqns = list(_eqns(closed.jaxpr))
    by_prim = collections.defaultdict(list)
    for e in eqns:
        by_prim[e.primitive.name].append(e)
    matmuls = by_prim["dot_general"] + by_prim["conv_general_dilated"]
    assert matmuls and all(_dtypes(e.invars) == {"bfloat16"} for e in matmuls), name
    islands = ["reduce_sum", "rsqrt", "sin", "cos", "exp", "reduce_max"]
    for prim in islands:
        for e in by_prim[prim]:
            assert _dtypes(e.invars) == {"float32"}, (name, prim, _dtypes(e.invars))
    assert by_prim["sin"] and by_prim["rsqrt"] and by_prim["reduce_sum"]  # λ features and norm statistics exist
    if name in ("Transformer", "DiT", "UViT"):
        assert by_prim["reduce_max"] and by_prim["exp"]  # softmax over the attention logits, in float32
    assert _dtypes(closed.jaxpr.outvars) == {"float32"}
    # float32 policy: no bfloat16 anywhere
    closed32 = jax.make_jaxpr(_call(name))(net, x, jnp.float32(0.3))
    assert all("bfloat16" not in _dtypes(e.outvars) for e in _eqns(closed32.jaxpr))


@pytest.mark.parametrize("name", NETWORKS)
def test_remat_wraps_every_block(name):
    net, x, num_blocks = NETWORKS[name](jr.key(0))
    remat = type(net)(**_rebuild_kwargs(name), key=jr.key(0), remat=True)
    closed = jax.make_jaxpr(_call(name))(remat, x, jnp.float32(0.3))
    checkpoints = [e for e in _eqns(closed.jaxpr) if e.primitive.name in ("remat2", "checkpoint", "remat")]
    assert len(checkpoints) == num_blocks
    plain = jax.make_jaxpr(_call(name))(net, x, jnp.float32(0.3))
    assert not [e for e in _eqns(plain.jaxpr) if e.primitive.name in ("remat2", "checkpoint", "remat")]


def _rebuild_kwargs(name):
    """Constructor arguments of NETWORKS[name] (to build the same network with `remat=True`)."""
    return {
        "MLP": dict(data_dim=6, width=16, depth=2, emb_dim=8, num_classes=3),
        "Transformer": dict(vocab_size=5, seq_len=12, dim=16, depth=2, num_heads=2, mlp_ratio=2),
        "UNet_vdm": dict(
            channels=3,
            base_channels=8,
            channel_mults=(1,),
            num_res_blocks=2,
            attention_levels=(),
            num_groups=4,
            num_classes=3,
            fourier_features=(6, 8),
            scale_shift=False,
        ),  # fmt: skip
        "DiT": dict(vocab_size=27, seq_len=16, dim=32, depth=2, num_heads=2, embed_dim=16, cond_dim=16),
        "TokenUNet": dict(
            vocab_size=5,
            image_shape=(4, 4, 1),
            embed_dim=4,
            base_channels=8,
            channel_mults=(1,),
            num_res_blocks=1,
            attention_levels=(),
            num_groups=4,
        ),
        "UViT": dict(
            vocab_size=16,
            image_shape=(4, 4, 3),
            features=8,
            num_res_blocks=1,
            dit_depth=1,
            dit_dim=16,
            dit_heads=2,
            num_groups=4,
            num_classes=3,
        ),  # fmt: skip
    }[name]


def test_remat_gives_the_same_gradients(getkey):
    kwargs = _rebuild_kwargs("MLP") | dict(dropout=0.2)
    plain = _perturb(vd.nn.MLP(**kwargs, key=jr.key(3)), 1)
    remat = _perturb(vd.nn.MLP(**kwargs, key=jr.key(3), remat=True), 1)
    z, k = jnp.linspace(-1.0, 1.0, 6), getkey()

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(m):
        return jnp.sum(m(z, 0.5, label=2, key=k) ** 2)

    g1, g2 = grad(plain), grad(remat)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(np.abs(np.asarray(a)).max() > 0 for a in jax.tree.leaves(g1))


# The networks behind the presets: behaviour under float32 and the bf16-vs-float32 tolerance, one compile
# per precision per network (the four examples of a batch each change one input).
_BF16_TOLERANCE = 0.03  # relative L2; measured 0.008-0.015 (bfloat16 has an 8-bit significand: 2^-8 = 0.004)


def _variants(name, x):
    """A batch: the example, λ changed, the last position/pixel changed, the class changed."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        flat = x.reshape(-1)
        changed = flat.at[-1].set((flat[-1] + 1) % 5).reshape(x.shape)
    else:
        changed = x.at[(-1,) * x.ndim].add(0.5)
    xs = jnp.stack([x, x, changed, x])
    lams = jnp.array([0.5, -4.0, 0.5, 0.5])
    labels = jnp.array([1, 1, 1, 2])
    return xs, lams, labels


@eqx.filter_jit
def _batch(model, xs, lams, labels, takes_label):
    def one(x, lam, label):
        return model(x, lam, inference=True, **({"label": label} if takes_label else {}))

    return jax.vmap(one)(xs, lams, labels)


@pytest.mark.parametrize("name", ["UNet_vdm", "DiT", "UViT"])
def test_preset_networks_conditioning_and_bfloat16_tolerance(name):
    net, x, _ = NETWORKS[name](jr.key(0))
    xs, lams, labels = _variants(name, x)
    takes_label = name in _TAKES_LABEL
    zero = np.asarray(_batch(net, xs, lams, labels, takes_label))
    np.testing.assert_array_equal(zero, np.zeros_like(zero))  # zero-initialised output layer
    model = _perturb(net, 0)
    out = np.asarray(_batch(model, xs, lams, labels, takes_label))  # same shapes: no recompile
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.abs(out[0] - out[1]).max() > 1e-3  # λ conditioning
    first = (0,) * x.ndim  # the first position/pixel (the input changed at the last one)
    assert np.abs(out[0][first] - out[2][first]).max() > 1e-4  # attention: every position sees every other
    if takes_label:
        assert np.abs(out[0] - out[3]).max() > 1e-3  # class conditioning
    low = np.asarray(_batch(model.with_precision(BF16), xs, lams, labels, takes_label))
    assert low.dtype == np.float32
    rel = np.linalg.norm(low - out) / np.linalg.norm(out)
    assert 1e-4 < rel < _BF16_TOLERANCE, rel  # bf16 is really used, and close


def test_fourier_features_match_vdm():
    """VDM's Base2FourierFeatures(start=6, stop=8): repeat each channel per frequency, times tiled 2^k 2π."""
    z = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3)).astype(np.float32)
    freqs = 2.0 ** np.arange(6, 8) * 2 * np.pi
    h = np.repeat(z, 2, axis=-1) * np.tile(freqs, 3)
    ref = np.concatenate([np.sin(h), np.cos(h)], axis=-1)
    from vdmpp.nn._embed import fourier_features

    np.testing.assert_allclose(fourier_features(jnp.asarray(z), 6, 8), ref, rtol=1e-4, atol=1e-4)


def test_rotary_positions_are_relative():
    """RoPE: <R_m q, R_n k> depends on m - n only, and each rotation keeps norms."""
    from vdmpp.nn._adaln import apply_rope, rope_tables

    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(np.broadcast_to(rng.standard_normal((1, 1, 8)), (6, 1, 8)).astype(np.float32)) for _ in "qk")
    cos, sin = rope_tables(6, 8)
    rq, rk = np.asarray(apply_rope(q, cos, sin))[:, 0], np.asarray(apply_rope(k, cos, sin))[:, 0]
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(np.asarray(q)[:, 0], axis=-1), rtol=1e-5)
    np.testing.assert_allclose(rq[1] @ rk[3], rq[2] @ rk[4], rtol=1e-4)
    np.testing.assert_allclose(rq[0] @ rk[0], np.asarray(q)[0, 0] @ np.asarray(k)[0, 0], rtol=1e-5)
    assert not np.isclose(rq[1] @ rk[3], rq[1] @ rk[4])


def test_bad_precision_and_network_arguments():
    with pytest.raises(ValueError, match="`compute_dtype` must be jnp.float32, jnp.bfloat16 or jnp.float16"):
        vd.nn.Precision(jnp.int8)
    net, _, _ = _mlp(jr.key(0))
    with pytest.raises(TypeError, match="`precision` must be a vdmpp.nn.Precision|parameter .precision."):
        net.with_precision("bfloat16")  # pyright: ignore
    with pytest.raises(ValueError, match="`fourier_features`"):
        vd.nn.UNet(3, fourier_features=(8, 6), key=jr.key(0))
    with pytest.raises(ValueError, match="even head width"):
        vd.nn.DiT(5, dim=12, num_heads=4, key=jr.key(0))
    with pytest.raises(ValueError, match="`image_shape` must be square"):
        vd.nn.UViT(4, (6, 6, 1), patch_size=4, key=jr.key(0))
    uvit, tokens, _ = _uvit(jr.key(0))
    with pytest.raises((ValueError, TypeError), match=r"`tokens` must have shape \(4, 4, 3\)|parameter 'tokens'"):
        uvit(tokens[:2], 0.0, inference=True)
    with pytest.raises((ValueError, RuntimeError), match=r"`tokens` must be in \[0, 16\]"):
        uvit(tokens + 20, 0.0, inference=True)
    dit, seq, _ = _dit(jr.key(0))
    with pytest.raises(ValueError, match="seq_len=16"):
        dit(seq[:5], 0.0, inference=True)


def test_num_parameters_counts_abstract_networks():
    net, _, _ = _dit(jr.key(0))
    abstract = eqx.filter_eval_shape(lambda k: _dit(k)[0], jr.key(0))
    expected = sum(math.prod(p.shape) for p in jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array)))
    assert vd.nn.num_parameters(net) == vd.nn.num_parameters(abstract) == expected > 0
