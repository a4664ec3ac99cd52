"""`speed`: original vs pruned measured in one run; KV bytes from the cache itself (timings untested)."""

import math
import re

import pytest
import torch
from test_export import make_checkpoint, write_session
from tiny_models import tiny_model

from finercut_tui.cli import main
from finercut_tui.export.folder import export_pruned
from finercut_tui.model.speed import measure, random_input_ids
from finercut_tui.model.surgery import PrunableModel

L, KV_HEADS, HEAD_DIM, FP32 = 4, 2, 16, 4  # the tiny Llama


def kv_bytes(layers, batch, seq):
    """Reference: keys and values of `layers` layers, fp32."""
    return layers * 2 * batch * KV_HEADS * seq * HEAD_DIM * FP32


def test_measure_reports_the_cache_of_kept_attention_only():
    pm = PrunableModel(tiny_model("llama"))
    ids = random_input_ids(128, batch=2, context=10, seed=3)
    assert torch.equal(ids, random_input_ids(128, batch=2, context=10, seed=3))
    original = measure(pm.model, ids, new_tokens=3)
    removed = ["1.attn", "3.attn", "2.mlp"]
    pm.set_removed(removed)
    pruned = measure(pm.model, ids, new_tokens=3)
    assert (original.kv_cache_layers, pruned.kv_cache_layers) == (4, 2)
    assert original.kv_cache_bytes == kv_bytes(4, 2, 10) and pruned.kv_cache_bytes == kv_bytes(2, 2, 10)
    assert original.parameters - pruned.parameters == sum(pm.sublayer_parameters(s) for s in removed)
    assert pruned.weight_bytes == pruned.parameters * FP32
    for r in (original, pruned):
        assert r.prefill_tokens_per_s > 0 and r.decode_tokens_per_s > 0
        assert math.isfinite(r.prefill_tokens_per_s) and math.isfinite(r.decode_tokens_per_s)
        assert r.peak_memory_bytes is None  # CPU: not measured, shown as n/a


def parse_table(out: str) -> dict[str, tuple[str, str, str]]:
    lines = out.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split() == ["original", "pruned", "pruned/original"]
    )
    assert set(lines[header + 1]) == {"-"}
    rows = {}
    for line in lines[header + 2 :]:
        label, original, pruned, ratio = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        rows[label] = (original, pruned, ratio)
    return rows


def number(cell: str) -> tuple[float, float]:
    """A table cell's value and half a unit of its last digit (its rounding error)."""
    digits, _, unit = cell.partition(" ")
    scale = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    decimals = len(digits.partition(".")[2])
    return float(digits.replace(",", "")) * scale, 0.5 * 10**-decimals * scale


def check_table(rows, context, batch, removed_attention, removed_params):
    assert list(rows) == [
        "prefill tokens/s",
        "decode tokens/s",
        "peak memory (generate)",
        f"KV cache @ {context} tokens",
        "KV cache layers",
        "weights",
        "parameters",
    ]
    kept = L - removed_attention
    assert rows[f"KV cache @ {context} tokens"][:2] == (
        f"{kv_bytes(L, batch, context) / 1024:.1f} KiB",
        f"{kv_bytes(kept, batch, context) / 1024:.1f} KiB",
    )
    assert rows["KV cache layers"] == (str(L), str(kept), f"{kept / L:.2f}x")
    before = sum(p.numel() for p in tiny_model("llama").parameters())
    assert rows["parameters"][:2] == (f"{before:,}", f"{before - removed_params:,}")
    assert rows["peak memory (generate)"][:2] == ("n/a", "n/a")
    for label, (a, b, ratio) in rows.items():  # every ratio is pruned/original of the same run's numbers
        if a != "n/a":
            (va, da), (vb, db) = number(a), number(b)  # rounded cells: the ratio lies between these
            low, high = (vb - db) / (va + da), (vb + db) / (va - da)
            assert low - 0.005 <= float(ratio.rstrip("x")) <= high + 0.005, (label, a, b, ratio)


def test_speed_command_prunes_by_session_in_memory(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    session = write_session(tmp_path / "s.yaml", ckpt, removed=("1.attn", "2.block", "3.mlp"))
    code = main(
        ["speed", "--model", str(ckpt), "--session", str(session), "--step", "2"]
        + ["--context", "16", "--new-tokens", "3", "--device", "cpu"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "step 2" in out and "context 16" in out and "3 new tokens" in out
    pm = PrunableModel(tiny_model("llama"))
    removed_params = sum(pm.sublayer_parameters(s) for s in ["1.attn", "2.attn", "2.mlp"])
    check_table(parse_table(out), context=16, batch=1, removed_attention=2, removed_params=removed_params)


def test_speed_command_measures_an_exported_folder(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    pm = PrunableModel(tiny_model("llama"))
    removed = ["0.attn", "3.mlp"]
    export_pruned(pm, tmp_path / "out", removed, source_model=str(ckpt), progress=lambda m: None)
    code = main(
        ["speed", "--model", str(ckpt), "--pruned", str(tmp_path / "out")]
        + ["--context", "12", "--new-tokens", "2", "--batch", "2", "--device", "cpu"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    removed_params = sum(pm.sublayer_parameters(s) for s in removed)
    check_table(parse_table(out), context=12, batch=2, removed_attention=1, removed_params=removed_params)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pruned", "PRUNED", "--step", "1"], "--step goes with --session"),
        (
            ["--pruned", "PRUNED", "--context", "250", "--new-tokens", "10"],
            "exceeds the model's 256 positions",
        ),
        (["--pruned", "PRUNED", "--new-tokens", "1"], "--new-tokens must be at least 2"),
        (["--pruned", "NOWHERE"], "no config.json in"),
        (["--session", "SESSION", "--step", "5"], "--step 5 is out of range: this session has steps 1..3"),
    ],
)
def test_speed_bad_inputs(tmp_path, capsys, extra, message):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    paths = {"PRUNED": str(ckpt), "NOWHERE": str(tmp_path / "nowhere"), "SESSION": str(tmp_path / "s.yaml")}
    write_session(tmp_path / "s.yaml", ckpt)
    argv = ["speed", "--model", str(ckpt), "--device", "cpu", "--context", "8"]
    code = main(argv + [paths.get(a, a) for a in extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
