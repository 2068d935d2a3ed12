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
    keys = jr.split(key, len(leaves))
    leaves = [x + scale * jr.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
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
