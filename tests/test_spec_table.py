"""SPEC.md 9.2 as a test: every rule of the table has a vector, every vector its rule, and the reference
reader, the validator and `mrc validate --json` report exactly the row's code and `where` on it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import mrcformat
from mrcformat import errors as E
from mrcformat.cli import main
from mrcformat.errors import MrcError

ROOT = Path(__file__).resolve().parent.parent
SPEC_TEXT = (ROOT / "SPEC.md").read_text(encoding="utf-8")
VECTORS = ROOT / "spec" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text(encoding="utf-8"))


def _table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under `heading` in SPEC.md."""
    body = SPEC_TEXT[SPEC_TEXT.index(heading):]
    lines = [ln for ln in body.splitlines()[1:] if ln.startswith("|")]
    start = body.splitlines()[1:].index(lines[0])
    rows = []
    for ln in body.splitlines()[1:][start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return [r for r in rows[2:]]  # drop the header row and the --- row


RULES = _table("### 9.2 Order of checks")
CODES = _table("### 9.3 Error codes")


def _where_matches(cell: str, where) -> bool:
    """A `where` cell: a byte offset (a number, or `byte: ...`) or backticked field-path patterns."""
    if cell.isdigit():
        return where == int(cell)
    if cell.startswith("byte"):
        return isinstance(where, int) and not isinstance(where, bool)
    patterns = re.findall(r"`([^`]+)`", cell)
    assert patterns, f"unreadable where cell {cell!r}"
    for p in patterns:
        rx = re.escape(p).replace(r"\[i\]", r"\[\d+\]").replace(r"\[k\]", r"\[\d+\]")
        rx = rx.replace(re.escape("<key>"), ".+").replace(re.escape("<field path>"), ".+")
        if isinstance(where, str) and re.fullmatch(rx, where):
            return True
    return False


def test_table_is_complete():
    assert len(RULES) >= 60
    steps = [int(r[0]) for r in RULES]
    assert steps == sorted(steps), "rows are listed in the order they are checked"
    file_codes = {c for row in CODES for c in re.findall(r"[a-z][a-z-]+", row[0]) if "-" in c or c.isalpha()}
    file_codes -= {"table"}  # a fault of the reader's installation, not of a file
    assert file_codes <= {r[3] for r in RULES}, "every code of 9.3 has at least one rule"
    assert {r[3] for r in RULES} <= file_codes
    # every error class of the package that is a file-format code is listed, and nothing else
    classes = {getattr(E, n).code for n in E.__all__ if n.endswith("Error") and n != "MrcError"}
    assert file_codes | {"table"} <= classes
    named = {v for r in RULES for v in re.split(r",\s*", r[5])}
    assert {f"invalid/{v}.mrc" for v in named} == set(MANIFEST["invalid"]), "every invalid vector belongs to a rule"


@pytest.mark.parametrize("row", RULES, ids=[f"{r[0]}:{r[3]}:{r[5].split(',')[0]}" for r in RULES])
def test_each_rule_has_vectors_with_its_code(row):
    _, rule, _, code, where_cell, vectors = row
    names = [v.strip() for v in vectors.split(",") if v.strip()]
    assert names, f"rule {rule!r} has no vector"
    for v in names:
        entry = MANIFEST["invalid"][f"invalid/{v}.mrc"]
        assert entry["code"] == code, v
        assert _where_matches(where_cell, entry["where"]), (v, entry["where"], where_cell)
        data = (VECTORS / "invalid" / f"{v}.mrc").read_bytes()
        with pytest.raises(MrcError) as info:
            mrcformat.from_bytes(data)
        assert (info.value.code, info.value.where) == (code, entry["where"]), (v, str(info.value))
        first = mrcformat.validate_bytes(data)[0]
        assert (first.code, first.where) == (code, entry["where"]), v


def test_every_code_has_one_kind_of_where():
    """9.3: each code's `where` is always a byte offset or always a field path."""
    kinds: dict[str, set[str]] = {}
    for entry in MANIFEST["invalid"].values():
        kinds.setdefault(entry["code"], set()).add(type(entry["where"]).__name__)
    declared = {}
    for row in CODES:
        for code in re.split(r"\s*/\s*", row[0]):
            declared[code] = "int" if row[2].startswith("byte offset") else "str"
    for code, seen in kinds.items():
        assert seen == {declared[code]}, code


def test_cli_validate_json_reports_the_table():
    names = sorted(MANIFEST["invalid"]) + sorted(MANIFEST["valid"])
    result = CliRunner().invoke(main, ["validate", "--json", *[str(VECTORS / n) for n in names]])
    assert result.exit_code == 1, result.output
    out = json.loads(result.output)
    assert [Path(r["file"]).relative_to(VECTORS).as_posix() for r in out] == names
    for r in out:
        name = Path(r["file"]).relative_to(VECTORS).as_posix()
        if name in MANIFEST["valid"]:
            assert r["valid"] and r["problems"] == [], name
        else:
            first = r["problems"][0]
            assert (first["code"], first["where"]) == (MANIFEST["invalid"][name]["code"], MANIFEST["invalid"][name]["where"]), name
