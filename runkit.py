"""The run kit: what a training run does around its Algorithm 1. Skip it on a first reading.

boot.py and dkdm.py each keep their Algorithm 1 as one loop; everything else such a loop needs, for
one process or N under torchrun, is here, written once for both methods:

    process group    setup() / env() / teardown(): gloo on CPU, NCCL on GPUs
    collectives      mean(), decide() (rank 0's flags on every rank), gather(), barrier(); their
                     tensors are made on the run device by device_tensor(): NCCL takes no other
    precision        teacher_dtype() (--half), student_autocast() (bf16), TF32, grad checkpointing
    EMA              EMA
    checkpoints      atomic fsynced writes by a background writer, weights_only reads, only finite weights
    run directory    RunDir: one writer, config.json, resume (every rank rank 0's run and step), metrics.jsonl,
                     budgets, checkpoints
    signals          Interrupt: Ctrl-C / SIGTERM end the iteration, checkpoint, exit 130 / 143
    metrics          Meter: windowed losses and the teacher / student / eval / other time split

Guarantees: a crash or kill -9 never leaves half a file; rerunning a command resumes it with the
weights and metrics.jsonl of a run never stopped, and never from mixed states (every rank checks that it resumes
rank 0's run at rank 0's step); only finite weights are saved; no rank waits while a checkpoint is written; a
decision that changes which collectives run (stop, budget, a non-finite update) is the same on every rank.
"""

from __future__ import annotations

import copy
import ctypes
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cli import RankError, UserError, check_output_dir, first_line, read_json


# --- Process group: torchrun is detected from RANK; one process makes none ----------------------
def env():
    """(rank, world size, device) from torchrun's environment, without a process group: every process
    runs the same input checks before setup(), so all stop alike on bad input."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if not torch.cuda.is_available():
        return rank, world, torch.device("cpu")
    return rank, world, torch.device("cuda", local) if "RANK" in os.environ else torch.device("cuda")


def setup():
    """(rank, world size, device), with the process group made under torchrun: NCCL on GPUs, gloo on CPU."""
    rank, world, device = env()
    if "RANK" in os.environ and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def is_rank0() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def print0(*args, **kw):
    if is_rank0():
        print(*args, **kw, flush=True)


# --- Collectives: a few numbers exchanged on the run device --------------------------------------
def device_tensor(values, device):
    """Numbers as a float64 tensor on the run device: what every collective here hands to torch."""
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)


def mean(values, device, op="mean") -> list:
    """Numbers averaged (op "mean"), summed or minimised over the processes; themselves in one process."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    v = device_tensor(values, device)
    dist.all_reduce(v, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return (v / dist.get_world_size() if op == "mean" else v).tolist()


def decide(device, **flags) -> dict:
    """Flags as rank 0 sees them, on every rank. A loop that one rank leaves on its own clock while
    another goes on leaves a collective unmatched (gloo aborts, NCCL hangs): every reason to stop
    passes through here."""
    keys = sorted(flags)
    if not dist.is_initialized():
        return {k: bool(flags[k]) for k in keys}
    v = device_tensor([bool(flags[k]) for k in keys], device)
    dist.broadcast(v, 0)
    return {k: bool(x) for k, x in zip(keys, v.tolist())}


def barrier(device):
    mean([0.0], device)


def gather(obj, world: int = 1) -> list:
    """[obj of rank 0, obj of rank 1, ...] for picklable objects ([obj] in one process)."""
    if world == 1:
        return [obj]
    parts = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


# --- Precision: the same switches in both methods ------------------------------------------------
def teacher_dtype(half: bool, device):
    """--half: the frozen teacher in float16, on a GPU only (slow and inexact on CPU)."""
    if half and torch.device(device).type != "cuda":
        raise UserError("--half needs a GPU (float16 teachers are slow and inexact on CPU)")
    return torch.float16 if half else torch.float32


def student_autocast(precision: str, device):
    """--precision: bf16 autocast for the student (auto: on a GPU only), or nothing."""
    if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda"):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


class EMA:
    """Exponential moving average of a model's parameters and buffers (a detached copy)."""

    def __init__(self, model, decay: float):
        self.decay, self.module, self.copy = decay, model, None
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        """shadow <- shadow + (1 - decay) (weights - shadow): one multi-tensor kernel on a GPU."""
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k] for k in floats], 1 - self.decay)
        for k in state.keys() - set(floats):
            self.shadow[k].copy_(state[k])

    def copy_to(self, model):
        model.load_state_dict(self.shadow)

    def model(self):
        """The averaged weights in a frozen copy of the model (made once, refreshed on every call)."""
        if self.copy is None:
            self.copy = copy.deepcopy(self.module).eval().requires_grad_(False)
            self.copy.zero_grad(set_to_none=True)
        self.copy_to(self.copy)
        return self.copy

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        for k in self.shadow:
            self.shadow[k].copy_(state[k])


def optimisation(student, cfg, device):
    """(student on the device in train mode, its EMA, AdamW without weight decay), with
    --grad-checkpointing; on a GPU, TF32 matmuls (unless --precision fp32) and the fused AdamW kernel."""
    raw, gpu = student.to(device).train(), torch.device(device).type == "cuda"
    if cfg.grad_checkpointing and not getattr(raw, "_supports_gradient_checkpointing", False):
        raise UserError(f"{type(raw).__name__} does not support gradient checkpointing")
    if cfg.grad_checkpointing:
        raw.enable_gradient_checkpointing()
    if gpu and cfg.precision != "fp32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return raw, EMA(raw, cfg.ema), torch.optim.AdamW(raw.parameters(), lr=cfg.lr, weight_decay=0.0, fused=gpu or None)


def ddp(raw, device, world: int):
    """DDP under torchrun (gradients averaged over ranks: the global-batch mean); else the model."""
    if world == 1:
        return raw
    return DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)


# --- Checkpoint I/O: atomic writes, safe reads ---------------------------------------------------
def fsync_dir(path):
    """Make a rename inside directory `path` durable (where directories can be opened)."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path, write):
    """write(file) into a unique temp file beside `path`, fsync, os.replace, fsync the directory: a
    crash never leaves half a file, two writers never share a temp name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def save_checkpoint(path, state: dict):
    atomic_write(path, lambda f: torch.save(state, f))


def write_text_atomic(path, text: str):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(path, mmap=False, what="checkpoint"):
    """A checkpoint without unpickling code (weights_only=True); mmap: mapped, not read whole. One
    line for a truncated or corrupt file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError / EOFError / pickle errors
        raise UserError(
            f"{what} '{path}' cannot be read ({type(e).__name__}: {first_line(e)}); "
            f"it is truncated or corrupt: delete it to start over"
        ) from None


def replace_dir(tmp, final):
    """Move the fully written directory `tmp` to `final`: an atomic exchange where Linux offers it
    (renameat2), else rename-aside; `final` never holds a half-written export."""
    tmp, final, swapped = Path(tmp), Path(final), False
    fsync_dir(tmp)
    with suppress(OSError, AttributeError):  # no renameat2 (another OS, an old libc): rename aside below
        exchange = ctypes.CDLL(None, use_errno=True).renameat2  # RENAME_EXCHANGE (2), paths from the cwd (-100)
        swapped = final.exists() and exchange(-100, os.fsencode(str(tmp)), -100, os.fsencode(str(final)), 2) == 0
    if swapped:
        shutil.rmtree(tmp)  # now the old export
    else:
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def host_copy(obj):
    """A checkpoint's state copied off the training tensors, to host memory: the loop changes them in place while a
    background writer saves the copy."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class Writer:
    """Rank 0's checkpoint writer: one background thread saving one state at a time (atomically, as
    save_checkpoint does), so that no rank waits for the disk at a checkpoint. `wait` joins it and raises
    what it raised."""

    def __init__(self):
        self.thread, self.error = None, None

    def submit(self, path, state: dict, then=None):
        self.wait()

        def write():
            try:
                save_checkpoint(path, state)
                if then is not None:
                    then()
            except BaseException as e:  # noqa: BLE001 - raised again by wait(), in the training thread
                self.error = e

        self.thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self.thread.start()

    def wait(self, reraise: bool = True):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        error, self.error = self.error, None
        if error is not None and reraise:
            raise error


def state_of(obj):
    """What a checkpoint keeps of obj: a torch.Generator's state, or its state_dict()."""
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


# --- Run directory: one writer, resume, metrics, budgets, checkpoints ----------------------------
class RunLock:
    """run.lock: an flock the writer (rank 0) holds while it runs; the OS drops it when the writer
    dies, even by kill -9. The file names the holder, for the error a second writer gets."""

    def __init__(self, run_dir):
        self.path, self.fd = Path(run_dir) / "run.lock", None

    def check(self, hold=False):
        """One line and stop when another process holds the lock. hold: take it, naming this process
        in the file (the writer's `start`); else nothing is written."""
        if not (hold or self.path.exists()):
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = {}
            with suppress(OSError, ValueError):
                who = json.loads(self.path.read_text())
            raise UserError(
                f"run directory '{self.path.parent}' is in use by process {who.get('pid', '?')} on "
                f"{who.get('host', '?')} ({self.path}); wait for it to finish or pass another --out"
            ) from None
        if not hold:
            return os.close(fd)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # the file stays, unlocked: unlinking it would race with a waiting writer
            self.fd = None


def _same(a, b) -> bool:
    """Config values agree; paths by where they point (a relative --teacher, a moved run)."""
    exists = (
        isinstance(a, str) and isinstance(b, str) and Path(a).expanduser().exists() and Path(b).expanduser().exists()
    )
    return a == b or (exists and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())


class RunDir:
    """A run directory: config.json, metrics.jsonl, checkpoints/latest.pt, student/, preview.png.

    Rerunning the same command resumes from checkpoints/latest.pt; another config in the directory is
    refused (the `resumable` fields, e.g. the iteration budget, may change; `out` never counts, so a
    moved directory resumes). Made on every process before any other work: it checks --out, the lock,
    config.json and the checkpoint and writes nothing; `start` (in `training`) takes the lock.
    """

    def __init__(self, path, config: dict, rank=0, resumable=(), keep=1, per_rank=None):
        self.path, self.config, self.rank, self.keep = Path(path), json.loads(json.dumps(config)), rank, keep
        self.per_rank, self.ckpt, self.bar = per_rank or {}, Path(path) / "checkpoints" / "latest.pt", None
        self.writer = Writer()
        check_output_dir(self.path, "--out")
        self.run_id = None  # config.json's id of the run: rank 0's and every rank's must agree (same_run)
        if (self.path / "config.json").exists():
            old = read_json(self.path / "config.json", "run config")
            self.run_id = old.get("run_id")
            diff = sorted(
                k
                for k in old.keys() & config.keys()  # an option added since the run began is no difference
                if k not in {*resumable, "out"} and not _same(old[k], self.config[k])
            )
            if diff:
                raise UserError(
                    f"run directory '{self.path}' holds a run with another config "
                    f"(differs in {', '.join(diff)}); pass another --out or delete it"
                )
        self.lock = RunLock(self.path)
        self.lock.check()
        self._state = load_checkpoint(self.ckpt, mmap=True) if self.ckpt.is_file() else None
        self.resume_step = None if self._state is None else self._state["step"]  # None: a fresh run
        self.last_step = self.resume_step  # the step latest.pt names
        self.rank_states = (
            {
                name: load_checkpoint(self.rank_file(name, self.resume_step), what=what)
                for name, what in self.per_rank.items()
            }
            if self._state
            else {}
        )

    def start(self, device):
        """Rank 0 takes the lock, writes config.json and cuts metrics.jsonl back to the checkpoint: a
        killed run may have logged past it, and the resumed run logs those steps again."""
        self.device, metrics = device, self.path / "metrics.jsonl"
        self.same_run(device)  # before anything is written: a rank that sees another run stops them all
        self.path.mkdir(parents=True, exist_ok=True)
        self.config["run_id"] = self.run_id or secrets.randbits(52)  # a number: exact in a float64 collective
        if self.rank == 0:
            self.lock.check(hold=True)
            (self.path / "checkpoints").mkdir(exist_ok=True)
            for tmp in (self.path / "checkpoints").glob(".*.tmp"):  # left by a writer killed mid-save
                tmp.unlink(missing_ok=True)
            write_text_atomic(self.path / "config.json", json.dumps(self.config, indent=2))
            keep = []
            for line in metrics.read_text().splitlines() if metrics.is_file() else []:
                with suppress(ValueError, KeyError, TypeError):  # a line cut by a kill goes too
                    if self.resume_step is not None and json.loads(line)["step"] <= self.resume_step:
                        keep.append(line + "\n")
            if metrics.is_file():
                write_text_atomic(metrics, "".join(keep))
        barrier(device)  # the directories exist before any process writes into them

    def same_run(self, device):
        """Every rank resumes rank 0's run (config.json's run id) at rank 0's step, or all stop with one line on
        every rank: a rank that finds no checkpoint in its own --out would train from step 0 beside the others."""
        if not dist.is_initialized():
            return
        mine = device_tensor(
            [-1 if self.run_id is None else self.run_id, -1 if self.resume_step is None else self.resume_step], device
        )
        views = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(views, mine)
        seen = [tuple(int(x) for x in v.tolist()) for v in views]  # every rank sees all: the same decision
        odd = next((r for r, v in enumerate(seen) if v != seen[0]), None)
        if odd is not None:
            what = lambda v: "a fresh run" if v[1] < 0 else f"run {v[0]} at step {v[1]}"  # noqa: E731
            raise RankError(
                f"the ranks would not resume one run: rank 0 finds {what(seen[0])} in its --out, rank {odd} "
                f"{what(seen[odd])}; every node needs the same --out, on a filesystem they share (docs/runs.md)"
            )

    def log(self, record: dict):
        if self.rank == 0:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def rank_file(self, name: str, step: int) -> Path:
        """checkpoints/<name>-rank<r>-step<step>.pt: a process's own state (DKDM's knowledge pool)."""
        return self.path / "checkpoints" / f"{name}-rank{self.rank}-step{int(step)}.pt"

    def resume(self, objs: dict, desc: str) -> int:
        """Load the latest checkpoint into `objs` (name -> model, EMA, optimizer, generator, per-rank
        state) and open the progress bar; from here a signal ends the iteration. Returns the step."""
        state, step, self._state = self._state, 0, None
        self.window, self.elapsed0, self.t_start = None, 0.0, time.time()
        if state is not None:
            step = state["step"]
            for name, obj in objs.items():
                s = self.rank_states[name] if name in self.per_rank else state[name]
                if isinstance(obj, torch.Generator):
                    obj.set_state(s.cpu())  # a CPU generator's state, whatever the map_location
                else:
                    obj.load_state_dict(s)
            self.window, self.elapsed0 = state.get("window"), state.get("elapsed", 0.0)
            print0(f"resuming {self.path} at step {step} from {self.ckpt}")
        self.bar = tqdm(
            total=self.config["iters"], initial=step, disable=self.rank != 0, desc=desc, dynamic_ncols=True
        )
        self.stop.deferred = True  # from here a signal ends the iteration
        return step

    def elapsed(self) -> float:
        """Training seconds over every invocation of this run (--minutes counts them all)."""
        return self.elapsed0 + time.time() - self.t_start

    def kept(self) -> str:
        if self.rank == 0:
            self.writer.wait()  # a checkpoint being written is good: it was checked finite
        step = load_checkpoint(self.ckpt, mmap=True)["step"] if self.ckpt.is_file() else None
        return "no checkpoint yet" if step is None else f"last good checkpoint (step {step}) kept at {self.ckpt}"

    def check_update(self, loss, parameters, step: int):
        """Before optimizer.step: stop when the loss or gradient norm of iteration `step` is not finite
        on any process (the update is not applied, the last checkpoint stays)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        ok = bool(torch.isfinite(loss.detach()).all()) and bool(torch.isfinite(norm))
        if mean([ok], self.device, op="min")[0] < 1:
            raise SystemExit(
                f"error: non-finite loss or gradient norm at iteration {step}; not applied, {self.kept()}"
            )

    def checkpoint(self, step: int, meter, objs: dict, final: bool = False):
        """The per-process states, then latest.pt naming that step (with the open metrics window and the elapsed
        time); with --keep N, step-<step>.pt files and latest.pt a link to the newest. Rank 0 copies the state to
        host memory and a background writer writes it while every rank trains on; the next checkpoint, a `final` one
        (the loop's last) and the exit wait for it. A per-process file goes once a newer latest.pt is whole."""
        if self.rank == 0:
            self.writer.wait()  # the previous latest.pt is whole: the files of the one before it may go
        for name in self.per_rank:
            save_checkpoint(self.rank_file(name, step), state_of(objs[name]))
        barrier(self.device)  # every process's file of `step` is on disk; so is the previous latest.pt
        self.prune({step, self.last_step})
        state = {
            **{k: state_of(v) for k, v in objs.items() if k not in self.per_rank},
            "step": step,
            "elapsed": self.elapsed(),
            "window": meter.window(),
        }
        bad = sum(
            v.is_floating_point() and not bool(torch.isfinite(v).all())  # NaN / inf: the same on every rank
            for k in ("model", "ema")
            if k in state
            for v in state[k].values()
        )
        if bad:
            raise SystemExit(
                f"error: {bad} non-finite tensors in the weights at step {step}; not checkpointed, {self.kept()}"
            )
        if self.rank == 0:
            name = f"step-{int(step):09d}.pt" if self.keep > 1 else "latest.pt"
            self.writer.submit(self.ckpt.with_name(name), host_copy(state), lambda: self.link_latest(name))
        self.last_step = step
        if final:
            if self.rank == 0:
                self.writer.wait()
            barrier(self.device)
            self.prune({step})

    def link_latest(self, name: str):
        """With --keep N: latest.pt a relative link to the newest step file (the run directory may move), the
        oldest files beyond N removed."""
        if self.keep > 1:
            link = self.ckpt.with_name("latest.pt.link")
            link.unlink(missing_ok=True)
            os.symlink(name, link)
            os.replace(link, self.ckpt)
            for old in sorted(self.ckpt.parent.glob("step-*.pt"))[: -self.keep]:
                old.unlink(missing_ok=True)

    def prune(self, steps: set):
        """This process's files of checkpoints neither in `steps` nor kept as step-*.pt go."""
        kept = steps | {int(f.stem.split("-")[1]) for f in self.ckpt.parent.glob("step-*.pt")}
        for name in self.per_rank:
            for f in self.path.glob(f"checkpoints/{name}-rank{self.rank}-step*.pt"):
                if int(f.stem.rsplit("step", 1)[1]) not in kept:
                    f.unlink(missing_ok=True)

    def end_iteration(self, step: int, meter, objs: dict, extra=None):
        """After iteration `step`: a metrics record every log_every and at the end of the budget, a
        checkpoint every ckpt_every and whenever the loop stops. Returns why it stops ('iters',
        'minutes') or None; after a signal it checkpoints the open window and exits 130 / 143."""
        c = self.config
        flags = decide(
            self.device,
            halt=self.stop.signum is not None,
            minutes=c.get("minutes") is not None and self.elapsed() > 60 * c["minutes"],
        )
        why = "signal" if flags["halt"] else "iters" if step >= c["iters"] else "minutes" if flags["minutes"] else None
        self.bar.update(1)
        if step % c["log_every"] == 0 or why in ("iters", "minutes"):
            fields = extra(step) if extra else {}  # before the record: the time it takes is in this window
            rec = meter.record(step, self.elapsed())
            self.log({**rec, **fields})
            self.bar.set_postfix(meter.postfix(rec))
        elif self.rank == 0:  # this process's open window (no collective)
            self.bar.set_postfix(meter.postfix(), refresh=False)
        if step % c["ckpt_every"] == 0 or why:
            self.checkpoint(step, meter, objs, final=bool(why))
        if why:
            self.bar.close()
        if why == "signal":
            raise self.stop.exit(step, self.ckpt)
        if why == "minutes":
            print0(f"\n--minutes {c['minutes']} reached at step {step}; rerun the command to continue")
        return why


class Interrupt:
    """SIGINT / SIGTERM. Before the loop (loading, the pool initialisation, a synthetic set) the run
    stops at once: one line, exit 130 / 143, nothing written that a rerun would not redo. In the loop
    (`deferred`, set by RunDir.resume) the iteration ends, a checkpoint is written, then the same exit.
    A second signal stops at once."""

    def __init__(self):
        self.signum, self.deferred, self.old = None, False, {}

    def __enter__(self):
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, old in self.old.items():
            signal.signal(s, old)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second signal: as the default handler would
            signal.signal(signum, self.old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum
        if not self.deferred:
            print0(
                f"\n{name} before training started: stopped, no checkpoint written; the same command starts again",
                file=sys.stderr,
            )
            raise SystemExit(128 + signum)
        print0(
            f"\n{name}: finishing this iteration, then writing a checkpoint (send it again to stop at once)",
            file=sys.stderr,
        )

    def exit(self, step: int, ckpt) -> SystemExit:
        """The one line a user needs after the stop, and the exit to raise (128 + the signal)."""
        cmd = shlex.join(["python", *sys.argv]) if "RANK" not in os.environ else "the same torchrun command"
        print0(f"stopped at step {step}: checkpoint {ckpt}; resume with: {cmd}", file=sys.stderr)
        return SystemExit(128 + self.signum)


@contextmanager
def training(run: RunDir):
    """After every input check: the process group (under torchrun), the run directory's lock and
    config.json, Ctrl-C / SIGTERM caught (`run.stop`). Yields (rank, world size, device)."""
    rank, world, device = setup()
    try:
        with Interrupt() as run.stop:
            run.start(device)
            yield rank, world, device
    finally:
        if run.bar is not None:
            run.bar.close()
        run.writer.wait(reraise=sys.exc_info()[0] is None)  # the last checkpoint whole before the lock goes
        run.lock.release()
        teardown()


class Meter:
    """The metrics window: sums of named values since the last record and where the wall time went
    (teacher / student / other). A record averages the window over the ranks; the open window travels
    in checkpoints, so a resumed run writes the records an uninterrupted one would. A value reported
    on some iterations only (BOOT's boundary loss) is averaged over those."""

    def __init__(self, device, keys, shown=None, window=None):
        self.device, self.keys, self.shown = device, tuple(keys), tuple(shown or keys)
        self.reset()
        if window and set(window.get("sums", {})) == set(self.keys):
            self.sums, self.counts, self.n = dict(window["sums"]), dict(window["counts"]), int(window["n"])

    def reset(self):
        self.sums, self.counts, self.n = dict.fromkeys(self.keys, 0.0), dict.fromkeys(self.keys, 0), 0
        self.ms, self.t0 = {"teacher": 0.0, "student": 0.0, "eval": 0.0}, time.perf_counter()

    @contextmanager
    def time(self, part: str):
        """Adds the block's wall time to `part` (synchronised on a GPU)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda: None
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        self.ms[part] += 1000 * (time.perf_counter() - t0)

    def add(self, **values):
        """One iteration's values (floats or 0-d tensors)."""
        self.n += 1
        for k, v in values.items():
            self.sums[k] += v.item() if torch.is_tensor(v) else float(v)
            self.counts[k] += 1

    def split(self, ms=None) -> dict:
        """Milliseconds per iteration: total, teacher, student, --eval-every's proxy, other (this
        process's, or `ms`)."""
        n = max(self.n, 1)
        t, s, e, total = ms or (*self.ms.values(), 1000 * (time.perf_counter() - self.t0))
        return {
            "ms_iter": round(total / n, 1),
            "ms_teacher": round(t / n, 1),
            "ms_student": round(s / n, 1),
            **({"ms_eval": round(e / n, 1)} if e else {}),
            "ms_other": round(max(total - t - s - e, 0.0) / n, 1),
        }

    def record(self, step: int, elapsed_s: float) -> dict:
        """The window's means over the ranks (every rank calls it at the same step); resets it."""
        total = 1000 * (time.perf_counter() - self.t0)
        vals = mean([self.sums[k] for k in self.keys] + [*self.ms.values(), total], self.device)
        rec = {
            "step": step,
            **{key: v / max(self.counts[key], 1) for key, v in zip(self.keys, vals)},
            **self.split(vals[len(self.keys) :]),
            "elapsed_s": round(elapsed_s, 1),
        }
        self.reset()
        return rec

    def postfix(self, rec=None) -> dict:
        """The progress bar's fields: a record, or this process's open window."""
        rec = rec or {**{k: self.sums[k] / max(self.counts[k], 1) for k in self.keys}, **self.split()}
        return {
            **{k: f"{rec[k]:.4f}" for k in self.shown},
            "ms": f"T{rec['ms_teacher']:.0f}/S{rec['ms_student']:.0f}/O{rec['ms_other']:.0f}",
        }

    def window(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts), "n": self.n}
