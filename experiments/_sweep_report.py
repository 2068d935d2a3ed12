"""The weighting sweep's statistics and outputs (not a script): mean ± s.e., orderings, the papers' claims, plots.

Everything here reads only the runs' numbers, so `report` and `markdown` regenerate the docs' tables from
`weighting_sweep.json` alone (`python -c "..."`, or the test that checks docs/results.md against the JSON).
"""

import itertools
import json
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.stats
import vdmpp as vd


# (summary key, label, +1 if higher is better else -1)
METRICS: tuple[tuple[str, str, int], ...] = (
    ("test_bpd", "test bits/dim", -1),
    ("test_fd", "FD", -1),
    ("test_kid", "KID", -1),
    ("precision", "precision", 1),
    ("recall", "recall", 1),
    ("classifier_confidence", "confidence", 1),
)
_SIGN = {k: s for k, _, s in METRICS}

# The papers' claims, each as "a is better than b" pairs of rows under one metric.
_KG_OTHERS = ("IDDPM", "EDM", "EDM-monotonic", "sigmoid(k=2)", "FM")
_ST_ORDER = ("simple", "FM", "sigmoid(k=0)", "EDM", "ELBO", "IDDPM")  # best FID first (S&T ImageNet-64 table)
CLAIMS: tuple[dict[str, Any], ...] = (
    dict(
        id="kg_fd_monotonic",
        family="gaussian",
        metric="test_fd",
        claim="K&G: monotonic weightings (sigmoid(k=2), EDM-monotonic) sample better (lower FD) than the ELBO",
        pairs=[("sigmoid(k=2)", "ELBO"), ("EDM-monotonic", "ELBO")],
    ),
    dict(
        id="kg_bpd_elbo",
        family="gaussian",
        metric="test_bpd",
        claim="K&G: the ELBO weighting gives the best bits/dim",
        pairs=[("ELBO", r) for r in _KG_OTHERS],
    ),
    dict(
        id="st_fd_order",
        family="masked",
        metric="test_fd",
        claim="S&T (ImageNet-64 FID): simple 2.96 < FM 3.43 < sigmoid(k=0) 3.91 < EDM 4.42 < ELBO 6.84 < IDDPM 11.14",
        pairs=list(itertools.combinations(_ST_ORDER, 2)),
        order=list(_ST_ORDER),
    ),
)


def numbers(summary_path: pathlib.Path) -> dict[str, float]:
    """The metrics of one finished run (its summary.json)."""
    s = json.loads(pathlib.Path(summary_path).read_text())
    out = {k: float(s[k]) for k, _, _ in METRICS if k in s}
    out["train_seconds"] = float(s.get("train_seconds_this_session", float("nan")))
    out["train_cpu_seconds"] = float(s.get("train_cpu_seconds_this_session", float("nan")))
    return out


def mean_se(values: list[float]) -> dict[str, float]:
    """Mean, standard error (sample std / sqrt n; NaN for n = 1) and n."""
    v = np.asarray(values, np.float64)
    se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
    return {"mean": float(np.mean(v)), "se": se, "n": int(v.size)}


def compare(
    agg: dict[str, dict[str, Any]], metric: str, a: str, b: str, runs: dict[str, list[dict[str, float]]] | None = None
) -> dict[str, Any]:
    """Is row `a` better than row `b`? The difference in the better direction, its s.e., and whether > 2 s.e.

    With `runs` (each row's runs in seed order) the difference is paired by seed: a seed fixes the
    initialisation and the data order for every row, so the s.e. is that of the per-seed differences, which
    removes the seed's shared effect; the unpaired s.e. (independent means) is reported beside it.
    """
    ma, mb = agg[a][metric], agg[b][metric]
    diff = _SIGN[metric] * (ma["mean"] - mb["mean"])  # > 0: a is better
    se_unpaired = math.sqrt(ma["se"] ** 2 + mb["se"] ** 2)
    out = {"a": a, "b": b, "advantage": diff, "z_unpaired": diff / se_unpaired if se_unpaired > 0 else float("nan")}
    if runs is not None and len(runs[a]) == len(runs[b]) >= 2:
        d = _SIGN[metric] * (np.array([r[metric] for r in runs[a]]) - np.array([r[metric] for r in runs[b]]))
        se = float(np.std(d, ddof=1) / math.sqrt(d.size))
        out |= {"paired": True}
    else:
        se = se_unpaired
        out |= {"paired": False}
    z = diff / se if se > 0 else (math.copysign(math.inf, diff) if diff else float("nan"))  # se 0: exact
    return out | {"se": se, "z": z}


def _verdict(tests: list[dict[str, Any]]) -> str:
    agree = [t["advantage"] > 0 for t in tests]
    sig = [abs(t["z"]) > 2 for t in tests]
    if all(agree) and all(sig):
        return "reproduced (every pair > 2 s.e.)"
    if any(not a and s for a, s in zip(agree, sig)):
        return "contradicted (a pair reversed by > 2 s.e.)"
    if all(agree):
        return "same direction, not all pairs > 2 s.e."
    return "not reproduced (some pairs reversed, within 2 s.e.)"


def report(runs: dict[str, dict[str, list[dict[str, float]]]], *, config: dict, settings: dict) -> dict[str, Any]:
    """Aggregates, orderings (best first), pairs that differ by > 2 s.e., and each paper claim checked."""
    agg = {
        fam: {row: {k: mean_se([r[k] for r in rs]) for k, _, _ in METRICS if all(k in r for r in rs)} | {
            "train_seconds": mean_se([r["train_seconds"] for r in rs])
        } for row, rs in rows.items()}
        for fam, rows in runs.items()
    }  # fmt: skip
    orderings, significant = {}, {}
    for fam, rows in agg.items():
        orderings[fam], significant[fam] = {}, {}
        for k, _, sign in METRICS:
            have = [r for r in rows if k in rows[r]]
            orderings[fam][k] = sorted(have, key=lambda r: -sign * rows[r][k]["mean"])
            pairs = [compare(rows, k, a, b, runs[fam]) for a, b in itertools.combinations(orderings[fam][k], 2)]
            significant[fam][k] = [p for p in pairs if abs(p["z"]) > 2]
    claims = []
    for c in CLAIMS:
        rows = agg.get(c["family"], {})
        if not all(a in rows and b in rows and c["metric"] in rows[a] for a, b in c["pairs"]):
            continue
        tests = [compare(rows, c["metric"], a, b, runs[c["family"]]) for a, b in c["pairs"]]
        entry = {k: v for k, v in c.items() if k != "pairs"} | {"tests": tests, "verdict": _verdict(tests)}
        if "order" in c:
            found = orderings[c["family"]][c["metric"]]
            entry["found_order"] = [r for r in found if r in c["order"]]
            tau = scipy.stats.kendalltau([c["order"].index(r) for r in entry["found_order"]], range(len(c["order"])))
            entry["kendall_tau"] = float(tau.statistic)
        claims.append(entry)
    return {
        "config": config,
        "settings": settings,
        "row_order": {fam: list(rows) for fam, rows in runs.items()},  # the JSON's objects are sorted by key
        "runs": runs,
        "aggregate": agg,
        "orderings": orderings,
        "significant_pairs": significant,
        "claims": claims,
        "machine": {"cpus": os.cpu_count(), "load_at_report": list(os.getloadavg())},
    }


def _fmt(m: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    se = "" if math.isnan(m["se"]) else f" ± {m['se'] * scale:.{digits}f}"
    return f"{m['mean'] * scale:.{digits}f}{se}"


def _row_order(result: dict[str, Any], fam: str) -> list[str]:
    """The family's rows in the sweep's order (as written by `report`), else as stored."""
    return result.get("row_order", {}).get(fam) or list(result["aggregate"][fam])


def markdown(result: dict[str, Any]) -> str:
    """The results tables (mean ± s.e. over seeds), orderings and claims, as markdown."""
    lines = []
    if "feature_network" in result:  # `--rescore`: one network scored every run's samples
        lines += [
            f"Sample metrics: every run's samples scored with the feature network `{result['feature_network']}`.",
            "",
        ]
    for fam, rows in result["aggregate"].items():
        rows = {row: rows[row] for row in _row_order(result, fam)}
        n = next(iter(rows.values()))["test_bpd"]["n"]
        lines += [f"**{fam.capitalize()}** ({n} seeds; mean ± standard error):", ""]
        head = ["weighting"] + [label + (" ×10³" if k == "test_kid" else "") for k, label, _ in METRICS]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for row, m in rows.items():
            cells = [_fmt(m[k], 1e3 if k == "test_kid" else 1.0, 2 if k == "test_fd" else 3) for k, _, _ in METRICS]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
        for k, label, sign in METRICS[:3]:
            order = result["orderings"][fam][k]
            sig = result["significant_pairs"][fam][k]
            best = " < ".join(order) if sign < 0 else " > ".join(order)
            npairs = len(order) * (len(order) - 1) // 2
            sig_text = f"{len(sig)} of {npairs} pairs differ by > 2 s.e. (paired by seed)"
            lines.append(f"- {label}, best first: {best}; {sig_text}")
        lines.append("")
    if result["claims"]:
        lines += [
            "| claim | metric | pairs in the claimed direction | of them > 2 s.e. | verdict |",
            "|" + " --- |" * 5,
        ]
        for c in result["claims"]:
            agree = sum(t["advantage"] > 0 for t in c["tests"])
            sig = sum(t["advantage"] > 0 and t["z"] > 2 for t in c["tests"])
            tau = f" (Kendall τ {c['kendall_tau']:.2f})" if "kendall_tau" in c else ""
            lines.append(
                f"| {c['claim']} | {c['metric']} | {agree} of {len(c['tests'])}{tau} | {sig} | {c['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)


def summary_text(result: dict[str, Any]) -> str:
    """A short closing printout: the orderings by FD and bits/dim and the claims' verdicts."""
    lines = []
    for fam, orders in result["orderings"].items():
        lines.append(f"{fam}: FD best first: {', '.join(orders['test_fd'])}")
        lines.append(f"{fam}: bits/dim best first: {', '.join(orders['test_bpd'])}")
    lines += [f"{c['id']}: {c['verdict']}" for c in result["claims"]]
    return "\n".join(lines)


def _plots(out: pathlib.Path, result: dict[str, Any], runs_dir: pathlib.Path, slug: Callable[[str], str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fams = list(result["aggregate"])
    fig, axes = plt.subplots(len(fams), len(METRICS), figsize=(3.1 * len(METRICS), 3.3 * len(fams)), squeeze=False)
    for i, fam in enumerate(fams):
        rows = result["aggregate"][fam]
        names = _row_order(result, fam)
        for j, (k, label, sign) in enumerate(METRICS):
            ax = axes[i, j]
            mean = [rows[r][k]["mean"] for r in names]
            se = [0.0 if math.isnan(rows[r][k]["se"]) else rows[r][k]["se"] for r in names]
            ax.bar(range(len(names)), mean, yerr=se, capsize=3, color="tab:blue" if fam == "gaussian" else "tab:green")
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            lo, hi = min(m - s for m, s in zip(mean, se)), max(m + s for m, s in zip(mean, se))
            pad = 0.15 * (hi - lo) + 1e-9
            ax.set_ylim(max(0.0, lo - pad) if k != "test_bpd" else lo - pad, hi + pad)
            ax.set_title(f"{fam}: {label} ({'higher' if sign > 0 else 'lower'} is better)", fontsize=8)
    fig.suptitle("weighting sweep on digits: mean ± 1 s.e. over seeds", fontsize=10)
    fig.tight_layout()
    vd.train.save_figure(fig, out / "weighting_sweep.png")
    for fam in fams:
        names = _row_order(result, fam)
        cols = min(5, len(names))
        rows_n = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(2.6 * cols, 3.2 * rows_n), squeeze=False, layout="constrained")
        for ax, name in zip(axes.ravel(), names):
            path = runs_dir / fam / slug(name) / "seed0" / "samples.png"
            if path.is_file():
                img = np.asarray(Image.open(path))
                ax.imshow(img, cmap="gray", vmin=0, vmax=255, aspect="equal")  # a square grid stays square
                (out / "samples").mkdir(exist_ok=True)
                vd.train.save_png(img, out / "samples" / f"{fam}_{slug(name)}.png")
            fd = result["aggregate"][fam][name].get("test_fd")
            ax.set_title(name + ("" if fd is None else f"\nFD {fd['mean']:.2f}"), fontsize=8)
        for ax in axes.ravel():
            ax.axis("off")
        fig.suptitle(f"{fam} diffusion, seed 0: samples per weighting", fontsize=9)
        vd.train.save_figure(fig, out / f"samples_{fam}.png")


def write_outputs(
    out: pathlib.Path, result: dict[str, Any], *, runs_dir: pathlib.Path, slug: Callable[[str], str]
) -> None:
    """weighting_sweep.json, weighting_sweep.md, weighting_sweep.png and the sample grids (atomically)."""
    vd.train.atomic_write_json(out / "weighting_sweep.json", result)
    vd.train.atomic_write_bytes(out / "weighting_sweep.md", markdown(result).encode())
    _plots(out, result, runs_dir, slug)
