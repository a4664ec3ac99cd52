"""One declaration per option: its flag, type, default, choices, help, and where its value goes.

An `Option` is data (as harlequin's `AbstractOption`): the command line (`commands/options.py`
turns a list of them into argparse options), `--help` (the default is shown from the declaration,
never typed again), the app's forms (`tui/screens.py` builds the evaluation form from them) and the
resume rule ("an option left out is taken from the session") all read the same declaration.

An option that fills a dataclass field is declared on the field itself:

    samples: int = option(10, "--calib-samples", help="number of samples")

and `options_of(cls)` lists them, each with `field` set to the field's name and `default` to its
default. Options that fill no field (`--session`, `--quiet`) are plain `Option(...)` values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

METADATA_KEY = "finercut_option"


@dataclass(frozen=True)
class Option:
    """A command-line option (or positional argument when its flag has no leading dash).

    `help` may hold `{default}`; otherwise " (default X)" is appended when the default says
    something (not None, False or empty). `label` / `placeholder` put the option in a form.
    `exclusive` names a mutually exclusive set (`required` on a member makes the set required).
    """

    flags: tuple[str, ...]
    help: str = ""
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    group: str | None = None
    action: str | None = None  # "store_true" | "append"
    required: bool = False
    dest: str = ""  # the argparse attribute; "" = from the first flag
    field: str = ""  # the dataclass field it fills ("" = none)
    exclusive: str | None = None
    label: str | None = None  # the field's label in a form (None: not in a form)
    placeholder: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.flags, str):
            object.__setattr__(self, "flags", (self.flags,))
        if not self.dest:
            name = next((f for f in self.flags if f.startswith("--")), self.flags[0])
            object.__setattr__(self, "dest", name.lstrip("-").replace("-", "_"))

    @property
    def flag(self) -> str:
        """The long flag, as errors name it (`--calib-samples`)."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def help_text(self) -> str:
        """The --help line, with the declared default."""
        shown = format_default(self.default)
        if "{default}" in self.help:
            return self.help.replace("{default}", shown)
        if shown and self.action != "store_true":
            return f"{self.help} (default {shown})"
        return self.help

    def with_(self, **changes: Any) -> Option:
        """The same option with some attributes changed (another flag, group or help)."""
        if "flags" in changes and "dest" not in changes:
            changes["dest"] = self.dest  # the attribute commands read stays the same
        return dataclasses.replace(self, **changes)


def format_default(value: Any) -> str:
    """A default as --help shows it: 16.0 -> 16, 1e-4 -> 0.0001, () / None / False -> ''."""
    if value is None or value is False or value == () or value == "" or value == []:
        return ""
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def option(default: Any, *flags: str, **kwargs: Any) -> Any:
    """A dataclass field declared as an option: `x: int = option(3, "--x", help="...")`.
    Without flags the flag is the field's name (`--lora-rank` for `lora_rank`)."""
    return dataclasses.field(default=default, metadata={METADATA_KEY: (flags, kwargs)})


def options_of(cls: type) -> list[Option]:
    """The options declared on the fields of dataclass `cls`, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get(METADATA_KEY)
        if declared is None:
            continue
        flags, kwargs = declared
        flags = flags or ("--" + f.name.replace("_", "-"),)
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(Option(flags=tuple(flags), default=default, field=f.name, **kwargs))
    return out


def values_from(args: Any, options: Sequence[Option]) -> dict[str, Any]:
    """{field: value} for the options of `options` that were given (not None) in `args`
    (an argparse Namespace, or any object with the options' `dest` attributes)."""
    out = {}
    for opt in options:
        value = getattr(args, opt.dest, None)
        if opt.field and value is not None:
            out[opt.field] = tuple(value) if isinstance(value, list) else value
    return out


def given_over(base: Any, args: Any, options: Sequence[Option] | None = None) -> Any:
    """`base` (a frozen dataclass) with the fields whose options `args` gives; an option left out
    (None) keeps `base`'s value: the resume rule, and presets' "options given explicitly win"."""
    changes = values_from(args, options if options is not None else options_of(type(base)))
    return dataclasses.replace(base, **changes) if changes else base
