"""TracIn (Pruthi et al. 2020) over saved checkpoints with closed-form last-layer gradients.

For cross-entropy, the gradient of the loss of (x, y) with respect to the head's weight and bias is
(p − e_y) ⊗ [h, 1], where p is the softmax and h the penultimate features. So

    TracIn(i, j) = Σ_c w_c · (p_i − e_{y_i})·(p_j − e_{y_j}) · (h_i·h_j + 1)
    self(i)      = Σ_c w_c · ‖p_i − e_{y_i}‖² · (‖h_i‖² + 1)

where w_c is the learning rate summed over the epochs checkpoint c stands for. A positive TracIn(i, j)
means training on i lowered the loss of j (a proponent); negative, an opponent.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audit.train.evaluate import infer


def _grad_parts(model: nn.Module, images: torch.Tensor, labels: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    logits, h = infer(model, images, device, features=True)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return p.astype(np.float32), h.astype(np.float32)


def tracin(
    model: nn.Module,
    checkpoints: list[tuple[float, dict]],
    train_images: torch.Tensor,
    train_labels: np.ndarray,
    device: torch.device,
    query_images: torch.Tensor | None = None,
    query_labels: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Self-influence of every training example (N,) and, if a query is given, TracIn(i, j) for
    each query j (Q,) and its candidate training rows ``candidates`` (Q, k) -> (Q, k).

    ``checkpoints``: (weight, state_dict) pairs; ``model`` is a module of the right architecture.
    """
    self_infl = np.zeros(len(train_labels), np.float64)
    pair = None if candidates is None else np.zeros(candidates.shape, np.float64)
    for weight, state in checkpoints:
        model.load_state_dict(state)
        g, h = _grad_parts(model, train_images, train_labels, device)
        self_infl += weight * (g * g).sum(1) * ((h * h).sum(1) + 1.0)
        if pair is not None and len(candidates):
            gq, hq = _grad_parts(model, query_images, query_labels, device)
            pair += weight * pair_products(gq, hq, g, h, candidates)
    return self_infl.astype(np.float32), (None if pair is None else pair.astype(np.float32))


def pair_products(gq: np.ndarray, hq: np.ndarray, g: np.ndarray, h: np.ndarray, candidates: np.ndarray,
                  chunk: int = 1024) -> np.ndarray:
    """(g_q·g_i)(h_q·h_i + 1) for each query q and its candidates i: (Q, k). Chunked over queries so
    the gathered (chunk, k, D) features stay small (10,000 × 50 × 256 floats would be 512 MB)."""
    out = np.empty(candidates.shape, np.float64)
    for s in range(0, len(candidates), chunk):
        c = candidates[s:s + chunk]
        gdot = np.einsum("qk,qck->qc", gq[s:s + chunk], g[c])
        hdot = np.einsum("qd,qcd->qc", hq[s:s + chunk], h[c]) + 1.0
        out[s:s + chunk] = gdot * hdot
    return out
