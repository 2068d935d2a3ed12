"""experiments/sample.py on tiny runs trained once per module: files, network calls, the loop's own samples, bad input.

The Gaussian run (about 20 s to train under the test-time type checks) is in the quick suite; the masked text
run (about 45 s) is `slow`, and the kind checks that need only a masked run's config record use a record alone.

The expected call counts are the samplers' documented formulas (docs/api/samplers.md, docs/api/masked.md), written
out here, not the script's number; the reproduction check compares with the numbers the training loop itself wrote
to summary.json.
"""

import json
import pathlib
import sys

import numpy as np
import pytest
import tyro
import vdmpp as vd
from PIL import Image


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiments.sample as sample  # noqa: E402
import experiments.train_gaussian as tg  # noqa: E402
import experiments.train_masked as tm  # noqa: E402
from experiments import _cli  # noqa: E402


PANGRAM = "the quick brown fox jumps over the lazy dog "
TINY = ["--steps", "4", "--batch-size", "8", "--num-samples", "4", "--sample-steps", "4", "--no-progress"]


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory) -> pathlib.Path:
    work = tmp_path_factory.mktemp("gaussian") / "run"
    args = ["--workdir", str(work), "--width", "32", "--depth", "1", "--eval-samples", "0", *TINY]
    tg.main(tyro.cli(tg.Config, args=args))
    return work


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory) -> pathlib.Path:
    """A text run (its sample quality is a cheap n-gram perplexity) whose loop scored 8 samples at the end."""
    root = tmp_path_factory.mktemp("masked")
    text = root / "pangram.txt"
    text.write_text(PANGRAM * 70)  # 3080 characters: 12 sequences of 256
    args = ["--workdir", str(root / "run"), "--data", str(text), "--dim", "16", "--depth", "1", "--num-heads", "2"]
    tm.main(tyro.cli(tm.Config, args=[*args, *TINY, "--eval-samples", "8"]))
    return root / "run"


@pytest.fixture(scope="module")
def masked_record(tmp_path_factory) -> pathlib.Path:
    """A masked run's config record and nothing else: enough for the checks made before anything is loaded."""
    work = tmp_path_factory.mktemp("record") / "run"
    work.mkdir()
    config = {"maths": {"data": "digits", "dim": 16, "depth": 1, "num_heads": 2}, "run": {"steps": 4}}
    (work / "summary.json").write_text(json.dumps({"config": config}))
    return work


def _sample(workdir: pathlib.Path, *argv: str) -> dict:
    return sample.main(tyro.cli(sample.Config, args=["--workdir", str(workdir), "--no-progress", *argv]))


@pytest.mark.parametrize(
    "name, steps, grid, nfe",
    [
        ("dpmpp_2m", 5, "uniform_lambda", 5),  # DPMSolverPP: N
        ("edm", 3, None, 6),  # EDM without the final denoising step: 2N
        ("ancestral", 4, None, 4),  # Ancestral with the decoder: N
    ],
)
def test_gaussian_run_sampled_with_any_sampler(gaussian_run, tmp_path, name, steps, grid, nfe):
    out = tmp_path / name
    argv = ["--sampler", name, "--steps", str(steps), "--num-samples", "6", "--batch-size", "4", "--no-metrics"]
    record = _sample(gaussian_run, *argv, *(["--grid", grid] if grid else []), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["sample.json", "samples.npz", "samples.png"]
    with np.load(out / "samples.npz") as f:
        samples, saved = f["samples"], {k: f[k].item() for k in ("nfe", "sampler", "steps", "step")}
    assert saved == {"nfe": nfe, "sampler": name, "steps": steps, "step": 4}
    assert json.loads((out / "sample.json").read_text()) == record and record["nfe"] == nfe
    assert record["metrics"] == {} and record["grid"] == grid
    # 6 digits (two chunks of 4, the last padded), integer levels of the 17-level data
    assert samples.shape == (6, 8, 8, 1) and np.issubdtype(samples.dtype, np.integer)
    assert samples.min() >= 0 and samples.max() <= 16
    png = np.asarray(Image.open(out / "samples.png"))
    assert np.array_equal(png, vd.train.image_grid(samples, 17))  # the grid shows exactly these samples
    if name == "ancestral":  # another seed, other samples; the same seed, the same samples
        again = _sample(gaussian_run, *argv, "--seed", "3", "--out", str(tmp_path / "s3"))
        again2 = _sample(gaussian_run, *argv, "--seed", "3", "--out", str(tmp_path / "s3b"))
        a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("s3", "s3b"))
        assert again["nfe"] == again2["nfe"] == nfe and np.array_equal(a, b) and not np.array_equal(a, samples)


@pytest.mark.slow
def test_masked_defaults_redraw_the_loops_final_evaluation(masked_run):
    """The defaults (ancestral, --sample-steps, --eval-samples samples, EMA, the loop's keys) score exactly what
    the training loop scored at its last step: the same generative perplexity and entropy, bit for bit."""
    record = _sample(masked_run)
    summary = json.loads((masked_run / "summary.json").read_text())
    out = masked_run / "samples" / "ancestral_4_4"
    assert record["nfe"] == 4 and record["num_samples"] == 8 == summary["eval_samples"]  # MD4 ancestral: T calls
    for name in ("generative_perplexity", "unigram_entropy", "test_generative_perplexity", "eval_samples"):
        assert record["metrics"][name] == summary[name], name
    text = (out / "samples.txt").read_text().split("\n\n")
    samples = np.load(out / "samples.npz")["samples"]
    assert len(text) == 8 and all(len(t) == 256 and set(t) <= set(PANGRAM) for t in text)
    assert samples.shape == (8, 256) and samples.min() >= 0 and samples.max() < len(set(PANGRAM))


@pytest.mark.slow
@pytest.mark.parametrize("name, nfe", [("remdm", 4), ("semi_ar", 16)])  # ReMDM: T; 4 blocks of T each
def test_masked_run_other_samplers(masked_run, tmp_path, name, nfe):
    record = _sample(masked_run, "--sampler", name, "--num-samples", "2", "--no-metrics", "--out", str(tmp_path / "o"))
    assert record["nfe"] == nfe and np.load(tmp_path / "o" / "samples.npz")["nfe"] == nfe


SLOW = pytest.mark.slow
BAD = [
    ("gaussian_run", ["--sampler", "dpm"], ["`--sampler` 'dpm' is unknown", "dpmpp_2m", "pf_heun"]),
    ("gaussian_run", ["--sampler", "remdm"], ["'remdm' is a masked sampler", "gaussian run", "dpmpp_2m"]),
    ("masked_record", ["--sampler", "dpmpp_2m"], ["'dpmpp_2m' is a gaussian sampler", "first_hitting"]),
    ("masked_record", ["--grid", "edm"], ["`--grid` 'edm'", "Gaussian runs only"]),
    pytest.param("masked_run", ["--sampler", "first_hitting"], ["`--steps` 4", "256 tokens"], marks=SLOW),
    ("gaussian_run", ["--steps", "0"], ["`--steps`", "got 0"]),
    ("gaussian_run", ["--step", "3"], ["`--step` 3", "[4]"]),
    ("gaussian_run", ["--out", "EXISTING"], ["`--out`", "exists already"]),
    ("missing", [], ["`--workdir`", "not a folder"]),
]


def _id(case) -> str:
    run, argv, _ = case.values if hasattr(case, "values") else case
    return " ".join([run, *argv])


@pytest.mark.parametrize("run, argv, must", BAD, ids=[_id(c) for c in BAD])
def test_bad_input_is_one_line(request, tmp_path, capsys, run, argv, must):
    workdir = tmp_path / "nowhere" if run == "missing" else request.getfixturevalue(run)
    capsys.readouterr()  # the fixture's training output (a module fixture trains in the first test using it)
    existing = tmp_path / "existing"
    existing.mkdir()
    argv = [str(existing) if a == "EXISTING" else a for a in argv]
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*")) if workdir.exists() else []
    cfg = tyro.cli(sample.Config, args=["--workdir", str(workdir), "--no-progress", *argv])
    code, _ = _cli.call(sample.main, cfg)
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for text in must:
        assert text in err[0], (text, err[0])
    after = sorted(p.relative_to(workdir) for p in workdir.rglob("*")) if workdir.exists() else []
    assert after == before and not list(existing.iterdir())  # nothing written
