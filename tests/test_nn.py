"""Tests for vdmpp.nn: shapes, zero-initialised outputs, conditioning, transforms, dropout keys."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd

from helpers import tree_allclose


def _perturb(model, key, scale=0.1):
    """Randomise every float parameter (zero-initialised outputs would hide conditioning)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(np.asarray(jr.key_data(key)).ravel().tolist())  # NumPy: no compile per shape
    leaves = [jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape).astype(x.dtype)) for x in leaves]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


@pytest.fixture(scope="module")
def mlp():
    return vd.nn.MLP(3, width=16, depth=2, emb_dim=8, num_classes=4, dropout=0.5, key=jr.key(0))


def test_mlp_zero_init_and_shape(mlp, getkey):
    z = jr.normal(getkey(), (3,))
    out = mlp(z, 1.5, inference=True)
    assert out.shape == (3,) and out.dtype == z.dtype
    np.testing.assert_array_equal(out, np.zeros(3))


def test_mlp_lam_and_class_conditioning(mlp, getkey):
    model = _perturb(mlp, getkey())
    z = jr.normal(getkey(), (3,))
    a = model(z, -3.0, inference=True)
    b = model(z, 3.0, inference=True)
    assert not np.allclose(a, b, atol=1e-4)
    c0 = model(z, 0.0, label=0, inference=True)
    c1 = model(z, 0.0, label=1, inference=True)
    null = model(z, 0.0, inference=True)
    np.testing.assert_array_equal(null, model(z, 0.0, label=4, inference=True))  # None = null class 4
    assert not np.allclose(c0, c1, atol=1e-4) and not np.allclose(c0, null, atol=1e-4)
    # λ outside [lam_min, lam_max] is clipped: ±inf gives the same (finite) output as the end points
    np.testing.assert_allclose(model(z, jnp.inf, inference=True), model(z, 20.0, inference=True))
    assert np.all(np.isfinite(model(z, -jnp.inf, inference=True)))


def test_mlp_jit_vmap_and_dropout_keys(mlp, getkey):
    model = _perturb(mlp, getkey())
    zs = jr.normal(getkey(), (5, 3))
    lams = jnp.linspace(-5.0, 5.0, 5)
    f = eqx.filter_jit(eqx.filter_vmap(lambda z, l: model(z, l, inference=True)))
    stacked = jnp.stack([model(z, l, inference=True) for z, l in zip(zs, lams)])
    assert tree_allclose(f(zs, lams), stacked, rtol=1e-5, atol=1e-6)
    k = getkey()
    d1, d2 = model(zs[0], 0.0, key=k), model(zs[0], 0.0, key=k)
    np.testing.assert_array_equal(d1, d2)  # same key, same dropout mask
    assert not np.allclose(d1, model(zs[0], 0.0, key=getkey()))
    with pytest.raises(ValueError, match="no `key`"):
        model(zs[0], 0.0)


def test_mlp_bad_inputs(mlp):
    # jaxtyping (on in tests) or the model's own check, whichever comes first
    with pytest.raises((ValueError, TypeError), match="`z` must have shape|parameter 'z'"):
        mlp(jnp.zeros((2, 3)), 0.0, inference=True)
    with pytest.raises((ValueError, TypeError), match="`lam` must be a scalar|parameter 'lam'"):
        mlp(jnp.zeros(3), jnp.zeros(2), inference=True)
    with pytest.raises(ValueError, match="no class conditioning"):
        vd.nn.MLP(3, width=8, depth=1, key=jr.key(0))(jnp.zeros(3), 0.0, label=1)
    with pytest.raises(ValueError, match="`width` must be a positive int"):
        vd.nn.MLP(3, width=0, key=jr.key(0))
    with pytest.raises(ValueError, match="lam_min < lam_max"):
        vd.nn.MLP(3, lam_min=1.0, lam_max=0.0, key=jr.key(0))
    with pytest.raises((ValueError, RuntimeError), match="`label` must be in"):
        mlp(jnp.zeros(3), 0.0, label=5, inference=True)


def test_as_denoiser_parameterisations(mlp, getkey):
    model = _perturb(mlp, getkey())
    z, lam = jr.normal(getkey(), (3,)), jnp.asarray(0.7)
    out = model(z, lam, label=2, inference=True)
    eps = vd.nn.as_denoiser(model, label=2)(z, lam)
    np.testing.assert_array_equal(eps, out)
    # x-prediction: eps = (z - alpha x) / sigma with alpha^2 = sigmoid(lam)
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-0.7))), np.sqrt(1 / (1 + np.exp(0.7)))
    eps_x = vd.nn.as_denoiser(model, vd.process.XPrediction(), label=2)(z, lam)
    np.testing.assert_allclose(eps_x, (np.asarray(z) - alpha * np.asarray(out)) / sigma, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="`parameterisation`|parameter 'parameterisation'"):
        vd.nn.as_denoiser(model, "eps")  # pyright: ignore


# ----------------------------------------------------------------------------------------- U-Net


@pytest.fixture(scope="module")
def unet():
    return vd.nn.UNet(
        2,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        num_groups=4,
        dropout=0.3,
        num_classes=3,
        key=jr.key(1),
    )


@eqx.filter_jit
def _apply(model, z, lam, label, key, inference):
    return jax.vmap(lambda z_, l_, y_, k_: model(z_, l_, label=y_, key=k_, inference=inference))(z, lam, label, key)


def test_unet_zero_init_shape_dtype(unet, getkey):
    z = jr.normal(getkey(), (2, 8, 4, 2))  # non-square on purpose
    out = _apply(unet, z, jnp.zeros(2), jnp.array([0, 3]), jr.split(getkey(), 2), True)
    assert out.shape == z.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.zeros(z.shape))


def test_unet_conditioning_vmap_dropout(unet, getkey):
    model = _perturb(unet, getkey(), scale=0.2)
    z = jnp.broadcast_to(jr.normal(getkey(), (1, 8, 8, 2)), (4, 8, 8, 2))
    lam = jnp.array([-5.0, 5.0, 0.0, 0.0])
    label = jnp.array([0, 0, 1, 3])
    keys = jr.split(getkey(), 4)
    out = np.asarray(_apply(model, z, lam, label, keys, True))
    assert np.all(np.isfinite(out))
    lam_effect = np.abs(out[0] - out[1]).max()
    class_effect = np.abs(out[2] - out[3]).max()  # class 1 vs null class 3, same lam
    assert lam_effect > 1e-3 and class_effect > 1e-3
    # no leakage between examples under vmap: a permuted batch gives the permuted outputs (same compiled fn)
    perm = jnp.array([3, 1, 0, 2])
    np.testing.assert_allclose(
        _apply(model, z[perm], lam[perm], label[perm], keys[perm], True), out[np.asarray(perm)], rtol=1e-5, atol=1e-6
    )
    # dropout: same key -> same output; different key -> different; none needed at inference
    d1, d2, d3 = (np.asarray(_apply(model, z, lam, label, k, False)) for k in (keys, keys, jr.split(getkey(), 4)))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, d3) and not np.allclose(d1, out)
    with pytest.raises(ValueError, match="no `key`"):
        model(z[0], 0.0, label=0)


def test_unet_bad_inputs(unet):
    with pytest.raises((ValueError, TypeError), match="divisible by 2|parameter 'z'"):
        unet(jnp.zeros((7, 8, 2)), 0.0, inference=True)
    with pytest.raises((ValueError, TypeError), match=r"\(H, W, 2\)|parameter 'z'"):
        unet(jnp.zeros((8, 8, 3)), 0.0, inference=True)
    with pytest.raises(ValueError, match="divisible by the number of groups"):
        vd.nn.UNet(1, base_channels=6, num_groups=4, key=jr.key(0))
    with pytest.raises(ValueError, match="`attention_levels`"):
        vd.nn.UNet(1, channel_mults=(1, 2), attention_levels=(2,), key=jr.key(0))


# ----------------------------------------------------------------------------------------- transformer


@pytest.fixture(scope="module")
def transformer():
    return vd.nn.Transformer(5, 12, dim=16, depth=2, num_heads=2, mlp_ratio=2, dropout=0.2, key=jr.key(2))


@eqx.filter_jit
def _apply_tokens(model, tokens, lam, key, inference):
    return jax.vmap(lambda t_, l_, k_: model(t_, l_, key=k_, inference=inference))(tokens, lam, key)


def test_transformer_uniform_at_init_and_shapes(transformer, getkey):
    tokens = jr.randint(getkey(), (3, 4, 3), 0, 6)  # a 4x3 grid; 5 is the mask
    out = _apply_tokens(transformer, tokens, jnp.zeros(3), jr.split(getkey(), 3), True)
    assert out.shape == (3, 4, 3, 5) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.zeros(out.shape))  # zero-initialised output: uniform over V
    assert transformer.mask_id == 5


def test_transformer_bidirectional_conditioning_dropout(transformer, getkey):
    model = _perturb(transformer, getkey(), scale=0.3)
    base = jr.randint(getkey(), (12,), 0, 5)
    changed_last = base.at[-1].set((base[-1] + 1) % 5)
    masked_last = base.at[-1].set(5)
    tokens = jnp.stack([base, changed_last, masked_last, base])
    lam = jnp.array([0.0, 0.0, 0.0, 4.0])
    keys = jr.split(getkey(), 4)
    out = np.asarray(_apply_tokens(model, tokens, lam, keys, True))
    assert np.all(np.isfinite(out))
    assert np.abs(out[0, 0] - out[1, 0]).max() > 1e-4  # position 0 sees the last token: not causal
    assert np.abs(out[0, 0] - out[2, 0]).max() > 1e-4  # and the mask token is a symbol of its own
    assert np.abs(out[0] - out[3]).max() > 1e-4  # λ conditioning
    # λ = ±inf (masked diffusion at t in {0, 1}) is clipped, finite
    inf_out = _apply_tokens(model, tokens, jnp.array([jnp.inf, -jnp.inf, 0.0, 0.0]), keys, True)
    assert np.all(np.isfinite(np.asarray(inf_out)))
    perm = jnp.array([2, 0, 3, 1])
    np.testing.assert_allclose(
        _apply_tokens(model, tokens[perm], lam[perm], keys[perm], True), out[np.asarray(perm)], rtol=1e-5, atol=1e-6
    )
    d1, d2, d3 = (np.asarray(_apply_tokens(model, tokens, lam, k, False)) for k in (keys, keys, jr.split(getkey(), 4)))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, d3) and not np.allclose(d1, out)


def test_transformer_sinusoidal_any_length_and_unconditioned(getkey):
    model = vd.nn.Transformer(
        3, dim=8, depth=1, num_heads=1, mlp_ratio=1, learned_positions=False, lam_conditioning=False, key=getkey()
    )
    model = _perturb(model, getkey(), scale=0.3)
    f = eqx.filter_jit(lambda m, t, l: m(t, l, inference=True))
    t = jnp.array([0, 1, 2, 3, 0, 1])
    assert f(model, t, 0.0).shape == (6, 3) and f(model, t[:4], 0.0).shape == (4, 3)
    np.testing.assert_array_equal(f(model, t, -3.0), f(model, t, 3.0))  # no λ conditioning: λ is ignored


def test_transformer_bad_inputs(transformer):
    with pytest.raises((ValueError, RuntimeError), match=r"`tokens` must be in \[0, 5\]"):
        transformer(jnp.full((12,), 6), 0.0, inference=True)
    with pytest.raises(ValueError, match="seq_len=12"):
        transformer(jnp.zeros((3, 3), jnp.int32), 0.0, inference=True)
    with pytest.raises((TypeError,), match="integer array|parameter 'tokens'"):
        transformer(jnp.zeros(12), 0.0, inference=True)
    with pytest.raises(ValueError, match="needs `seq_len`"):
        vd.nn.Transformer(5, key=jr.key(0))


# ----------------------------------------------------------------------------------------- integration


def test_mlp_trains_with_weighted_loss_on_toy_pipeline():
    """Net + data + loss fit together: 50 Adam steps on two moons close part of the gap to the oracle.

    The loss is evaluated on fixed draws (common random numbers); the exact posterior-mean denoiser of the
    batch (`EmpiricalDenoiser`) gives the lower bound.
    """
    import optax

    d = vd.data.load("toy:two_moons", num_train=256, num_test=16)
    batch = jnp.asarray(next(iter(vd.data.pipeline(d.train, batch_size=256, seed=0)))["x"])
    model = vd.nn.MLP(2, width=64, depth=2, emb_dim=32, key=jr.key(0))
    schedule, weighting = vd.schedules.Cosine(lam_min=-20.0, lam_max=20.0), vd.weighting.Sigmoid(k=2.0)
    opt = optax.adam(3e-3)

    def mean_loss(den, key):
        return jnp.mean(vd.losses.weighted_loss(den, batch, key=key, schedule=schedule, weighting=weighting))

    def loss_fn(m, key):
        return mean_loss(vd.nn.as_denoiser(m, vd.process.VPrediction()), key)

    @eqx.filter_jit
    def step(m, state, key):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(m, key)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grads, state, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, updates), state, loss, grads

    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    eval_key = jr.key(7)
    first = float(eqx.filter_jit(loss_fn)(model, eval_key))
    model, state, _, grads = step(model, state, jr.key(1))
    assert np.abs(np.asarray(grads.out.weight)).max() > 0  # the zero-initialised output layer still learns
    for i in range(49):
        model, state, loss, _ = step(model, state, jr.key(i + 2))
    last = float(eqx.filter_jit(loss_fn)(model, eval_key))
    best = float(eqx.filter_jit(mean_loss)(vd.oracle.EmpiricalDenoiser(batch), eval_key))
    assert best < first  # sanity: the oracle beats the zero-output network
    assert np.isfinite(last) and first - last > 0.2 * (first - best), (first, last, best)


def test_as_denoiser_dropout_key_differs_per_example(mlp, getkey):
    model = _perturb(mlp, getkey())
    z = jr.normal(getkey(), (3,))
    zs = jnp.stack([z, z, z + 1e-3])
    lams = jnp.array([0.0, 0.0, 0.0])
    k = getkey()
    den = vd.nn.as_denoiser(model, inference=False, key=k)
    out = np.asarray(eqx.filter_jit(lambda d, z_, l_: jax.vmap(d)(z_, l_))(den, zs, lams))
    np.testing.assert_array_equal(out[0], out[1])  # same example, same key: same mask (deterministic)
    # a tiny change of the input changes the mask, so the output jumps by much more than the input change
    assert np.abs(out[2] - out[0]).max() > 1e-2
    ref = np.asarray(model(z, 0.0, inference=True))
    assert not np.allclose(out[0], ref)  # dropout is on


def test_token_unet_uniform_at_init_sees_neighbours_and_the_mask(getkey):
    """The masked-diffusion U-Net: logits (H, W, C, V), zero at initialisation (uniform over V); once the
    weights move, a pixel's logits depend on its neighbour's token, the mask is a symbol of its own, λ matters."""
    net = vd.nn.TokenUNet(
        5, (4, 4, 2), embed_dim=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_groups=4, key=getkey()
    )
    tokens = jr.randint(getkey(), (3, 4, 4, 2), 0, 6)
    out = _apply_tokens(net, tokens, jnp.zeros(3), jr.split(getkey(), 3), True)
    assert out.shape == (3, 4, 4, 2, 5) and out.dtype == jnp.float32 and net.mask_id == 5
    np.testing.assert_array_equal(out, np.zeros(out.shape))
    model = _perturb(net, getkey(), scale=0.3)
    base = jr.randint(getkey(), (4, 4, 2), 0, 5)
    tokens = jnp.stack([base, base.at[1, 1, 0].set((base[1, 1, 0] + 1) % 5), base.at[1, 1, 0].set(5), base])
    lam = jnp.array([0.0, 0.0, 0.0, 4.0])
    out = np.asarray(_apply_tokens(model, tokens, lam, jr.split(getkey(), 4), True))
    assert np.all(np.isfinite(out))
    assert np.abs(out[0, 1, 2] - out[1, 1, 2]).max() > 1e-4  # the neighbour's token
    assert np.abs(out[0, 1, 2] - out[2, 1, 2]).max() > 1e-4  # masked vs real token
    assert np.abs(out[0] - out[3]).max() > 1e-4  # λ conditioning
    assert model.with_precision(vd.nn.Precision(jnp.bfloat16)).precision.compute_dtype == jnp.bfloat16


def test_token_unet_bad_inputs():
    net = vd.nn.TokenUNet(
        3, (4, 4, 1), embed_dim=2, base_channels=4, channel_mults=(1,), attention_levels=(), num_groups=2, key=jr.key(0)
    )
    with pytest.raises((ValueError, RuntimeError), match=r"`tokens` must be in \[0, 3\]"):
        net(jnp.full((4, 4, 1), 4), 0.0, inference=True)
    with pytest.raises(ValueError, match=r"shape \(4, 4, 1\)"):
        net(jnp.zeros((4, 4, 2), jnp.int32), 0.0, inference=True)
    with pytest.raises(TypeError, match="parameter 'tokens'"):  # jaxtyping: not an H×W×C grid
        net(jnp.zeros((16,), jnp.int32), 0.0, inference=True)
    with pytest.raises(TypeError, match="integer array|parameter 'tokens'"):
        net(jnp.zeros((4, 4, 1)), 0.0, inference=True)
    with pytest.raises(ValueError, match="image_shape"):
        vd.nn.TokenUNet(3, (4, 4, 0), key=jr.key(0))
    with pytest.raises(TypeError, match="image_shape"):
        vd.nn.TokenUNet(3, (16,), key=jr.key(0))  # pyright: ignore[reportArgumentType]
