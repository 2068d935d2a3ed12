"""vdmpp.metrics against closed forms and independent NumPy/SciPy computations (THEORY §12)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import vdmpp as vd
from scipy.spatial.distance import cdist


ROOT = pathlib.Path(__file__).resolve().parents[1]
FS = vd.metrics.FeatureStats


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _closed_form_fd(mu_a, sigma_a, mu_b, sigma_b):
    """THEORY §12 with SciPy's general matrix square root of Σa Σb (an independent route)."""
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2.0 * np.real(covmean)))


def _with_moments(rng, mu, sigma, n):
    """n samples whose sample mean is exactly mu and whose (n-1)-normalised covariance is exactly sigma."""
    z = rng.standard_normal((n, mu.shape[0]))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False))).T)  # whiten: cov(z) = I
    return z @ np.linalg.cholesky(sigma).T + mu


# --- Fréchet distance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 3, 8])
def test_fd_closed_form_gaussians(d):
    rng = np.random.default_rng(d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    sigma_a, sigma_b = _spd(rng, d), _spd(rng, d)
    expected = _closed_form_fd(mu_a, sigma_a, mu_b, sigma_b)
    got = vd.metrics.frechet_distance(FS(mu_a, sigma_a), FS(mu_b, sigma_b))
    assert got == pytest.approx(expected, rel=1e-6)
    # the same Gaussians' moments realised exactly by finite feature sets
    fa, fb = _with_moments(rng, mu_a, sigma_a, 40), _with_moments(rng, mu_b, sigma_b, 25)
    got = vd.metrics.frechet_distance(FS.from_features(fa), FS.from_features(fb))
    assert got == pytest.approx(expected, rel=1e-6)


def test_fd_commuting_covariances():
    """Diagonal covariances: FD = |Δμ|² + Σ_i (√a_i − √b_i)²."""
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    got = vd.metrics.frechet_distance(FS(mu_a, np.diag(a)), FS(mu_b, np.diag(b)))
    assert got == pytest.approx(5.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0, rel=1e-12)


def test_fd_self_zero_and_symmetric():
    rng = np.random.default_rng(0)
    fa = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    fb = rng.standard_normal((70, 6)) + 0.3
    sa, sb = FS.from_features(fa), FS.from_features(fb)
    assert vd.metrics.frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-9 * np.trace(sa.sigma))
    ab, ba = vd.metrics.frechet_distance(sa, sb), vd.metrics.frechet_distance(sb, sa)
    assert ab > 0.1 and ab == pytest.approx(ba, rel=1e-9)
    # singular covariances (n < d) are fine: FD of a rank-deficient set against itself is still 0
    s_low = FS.from_features(fa[:4])
    assert vd.metrics.frechet_distance(s_low, s_low) == pytest.approx(0.0, abs=1e-9)


def test_stats_chunked_and_merged_equal_one_shot():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((103, 5)) * 3.0 + 10.0
    one = FS.from_features(f)
    np.testing.assert_allclose(one.mu, f.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(one.sigma, np.cov(f, rowvar=False), rtol=1e-12)
    st = FS.empty(5)
    for lo, hi in [(0, 1), (1, 8), (8, 50), (50, 51), (51, 103)]:
        st = st.update(f[lo:hi])
    merged = FS.from_features(f[:37]).merge(FS.from_features(f[37:]))
    for s in (st, merged):
        assert s.n == 103
        np.testing.assert_allclose(s.mu, one.mu, rtol=1e-13)
        np.testing.assert_allclose(s.sigma, one.sigma, rtol=1e-11)
    assert vd.metrics.all_gather_stats(one) is one  # one process: unchanged


def test_stats_save_load(tmp_path):
    rng = np.random.default_rng(2)
    st = FS.from_features(rng.standard_normal((30, 4)))
    st.save(tmp_path / "a.npz")
    back = FS.load(tmp_path / "a.npz")
    assert back.n == 30
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"
    # the pytorch-fid / clean-fid layout: only mu and sigma
    np.savez(tmp_path / "inception.npz", mu=st.mu.astype(np.float32), sigma=st.sigma.astype(np.float32))
    ext = FS.load(tmp_path / "inception.npz")
    assert ext.n is None
    assert vd.metrics.frechet_distance(ext, st) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="no sample count"):
        ext.merge(st)
    np.savez(tmp_path / "bad.npz", mean=st.mu)
    with pytest.raises(ValueError, match="needs `mu` and `sigma`"):
        FS.load(tmp_path / "bad.npz")


_WORKER = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="localhost:" + sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
import vdmpp as vd
f = np.random.default_rng(3).standard_normal((57, 4)) * 2.0 + 1.0
part = f[:20] if jax.process_index() == 0 else f[20:]
st = vd.metrics.all_gather_stats(vd.metrics.FeatureStats.from_features(part))
json.dump({"n": st.n, "mu": st.mu.tolist(), "sigma": st.sigma.tolist()}, open(sys.argv[3], "w"))
"""


@pytest.mark.slow  # two fresh processes with jax.distributed: ~20 s
def test_stats_merged_across_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    outs = [tmp_path / f"{i}.json" for i in range(2)]
    cmd = [sys.executable, "-c", textwrap.dedent(_WORKER), port]
    procs = [subprocess.Popen(cmd + [str(i), str(outs[i])], env=env) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    f = np.random.default_rng(3).standard_normal((57, 4)) * 2.0 + 1.0
    for out in outs:
        got = json.loads(out.read_text())
        assert got["n"] == 57
        np.testing.assert_allclose(got["mu"], f.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(got["sigma"], np.cov(f, rowvar=False), rtol=1e-12)


# --- KID ----------------------------------------------------------------------------------------------------


def _mmd2_reference(a, b):
    """The unbiased estimator of THEORY §12, written out with explicit off-diagonal masks."""
    m, d = a.shape
    k = lambda x, y: (np.einsum("id,jd->ij", x, y) / d + 1.0) ** 3
    off = ~np.eye(m, dtype=bool)
    return (k(a, a)[off].sum() + k(b, b)[off].sum()) / (m * (m - 1)) - 2.0 * k(a, b).sum() / m**2


def test_kid_one_subset_equals_direct():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((40, 7)), rng.standard_normal((40, 7)) + 0.2
    mean, std = vd.metrics.kid(a, b, subset_size=40, num_subsets=1, seed=3)
    assert mean == pytest.approx(_mmd2_reference(a, b), rel=1e-10)
    assert std == 0.0


def test_kid_same_distribution_and_mean_shift():
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((300, 8))
    same = vd.metrics.kid(ref, rng.standard_normal((300, 8)), subset_size=100, num_subsets=50)
    assert abs(same[0]) < 2 * same[1]
    values = [
        vd.metrics.kid(ref, rng.standard_normal((300, 8)) + s, subset_size=100, num_subsets=50) for s in (0.3, 0.6, 1.2)
    ]
    means = [v[0] for v in values]
    assert means[0] > 2 * values[0][1] and means[0] < means[1] < means[2]


# --- precision / recall -------------------------------------------------------------------------------------


def _pr_reference(real, fake, k):
    def radii(x):
        return np.sort(cdist(x, x), axis=1)[:, k]

    precision = np.mean(np.any(cdist(fake, real) <= radii(real)[None, :], axis=1))
    recall = np.mean(np.any(cdist(real, fake) <= radii(fake)[None, :], axis=1))
    return precision, recall


def test_precision_recall_identical_and_far():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 4))
    assert vd.metrics.precision_recall(x, x.copy()) == (1.0, 1.0)
    assert vd.metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_reference(k):
    rng = np.random.default_rng(10)
    real = rng.standard_normal((60, 3))
    fake = 0.7 * rng.standard_normal((80, 3))
    fake[:, 0] += 1.5  # overlapping but different: precision and recall strictly between 0 and 1
    got = vd.metrics.precision_recall(real, fake, k=k)
    expected = _pr_reference(real, fake, k)
    assert 0.05 < got[0] < 0.95 and 0.05 < got[1] < 0.95, "values away from 0 and 1, so the comparison tells"
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_precision_recall_chunked(monkeypatch):
    from vdmpp.metrics import _prd

    monkeypatch.setattr(_prd, "_WORKING_MEMORY_MB", 1)  # ~100-row chunks of the 1200-column distance matrix
    rng = np.random.default_rng(8)
    real, fake = rng.standard_normal((1200, 4)), 1.3 * rng.standard_normal((1100, 4))
    np.testing.assert_allclose(vd.metrics.precision_recall(real, fake), _pr_reference(real, fake, 3), rtol=1e-12)


# --- bad input ----------------------------------------------------------------------------------------------


def test_bad_input():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((20, 4)), rng.standard_normal((20, 5))
    for fn in (vd.metrics.precision_recall, lambda x, y: vd.metrics.kid(x, y, subset_size=10)):
        with pytest.raises(ValueError, match="same feature dimension; got 4 and 5"):
            fn(a, b)
    with pytest.raises(ValueError, match="same feature dimension; got 4 and 5"):
        vd.metrics.frechet_distance(FS.from_features(a), FS.from_features(b))
    with pytest.raises(ValueError, match="at least 2 samples for a covariance; got n=1"):
        vd.metrics.frechet_distance(FS.from_features(a[:1]), FS.from_features(a))
    with pytest.raises(ValueError, match="`f_a` must have at least 2 samples"):
        vd.metrics.kid(a[:1], a, subset_size=1)
    with pytest.raises(ValueError, match="`f_fake` must have at least 4 samples"):
        vd.metrics.precision_recall(a, a[:3], k=3)
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="`f_b` must be finite; 1 NaN/inf value.* row 3"):
        vd.metrics.kid(a, bad, subset_size=10)
    with pytest.raises(ValueError, match="`features` must be finite"):
        FS.from_features(bad)
    with pytest.raises(ValueError, match="`f_real` must be finite"):
        vd.metrics.precision_recall(bad, a)
    with pytest.raises(ValueError, match=r"`subset_size`=21 is larger than the feature sets \(20 and 30"):
        vd.metrics.kid(a, rng.standard_normal((30, 4)), subset_size=21)


# --- text ---------------------------------------------------------------------------------------------------


def test_generative_perplexity_uniform_scorer():
    tokens = np.array([[0, 0, 1, 1], [2, 2, 2, 2], [0, 1, 2, 3]])
    v = 5
    out = vd.metrics.generative_perplexity(tokens, lambda t: np.full(t.shape[0], -t.shape[1] * np.log(v)))
    assert out.perplexity == pytest.approx(v, rel=1e-12)
    assert out.entropy == pytest.approx((np.log(2) + 0.0 + np.log(4)) / 3, rel=1e-12)
    p = np.array([3, 3, 5, 1]) / 12
    assert out.pooled_entropy == pytest.approx(-np.sum(p * np.log(p)), rel=1e-12)
    assert (out.n, out.seq_len) == (3, 4)
    with pytest.raises(ValueError, match=r"one log-probability per sequence, shape \(3,\)"):
        vd.metrics.generative_perplexity(tokens, lambda t: np.zeros(t.shape))


def test_char_ngram_matches_counting():
    rng = np.random.default_rng(10)
    v, order, alpha = 4, 3, 0.5
    train = rng.integers(0, v, size=(6, 30))
    test = rng.integers(0, v, size=(3, 12))
    model = vd.metrics.CharNGram.fit(train, v, order=order, alpha=alpha)
    counts: dict = {}
    for row in train.tolist():
        for i in range(len(row)):
            for c in range(min(i, order - 1) + 1):
                gram = tuple(row[i - c : i + 1])
                counts[gram] = counts.get(gram, 0) + 1
                counts[("ctx",) + gram[:-1]] = counts.get(("ctx",) + gram[:-1], 0) + 1
    expected = []
    for row in test.tolist():
        lp = 0.0
        for i in range(len(row)):
            c = min(i, order - 1)
            gram = tuple(row[i - c : i + 1])
            lp += np.log((counts.get(gram, 0) + alpha) / (counts.get(("ctx",) + gram[:-1], 0) + alpha * v))
        expected.append(lp)
    np.testing.assert_allclose(model.log_prob(test), expected, rtol=1e-12)
    out = vd.metrics.generative_perplexity(test, model.log_prob)
    assert out.perplexity == pytest.approx(np.exp(-np.sum(expected) / test.size), rel=1e-12)
