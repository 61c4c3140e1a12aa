"""Loss curves of the bench runs -> assets/figures/loss-curves.png (`python bench/plot.py`)."""

import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import BY_NAME  # noqa: E402


PANELS = [
    (
        "BOOT: bootstrapping loss (Eq. 14)",
        "bs",
        ["boot-long", "boot-heun", "boot-euler", "boot-no-boundary", "boot-progressive"],
    ),
    ("DKDM: L*simple (Eq. 20)", "mse", ["dkdm-dynamic", "dkdm-shuffled", "dkdm-iterative", "dkdm-default"]),
]


def curve(run_dir, key):
    recs = [json.loads(line) for line in (ROOT / run_dir / "metrics.jsonl").read_text().splitlines() if line]
    recs = [r for r in recs if key in r]
    return [r["step"] for r in recs], [r[key] for r in recs]


def main(out=ROOT / "assets" / "figures" / "loss-curves.png"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 3.6))
    for ax, (title, key, names) in zip(axes, PANELS):
        for name in names:
            exp = BY_NAME[name]
            if (ROOT / exp.run_dir / "metrics.jsonl").is_file():
                ax.plot(*curve(exp.run_dir, key), label=exp.about, lw=1)
        ax.set(title=title, xlabel="iteration", yscale="log")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    import cli

    cli.OneLineParser(description=__doc__).parse_args()  # no arguments: an unknown one is refused
    main()
