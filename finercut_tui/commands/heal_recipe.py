"""The heal recipe: a class of short stages driven by one config, as torchtune's recipes are.

It sits with the commands, as torchtune's recipes sit above its library: it composes `heal/`
(training, data), `eval/`, `export/` and the session, which are one layer below it.

    HealRecipe(HealPlan(...)).run()

runs check -> load -> data -> evaluate before -> train -> merge -> evaluate after -> export ->
record, each a method of a few lines. `finercut-tui heal` (commands/heal.py) builds the `HealPlan`
from its options; a test or a script can build one directly.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finercut_tui.domain.records import HealRecord
from finercut_tui.domain.sublayers import expand
from finercut_tui.errors import FinercutError
from finercut_tui.heal import train as T
from finercut_tui.heal.config import DataOptions, HealConfig

ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class HealPlan:
    """One heal: the model after the first `step` removals of the session at `session_path`, trained
    as `training` says on `data`, evaluated with `request` (None: not evaluated), written to `out`."""

    session_path: str
    step: int
    out: str
    model: Any  # a ModelSpec (search.job.model_spec_from_session)
    training: HealConfig = HealConfig()
    data: DataOptions = DataOptions()
    request: Any = None  # an EvalRequest
    resume: bool = False
    force: bool = False
    quiet: bool = False
    command: str = ""
    repair: bool = False  # repair first (least-squares patches), then heal the repaired model
    ridge: float | None = None  # the repair's ridge (None: the default, which few tokens refuse)


class HealRecipe:
    """The stages of a heal; `run` calls them in order. State passes between stages on `self`."""

    def __init__(self, plan: HealPlan, progress: Callable[[str], None] = print):
        self.plan, self.progress = plan, progress
        self.out = Path(plan.out).expanduser()
        self.before = self.after = None
        self.new_baseline: list = []
        self.repair_record = None

    def run(self) -> tuple[HealRecord, Any]:
        """(the session's new heal record, export_pruned's result)."""
        self.check()
        self.load()
        self.tokenize()
        self.evaluate_before()
        self.repair()
        self.train()
        self.merge()
        self.evaluate_after()
        self.export()
        self.record()
        return self.heal, self.result

    def check(self) -> None:
        """Every input, before the (slow) model load: the step, the settings, --out, the data."""
        from finercut_tui.commands.export import check_out_is_not_the_source
        from finercut_tui.eval.request import check_inputs
        from finercut_tui.heal.data import load_records
        from finercut_tui.session import Session

        plan = self.plan
        self.session = Session.load(plan.session_path)
        self.removed = self.session.removed_at(plan.step)
        if not expand(self.removed):
            raise FinercutError(f"step {plan.step} removes nothing: there is no pruning to heal")
        plan.training.check()
        if plan.repair:
            from finercut_tui.repair.projections import check_ridge

            check_ridge(self.ridge)
        check_out_is_not_the_source(plan.model, plan.out)
        self.checkpoint = prepare_out(self.out, plan.resume, plan.force)
        if plan.request is not None:
            check_inputs(plan.request)
        self.progress(f"reading the training data: {plan.data.data}")
        self.records = load_records(plan.data.data, split=plan.data.data_split)

    def load(self) -> None:
        from finercut_tui.model.loading import load_model
        from finercut_tui.session import check_matches

        self.lm = load_model(self.plan.model, progress=self.progress)
        self.pm = self.lm.pm
        check_matches(
            self.session,
            architecture=self.lm.architecture,
            num_blocks=self.pm.num_blocks,
            source=self.plan.session_path,
        )
        if self.plan.repair:  # every repair check that needs the model, before anything is written
            from finercut_tui.commands.repair import prepare_repair
            from finercut_tui.domain.spec import CalibrationSpec

            c = self.session.calibration
            spec = CalibrationSpec(source=c.source, samples=c.samples, seq_len=c.seq_len, layout=c.layout)
            given = self.plan.ridge is not None
            self.repair_cal = prepare_repair(
                self.pm, self.session, self.plan.step, spec, self.ridge, given, self.progress
            )
        self.pm.set_removed(expand(self.removed))

    @property
    def ridge(self) -> float:
        from finercut_tui.domain.repairs import DEFAULT_RIDGE

        return DEFAULT_RIDGE if self.plan.ridge is None else float(self.plan.ridge)

    def tokenize(self) -> None:
        """The data stage: records -> token ids and labels."""
        from finercut_tui.heal.data import tokenize

        seq_len = self.plan.training.seq_len
        self.data = d = tokenize(self.records, self.pm.tokenizer, seq_len, self.plan.data.max_examples)
        self.progress(
            f"{d.kind} data: {len(d.examples)} examples, {d.tokens:,} tokens "
            f"({d.loss_tokens:,} with loss); {d.truncated} cut to --seq-len {seq_len}"
        )

    def evaluate_before(self) -> None:
        from finercut_tui.eval.runner import run_eval

        self.previous = list(self.session.evals)
        request = self.plan.request
        if request is None:
            return
        self.progress(f"evaluating step {self.plan.step} before healing: {request.describe()}")
        records = run_eval(self.pm, request, self.plan.step, self.previous, progress=self.progress)
        self.new_baseline, self.before = records[:-1], records[-1]
        self.previous += self.new_baseline

    def repair(self) -> None:
        """With --repair: fold the least-squares patches in first; LoRA then trains on top of them."""
        if not self.plan.repair:
            return
        from finercut_tui.commands.repair import fit_repair

        record = fit_repair(
            self.pm, self.session, self.plan.step, self.repair_cal, self.ridge, None, self.progress
        )
        self.repair_record = dataclasses.replace(record, out=str(self.plan.out), before=self.before)

    def train(self) -> None:
        config = self.plan.training
        self.targets = T.lora_targets(self.pm)
        self.peft_model = T.attach_lora(self.pm, config, self.targets)
        self.progress(
            f"LoRA rank {config.lora_rank} on {len(self.targets)} linear layers of the kept sublayers; "
            f"{config.total_steps(len(self.data.examples))} steps of {config.batch_size} x "
            f"{config.grad_accum} examples"
        )
        self.outcome = T.train_lora(
            self.peft_model,
            self.data,
            config,
            checkpoint_dir=self.checkpoint,
            resume=self.plan.resume,
            plan=self.checkpoint_plan(),
            quiet=self.plan.quiet,
            progress=self.progress,
        )

    def checkpoint_plan(self) -> dict[str, Any]:
        """What a checkpoint was made with; `--resume` refuses one made with anything else."""
        tokenizer = self.pm.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return {
            "session_step": self.plan.step,
            "removed": list(self.removed),
            "model": self.plan.model.gguf_file or self.plan.model.name_or_path,
            "dtype": self.lm.dtype,
            "data": self.data.fingerprint,
            "config": T.config_dict(self.plan.training),
            "targets": len(self.targets),
            "pad_token_id": pad,
            **({"repaired_first": {"ridge": self.ridge}} if self.plan.repair else {}),
        }

    def merge(self) -> None:
        """The adapter alone to --out/adapter, then its deltas into the kept weights."""
        self.out.mkdir(parents=True, exist_ok=True)
        T.save_adapter(self.peft_model, self.out / ADAPTER_DIR)
        T.merge(self.peft_model, self.pm)

    def evaluate_after(self) -> None:
        from finercut_tui.eval.runner import run_eval

        if self.plan.request is not None:
            self.progress(f"evaluating step {self.plan.step} after healing")
            self.after = run_eval(
                self.pm, self.plan.request, self.plan.step, self.previous, progress=self.progress
            )[-1]

    def export(self) -> None:
        """--out as `export` writes it; the card's Healing section and config.json's `healed` entry
        come from the heal record."""
        from finercut_tui.export.folder import export_pruned

        self.heal = heal_record(self)
        self.result = export_pruned(
            self.pm,
            self.out,
            self.removed,
            source_model=self.plan.model.gguf_file or self.plan.model.name_or_path,
            session=self.session,
            session_path=self.plan.session_path,
            step=self.plan.step,
            force=True,  # the folder holds the adapter (and the checkpoint) already
            healing=self.heal,
            progress=self.progress,
        )

    def record(self) -> None:
        """The heal (and a baseline measured for it) appended to the session; the checkpoint goes."""
        from finercut_tui.search.job import append_records

        append_records(
            self.plan.session_path,
            self.plan.step,
            self.removed,
            evals=self.new_baseline,
            heals=[self.heal],
            repairs=[self.repair_record] if self.repair_record is not None else [],
            doing="healing",
            lost=f"the healed model is in {self.out} but the session was not updated",
        )
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        self.progress(f"recorded the heal in {self.plan.session_path}")


def heal_record(recipe: HealRecipe) -> HealRecord:
    """The session's `heals:` entry for a finished recipe."""
    plan, config, outcome = recipe.plan, recipe.plan.training, recipe.outcome
    data = recipe.data
    return HealRecord(
        step=plan.step,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        command=plan.command,
        data={**data.describe(), **({"split": plan.data.data_split} if data.source != "pydoc" else {})},
        lora={
            "rank": config.lora_rank,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "modules": len(recipe.targets),
            "trainable_parameters": outcome.trainable,
        },
        training=training_record(recipe),
        steps=outcome.steps,
        tokens=outcome.tokens,
        first_loss=_round(outcome.first_loss),
        final_loss=_round(outcome.final_loss),
        seconds=round(outcome.seconds, 3),
        resumed_from=outcome.resumed_from,
        out=str(plan.out),
        adapter=str(Path(plan.out) / ADAPTER_DIR),
        before=recipe.before,
        after=recipe.after,
    )


def training_record(recipe: HealRecipe) -> dict[str, Any]:
    config, outcome = recipe.plan.training, recipe.outcome
    return {
        "lr": config.lr,
        "steps": config.steps,
        "epochs": None if config.steps is not None else config.epochs,
        "batch_size": config.batch_size,
        "grad_accum": config.grad_accum,
        "seq_len": config.seq_len,
        "warmup_steps": config.warmup(outcome.steps),
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "max_examples": recipe.plan.data.max_examples,
        "gradient_checkpointing": config.gradient_checkpointing,
        "dtype": recipe.lm.dtype,
        "device": str(recipe.pm.input_device),
        **({"repaired_first": True} if recipe.plan.repair else {}),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def prepare_out(out: Path, resume: bool, force: bool) -> Path:
    """The checkpoint folder inside --out: it must hold a checkpoint on --resume; else --out must be
    empty (or --force), and an old checkpoint goes."""
    from finercut_tui.model.checkpoint import check_out_dir

    checkpoint = out / T.CHECKPOINT_DIR
    if resume:
        if not (checkpoint / T.CHECKPOINT_FILE).is_file():
            raise FinercutError(
                f"--resume: no heal checkpoint in {out} ({T.CHECKPOINT_DIR}/{T.CHECKPOINT_FILE} is missing): "
                "start the heal without --resume"
            )
        return checkpoint
    if out.is_dir() and (checkpoint / T.CHECKPOINT_FILE).is_file() and not force:
        raise FinercutError(
            f"{out} holds an unfinished heal: pass --resume to continue it, or --force to start again"
        )
    check_out_dir(out, force)
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    return checkpoint
