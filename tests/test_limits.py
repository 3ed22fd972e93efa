"""A small file cannot force a huge allocation: the reader's decoded-size bound."""
import numpy as np
import pytest

import mrcformat as m
from mrcformat.errors import LimitError
from strategies import make_group


def _bomb() -> bytes:
    # 2 blocks x 4096 slots x hashing ratio 256 = 2,097,152 weights (8 MiB) from 1 byte of indices
    g = make_group(2 * 4096, block_size=4096, index_bits=1, rng=np.random.default_rng(0), hashing=True)
    c = m.Container(seed=1, groups=[g], tensors=[m.Tensor("w", (2 * 4096 * 256,), "coded", group=0)])
    return m.to_bytes(c)


def test_reader_rejects_files_decoding_beyond_its_limit():
    data = _bomb()
    assert len(data) < 400
    with pytest.raises(LimitError) as e:
        m.from_bytes(data, max_decoded_bytes=1 << 20)
    assert e.value.where == "tensors"
    assert [type(p) for p in m.validate_bytes(data)] == []  # within the default limit: valid
    c = m.from_bytes(data, max_decoded_bytes=None)
    assert m.decode(c)["w"].nbytes == 8 << 20
