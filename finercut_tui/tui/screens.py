"""Modal screens: help (made from the action table), evaluate-now, and a yes/no question."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from finercut_tui.domain.options import Option
from finercut_tui.errors import FinercutError
from finercut_tui.tui.actions import help_sections

if TYPE_CHECKING:
    from finercut_tui.session import Session

HELP_INTRO = (
    "The grid shows every decoder block (rows, folded into columns on big models) with its attention "
    "and FFN sublayer. The search scores the candidates (lower = more removable) and removes the "
    "lowest each step. The session file is saved after every step."
)

CELLS: tuple[tuple[str, str], ...] = (
    ("○", "a candidate not scored yet in this step"),
    ("▶", "being scored now"),
    ("▁▂▃▄▅▆▇█", "scored: bar and colour from the lowest (most removable) to the highest score"),
    ("×k", "removed at step k (orange: by hand)"),
    ("◆", "pinned: never removed"),
    ("░░░░", "held back by front exclusion (not a candidate yet)"),
    ("·", "kept (not a candidate now)"),
    ("×k≠", "overlay (o in a replay): removed here at step k, kept by the other session"),
    ("⊘k", "overlay: kept here, removed by the other session at its step k"),
    ("[    ]", "the cursor"),
)


def help_text() -> Group:
    parts: list[Text | Table] = [Text(HELP_INTRO)]
    for title, rows in [("Cells", list(CELLS)), *help_sections()]:
        parts.append(Text(f"\n{title}", "bold underline"))
        table = Table.grid(padding=(0, 2))
        table.add_column(min_width=16, style="bold", no_wrap=True)
        table.add_column(ratio=1)
        for key, meaning in rows:
            table.add_row(key, meaning)
        parts.append(table)
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss_help", "Close", show=True),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "finercut-tui help"
            yield Static(help_text(), id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True for yes."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question = question
        self.yes, self.no = yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(self.question, id="confirm-question")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="warning", compact=True)
                yield Button(f"{self.no} (n)", id="no", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class TargetScreen(ModalScreen[str | None]):
    """Ask how far to search on: a count N, a fraction 0<F<1, or 'all'; None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, default: str) -> None:
        super().__init__()
        self.question, self.default = question, default

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(self.question, id="confirm-question")
            yield Input(self.default, placeholder="N, a fraction 0<F<1, or all", id="target", compact=True)

    def on_mount(self) -> None:
        self.query_one("#target", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class OverlayScreen(ModalScreen[str | None]):
    """Ask for the path of a session to lay over the replayed one; None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, default: str = "") -> None:
        super().__init__()
        self.question, self.default = question, default

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(self.question, id="confirm-question")
            yield Input(self.default, placeholder="path/to/session.yaml", id="overlay-path", compact=True)

    def on_mount(self) -> None:
        self.query_one("#overlay-path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


# the dialog's what-if: evaluate the model repaired too (its own field, not part of the evaluation)
WHAT_IF = Option(
    ("--what-if-ridge",),
    field="repair_ridge",
    type=float,
    label="also repaired, ridge",
    placeholder="blank: no; e.g. 0.1",
    help="evaluate the current model repaired too (least squares, this ridge); the search goes on unrepaired",
)


def form_options() -> list:
    """The fields of the evaluate-now dialog: the evaluation options declared with a label, then the
    repair what-if."""
    from finercut_tui.domain.eval_request import eval_options

    return [opt for opt in eval_options() if opt.label] + [WHAT_IF]


class EvalForm:
    """What the evaluate-now dialog asks for: one string per labelled evaluation option, as typed
    (`form.ppl`, `form.tasks`, ...), validated by EvalRequest."""

    def __init__(self, **values: str) -> None:
        names = [opt.field for opt in form_options()]
        unknown = set(values) - set(names)
        if unknown:
            raise TypeError(f"EvalForm has no field {', '.join(sorted(unknown))}")
        self.values = {name: str(values.get(name, "")) for name in names}

    def __getattr__(self, name: str) -> str:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EvalForm) and other.values == self.values

    def __repr__(self) -> str:
        return f"EvalForm({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"

    @classmethod
    def first_for(cls, request: Any, calibration_source: str | None = None) -> EvalForm:
        """What the dialog shows first: the search's own evaluation request; else held-out text this
        run can reach (pydoc's other half when it calibrates on pydoc, as the offline demo does)."""
        if request is None:
            if calibration_source == "pydoc":
                return cls(ppl="pydoc", ppl_max_tokens="4096")
            return cls(ppl="wikitext2")
        return cls(
            **{opt.field: _text(getattr(request, opt.field)) for opt in form_options() if opt is not WHAT_IF}
        )

    def request(self, base: Any, session: Session) -> Any:
        """The `EvalRequest` this form asks for: `base` (the search's request) with the form's fields,
        else a new one on the session's seed and calibration. Raises FinercutError on a bad number."""
        from finercut_tui.eval.request import EvalRequest

        fields = {
            opt.field: _value(self.values[opt.field], opt) for opt in form_options() if opt is not WHAT_IF
        }
        if base is not None:
            return dataclasses.replace(base, **fields)
        calibration = session.calibration
        return EvalRequest(
            **fields,
            seed=session.spec.seed,
            calibration_source=calibration.source,
            calibration_split=calibration.split,
            calibration_text_sha256=calibration.text_sha256,
        )

    def repair_ridge(self) -> float | None:
        """The what-if's ridge (None: evaluate unrepaired only). Raises FinercutError on a bad number."""
        ridge = _value(self.values[WHAT_IF.field], WHAT_IF)
        if ridge is not None and not ridge >= 0:
            raise FinercutError(f"the repair's ridge must be >= 0, got {ridge}")
        return ridge


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def _value(text: str, opt: Any) -> Any:
    """A typed field as its option's type (None when empty); a text field as typed (None when empty)."""
    if not text:
        return None
    if opt.type is None:
        return text
    try:
        return opt.type(text)
    except ValueError:
        raise FinercutError(f"{opt.label} must be a number, got {text!r}") from None


class EvalScreen(ModalScreen[EvalForm | None]):
    """Evaluate the current pruned model: perplexity source and/or lm-eval tasks."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, form: EvalForm, error: str = "") -> None:
        super().__init__()
        self.form = form
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(id="eval-box", classes="dialog"):
            yield Label("Evaluate the pruned model now", classes="dialog-title")
            with Grid(id="eval-grid"):
                for opt in form_options():
                    yield Label(opt.label)
                    kind = {"type": "integer"} if opt.type is int else {}
                    value = self.form.values[opt.field]
                    yield Input(value, placeholder=opt.placeholder, id=opt.field, compact=True, **kind)
            yield Static(
                "Runs between two candidates (also while paused); the baseline of the unpruned model is "
                "measured once. With a ridge the model is also evaluated repaired (a what-if: the search "
                "goes on unrepaired). enter: evaluate · esc: cancel",
                id="eval-hint",
            )
            yield Static(self.error, id="eval-error")
            with Horizontal(classes="buttons"):
                yield Button("Evaluate", id="run", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#ppl", Input).focus()

    def _form(self) -> EvalForm:
        return EvalForm(
            **{opt.field: self.query_one(f"#{opt.field}", Input).value.strip() for opt in form_options()}
        )

    def _submit(self) -> None:
        form = self._form()
        if not form.ppl and not form.tasks:
            self.query_one("#eval-error", Static).update("give a perplexity source and/or tasks")
            return
        self.dismiss(form)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "run":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
