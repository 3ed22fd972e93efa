"""The bundled compressed LeNet-5 files: valid, within their budgets, and as accurate as README says.

The errors below are what README.md and bench/results/lenet5_mnist.md report; they are measured here
from the files alone (numpy decoder + the example's torch model), so a file and its documentation
cannot drift apart.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import mrcformat

torch = pytest.importorskip("torch")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

BUNDLED = {  # file: (index budget in bytes, index payload, test errors out of 10,000)
    "lenet5-small.mrc": (1556, 1528, 96),
    "lenet5-accurate.mrc": (3102, 3100, 73),
}


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_file_is_valid_small_and_as_accurate_as_documented(name):
    from lenet5_model import LeNet5

    from mrcformat.encode.mnist import load_mnist

    budget, payload, errors = BUNDLED[name]
    path = EXAMPLES / name
    assert mrcformat.validate_file(path) == []
    c = mrcformat.load(path)
    assert sum(g.payload_length for g in c.groups) == payload <= budget
    model = LeNet5()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mrcformat.decode(c).items()})
    x, y = load_mnist(EXAMPLES / "data", "test")
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 2500]).argmax(1) for i in range(0, len(x), 2500)])
    # float32 convolutions may differ in the last bits between CPUs: allow a borderline image or two
    assert abs(int((pred != y).sum()) - errors) <= 2
