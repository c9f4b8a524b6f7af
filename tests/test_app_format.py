"""How the review app and the report write numbers and signal names (issue 26): exact, no run needed."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app import ui


@pytest.mark.parametrize("eps, text", [
    (8 / 255, "8/255"), (0.03137254901960784, "8/255"), (2 / 255, "2/255"), (16 / 255, "16/255"),
    (0.1, "0.1"), (0.3, "0.3"), (0.5, "0.5"), (0.0, "0"), (1.0, "1"), (0.123456, "0.123"),
    (None, "–"), ("x", "–"), (float("nan"), "–"),
])
def test_eps_is_a_fraction_of_255_where_it_is_one(eps, text):
    from audit.report import eps_text

    assert ui.eps_text(eps) == text
    assert eps_text(eps) == text  # the report writes it the same way


@pytest.mark.parametrize("x, text, signed", [
    (8520.3, "8,520", "+8,520"), (8.52e3, "8,520", "+8,520"), (12345, "12,300", "+12,300"),
    (1234567, "1.23M", "+1.23M"), (136.2, "136", "+136"), (12.14, "12.1", "+12.1"), (0.1234, "0.123", "+0.123"),
    (0.0031, "0.0031", "+0.0031"), (-7.0, "-7", "−7"), (-0.616, "-0.616", "−0.616"), (0, "0", "0"),
    (None, "–", "–"), (float("inf"), "–", "–"),
])
def test_numbers_are_readable_without_exponents(x, text, signed):
    from audit.report import readable

    assert ui.sig(x) == text and ui.signed(x) == signed
    assert readable(x) == text  # the report's pairs gallery agrees
    assert "e+" not in ui.signed(x)


@pytest.mark.parametrize("share, text", [
    (0.81, "81st percentile"), (0.8199, "81st percentile"), (0.02, "2nd percentile"), (0.03, "3rd percentile"),
    (0.11, "11th percentile"), (0.125, "12th percentile"), (0.13, "13th percentile"), (0.22, "22nd percentile"),
    (0.0, "bottom 1%"), (0.004, "bottom 1%"), (0.999, "99th percentile"), (1.0, "99th percentile"),
    (None, "–"),
])
def test_percentiles_are_words(share, text):
    assert ui.percentile_text(share) == text
    assert "pct" not in ui.percentile_text(share)


def test_ordinals():
    assert [ui.ordinal(n) for n in (1, 2, 3, 4, 10, 11, 12, 13, 14, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "10th", "11th", "12th", "13th", "14th", "21st", "22nd", "23rd", "101st", "111th",
        "112th"]


def test_first_learned_minus_one_is_never_learned():
    """-1 is what audit.train.engine.summarize_dynamics records for an example still wrong at the last
    epoch; the others are 0-based epochs, shown 1-based like the training-dynamics chart."""
    import numpy as np

    from audit.train.engine import summarize_dynamics

    correct = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 1]], bool)  # (epochs, examples): never, always, from the 2nd
    first = summarize_dynamics(np.zeros((3, 3), np.float32), correct, np.zeros((3, 3), np.float32))["first_learned"]
    assert first.tolist() == [-1, 0, 1]
    assert [ui.first_learned_text(v) for v in first] == ["never learned", "epoch 1", "epoch 2"]
    assert ui.first_learned_text(float("nan")) == ui.first_learned_text(pd.NA) == "–"


def test_a_signal_is_named_once_with_its_description():
    assert ui.signal_title("robust_margin_pgd") == ("robust_margin_pgd — the PGD-trained model refuses the given "
                                                   "label (low margin)")
    assert ui.signal_title("no_such_signal") == "no_such_signal"  # no description: the name, once
    assert ui.signal_description("mean_top3") == "the mean rank of the best 3 signals by the canary check"
    for name in ("cv_aum", "aum_early", "self_influence", "robust_aum_trades"):
        assert ui.signal_title(name).count(name) == 1


def _row(**kw) -> pd.Series:
    base = {"example_id": "e1", "split": "train", "is_label_issue": False, "category": "ok",
            "signals_fired": "steps_to_flip"}
    return pd.Series({**base, **kw})


def test_only_a_flagged_example_says_signals_flagged_it():
    from app.views.review import signals_caption

    assert signals_caption(_row(is_label_issue=True, category="mislabelled"), 2) == "Signals that flagged it (2)"
    for r in (_row(), _row(category="atypical"), _row(is_label_issue=True, category="ok")):
        text = signals_caption(r, 1)
        assert "flagged it" not in text and text.startswith("Not flagged. Strongest signals (1)")


def test_history_table_is_three_readable_columns():
    from app.views.review import history_table

    run = ui.Run(dir=None, manifest={}, class_names=tuple("abc"), models=("natural",))
    log = pd.DataFrame({"seq": [1, 2, 3], "example_id": ["e"] * 3, "decision": ["keep", "relabel", "undo"],
                        "new_label": [math.nan, 2, math.nan], "reviewer": ["ann", "bob", "bob"],
                        "decided_at": ["2026-01-02T03:04:05.123+00:00"] * 3, "based_on": [None, 1, 2]})
    t = history_table(run, log, 0)
    assert list(t.columns) == ["decided at (UTC)", "reviewer", "decision"]
    assert t["decision"].tolist() == ["undid the previous decision", "relabelled a → c", "kept a"]  # newest first
    assert t["decided at (UTC)"].iloc[0] == "2026-01-02 03:04:05"


SELECTION = {"chosen": "robust_margin_pgd", "members": ["robust_margin_pgd"], "not_eligible": ["aum_natural"],
             "candidate_members": {"mean_top2": ["robust_margin_pgd", "cleanlab"]},
             "candidates": {c: {"auroc": 0.9, "auprc": a, "self_auprc": a, "soft_auprc": a, "rank_sum": r}
                            for c, a, r in (("cleanlab", 0.8, 9.0), ("mean_top2", 0.9, 7.0),
                                            ("robust_margin_pgd", 0.99, 6.0), ("steps_to_flip", 0.1, 12.0))}}


def test_the_chosen_signal_comes_first_in_the_selection_table():
    from app.views.overview import selection_table

    t = selection_table(SELECTION)
    assert t["signal"].tolist() == ["robust_margin_pgd (chosen)", "mean_top2", "cleanlab", "steps_to_flip"]
    assert t["what it is"].tolist()[:2] == ["the PGD-trained model refuses the given label (low margin)",
                                            "mean rank of robust_margin_pgd, cleanlab"]
    assert list(t.columns) == ["signal", "canary AUPRC", "own finds aside", "shared finds aside", "rank sum",
                               "what it is"]
    # the chosen one first even where it is not the best by rank sum (a tie broken towards the simpler one)
    tie = {**SELECTION, "chosen": "cleanlab"}
    assert selection_table(tie)["signal"].iloc[0] == "cleanlab (chosen)"


def test_heatmap_lists_every_class_name():
    from app.views.overview import confusion_chart

    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    run = ui.Run(dir=None, manifest={}, class_names=names, models=("natural",))
    fl = pd.DataFrame({"given_label": [0, 2, 4], "suggested_label": [6, 4, 2]})  # most classes never occur
    spec = confusion_chart(run, fl).to_dict()
    for enc in (spec["layer"][0]["encoding"]["x"], spec["layer"][0]["encoding"]["y"]):
        assert enc["scale"]["domain"] == list(names)
        assert enc["axis"]["values"] == list(names) and enc["axis"]["labelOverlap"] is False
    assert spec["layer"][0]["encoding"]["x"]["axis"]["labelAngle"] == -45  # long names slant instead of hiding


def test_overview_says_in_words_how_the_flag_count_was_set():
    """Each flag-count rule of the manifest reads as a sentence on the Overview, with its numbers."""
    from types import SimpleNamespace

    from app.views.overview import selection_text

    def line(fl):
        run = SimpleNamespace(trained=True, manifest={"flagging": fl})
        return [t for t in selection_text(run, {"num_canaries": 40}) if t.startswith("Flagged:")][0]

    mean = line({"n": 116, "rule": "canary_count", "out_of_sample": 140, "canary_count": 96, "robust_errors": {},
                 "reason": "96 real rows score like the 40 planted canaries"})
    assert mean.startswith("Flagged: the 116 training images with the highest issue_score, the geometric mean of "
                           "cleanlab's estimate of how many training labels are wrong (140) and the 96 training")
    assert mean.endswith("96 real rows score like the 40 planted canaries.")
    floor = line({"n": 50, "rule": "canary_floor", "out_of_sample": 60, "canary_count": 50, "robust_errors": {"pgd": 5},
                  "reason": ""})
    assert "the 50 training images that score like the planted canaries" in floor and "rule canary" not in floor
