"""Strict distributed mode: CPU torchrun runs that fail where NCCL on GPUs would.

NCCL accepts only tensors on the process's GPU, and hangs when the ranks call different collectives;
gloo on CPU accepts any CPU tensor and desynchronises only by luck. On a CPU every tensor is "on the
run device", so this mode narrows that to what the run kit promises: a collective takes only tensors
made by `runkit.device_tensor` (the run kit's one way to put numbers on the run device). It also

  * first all-gathers each collective's call site (file:line of the caller outside runkit) and a
    counter, and raises when the ranks disagree (NCCL would hang there);
  * makes rank r's clocks (time.time, time.perf_counter) run (1 + r) times as fast, so a decision taken from a
    local clock always differs between the ranks instead of agreeing by luck;
  * gives the process group a 60 s timeout, so a desynchronised run fails instead of hanging.

Installed in every torchrun worker of the tests by tests/strict/sitecustomize.py (tests put that
folder on PYTHONPATH with STRICT_DIST=1); production code patches nothing and knows nothing of it.
"""

import datetime
import os
import sys
import time
import weakref


COLLECTIVES = (
    "broadcast",
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce",
    "gather",
    "scatter",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "barrier",
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
)
_made = weakref.WeakValueDictionary()  # id -> a tensor runkit.device_tensor returned
_count = [0]


def _site():
    """file:line of the first caller outside runkit.py and this file."""
    f = sys._getframe(2)
    while f and os.path.basename(f.f_code.co_filename) in ("runkit.py", "strict_dist.py"):
        f = f.f_back
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}" if f else "?"


def _same_site(dist, all_gather, name):
    import torch

    _count[0] += 1
    site = f"{name}@{_site()}"
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tag = torch.tensor([_count[0], *site.encode()[:64].ljust(64, b" ")], dtype=torch.int64, device=device)
    tags = [torch.empty_like(tag) for _ in range(dist.get_world_size())]
    all_gather(tags, tag)
    seen = [(int(t[0]), bytes(t[1:].tolist()).decode(errors="replace").strip()) for t in tags]
    if len(set(seen)) > 1:
        where = ", ".join(f"rank {r} at '{s}' (collective #{n})" for r, (n, s) in enumerate(seen))
        raise RuntimeError(f"strict distributed mode: ranks desynchronised: {where}")


INPUT = {
    "all_gather": 1,
    "all_gather_into_tensor": 1,
    "reduce_scatter": 1,
    "reduce_scatter_tensor": 1,
    "all_to_all": 1,
}


def _guard(dist, name, real, all_gather):
    import torch

    def collective(*args, **kw):
        given = args[INPUT.get(name, 0)] if len(args) > INPUT.get(name, 0) and "object" not in name else []
        stray = [
            t
            for t in (given if isinstance(given, (list, tuple)) else [given])
            if torch.is_tensor(t) and t.device.type != "cuda" and _made.get(id(t)) is not t
        ]
        if stray:
            raise RuntimeError(
                f"strict distributed mode: torch.distributed.{name} got a tensor not made on the run "
                f"device by runkit.device_tensor (NCCL takes only the GPU's tensors), at {_site()}"
            )
        _same_site(dist, all_gather, name)
        return real(*args, **kw)

    return collective


def install():
    import torch.distributed as dist

    import runkit

    real_tensor, real_init = runkit.device_tensor, dist.init_process_group

    def device_tensor(values, device):
        t = real_tensor(values, device)
        _made[id(t)] = t
        return t

    def init_process_group(*args, **kw):
        kw.setdefault("timeout", datetime.timedelta(seconds=float(os.environ.get("STRICT_DIST_TIMEOUT", 60))))
        real_init(*args, **kw)
        rank = dist.get_rank()
        if rank > 0:  # rank r's clocks run (1 + r) times as fast
            for name in ("time", "perf_counter"):
                real, t0 = getattr(time, name), getattr(time, name)()
                setattr(time, name, lambda real=real, t0=t0: t0 + (real() - t0) * (1 + rank))

    all_gather = dist.all_gather
    runkit.device_tensor, dist.init_process_group = device_tensor, init_process_group
    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _guard(dist, name, getattr(dist, name), all_gather))
