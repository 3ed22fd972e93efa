"""LeNet-5-Caffe for MNIST (431,080 parameters), with the input normalisation inside the model.

conv 20 5x5 -> maxpool 2 -> conv 50 5x5 -> maxpool 2 -> fc 800-500 -> relu -> fc 500-10.
Input: float32 [N, 1, 28, 28] with pixels in [0, 1]; output: logits [N, 10].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class LeNet5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - MNIST_MEAN) / MNIST_STD
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def pretrain(data_dir: str, out: str, epochs: int = 15, seed: int = 0, threads: int = 2, shift: int = 0) -> None:
    """Train the deterministic network once and store it (float16 safetensors) as the MIRACLE starting point.

    `shift`: augment every batch with random translations of up to this many pixels (0: none).
    """
    import time

    from safetensors.torch import save_file
    from tqdm import tqdm

    from mrcformat.encode.augment import RandomShift
    from mrcformat.encode.mnist import mnist_loaders

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train, test = mnist_loaders(data_dir, batch_size=128, seed=seed)
    model = LeNet5()
    augment = RandomShift(shift)
    noise = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(train))
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        for x, y in tqdm(train, desc=f"epoch {epoch + 1}/{epochs}", leave=False):
            loss = F.cross_entropy(model(augment(x, noise)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in test)
        print(f"epoch {epoch + 1}: test error {wrong / 100:.2f}%  ({time.time() - t0:.0f}s)", flush=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, out,
              metadata={"test_error_percent": f"{wrong / 100:.2f}", "epochs": str(epochs), "seed": str(seed),
                        "shift": str(shift)})


if __name__ == "__main__":
    import sys
    pretrain(sys.argv[1], sys.argv[2])
