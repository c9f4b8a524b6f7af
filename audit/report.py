"""``RUN/report.html``: one self-contained page (every image embedded as base64 PNG) with the plots a
reader would rather look at than read.

Sections:

1. the headline metrics and the resolved config;
2. the ``issue_score`` distribution of training examples by ``category`` (and by injected noise);
3. flagged training examples per class;
4. the paper's Figure 5a: the fraction of training points whose self-influence exceeds s, for the
   points a robust model misclassifies against all points (Feldman–Zhang memorization and TracIn);
5. the paper's Figure 5b: the distribution of the largest influence a training image has on a test
   point, for test points a robust model misclassifies against all test points with pairs;
6. natural versus robust accuracy (train, clean test, adversarial test);
7. galleries of the top flagged training examples and the top train→test pairs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, read_json

CATEGORY_COLORS = {"mislabelled": "#d62728", "ambiguous": "#ff7f0e", "atypical": "#9467bd", "ok": "#8c8c8c"}
MODEL_COLORS = {"natural": "#1f77b4", "pgd": "#d62728", "trades": "#2ca02c", "fgsm": "#ff7f0e"}
PNG_PREFIX = "data:image/png;base64,"


# -- loading ----------------------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(manifest, examples, pairs) of a complete run; :class:`AuditInputError` naming the file otherwise."""
    run = Path(run_dir)
    man_path = run / "manifest.json"
    if not man_path.is_file():
        raise AuditInputError(f"{run}: no manifest.json (not a run directory; make one with `audit run`)")
    try:
        man = read_json(man_path)
    except ValueError as e:
        raise AuditInputError(f"{man_path}: not valid JSON ({e})") from None
    if man.get("status") != "complete":
        raise AuditInputError(f"{man_path}: run status is {man.get('status')!r}, not 'complete'; "
                              "rerun the same `audit run` command to finish it")
    tables = []
    for name in ("examples.parquet", "pairs.parquet"):
        p = run / name
        if not p.is_file():
            raise AuditInputError(f"{p}: missing (the run directory is incomplete)")
        tables.append(pd.read_parquet(p))
    return man, tables[0], tables[1]


def _load_images(man: dict) -> tuple[dict[str, np.ndarray], str]:
    """example_id -> uint8 (C, H, W) from the dataset the run audited, and a note ('' when all is well)."""
    from audit.config import config_from_dict
    from audit.pipeline import prepare_dataset

    try:
        cfg = config_from_dict({k: v for k, v in man["config"].items()})
        ds = prepare_dataset(cfg)
    except Exception as e:  # the report still has its plots without images
        return {}, f"images unavailable: cannot load dataset {man['dataset']['spec']!r} ({type(e).__name__}: {e})"
    note = ""
    if ds.fingerprint() != man["dataset"].get("fingerprint"):
        note = (f"the dataset {man['dataset']['spec']!r} on disk differs from the audited one (fingerprint "
                f"{ds.fingerprint()} ≠ {man['dataset'].get('fingerprint')}); images may not match the rows")
    return {str(i): ds.images[k] for k, i in enumerate(ds.example_ids)}, note


# -- images -----------------------------------------------------------------------------------------
def _b64_png(data: bytes) -> str:
    return PNG_PREFIX + base64.b64encode(data).decode()


def image_png(img: np.ndarray, min_size: int = 84) -> bytes:
    """uint8 (C, H, W) -> PNG bytes, upscaled by an integer factor (nearest) to at least ``min_size`` px."""
    from PIL import Image

    arr = np.asarray(img)
    arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    im = Image.fromarray(np.ascontiguousarray(arr))
    f = max(1, int(np.ceil(min_size / max(im.size))))
    if f > 1:
        im = im.resize((im.size[0] * f, im.size[1] * f), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# -- plots ------------------------------------------------------------------------------------------
def plot_issue_scores(tr: pd.DataFrame) -> bytes:
    """Stacked histogram of training ``issue_score`` by category; a second panel by injected noise."""
    plt = _plt()
    has_noise = "is_injected_noise" in tr.columns
    fig, axes = plt.subplots(1, 2 if has_noise else 1, figsize=(11 if has_noise else 6, 3.6), squeeze=False)
    bins = np.linspace(0, 1, 26)
    ax = axes[0, 0]
    cats = [c for c in CATEGORY_COLORS if (tr["category"] == c).any()]
    ax.hist([tr.loc[tr["category"] == c, "issue_score"] for c in cats], bins=bins, stacked=True,
            color=[CATEGORY_COLORS[c] for c in cats], label=[f"{c} ({(tr['category'] == c).sum()})" for c in cats])
    thr = _flag_threshold(tr)
    for a in axes[0]:
        if thr is not None:
            a.axvline(thr, color="k", ls="--", lw=1)
        a.set_xlabel("issue_score (higher = more likely mislabelled)")
        a.set_ylabel("training examples")
    ax.set_title("issue_score by category (training split)")
    ax.legend(fontsize=8, loc="upper left")
    if has_noise:
        ax = axes[0, 1]
        noisy = tr["is_injected_noise"].astype(bool)
        ax.hist([tr.loc[~noisy, "issue_score"], tr.loc[noisy, "issue_score"]], bins=bins, stacked=True,
                color=["#8c8c8c", "#d62728"], label=[f"clean label ({(~noisy).sum()})", f"injected noise ({noisy.sum()})"])
        ax.set_title("issue_score by injected label noise")
        ax.legend(fontsize=8, loc="upper left")
    if thr is not None:
        axes[0, -1].text(thr, axes[0, -1].get_ylim()[1] * 0.97, " flagged →", va="top", fontsize=8)
    return _fig_png(fig)


def _flag_threshold(tr: pd.DataFrame) -> float | None:
    f = tr["is_label_issue"].astype(bool)
    return float(tr.loc[f, "issue_score"].min()) if f.any() else None


def plot_flagged_per_class(tr: pd.DataFrame, class_names: list[str]) -> bytes:
    """Flagged training examples per given class, stacked by category; injected noise as outlines."""
    plt = _plt()
    k = len(class_names)
    x = np.arange(k)
    flagged = tr[tr["is_label_issue"].astype(bool)]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * k + 2), 3.6))
    bottom = np.zeros(k)
    for c, color in CATEGORY_COLORS.items():
        counts = np.bincount(flagged.loc[flagged["category"] == c, "given_label"], minlength=k)[:k]
        if counts.sum():
            ax.bar(x, counts, 0.7, bottom=bottom, color=color, label=f"flagged: {c}")
            bottom += counts
    if "is_injected_noise" in tr.columns:
        noisy = np.bincount(tr.loc[tr["is_injected_noise"].astype(bool), "given_label"], minlength=k)[:k]
        ax.bar(x, noisy, 0.85, fill=False, edgecolor="k", lw=1.2, label="injected noise (truth)")
    ax.set_xticks(x, [str(c) for c in class_names], rotation=45 if k > 12 else 0, fontsize=8)
    ax.set_xlabel("given label")
    ax.set_ylabel("training examples")
    ax.set_title(f"Flagged per class ({len(flagged)} of {len(tr)} training examples)")
    ax.legend(fontsize=8)
    return _fig_png(fig)


def fraction_above(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """For each s in ``grid``: the fraction of finite ``values`` greater than s."""
    v = np.sort(values[np.isfinite(values)])
    if len(v) == 0:
        return np.full(len(grid), np.nan)
    return 1.0 - np.searchsorted(v, grid, side="right") / len(v)


def plot_self_influence(tr: pd.DataFrame, robust: list[str]) -> bytes:
    """The paper's Figure 5a: fraction of training points with self-influence > s, robust-misclassified
    against all. Left: Feldman–Zhang memorization (the paper's estimator); right: TracIn self-influence
    divided by its maximum."""
    plt = _plt()
    panels = [("memorization", "Feldman–Zhang memorization s", 1.0)]
    si = tr["self_influence"].to_numpy(float)
    si_max = np.nanmax(si) if np.isfinite(si).any() else 1.0
    panels.append(("self_influence", "TracIn self-influence s (÷ max)", si_max if si_max > 0 else 1.0))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, (col, label, scale) in zip(axes, panels):
        vals = tr[col].to_numpy(float) / scale
        log = col == "self_influence" and np.nanmin(vals) >= 0 and (vals > 0).any()
        if log:  # TracIn self-influence is heavy-tailed
            grid = np.logspace(np.log10(np.nanmin(vals[vals > 0])), 0, 201)
            ax.set_xscale("log")
        else:
            lo = min(0.0, np.nanmin(vals)) if np.isfinite(vals).any() else 0.0
            grid = np.linspace(lo, 1.0, 201)
        ax.plot(grid, fraction_above(vals, grid), color="k", lw=2, label=f"all training points ({len(vals)})")
        for m in robust:
            wrong = ~tr[f"correct_{m}"].astype(bool).to_numpy()
            ax.plot(grid, fraction_above(vals[wrong], grid), color=MODEL_COLORS.get(m, None), lw=2,
                    label=f"misclassified by {m} ({int(wrong.sum())})")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction with self-influence > s")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 5a: robust models misclassify the training points with high self-influence", fontsize=10)
    return _fig_png(fig)


def max_influence_per_test(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per test point with pairs: the largest TracIn and Feldman–Zhang influence among its paired images."""
    return pairs.groupby("test_id", sort=False).agg(influence=("influence", "max"), fz_influence=("fz_influence", "max"))


def plot_test_influence(te: pd.DataFrame, pairs: pd.DataFrame, robust: list[str]) -> bytes | None:
    """The paper's Figure 5b: distribution of the largest influence on test points the robust model
    misclassifies against all test points with pairs. None when there are no pairs."""
    if pairs.empty:
        return None
    plt = _plt()
    per = max_influence_per_test(pairs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, (col, label) in zip(axes, [("fz_influence", "largest Feldman–Zhang influence of a paired training image"),
                                       ("influence", "largest TracIn influence of a paired training image")]):
        v = per[col].to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
            continue
        bins = np.linspace(v.min(), v.max() if v.max() > v.min() else v.min() + 1, 13 if len(v) < 100 else 25)
        ax.hist(v, bins=bins, density=True, color="#444444", alpha=0.45, label=f"all test points with pairs ({len(v)})")
        for m in robust:
            wrong_ids = set(te.loc[~te[f"correct_{m}"].astype(bool), "example_id"])
            w = per.loc[per.index.isin(wrong_ids), col].to_numpy(float)
            w = w[np.isfinite(w)]
            if len(w):
                ax.hist(w, bins=bins, density=True, histtype="step", lw=2, color=MODEL_COLORS.get(m),
                        label=f"misclassified by {m} ({len(w)})")
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 5b: influence on test points (pairs exist for test points some model gets wrong)", fontsize=10)
    return _fig_png(fig)


def plot_accuracy(man: dict) -> bytes:
    """Grouped bars: train accuracy (given labels), clean test accuracy and adversarial test accuracy, one bar per model."""
    plt = _plt()
    m = man["metrics"]
    models = list(man["config"]["models"])
    parts = [("train_accuracy", "train\n(given labels)"), ("test_accuracy", "test\n(clean)"),
             ("test_adv_accuracy", "test\n(under PGD)")]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(len(parts))
    w = 0.8 / len(models)
    for j, mod in enumerate(models):
        vals = [float(m.get(f"{mod}_{key}", np.nan)) for key, _ in parts]
        bars = ax.bar(x + (j - (len(models) - 1) / 2) * w, vals, w, label=mod, color=MODEL_COLORS.get(mod, "#777"))
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    cfg = man["config"]
    ax.set_xticks(x, [label for _, label in parts])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Natural vs robust accuracy (evaluation attack: {cfg.get('norm')} PGD, eps {cfg.get('eps'):.3g}, "
                 f"{cfg.get('eval_steps')} steps)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    return _fig_png(fig)


# -- HTML -------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666;font-size:13px} table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
img.plot{max-width:100%;border:1px solid #eee} .grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;width:150px;background:#fafafa}
.card img{image-rendering:pixelated;width:84px;height:84px;display:block;margin:0 auto 4px;border:1px solid #ccc}
.pair{width:250px} .pair .imgs{display:flex;justify-content:space-around} .pair .imgs div{text-align:center}
.badge{display:inline-block;border-radius:3px;padding:0 4px;color:#fff;font-size:11px}
.note{background:#fff6e0;border:1px solid #f0d080;padding:6px 10px;font-size:13px}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _badge(cat: str) -> str:
    return f'<span class="badge" style="background:{CATEGORY_COLORS.get(cat, "#777")}">{_esc(cat)}</span>'


def _label(names: list[str], i) -> str:
    try:
        i = int(i)
    except (TypeError, ValueError):
        return "?"
    return names[i] if 0 <= i < len(names) else str(i)


def _img_tag(images: dict, eid: str, alt: str) -> str:
    if eid not in images:
        return '<div class="muted">(no image)</div>'
    return f'<img src="{_b64_png(image_png(images[eid]))}" alt="{_esc(alt)}" title="{_esc(alt)}">'


def _metrics_table(man: dict) -> str:
    m = man["metrics"]
    ds = man["dataset"]
    rows = [("dataset", f"{ds['spec']} ({ds['num_train']} train / {ds['num_test']} test, {'×'.join(map(str, ds['shape']))})"),
            ("models", ", ".join(man["config"]["models"])),
            ("injected noise", f"{man['config']['noise']} ({man['config']['noise_kind']}), seed {man['config']['seed']}"),
            ("flagged (train)", m.get("num_flagged_train")), ("estimated noise rate", m.get("estimated_noise_rate"))]
    for k in ("noise_auroc", "noise_auprc", "noise_precision", "noise_recall", "num_pairs", "wall_seconds"):
        if k in m:
            rows.append((k, m[k]))
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(round(v, 4) if isinstance(v, float) else v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _flagged_gallery(tr: pd.DataFrame, images: dict, names: list[str], top: int) -> tuple[str, int]:
    f = tr[tr["is_label_issue"].astype(bool)].sort_values("issue_score", ascending=False, kind="stable").head(top)
    cards, n = [], 0
    for r in f.itertuples(index=False):
        eid = str(r.example_id)
        n += eid in images
        given, sugg = _label(names, r.given_label), _label(names, r.suggested_label)
        truth = ""
        if "is_injected_noise" in tr.columns:
            truth = (f'<br><b style="color:#d62728">injected: was {_esc(_label(names, r.clean_label))}</b>'
                     if bool(r.is_injected_noise) else '<br><span class="muted">label not injected</span>')
        cards.append(f'<div class="card">{_img_tag(images, eid, eid)}<b>{_esc(eid)}</b><br>'
                     f'given <b>{_esc(given)}</b> → suggested <b>{_esc(sugg)}</b><br>'
                     f'score {r.issue_score:.3f} {_badge(r.category)}{truth}</div>')
    return '<div class="grid">' + "".join(cards) + "</div>", n


def top_pairs(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """The rank-1 pair of each test point: robust errors (the paper's Figure 4) by influence first,
    then natural errors by the size of their (opposing) influence."""
    first = pairs[pairs["rank"] == 1]
    rob = first[first["reason"] == "robust_error"].sort_values("influence", ascending=False, kind="stable")
    nat = first[first["reason"] != "robust_error"]
    nat = nat.iloc[np.argsort(-nat["influence"].abs().to_numpy(), kind="stable")]
    return pd.concat([rob, nat]).head(n)


def _pairs_gallery(ex: pd.DataFrame, pairs: pd.DataFrame, images: dict, names: list[str], n: int,
                   models: list[str]) -> tuple[str, int]:
    by_id = ex.set_index("example_id")
    cards, count = [], 0
    for r in top_pairs(pairs, n).itertuples(index=False):
        t, s = by_id.loc[r.test_id], by_id.loc[r.train_id]
        count += (r.test_id in images) + (r.train_id in images)
        preds = ", ".join(f"{m} → {_esc(_label(names, t[f'pred_{m}']))}" for m in models)
        clean = ""
        if "clean_label" in ex.columns and int(s["clean_label"]) != int(s["given_label"]):
            clean = f' <b style="color:#d62728">(injected; was {_esc(_label(names, s["clean_label"]))})</b>'
        cards.append(
            f'<div class="card pair"><div class="imgs"><div>{_img_tag(images, r.test_id, r.test_id)}test</div>'
            f'<div>{_img_tag(images, r.train_id, r.train_id)}train</div></div>'
            f'<b>{_esc(r.reason.replace("_", " "))}</b><br>test {_esc(r.test_id)}: label {_esc(_label(names, t["given_label"]))}; {preds}<br>'
            f'train {_esc(r.train_id)}: label {_esc(_label(names, s["given_label"]))}{clean}<br>'
            f'TracIn {r.influence:.3g} · FZ {r.fz_influence:.3g} · sim {r.similarity:.3f}</div>')
    return '<div class="grid">' + "".join(cards) + "</div>", count


def build_report(run_dir: str | Path, *, out: str | Path | None = None, top: int = 24, pairs: int = 12) -> Path:
    """Write the self-contained HTML report of a complete run (default ``RUN/report.html``) and return its path.

    ``top``: flagged training examples in the gallery; ``pairs``: train→test pairs in the gallery.
    """
    run = Path(run_dir)
    man, ex, pr = load_run(run)
    names = [str(c) for c in man["dataset"].get("class_names") or range(int(ex["given_label"].max()) + 1)]
    models = list(man["config"]["models"])
    robust = [m for m in models if m != "natural"]
    tr, te = ex[ex["split"] == "train"], ex[ex["split"] == "test"]
    images, note = _load_images(man)

    sections: list[tuple[str, str]] = []

    def plot(title: str, png: bytes | None, caption: str) -> None:
        body = (f'<img class="plot" src="{_b64_png(png)}" alt="{_esc(title)}">' if png
                else '<p class="muted">(not available for this run)</p>')
        sections.append((title, f'{body}<p class="muted">{caption}</p>'))

    plot("issue_score by category", plot_issue_scores(tr),
         "The dashed line is the flagging threshold: training examples to its right are flagged "
         "(<code>is_label_issue</code>). issue_score is a rank in [0, 1], so all categories together are uniform.")
    plot("Flagged per class", plot_flagged_per_class(tr, names),
         "Flagged training examples by their given label, coloured by category; outlines show the injected noise when the tool injected it.")
    if robust:
        plot("Self-influence of what robust models refuse to fit (paper's Figure 5a)", plot_self_influence(tr, robust),
             "Fraction of training points whose self-influence exceeds s. The paper: training points an adversarially "
             "trained model misclassifies have much higher self-influence than training points overall.")
        plot("Influence on test points robust models get wrong (paper's Figure 5b)", plot_test_influence(te, pr, robust),
             "Per test point, the largest influence of one of its paired training images. Pairs are computed for the "
             "test points some model misclassifies, so the grey histogram covers those, not the whole test split.")
    plot("Natural vs robust accuracy", plot_accuracy(man),
         "Train accuracy is measured on the given (possibly noisy) labels: a natural model fits them all; robust models refuse some.")
    n_plots = sum(PNG_PREFIX in body for _, body in sections)
    gal, n_gal = _flagged_gallery(tr, images, names, top)
    sections.append((f"Top {min(top, int(tr['is_label_issue'].sum()))} flagged training examples", gal))
    pgal, n_pairs = _pairs_gallery(ex, pr, images, names, pairs, models)
    sections.append(("Top train → test pairs", '<p class="muted">Each test image the models get wrong, beside the '
                     'training image that most influenced it (robust errors first: the atypical training image the natural '
                     'model memorized and the robust model refused to fit).</p>' + pgal))

    cfg_json = _esc(json.dumps(man["config"], indent=1))
    notes = f'<p class="note">{_esc(note)}</p>' if note else ""
    body = "".join(f"<h2>{_esc(t)}</h2>{b}" for t, b in sections)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>benign-audit report: {_esc(run.name)}</title>'
            f"<style>{CSS}</style></head><body><h1>benign-audit report: {_esc(run.name)}</h1>"
            f'<p class="muted">benign-audit {_esc(man.get("version", ""))} · config {_esc(man.get("config_hash", ""))} · '
            f'device {_esc(man.get("device", ""))}</p>{notes}<h2>Summary</h2>{_metrics_table(man)}{body}'
            f"<h2>Config</h2><details><summary>resolved run config</summary><pre>{cfg_json}</pre></details>"
            f"<!-- images: plots={n_plots} flagged={n_gal} pairs={n_pairs} --></body></html>")
    dest = Path(out) if out is not None else run / "report.html"
    atomic_write_bytes(dest, page.encode())
    dest.chmod(0o644)  # a page to share, not a secret
    return dest


def count_images(html_text: str) -> int:
    """How many images a report embeds."""
    return html_text.count(PNG_PREFIX)
