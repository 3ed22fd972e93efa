"""The batched coder: a round's blocks scored in one call (compiled kernels on CPU, batched torch on
CUDA, the same torch code on CPU here), the same choices as block-by-block coding, on every scorer."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mrcformat import kernels  # noqa: E402
from mrcformat.coder import candidates, choose_index  # noqa: E402
from mrcformat.encode.coding import candidate_scorer, code_block, code_blocks, score_candidates  # noqa: E402
from mrcformat_runtime import torch_decode  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]
GENERATORS = ["auto", "numpy", "torch"] + (["native"] if kernels.available() else [])


def _rows(rng, rows, bsz, pad=3):
    mean = torch.from_numpy(rng.normal(0, 0.05, (rows, bsz)).astype(np.float32))
    log_std = torch.from_numpy(np.log(rng.uniform(0.01, 0.06, (rows, bsz))).astype(np.float32))
    valid = torch.ones(rows, bsz, dtype=torch.bool)
    valid[-1, bsz - pad:] = False
    return mean, log_std, valid


def _reference(seed, gid, blocks, bsz, bits, sp, mean, log_std, valid):
    """Block by block with the encoder's float64 definition (score_candidates)."""
    out = []
    for r, b in enumerate(blocks):
        x = torch.from_numpy(candidates(seed, gid, b, bsz, 0.0, sp, 0, 1 << bits))
        out.append(score_candidates(x, mean[r], log_std[r], valid[r], sp).numpy())
    return np.stack(out)


@pytest.mark.parametrize("generator", GENERATORS)
def test_every_scorer_matches_the_definition(generator):
    rng = np.random.default_rng(1)
    blocks, bsz, bits, sp = [0, 5, 77, 3], 23, 10, 0.0625
    mean, log_std, valid = _rows(rng, len(blocks), bsz)
    want = _reference(11, 4, blocks, bsz, bits, sp, mean, log_std, valid)
    got = candidate_scorer("cpu", generator)(11, 4, blocks, bsz, sp, mean, log_std, valid, 0, 1 << bits)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-11 * (np.abs(want).max() + 1)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("greedy", [True, False])
def test_batched_choices_equal_block_by_block(generator, greedy):
    rng = np.random.default_rng(2)
    blocks, bsz, bits, sp = [9, 2, 40], 16, 9, 0.125
    mean, log_std, valid = _rows(rng, len(blocks), bsz, pad=0)
    lw = _reference(3, 1, blocks, bsz, bits, sp, mean, log_std, valid)
    scorer = candidate_scorer("cpu", generator)
    batch = code_blocks(3, 1, blocks, bsz, bits, sp, mean, log_std, valid, greedy=greedy, scorer=scorer)
    for r, (b, choice) in enumerate(zip(blocks, batch)):
        single = code_block(3, 1, b, bsz, bits, sp, mean[r], log_std[r], valid[r], greedy=greedy, scorer=scorer)
        assert choice.index == single.index == choose_index(lw[r], greedy=greedy, seed=3, group=1, block=b)
        assert torch.equal(choice.values, torch.from_numpy(candidates(3, 1, b, bsz, 0.0, sp, choice.index, 1)[0]))
        assert math.isclose(choice.max_log_weight, lw[r].max(), rel_tol=1e-12, abs_tol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_scorer_does_not_depend_on_the_batch(device):
    """Pairwise sums in a fixed order: a candidate's score has the same bits in any chunking, so
    processes that score different shares agree with one that scores all."""
    rng = np.random.default_rng(3)
    blocks, bsz, sp = [1, 2, 3], 37, 0.03125
    mean, log_std, valid = (t.to(device) for t in _rows(rng, len(blocks), bsz))
    full = torch_decode.score_blocks(5, 2, blocks, bsz, 0.0, sp, mean, log_std, valid, sp, 0, 1000)
    for chunk in (64, 1000, 1 << 20):
        again = torch_decode.score_blocks(5, 2, blocks, bsz, 0.0, sp, mean, log_std, valid, sp, 0, 1000, chunk=chunk)
        part = torch_decode.score_blocks(5, 2, blocks, bsz, 0.0, sp, mean, log_std, valid, sp, 300, 211, chunk=chunk)
        assert torch.equal(again, full) and torch.equal(part, full[:, 300:511])
    ref = kernels.score_blocks(5, 2, blocks, bsz, 0.0, sp, mean.cpu().numpy(), log_std.cpu().numpy(),
                               valid.cpu().numpy(), sp, 0, 1000, backend_choice="numpy")
    assert np.abs(full.cpu().numpy() - ref).max() <= 1e-11 * (np.abs(ref).max() + 1)


@pytest.mark.cuda
@CUDA
def test_cuda_coding_chooses_what_cpu_chooses():
    rng = np.random.default_rng(4)
    blocks, bsz, bits, sp = [0, 1, 2, 3, 4, 5, 6, 7], 64, 16, 0.0625
    mean, log_std, valid = _rows(rng, len(blocks), bsz)
    cpu = code_blocks(9, 3, blocks, bsz, bits, sp, mean, log_std, valid, greedy=True)
    gpu = code_blocks(9, 3, blocks, bsz, bits, sp, mean.cuda(), log_std.cuda(), valid.cuda(), greedy=True)
    assert [c.index for c in cpu] == [c.index for c in gpu]
    assert all(torch.equal(a.values, b.values.cpu()) for a, b in zip(cpu, gpu))
