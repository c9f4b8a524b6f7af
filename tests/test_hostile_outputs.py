"""A run directory is untrusted input, and outputs never overwrite the run: a table of hostile and clumsy
cases against `audit export`, `audit report`, `audit.load_model` and the decision store. Each asserts the
exit code, a word naming the culprit, that nothing outside the run directory changed, that the run's own
files are intact, and that no half-written file (``*.tmp``) is left."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from audit.cli import main as cli
from audit.errors import AuditError

SECRET = "API_KEY=hunter2-do-not-leak"


# -- tampering helpers ------------------------------------------------------------------------------
def edit_manifest(run: Path, fn) -> None:
    man = json.loads((run / "manifest.json").read_text())
    fn(man)
    (run / "manifest.json").write_text(json.dumps(man))


def set_spec(spec: str):
    return lambda run, tmp: edit_manifest(run, lambda m: m["dataset"].__setitem__("spec", spec.format(tmp=tmp)))


def secret_file(tmp: Path, name: str) -> Path:
    p = tmp / "outside" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(f"path,label\n{SECRET},0\n")
    return p


def spec_to_secret(name: str):
    def tamper(run, tmp):
        secret_file(tmp, name)
        set_spec(f"csv:{{tmp}}/outside/{name}")(run, tmp)
    return tamper


def other_npz(run: Path, tmp: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp / "outside" / "other.npz", images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8),
             labels=np.arange(40) % 10)
    set_spec(f"npz:{tmp}/outside/other.npz")(run, tmp)


def download_true(run: Path, tmp: Path) -> None:
    """An empty torchvision root and ``download: true``: with download on, torchvision would fetch into it."""
    (tmp / "outside" / "mnist-root").mkdir()

    def fn(m):
        m["config"]["download"] = True
        m["download"] = True
        m["dataset"]["spec"] = f"mnist:{tmp}/outside/mnist-root"
    edit_manifest(run, fn)


def decisions_row(new_label, decision="relabel"):
    def tamper(run, tmp):
        from audit.decisions import DecisionStore

        DecisionStore(run).record("digits-0000", "keep")  # a real log, then a row no store would write
        with sqlite3.connect(run / "decisions.sqlite") as con:
            con.execute("PRAGMA ignore_check_constraints=ON")
            con.execute("INSERT INTO decisions (example_id, decision, new_label, reviewer, decided_at) "
                        "VALUES ('digits-0001', ?, ?, 'mallory', '2026-01-01')", (decision, new_label))
    return tamper


def write(name: str, data: bytes):
    def tamper(run, tmp):
        p = run / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)
        p.write_bytes(data)
    return tamper


def symlink(name: str):
    def tamper(run, tmp):
        target = secret_file(tmp, "target.bin")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
    return tamper


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('HOSTILE_PWNED', '/nonexistent/pwned')}",))


def evil_checkpoint(run: Path, tmp: Path) -> None:
    os.environ["HOSTILE_PWNED"] = str(tmp / "outside" / "pwned")
    (run / "checkpoints" / "natural.pt").write_bytes(pickle.dumps(Evil()))


def no_source_fingerprint(run: Path, tmp: Path) -> None:
    edit_manifest(run, lambda m: m["dataset"].pop("source_fingerprint"))


def link_out(target: str):
    def tamper(run, tmp):
        (tmp / "outside" / "link.parquet").symlink_to(run / target)
    return tamper


def hardlink_out(run: Path, tmp: Path) -> None:
    os.link(run / "examples.parquet", tmp / "outside" / "hard.parquet")


def outdir(name: str):
    return lambda run, tmp: (tmp / "outside" / name).mkdir()


def load_model_cli(name: str = "natural"):
    """``audit.load_model`` as a command: its exit code and message, like the CLI's."""
    def call(run, tmp, capsys):
        from audit import load_model

        try:
            load_model(run, name)
        except AuditError as e:
            print(f"audit: error: {e}", file=__import__("sys").stderr)
            return e.exit_code
        return 0
    return call


def relabel(label, decision="relabel"):
    def call(run, tmp, capsys):
        from audit.rundir import RunDir

        try:
            RunDir(run).decisions().record("digits-0003", decision, new_label=label)
        except AuditError as e:
            print(f"audit: error: {e}", file=__import__("sys").stderr)
            return e.exit_code
        return 0
    return call


# -- tables and logs read back (issue #22 item 5) -----------------------------------------------------
def edit_table(name: str, fn):
    def tamper(run, tmp):
        import pandas as pd

        df = pd.read_parquet(run / name)
        df = fn(df)
        df.to_parquet(run / name)
    return tamper


def set_column(name: str, col: str, values):
    return edit_table(name, lambda df: df.assign(**{col: values(df) if callable(values) else values}))


def drop_column(name: str, col: str):
    return edit_table(name, lambda df: df.drop(columns=[col]))


def edit_dynamics(key: str, shape: tuple):
    def tamper(run, tmp):
        with np.load(run / "dynamics.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays[key] = np.zeros(shape, np.float16)
        np.savez(run / "dynamics.npz", **arrays)
    return tamper


def many_classes(run, tmp):
    edit_manifest(run, lambda m: m["dataset"].__setitem__("class_names", [f"c{i}" for i in range(100_000)]))


def decisions_trigger(run, tmp):
    from audit.decisions import DecisionStore

    DecisionStore(run).record("digits-0000", "keep", reviewer="x")
    with sqlite3.connect(run / "decisions.sqlite") as con:
        con.execute("CREATE TRIGGER eat AFTER INSERT ON decisions BEGIN DELETE FROM decisions; END")


def not_a_run_dir(run, tmp):
    d = tmp / "outside" / "mine"
    d.mkdir()
    (d / "manifest.json").write_text('{"my": "project"}')
    (d / "report.html").write_text("<p>my notes</p>")


def dataset_folder(run, tmp):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp / "outside" / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp / "outside" / "imgs" / c / f"{i}.png")


def report_to_device(run, tmp):
    os.symlink("/dev/null", tmp / "outside" / "null.html")


def verify_cache_symlink(run, tmp):
    os.symlink(tmp / "outside", run / ".cache" / "verify", target_is_directory=True)


def nothing(run, tmp):
    pass


EXPORT = ["export", "{run}", "--out", "{tmp}/outside/labels.csv"]
REPORT = ["report", "{run}", "--out", "{tmp}/outside/report.html"]

# id, tamper, command (argv template or callable), exit code, word naming the culprit
CASES = [
    ("export-over-examples", nothing, ["export", "{run}", "--out", "{run}/examples.parquet"], 2, "examples.parquet"),
    ("export-over-pairs", nothing, ["export", "{run}", "--out", "{run}/pairs.parquet"], 2, "pairs.parquet"),
    ("export-into-checkpoints", nothing, ["export", "{run}", "--out", "{run}/checkpoints/l.csv"], 2, "checkpoints"),
    ("export-into-cache", nothing, ["export", "{run}", "--out", "{run}/.cache/l.parquet"], 2, ".cache"),
    ("export-over-decisions", nothing, ["export", "{run}", "--out", "{run}/decisions.sqlite-wal.csv"], 2,
     "decisions.sqlite"),
    ("export-test-out-over-examples", nothing, EXPORT + ["--test-out", "{run}/examples.parquet"], 2, "examples.parquet"),
    ("export-through-symlink", link_out("examples.parquet"), ["export", "{run}", "--out", "{tmp}/outside/link.parquet"],
     2, "examples.parquet"),
    ("export-through-hardlink", hardlink_out, ["export", "{run}", "--out", "{tmp}/outside/hard.parquet"], 2,
     "examples.parquet"),
    ("export-out-is-directory", outdir("labels.csv"), EXPORT, 2, "directory"),
    ("report-over-examples", nothing, ["report", "{run}", "--out", "{run}/examples.parquet"], 2, "examples.parquet"),
    ("report-over-manifest", nothing, ["report", "{run}", "--out", "{run}/manifest.json"], 2, "manifest.json"),
    ("report-out-is-directory", outdir("report.html"), REPORT, 2, "directory"),
    ("spec-to-secret-env", spec_to_secret("secret.env"), REPORT, 2, "spec"),
    ("spec-to-secret-csv", spec_to_secret("secret.csv"), REPORT, 2, "cannot be loaded"),
    ("spec-folder-root", set_spec("folder:/"), REPORT, 2, "root"),
    ("spec-relative-path", set_spec("npz:data/x.npz"), REPORT, 2, "absolute"),
    ("spec-unknown-source", set_spec("http://example.com/x.npz"), REPORT, 2, "unknown source"),
    ("spec-download-true", download_true, REPORT, 2, "cannot be loaded"),
    ("spec-missing-file", set_spec("npz:{tmp}/outside/gone.npz"), REPORT, 2, "does not exist"),
    ("spec-other-dataset", other_npz, REPORT, 2, "fingerprint"),
    ("no-source-fingerprint", no_source_fingerprint, REPORT, 2, "source_fingerprint"),
    ("manifest-not-json", write("manifest.json", b"{not json"), EXPORT, 2, "manifest.json"),
    ("manifest-a-list", write("manifest.json", b"[1, 2]"), REPORT, 2, "manifest.json"),
    ("manifest-class-names-wrong-type", lambda r, t: edit_manifest(r, lambda m: m["dataset"].__setitem__("class_names", 5)),
     EXPORT, 2, "class_names"),
    ("manifest-model-path", lambda r, t: edit_manifest(r, lambda m: m["config"].__setitem__("models", ["../../x"])),
     load_model_cli("../../x"), 2, "models"),
    ("manifest-huge-width", lambda r, t: edit_manifest(r, lambda m: m["config"].__setitem__("width", 1e12)),
     load_model_cli(), 2, "width"),
    ("examples-not-parquet", write("examples.parquet", b"PAR1 garbage"), EXPORT, 2, "examples.parquet"),
    ("examples-symlink-out", symlink("examples.parquet"), EXPORT, 2, "symbolic link"),
    ("checkpoint-corrupt", write("checkpoints/natural.pt", b"\x00" * 64), load_model_cli(), 2,
     "corrupt or not written by benign-audit"),
    ("checkpoint-pickle-payload", evil_checkpoint, load_model_cli(), 2, "corrupt or not written by benign-audit"),
    ("checkpoint-missing-model", nothing, load_model_cli("trades"), 2, "trades"),
    ("decisions-not-sqlite", write("decisions.sqlite", b"not a database at all" * 10), EXPORT, 2, "decisions.sqlite"),
    ("decisions-symlink", symlink("decisions.sqlite"), EXPORT, 2, "symbolic link"),
    ("decisions-row-label-999", decisions_row(999), EXPORT, 2, "999"),
    ("decisions-row-unknown-kind", decisions_row(None, "delete"), EXPORT, 2, "delete"),
    ("store-relabel-999", nothing, relabel(999), 2, "not a class"),
    ("store-relabel-negative", nothing, relabel(-5), 2, "not a class"),
    ("store-relabel-bool", nothing, relabel(True), 2, "not a class"),
    ("store-unknown-kind", nothing, relabel(None, "delete"), 2, "must be one of"),
    ("verify-json-broken", write("verify.json", b"{oops"), REPORT, 2, "verify.json"),
    # tables and logs read back are input (issue #22 item 5)
    ("examples-flag-as-text", set_column("examples.parquet", "is_label_issue", lambda df: np.where(
        df.is_label_issue, "yes", "no")), ["export", "{run}", "--out", "{tmp}/outside/l.csv", "--apply", "suggested"],
     2, "is_label_issue"),
    ("examples-no-category", drop_column("examples.parquet", "category"), REPORT, 2, "category"),
    ("examples-no-correct-column", drop_column("examples.parquet", "correct_pgd"), REPORT, 2, "correct_pgd"),
    ("examples-score-as-text", set_column("examples.parquet", "issue_score", lambda df: df.issue_score.astype(str)),
     EXPORT, 2, "issue_score"),
    ("examples-zero-rows", edit_table("examples.parquet", lambda df: df.iloc[:0]), REPORT, 2, "no rows"),
    ("examples-unknown-category", set_column("examples.parquet", "category", "maybe"), REPORT, 2, "category"),
    ("pairs-unknown-train-id", set_column("pairs.parquet", "train_id", "nobody-0001"), REPORT, 2, "train_id"),
    ("pairs-similarity-as-text", set_column("pairs.parquet", "similarity", "high"), REPORT, 2, "similarity"),
    ("manifest-model-without-columns", lambda r, t: edit_manifest(r, lambda m: m["config"].__setitem__(
        "models", ["natural", "pgd", "trades"])), REPORT, 2, "pred_trades"),
    ("manifest-metric-as-text", lambda r, t: edit_manifest(r, lambda m: m["metrics"].__setitem__(
        "noise_auroc", "great")), REPORT, 2, "metrics.noise_auroc"),
    ("manifest-100k-classes", many_classes, REPORT, 2, "class_names"),
    ("verify-json-infinite", write("verify.json", b'{"eps": 1e400}'), REPORT, 2, "verify.json"),
    ("dynamics-wrong-shape", edit_dynamics("margin_natural", (3, 5)),
     lambda run, tmp, capsys: _read(lambda: __import__("audit.rundir").rundir.RunDir(run).dynamics()), 2,
     "margin_natural"),
    ("decisions-trigger", decisions_trigger, EXPORT, 2, "trigger"),
    # outputs (issue #22 item 7)
    ("run-out-not-a-run", not_a_run_dir, ["run", "--dataset", "digits", "--out", "{tmp}/outside/mine"], 2,
     "not a benign-audit run"),
    ("run-out-inside-dataset", dataset_folder, ["run", "--dataset", "folder:{tmp}/outside/imgs", "--out",
                                                "{tmp}/outside/imgs/run"], 2, "inside the dataset"),
    ("report-out-device", report_to_device, ["report", "{run}", "--out", "{tmp}/outside/null.html"], 2,
     "not a regular file"),
]


def _read(fn) -> int:
    """Call ``fn`` as a command would: an :class:`AuditInputError` becomes exit 2 and one line."""
    import sys

    from audit.errors import AuditInputError

    try:
        fn()
    except AuditInputError as e:
        print(f"audit: error: {e}", file=sys.stderr)
        return 2
    return 0


# -- the harness ------------------------------------------------------------------------------------
def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
        out[str(p.relative_to(root))] = (st.st_size, digest)
    return out


RUN_FILES = ("manifest.json", "examples.parquet", "pairs.parquet", "dynamics.npz", "checkpoints/natural.pt")


@pytest.fixture
def hostile(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run[0], run)
    (tmp_path / "outside").mkdir()
    return run, tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_case(hostile, capsys, case):
    _, tamper, command, code, word = case
    run, tmp = hostile
    tamper(run, tmp)
    outside, own = snapshot(tmp, skip=run), {f: snapshot(run).get(f) for f in RUN_FILES}
    capsys.readouterr()
    if callable(command):
        got = command(run, tmp, capsys)
    else:
        got = cli([a.format(run=run, tmp=tmp) for a in command])
    err = capsys.readouterr().err
    assert got == code, err
    assert word in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line
    assert "weights_only=False" not in err and "hunter2" not in err
    assert snapshot(tmp, skip=run) == outside  # nothing outside the run changed, no output written
    assert {f: snapshot(run).get(f) for f in RUN_FILES} == own  # the run's own files are intact
    assert not list(tmp.rglob("*.tmp")) and not list(tmp.rglob(".*.tmp"))
    assert not (tmp / "outside" / "pwned").exists()


def test_spec_to_a_secret_never_reaches_the_report(hostile, capsys):
    """Without images the report is written, and nothing of the file the manifest points at is in it."""
    run, tmp = hostile
    spec_to_secret("secret.csv")(run, tmp)
    assert cli(["report", str(run), "--no-images"]) == 0
    page = (run / "report.html").read_text()
    assert SECRET not in page and "hunter2" not in page
    assert "Images left out" in page


def test_dataset_verified_as_audited(hostile):
    """The verified dataset carries the stored noisy labels, so it hashes to the run's own fingerprint."""
    from audit.rundir import RunDir

    run, _ = hostile
    r = RunDir(run)
    ds = r.dataset()
    assert ds.fingerprint() == r.manifest["dataset"]["fingerprint"]
    ex = r.examples().set_index("example_id")
    assert (ds.labels == ex.loc[ds.example_ids, "given_label"].to_numpy()).all()
    assert int((ds.labels != ds.clean_labels).sum()) == int(ex["is_injected_noise"].sum())


def test_report_reads_no_re_injected_noise(hostile, monkeypatch):
    """`report` never calls the pipeline's noise injection: the given labels come from examples.parquet."""
    import audit.pipeline
    from audit.report import build_report

    run, _ = hostile
    monkeypatch.setattr(audit.pipeline, "prepare_dataset", lambda *a, **k: pytest.fail("noise re-injected"))
    monkeypatch.setattr("audit.data.inject_noise", lambda *a, **k: pytest.fail("noise re-injected"))
    build_report(run, top=2, pairs=1)
    assert (run / "report.html").exists()


def test_app_shows_tables_without_images_and_a_notice(hostile, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from audit.commands.app import app_path

    run, tmp = hostile
    set_spec("folder:/")(run, tmp)
    monkeypatch.setenv("AUDIT_RUN_DIR", str(run))
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    at.switch_page("views/review.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [w.value.replace("\\", "") for w in at.warning]  # the app escapes Markdown punctuation
    assert any("folder:/" in w and "images are not read" in w for w in shown), shown
    from app import data

    assert data.dataset_notice(run) is not None
    assert data.allowed_roots(run) == [run.resolve()]  # folder:/ did not widen what may be opened
    assert data.source_path(run, "digits-0000") is None


def test_older_run_without_noise_is_verified_by_its_fingerprint(hostile):
    """A run from before ``source_fingerprint`` with no injected noise: its ``fingerprint`` hashed the same
    data, so it still verifies; with noise it cannot (covered by the table)."""
    from audit.rundir import RunDir

    run, _ = hostile

    def older(m):
        m["config"]["noise"] = 0.0
        m["dataset"]["fingerprint"] = m["dataset"].pop("source_fingerprint")
    edit_manifest(run, older)
    assert RunDir(run).dataset_or_notice()[1] is None
    edit_manifest(run, lambda m: m["dataset"].__setitem__("fingerprint", "0" * 16))
    assert "fingerprint" in RunDir(run).dataset_or_notice()[1]


@pytest.mark.parametrize("name", ["report.html", "exports/labels.csv", "labels.csv"])
def test_outputs_the_run_does_not_own_are_allowed(hostile, name):
    from audit.rundir import RunDir

    run, _ = hostile
    assert RunDir(run).owns(run / name) is None
    for own in ("verify.json", ".lock", ".examples.parquet.x.tmp", "checkpoints/x.pt", ".cache/k.npz"):
        assert RunDir(run).owns(run / own) is not None


def test_fuzzed_manifests_open_or_exit_2(hostile):
    """Any JSON in place of a manifest field: the run opens (and its dataset verifies or gives a notice)
    or it is an AuditInputError naming manifest.json; never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from audit.errors import AuditInputError
    from audit.rundir import RunDir

    run, _ = hostile
    original = json.loads((run / "manifest.json").read_text())
    fields = [("status",), ("config", "models"), ("config", "arch"), ("config", "width"), ("config", "noise"),
              ("dataset", "spec"), ("dataset", "fingerprint"), ("dataset", "source_fingerprint"),
              ("dataset", "shape"), ("dataset", "class_names"), ("metrics",), ("config",), ("dataset",)]
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                          lambda v: st.lists(v, max_size=4) | st.dictionaries(st.text(max_size=8), v, max_size=4),
                          max_leaves=8)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.sampled_from(fields), values)
    def check(field, value):
        man = json.loads(json.dumps(original))
        node = man
        for k in field[:-1]:
            node = node[k]
        node[field[-1]] = value
        (run / "manifest.json").write_text(json.dumps(man))
        try:
            r = RunDir(run)
        except AuditInputError as e:
            assert "manifest.json" in str(e)
            return
        r.dataset_or_notice()

    check()


@pytest.mark.parametrize("command", [REPORT, EXPORT])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(hostile, capsys, monkeypatch, command):
    """Issue #22 item 6: a full disk ended export and report in raw tracebacks. The OS's ENOSPC (raised
    where the bytes are written) is one line naming the target, exit 1, and no temporary file is left."""
    import errno
    from pathlib import Path as P

    run, tmp = hostile
    real = P.write_bytes

    def full(self, data):
        real(self, data[:10])  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P, "write_bytes", full)
    got = cli([a.format(run=run, tmp=tmp) for a in command])
    err = capsys.readouterr().err
    assert got == 1 and "No space left on device" in err and "nothing was half-written" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp.rglob("*.tmp")) and not list((tmp / "outside").iterdir())
