"""Command-line plumbing shared by boot.py, dkdm.py and evaluate.py, without torch.

Only the standard library is imported here, so `--help` answers before torch, diffusers or
transformers are loaded: a script asks `answers_alone(argv)` first, and answers from its config
dataclass (evaluate.py, whose config stands above its heavy imports) or from that dataclass read out
of its own source (`help_from_source`: boot.py and dkdm.py, whose config stands last, below the
method). The input checks below need no torch either: each raises a one-line UserError and writes
nothing, so they all run before any work.
"""

from __future__ import annotations
import __future__

import argparse
import ast
import dataclasses
import json
import math
import os
import socket
import sys
import tempfile
import typing
from pathlib import Path
from urllib.parse import urlparse


PRECISIONS = ("auto", "bf16", "fp32")  # the student's: auto = bf16 autocast + TF32 on a GPU, float32 on CPU


class UserError(ValueError):
    """Bad input: printed as one line by every CLI of this repository, exit code 2."""


class RankError(UserError):
    """Bad input that ranks see differently (each node its own directory): printed by every rank, exit code 2."""


def answers_alone(argv) -> bool:
    """Whether this command line is answered from the config alone (-h / --help)."""
    return any(a in ("-h", "--help") for a in argv)


def help_from_source(path, config: str):
    """`--help` of a script whose config dataclass stands below its method, without running the method's heavy
    imports: the class named `config`, the literal constants beside it (its choices, USAGE: the extra usage
    line) and the module docstring are read from the script's source and run alone, and argparse prints the
    same help the script's own parser would. Returns (the script then goes on as usual) if the class needs
    anything else."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    keep = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == config]
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            try:
                ast.literal_eval(node.value)
                keep.insert(0, node)
            except ValueError:  # not a literal: only the script itself can compute it
                continue
    namespace = {"dataclass": dataclasses.dataclass, "flag": flag, "cli": sys.modules[__name__]}
    code = compile(ast.Module(keep, []), str(path), "exec", __future__.annotations.compiler_flag, dont_inherit=True)
    try:
        exec(code, namespace)  # the script's own source: a class and literals, nothing else
        parser = add_processes(parser_from_dataclass(namespace[config], ast.get_docstring(tree, clean=False)))
    except (NameError, KeyError):
        return
    if "USAGE" in namespace:
        add_usage(parser, namespace["USAGE"])
    parser.parse_args(sys.argv[1:])  # prints the help and exits


def flag(default, help_: str, choices=None, nargs=None, elem=int):
    """A config dataclass field that is a command-line flag: its default, help, choices, nargs (of `elem`)."""
    meta = {
        "help": help_,
        **({"choices": list(choices)} if choices else {}),
        **({"nargs": nargs, "elem": elem} if nargs else {}),
    }
    return dataclasses.field(default=default, metadata=meta)


def main_of(command, argv, prefix="") -> int:
    """A script's main: `command(argv)`'s exit code (None = 0), or 2 with one line `{prefix}error: ...`
    on stderr for bad input (printed by rank 0 only under torchrun: every rank stops alike; a RankError by every
    rank, so that every node's log says why)."""
    try:
        return command(argv) or 0
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0 or isinstance(e, RankError):
            print(f"{prefix}error: {e}", file=sys.stderr)
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
        meta, typ = f.metadata, hints[f.name]
        kw = dict(default=f.default, help=f"{meta['help']} (default: {f.default})")
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif "nargs" in meta:
            kw.update(type=meta["elem"], nargs=meta["nargs"])
        else:
            kw.update(
                type={int: int, float: float, str: str}.get(typ) or _optional_conv(typ), choices=meta.get("choices")
            )
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p


def add_processes(parser):
    """--processes N beside --dry-run: the plan of a run on N processes (torchrun's nnodes x nproc-per-node)."""
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="with --dry-run: the processes the run will have, for its memory and time (default: WORLD_SIZE, else 1)",
    )
    return parser


def planned(args: dict) -> tuple:
    """(dry_run, processes) taken out of parsed arguments: --processes only with --dry-run, where a run's count is
    torchrun's (WORLD_SIZE)."""
    dry_run, n = args.pop("dry_run"), args.pop("processes")
    if n is not None and (not dry_run or n < 1):
        raise UserError("--processes N (N >= 1) plans a --dry-run; a run's processes are torchrun's")
    return dry_run, n or int(os.environ.get("WORLD_SIZE", 1))


def _optional_conv(typ):
    """A converter for 'float | None' style annotations: 'none' -> None."""
    name = str(typ)
    base = float if "float" in name else int if "int" in name else str

    def conv(s):
        return None if s.lower() in ("none", "") else base(s)

    conv.__name__ = base.__name__  # argparse: "invalid int value: 'abc'"
    return conv


# --- Input checks: numbers, paths, JSON, safetensors (one line each, before any work) -----------
def first_line(e) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def check_finite_fields(cfg):
    """Every float (or tuple of floats) field of a config dataclass is a finite number."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for x in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(x, float) and not math.isfinite(x):
                raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {x}")


def check_run_fields(cfg):
    """The fields both training configs share: one rule and one message each."""
    check_finite_fields(cfg)
    checks = [
        (cfg.iters >= 1, "--iters must be at least 1"),
        (cfg.lr > 0, "--lr must be positive"),
        (cfg.minutes is None or cfg.minutes > 0, "--minutes must be positive (or unset)"),
        (0 <= cfg.ema < 1, "--ema must lie in [0, 1)"),
        (cfg.log_every >= 1, "--log-every must be at least 1"),
        (cfg.ckpt_every >= 1, "--ckpt-every must be at least 1"),
        (cfg.keep >= 1, "--keep must be at least 1"),
        (cfg.export_every >= 0, "--export-every must be non-negative"),
        (cfg.eval_every >= 0, "--eval-every must be non-negative"),
        (
            cfg.eval_every % max(cfg.log_every, 1) == 0,
            f"--eval-every {cfg.eval_every} is not a multiple of --log-every {cfg.log_every}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _writable(d: Path) -> bool:
    """Can files be created in directory d? (an unnamed temporary file: nothing appears)"""
    try:
        tempfile.TemporaryFile(dir=d).close()
        return True
    except OSError:
        return False


def check_output_file(path, flag: str):
    """An output file to create or overwrite: not a directory, in an existing writable directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} '{path}' is a directory, not a file")
    if not p.resolve().parent.is_dir():
        raise UserError(f"{flag}: directory of '{path}' does not exist")
    if not _writable(p.resolve().parent) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} '{path}' is not writable")


def check_output_dir(path, flag: str = "--out"):
    """A directory to create or write into: not a file, under a writable existing ancestor."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} '{path}' is a file, not a directory")
    q = p.resolve()
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise UserError(f"{flag} '{path}' lies under the file '{q}'")
    if not _writable(q):
        raise UserError(f"{flag} '{path}' is not writable ('{q}' refuses new files)")


def read_json(path, what: str) -> dict:
    """A JSON object from a file, or a one-line UserError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{what} '{path}' is not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} '{path}' is not a JSON object")
    return data


def check_model_dir(path, what="model"):
    """A local diffusers directory, without loading it: model_index.json / config.json parse, every
    listed component has its folder, every config parses, every safetensors header is whole."""
    from safetensors import safe_open

    d = Path(path)
    if (d / "model_index.json").is_file():
        index = read_json(d / "model_index.json", f"{what} index")
        parts = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
        for k in parts:
            if not (d / k).is_dir():
                raise UserError(f"{what} '{path}' lists '{k}' in model_index.json but has no {k}/ folder")
        dirs = [d / k for k in parts]
    elif (d / "config.json").is_file():
        dirs = [d]
    else:
        raise UserError(f"{what} '{path}' holds neither model_index.json nor config.json")
    for sub in dirs:
        for name in ("config.json", "scheduler_config.json"):
            if (sub / name).is_file():
                read_json(sub / name, f"{what} config")
        for f in sorted(sub.glob("*.safetensors")):
            try:
                with safe_open(str(f), "pt") as st:
                    st.keys()
            except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike
                raise UserError(f"weights file '{f}' is truncated or corrupt ({first_line(e)})") from None


def check_hub(repo: str, what: str):
    """One line and stop, before any process group or download, when hub repo `repo` cannot be had: not
    in the local Hugging Face cache and HF_HUB_OFFLINE set, or the hub unreachable. Only rank 0 probes
    the network (one connection, 5 s timeout); under torchrun its exit stops the other processes."""
    from huggingface_hub import constants, try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model_index.json", "config.json")):
        return  # cached: loads offline too
    fix = "download it once with network (hf download REPO), or pass a local directory instead"
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"{what}, not in the local Hugging Face cache, and HF_HUB_OFFLINE is set: {fix.replace('REPO', repo)}"
        )
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if any(
        os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return  # behind a proxy a direct connection says nothing: the download reports its own error
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"{what} and the hub ({url.hostname}) cannot be reached "
            f"({type(e).__name__}: {e}): {fix.replace('REPO', repo)}"
        ) from None
