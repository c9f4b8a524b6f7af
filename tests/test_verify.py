"""``audit verify``: retraining on the given, cleaned and true labels of the digits run with tiny epochs;
the cleaned labels follow the review decisions (export's default policy), verify.json's structure,
resumption, bad run directories; cache entries bound to this machine, links and read-only or full disks
refused in one line, gain recovered with an interval over seeds, --threads."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from audit.cli import main as cli
from audit.decisions import DecisionStore
from audit.verify import (
    REFUSED_BAD,
    REFUSED_FOREIGN,
    REFUSED_RANGE,
    entry_bytes,
    fieller_interval,
    gain_recovered,
    gain_recovered_interval,
    key_path,
    load_run_data,
    machine_secret,
    mean_interval,
    parse_entry,
    resume_name,
    summary_lines,
    variant_labels,
)

FAST = ["--seeds", "2", "--epochs", "1", "--quiet"]  # the smallest settings that still give an interval


@pytest.fixture(scope="module", autouse=True)
def key_home(tmp_path_factory):
    """This module's per-user secret lives in a folder of its own ($XDG_CACHE_HOME)."""
    home = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(home))
        yield home


@pytest.fixture()
def run_copy(digits_run, tmp_path):
    """A copy of the digits run (verify writes into it)."""
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run, ignore=shutil.ignore_patterns(".cache", "decisions.sqlite*"))
    return run


@pytest.fixture(scope="module")
def verified(digits_run, tmp_path_factory, key_home):
    """The digits run with four decisions, verified once (``FAST``, default --apply): (dir, stdout, verify.json)."""
    run = tmp_path_factory.mktemp("verified") / "run"
    shutil.copytree(digits_run[0], run, ignore=shutil.ignore_patterns(".cache", "decisions.sqlite*"))
    _decide(run)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(["verify", str(run), *FAST]) == 0
    return run, buf.getvalue(), json.loads((run / "verify.json").read_text())


def _copy(verified, tmp_path, name="run"):
    """A copy of the verified run, its cache included (a rerun trains nothing)."""
    dst = tmp_path / name
    shutil.copytree(verified[0], dst)
    return dst


def _decide(run):
    """Relabel two flagged rows to their true class, remove one, keep one."""
    ex = pd.read_parquet(run / "examples.parquet")
    flagged = ex[(ex["split"] == "train") & ex["is_label_issue"]].sort_values("issue_score", ascending=False)
    ids = flagged["example_id"].tolist()
    store = DecisionStore(run)
    for i in ids[:2]:
        store.record(i, "relabel", new_label=int(flagged.set_index("example_id").loc[i, "clean_label"]))
    store.record(ids[2], "remove")
    store.record(ids[3], "keep")
    return ids[:4], flagged.set_index("example_id")


def test_cleaned_labels_follow_the_decisions(run_copy):
    ids, flagged = _decide(run_copy)
    data = load_run_data(run_copy)
    assert len(data.train) == 1347 and len(data.test_labels) == 450
    given = data.train["given_label"].to_numpy()
    pos = {e: i for i, e in enumerate(data.train["example_id"])}
    v = variant_labels(data, "decisions")
    changed = np.flatnonzero(v["cleaned"]["labels"] != given)
    assert sorted(changed) == sorted(pos[i] for i in ids[:3])
    assert [v["cleaned"]["labels"][pos[i]] for i in ids[:3]] == [*flagged.loc[ids[:2], "clean_label"], -1]
    assert (v["cleaned"]["relabelled"], v["cleaned"]["removed"], v["cleaned"]["decisions"]) == (2, 1, 4)
    assert (v["true"]["labels"] != given).sum() == data.train["is_injected_noise"].sum() == 135
    s = variant_labels(data, "suggested")["cleaned"]
    flagged_rows = data.train["is_label_issue"].to_numpy()
    # suggested labels on the flagged rows, except where the reviewer decided (the kept row keeps its label)
    assert s["labels"][pos[ids[3]]] == given[pos[ids[3]]] != data.train["suggested_label"].iloc[pos[ids[3]]]
    assert s["removed"] == 1 and s["relabelled"] == int(
        (data.train["suggested_label"].to_numpy() != given)[flagged_rows].sum()) - 2


def test_verify_writes_json_and_plot_and_resumes(verified, tmp_path, capsys):
    run_copy, out, rep = verified  # verified with the default --apply: decisions, as `audit export`
    assert "variant" in out.splitlines()[0] and "gain recovered" in out and "(12 trainings" in out
    assert "12 trainings, 0 cached results reused, 0 refused;" in out
    assert set(rep) >= {"variants", "gain_recovered", "gain_recovered_interval", "eps", "small_eps", "seeds",
                        "models", "epochs", "apply", "out", "trained", "reused", "refused", "refused_why", "threads"}
    assert rep["apply"] == "decisions" and rep["out"] == rep["run"] == str(run_copy)
    assert rep["models"] == ["natural", "pgd"] and rep["seeds"] == [0, 1] and rep["epochs"] == {"natural": 1, "pgd": 1}
    assert (rep["eps"], rep["small_eps"]) == (0.1, 0.025)
    assert list(rep["variants"]) == ["given", "cleaned", "true"]
    assert [rep["variants"][v]["n_train"] for v in ("given", "cleaned", "true")] == [1347, 1346, 1347]
    c = rep["variants"]["cleaned"]
    assert {k: c[k] for k in ("relabelled", "removed", "decisions", "suggested")} == \
        {"relabelled": 2, "removed": 1, "decisions": 4, "suggested": 0}
    assert c["flagged_undecided"] == c["flagged"] - 4
    for v in rep["variants"].values():
        for m in ("natural", "pgd"):
            for k in ("clean_accuracy", "adv_accuracy", "adv_accuracy_small"):
                s = v["results"][m][k]
                assert len(s["values"]) == 2 and s["low"] <= s["mean"] <= s["high"]
    assert set(rep["gain_recovered"]) == set(rep["gain_recovered_interval"]) == {"adv_accuracy", "adv_accuracy_small"}
    assert (run_copy / "verify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one cached result per (labels, seed, model): the cleaned labels trained models of their own
    entries = list((run_copy / ".cache" / "verify").glob("*.json"))
    assert len(entries) == 12 and not list((run_copy / ".cache" / "verify").glob("*.resume.pt"))
    # a second call trains nothing and gives the same numbers
    run = _copy(verified, tmp_path)
    assert cli(["verify", str(run), *FAST]) == 0
    again = json.loads((run / "verify.json").read_text())
    assert (again["trained"], again["reused"], again["refused"]) == (0, 12, 0)
    assert again["variants"] == rep["variants"]
    assert "(0 trainings, 12 cached results reused, 0 refused;" in capsys.readouterr().out


def test_bad_run_directories_exit_2(tmp_path, run_copy, capsys):
    assert cli(["verify", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli(["verify", str(tmp_path / "empty")]) == 2
    man = json.loads((run_copy / "manifest.json").read_text())
    (run_copy / "manifest.json").write_text(json.dumps({**man, "status": "running"}))
    assert cli(["verify", str(run_copy)]) == 2
    (run_copy / "manifest.json").write_text("{not json")
    assert cli(["verify", str(run_copy)]) == 2
    other = {**man, "dataset": {**man["dataset"], "source_fingerprint": "0" * 16}}  # images must match the run's
    (run_copy / "manifest.json").write_text(json.dumps(other))
    assert cli(["verify", str(run_copy)]) == 2
    (run_copy / "manifest.json").write_text(json.dumps(man))
    assert cli(["verify", str(run_copy), "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("audit: error: ") for line in err)
    assert "missing: no manifest.json" in err[0] and "empty: no manifest.json" in err[1]
    assert "'running', not 'complete'" in err[2] and "manifest.json: not valid JSON" in err[3]
    assert "recorded 0000000000000000" in err[4] and "--seeds 0" in err[5]
    assert not (run_copy / "verify.json").exists()


def _res(adv, small):
    """The natural model's adversarial accuracies of one variant, per seed."""
    return {"results": {"natural": {"adv_accuracy": mean_interval(adv), "adv_accuracy_small": mean_interval(small)}}}


EPS = {"adv_accuracy": 0.3, "adv_accuracy_small": 0.075}


def test_interval_and_gain_arithmetic():
    s = mean_interval([0.5, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["high"] - s["mean"] == pytest.approx(12.7062047 * 0.1)
    assert mean_interval([0.4])["low"] is None
    # paired by seed: (cleaned − given) / (true − given) of the means, with Fieller's interval
    given, cleaned, true = [0.10, 0.12, 0.11], [0.40, 0.45, 0.41], [0.50, 0.52, 0.49]
    v = {"given": _res(given, [0.5] * 3), "cleaned": _res(cleaned, [0.6] * 3), "true": _res(true, [0.5] * 3)}
    g = gain_recovered_interval(v, EPS)["adv_accuracy"]
    dc, dt = np.subtract(cleaned, given), np.subtract(true, given)
    assert g["estimate"] == pytest.approx(dc.mean() / dt.mean()) and g["measurable"] and g["reason"] is None
    assert g["low"] < g["estimate"] < g["high"] and not g["beyond_oracle"]
    assert g["gain_true"]["mean"] == pytest.approx(dt.mean()) and g["gain_cleaned"]["mean"] == pytest.approx(dc.mean())
    # the bounds solve Fieller's equation (a − ρb)² = t² (v11 − 2ρ v12 + ρ² v22)
    cov, t2 = np.cov(np.vstack([dc, dt]), ddof=1) / 3, stats.t.ppf(0.975, 2) ** 2
    for rho in (g["low"], g["high"]):
        assert (dc.mean() - rho * dt.mean()) ** 2 == pytest.approx(
            t2 * (cov[0, 0] - 2 * rho * cov[0, 1] + rho ** 2 * cov[1, 1]))
    assert gain_recovered(v, EPS)["adv_accuracy"] == pytest.approx(g["estimate"])
    # true and given agree at the small eps: nothing to recover, no number
    small = gain_recovered_interval(v, EPS)["adv_accuracy_small"]
    assert not small["measurable"] and small["estimate"] is None
    assert gain_recovered(v, EPS)["adv_accuracy_small"] is None
    assert small["reason"] == "the clean labels gain nothing measurable at eps 0.075: true − given +0.000 ± 0.000"
    assert gain_recovered({"given": _res([0.1], [0.5]), "cleaned": _res([0.4], [0.6])}) == {
        "adv_accuracy": None, "adv_accuracy_small": None}
    assert fieller_interval(np.array([0.1, 0.2]), np.array([-0.1, 0.1])) is None  # denominator interval holds 0


def _report(variants, **extra):
    return {"eps": 0.3, "small_eps": 0.075, "apply": "suggested", "seeds": [0, 1], "variants": variants,
            "gain_recovered_interval": gain_recovered_interval(variants, EPS), **extra}


def test_gain_recovered_is_not_a_ratio_of_noise():
    """Issue #22 item 13: MNIST at eps 0.3 printed 332%, a ratio of two differences near zero. A gain whose
    ceiling is not clearly above zero is "not measurable"; a ratio over 100% says it is beyond the oracle;
    one seed gives no interval, so no number; a verify.json of version 1 still reads."""
    mnist = {"given": _res([0.000, 0.002], [0.10, 0.12]), "cleaned": _res([0.09, 0.038], [0.80, 0.81]),
             "true": _res([0.03, 0.01], [0.85, 0.86])}
    lines = summary_lines(_report(mnist))
    assert "332%" not in lines[1] and "%" not in lines[1].split("not measurable at eps 0.3")[1].split(";")[0]
    assert "not measurable at eps 0.3 (the clean labels gain nothing measurable at eps 0.3: true − given " \
           "+0.019 ± 0.140)" in lines[1]
    g = gain_recovered_interval(mnist, EPS)
    assert g["adv_accuracy"]["estimate"] == pytest.approx((0.064 - 0.001) / 0.019)  # 332%, never printed
    assert not g["adv_accuracy"]["measurable"] and g["adv_accuracy_small"]["measurable"]
    beyond = {"given": _res([0.10, 0.12, 0.11], [0.5] * 3), "cleaned": _res([0.55, 0.56, 0.58], [0.5] * 3),
              "true": _res([0.50, 0.52, 0.49], [0.5] * 3)}
    line = summary_lines({**_report(beyond), "seeds": [0, 1, 2]})[1]
    est = gain_recovered_interval(beyond, EPS)["adv_accuracy"]
    assert est["beyond_oracle"] and f"{est['estimate']:.0%} at eps 0.3 (95% interval {est['low']:.0%} to " \
        f"{est['high']:.0%}) — beyond the oracle: the cleaned labels beat the true labels" in line
    one = {k: _res([x["results"]["natural"]["adv_accuracy"]["values"][0]], [0.5]) for k, x in beyond.items()}
    assert "not measurable at eps 0.3 (one seed gives no interval at eps 0.3; use --seeds 3)" in \
        summary_lines({**_report(one), "seeds": [0]})[1]
    old = {"eps": 0.3, "small_eps": 0.075, "apply": "suggested", "seeds": [0, 1], "variants": {},
           "gain_recovered": {"adv_accuracy": 3.21, "adv_accuracy_small": 0.93}}
    assert summary_lines(old)[1].endswith("321% at eps 0.3 (beyond the oracle), 93% at eps 0.075")


def test_verify_and_an_audit_never_write_one_run_directory_at_once(run_copy, capsys):
    from filelock import FileLock

    from audit.orchestrator import RunDirLock

    (run_copy / ".audit.lock.owner").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "since": "now"}))
    with FileLock(str(run_copy / ".audit.lock")):  # an audit (re)writing the run
        assert cli(["verify", str(run_copy), "--seeds", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "another audit is writing" in err and "4242" in err and str(run_copy) in err
    assert not (run_copy / "verify.json").exists()
    with RunDirLock(run_copy, "verify", "wait"):  # a verify in progress: `audit run --out` on it is refused
        assert cli(["run", "--dataset", "digits", "--epochs", "1", "--out", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "audit verify, process" in err and "choose another --out" in err
    assert not (run_copy / ".audit.lock.owner").exists()  # released


# -- issue #22 item 3: links and odd files ---------------------------------------------------------
def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_links_and_odd_files_in_the_run_are_refused(run_copy, tmp_path, capsys):
    """A `.cache` link (the report: verify wrote its cache outside), a linked verify.json or lock file, a FIFO
    where verify.png goes, a file where a cache folder goes: exit 2 naming the path, nothing written anywhere."""
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = tmp_path / "precious.json"
    precious.write_text("keep")
    run = run_copy
    link = f"a symbolic link; audit verify reads and writes only real files inside {run}, never through a link " \
           "(remove it and rerun)"
    cases = [
        (".cache", lambda p: p.symlink_to(outside, target_is_directory=True), link),
        ("verify.json", lambda p: p.symlink_to(precious), link),
        (".audit.lock", lambda p: (p.unlink(missing_ok=True), p.symlink_to(tmp_path / "elsewhere.lock")), link),
        ("verify.png", os.mkfifo, "not a regular file; audit verify writes a file there (remove it and rerun)"),
        (".cache/verify", lambda p: (p.parent.mkdir(), p.write_text("x")),
         "not a directory; audit verify keeps its cache there (remove it and rerun)"),
    ]
    for rel, make, why in cases:
        make(run / rel)
        assert cli(["verify", str(run), *FAST]) == 2, rel
        assert _err_lines(capsys) == [f"audit: error: {run / rel}: {why}"]
        p = run / rel
        p.unlink()
        if rel == ".cache/verify":
            p.parent.rmdir()
    assert not list(outside.iterdir()) and precious.read_text() == "keep" and not (tmp_path / "elsewhere.lock").exists()
    assert not (run / "verify.json").exists() and not (run / ".cache").exists()


def test_a_linked_cache_entry_or_resume_file_is_refused(verified, tmp_path, capsys):
    """Every cache file verify would read is checked before any training: a link is exit 2 naming it."""
    run = _copy(verified, tmp_path)
    forged = tmp_path / "forged.json"
    entry = sorted((run / ".cache" / "verify").glob("*.json"))[0]
    forged.write_bytes(entry.read_bytes())
    entry.unlink()
    entry.symlink_to(forged)
    assert cli(["verify", str(run), *FAST]) == 2
    assert _err_lines(capsys) == [f"audit: error: {entry}: a symbolic link; audit verify reads and writes only real "
                                  f"files inside {run}, never through a link (remove it and rerun)"]
    entry.unlink()
    shutil.copy(forged, entry)
    resume = run / ".cache" / "verify" / resume_name(machine_secret(), entry.stem)
    resume.symlink_to(tmp_path / "weights.pt")
    assert cli(["verify", str(run), *FAST]) == 2
    assert _err_lines(capsys) == [f"audit: error: {resume}: a symbolic link; audit verify reads and writes only real "
                                  f"files inside {run}, never through a link (remove it and rerun)"]
    assert not (tmp_path / "weights.pt").exists()


# -- issue #22 item 4: cache entries bound to this machine -----------------------------------------
def test_edited_and_foreign_cache_entries_are_refused_and_retrained(verified, tmp_path, monkeypatch, capsys):
    """A run directory shipped with edited cache entries: each one whose tag does not verify, or that holds a
    number not finite or outside [0, 1], is refused, retrained and counted; the numbers are this machine's."""
    run, _, rep = verified
    run = _copy(verified, tmp_path)
    entries = sorted((run / ".cache" / "verify").glob("*.json"))
    edited = json.loads(entries[0].read_text())
    edited["result"]["adv_accuracy"] = 0.99  # the tag no longer matches
    entries[0].write_text(json.dumps(edited))
    tagged = json.loads(entries[1].read_text())["result"]  # a valid tag over an impossible accuracy
    entries[1].write_bytes(entry_bytes(machine_secret(), entries[1].stem, {**tagged, "clean_accuracy": 1.5}))
    text = entries[2].read_text()
    entries[2].write_text(text.replace(f'"adv_accuracy": {json.loads(text)["result"]["adv_accuracy"]!r}',
                                       '"adv_accuracy": NaN'))
    assert "NaN" in entries[2].read_text()
    assert cli(["verify", str(run), *FAST]) == 0
    again = json.loads((run / "verify.json").read_text())
    assert (again["trained"], again["reused"], again["refused"]) == (3, 9, 3)
    assert again["refused_why"] == {REFUSED_FOREIGN: 1, REFUSED_RANGE: 2}
    assert again["variants"] == rep["variants"]  # retrained here: the same seeds give the same numbers
    out = capsys.readouterr().out
    assert "(3 trainings, 9 cached results reused, 3 refused and retrained: " in out
    assert f"1 {REFUSED_FOREIGN}" in out and f"2 {REFUSED_RANGE}" in out
    # on another machine (another user's secret) nothing of this cache is believed
    other = tmp_path / "other-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(other))
    assert cli(["verify", str(run), "--seeds", "1", "--epochs", "1", "--quiet"]) == 0
    theirs = json.loads((run / "verify.json").read_text())
    assert (theirs["trained"], theirs["reused"], theirs["refused"]) == (6, 0, 6)
    assert theirs["refused_why"] == {REFUSED_FOREIGN: 6}
    key = other / "benign-audit" / "verify.key"
    assert key_path() == key and key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    assert "(6 trainings, 0 cached results reused, 6 refused and retrained: 6 not produced on this machine" \
           in capsys.readouterr().out


def test_entries_tags_and_the_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    secret = machine_secret()
    assert machine_secret() == secret and len(secret) == 32  # made once, then read
    key = tmp_path / "xdg" / "benign-audit" / "verify.key"
    assert key.stat().st_mode & 0o777 == 0o600
    result = {"clean_accuracy": 0.9, "adv_accuracy": 0.5, "adv_accuracy_small": 0.8, "train_seconds": 1.0}
    raw = entry_bytes(secret, "k1", result)
    assert parse_entry(raw, secret, "k1") == (result, None)
    assert parse_entry(raw, secret, "k2") == (None, REFUSED_FOREIGN)  # another entry's result
    assert parse_entry(raw, b"x" * 32, "k1") == (None, REFUSED_FOREIGN)  # another machine's
    assert parse_entry(raw.replace(b"0.9", b"0.95"), secret, "k1") == (None, REFUSED_FOREIGN)
    no_tag = json.dumps({"result": result}).encode()
    assert parse_entry(no_tag, secret, "k1") == (None, REFUSED_FOREIGN)
    assert parse_entry(b"{oops", secret, "k1") == (None, REFUSED_BAD)
    for bad in (-0.1, 1.0001, float("inf")):
        assert parse_entry(json.dumps({"result": {**result, "adv_accuracy": bad}, "tag": "0"}).encode(), secret,
                           "k1") == (None, REFUSED_RANGE)
    assert parse_entry(json.dumps({"result": {**result, "adv_accuracy": "0.5"}, "tag": "0"}).encode(), secret,
                       "k1") == (None, REFUSED_BAD)
    # a resume checkpoint's name needs the secret: one shipped in a run directory is never found
    name = resume_name(secret, "k1")
    assert name.startswith("k1.") and name.endswith(".resume.pt") and name != resume_name(b"x" * 32, "k1")
    # a secret others could read (or not 32 bytes) is refused, naming the file
    from audit.errors import AuditInputError

    key.chmod(0o644)
    with pytest.raises(AuditInputError) as e:
        machine_secret()
    assert str(e.value) == (f"{key}: not the secret benign-audit made (a 32-byte file of yours with mode 0600); "
                            "delete it and rerun (a new one is made)")


# -- issue #22 item 6: read-only and full disks ----------------------------------------------------
def test_a_read_only_run_directory_is_one_line_and_out_writes_elsewhere(verified, tmp_path, monkeypatch, capsys):
    run = _copy(verified, tmp_path)
    for name in ("verify.json", "verify.png"):
        (run / name).unlink()
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # the run directory on a read-only mount
        if dir is not None and pathlib.Path(dir).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cli(["verify", str(run), *FAST]) == 2
    assert _err_lines(capsys) == [
        f"audit: error: {run}: the run directory is not writable (Read-only file system); audit verify writes "
        "verify.json, verify.png and its cache (.cache/verify) there; pass --out DIR to write them elsewhere"]
    out = tmp_path / "elsewhere"
    out.mkdir()
    shutil.copytree(run / ".cache", out / ".cache")  # a cache this machine made: reused wherever it is
    mine = {p: p.stat().st_mtime_ns for p in run.rglob("*") if not p.name.startswith("decisions.sqlite")}
    assert cli(["verify", str(run), *FAST, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if not p.name.startswith("decisions.sqlite")} == mine
    rep = json.loads((out / "verify.json").read_text())
    assert (rep["run"], rep["out"], rep["trained"], rep["reused"]) == (str(run), str(out), 0, 12)
    assert (out / "verify.png").is_file() and not (run / "verify.json").exists()
    text = capsys.readouterr().out
    assert f"wrote {out}/verify.json and verify.png (0 trainings" in text
    assert f"`audit report {run}` and the app show {run}/verify.json, not this one\n" in text
    assert text.splitlines()[-len(_next(run)):] == _next(run)
    assert cli(["verify", str(run), *FAST, "--out", str(run / ".cache" / "mine")]) == 2
    assert _err_lines(capsys) == [f"audit: error: --out {run / '.cache' / 'mine'}: inside the run's own .cache/mine; "
                                  "choose another directory"]


def test_a_full_disk_is_one_line_and_nothing_half_written(verified, tmp_path, monkeypatch, capsys):
    run = _copy(verified, tmp_path)
    before = (run / "verify.json").read_bytes()
    real = pathlib.Path.write_bytes

    def full(self, data):
        if self.name.startswith(".verify.json."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert cli(["verify", str(run), *FAST]) == 1
    assert _err_lines(capsys) == [
        f"audit: error: {run / 'verify.json'}: cannot write (No space left on device); nothing was half-written "
        "and finished stages are kept: free some space and rerun"]  # (audit.io's atomic writer says it)
    assert (run / "verify.json").read_bytes() == before and not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # the disk fills while a training saves its resume checkpoint (torch's writer raises RuntimeError)
    monkeypatch.undo()
    entry = sorted((run / ".cache" / "verify").glob("*.json"))[0]
    entry.unlink()

    def no_space(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr("audit.verify.train_and_evaluate", no_space)
    assert cli(["verify", str(run), *FAST]) == 1
    resume = run / ".cache" / "verify" / resume_name(machine_secret(), entry.stem)
    assert _err_lines(capsys) == [
        f"audit: error: {resume}: cannot write ([enforce fail at inline_container.cc:603] . PytorchStreamWriter "
        "failed writing file data/0: file write failed); nothing was half-written and finished trainings are kept: "
        "free some space and rerun"]
    assert (run / "verify.json").read_bytes() == before


# -- issue #22 item 13: --threads ------------------------------------------------------------------
def test_threads_default_like_audit_run_and_applied(verified, tmp_path, monkeypatch, capsys):
    import torch

    from audit.config import default_threads

    run = _copy(verified, tmp_path)
    before = torch.get_num_threads()
    try:
        assert cli(["verify", str(run), *FAST, "--threads", "2"]) == 0
        assert json.loads((run / "verify.json").read_text())["threads"] == 2 == torch.get_num_threads()
        assert "; 2 threads," in capsys.readouterr().out
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert default_threads() == 1
        assert cli(["verify", str(run), *FAST]) == 0
        assert json.loads((run / "verify.json").read_text())["threads"] == 1 == torch.get_num_threads()
        assert "; 1 thread," in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    assert cli(["verify", str(run), *FAST, "--threads", "0"]) == 2
    assert _err_lines(capsys) == ["audit: error: --threads 0: must be ≥ 1"]


# -- issue #26 item 4: export's default, and saying which labels were used -------------------------
def test_default_apply_is_exports_and_no_decisions_says_which_labels(run_copy, tmp_path, capsys):
    from audit.cli import build_parser
    from audit.export import resolve_policy

    parser = build_parser()
    assert parser.parse_args(["verify", "RUN"]).apply == "decisions"
    assert resolve_policy(parser.parse_args(["export", "RUN", "--out", "x.csv"]).apply)[0] == "decisions"
    data = load_run_data(run_copy)
    cleaned = variant_labels(data)["cleaned"]
    n = int(data.train["is_label_issue"].sum())
    assert (cleaned["decisions"], cleaned["flagged"], cleaned["flagged_undecided"]) == (0, n, n)
    assert cleaned["relabelled"] == cleaned["removed"] == 0
    assert cli(["export", str(run_copy), "--out", str(tmp_path / "labels.csv")]) == 0
    exported = pd.read_csv(tmp_path / "labels.csv").set_index("example_id")["final_label"]
    assert (exported.loc[data.train["example_id"]].to_numpy() == cleaned["labels"]).all()
    capsys.readouterr()
    assert cli(["verify", str(run_copy), "--seeds", "1", "--epochs", "1", "--quiet"]) == 0
    rep = json.loads((run_copy / "verify.json").read_text())
    assert (rep["apply"], rep["trained"], rep["reused"]) == ("decisions", 4, 0)  # cleaned = given: shared
    lines = capsys.readouterr().out.splitlines()
    assert (f"no review decisions yet: cleaned = the given labels (what `audit export` writes by default, --apply "
            f"decisions), so cleaned and given train the same models; the {n} flagged rows keep their given label "
            "(review them, or pass --apply suggested to retrain on the suggested labels); 1 seeds, 95% t-intervals"
            ) in lines
    assert "gain recovered: nothing to measure yet (the cleaned labels are the given labels)" in lines
    assert lines[-len(_next(run_copy)):] == _next(run_copy)


def _next(run, apply="decisions") -> list[str]:
    """`audit run`'s "next:" lines (the shared helper), less verify itself, the export under ``apply``."""
    from audit.commands.run import next_steps

    want = [ln for ln in next_steps(str(run)) if not ln.startswith(f"  audit verify {run}")]
    if apply == "suggested":
        want = [ln.replace("--out labels.csv", "--out labels.csv --apply suggested") for ln in want]
    assert want[0] == "next:" and any(ln.startswith(f"  audit app {run} ") for ln in want)
    assert any(ln.startswith(f"  audit export {run} --out labels.csv" + (" --apply suggested" if apply == "suggested"
                                                                        else "")) for ln in want)
    return want


def test_the_summary_says_which_labels_were_cleaned(verified):
    run, out, rep = verified
    c = rep["variants"]["cleaned"]
    left = c["flagged"] - 4
    assert (f"cleaned (--apply decisions, as `audit export` writes by default): 4 review decisions (2 relabelled, "
            f"1 removed); {left} flagged rows nobody decided on keep their given label (--apply suggested applies "
            "the suggestions); 2 seeds, 95% t-intervals") in out.splitlines()
    assert out.splitlines()[-len(_next(run)):] == _next(run)
    from audit.commands.verify import next_lines

    assert next_lines({**rep, "apply": "suggested"}, str(run)) == _next(run, "suggested")
    sugg = {**rep, "apply": "suggested", "variants": {**rep["variants"], "cleaned": {
        **c, "decisions": 0, "flagged_undecided": c["flagged"], "relabelled": 145, "removed": 0, "suggested": 145}}}
    assert summary_lines(sugg)[0] == (f"no review decisions yet: cleaned = the suggested labels of the {c['flagged']} "
                                      "flagged rows (--apply suggested; 145 relabelled, 0 removed); 2 seeds, "
                                      "95% t-intervals")
    sugg["variants"]["cleaned"].update(decisions=4, flagged_undecided=left)
    assert summary_lines(sugg)[0] == (f"cleaned (--apply suggested): 4 review decisions, then the suggested label on "
                                      f"the {left} flagged rows nobody decided on (145 relabelled, 0 removed in all); "
                                      "2 seeds, 95% t-intervals")
