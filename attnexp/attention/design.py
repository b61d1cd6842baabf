"""The design space of softmax-style attention, in one place.

Attention weighs values by how well each query matches each key. Every choice along the way is a
knob here, so ``mha`` (and ``muse``'s attention branch) expose them as config:

``score``      how a query ``q_i`` and a key ``k_j`` (head dimension ``d``) are compared:
    dot        s_ij = q_i . k_j / sqrt(d)
    cosine     s_ij = t_h * (q_i / |q_i|) . (k_j / |k_j|)          t_h learnable, one per head
    l2         s_ij = -|q_i - k_j|^2 / sqrt(d)
    pearson    s_ij = t_h * cosine(q_i - mean(q_i), k_j - mean(k_j)), means over the d features
    additive   s_ij = w . tanh(W_q q_i + W_k k_j + b) + c          one small MLP shared by heads
``normalize``  how a row of scores ``s_i.`` over the allowed keys A_i (|A_i| = n_i) becomes weights:
    softmax    a_ij = exp(s_ij) / sum_{l in A_i} exp(s_il)
    sigmoid    a_ij = sigmoid(s_ij - log n_i)     (rows sum to n_i / (n_i + 1) ~ 1 at zero scores)
    max        a_ij = (s_ij - min_l s_il) / (max_l s_il - min_l s_il), min/max over A_i; a_ij = 1
               for every allowed key when the row is constant. Entries lie in [0, 1], the best key
               gets exactly 1; rows do not sum to 1.
    softpick   a_ij = ReLU(e^s_ij - 1) / (sum_{l in A_i} |e^s_il - 1| + eps) (Zuhri et al. 2025): keys
               scoring <= 0 get exactly 0; rows sum to at most 1.
    stick_breaking   causal: a_ij = sigmoid(s_ij) prod_{j<k<i, k in A_i} (1 - sigmoid(s_ik)) for
               j < i (Tan et al. 2024): the nearest earlier key takes its share first; a query
               never attends to itself; the leftover mass stays unassigned.
    Every normalisation gives masked-out keys exactly zero weight.
``window``, ``global_tokens``   which keys a query may see (a boolean mask, True = allowed):
    window w   |i - j| <= w on a sequence; max(|r_i - r_j|, |c_i - c_j|) <= w (Chebyshev, a
               (2w+1) x (2w+1) square) on an image. ``None`` (default) = no mask.
    global g   the first g positions (raster order) attend to, and are attended by, every position.
               The allowed set is the union (OR) of the window and global sets, so ``window=w``
               is local, ``window=w, global_tokens=g`` local+global and ``window=0,
               global_tokens=g`` global (each token sees itself and the g global tokens).
``kv_stride``, ``kv_select``    which positions serve as keys and values (M = ceil(N / s)):
    stride     positions 0, s, 2s, ... of the flattened (raster order) grid.
    random     a random subset of size ceil(N / s), kept in grid order: a fresh subset per
               sample in training; in eval one subset drawn once per forward call and shared by
               the whole batch (drawn from torch's global RNG, so a seeded run is reproducible).
``qk_conv``, ``qk_conv_padding``, ``qk_conv_target``   local features for queries and/or keys:
    a depthwise convolution of odd width k over the grid (1-D, or k x k on a 2-D grid) applied
    to the projected q (target ``q``), k (target ``k``, the default) or both (``qk``), initialised
    at the identity so it starts as plain attention. ``same`` padding keeps every position;
    ``valid`` padding shrinks the key grid by k - 1 along each axis (cheaper), and the values are
    cropped to the same centre positions so key j and value j describe the same grid cell. Valid
    padding applies to keys only: queries keep one row per output position.
``rope``       rotary position embeddings (RoFormer, Su et al. 2021; the GPT-NeoX half-rotation):
    after the projection and any qk convolution, every head's q and k at position p are rotated
    feature pair (f, f + d/2) by the angle p * 10000^(-2f/d), so q_i . k_j depends on i - j
    only. Keys keep their own positions (kept keys of ``kv_stride``, centres of a valid conv).
    Sequences only.
``qk_norm``    ``rms`` or ``layer``: each head's q and k normalised over their d features as the
    projection gives them (RMSNorm or LayerNorm, one learned gain for q and one for k shared by the
    heads), before any qk convolution, rope and the score (Dehghani et al. 2023; OLMo 2, Gemma 3).
``softcap``    c: s_ij <- c * tanh(s_ij / c) (Gemma 2), after the score.
``alibi``      s_ij <- s_ij - m_h * |i - j|, slopes m_h = 2^(-8h/H) (Press et al. 2022), after
    ``softcap``. Sequences with keys aligned with positions only.
``forget_gate``  causal: s_ij <- s_ij + sum_{j<l<=i} log f_l, f_l = sigmoid(w_h . x_l + b_h) per
    head, computed by the mixer from its input (Forgetting Transformer, Lin et al. 2025), after
    ``alibi``. Keys aligned with positions only.
``sink``       softmax only: a_ij = exp(s_ij) / (exp(b_h) + sum_{l in A_i} exp(s_il)), a learned
    logit b_h per head (attention sinks, Xiao et al. 2023; gpt-oss), so a row may give less than
    all its weight to the keys.
    ``softcap``, ``alibi``, ``forget_gate`` and ``sink`` are one step between the score and the
    weights (``ScoreChanges``), which the explicit and chunked paths apply block by block.

Causal attention (``AttentionCore(..., causal=True)``, sequences only): query i may see key j only
if j's position <= i, on top of every other rule, so the output at i depends on inputs <= i:
    window w    j in [i - w, i], a sliding window over the past.
    global g    the first g positions are seen by every later position and see only positions
                <= their own.
    kv_stride   a query sees the kept keys at positions <= its own; ``random`` always keeps
                position 0 (and draws the rest), so no query is left without a key.
    qk_conv     left padding only (k - 1 zeros before the sequence), initialised at the identity
                (last tap 1). ``valid`` padding is refused: it would drop the keys of the first
                k - 1 positions, leaving those queries nothing to attend to.
    normalize   the allowed set A_i shrinks to keys <= i: ``sigmoid``'s n_i counts them, ``max``
                takes min/max over them; masked keys get exactly zero weight.

Padding (``AttentionCore.forward(..., padding=...)``, ``(B, N)`` bool, True at real positions): a
padded position is never a key (``attend``'s ``key_padding``, taken after key selection: the kept
keys keep their own mask entries; a ``valid`` qk conv's key is real only if its whole window is),
and the qk convolutions read zeros there, as at their own border. So appending padding leaves the
real positions' outputs unchanged under every knob on a sequence; not by nature: ``kv_stride`` on
an image when columns are appended (the raster positions it keeps move) and ``kv_select=random``
(the subset drawn depends on N).

Three paths compute the same numbers (``attend`` picks one at call time from the design and the
inputs); the explicit one is the reference, and the others hold O(N) memory, never the N x M
matrix:

explicit   scores (B, h, N, M) -> ``normalize_scores`` -> weights @ v. Serves ``need_weights``.
fused      every score but ``additive`` with ``softmax``: ``scaled_dot_product_attention`` on
           transformed q and k (``Scorer.fused_inputs``), whose kernel never stores the matrix:
    dot      q, k, scale 1/sqrt(d).
    cosine   t_h * q/|q| and k/|k|, scale 1 (the per-head temperature folded into q).
    pearson  the same on centred q and k.
    l2       s_ij = -(|q_i|^2 - 2 q_i.k_j + |k_j|^2) / sqrt(d). A softmax over j is unchanged by a
             term constant along the row, so drop |q_i|^2/sqrt(d):
                 s'_ij = (2 q_i.k_j - |k_j|^2) / sqrt(d) = (2/sqrt(d)) * [q_i, 1] . [k_j, -|k_j|^2/2]
             i.e. one extra feature (1 on q, -|k|^2/2 on k; v padded by a zero feature and cropped
             after) and scale 2/sqrt(d). (The explicit path clamps |q - k|^2 at 0 against rounding;
             that changes nothing beyond rounding.)
           Masks go to the kernel as booleans: none, key padding ``(B, 1, 1, M)`` or plain causal
           (``is_causal``) in one call; window, global tokens or causal over selected keys in
           blocks of query rows, each with its rows of the mask only. Dropout: the kernel's
           ``dropout_p``.
fused with a key feature   ``forget_gate``, causal ``alibi`` and ``sink`` with a fused score
           and softmax (no ``softcap``): the bias ``b_i + beta_j`` loses ``b_i`` to the softmax
           and ``beta_j`` becomes one more key feature, relative to each block's first query; the
           sink is one more key whose feature is its logit and whose value is zero, always
           allowed, so the mask is explicit (``_fused_key_feature``).
chunked    ``sigmoid``, ``max``, ``softpick``, ``stick_breaking``, the ``additive`` scorer,
           ``softcap``, bidirectional ``alibi``: blocks of ``b`` query rows, each
           computing its ``(B, h, b, M)`` scores (``(B, h, b, M, a)`` hidden for additive; ``b``
           keeps that under ``BLOCK_ELEMENTS``), its mask rows, normalisation, dropout and
           weights @ v. Every normalisation is row-wise, so blocks are exact. With several blocks
           and gradients on, each block is checkpointed (recomputed in backward, with the same
           dropout draws), so backward too holds one block at a time.

Entry points: ``AttentionDesign`` (validated knobs), ``AttentionCore`` (the module a mixer calls with
``(B, heads, N, d)`` q, k, v and the grid), and the pieces it is made of: ``Scorer``,
``normalize_scores``, ``KeyMask``, ``attention_mask``, ``causal_mask``, ``kv_positions``, ``select_kv``,
``GridDepthwiseConv``, ``rotary``, ``attend``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from attnexp.attention.causal import causal_conv1d
from attnexp.attention.masking import nonempty, zero_padding
from attnexp.util.checks import check_int
from attnexp.util.memory import SMALLEST_THRESHOLD_BYTES, mmap_large_blocks

SCORES = ("dot", "cosine", "l2", "pearson", "additive")
FUSED_SCORES = ("dot", "cosine", "l2", "pearson")  # with softmax: the fused kernel (``fast_path``)
NORMALIZATIONS = ("softmax", "sigmoid", "max")  # the design space's own: any mask, any keys
# Normalisations of later papers: softpick works wherever the three above do; stick_breaking is
# causal over keys aligned with positions (``AttentionDesign`` and ``AttentionCore`` refuse the rest).
LATER_NORMALIZATIONS = ("softpick", "stick_breaking")
ALL_NORMALIZATIONS = NORMALIZATIONS + LATER_NORMALIZATIONS
SOFTPICK_EPS = 1e-8  # softpick's epsilon in its denominator (the paper's reference value)
KV_SELECTS = ("stride", "random")
QK_CONV_TARGETS = ("k", "q", "qk")
QK_CONV_PADDINGS = ("same", "valid")
QK_NORMS = ("rms", "layer")  # qk_norm: RMSNorm or LayerNorm of each head's q and k (null: off)
# Entries of one query block's scores, B * h * b * M (times the additive hidden width), on the
# chunked and masked-fused paths: 2^22 float32 entries = 16 MiB a tensor.
BLOCK_ELEMENTS = 2**22
QK_NORM_EPS = 1e-6
# A chunked call of this many blocks or more, each with scores of at least
# ``SMALLEST_THRESHOLD_BYTES``, on CPU has allocations of a block's size mmapped from then on
# (``attnexp.util.memory``): freed blocks kept in glibc's heap would grow the process by about a
# block per block. Fewer blocks grow it by little and keep the heap's speed.
MMAP_AFTER_BLOCKS = 8
# Query rows per block of the kernel path with position biases (``_fused_key_feature``): the
# offsets of a block's keys are relative to its first query, so a query is at most this many
# positions from the reference of the keys it weighs most.
BIAS_BLOCK_ROWS = 64
# Query rows per block of the kernel path under a window (at least the window): each block reads
# only the keys within its window, so a sequence's windowed attention costs O(N (b + 2w)).
WINDOW_BLOCK_ROWS = 128

# Rough per-entry costs of the elementwise work, for analytic FLOP counts (one op = 1 FLOP).
_NORMALIZE_FLOPS_PER_ENTRY = {  # e.g. sub, exp, sum, div
    "softmax": 4, "sigmoid": 4, "max": 4, "softpick": 6, "stick_breaking": 6,
}  # fmt: skip


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")



@dataclass(frozen=True)
class AttentionDesign:
    """One point of the design space; construction refuses invalid combinations.

    ``window=None`` means no mask. ``qk_conv=0`` means no convolution. ``additive_dim`` is the
    hidden width of the additive scorer (``None``: the head dimension).
    """

    score: str = "dot"
    normalize: str = "softmax"
    window: int | None = None
    global_tokens: int = 0
    kv_stride: int = 1
    kv_select: str = "stride"
    qk_conv: int = 0
    qk_conv_padding: str = "same"
    qk_conv_target: str = "k"
    additive_dim: int | None = None
    rope: bool = False
    qk_norm: str | None = None
    softcap: float | None = None
    sink: bool = False
    alibi: bool = False
    forget_gate: bool = False

    def __post_init__(self) -> None:
        _check_choice("score", self.score, SCORES)
        _check_choice("normalize", self.normalize, ALL_NORMALIZATIONS)
        _check_choice("kv_select", self.kv_select, KV_SELECTS)
        _check_choice("qk_conv_padding", self.qk_conv_padding, QK_CONV_PADDINGS)
        _check_choice("qk_conv_target", self.qk_conv_target, QK_CONV_TARGETS)
        if self.window is not None:
            check_int("window", self.window, 0)
        check_int("global_tokens", self.global_tokens, 0)
        check_int("kv_stride", self.kv_stride, 1)
        check_int("qk_conv", self.qk_conv, 0)
        if self.qk_conv and self.qk_conv % 2 == 0:
            raise ValueError(
                f"qk_conv must be 0 (off) or an odd width so each output has a centre position, "
                f"got {self.qk_conv}"
            )
        if self.additive_dim is not None:
            check_int("additive_dim", self.additive_dim, 1)
        if not isinstance(self.rope, bool):
            raise ValueError(f"rope must be true or false, got {self.rope!r}")
        if self.qk_norm is not None:
            _check_choice("qk_norm", self.qk_norm, QK_NORMS)
        if self.softcap is not None and (
            isinstance(self.softcap, bool) or not isinstance(self.softcap, (int, float))
            or not 0 < self.softcap < math.inf
        ):  # fmt: skip
            raise ValueError(f"softcap must be null (off) or a positive number, got {self.softcap!r}")
        for key in ("sink", "alibi", "forget_gate"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.sink and self.normalize != "softmax":
            raise ValueError(
                "sink adds a learned logit to the softmax's denominator: it needs "
                f"normalize=softmax, got normalize={self.normalize}"
            )
        for key, reason in (
            ("alibi", "biases each score by the distance from the query to key j at position j"),
            ("forget_gate", "decays key j by the forget gates between position j and the query"),
            ("normalize=stick_breaking", "breaks the stick over the positions before the query"),
        ):
            on = self.normalize == "stick_breaking" if key.startswith("normalize") else getattr(self, key)
            if on and self.shortens_keys:
                name = key.split("=")[0]
                raise ValueError(
                    f"{key} {reason}, but kv_stride={self.kv_stride} / qk_conv_padding="
                    f"{self.qk_conv_padding} drops positions; use kv_stride=1 and "
                    f"qk_conv_padding=same with {name}"
                )
        if self.global_tokens and self.window is None:
            raise ValueError(
                "global_tokens only restricts attention together with window (without a window "
                "every position already sees every other); use window=0 for a global-only pattern"
            )
        if self.qk_conv and self.qk_conv_padding == "valid" and self.qk_conv_target == "q":
            raise ValueError(
                "qk_conv_padding=valid shortens the keys, so it needs qk_conv_target k or qk; "
                "queries keep one row per position"
            )
        if self.window is not None and self.shortens_keys:
            raise ValueError(
                "window needs keys aligned with queries (key j = position j), but "
                f"kv_stride={self.kv_stride} / qk_conv_padding=valid drops positions; "
                "use kv_stride=1 and qk_conv_padding=same with window"
            )

    @classmethod
    def from_knobs(cls, **knobs: object) -> AttentionDesign:
        """``AttentionDesign(**knobs)``, refusing an unknown knob by name with the list of knobs."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(knobs) - set(names))
        if unknown:
            raise ValueError(
                f"unknown attention design knob {', '.join(unknown)}; the knobs: {', '.join(names)}"
            )
        return cls(**knobs)

    @property
    def shortens_keys(self) -> bool:
        """Whether the keys are fewer than the positions (stride/random selection, valid conv)."""
        return self.kv_stride > 1 or (self.qk_conv > 0 and self.qk_conv_padding == "valid")

    @property
    def fast_path(self) -> bool:
        """Whether attention runs through ``scaled_dot_product_attention`` with no score change
        (when the weights are not asked for). ``forget_gate`` and causal ``alibi`` take the kernel
        with a bias feature instead (``ScoreChanges.fused``); the rest the chunked path. Every path
        holds O(N) memory."""
        plain_scores = self.softcap is None and not (self.sink or self.alibi or self.forget_gate)
        return self.score in FUSED_SCORES and self.normalize == "softmax" and plain_scores


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


class Scorer(nn.Module):
    """``(q (B, h, N, d), k (B, h, M, d)) -> scores (B, h, N, M)``; owns the score's parameters.

    ``cosine`` and ``pearson`` own one temperature per head, stored as a log and clamped at 100
    (as Swin v2 does) so it cannot blow up; initialised at ``temperature``. ``additive`` owns one
    MLP shared by all heads (``W_q: d -> a``, ``W_k: d -> a`` with bias ``b``, ``w: a -> 1`` with
    bias ``c``); its hidden tensor is ``(B, h, N, M, a)``, so it costs ``a`` times the memory of
    the score matrix. Its score is a logit: ``normalize=sigmoid`` turns it into
    ``sigmoid(MLP(q, k))``, the "alpha = sigmoid(MLP(a, b))" scorer (the ``-log n`` offset is a
    shift of the learnable bias ``c``).
    """

    def __init__(
        self,
        kind: str = "dot",
        *,
        num_heads: int,
        head_dim: int,
        additive_dim: int | None = None,
        temperature: float = 10.0,
    ) -> None:
        super().__init__()
        _check_choice("score", kind, SCORES)
        self.kind = kind
        self.head_dim = head_dim
        if kind in ("cosine", "pearson"):
            self.log_temperature = nn.Parameter(
                torch.full((num_heads, 1, 1), math.log(temperature))
            )
        if kind == "additive":
            hidden = additive_dim or head_dim
            self.w_q = nn.Linear(head_dim, hidden, bias=False)
            self.w_k = nn.Linear(head_dim, hidden)
            self.w = nn.Linear(hidden, 1)

    def temperature(self) -> Tensor:
        return self.log_temperature.clamp(max=math.log(100.0)).exp()

    @property
    def width(self) -> int:
        """Entries this scorer holds per query-key pair: the additive hidden width, else 1."""
        return self.w_k.out_features if self.kind == "additive" else 1

    def fused_inputs(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float]:
        """``(q', k', scale)`` with ``softmax(scale * q' k'^T)`` equal to ``softmax(self(q, k))``
        row by row (derivations in the module docstring); not for ``additive``."""
        d = self.head_dim
        if self.kind == "dot":
            return q, k, 1 / math.sqrt(d)
        if self.kind in ("cosine", "pearson"):
            if self.kind == "pearson":
                q, k = q - q.mean(-1, keepdim=True), k - k.mean(-1, keepdim=True)
            return self.temperature() * _unit(q), _unit(k), 1.0
        if self.kind == "l2":
            ones = torch.ones_like(q[..., :1])
            return (
                torch.cat([q, ones], -1),
                torch.cat([k, -0.5 * k.pow(2).sum(-1, keepdim=True)], -1),
                2 / math.sqrt(d),
            )
        raise ValueError(f"score {self.kind} has no fused form; fused: {', '.join(FUSED_SCORES)}")

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return self.score(q, self.keys(k))

    def keys(self, k: Tensor) -> Tensor:
        """The key side of the scores: unit keys (``cosine``; centred first for ``pearson``),
        ``W_k k + b`` (``additive``), the keys themselves otherwise. The chunked path computes it
        once per call and shares it between its blocks of query rows."""
        if self.kind == "cosine":
            return _unit(k)
        if self.kind == "pearson":
            return _unit(k - k.mean(-1, keepdim=True))
        if self.kind == "additive":
            return self.w_k(k)
        return k

    def score(self, q: Tensor, keys: Tensor) -> Tensor:
        """``(B, h, N, M)`` scores of queries ``q`` against ``keys(k)``."""
        if self.kind == "dot":
            return (q @ keys.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if self.kind == "cosine":
            return self.temperature() * (_unit(q) @ keys.transpose(-2, -1))
        if self.kind == "pearson":
            return self.temperature() * (_unit(q - q.mean(-1, keepdim=True)) @ keys.transpose(-2, -1))  # fmt: skip
        if self.kind == "l2":
            # |q - k|^2 = |q|^2 - 2 q.k + |k|^2, without the (N, M, d) difference tensor.
            sq = (
                q.pow(2).sum(-1, keepdim=True)
                - 2 * (q @ keys.transpose(-2, -1))
                + keys.pow(2).sum(-1).unsqueeze(-2)
            )
            return -sq.clamp(min=0) / math.sqrt(self.head_dim)
        # additive
        hidden = torch.tanh(self.w_q(q).unsqueeze(-2) + keys.unsqueeze(-3))
        return self.w(hidden).squeeze(-1)

    def flops(self, n: int, m: int, num_heads: int) -> int:
        """Analytic FLOPs of the scores for one sample (a multiply-add counts 2)."""
        d, pairs = self.head_dim, n * m * num_heads
        if self.kind == "dot":
            return 2 * pairs * d
        if self.kind == "cosine":  # dot + normalising every q and k (square, sum, divide)
            return 2 * pairs * d + 3 * (n + m) * d * num_heads + pairs
        if self.kind == "pearson":  # cosine + centring (mean, subtract)
            return 2 * pairs * d + 5 * (n + m) * d * num_heads + pairs
        if self.kind == "l2":  # dot + squared norms + two adds per pair
            return 2 * pairs * d + 2 * (n + m) * d * num_heads + 3 * pairs
        a = self.w_k.out_features  # additive: projections, then add + tanh + dot per pair
        return 2 * (n + m) * d * a * num_heads + 4 * pairs * a


# --------------------------------------------------------------------------------------------
# Normalisations
# --------------------------------------------------------------------------------------------


def normalize_scores(
    scores: Tensor, kind: str = "softmax", mask: Tensor | None = None, sink: Tensor | None = None
) -> Tensor:
    """Scores ``(..., N, M)`` -> weights over the key axis; formulas in the module docstring.

    ``mask`` is boolean, broadcastable to ``scores``, True where a key may be attended; masked
    entries get exactly zero weight under every normalisation. ``sink`` (softmax only): one
    logit per head ``(h,)`` for ``(B, h, N, M)`` scores, added to every row's denominator, so a
    row may give less than all of its weight to the keys.
    """
    _check_choice("normalize", kind, ALL_NORMALIZATIONS)
    if kind == "softpick":
        return _softpick(scores, mask)
    if kind == "stick_breaking":
        return _stick_breaking(scores, mask)
    if kind == "softmax":
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if sink is None:
            weights = scores.softmax(dim=-1)
        else:  # e^s / (e^b + sum e^s), computed from the log of the denominator
            total = torch.logaddexp(scores.logsumexp(-1, keepdim=True), sink.view(-1, 1, 1))
            weights = (scores - total).exp()
    elif kind == "sigmoid":
        if mask is None:
            offset = math.log(scores.shape[-1])
        else:
            offset = mask.sum(-1, keepdim=True).clamp(min=1).to(scores.dtype).log()
        weights = torch.sigmoid(scores - offset)
    else:  # max
        if mask is None:
            low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
        else:
            low = scores.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
            high = scores.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
        span = high - low
        # A constant row has span 0: every allowed key is "the best" and gets weight 1. The clamp
        # keeps the unused branch finite so gradients through torch.where stay finite too.
        scaled = (scores - low) / span.clamp(min=torch.finfo(scores.dtype).tiny)
        weights = torch.where(span > 0, scaled, torch.ones_like(scaled))
    return weights if mask is None else weights.masked_fill(~mask, 0.0)


def _softpick(scores: Tensor, mask: Tensor | None) -> Tensor:
    """``ReLU(e^s - 1) / (sum_l |e^s_l - 1| + eps)`` over the allowed keys (a masked key adds
    nothing to the sum). Numerator and denominator are both scaled by ``e^-t``, ``t = max(row max,
    0)``, so no exponent is positive: ``(e^(s - t) - e^-t)`` and ``eps e^-t`` instead of ``e^s - 1``
    and ``eps``, which is the same ratio."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(-1, keepdim=True).clamp(min=0)  # a row with no allowed key: 0
    floor = torch.exp(-top)
    shifted = torch.exp(scores - top) - floor  # (e^s - 1) e^-t
    if mask is not None:
        shifted = shifted.masked_fill(~mask, 0.0)
    return shifted.clamp(min=0) / (shifted.abs().sum(-1, keepdim=True) + SOFTPICK_EPS * floor)


def _stick_breaking(scores: Tensor, mask: Tensor | None) -> Tensor:
    """``a_ij = sigmoid(z_ij) prod_{allowed k > j} (1 - sigmoid(z_ik))``: the allowed keys, from
    the last one back, each take their share of what the later ones left. In log space:
    ``logsigmoid(z_ij) + sum_{k > j} logsigmoid(-z_ik)``, a reversed cumulative sum along the
    row. A masked key neither takes nor breaks. The caller's mask says which keys precede the
    query (``ScoreChanges`` ANDs key < query in)."""
    log_keep = F.logsigmoid(-scores)  # log(1 - sigmoid(z))
    log_take = F.logsigmoid(scores)
    if mask is not None:
        log_keep = log_keep.masked_fill(~mask, 0.0)
    later = log_keep.flip(-1).cumsum(-1).flip(-1) - log_keep  # sum over the keys after j
    weights = (log_take + later).exp()
    return weights if mask is None else weights.masked_fill(~mask, 0.0)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def grid_coordinates(grid: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """``(N, len(grid))`` integer coordinates of the positions of ``grid`` in raster order."""
    axes = [torch.arange(size, device=device) for size in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


def window_mask(
    grid: tuple[int, ...],
    window: int,
    device: torch.device | None = None,
    rows: slice = slice(None),
    keys: slice = slice(None),
) -> Tensor:
    """``(N, N)`` bool: positions within Chebyshev distance ``window`` (``|i - j|`` in 1-D).
    ``rows``, ``keys``: only those query rows and keys (``(b, k)``), one axis at a time (no
    ``(b, k, ndim)``)."""
    coords = grid_coordinates(grid, device)
    allowed = None
    for axis in range(coords.shape[-1]):
        near = (coords[rows, None, axis] - coords[None, keys, axis]).abs() <= window
        allowed = near if allowed is None else allowed & near
    return allowed


def global_mask(
    n: int, global_tokens: int, device: torch.device | None = None, rows: slice = slice(None),
    keys: slice = slice(None),
) -> Tensor:  # fmt: skip
    """``(N, N)`` bool: row or column among the first ``global_tokens`` positions (``rows``,
    ``keys``: only those query rows and keys)."""
    is_global = torch.arange(n, device=device) < global_tokens
    return is_global[rows, None] | is_global[None, keys]


def attention_mask(
    grid: tuple[int, ...],
    window: int | None = None,
    global_tokens: int = 0,
    device: torch.device | None = None,
) -> Tensor | None:
    """The allowed set (window OR global) as ``(N, N)`` bool, or ``None`` when nothing is masked."""
    n = math.prod(grid)
    return KeyMask(grid=grid, window=window, global_tokens=global_tokens).rows(0, n, n, device)


def causal_mask(
    n: int,
    key_positions: Tensor | None = None,
    device: torch.device | None = None,
    rows: slice = slice(None),
    keys: slice = slice(None),
) -> Tensor:
    """Bool, True where key m's position is <= query i's: ``(N, M)``, or ``(B, 1, N, M)`` for
    per-sample ``key_positions`` ``(B, M)``. ``key_positions=None``: keys are positions 0..N-1.
    ``rows``, ``keys``: only those query rows and keys."""
    positions = torch.arange(n, device=device) if key_positions is None else key_positions
    queries = torch.arange(n, device=positions.device)[rows]
    mask = positions[..., keys].unsqueeze(-2) <= queries.unsqueeze(-1)
    return mask.unsqueeze(1) if mask.dim() == 3 else mask


class KeyMask:
    """Which keys each query may see, as rules that build the boolean mask (True = allowed) for
    any block of query rows, so no path but the explicit one holds all N x M of it.

    ``grid``/``window``/``global_tokens``: the window OR global set (keys are the positions);
    ``causal``: a key's position <= the query's, keys at ``key_positions`` (``(M,)`` or per
    sample ``(B, M)``; ``None``: 0..M-1); ``key_padding``: ``(B, M)``, True = a real key;
    ``dense``: any explicit mask broadcastable to ``(B, h, N, M)``. The rules are ANDed.
    """

    def __init__(
        self,
        *,
        grid: tuple[int, ...] | None = None,
        window: int | None = None,
        global_tokens: int = 0,
        causal: bool = False,
        key_positions: Tensor | None = None,
        key_padding: Tensor | None = None,
        dense: Tensor | None = None,
    ) -> None:
        if window is not None and grid is None:
            raise ValueError("a window mask needs the grid its positions lie on")
        self.grid, self.window, self.global_tokens = grid, window, global_tokens
        self.causal, self.key_positions = causal, key_positions
        self.key_padding, self.dense = key_padding, dense

    def with_key_padding(self, key_padding: Tensor) -> KeyMask:
        """This mask AND ``key_padding`` (``(B, M)`` bool, True = a real key)."""
        if key_padding.dtype != torch.bool or key_padding.dim() != 2:
            raise ValueError(
                "key_padding must be a (batch, keys) bool tensor, True at real keys; got "
                f"{key_padding.dtype} of shape {tuple(key_padding.shape)}"
            )
        both = key_padding if self.key_padding is None else self.key_padding & key_padding
        return KeyMask(grid=self.grid, window=self.window, global_tokens=self.global_tokens,
                       causal=self.causal, key_positions=self.key_positions, key_padding=both,
                       dense=self.dense)  # fmt: skip

    @property
    def plain_causal(self) -> bool:
        """Causal over keys = positions and nothing else: the kernel's own ``is_causal``."""
        rules = (self.window, self.key_positions, self.key_padding, self.dense)
        return self.causal and all(rule is None for rule in rules)

    @property
    def same_for_every_row(self) -> bool:
        """Whether the mask does not depend on the query (none, key padding, a ``(..., 1, M)``
        dense mask): ``rows`` of any block is the whole of it, ``(B, 1, 1, M)`` at most."""
        dense_rows = self.dense is not None and self.dense.dim() >= 2 and self.dense.shape[-2] > 1
        return self.window is None and not self.causal and not dense_rows

    def key_span(self, start: int, stop: int, n_keys: int) -> tuple[int, int]:
        """The keys ``[lo, hi)`` outside which no query of rows ``start:stop`` may look: a
        sequence's window (with no global tokens, keys at the positions) bounds them to
        ``[start - window, stop + window)``, causal to ``stop``; else every key."""
        lo, hi = 0, n_keys
        if self.window is not None and len(self.grid) == 1 and not self.global_tokens and self.key_positions is None and self.dense is None:  # fmt: skip
            lo, hi = max(0, start - self.window), min(n_keys, stop + self.window)
        if self.causal and self.key_positions is None:
            hi = min(hi, stop)
        return lo, hi

    def rows(
        self, start: int, stop: int, n_keys: int, device: torch.device | None = None,
        keys: slice = slice(None),
    ) -> Tensor | None:  # fmt: skip
        """The mask of query rows ``start:stop`` over ``n_keys`` keys (``keys``: only those),
        broadcastable to ``(B, h, stop - start, keys)``, or ``None`` when nothing is masked."""
        rows, masks = slice(start, stop), []
        if self.window is not None:
            masks.append(window_mask(self.grid, self.window, device, rows, keys))
            if self.global_tokens:
                n = math.prod(self.grid)
                masks[-1] = masks[-1] | global_mask(n, self.global_tokens, device, rows, keys)
        if self.causal:  # keys 0..M-1 are the positions (N = M), or at key_positions
            n = n_keys if self.key_positions is None else stop
            masks.append(causal_mask(n, self.key_positions, device, rows, keys))
        if self.dense is not None:
            dense_rows = self.dense.dim() >= 2 and self.dense.shape[-2] > 1
            dense_keys = self.dense.shape[-1] > 1
            masks.append(self.dense[..., rows if dense_rows else slice(None), keys if dense_keys else slice(None)])
        if self.key_padding is not None:
            masks.append(self.key_padding[:, None, None, keys])
        if not masks:
            return None
        mask = masks[0]
        for other in masks[1:]:
            mask = mask & other
        # Padding may leave a row no key: it sees every key instead (``masking.nonempty``).
        return mask if self.key_padding is None else nonempty(mask)


# --------------------------------------------------------------------------------------------
# Keys and values
# --------------------------------------------------------------------------------------------


def kv_positions(
    n: int,
    stride: int = 1,
    mode: str = "stride",
    *,
    batch: int = 1,
    training: bool = False,
    keep_first: bool = False,
    device: torch.device | None = None,
) -> Tensor | None:
    """Which ``ceil(n / stride)`` of ``n`` key positions to keep, in position order: ``(M,)``
    shared by the batch, ``(batch, M)`` per sample (``random`` in training), or ``None`` for all.

    ``stride``: positions 0, s, 2s, ...; ``random``: a random subset, fresh per sample in training,
    one per call shared by the batch in eval (see the module docstring). ``keep_first``: position 0
    is always kept (``random`` draws the others), so every causal query has a key.
    """
    _check_choice("kv_select", mode, KV_SELECTS)
    if stride == 1:
        return None
    if mode == "stride":
        return torch.arange(0, n, stride, device=device)
    first = int(keep_first)
    keep = math.ceil(n / stride) - first
    if training:
        index = torch.rand(batch, n - first, device=device).argsort(-1)[:, :keep]
    else:
        index = torch.randperm(n - first, device=device)[:keep]
    index = (index + first).sort(-1).values
    return F.pad(index, (1, 0)) if first else index


def take_positions(x: Tensor, index: Tensor | None) -> Tensor:
    """The rows ``index`` (``(M,)`` or per sample ``(B, M)``) of ``(B, h, N, d)`` ``x``."""
    if index is None:
        return x
    if index.dim() == 1:
        return x[..., index, :]
    batch, heads, _, d = x.shape
    return x.gather(2, index[:, None, :, None].expand(batch, heads, index.shape[-1], d))


def select_kv(
    k: Tensor, v: Tensor, stride: int = 1, mode: str = "stride", training: bool = False
) -> tuple[Tensor, Tensor]:
    """Keep ``ceil(M / stride)`` of the ``M`` key/value positions of ``(B, h, M, d)`` tensors, as
    ``kv_positions`` chooses them."""
    index = kv_positions(
        k.shape[-2], stride, mode, batch=k.shape[0], training=training, device=k.device
    )
    return take_positions(k, index), take_positions(v, index)


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of ``(..., N, d)`` ``x`` at integer ``positions`` ``(N,)``: the
    feature pair (f, f + d/2) at position p turned by the angle p * base^(-2f/d) (GPT-NeoX's
    half-rotation; d even). Computed in float32, returned in ``x``'s dtype."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq  # (N, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class GridDepthwiseConv(nn.Module):
    """Depthwise convolution over the grid of a ``(B, h, N, d)`` tensor (channels ``h * d``).

    Width ``kernel_size`` (odd) along each axis of a ``grid_ndim``-dimensional grid. Initialised
    at the identity (centre tap 1, bias 0) so adding it does not change the model at start.
    ``forward(x, grid) -> (y, out_grid)``; ``valid`` padding shrinks each axis by kernel_size - 1.
    ``causal`` (sequences, ``same`` only): left padding only, identity at the last tap.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        *,
        padding: str = "same",
        grid_ndim: int = 1,
        causal: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("qk_conv_padding", padding, QK_CONV_PADDINGS)
        if grid_ndim not in (1, 2):
            raise ValueError(f"grid_ndim must be 1 or 2, got {grid_ndim!r}")
        if causal and (grid_ndim != 1 or padding != "same"):
            raise ValueError("a causal qk_conv needs a sequence (grid_ndim=1) and padding same")
        conv = nn.Conv1d if grid_ndim == 1 else nn.Conv2d
        self.conv = conv(
            channels,
            channels,
            kernel_size,
            padding=kernel_size // 2 if padding == "same" and not causal else 0,
            groups=channels,
        )
        self.grid_ndim, self.causal = grid_ndim, causal
        identity_tap = kernel_size - 1 if causal else kernel_size // 2
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[(slice(None), 0, *[identity_tap] * grid_ndim)] = 1.0
            self.conv.bias.zero_()

    def output_grid(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        if self.causal:
            return tuple(grid)
        pad, size = self.conv.padding[0], self.conv.kernel_size[0]
        return tuple(side + 2 * pad - size + 1 for side in grid)

    def forward(self, x: Tensor, grid: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
        if len(grid) != self.grid_ndim:
            raise ValueError(
                f"qk_conv was built for a {self.grid_ndim}-D grid (grid_ndim={self.grid_ndim}) "
                f"but got grid {tuple(grid)}"
            )
        out_grid = self.output_grid(grid)
        if min(out_grid) < 1:
            raise ValueError(f"qk_conv={self.conv.kernel_size[0]} is wider than grid {grid}")
        batch, heads, n, d = x.shape
        x = x.transpose(-2, -1).reshape(batch, heads * d, *grid)
        if self.causal:
            y = causal_conv1d(x, self.conv.weight, self.conv.bias, self.conv.groups)
        else:
            y = self.conv(x)
        return y.reshape(batch, heads, d, -1).transpose(-2, -1), out_grid

    def flops(self, grid: tuple[int, ...]) -> int:
        taps = self.conv.kernel_size[0] ** self.grid_ndim
        return 2 * taps * self.conv.in_channels * math.prod(self.output_grid(grid))


def crop_valid(x: Tensor, grid: tuple[int, ...], kernel_size: int) -> Tensor:
    """``(B, h, N, d)`` -> the positions a ``valid`` convolution of ``kernel_size`` centres on."""
    r = kernel_size // 2
    spatial = x.reshape(*x.shape[:2], *grid, x.shape[-1])
    index = (slice(None), slice(None), *[slice(r, side - r) for side in grid])
    return spatial[index].flatten(2, -2)


def valid_key_padding(mask: Tensor, grid: tuple[int, ...], kernel_size: int) -> Tensor:
    """``(B, N)`` padding mask -> ``(B, M)`` over the centres of a ``valid`` convolution: True
    where the whole window is real, which are exactly the keys the unpadded grid has."""
    padded = (~mask).to(torch.float32).reshape(mask.shape[0], 1, *grid)
    pool = F.max_pool1d if len(grid) == 1 else F.max_pool2d
    return pool(padded, kernel_size, stride=1).flatten(1) == 0


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------


def block_rows(elements_per_row: int, block_elements: int) -> int:
    """Query rows per block so one block holds at most ``block_elements`` entries (at least 1)."""
    return max(1, block_elements // max(1, elements_per_row))


def _scores(scorer: Scorer | None, q: Tensor, k: Tensor) -> Tensor:
    """The explicit score matrix; ``scorer=None`` is the scaled dot product."""
    if scorer is not None:
        return scorer(q, k)
    return (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])


def same_width(t: Tensor, width: int) -> Tensor:
    """``t`` with zero features appended up to ``width``. The kernel's memory-efficient paths
    want q, k and v of one width (with v wider than q and k, as ``differential``'s, the CPU kernel
    falls back to the N x M matrix): a zero feature adds nothing to ``q.k``, and the values'
    extra features are cropped after."""
    return t if t.shape[-1] >= width else F.pad(t, (0, width - t.shape[-1]))


def _kernel_inputs(q: Tensor, k: Tensor, scorer: Scorer | None) -> tuple[Tensor, Tensor, float]:
    """``(q', k', scale)`` for the kernel: ``Scorer.fused_inputs``, or the scaled dot product."""
    return (q, k, 1 / math.sqrt(q.shape[-1])) if scorer is None else scorer.fused_inputs(q, k)


def _fused_softmax(
    q: Tensor, k: Tensor, v: Tensor, scorer: Scorer | None, allowed: KeyMask, p: float,
    block_elements: int,
) -> Tensor:  # fmt: skip
    """Softmax attention through ``scaled_dot_product_attention`` on ``Scorer.fused_inputs``; a
    row-dependent mask goes in blocks of query rows, each with its own rows of the mask."""
    q, k, scale = _kernel_inputs(q, k, scorer)
    width = v.shape[-1]
    q, k, v = (same_width(t, max(k.shape[-1], width)) for t in (q, k, v))
    n, m = q.shape[-2], k.shape[-2]
    if allowed.plain_causal or allowed.same_for_every_row:
        mask = None if allowed.plain_causal else allowed.rows(0, n, m, q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=allowed.plain_causal, scale=scale
        )
        return out[..., :width]
    b = block_rows(q.shape[0] * m, block_elements)  # the mask rows are (B, 1, b, M) at most
    if allowed.window is not None:  # each block reads only the keys its window spans
        b = min(b, max(WINDOW_BLOCK_ROWS, allowed.window))
    outs = []
    for i in range(0, n, b):
        stop = min(i + b, n)
        lo, hi = allowed.key_span(i, stop, m)
        if allowed.key_padding is None:
            mask = allowed.rows(i, stop, m, q.device, slice(lo, hi))
        else:  # a row padding leaves without keys sees every key (masking.nonempty), outside
            mask = allowed.rows(i, stop, m, q.device)  # the span too: then the block keeps all
            if mask[..., :lo].any() or mask[..., hi:].any():
                lo, hi = 0, m
            mask = mask[..., lo:hi]
        outs.append(F.scaled_dot_product_attention(
            q[..., i:stop, :], k[..., lo:hi, :], v[..., lo:hi, :], attn_mask=mask, dropout_p=p,
            scale=scale,
        ))  # fmt: skip
    return torch.cat(outs, dim=-2)[..., :width]


def _fused_key_feature(
    q: Tensor, k: Tensor, v: Tensor, scale: float, allowed: KeyMask, p: float,
    block_elements: int, modify: ScoreChanges,
) -> Tensor:  # fmt: skip
    """Softmax attention with a position bias of the form ``b_i + beta_j`` (the forget gate's
    ``c_i - c_j``; causal ALiBi's ``m_h (j - i)`` on the allowed keys) and a ``sink`` through the
    kernel, by one more feature: ``1 / scale`` on every query, ``beta_j`` on key j (the softmax
    drops ``b_i``). ``beta_j`` grows with N (``c_j`` falls without bound), so each block of query
    rows takes it relative to its first query (``ScoreChanges.key_bias``): the keys near the
    block, which hold its weight, get small offsets that keep their precision in bf16, and the far
    ones large negative offsets, which they had anyway. Blocks hold at most ``BIAS_BLOCK_ROWS``
    queries, so no near key is far from its block's start; causal, a block reads the keys up to
    its last query only. The sink is one more key after them: its feature is the head's logit,
    its value zero, and every query may see it, so the mask is explicit (the kernel's
    ``is_causal`` would align a longer key axis at the top left). Each block rebuilds its keys,
    so in training it is recomputed in backward (checkpoint) instead of keeping them."""
    n, m, dk = q.shape[-2], k.shape[-2], k.shape[-1]  # the extra feature is feature dk
    width, features = v.shape[-1], max(dk + 1 + (modify.sink is not None), v.shape[-1])
    q = same_width(torch.cat([q, q.new_full((*q.shape[:-1], 1), 1 / scale)], -1), features)
    v = same_width(v, features)

    def block(q_rows: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
        keys = k.shape[-2]  # M, or the first keys up to the block's last query
        bias = modify.key_bias(start, keys, k.device).to(k.dtype)  # (B or 1, h, keys)
        k = same_width(torch.cat([k, bias.unsqueeze(-1).expand(*k.shape[:-1], 1)], -1), features)
        mask = allowed.rows(start, start + q_rows.shape[-2], m, q.device)
        mask = None if mask is None else mask[..., :keys]
        if modify.sink is not None:
            offset = modify.row_offset(start, q_rows.shape[-2], q.device)
            offset = None if offset is None else offset / scale
            q_rows, k, v, mask = with_sink_key(q_rows, k, v, mask, modify.sink, dk, offset)
        return F.scaled_dot_product_attention(q_rows, k, v, attn_mask=mask, dropout_p=p, scale=scale)

    rows = _score_block_rows(q, m, None, block_elements)
    b = rows if modify.alibi is None and modify.forget is None else min(BIAS_BLOCK_ROWS, rows)
    causal = allowed.causal and allowed.key_positions is None

    def args_at(i: int) -> tuple:  # causal over keys at the positions: none past the last query
        stop = min(i + b, m) if causal else m
        return q[..., i : i + b, :], k[..., :stop, :], v[..., :stop, :], i

    return _over_blocks(block, n, b, args_at, p)[..., :width]


def with_sink_key(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, sink: Tensor, feature: int,
    row_offset: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:  # fmt: skip
    """The kernel's ``q`` ``(B, h, rows, f)``, ``k``, ``v`` ``(B, h, M, f)`` and ``mask`` with one
    more key after the others, allowed for every query, with a zero value: the head's ``sink``
    logit (``(h,)``) at ``feature`` (where each query holds ``1 / scale``) and 1 at ``feature +
    1``, where each query gets ``-row_offset`` (``(B or 1, h, rows)``, already over the scale):
    what the kernel's relative key biases left out of its row (``ScoreChanges.row_offset``)."""
    logit, offset = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)[[feature, feature + 1]]
    key = sink.to(k.dtype).view(-1, 1, 1) * logit + offset  # (h, 1, f)
    k = torch.cat([k, key.expand(k.shape[0], -1, 1, -1)], -2)
    v = torch.cat([v, v.new_zeros((*v.shape[:-2], 1, v.shape[-1]))], -2)
    if row_offset is not None:
        q = q - row_offset.to(q.dtype).unsqueeze(-1) * offset
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones((*mask.shape[:-1], 1))], -1)
    return q, k, v, mask


class ScoreChanges:
    """What happens to a block of scores between the score and the weights, in this order:
    ``softcap`` (``c·tanh(s/c)``), the position biases: ``alibi`` (slopes ``(h,)``: ``− m_h·|i −
    j|`` for query position i and key j at position j) and ``forget`` (``(B, h, N)`` cumulative
    log forget gates c: ``+ c_i − c_j``, the sum of ``log f_l`` over ``j < l <= i``), then the
    normalisation, with ``sink`` (``(h,)`` logits in the softmax's denominator); ``stick_breaking``
    sees only keys before the query. Every path applies it the same way, block by block."""

    def __init__(
        self, softcap: float | None = None, sink: Tensor | None = None, alibi: Tensor | None = None,
        forget: Tensor | None = None,
    ) -> None:  # fmt: skip
        self.softcap, self.sink, self.alibi, self.forget = softcap, sink, alibi, forget

    @property
    def none(self) -> bool:
        return self.softcap is None and self.sink is None and self.alibi is None and self.forget is None

    def fused(self, allowed: KeyMask) -> bool:
        """Whether the fused kernel can apply these changes (``_fused_key_feature``): no
        ``softcap``, and ALiBi only causal over keys at the positions, where its ``-m_h |i - j|``
        is ``m_h (j - i)``."""
        aligned_causal = allowed.causal and allowed.key_positions is None
        return self.softcap is None and (self.alibi is None or aligned_causal)

    def key_bias(self, start: int, m: int, device: torch.device) -> Tensor:
        """``beta_j`` of the position biases, ``(B or 1, h, M)`` in float32 at least, relative to
        query ``start``: ``-(c_j - c_start)`` and ``m_h (j - start)``."""
        bias = torch.zeros((), device=device)
        if self.forget is not None:
            c = self.forget
            bias = -(c[..., :m] - c[..., start : start + 1])
        if self.alibi is not None:
            j = torch.arange(m, device=device, dtype=self.alibi.dtype) - start
            bias = bias + (self.alibi.view(-1, 1) * j).to(torch.promote_types(self.alibi.dtype, torch.float32))
        return bias if bias.dim() == 3 else bias.unsqueeze(0)

    def row_offset(self, start: int, rows: int, device: torch.device) -> Tensor | None:
        """What ``key_bias`` leaves out of the logits of queries ``start..start + rows - 1``
        (``(B or 1, h, rows)``), the same for every key of a row, so the softmax over the keys
        drops it but a sink's logit must not: ``c_i - c_start`` and ``-m_h (i - start)``."""
        offset = None
        if self.forget is not None:
            c = self.forget
            offset = c[..., start : start + rows] - c[..., start : start + 1]
        if self.alibi is not None:
            i = torch.arange(rows, device=device, dtype=self.alibi.dtype)
            alibi = -(self.alibi.view(-1, 1) * i).unsqueeze(0)
            offset = alibi if offset is None else offset + alibi
        return offset

    def capped(self, scores: Tensor) -> Tensor:
        """The logits: ``scores`` after ``softcap``."""
        return scores if self.softcap is None else self.softcap * torch.tanh(scores / self.softcap)

    def biased(self, logits: Tensor, start: int) -> Tensor:
        """``logits`` ``(B, h, rows, M)`` of queries ``start``.. plus the position biases."""
        rows, m = logits.shape[-2], logits.shape[-1]
        if self.alibi is not None:
            i, j = _positions(start, rows, m, logits.device)
            logits = logits - self.alibi.view(-1, 1, 1) * (i - j).abs().to(logits.dtype)
        if self.forget is not None:  # differences taken in the gates' own (float32) precision
            c = self.forget
            logits = logits + (c[..., start : start + rows, None] - c[..., None, :m]).to(logits.dtype)
        return logits

    def normalize(self, scores: Tensor, start: int, kind: str, mask: Tensor | None) -> Tensor:
        """The weights of ``scores`` ``(B, h, rows, M)``, rows from query ``start`` on."""
        logits = self.biased(self.capped(scores), start)
        if kind == "stick_breaking":  # a query breaks the stick over the keys before it only
            i, j = _positions(start, scores.shape[-2], scores.shape[-1], scores.device)
            mask = j < i if mask is None else mask & (j < i)
        return normalize_scores(logits, kind, mask, self.sink)


def _positions(start: int, rows: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Query positions ``(rows, 1)`` from ``start`` and key positions ``(1, m)``."""
    i = torch.arange(start, start + rows, device=device)[:, None]
    return i, torch.arange(m, device=device)[None, :]


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's slopes ``m_h = 2^(−8h/H)`` for heads ``h = 1..H`` (Press et al., 2022)."""
    return torch.pow(2.0, -8.0 * torch.arange(1, num_heads + 1) / num_heads)


def _chunked(
    q: Tensor, k: Tensor, v: Tensor, scorer: Scorer | None, normalize: str, allowed: KeyMask,
    p: float, block_elements: int, modify: ScoreChanges,
) -> Tensor:  # fmt: skip
    """Attention over blocks of query rows, each computing only its rows of scores and weights;
    with several blocks and gradients on, each block is recomputed in backward (checkpoint, which
    replays the block's dropout draws) instead of keeping its weights."""
    n, m = q.shape[-2], k.shape[-2]
    b = _score_block_rows(q, m, scorer, block_elements)

    def block(q_rows: Tensor, keys: Tensor, v: Tensor, start: int) -> Tensor:
        _, _, weights = _block_weights(q_rows, keys, start, m, scorer, normalize, allowed, modify)
        return F.dropout(weights, p) @ v

    keys = k if scorer is None else scorer.keys(k)  # once, not once per block
    score_bytes = q.shape[0] * q.shape[1] * b * m * q.element_size()  # one block's scores
    if q.device.type == "cpu" and n >= MMAP_AFTER_BLOCKS * b and score_bytes >= SMALLEST_THRESHOLD_BYTES:  # fmt: skip
        mmap_large_blocks(score_bytes)  # the process stays linear in N
    return _over_blocks(block, n, b, lambda i: (q[..., i : i + b, :], keys, v, i), p)


def _over_blocks(
    block: Callable[..., Tensor], n: int, b: int, args_at: Callable[[int], tuple], p: float
) -> Tensor:
    """``block(*args_at(i))`` for the blocks of ``b`` query rows from 0 to ``n``, concatenated
    along the queries. With several blocks and gradients on, each block is checkpointed
    (recomputed in backward instead of keeping its intermediates); the RNG state (5 KB a block on
    CPU) is kept only if dropout draws."""
    if n <= b:
        return block(*args_at(0))
    recompute = torch.is_grad_enabled()
    outs = []
    for i in range(0, n, b):
        if recompute:
            outs.append(checkpoint(block, *args_at(i), use_reentrant=False, preserve_rng_state=p > 0))
        else:
            outs.append(block(*args_at(i)))
    return torch.cat(outs, dim=-2)


def _score_block_rows(q: Tensor, m: int, scorer: Scorer | None, block_elements: int) -> int:
    """Query rows per block of scores over ``m`` keys (times the scorer's width per pair)."""
    width = scorer.width if scorer is not None else 1
    return block_rows(q.shape[0] * q.shape[1] * m * width, block_elements)


def _block_weights(
    q_rows: Tensor, keys: Tensor, start: int, m: int, scorer: Scorer | None, normalize: str,
    allowed: KeyMask, modify: ScoreChanges,
) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """One block of query rows from ``start``: its scores against ``keys`` (``Scorer.keys``),
    its mask rows and its weights."""
    mask = allowed.rows(start, start + q_rows.shape[-2], m, q_rows.device)
    scores = _scores(None, q_rows, keys) if scorer is None else scorer.score(q_rows, keys)
    return scores, mask, modify.normalize(scores, start, normalize, mask)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scorer: Scorer | None = None,
    normalize: str = "softmax",
    mask: Tensor | KeyMask | None = None,
    is_causal: bool = False,
    key_padding: Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
    need_weights: bool = False,
    block_elements: int | None = None,
    softcap: float | None = None,
    sink: Tensor | None = None,
    alibi: Tensor | None = None,
    forget: Tensor | None = None,
    fused: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``q (B, h, N, d)``, ``k, v (B, h, M, d)`` -> ``(out (B, h, N, d), weights or None)``.

    ``scorer=None`` is the scaled dot product. ``mask``: bool broadcastable to ``(B, h, N, M)``,
    True = allowed, or a ``KeyMask`` (built per block of rows). ``is_causal`` (instead of a
    ``mask``, keys = queries' positions): query i sees keys <= i. ``key_padding``: ``(B, M)``
    bool, True = a real key, ANDed with the mask as ``(B, 1, 1, M)``; a query left with
    no allowed key (a fully padded sample) sees every key instead, finite rather than NaN. Dropout acts on the weights
    only when ``training``. ``need_weights`` runs the explicit path and returns the weights
    ``(B, h, N, M)`` before dropout; otherwise the fused or chunked path (module docstring), whose
    blocks hold at most ``block_elements`` score entries (``None``: ``BLOCK_ELEMENTS``).
    ``softcap``, ``sink``, ``alibi`` (slopes ``(h,)``) and ``forget`` (cumulative log forget gates
    ``(B, h, N)``, keys = positions) change the scores on their way to weights (``ScoreChanges``).
    ``fused=False`` takes the chunked path where the kernel would serve: the kernels' reference.
    """
    allowed, modify = _rules(normalize, mask, is_causal, key_padding, softcap, sink, alibi, forget)
    p = dropout_p if training else 0.0
    block_elements = BLOCK_ELEMENTS if block_elements is None else block_elements
    if need_weights:
        full = allowed.rows(0, q.shape[-2], k.shape[-2], q.device)
        weights = modify.normalize(_scores(scorer, q, k), 0, normalize, full)
        return F.dropout(weights, p) @ v, weights
    score = "dot" if scorer is None else scorer.kind
    if not fused:
        return _chunked(q, k, v, scorer, normalize, allowed, p, block_elements, modify), None
    if normalize == "softmax" and score in FUSED_SCORES and modify.none:
        return _fused_softmax(q, k, v, scorer, allowed, p, block_elements), None
    if normalize == "softmax" and score in FUSED_SCORES and modify.fused(allowed):
        q, k, scale = _kernel_inputs(q, k, scorer)
        return _fused_key_feature(q, k, v, scale, allowed, p, block_elements, modify), None
    return _chunked(q, k, v, scorer, normalize, allowed, p, block_elements, modify), None


def _rules(
    normalize: str, mask: Tensor | KeyMask | None, is_causal: bool, key_padding: Tensor | None,
    softcap: float | None, sink: Tensor | None, alibi: Tensor | None, forget: Tensor | None,
) -> tuple[KeyMask, ScoreChanges]:  # fmt: skip
    """``attend``'s arguments as the mask rules and the score changes every path applies."""
    if is_causal and mask is not None:
        raise ValueError("attend takes a mask or is_causal, not both; fold causality into the mask")
    _check_choice("normalize", normalize, ALL_NORMALIZATIONS)
    allowed = mask if isinstance(mask, KeyMask) else KeyMask(causal=is_causal, dense=mask)
    if key_padding is not None:
        allowed = allowed.with_key_padding(key_padding)
    return allowed, ScoreChanges(softcap, sink, alibi, forget)


@dataclass(frozen=True)
class MapBlock:
    """What one block of query rows of an attention map holds, for inspection: its first row
    ``start``, the ``logits`` ``(B, h, rows, M)`` after ``softcap`` (before the position biases),
    the ``weights`` and the ``allowed`` mask rows (``None``: every key)."""

    start: int
    logits: Tensor
    weights: Tensor
    allowed: Tensor | None


def map_blocks(
    q: Tensor, k: Tensor, *, scorer: Scorer | None = None, normalize: str = "softmax",
    mask: Tensor | KeyMask | None = None, is_causal: bool = False,
    key_padding: Tensor | None = None, block_elements: int | None = None,
    softcap: float | None = None, sink: Tensor | None = None, alibi: Tensor | None = None,
    forget: Tensor | None = None,
) -> Iterator[MapBlock]:  # fmt: skip
    """The map ``attend`` with the same arguments computes, one ``MapBlock`` of query rows at a
    time (at most ``block_elements`` score entries each), so a caller can measure it in O(N)
    memory. Without gradients."""
    allowed, modify = _rules(normalize, mask, is_causal, key_padding, softcap, sink, alibi, forget)
    n, m = q.shape[-2], k.shape[-2]
    b = _score_block_rows(q, m, scorer, block_elements or BLOCK_ELEMENTS)
    with torch.no_grad():
        keys = k if scorer is None else scorer.keys(k)
        for start in range(0, n, b):
            scores, rows, weights = _block_weights(
                q[..., start : start + b, :], keys, start, m, scorer, normalize, allowed, modify
            )
            yield MapBlock(start, modify.capped(scores), weights, rows)


@dataclass
class KVCache:
    """What a causal attention step keeps of the positions it has seen while decoding
    (``AttentionCore.decode``): their keys, after ``qk_norm`` and rope, and values ``(B, h, T,
    d)``, and the forget gates' cumulative sums ``(B, h, T)``. Empty at first."""

    k: Tensor | None = None
    v: Tensor | None = None
    forget: Tensor | None = None

    @property
    def length(self) -> int:
        """How many positions it holds."""
        return 0 if self.k is None else self.k.shape[-2]


class AttentionCore(nn.Module):
    """The attention step of a mixer, configured by an ``AttentionDesign``.

    ``forward(q, k, v, grid, need_weights=False, padding=None)`` with ``q, k, v`` of shape ``(B,
    h, N, d)`` on a grid with ``N = prod(grid)`` positions and a padding mask ``padding`` ``(B,
    N)`` (True = real) returns ``(out (B, h, N, d), weights (B, h, N, M) or None)``: qk convolution -> rope ->
    key/value selection -> mask -> ``attend``. ``grid_ndim``
    (1 or 2) shapes ``qk_conv``'s kernel; ``causal`` lets query i see keys at positions <= i
    under every knob (module docstring); the module contract refuses it on images (``AttentionModule``).
    ``forget_gate``: ``forward`` takes ``log_forget`` ``(B, heads / maps_per_head, N)``, each
    position's ``log f`` per head (the mixer computes it from its input). ``maps_per_head``: the
    h maps are ``h / maps_per_head`` heads of that many maps each (``differential``'s two), which
    share their head's ALiBi slope and forget gates. ``value_dim`` (``None``: ``head_dim``): the
    values' width, for ``flops``.
    """

    def __init__(
        self,
        design: AttentionDesign,
        *,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        grid_ndim: int = 1,
        causal: bool = False,
        maps_per_head: int = 1,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        for key, on in (("forget_gate", design.forget_gate),
                        ("normalize=stick_breaking", design.normalize == "stick_breaking")):  # fmt: skip
            if on and not causal:
                raise ValueError(
                    f"{key} is causal by nature (it runs over the positions before each query): "
                    "it needs causal=True, a language model"
                )
        if causal and design.qk_conv and design.qk_conv_padding == "valid":
            raise ValueError(
                "qk_conv_padding=valid cannot be causal: it drops the keys of the first "
                f"qk_conv - 1 = {design.qk_conv - 1} positions, leaving those queries no key; with "
                "causal=True use qk_conv_padding=same (left padding only)"
            )
        if design.rope and grid_ndim != 1:
            raise ValueError(
                f"rope rotates by position along a sequence: it needs grid_ndim=1, got {grid_ndim}"
            )
        if design.rope and head_dim % 2:
            raise ValueError(f"rope rotates feature pairs: it needs an even head_dim, got {head_dim}")
        self.design, self.causal = design, causal
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        # Called as observer(map blocks, query coordinates, key coordinates, padding) on every
        # forward while set (``attnexp.attention.diagnostics``); it does not change the output.
        self.observer: Callable[[Iterator[MapBlock], Tensor, Tensor, Tensor | None], None] | None = None
        self.maps_per_head = maps_per_head
        self.value_dim = head_dim if value_dim is None else value_dim
        self.scorer = Scorer(
            design.score, num_heads=num_heads, head_dim=head_dim, additive_dim=design.additive_dim
        )
        if design.alibi and grid_ndim != 1:
            raise ValueError(
                f"alibi biases by distance along a sequence: it needs grid_ndim=1, got {grid_ndim}"
            )
        # sink: one logit per map in the softmax's denominator, learned from 0 (a row may then
        # give up to half its weight to no key at the start).
        self.sink = nn.Parameter(torch.zeros(num_heads)) if design.sink else None
        slopes = alibi_slopes(num_heads // maps_per_head).repeat_interleave(maps_per_head)
        self.register_buffer("alibi_slopes", slopes if design.alibi else None, persistent=False)
        # qk_norm: one learned gain (and, for layer, bias) over head_dim, shared by the heads, for
        # q and one for k (as OLMo 2 and Gemma 3 normalise per head).
        norm = {"rms": nn.RMSNorm, "layer": nn.LayerNorm}.get(design.qk_norm)
        self.q_norm = norm(head_dim, eps=QK_NORM_EPS) if norm else None
        self.k_norm = norm(head_dim, eps=QK_NORM_EPS) if norm else None
        channels, width = num_heads * head_dim, design.qk_conv
        target = design.qk_conv_target if width else ""
        self.q_conv = (
            GridDepthwiseConv(channels, width, padding="same", grid_ndim=grid_ndim, causal=causal)
            if "q" in target
            else None
        )
        self.k_conv = (
            GridDepthwiseConv(
                channels, width, padding=design.qk_conv_padding, grid_ndim=grid_ndim, causal=causal
            )
            if "k" in target
            else None
        )

    def conv_key_count(self, grid: tuple[int, ...]) -> int:
        """How many keys the qk convolution leaves (all positions unless ``valid``)."""
        return math.prod(self.k_conv.output_grid(grid) if self.k_conv else grid)

    def key_count(self, grid: tuple[int, ...]) -> int:
        """How many keys each query sees before masking (M)."""
        return math.ceil(self.conv_key_count(grid) / self.design.kv_stride)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        grid: tuple[int, ...],
        need_weights: bool = False,
        padding: Tensor | None = None,
        log_forget: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        design = self.design
        if design.forget_gate != (log_forget is not None):
            raise ValueError("log_forget goes with forget_gate=true, and only with it")
        first_key = 0  # the position of key 0 (a valid conv's keys start at its first centre)
        key_padding = padding
        heads_mask = None if padding is None else padding[:, None]  # (B, 1, N) vs (B, h, N, d)
        if self.q_norm is not None:  # each head's q and k as the projection gives them
            q, k = self.q_norm(q), self.k_norm(k)
        # The convolutions read zeros at padding, as at their own border.
        if self.q_conv is not None:
            q, _ = self.q_conv(zero_padding(q, heads_mask), grid)
        if self.k_conv is not None:
            k, _ = self.k_conv(zero_padding(k, heads_mask), grid)
            if design.qk_conv_padding == "valid":
                v = crop_valid(v, grid, design.qk_conv)
                first_key = design.qk_conv // 2
                if padding is not None:
                    key_padding = valid_key_padding(padding, grid, design.qk_conv)
        if design.rope:
            positions = torch.arange(q.shape[-2], device=q.device)
            q, k = rotary(q, positions), rotary(k, positions[first_key:][: k.shape[-2]])
        index = kv_positions(
            k.shape[-2],
            design.kv_stride,
            design.kv_select,
            batch=k.shape[0],
            training=self.training,
            keep_first=self.causal,
            device=k.device,
        )
        k, v = take_positions(k, index), take_positions(v, index)
        if key_padding is not None and index is not None:  # the kept keys' own entries
            key_padding = take_positions(key_padding[:, None, :, None], index)[:, 0, :, 0]
        allowed = KeyMask(
            grid=grid,
            window=design.window,
            global_tokens=design.global_tokens,
            causal=self.causal,
            key_positions=index if self.causal else None,
        )
        rules = {
            "scorer": self.scorer, "normalize": design.normalize, "mask": allowed,
            "key_padding": key_padding, "softcap": design.softcap, "sink": self.sink,
            "alibi": self.alibi_slopes,
            "forget": None if log_forget is None else self.forget_sums(log_forget, padding),
        }  # fmt: skip
        if self.observer is not None:
            queries = grid_coordinates(grid, q.device)
            keys = self.key_coordinates(grid, index, q.device)
            self.observer(map_blocks(q, k, **rules), queries, keys, padding)
        return attend(
            q, k, v, dropout_p=self.dropout, training=self.training, need_weights=need_weights,
            **rules,
        )  # fmt: skip

    def key_coordinates(
        self, grid: tuple[int, ...], index: Tensor | None, device: torch.device
    ) -> Tensor:
        """Grid coordinates of the keys ``(M, ndim)`` (``(B, M, ndim)`` for per-sample keys): a
        valid qk conv's keys sit at its windows' centres, selected keys at their positions."""
        if self.k_conv is None:
            coords = grid_coordinates(grid, device)
        else:
            coords = grid_coordinates(self.k_conv.output_grid(grid), device)
            if self.design.qk_conv_padding == "valid":
                coords = coords + self.design.qk_conv // 2
        return coords if index is None else coords[index]

    def forget_sums(self, log_forget: Tensor, padding: Tensor | None) -> Tensor:
        """``c_i = sum_{l <= i} log f_l`` ``(B, h, N)`` in float32 at least, each head's sums
        shared by its maps; a padded position forgets nothing (``f = 1``)."""
        log_forget = log_forget.to(torch.promote_types(log_forget.dtype, torch.float32))
        if padding is not None:
            log_forget = log_forget.masked_fill(~padding[:, None], 0.0)
        return log_forget.cumsum(-1).repeat_interleave(self.maps_per_head, dim=1)

    @property
    def decodable(self) -> bool:
        """Whether ``decode`` serves this step: causal, with each position's key fixed once it is
        computed (no qk convolution, which mixes in later inputs' neighbours, and no key
        selection, which picks keys per length)."""
        return self.causal and not self.design.qk_conv and self.design.kv_stride == 1

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache, log_forget: Tensor | None = None
    ) -> Tensor:
        """``forward`` for the next ``n`` positions of a causal sequence whose earlier ones are
        in ``cache``: ``q, k, v`` ``(B, h, n, d)`` of positions ``T .. T + n - 1`` (``T =
        cache.length``) attend to every cached key and to theirs, under every rule ``forward``
        applies (rope at their positions, the window, softcap, sink, ALiBi, forget gates,
        stick-breaking); their keys, values and forget sums join ``cache``. No padding, no
        dropout (generation runs in eval mode)."""
        if not self.decodable:
            raise ValueError("this attention cannot decode with a cache (qk_conv, kv_stride)")
        design, start = self.design, cache.length
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if design.rope:
            positions = torch.arange(start, start + q.shape[-2], device=q.device)
            q, k = rotary(q, positions), rotary(k, positions)
        cache.k = k if cache.k is None else torch.cat([cache.k, k], dim=-2)
        cache.v = v if cache.v is None else torch.cat([cache.v, v], dim=-2)
        if log_forget is not None:
            sums = self.forget_sums(log_forget, None)
            if cache.forget is not None:
                sums = sums + cache.forget[..., -1:]
                sums = torch.cat([cache.forget, sums], dim=-1)
            cache.forget = sums
        m = cache.length
        allowed = KeyMask(grid=(m,), window=design.window, global_tokens=design.global_tokens,
                          causal=True)  # fmt: skip
        modify = ScoreChanges(design.softcap, self.sink, self.alibi_slopes, cache.forget)
        keys = self.scorer.keys(cache.k)
        _, _, weights = _block_weights(q, keys, start, m, self.scorer, design.normalize, allowed, modify)
        return weights @ cache.v

    def flops(self, grid: tuple[int, ...]) -> int:
        """Analytic FLOPs of this step for one sample; masked entries are counted (kernels
        compute the dense matrix and discard them)."""
        n, m, h = math.prod(grid), self.key_count(grid), self.num_heads
        conv = sum(c.flops(grid) for c in (self.q_conv, self.k_conv) if c is not None)
        # rope: two multiplies and an add per feature of every query and (pre-selection) key.
        rope = 3 * (n + self.conv_key_count(grid)) * self.head_dim * h if self.design.rope else 0
        # qk_norm is a normalisation layer: not counted (base.AttentionModule.flops)
        normalize = _NORMALIZE_FLOPS_PER_ENTRY[self.design.normalize] * n * m * h
        normalize += 3 * n * m * h if self.design.softcap is not None else 0  # divide, tanh, scale
        normalize += n * m * h if self.design.alibi else 0  # the bias's add
        normalize += 2 * n * m * h if self.design.forget_gate else 0  # c_i - c_j, and its add
        weighted_sum = 2 * n * m * self.value_dim * h
        return conv + rope + self.scorer.flops(n, m, h) + normalize + weighted_sum
