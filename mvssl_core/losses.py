"""Loss functions of tensors, in nats: pure functions, no state.

[0] Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations" (SimCLR), ICML 2020.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvssl_core import _checks as checks
from mvssl_core import dist
from mvssl_core.reconstruction import _no_autocast, _upcast

__all__ = ["nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, distributed: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent loss over the 2N views of a (global) batch of N pairs [0].

    For each of the 2N normalised views u_a, with positive u_p (the other view of its pair):
    ``l_a = -log( exp(u_a^T u_p / tau) / sum_{b != a} exp(u_a^T u_b / tau) )``, the 2N - 2 other
    views being the negatives. The loss is the mean of l_a over all 2N views. Inputs are
    L2-normalised (the sphere rule); the softmax is a float32+ logsumexp with the self term masked.
    Collapsed embeddings (all views equal) give exactly ``log(2N - 1)``.

    With ``distributed``, keys are the views of all processes (N is the global batch size);
    queries stay local, and the value equals the single-process value on the concatenated batch.

    Args:
        z1: (N, d) projections of view 1, N >= 2.
        z2: (N, d) projections of view 2; row i pairs with ``z1[i]``.
        temperature: tau > 0.
        distributed: use the global batch across processes (see :mod:`mvssl_core.dist`).

    Returns:
        0-dim tensor, the loss in nats (>= 0).
    """
    z1 = checks.embeddings(z1, "z1", min_samples=2)  # N >= 2: at least one negative pair
    z2 = checks.embeddings(z2, "z2", min_samples=2)
    checks.same_shape(z1, z2, "z1", "z2")
    tau = checks.positive(temperature, "temperature")
    with _no_autocast(z1):
        a, b = _upcast(z1), _upcast(z2)
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = F.normalize(a.to(dtype), dim=1), F.normalize(b.to(dtype), dim=1)
        keys1 = dist.gather(a) if distributed else a
        keys2 = dist.gather(b) if distributed else b
        total = keys1.shape[0]  # global number of pairs N
        keys = torch.cat([keys1, keys2])  # (2N, d): views 1 then views 2
        n = a.shape[0]
        local = torch.arange(n, device=a.device) + dist.local_slice(n, a.device).start
        queries = torch.cat([a, b])  # (2n, d)
        self_col = torch.cat([local, local + total])
        pos_col = torch.cat([local + total, local])
        logits = queries @ keys.T / tau  # (2n, 2N)
        rows = torch.arange(2 * n, device=a.device)
        positives = logits[rows, pos_col]
        masked = logits.index_put((rows, self_col), torch.tensor(float("-inf"), dtype=dtype, device=a.device))
        per_view = torch.logsumexp(masked, dim=1) - positives
        return dist.global_mean(per_view) if distributed else per_view.mean()
