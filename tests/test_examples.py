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
    "lenet5-accurate.mrc": (3102, 3100, 66),
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


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("lenet5-pretrained*.safetensors")), ids=lambda p: p.name)
def test_bundled_starting_network_is_as_accurate_as_its_metadata_says(path):
    """The pretrained networks the example starts from carry their test error; README quotes it."""
    from lenet5_mnist import load_pretrained
    from safetensors import safe_open

    from mrcformat.encode.mnist import load_mnist

    with safe_open(str(path), "pt") as f:
        documented = round(float(f.metadata()["test_error_percent"]) * 100)
    model = load_pretrained(path).eval()
    x, y = load_mnist(EXAMPLES / "data", "test")
    with torch.no_grad():
        wrong = int((model(x).argmax(1) != y).sum())
    # stored as float16 after training in float32: allow a borderline image or two
    assert abs(wrong - documented) <= 2, (wrong, documented)


def test_example_runs_end_to_end_from_a_chosen_starting_network(tmp_path):
    """A tiny run of examples/lenet5_mnist.py with --init: the file is valid, its record names the start,
    and the error it reports is the one measured from the file."""
    import json

    from lenet5_mnist import main, test_error_of_file

    out, results = tmp_path / "tiny.mrc", tmp_path / "runs.json"
    record = main(["--budget", "150", "--bits", "8", "--steps", "20", "--retrain-steps", "1",
                   "--blocks-per-round", "40", "--threads", "1", "--no-progress", "--shift", "1", "--noise", "weights",
                   "--channels-last", "--init", str(EXAMPLES / "lenet5-pretrained-shift1.safetensors"),
                   "--out", str(out), "--results", str(results)])
    assert mrcformat.validate_file(out) == []
    assert record["init"] == "lenet5-pretrained-shift1.safetensors" and record["payload_bytes"] <= 150
    assert record["noise"] == "weights" and record["channels_last"] is True
    assert json.loads(results.read_text())[0]["label"] == "tiny"
    assert record["test_error_percent"] == round(test_error_of_file(out)[0], 2)
