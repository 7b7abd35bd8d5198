"""Every results table in the README and docs is printed by the `cll-ray report` command shown above it, from
the committed files under results/: the docs cannot drift from what the command prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cll_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"`(uv run cll-ray report [^`]+)`")


def results_tables(path: Path) -> list[tuple[str | None, str, int]]:
    """(the report command of the paragraph before it or None, the table, its line) for each table with an AA
    column (a results table) in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            if re.search(r"\bAA\b", lines[i]):
                k = i - 1
                while k >= 0 and lines[k].strip() == "":
                    k -= 1
                paragraph = []
                while k >= 0 and lines[k].strip() != "" and not lines[k].startswith("|"):
                    paragraph.insert(0, lines[k])
                    k -= 1
                commands = COMMAND.findall(" ".join(paragraph))
                found.append((commands[-1] if commands else None, "\n".join(lines[i:j]), i + 1))
            i = j
        else:
            i += 1
    return found


TABLES = [(path, *table) for path in DOCS for table in results_tables(path)]


def test_the_docs_have_results_tables():
    assert len([t for t in TABLES if t[0].name == "README.md"]) >= 1


@pytest.mark.parametrize("path, command, table, line", TABLES,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, _, _, line in TABLES])
def test_each_results_table_is_what_its_command_prints(path, command, table, line, capsys, monkeypatch):
    where = f"{path.relative_to(ROOT)}, line {line}"
    assert command, f"{where}: a results table without the `uv run cll-ray report ... --table` command above it"
    argv = shlex.split(command)[3:]
    assert "--table" in argv and all(a.startswith(("results/", "-")) for a in argv[1:]), (where, command)
    monkeypatch.chdir(ROOT)
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == table, f"{where}: the table differs from what `{command}` prints"


BENCH = re.compile(r"`(uv run cll-ray bench --show (results/[^`]+))`")


def test_bench_figures_are_what_their_command_prints(capsys, monkeypatch):
    """The README's performance figures are `cll-ray bench --show` of a committed record, verbatim."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = BENCH.findall(text)
    assert commands, "README.md: no `uv run cll-ray bench --show results/...` command beside the performance table"
    monkeypatch.chdir(ROOT)
    for command, _ in commands:
        assert main(shlex.split(command)[3:]) == 0
        printed = capsys.readouterr().out.strip()
        assert printed in text, f"README.md: the bench figures differ from what `{command}` prints"
