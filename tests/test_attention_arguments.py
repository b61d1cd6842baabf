"""Bad constructor arguments fail at build time with a ValueError naming the key."""

from __future__ import annotations

import pytest
import torch

from attnexp.attention.cbam import CBAM
from attnexp.attention.mha import MultiHeadAttention
from attnexp.attention.muse import MUSE
from attnexp.attention.none import Identity
from attnexp.attention.pool import AttentionPool
from attnexp.attention.se import SqueezeExcite

BAD = [
    (Identity, {"dim": 0}, "dim"),
    (MultiHeadAttention, {"dim": 0}, "dim"),
    (MultiHeadAttention, {"dim": 65, "num_heads": 4}, "num_heads"),
    (MultiHeadAttention, {"dim": 64, "num_heads": 0}, "num_heads"),
    (MultiHeadAttention, {"dim": 64, "head_dim": 0}, "head_dim"),
    (MultiHeadAttention, {"dim": 64, "attn_drop": 1.0}, "attn_drop"),
    (MultiHeadAttention, {"dim": 64, "proj_drop": -0.1}, "proj_drop"),
    (MUSE, {"dim": 65}, "num_heads"),
    (MUSE, {"dim": 64, "kernel_sizes": [1, 4]}, "kernel_sizes"),
    (MUSE, {"dim": 64, "kernel_sizes": [0, 3]}, "kernel_sizes"),
    (MUSE, {"dim": 64, "kernel_sizes": [-3]}, "kernel_sizes"),
    (MUSE, {"dim": 64, "kernel_sizes": []}, "kernel_sizes"),
    (MUSE, {"dim": 64, "kernel_sizes": [3, 3]}, "kernel_sizes"),
    (MUSE, {"dim": 64, "kernel_sizes": 3}, "kernel_sizes"),
    (MUSE, {"dim": 64, "kernel_sizes": [3.0]}, "kernel_sizes"),
    (AttentionPool, {"dim": 64, "num_queries": 0}, "num_queries"),
    (AttentionPool, {"dim": 63, "num_heads": 4}, "num_heads"),
    (SqueezeExcite, {"dim": 64, "rd_ratio": 0}, "rd_ratio"),
    (SqueezeExcite, {"dim": 0}, "dim"),
    (CBAM, {"dim": 64, "kernel_size": 4}, "kernel_size"),
    (CBAM, {"dim": 64, "kernel_size": 0}, "kernel_size"),
    (CBAM, {"dim": 64, "rd_ratio": 1.5}, "rd_ratio"),
    (CBAM, {"dim": 64, "grid_ndim": 3}, "grid_ndim"),
    (Identity, {"dim": 64, "grid_ndim": 0}, "grid_ndim"),
    (SqueezeExcite, {"dim": 64, "grid_ndim": 1.0}, "grid_ndim"),
    # The design knobs are validated when mha / muse is built, not at the first forward.
    (MultiHeadAttention, {"dim": 64, "score": "cos"}, "score must be one of"),
    (MultiHeadAttention, {"dim": 64, "window": 2, "kv_stride": 2}, "window"),
    (MultiHeadAttention, {"dim": 64, "qk_conv": 4}, "qk_conv"),
    (MUSE, {"dim": 64, "normalize": "relu"}, "normalize must be one of"),
    (MUSE, {"dim": 64, "global_tokens": 2}, "global_tokens"),
]


@pytest.mark.parametrize(
    "cls,kwargs,key", BAD, ids=[f"{c.__name__}-{k}-{i}" for i, (c, _, k) in enumerate(BAD)]
)
def test_bad_argument_names_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key):
        cls(**kwargs)


def test_head_dim_lifts_the_divisibility_requirement():
    module = MultiHeadAttention(dim=65, num_heads=4, head_dim=16)
    assert module.inner_dim == 64


def test_wrong_input_is_refused_with_the_shape():
    module = SqueezeExcite(dim=16)
    with pytest.raises(ValueError, match="dim=16"):
        module(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="shape"):
        module(torch.randn(2, 16))


def test_causal_must_be_a_boolean():
    from attnexp.attention.base import AttentionModule, Kind

    class Plain(AttentionModule):  # the least a module declares (the base class alone is refused)
        kind = Kind.MIXER
        weight_kinds = {}

    with pytest.raises(ValueError, match="causal must be true or false, got 'yes'"):
        Plain(dim=8, causal="yes")
    assert Plain(dim=8, causal=True).causal is True
