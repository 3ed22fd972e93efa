"""One exception hierarchy for every way a `.mrc` file can be wrong (SPEC.md section 9).

Every class names one kind of failure; each instance says *what* is wrong and *where*
(a byte offset or a header field path such as ``tensors[3].shape[1]``). Readers raise
the first problem found; the validator collects them all.
"""
from __future__ import annotations

__all__ = [
    "MrcError", "BadMagicError", "UnsupportedVersionError", "TruncatedError", "TrailingBytesError",
    "HeaderSizeError", "HeaderDecodeError", "ChecksumError", "FieldTypeError", "MissingFieldError",
    "UnknownFieldError", "FieldValueError", "LimitError", "ShapeError", "DuplicateNameError",
    "UnknownEncodingError", "UnknownDTypeError", "UnknownSamplerError", "IndexWidthError",
    "BlockSizeError", "CodingParameterError", "LayoutParameterError", "HashingError",
    "ScalesError", "SectionLayoutError", "PaddingError", "SectionReferenceError", "SectionLengthError",
    "IndexPayloadError", "MetadataError", "GraphError", "ExternalDataError", "TableError", "ReadError",
    "InternalError", "ReservedError", "GroupReferenceError", "RawValueError", "RuntimeGraphError", "UnsupportedGraphError",
]


class MrcError(ValueError):
    """Base of every format error. `where` is a byte offset (int) or a header field path (str)."""

    code = "mrc-error"

    def __init__(self, message: str, where: str | int | None = None):
        self.message = message
        self.where = where
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.where is None:
            return f"{self.code}: {self.message}"
        loc = f"offset {self.where}" if isinstance(self.where, int) else self.where
        return f"{self.code} at {loc}: {self.message}"

    def to_dict(self) -> dict:
        return {"code": self.code, "error": type(self).__name__, "where": self.where, "message": self.message}


def _kind(name: str, code: str, doc: str) -> type[MrcError]:
    cls = type(name, (MrcError,), {"code": code, "__doc__": doc})
    return cls


BadMagicError = _kind("BadMagicError", "bad-magic", "The file does not start with the .mrc magic bytes.")
UnsupportedVersionError = _kind("UnsupportedVersionError", "unsupported-version", "Major version this reader does not implement.")
TruncatedError = _kind("TruncatedError", "truncated", "The file ends before a structure it declares.")
TrailingBytesError = _kind("TrailingBytesError", "trailing-bytes", "Bytes after the last section.")
HeaderSizeError = _kind("HeaderSizeError", "header-size", "Header length is zero, over the cap, or beyond the file.")
HeaderDecodeError = _kind("HeaderDecodeError", "header-decode", "Header bytes are not one well-formed msgpack map.")
ChecksumError = _kind("ChecksumError", "checksum", "A CRC-32 does not match the bytes it covers.")
FieldTypeError = _kind("FieldTypeError", "field-type", "A header field has the wrong msgpack type.")
MissingFieldError = _kind("MissingFieldError", "missing-field", "A required header field is absent.")
UnknownFieldError = _kind("UnknownFieldError", "unknown-field", "A header field this version does not define.")
FieldValueError = _kind("FieldValueError", "field-value", "A header field has a value outside its domain.")
LimitError = _kind("LimitError", "limit", "A count or size exceeds a cap of the format or of the reader.")
ShapeError = _kind("ShapeError", "shape", "A tensor shape is negative, too large, or overflows.")
DuplicateNameError = _kind("DuplicateNameError", "duplicate-name", "Two tensors share a name. (A repeated header map key is a header-decode error.)")
UnknownEncodingError = _kind("UnknownEncodingError", "unknown-encoding", "A tensor encoding this version does not define.")
UnknownDTypeError = _kind("UnknownDTypeError", "unknown-dtype", "A raw tensor dtype this version does not define.")
UnknownSamplerError = _kind("UnknownSamplerError", "unknown-sampler", "A sampler this version does not define.")
IndexWidthError = _kind("IndexWidthError", "index-width", "index_bits outside 1..32.")
BlockSizeError = _kind("BlockSizeError", "block-size", "block_size outside 1..4096.")
CodingParameterError = _kind("CodingParameterError", "coding-parameter", "mu/sigma not finite, out of range, or not representable as specified.")
LayoutParameterError = _kind("LayoutParameterError", "layout-parameter", "Block layout parameters that do not define a bijection.")
HashingError = _kind("HashingError", "hashing", "num_values inconsistent with the group's weight count.")
ScalesError = _kind("ScalesError", "scales", "A group's scales (1.1): count not dividing num_values, used with hashing, or invalid values.")
SectionLayoutError = _kind("SectionLayoutError", "section-layout", "Sections overlap, are out of order, leave gaps, or lie outside the file.")
PaddingError = _kind("PaddingError", "padding", "Alignment padding or unused index bits are not zero.")
SectionReferenceError = _kind("SectionReferenceError", "section-reference", "A section is referenced twice, never, by the wrong kind, or does not exist.")
SectionLengthError = _kind("SectionLengthError", "section-length", "A section's length differs from what its content requires.")
IndexPayloadError = _kind("IndexPayloadError", "index-payload", "The packed index payload is too short or too long.")
MetadataError = _kind("MetadataError", "metadata", "Metadata is not a map of strings to strings, or too large.")
GraphError = _kind("GraphError", "graph", "The architecture graph is malformed or inconsistent with the tensors.")
ExternalDataError = _kind("ExternalDataError", "external-data", "The graph refers to data outside the file.")
ReadError = _kind("ReadError", "read-error", "The file could not be opened or read (missing, a directory, no permission).")
InternalError = _kind("InternalError", "internal-error", "The reader failed in an unforeseen way: a bug, reported instead of raised.")
ReservedError = _kind("ReservedError", "reserved", "The preamble's reserved word is not zero.")
GroupReferenceError = _kind("GroupReferenceError", "group-reference", "A coded tensor's group index names no group.")
RawValueError = _kind("RawValueError", "raw-value", "A raw tensor's bytes are not a value of its dtype (a bool byte other than 0 or 1).")
TableError = _kind("TableError", "table", "The installed sampler table does not match its specified SHA-256.")

# Not file-format codes (SPEC 9 does not list them): raised by the loaders of mrcformat_runtime when a
# graph the reader accepted cannot be run; the runtime's own message is kept in `message`.
class RuntimeGraphError(GraphError):
    """onnxruntime (or the torch converter) refused a graph that passed the reader's checks."""

    code = "graph-runtime"


class UnsupportedGraphError(RuntimeGraphError, NotImplementedError):
    """The graph uses an operator or attribute form a loader does not implement (torch: `load_module`)."""

    code = "graph-unsupported"
