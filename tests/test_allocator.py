"""On CPU the scorer keeps freed memory in the process, so logits-sized temporaries stop page-faulting."""

import platform
import subprocess
import sys
import textwrap

import pytest
from tiny_models import tiny_inputs, tiny_model

from finercut_tui.model.surgery import PrunableModel
from finercut_tui.search import scoring

CHURN = textwrap.dedent(
    """
    import resource, torch
    from finercut_tui.search.allocator import keep_freed_memory

    def faults_of_churn():
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(6):
            torch.ones(16 << 20)  # 64 MB allocated, touched and freed, like a candidate's logits
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults_of_churn()
    before = faults_of_churn()
    assert keep_freed_memory()
    for _ in range(4):  # the heap grows to its working size over the first few rounds
        faults_of_churn()
    print(before, faults_of_churn())
    """
)


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's"
)
def test_big_temporaries_stop_page_faulting_once_freed_memory_is_kept():
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before > 6 * 10_000  # every 64 MB tensor faulted its 16k pages in afresh
    assert after < before / 10


def test_the_scorer_keeps_freed_memory_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(scoring, "keep_freed_memory", lambda: calls.append(1))
    scoring.Scorer(PrunableModel(tiny_model("llama")), tiny_inputs())
    assert calls == [1]
