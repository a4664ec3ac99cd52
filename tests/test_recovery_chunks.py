"""The chunked distance: with a 64k vocabulary every row is split into several token chunks on CPU (and,
forced, into row groups as on GPUs), and the scores equal plain torch maths over the full logits."""

import pytest
import torch
from reference import logits_with_zeroed
from tiny_models import tiny_model

from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.scoring import Scorer

VOCAB = 65536
ROWS, TOKENS = 3, 21
TOKENS_PER_CHUNK = Scorer.CPU_CHUNK_BYTES // (VOCAB * 4)  # 2 MiB: 8, so 21 tokens = chunks of 8, 8 and 5
# (removed already, candidate): candidates in both blocks, with and without earlier removals
CASES = [((), "0.attn"), ((), "1.mlp"), (("0.mlp",), "1.attn"), (("1.attn",), "0.attn")]


def wide_model():
    return tiny_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        num_hidden_layers=2,
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (ROWS, TOKENS), generator=torch.Generator().manual_seed(3))


# Plain torch over the full (rows, tokens, vocab) logits, no chunks: the same fp32 operations as the
# scorer's metrics (probabilities as exp(log_softmax)), so only chunking could make them differ; and the
# same formulas in float64, which the fp32 maths matches to ~1e-5 over a 64k vocabulary.
def _probs(logits):
    log_p = torch.log_softmax(logits, -1)
    return log_p, log_p.exp()


def _js(p_logits, q_logits):
    (log_p, p), (log_q, q) = _probs(p_logits), _probs(q_logits)
    log_m = torch.log(0.5 * (p + q))
    return 0.5 * ((p * (log_p - log_m)).sum(-1) + (q * (log_q - log_m)).sum(-1))


def _js_ref(p_logits, q_logits):
    (log_p, p), (log_q, q) = _probs(p_logits), _probs(q_logits)
    m = 0.5 * (p + q)
    log_m = torch.log(m)
    return 0.5 * ((m * (log_m - log_p)).sum(-1) + (m * (log_m - log_q)).sum(-1)) / p_logits.shape[-1]


def _kl(p_logits, q_logits):
    (log_p, p), (log_q, _) = _probs(p_logits), _probs(q_logits)
    return (p * (log_p - log_q)).sum(-1)


def _angular(p_logits, q_logits):
    cos = torch.nn.functional.cosine_similarity(p_logits.double(), q_logits.double(), dim=-1)
    return torch.arccos(cos.clamp(0.0, 1.0))  # float64 arccos: accurate at these angles


def _l2(p_logits, q_logits):
    return (p_logits - q_logits).norm(dim=-1)


UNCHUNKED = {"js": _js, "js-ref": _js_ref, "kl": _kl, "angular": _angular, "l2": _l2}


@pytest.fixture(scope="module")
def full_logits(ids):
    """Logits of the unmodified model, original and with each case's sublayers zeroed by hooks."""
    model = wide_model()
    out = {(): logits_with_zeroed(model, ids, [])}
    for removed, sid in CASES:
        out[(*removed, sid)] = logits_with_zeroed(model, ids, [*removed, sid])
    return out


def spy_chunks(scorer):
    """Record the (rows, tokens) shape of every slice the metric is called on."""
    shapes = []
    metric = scorer.metric

    def wrapped(ref, out, ids):
        shapes.append(tuple(out.shape[:2]))
        return metric(ref, out, ids)

    scorer.metric = wrapped
    return shapes


def check_scores(scorer, full_logits, metric, shapes, per_candidate):
    for removed, sid in CASES:
        scorer.pm.set_removed(list(removed))
        shapes.clear()
        got = scorer.score(sid)
        original, pruned = full_logits[()], full_logits[(*removed, sid)]
        want = UNCHUNKED[metric](original, pruned).double().mean().item()
        assert got == pytest.approx(want, rel=1e-6), (removed, sid)
        exact = UNCHUNKED[metric](original.double(), pruned.double()).mean().item()
        assert got == pytest.approx(exact, rel=3e-5), (removed, sid)
        per_candidate(shapes)


@pytest.mark.parametrize("metric", list(UNCHUNKED))
def test_cpu_token_chunks_equal_the_unchunked_distance(metric, ids, full_logits):
    scorer = Scorer(PrunableModel(wide_model()), ids, metric=metric, batch_size=2)  # batches of 2 and 1
    shapes = spy_chunks(scorer)

    def every_row_split(calls):
        assert all(rows == 1 and tokens <= TOKENS_PER_CHUNK for rows, tokens in calls), calls
        chunks = -(-TOKENS // TOKENS_PER_CHUNK)
        assert len(calls) == ROWS * chunks and chunks >= 3
        assert sum(tokens for _, tokens in calls) == ROWS * TOKENS

    check_scores(scorer, full_logits, metric, shapes, every_row_split)


@pytest.mark.parametrize("metric", ["js", "angular"])
def test_gpu_row_budget_equals_the_unchunked_distance(metric, ids, full_logits, monkeypatch):
    """The GPU branch, run on CPU: whole rows, as many per slice as the byte budget allows (2 here)."""
    monkeypatch.setattr(Scorer, "_chunk_tokens", staticmethod(lambda device: False))
    # the budget covers 6 fp32 temporaries of the rows in a group: room for 2 rows
    monkeypatch.setattr(Scorer, "GPU_CHUNK_BYTES", 2 * TOKENS * VOCAB * 4 * 6 + 1)
    scorer = Scorer(PrunableModel(wide_model()), ids, metric=metric)  # one batch of 3 rows
    shapes = spy_chunks(scorer)

    def row_groups(calls):
        assert calls == [(2, TOKENS), (1, TOKENS)]

    check_scores(scorer, full_logits, metric, shapes, row_groups)
