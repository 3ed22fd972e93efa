"""Detection post-processing: NonMaxSuppression, with onnxruntime's rules (score strictly above the
threshold, ties broken by the lower box index, suppression when IoU > threshold, empty boxes never
overlap). Not differentiable (it returns indices)."""
from __future__ import annotations

import torch

__all__ = ["OPS"]


def _corners(b: torch.Tensor, center: bool) -> torch.Tensor:
    """[N, 4] boxes as (y1, x1, y2, x2) with y1 <= y2, x1 <= x2 (or from x_c, y_c, w, h)."""
    if center:
        xc, yc, w, h = b.unbind(-1)
        return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)
    y1, x1, y2, x2 = b.unbind(-1)
    return torch.stack([torch.minimum(y1, y2), torch.minimum(x1, x2), torch.maximum(y1, y2), torch.maximum(x1, x2)],
                       -1)


def _iou(c: torch.Tensor) -> torch.Tensor:
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    lo = torch.maximum(c[:, None, :2], c[None, :, :2])
    hi = torch.minimum(c[:, None, 2:], c[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = area[:, None] + area[None, :] - inter
    iou = inter / union
    empty = (area[:, None] <= 0) | (area[None, :] <= 0)
    return torch.where(empty, torch.zeros_like(iou), iou)


def _nms(a):
    center = bool(a.get("center_point_box", 0))

    def fn(boxes, scores, max_out=None, iou_thr=None, score_thr=None):
        limit = int(max_out.reshape(-1)[0].item()) if max_out is not None and max_out.numel() else 0
        iou_t = float(iou_thr.reshape(-1)[0].item()) if iou_thr is not None and iou_thr.numel() else 0.0
        selected: list[tuple[int, int, int]] = []
        if limit > 0:
            for b in range(scores.shape[0]):
                corners = _corners(boxes[b].float(), center)
                for c in range(scores.shape[1]):
                    s = scores[b, c].float()
                    keep = torch.ones_like(s, dtype=torch.bool) if score_thr is None or not score_thr.numel() \
                        else s > float(score_thr.reshape(-1)[0].item())
                    cand = torch.nonzero(keep).reshape(-1)
                    if not cand.numel():
                        continue
                    # descending score, ties by the lower index (a stable sort of indices in ascending order)
                    order = cand[torch.sort(-s[cand], stable=True).indices]
                    iou = _iou(corners[order]).tolist()
                    chosen: list[int] = []
                    for i in range(len(order)):
                        if all(iou[i][j] <= iou_t for j in chosen):
                            chosen.append(i)
                            if len(chosen) == limit:
                                break
                    selected += [(b, c, int(order[i])) for i in chosen]
        return torch.tensor(selected, dtype=torch.int64, device=boxes.device).reshape(-1, 3)
    return fn


OPS = {"NonMaxSuppression": _nms}
