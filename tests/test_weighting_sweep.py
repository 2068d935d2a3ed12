"""experiments/weighting_sweep.py end to end at tiny size, its statistics, and the docs' tables against its JSON."""

import json
import math
import pathlib
import sys

import numpy as np
import pytest
import vdmpp as vd


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import _sweep_report, weighting_sweep  # noqa: E402


@pytest.fixture
def quick_feature_network(tmp_path, monkeypatch):
    """A 20-step digits classifier stored where the scripts look for the default one (a private cache)."""
    monkeypatch.setenv("VDMPP_CACHE_DIR", str(tmp_path / "cache"))
    digits = vd.data.load("digits")
    net, info = vd.metrics.train_feature_network(digits, config=vd.metrics.ClassifierConfig(steps=20), progress=False)
    vd.metrics.save_feature_network(vd.metrics.feature_network_path(digits), net, info)


def test_rows_differ_only_in_the_weighting(tmp_path):
    """Same network, steps, schedule, optimiser and EMA for every row of a family; only the weighting changes."""
    for quick in (False, True):
        cfg = weighting_sweep.Config(out=str(tmp_path), quick=quick)
        for fam in ("gaussian", "masked"):
            rows = weighting_sweep.rows_of(fam)
            configs = [weighting_sweep.run_config(cfg, fam, row, 0, tmp_path / "w") for row in rows.values()]
            weighting_fields = {"weighting", "weighting_param"}
            common = [{k: v for k, v in vars(c).items() if k not in weighting_fields} for c in configs]
            assert all(c == common[0] for c in common), fam
            assert len({(c.weighting, c.weighting_param) for c in configs}) == len(rows)
    assert list(weighting_sweep.rows_of("masked")) == ["ELBO", "IDDPM", "EDM", "sigmoid(k=0)", "FM", "simple"]
    assert {"ELBO", "IDDPM", "EDM", "EDM-monotonic", "sigmoid(k=2)", "FM"} < set(weighting_sweep.rows_of("gaussian"))


@pytest.mark.slow  # CI time; the sweep's flags and report are tested above
def test_sweep_tiny_end_to_end_and_resume(tmp_path, quick_feature_network):
    cfg = weighting_sweep.Config(
        out=str(tmp_path / "sweep"),
        quick=True,
        seeds=2,
        families=("gaussian",),  # the masked runs take the same path through the sweep (train_masked.main)
        rows=("ELBO",),
        steps=2,
        eval_samples=64,  # the sample grid's size: one sampler compilation serves both
        sample_steps=2,
        tiny=True,
        progress=False,
    )
    result = weighting_sweep.main(cfg)
    for fam in ("gaussian",):
        m = result["aggregate"][fam]["ELBO"]
        runs = result["runs"][fam]["ELBO"]
        assert len(runs) == 2 and m["test_bpd"]["n"] == 2
        assert m["test_bpd"]["mean"] == pytest.approx(np.mean([r["test_bpd"] for r in runs]))
        assert m["test_fd"]["se"] == pytest.approx(np.std([r["test_fd"] for r in runs], ddof=1) / math.sqrt(2))
    out = tmp_path / "sweep"
    for name in ("weighting_sweep.json", "weighting_sweep.png", "weighting_sweep.md", "samples_gaussian.png"):
        assert (out / name).is_file(), name
    for name in ("samples/gaussian_elbo.png", "runs/gaussian/elbo/seed1/summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "weighting_sweep.json").read_text())["aggregate"] == json.loads(
        json.dumps(result["aggregate"])
    )
    # rerunning reads the finished runs back (nothing retrained): the same numbers
    again = weighting_sweep.main(cfg)
    assert again["runs"] == result["runs"]
    with pytest.raises(ValueError, match=r"`--rows` \['nope'\] are not rows"):
        weighting_sweep.main(weighting_sweep.Config(out=str(tmp_path / "x"), rows=("nope",)))


def test_statistics_and_claims():
    """Mean ± s.e., orderings and claim verdicts on made-up numbers (checked by hand)."""
    runs = {
        "masked": {
            name: [{"test_bpd": 2.0, "test_fd": fd + d, "train_seconds": 1.0} for d in (-0.1, 0.1)]
            for name, fd in zip(("simple", "FM", "sigmoid(k=0)", "EDM", "ELBO", "IDDPM"), (1, 2, 3, 4, 5, 6))
        }
    }
    res = _sweep_report.report(runs, config={}, settings={})
    agg = res["aggregate"]["masked"]
    assert agg["FM"]["test_fd"] == {"mean": pytest.approx(2.0), "se": pytest.approx(0.1), "n": 2}  # std 0.1414 / sqrt 2
    assert res["orderings"]["masked"]["test_fd"] == ["simple", "FM", "sigmoid(k=0)", "EDM", "ELBO", "IDDPM"]
    (claim,) = res["claims"]
    assert claim["id"] == "st_fd_order" and claim["kendall_tau"] == pytest.approx(1.0)
    # neighbours differ by 1 with s.e. sqrt(0.02) = 0.141: z = 7.07 > 2 for every pair
    assert claim["verdict"].startswith("reproduced") and min(t["z"] for t in claim["tests"]) == pytest.approx(
        7.071, 1e-3
    )
    assert len(res["significant_pairs"]["masked"]["test_fd"]) == 15
    assert res["significant_pairs"]["masked"]["test_bpd"] == []  # all equal: no ordering is significant
    runs["masked"]["simple"] = [{"test_bpd": 2.0, "test_fd": 10 + d, "train_seconds": 1.0} for d in (-0.1, 0.1)]
    assert _sweep_report.report(runs, config={}, settings={})["claims"][0]["verdict"].startswith("contradicted")
