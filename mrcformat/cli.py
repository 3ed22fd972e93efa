"""Command-line tool `mrc`: inspect, validate, decode and export `.mrc` files; compress `.onnx` models.

Exit codes: 0 success; 1 `validate` found problems; 2 the file (or an argument) is unusable:
a one-line message on stderr, never a traceback.
"""
from __future__ import annotations

import json
import sys

import zipfile
from pathlib import Path

import click
import numpy as np

from .atomic import atomic_open
from .container import SAMPLER, Container
from .errors import MrcError
from .validate import validate_file

__all__ = ["info_dict", "main"]

EXIT_PROBLEMS = 1
EXIT_ERROR = 2


def _one_line(s: str) -> str:
    return s.replace("\r", "\\r").replace("\n", "\\n")


def _show(s: str) -> str:
    """A tensor name or metadata string for a table cell: printable as is, escaped otherwise."""
    return s if s.isprintable() else repr(s)


def _fail(message: str) -> None:
    click.echo(f"mrc: error: {_one_line(message)}", err=True)
    sys.exit(EXIT_ERROR)


def _load(path: str) -> tuple[Container, int]:
    from .reader import from_bytes

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        _fail(f"{path}: cannot read: {e.strerror or type(e).__name__}")
    try:
        return from_bytes(data), len(data)
    except MrcError as e:
        _fail(f"{path}: {e}")


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
        echo(f"graph           {g['bytes']} bytes{' (zlib-compressed in the file)' if g['deflated'] else ''}{extra}")
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
    """Inspect, validate, decode and export .mrc files (MIRACLE-compressed networks)."""


_EXISTING = click.Path(exists=True, dir_okay=False)


@main.command()
@click.argument("file", type=_EXISTING)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
def info(file: str, as_json: bool) -> None:
    """Summarise FILE: coding groups, tensors, graph and metadata."""
    c, size = _load(file)
    d = info_dict(c, size)
    if as_json:
        click.echo(json.dumps({"file": file, **d}, indent=2, ensure_ascii=False))
    else:
        _print_info(file, d)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {file, valid, problems}.")
@click.option("--no-graph", is_flag=True, help="Do not check the stored ONNX graph.")
def validate(files: tuple[str, ...], as_json: bool, no_graph: bool) -> None:
    """Check FILE... against every rule of the format; report all problems.

    Exit status 0 when every file is valid, 1 otherwise. One line per problem:
    `FILE: <code> at <where>: <message>`.
    """
    results = []
    for f in files:
        problems = validate_file(f, check_graph=not no_graph)
        results.append({"file": f, "valid": not problems, "problems": [p.to_dict() for p in problems]})
        if not as_json:
            if problems:
                for p in problems:
                    click.echo(f"{f}: {_one_line(str(p))}")
            else:
                click.echo(f"{f}: ok")
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))
    sys.exit(0 if all(r["valid"] for r in results) else EXIT_PROBLEMS)


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
@click.argument("file", type=_EXISTING)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Destination .npz file.")
def decode(file: str, output: str) -> None:
    """Decode every tensor of FILE into an .npz archive.

    Coded tensors come out as float32, raw tensors in their stored dtype (bfloat16 as its
    uint16 bit patterns, bool as numpy bool). Load with numpy.load(OUTPUT) (no pickle needed).
    """
    c, _ = _load(file)
    out = Path(output)
    try:
        n = _write_npz(c, out)
    except (OSError, ValueError) as e:
        _fail(f"{output}: cannot write: {e}")
    click.echo(f"wrote {n} tensors to {output}")


@main.command()
@click.argument("file", type=_EXISTING)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Destination .onnx file.")
@click.option("--self-decoding", is_flag=True,
              help="Embed the decoder in the graph (weights regenerated at load time) instead of decoded weights.")
def export(file: str, output: str, self_decoding: bool) -> None:
    """Export FILE (which must hold a graph) as a standalone ONNX model."""
    try:
        from mrcformat_runtime.onnx_export import export as onnx_export
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        hint = "" if missing.startswith("mrcformat_runtime") else "; install the extra: pip install 'mrcformat[onnx]'"
        _fail(f"ONNX export is not available: {e}{hint}")
    _load(file)  # one clean message for a bad file, before the exporter runs
    try:
        nbytes = onnx_export(file, output, self_decoding=self_decoding)
    except MrcError as e:
        _fail(f"{file}: {e}")
    except OSError as e:
        _fail(f"{output}: cannot write: {e.strerror or e}")
    except ValueError as e:  # e.g. a file without a graph
        _fail(f"{file}: cannot export: {e}")
    click.echo(f"wrote {nbytes} bytes to {output}" + (" (self-decoding)" if self_decoding else ""))


def _budgets(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


@main.command()
@click.argument("model", type=_EXISTING)
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
              help="Smaller float tensors stay in the graph as they are.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option("--json", "as_json", is_flag=True, help="Print the report(s) as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compress(model: str, budget: str | None, budgets: str | None, calibration: str, output: str, index_bits: int,
             importance: str, max_feeds: int, importance_feeds: int, min_elements: int, seed: int, as_json: bool,
             quiet: bool) -> None:
    """Compress an ONNX model (MODEL.onnx) into a .mrc file, without training.

    Weights are coded wherever they live (initializers, Constant nodes, If/Loop/Scan bodies); the graph
    comes back unchanged, so the .mrc runs wherever the original ran (mrc export, or
    mrcformat_runtime.ort.session). Bits go where the calibration inputs show they matter most.
    """
    if (budget is None) == (budgets is None):
        _fail("give exactly one of --budget SIZE or --budgets A,B,C")
    try:
        from .encode import onnx_compress as oc
        from .encode.onnx_ingest import OnnxInputError
    except ImportError as e:
        _fail(f"ONNX compression needs onnx and onnxruntime: {e}; install the extra: pip install 'mrcformat[onnx]'")
    import dataclasses

    opts = dict(index_bits=index_bits, seed=seed)
    try:
        an = oc.analyse(model, calibration, importance=importance, min_elements=min_elements, max_feeds=max_feeds,
                        importance_feeds=importance_feeds, seed=seed, progress=not quiet)
        for note in an.notes:
            click.echo(f"note: {note}", err=True)
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
        click.echo(f"wrote {r.output}: {r.summary()}")
    if budgets is not None:
        click.echo(oc.sweep_table(reports))
        click.echo(f"plot: {Path(output) / 'sweep.png'}")


if __name__ == "__main__":  # pragma: no cover
    main()
