"""audit report: one self-contained HTML file with the plots and galleries of a run."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.cli import main as cli
from audit.report import count_images, fraction_above, max_influence_per_test, top_pairs


def test_report_is_self_contained_and_embeds_every_image(tmp_path, digits_run, capsys):
    src, man = digits_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    assert cli(["report", str(run), "--top", "6", "--pairs", "3"]) == 0
    page = (run / "report.html").read_text()
    assert str(run / "report.html") in capsys.readouterr().out
    # 5 plots + 6 flagged examples + 3 pairs of (test, train) images, all inline PNG
    assert count_images(page) == 5 + 6 + 2 * 3
    assert re.search(r'(src|href)="(https?:|//|file:)', page) is None and "<script" not in page
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in pngs]
    assert all(w >= 84 and h >= 84 for w, h in sizes)  # 8×8 digits are upscaled, not shown as specks
    for text in ("issue_score by category", "Figure 5a", "Figure 5b", "Natural vs robust accuracy",
                 "Top 6 flagged training examples", "Top train → test pairs", "mislabelled"):
        assert text in page
    ex = pd.read_parquet(run / "examples.parquet")
    top = ex[ex["is_label_issue"] & (ex["split"] == "train")].sort_values("issue_score", ascending=False, kind="stable").head(6)
    order = [page.index(f"<b>{eid}</b>") for eid in top["example_id"]]
    assert order == sorted(order)  # gallery in issue_score order
    assert f"<td>{man['metrics']['num_flagged_train']}</td>" in page


def test_paper_figure_5a_holds_on_the_run(digits_run):
    """What the Figure 5a plot shows, as numbers: the training points the robust model refuses to fit
    have far higher self-influence (memorization) than training points overall."""
    run, _ = digits_run
    tr = pd.read_parquet(run / "examples.parquet").query("split == 'train'")
    wrong = ~tr["correct_pgd"].astype(bool)
    grid = np.array([0.5])
    for col in ("memorization", "self_influence"):
        v = tr[col].to_numpy(float)
        if col == "self_influence":
            v = v / np.nanmax(v)
            grid = np.array([0.05])
        assert fraction_above(v[wrong.to_numpy()], grid)[0] > 2 * fraction_above(v, grid)[0]


def test_fraction_above_and_pair_selection_are_exact():
    assert fraction_above(np.array([0.1, 0.2, 0.2, 0.9, np.nan]), np.array([0.0, 0.2, 0.5, 1.0])).tolist() == [1.0, 0.25, 0.25, 0.0]
    pairs = pd.DataFrame({
        "test_id": ["t1", "t1", "t2", "t3", "t4"], "train_id": ["a", "b", "c", "d", "e"], "rank": [1, 2, 1, 1, 1],
        "similarity": [0.9] * 5, "influence": [5.0, 9.0, -7.0, 2.0, 8.0], "fz_influence": [0.1, 0.3, 0.2, np.nan, 0.0],
        "reason": ["robust_error", "robust_error", "natural_error", "natural_error", "robust_error"]})
    assert list(top_pairs(pairs, 3)["train_id"]) == ["e", "a", "c"]  # robust errors by influence, then |natural|
    per = max_influence_per_test(pairs)
    assert per.loc["t1", "influence"] == 9.0 and per.loc["t1", "fz_influence"] == pytest.approx(0.3)


@pytest.mark.parametrize("what", ["missing", "running", "no-examples"])
def test_report_refuses_what_is_not_a_complete_run(tmp_path, capsys, what):
    run = tmp_path / "r"
    if what != "missing":
        run.mkdir()
        (run / "manifest.json").write_text(json.dumps({"status": "running" if what == "running" else "complete"}))
    assert cli(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert {"missing": "no manifest.json", "running": "'running'", "no-examples": "examples.parquet"}[what] in err
    assert not (run / "report.html").exists()


def test_report_shows_decisions_and_verify_and_escapes_everything_from_data(tmp_path, digits_run, capsys):
    """Review decisions (counts and the decided rows) and verify.json (variants × metrics with intervals)
    appear; class names, reviewers and JSON text carrying HTML come out as text, never as markup."""
    from audit.decisions import DecisionStore

    src, _ = digits_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    man = json.loads((run / "manifest.json").read_text())
    man["dataset"]["class_names"] = [f'<script>alert({i})</script>' for i in range(9)] + ['<img src=x onerror="x()">']
    (run / "manifest.json").write_text(json.dumps(man))
    ex = pd.read_parquet(run / "examples.parquet")
    fl = ex[(ex.split == "train") & ex.is_label_issue].sort_values("issue_score", ascending=False)["example_id"]
    s = DecisionStore(run)
    s.record(fl.iloc[0], "keep", reviewer="<b>ann</b>")
    s.record(fl.iloc[1], "relabel", reviewer="bob", new_label=9)
    s.record(fl.iloc[2], "remove", reviewer="bob")
    # verify.json as `audit verify` writes it, with a hostile variant name (the file is untrusted too)
    def res(m, lo, hi):
        return {"mean": m, "low": lo, "high": hi, "values": [lo, hi]}
    results = {"natural": {"clean_accuracy": res(0.91, 0.9, 0.92), "adv_accuracy": res(0.08, 0.05, 0.11),
                           "adv_accuracy_small": {"mean": 0.7, "low": None, "high": None, "values": [0.7]}}}
    verify = {"eps": 0.1, "small_eps": 0.025, "apply": "suggested", "seeds": [0, 1, 2],
              "variants": {"given": {"n_train": 1347, "relabelled": 0, "removed": 0, "decisions": 0, "results": results},
                           "<iframe srcdoc=x>": {"n_train": 1346, "relabelled": 0, "removed": 1, "decisions": 1,
                                                 "results": results}},
              "gain_recovered": {"adv_accuracy": 0.93, "adv_accuracy_small": None}}
    (run / "verify.json").write_text(json.dumps(verify))
    assert cli(["report", str(run), "--top", "3", "--pairs", "1"]) == 0
    page = (run / "report.html").read_text()
    assert "<script" not in page and "<iframe" not in page and "<img src=x" not in page and "<b>ann</b>" not in page
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in page and "&lt;b&gt;ann&lt;/b&gt;" in page
    assert "<h2>Review decisions</h2>" in page
    for k, v in (("keep", 1), ("relabel", 1), ("remove", 1), ("reviewers", 2)):
        assert f"<tr><th>{k}</th><td>{v}</td></tr>" in page
    assert page.count(f"<td>{fl.iloc[1]}</td>") == 1 and "&lt;img src=x onerror=&#34;x()&#34;&gt;" in page
    assert "<th>clean acc</th><th>adv acc @0.1</th><th>adv acc @0.025</th>" in page
    assert "<tr><td>given</td><td>1347</td><td>natural</td><td>0.910 ± 0.010</td><td>0.080 ± 0.030</td>" \
           "<td>0.700</td></tr>" in page
    assert "<td>&lt;iframe srcdoc=x&gt;</td><td>1346</td>" in page
    assert "93% at eps 0.1" in page
    assert count_images(page) == 5 + 3 + 2


def test_report_without_images_reads_no_dataset(tmp_path, digits_run):
    src, _ = digits_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    man = json.loads((run / "manifest.json").read_text())
    man["dataset"]["spec"] = f"npz:{tmp_path}/gone.npz"
    (run / "manifest.json").write_text(json.dumps(man))
    assert cli(["report", str(run), "--top", "4", "--pairs", "2"]) == 2
    assert not (run / "report.html").exists()
    assert cli(["report", str(run), "--top", "4", "--pairs", "2", "--no-images", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert count_images(page) == 5 and page.count("(no image)") == 4 + 2 * 2


def test_report_with_nothing_flagged_says_so_without_an_empty_chart_or_warnings(tmp_path, digits_run):
    """Nothing flagged and no noise injected: a sentence says so and the gallery shows the top-ranked
    examples under its own heading; no "Top 0" heading, no per-class chart of nothing, no matplotlib
    warning, human labels for the metrics and no "injected noise" line."""
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    from audit.report import build_report

    src, _ = digits_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    t = pq.read_table(run / "examples.parquet")
    i = t.schema.get_field_index("is_label_issue")
    pq.write_table(t.set_column(i, "is_label_issue", pa.array([False] * len(t))), run / "examples.parquet")
    man = json.loads((run / "manifest.json").read_text())
    man["config"]["noise"] = 0.0
    man["metrics"] = {k: v for k, v in man["metrics"].items() if not k.startswith("noise_")}
    man["metrics"].update(num_flagged_train=0, num_flagged_test=0)
    (run / "manifest.json").write_text(json.dumps(man))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend" included
        page = build_report(run, top=5, pairs=2).read_text()
    assert "Top 0" not in page and "Flagged per class" not in page
    assert "Nothing was flagged in this run" in page
    assert "<h2>Top 5 training examples by issue_score (none flagged)</h2>" in page
    ex = pd.read_parquet(run / "examples.parquet").query("split == 'train'")
    top = ex.sort_values("issue_score", ascending=False, kind="stable")["example_id"].head(5)
    order = [page.index(f"<b>{eid}</b>") for eid in top]
    assert order == sorted(order)
    assert count_images(page) == 4 + 5 + 2 * 2  # no per-class plot
    assert "injected" not in page.split("<h2>Summary</h2>")[1].split("</table>")[0]
    for raw in ("noise_auroc", "wall_seconds", "num_pairs", "estimated_noise_rate", "e+0"):
        assert raw not in page.split("<h2>Config</h2>")[0]
    assert "<tr><th>flagged training examples</th><td>0</td></tr>" in page
    assert re.search(r"<tr><th>run time</th><td>\d+ (s|min \d+ s)</td></tr>", page)


def test_report_summary_labels_metrics_and_names_the_injected_noise(tmp_path, digits_run):
    src, man = digits_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    assert cli(["report", str(run), "--top", "2", "--pairs", "1", "--no-images"]) == 0
    page = (run / "report.html").read_text()
    summary = page.split("<h2>Summary</h2>")[1].split("</table>")[0]
    assert "<tr><th>injected label noise</th><td>10.0% of training labels (symmetric)</td></tr>" in summary
    m = man["metrics"]
    assert f"<tr><th>issue_score AUROC on the injected errors</th><td>{m['noise_auroc']:.3f}</td></tr>" in summary
    assert f"<tr><th>injected label errors flagged (recall)</th><td>{m['noise_recall']:.1%}</td></tr>" in summary
    assert "noise_auroc" not in summary and "wall_seconds" not in summary
