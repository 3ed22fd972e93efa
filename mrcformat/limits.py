"""Caps of format version 1 (SPEC.md section 8). Readers reject files that exceed them."""

HEADER_MAX = 16 * 1024 * 1024      # bytes of msgpack header
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_TENSOR_ELEMENTS = 2**31 - 1
MAX_GROUP_WEIGHTS = 2**32 - 1      # elements of all tensors of one group
MAX_NUM_VALUES = 2**31 - 1         # coded values of one group (affine a*i stays < 2**62)
MAX_BLOCK_SIZE = 4096              # slots per block: bounds values per index bit
MAX_HASH_RATIO = 256               # weights per coded value with the hashing trick
MAX_INDEX_BITS = 32
MAX_GROUPS = 65536
MAX_TENSORS = 65536
MAX_NAME_BYTES = 1024
MAX_METADATA_ENTRIES = 4096
MAX_METADATA_KEY_BYTES = 256
ALIGNMENT = 64
MAX_NESTING_DEPTH = 64             # arrays/maps nested in the header, the header map counted as 1

# Not a format cap: the default memory budget of every loader (SPEC.md section 8 lets readers impose
# lower limits). A 600-byte file can legally declare ~2**31 weights; this keeps a hostile file from forcing
# a huge allocation. Each loader counts what it allocates itself against it, before allocating: the file's
# bytes and the decoded tensors (reader, decode); plus the copies handed to torch or onnxruntime and the
# constants the graph creates at load (mrcformat_runtime.load_budget). 2 GiB loads models of up to about
# 250 M float32 weights into torch and about 120 M into onnxruntime (VGG-16, 138 M, needs ~1.2 GiB in
# torch); pass max_decoded_bytes=N (None: no limit) or `mrc ... --max-decoded-bytes 8GiB` for larger ones.
DEFAULT_MAX_DECODED_BYTES = 2**31
