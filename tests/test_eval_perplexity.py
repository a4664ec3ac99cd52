"""Perplexity against a hand-written reference, calibration overlap, and run_eval's baseline logic."""

import math
import random

import numpy as np
import pytest
import torch
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.data.sources import Text, text_sha256
from finercut_tui.errors import FinercutError
from finercut_tui.eval import EvalRequest, perplexity, retained_percent, run_eval
from finercut_tui.eval.runner import overlaps_calibration
from finercut_tui.model.surgery import PrunableModel

REMOVALS = ["0.attn", "2.mlp"]


def reference_ppl(
    model, tokenizer, text: str, seq_len: int, max_tokens: int | None
) -> tuple[float, int, int]:
    """Slow reference: one window at a time, cross-entropy written out in float64."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_windows = len(ids) // seq_len
    total, count = 0.0, 0
    for w in range(n_windows):
        window = torch.tensor([ids[w * seq_len : (w + 1) * seq_len]])
        with torch.no_grad():
            logits = model(window, use_cache=False).logits[0, :-1].double()  # predicts tokens 1..T-1
        targets = window[0, 1:]
        top = logits.max(dim=-1, keepdim=True).values
        log_z = top[:, 0] + torch.log(torch.exp(logits - top).sum(dim=-1))  # log-sum-exp per position
        total += float((log_z - logits[torch.arange(len(targets)), targets]).sum())
        count += len(targets)
    return math.exp(total / count), count, n_windows


@pytest.fixture
def pm():
    return PrunableModel(tiny_model("llama"), tiny_tokenizer())


def test_perplexity_matches_hand_reference(pm, english_text):
    tok = pm.tokenizer
    for removed in ([], REMOVALS):
        pm.set_removed(removed)
        got = perplexity(pm.model, tok, english_text, seq_len=64, max_tokens=1000, batch_size=4)
        want, count, windows = reference_ppl(pm.model, tok, english_text, 64, 1000)
        assert got["ppl"] == pytest.approx(want, rel=1e-5)
        assert got["windows"] == windows == 15 and got["predicted"] == count == 15 * 63
        assert got["tokens"] == 15 * 64 and got["seq_len"] == 64
        assert math.isclose(math.exp(got["nll"]), got["ppl"], rel_tol=1e-12)
    # a PrunableModel is accepted too, and the batch size does not change the result
    again = perplexity(pm, tok, english_text, seq_len=64, max_tokens=1000, batch_size=15)
    assert again["ppl"] == pytest.approx(got["ppl"], rel=1e-6)
    assert pm.removed == frozenset(REMOVALS)


def test_seq_len_is_capped_at_max_positions_and_short_text_is_one_window(pm, english_text):
    got = perplexity(pm.model, pm.tokenizer, english_text, seq_len=4096, max_tokens=600)
    assert got["seq_len"] == 256 and got["windows"] == 2  # max_position_embeddings=256; tail dropped
    short = perplexity(pm.model, pm.tokenizer, "A short text.", seq_len=64)
    want, count, _ = reference_ppl(pm.model, pm.tokenizer, "A short text.", 13, None)
    assert short["windows"] == 1 and short["predicted"] == count == 12
    assert short["ppl"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(FinercutError, match="at least 2"):
        perplexity(pm.model, pm.tokenizer, "A", seq_len=64)


def test_calibration_overlap():
    cal = dict(calibration_source="wikitext2", calibration_split="train")
    assert not overlaps_calibration(EvalRequest(ppl="wikitext2", **cal), Text("wikitext2", "test", "x"))
    assert overlaps_calibration(EvalRequest(ppl="c4", calibration_source="c4"), Text("c4", "validation", "x"))
    assert not overlaps_calibration(EvalRequest(ppl="c4"), Text("c4", "validation", "x"))
    sha = text_sha256("same words")
    req = EvalRequest(ppl="a.txt", calibration_source="b.txt", calibration_text_sha256=sha)
    assert overlaps_calibration(req, Text("a.txt", "file", "same words"))
    assert not overlaps_calibration(req, Text("a.txt", "file", "other words"))


def test_retained_percent_directions():
    assert retained_percent(0.5, 0.8, higher_is_better=True) == pytest.approx(62.5)
    assert retained_percent(20.0, 10.0, higher_is_better=False) == pytest.approx(50.0)
    assert retained_percent(0.3, 0.0, higher_is_better=True) is None
    assert retained_percent(math.inf, 10.0, higher_is_better=False) == 0.0


def test_run_eval_baseline_logic(pm, tmp_path, english_text):
    eval_file = tmp_path / "heldout.txt"
    eval_file.write_text(english_text[:1000], encoding="utf-8")
    calib_file = tmp_path / "calib.txt"
    calib_file.write_text(english_text[:1000], encoding="utf-8")  # same content, other path
    request = EvalRequest(
        ppl=str(eval_file), ppl_seq_len=64, batch_size=4, calibration_source=str(calib_file)
    )
    dense = perplexity(pm.model, pm.tokenizer, english_text[:1000], seq_len=64)["ppl"]
    removals = ["1.attn", "3.mlp"]
    pm.set_removed(removals)
    pruned = perplexity(pm.model, pm.tokenizer, english_text[:1000], seq_len=64)["ppl"]

    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    evals: list = []
    first = run_eval(pm, request, 2, evals)
    assert (torch.rand(1).item(), random.random(), np.random.rand()) == _draws(7)  # RNG untouched
    assert [r.step for r in first] == [0, 2]
    assert pm.removed == frozenset(removals)
    name = f"ppl:{eval_file}"
    base, rec = first
    assert base.results[name] == pytest.approx(dense, rel=1e-6)
    assert rec.results[name] == pytest.approx(pruned, rel=1e-6)
    assert rec.retained[name] == pytest.approx(100 * dense / pruned, rel=1e-6)
    assert rec.retained_average == rec.retained[name] and rec.average is None
    assert base.retained[name] == 100.0 and base.what == rec.what
    assert rec.what["ppl_fingerprint"].startswith("sha256:") and rec.what["ppl_windows"] == 15
    assert rec.overlaps_calibration is True and "calibration" in rec.warnings[0]
    evals.extend(first)

    second = run_eval(pm, request, 2, evals)  # the baseline is reused
    assert [r.step for r in second] == [2]
    assert second[0].results == rec.results
    assert pm.removed == frozenset(removals)

    other = EvalRequest(ppl=str(eval_file), ppl_seq_len=32, batch_size=4)  # another `what`: new baseline
    third = run_eval(pm, other, 2, evals)
    assert [r.step for r in third] == [0, 2] and "overlaps_calibration" in third[1].to_dict()
    assert third[1].overlaps_calibration is False

    import yaml  # records are plain YAML

    records = [r.to_dict() for r in first]
    assert yaml.safe_load(yaml.safe_dump(records)) == records


def _draws(seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return torch.rand(1).item(), random.random(), np.random.rand()


def test_request_validation():
    with pytest.raises(FinercutError, match="nothing to evaluate"):
        EvalRequest()
    assert EvalRequest(tasks="a, b,a").tasks == ("a", "b")
    assert EvalRequest(ppl="c4", limit=100.0).limit == 100
    with pytest.raises(FinercutError, match="whole number"):
        EvalRequest(tasks=("a",), limit=2.5)
    text = EvalRequest(ppl="wikitext2", tasks=("arc_easy",), limit=0.5).describe()
    assert "wikitext2" in text and "arc_easy" in text and "limit 0.5" in text


def test_smollm_perplexity_rises_after_removals(smollm, english_text):
    pm = smollm.pm
    before = perplexity(pm, smollm.tokenizer, english_text, seq_len=128, max_tokens=256)
    try:
        pm.set_removed(["3.attn", "7.mlp", "11.attn", "15.mlp", "20.mlp", "25.attn"])
        after = perplexity(pm, smollm.tokenizer, english_text, seq_len=128, max_tokens=256)
    finally:
        pm.restore_all()
    assert before["windows"] == 2 and before["predicted"] == 2 * 127
    assert math.isfinite(before["ppl"]) and 1.5 < before["ppl"] < 200, before
    assert math.isfinite(after["ppl"]) and after["ppl"] > before["ppl"] * 1.05, (before, after)
