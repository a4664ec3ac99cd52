"""Many replicas (torchrun): 2 processes started the way torchrun starts them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT on 127.0.0.1, one thread each), gloo on CPU. Same order and scores as
one process; resume across world sizes; refusals and a killed rank end with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from builders import save_tiny_checkpoint

from finercut_tui.errors import FinercutError
from finercut_tui.search.distributed import detect, rows_of, split_by_cost
from finercut_tui.session import Session

TEXT = "tests/data/english.txt"
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds a whole launch may take before the test kills it (a ceiling, not a claim)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def launch(args: list[str], world: int = 2, per_rank=None, env=None, command="run", rank0=None, wait=None):
    """Run `python -m finercut_tui COMMAND ARGS` on `world` ranks (rank 0's program may be `rank0`,
    a script taking the same argv); [(returncode, stderr)] of the ranks in `wait` (default all).
    Every process still running at the end is killed."""
    port = _free_port()
    procs = []
    try:
        for rank in range(world):
            extra = (
                {}
                if world == 1
                else {
                    "RANK": str(rank),
                    "WORLD_SIZE": str(world),
                    "LOCAL_RANK": str(rank),
                    "LOCAL_WORLD_SIZE": str(world),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                }
            )
            program = [str(rank0)] if rank == 0 and rank0 else ["-m", "finercut_tui"]
            argv = [sys.executable, *program, command, *args, *((per_rank or {}).get(rank, []))]
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=_env(**extra, **(env or {})),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + TIMEOUT
        out = []
        for rank in range(world) if wait is None else wait:
            try:
                _, err = procs[rank].communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                tails = [f"rank {r}: {(p.communicate()[1] or '')[-2000:]}" for r, p in enumerate(procs)]
                raise AssertionError(
                    f"rank {rank} still ran after {TIMEOUT}s:\n" + "\n".join(tails)
                ) from None
            out.append((procs[rank].returncode, err))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def base(model, session, *extra):
    return [
        "--model",
        str(model),
        "--calib",
        TEXT,
        "--calib-samples",
        "3",
        "--seq-len",
        "16",
        "--device",
        "cpu",
        "--dist-timeout",
        "60",
        "--session",
        str(session),
        "--quiet",
        *extra,
    ]


def ok(results):
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}: {err}"
        assert "Traceback" not in err


def steps(path):
    return [(s.removed, s.score, s.scores) for s in Session.load(path).steps]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name in ("llama", "qwen3"):
        out[name] = save_tiny_checkpoint(tmp_path_factory.mktemp(name), name)
    return out


# -- pure helpers ---------------------------------------------------------------------------------
def test_detect_reads_torchrun_and_slurm_variables():
    assert detect({}) == (0, 1, 0)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert detect(env) == (3, 4, 1)
    slurm = {
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "0",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
    }
    assert detect(slurm) == (2, 4, 0)


def test_split_by_cost_is_balanced_deterministic_and_complete():
    cands = [f"{b}.{k}" for b in range(8) for k in ("attn", "mlp")]
    parts = split_by_cost(cands, 8, 2)
    assert sorted(u for p in parts for u in p) == sorted(cands)
    loads = [sum(8 - int(u.split(".")[0]) + 1 for u in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= 9  # at most one candidate's cost apart
    assert parts == split_by_cost(cands, 8, 2)
    assert all(p == sorted(p, key=cands.index) for p in parts)
    assert [rows_of(5, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 5)]


class FakeCuda:
    """torch.cuda as a node with `gpus` GPUs shows it: the driver reads CUDA_VISIBLE_DEVICES once, at
    the first call that initialises it (is_available); device_count asks NVML before that."""

    def __init__(self, gpus: int, nvml: bool = True):
        self.gpus, self.nvml, self.seen_at_init, self.current = gpus, nvml, None, None

    def _visible(self) -> int:
        if self.seen_at_init is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            return len(visible.split(",")) if visible else self.gpus
        return len(self.seen_at_init.split(",")) if self.seen_at_init else self.gpus

    def _init(self) -> None:
        if self.seen_at_init is None:
            self.seen_at_init = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def device_count(self) -> int:
        if not self.nvml:
            self._init()
        return self._visible()

    def is_available(self) -> bool:
        self._init()
        return True

    def set_device(self, index: int) -> None:
        self.current = index


@pytest.fixture
def fake_node(monkeypatch):
    """A process of a torchrun launch on a GPU node, without GPUs or a process group."""
    import torch.distributed as dist

    from finercut_tui.search import distributed

    joined = []
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: joined.append(backend))
    monkeypatch.setattr(distributed, "_current", distributed.SINGLE)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test, set by init_world or not
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    def start(rank, local, size, gpus, nvml=True):
        cuda = FakeCuda(gpus, nvml)
        for name in ("device_count", "is_available", "set_device"):
            monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
        env = dict(RANK=rank, LOCAL_RANK=local, WORLD_SIZE=size, MASTER_ADDR="127.0.0.1", MASTER_PORT=1)
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))
        return cuda, joined

    return start


@pytest.mark.parametrize("per_replica,expected", [(1, "1"), (2, "2,3")])
def test_each_rank_takes_its_gpus_before_cuda_starts(fake_node, per_replica, expected):
    from finercut_tui.search.distributed import init_world

    cuda, joined = fake_node(rank=5, local=1, size=8, gpus=8)
    world = init_world(60, "auto", per_replica)
    world.initialized = False  # nothing was joined: the fake has no group to leave
    assert cuda.seen_at_init == expected  # the driver started with this rank's GPUs only
    assert cuda.current == 0 and joined == ["nccl"] and world.gpus_per_replica == per_replica


def test_gpus_a_launcher_gave_each_rank_are_kept(fake_node, monkeypatch):
    from finercut_tui.search.distributed import init_world

    cuda, _ = fake_node(rank=3, local=3, size=4, gpus=8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6")  # srun --gpus-per-task 1
    init_world(60, "auto", 1).initialized = False
    assert cuda.seen_at_init == "6"


def test_gpu_pinning_refusals_are_one_line(fake_node):
    from finercut_tui.search.distributed import init_world

    fake_node(rank=1, local=1, size=2, gpus=8, nvml=False)  # no NVML: counting GPUs starts CUDA
    with pytest.raises(FinercutError, match=r"^rank 1: CUDA started before this rank could take its GPUs"):
        init_world(60, "auto", 1)
    os.environ.pop("CUDA_VISIBLE_DEVICES")  # the call above pinned it
    fake_node(rank=1, local=1, size=2, gpus=2)
    with pytest.raises(FinercutError, match=r"^local rank 1 needs GPUs 2\.\.3 .* lower --nproc-per-node$"):
        init_world(60, "auto", 2)
    with pytest.raises(FinercutError, match=r"^--device cuda:1: under torchrun each rank takes its own"):
        init_world(60, "cuda:1", 1)


# -- equal to one process --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process(models, tmp_path_factory):
    """Reference runs in one process (one thread, like each rank)."""
    tmp = tmp_path_factory.mktemp("one")
    out = {}
    for name, path in models.items():
        ok(launch(base(path, tmp / f"{name}.yaml", "--target", "5"), world=1))
        out[name] = tmp / f"{name}.yaml"
    ok(
        launch(
            base(
                models["llama"], tmp / "joint.yaml", "--method", "joint-drop", "--iterative", "--target", "4"
            ),
            world=1,
        )
    )
    out["joint"] = tmp / "joint.yaml"
    ok(
        launch(
            base(models["llama"], tmp / "sleb.yaml", "--method", "sleb", "--metric", "nll", "--target", "2"),
            world=1,
        )
    )
    out["sleb"] = tmp / "sleb.yaml"
    return out


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_finercut_two_ranks_equal_one_process(name, models, one_process, tmp_path):
    session = tmp_path / "s.yaml"
    ok(launch(base(models[name], session, "--target", "5")))
    assert steps(session) == steps(one_process[name])  # order, chosen scores and every score, exactly
    assert [s.world_size for s in Session.load(session).steps] == [2] * 5
    assert "world_size" not in one_process[name].read_text()


def test_sleb_over_blocks_two_ranks_equal_one_process(models, one_process, tmp_path):
    """A greedy search over whole blocks (SLEB): the block candidates split over the ranks by cost."""
    session = tmp_path / "s.yaml"
    ok(launch(base(models["llama"], session, "--method", "sleb", "--metric", "nll", "--target", "2")))
    assert steps(session) == steps(one_process["sleb"])
    assert all(s.removed.endswith(".block") for s in Session.load(session).steps)


def test_iterative_joint_drop_two_ranks_equal_one_process(models, one_process, tmp_path):
    session = tmp_path / "s.yaml"
    ok(launch(base(models["llama"], session, "--method", "joint-drop", "--iterative", "--target", "4")))
    mine, ref = steps(session), steps(one_process["joint"])
    assert [s[0] for s in mine] == [s[0] for s in ref]
    for (_, score, scores), (_, ref_score, ref_scores) in zip(mine, ref, strict=True):
        assert score == pytest.approx(ref_score, rel=1e-9, abs=1e-12)  # summation order only
        assert scores.keys() == ref_scores.keys()
        assert list(scores.values()) == pytest.approx(list(ref_scores.values()), rel=1e-9, abs=1e-12)


def test_out_of_memory_in_similarity_halves_on_each_rank_and_keeps_the_order(models, one_process, tmp_path):
    """FINERCUT_FAULT_OOM_AT=1: the first forward of every measurement fails on both ranks; each
    halves its own batch and the run goes on to the one-process order."""
    session = tmp_path / "s.yaml"
    args = base(models["llama"], session, "--method", "joint-drop", "--iterative", "--target", "4")
    ok(launch([*args, "--batch-size", "2"], env={"FINERCUT_FAULT_OOM_AT": "1"}))
    mine, ref = steps(session), steps(one_process["joint"])
    assert [s[0] for s in mine] == [s[0] for s in ref]
    for (_, score, _), (_, ref_score, _) in zip(mine, ref, strict=True):
        assert score == pytest.approx(ref_score, rel=1e-6)


# -- resume on another world size -----------------------------------------------------------------
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_exactly(first, then, models, one_process, tmp_path):
    session = tmp_path / "s.yaml"
    ok(launch(base(models["llama"], session, "--target", "2"), world=first))
    ok(launch(base(models["llama"], session, "--target", "5", "--resume"), world=then))
    assert steps(session) == steps(one_process["llama"])
    assert [s.world_size for s in Session.load(session).steps] == [first] * 2 + [then] * 3


# -- refusals and faults -----------------------------------------------------------------------------
def test_other_calibration_on_one_rank_is_refused_with_one_line(models, tmp_path):
    session = tmp_path / "s.yaml"
    args = base(models["llama"], session, "--target", "2")
    i = args.index("--calib-samples")
    args[i : i + 2] = []
    results = launch(args, per_rank={0: ["--calib-samples", "3"], 1: ["--calib-samples", "2"]})
    lines = [line for _, err in results for line in err.splitlines() if line.startswith("finercut-tui:")]
    assert not any("Traceback" in err for _, err in results)
    assert [code for code, _ in results] == [2, 2]
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "finercut-tui: error: rank 1 differs from rank 0 in calibration: 2 x 16 tokens"
    )
    assert not session.exists()  # refused before the session was written


def test_killed_rank_ends_the_run_with_one_line_and_the_session_resumes(models, one_process, tmp_path):
    session = tmp_path / "s.yaml"
    started = time.monotonic()
    results = launch(base(models["llama"], session, "--target", "5"), env={"FINERCUT_FAULT_DIE_AT": "3"})
    assert time.monotonic() - started < 60  # well within --dist-timeout: the closed connection ends it
    (code0, err0), (code1, err1) = results
    assert code1 == -9 and err1.strip() == ""
    lines = [line for line in err0.splitlines() if line.startswith("finercut-tui:")]
    assert "Traceback" not in err0
    assert code0 != 0 and len(lines) == 1, err0
    assert lines[0].startswith("finercut-tui: error: rank 0: lost the other ranks")
    assert [s.removed for s in Session.load(session).steps] == [s[0] for s in steps(one_process["llama"])][:2]
    ok(launch(base(models["llama"], session, "--target", "5", "--resume"), world=1))
    assert steps(session) == steps(one_process["llama"])


def test_a_hung_rank_ends_the_run_within_the_timeout_and_the_session_resumes(models, one_process, tmp_path):
    """The last rank stops (SIGSTOP: alive, silent) in step 3; rank 0 gives up after --dist-timeout."""
    session = tmp_path / "s.yaml"
    args = base(models["llama"], session, "--target", "5")
    args[args.index("--dist-timeout") + 1] = "20"  # short, but long enough for both ranks to load
    ((code0, err0),) = launch(args, env={"FINERCUT_FAULT_HANG_AT": "3"}, wait=[0])
    lines = [line for line in err0.splitlines() if line.startswith("finercut-tui:")]
    assert "Traceback" not in err0
    assert code0 != 0 and len(lines) == 1, err0
    assert lines[0].startswith("finercut-tui: error: rank 0: lost the other ranks")
    assert "--dist-timeout 20s" in lines[0] and "--resume continues" in lines[0]
    assert [s.removed for s in Session.load(session).steps] == [s[0] for s in steps(one_process["llama"])][:2]
    ok(launch(base(models["llama"], session, "--target", "5", "--resume"), world=1))
    assert steps(session) == steps(one_process["llama"])


# -- the app on rank 0, the other ranks following its keys --------------------------------------------
DRIVER = ROOT / "tests" / "dist_tui_driver.py"


def _app_session(path):
    s = Session.load(path)
    return (
        [(st.removed, st.by, st.score, st.scores) for st in s.steps],
        s.pinned.canonical(),
        [u.to_dict() for u in s.undone],
        [e.step for e in s.evals],
        s.finished,
    )


def test_the_app_on_rank_0_steers_every_rank_as_in_one_process(models, tmp_path):
    """tests/dist_tui_driver.py presses pause, step, pin, remove, undo, evaluate, resume, one more and
    quit in rank 0's app; rank 1 runs the plain `tui` command. Had rank 1 missed a command, its
    candidates would differ and the search would stop with "rank 1 diverged"; the session equals the
    same keys pressed in one process, score for score."""
    args = base(models["llama"], tmp_path / "two.yaml", "--target", "4")
    args.remove("--quiet")
    results = launch(args, command="tui", rank0=DRIVER)
    ok(results)
    assert results[1][1].strip() == ""  # the follower prints nothing
    one = base(models["llama"], tmp_path / "one.yaml", "--target", "4")
    one.remove("--quiet")
    ok(launch(one, world=1, command="tui", rank0=DRIVER))
    two, ref = _app_session(tmp_path / "two.yaml"), _app_session(tmp_path / "one.yaml")
    assert two == ref
    removed, pinned, undone, evals, finished = two
    assert [by for _, by, _, _ in removed] == ["search", "manual", "search", "search", "search"]
    assert pinned and undone and 2 in evals and finished
    assert [st.world_size for st in Session.load(tmp_path / "two.yaml").steps if st.by == "search"] == [2] * 4


def test_quitting_the_app_mid_step_ends_every_rank_cleanly(models, one_process, tmp_path):
    """q while rank 0 scores step 1: every rank stops after its current candidate and exits 0 (no
    lost-rank line); the session holds no half step and a resume gives the one-process order."""
    session = tmp_path / "s.yaml"
    args = base(models["llama"], session, "--target", "5")
    args.remove("--quiet")
    results = launch(args, command="tui", rank0=DRIVER, env={"DRIVER_SCENARIO": "quit-mid-step"})
    ok(results)
    assert results[1][1].strip() == ""
    saved = Session.load(session)
    assert saved.steps == [] and not saved.finished
    ok(launch(base(models["llama"], session, "--target", "5", "--resume")))
    assert steps(session) == steps(one_process["llama"])
