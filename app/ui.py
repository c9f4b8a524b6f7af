"""Small pieces every page uses: the run context, labels, colours, signal descriptions, decisions."""

from __future__ import annotations

import getpass
import hashlib
import html
import math
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
COMBINATION_HELP = "the mean rank of the best {k} signals by the canary check"


def signal_description(name) -> str | None:
    """The one-line description of signal ``name`` (plain text): the signal registry's own where it keeps
    one (:mod:`audit.signals.registry`), else :data:`SIGNAL_HELP`; ``mean_top<k>``, the combination of the
    best k; None when nothing describes it."""
    name = str(name)
    try:
        from audit.signals.registry import SIGNALS

        desc = getattr(SIGNALS.get(name), "description", None)
    except ImportError:  # the app without the signal stack: its own table is enough
        desc = None
    if isinstance(desc, str) and desc.strip():
        return desc.strip()
    if name in SIGNAL_HELP:
        return SIGNAL_HELP[name]
    m = re.fullmatch(r"mean_top(\d+)", name)
    return COMBINATION_HELP.format(k=m.group(1)) if m else None


def signal_title(name) -> str:
    """"name — description" for a heading, or the name alone when it has no description (never the name
    twice)."""
    desc = signal_description(name)
    return f"{name} — {desc}" if desc and desc != str(name) else str(name)


NO_MODELS = "No models trained (`--models none`)"  # what a page says where its part needs trained models


def no_models_note(what: str) -> None:
    """One line where a part of a page needs trained models and the run trained none: what is missing
    (``what``: fixed text, Markdown)."""
    st.caption(f":material/info: {NO_MODELS}: {what}")


DECISION_VERB = {"keep": "Kept", "relabel": "Relabelled", "remove": "Removed", "skip": "Skipped", "undo": "Undid"}
DECISION_ICON = {"keep": "✓", "relabel": "✎", "remove": "✕", "skip": "↷", "undo": "↶"}
MODEL_NAME = {"natural": "natural", "pgd": "PGD-AT", "trades": "TRADES"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


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

    @property
    def trained(self) -> bool:
        """Whether the run trained models (``audit run --models none`` trains none: the user's own
        probabilities alone, :mod:`audit.given_run`)."""
        return bool(self.models)

    def given_input(self, option: str = "pred-probs") -> str:
        """The file name of the run's ``--pred-probs``/``--features`` input as plain text ("" without one)."""
        inputs = self.manifest.get("inputs")
        rec = inputs.get(option) if isinstance(inputs, dict) else None
        path = rec.get("path") if isinstance(rec, dict) else None
        return Path(path).name[:120] if isinstance(path, str) and path else ""

    def name(self, k) -> str:
        """The class name of label ``k`` as plain text (for components that show plain text)."""
        try:
            return self.class_names[int(k)]
        except (TypeError, ValueError, IndexError):
            return "?"

    def md_name(self, k) -> str:
        """The class name of label ``k`` for a string rendered as Markdown (:func:`md`)."""
        return md(self.name(k))

    def has_keys(self) -> bool:
        """Whether the review page relabels by the keys 0–9 (at most ten classes)."""
        return len(self.class_names) <= 10

    def key_label(self, k) -> str:
        """"5 · seven": the relabel key of class ``k`` (its index) and the class it relabels to (plain text)."""
        return f"{int(k)} · {self.name(k)}"

    def keys_misleading(self) -> bool:
        """Whether a class name could be read as another key: a digit string that is not its own index
        (classes "1".."10" sorted as text put "10" on key 1) or a number word that is not it ("zero".."nine"
        sorted put "seven" on key 5)."""
        for i, name in enumerate(self.class_names):
            n = name.strip().lower()
            if (n.isdigit() and n != str(i)) or (n in NUMBER_WORDS and NUMBER_WORDS.index(n) != i):
                return True
        return False

    def key_map_text(self) -> str:
        """What each relabel key does, as plain text: "keys follow the class index: 0 → eight, 1 → five, …";
        with a name that reads as another key, said outright."""
        pairs = ", ".join(f"{i} → {n}" for i, n in enumerate(self.class_names))
        if self.keys_misleading():
            return (f"Keys follow the class index, not the class name: {pairs}. Press the key shown beside a "
                    "class, not the digit in its name.")
        return f"Keys follow the class index: {pairs}."


def current_run() -> Run | None:
    run = data.run_dir_from_argv()
    if data.run_problem(run):
        return None
    man = data.manifest(run)
    names = tuple(str(c) for c in man["dataset"].get("class_names") or ())
    if not names:
        k = int(data.examples(run)["given_label"].max()) + 1
        names = tuple(str(i) for i in range(k))
    models = man.get("config", {}).get("models")
    # a run before models were recorded trained the natural one; ``[]`` is ``--models none`` (nothing trained)
    models = ("natural",) if models is None else tuple(str(m) for m in models)
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


def parse_time(value) -> datetime | None:
    """A decision's ``decided_at`` (ISO 8601, from the log: data) as an aware UTC time; a time without a
    time zone is taken as UTC (what the store writes); None when it is not a time."""
    try:
        t = datetime.fromisoformat(str(value).strip())
    except (TypeError, ValueError, OverflowError):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    try:
        return t.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def when(value) -> str:
    """``decided_at`` as "YYYY-MM-DD HH:MM:SS" in UTC (a time without a zone read as UTC); the raw text
    (cut to 40 characters) when it is not a time. Plain text."""
    t = parse_time(value)
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else str(value)[:40]


def ago(iso: str) -> str:
    """'3 min ago' for an ISO 8601 time (one without a zone read as UTC), Markdown-safe: a value that is
    not a time is shown as its own (escaped) text."""
    t = parse_time(iso)
    if t is None:
        return md(str(iso)[:40])
    s = (datetime.now(timezone.utc) - t).total_seconds()
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return t.strftime("%Y-%m-%d %H:%M UTC")


# -- decisions made about another label or image ----------------------------------------------------------
STALE_KINDS = (("label changed", "label changed"), ("image changed", "image changed"),
               ("example not in this run", "example not in this run"))


def stale_counts(stale) -> list[tuple[str, int]]:
    """(kind, count) of stale decisions by reason, in a fixed order (only kinds that occur)."""
    reasons = [str(r) for r in stale["stale_reason"]] if len(stale) else []
    out = []
    for prefix, kind in STALE_KINDS:
        n = sum(r.startswith(prefix) for r in reasons)
        if n:
            out.append((kind, n))
    other = len(reasons) - sum(n for _, n in out)
    if other:
        out.append(("other reasons", other))
    return out


def stale_text(stale) -> str | None:
    """The sentence the Overview and the Decisions page show when decisions in the log are not applied
    (:func:`app.data.stale_decisions`), or None. Markdown-safe (counts and fixed words only)."""
    n = len(stale)
    if not n:
        return None
    parts = ", ".join(f"{k:,} {kind}" for kind, k in stale_counts(stale))
    were = "decision was" if n == 1 else "decisions were"
    return (f"{n:,} {were} made on another label or image than this run shows ({parts}): they are kept in the "
            "log, not applied, and these examples are back in the review queue.")


def stale_notice(run: "Run") -> None:
    """A warning when some decisions in the log are stale (none otherwise)."""
    text = stale_text(data.stale_decisions(run.dir))
    if text:
        st.warning(text, icon=":material/history:")


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


# -- numbers for people ------------------------------------------------------------------------------
# One place for how the pages write the numbers a reader takes in at a glance.
def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def sig(x, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, without an exponent between 1e-4 and 1e6: 0.1, 0.0314, 12.1,
    8,520, 1.23M; "–" when missing."""
    v = _finite(x)
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.{digits}g}M" if a < 1e9 else f"{v:.{digits - 1}e}"
    if a >= 10 ** (digits - 1):
        return f"{float(f'{v:.{digits}g}'):,.0f}"  # 8,520: rounded to the digits kept, thousands separated
    return f"{v:.{digits}g}" if a == 0 or a >= 1e-4 else f"{v:.{digits - 1}e}"


def signed(x, digits: int = 3) -> str:
    """:func:`sig` with its sign always written (an influence pushes one way or the other): +8,520, −0.31."""
    v = _finite(x)
    if v is None:
        return "–"
    return ("+" if v > 0 else "−" if v < 0 else "") + sig(abs(v), digits)


def eps_text(eps) -> str:
    """An attack radius in [0, 1] pixel units as people write it: "8/255" where it is a whole number of
    grey levels out of 255 (not a round decimal), else 3 significant digits ("0.1", "0.3")."""
    v = _finite(eps)
    if v is None:
        return "–"
    k = v * 255
    if 0 < v < 1 and abs(k - round(k)) < 1e-6 and f"{v:.3g}" != f"{v:.6g}":
        return f"{round(k)}/255"
    return sig(v)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, …"""
    n = int(n)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def percentile_text(share_below) -> str:
    """The share of rows below a value (0–1) as "81st percentile" ("bottom 1%" under the 1st); "–"
    when missing. Floored, and capped at the 99th (a share below reaches 1 only by rounding)."""
    v = _finite(share_below)
    if v is None:
        return "–"
    p = math.floor(v * 100 + 1e-9)
    return "bottom 1%" if p < 1 else f"{ordinal(min(99, p))} percentile"


def first_learned_text(v) -> str:
    """``first_learned_M`` (:func:`audit.train.engine.summarize_dynamics`: the 0-based epoch from which
    the example stays correct, -1 when it is wrong at the last epoch) in the 1-based epochs of the
    training-dynamics chart: "epoch 5", "never learned", "–" when not recorded."""
    f = _finite(v)
    if f is None:
        return "–"
    return "never learned" if f < 0 else f"epoch {int(f) + 1}"


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
