"""Damaged files for every reader (issue 25).

Real sessions (the committed ones, and ones made here by every method on a tiny Llama) are damaged
at random with a fixed seed: cut at a byte, a key deleted, a value of the wrong type or out of range,
an id that does not exist, steps reordered, a bit flipped, the wrong encoding, a huge number, deep
nesting. Each damaged file goes to `show`, `replay`, `compare`, `export`, `eval`, `heal`,
`run --resume` and `tui --resume` (tests/damaged_reader.py runs one reader over all files in one
process, under an address-space limit). Each must work or end with one line that names the problem
(exit code 2), never a traceback or an escaped exception, in bounded time and memory; a file a
reader refused is never changed. Export folders with a missing or truncated shard, a removal list
that disagrees with the weights, or a bad dtype get the same treatment from `load_pruned` and `speed`.

`FINERCUT_DAMAGED=N` sets how many damaged files each reader gets (default 16 in CI; README gives a longer run).
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finercut_tui.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = str(ROOT / "tests" / "data" / "english.txt")
FILES = int(os.environ.get("FINERCUT_DAMAGED", "16"))
READERS = ("show", "replay", "compare", "export", "eval", "heal", "run", "tui")
TORCH_FREE = {"show", "replay", "compare"}
GIB = 1 << 30
LIMITS = {"torch": 8 * GIB, "plain": 3 * GIB}  # virtual memory a reader may map


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(tiny model folder, [session paths]): the committed sessions and one per method here."""
    from builders import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("damaged-sources")
    model = root / "tiny"
    save_tiny_checkpoint(model, "llama", num_hidden_layers=4)
    made = []
    methods = {
        "finercut": ["--method", "finercut", "--target", "3"],
        "attn-drop": ["--method", "attn-drop", "--target", "2"],
        "joint-drop": ["--method", "joint-drop", "--iterative", "--target", "3"],
        "angular": ["--method", "block-drop", "--block-metric", "angular-gap", "--target", "2"],
        "sleb": ["--method", "sleb", "--metric", "nll", "--target", "1"],
    }
    for name, options in methods.items():
        path = root / f"{name}.yaml"
        argv = ["run", "--model", str(model), "--calib", TEXT, "--calib-samples", "2", "--seq-len", "16"]
        assert main([*argv, *options, "--session", str(path), "--quiet"]) == 0
        made.append(path)
    committed = sorted((ROOT / "sessions").glob("*.yaml"))
    return model, made + committed


# -- the damage --------------------------------------------------------------------------------------------
SIZES = [
    ("model", "num_blocks"),
    ("calibration", "samples"),
    ("calibration", "seq_len"),
    ("method", "target"),
]


def _paths(node, prefix=()):
    """Every (path, value) in a YAML tree."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(tree, path, value):
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _delete(tree, path):
    node = tree
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


def damage(text: str, rng: random.Random) -> tuple[str, bytes]:
    """(what was done, the damaged file's bytes)."""
    data = yaml.safe_load(text)
    kind = rng.choice(
        ["cut", "delete", "type", "range", "id", "reorder", "bitflip", "encoding", "huge", "nesting"]
    )
    raw = text.encode("utf-8")
    if kind == "cut":
        at = rng.randrange(len(raw))
        return f"cut at byte {at}", raw[:at]
    if kind == "bitflip":
        at = rng.randrange(len(raw))
        flipped = bytearray(raw)
        flipped[at] ^= 1 << rng.randrange(8)
        return f"bit flipped at byte {at}", bytes(flipped)
    if kind == "encoding":
        return "UTF-16", text.encode("utf-16")
    if kind == "nesting":
        depth = rng.choice([200, 5000, 50000])
        return f"notes nested {depth} deep", raw + b"\nnotes: " + b"[" * depth + b"]" * depth + b"\n"
    tree = copy.deepcopy(data)
    paths = [p for p, _ in _paths(tree) if p]
    if kind == "delete":
        path = rng.choice(paths)
        _delete(tree, path)
        what = f"deleted {'/'.join(map(str, path))}"
    elif kind == "type":
        path = rng.choice(paths)
        value = rng.choice([[1, 2], "a string", {"x": 1}, None, 3.5, True])
        _set(tree, path, value)
        what = f"{'/'.join(map(str, path))} = {value!r}"
    elif kind in ("range", "huge"):  # a size the file claims: below its range, or far above it
        path = rng.choice(SIZES)
        value = rng.choice([-1, 0, -(10**6)] if kind == "range" else [10**20, 10**12, 2**63])
        _set(tree, path, value)
        what = f"{'/'.join(path)} = {value}"
    elif kind == "id":
        steps = tree.get("steps") or []
        if steps:
            steps[rng.randrange(len(steps))]["removed"] = rng.choice(["99.attn", "3.ffn", "-1.mlp", "x", ""])
        tree["pinned"] = ["77.block"]
        what = "ids that do not exist"
    else:  # reorder
        steps = tree.get("steps") or []
        rng.shuffle(steps)
        what = "steps reordered"
    return what, yaml.safe_dump(tree, sort_keys=False).encode("utf-8")


@pytest.fixture(scope="module")
def damaged(sources, tmp_path_factory):
    """FILES damaged copies, the same set for every reader: [(path, what was done, bytes)]."""
    _, paths = sources
    root = tmp_path_factory.mktemp("damaged")
    rng = random.Random(25)
    out = []
    for i in range(FILES):
        source = paths[i % len(paths)]
        what, raw = damage(source.read_text(encoding="utf-8"), rng)
        path = root / f"{i:03d}-{source.stem}.yaml"
        path.write_bytes(raw)
        out.append((path, f"{source.name}: {what}", raw))
    return out


def run_reader(reader: str, files: list[Path], model: Path, tmp_path: Path) -> list[dict]:
    listing, result = tmp_path / "files.json", tmp_path / "result.json"
    listing.write_text(json.dumps([str(p) for p in files]))
    limit = LIMITS["plain" if reader in TORCH_FREE else "torch"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("FINERCUT_DEBUG", None)
    args = [reader, str(model), TEXT, str(tmp_path / "out"), str(listing), str(result), str(limit)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "damaged_reader.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * len(files) + 120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_damaged_sessions_in_one_line(reader, sources, damaged, tmp_path):
    model, _ = sources
    reports = run_reader(reader, [p for p, _, _ in damaged], model, tmp_path)
    problems = []
    for report, (path, what, raw) in zip(reports, damaged, strict=True):
        code, err = report["code"], report["stderr"]
        where = f"{reader} on {path.name} ({what})"
        if "Traceback" in err:
            problems.append(f"{where}: a traceback")
        elif code not in (0, 2):
            problems.append(f"{where}: exit {code}: {err.strip().splitlines()[-1:] or ''}")
        elif code == 2 and len(_error_lines(err)) != 1:
            problems.append(f"{where}: {len(_error_lines(err))} error lines: {err[-300:]!r}")
        if code != 0 and path.read_bytes() != raw:
            problems.append(f"{where}: the refused file was changed")
    refused = sum(r["code"] == 2 for r in reports)
    print(f"\n{reader}: {len(reports)} damaged files, {refused} refused in one line, "
          f"{len(reports) - refused} read, {len(problems)} problems")  # fmt: skip
    assert not problems, "\n".join(problems)


# -- export folders ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
    model, paths = sources
    out = tmp_path_factory.mktemp("exported") / "pruned"
    session = next(p for p in paths if p.stem == "finercut")
    assert main(["export", str(session), "--step", "2", "--out", str(out), "--model", str(model)]) == 0
    return out


def _damaged_copy(exported: Path, tmp_path: Path, how: str) -> Path:
    import shutil

    folder = tmp_path / how
    shutil.copytree(exported, folder)
    shard = next(folder.glob("*.safetensors"))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if how == "missing-shard":
        shard.unlink()
    elif how == "truncated-shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "removal-list-disagrees":
        config["finercut"]["removed"] = ["0.attn"]
        config_path.write_text(json.dumps(config))
    elif how == "bad-dtype":
        config["dtype"] = "float99"
        config["torch_dtype"] = "float99"
        config_path.write_text(json.dumps(config))
    elif how == "config-cut":
        config_path.write_text(config_path.read_text()[:40])
    return folder


EXPORT_DAMAGE = ("missing-shard", "truncated-shard", "removal-list-disagrees", "bad-dtype", "config-cut")


@pytest.mark.parametrize("how", EXPORT_DAMAGE)
def test_load_pruned_refuses_a_damaged_export_in_one_line(how, exported, tmp_path):
    from finercut_tui import load_pruned
    from finercut_tui.errors import FinercutError

    folder = _damaged_copy(exported, tmp_path, how)
    with pytest.raises(FinercutError) as info:
        load_pruned(folder, device="cpu")
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


@pytest.mark.parametrize("how", EXPORT_DAMAGE)
def test_speed_refuses_a_damaged_export_in_one_line(how, exported, sources, tmp_path, capsys):
    model, _ = sources
    folder = _damaged_copy(exported, tmp_path, how)
    code = main(
        ["speed", "--model", str(model), "--pruned", str(folder), "--context", "8", "--new-tokens", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(_error_lines(err)) == 1 and "Traceback" not in err


# -- files of other versions ---------------------------------------------------------------------------------
def test_a_session_of_a_newer_version_names_it_and_says_what_to_do(sources, tmp_path):
    from finercut_tui.errors import SessionError
    from finercut_tui.session import WRITER, Session

    _, paths = sources
    data = yaml.safe_load(paths[0].read_text())
    assert data["written_by"] == WRITER  # a new session says which version wrote it
    data["schema_version"], data["written_by"] = 2, "finercut-tui 9.0.0"
    path = tmp_path / "newer.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    raw = path.read_bytes()
    with pytest.raises(SessionError) as info:
        Session.load(path)
    message = str(info.value)
    assert "written by finercut-tui 9.0.0" in message and WRITER in message and "pip install -U" in message
    assert path.read_bytes() == raw


def test_a_damaged_session_of_another_version_names_the_writer(sources, tmp_path):
    from finercut_tui.errors import SessionError
    from finercut_tui.session import WRITER, Session

    _, paths = sources
    data = yaml.safe_load(paths[0].read_text())
    data["written_by"] = "finercut-tui 0.0.1"
    data["model"]["num_blocks"] = "many"
    path = tmp_path / "older.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SessionError) as info:
        Session.load(path)
    assert "written by finercut-tui 0.0.1, this is " + WRITER in str(info.value)
    assert "\n" not in str(info.value)


def test_files_from_before_written_by_round_trip_unchanged():
    from finercut_tui.session import Session

    for path in sorted((ROOT / "sessions").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "written_by" not in text
        assert Session.load(path).dumps() == text


# -- the defects the damage found, each by name ----------------------------------------------------------------
def _one_line_refusal(path: Path) -> str:
    from finercut_tui.errors import SessionError
    from finercut_tui.session import Session

    raw = path.read_bytes()
    with pytest.raises(SessionError) as info:
        Session.load(path)
    assert "\n" not in str(info.value) and path.read_bytes() == raw
    return str(info.value)


def test_regression_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_bytes(
        (ROOT / "sessions" / "smollm2-attn-drop.yaml").read_bytes()
        + b"\nnotes: "
        + b"[" * 50000
        + b"]" * 50000
    )
    assert "nests deeper than any session" in _one_line_refusal(path)


@pytest.mark.parametrize("value", [10**20, 2**63, 0, -1])
def test_regression_a_huge_num_blocks_is_refused_before_anything_is_sized(value, tmp_path):
    """`show` once grew past 19 GB on num_blocks 99999999999999999999."""
    data = yaml.safe_load((ROOT / "sessions" / "smollm2-attn-drop.yaml").read_text())
    data["model"]["num_blocks"] = value
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert "num_blocks" in _one_line_refusal(path) and "out of range 1..4096" in _one_line_refusal(path)


@pytest.mark.parametrize("field,value", [("seconds", [1, 2]), ("seconds", "a string"), ("score", {"x": 1})])
def test_regression_a_step_field_of_the_wrong_type_is_one_line(field, value, tmp_path):
    """`replay` drew such a step and raised inside the app."""
    data = yaml.safe_load((ROOT / "sessions" / "smollm2-joint-drop.yaml").read_text())
    data["steps"][2][field] = value
    path = tmp_path / "typed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert f"step {field} must be a number" in _one_line_refusal(path)


def test_regression_more_steps_than_sublayers_is_refused(tmp_path):
    data = yaml.safe_load((ROOT / "sessions" / "smollm2-attn-drop.yaml").read_text())
    data["steps"] = data["steps"] * 10
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert "more than the 60 sublayers" in _one_line_refusal(path)
