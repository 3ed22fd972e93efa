"""SPEC.md, spec/constants.json, spec/header.schema.json and the reference reader agree: the caps of
SPEC.md 8, the fields of SPEC.md 7.3's tables, the enumerations."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mrcformat import limits, reader
from mrcformat.container import DTYPES, SECTION_KINDS

ROOT = Path(__file__).resolve().parent.parent
SPEC_TEXT = (ROOT / "SPEC.md").read_text(encoding="utf-8")
SCHEMA = json.loads((ROOT / "spec" / "header.schema.json").read_text(encoding="utf-8"))
CONSTANTS = json.loads((ROOT / "spec" / "constants.json").read_text(encoding="utf-8"))["limits"]
DEFS = SCHEMA["$defs"]
CODED, RAW = (DEFS["tensor"]["oneOf"][i]["properties"] for i in (0, 1))


def _tables_after(heading: str) -> list[list[list[str]]]:
    """Every markdown table between `heading` and the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    body = SPEC_TEXT[SPEC_TEXT.index(heading) + len(heading):]
    end = re.search(rf"^#{{1,{len(level)}}} ", body, flags=re.MULTILINE)
    body = body[:end.start()] if end else body
    tables, cur = [], []
    for ln in body.splitlines():
        if ln.startswith("|"):
            cur.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur[2:])
            cur = []
    if cur:
        tables.append(cur[2:])
    return tables


def _number(text: str) -> int:
    """'2^31 - 1', '65,536 each', '16 MiB', '1..32' -> an int (the upper bound)."""
    t = text.replace(",", "").replace("each", "").strip()
    if t.endswith("MiB"):
        return int(t[:-3]) * 2**20
    t = t.split("..")[-1]
    return int(eval(t.replace("^", "**"), {"__builtins__": {}}))  # digits, ^, - only (checked below)


SPEC_CAPS = {}
for row in _tables_after("## 8. Limits")[0]:
    values = row[1].split("/")
    names = [n.strip() for n in row[0].split("/" if len(values) > 1 else ",")]
    assert all(re.fullmatch(r"[\d,^ \-.MiBeach]+", v) for v in values), row
    if len(values) == 1:
        values = values * len(names)
    SPEC_CAPS.update({n: _number(v) for n, v in zip(names, values)})

# SPEC.md 8's cap names -> (constants.json key, where the schema states the cap)
CAPS = {
    "header length": ("header_max", None),
    "nesting of arrays": ("max_nesting_depth", SCHEMA["x-maxNestingDepth"]),
    "tensors": ("max_tensors", SCHEMA["properties"]["tensors"]["maxItems"]),
    "groups": ("max_groups", SCHEMA["properties"]["groups"]["maxItems"]),
    "rank": ("max_rank", DEFS["shape"]["maxItems"]),
    "dimension": ("max_dim", DEFS["shape"]["items"]["maximum"]),
    "elements per tensor": ("max_tensor_elements", DEFS["shape"]["x-maxProduct"]),
    "weights per group": ("max_group_weights", None),
    "values per group": ("max_num_values", DEFS["group"]["properties"]["num_values"]["maximum"]),
    "block size": ("max_block_size", DEFS["group"]["properties"]["block_size"]["maximum"]),
    "hashing ratio": ("max_hash_ratio", None),
    "index bits": ("max_index_bits", DEFS["group"]["properties"]["index_bits"]["maximum"]),
    "metadata entries": ("max_metadata_entries", SCHEMA["properties"]["metadata"]["maxProperties"]),
    "key bytes": ("max_metadata_key_bytes", SCHEMA["properties"]["metadata"]["propertyNames"]["x-maxUtf8Bytes"]),
    "name bytes": ("max_name_bytes", DEFS["name"]["x-maxUtf8Bytes"]),
}


def _cap(prefix: str) -> int:
    (value,) = [v for k, v in SPEC_CAPS.items() if k.startswith(prefix)]
    return value


@pytest.mark.parametrize("name", sorted(CAPS))
def test_cap_agrees_in_spec_constants_schema_and_code(name):
    key, in_schema = CAPS[name]
    value = _cap(name)
    assert CONSTANTS[key] == value
    assert getattr(limits, key.upper()) == value
    if in_schema is not None:
        assert in_schema == value


def test_every_spec_cap_is_checked_here():
    assert len(SPEC_CAPS) == len(CAPS)
    for name in SPEC_CAPS:
        assert any(name.startswith(p) for p in CAPS), name


def test_string_caps_also_bound_characters():
    """maxLength counts characters; a string within the byte cap has at most that many characters."""
    assert DEFS["name"]["maxLength"] == DEFS["name"]["x-maxUtf8Bytes"] and DEFS["name"]["minLength"] == 1
    names = SCHEMA["properties"]["metadata"]["propertyNames"]
    assert names["maxLength"] == names["x-maxUtf8Bytes"] and names["minLength"] == 1


def test_fields_of_spec_tables_match_schema_and_reader():
    top, group, tensor, section = _tables_after("### 7.3 Header fields")
    def field(rows: list[list[str]]) -> list[str]:
        return [r[0].strip("`") for r in rows]

    assert field(top) == list(SCHEMA["properties"]) == list(reader._TOP_1_1)
    assert set(SCHEMA["required"]) == set(reader._TOP)
    assert field(group) == list(DEFS["group"]["properties"]) == list(reader._GROUP_1_1)
    assert set(DEFS["group"]["required"]) == set(reader._GROUP)
    assert set(field(tensor)) == set(CODED) | set(RAW) == set(reader._TENSOR_CODED) | set(reader._TENSOR_RAW)
    assert field(section) == list(DEFS["section"]["properties"]) == list(reader._SECTION)


def test_enumerations_match():
    _, _, tensor, section = _tables_after("### 7.3 Header fields")
    dtype_row = next(r for r in tensor if r[0] == "`dtype`")
    assert re.findall(r"`(\w+)`", dtype_row[2]) == RAW["dtype"]["enum"]
    assert set(RAW["dtype"]["enum"]) == set(DTYPES)
    kind_row = next(r for r in section if r[0] == "`kind`")
    assert re.findall(r'"(\w+)"', kind_row[2]) == DEFS["section"]["properties"]["kind"]["enum"] == list(SECTION_KINDS)


def test_numeric_ranges_in_tables_match_schema():
    """`int, lo..hi` in SPEC.md 7.3 is the schema's minimum/maximum."""
    top, group, _, section = _tables_after("### 7.3 Header fields")
    props = {"": SCHEMA["properties"], "group": DEFS["group"]["properties"], "section": DEFS["section"]["properties"]}
    checked = 0
    for scope, rows in (("", top), ("group", group), ("section", section)):
        for r in rows:
            m = re.fullmatch(r"int, ([\d^\-]+)\.\.([\d^\-]+)", r[1])
            if not m:
                continue
            lo, hi = (int(eval(x.replace("^", "**"), {"__builtins__": {}})) for x in m.groups())
            p = props[scope][r[0].strip("`")]
            assert (p["minimum"], p["maximum"]) == (lo, hi), r[0]
            checked += 1
    assert checked >= 7


def test_format_version_agrees():
    """constants.json's format version is what the reader implements, SPEC.md's title and the manifest's."""
    from mrcformat.container import VERSION, WRITE_VERSION

    fmt = json.loads((ROOT / "spec" / "constants.json").read_text(encoding="utf-8"))["format"]
    assert (fmt["major"], fmt["minor"]) == VERSION
    assert fmt["write_minor_without_1_1_features"] == WRITE_VERSION[1]
    assert SPEC_TEXT.splitlines()[0] == f"# The `.mrc` format, version {VERSION[0]}.{VERSION[1]}"
    manifest = json.loads((ROOT / "spec" / "vectors" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == f"{VERSION[0]}.{VERSION[1]}"
