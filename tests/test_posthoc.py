"""Post-hoc EMA (THEORY §13): the σ_rel ↔ γ cubic, the closed-form profile inner products against quadrature,
the tracked EMA against its unrolled weights, reconstruction on a known trajectory and on a real training run,
and the errors for what the snapshots cannot represent."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import vdmpp as vd
from hypothesis import given, strategies as st

from _train_standins import TinyDenoiser


def test_gamma_of_the_published_widths():
    # EDM2 (Karras et al. 2024, §3.1): sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert vd.train.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=5e-3)
    assert vd.train.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=5e-3)


@given(gamma=st.floats(0.0, 500.0))
def test_sigma_rel_round_trip(gamma):
    # the profile's relative standard deviation by direct moments: E[tau] and E[tau^2] of (g+1) tau^g on [0, 1]
    mean, second = (gamma + 1) / (gamma + 2), (gamma + 1) / (gamma + 3)
    sigma = math.sqrt(second - mean**2)
    assert vd.train.gamma_to_sigma_rel(gamma) == pytest.approx(sigma, rel=1e-9)
    assert vd.train.sigma_rel_to_gamma(sigma) == pytest.approx(gamma, rel=1e-7, abs=1e-7)


@pytest.mark.parametrize(
    "ta,ga,tb,gb", [(100, 6.94, 100, 6.94), (50, 16.97, 200, 6.94), (300, 6.94, 120, 16.97), (7, 0.5, 9, 2.0)]
)
def test_inner_products_match_quadrature(ta, ga, tb, gb):
    def p(tau, t, g):
        return (g + 1) * tau**g / t ** (g + 1)

    quad, _ = scipy.integrate.quad(lambda s: p(s, ta, ga) * p(s, tb, gb), 0.0, min(ta, tb), epsabs=0, epsrel=1e-12)
    closed = float(vd.train.profile_inner_product(ta, ga, tb, gb))
    assert abs(closed - quad) <= 1e-6 * quad and abs(closed - quad) < 1e-6


def test_tracked_ema_has_the_power_function_weights():
    """The jitted update over T steps equals sum_k w_k theta_k, w_k = (k^(g+1) - (k-1)^(g+1)) / T^(g+1)."""
    posthoc = vd.train.PostHocEMA((0.05, 0.10))
    thetas = np.random.default_rng(0).standard_normal((200, 3))
    update = jax.jit(posthoc.update)
    phema = posthoc.init(jnp.zeros(3))
    for k in range(1, 201):
        phema = update(phema, jnp.asarray(thetas[k - 1], jnp.float32), jnp.asarray(k, jnp.int32))
    for ema, gamma in zip(phema, posthoc.gammas):
        k = np.arange(1, 201, dtype=np.float64)
        w = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / 200.0 ** (gamma + 1)
        assert np.allclose(np.asarray(ema), w @ thetas, rtol=1e-5, atol=1e-6)


def _exact_ema(thetas, t, sigma_rel):
    gamma = vd.train.sigma_rel_to_gamma(sigma_rel)
    k = np.arange(1, t + 1, dtype=np.float64)
    return ((k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / float(t) ** (gamma + 1)) @ thetas[:t]


def test_reconstruction_of_a_known_trajectory():
    """Snapshots of the exact 0.05/0.10 EMAs of a random walk every 25 steps rebuild the 0.07 EMA at step 400."""
    thetas = np.cumsum(np.random.default_rng(1).standard_normal((400, 50)), axis=0)
    snaps = [vd.train.EMASnapshot(t, s, [_exact_ema(thetas, t, s)]) for t in range(25, 401, 25) for s in (0.05, 0.10)]
    target = _exact_ema(thetas, 400, 0.07)
    [rec] = vd.train.reconstruct_ema(snaps, 0.07, 400)
    spread = np.linalg.norm(_exact_ema(thetas, 400, 0.05) - target)
    assert np.linalg.norm(rec - target) < 0.02 * spread
    # at an earlier step only the snapshots up to it are used
    [rec200] = vd.train.reconstruct_ema(snaps, 0.07, 200)
    assert np.linalg.norm(rec200 - _exact_ema(thetas, 200, 0.07)) < 0.02 * spread


def test_sigma_rel_the_snapshots_cannot_represent():
    snaps = [vd.train.EMASnapshot(t, s, [np.zeros(2)]) for t in (50, 100) for s in (0.05, 0.10)]
    with pytest.raises(ValueError, match=r"`sigma_rel`=0.005 at step 100 cannot be represented.*represent sigma_rel"):
        vd.train.reconstruct_ema(snaps, 0.005)
    with pytest.raises(ValueError, match=r"`sigma_rel` must lie in \(0, 0.3003\)"):
        vd.train.reconstruct_ema(snaps, 0.5)
    with pytest.raises(ValueError, match="no snapshot was taken at or before"):
        vd.train.reconstruct_ema(snaps, 0.07, step=20)
    with pytest.raises(ValueError, match="distinct"):
        vd.train.PostHocEMA((0.05, 0.05))
    with pytest.raises(ValueError, match="snapshot_every"):
        vd.train.LoopConfig(steps=2, posthoc_sigma_rels=(0.05,), snapshot_every=0)


def test_corrupt_or_missing_snapshots(tmp_path):
    with pytest.raises(FileNotFoundError, match="No post-hoc EMA snapshots"):
        vd.train.load_ema_snapshots(tmp_path)
    vd.train.save_ema_snapshot(tmp_path, 10, vd.train.PostHocEMA((0.05,)), [[np.ones(3, np.float32)]])
    (tmp_path / "0000000020.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="0000000020.npz is not a readable vdmpp post-hoc EMA snapshot"):
        vd.train.load_ema_snapshots(tmp_path)


def test_reconstruction_from_a_training_run(tmp_path):
    """Acceptance: train with profiles 0.05, 0.10 and 0.07 tracked; rebuild 0.07 from the other two's snapshots.

    Parameters within relative L2 1e-2 of the tracked 0.07 EMA (and far closer to it than to its neighbours, so
    the check is not vacuous) and bits/dim within 0.005 (with the same evaluation draws).
    """
    data = vd.data.load("digits")
    model = TinyDenoiser(64, 64, key=jr.key(0))
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), vd.schedules.Cosine(-10.0, 6.0), num_levels=17)
    steps = 200
    opt = vd.train.make_optimizer(3e-3, 10, steps, vd.train.WarmupConstant())
    loop = vd.train.LoopConfig(
        steps=steps,
        checkpoint_every=steps,
        log_every=100,
        progress=False,
        tensorboard=False,
        posthoc_sigma_rels=(0.05, 0.10, 0.07),
        snapshot_every=20,
    )
    ds = vd.data.pipeline(data.train, batch_size=32, seed=0)
    vd.train.fit(model, loss, opt, ds, loop=loop, workdir=tmp_path, config={"maths": {}}, key=jr.key(1))
    snaps = vd.train.load_ema_snapshots(tmp_path / "ema_snapshots")
    assert sorted({s.step for s in snaps}) == list(range(20, steps + 1, 20))
    final = {s.sigma_rel: s.params for s in snaps if s.step == steps}
    rec = vd.train.reconstruct_ema([s for s in snaps if s.sigma_rel != 0.07], 0.07, steps)

    def flat(leaves):
        return np.concatenate([np.ravel(x) for x in leaves]).astype(np.float64)

    direct, err = flat(final[0.07]), flat(rec) - flat(final[0.07])
    assert np.linalg.norm(err) <= 1e-2 * np.linalg.norm(direct)
    for neighbour in (0.05, 0.10):
        assert np.linalg.norm(err) <= 0.05 * np.linalg.norm(flat(final[neighbour]) - direct)

    def bpd(leaves):
        net = vd.train.reconstruct_ema([vd.train.EMASnapshot(steps, 0.07, leaves)], 0.07, like=model)
        sched = loss.init_schedule_state()
        return vd.train.evaluate_bpd(net, loss, np.asarray(data.test), key=jr.key(3), sched_state=sched, repeats=2)

    b_direct, b_rec, b_05 = bpd(final[0.07]), bpd(rec), bpd(final[0.05])
    print(f"rel L2 {np.linalg.norm(err) / np.linalg.norm(direct):.2e}; bpd tracked {b_direct:.5f}, reconstructed "
          f"{b_rec:.5f}, sigma_rel 0.05 {b_05:.5f}")  # fmt: skip
    assert abs(b_rec - b_direct) <= 0.005
    assert abs(b_05 - b_direct) > 0.005  # the profiles do differ at this resolution


def test_loop_config_posthoc_is_validated_before_work():
    loop = vd.train.LoopConfig(steps=2)
    assert loop.posthoc_sigma_rels == ()
    with pytest.raises(ValueError, match="sigma_rel"):
        dataclasses.replace(loop, posthoc_sigma_rels=(0.05, 0.4))


def test_posthoc_emas_are_laid_out_like_the_parameters():
    """On a data x FSDP mesh of the 8 fake devices, every post-hoc EMA leaf has its parameter's sharding, before
    and after a step (the step constrains its output to the same layout)."""
    assert jax.device_count() == 8, "conftest fakes 8 CPU devices"
    sharding = vd.train.Sharding(vd.train.make_mesh(2), fsdp_min_size=64)
    model = TinyDenoiser(16, 64, key=jr.key(0))
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), vd.schedules.Cosine(-10.0, 10.0), num_levels=17)
    opt = vd.train.make_optimizer(1e-2, 1, 10)
    posthoc = vd.train.PostHocEMA((0.05, 0.10))
    state = sharding.shard_state(vd.train.init_train_state(model, opt, loss, key=jr.key(1), posthoc=posthoc))
    step = vd.train.make_train_step(loss, opt, ema_decay=0.9, sharding=sharding, posthoc=posthoc)
    x = np.random.default_rng(0).integers(0, 17, (16, 4, 4, 1)).astype(np.uint8)

    def check(s):
        params = [p for p in jax.tree.leaves(s.params) if jnp.issubdtype(p.dtype, jnp.floating)]
        assert [p for p in params if "fsdp" in tuple(p.sharding.spec)], "the test needs leaves that FSDP splits"
        for ema in s.phema:
            leaves = jax.tree.leaves(ema)
            assert len(leaves) == len(params)
            assert all(e.sharding.is_equivalent_to(p.sharding, p.ndim) for e, p in zip(leaves, params))

    check(state)
    state, _ = step(state, sharding.shard_batch({"x": x}))  # the input state is donated
    check(state)
