"""Alternative rules for choosing ``issue_score`` by the canaries, scored by their regret on the real noise.

    python benchmarks/selection_rules.py [--dataset digits] [--kinds symmetric,pair,confusion]
        [--rates 0.1,0.2,0.4] [--seeds 0] [--set canary_rate=0.05 ...]
        [--out benchmarks/results/selection_rules_dev.csv]

Runs one audit per setting and seed, keeps the selector's inputs (every signal over the training rows
with the canaries, the canary weights, the number of rows excluded as probable noise) and replays
:func:`audit.signals.combine.choose_combination` under each rule:

* ``current``: the product's rule (:func:`audit.signals.combine.choose_combination`). Since commit
  e22d3ed that is the rank-sum rule: the candidate with the lowest sum of its ranks under the
  ``consensus``, ``self_exclude`` and ``soft_exclude`` canary AUPRCs (ties to the simpler), chosen on
  development seeds 0 and 7-15. In the CSVs written before it, ``current`` is ``consensus``; the CSVs
  of its development and test runs also have a ``ranksum`` column, its replay before the product
  computed it (the two agreed on all 81 runs);
* ``consensus``: the rule before that (highest canary AUPRC against the real rows minus the consensus's
  top n, rounded to 3 decimals, ties to the simpler);
* ``one_se``: the simplest candidate whose canary AUPRC is within one bootstrap standard error (of the
  paired difference, 200 stratified resamples) of the best's, then the higher AUPRC;
* ``auroc``: the highest canary AUROC instead of AUPRC;
* ``exclude_x1.5`` / ``x2`` / ``x3``: the current rule with 1.5-3× as many consensus-top real rows left
  out of the canaries' negatives;
* ``self_exclude``: each candidate's canary AUPRC against the real rows minus *its own* top n (n = the
  rows the product flags), not the consensus's: the consensus's leftovers are real noise that a
  candidate better than the consensus ranks above the canaries, which the current rule charges it for;
* ``recall_at_n``: the (weighted) share of canaries each candidate ranks above its own n-th real row,
  i.e. the canaries' recall at the flagging cut-off (ties to the higher ``self_exclude`` AUPRC);
* ``soft_exclude``: each real row counts as a negative with weight 1 − (share of the candidates that put
  it in their own top n): rows every candidate flags drop out (probably real noise), rows none flags
  count fully, and a row only some flag counts partly, so no candidate is charged in full for real
  noise that it finds and the others miss, nor let off its own false alarms.

``self_exclude`` and ``soft_exclude`` read the AUPRCs the product reports for each candidate
(``self_auprc``, ``soft_auprc``).

``--cache DIR`` keeps each run's captured inputs as an ``.npz`` (arrays only, nothing pickled), so a
rerun replays new rules without re-training. ``--explain FILE.npz`` prints one captured run's candidates:
canary AUPRC as the selector scores it, canary AUPRC against all real rows, and AUPRC on the real noise.

Regret = the best candidate's AUPRC on the injected noise − the chosen one's (as in
``benchmarks/detection.py``). Writes one row per run and prints the mean, max and count ≤ 0.01 per rule.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from audit.config import config_from_dict
from audit.pipeline import run_audit
from audit.signals import table
from audit.signals.combine import candidates, choose_combination, rank01

RULES = ("current", "consensus", "one_se", "auroc", "exclude_x1.5", "exclude_x2", "exclude_x3", "self_exclude",
         "recall_at_n", "soft_exclude")


def capture_run(cfg, out: Path) -> dict:
    """One audit; the selector's inputs and the injected-noise truth of the real training rows."""
    seen = {}
    original = table.choose_combination

    def spy(signals, is_canary, n_exclude=0, ineligible=(), canary_weight=None):
        seen.update(signals=dict(signals), is_canary=is_canary, n_exclude=n_exclude, ineligible=ineligible,
                    canary_weight=canary_weight)
        return original(signals, is_canary, n_exclude=n_exclude, ineligible=ineligible, canary_weight=canary_weight)

    table.choose_combination = spy
    try:
        run_audit(cfg, out, progress=False)
    finally:
        table.choose_combination = original
    df = pd.read_parquet(out / "examples.parquet")
    seen["truth"] = df[(df.split == "train") & ~df.held_out_as_canary]["is_injected_noise"].to_numpy(bool)
    return seen


def save_capture(c: dict, path: Path) -> None:
    names = sorted(c["signals"])
    arrays = {f"signal.{k}": np.asarray(c["signals"][k], np.float64) for k in names}
    arrays.update(is_canary=c["is_canary"], n_exclude=np.int64(c["n_exclude"]), truth=c["truth"],
                  ineligible=np.array(list(c["ineligible"]), dtype="U64"),
                  canary_weight=np.asarray(c["canary_weight"] if c["canary_weight"] is not None else [], np.float64))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_capture(path: Path) -> dict:
    z = np.load(path, allow_pickle=False)
    sig = {k.removeprefix("signal."): z[k] for k in z.files if k.startswith("signal.")}
    cw = z["canary_weight"]
    return {"signals": sig, "is_canary": z["is_canary"], "n_exclude": int(z["n_exclude"]), "truth": z["truth"],
            "ineligible": tuple(str(x) for x in z["ineligible"]), "canary_weight": cw if len(cw) else None}


def _recall_at_n(cands: dict, isc: np.ndarray, w: np.ndarray, n: int) -> dict:
    """Per candidate: the weighted share of canaries above its own n-th real row."""
    real = np.flatnonzero(~isc)
    rec = {}
    for name, (_, s) in cands.items():
        top = real[np.argsort(-s[real], kind="stable")[:n]]
        cut = s[top[-1]] if n > 0 else np.inf
        rec[name] = float(np.sum(w[isc] * (s[isc] > cut)) / np.sum(w[isc]))
    return rec


def _one_se(scores: dict, truth: np.ndarray, weight: np.ndarray, simplicity: dict, n_boot=200) -> str:
    base = {k: average_precision_score(truth, v, sample_weight=weight) for k, v in scores.items()}
    top = max(base, key=lambda k: (round(base[k], 3), -simplicity[k]))
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)
    rng = np.random.default_rng(0)
    diffs = {k: [] for k in scores}
    for _ in range(n_boot):
        i = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        ap = {k: average_precision_score(truth[i], v[i], sample_weight=weight[i]) for k, v in scores.items()}
        for k in scores:
            diffs[k].append(ap[top] - ap[k])
    near = [k for k in scores if base[top] - base[k] <= np.std(diffs[k])]
    return min(near, key=lambda k: (simplicity[k], -base[k]))


def replay(c: dict) -> dict:
    """Regret per rule for one captured run."""
    sig, isc, inel, cw = c["signals"], c["is_canary"], c["ineligible"], c["canary_weight"]
    ranks = {k: rank01(v) for k, v in sig.items()}
    real, truth = ~isc, c["truth"]
    combo = choose_combination(sig, isc, n_exclude=c["n_exclude"], ineligible=inel, canary_weight=cw)
    mem = combo["candidate_members"]
    real_ap = {n: average_precision_score(truth, np.mean([ranks[k] for k in m], axis=0)[real]) for n, m in mem.items()}
    best = max(real_ap.values())
    chosen = {"current": combo["chosen"]}
    sc = combo["candidates"]
    chosen["consensus"] = max(sc, key=lambda k: (round(np.nan_to_num(sc[k]["auprc"], nan=-1), 3), -len(mem[k])))
    chosen["auroc"] = max(sc, key=lambda k: (round(np.nan_to_num(sc[k]["auroc"], nan=-1), 3), -len(mem[k])))
    # the negatives and weights choose_combination used
    use = np.ones(len(isc), bool)
    consensus = np.mean(list(ranks.values()), axis=0)
    idx = np.flatnonzero(real)
    use[idx[np.argsort(-consensus[idx], kind="stable")[:c["n_exclude"]]]] = False
    w = np.ones(len(isc))
    if cw is not None:
        w[isc] = cw
    order = [k for k in sorted(ranks, key=lambda k: -np.nan_to_num(combo["canary"][k]["auprc"], nan=-1)) if k not in inel]
    cands = candidates(ranks, order)
    simp = {k: len(m) for k, (m, _) in cands.items()}
    chosen["one_se"] = _one_se({k: s[use] for k, (_, s) in cands.items()}, isc[use], w[use], simp)
    se_ap = {k: sc[k]["self_auprc"] for k in cands}
    se_rec = _recall_at_n(cands, isc, w, c["n_exclude"])
    chosen["self_exclude"] = max(se_ap, key=lambda k: (round(se_ap[k], 3), -simp[k]))
    chosen["recall_at_n"] = max(se_rec, key=lambda k: (round(se_rec[k], 3), round(se_ap[k], 3), -simp[k]))
    chosen["soft_exclude"] = max(cands, key=lambda k: (round(sc[k]["soft_auprc"], 3), -simp[k]))
    out = {}
    for mult in (1.5, 2, 3):
        alt = choose_combination(sig, isc, n_exclude=round(c["n_exclude"] * mult), ineligible=inel, canary_weight=cw)
        members = alt["members"]
        score = np.mean([ranks[k] for k in members], axis=0)[real]
        out[f"exclude_x{mult:g}"] = best - average_precision_score(truth, score)
    for rule, name in chosen.items():
        out[rule] = best - real_ap[name]
        out[f"{rule}_chosen"] = name
    return out


def explain(path: Path) -> pd.DataFrame:
    """One captured run's candidates: what the selector saw and what the real noise says."""
    c = load_capture(path)
    sig, isc = c["signals"], c["is_canary"]
    combo = choose_combination(sig, isc, n_exclude=c["n_exclude"], ineligible=c["ineligible"],
                               canary_weight=c["canary_weight"])
    ranks = {k: rank01(v) for k, v in sig.items()}
    rows = []
    for name, members in combo["candidate_members"].items():
        s = np.mean([ranks[k] for k in members], axis=0)
        rows.append({"candidate": name, "canary_auprc": combo["candidates"][name]["auprc"],
                     "canary_auprc_all_real": average_precision_score(isc, s),
                     "real_auprc": average_precision_score(c["truth"], s[~isc]),
                     "chosen": name == combo["chosen"], "members": "+".join(members)})
    print(f"{path.name}: {int(isc.sum())} canaries, {int(c['truth'].sum())} real flips of {int((~isc).sum())} "
          f"rows, {c['n_exclude']} excluded")
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--kinds", default="symmetric,pair,confusion")
    ap.add_argument("--rates", default="0.1,0.2,0.4")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default=None, help="folder of captured runs (.npz): reused, never re-trained")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run option for every setting (RunConfig field), e.g. canary_rate=0.05")
    ap.add_argument("--explain", default=None, metavar="FILE.npz", help="print one captured run's candidates")
    args = ap.parse_args()
    if args.explain:
        print(explain(Path(args.explain)).round(3).to_string(index=False))
        return
    from detection import _parse_sets  # benchmarks/ is on sys.path when a script there runs

    extra = _parse_sets(args.set)
    tag = "".join(f"-{k}={v}" for k, v in sorted(extra.items()))
    cache = Path(args.cache) if args.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="selection-"))
    rows = []
    for kind in args.kinds.split(","):
        for rate in map(float, args.rates.split(",")):
            for seed in map(int, args.seeds.split(",")):
                cfg = config_from_dict({"dataset": args.dataset, "noise": rate, "noise_kind": kind, "seed": seed,
                                        **extra})
                out = work / f"{kind}-{rate}-{seed}"
                hit = cache / f"{Path(args.dataset).name}-{kind}-{rate}-{seed}{tag}.npz" if cache else None
                if hit is not None and hit.exists():
                    cap = load_capture(hit)
                else:
                    cap = capture_run(cfg, out)
                    if hit is not None:
                        save_capture(cap, hit)
                rows.append({"dataset": args.dataset, "kind": kind, "rate": rate, "seed": seed, **extra, **replay(cap)})
                print(rows[-1], flush=True)
                shutil.rmtree(out, ignore_errors=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    for rule in RULES:
        r = df[rule]
        print(f"{rule:14s} mean regret {r.mean():.4f}  max {r.max():.3f}  <= 0.01 in {int((r <= 0.01).sum())} of {len(r)}")


if __name__ == "__main__":
    main()
