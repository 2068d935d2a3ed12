"""experiments/weighting_sweep.py end to end at tiny size, its statistics, and the docs' tables against its JSON."""

import dataclasses
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


def test_sweep_tiny_end_to_end_and_resume(tmp_path, quick_feature_network):
    """Both families at tiny size through the whole pipeline, the runs in two spawned processes (as `--jobs 2`)."""
    cfg = weighting_sweep.Config(
        out=str(tmp_path / "sweep"),
        quick=True,
        seeds=2,
        rows=("ELBO",),
        steps=2,
        eval_samples=64,  # the sample grid's size: one sampler compilation serves both
        sample_steps=2,
        tiny=True,
        progress=False,
    )
    result = weighting_sweep.main(cfg)
    for fam in ("gaussian", "masked"):
        m = result["aggregate"][fam]["ELBO"]
        runs = result["runs"][fam]["ELBO"]
        assert len(runs) == 2 and m["test_bpd"]["n"] == 2
        assert m["test_bpd"]["mean"] == pytest.approx(np.mean([r["test_bpd"] for r in runs]))
        assert m["test_fd"]["se"] == pytest.approx(np.std([r["test_fd"] for r in runs], ddof=1) / math.sqrt(2))
        assert runs[0]["test_fd"] != runs[1]["test_fd"]  # two seeds, two models
    out = tmp_path / "sweep"
    for name in ("weighting_sweep.json", "weighting_sweep.png", "weighting_sweep.md", "samples_masked.png"):
        assert (out / name).is_file(), name
    for name in (
        "samples/gaussian_elbo.png",
        "runs/gaussian/elbo/seed1/summary.json",
        "runs/masked/elbo/seed1/run.log",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "weighting_sweep.json").read_text())["aggregate"] == json.loads(
        json.dumps(result["aggregate"])
    )
    # rerunning reads the finished runs back (nothing retrained, no process started): the same numbers
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weighting_sweep, "ProcessPoolExecutor", None)  # starting a process would fail
        again = weighting_sweep.main(cfg)
    assert again["runs"] == result["runs"]
    # --rescore redraws each run's own samples (sample.py) and scores them with the default feature network:
    # here the network that scored them in training, so the same numbers; then read back without a process
    rescored = weighting_sweep.main(dataclasses.replace(cfg, rescore=True))
    for fam in ("gaussian", "masked"):
        for r, r2 in zip(result["runs"][fam]["ELBO"], rescored["runs"][fam]["ELBO"]):
            assert r2 == pytest.approx(r, rel=1e-6, abs=1e-9)
    assert rescored["feature_network"] == vd.metrics.feature_network_path(vd.data.load("digits")).name
    assert (out / "runs/masked/elbo/seed1/rescored" / rescored["feature_network"] / "samples.npz").is_file()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weighting_sweep, "ProcessPoolExecutor", None)
        assert weighting_sweep.main(dataclasses.replace(cfg, rescore=True))["runs"] == rescored["runs"]
    with pytest.raises(ValueError, match=r"`--rows` \['nope'\] are not rows"):
        weighting_sweep.main(weighting_sweep.Config(out=str(tmp_path / "x"), rows=("nope",)))


def test_statistics_and_claims():
    """Mean ± s.e., paired and unpaired comparisons, orderings and claim verdicts on made-up numbers (by hand)."""
    names = ("simple", "FM", "sigmoid(k=0)", "EDM", "ELBO", "IDDPM")
    runs = {
        "masked": {  # FD 1..6 in the S&T order; seed offsets ±0.1 for even rows, ±0.2 for odd rows
            name: [{"test_bpd": 2.0, "test_fd": fd + d * (1 + i % 2), "train_seconds": 1.0} for d in (-0.1, 0.1)]
            for i, (name, fd) in enumerate(zip(names, (1, 2, 3, 4, 5, 6)))
        }
    }
    res = _sweep_report.report(runs, config={}, settings={})
    agg = res["aggregate"]["masked"]
    assert agg["FM"]["test_fd"] == {"mean": pytest.approx(2.0), "se": pytest.approx(0.2), "n": 2}  # std 0.283 / sqrt 2
    assert res["orderings"]["masked"]["test_fd"] == list(names)
    (claim,) = res["claims"]
    assert claim["id"] == "st_fd_order" and claim["kendall_tau"] == pytest.approx(1.0)
    t = {(x["a"], x["b"]): x for x in claim["tests"]}
    # simple vs FM, per seed: FM - simple = 2 - 0.2 - (1 - 0.1) = 0.9 and 2.2 - 1.1 = 1.1: mean 1, s.e. 0.1
    assert t["simple", "FM"]["paired"] and t["simple", "FM"]["advantage"] == pytest.approx(1.0)
    assert t["simple", "FM"]["se"] == pytest.approx(0.1) and t["simple", "FM"]["z"] == pytest.approx(10.0)
    assert t["simple", "FM"]["z_unpaired"] == pytest.approx(1.0 / math.sqrt(0.1**2 + 0.2**2))
    # simple vs sigmoid: both ±0.1, so the per-seed difference is exactly 2: s.e. 0, z infinite
    assert t["simple", "sigmoid(k=0)"]["se"] == 0.0 and t["simple", "sigmoid(k=0)"]["z"] == math.inf
    assert claim["verdict"].startswith("reproduced")
    assert len(res["significant_pairs"]["masked"]["test_fd"]) == 15
    assert res["significant_pairs"]["masked"]["test_bpd"] == []  # all equal: no ordering is significant
    runs["masked"]["simple"] = [{"test_bpd": 2.0, "test_fd": 10 + d, "train_seconds": 1.0} for d in (-0.1, 0.1)]
    assert _sweep_report.report(runs, config={}, settings={})["claims"][0]["verdict"].startswith("contradicted")


def test_docs_results_tables_are_the_committed_sweep_json():
    """docs/results.md's sweep tables are `_sweep_report.markdown` of the sweep's JSON in docs/assets (not typed in):
    both families, every row, at least 3 seeds each."""
    result = json.loads((ROOT / "docs/assets/weighting_sweep/weighting_sweep.json").read_text())
    for family in ("gaussian", "masked"):
        assert set(result["aggregate"][family]) == set(weighting_sweep.rows_of(family)), family
        assert all(m["test_fd"]["n"] >= 3 for m in result["aggregate"][family].values()), family
    text = (ROOT / "docs/results.md").read_text()
    start = "<!-- SWEEP tables: made from docs/assets/weighting_sweep/weighting_sweep.json -->\n"
    end = "<!-- /SWEEP -->"
    assert start in text and end in text
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block.strip() == _sweep_report.markdown(result).strip()
