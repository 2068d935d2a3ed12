"""Every oracle and loss rejects empty, mis-shaped or non-finite data with an error naming the argument."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd


def _den(z, lam):
    return z


def _token_den(z, lam):
    return jnp.zeros(z.shape + (4,))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: vd.oracle.EmpiricalDenoiser(jnp.zeros((0, 4))), r"`data` must have at least 1 row"),
        (lambda: vd.oracle.EmpiricalDenoiser(jnp.zeros(3)), r"`data` must be shaped \(N, \*data\)"),
        (lambda: vd.oracle.EmpiricalDenoiser(jnp.zeros((3, 0))), r"`data` examples must have no empty axis"),
        (lambda: vd.oracle.EmpiricalDenoiser(jnp.array([[0.0, jnp.nan]])), r"`data` must be finite"),
        (lambda: vd.oracle.EmpiricalMaskedDenoiser(np.zeros((0, 3), np.int32), 4, 4), r"`data` must have at least"),
        (lambda: vd.oracle.EmpiricalMaskedDenoiser(np.zeros(3, np.int32), 4, 4), r"`data` must be shaped"),
        (lambda: vd.oracle.GaussianMixture(jnp.zeros((0, 2)), 1.0), r"`means` must be shaped \(K, D\)"),
        (lambda: vd.oracle.GaussianMixture(jnp.array([[jnp.inf, 0.0]]), 1.0), r"`means` must be finite"),
    ],
)
def test_oracles_reject_bad_data(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_losses_reject_empty_batches():
    s, w, key = vd.schedules.Cosine(-5.0, 5.0), vd.weighting.ELBO(), jr.key(0)
    with pytest.raises(ValueError, match=r"`x` must be a non-empty batch"):
        vd.losses.weighted_loss(_den, jnp.zeros((0, 3)), key=key, schedule=s, weighting=w)
    with pytest.raises(ValueError, match=r"`x_uint8` must be a non-empty batch"):
        vd.losses.elbo_bpd(_den, jnp.zeros((0, 3), jnp.uint8), key=key, schedule=s)
    m = vd.masked.LinearSchedule()
    with pytest.raises(ValueError, match=r"`tokens` must be a non-empty batch"):
        vd.masked.elbo(_token_den, jnp.zeros((0, 3), jnp.int32), key=key, schedule=m, mask_id=4)
    with pytest.raises(ValueError, match=r"`tokens` must be a non-empty batch"):
        vd.masked.reweighted_loss(_token_den, jnp.zeros((0, 3), jnp.int32), key=key, schedule=m, weighting=w, mask_id=4)
    with pytest.raises(ValueError, match=r"`data` must have at least 1 row"):
        vd.losses.gaussian_cascade(_den, jnp.zeros((2, 3)), jnp.zeros((0, 3)), key=key, schedule=s, num_steps=2)
    with pytest.raises(ValueError, match=r"`data` must have at least 1 row"):
        vd.masked.cascade(
            _token_den,
            jnp.zeros((2, 3), jnp.int32),
            np.zeros((0, 3), np.int32),
            key=key,
            schedule=m,
            num_steps=2,
            mask_id=4,
        )


def test_loss_objects_reject_strings():
    # jaxtyping (in tests) or our own check (for users) rejects the string first; both name the argument
    with pytest.raises(TypeError, match="schedule"):
        vd.train.GaussianLoss(vd.weighting.ELBO(), "cosine")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="weighting"):
        vd.train.MaskedLoss(vd.masked.LinearSchedule(), "elbo", mask_id=4)  # pyright: ignore[reportArgumentType]
