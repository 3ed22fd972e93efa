"""The `mrc` command line: info, validate, decode, export; output formats and exit codes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_corrupt import BASE, base_container

from mrcformat import Container, Tensor, decode, from_bytes, save, to_bytes
from mrcformat.cli import main

ROOT = Path(__file__).resolve().parents[1]

TRAILING = BASE + b"\0"


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.mrc"
    good.write_bytes(BASE)
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(TRAILING)
    return good, bad


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, *needles, code: int = 2):
    """Exit `code` (2: usage or I/O error, 1: an invalid file) with one line on stderr and no traceback."""
    assert result.exit_code == code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------- info


def test_info_table(files):
    good, _ = files
    r = run("info", good)
    assert r.exit_code == 0, r.output
    out = r.stdout
    for text in ("format version  1.0", "sampler         normal16", "seed            1234", f"file size       {len(BASE)} bytes",
                 "index payload   5 bytes (36 bits", "coded weights   30 (18 coded values)", "raw elements    7 (16 bytes)",
                 "opset ai.onnx 18", "affine a=3 c=1", "contiguous", "author = test", "k = v"):
        assert text in out, text
    for name in ("w0", "w1", "b", "m"):
        assert f"\n  {name} " in out
    assert "group 1" in out and "section 2" in out


def test_info_json(files):
    good, _ = files
    r = run("info", good, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["file"] == str(good)
    assert (d["version"], d["sampler"], d["seed"], d["file_bytes"]) == ("1.0", "normal16", 1234, len(BASE))
    assert (d["index_payload_bytes"], d["index_payload_bits"]) == (5, 3 * 5 + 3 * 7)
    assert (d["coded_weights"], d["coded_values"], d["raw_elements"]) == (30, 18, 7)
    g0, g1 = d["groups"]
    assert g0["mu"] == 0.0 and g0["sigma"] == 0.10009765625 and g0["layout"] == {"kind": "contiguous"}
    assert (g0["block_size"], g0["index_bits"], g0["num_values"], g0["num_blocks"], g0["hashing"]) == (4, 5, 10, 3, False)
    assert g0["tensors"] == ["w0"]
    assert g1["mu"] == 0.5 and g1["sigma"] == 0.25 and g1["layout"] == {"kind": "affine", "a": 3, "c": 1}
    assert (g1["hashing"], g1["weights"], g1["num_values"]) == (True, 20, 8)
    assert [(t["name"], t["shape"], t["encoding"], t["dtype"]) for t in d["tensors"]] == [
        ("w0", [2, 5], "coded", "float32"), ("w1", [4, 5], "coded", "float32"),
        ("b", [3], "raw", "float32"), ("m", [2, 2], "raw", "bool")]
    assert d["tensors"][1]["group"] == 1 and d["tensors"][3]["section"] == 2
    assert d["graph"]["present"] and d["graph"]["bytes"] > 0 and d["graph"]["opset"] == {"ai.onnx": 18}
    assert d["metadata"] == {"k": "v", "author": "test"}


def test_info_without_groups_or_graph(tmp_path):
    path = tmp_path / "raw.mrc"
    save(Container(seed=3, tensors=[Tensor("odd\nname", (), "raw", dtype="int32", data=np.array(5, dtype=np.int32))]), path)
    r = run("info", path)
    assert r.exit_code == 0, r.output
    assert "graph           none" in r.stdout and "'odd\\nname'" in r.stdout and "scalar" in r.stdout
    d = json.loads(run("info", "--json", path).stdout)
    assert d["groups"] == [] and d["graph"] == {"present": False} and d["index_payload_bytes"] == 0


def test_info_corrupt_file(files):
    _, bad = files
    r = run("info", bad)
    assert_clean_error(r, str(bad), "trailing-bytes", f"offset {len(BASE)}", code=1)


def test_info_missing_file(tmp_path):
    r = run("info", tmp_path / "nope.mrc")
    assert r.exit_code == 2 and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------------- validate


def test_validate_ok(files):
    good, _ = files
    r = run("validate", good, good)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"{good}: ok", f"{good}: ok"]


def test_validate_problems(files, tmp_path):
    good, bad = files
    r = run("validate", good, bad)
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0] == f"{good}: ok"
    assert lines[1] == f"{bad}: trailing-bytes at offset {len(BASE)}: 1 bytes after the end of the last structure"
    # several problems of one file: one line each, header field paths as `where`
    from test_corrupt import _do, _set, header_case

    multi = tmp_path / "multi.mrc"
    multi.write_bytes(header_case(_do(_set("groups.0.sigma", 0), _set("metadata.k", 3)))())
    r = run("validate", multi)
    assert r.exit_code == 1
    assert r.stdout.splitlines() == [
        f"{multi}: metadata at metadata.k: metadata value must be a string, found int",
        f"{multi}: coding-parameter at groups[0].sigma: sigma bits 0x0000 are not a positive bfloat16 in [2^-64, 2^64]",
    ]


def test_validate_json(files, tmp_path):
    good, bad = files
    missing = tmp_path / "missing.mrc"
    r = run("validate", "--json", good, bad, missing)
    assert r.exit_code == 2  # the missing file
    d = json.loads(r.stdout)
    assert [(x["file"], x["valid"]) for x in d] == [(str(good), True), (str(bad), False), (str(missing), False)]
    assert d[0]["problems"] == []
    assert d[1]["problems"] == [{"code": "trailing-bytes", "error": "TrailingBytesError", "where": len(BASE),
                                 "message": "1 bytes after the end of the last structure"}]
    assert d[2]["problems"][0]["code"] == "read-error"
    r = run("validate", "--json", good)
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["valid"] is True
    assert run("validate", "--json", good, bad).exit_code == 1


def test_validate_unreadable_and_empty(tmp_path):
    empty = tmp_path / "empty.mrc"
    empty.write_bytes(b"")
    r = run("validate", empty, tmp_path)
    assert r.exit_code == 2  # one path could not be read (a directory): an I/O error outranks an invalid file
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{empty}: truncated at offset 0:")
    assert lines[1].startswith(f"{tmp_path}: read-error")


def test_validate_needs_a_file():
    assert run("validate").exit_code == 2


def test_validate_no_graph_flag(tmp_path):
    from test_corrupt import graph_case, undefined_input_graph

    path = tmp_path / "g.mrc"
    path.write_bytes(graph_case(undefined_input_graph())())
    assert run("validate", path).exit_code == 1
    assert run("validate", "--no-graph", path).exit_code == 0


# ---------------------------------------------------------------------------------------------- decode


def test_decode_npz(files, tmp_path):
    good, _ = files
    out = tmp_path / "w.npz"
    r = run("decode", good, "-o", out)
    assert r.exit_code == 0, r.output
    assert "4 tensors" in r.stdout
    want = decode(from_bytes(BASE))
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(want)
        for name, arr in want.items():
            got = z[name]
            if name == "m":
                assert got.dtype == np.bool_ and got.tolist() == [[True, False], [False, True]]
            else:
                assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes()
        assert z["w0"].dtype == np.float32 and z["w0"].shape == (2, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mrc", "good.mrc", "w.npz"]  # no temp files left


def test_decode_awkward_names_and_dtypes(tmp_path):
    tensors = [Tensor("file", (2,), "raw", dtype="float32", data=np.array([1, 2], dtype=np.float32)),
               Tensor("a/b.c", (1, 2), "raw", dtype="bfloat16", data=np.array([[0x3F80, 0x4000]], dtype=np.uint16)),
               Tensor("ünï", (), "raw", dtype="int64", data=np.array(-7))]
    src = tmp_path / "n.mrc"
    save(Container(seed=1, tensors=tensors), src)
    out = tmp_path / "n.npz"
    r = run("decode", src, "--output", out)
    assert r.exit_code == 0, r.output
    with np.load(out, allow_pickle=False) as z:
        assert z["file"].tolist() == [1.0, 2.0]
        assert z["a/b.c"].dtype == np.uint16 and z["a/b.c"].tolist() == [[0x3F80, 0x4000]]
        assert z["ünï"].shape == () and int(z["ünï"]) == -7


def test_decode_corrupt_file(files, tmp_path):
    _, bad = files
    out = tmp_path / "w.npz"
    r = run("decode", bad, "-o", out)
    assert_clean_error(r, "trailing-bytes", code=1)
    assert not out.exists()


def test_decode_unwritable_output(files, tmp_path):
    good, _ = files
    r = run("decode", good, "-o", tmp_path / "no" / "such" / "dir" / "w.npz")
    assert_clean_error(r, "cannot write")


def test_decode_requires_output(files):
    good, _ = files
    assert run("decode", good).exit_code == 2


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("self_decoding", [False, True])
def test_export(files, tmp_path, self_decoding):
    pytest.importorskip("mrcformat_runtime.onnx_export")
    onnx = pytest.importorskip("onnx")
    good, _ = files
    out = tmp_path / "m.onnx"
    args = ["export", good, "-o", out] + (["--self-decoding"] if self_decoding else [])
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert f"bytes to {out}" in r.stdout and out.exists()
    assert f"wrote {out.stat().st_size} bytes" in r.stdout
    onnx.load(str(out))


def test_export_two_step(tmp_path):
    """`mrc export --two-step`: the network to -o, the decoder to the named file; run as a user would, they
    regenerate the reference bits and give the plain export's outputs."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("mrcformat_runtime.onnx_export")
    src = ROOT / "spec" / "vectors" / "mlp_graph.mrc"
    net, weights, plain = tmp_path / "n.onnx", tmp_path / "w.onnx", tmp_path / "p.onnx"
    r = run("export", src, "-o", net, "--two-step", weights)
    assert r.exit_code == 0, r.output
    assert f"wrote {weights.stat().st_size} bytes to {weights}" in r.stdout
    assert f"wrote {net.stat().st_size} bytes to {net}" in r.stdout
    assert run("export", src, "-o", plain).exit_code == 0
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    dec = ort.InferenceSession(str(weights), so, providers=["CPUExecutionProvider"])
    fed = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {})))
    ref = decode(from_bytes(src.read_bytes()))
    assert sorted(fed) == ["fc1.weight", "fc2.weight"]
    for name, got in fed.items():
        assert got.tobytes() == np.asarray(ref[name]).tobytes(), name
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    got, = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"]).run(None, {**fed, "x": x})
    want, = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_two_step_refusals(tmp_path):
    pytest.importorskip("mrcformat_runtime.onnx_export")
    mlp = ROOT / "spec" / "vectors" / "mlp_graph.mrc"
    raw_only = ROOT / "spec" / "vectors" / "widening_stubs.mrc"  # its graph reads raw tensors only
    net, weights = tmp_path / "n.onnx", tmp_path / "w.onnx"
    assert_clean_error(run("export", raw_only, "-o", net, "--two-step", weights), "reads no coded tensor")
    for args, needle in ((["--two-step", net], "other than --output"),
                         (["--two-step", weights, "--self-decoding"], "choose one")):
        r = run("export", mlp, "-o", net, *args)
        assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_export_without_graph(tmp_path):
    pytest.importorskip("mrcformat_runtime.onnx_export")
    src = tmp_path / "ng.mrc"
    save(Container(seed=1, tensors=[Tensor("x", (2,), "raw", dtype="float32", data=np.zeros(2, np.float32))]), src)
    r = run("export", src, "-o", tmp_path / "x.onnx")
    assert_clean_error(r, "graph", code=1)


def test_export_corrupt_file(files, tmp_path):
    pytest.importorskip("mrcformat_runtime.onnx_export")
    _, bad = files
    assert_clean_error(run("export", bad, "-o", tmp_path / "x.onnx"), "trailing-bytes", code=1)


def test_export_module_missing(files, tmp_path, monkeypatch):
    good, _ = files
    monkeypatch.setitem(sys.modules, "mrcformat_runtime.onnx_export", None)  # import now fails
    r = run("export", good, "-o", tmp_path / "x.onnx")
    assert_clean_error(r, "ONNX export is not available")
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------------------------------------- misc


def test_help_and_version():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("info", "validate", "decode", "export"):
        assert cmd in r.stdout
    r = run("--version")
    assert r.exit_code == 0 and "0.1.0" in r.stdout


def test_base_file_matches_container():
    assert to_bytes(base_container()) == BASE


def test_cli_asks_torch_for_huge_pages(tmp_path):
    """The `mrc` process sets THP_MEM_ALLOC_ENABLE before torch is imported (training steps page-fault
    8x less), and leaves a value the user chose alone."""
    import os
    import subprocess
    from pathlib import Path

    f = tmp_path / "a.mrc"
    save(base_container(), f)
    code = ("import os, sys; from mrcformat.cli import main\n"
            "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "print('THP=' + os.environ.get('THP_MEM_ALLOC_ENABLE', '-'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, env=env, cwd=root)
    assert out.stdout.strip().splitlines()[-1] == "THP=1 False", out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True,
                         env=dict(env, THP_MEM_ALLOC_ENABLE="0"), cwd=root)
    assert out.stdout.strip().splitlines()[-1] == "THP=0 False", out.stdout + out.stderr
