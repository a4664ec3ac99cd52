"""The vocabulary-sliced head gives the head's logits, is swapped in only while scoring, and only
for fp32 CPU linears wide enough to gain from it."""

import pytest
import torch
from tiny_models import tiny_model
from torch import nn

from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.scoring import Scorer
from finercut_tui.search.sliced_head import SLICE_ROWS, HeadSlicer, SlicedHead

VOCAB = 5 * SLICE_ROWS + 123  # a ragged last slice


def wide_llama():
    return tiny_model("llama", vocab_size=VOCAB)


def test_sliced_head_matches_the_head_with_and_without_bias():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)
    for bias in (False, True):
        head = nn.Linear(32, VOCAB, bias=bias)
        expected = head(x)
        with torch.inference_mode():
            got = SlicedHead(head)(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_head_is_sliced_only_inside_the_context_and_state_dict_is_untouched():
    model = wide_llama()
    keys = list(model.state_dict())
    slicer = HeadSlicer(model)
    assert slicer.slot is not None
    with slicer():
        assert isinstance(model.lm_head, SlicedHead)
    assert type(model.lm_head) is nn.Linear
    assert list(model.state_dict()) == keys


def test_no_slicing_for_narrow_heads_or_other_dtypes():
    model = wide_llama()
    assert HeadSlicer(model.to(torch.bfloat16)).slot is None
    assert HeadSlicer(tiny_model("llama")).slot is None  # vocabulary of 128: nothing to gain


def test_scores_are_the_same_with_the_sliced_head():
    model = wide_llama()
    ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    pm = PrunableModel(model)
    candidates = ["0.attn", "0.mlp", "1.attn", "1.mlp"]
    sliced = Scorer(pm, ids)
    plain = Scorer(pm, ids)
    plain._sliced_head.slot = None
    for sid in candidates:
        assert sliced.score(sid) == pytest.approx(plain.score(sid), rel=1e-6)
