"""Load a `.mrc` file into onnxruntime. Needs only numpy, msgpack, onnx and onnxruntime (never torch).

Plain: the numpy reference decoder regenerates the weights and they are handed to onnxruntime in
memory (as initializers of the serialized model, or, for very large models, as external initializers
added through the session options, which avoids protobuf's 2 GiB limit). Self-decoding: onnxruntime
regenerates the weights itself from the stored indices (`selfdecode.regenerated_weights_model`), in one
run of a session with graph optimisations off, and the inference session gets them as initializers.

Memory (measured with bench/peak_memory.py; onnxruntime 1.32, CPU):

* Every tensor of at least `external_min_bytes` goes in as an external initializer: an OrtValue that
  wraps the decoded numpy array (`OrtValue.ortvalue_from_numpy` shares a CPU array's memory; no copy),
  so no protobuf copy and no serialized copy of it exist. A group is decoded once into one flat buffer
  and its tensors are views of it.
* onnxruntime copies external initializers into its own graph while it loads the model (documented for
  `AddExternalInitializers`, and checked: a session does not see later writes to our arrays). So our
  decoded arrays are dropped as soon as the session exists, unless the caller passed `sess_options`: the
  options then still point at them, and they are kept alive as long as that options object lives. A
  session built with our own options cannot be re-created in place (`set_providers`, run-time provider
  fallback) since that would read the released arrays; make a new one with `session(...)` instead.
* onnxruntime's graph optimisations (default level: all) make transient copies of the weights (fusions,
  layout changes, pre-packing) and free them at the end of session creation, but glibc keeps most of
  that memory mapped: VGG-16 (56 MiB of weights) kept ~200 MiB resident after creation, ~60 MiB of it
  live. `trim=True` (default) hands the free heap pages back (`malloc_trim`, glibc only).

Why not simply open the self-decoding model (`selfdecode.self_decoding_model`) with default options:
onnxruntime then constant-folds the decode at session creation and keeps every folded intermediate until
the pass ends; at VGG-16 scale (15M weights) that took 19.5 s and 3.5 GB (bench/results/device_open.md,
a loaded machine), against 15.3 s and 0.37 GB for the two-step load here. A standalone self-decoding .onnx
shipped to a device folds the same way; for large models ship `onnx_export.export_two_step`'s two files
(README, "Shipping to a device").
"""
from __future__ import annotations

import ctypes
import os
import sys
import weakref

import numpy as np

from mrcformat import limits as L
from mrcformat.container import Container
from mrcformat.errors import MrcError, RuntimeGraphError

from . import load_budget
from .onnx_model import decoded_arrays, fill_stub, graph_model, graph_stubs, raw_initializer, serialize, stub_array, \
    wanted_names

__all__ = ["DEFAULT_EXTERNAL_MIN_BYTES", "DEFAULT_PROVIDERS", "ort_decoded_arrays", "session", "trim_heap"]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# Tensors of at least this many bytes go in as external initializers (OrtValues wrapping the decoded
# arrays) rather than serialized into the model: no protobuf copy, no 2 GiB limit. Smaller ones stay
# inline, where onnxruntime's shape inference can read them (a Reshape's shape, a Clip's bounds).
DEFAULT_EXTERNAL_MIN_BYTES = 1 << 12
_EXTERNAL_DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64"}

# Caller-supplied SessionOptions -> the arrays its external initializers point at (see `session`).
_OPTION_BUFFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def _external_value(arr: np.ndarray):
    """An OrtValue over `arr`'s own memory (C-contiguous, native byte order: no copy for decoded arrays)."""
    import onnxruntime as ort

    if not arr.flags.c_contiguous or not arr.dtype.isnative:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    return ort.OrtValue.ortvalue_from_numpy(arr)


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the operating system (glibc `malloc_trim(0)`); best effort.

    Returns False where there is no such call (not glibc). Only free memory is affected."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    fn(0)
    return True


_SESSION_CLASS = None


def _session_class():
    """onnxruntime.InferenceSession that refuses to be re-created in place once its external
    initializers' arrays were released (re-creation would hand onnxruntime freed memory)."""
    global _SESSION_CLASS
    if _SESSION_CLASS is None:
        import onnxruntime as ort

        class MrcInferenceSession(ort.InferenceSession):
            __doc__ = ort.InferenceSession.__doc__
            _mrc_released = False

            def set_providers(self, providers=None, provider_options=None) -> None:
                if self._mrc_released:
                    raise RuntimeError(
                        "this session's weights were handed to onnxruntime and released after creation, so it "
                        "cannot be re-created in place; build a new one with mrcformat_runtime.ort.session("
                        "src, providers=...) (or pass sess_options to session() to keep them)")
                super().set_providers(providers, provider_options)

        MrcInferenceSession.__qualname__ = MrcInferenceSession.__name__
        _SESSION_CLASS = MrcInferenceSession
    return _SESSION_CLASS


def _ort_call(what: str, fn, *args, **kwargs):
    """Run an onnxruntime call; any exception but ours becomes RuntimeGraphError with onnxruntime's
    message inside (onnxruntime raises its own classes, and UnicodeDecodeError for a message that is not
    UTF-8; MemoryError when a graph asks for more than there is)."""
    try:
        return fn(*args, **kwargs)
    except MrcError:
        raise
    except Exception as e:  # noqa: BLE001  # Fail, InvalidGraph, InvalidArgument, NotImplemented, ...
        raise RuntimeGraphError(f"onnxruntime refused {what}: {type(e).__name__}: {e}", "graph") from e


def _inference_session(cls, data: bytes, options, providers, **kwargs):
    """An InferenceSession without onnxruntime's provider fallback, which prints an "EP Error" banner
    to stdout and retries on another provider; its errors as RuntimeGraphError."""
    return _ort_call("the graph", cls, data, options, providers=providers, enable_fallback=0, **kwargs)


def ort_decoded_arrays(c: Container, wanted: set[str], providers=None):
    """(tensor, array) pairs like `onnx_model.decoded_arrays`, but computed by onnxruntime itself:
    one run of `regenerated_weights_model` in a session with graph optimisations off."""
    import onnxruntime as ort

    from .selfdecode import regenerated_weights_model

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    decoder = _inference_session(ort.InferenceSession, serialize(regenerated_weights_model(c)), opts,
                                 list(providers) if providers is not None else list(DEFAULT_PROVIDERS))
    names = [o.name for o in decoder.get_outputs()]
    values = dict(zip(names, _ort_call("the self-decoding run", decoder.run, None, {})))
    del decoder
    for t in c.tensors:
        if t.name in wanted:
            yield t, values.pop(t.name)


def session(src: str | os.PathLike | Container, *, self_decoding: bool = False, providers=None, sess_options=None,
            external_min_bytes: int | None = DEFAULT_EXTERNAL_MIN_BYTES, trim: bool = True,
            max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES):
    """An onnxruntime.InferenceSession running the file's model.

    src: a path or a Container (the file must have a graph; GraphError otherwise). providers default to
    CPU. Plain mode (default): weights decoded by numpy. self_decoding=True: the weights are computed by
    onnxruntime from the indices (`ort_decoded_arrays`) instead of numpy; the session is then built the
    same way.

    `external_min_bytes`: tensors of at least this many bytes (and of a dtype numpy and onnxruntime share)
    go in as external initializers wrapping the decoded arrays, the others serialized into the model
    (None: all serialized). Without `sess_options` the session gets its own options and the decoded
    arrays are released once it is built (onnxruntime holds its own copy); the returned session then
    cannot be re-created in place (`set_providers` raises; run-time provider fallback is off). With
    `sess_options`, the external initializers are added to it and their arrays live as long as it does
    (a session made from those options, now or later, may read them). `trim`: after creation, give the
    heap's free pages back to the OS (`trim_heap`): what onnxruntime's optimisations freed.

    `max_decoded_bytes`: the memory budget of the load (`load_budget`): the file, the decoded weights,
    onnxruntime's copy of them (2x), the serialized model and the constants the graph makes at load
    (ONNX shape inference); LimitError before anything is decoded when they exceed it. None: no limit.
    A bad file raises an MrcError only: RuntimeGraphError when onnxruntime refuses the graph (its message
    inside); nothing is printed (onnxruntime's provider fallback, which prints a banner, is off).
    """
    import onnxruntime as ort

    providers = list(providers) if providers is not None else list(DEFAULT_PROVIDERS)
    c, file_bytes = load_budget.read_container(src, max_decoded_bytes)
    model = graph_model(c)
    stubs = graph_stubs(c, model)
    wanted = wanted_names(c, model, stubs)
    needed, consts = load_budget.session_bytes(c, file_bytes, model, wanted)
    load_budget.check(needed, max_decoded_bytes, "this onnxruntime session")
    arrays = ort_decoded_arrays(c, wanted, providers) if self_decoding else decoded_arrays(c, wanted)
    names, values = [], []
    top = model.graph
    for t, arr in arrays:
        stub = stubs.get(t.name)
        dtype, arr = stub_array(stub, t, arr)  # 1.2: float16 / bfloat16 into a float32 stub, widened
        # external initializers are looked up among the top graph's initializers only
        external = (external_min_bytes is not None and arr.nbytes >= external_min_bytes
                    and dtype in _EXTERNAL_DTYPES and (stub is None or (stub.node is None and stub.graph is top)))
        if external:
            if stub is not None:  # in place, so the initializers keep their order
                stub.tensor.CopyFrom(_external_placeholder(t.name, dtype, arr))
            else:
                model.graph.initializer.append(_external_placeholder(t.name, dtype, arr))
            names.append(t.name)
            values.append(_external_value(arr))
        elif stub is not None:
            fill_stub(stub, arr)
        else:
            model.graph.initializer.append(raw_initializer(t.name, t.dtype, arr))
    arr = arrays = None
    own_options = sess_options is None
    if own_options:
        sess_options = ort.SessionOptions()
        sess_options.log_severity_level = 4  # fatal only: a refused graph is reported by the exception, not a log line
    if names:
        sess_options.add_external_initializers(names, values)
    data = serialize(model)
    model = None
    extra = {"disabled_optimizers": ["ConstantFolding"]} if consts.unknown else {}
    sess = _inference_session(_session_class(), data, sess_options, providers, **extra)
    data = None
    if own_options:
        # onnxruntime copied the external initializers while loading the model; only a re-creation
        # from `sess_options` (which still points at our arrays) would read them again: forbid it
        sess._mrc_released = True
        sess.disable_fallback()
    elif values:
        _OPTION_BUFFERS.setdefault(sess_options, []).extend(values)
    values = None
    if trim:
        trim_heap()
    return sess
