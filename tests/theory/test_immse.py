"""I-MMSE with the Bayes-optimal denoiser: d/dlam I(x; z_lam) = 1/2 mmse_eps(lam), and its integral is H(X).

I(x; z_lam) is computed by quadrature of log posteriors (NumPy, independent of vdmpp); the MMSE comes from
`vdmpp.oracle.EmpiricalDenoiser` (the code under test) with the same quadrature over eps.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import vdmpp as vd
from hypothesis import given, settings, strategies as st


NODES = np.linspace(-10, 10, 801)
WEIGHTS = np.exp(-0.5 * NODES**2) / math.sqrt(2 * math.pi) * (NODES[1] - NODES[0])


def _info(points, lam):
    # I(x; z) = E_x E_eps [log q(z|x) - log q(z)] = log N + E log posterior(x | z) for x uniform on the points
    alpha = math.sqrt(1 / (1 + math.exp(-lam)))
    sigma = math.sqrt(1 / (1 + math.exp(lam)))
    z = alpha * points[:, None] + sigma * NODES[None, :]  # (N, M)
    logits = -0.5 * ((z[:, :, None] - alpha * points[None, None, :]) / sigma) ** 2  # (N, M, N)
    logpost = np.diagonal(logits, axis1=0, axis2=2).T - np.logaddexp.reduce(logits, axis=2)
    return math.log(len(points)) + float(np.mean(logpost @ WEIGHTS))


@jax.jit
def _half_mmse(points, lam):
    den = vd.oracle.EmpiricalDenoiser(points[:, None])
    alpha, sigma = vd.process.vp_alpha_sigma(lam)
    eps = jnp.asarray(NODES, jnp.float32)

    def one(x):
        z = alpha * x + sigma * eps
        eps_hat = jax.vmap(lambda zi: den(zi[None], lam)[0])(z)
        return jnp.sum(jnp.asarray(WEIGHTS, jnp.float32) * (eps - eps_hat) ** 2)

    return 0.5 * jnp.mean(jax.vmap(one)(points))


@settings(max_examples=6)
@given(
    points=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=4, unique=True).filter(
        lambda p: min(abs(a - b) for i, a in enumerate(p) for b in p[i + 1 :]) > 0.05
    ),
    lam=st.floats(-4.0, 5.0),
)
def test_immse_derivative(points, lam):
    pts = np.array(points)
    h = 1e-3
    d_info = (_info(pts, lam + h) - _info(pts, lam - h)) / (2 * h)
    half_mmse = float(_half_mmse(jnp.asarray(pts, jnp.float32), jnp.asarray(lam, jnp.float32)))
    assert abs(d_info - half_mmse) <= 2e-4 + 2e-3 * abs(half_mmse), (d_info, half_mmse)


def test_area_is_entropy():
    # int 1/2 mmse dlam = H(X) = ln N for N distinct points (4 points here: 2 bits)
    pts = np.array([-1.0, -0.2, 0.3, 0.9])
    lams = np.linspace(-14.0, 16.0, 301)
    vals = np.array([float(_half_mmse(jnp.asarray(pts, jnp.float32), jnp.asarray(lam, jnp.float32))) for lam in lams])
    assert abs(np.trapezoid(vals, lams) - math.log(4)) < 2e-3
