"""``audit verify RUN``: did cleaning help? Retrain with the run's recipe on the given labels, the
cleaned labels and (when the tool injected the noise) the true labels, over several seeds, and compare
clean and adversarial test accuracy.

The paper's thesis (Sanyal et al. 2021): memorized label noise makes an interpolating model
adversarially vulnerable while its clean accuracy barely moves, so the natural model's adversarial
accuracy is what cleaning should raise. Each variant trains the natural model (and PGD-AT when the run
has it) exactly as the run did (its resolved config in ``manifest.json``: architecture, width, epochs,
batch size, learning rate, attack), on the training split only (the run's canaries are an audit device,
not part of the data), and is evaluated on the test split under the run's evaluation attack at the
run's eps and at the paper's small eps (eps / 4). Torch uses ``threads`` CPU threads (``--threads``;
default :func:`audit.config.default_threads`, the one ``audit run`` uses: ``$OMP_NUM_THREADS``, else 1).

Variants:

``given``    the training labels as the run saw them (``examples.parquet`` ``given_label``)
``cleaned``  what ``audit export --apply APPLY`` writes (:func:`audit.export.label_plan`), with export's
             default: ``--apply decisions`` (the default): only the review decisions (keep: given
             label; relabel: the reviewer's class; remove: row dropped), so before any decision the
             cleaned labels are the given ones, and the summary says so; ``--apply suggested``: the
             decisions, then ``suggested_label`` on the flagged rows nobody decided on
``true``     ``clean_label``, when the run injected the noise: the ceiling

Gain recovered, at each eps: (cleaned − given) / (true − given) of the natural model's adversarial
accuracy, paired by seed (every variant trains seed s from the same initialisation), with a 95%
Fieller interval for the ratio of the two mean paired differences (Student t over seeds). It is a
number only when the ceiling's gain (true − given) is clearly above zero: its t-interval excludes 0 and
its mean is at least ``MIN_GAIN``; otherwise it is "not measurable (the clean labels gain nothing
measurable at eps ...)", and with one seed there is no interval, so no number either. A ratio above
100% is printed with "beyond the oracle". ``verify.json``: ``gain_recovered.<metric>`` is that estimate or
None (before version 2 it was the ratio of means whenever true and given differed);
``gain_recovered_interval.<metric>`` holds the estimate, its interval, whether it is measurable and why
not, and both paired gains with their intervals.

A run that trained no models (``audit run --models none``: the user's own probabilities alone) has no
recipe to retrain with. Verify then resolves the audit's own for the data, as ``audit run --models natural``
would on this device (:func:`audit.config.resolve_defaults` with the dataset's shape and training-set size,
the attack radius its default: no robust model calibrates one), trains the natural model alone, and says
so: ``verify.json``'s ``recipe`` (``resolved_by`` "verify", and why) and a line of the summary. What it
measures is whether the cleaned labels train the audit's natural model better, not the user's model.

The run directory is untrusted input (someone may have sent it), and so is everything verify caches in
it:

* Each (labels, seed, model) result is cached in ``OUT/.cache/verify/<key>.json`` (the key hashes the
  training recipe, the evaluation attack, the dataset fingerprint and the labels), bound to this
  machine by an HMAC-SHA256 tag over the key and the result's bytes, keyed by a per-user secret kept
  outside any run directory (``$XDG_CACHE_HOME/benign-audit/verify.key``, else
  ``~/.cache/benign-audit/verify.key``; 32 random bytes made on first use, mode 0600). An entry whose
  tag does not verify (made elsewhere, or edited), that is not valid, or that holds a number not
  finite or outside [0, 1] for an accuracy, is refused and retrained; the summary counts the results
  reused and refused. Without a usable home for the secret a per-process one is used (nothing
  reused across runs). A secret file that is not a 32-byte regular file of this user with mode 0600 is
  refused (exit 2).
* An interrupted training resumes from its last epoch through ``<key>.<tag>.resume.pt``, a name only
  this machine's secret gives, so a shipped resume file is never loaded.
* ``OUT/.cache``, ``OUT/.cache/verify`` and every file verify reads or writes there (the entries, the
  resume files, ``verify.json``, ``verify.png``, the lock files) must be real directories and regular
  files, never symbolic links: otherwise exit 2 naming the path, before anything is written. Nothing is
  written outside ``OUT`` but the secret.

``OUT`` is the run directory, or ``--out DIR`` (for a run directory you cannot or would not write).
A run directory that is not writable is exit 2 saying so and offering ``--out``. ``verify.json``,
``verify.png`` and every cache entry are written to a temporary name and renamed; a full disk is exit
1 naming the file, with nothing half-written and every finished training kept. One process writes
``OUT`` at a time (:class:`audit.orchestrator.RunDirLock`).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import json
import math
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import stats

from audit.config import RunConfig, config_from_dict, default_threads, resolve_defaults, validate_config
from audit.errors import AuditError, AuditInputError
from audit.io import atomic_write_bytes
from audit.recipes import eval_config, train_recipe
from audit.stages import eval_attack

if TYPE_CHECKING:
    from audit.rundir import RunDir

VERIFY_VERSION = 2  # 2: cache entries carry an HMAC tag (entries of version 1 are not looked up)
APPLY = ("decisions", "suggested")
DEFAULT_APPLY = "decisions"  # the same as `audit export`
METRICS = ("clean_accuracy", "adv_accuracy", "adv_accuracy_small")
NEEDED_COLUMNS = ["example_id", "split", "given_label", "suggested_label", "is_label_issue"]
MIN_GAIN = 0.01  # the ceiling's gain (true − given accuracy) below which gain recovered is not measurable
LEVEL = 0.95
KEY_BYTES = 32
MAX_ENTRY_BYTES = 2**20
ENTRY_FORMAT = "benign-audit verify result"
CACHE_DIRS = (".cache", ".cache/verify")
OUT_FILES = ("verify.json", "verify.png", ".audit.lock", ".audit.lock.owner")
REFUSED_FOREIGN = "not produced on this machine (no valid tag)"
REFUSED_RANGE = "a number not finite or outside [0, 1]"
REFUSED_BAD = "not a result verify writes"


@dataclass
class RunData:
    """What verification reads from a run directory and its dataset."""

    run_dir: Path
    cfg: RunConfig
    manifest: dict
    train: pd.DataFrame  # training rows of examples.parquet, in dataset order
    train_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: np.ndarray


def _bad(run_dir: Path, why: str) -> AuditInputError:
    return AuditInputError(f"{run_dir}: {why}")


def read_run(run: RunDir) -> tuple[dict, RunConfig, pd.DataFrame]:
    """manifest.json, its resolved config, examples.parquet of an opened :class:`audit.rundir.RunDir`
    (the checked run-directory reader); one-line errors (exit 2) on a bad directory."""
    examples = run.examples()
    missing = [c for c in NEEDED_COLUMNS if c not in examples.columns]
    if missing:
        raise AuditInputError(f"{run.file('examples.parquet')}: missing column(s) {', '.join(missing)}")
    return run.manifest, config_from_dict(run.manifest["config"]), examples


def load_run_data(run_dir: str | Path) -> RunData:
    """The run's config, its training rows in dataset order and the images, from the dataset the run
    audited (:meth:`audit.rundir.RunDir.dataset`: its fingerprint verified; nothing else is read)."""
    from audit.data import TEST, TRAIN
    from audit.rundir import RunDir

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    manifest, cfg, examples = read_run(run)
    ds = run.dataset()
    tr, te = ds.split_indices(TRAIN), ds.split_indices(TEST)
    train = examples.set_index("example_id").loc[ds.example_ids[tr].astype(str)].reset_index()
    return RunData(run_dir, cfg, manifest, train, torch.from_numpy(np.asarray(ds.images[tr])),
                   torch.from_numpy(np.asarray(ds.images[te])), ds.labels[te].astype(np.int64))


RESOLVED_BY_VERIFY = ("the run trained no models (--models none), so verify resolved the audit's own recipe for "
                      "this data (as `audit run --models natural` would on this device) and trains the natural "
                      "model alone")


def resolve_recipe(data: RunData, on_gpu: bool) -> tuple[RunConfig, dict]:
    """The config verify trains with and the ``recipe`` ``verify.json`` records: the run's own; for a run
    that trained none (``--models none``), the audit's natural recipe resolved for the data's shape and
    training-set size (:func:`audit.config.resolve_defaults`, as :func:`audit.pipeline.run_audit` does;
    the attack radius its default, as for any run without a robust model)."""
    cfg, by = data.cfg, "run"
    if not cfg.models:
        shape = tuple(int(x) for x in data.train_images.shape[1:])
        cfg = validate_config(resolve_defaults(replace(cfg, models=("natural",), pred_probs=None, features=None),
                                               shape, len(data.train), on_gpu))
        by = "verify"
    recipe = {"resolved_by": by, "note": RESOLVED_BY_VERIFY if by == "verify" else None, "arch": cfg.arch,
              "width": cfg.width, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
    return cfg, recipe


def variant_labels(data: RunData, apply: str = DEFAULT_APPLY) -> dict[str, dict]:
    """Per variant: ``labels`` (training labels, -1 = removed) and counts of relabelled and removed rows;
    for ``cleaned`` also the review decisions, the flagged rows and how many of them nobody decided on,
    and the rows whose label is a suggestion. The cleaned labels are what ``audit export --apply APPLY``
    writes (:func:`audit.export.label_plan`)."""
    from audit.export import label_plan

    if apply not in APPLY:
        raise AuditInputError(f"--apply {apply!r}: must be one of {', '.join(APPLY)}")
    t = data.train
    given = t["given_label"].to_numpy(np.int64)
    plan = label_plan(data.run_dir, apply).set_index("example_id").loc[t["example_id"]]
    cleaned = np.where(plan["removed"].to_numpy(bool), -1, plan["final_label"].to_numpy(np.int64))
    source = plan["label_source"].to_numpy()
    flagged = plan["is_label_issue"].to_numpy(bool)
    out = {"given": given, "cleaned": cleaned}
    if "clean_label" in t.columns and data.cfg.noise > 0:
        out["true"] = t["clean_label"].to_numpy(np.int64)
    res = {}
    for k, v in out.items():
        res[k] = {"labels": v, "relabelled": int(((v != given) & (v >= 0)).sum()), "removed": int((v < 0).sum()),
                  "decisions": int((source == "reviewer").sum()) if k == "cleaned" else 0}
    res["cleaned"].update(flagged=int(flagged.sum()), flagged_undecided=int((flagged & (source != "reviewer")).sum()),
                          suggested=int(((source == "suggested") & (cleaned != given)).sum()))
    return res


def train_spec(cfg: RunConfig, method: str, seed: int, epochs: int | None = None, epochs_scale: float | None = None):
    """The run's recipe for ``method`` at ``seed``, epochs overridden by ``epochs`` or scaled by
    ``epochs_scale`` (at least 1)."""
    spec = train_recipe(cfg, method)
    e = epochs if epochs is not None else spec.epochs
    if epochs_scale is not None:
        e = max(1, round(e * epochs_scale))
    return replace(spec, epochs=int(e), seed=int(seed), tracin_checkpoints=1)  # no TracIn here


def _eval_attack(cfg: RunConfig):
    """The run's evaluation attack (:func:`audit.stages.eval_attack` of its evaluation config)."""
    return eval_attack(eval_config(cfg))


def attacks(cfg: RunConfig) -> dict[str, object]:
    """The run's evaluation attack at its eps and at the paper's small eps (eps / 4)."""
    return {"adv_accuracy": _eval_attack(cfg), "adv_accuracy_small": _eval_attack(replace(cfg, eps=cfg.eps / 4))}


def result_key(data: RunData, spec, labels: np.ndarray) -> str:
    ev = {k: asdict(a) for k, a in attacks(data.cfg).items()}
    fp = data.manifest.get("dataset", {}).get("source_fingerprint") or data.manifest.get("dataset", {}).get("fingerprint")
    parts = [VERIFY_VERSION, asdict(spec), ev, fp]
    if data.cfg.precision != "auto":  # the run's --precision, which verify trains in too; the default adds nothing
        parts.append(data.cfg.precision)
    h = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()[:20]


def train_and_evaluate(data: RunData, labels: np.ndarray, spec, device: torch.device, checkpoint: Path,
                       progress: bool = False) -> dict:
    """Train on the rows with a label (≥ 0) by ``spec``; test accuracy, clean and under both attacks."""
    from audit.device import precision
    from audit.train.engine import train_model
    from audit.train.evaluate import adversarial_correct, infer
    from audit.train.models import build_model

    keep = labels >= 0
    cfg = data.cfg
    torch.manual_seed(spec.seed)
    model = build_model(cfg.arch, tuple(data.train_images.shape[1:]), len(data.manifest["dataset"]["class_names"]),
                        cfg.width)
    with precision(cfg.precision):  # the run's own arithmetic (--precision), its evaluation attack float32
        res = train_model(model, data.train_images[torch.from_numpy(keep)], torch.from_numpy(labels[keep]), spec,
                          device=device, checkpoint=checkpoint, desc=f"verify {spec.method} seed {spec.seed}",
                          progress=progress, compile=False)
        logits = infer(res.model, data.test_images, device)[0]
    y = torch.from_numpy(data.test_labels)
    out = {"clean_accuracy": float((logits.argmax(1) == data.test_labels).mean())}
    for name, attack in attacks(cfg).items():
        torch.manual_seed(spec.seed + 1)
        out[name] = float(adversarial_correct(res.model, data.test_images, y, attack, device).mean())
    out["train_seconds"] = round(res.seconds, 2)
    return out


def mean_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean with a Student-t interval over seeds (no interval from a single seed)."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "low": None, "high": None, "values": v.tolist()}
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": v.tolist()}


# -- the per-user secret and the cache entries it binds ---------------------------------------------
def key_path() -> Path:
    """Where the per-user secret lives: ``$XDG_CACHE_HOME/benign-audit/verify.key`` (an absolute
    ``XDG_CACHE_HOME``), else ``~/.cache/benign-audit/verify.key``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "benign-audit" / "verify.key"


def _read_secret(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AuditInputError(f"{path}: a symbolic link, not the secret benign-audit made; delete it and "
                                  "rerun (a new one is made)") from None
        raise
    try:
        st = os.fstat(fd)
        data = os.read(fd, KEY_BYTES + 1) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    if not stat.S_ISREG(st.st_mode) or len(data) != KEY_BYTES or not mine or st.st_mode & 0o077:
        raise AuditInputError(f"{path}: not the secret benign-audit made (a {KEY_BYTES}-byte file of yours with "
                              "mode 0600); delete it and rerun (a new one is made)")
    return data


def machine_secret(log: Callable[[str], None] = lambda m: None) -> bytes:
    """The per-user secret (:func:`key_path`), made on first use (32 random bytes, mode 0600, created
    under a temporary name and linked into place, so two processes agree on one). Without a writable
    home for it, a per-process secret (nothing cached by earlier runs is believed)."""
    path = key_path()
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log(f"cannot read {path} ({e.strerror}): results cached by earlier runs are not reused")
        return secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".verify.key.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process made it first: use theirs
                pass
        finally:
            os.unlink(tmp)
        return _read_secret(path)
    except OSError as e:
        log(f"cannot make {path} ({e.strerror}): results cached by earlier runs are not reused")
        return secrets.token_bytes(KEY_BYTES)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_tag(secret: bytes, key: str, result: dict) -> str:
    """HMAC-SHA256 over the entry's key and its result's canonical JSON bytes."""
    msg = f"{ENTRY_FORMAT} v{VERIFY_VERSION}\n{key}\n".encode() + _canonical(result)
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def entry_bytes(secret: bytes, key: str, result: dict) -> bytes:
    """A cache entry as verify writes it: the result, its key and its tag."""
    return (json.dumps({"format": ENTRY_FORMAT, "version": VERIFY_VERSION, "key": key, "result": result,
                        "tag": entry_tag(secret, key, result)}, indent=1, allow_nan=False) + "\n").encode()


def check_result(result) -> str | None:
    """Why ``result`` is not one verify computes (None if it is): each accuracy a finite number in
    [0, 1], ``train_seconds`` finite and ≥ 0."""
    if not isinstance(result, dict):
        return REFUSED_BAD
    for k in METRICS + ("train_seconds",):
        v = result.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return REFUSED_BAD
        if not math.isfinite(v) or v < 0 or (k in METRICS and v > 1):
            return REFUSED_RANGE
    return None


def parse_entry(raw: bytes, secret: bytes, key: str) -> tuple[dict | None, str | None]:
    """(result, None) for an entry this machine wrote for ``key``, else (None, why it is refused)."""
    try:
        obj = json.loads(raw, parse_constant=lambda c: float(c))
    except (ValueError, UnicodeDecodeError):
        return None, REFUSED_BAD
    if not isinstance(obj, dict) or not isinstance(obj.get("tag"), str) or "result" not in obj:
        return None, REFUSED_FOREIGN
    why = check_result(obj["result"])
    if why is not None:
        return None, why
    try:
        want = entry_tag(secret, key, obj["result"])
    except (ValueError, TypeError):
        return None, REFUSED_BAD
    if obj.get("key") != key or not hmac.compare_digest(want, obj["tag"]):
        return None, REFUSED_FOREIGN
    return {k: float(obj["result"][k]) for k in METRICS + ("train_seconds",)}, None


def resume_name(secret: bytes, key: str) -> str:
    """The resume checkpoint's name: only this machine's secret gives it, so a shipped one is never loaded."""
    return f"{key}.{hmac.new(secret, f'resume {key}'.encode(), hashlib.sha256).hexdigest()[:16]}.resume.pt"


# -- what verify may touch inside OUT ---------------------------------------------------------------
def _symlink_error(path: Path, out: Path) -> AuditInputError:
    return AuditInputError(f"{path}: a symbolic link; audit verify reads and writes only real files inside "
                           f"{out}, never through a link (remove it and rerun)")


def check_inside(out: Path, dirs: tuple[str, ...] = CACHE_DIRS, files: tuple[str, ...] = OUT_FILES) -> None:
    """Each of ``dirs`` (relative to ``out``) is absent or a real directory, each of ``files`` absent
    or a regular file; neither is a symbolic link. Else :class:`AuditInputError` naming the path."""
    for rel, want_dir in [(d, True) for d in dirs] + [(f, False) for f in files]:
        p = out / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise AuditInputError(f"{p.parent}: not a directory; audit verify keeps its cache there") from None
        if stat.S_ISLNK(st.st_mode):
            raise _symlink_error(p, out)
        if want_dir and not stat.S_ISDIR(st.st_mode):
            raise AuditInputError(f"{p}: not a directory; audit verify keeps its cache there (remove it and rerun)")
        if not want_dir and not stat.S_ISREG(st.st_mode):
            raise AuditInputError(f"{p}: not a regular file; audit verify writes a file there (remove it and rerun)")


def _ensure_dirs(out: Path) -> Path:
    """``out/.cache/verify``, made one level at a time and checked to be real directories."""
    for rel in CACHE_DIRS:
        try:
            os.mkdir(out / rel)
        except FileExistsError:
            pass
        check_inside(out, dirs=(rel,), files=())
    return out / CACHE_DIRS[-1]


def read_entry(path: Path, out: Path) -> bytes | None:
    """A cache entry's bytes (None when absent), opened without following a link; a link or anything
    but a regular file is :class:`AuditInputError`; an entry larger than ``MAX_ENTRY_BYTES`` is b""."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _symlink_error(path, out) from None
        raise AuditInputError(f"{path}: cannot read ({e.strerror}); remove it and rerun") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuditInputError(f"{path}: not a regular file; audit verify writes a file there (remove it and rerun)")
        if st.st_size > MAX_ENTRY_BYTES:
            return b""
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_ENTRY_BYTES + 1)
    finally:
        os.close(fd)


def check_writable(out: Path, run_dir: Path, option: str | None) -> None:
    """``out`` exists (``--out`` is made) and takes a new file; else :class:`AuditInputError` saying where
    the results would go and, for the run directory, offering ``--out``."""
    if option is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuditInputError(f"--out {out}: cannot make the directory ({e.strerror})") from None
        if not out.is_dir():
            raise AuditInputError(f"--out {out}: exists and is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".verify-probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = e.strerror or type(e).__name__
        if option is None:
            raise AuditInputError(f"{run_dir}: the run directory is not writable ({why}); audit verify writes "
                                  "verify.json, verify.png and its cache (.cache/verify) there; pass --out DIR "
                                  "to write them elsewhere") from None
        raise AuditInputError(f"--out {out}: not writable ({why})") from None


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _write_failed(path: Path, e: BaseException) -> AuditError:
    why = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:120] or type(e).__name__
    if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return AuditInputError(f"{path}: cannot write ({why}); pass --out DIR to write elsewhere")
    return AuditError(f"{path}: cannot write ({why}); nothing was half-written and finished trainings are kept: "
                      "free some space and rerun")


def write_file(path: Path, data: bytes) -> None:
    """``data`` to ``path`` under a temporary name, then renamed; a failed write (a full disk) is one line
    naming the file (exit 1), with no temporary left behind."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise _write_failed(path, e) from None


def _is_write_error(e: BaseException) -> bool:
    """A failed ``torch.save`` of a resume checkpoint (an OSError, or torch's writer's RuntimeError)."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("PytorchStreamWriter", "file write failed", "No space left")))


# -- verification -----------------------------------------------------------------------------------
def verify_run(run_dir: str | Path, *, seeds: int = 3, apply: str = DEFAULT_APPLY, epochs: int | None = None,
               epochs_scale: float | None = None, device: str = "auto", progress: bool = False,
               threads: int | None = None, out: str | Path | None = None,
               log: Callable[[str], None] = lambda m: None) -> dict:
    """Train every (variant, seed, model) not cached yet; write and return ``OUT/verify.json``
    (``OUT`` = ``out``, default the run directory). ``log`` receives one line per training (``trained``,
    ``cached`` or ``refused``). ``threads``: torch CPU threads (default
    :func:`audit.config.default_threads`). Holds ``OUT``'s lock (:class:`audit.orchestrator.RunDirLock`):
    an audit writing it, or another verify, makes this exit 2."""
    from audit.orchestrator import RunDirLock
    from audit.rundir import RunDir

    if seeds < 1:
        raise AuditInputError(f"--seeds {seeds}: must be ≥ 1")
    if epochs is not None and epochs < 1:
        raise AuditInputError(f"--epochs {epochs}: must be ≥ 1")
    if epochs_scale is not None and not epochs_scale > 0:
        raise AuditInputError(f"--epochs-scale {epochs_scale}: must be > 0")
    if threads is not None and threads < 1:
        raise AuditInputError(f"--threads {threads}: must be ≥ 1")
    if apply not in APPLY:
        raise AuditInputError(f"--apply {apply!r}: must be one of {', '.join(APPLY)}")
    run_dir = Path(run_dir)
    run = RunDir(run_dir)  # a clear error for what is not a run directory, before any lock file is made
    out_dir, option = run_dir, None
    if out is not None and not _same_dir(Path(out), run_dir):
        out_dir, option = Path(out), "--out"
        owned = run.owns(out_dir)
        if owned is not None:
            raise AuditInputError(f"--out {out_dir}: inside the run's own {owned}; choose another directory")
        if out_dir.exists() and not out_dir.is_dir():
            raise AuditInputError(f"--out {out_dir}: exists and is not a directory")
    if out_dir.is_dir():
        check_inside(out_dir)
    check_writable(out_dir, run_dir, option)
    torch.set_num_threads(threads or default_threads())
    hint = "" if option is None else "choose another --out"
    try:
        with RunDirLock(out_dir, "verify", hint, name=str(out_dir) if option is None else f"--out {out_dir}"):
            return _verify_locked(run_dir, out_dir, seeds, apply, epochs, epochs_scale, device, progress, log)
    except OSError as e:  # the lock's files, or anything written without a name of its own
        if e.errno in DISK_FULL or e.errno == errno.EROFS:
            raise _write_failed(Path(e.filename) if e.filename else out_dir, e) from None
        raise


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.abspath(a) == os.path.abspath(b) or (a.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _verify_locked(run_dir: Path, out_dir: Path, seeds, apply, epochs, epochs_scale, device, progress, log) -> dict:
    from audit.device import resolve_device

    t0 = time.perf_counter()
    data = load_run_data(run_dir)
    variants = variant_labels(data, apply)
    dev = resolve_device(device)
    data.cfg, recipe = resolve_recipe(data, dev.type == "cuda")
    if recipe["note"]:
        log(recipe["note"])
    models = ["natural"] + (["pgd"] if "pgd" in data.cfg.models else [])
    secret = machine_secret(log)
    # every file this call may read or write, checked before any training
    plan = []
    for name, v in variants.items():
        for m in models:
            for s in range(seeds):
                spec = train_spec(data.cfg, m, data.cfg.seed + s, epochs, epochs_scale)
                plan.append((name, m, s, spec, result_key(data, spec, v["labels"])))
    check_inside(out_dir, files=tuple(f"{CACHE_DIRS[-1]}/{n}" for _, _, _, _, k in plan
                                      for n in (f"{k}.json", resume_name(secret, k))))
    cache = _ensure_dirs(out_dir)
    counts = {"trained": 0, "reused": 0, "refused": 0}
    refused_why: dict[str, int] = {}
    done: dict[str, dict] = {}  # results of this call, by key (the cleaned labels may equal the given ones)
    runs: dict[tuple[str, str], list[dict]] = {}
    epochs_used = {}
    for name, m, s, spec, key in plan:
        epochs_used[m] = spec.epochs
        path = cache / f"{key}.json"
        where = f"{name} {m} seed {spec.seed}"
        r = done.get(key)
        if r is not None:
            log(f"{where}: the same labels as an earlier variant, result shared")
        else:
            raw = read_entry(path, out_dir)
            if raw is not None:
                r, why = parse_entry(raw, secret, key)
                if r is None:
                    counts["refused"] += 1
                    refused_why[why] = refused_why.get(why, 0) + 1
                    log(f"{where}: cached result refused ({why}); retraining")
                else:
                    counts["reused"] += 1
                    log(f"{where}: cached")
            if r is None:
                ckpt = cache / resume_name(secret, key)
                try:
                    r = train_and_evaluate(data, variants[name]["labels"], spec, dev, ckpt, progress)
                except Exception as e:  # noqa: BLE001 - only a failed write is translated
                    if _is_write_error(e):
                        raise _write_failed(ckpt, e) from None
                    raise
                write_file(path, entry_bytes(secret, key, r))
                counts["trained"] += 1
                log(f"{where}: trained in {r['train_seconds']:.1f} s")
            done[key] = r
        runs.setdefault((name, m), []).append(r)
    out_variants = {}
    for name, v in variants.items():
        results = {m: {k: mean_interval([r[k] for r in runs[(name, m)]]) for k in METRICS} for m in models}
        out_variants[name] = {"n_train": int((v["labels"] >= 0).sum()),
                              **{k: x for k, x in v.items() if k != "labels"}, "results": results}
    eps = {"adv_accuracy": data.cfg.eps, "adv_accuracy_small": data.cfg.eps / 4}
    interval = gain_recovered_interval(out_variants, eps)
    report = {
        "run": str(data.run_dir), "out": str(out_dir), "version": VERIFY_VERSION, "dataset": data.cfg.dataset,
        "apply": apply, "seeds": [data.cfg.seed + s for s in range(seeds)], "models": models, "epochs": epochs_used,
        "eps": data.cfg.eps, "small_eps": data.cfg.eps / 4, "norm": data.cfg.norm,
        "attack": {"steps": data.cfg.eval_steps, "restarts": data.cfg.eval_restarts}, "recipe": recipe,
        "variants": out_variants,
        "gain_recovered": {k: (g["estimate"] if g and g["measurable"] else None) for k, g in interval.items()},
        "gain_recovered_interval": interval,
        **counts, "refused_why": refused_why, "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_file(out_dir / "verify.json", (json.dumps(report, indent=2, default=_plain) + "\n").encode())
    write_file(out_dir / "verify.png", plot_png(report))
    return report


# -- gain recovered ---------------------------------------------------------------------------------
def fieller_interval(num: np.ndarray, den: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """Fieller's interval for mean(num) / mean(den) of paired samples (Student t, n − 1 degrees of
    freedom); None when it is unbounded (the denominator's t-interval includes 0) or n < 2."""
    n = len(num)
    if n < 2:
        return None
    a, b = float(np.mean(num)), float(np.mean(den))
    cov = np.cov(np.vstack([num, den]), ddof=1) / n
    v11, v22, v12 = float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1])
    t2 = float(stats.t.ppf((1 + level) / 2, n - 1)) ** 2
    lead = b * b - t2 * v22
    if lead <= 0:
        return None
    mid = a * b - t2 * v12
    disc = max(0.0, mid * mid - lead * (a * a - t2 * v11))
    root = math.sqrt(disc)
    return (mid - root) / lead, (mid + root) / lead


def _values(variant: dict, k: str) -> np.ndarray:
    s = variant["results"]["natural"][k]
    return np.asarray(s.get("values") or [s["mean"]], float)


def gain_recovered_interval(variants: dict, eps: dict[str, float], level: float = LEVEL) -> dict:
    """Per metric (``adv_accuracy``, ``adv_accuracy_small``): (cleaned − given) / (true − given) of the
    natural model's adversarial accuracy, paired by seed, as ``estimate`` (ratio of the mean paired
    differences) with Fieller's ``low``/``high``; ``measurable`` only when the ceiling's gain
    ``gain_true`` (true − given, mean ± t-interval) is clearly above zero (interval above 0, mean ≥
    ``MIN_GAIN``), else ``reason`` says why; ``beyond_oracle`` when the estimate exceeds 1. None per
    metric without a true variant."""
    out: dict[str, dict | None] = {}
    for k in ("adv_accuracy", "adv_accuracy_small"):
        if "true" not in variants:
            out[k] = None
            continue
        g, c, t = (_values(variants[v], k) for v in ("given", "cleaned", "true"))
        n = min(len(g), len(c), len(t))
        dt, dc = t[:n] - g[:n], c[:n] - g[:n]
        den, num = mean_interval(dt, level), mean_interval(dc, level)
        e = eps[k]
        reason = None
        if den["mean"] < MIN_GAIN or (den["low"] is not None and den["low"] <= 0):
            half = "" if den["low"] is None else f" ± {den['high'] - den['mean']:.3f}"
            reason = (f"the clean labels gain nothing measurable at eps {e:g}: true − given "
                      f"{den['mean']:+.3f}{half}")
        elif n < 2:
            reason = f"one seed gives no interval at eps {e:g}; use --seeds 3"
        ci = fieller_interval(dc, dt, level) if reason is None else None
        if reason is None and ci is None:
            reason = f"the clean labels gain nothing measurable at eps {e:g}"
        est = num["mean"] / den["mean"] if abs(den["mean"]) > 1e-12 else None
        out[k] = {"estimate": est, "low": ci[0] if ci else None, "high": ci[1] if ci else None,
                  "measurable": reason is None, "reason": reason, "beyond_oracle": est is not None and est > 1,
                  "level": level, "eps": e, "gain_true": den, "gain_cleaned": num}
    return out


def gain_recovered(variants: dict, eps: dict[str, float] | None = None) -> dict:
    """``verify.json``'s ``gain_recovered``: per metric the estimate of :func:`gain_recovered_interval`
    when it is measurable, else None."""
    eps = eps or {"adv_accuracy": 0.0, "adv_accuracy_small": 0.0}
    return {k: (g["estimate"] if g and g["measurable"] else None)
            for k, g in gain_recovered_interval(variants, eps).items()}


def _cell(s: dict) -> str:
    mean = float(s["mean"])
    if s.get("low") is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {float(s['high']) - mean:.3f}"


def summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """``verify.json`` as a table: the header and one row per (variant, model) with each metric as
    "mean ± 95% half-width". The one reading of that file for the CLI, the report and the app; a file
    verify did not write raises KeyError, TypeError or ValueError."""
    eps, small = float(report["eps"]), float(report["small_eps"])
    head = ["variant", "train rows", "model", "clean acc", f"adv acc @{eps:g}", f"adv acc @{small:g}"]
    rows = [[str(name), str(int(v["n_train"])), str(m)] + [_cell(r[k]) for k in METRICS]
            for name, v in report["variants"].items() for m, r in v["results"].items()]
    return head, rows


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _cleaned_line(report: dict) -> str:
    """What the cleaned labels were, in words (the older file's one line when it lacks the counts)."""
    c = report["variants"].get("cleaned", {})
    apply, n_seeds = report["apply"], len(report["seeds"])
    tail = f"; {n_seeds} seeds, 95% t-intervals"
    if "flagged" not in c:  # a verify.json of version 1
        return (f"cleaned ({apply}): {c.get('relabelled', 0)} relabelled, {c.get('removed', 0)} removed, "
                f"{c.get('decisions', 0)} review decisions" + tail)
    d, flagged, left = int(c["decisions"]), int(c["flagged"]), int(c["flagged_undecided"])
    moved = f"{int(c['relabelled'])} relabelled, {int(c['removed'])} removed"
    if apply == "decisions" and d == 0:
        return (f"no review decisions yet: cleaned = the given labels (what `audit export` writes by default, "
                f"--apply decisions), so cleaned and given train the same models; the {flagged} flagged rows "
                "keep their given label (review them, or pass --apply suggested to retrain on the suggested labels)"
                + tail)
    if apply == "decisions":
        return (f"cleaned (--apply decisions, as `audit export` writes by default): {d} review decisions ({moved}); "
                f"{left} flagged rows nobody decided on keep their given label (--apply suggested applies the "
                "suggestions)" + tail)
    if d == 0:
        return (f"no review decisions yet: cleaned = the suggested labels of the {flagged} flagged rows "
                f"(--apply suggested; {moved})" + tail)
    return (f"cleaned (--apply suggested): {d} review decisions, then the suggested label on the {left} flagged "
            f"rows nobody decided on ({moved} in all)" + tail)


def _gain_part(g: dict, eps: float) -> str:
    if not g.get("measurable"):
        return f"not measurable at eps {eps:g} ({g.get('reason') or 'no interval'})"
    est, lo, hi = float(g["estimate"]), g.get("low"), g.get("high")
    text = f"{_pct(est)} at eps {eps:g}"
    if lo is not None and hi is not None:
        text += f" (95% interval {_pct(float(lo))} to {_pct(float(hi))})"
    if est > 1:
        text += " — beyond the oracle: the cleaned labels beat the true labels"
    elif hi is not None and float(hi) > 1:
        text += ", the interval's top beyond the oracle"
    return text


def summary_lines(report: dict) -> list[str]:
    """What was cleaned and how much of the ceiling's gain cleaning recovered, in words; first, where verify
    resolved the recipe itself (a run that trained none), that it did."""
    recipe = report.get("recipe") if isinstance(report.get("recipe"), dict) else {}
    lines = []
    if recipe.get("resolved_by") == "verify":
        epochs = (report.get("epochs") or {}).get("natural", recipe.get("epochs"))
        lines.append(f"recipe: {RESOLVED_BY_VERIFY} ({recipe.get('arch')}, {epochs} epoch{'' if epochs == 1 else 's'})")
    lines.append(_cleaned_line(report))
    eps = {"adv_accuracy": float(report["eps"]), "adv_accuracy_small": float(report["small_eps"])}
    head = "gain recovered (natural model's adversarial accuracy, (cleaned − given) / (true − given)"
    detail = report.get("gain_recovered_interval")
    c = report["variants"].get("cleaned", {})
    if isinstance(detail, dict) and "true" in report["variants"] and "flagged" in c \
            and c["relabelled"] == 0 and c["removed"] == 0:
        lines.append("gain recovered: nothing to measure yet (the cleaned labels are the given labels)")
        return lines
    if isinstance(detail, dict):
        parts = [_gain_part(detail[k], e) for k, e in eps.items() if isinstance(detail.get(k), dict)]
        if parts:
            lines.append(head + ", paired over seeds, 95% Fieller interval): " + "; ".join(parts))
        return lines
    g = report["gain_recovered"]  # a verify.json of version 1: a ratio of means with no interval
    parts = []
    for k, e in eps.items():
        x = g.get(k)
        if x is not None:
            parts.append(f"{_pct(float(x))} at eps {e:g}" + (" (beyond the oracle)" if float(x) > 1 else ""))
    if parts:
        lines.append(head + "): " + ", ".join(parts))
    return lines


def format_table(report: dict) -> str:
    """The variants × models table (mean ± 95% half-width over seeds) and the gain recovered."""
    head, body = summary_rows(report)
    rows = [head] + body
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + summary_lines(report))


def plot_png(report: dict) -> bytes:
    """Bars per variant (mean, 95% interval) for each model and metric, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models, names = report["models"], list(report["variants"])
    labels = ["clean", f"adv @{report['eps']:g}", f"adv @{report['small_eps']:g}"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    width = 0.8 / len(names)
    for ax, m in zip(axes[0], models):
        for i, name in enumerate(names):
            r = report["variants"][name]["results"][m]
            mean = np.array([r[k]["mean"] for k in METRICS])
            err = np.array([0.0 if r[k]["low"] is None else r[k]["high"] - r[k]["mean"] for k in METRICS])
            ax.bar(np.arange(3) + (i - (len(names) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=name)
        ax.set_xticks(np.arange(3), labels)
        ax.set_ylim(0, 1)
        ax.set_title(f"{m} model")
        ax.set_ylabel("test accuracy")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_plot(report: dict, path: Path) -> None:
    """:func:`plot_png` written atomically to ``path``."""
    write_file(Path(path), plot_png(report))
