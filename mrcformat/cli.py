"""Command-line tool `mrc`: inspect, validate, decode and export `.mrc` files; compress `.onnx` models.

Exit codes: 0 success (a valid file); 1 an invalid file (a format error, or over the memory budget);
2 a usage or I/O error (bad arguments, a path that cannot be read or written, not a regular file).
Errors are one line on stderr, never a traceback. Input paths must be regular files; outputs are
written atomically and must be absent or regular files (never a symbolic link or a device).
"""
from __future__ import annotations

import json
import os
import sys

import zipfile
from pathlib import Path

import click
import numpy as np

from . import limits as L
from .atomic import atomic_open, check_replaceable
from .container import SAMPLER, Container
from .errors import MrcError, ReadError
from .fileread import read_file
from .validate import validate_bytes

__all__ = ["info_dict", "main"]

EXIT_INVALID = 1
EXIT_PROBLEMS = EXIT_INVALID
EXIT_ERROR = 2


def _one_line(s: str) -> str:
    return s.replace("\r", "\\r").replace("\n", "\\n")


def _show(s: str) -> str:
    """A tensor name or metadata string for a table cell: printable as is, escaped otherwise."""
    return s if s.isprintable() else repr(s)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"mrc: error: {_one_line(message)}", err=True)
    sys.exit(code)


def _fail_file(path: str, e: MrcError) -> None:
    """A file error: exit 2 when it cannot be read at all, 1 when it was read and is invalid."""
    _fail(f"{path}: {e}", EXIT_ERROR if isinstance(e, ReadError) else EXIT_INVALID)


def _load(path: str, budget: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> tuple[Container, int]:
    from .reader import from_bytes

    try:
        data = read_file(path, max_bytes=budget)
        return from_bytes(data, max_decoded_bytes=budget), len(data)
    except MrcError as e:
        _fail_file(path, e)


def _output(path: str) -> Path:
    """The output path, refused at once unless absent or a regular file (see `atomic.check_replaceable`)."""
    try:
        check_replaceable(path)
    except OSError as e:
        _fail(f"{path}: cannot write: {e.strerror or e}")
    return Path(path)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_bytes(text: str) -> int | None:
    """'2GiB', '512MiB', '1.5GB', '1048576' -> bytes; 'none' or 'unlimited' -> None (no budget)."""
    t = text.strip().lower().replace(" ", "")
    if t in ("none", "unlimited"):
        return None
    num = t.rstrip("kmgtib")
    unit = t[len(num):]
    if unit not in _UNITS:
        raise ValueError(f"unknown unit in {text!r} (use B, KiB, MiB, GiB, KB, MB, GB)")
    try:
        value = float(num) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 2GiB, 512MiB, 1048576, none)") from None
    if not value >= 0 or value != value or value > 2**63:
        raise ValueError(f"{text!r} is not a size")
    return int(value)


class _ByteSize(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        try:
            return parse_bytes(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _budget_option(f):
    return click.option(
        "--max-decoded-bytes", "budget", type=_ByteSize(), default=str(L.DEFAULT_MAX_DECODED_BYTES),
        show_default=f"{L.DEFAULT_MAX_DECODED_BYTES / 2**30:g}GiB",
        help="Memory budget of the load: the most bytes it may allocate (file, decoded tensors, the copies "
             "handed on, constants the graph creates); a larger file is refused (exit 1). 'none': no limit.")(f)


# ---------------------------------------------------------------------------------------------- info

def _graph_info(graph: bytes | None, deflated: bool = False) -> dict:
    if graph is None:
        return {"present": False}
    out: dict = {"present": True, "bytes": len(graph), "deflated": deflated}
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is optional
        return out
    model = onnx.ModelProto.FromString(graph)  # already checked by the reader
    out["opset"] = {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import}
    out["ir_version"] = int(model.ir_version)
    out["nodes"] = len(model.graph.node)
    out["inputs"] = [i.name for i in model.graph.input]
    out["outputs"] = [o.name for o in model.graph.output]
    return out


def _placements(c: Container) -> dict[str, str]:
    """Where each file tensor goes in the graph (format 1.1 stubs), e.g. "constant at graph/node[2]:If_0...";
    empty when the file has no stub (tensors are then top-level initializers)."""
    if c.graph is None or tuple(c.version) < (1, 1):
        return {}
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is optional
        return {}
    from .onnx_graphs import find_stubs

    stubs, _ = find_stubs(onnx.ModelProto.FromString(c.graph).graph, {t.name for t in c.tensors})
    return {s.name: f"{s.kind} at {s.path}" for s in stubs}


def info_dict(c: Container, file_size: int) -> dict:
    """Everything `mrc info` shows, as plain JSON-able values."""
    groups = []
    for gi, g in enumerate(c.groups):
        members = c.group_members(gi)
        layout = {"kind": g.layout.kind}
        if g.layout.kind == "affine":
            layout.update(a=g.layout.a, c=g.layout.c)
        groups.append({
            "index": gi, "mu": float(g.mu), "sigma": float(g.sigma),
            "mu_bits": f"0x{g.mu_bits:08x}", "sigma_bits": f"0x{g.sigma_bits:04x}",
            "block_size": g.block_size, "index_bits": g.index_bits, "num_values": g.num_values,
            "num_blocks": g.num_blocks, "weights": sum(t.numel for t in members),
            "payload_bytes": g.payload_length, "layout": layout, "hashing": bool(g.hashing),
            "tensors": [t.name for t in members], "scales": 0 if g.scales is None else int(len(g.scales)),
        })
    places = _placements(c)
    tensors = []
    for t in c.tensors:
        entry = {"name": t.name, "shape": list(t.shape), "numel": t.numel, "encoding": t.encoding, "dtype": t.dtype}
        if t.encoding == "coded":
            entry["group"] = t.group
            g = c.groups[t.group]
            entry["bits_per_weight"] = g.num_blocks * g.index_bits / max(1, c.group_weights(t.group))
        else:
            entry["section"] = t.section
        if places:
            entry["placed"] = places.get(t.name, "top-level initializer")
        tensors.append(entry)
    payload_bits = sum(g.num_blocks * g.index_bits for g in c.groups)
    return {
        "version": f"{c.version[0]}.{c.version[1]}",
        "sampler": SAMPLER,
        "seed": int(c.seed),
        "file_bytes": file_size,
        "index_payload_bytes": sum(g.payload_length for g in c.groups),
        "index_payload_bits": payload_bits,
        "coded_weights": sum(t.numel for t in c.tensors if t.encoding == "coded"),
        "coded_values": sum(g.num_values for g in c.groups),
        "raw_elements": sum(t.numel for t in c.tensors if t.encoding == "raw"),
        "raw_bytes": sum(t.data.nbytes for t in c.tensors if t.encoding == "raw" and t.data is not None),
        "groups": groups,
        "tensors": tensors,
        "graph": _graph_info(c.graph, c.graph_deflate),
        "metadata": dict(c.metadata),
    }


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _print_info(path: str, d: dict) -> None:
    echo = click.echo
    echo(f"file            {path}")
    echo(f"format version  {d['version']}")
    echo(f"sampler         {d['sampler']}")
    echo(f"seed            {d['seed']} (0x{d['seed']:016x})")
    echo(f"file size       {d['file_bytes']} bytes")
    bits, cw = d["index_payload_bits"], d["coded_weights"]
    rate = f", {bits / cw:.4g} bits/weight" if cw else ""
    echo(f"index payload   {d['index_payload_bytes']} bytes ({bits} bits{rate})")
    echo(f"coded weights   {cw} ({d['coded_values']} coded values)")
    echo(f"raw elements    {d['raw_elements']} ({d['raw_bytes']} bytes)")
    g = d["graph"]
    if g["present"]:
        extra = ""
        if "opset" in g:
            extra = ", opset " + ", ".join(f"{k} {v}" for k, v in sorted(g["opset"].items())) + f", {g['nodes']} nodes"
        echo(f"graph           {g['bytes']} bytes{' uncompressed (stored zlib-compressed)' if g['deflated'] else ''}{extra}")
    else:
        echo("graph           none")
    if d["groups"]:
        echo("")
        echo(f"groups ({len(d['groups'])})")
        rows = []
        for gr in d["groups"]:
            lay = gr["layout"]
            layout = "contiguous" if lay["kind"] == "contiguous" else f"affine a={lay['a']} c={lay['c']}"
            rows.append([str(gr["index"]), f"{gr['mu']:.6g}", f"{gr['sigma']:.6g}", str(gr["block_size"]),
                         str(gr["index_bits"]), str(gr["num_values"]), str(gr["weights"]), str(gr["num_blocks"]),
                         layout, "yes" if gr["hashing"] else "no", str(gr["scales"] or "-"),
                         ", ".join(_show(n) for n in gr["tensors"])])
        for line in _table(rows, ["#", "mu", "sigma", "block", "bits", "values", "weights", "blocks",
                                  "layout", "hashing", "scales", "tensors"]):
            echo("  " + line)
    if d["tensors"]:
        echo("")
        echo(f"tensors ({len(d['tensors'])})")
        rows = [[_show(t["name"]), "x".join(map(str, t["shape"])) or "scalar", str(t["numel"]), t["encoding"], t["dtype"],
                 f"group {t['group']}" if t["encoding"] == "coded" else f"section {t['section']}",
                 f"{t['bits_per_weight']:.3g}" if "bits_per_weight" in t else "-"]
                + ([_show(t["placed"])] if "placed" in t else [])
                for t in d["tensors"]]
        header = ["name", "shape", "elements", "encoding", "dtype", "source", "bits/w"]
        for line in _table(rows, header + (["placed in graph"] if any("placed" in t for t in d["tensors"]) else [])):
            echo("  " + line)
    if d["metadata"]:
        echo("")
        echo(f"metadata ({len(d['metadata'])})")
        for k, v in sorted(d["metadata"].items()):
            echo(f"  {_show(k)} = {_show(v)}")


# ---------------------------------------------------------------------------------------------- commands

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mrcformat", prog_name="mrc")
def main() -> None:
    """Inspect, validate, decode and export .mrc files (MIRACLE-compressed networks).

    \b
    Exit status (every command):
      0  success; for validate: every file is valid
      1  an invalid file: a format error, or a file over the memory budget
      2  a usage or I/O error: bad arguments, a path that cannot be read or
         written, or that is not a regular file (FIFO, device, directory,
         a symbolic link as output)
    Errors are one line on stderr: "mrc: error: PATH: CODE at WHERE: MESSAGE".
    """
    # torch's CPU allocator asks Linux for transparent huge pages only when this is set, and training
    # writes fresh activation-sized tensors every step: page faults per step 8x fewer, steps 3-11% faster
    # (bench/results/train_step.md). Read by torch at its first allocation; torch is imported later.
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


# Existence and kind are checked by fileread.read_file (one-line ReadError, exit 2), not by click.
_INPUT = click.Path()
# Kind and replaceability are checked by `_output` (atomic.check_replaceable), with a one-line error.
_OUTPUT = click.Path()


@main.command()
@click.argument("file", type=_INPUT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@_budget_option
def info(file: str, as_json: bool, budget: int | None) -> None:
    """Summarise FILE: coding groups, tensors, graph and metadata."""
    c, size = _load(file, budget)
    d = info_dict(c, size)
    if as_json:
        click.echo(json.dumps({"file": file, **d}, indent=2, ensure_ascii=False))
    else:
        _print_info(file, d)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {file, valid, problems}.")
@click.option("--no-graph", is_flag=True, help="Do not check the stored ONNX graph.")
@_budget_option
def validate(files: tuple[str, ...], as_json: bool, no_graph: bool, budget: int | None) -> None:
    """Check FILE... against every rule of the format; report all problems.

    Exit status 0 when every file is valid, 1 when one is invalid, 2 when one cannot be read
    (read-error: missing, no permission, not a regular file). One line per problem:
    `FILE: <code> at <where>: <message>`.
    """
    results = []
    unreadable = False
    for f in files:
        try:
            problems = validate_bytes(read_file(f, max_bytes=budget), check_graph=not no_graph,
                                      max_decoded_bytes=budget)
        except MrcError as e:
            problems = [e]
            unreadable |= isinstance(e, ReadError)
        results.append({"file": f, "valid": not problems, "problems": [p.to_dict() for p in problems]})
        if not as_json:
            if problems:
                for p in problems:
                    click.echo(f"{f}: {_one_line(str(p))}")
            else:
                click.echo(f"{f}: ok")
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))
    sys.exit(EXIT_ERROR if unreadable else 0 if all(r["valid"] for r in results) else EXIT_INVALID)


def _write_npz(c: Container, out: Path) -> int:
    """Every tensor into an .npz (the layout np.savez writes: one `<name>.npy` per tensor, no pickle).

    Written through a temporary file and renamed, so a failure never leaves a partial archive.
    np.savez itself is not used because a tensor may be named like one of its parameters ("file").
    """
    from .decoder import iter_decode

    for t in c.tensors:
        if "\0" in t.name:  # zipfile cuts names at NUL
            raise ValueError(f"tensor name {t.name!r} contains NUL and cannot be stored in an .npz")
    n = 0
    with atomic_open(out) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in iter_decode(c):
            t = c.tensor(name)
            if t.encoding == "raw" and t.dtype == "bool":
                arr = arr.view(np.bool_)  # stored as bytes 0/1 (checked by the reader)
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            n += 1
    return n


@main.command()
@click.argument("file", type=_INPUT)
@click.option("-o", "--output", required=True, type=_OUTPUT,
              help="Destination .npz file.")
@_budget_option
def decode(file: str, output: str, budget: int | None) -> None:
    """Decode every tensor of FILE into an .npz archive.

    Coded tensors come out as float32, raw tensors in their stored dtype (bfloat16 as its
    uint16 bit patterns, bool as numpy bool). Load with numpy.load(OUTPUT) (no pickle needed).
    """
    out = _output(output)
    c, _ = _load(file, budget)
    try:
        n = _write_npz(c, out)
    except (OSError, ValueError) as e:
        _fail(f"{output}: cannot write: {e}")
    click.echo(f"wrote {n} tensors to {output}")


@main.command()
@click.argument("file", type=_INPUT)
@click.option("-o", "--output", required=True, type=_OUTPUT,
              help="Destination .onnx file.")
@click.option("--self-decoding", is_flag=True,
              help="Embed the decoder in the graph (weights regenerated at load time) instead of decoded weights.")
@click.option("--two-step", "weights_output", type=_OUTPUT, metavar="WEIGHTS.onnx", default=None,
              help="Write the two-step form for large models and devices: the network (coded tensors as named "
                   "inputs) to --output and, to WEIGHTS.onnx, the decoder that regenerates them (open it with "
                   "graph optimisations off and run it once).")
@_budget_option
def export(file: str, output: str, self_decoding: bool, weights_output: str | None, budget: int | None) -> None:
    """Export FILE (which must hold a graph) as a standalone ONNX model, or as two files (--two-step)."""
    if self_decoding and weights_output:
        raise click.UsageError("--self-decoding and --two-step are two different forms: choose one")
    if weights_output is not None and Path(weights_output).resolve() == Path(output).resolve():
        raise click.UsageError("--two-step needs a path other than --output for the weights file")
    try:
        from mrcformat_runtime.onnx_export import export as onnx_export, export_two_step
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        hint = "" if missing.startswith("mrcformat_runtime") else "; install the extra: pip install 'mrcformat[onnx]'"
        _fail(f"ONNX export is not available: {e}{hint}")
    _output(output)
    if weights_output is not None:
        _output(weights_output)
    c, size = _load(file, budget)  # one clean message for a bad file, before the exporter runs
    try:
        from mrcformat_runtime.load_budget import check_export_budget

        check_export_budget(c, size, budget, self_decoding=self_decoding, two_step=weights_output is not None)
        if weights_output is not None:
            wbytes, nbytes = export_two_step(c, weights_output, output)
            click.echo(f"wrote {wbytes} bytes to {weights_output} (decoder: open with graph optimisations off, "
                       f"run once)")
        else:
            nbytes = onnx_export(c, output, self_decoding=self_decoding)
    except MrcError as e:
        _fail_file(file, e)
    except OSError as e:
        _fail(f"{output}: cannot write: {e.strerror or e}")
    except ValueError as e:  # e.g. a file without a graph
        _fail(f"{file}: cannot export: {e}")
    kind = " (self-decoding)" if self_decoding else " (network: feed it the decoder's outputs)" if weights_output else ""
    click.echo(f"wrote {nbytes} bytes to {output}{kind}")


def _budgets(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--budget", help="Size of the .mrc file: bytes (65536), KiB/MiB (64KiB, 1.5MiB), or bits per coded "
              "weight (2bpw).")
@click.option("--budgets", help="A sweep: comma-separated budgets; writes one file per budget into --output (a "
              "folder), a table (sweep.md) and a plot (sweep.png) there.")
@click.option("--calibration", required=True, type=click.Path(exists=True),
              help="Calibration inputs: an .npz of the model's named inputs (one feed) or a folder of them.")
@click.option("-o", "--output", required=True, type=click.Path(writable=True),
              help="Destination .mrc file (with --budgets: a folder).")
@click.option("--index-bits", default=16, show_default=True, type=click.IntRange(4, 24),
              help="Bits per block index (K = 2^bits candidates per block): more is closer to the rate-distortion "
              "bound and slower (coding time doubles per bit).")
@click.option("--importance", default="activation", show_default=True,
              type=click.Choice(["activation", "channel", "tensor", "uniform"]),
              help="How weights' importance for the output is measured (see mrcformat.encode.importance).")
@click.option("--max-feeds", default=64, show_default=True, type=click.IntRange(1, None),
              help="Calibration feeds used (evenly picked when there are more).")
@click.option("--importance-feeds", default=16, show_default=True, type=click.IntRange(1, None),
              help="Feeds each importance measurement runs over (cost: coded tensors x 2 x this many model runs).")
@click.option("--min-elements", default=64, show_default=True, type=click.IntRange(1, None),
              help="Smaller float tensors are not coded.")
@click.option("--float16/--no-float16", "half", default=True, show_default=True,
              help="Store the float32 tensors that are not coded (>= 32 values) as float16 where the outputs do not "
                   "move (D <= 1e-6 on the calibration inputs; format 1.2), else float32 in the graph.")
@click.option("--state", "state_pairs", multiple=True, metavar="IN=OUT",
              help="A recurrent state: model input IN takes the previous step's output OUT. The calibration "
              "feeds (in file-name order) then run as sequences with the state carried, as the model streams "
              "in use. Repeat for several states.")
@click.option("--sequence-length", type=click.IntRange(1, None),
              help="With --state: steps per calibration sequence (default: all feeds form one sequence).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option("--steps", default=0, show_default=True, type=click.IntRange(0, None),
              help="N > 0: then N steps of MIRACLE training from the post-training file (needs torch; "
                   "mrcformat.encode.onnx_finetune), matching the original's outputs on the calibration inputs "
                   "(with --state: on each calibration sequence run step by step, the state carried).")
@click.option("--noise", type=click.Choice(["local", "weights"]), default="local", show_default=True,
              help="With --steps: training noise. local: a normal per pre-activation of each Linear/Conv (local "
                   "reparameterisation, two products per layer); weights: one weight sample per step (one product "
                   "per Linear/Conv: faster where those carry the work, noise shared by the batch). An ONNX "
                   "model's tensors are sampled once per step either way; on silero-vad weight noise still gave "
                   "lower agreement in all 5 seeds, cause not found (bench/results/silero_finetune_noise.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report(s) as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compress(model: str, budget: str | None, budgets: str | None, calibration: str, output: str, index_bits: int,
             importance: str, max_feeds: int, importance_feeds: int, min_elements: int, half: bool,
             state_pairs: tuple[str, ...], sequence_length: int | None, seed: int, steps: int, noise: str,
             as_json: bool, quiet: bool) -> None:
    """Compress an ONNX model (MODEL.onnx) into a .mrc file, without training.

    Weights are coded wherever they live (initializers, Constant nodes, If/Loop/Scan bodies); the graph
    comes back unchanged, so the .mrc runs wherever the original ran (mrc export, or
    mrcformat_runtime.ort.session). Bits go where the calibration inputs show they matter most.
    """
    if (budget is None) == (budgets is None):
        _fail("give exactly one of --budget SIZE or --budgets A,B,C")
    from .fileread import regular_file_kind

    kind = regular_file_kind(os.stat(model).st_mode)
    if kind is not None:  # a FIFO or a device would block or never end in onnx.load
        _fail(f"{model}: cannot read: it is {kind}, not a regular file")
    try:
        from .encode import onnx_compress as oc
        from .encode.onnx_ingest import OnnxInputError
    except ImportError as e:
        _fail(f"ONNX compression needs onnx and onnxruntime: {e}; install the extra: pip install 'mrcformat[onnx]'")
    import dataclasses

    state = {}
    for pair in state_pairs:
        inp, eq, out = pair.partition("=")
        if not eq or not inp or not out:
            _fail(f"--state {pair}: give it as INPUT=OUTPUT (e.g. --state state=stateN)")
        state[inp] = out
    if sequence_length is not None and not state:
        _fail("--sequence-length needs --state")
    if steps and budgets is not None:
        _fail("--steps works with one --budget")
    if noise != "local" and not steps:
        _fail("--noise sets how --steps trains: give --steps N too")
    opts = dict(index_bits=index_bits, seed=seed)
    try:
        an = oc.analyse(model, calibration, importance=importance, min_elements=min_elements, max_feeds=max_feeds,
                        importance_feeds=importance_feeds, seed=seed, state=state or None,
                        sequence_length=sequence_length, half=half, progress=not quiet)
        for note in an.notes:
            click.echo(f"note: {note}", err=True)
        if budget is not None and steps:
            from .encode.onnx_finetune import finetune_onnx

            tuned = finetune_onnx(an, output, budget, steps=steps, progress=not quiet, noise=noise, **opts)
            if as_json:
                click.echo(json.dumps({**{k: v for k, v in dataclasses.asdict(tuned).items()
                                          if k not in ("post_training", "history")},
                                       "post_training": dataclasses.asdict(tuned.post_training)}, indent=2))
            else:
                click.echo(f"wrote {tuned.output}: {tuned.summary()}")
            return
        if budget is not None:
            reports = [oc.compress_onnx(an, output, budget, progress=not quiet, **opts)]
        else:
            out = Path(output)
            reports = oc.sweep_onnx(an, _budgets(budgets), out_dir=out, plot=out / "sweep.png", progress=not quiet,
                                    **opts)
            (out / "sweep.md").write_text(oc.sweep_table(reports) + "\n", encoding="utf-8")
    except (OnnxInputError, MrcError) as e:
        _fail(str(e))
    except ValueError as e:
        _fail(f"{model}: {e}")
    except OSError as e:
        _fail(f"{output}: cannot write: {e.strerror or e}")
    if as_json:
        click.echo(json.dumps([{k: v for k, v in dataclasses.asdict(r).items()} for r in reports], indent=2))
        return
    for r in reports:
        for note in r.notes[len(an.notes):]:  # the coding's own notes (the analysis's were printed above)
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {r.output}: {r.summary()}")
    if budgets is not None:
        click.echo(oc.sweep_table(reports))
        click.echo(f"plot: {Path(output) / 'sweep.png'}")


if __name__ == "__main__":  # pragma: no cover
    main()
