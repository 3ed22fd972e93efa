"""Seeded fuzzing on every CI run (issue 15, item 5): mutated files through every loader, only
mrcformat.errors classes out, nothing printed, no load slower than a few seconds.

About a minute on 2 cores (MRC_FUZZ_FILES=N to change the count; bench/fuzz_campaign.py runs the long
campaign in worker processes). The mutations (header bytes and tree with CRCs and offsets fixed,
section bytes with CRC fixed, ONNX-structure edits of the stored graph) are in fuzz_mutations.py; a
failing seed reproduces with `fuzz_mutations.fuzz_one(seed, folder)`.
"""
from __future__ import annotations

import collections
import os

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

import fuzz_mutations as F  # noqa: E402

FILES = int(os.environ.get("MRC_FUZZ_FILES", "1500"))
CHUNKS = 5
SECONDS_PER_FILE = 10.0
SEED0 = 15_000_000  # the CI seeds: 15_000_000 + [0, FILES); the long campaign starts at 0


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_campaign(chunk, tmp_path, capfd):
    n = FILES // CHUNKS
    outcomes: collections.Counter = collections.Counter()
    findings = []
    for seed in range(SEED0 + chunk * n, SEED0 + (chunk + 1) * n):
        r = F.fuzz_one(seed, tmp_path)
        for loader, o in r["outcomes"].items():
            outcomes[(r["kind"], loader, o.split(":")[0])] += 1
            if o.startswith("FOREIGN"):
                findings.append((seed, r["kind"], loader, o))
        if r["stdout"]:
            findings.append((seed, r["kind"], "stdout", r["stdout"][:300]))
        if r["seconds"] > SECONDS_PER_FILE:
            findings.append((seed, r["kind"], "slow", f"{r['seconds']:.1f} s"))
    assert not findings, findings[:10]
    assert capfd.readouterr().out == ""
    # the campaign reaches past the reader: graphs accepted, then loaded or refused by the runtimes
    assert outcomes[("onnx", "session", "ok")] > 0 and outcomes[("onnx", "session", "graph-runtime")] > 0
    assert outcomes[("onnx", "two_step", "ok")] > 0  # two-step files written and opened in onnxruntime
    assert outcomes[("onnx", "self_decoding", "ok")] > 0  # self-decoding exports opened, decoder folded
    assert sum(v for (k, loader, o), v in outcomes.items() if loader == "load_state_dict" and o == "ok") > 0
    assert {k for k, _, _ in outcomes} == set(F.KINDS)


def test_mutations_are_deterministic_and_header_valid():
    """One seed, one file; header-tree and onnx mutations keep the preamble's length and CRC right."""
    import struct
    import zlib

    for seed in range(40):
        a, b = F.mutated(seed), F.mutated(seed)
        assert a == b
        base, kind, data = a
        if kind in ("header-tree", "onnx", "section-bytes") and len(data) >= 24:
            hlen = struct.unpack_from("<I", data, 12)[0]
            assert zlib.crc32(data[24:24 + hlen]) == struct.unpack_from("<I", data, 16)[0], (seed, kind)
