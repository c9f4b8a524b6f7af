"""The consumers of a run that trained no models (``audit run --models none --pred-probs FILE``,
audit/given_run.py): the report, verify, the review app's pages and the run-directory reader, on such a
run with ``--features`` (pairs with NaN influence) and without (no pairs, no neighbours)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from audit import cli
from audit.config import RunConfig, resolve_defaults
from audit.errors import AuditInputError
from audit.pipeline import prepare_dataset
from audit.report import count_images
from audit.rundir import RunDir

from givenhelpers import outside_model_probs
from apphelpers import DECISIONS, ISSUES, PAIRS, REVIEW, open_app, pictures

NOTE = "No models trained"
ARTIFACTS = ("manifest.json", "examples.parquet", "pairs.parquet", "dynamics.npz")


@pytest.fixture(scope="module")
def given_runs(tmp_path_factory):
    """{"g1": a --models none run with --features, "g2": one without}, made through the CLI."""
    d = tmp_path_factory.mktemp("given-consumers")
    ds = prepare_dataset(RunConfig(dataset="digits", noise=0.1))
    np.save(d / "probs.npy", outside_model_probs(ds))
    np.save(d / "feats.npy", (ds.images.reshape(len(ds.labels), -1).astype(np.float32) / 255)[:, ::2])
    runs = {}
    for name, extra in (("g1", ["--features", str(d / "feats.npy")]), ("g2", [])):
        out = d / name
        rc = cli.main(["run", "--dataset", "digits", "--noise", "0.1", "--models", "none", "--pred-probs",
                       str(d / "probs.npy"), *extra, "--out", str(out), "--quiet"])
        assert rc == 0
        runs[name] = out
    man = json.loads((runs["g1"] / "manifest.json").read_text())
    assert man["config"]["models"] == [] and man["recipe"]["eps"]["value"] is None
    return runs


def _copy(run, dest):
    dest.mkdir()
    for name in ARTIFACTS:
        shutil.copy2(run / name, dest / name)
    return dest


# -- the run-directory reader ------------------------------------------------------------------------
def test_rundir_reads_a_run_without_models(given_runs):
    for name, run in given_runs.items():
        r = RunDir(run)
        assert r.models == []
        ex = r.examples()
        assert ex["self_influence"].isna().all() and not ex["held_out_as_canary"].any()
        pairs = r.pairs(ex)
        assert (len(pairs) > 0) == (name == "g1") and pairs["influence"].isna().all()
        assert list(r.dynamics()["models"]) == []
        with pytest.raises(AuditInputError, match=r"no models \(--models none\)"):
            r.checkpoint("natural")


# -- audit report ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["g1", "g2"])
def test_report_renders_and_says_no_models_were_trained(given_runs, name, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(given_runs[name]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    page = out.read_text()
    assert "No models were trained in this run (--models none)" in page
    # the sections that need a model are there, each one line saying so
    for line in ("self-influence needs trained natural and robust models",
                 "influence on test points needs trained natural and robust models",
                 "no natural or robust accuracy; your model&#39;s probabilities: train agreement"):
        assert line in page
    assert "Traceback" not in page
    if name == "g1":  # pairs without influence: by similarity, said
        assert "no influence (no model trained)" in page and "your model&#39;s error" in page
        assert "your model →" in page
        assert int(re.search(r"pairs=(\d+) -->", page).group(1)) > 0  # the pairs' pictures
    else:
        assert "no pairs" in page and "rerun with --features FILE" in page
    assert count_images(page) > 0


# -- audit verify ------------------------------------------------------------------------------------
def test_verify_resolves_the_recipe_itself_and_says_so(given_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    run = _copy(given_runs["g1"], tmp_path / "g1")
    assert cli.main(["verify", str(run), "--seeds", "2", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recipe: the run trained no models (--models none), so verify resolved the audit's own recipe" in out
    rep = json.loads((run / "verify.json").read_text())
    n_train = RunDir(run).manifest["dataset"]["num_train"]
    want = resolve_defaults(RunConfig(dataset="digits", models=("natural",)), (1, 8, 8), n_train, False)
    assert rep["recipe"]["resolved_by"] == "verify" and rep["recipe"]["arch"] == want.arch
    assert rep["models"] == ["natural"] and rep["eps"] == pytest.approx(want.eps)
    assert rep["epochs"] == {"natural": 1} and set(rep["variants"]) == {"given", "cleaned", "true"}
    assert (run / "verify.png").is_file()
    # the report and the app show it, the line included
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Retraining on the cleaned labels" in page and "so verify resolved the audit&#39;s own recipe" in page
    monkeypatch.setenv("AUDIT_RUN_DIR", str(run))
    monkeypatch.setenv("AUDIT_REVIEWER", "tester")
    at = open_app()
    assert any("so verify resolved the audit" in c.value for c in at.caption)


# -- the review app ----------------------------------------------------------------------------------
def _texts(at) -> list[str]:
    return [str(e.value) for kind in ("caption", "info", "markdown", "warning", "subheader") for e in at.get(kind)]


def _noted(at, what: str = "") -> bool:
    """A no-models note on the page (``what``: a phrase of a particular one)."""
    return any(NOTE in t and what in t for t in _texts(at))


@pytest.fixture
def app_run(given_runs, monkeypatch, tmp_path, request):
    run = _copy(given_runs[request.param], tmp_path / request.param)
    monkeypatch.setenv("AUDIT_RUN_DIR", str(run))
    monkeypatch.setenv("AUDIT_REVIEWER", "tester")
    return request.param, run


@pytest.mark.parametrize("app_run", ["g1", "g2"], indirect=True)
def test_every_app_page_renders_with_the_note(app_run):
    name, run = app_run
    at = open_app()  # Overview
    assert _noted(at, "no natural versus robust comparison")
    assert "Natural versus robust training" not in _texts(at)
    acc = at.dataframe[0].value
    assert list(acc["model"]) == ["your model (probs.npy)"]
    assert acc["test, clean"].iloc[0] > 50  # percent
    assert any("models none" in c.value and "eps" not in c.value for c in at.caption)  # the run summary

    at.switch_page(REVIEW).run()
    assert not at.exception, [e.value for e in at.exception]
    assert _noted(at, "no training dynamics") and _noted(at, "no per-model predictions")
    assert _noted(at, "no neighbours") == (name == "g2")
    assert pictures(at) == min(24, int(RunDir(run).examples().query("split == 'train'").is_label_issue.sum())) \
        + 1 + (10 if name == "g1" else 0)
    at.button(key="decide_keep").click().run()  # deciding works as for any run
    assert not at.exception

    at.switch_page(PAIRS).run()
    assert not at.exception, [e.value for e in at.exception]
    if name == "g1":
        assert any("no influence (no model trained)" in t for t in _texts(at))
        assert any("your model →" in t for t in _texts(at))
        assert pictures(at) == 6 * (1 + 5)
    else:
        assert _noted(at, "no pairs")
        assert pictures(at) == 0

    for page in (ISSUES, DECISIONS):
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        assert _noted(at)  # the sidebar says it on every page
