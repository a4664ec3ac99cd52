"""`finercut-tui heal`: a short LoRA fine-tune of the model pruned to a session step, merged and exported.

Order: every input is checked before the (slow) model load; the pruned model is evaluated (when
--ppl / --tasks are given), LoRA is trained on the linear layers of the kept sublayers
(`finercut_tui.heal.train`), the adapter is saved alone, merged into the weights, the healed model is
evaluated with the same request, exported exactly as `export` does (plus a Healing section in
PRUNING.md), and the session gets a `heals:` entry (`HealRecord`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import shutil
import sys
from pathlib import Path

from finercut_tui.commands.common import add_eval_args, add_model_args, eval_request, progress_printer
from finercut_tui.errors import FinercutError

ADAPTER_DIR = "adapter"


def register(subparsers) -> None:
    from finercut_tui.heal.data import DEFAULT_DATA

    p = subparsers.add_parser(
        "heal",
        help="LoRA fine-tune the model pruned to a session step, merge it and export it",
        description=(
            "Heal the model pruned by the first K removals of SESSION: LoRA (peft) on the linear layers of "
            "the kept sublayers, trained on instruction data (Alpaca prompt, loss on the response only) or "
            "plain text, merged into the kept weights and written to --out in `export`'s format, with the "
            "adapter alone in --out/adapter. With --ppl/--tasks the model is evaluated before and after; "
            "the session records the heal."
        ),
    )
    p.add_argument("session", help="session YAML written by run / tui")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--step", type=int, help="heal the model after the first K removals")
    which.add_argument(
        "--ratio", type=float, help="heal the shortest prefix of removals removing this fraction (0..1)"
    )
    p.add_argument("--out", required=True, help="output folder: merged model, adapter/, PRUNING.md")
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help=f"hub data set name (default {DEFAULT_DATA}), a local .jsonl (instruction/input/output or text), "
        "a .txt, or pydoc (the first half of Python's reference topics, offline)",
    )
    p.add_argument("--data-split", default="train", help="split of a hub data set (default train)")
    p.add_argument("--max-examples", type=int, default=None, help="train on the first N examples only")
    lora = p.add_argument_group("LoRA and training")
    lora.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    lora.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    lora.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    length = lora.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the data (default 1)")
    lora.add_argument("--batch-size", type=int, default=4, help="examples per micro-batch (default 4)")
    lora.add_argument(
        "--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)"
    )
    lora.add_argument(
        "--seq-len", type=int, default=256, help="max tokens per example / text row (default 256)"
    )
    lora.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default 5%% of steps)")
    lora.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    lora.add_argument("--seed", type=int, default=0, help="seed for the LoRA init, data order and dropout")
    lora.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations: less memory, slower"
    )
    lora.add_argument(
        "--save-every", type=int, default=100, help="write a resumable checkpoint every N steps (default 100)"
    )
    p.add_argument("--resume", action="store_true", help="continue the heal checkpointed in --out")
    p.add_argument("--force", action="store_true", help="replace what --out holds (a heal or an export)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    evals = p.add_argument_group("evaluation before and after healing (as in `eval`)")
    add_eval_args(evals, batch_flag="--eval-batch-size")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from finercut_tui.heal.train import HealConfig

    config = HealConfig(
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lr=args.lr,
        steps=args.steps,
        epochs=args.epochs if args.epochs is not None else 1.0,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seq_len=args.seq_len,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        seed=args.seed,
        save_every=args.save_every,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    config.check()
    return config


def _prepare_out(out: Path, resume: bool, force: bool) -> Path:
    from finercut_tui.heal.train import CHECKPOINT_DIR, CHECKPOINT_FILE
    from finercut_tui.model.checkpoint import check_out_dir

    checkpoint = out / CHECKPOINT_DIR
    if resume:
        if not (checkpoint / CHECKPOINT_FILE).is_file():
            raise FinercutError(
                f"--resume: no heal checkpoint in {out} ({CHECKPOINT_DIR}/{CHECKPOINT_FILE} is missing): "
                "start the heal without --resume"
            )
        return checkpoint
    if out.is_dir() and (checkpoint / CHECKPOINT_FILE).is_file() and not force:
        raise FinercutError(
            f"{out} holds an unfinished heal: pass --resume to continue it, or --force to start again"
        )
    check_out_dir(out, force)
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    return checkpoint


def _check_eval_inputs(request) -> None:
    from finercut_tui.data.sources import NAMED, load_text

    if request.ppl and request.ppl not in NAMED and not os.path.isfile(os.path.expanduser(request.ppl)):
        load_text(request.ppl, purpose="evaluation")  # the one-line "text file not found"
    if request.tasks:
        from finercut_tui.eval.harness import resolve_tasks

        resolve_tasks(request.tasks, request.tasks_dir)


def _command_line() -> str:
    return shlex.join(["finercut-tui", *sys.argv[1:]])  # as `run` records its command


def run(args: argparse.Namespace) -> int:
    from finercut_tui.commands.export import _spec, resolve_step
    from finercut_tui.domain.sublayers import expand
    from finercut_tui.heal.data import load_records
    from finercut_tui.session import Session

    session = Session.load(args.session)
    if args.step == 0:
        raise FinercutError("--step 0 removes nothing: heal a pruned model (--step 1 or more)")
    k = resolve_step(session, step=args.step, ratio=args.ratio)
    removed = session.removed_at(k)
    if not expand(removed):
        raise FinercutError(f"step {k} removes nothing: there is no pruning to heal")
    config = _config(args)
    out = Path(args.out).expanduser()
    spec = _spec(args, session)
    source = Path(spec.name_or_path).expanduser()
    if spec.name_or_path and source.is_dir() and source.resolve() == out.resolve():
        raise FinercutError(f"--out {args.out} is the source model's folder: pick another folder")
    checkpoint = _prepare_out(out, args.resume, args.force)
    measure = bool(args.ppl or args.tasks)
    request = eval_request(args, args.seed, session.calibration) if measure else None
    if request is not None:
        _check_eval_inputs(request)
    progress = progress_printer()
    progress(f"reading the training data: {args.data}")
    records = load_records(args.data, split=args.data_split)
    return heal_session(
        args,
        session,
        k,
        config,
        records,
        request,
        out,
        checkpoint,
        spec,
        progress,
    )


def heal_session(args, session, k, config, records, request, out, checkpoint, spec, progress) -> int:
    from finercut_tui.domain.evals import EvalRecord
    from finercut_tui.domain.records import HealRecord
    from finercut_tui.domain.sublayers import expand
    from finercut_tui.eval.runner import run_eval
    from finercut_tui.export.folder import export_pruned
    from finercut_tui.heal import train as T
    from finercut_tui.heal.data import tokenize
    from finercut_tui.model.loading import load_model
    from finercut_tui.session import Session, check_matches

    lm = load_model(spec, progress=progress)
    pm = lm.pm
    check_matches(session, architecture=lm.architecture, num_blocks=pm.num_blocks, source=args.session)
    removed = session.removed_at(k)
    pm.set_removed(expand(removed))
    data = tokenize(records, pm.tokenizer, config.seq_len, args.max_examples)
    progress(
        f"{data.kind} data: {len(data.examples)} examples, {data.tokens:,} tokens "
        f"({data.loss_tokens:,} with loss); {data.truncated} cut to --seq-len {config.seq_len}"
    )
    previous = [e.to_dict() for e in session.evals]
    new_baseline: list[dict] = []
    before = after = None
    if request is not None:
        progress(f"evaluating step {k} before healing: {request.describe()}")
        records_before = run_eval(pm, request, k, previous, progress=progress)
        new_baseline = records_before[:-1]
        before = records_before[-1]
        previous += new_baseline

    targets = T.lora_targets(pm)
    peft_model = T.attach_lora(pm, config, targets)
    tokenizer = pm.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    plan = {
        "session_step": k,
        "removed": list(removed),
        "model": spec.gguf_file or spec.name_or_path,
        "dtype": lm.dtype,
        "data": data.fingerprint,
        "config": T.config_dict(config),
        "targets": len(targets),
        "pad_token_id": pad,
    }
    progress(
        f"LoRA rank {config.lora_rank} on {len(targets)} linear layers of the kept sublayers; "
        f"{config.total_steps(len(data.examples))} steps of {config.batch_size} x {config.grad_accum} examples"
    )
    outcome = T.train_lora(
        peft_model,
        data,
        config,
        checkpoint_dir=checkpoint,
        resume=args.resume,
        plan=plan,
        quiet=args.quiet,
        progress=progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    adapter_dir = out / ADAPTER_DIR
    T.save_adapter(peft_model, adapter_dir)
    T.merge(peft_model, pm)
    if request is not None:
        progress(f"evaluating step {k} after healing")
        after = run_eval(pm, request, k, previous, progress=progress)[-1]

    heal = HealRecord(
        step=k,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        command=_command_line(),
        data={**data.describe(), **({"split": args.data_split} if data.source not in ("pydoc",) else {})},
        lora={
            "rank": config.lora_rank,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "modules": len(targets),
            "trainable_parameters": outcome.trainable,
        },
        training={
            "lr": config.lr,
            "steps": config.steps,
            "epochs": None if config.steps is not None else config.epochs,
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "seq_len": config.seq_len,
            "warmup_steps": config.warmup(outcome.steps),
            "weight_decay": config.weight_decay,
            "seed": config.seed,
            "max_examples": args.max_examples,
            "gradient_checkpointing": config.gradient_checkpointing,
            "dtype": lm.dtype,
            "device": str(pm.input_device),
        },
        steps=outcome.steps,
        tokens=outcome.tokens,
        first_loss=_round(outcome.first_loss),
        final_loss=_round(outcome.final_loss),
        seconds=round(outcome.seconds, 3),
        resumed_from=outcome.resumed_from,
        out=str(args.out),
        adapter=str(Path(args.out) / ADAPTER_DIR),
        before=EvalRecord.from_dict(before) if before else None,
        after=EvalRecord.from_dict(after) if after else None,
    )
    result = export_pruned(
        pm,
        out,
        removed,
        source_model=spec.gguf_file or spec.name_or_path,
        session=session,
        session_path=args.session,
        step=k,
        force=True,  # the folder holds the adapter (and the checkpoint) already
        healing=heal,
        progress=progress,
    )
    # re-read: a search may have written the session meanwhile; keep its steps
    fresh = Session.load(args.session)
    if fresh.removed_at(k) != removed:
        raise FinercutError(
            f"{args.session} changed while healing (its first {k} removals differ now): the healed model "
            f"is in {out} but the session was not updated"
        )
    fresh.evals.extend(EvalRecord.from_dict(r) for r in new_baseline)
    fresh.heals.append(heal)
    fresh.save(args.session)
    shutil.rmtree(checkpoint, ignore_errors=True)
    progress(f"recorded the heal in {args.session}")
    print(_summary(heal, result))
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _summary(heal, result) -> str:
    from finercut_tui.domain.evals import describe_eval

    loss = f"loss {heal.first_loss:.4f} -> {heal.final_loss:.4f}" if heal.first_loss is not None else ""
    lines = [
        f"healed step {heal.step}: {heal.steps} steps, {loss}, {heal.seconds:.1f}s; wrote {result.out_dir} "
        f"({result.format} format) and its adapter in {heal.adapter}"
    ]
    if heal.before is not None and heal.after is not None:
        lines.append(f"before: {describe_eval(heal.before)}")
        lines.append(f"after:  {describe_eval(heal.after)}")
    return "\n".join(lines)
