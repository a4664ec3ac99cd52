"""Every action of the workbench in one table: the key bindings of each screen, the command palette and
the help screen are all made from it.

A screen offers the actions whose `screens` name it. Each screen answers `why_not(name)`: None when
the action can run now, else one line saying why not; a key pressed while its action cannot run shows
that line instead of doing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

LIVE = "live"  # a search runs (or scripted events play) in the live screen
REPLAY = "replay"  # a saved session, stepped through without a model


@dataclass(frozen=True)
class Action:
    """One thing the user can do: `action_<name>` on every screen that offers it."""

    name: str
    keys: str  # Textual key names, comma-separated; the first one is shown
    label: str  # footer
    title: str  # command palette ("": not in the palette)
    help: str  # help screen and palette, one line
    screens: frozenset[str]
    key_display: str | None = None
    help_keys: str | None = None  # how the help screen writes the keys, when not `key_display`
    footer: bool = True
    priority: bool = False  # before the grid's own keys (the arrows)

    @property
    def shown_key(self) -> str:
        return self.key_display or self.keys.split(",")[0]

    def binding(self) -> Binding:
        return Binding(
            self.keys,
            self.name,
            self.label,
            show=self.footer,
            key_display=self.key_display,
            priority=self.priority,
            id=f"workbench.{self.name}",
        )


_LIVE = frozenset({LIVE})
_REPLAY = frozenset({REPLAY})
_BOTH = frozenset({LIVE, REPLAY})

ACTIONS: tuple[Action, ...] = (
    Action(
        "toggle_pause", "space", "Pause", "Pause / resume",
        "pause the search after the current candidate, or resume it; once finished, search on to a new target",
        _LIVE, key_display="space",
    ),
    Action(
        "step_once", "n", "Step", "Step one removal",
        "run until the next removal, then pause; once finished, remove one more", _LIVE,
    ),
    Action(
        "pin", "p", "Pin", "Pin / unpin cell",
        "pin the cell under the cursor (never removed), or unpin it", _LIVE,
    ),
    Action(
        "force_remove", "x", "Remove", "Remove cell now",
        "remove the cell under the cursor now (recorded as manual)", _LIVE,
    ),
    Action("undo", "u", "Undo", "Undo last removal", "restore the last removed sublayer", _LIVE),
    Action(
        "evaluate", "e", "Eval", "Evaluate now",
        "evaluate the pruned model now: perplexity and/or lm-eval tasks", _LIVE,
    ),
    Action("save", "s", "Save", "Save session", "write the session file now", _LIVE),
    Action(
        "prev_step", "left,left_square_bracket", "Prev", "Previous step", "one removal back", _REPLAY,
        key_display="←", help_keys="←  [", priority=True,
    ),
    Action(
        "next_step", "right,right_square_bracket", "Next", "Next step", "one removal forward", _REPLAY,
        key_display="→", help_keys="→  ]", priority=True,
    ),
    Action(
        "first_step", "home", "First", "First step", "the unpruned model (step 0)", _REPLAY,
        footer=False, priority=True,
    ),
    Action(
        "last_step", "end", "Last", "Last step", "every removal (the last step)", _REPLAY,
        footer=False, priority=True,
    ),
    Action(
        "continue_here", "c", "Continue", "Continue from this step",
        "continue the search from the shown step in a new session (loads the model)", _REPLAY,
    ),
    Action(
        "overlay", "o", "Overlay", "Overlay another session",
        "lay a second session of the same model over this one: the grid marks the cells where the two "
        "differ at the shown step (o again clears it)", _REPLAY, footer=False,
    ),
    Action(
        "toggle_curves", "g", "Curves", "Curves / ranking",
        "side panel: the ranking, then the curves (retained %, evaluation results, winning score per "
        "step against removals), then the ranking again", _BOTH, footer=False,
    ),
    Action(
        "quit", "q", "Quit", "",  # the palette has Textual's own Quit, which lands here too
        "quit; a live search is saved and stops after the current candidate", _BOTH,
    ),
    Action(
        "help", "question_mark", "Help", "Help", "keys and the meaning of the grid cells (esc closes)",
        _BOTH, key_display="?",
    ),
)  # fmt: skip

BY_NAME: dict[str, Action] = {a.name: a for a in ACTIONS}
BY_KEY: dict[str, Action] = {key: a for a in ACTIONS for key in a.keys.split(",")}

# keys that are not actions of the table (the grid's cursor, Textual's palette), for the help screen
CURSOR_KEYS = (
    "arrows  h j k l",
    "move the cursor (pgup / pgdn: a screen, home / end: the first / last block; in a replay ← → home "
    "end step)",
)
PALETTE_KEYS = ("ctrl+p", "command palette: every action by name")


def offered(screen: str) -> tuple[Action, ...]:
    return tuple(a for a in ACTIONS if screen in a.screens)


def bindings(screen: str) -> list[Binding]:
    return [a.binding() for a in offered(screen)]


def help_sections() -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(keys, meaning)]) for the help screen: the live keys, the replay keys, the rest."""

    def rows(screens: frozenset[str]) -> list[tuple[str, str]]:
        return [(a.help_keys or a.shown_key, a.help) for a in ACTIONS if a.screens == screens]

    return [
        ("Live search", rows(_LIVE)),
        ("Replay", rows(_REPLAY)),
        ("Everywhere", [CURSOR_KEYS, *rows(_BOTH), PALETTE_KEYS]),
    ]
