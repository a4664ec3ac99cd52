"""Modal screens: help, evaluate-now, and a yes/no question."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

HELP_INTRO = (
    "The grid shows every decoder block (rows, folded into columns on big models) with its attention "
    "and FFN sublayer. The search scores the candidates (lower = more removable) and removes the "
    "lowest each step. The session file is saved after every step."
)

HELP_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Cells",
        (
            ("○", "a candidate not scored yet in this step"),
            ("▶", "being scored now"),
            ("▁▂▃▄▅▆▇█", "scored: bar and colour from the lowest (most removable) to the highest score"),
            ("×k", "removed at step k (orange: by hand)"),
            ("◆", "pinned: never removed"),
            ("░░░░", "held back by front exclusion (not a candidate yet)"),
            ("·", "kept (not a candidate now)"),
            ("[    ]", "the cursor"),
        ),
    ),
    (
        "Live search",
        (
            ("space", "pause / resume (after the current candidate)"),
            ("n", "run until the next removal, then pause"),
            ("arrows  h j k l", "move the cursor (pgup / pgdn: a screen)"),
            ("p", "pin / unpin the cell under the cursor"),
            ("x", "remove the cell now (recorded as manual)"),
            ("u", "undo the last removal"),
            ("e", "evaluate the pruned model now: perplexity and/or lm-eval tasks"),
            ("s", "save the session now"),
            ("q", "quit: saves; the search stops after the current candidate"),
        ),
    ),
    (
        "Replay",
        (
            ("← →  [ ]", "one removal back / forward"),
            ("home  end", "the unpruned model / every removal"),
            ("↑ ↓  h j k l", "move the cursor"),
            ("c", "continue the search from the shown step in a new session (loads the model)"),
            ("q", "quit"),
        ),
    ),
    ("Everywhere", (("ctrl+p", "command palette: every action by name"), ("?", "this help (esc closes)"))),
)


def help_text() -> Group:
    parts: list[Text | Table] = [Text(HELP_INTRO)]
    for title, rows in HELP_SECTIONS:
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


@dataclass
class EvalForm:
    """What the evaluate-now dialog asks for (plain strings as typed; validated by EvalRequest)."""

    ppl: str = ""
    ppl_max_tokens: str = ""
    tasks: str = ""
    tasks_dir: str = ""
    limit: str = ""


class EvalScreen(ModalScreen[EvalForm | None]):
    """Evaluate the current pruned model: perplexity source and/or lm-eval tasks."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, form: EvalForm, error: str = "") -> None:
        super().__init__()
        self.form = form
        self.error = error

    def compose(self) -> ComposeResult:
        f = self.form
        with Vertical(id="eval-box", classes="dialog"):
            yield Label("Evaluate the pruned model now", classes="dialog-title")
            with Grid(id="eval-grid"):
                yield Label("perplexity on")
                yield Input(f.ppl, placeholder="wikitext2 | c4 | PATH (empty: none)", id="ppl", compact=True)
                yield Label("max tokens")
                yield Input(
                    f.ppl_max_tokens, placeholder="all", id="ppl_max_tokens", type="integer", compact=True
                )
                yield Label("lm-eval tasks")
                yield Input(f.tasks, placeholder="arc_easy,hellaswag (empty: none)", id="tasks", compact=True)
                yield Label("tasks folder")
                yield Input(
                    f.tasks_dir, placeholder="local task YAMLs (optional)", id="tasks_dir", compact=True
                )
                yield Label("limit")
                yield Input(
                    f.limit, placeholder="examples per task (or fraction < 1)", id="limit", compact=True
                )
            yield Static(
                "Runs between two candidates (also while paused); the baseline of the unpruned model is "
                "measured once. enter: evaluate · esc: cancel",
                id="eval-hint",
            )
            yield Static(self.error, id="eval-error")
            with Horizontal(classes="buttons"):
                yield Button("Evaluate", id="run", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#ppl", Input).focus()

    def _form(self) -> EvalForm:
        def value(name: str) -> str:
            return self.query_one(f"#{name}", Input).value.strip()

        return EvalForm(
            ppl=value("ppl"),
            ppl_max_tokens=value("ppl_max_tokens"),
            tasks=value("tasks"),
            tasks_dir=value("tasks_dir"),
            limit=value("limit"),
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
