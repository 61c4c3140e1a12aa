"""The prompt file a text-to-image preset trains on: N unique prompts, none of them a COCO-2014 caption.

BOOT trains a text-to-image student on prompts alone (Alg. 1's context dataset D); its figures use
diffusiondb's. A student scored on COCO captions (the field's COCO-2014 30k protocol) must not have trained on
them, so exact matches are removed:

    pip install pyarrow       # reads diffusiondb's metadata.parquet; not in requirements.txt
    python tools/prompts.py --source metadata.parquet \\
        --coco captions_train2014.json captions_val2014.json --n 1000000 --out prompts.txt
    python boot.py --teacher sd21 --prompts prompts.txt --half --dry-run --processes 8

--source: diffusiondb's metadata.parquet (the 2M subset: one row per image, about 1.5 M unique prompts;
metadata-large.parquet, 1.8 M) or a plain stand-in, a .jsonl of objects or a .csv, each with a `prompt` field.
--coco: COCO-2014 caption files (captions_*2014.json) or text files of one caption a line (evaluate.py's
reader). Each prompt and caption is normalised for comparison (Unicode NFKC, case-folded, whitespace runs made
one space, leading / trailing spaces and full stops dropped); prompts are de-duplicated on that form (the
first spelling kept, whitespace collapsed), the ones whose form is a caption's removed, then --n of them drawn
with --seed (random.Random(seed).sample) and written in the source's order, one a line. The same inputs and
flags give the same file. The sd21 and if presets draw 500,000 x 64 = 32 M prompts uniformly from the file:
at the default 1,000,000 each prompt is seen about 32 times.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import unicodedata
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from cli import UserError  # noqa: E402


def normalise(text: str) -> str:
    """The form two prompts (or a prompt and a caption) are compared in: NFKC, case-folded, whitespace runs one
    space, leading / trailing spaces and full stops dropped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).strip(" .")


def read_parquet(path: Path) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"reading '{path}' needs pyarrow: pip install pyarrow (or pass a .jsonl / .csv with a prompt column)"
        ) from None
    try:
        return pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()
    except (KeyError, ValueError, OSError) as e:  # pyarrow: no such column, not a parquet file
        raise UserError(f"'{path}' has no readable prompt column ({type(e).__name__}: {cli.first_line(e)})") from None


def read_rows(path: Path) -> list:
    """The `prompt` field of every row, in file order (missing or empty: None)."""
    if path.suffix == ".jsonl":
        rows = []
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line).get("prompt") if line.strip() else None)
            except (ValueError, AttributeError):
                raise UserError(f"'{path}' line {k} is not a JSON object") from None
        return rows
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "prompt" not in (reader.fieldnames or []):
            raise UserError(f"'{path}' has no prompt column (columns: {', '.join(reader.fieldnames or [])})")
        return [row["prompt"] for row in reader]


def source_prompts(path) -> list:
    """The source's prompts in file order: diffusiondb's parquet (pyarrow), or a .jsonl / .csv stand-in."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--source '{path}' does not exist")
    if path.suffix not in (".parquet", ".jsonl", ".csv"):
        raise UserError(f"--source '{path}': expected a .parquet, .jsonl or .csv file")
    rows = read_parquet(path) if path.suffix == ".parquet" else read_rows(path)
    return [p for p in rows if isinstance(p, str) and p.strip()]


def build(prompts: list, captions: list, n: int, seed: int) -> tuple:
    """(the n chosen prompts in source order, counts): unique by normalised form, COCO captions out, seeded."""
    coco = {normalise(c) for c in captions}
    seen, unique, in_coco = set(), [], 0
    for p in prompts:
        key = normalise(p)
        if not key or key in seen:
            continue
        seen.add(key)
        if key in coco:
            in_coco += 1
            continue
        unique.append(" ".join(p.split()))
    if n > len(unique):
        raise UserError(f"--n {n} is more than the {len(unique)} unique prompts left without COCO captions")
    chosen = sorted(random.Random(seed).sample(range(len(unique)), n))
    return [unique[i] for i in chosen], {"rows": len(prompts), "unique": len(seen), "coco_removed": in_coco}


def main(argv=None):
    return cli.main_of(command, sys.argv[1:] if argv is None else argv)


def command(argv):
    p = cli.OneLineParser(
        prog="tools/prompts.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--source", required=True, help="diffusiondb metadata.parquet, or a .jsonl / .csv with prompt")
    p.add_argument("--coco", nargs="+", required=True, help="COCO-2014 caption files whose captions stay out")
    p.add_argument("--n", type=int, default=1_000_000, help="prompts to write (default: 1,000,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    p.add_argument("--out", required=True, help="the prompt file to write, one prompt a line")
    a = p.parse_args(argv)
    if a.n < 1:
        raise UserError("--n must be at least 1")
    cli.check_output_file(a.out, "--out")
    import runkit
    from evaluate import coco_captions  # the evaluation's reader: the captions scored are the captions removed

    prompts = source_prompts(a.source)
    captions = [c for f in a.coco for c in coco_captions(f)]
    chosen, counts = build(prompts, captions, a.n, a.seed)
    runkit.write_text_atomic(a.out, "".join(c + "\n" for c in chosen))
    print(
        f"{len(chosen):,} prompts -> {a.out} (seed {a.seed}): from {counts['rows']:,} rows, {counts['unique']:,} "
        f"unique after normalising, {counts['coco_removed']:,} of them COCO-2014 captions ({len(captions):,}) removed"
    )


if __name__ == "__main__":
    sys.exit(main())
