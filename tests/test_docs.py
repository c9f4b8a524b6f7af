"""The README and docs/*.md say only what the committed files say.

Convention (docs/benchmarks.md, "How the numbers are checked"): a markdown table or a fenced block
followed, after at most one blank line, by a line that starts with ``Source:`` is checked against the
committed files that line names in backticks (``benchmarks/results/...``). How depends on the file:

* ``.csv`` with ``(columns `a`, `b`, ...)`` on the Source line: the table's columns are those CSV
  columns, in order, and every row must equal one row of the CSV, each number rounded as shown.
* ``.csv`` without columns: a per-seed CSV of ``benchmarks/detection.py``; the table's header is the
  header ``benchmarks/readme_tables.py`` prints (or some of its columns, with ``data``, ``noise`` and
  ``seeds``), and every row must equal the row it prints for that setting.
* key tables, ``.json`` or ``.csv``: a ``key`` column and a ``value`` column. The key is a dotted path
  into the JSON, or a CSV aggregate ``mean(col)``, ``max(col)``, ``min(col)``, ``count(col <= x)``,
  ``rows(col)`` over the rows of all named files; `` `file`: `key` `` picks one of several files. The
  value is the number rounded as shown (``%`` means times 100; a unit may follow the number).
* ``.txt`` / ``.log``: a fenced block whose every line is a line of the file (spaces collapsed).

A line ``Summary of `benchmarks/results/X.csv`: ...`` must be a summary line that readme_tables.py
prints for X. Besides: the README has at most 200 lines, every relative link and every repository path
in backticks exists, and every ``audit SUBCOMMAND --flag`` names a real subcommand and option.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import math
import re
import sys
import types
from pathlib import Path
from unittest import mock

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
RESULT_PATH = re.compile(r"`(benchmarks/results/[^`\s]+)`")
NUMBER = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


# ---------------------------------------------------------------- parsing


def _blocks(lines: list[str]):
    """(kind, first line index, last line index, lines) for every table and fenced block."""
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if line.lstrip().startswith("```"):
            j = i + 1
            while j < n and not lines[j].lstrip().startswith("```"):
                j += 1
            yield "fence", i, j, lines[i + 1:j]
            i = j + 1
        elif line.lstrip().startswith("|"):
            j = i
            while j + 1 < n and lines[j + 1].lstrip().startswith("|"):
                j += 1
            yield "table", i, j, [s.strip() for s in lines[i:j + 1]]
            i = j + 1
        else:
            i += 1


def _source_after(lines: list[str], end: int) -> tuple[int, str] | None:
    for k in (end + 1, end + 2):
        if k < len(lines) and lines[k].strip():
            return (k, lines[k].strip()) if lines[k].strip().startswith("Source:") else None
    return None


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _table(rows: list[str]) -> tuple[list[str], list[list[str]]]:
    return _cells(rows[0]), [_cells(r) for r in rows[2:]]


def checked_blocks():
    """Every checked block of every page: (page, kind, line number, block lines, Source line)."""
    out = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for kind, _start, end, body in _blocks(lines):
            src = _source_after(lines, end)
            if src:
                out.append((page, kind, src[0] + 1, body, src[1]))
    return out


def _plain(cell: str) -> str:
    return cell.replace("`", "").replace("**", "").strip()


# ---------------------------------------------------------------- numbers


def _shows(cell: str, value) -> bool:
    """Whether the doc cell shows ``value`` rounded as written (a number first, then an optional unit)."""
    text = _plain(cell)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return text == str(value)
    m = NUMBER.match(text)
    if not m or not m.group(0) or m.group(0) in "-−":
        return False
    shown, rest = m.group(0).replace(",", "").replace("−", "-"), text[m.end():].strip()
    x = float(value)
    if math.isnan(x):
        return False
    if rest.startswith("%"):
        x *= 100
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return f"{x:.{decimals}f}" == f"{float(shown):.{decimals}f}"


def _csv_cell_ok(cell: str, value) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return _plain(cell) in ("", "–", "-")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _shows(cell, value)
    return _plain(cell) == str(value)


def _json_at(data, path: str):
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


# ---------------------------------------------------------------- readme_tables.py


def _mean_interval(values, level=0.95):
    """audit.verify.mean_interval, without importing torch (that import alone takes seconds)."""
    import numpy as np
    from scipy import stats

    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "low": None, "high": None, "values": v.tolist()}
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": v.tolist()}


_TABLES = None


def readme_tables():
    global _TABLES
    if _TABLES is None:
        spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
        mod = importlib.util.module_from_spec(spec)
        modules = {}
        if "audit.verify" not in sys.modules:
            modules["audit.verify"] = types.SimpleNamespace(mean_interval=_mean_interval)
        with mock.patch.dict(sys.modules, modules):
            spec.loader.exec_module(mod)
        _TABLES = mod
    return _TABLES


def test_the_torch_free_interval_is_audit_verify_s():
    """The stand-in above must stay the formula of audit.verify.mean_interval."""
    src = (ROOT / "audit" / "verify.py").read_text(encoding="utf-8")
    assert "stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))" in src


@functools.lru_cache(maxsize=None)
def _rendered_one(path: str) -> tuple:
    mod = readme_tables()
    df = pd.read_csv(ROOT / path)
    out = [_table(mod.table(df).splitlines())]
    if "eq_cleanlab_auprc" in df:
        out.append(_table(mod.equal_compute_table(df).splitlines()))
    return tuple(out)


def _rendered(paths: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    return [t for p in paths for t in _rendered_one(p)]


@functools.lru_cache(maxsize=None)
def _summaries(path: str) -> set[str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        readme_tables().main([str(ROOT / path)])
    return {s.strip() for s in buf.getvalue().splitlines() if s.startswith("mean missed ratio")}


# ---------------------------------------------------------------- the checks

AGGREGATE = re.compile(r"(mean|max|min|count|rows)\((\w[\w.-]*)(?:\s*(<=|<|>=|>|==)\s*([-\d.]+))?\)")


def _aggregate(frame: pd.DataFrame, key: str):
    m = AGGREGATE.fullmatch(key.strip())
    if not m or m.group(2) not in frame:
        raise KeyError(key)
    func, col, op, x = m.groups()
    v = frame[col]
    if func == "rows":
        return int(v.notna().sum())
    if func == "count":
        if op is None:
            raise KeyError(key)
        x = float(x)
        hit = {"<=": v <= x, "<": v < x, ">=": v >= x, ">": v > x, "==": v == x}[op]
        return int(hit.sum())
    if op is not None:
        raise KeyError(key)
    return float(getattr(v, func)())


def _check_keys(where, ext, files, header, rows) -> list[str]:
    """Key tables: each `value` is what the file holds at `key` (a JSON path, or a CSV aggregate)."""
    if ext == ".json":
        data = {Path(f).name: json.loads((ROOT / f).read_text(encoding="utf-8")) for f in files}
        lookup = _json_at
    elif ext == ".csv":
        data = {Path(f).name: pd.read_csv(ROOT / f) for f in files}
        data["*"] = pd.concat(list(data.values()), ignore_index=True)
        lookup = _aggregate
    else:
        return [f"{where}: no key tables for {ext} files"]
    ki, vi = header.index("key"), header.index("value")
    errors = []
    for r in rows:
        ticks = re.findall(r"`([^`]+)`", r[ki])
        if len(ticks) == 2 and ticks[0] in data:
            name, path = ticks
        elif len(ticks) == 1 and (len(files) == 1 or ext == ".csv"):
            name, path = (Path(files[0]).name if len(files) == 1 else "*"), ticks[0]
        else:
            errors.append(f"{where}: key cell {r[ki]!r}: `key`, or `file`: `key` naming a file of the Source line")
            continue
        try:
            value = lookup(data[name], path)
        except (KeyError, IndexError, ValueError, TypeError):
            errors.append(f"{where}: {name} has no {path}")
            continue
        if not _shows(r[vi], value):
            errors.append(f"{where}: {path} shown as {r[vi]!r}, {name} holds {value!r}")
    return errors


def _check(page, kind, lineno, body, source) -> list[str]:
    where = f"{_rel(page)}:{lineno}"
    files = RESULT_PATH.findall(source)
    if not files:
        return [f"{where}: a Source line that names no benchmarks/results/ file"]
    missing = [f for f in files if not (ROOT / f).is_file()]
    if missing:
        return [f"{where}: {f} is not a committed file" for f in missing]
    exts = {Path(f).suffix for f in files}
    if len(exts) != 1:
        return [f"{where}: one kind of file per Source line, not {sorted(exts)}"]
    ext = exts.pop()
    errors = []
    if ext in (".txt", ".log"):
        if kind != "fence":
            return [f"{where}: a {ext} source checks a fenced block, not a table"]
        have = {" ".join(s.split()) for f in files for s in (ROOT / f).read_text(encoding="utf-8").splitlines()}
        for line in body:
            if line.strip() and " ".join(line.split()) not in have:
                errors.append(f"{where}: {line.strip()!r} is not a line of {', '.join(files)}")
        return errors
    if kind != "table":
        return [f"{where}: a {ext} source checks a table"]
    header, rows = _table(body)
    if "key" in header and "value" in header:
        return _check_keys(where, ext, files, header, rows)
    if ext == ".json":
        return [f"{where}: a table checked against JSON needs a `key` and a `value` column"]
    if ext != ".csv":
        return [f"{where}: no check for {ext} files"]
    cols = re.search(r"\(columns ([^)]*)\)", source)
    if cols:
        names = re.findall(r"`([^`]+)`", cols.group(1))
        frames = [pd.read_csv(ROOT / f) for f in files]
        unknown = [c for c in names if not any(c in df for df in frames)]
        if unknown:
            return [f"{where}: no column {c!r} in {', '.join(files)}" for c in unknown]
        if len(names) != len(header):
            return [f"{where}: {len(header)} table columns, {len(names)} named on the Source line"]
        candidates = [[rec[c] for c in names] for df in frames if all(c in df for c in names)
                      for rec in df.to_dict("records")]
        for r in rows:
            if not any(all(_csv_cell_ok(cell, v) for cell, v in zip(r, cand)) for cand in candidates):
                errors.append(f"{where}: no row of {', '.join(files)} reads {' | '.join(r)}")
        return errors
    rendered = _rendered(files)
    for need in ("data", "noise", "seeds"):
        if need not in header:
            return [f"{where}: a detection table needs the columns data, noise and seeds"]
    fits = [(h, rs) for h, rs in rendered if set(header) <= set(h)]
    if not fits:
        return [f"{where}: header {header} is not (a part of) a header benchmarks/readme_tables.py prints"]
    for r in rows:
        key = (r[header.index("data")], r[header.index("noise")], r[header.index("seeds")])
        found = False
        for h, rs in fits:
            for cand in rs:
                if (cand[h.index("data")], cand[h.index("noise")], cand[h.index("seeds")]) == key:
                    want = [cand[h.index(c)] for c in header]
                    if r == want:
                        found = True
                    else:
                        errors.append(f"{where}: row {key} reads {r}, readme_tables.py prints {want}")
                        found = True
        if not found:
            errors.append(f"{where}: readme_tables.py prints no row {key} for {', '.join(files)}")
    return list(dict.fromkeys(errors))


def test_every_cited_table_matches_its_committed_file():
    blocks = checked_blocks()
    assert len(blocks) >= 10, "the docs cite fewer result files than they should"
    errors = [e for b in blocks for e in _check(*b)]
    assert not errors, "\n".join(errors)


def test_every_summary_line_matches_readme_tables():
    errors, seen = [], 0
    pat = re.compile(r"^Summary of `(benchmarks/results/[^`]+\.csv)`: (.+?)\.?$")
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            m = pat.search(line.strip())
            if m:
                seen += 1
                if not (ROOT / m.group(1)).is_file():
                    errors.append(f"{_rel(page)}:{n}: {m.group(1)} is not a committed file")
                elif m.group(2) not in _summaries(m.group(1)):
                    errors.append(f"{_rel(page)}:{n}: {m.group(2)!r} is not what readme_tables.py prints "
                                  f"for {m.group(1)}: {sorted(_summaries(m.group(1)))}")
    assert seen, "no Summary lines found"
    assert not errors, "\n".join(errors)


def test_no_source_line_is_left_dangling():
    """A Source line that follows no table or fenced block would check nothing: say so."""
    errors = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        attached = set()
        for _kind, _start, end, _body in _blocks(lines):
            src = _source_after(lines, end)
            if src:
                attached.add(src[0])
        for n, line in enumerate(lines):
            if line.strip().startswith("Source:") and n not in attached:
                errors.append(f"{_rel(page)}:{n + 1}: a Source line after no table or fenced block")
    assert not errors, "\n".join(errors)


def test_readme_is_at_most_200_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 200, f"README.md has {n} lines"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_every_relative_link_exists():
    errors = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path, _, anchor = target.partition("#")
            file = page.parent / path if path else page
            if not file.exists():
                errors.append(f"{_rel(page)}: link to {target}, which does not exist")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                errors.append(f"{_rel(page)}: link to {target}: no such heading in {file.name}")
    assert not errors, "\n".join(errors)


REPO_PATH = re.compile(r"`((?:audit|app|benchmarks|tests|docs|examples|\.ci)/[A-Za-z0-9_./-]+)(?:::[\w:]+)?`")


def test_every_repository_path_in_backticks_exists():
    """`benchmarks/results/x.csv`, `audit/config.py`, `tests/test_math.py`: named, so present."""
    errors = []
    for page in PAGES:
        for path in REPO_PATH.findall(page.read_text(encoding="utf-8")):
            if path.startswith("benchmarks/data/") or re.search(r"(^|/)[A-Z][A-Z_]*(\.|/|$)", path):
                continue  # fetched or generated, never committed; or a placeholder such as NAME.csv
            if not (ROOT / path.rstrip("/")).exists():
                errors.append(f"{_rel(page)}: `{path}` does not exist")
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------- commands


def _parsers():
    from audit.cli import build_parser

    def subs(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return {}

    return subs, build_parser()


def _commands(text: str) -> list[str]:
    """Every `audit ...` command in code: fenced lines (continuations joined) and inline code spans."""
    out, lines, i = [], text.splitlines(), 0
    prose = []
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.extend("\n".join(block).replace("\\\n", " ").splitlines())
        else:
            prose.append(lines[i])
        i += 1
    joined = re.sub(r"\s*\n\s*", " ", "\n".join(prose))
    out.extend(re.findall(r"`([^`]+)`", joined))
    cmds = []
    for code in out:
        code = code.split(" #")[0]
        for m in re.finditer(r"(?<![\w./-])audit ([a-z][a-z-]*)([^|;&`]*)", code):
            cmds.append(f"audit {m.group(1)}{m.group(2)}")
    return cmds


def test_every_audit_command_in_the_docs_exists():
    subs, top = _parsers()
    errors, seen = [], 0
    for page in PAGES:
        for cmd in _commands(page.read_text(encoding="utf-8")):
            seen += 1
            words = cmd.split()
            parser = subs(top).get(words[1])
            if parser is None:
                errors.append(f"{_rel(page)}: `{cmd}`: no subcommand {words[1]!r}")
                continue
            rest = words[2:]
            nested = subs(parser)
            if nested and rest and rest[0] in nested:
                parsers, rest = [nested[rest[0]]], rest[1:]
            elif nested and rest and rest[0].isupper():  # a placeholder: EXPERIMENT
                parsers, rest = list(nested.values()), rest[1:]
            else:
                parsers = [parser]
            options = {o for p in parsers for a in p._actions for o in a.option_strings}
            for w in rest:
                flag = w.split("=")[0].rstrip(",.):")
                if flag.startswith("--") and flag not in options:
                    errors.append(f"{_rel(page)}: `{cmd}`: {flag} is not an option of that command")
    assert seen >= 10
    assert not errors, "\n".join(errors)


def test_readme_table_lists_exactly_the_subcommands():
    """The README's command table has one row per subcommand `audit --help` lists, and no other."""
    subs, top = _parsers()
    listed = set(re.findall(r"^\| `audit ([a-z-]+)", README.read_text(encoding="utf-8"), re.M))
    assert listed == set(subs(top)), (listed, set(subs(top)))
