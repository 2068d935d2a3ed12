"""The feature classifier (vd.nn.Classifier), its cache, the training-loop hook and the experiment scripts."""

import dataclasses
import json
import pathlib
import sys

import equinox as eqx
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd


ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK = vd.metrics.ClassifierConfig(steps=150)  # a few seconds on digits; the full default is tested (slow) below


@pytest.fixture(scope="module")
def digits():
    return vd.data.load("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vdmpp_cache")


@pytest.fixture(scope="module")
def net(digits, cache):
    return vd.metrics.feature_network(digits, config=QUICK, cache_dir=cache, progress=False)


def test_classifier_shapes(getkey):
    clf = vd.nn.Classifier(3, 5, widths=(4, 8), feature_dim=6, num_groups=2, key=getkey())
    x = jr.normal(getkey(), (12, 10, 3))
    assert clf.features(x).shape == (6,) and clf(x).shape == (5,)
    with pytest.raises(ValueError, match=r"one channels-last image \(H, W, 3\); got shape \(12, 10, 4\)"):
        clf(jr.normal(getkey(), (12, 10, 4)))
    with pytest.raises(ValueError, match="`num_classes` must be an integer >= 2; got 1"):
        vd.nn.Classifier(3, 1, key=getkey())


def test_quick_network_and_cache(digits, cache, net):
    assert vd.metrics.accuracy(net, digits.test, digits.test_labels) > 0.85  # 150 steps; the full run is slow-tested
    entry = vd.metrics.feature_network_path(digits, config=QUICK, cache_dir=cache)
    meta = json.loads((entry / "feature_network.json").read_text())
    assert meta["fingerprint"] == vd.metrics.data_fingerprint(digits) and meta["config"]["steps"] == 150
    again = vd.metrics.feature_network(digits, config=QUICK, cache_dir=cache, progress=False)  # loaded, not trained
    np.testing.assert_array_equal(again(digits.test[:50]), net(digits.test[:50]))
    assert net(digits.test[:3]).shape == (3, 64) and net.class_probabilities(digits.test[:3]).shape == (3, 10)


def test_training_is_deterministic(digits):
    cfg = vd.metrics.ClassifierConfig(steps=5)
    a, _ = vd.metrics.train_feature_network(digits, seed=3, config=cfg, progress=False)
    b, _ = vd.metrics.train_feature_network(digits, seed=3, config=cfg, progress=False)
    c, _ = vd.metrics.train_feature_network(digits, seed=4, config=cfg, progress=False)
    d, _ = vd.metrics.train_feature_network(digits, seed=3, config=dataclasses.replace(cfg, mixup=0.0), progress=False)
    assert bool(eqx.tree_equal(a.classifier, b.classifier))
    assert not bool(eqx.tree_equal(a.classifier, c.classifier))
    assert not bool(eqx.tree_equal(a.classifier, d.classifier)), "mixup (on by default) changes the training"
    with pytest.raises(ValueError, match=r"`config.mixup` must be a finite number >= 0; got -0.1"):
        vd.metrics.train_feature_network(digits, config=vd.metrics.ClassifierConfig(mixup=-0.1), progress=False)


def test_wrong_cache_is_refused(digits, cache, net):
    entry = vd.metrics.feature_network_path(digits, config=QUICK, cache_dir=cache)
    bigger = dataclasses.replace(
        digits, train=digits.train.repeat(2, 1).repeat(2, 2), test=digits.test.repeat(2, 1).repeat(2, 2)
    )
    with pytest.raises(
        ValueError,
        match=r"trained on 'digits' \(8x8x1.*\n.*example_shape: network has \[8, 8, 1\], data has \[16, 16, 1\]",
    ):
        vd.metrics.load_feature_network(entry, bigger)
    other = dataclasses.replace(digits, train=digits.train[::-1].copy(), train_labels=digits.train_labels[::-1].copy())
    with pytest.raises(ValueError, match=r"not on this data set .*\n  sha256: network has"):
        vd.metrics.load_feature_network(entry, other)
    with pytest.raises(FileNotFoundError, match="No feature network in"):
        vd.metrics.load_feature_network(cache, digits)


def test_network_input_errors(digits, net):
    with pytest.raises(TypeError, match="integer levels 0..16"):
        net(digits.test.astype(np.float32))
    with pytest.raises(ValueError, match=r"shaped \(n, 8, 8, 1\) for this feature network"):
        net(digits.test[:, :4])
    with pytest.raises(ValueError, match=r"values must lie in 0..16 \(num_levels=17\); got the range 255..255"):
        net(np.full((2, 8, 8, 1), 255, np.uint8))
    toy = vd.data.load("toy:two_moons", num_train=10, num_test=5)
    with pytest.raises(ValueError, match="needs labelled images"):
        vd.metrics.feature_network(toy)


def test_fd_rises_with_noise(digits, net):
    """FD(test, noisy test) grows with σ; FD(train, test) is well below FD(test, strongly noisy test)."""
    sys.path.insert(0, str(ROOT))
    from experiments.fd_noise import corrupt

    rng = np.random.default_rng(0)
    stats = lambda images: vd.metrics.FeatureStats.from_features(net(images))
    test = stats(digits.test)
    fds = [vd.metrics.frechet_distance(test, stats(corrupt(digits.test, s, 17, rng))) for s in (0.1, 0.3, 0.6, 1.0)]
    assert np.all(np.diff(fds) > 0), fds
    assert vd.metrics.frechet_distance(stats(digits.train), test) < 0.5 * fds[-1], fds


def test_sample_quality(digits, net):
    f_train = net(digits.train)
    q = vd.metrics.sample_quality(digits.test, f_train, extractor=net, kid_num_subsets=10)
    assert set(q) == {"n", "n_reference", "fd", "kid", "kid_std", "precision", "recall", "classifier_confidence"}
    f_test = net(digits.test)
    assert q["n"] == 297 and q["n_reference"] == 1500
    assert q["fd"] == vd.metrics.frechet_distance(
        vd.metrics.FeatureStats.from_features(f_test), vd.metrics.FeatureStats.from_features(f_train)
    )
    assert (q["kid"], q["kid_std"]) == vd.metrics.kid(f_test, f_train, subset_size=297, num_subsets=10)
    assert (q["precision"], q["recall"]) == vd.metrics.precision_recall(f_train, f_test)
    assert q["classifier_confidence"] == pytest.approx(np.mean(np.max(net.class_probabilities(digits.test), 1)))
    # any callable extractor (no class probabilities); statistics-only reference (only FD)
    flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)
    q2 = vd.metrics.sample_quality(
        digits.test, vd.metrics.FeatureStats.from_features(flat(digits.train)), extractor=flat
    )
    assert set(q2) == {"n", "n_reference", "fd"}
    with pytest.raises(ValueError, match="gives 64 features per sample but `reference` has 32"):
        vd.metrics.sample_quality(digits.test, f_train[:, :32], extractor=net)


def test_train_classifier_script(tmp_path, cache, digits):
    sys.path.insert(0, str(ROOT))
    import experiments.train_classifier as tc

    cfg = tc.Config(data="digits", steps=150, workdir=str(tmp_path / "run"), progress=False)
    summary = tc.main(cfg)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    net = vd.metrics.load_feature_network(tmp_path / "run" / "feature_network", digits)
    cached = vd.metrics.feature_network(digits, config=QUICK, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(net(digits.test[:20]), cached(digits.test[:20]))  # same seed: same network
    with pytest.raises(FileExistsError, match="already holds a classifier run"):
        tc.main(cfg)
    assert not list((tmp_path / "run").glob(".*")), "no temporary files left behind"


# Issue 13 asks for >= 97 % on both, with the default seed 0. Measured with the defaults (mixup 0.2): digits
# 97.98 % (291/297; seeds 1-5: 98.3, 96.3, 97.6, 96.3, 98.0 %), MNIST subset 97.6 % (seeds 1, 2: 98.0 %).
@pytest.mark.slow
@pytest.mark.parametrize(("name", "threshold"), [("digits", 0.97), ("mnist", 0.97)])
def test_default_classifier_accuracy(name, threshold):
    ds = vd.data.load(name)
    _, info = vd.metrics.train_feature_network(ds, progress=False)
    assert info["test_accuracy"] >= threshold, info["test_accuracy"]
