"""Find every ONNX tensor that points to external data, wherever the model holds it (SPEC.md 7.6: "anywhere").

Not a list of known places (initializers, sparse initializers, node attributes, functions, their
default attributes, training_info, subgraphs of any of them): a walk over every message field of the
ModelProto, by its protobuf descriptor, that stops at each TensorProto. A place that a later ONNX
version adds is covered by the same walk. Iterative, so nesting depth costs no Python stack.
"""
from __future__ import annotations

__all__ = ["external_data_tensors"]

_EXTERNAL = 1  # onnx.TensorProto.DataLocation.EXTERNAL


def _repeated(field) -> bool:
    rep = getattr(field, "is_repeated", None)  # protobuf >= 5.28 (upb); `label` before
    return bool(rep) if rep is not None else field.label == field.LABEL_REPEATED


def external_data_tensors(message) -> list[str]:
    """Names ('<unnamed>' for none) of the TensorProtos inside `message` (any onnx protobuf message,
    usually a ModelProto) whose data lives outside it: data_location EXTERNAL or any external_data entry."""
    found: list[str] = []
    stack = [message]
    while stack:
        m = stack.pop()
        if m.DESCRIPTOR.name == "TensorProto":
            if m.data_location == _EXTERNAL or len(m.external_data):
                found.append(m.name or "<unnamed>")
            continue  # a tensor holds no tensors (its segment and metadata entries are not tensors)
        for field, value in m.ListFields():
            if field.message_type is None:
                continue
            if _repeated(field):
                stack.extend(value)
            else:
                stack.append(value)
    return found
