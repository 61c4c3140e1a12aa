"""Command-line plumbing shared by boot.py, dkdm.py, evaluate.py and teachers.py, without torch.

Only the standard library is imported here, so that `--help` (and a `--dry-run` that needs no
model) answers before torch, diffusers or transformers are loaded: each script defines its config
dataclass, then asks `answers_alone(argv)` and, if so, answers from the config alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

HELP_FLAGS = ("-h", "--help")
PRECISIONS = ("auto", "bf16", "fp32")  # the student's: auto = bf16 autocast + TF32 on a GPU, float32 on CPU


class UserError(ValueError):
    """Bad input: printed as one line by every CLI of this repository, exit code 2."""


def answers_alone(argv, flags=HELP_FLAGS) -> bool:
    """Whether this command line is answered from the config alone (a flag of `flags` is given)."""
    return any(a in flags for a in argv)


def flag(default, help_: str, choices=None):
    """A config dataclass field that is a command-line flag: its default, its help, its choices."""
    meta = {"help": help_} if choices is None else {"help": help_, "choices": list(choices)}
    return dataclasses.field(default=default, metadata=meta)


def main_of(command, argv) -> int:
    """A script's main: `command(argv)`'s exit code (None = 0), or 2 with one line `error: ...` on
    stderr for bad input (printed by rank 0 only under torchrun: every rank stops alike)."""
    import os

    try:
        return command(argv) or 0
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2


def add_usage(parser, line: str):
    """Append a usage line (e.g. a subcommand) under argparse's own, as `prog` prints it."""
    auto = parser.format_usage().removeprefix("usage: ").rstrip()
    parser.usage = auto + "\n       " + line
    return parser


def load_prompts(path) -> list[str]:
    """Prompts for text teachers: a text file with one prompt per line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompts file '{path}' does not exist")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file '{path}' is empty")
    return prompts


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit code 2), like every other input error."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser_from_dataclass(cls, doc: str):
    """argparse flags from a config dataclass: --field-name, defaults shown, bools as --flag/--no-flag."""
    p = OneLineParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)  # the annotations as types (they are strings under `from __future__`)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING \
            else f.default
        help_ = (f.metadata.get("help", "") + f" (default: {default})").strip()
        typ = hints[f.name]
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif f.metadata.get("choices"):
            p.add_argument(flag, type=str, choices=f.metadata["choices"], default=default, help=help_)
        elif f.metadata.get("nargs"):
            p.add_argument(flag, type=f.metadata["elem"], nargs=f.metadata["nargs"], default=default, help=help_)
        else:
            conv = {int: int, float: float, str: str}.get(typ, _optional_conv(typ))
            p.add_argument(flag, type=conv, default=default, help=help_)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p


def _optional_conv(typ):
    """A converter for 'float | None' style annotations: 'none' -> None."""
    name = str(typ)
    base = float if "float" in name else int if "int" in name else str

    def conv(s):
        return None if s.lower() in ("none", "") else base(s)

    conv.__name__ = base.__name__  # argparse: "invalid int value: 'abc'"
    return conv
