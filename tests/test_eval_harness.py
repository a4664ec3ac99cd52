"""lm-eval on the in-memory pruned model: same numbers as lm-eval called directly, no hub, no side effects."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import local_tasks_dir
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.errors import FinercutError
from finercut_tui.eval import EvalRequest, run_eval, run_tasks
from finercut_tui.eval.harness import main_metric, summarize
from finercut_tui.model.surgery import PrunableModel

REMOVALS = ["0.attn", "2.mlp"]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return local_tasks_dir(tmp_path_factory.getbasetemp())


@pytest.fixture
def pm():
    pm = PrunableModel(tiny_model("llama"), tiny_tokenizer())
    pm.set_removed(REMOVALS)
    return pm


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test on any attempt to reach the hub or (re)load a model or tokenizer."""
    import datasets
    import huggingface_hub
    import transformers

    calls = []

    def forbid(name):
        def fail(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called during an in-memory evaluation")

        return fail

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", forbid("HfApi.model_info"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbid("model from_pretrained"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbid("tokenizer from_pretrained"))
    real_load = datasets.load_dataset

    def local_only(path, *args, **kwargs):
        if path != "json":
            calls.append(f"load_dataset({path})")
            raise AssertionError(f"load_dataset({path!r}) would reach the dataset hub")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", local_only)
    return calls


def direct_lm_eval(model, tokenizer, tasks, tasks_dir, limit, batch_size, seed):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
        tasks=tasks,
        limit=limit,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )["results"]


def test_same_numbers_as_lm_eval_directly_without_hub(pm, tasks_dir, no_hub, monkeypatch):
    tasks = [
        "tiny_mc",
        "tiny_mc_plain",
        "tiny_rolling",
        "tiny_gen",
    ]  # tiny_gen: generate() on the pruned model
    first_param = next(pm.model.parameters())
    ptr, device = first_param.data_ptr(), first_param.device
    ours = run_tasks(pm, pm.tokenizer, tasks, tasks_dir=str(tasks_dir), limit=12, batch_size=4, seed=3)
    assert no_hub == []
    assert next(pm.model.parameters()).data_ptr() == ptr and first_param.device == device
    assert pm.removed == frozenset(REMOVALS)
    by_name = {t.name: t for t in ours.tasks}
    assert [t.metric for t in ours.tasks] == [
        "acc_norm,none",
        "acc,none",
        "word_perplexity,none",
        "exact_match,none",
    ]
    assert [t.higher_is_better for t in ours.tasks] == [True, True, False, True]

    monkeypatch.undo()  # plain HFLM looks the model up on the hub (and fails offline): allow it here
    direct = direct_lm_eval(pm.model, pm.tokenizer, tasks, tasks_dir, limit=12, batch_size=4, seed=3)
    assert by_name["tiny_mc"].value == direct["tiny_mc"]["acc_norm,none"]
    assert by_name["tiny_mc_plain"].value == direct["tiny_mc_plain"]["acc,none"]
    assert by_name["tiny_rolling"].value == pytest.approx(
        direct["tiny_rolling"]["word_perplexity,none"], rel=1e-9
    )
    assert by_name["tiny_gen"].value == direct["tiny_gen"]["exact_match,none"]
    assert direct["tiny_mc"]["sample_len"] == 12


def test_group_reports_its_aggregate_and_rng_is_restored(pm, tasks_dir):
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    got = run_tasks(pm, pm.tokenizer, ["tiny_suite"], tasks_dir=str(tasks_dir), limit=8, batch_size=8, seed=0)
    after = (torch.rand(1).item(), random.random(), np.random.rand())
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    assert after == (torch.rand(1).item(), random.random(), np.random.rand())
    assert [(t.name, t.metric) for t in got.tasks] == [("tiny_suite", "acc,none")]
    subtasks = got.raw["results"]
    expected = (subtasks["tiny_mc"]["acc,none"] + subtasks["tiny_mc_plain"]["acc,none"]) / 2  # 8 docs each
    assert got.tasks[0].value == pytest.approx(expected)


def test_unknown_task_and_missing_dir(tasks_dir):
    from finercut_tui.eval.harness import resolve_tasks

    with pytest.raises(FinercutError, match=r"unknown lm-eval task 'tiny_mcc': did you mean tiny_mc") as err:
        resolve_tasks(["tiny_mcc"], str(tasks_dir))
    assert "\n" not in str(err.value)
    with pytest.raises(FinercutError, match="did you mean arc_easy"):
        resolve_tasks(["arc_eazy"], str(tasks_dir))
    with pytest.raises(FinercutError, match="tasks dir not found"):
        resolve_tasks(["tiny_mc"], str(tasks_dir / "nope"))
    manager, names = resolve_tasks(["tiny_mc*"], str(tasks_dir))
    assert names == ["tiny_mc", "tiny_mc_plain"]
    manager, names = resolve_tasks(["arc_easy", "tiny_mc"], str(tasks_dir))  # built-in + local
    assert "arc_easy" in manager.all_tasks and "tiny_mc" in manager.all_tasks


def test_main_metric_choice():
    out = {
        "results": {
            "g": {"alias": "g", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "a": {"alias": "a", "acc,none": 0.4, "acc_norm,none": 0.6},
            "b": {"alias": "b", "acc,none": 0.6},
            "w": {"alias": "w", "word_perplexity,none": 30.0, "bits_per_byte,none": 1.2},
            "t": {"alias": "t", "exact_match,strict-match": 0.1, "exact_match,flexible-extract": 0.2},
        },
        "group_subtasks": {"g": ["a", "b"]},
        "higher_is_better": {"w": {"word_perplexity": False}},
    }
    assert main_metric(out["results"]["a"]) == "acc_norm,none"
    got = [(t.name, t.metric, t.value, t.higher_is_better) for t in summarize(out)]
    assert got == [
        ("g", "acc,none", 0.5, True),
        ("w", "word_perplexity,none", 30.0, False),
        ("t", "exact_match,strict-match", 0.1, True),
    ]


def test_run_eval_with_tasks_and_ppl(pm, tasks_dir, tmp_path, english_text):
    text = tmp_path / "heldout.txt"
    text.write_text(english_text[:640], encoding="utf-8")
    request = EvalRequest(
        ppl=str(text), ppl_seq_len=64, tasks=("tiny_mc", "tiny_rolling"), tasks_dir=str(tasks_dir), limit=6
    )
    base, rec = run_eval(pm, request, 2, [])
    assert pm.removed == frozenset(REMOVALS)
    assert set(rec.results) == {f"ppl:{text}", "tiny_mc", "tiny_rolling"}
    assert rec.average == rec.results["tiny_mc"]  # perplexity-type metrics stay out of the average
    base_acc, acc = base.results["tiny_mc"], rec.results["tiny_mc"]
    assert rec.retained["tiny_mc"] == (pytest.approx(100 * acc / base_acc) if base_acc else None)
    base_wp, wp = base.results["tiny_rolling"], rec.results["tiny_rolling"]
    assert rec.retained["tiny_rolling"] == pytest.approx(100 * base_wp / wp)
    assert rec.retained_average == rec.retained["tiny_mc"]
    assert rec.what["tasks"] == ["tiny_mc", "tiny_rolling"] and rec.what["limit"] == 6
    assert rec.what["tasks_dir_fingerprint"].startswith("sha256:")
    direct = run_tasks(pm, pm.tokenizer, ["tiny_mc"], tasks_dir=str(tasks_dir), limit=6)
    assert direct.tasks[0].value == acc
