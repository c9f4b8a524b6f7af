"""``RUN/report.html``: one self-contained page (every image embedded as base64 PNG) with the plots a
reader would rather look at than read.

Sections:

1. the headline metrics and the resolved config;
2. the ``issue_score`` distribution of training examples by ``category`` (and by injected noise);
3. flagged training examples per class (left out when nothing is flagged);
4. the paper's Figure 5a: the fraction of training points whose self-influence exceeds s, for the
   points a robust model misclassifies against all points (Feldman–Zhang memorization and TracIn);
5. the paper's Figure 5b: the distribution of the largest influence a training image has on a test
   point, for test points a robust model misclassifies against all test points with pairs;
6. natural versus robust accuracy (train, clean test, adversarial test);
7. galleries of the top flagged training examples (with nothing flagged, the top-ranked ones, said
   in a sentence) and the top train→test pairs;
8. the other issue types (:mod:`audit.issues`: near duplicates, leaks, outliers, image quality, class
   imbalance): a table of each type's description, count and threshold, and a bar chart of the counts
   (an SVG, so a reader can zoom it); left out for a run made before the issue types existed;
9. the review decisions (counts and the decided rows) when ``decisions.sqlite`` exists;
10. ``verify.json`` (retraining on the cleaned labels) when it exists: variants × models, each metric
   with its 95% interval, and the share of the ceiling's gain that cleaning recovered.

A run that trained no models (``audit run --models none``: the user's own probabilities alone,
:mod:`audit.given_run`) says so at the top; each section that needs a trained model (Figures 5a and 5b,
the accuracies) is one line saying what is missing, and its pairs (nearest training images in
``--features``, no influence) are ranked by similarity.

The run directory is untrusted input (:mod:`audit.rundir`): images come only from a dataset whose
fingerprint matches the manifest's, else the command exits 2 (``images=False`` leaves them out). The
page is one Jinja2 template with autoescaping, so every string from the data (ids, class names,
reviewers, JSON) is escaped at that one place; nothing is marked safe but the stylesheet.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditInputError
from audit.io import atomic_write_bytes
from audit.rundir import RunDir, load_json_object

CATEGORY_COLORS = {"mislabelled": "#d62728", "ambiguous": "#ff7f0e", "atypical": "#9467bd", "ok": "#8c8c8c"}
MODEL_COLORS = {"natural": "#1f77b4", "pgd": "#d62728", "trades": "#2ca02c", "fgsm": "#ff7f0e"}
PNG_PREFIX = "data:image/png;base64,"
SVG_PREFIX = "data:image/svg+xml;base64,"


# -- loading ----------------------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(manifest, examples, pairs) of a complete run; :class:`AuditInputError` naming the file otherwise."""
    run = RunDir(run_dir)
    ex = run.examples()
    return run.manifest, ex, run.pairs(ex)


def _images(run: RunDir, ids: set[str]) -> dict[str, np.ndarray]:
    """example_id -> uint8 (C, H, W) for ``ids``, from the verified dataset (raises when unverified)."""
    ds = run.dataset()
    return {str(i): ds.images[k] for k, i in enumerate(ds.example_ids) if str(i) in ids}


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


def _fig_svg(fig) -> str:
    """A figure as an SVG data URL (text drawn as paths: no font or text from anywhere reaches the file)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return SVG_PREFIX + base64.b64encode(buf.getvalue()).decode()


def _legend(ax, **kw) -> None:
    """A legend when the axes hold labelled artists (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


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
    _legend(ax, fontsize=8, loc="upper left")
    if has_noise:
        ax = axes[0, 1]
        noisy = tr["is_injected_noise"].astype(bool)
        ax.hist([tr.loc[~noisy, "issue_score"], tr.loc[noisy, "issue_score"]], bins=bins, stacked=True,
                color=["#8c8c8c", "#d62728"], label=[f"clean label ({(~noisy).sum()})", f"injected noise ({noisy.sum()})"])
        ax.set_title("issue_score by injected label noise")
        _legend(ax, fontsize=8, loc="upper left")
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
    _legend(ax, fontsize=8)
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
        _legend(ax, fontsize=8)
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
        _legend(ax, fontsize=8)
    fig.suptitle("Fig. 5b: influence on test points (pairs exist for test points some model gets wrong)", fontsize=10)
    return _fig_png(fig)


def plot_accuracy(man: dict) -> bytes | None:
    """Grouped bars: train accuracy (given labels), clean test accuracy and adversarial test accuracy, one bar
    per model; None for a run that trained none."""
    m = man["metrics"]
    models = list(man["config"]["models"])
    if not models:
        return None
    plt = _plt()
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
    ax.set_title(f"Natural vs robust accuracy (evaluation attack: {cfg.get('norm')} PGD, eps {eps_text(cfg.get('eps'))}, "
                 f"{cfg.get('eval_steps')} steps)", fontsize=9)
    _legend(ax, fontsize=8, loc="lower left")
    return _fig_png(fig)


def plot_issue_types(rows: list[dict]) -> str:
    """Horizontal bars: images flagged per issue type (``rows``: :func:`issue_types_section`'s), as an SVG
    data URL."""
    plt = _plt()
    names = [r["type"] for r in rows][::-1]
    counts = [r["count"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.1))
    y = np.arange(len(rows))
    ax.barh(y, counts, 0.65, color=["#d62728" if c else "#cccccc" for c in counts])
    top = max(counts + [1])
    for yi, c in zip(y, counts):
        ax.text(c + top * 0.01, yi, f"{c:,}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, top * 1.12)
    ax.set_xlabel("flagged images")
    ax.set_title("Images flagged per issue type", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_svg(fig)


def _issue_flag(ex: pd.DataFrame, name: str) -> np.ndarray:
    """``is_<name>_issue`` as bool: True only where it holds True (the table is data)."""
    s = ex[f"is_{name}_issue"]
    if pd.api.types.is_bool_dtype(s):
        return s.fillna(False).to_numpy(bool)
    return s.map(lambda x: x is True or (isinstance(x, np.bool_) and bool(x))).to_numpy(bool)


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if np.isfinite(x) else None


def issue_types_section(man: dict, ex: pd.DataFrame, names: list[str]) -> dict | None:
    """The other issue types: per type in the examples table, its description (the type's own), the rows it
    judges, its count (the table's), its threshold and a note (the manifest's, where it holds what the
    pipeline writes); the class balance in a sentence; the chart. None when the table has no issue type
    (a run made before them)."""
    from audit.issues import ISSUE_TYPES, ROW_TYPES

    present = [n for n in ROW_TYPES if f"is_{n}_issue" in ex.columns]
    if not present:
        return None
    info = man.get("issue_types") if isinstance(man.get("issue_types"), dict) else {}
    rows = []
    for n in present:
        t = info.get(n) if isinstance(info.get(n), dict) else {}
        flag = _issue_flag(ex, n)
        note = ""
        if n == "near_duplicate" and "duplicate_group" in ex.columns:
            g = pd.to_numeric(ex.loc[flag, "duplicate_group"], errors="coerce")
            in_group = (g >= 0).to_numpy()
            groups = int(g[in_group].nunique())
            lab = ex.loc[flag, "given_label"][in_group]
            conflicting = int((lab.groupby(g[in_group]).nunique() > 1).sum()) if groups else 0
            note = f"{groups:,} group{'s' * (groups != 1)}, {conflicting:,} with labels that disagree"
        elif n == "leak" and _number(t.get("exact")) is not None:
            note = f"{int(t['exact']):,} exact copies"
        elif n == "outlier" and isinstance(t.get("threshold_rule"), str):
            note = t["threshold_rule"][:300]
        elif n == "odd_size" and isinstance(t.get("note"), str):
            note = t["note"][:300]
        rows.append({"type": n, "description": ISSUE_TYPES[n].description, "judges": ", ".join(ISSUE_TYPES[n].splits),
                     "count": int(flag.sum()), "threshold": readable(_number(t.get("threshold"))), "note": note})
    return {"rows": rows, "plot": plot_issue_types(rows),
            "classes": _class_balance_line(info, names, trained=bool(man["config"].get("models")))}


def _class_balance_line(info: dict, names: list[str], trained: bool = True) -> str:
    """Rare and under-performing classes from the manifest's ``class_imbalance`` (class indices to names)."""
    ci = info.get("class_imbalance") if isinstance(info.get("class_imbalance"), dict) else {}
    per = ci.get("per_class") if isinstance(ci.get("per_class"), list) else []
    rare, under = [], []
    for e in per:
        c = e.get("class") if isinstance(e, dict) else None
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            rare += [names[c]] * (e.get("rare") is True)
            under += [names[c]] * (e.get("under_performing") is True)
    if not per:
        return ""
    overall = _number(ci.get("overall_test_accuracy_natural"))
    vs = f", {overall:.1%}" if overall is not None else ""
    whose = "natural" if trained else "your model's"
    return (f"Class balance: rare classes (far fewer training images than the median class): "
            f"{', '.join(rare) if rare else 'none'}; under-performing classes ({whose} test accuracy well below "
            f"the overall{vs}): {', '.join(under) if under else 'none'}.")


# -- HTML: one autoescaping template ---------------------------------------------------------------
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

TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>benign-audit report: {{ run_name }}</title><style>{{ css | safe }}</style></head><body>
<h1>benign-audit report: {{ run_name }}</h1>
<p class="muted">benign-audit {{ version }} · config {{ config_hash }} · device {{ device }}</p>
{% for n in notes %}<p class="note">{{ n }}</p>{% endfor %}
<h2>Summary</h2><table>{% for k, v in summary %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
{% for p in plots %}<h2>{{ p.title }}</h2>
{% if p.uri %}<img class="plot" src="{{ p.uri }}" alt="{{ p.title }}">{% elif p.note %}<p class="note">{{ p.note }}</p>{% else %}<p class="muted">(not available for this run)</p>{% endif %}
{% if p.caption %}<p class="muted">{{ p.caption }}</p>{% endif %}{% endfor %}
{% macro img(uri, alt) %}{% if uri %}<img src="{{ uri }}" alt="{{ alt }}" title="{{ alt }}">{% else %}<div class="muted">(no image)</div>{% endif %}{% endmacro %}
{% if any_flagged %}<h2>Top {{ flagged | length }} flagged training examples</h2>{% else %}<h2>Top {{ flagged | length }} training examples by issue_score (none flagged)</h2>
<p class="note">{{ nothing_flagged }}</p>{% endif %}<div class="grid">
{% for c in flagged %}<div class="card">{{ img(c.uri, c.eid) }}<b>{{ c.eid }}</b><br>given <b>{{ c.given }}</b> → suggested <b>{{ c.suggested }}</b><br>
score {{ "%.3f" | format(c.score) }} <span class="badge" style="background:{{ c.color }}">{{ c.category }}</span>
{% if c.injected %}<br><b style="color:#d62728">injected: was {{ c.injected }}</b>{% elif c.injected is not none %}<br><span class="muted">label not injected</span>{% endif %}</div>
{% endfor %}</div>
<h2>Top train → test pairs</h2>{% if pairs %}<p class="muted">{{ pairs_text }}</p>{% else %}<p class="note">{{ no_pairs }}</p>{% endif %}
<div class="grid">{% for c in pairs %}<div class="card pair"><div class="imgs"><div>{{ img(c.test_uri, c.test_id) }}test</div>
<div>{{ img(c.train_uri, c.train_id) }}train</div></div><b>{{ c.reason }}</b><br>test {{ c.test_id }}: label {{ c.test_label }}; {{ c.preds }}<br>
train {{ c.train_id }}: label {{ c.train_label }}{% if c.clean %} <b style="color:#d62728">(injected; was {{ c.clean }})</b>{% endif %}<br>
{% if c.tracin is none %}similarity {{ "%.2f" | format(c.sim) }} · no influence (no model trained){% else %}TracIn influence {{ c.tracin }} · FZ influence {{ c.fz }} · similarity {{ "%.2f" | format(c.sim) }}{% endif %}</div>{% endfor %}</div>
{% if issues %}<h2>Other issues</h2><p class="muted">Issue types beyond label errors: each flags the images it
describes; the review app's Other issues page shows them side by side.</p>
<table><tr><th>type</th><th>description</th><th>judges</th><th>count</th><th>threshold</th><th>note</th></tr>
{% for r in issues.rows %}<tr><td>{{ r.type }}</td><td>{{ r.description }}</td><td>{{ r.judges }}</td><td>{{ r.count }}</td><td>{{ r.threshold }}</td><td>{{ r.note }}</td></tr>{% endfor %}</table>
{% if issues.classes %}<p class="muted">{{ issues.classes }}</p>{% endif %}
<img class="plot" src="{{ issues.plot }}" alt="images flagged per issue type">{% endif %}
{% if decisions %}<h2>Review decisions</h2>
<table>{% for k, v in decisions.counts %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<p class="muted">The effective decision per example (newest wins; undone ones left out){% if decisions.more %}, newest {{ decisions.rows | length }} of {{ decisions.rows | length + decisions.more }}{% endif %}.</p>
<table><tr>{% for c in decisions.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in decisions.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if verify %}<h2>Retraining on the cleaned labels (verify.json)</h2>
<table><tr>{% for c in verify.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for cells in verify.rows %}<tr>{% for v in cells %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
{% for line in verify.lines %}<p class="muted">{{ line }}</p>{% endfor %}
{% if verify.plot %}<img class="plot" src="{{ verify.plot }}" alt="verify plot">{% endif %}{% endif %}
<h2>Config</h2><details><summary>resolved run config</summary><pre>{{ config_json }}</pre></details>
<!-- images: plots={{ n_plots }} flagged={{ n_flagged }} pairs={{ n_pairs }} --></body></html>
"""


def render(context: dict) -> str:
    """The page: :data:`TEMPLATE` with autoescaping on (the one place text from data is escaped)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(css=CSS, **context)


def _label(names: list[str], i) -> str:
    try:
        i = int(i)
    except (TypeError, ValueError):
        return "?"
    return names[i] if 0 <= i < len(names) else str(i)


def _uri(images: dict, eid: str) -> str | None:
    return _b64_png(image_png(images[eid])) if eid in images else None


def eps_text(eps) -> str:
    """An attack radius in [0, 1] pixel units as people write it: "8/255" where it is a whole number of
    grey levels out of 255 (not a round decimal), else 3 significant digits ("0.1"). The review app
    writes it the same way (``app.ui.eps_text``; the report does not import the app's Streamlit code)."""
    try:
        v = float(eps)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(v):
        return "–"
    k = v * 255
    if 0 < v < 1 and abs(k - round(k)) < 1e-6 and f"{v:.3g}" != f"{v:.6g}":
        return f"{round(k)}/255"
    return f"{v:.3g}"


def readable(x, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits without an exponent between 1e-4 and 1e6 (8,520; 0.0314;
    1.23M), as the review app writes numbers (``app.ui.sig``); "–" when missing."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(v):
        return "–"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.{digits}g}M" if a < 1e9 else f"{v:.{digits - 1}e}"
    if a >= 10 ** (digits - 1):
        return f"{float(f'{v:.{digits}g}'):,.0f}"
    return f"{v:.{digits}g}" if a == 0 or a >= 1e-4 else f"{v:.{digits - 1}e}"


def _share(v) -> str:
    return f"{float(v):.1%}"


def _seconds(v) -> str:
    v = float(v)
    if v < 90:
        return f"{v:.0f} s"
    if v < 5400:
        return f"{v // 60:.0f} min {v % 60:.0f} s"
    return f"{v / 3600:.1f} h"


# The manifest's headline metrics as a reader names them, each with how its value is written.
METRIC_LABELS = {
    "num_flagged_train": ("flagged training examples", str),
    "num_flagged_test": ("flagged test examples", str),
    "estimated_noise_rate": ("estimated share of wrong training labels (cleanlab)", _share),
    "noise_recall": ("injected label errors flagged (recall)", _share),
    "noise_precision": ("flags that are injected errors (precision)", _share),
    "noise_auroc": ("issue_score AUROC on the injected errors", lambda v: f"{float(v):.3f}"),
    "noise_auprc": ("issue_score AUPRC on the injected errors", lambda v: f"{float(v):.3f}"),
    "num_pairs": ("train → test pairs", str),
    "given_train_accuracy": ("training labels your model's top class agrees with", _share),
    "given_test_accuracy": ("your model's test accuracy", _share),
    "wall_seconds": ("run time", _seconds),
}


def _noise_injected(cfg: dict) -> bool:
    try:
        return float(cfg.get("noise") or 0) > 0
    except (TypeError, ValueError):
        return False


def _summary(man: dict) -> list[tuple[str, object]]:
    m, ds, cfg = man["metrics"], man["dataset"], man["config"]
    models = ", ".join(cfg["models"]) if cfg["models"] else "none (--models none)"
    rows = [("dataset", f"{ds['spec']} ({ds['num_train']} train / {ds['num_test']} test, {'×'.join(map(str, ds['shape']))})"),
            ("models", models), ("seed", cfg.get("seed"))]
    for opt in ("pred-probs", "features"):
        src = given_input(man, opt)
        if src:
            rows.append((f"--{opt}", src))
    if _noise_injected(cfg):  # only what the tool planted: a run on the data as it is has no such line
        rows.append(("injected label noise", f"{float(cfg['noise']):.1%} of training labels ({cfg.get('noise_kind', '?')})"))
    for k, (label, fmt) in METRIC_LABELS.items():
        if k in m and m[k] is not None:
            try:
                rows.append((label, fmt(m[k])))
            except (TypeError, ValueError):  # a manifest is data: show what it holds
                rows.append((label, m[k]))
    return rows


def given_input(man: dict, option: str) -> str:
    """The file the run read for ``--pred-probs``/``--features`` (its manifest's ``inputs``), or ""."""
    inputs = man.get("inputs")
    rec = inputs.get(option) if isinstance(inputs, dict) else None
    path = rec.get("path") if isinstance(rec, dict) else None
    return path[:500] if isinstance(path, str) else ""


def no_models_text(man: dict) -> str:
    """The page's note on a run that trained no models (``--models none``)."""
    src = given_input(man, "pred-probs")
    return (f"No models were trained in this run (--models none): it audits your model's probabilities"
            + (f" ({src})" if src else "") + " alone. issue_score is cleanlab's label quality of them; "
            "self_influence and memorization (which need trained models) are NaN, and the sections that need "
            "a trained model say so.")


def gallery_rows(tr: pd.DataFrame, top: int) -> tuple[pd.DataFrame, bool]:
    """The training rows of the gallery, highest ``issue_score`` first: the flagged ones, or, when nothing
    is flagged, the top-ranked ones (as the review app lists them); and whether they are flagged."""
    flagged = tr["is_label_issue"].astype(bool)
    rows = tr[flagged] if flagged.any() else tr
    return rows.sort_values("issue_score", ascending=False, kind="stable").head(top), bool(flagged.any())


def _flagged_cards(tr: pd.DataFrame, images: dict, names: list[str], top: int) -> list[dict]:
    f = gallery_rows(tr, top)[0]
    noise = "is_injected_noise" in tr.columns
    return [{"uri": _uri(images, str(r.example_id)), "eid": str(r.example_id), "given": _label(names, r.given_label),
             "suggested": _label(names, r.suggested_label), "score": float(r.issue_score), "category": str(r.category),
             "color": CATEGORY_COLORS.get(str(r.category), "#777"),
             "injected": (_label(names, r.clean_label) if bool(r.is_injected_noise) else "") if noise else None}
            for r in f.itertuples(index=False)]


def top_pairs(pairs: pd.DataFrame, n: int) -> pd.DataFrame:
    """The rank-1 pair of each test point: robust errors (the paper's Figure 4) by influence first,
    then natural errors by the size of their (opposing) influence."""
    first = pairs[pairs["rank"] == 1]
    rob = first[first["reason"] == "robust_error"].sort_values("influence", ascending=False, kind="stable")
    nat = first[first["reason"] != "robust_error"]
    # no influence (a run that trained no model, --models none): the most similar partner first
    strength = nat["influence"].abs().fillna(-np.inf).to_numpy(float)
    nat = nat.iloc[np.lexsort((-nat["similarity"].to_numpy(float), -strength))]
    return pd.concat([rob, nat]).head(n)


PAIR_REASONS = {"given_error": "your model's error"}  # a reason as the page words it (else its name, spaced)


def _pair_cards(ex: pd.DataFrame, pairs: pd.DataFrame, images: dict, names: list[str], n: int,
                models: list[str]) -> list[dict]:
    by_id = ex.set_index("example_id")
    cards = []
    for r in top_pairs(pairs, n).itertuples(index=False):
        if r.test_id not in by_id.index or r.train_id not in by_id.index:
            raise AuditInputError(f"pairs.parquet: pair ({str(r.test_id)[:60]}, {str(r.train_id)[:60]}) names "
                                  "an example not in examples.parquet")
        t, s = by_id.loc[r.test_id], by_id.loc[r.train_id]
        clean = ""
        if "clean_label" in ex.columns and int(s["clean_label"]) != int(s["given_label"]):
            clean = _label(names, s["clean_label"])
        # no model trained: a test row's suggestion is the top class of the user's probabilities
        preds = (", ".join(f"{m} → {_label(names, t.get(f'pred_{m}'))}" for m in models) if models
                 else f"your model → {_label(names, t['suggested_label'])}")
        tracin = None if not models and _number(r.influence) is None else readable(r.influence)
        cards.append({"test_uri": _uri(images, r.test_id), "train_uri": _uri(images, r.train_id),
                      "reason": PAIR_REASONS.get(str(getattr(r, "reason", "")),
                                                 str(getattr(r, "reason", "")).replace("_", " ")), "test_id": r.test_id,
                      "train_id": r.train_id, "test_label": _label(names, t["given_label"]), "preds": preds,
                      "train_label": _label(names, s["given_label"]), "clean": clean, "tracin": tracin,
                      "fz": readable(getattr(r, "fz_influence", np.nan)), "sim": float(r.similarity)})
    return cards


# -- review decisions and verify.json ---------------------------------------------------------------
MAX_TABLE_ROWS = 500
DECISION_COLUMNS = ["example_id", "split", "decision", "given", "final", "suggested", "issue_score", "reviewer",
                    "decided at (UTC)"]


def decisions_section(run: RunDir, ex: pd.DataFrame) -> dict | None:
    """Counts of the effective decisions and a table of the decided rows (newest first), or None
    without ``decisions.sqlite``."""
    if not run.has_decisions():
        return None
    store = run.decisions()
    latest, log = store.latest(), store.log()
    names = run.class_names
    j = ex.set_index("example_id")
    rows = []
    for r in latest.sort_values("seq", ascending=False).itertuples(index=False):
        e = j.loc[r.example_id] if r.example_id in j.index else None
        given = _label(names, e["given_label"]) if e is not None else "?"
        final = _label(names, r.new_label) if r.decision == "relabel" else (given if r.decision == "keep" else "–")
        rows.append([r.example_id, e["split"] if e is not None else "?", r.decision, given, final,
                     _label(names, e["suggested_label"]) if e is not None else "?",
                     f"{e['issue_score']:.3f}" if e is not None else "", r.reviewer, str(r.decided_at)[:19].replace("T", " ")])
    counts = [(d, int((latest["decision"] == d).sum())) for d in ("keep", "relabel", "remove")]
    counts += [("reviewers", int(latest["reviewer"].nunique())), ("log rows (every click, skip and undo)", len(log))]
    return {"counts": counts, "columns": DECISION_COLUMNS, "rows": rows[:MAX_TABLE_ROWS],
            "more": max(0, len(rows) - MAX_TABLE_ROWS)}


def verify_section(run: RunDir) -> dict | None:
    """``verify.json`` (:func:`audit.verify.summary_rows`: variants × models, each metric with its 95%
    interval) and what cleaning recovered, with ``verify.png`` when present; None without it."""
    from audit.verify import summary_lines, summary_rows

    path = run.path / "verify.json"
    if not path.exists():
        return None
    obj = load_json_object(path)
    try:
        columns, rows = summary_rows(obj)
        lines = summary_lines(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise AuditInputError(f"{path}: not a verify.json benign-audit wrote ({type(e).__name__})") from None
    return {"columns": columns, "rows": rows[:MAX_TABLE_ROWS], "lines": lines, "plot": _verify_plot(run)}


def _verify_plot(run: RunDir) -> str | None:
    """``verify.png`` re-encoded (so only pixels reach the page), or None."""
    from PIL import Image

    path = run.path / "verify.png"
    if not path.is_file():
        return None
    run.file("verify.png")
    try:
        with Image.open(path) as im:
            if im.width * im.height > 25_000_000:
                raise AuditInputError(f"{path}: {im.width}×{im.height} pixels, more than a plot has")
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise AuditInputError(f"{path}: not a readable PNG ({type(e).__name__})") from None
    return _b64_png(buf.getvalue())


# -- the page ---------------------------------------------------------------------------------------
CAPTIONS = {
    "scores": ("The dashed line is the flagging threshold: training examples to its right are flagged "
               "(is_label_issue). issue_score is a rank in [0, 1], so all categories together are uniform."),
    "scores_none": ("Nothing is flagged, so there is no flagging threshold. issue_score is a rank in [0, 1], so all "
                    "categories together are uniform."),
    "per_class": ("Flagged training examples by their given label, coloured by category; outlines show the "
                  "injected noise when the tool injected it."),
    "fig5a": ("Fraction of training points whose self-influence exceeds s. The paper: training points an "
              "adversarially trained model misclassifies have much higher self-influence than training points overall."),
    "fig5b": ("Per test point, the largest influence of one of its paired training images. Pairs are computed for "
              "the test points some model misclassifies, so the grey histogram covers those, not the whole test split."),
    "accuracy": ("Train accuracy is measured on the given (possibly noisy) labels: a natural model fits them all; "
                 "robust models refuse some."),
    "pairs": ("Each test image the models get wrong, beside the training image that most influenced it (robust "
              "errors first: the atypical training image the natural model memorized and the robust model "
              "refused to fit)."),
    "pairs_given": ("Each test image your model gets wrong (the top class of its probabilities), beside its "
                    "nearest training image in --features, most similar first: no model was trained, so there is "
                    "no influence to rank them by."),
}
NO_MODELS = "No models trained (--models none)"
def nothing_flagged_text(man: dict) -> str:
    """Why the gallery shows unflagged examples, in a sentence (the manifest's flagging reason, if any)."""
    fl = man.get("flagging") if isinstance(man.get("flagging"), dict) else {}
    why = fl.get("reason") if isinstance(fl.get("reason"), str) and fl.get("reason") else ""
    return ("Nothing was flagged in this run: its estimate of how many training labels are wrong came to 0"
            + (f" ({why})" if why else "") + ". Below are the training examples with the highest issue_score "
            "instead, the ones to look at first if you look at any; none of them is flagged.")


def _plots(man: dict, tr: pd.DataFrame, te: pd.DataFrame, pr: pd.DataFrame, names: list[str]) -> list[dict]:
    """The plots: title, image (or None) and caption each; for a run that trained no models, the ones
    that need a model hold a one-line ``note`` instead of an image."""
    models = list(man["config"]["models"])
    robust = [m for m in models if m != "natural"]
    any_flagged = bool(tr["is_label_issue"].astype(bool).any())
    plots = [("issue_score by category", plot_issue_scores(tr),
              CAPTIONS["scores"] if any_flagged else CAPTIONS["scores_none"], None)]
    if any_flagged:  # nothing flagged: no chart of nothing (the gallery says so)
        plots.append(("Flagged per class", plot_flagged_per_class(tr, names), CAPTIONS["per_class"], None))
    fig5a = "Self-influence of what robust models refuse to fit (paper's Figure 5a)"
    fig5b = "Influence on test points robust models get wrong (paper's Figure 5b)"
    if robust:
        plots += [(fig5a, plot_self_influence(tr, robust), CAPTIONS["fig5a"], None),
                  (fig5b, plot_test_influence(te, pr, robust), CAPTIONS["fig5b"], None)]
    if models:
        plots.append(("Natural vs robust accuracy", plot_accuracy(man), CAPTIONS["accuracy"], None))
    else:  # --models none: what needs a model says so, in one line each
        m = man["metrics"]
        acc = ", ".join(f"{label} {_share(m[k])}" for k, label in (("given_train_accuracy", "train agreement"),
                                                                  ("given_test_accuracy", "test accuracy"))
                        if _number(m.get(k)) is not None)
        plots += [(fig5a, None, "", f"{NO_MODELS}: self-influence needs trained natural and robust models."),
                  (fig5b, None, "", f"{NO_MODELS}: influence on test points needs trained natural and robust models."),
                  ("Natural vs robust accuracy", None, "", f"{NO_MODELS}: no natural or robust accuracy"
                   + (f"; your model's probabilities: {acc}." if acc else "."))]
    return [{"title": t, "uri": _b64_png(png) if png else None, "caption": c, "note": note}
            for t, png, c, note in plots]


def build_report(run_dir: str | Path, *, out: str | Path | None = None, top: int = 24, pairs: int = 12,
                 images: bool = True) -> Path:
    """Write the self-contained HTML report of a complete run (default ``RUN/report.html``) and return its path.

    ``top``: flagged training examples in the gallery; ``pairs``: train→test pairs in the gallery;
    ``images=False``: galleries without pictures, the dataset never read. With images, a dataset that
    cannot be verified is :class:`audit.rundir.DatasetUnverified` (exit 2) and nothing is written.
    """
    run = RunDir(run_dir)
    dest = run.check_output(Path(out) if out is not None else run.path / "report.html", "--out")
    man, ex = run.manifest, run.examples()
    pr = run.pairs(ex)
    names = run.class_names
    tr, te = ex[ex["split"] == "train"], ex[ex["split"] == "test"]
    gallery, any_flagged = gallery_rows(tr, top)
    shown = set(gallery["example_id"]) | set(top_pairs(pr, pairs)[["test_id", "train_id"]].to_numpy().ravel())
    pics = _images(run, {str(i) for i in shown}) if images else {}
    plots = _plots(man, tr, te, pr, names)
    cards = _flagged_cards(tr, pics, names, top)
    models = list(man["config"]["models"])
    pair_cards = _pair_cards(ex, pr, pics, names, pairs, models)
    notes = [] if models else [no_models_text(man)]
    if not images:
        notes.append("Images left out (--no-images): the dataset was not read.")
    if models:
        no_pairs = "No pairs: no test image that a model gets wrong has pairs in this run."
    elif given_input(man, "features"):
        no_pairs = f"No pairs: your model gets no test image wrong ({NO_MODELS})."
    else:
        no_pairs = (f"{NO_MODELS}: no pairs (the nearest training images of a test image need a model's "
                    "embeddings or yours: rerun with --features FILE).")
    page = render({
        "run_name": run.path.resolve().name, "version": man.get("version", ""), "config_hash": man.get("config_hash", ""),
        "device": man.get("device", ""), "notes": notes, "no_pairs": no_pairs,
        "pairs_text": CAPTIONS["pairs"] if models else CAPTIONS["pairs_given"],
        "summary": _summary(man), "plots": plots, "flagged": cards, "pairs": pair_cards,
        "any_flagged": any_flagged, "nothing_flagged": nothing_flagged_text(man),
        "issues": issue_types_section(man, ex, names),
        "decisions": decisions_section(run, ex), "verify": verify_section(run),
        "config_json": json.dumps(man["config"], indent=1),
        "n_plots": sum(p["uri"] is not None for p in plots), "n_flagged": sum(c["uri"] is not None for c in cards),
        "n_pairs": sum((c["test_uri"] is not None) + (c["train_uri"] is not None) for c in pair_cards)})
    atomic_write_bytes(dest, page.encode())
    dest.chmod(0o644)  # a page to share, not a secret
    return dest


def count_images(html_text: str) -> int:
    """How many images a report embeds."""
    return html_text.count(PNG_PREFIX)
