"""The recurrences under the sub-quadratic mixers, each in the forms that compute it: a
step-by-step recurrent reference (also generation's O(1) step), a chunkwise-parallel form for
training, and where one exists the quadratic masked form. Pure PyTorch, written from the papers;
tests/test_recurrence.py holds the forms equal to 1e-5 in float64, outputs and gradients.

Shapes: ``q, k`` ``(B, H, N, dk)``, ``v`` ``(B, H, N, dv)``; a state ``S`` is ``(B, H, dk, dv)``
(zeros when ``None``). Decays come as logs ``g <= 0``: ``(B, H, N, dk)`` for a decay per key
feature, or ``(B, H, N, 1)`` for one per head (a scalar broadcast over the key features).

**Gated linear attention** (``gla_*``): ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t =
S_t^T q_t``. One per head and fixed is RetNet's retention (Sun et al. 2023); one per head from the
input is Mamba-2's SSD (Dao & Gu 2024); one per key feature from the input is GLA (Yang et al.
2024); ``g = 0`` is causal linear attention. With ``G = cumsum(g)``, ``o_i = sum_{j <= i} (q_i
exp(G_i - G_j) . k_j) v_j``: the quadratic form. Every exponent taken is of ``G_i - G_j`` with
``j <= i``, never above 0, so no form overflows.

**Delta rule** (``delta_*``): ``S_t = exp(g_t) S_{t-1} (I - b_t k_t k_t^T) + b_t k_t v_t^T`` (in
``S``'s layout here, ``dk x dv``), ``o_t = S_t^T q_t``, with ``g`` one log decay per head (``None``:
DeltaNet, Yang et al. 2024; given: Gated DeltaNet, Yang et al. 2025) and ``b_t`` in [0, 1]. The
chunkwise form is the WY form: within a chunk the written values ``u_t = b_t (v_t - exp(g_t)
S_{t-1}^T k_t)`` solve one unit lower-triangular system. The outputs are linear in the values,
so the whole sequence as one chunk from a zero state gives the quadratic form: ``O = M V`` with
the map ``M = (lower(Q K^T) * D) T^{-1} diag(b)`` (``delta_scores``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _state(q: Tensor, v: Tensor, state: Tensor | None) -> Tensor:
    if state is not None:
        return state
    return q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])


# --------------------------------------------------------------------------- gated linear attention


def gla_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One position at a time: ``(outputs (B, H, N, dv), final state)``."""
    s, outs = _state(q, v, state), []
    for t in range(q.shape[-2]):
        s = torch.exp(g[..., t, :, None]) * s + k[..., t, :, None] * v[..., t, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[..., t, :], s))
    return torch.stack(outs, dim=-2), s


def gla_scores(q: Tensor, k: Tensor, g: Tensor) -> Tensor:
    """The implied map ``(B, H, N, N)``: ``q_i exp(G_i - G_j) . k_j`` for ``j <= i``, else 0
    (``N^2`` memory, ``N^2 dk`` for a decay per key feature: a reference, and the weights a
    mixer shows when asked)."""
    return _decayed_scores(q, k, g.cumsum(-2))


# Rows per sub-block of a chunk's scores under a decay per key feature (flash-linear-attention's
# secondary chunking): only the diagonal sub-blocks need the n x n x dk form.
SUB_CHUNK = 16


def _decayed_scores(q: Tensor, k: Tensor, G: Tensor) -> Tensor:
    """``q_i exp(G_i - G_j) . k_j`` for ``j <= i``, else 0, from cumulative log decays ``G``
    ``(..., n, dk)`` or ``(..., n, 1)``. One per head needs only the ``n x n`` matrix. One per
    key feature multiplies inside the dot product: within a sub-block of ``SUB_CHUNK`` rows
    (``s x s x dk``); across sub-blocks it factors through the sub-block's first row ``a``,
    ``exp(G_i - G_j) = exp(G_i - G_a) exp(G_a - G_j)`` for ``j < a <= i``, both at most 1, so it
    is one product of ``q exp(G - G_a)`` and ``k exp(G_a - G)``."""
    n = q.shape[-2]
    lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if G.shape[-1] == 1:
        gap = (G[..., :, None, 0] - G[..., None, :, 0]).masked_fill(~lower, -torch.inf)
        return (q @ k.transpose(-1, -2)) * torch.exp(gap)
    rows = []
    for a in range(0, n, SUB_CHUNK):
        b = min(a + SUB_CHUNK, n)
        qa, Ga, anchor = q[..., a:b, :], G[..., a:b, :], G[..., a : a + 1, :]
        inner = (Ga[..., :, None, :] - Ga[..., None, :, :]).masked_fill(~lower[a:b, a:b, None], -torch.inf)
        within = torch.einsum("bhik,bhjk,bhijk->bhij", qa, k[..., a:b, :], torch.exp(inner))
        before = (qa * torch.exp(Ga - anchor)) @ (k[..., :a, :] * torch.exp(anchor - G[..., :a, :])).transpose(-1, -2)
        rows.append(torch.cat([before, within, within.new_zeros(*within.shape[:-1], n - b)], dim=-1))
    return torch.cat(rows, dim=-2)


def gla_quadratic(q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
    """The masked ``N x N`` form from a zero state: ``gla_scores @ v``."""
    return gla_scores(q, k, g) @ v


def gla_chunkwise(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, chunk_size: int = 64, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Chunk by chunk: inside one, the masked form relative to its start; across, the carried
    state. ``O(N C dk)`` time and memory for chunks of ``C``: linear in ``N``."""
    s, outs = _state(q, v, state), []
    for start in range(0, q.shape[-2], chunk_size):
        qc, kc, vc, gc = (t[..., start : start + chunk_size, :] for t in (q, k, v, g))
        G = gc.cumsum(-2)  # (B, H, C, dk or 1), relative to the chunk's start
        within = _decayed_scores(qc, kc, G) @ vc
        before = torch.einsum("bhik,bhkv->bhiv", qc * torch.exp(G), s)
        outs.append(within + before)
        last = G[..., -1:, :]  # the decay over the whole chunk
        s = torch.exp(last[..., 0, :, None]) * s + torch.einsum(
            "bhjk,bhjv->bhkv", kc * torch.exp(last - G), vc
        )
    return torch.cat(outs, dim=-2), s


# --------------------------------------------------------------------------- the delta rule


def delta_recurrent(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One position at a time: ``beta`` ``(B, H, N)``, ``g`` ``(B, H, N)`` or None."""
    s, outs = _state(q, v, state), []
    for t in range(q.shape[-2]):
        if g is not None:
            s = torch.exp(g[..., t, None, None]) * s
        kt, bt = k[..., t, :], beta[..., t, None]
        written = bt * (v[..., t, :] - torch.einsum("bhk,bhkv->bhv", kt, s))  # u_t
        s = s + kt[..., :, None] * written[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[..., t, :], s))
    return torch.stack(outs, dim=-2), s


def solve_unit_lower(t: Tensor, rhs: Tensor) -> Tensor:
    """``t^{-1} rhs`` for a unit lower-triangular ``t``, in float32 at least (the solve has no
    half-precision kernel on CPU), returned in ``rhs``'s dtype."""
    dtype = torch.promote_types(rhs.dtype, torch.float32)
    out = torch.linalg.solve_triangular(t.to(dtype), rhs.to(dtype), upper=False, unitriangular=True)
    return out.to(rhs.dtype)


def wy_system(k: Tensor, beta: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """The delta rule within one chunk of ``n`` positions, from cumulative log decays ``G``
    ``(B, H, n)``: ``D`` with ``D_ij = exp(G_i - G_j)`` for ``j <= i`` (else 0), and the unit
    lower-triangular ``T = I + strict_lower(diag(b) (K K^T * D))`` whose solve gives the written
    values."""
    n = k.shape[-2]
    lower = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
    decay = torch.exp((G[..., :, None] - G[..., None, :]).masked_fill(~lower, -torch.inf))
    strict = (k @ k.transpose(-1, -2) * decay).tril(-1) * beta[..., :, None]
    return decay, torch.eye(n, dtype=k.dtype, device=k.device) + strict


def delta_scores(q: Tensor, k: Tensor, beta: Tensor, g: Tensor | None = None) -> Tensor:
    """The implied map ``(B, H, N, N)`` of the delta rule from a zero state: ``M = (lower(Q K^T)
    * D) T^{-1} diag(b)`` (``wy_system`` over the whole sequence; ``N^2`` memory: a reference,
    and the weights a mixer shows when asked). Lower triangular: ``o_i`` reads ``v_j`` for ``j <=
    i`` only."""
    decay, system = wy_system(k, beta, torch.zeros_like(beta) if g is None else g.cumsum(-1))
    return ((q @ k.transpose(-1, -2)) * decay) @ solve_unit_lower(system, torch.diag_embed(beta))


def delta_quadratic(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None) -> Tensor:
    """The quadratic form from a zero state: ``delta_scores @ v``."""
    return delta_scores(q, k, beta, g) @ v


def delta_chunkwise(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None,
    chunk_size: int = 64, state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The WY form chunk by chunk. With ``Gam_t = exp(G_t)`` the decay from the chunk's start
    and ``D_ti = Gam_t / Gam_i``: ``(I + strict_lower(diag(b) (K K^T * D))) U = diag(b) (V -
    diag(Gam) K S)``; ``O = diag(Gam) Q S + (lower(Q K^T) * D) U``; ``S' = Gam_C S + (K *
    Gam_C / Gam)^T U``."""
    s, outs = _state(q, v, state), []
    for start in range(0, q.shape[-2], chunk_size):
        qc, kc, vc = (t[..., start : start + chunk_size, :] for t in (q, k, v))
        bc = beta[..., start : start + chunk_size]
        G = torch.zeros_like(bc) if g is None else g[..., start : start + chunk_size].cumsum(-1)
        decay, system = wy_system(kc, bc, G)
        rhs = bc[..., None] * (vc - torch.exp(G)[..., None] * (kc @ s))
        written = solve_unit_lower(system, rhs)
        outs.append(torch.exp(G)[..., None] * (qc @ s) + ((qc @ kc.transpose(-1, -2)) * decay) @ written)
        to_end = torch.exp(G[..., -1:] - G)  # Gam_C / Gam_i
        s = torch.exp(G[..., -1, None, None]) * s + (kc * to_end[..., None]).transpose(-1, -2) @ written
    return torch.cat(outs, dim=-2), s


def both_ways(scan: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """``scan(*tensors)`` plus the scan of the reversed sequence, reversed back: a causal scan
    made bidirectional (as Hydra and Vision Mamba do). Time is dimension 2 of every tensor
    (``(B, H, N, ...)``), so each position reads every other, itself twice."""
    forward = scan(*tensors)
    return forward + scan(*(t.flip(2) for t in tensors)).flip(2)
