"""LoRA on the kept sublayers of a pruned model, a plain resumable training loop, and the merge.

- `lora_targets`: the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) of the sublayers that are still
  in the model. A removed sublayer is a weightless stand-in (`model.surgery`), out of the module tree,
  so it gets no adapter; the embeddings and the LM head get none either.
- `attach_lora`: peft's `get_peft_model` with exactly those modules.
- `train_lora`: AdamW on the adapter, linear warm-up then linear decay (transformers'
  `get_linear_schedule_with_warmup`), gradient clipping at 1.0, gradient accumulation. The examples
  form one stream: epoch e is a permutation of them seeded by (seed, e), and optimizer step s reads
  stream positions s*B*G .. (s+1)*B*G-1, so the data position is the step. Every `save_every` steps the
  adapter, optimizer, scheduler, RNG states, step, losses and timing are written to one file
  atomically; `--resume` loads it and continues to the same final weights as an uninterrupted run
  (bit for bit on CPU).
- `merge`: peft's `merge_and_unload`: the deltas go into the kept weights, the wrappers go away and
  the model is a plain transformers model again (the same module objects `PrunableModel` holds).
"""

from __future__ import annotations

import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from finercut_tui.errors import FinercutError
from finercut_tui.heal.config import HealConfig
from finercut_tui.heal.data import IGNORE_INDEX, HealData

CHECKPOINT_DIR = "heal-checkpoint"
CHECKPOINT_FILE = "state.pt"
OOM_HINT = (
    "out of memory while healing: lower --batch-size (raise --grad-accum to keep the effective batch), "
    "shorten --seq-len, add --gradient-checkpointing, use --dtype bfloat16, or a smaller --lora-rank; "
    "--resume continues from the last checkpoint"
)


@dataclass
class HealOutcome:
    steps: int
    losses: list[float]  # per optimizer step, averaged over its micro-batches
    tokens: int  # tokens read (padding excluded)
    seconds: float  # training time, summed over resumed runs
    resumed_from: int | None = None
    targets: list[str] = field(default_factory=list)
    trainable: int = 0

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        """The mean loss of the last 10% of the steps (at least one): less noisy than the last step's."""
        if not self.losses:
            return None
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def lora_targets(pm) -> list[str]:
    """Full names of the linear layers inside the kept sublayers (what LoRA adapts)."""
    from finercut_tui.domain.sublayers import split_id

    prefix = {id(m): n for n, m in pm.model.named_modules()}
    targets: list[str] = []
    for sid in pm.sublayers:
        if sid in pm.removed:
            continue
        block, kind = split_id(sid)
        for name, _role in {"attn": pm.arch.attn, "mlp": pm.arch.mlp}[kind]:
            module = getattr(pm.blocks[block], name)
            base = prefix.get(id(module))
            if base is None:  # not in the tree: nothing to adapt
                continue
            targets += [f"{base}.{n}" for n, m in module.named_modules() if n and _is_linear(m)]
            if _is_linear(module):
                targets.append(base)
    if not targets:
        raise FinercutError("the pruned model keeps no linear layer in any sublayer: nothing to heal")
    return targets


def attach_lora(pm, config: HealConfig, targets: list[str]):
    """The peft model around `pm.model`, with LoRA on `targets` only (seeded init)."""
    from peft import LoraConfig, get_peft_model

    conv1d = any(type(m).__name__ == "Conv1D" for n, m in pm.model.named_modules() if n in set(targets))
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=conv1d,
    )
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():  # transformers 5 renames these (activation_checkpointing_*)
        warnings.simplefilter("ignore", FutureWarning)
        if config.gradient_checkpointing:
            pm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return get_peft_model(pm.model, lora)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(folder: Path) -> dict[str, Any]:
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise FinercutError(f"--resume: no heal checkpoint at {path}: start the heal without --resume")
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file


class _Stream:
    """Example indices in training order: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def __getitem__(self, position: int) -> int:
        import numpy as np

        epoch, i = divmod(position, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[i])


def _collate(examples: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


class _Bar:
    """Progress on stderr: a Rich bar (step, loss, tokens/s, ETA) on a terminal, else a line every 5%."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.progress = None
        self.total, self.done, self.plain = total, done, False
        self.started = time.perf_counter()
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(file=sys.stderr)
        if not console.is_terminal:  # a log file: plain lines, no redraws
            self.plain, self.every = True, max(1, total // 20)
            return
        self.progress = Progress(
            TextColumn("heal"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.progress.start()
        self.task = self.progress.add_task("heal", total=total, completed=done, loss="-", tps="-")

    def update(self, step: int, loss: float, tps: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")
        elif self.plain and (step % self.every == 0 or step == self.total):
            rate = (time.perf_counter() - self.started) / max(1, step - self.done)
            eta = int(rate * (self.total - step))
            print(
                f"heal step {step}/{self.total}  loss {loss:.4f}  {tps:,.0f} tok/s  "
                f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@dataclass
class _Progress:
    """Where training stands: what a checkpoint holds besides the adapter and optimizer."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0  # training time of earlier (resumed) runs
    resumed_from: int | None = None


def train_lora(
    peft_model,
    data: HealData,
    config: HealConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    plan: dict[str, Any] | None = None,
    quiet: bool = True,
    progress: Callable[[str], None] = lambda message: None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> HealOutcome:
    """Train the adapter in place; see the module docstring. `plan` (hyper-parameters, data fingerprint,
    model, step) is stored in every checkpoint and must match on `--resume`. `on_checkpoint(step)` runs
    after each checkpoint is written (tests stop a run there)."""
    from transformers import get_linear_schedule_with_warmup

    config.check()
    plan = dict(plan or {})
    total = config.total_steps(len(data.examples))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup(total), total)
    state = _Progress()
    if resume:
        state = _restore(checkpoint_dir, plan, peft_model, optimizer, scheduler)
        progress(f"resuming the heal at step {state.step} of {total} from {checkpoint_dir}")
    pad = plan.get("pad_token_id")
    batches = _Batches(data, config, pad_id=int(pad) if pad is not None else 0, device=params[0].device)
    bar = _Bar(total, state.step, quiet)
    peft_model.train()
    began = time.perf_counter()
    window: list[tuple[float, int]] = []
    try:
        for step in range(state.step, total):
            t0 = time.perf_counter()
            step_loss, step_tokens = _optimizer_step(peft_model, batches, step, params, optimizer, scheduler)
            state.losses.append(step_loss)
            state.tokens += step_tokens
            window = [*window[-19:], (time.perf_counter() - t0, step_tokens)]
            bar.update(step + 1, step_loss, sum(n for _, n in window) / max(1e-9, sum(t for t, _ in window)))
            state.step = done = step + 1
            if checkpoint_dir is not None and done % config.save_every == 0 and done < total:
                elapsed = state.seconds + time.perf_counter() - began
                _save_checkpoint(checkpoint_dir, plan, peft_model, optimizer, scheduler, state, elapsed)
                if quiet:
                    progress(f"heal step {done}/{total}: loss {step_loss:.4f}; checkpoint written")
                if on_checkpoint is not None:
                    on_checkpoint(done)
    except Exception as exc:
        raise _with_hint(exc) from exc
    finally:
        bar.close()
        peft_model.eval()
    seconds = state.seconds + time.perf_counter() - began
    trainable = sum(p.numel() for p in params)
    return HealOutcome(total, state.losses, state.tokens, seconds, state.resumed_from, trainable=trainable)


def _with_hint(exc: Exception) -> Exception:
    """Out of memory becomes the one line naming the knobs; anything else stays as it is."""
    from finercut_tui.errors import is_out_of_memory

    if is_out_of_memory(exc) or "can't allocate memory" in str(exc):
        return FinercutError(OOM_HINT)
    return exc


class _Batches:
    """The micro-batches of optimizer step s: stream positions s*B*G .. (s+1)*B*G-1 (see the docstring)."""

    def __init__(self, data: HealData, config: HealConfig, pad_id: int, device):
        self.data, self.config, self.pad_id, self.device = data, config, pad_id, device
        self.stream = _Stream(len(data.examples), config.seed)

    def __call__(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        b = self.config.batch_size
        first = step * b * self.config.grad_accum + micro * b
        batch = [self.data.examples[self.stream[first + j]] for j in range(b)]
        return _collate(batch, self.pad_id, self.device)


def _optimizer_step(
    peft_model, batches: _Batches, step: int, params, optimizer, scheduler
) -> tuple[float, int]:
    """One optimizer step over `grad_accum` micro-batches: (mean loss, tokens read)."""
    accum = batches.config.grad_accum
    optimizer.zero_grad(set_to_none=True)
    step_loss, step_tokens = 0.0, 0
    for micro in range(accum):
        inputs = batches(step, micro)
        out = peft_model(**inputs, use_cache=False)
        (out.loss / accum).backward()
        step_loss += float(out.loss.detach()) / accum
        step_tokens += int(inputs["attention_mask"].sum())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    return step_loss, step_tokens


def _save_checkpoint(
    folder: Path, plan, peft_model, optimizer, scheduler, state: _Progress, seconds: float
) -> None:
    _save_atomic(
        {
            "plan": plan,
            "adapter": trainable_state(peft_model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "step": state.step,
            "losses": state.losses,
            "tokens": state.tokens,
            "seconds": seconds,
        },
        folder / CHECKPOINT_FILE,
    )


def _restore(folder: Path | None, plan, peft_model, optimizer, scheduler) -> _Progress:
    """Load a checkpoint into the adapter, optimizer, scheduler and RNGs; refuse one of another plan."""
    if folder is None:
        raise FinercutError("--resume needs a checkpoint folder")
    state = load_checkpoint(folder)
    if state["plan"] != plan:
        diff = sorted(k for k in set(plan) | set(state["plan"]) if plan.get(k) != state["plan"].get(k))
        raise FinercutError(
            f"the heal checkpoint in {folder} was made with other settings ({', '.join(diff)} "
            "differ): pass the same options, or start again with --force instead of --resume"
        )
    named = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["adapter"].items():
            named[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return _Progress(state["step"], list(state["losses"]), state["tokens"], state["seconds"], state["step"])


def save_adapter(peft_model, folder: Path) -> None:
    peft_model.save_pretrained(str(folder))


def merge(peft_model, pm) -> None:
    """Merge the LoRA deltas into the kept weights; `pm.model` is plain transformers again."""
    base = peft_model.merge_and_unload()
    if base is not pm.model:
        raise FinercutError("internal error: the merged model is not the pruned model")
    with warnings.catch_warnings():  # transformers 5 renames these (activation_checkpointing_*)
        warnings.simplefilter("ignore", FutureWarning)
        if getattr(base, "is_gradient_checkpointing", False):
            base.gradient_checkpointing_disable()
    base.eval()
    base.requires_grad_(False)


def config_dict(config: HealConfig) -> dict[str, Any]:
    return asdict(config)
