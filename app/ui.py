"""Small pieces every page uses: the run context, labels, colours, signal descriptions, decisions."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import streamlit as st

from app import data

CATEGORY_COLOR = {"mislabelled": "red", "ambiguous": "orange", "atypical": "violet", "ok": "gray"}
CATEGORY_HELP = {
    "mislabelled": "the evidence agrees on another class",
    "ambiguous": "the evidence is torn between two classes",
    "atypical": "a rare or unusual example of its class, no confident alternative label",
    "ok": "nothing suspicious",
}
SIGNAL_HELP = {
    "cleanlab": "out-of-sample probabilities (cross-validation) give the label low quality (cleanlab)",
    "aum_natural": "low area under the margin while the natural model trained",
    "aum_early": "low margin in the first half of training, before noise is memorized",
    "cv_aum": "low margin in the cross-validation models that trained on it",
    "memorization": "Feldman–Zhang memorization: fitted only when it is in the training set",
    "self_influence": "high TracIn self-influence: it pulls hard on its own loss",
    "steps_to_flip": "few PGD steps flip the natural model's prediction",
    "robust_margin_pgd": "the PGD-trained model refuses the given label (low margin)",
    "robust_aum_pgd": "the PGD-trained model never learned the given label (low AUM)",
    "robust_margin_trades": "the TRADES-trained model refuses the given label (low margin)",
    "robust_aum_trades": "the TRADES-trained model never learned the given label (low AUM)",
}
DECISION_VERB = {"keep": "Kept", "relabel": "Relabelled", "remove": "Removed", "skip": "Skipped", "undo": "Undid"}
DECISION_ICON = {"keep": "✓", "relabel": "✎", "remove": "✕", "skip": "↷", "undo": "↶"}
MODEL_NAME = {"natural": "natural", "pgd": "PGD-AT", "trades": "TRADES"}


@dataclass(frozen=True)
class Run:
    """What every page needs about the run under review."""

    dir: Path
    manifest: dict
    class_names: tuple[str, ...]
    models: tuple[str, ...]

    def name(self, k) -> str:
        try:
            return self.class_names[int(k)]
        except (TypeError, ValueError, IndexError):
            return "?"


def current_run() -> Run | None:
    run = data.run_dir_from_argv()
    if data.run_problem(run):
        return None
    man = data.manifest(run)
    names = tuple(str(c) for c in man["dataset"].get("class_names") or ())
    if not names:
        k = int(data.examples(run)["given_label"].max()) + 1
        names = tuple(str(i) for i in range(k))
    models = tuple(man.get("config", {}).get("models") or ("natural",))
    return Run(run, man, names, models)


def default_reviewer() -> str:
    name = os.environ.get("AUDIT_REVIEWER")
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "anonymous"


def reviewer() -> str:
    """The reviewer name typed in the sidebar (set up by the entry script)."""
    return (st.session_state.get("reviewer") or "").strip() or default_reviewer()


def ago(iso: str) -> str:
    """'3 min ago' for an ISO 8601 UTC time."""
    try:
        t = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    s = (datetime.now(timezone.utc) - t).total_seconds()
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return t.strftime("%Y-%m-%d %H:%M UTC")


def decision_text(run: Run, decision: str, new_label, given_label=None) -> str:
    """'kept 5', 'relabelled 5 → 4', 'removed'."""
    if decision == "keep":
        return f"kept {run.name(given_label)}" if given_label is not None else "kept"
    if decision == "relabel":
        return (f"relabelled {run.name(given_label)} → {run.name(new_label)}" if given_label is not None
                else f"relabelled → {run.name(new_label)}")
    if decision == "remove":
        return "removed"
    return decision


def pct(x) -> str:
    try:
        return f"{float(x):.1%}"
    except (TypeError, ValueError):
        return "–"


def style() -> None:
    """A little CSS: tighter page top, centred thumbnails, monospaced ids."""
    st.html("""<style>
    .block-container {padding-top: 2.2rem; padding-bottom: 2rem;}
    [data-testid="stImage"] img {image-rendering: pixelated; border-radius: 4px;}
    .st-key-zoom [data-testid="stImage"] img {box-shadow: 0 1px 6px rgba(0,0,0,.18);}
    div[class*="st-key-cell_"] {text-align: center;}
    .st-key-neighbours [data-testid="stImage"] {gap: 10px; flex-wrap: wrap;}
    .st-key-neighbours [data-testid="stImageContainer"] {flex: 0 0 44px;}
    div[class*="st-key-cell_"] [data-testid="stImage"] {margin: 0 auto;}
    .audit-id {font-family: ui-monospace, monospace; font-size: .85rem; color: #666;}
    .audit-big {font-size: 2.1rem; font-weight: 650; line-height: 1.1;}
    .audit-small {font-size: .8rem; color: #777;}
    </style>""")
