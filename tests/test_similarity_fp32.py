"""LLM-Drop's residual add in a bf16 model: cast X and f(X) to fp32 first, then add.

The reference reads X, f(X) and the MLP's input off the unmodified bf16 model with hooks of its own
and adds in fp32, as LLM-Drop's `get_layer_similarities` (drop_norm) does. Adding in bf16 and casting
afterwards gives different scores, far outside the tolerance here (checked in the last test).
"""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from finercut_tui.model.adapters import architecture_for
from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search.similarity import measure_similarities


def captured(model, ids):
    """Per block: X (block input), f_attn, MLP input (model-dtype residual), f_mlp, block output."""
    arch = architecture_for(model.config)
    blocks = dict(model.named_modules())[arch.blocks]
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    for b, block in enumerate(blocks):
        handles.append(
            block.register_forward_pre_hook(
                lambda m, a, k, b=b: seen.__setitem__(("x", b), a[0] if a else k["hidden_states"]),
                with_kwargs=True,
            )
        )
        handles.append(
            block.register_forward_hook(lambda m, a, o, b=b: seen.__setitem__(("out", b), first(o)))
        )
        handles.append(
            getattr(block, arch.attn[-1][0]).register_forward_hook(
                lambda m, a, o, b=b: seen.__setitem__(("fa", b), first(o))
            )
        )
        handles.append(
            getattr(block, arch.mlp[0][0]).register_forward_pre_hook(
                lambda m, a, b=b: seen.__setitem__(("mid", b), a[0])
            )
        )
        handles.append(
            getattr(block, arch.mlp[-1][0]).register_forward_hook(
                lambda m, a, o, b=b: seen.__setitem__(("fm", b), first(o))
            )
        )
    with torch.inference_mode():
        model(ids, use_cache=False)
    for h in handles:
        h.remove()
    return seen, len(blocks)


def mean_cos(x, y):
    return F.cosine_similarity(x, y, dim=-1).double().mean().item()


def reference(model, ids, fp32_add=True):
    seen, L = captured(model, ids)
    out = {}
    for b in range(L):
        x, fa, mid, fm = seen["x", b], seen["fa", b], seen["mid", b], seen["fm", b]
        assert mid.dtype == torch.bfloat16
        assert torch.equal(mid, x + fa)  # the MLP reads the residual as the model sums it (bf16)
        if fp32_add:
            out[f"{b}.attn"] = mean_cos(x.float(), x.float() + fa.float())
            out[f"{b}.mlp"] = mean_cos(mid.float(), mid.float() + fm.float())
        else:  # the old way: add in the model's dtype, then cast
            out[f"{b}.attn"] = mean_cos(x.float(), (x + fa).float())
            out[f"{b}.mlp"] = mean_cos(mid.float(), (mid + fm).float())
        out[f"{b}.block"] = mean_cos(x.float(), seen["out", b].float())
    return out


def measured(model, ids):
    sims = measure_similarities(PrunableModel(model), ids, batch_size=ids.shape[0])
    got = {f"{b}.attn": s for b, s in sims.attn.items()}
    got |= {f"{b}.mlp": s for b, s in sims.mlp.items()}
    got |= {f"{b}.block": s for b, s in sims.block.items()}
    return got


@pytest.fixture
def ids():
    return torch.randint(3, 128, (3, 24), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_bf16_scores_add_in_fp32_after_casting(name, ids):
    want = reference(tiny_model(name).to(torch.bfloat16), ids)
    got = measured(tiny_model(name).to(torch.bfloat16), ids)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=0, abs=2e-7), key


def test_the_two_adds_differ_in_bf16_so_the_test_can_tell(ids):
    model = tiny_model("llama").to(torch.bfloat16)
    fp32_add, bf16_add = reference(model, ids), reference(model, ids, fp32_add=False)
    gaps = [abs(fp32_add[k] - bf16_add[k]) for k in fp32_add if not k.endswith(".block")]
    assert max(gaps) > 1e-5
