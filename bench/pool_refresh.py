"""How much of DKDM's staggered pool ever refreshes: an index-only replay of the default stream.

    python bench/pool_refresh.py            # rho 0.4 and 0.02, b = 64, T = 1000, M = 512, 10,000 iterations

The pool's steps i evolve without the teacher (draw b entries, i -> i - 1, restart at T - 1 after
i = 0), so the replay needs no network: it places the staggered chains exactly as
`dkdm.init_staggered` does (random-permutation cycles over M chains) and counts, after the run,
the entries that restarted from fresh noise and the distinct chains among the low-noise entries
(t < 100), where shuffle denoise would hold as many independent trajectories as entries.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dkdm


def replay(rho, T=1000, b=64, chains=512, iters=10000, low=100, seed=0):
    n = round(rho * T * b)
    counts = dkdm.staggered_counts(n, T)
    g = torch.Generator().manual_seed(seed)
    chain, i = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    queue, slot = torch.empty(0, dtype=torch.long), 0
    for s in range(T - 1, -1, -1):  # the slot assignment of dkdm.init_staggered
        k = int(counts[s])
        if len(queue) < k:
            perm = torch.randperm(chains, generator=g)
            queue = torch.cat([queue, perm[~torch.isin(perm, queue)]])
        take, queue = queue[:k], queue[k:]
        chain[slot : slot + k], i[slot : slot + k] = take, s
        slot += k
    fresh = torch.zeros(n, dtype=torch.bool)
    for _ in range(iters):  # dkdm.Pool.draw / advance, steps only
        idx = torch.randperm(n, generator=g)[:b]
        done = i[idx] == 0
        i[idx] -= 1
        i[idx[done]], fresh[idx[done]] = T - 1, True
    near = (i < low) & ~fresh
    return {
        "rho": rho,
        "pool": n,
        "restarted": float(fresh.float().mean()),
        "low_t_entries": int(near.sum()),
        "low_t_chains": len(chain[near].unique()),
    }


if __name__ == "__main__":
    import cli

    cli.OneLineParser(description=__doc__).parse_args()  # no arguments: an unknown one is refused
    for rho in (0.4, 0.02):
        r = replay(rho)
        print(
            f"rho {r['rho']}: pool {r['pool']:,}; after 10,000 iterations {r['restarted']:.1%} of the entries have "
            f"restarted from fresh noise; the {r['low_t_entries']:,} initial entries at t < 100 come from "
            f"{r['low_t_chains']} distinct chains (shuffle denoise: {r['low_t_entries']:,} independent ones)"
        )
