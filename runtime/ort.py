"""Load a `.mrc` file into onnxruntime. Needs only numpy, msgpack, onnx and onnxruntime (never torch).

Plain: the numpy reference decoder regenerates the weights and they are handed to onnxruntime in
memory (as initializers of the serialized model, or, for very large models, as external initializers
added through the session options, which avoids protobuf's 2 GiB limit). Self-decoding: onnxruntime
regenerates the weights itself from the stored indices (`selfdecode.regenerated_weights_model`), in one
run of a session with graph optimisations off, and the inference session gets them as initializers.

Why not simply open the self-decoding model (`selfdecode.self_decoding_model`) with default options:
onnxruntime then constant-folds the decode at session creation and keeps every folded intermediate until
the pass ends; at VGG-16 scale (15M weights) that took 22 s and 6.8 GB in bench/peak_memory.py, against
about 2 s and 0.14 GB for the two-step load here. A standalone self-decoding .onnx shipped to a device
folds the same way; the README shows the two-step pattern for large models.
"""
from __future__ import annotations

import os

import numpy as np

from mrcformat.container import Container

from .onnx_export import decoded_arrays, graph_model, load_container, raw_initializer, referenced_names, serialize

__all__ = ["DEFAULT_EXTERNAL_MIN_BYTES", "DEFAULT_PROVIDERS", "ort_decoded_arrays", "session"]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# Tensors of at least this many bytes go in as external initializers (OrtValues shared with onnxruntime)
# rather than serialized into the model: no protobuf copy, no 2 GiB limit. bench/runtime_load.py measured
# 370 ms instead of 464 ms and less peak memory for a VGG-16 session.
DEFAULT_EXTERNAL_MIN_BYTES = 1 << 20
_EXTERNAL_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64"}


def _external_placeholder(name: str, dtype: str, arr: np.ndarray):
    """A TensorProto that says 'data supplied elsewhere'; onnxruntime replaces it with the OrtValue."""
    from onnx import TensorProto

    t = raw_initializer(name, dtype, np.zeros(0, dtype=arr.dtype))
    del t.dims[:]
    t.dims.extend(int(d) for d in arr.shape)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "mrcformat-runtime-in-memory"
    return t


def ort_decoded_arrays(c: Container, wanted: set[str], providers=None):
    """(tensor, array) pairs like `onnx_export.decoded_arrays`, but computed by onnxruntime itself:
    one run of `regenerated_weights_model` in a session with graph optimisations off."""
    import onnxruntime as ort

    from .selfdecode import regenerated_weights_model

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    decoder = ort.InferenceSession(serialize(regenerated_weights_model(c)), opts,
                                   providers=list(providers) if providers is not None else list(DEFAULT_PROVIDERS))
    names = [o.name for o in decoder.get_outputs()]
    values = dict(zip(names, decoder.run(None, {})))
    del decoder
    for t in c.tensors:
        if t.name in wanted:
            yield t, values.pop(t.name)


def session(src: str | os.PathLike | Container, *, self_decoding: bool = False, providers=None, sess_options=None,
            external_min_bytes: int | None = DEFAULT_EXTERNAL_MIN_BYTES):
    """An onnxruntime.InferenceSession running the file's model.

    src: a path or a Container (the file must have a graph; GraphError otherwise). providers default to
    CPU. Plain mode (default): weights decoded by numpy. `external_min_bytes`: tensors of at least this
    many bytes go in through `sess_options.add_external_initializers` instead of the serialized model
    (None: none; such tensors are added to `sess_options`, a new SessionOptions if none was given). self_decoding=True: the weights are computed by onnxruntime from
    the indices (`ort_decoded_arrays`) instead of numpy; the session is then built the same way.
    """
    import onnxruntime as ort

    providers = list(providers) if providers is not None else list(DEFAULT_PROVIDERS)
    c = load_container(src)
    model = graph_model(c)
    wanted = referenced_names(model.graph) & {t.name for t in c.tensors}
    arrays = ort_decoded_arrays(c, wanted, providers) if self_decoding else decoded_arrays(c, wanted)
    names, values = [], []
    for t, arr in arrays:
        if external_min_bytes is not None and arr.nbytes >= external_min_bytes and t.dtype in _EXTERNAL_DTYPES:
            model.graph.initializer.append(_external_placeholder(t.name, t.dtype, arr))
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
        else:
            model.graph.initializer.append(raw_initializer(t.name, t.dtype, arr))
    if names:
        if sess_options is None:
            sess_options = ort.SessionOptions()
        sess_options.add_external_initializers(names, values)
    sess = ort.InferenceSession(serialize(model), sess_options, providers=providers)
    sess._mrc_external_values = values  # the OrtValues must outlive session creation
    return sess
