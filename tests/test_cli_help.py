"""The first hour: every subcommand has a description and every option a help line."""

from __future__ import annotations

import argparse

import pytest

from audit.cli import build_parser


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


@pytest.mark.parametrize("name, sub", list(_subparsers(build_parser())), ids=lambda v: v if isinstance(v, str) else "")
def test_every_subcommand_and_option_is_described(name, sub):
    assert sub.description, f"audit {name}: no description"
    for action in sub._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help and action.help.strip(), f"audit {name} {action.option_strings or action.dest}: no help"


def test_run_help_lists_every_dataset_source_and_defaults(capsys):
    from audit.data.sources import SOURCES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for prefix in SOURCES:
        assert prefix in text, prefix
    assert "(default: natural,pgd)" in text and "(default: 4)" in text


def test_every_subcommand_ends_its_help_with_an_example_that_parses(capsys):
    """Issue #26: each --help ends with a one-line example, and the example is a command the parser accepts."""
    import shlex

    from audit.cli import EXAMPLES, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(EXAMPLES) == set(sub.choices)
    for name, example in EXAMPLES.items():
        assert sub.choices[name].format_help().rstrip().endswith(f"example: {example}")
        args = parser.parse_args(shlex.split(example)[1:])
        assert args.command == name
