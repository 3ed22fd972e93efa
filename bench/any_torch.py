"""MIRACLE on models that are not LeNet: a face-detection cascade and a voice-activity detector (issue 12).

Workloads (data made here, offline, from a fixed seed; nothing downloaded):
* face cascade: three small CNNs with PReLU and tuple outputs in the shape of MTCNN's P-Net (12x12,
  (boxes, face probabilities)), R-Net (24x24) and O-Net (48x48, + 5 landmarks); images of synthetic
  faces (an ellipse with eyes and mouth, random pose, contrast and noise) against clutter;
* voice activity: raw 16 kHz audio -> STFT by a fixed analysis matrix (a buffer) -> log magnitude ->
  Conv1d x 2 -> LSTM -> per-frame speech probability (sigmoid); synthetic voiced segments (harmonic
  source, formant filter, syllabic envelope) in noise of random colour and level.

Each network is first trained on its labels (the "original"), then compressed by `compress(model,
unlabelled_loader, budget)` with nothing else: no labels, the default objective (match the original's
outputs). Reported on held-out inputs: agreement with the original's decisions (face: p > 0.5; VAD:
per-frame p > 0.5), index payload in bits per coded weight, and the whole file (graph and raw tensors
included). Writes bench/results/any_torch.{md,png}.

    nice python bench/any_torch.py [--bpw 0.5,1,2] [--steps 600] [--models pnet,rnet,onet,vad] [--threads 1]
        [--blocks-per-round 64] [--append]     (--append: keep OUT.json's rows of the other models)
        [--rtn 8,6,5,4 --append]               (reference rows: round-to-nearest, no training)
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# --- models ---------------------------------------------------------------------------------------
class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  nn.Conv2d(10, 16, 3), nn.PReLU(16), nn.Conv2d(16, 32, 3), nn.PReLU(32))
        self.cls = nn.Conv2d(32, 2, 1)
        self.box = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        h = self.body(x)
        return self.box(h), torch.softmax(self.cls(h), dim=1)


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 28, 3), nn.PReLU(28), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.Conv2d(28, 48, 3), nn.PReLU(48), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.Conv2d(48, 64, 2), nn.PReLU(64))
        self.fc = nn.Sequential(nn.Linear(64 * 3 * 3, 128), nn.PReLU(128))
        self.cls = nn.Linear(128, 2)
        self.box = nn.Linear(128, 4)

    def forward(self, x):
        h = self.fc(self.body(x).flatten(1))
        return self.box(h), torch.softmax(self.cls(h), dim=1)


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3), nn.PReLU(32), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.Conv2d(32, 64, 3), nn.PReLU(64), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.Conv2d(64, 64, 3), nn.PReLU(64), nn.MaxPool2d(2, 2, ceil_mode=True),
                                  nn.Conv2d(64, 128, 2), nn.PReLU(128))
        self.fc = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.PReLU(256))
        self.cls = nn.Linear(256, 2)
        self.box = nn.Linear(256, 4)
        self.marks = nn.Linear(256, 10)

    def forward(self, x):
        h = self.fc(self.body(x).flatten(1))
        return self.box(h), self.marks(h), torch.softmax(self.cls(h), dim=1)


FRAME, HOP, RATE, SAMPLES = 256, 128, 16000, 4096


def stft_matrix(frame: int = FRAME) -> torch.Tensor:
    """Hann-windowed real DFT as one matrix [frame, 2 * (frame // 2 + 1)] (cos then sin columns)."""
    n = torch.arange(frame, dtype=torch.float64)
    k = torch.arange(frame // 2 + 1, dtype=torch.float64)
    win = 0.5 - 0.5 * torch.cos(2 * math.pi * n / frame)
    ang = 2 * math.pi * n[:, None] * k[None, :] / frame
    return torch.cat([win[:, None] * torch.cos(ang), -win[:, None] * torch.sin(ang)], dim=1).float()


class VAD(nn.Module):
    """Audio [N, 4096] -> speech probability per frame [N, 31]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("basis", stft_matrix())
        bins = FRAME // 2 + 1
        self.conv1 = nn.Conv1d(bins, 48, 3, padding=1)
        self.conv2 = nn.Conv1d(48, 32, 3, padding=1)
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.out = nn.Linear(32, 1)

    def forward(self, audio):
        frames = audio.unfold(1, FRAME, HOP)                        # [N, T, FRAME]
        spec = frames @ self.basis                                  # [N, T, 2 * bins]
        re, im = spec.chunk(2, dim=-1)
        feat = torch.log1p(100 * (re * re + im * im)).transpose(1, 2)   # [N, bins, T]
        h = F.relu(self.conv2(F.relu(self.conv1(feat)))).transpose(1, 2)
        y, _ = self.lstm(h)
        return torch.sigmoid(self.out(y).squeeze(-1))


# --- data ---------------------------------------------------------------------------------------
def faces(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [n, 3, size, size], face labels, box offsets [n, 4], landmarks [n, 10]; half are faces."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = np.empty((n, 3, size, size), np.float32)
    label = (np.arange(n) % 2).astype(np.int64)
    g.shuffle(label)
    boxes = np.zeros((n, 4), np.float32)
    marks = np.zeros((n, 10), np.float32)
    for i in range(n):
        bg = g.normal(0, 0.25, (3, 1, 1)) + 0.15 * np.sin(2 * np.pi * (g.uniform(1, 4) * xx + g.uniform(0, 1)))
        img = bg + g.normal(0, 0.15, (3, size, size))
        for _ in range(g.integers(1, 4)):          # clutter: blobs and bars in both classes
            cy, cx, r = g.uniform(0, 1), g.uniform(0, 1), g.uniform(0.05, 0.3)
            img += g.normal(0, 0.5) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
        if label[i]:
            cx, cy = 0.5 + g.uniform(-0.12, 0.12), 0.5 + g.uniform(-0.12, 0.12)
            rx, ry = g.uniform(0.25, 0.38), g.uniform(0.32, 0.45)
            skin = g.uniform(0.6, 1.2)
            face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            pts = [(cx - 0.4 * rx, cy - 0.25 * ry), (cx + 0.4 * rx, cy - 0.25 * ry), (cx, cy + 0.1 * ry),
                   (cx - 0.35 * rx, cy + 0.5 * ry), (cx + 0.35 * rx, cy + 0.5 * ry)]
            feat = np.zeros_like(xx, dtype=bool)
            for px, py in pts[:2]:
                feat |= ((xx - px) ** 2 + (yy - py) ** 2) < (0.12 * rx) ** 2
            feat |= (np.abs(yy - (cy + 0.5 * ry)) < 0.05 * ry + 0.5 / size) & (np.abs(xx - cx) < 0.35 * rx)
            img = np.where(face, skin + g.normal(0, 0.1, (3, 1, 1)), img) - 1.2 * skin * feat
            boxes[i] = [cx - rx - 0.5, cy - ry - 0.5, cx + rx - 0.5, cy + ry - 0.5]
            marks[i] = np.ravel(pts) - 0.5
        imgs[i] = img
    return torch.from_numpy(imgs), torch.from_numpy(label), torch.from_numpy(boxes), torch.from_numpy(marks)


def speech(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio [n, 4096] and per-frame labels [n, 31] (1 where voiced energy covers the frame's centre)."""
    g = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / RATE
    audio = np.empty((n, SAMPLES), np.float32)
    labels = np.empty((n, (SAMPLES - FRAME) // HOP + 1), np.float32)
    for i in range(n):
        active = np.zeros(SAMPLES, bool)
        voice = np.zeros(SAMPLES)
        for _ in range(g.integers(0, 3)):
            a = g.integers(0, SAMPLES - 600)
            b = min(SAMPLES, a + g.integers(600, 2500))
            f0 = g.uniform(90, 280) * (1 + 0.1 * np.sin(2 * np.pi * g.uniform(1, 4) * t[a:b]))
            phase = 2 * np.pi * np.cumsum(f0) / RATE
            formants = g.uniform([300, 900, 2200], [900, 2200, 3200])
            src = sum(np.cos(h * phase) * sum(np.exp(-((h * f0 - f) / 150) ** 2) for f in formants)
                      for h in range(1, int(4000 / f0.max())))
            env = np.sin(np.pi * np.arange(b - a) / (b - a)) ** 0.5 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t[a:b]))
            voice[a:b] += env * src / (np.abs(src).max() + 1e-9) * g.uniform(0.2, 1.0)
            active[a:b] = True
        audio[i] = voice
        centres = np.arange(labels.shape[1]) * HOP + FRAME // 2
        labels[i] = active[centres]
    white = g.normal(0, 1, (n, SAMPLES))
    colour = g.uniform(0, 0.98, n)
    noise = np.empty((n, SAMPLES))
    acc = np.zeros(n)
    for k in range(SAMPLES):                 # first-order coloured noise, a colour per example
        acc = colour * acc + white[:, k]
        noise[:, k] = acc
    noise *= (g.uniform(0.01, 0.25, n) / (noise.std(1) + 1e-9))[:, None]
    audio += noise.astype(np.float32)
    return torch.from_numpy(audio), torch.from_numpy(labels)


# --- training the originals ---------------------------------------------------------------------
def pretrain(name: str, model: nn.Module, data: tuple, steps: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = len(data[0])
    for step in range(steps):
        idx = torch.randint(0, n, (64,), generator=g)
        if name == "vad":
            x, y = data[0][idx], data[1][idx]
            loss = F.binary_cross_entropy(model(x), y)
        else:
            x, y, box, marks = (d[idx] for d in data)
            out = model(x)
            prob = out[-1].reshape(len(x), 2)
            loss = F.nll_loss(torch.log(prob + 1e-8), y)
            face = y.bool()
            if face.any():
                loss = loss + 0.5 * F.mse_loss(out[0].reshape(len(x), 4)[face], box[face])
                if len(out) == 3:
                    loss = loss + 0.5 * F.mse_loss(out[1][face], marks[face])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def decisions(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = torch.cat([model(x[i:i + 256]) if name == "vad" else model(x[i:i + 256])[-1].reshape(-1, 2)[:, 1]
                         for i in range(0, len(x), 256)])
    return out > 0.5


MODELS = {"pnet": (PNet, 12), "rnet": (RNet, 24), "onet": (ONet, 48), "vad": (VAD, None)}


def run(name: str, bpws: list[float], steps: int, seed: int, n_train: int, n_test: int, pre_steps: int,
        blocks_per_round: int = 64, method: str = "mean-var", group_by: str = "module", per_row: bool = False,
        index_bits: int = 12, greedy: bool = False, retrain_steps: int = 2) -> list[dict]:
    from mrcformat.encode import compress
    from mrcformat.encode.selection import coded_specs

    cls, size = MODELS[name]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train = faces(n_train, size, seed) if size else speech(n_train, seed)
    test = faces(n_test, size, seed + 1) if size else speech(n_test, seed + 1)
    data_s = time.perf_counter() - t0
    model = pretrain(name, cls(), train, pre_steps, seed)
    truth = test[1].bool()
    orig = decisions(name, model, test[0])
    orig_acc = float((orig == truth).float().mean())
    coded = sum(n for s in coded_specs(model) for n in [s.num_weights])
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for bpw in bpws:
        budget = max(8, int(coded * bpw / 8))
        loader = DataLoader(TensorDataset(train[0]), batch_size=64, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        t1 = time.perf_counter()
        result = compress(model, loader, budget, steps=steps, retrain_steps=retrain_steps, blocks_per_round=blocks_per_round,
                          greedy=greedy,
                          seed=seed, method=method, group_by=group_by, per_row=per_row, index_bits=index_bits,
                          progress=False, graph_deflate=True)
        wall = time.perf_counter() - t1
        student = result.load_into(cls()).eval()
        got = decisions(name, student, test[0])
        c = result.container
        raw = sum(t.data.nbytes for t in c.tensors if t.encoding == "raw")
        file_bytes = len(result.to_bytes())
        rows.append({"model": name, "method": method, "group_by": group_by, "per_row": per_row,
                     "index_bits": index_bits, "greedy": greedy, "retrain_steps": retrain_steps, "params": params, "coded_weights": coded, "bpw_target": bpw,
                     "payload_bytes": result.payload_bytes, "payload_bpw": 8 * result.payload_bytes / coded,
                     "raw_bytes": raw, "graph_bytes": len(c.graph or b""), "file_bytes": file_bytes,
                     "file_bpw_all_params": 8 * file_bytes / params, "float32_bytes": 4 * params,
                     "agreement": float((got == orig).float().mean()), "orig_accuracy": orig_acc,
                     "accuracy": float((got == truth).float().mean()), "held_out": int(got.numel()),
                     "steps": steps, "blocks_per_round": blocks_per_round, "pretrain_steps": pre_steps,
                     "n_train": n_train, "seed": seed, "wall_s": round(wall, 1), "data_s": round(data_s, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def rtn(name: str, bits_list: list[int], seed: int, n_train: int, n_test: int, pre_steps: int) -> list[dict]:
    """Reference without training: the same original, each coded tensor rounded to the nearest of 2^b - 1
    symmetric levels (scale = max |w| / (2^(b-1) - 1), per tensor and per row), held-out agreement as for
    MIRACLE. How sensitive a model's decisions are to weight noise, at bit rates far above MIRACLE's."""
    from mrcformat.encode.selection import coded_specs

    cls, size = MODELS[name]
    torch.manual_seed(seed)
    train = faces(n_train, size, seed) if size else speech(n_train, seed)
    test = faces(n_test, size, seed + 1) if size else speech(n_test, seed + 1)
    model = pretrain(name, cls(), train, pre_steps, seed)
    truth = test[1].bool()
    orig = decisions(name, model, test[0])
    coded = {m for s in coded_specs(model) for m, _ in s.members}
    rows = []
    for bits in bits_list:
        for per_row in (False, True):
            q = cls()
            q.load_state_dict(model.state_dict())
            with torch.no_grad():
                for pname, prm in q.named_parameters():
                    if pname not in coded:
                        continue
                    w = prm.view(prm.shape[0], -1) if per_row and prm.dim() > 1 else prm.view(1, -1)
                    top = 2 ** (bits - 1) - 1
                    scale = (w.abs().amax(1, keepdim=True) / top).clamp_min(1e-30)
                    prm.copy_(((w / scale).round().clamp(-top, top) * scale).view_as(prm))
            got = decisions(name, q.eval(), test[0])
            rows.append({"model": name, "method": "rtn", "bits": bits, "per_row": per_row,
                         "coded_weights": sum(s.num_weights for s in coded_specs(model)),
                         "agreement": float((got == orig).float().mean()), "accuracy": float((got == truth).float().mean()),
                         "orig_accuracy": float((orig == truth).float().mean()), "held_out": int(got.numel())})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _key(r: dict) -> tuple:
    """The model and encoder variant of a row (rows of the same key form one curve)."""
    return (r["model"], r.get("method", "mean-var"), r.get("group_by", "module"), bool(r.get("per_row", False)),
            r.get("index_bits", 12), bool(r.get("greedy", False)), r.get("retrain_steps", 2), r.get("n_train", 4000),
            r.get("seed", 0))


def _variant(r: dict) -> str:
    _, method, group_by, per_row, bits, greedy, retrain, n_train, seed = _key(r)
    extra = [x for x in (method if method != "mean-var" else "", "group per tensor" if group_by == "tensor" else "",
                         "row scales" if per_row else "", f"{bits}-bit blocks" if bits != 12 else "",
                         "greedy" if greedy else "", f"{retrain} retrain steps/round" if retrain != 2 else "",
                         f"{n_train:,} training inputs" if n_train != 4000 else "", f"seed {seed}" if seed else "") if x]
    return f" ({', '.join(extra)})" if extra else ""


def write(rows: list[dict], out: Path) -> None:
    lines = ["# MIRACLE on a face cascade and a VAD model (bench/any_torch.py)", "",
             "Unlabelled `compress(model, loader, budget)`; agreement = held-out decisions equal to the original's "
             "(face: p > 0.5 per image; VAD: p > 0.5 per frame). payload bpw = index bits per coded weight; "
             "file = the whole .mrc (zlib graph, raw PReLU slopes / small tensors / the VAD's STFT matrix included).", "",
             "| model | params | coded | target bpw | payload B | payload bpw | raw B | graph B (before zlib) | file B | float32 B "
             "| agreement | accuracy (orig) | steps | wall s |", "|" + "---|" * 14]
    refs = [r for r in rows if r.get("method") == "rtn"]
    rows = [r for r in rows if r.get("method") != "rtn"]
    for r in rows:
        label = r["model"] + _variant(r)
        lines.append(f"| {label} | {r['params']:,} | {r['coded_weights']:,} | {r['bpw_target']} | "
                     f"{r['payload_bytes']:,} | {r['payload_bpw']:.2f} | {r['raw_bytes']:,} | {r['graph_bytes']:,} | "
                     f"{r['file_bytes']:,} | {r['float32_bytes']:,} | {100 * r['agreement']:.2f}% "
                     f"({r['held_out']:,}) | {100 * r['accuracy']:.1f}% ({100 * r['orig_accuracy']:.1f}%) | "
                     f"{r['steps']} | {r['wall_s']} |")
    if refs:
        lines += ["", "Reference without training (`--rtn`): each coded tensor rounded to the nearest of 2^b - 1 "
                  "symmetric levels (scale = max |w| over the tensor, or over each row), same original and held-out "
                  "inputs; bits per weight exclude the scales.", "",
                  "| model | rounding | bits per weight | agreement | accuracy (orig) |", "|---|---|---|---|---|"]
        for r in sorted(refs, key=lambda r: (r["model"], r["per_row"], -r["bits"])):
            lines.append(f"| {r['model']} | {'per row' if r['per_row'] else 'per tensor'} | {r['bits']} | "
                         f"{100 * r['agreement']:.2f}% ({r['held_out']:,}) | {100 * r['accuracy']:.1f}% "
                         f"({100 * r['orig_accuracy']:.1f}%) |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows + refs, indent=1) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 7.5))
    keys = list(dict.fromkeys(_key(r) + (r["steps"],) for r in rows))   # a curve per variant and step count
    for i, key in enumerate(keys):
        rs = sorted((r for r in rows if _key(r) + (r["steps"],) == key), key=lambda r: r["payload_bpw"])
        ax.plot([r["payload_bpw"] for r in rs], [100 * r["agreement"] for r in rs], "o-", color=plt.cm.tab20(i % 20),
                label=f"{key[0]}{_variant(rs[0])}, {key[-1]} steps")
    for j, model in enumerate(sorted({r["model"] for r in refs})):
        rs = sorted((r for r in refs if r["model"] == model and r["per_row"]), key=lambda r: r["bits"])
        ax.plot([r["bits"] for r in rs], [100 * r["agreement"] for r in rs], "x--", color="grey", alpha=0.5 + 0.5 * (j == 0),
                label=f"{model}: round-to-nearest per row (no training), bits per weight")
    ax.axhline(99, color="grey", lw=0.8, ls="--")
    ax.axvline(1, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("index payload, bits per coded weight")
    ax.set_ylabel("agreement with the original, % (held out)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="pnet,rnet,onet,vad")
    ap.add_argument("--bpw", default="0.5,1")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks-per-round", type=int, default=64)
    ap.add_argument("--append", action="store_true", help="add to the rows already in OUT.json (other models)")
    ap.add_argument("--method", default="mean-var", choices=["mean-var", "mean-kl"])
    ap.add_argument("--group-by", default="module", choices=["module", "tensor"])
    ap.add_argument("--index-bits", type=int, default=12)
    ap.add_argument("--greedy", action="store_true", help="code each block's best candidate (not MIRACLE's sample)")
    ap.add_argument("--retrain-steps", type=int, default=2, help="training steps after each coding round")
    ap.add_argument("--per-row", action="store_true", help="a coding scale per row of each tensor (format 1.1 scales; "
                    "implies --group-by tensor)")
    ap.add_argument("--rtn", default="", help="bits (comma-separated): only the round-to-nearest reference rows")
    ap.add_argument("--out", default=str(RESULTS / "any_torch"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    old = Path(a.out).with_suffix(".json")
    rows = json.loads(old.read_text()) if a.append and old.exists() else []
    for name in a.models.split(","):
        if a.rtn:
            rows = [r for r in rows if not (r.get("method") == "rtn" and r["model"] == name)]
            rows += rtn(name, [int(b) for b in a.rtn.split(",")], a.seed, a.train, a.test, a.pretrain_steps)
            continue
        group_by = "tensor" if a.per_row else a.group_by
        key = (name, a.method, group_by, a.per_row, a.index_bits, a.greedy, a.retrain_steps, a.train, a.seed)
        rows = [r for r in rows if _key(r) != key]
        rows += run(name, [float(b) for b in a.bpw.split(",")], a.steps, a.seed, a.train, a.test, a.pretrain_steps,
                    a.blocks_per_round, a.method, group_by, a.per_row, a.index_bits, a.greedy, a.retrain_steps)
    write(rows, Path(a.out))
    return rows


if __name__ == "__main__":
    main()
