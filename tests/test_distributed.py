"""Coding spread over torch.distributed processes: 2 gloo processes on CPU make the file 1 makes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _run() -> bytes | None:
    """One compress() call on a tiny MLP: sampled choice (every score matters), several blocks of
    two groups per round, hashing, learned allocation."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=gen)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    from mrcformat.encode import compress

    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    result = compress(model, loader, 48, method="mean-var", index_bits=9, steps=12, retrain_steps=1,
                      blocks_per_round=5, seed=7, progress=False, example_input=x[:1], hashing={"0": 2},
                      allocation="kl", alloc_steps=6)
    if result is None:
        return None
    return result.to_bytes()


def _worker(rank: int, world: int, init: str, workdir: str) -> None:
    sys.path.insert(0, str(ROOT))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        data = _run()
        assert (data is None) == (rank != 0)
        if data is not None:
            Path(workdir, "dist.mrc").write_bytes(data)
        dist.barrier()  # both ranks done with their collectives before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_make_the_same_file(tmp_path):
    single = _run()
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "dist.mrc").read_bytes() == single


def _score_worker(rank: int, world: int, init: str, out: str, counts: list[int]) -> None:
    import numpy as np

    from mrcformat.encode.distributed import CodingGroup

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = CodingGroup()
        seen = []

        def scorer(seed, gid, blocks, block_size, sigma_p, mean, log_std, valid, start, n):
            seen.append((start, n))
            return np.add.outer(np.arange(len(blocks)) * 1e6, np.arange(start, start + n, dtype=np.float64))

        assert g.broadcast_ints([5, 6] if rank == 0 else None, 2) == [5, 6]
        for count in counts:
            seen.clear()
            got = g.scores(scorer, 0, 0, [4, 9], 3, 1.0, None, None, None, count)
            np.save(Path(out, f"rank{rank}-{count}.npy"), got)
            np.save(Path(out, f"seen{rank}-{count}.npy"), np.array(seen, dtype=np.int64).reshape(-1, 2))
    finally:
        dist.destroy_process_group()


def test_three_ranks_share_every_candidate_once(tmp_path):
    """Each rank scores one contiguous share (uneven when 3 does not divide the count, none at all for
    a rank past the end); every rank ends with all scores in index order."""
    import numpy as np

    counts = [2, 5, 512]
    mp.spawn(_score_worker, args=(3, f"file://{tmp_path / 'rv'}", str(tmp_path), counts), nprocs=3, join=True)
    for count in counts:
        want = np.add.outer([0.0, 1e6], np.arange(count, dtype=np.float64))
        shares = []
        for rank in range(3):
            assert np.array_equal(np.load(tmp_path / f"rank{rank}-{count}.npy"), want)
            shares += [tuple(r) for r in np.load(tmp_path / f"seen{rank}-{count}.npy")]
        covered = sorted(i for start, n in shares for i in range(start, start + n))
        assert covered == list(range(count))
