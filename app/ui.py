"""Small pieces every page uses: the run context, labels, colours, signal descriptions, decisions."""

from __future__ import annotations

import getpass
import hashlib
import html
import os
import re
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


# -- text from data ------------------------------------------------------------------------------------
# Every string that comes from the dataset or the run directory (class names, example ids, paths,
# category reasons, signal names, reviewer names, manifest fields, the URL's ?example=) reaches the page
# through one of these three, or through a component that shows plain text (st.text, st.code, the
# cells of st.dataframe / st.table, selectbox and multiselect options, Altair charts). Streamlit renders
# nearly every other string as Markdown (st.markdown, captions, alerts, labels of buttons, metrics, tabs
# and expanders, image captions, help tooltips): there a name like ``**x**``, ``[a](javascript:...)``,
# ``![i](http://host/x.png)`` (a request to another host), ``:red[x]`` or ``$x$`` would be formatted.
_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character (CommonMark escapes them all)
_BADGE_PUNCT = re.compile(r"([!-/:-@\\^-`{-~])")  # the same less [ and ]: st.badge escapes those itself
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
# GitHub's autolink literals (http://..., www.x, a@b.c) survive escaping: a word joiner (U+2060, invisible)
# inside each keeps them text
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?=@)", re.IGNORECASE)


def _plain(value) -> str:
    return _AUTOLINK.sub("\u2060", _LINE_BREAKS.sub(" ", str(value)))


def md(value) -> str:
    """``value`` as literal text inside a string Streamlit renders as Markdown: every ASCII punctuation
    character backslash-escaped (no emphasis, links, images, HTML, directives, icons or math), line
    breaks as spaces, autolinks broken by an invisible word joiner."""
    return _MD_PUNCT.sub(r"\\\1", _plain(value))


def md_badge(value) -> str:
    """``value`` as literal text for ``st.badge``'s label (which escapes square brackets itself)."""
    return _BADGE_PUNCT.sub(r"\\\1", _plain(value))


def esc(value) -> str:
    """``value`` as literal text inside HTML (``st.html``): ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def key(value) -> str:
    """A widget key for a string from data (an example id): a short hash, since keys end up in CSS
    class names (``st-key-...``) and must not carry the data itself."""
    return hashlib.sha1(str(value).encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class Run:
    """What every page needs about the run under review."""

    dir: Path
    manifest: dict
    class_names: tuple[str, ...]
    models: tuple[str, ...]

    def name(self, k) -> str:
        """The class name of label ``k`` as plain text (for components that show plain text)."""
        try:
            return self.class_names[int(k)]
        except (TypeError, ValueError, IndexError):
            return "?"

    def md_name(self, k) -> str:
        """The class name of label ``k`` for a string rendered as Markdown (:func:`md`)."""
        return md(self.name(k))


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


def num(x, spec: str = ".3f") -> str:
    """``x`` formatted as a number, or "–" when it is missing or not a number (a manifest is data)."""
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return "–"


def pct(x) -> str:
    return num(x, ".1%")


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
