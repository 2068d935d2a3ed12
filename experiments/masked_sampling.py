"""Masked-diffusion samplers with the exact (oracle) denoiser: non-data samples against calls, remasking, the cache.

With the exact denoiser of a finite data set, one token per call (`FirstHitting`, any-order AR) samples
exactly, and MD4's ancestral sampler with T steps only in the limit: revealing several tokens at once
from their marginals can produce sequences that are not data rows. This script measures

1. the fraction of samples that are not data rows against T, per masking schedule and grid;
2. ReMDM remasking against ancestral at equal calls, with the exact denoiser and with one blended 30%
   with uniform (a stand-in for a trained network's errors);
3. what MDLM's `cache=True` saves at batch 64 x 256 tokens: the batch-level skip, and how much a
   per-sequence reuse could save if a batched call could skip rows (it cannot under jit).

    python experiments/masked_sampling.py [--out runs/masked_sampling] [--quick]

Writes OUT/masked_sampling.json and OUT/masked_sampling.png (atomically). About 3 min on one CPU core
(--quick: 1 min).
"""

import dataclasses
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import vdmpp as vd
from tqdm import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


M = vd.masked


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings."""

    out: pathlib.Path = pathlib.Path("runs/masked_sampling")
    """Output folder."""
    quick: bool = False
    """Fewer steps and samples."""
    seed: int = 0
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check the settings before anything is computed or written (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 0, "seed")
    _cli.folder(cfg, "out")


def make_data(num_rows: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """`num_rows` distinct random sequences."""
    rng = np.random.default_rng(seed)
    rows: set[tuple[int, ...]] = set()
    while len(rows) < num_rows:
        rows.add(tuple(int(v) for v in rng.integers(0, vocab, length)))
    return np.array(sorted(rows), np.int32)


def non_data_fraction(samples: np.ndarray, data: np.ndarray) -> float:
    """Fraction of samples that are not rows of `data`."""
    rows = {r.tobytes() for r in data}
    return float(np.mean([s.tobytes() not in rows for s in np.asarray(samples)]))


class Blended(eqx.Module):
    """A denoiser whose token probabilities are `1 - weight` the wrapped one's plus `weight` uniform."""

    inner: eqx.Module
    weight: float = 0.3

    def __call__(self, z, lam):
        logp = jax.nn.log_softmax(self.inner(z, lam), axis=-1)  # pyright: ignore[reportCallIssue]
        return jnp.logaddexp(jnp.log1p(-self.weight) + logp, jnp.log(self.weight / logp.shape[-1]))


class UniformLogits(eqx.Module):
    """Uniform token probabilities: which tokens a step reveals does not depend on the denoiser."""

    vocab: int = eqx.field(static=True)

    def __call__(self, z, lam):
        return jnp.zeros(z.shape + (self.vocab,))


_sample = eqx.filter_jit(M.sample)
_ancestral = eqx.filter_jit(M.ancestral)


def sweep(oracle, data, steps, num_samples, key) -> dict:
    """Non-data fraction against T per schedule and grid (MD4 ancestral), and the exact references."""
    vocab, length = oracle.vocab_size, data.shape[1]
    setups = {
        "linear": (M.LinearSchedule(), M.UniformGrid()),
        "cosine": (M.CosineSchedule(), M.UniformGrid()),
        "poly2": (M.PolynomialSchedule(k=2.0), M.UniformGrid()),
        "poly0.5": (M.PolynomialSchedule(k=0.5), M.UniformGrid()),
        "geometric": (M.GeometricSchedule(), M.UniformGrid()),
        "linear + cosine grid fine at data": (M.LinearSchedule(), M.CosineGridFineAtData()),
        "linear + MD4's cosine grid (fine at noise)": (M.LinearSchedule(), M.CosineGridFineAtNoise()),
    }
    out: dict = {"steps": list(steps), "series": {}}
    for name, (schedule, grid) in tqdm(setups.items(), desc="schedules"):
        fracs = []
        for T in steps:
            s, _ = _sample(
                M.Ancestral(grid=grid), oracle, (num_samples, length), key=jr.fold_in(key, T),
                schedule=schedule, num_steps=T, mask_id=vocab,
            )  # fmt: skip
            fracs.append(non_data_fraction(np.asarray(s), data))
        out["series"][name] = fracs
    s, nfe = _sample(
        M.FirstHitting(), oracle, (num_samples, length), key=key, schedule=M.LinearSchedule(), mask_id=vocab
    )
    out["first_hitting"] = {"non_data_fraction": non_data_fraction(np.asarray(s), data), "nfe": nfe}
    return out


def remasking(oracle, data, steps, num_samples, key) -> dict:
    """Non-data fraction of ancestral vs ReMDM at equal calls, exact and 30%-blended denoisers."""
    vocab, length = oracle.vocab_size, data.shape[1]
    samplers = {
        "ancestral": M.Ancestral(),
        "remdm_cap_0.02": M.ReMDM(M.RemaskCap(0.02)),
        "remdm_rescale_0.5": M.ReMDM(M.RemaskRescale(0.5)),
        "remdm_conf": M.ReMDM(M.RemaskConfidence()),
        "remdm_loop": M.ReMDM(M.RemaskLoop()),
    }
    out: dict = {"steps": list(steps)}
    for dname, den in {"exact": oracle, "blended_30pct_uniform": Blended(oracle)}.items():
        for sname, sampler in tqdm(samplers.items(), desc=f"remasking ({dname})"):
            fracs = []
            for T in steps:
                s, nfe = _sample(
                    sampler, den, (num_samples, length), key=jr.fold_in(key, T), schedule=M.LinearSchedule(),
                    num_steps=T, mask_id=vocab,
                )  # fmt: skip
                assert nfe == T
                fracs.append(non_data_fraction(np.asarray(s), data))
            out.setdefault(dname, {})[sname] = fracs
    return out


def cache_savings(steps, key, batch: int = 64, length: int = 256, vocab: int = 6) -> dict:
    """Calls of `ancestral(..., cache=True)` at batch x length tokens, and per-sequence reuse (batch 1)."""
    den = UniformLogits(vocab)
    out: dict = {"batch": batch, "length": length, "steps": list(steps), "batch_calls": [], "per_sequence_calls": []}
    for T in tqdm(steps, desc="cache"):
        kw = dict(schedule=M.LinearSchedule(), num_steps=T, mask_id=vocab, cache=True)
        _, nfe = _ancestral(den, (batch, length), key=jr.fold_in(key, T), **kw)
        one = jax.vmap(lambda k: _ancestral(den, (1, length), key=k, **kw)[1])(
            jr.split(jr.fold_in(key, 10**6 + T), batch)
        )
        out["batch_calls"].append(int(nfe))
        out["per_sequence_calls"].append(float(np.mean(np.asarray(one))))
    return out


def main(cfg: Config) -> dict:
    """Run the three measurements, write JSON + PNG, print and return the results."""
    validate(cfg)
    out_dir = cfg.out
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, length, num_rows = 6, 10, 200
    data = make_data(num_rows, length, vocab, cfg.seed)
    oracle = vd.oracle.EmpiricalMaskedDenoiser(data, vocab_size=vocab, mask_id=vocab)
    key = jr.key(cfg.seed)
    steps = [1, 2, 4, 8, 16, 32, 64] if cfg.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    num_samples = 500 if cfg.quick else 2000
    t0 = time.time()
    results: dict = {"data": {"num_rows": num_rows, "length": length, "vocab_size": vocab}}
    results["sweep"] = sweep(oracle, data, steps, num_samples, jr.fold_in(key, 1))
    results["remasking"] = remasking(
        oracle, data, [8, 32] if cfg.quick else [8, 32, 128], num_samples, jr.fold_in(key, 2)
    )
    results["cache"] = cache_savings([256, 1024] if cfg.quick else [256, 1024, 4096], jr.fold_in(key, 3))
    results["num_samples"] = num_samples
    results["seconds"] = round(time.time() - t0, 1)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, fracs in results["sweep"]["series"].items():
        axes[0].plot(steps, fracs, marker="o", ms=3, label=name)
    axes[0].set(xscale="log", xlabel="steps T (= calls)", ylabel="fraction of samples not in the data set")
    axes[0].set_xscale("log", base=2)
    axes[0].set_title(f"MD4 ancestral, oracle denoiser, {num_rows} rows, L={length}, V={vocab}", fontsize=9)
    axes[0].legend(fontsize=7)
    rem = results["remasking"]
    for dname, ls in (("exact", "-"), ("blended_30pct_uniform", "--")):
        for sname, fracs in rem[dname].items():
            axes[1].plot(rem["steps"], fracs, ls, marker="o", ms=3, label=f"{sname} ({dname})")
    axes[1].set_xscale("log", base=2)
    axes[1].set(xlabel="steps T (= calls)", ylabel="fraction not in the data set")
    axes[1].set_title("ReMDM vs ancestral at equal calls", fontsize=9)
    axes[1].legend(fontsize=6)
    cache = results["cache"]
    axes[2].plot(cache["steps"], cache["steps"], "k:", label="no cache (T calls)")
    axes[2].plot(cache["steps"], cache["batch_calls"], "o-", label=f"cache, batch {cache['batch']}")
    axes[2].plot(cache["steps"], cache["per_sequence_calls"], "s-", label="cache, one sequence (mean)")
    axes[2].set(xscale="log", yscale="log", xlabel="steps T", ylabel="network calls")
    axes[2].set_title(f"MDLM cache, {cache['length']} tokens per sequence", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    vd.train.save_figure(fig, out_dir / "masked_sampling.png")
    vd.train.atomic_write_json(out_dir / "masked_sampling.json", results)
    for name, fracs in results["sweep"]["series"].items():
        print(f"{name:44s}", " ".join(f"{f:.3f}" for f in fracs))
    print("first hitting:", results["sweep"]["first_hitting"])
    for dname in ("exact", "blended_30pct_uniform"):
        for sname, fracs in results["remasking"][dname].items():
            at = results["remasking"]["steps"]
            print(f"{dname:22s} {sname:18s}", " ".join(f"{f:.3f}" for f in fracs), "at T =", at)
    return results


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
