"""What a CPU can see of a teacher pass's cost on a GPU. A GPU stalls when a pass reads a value back
to the host or copies a tensor over from it (random numbers drawn on the CPU, a table moved per
call); it also runs slower than it should when --half's float16 teacher computes in float32. Each
pass below runs on the meta device (shapes, no data: nothing can be read back, and a CPU tensor
shows as a copy) under a dispatch mode that records every op, with the embedded teacher in float16."""

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import boot
import dkdm
import teachers


META = torch.device("meta")
MATMULS = ("aten.convolution", "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._scaled_dot_product")


class Record(TorchDispatchMode):
    """Every aten op of the block: (name, devices and dtypes of its tensor arguments)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in pytree.tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        self.ops.append((str(func), [t.device.type for t in tensors], [t.dtype for t in tensors]))
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def half_teacher():
    return teachers.load_teacher("digits", META, torch.float16, weights=False)


def passes(teacher):
    """The teacher passes of both methods and of evaluate.py, on a batch of 16 on the meta device."""
    x, i = torch.zeros(16, 1, 8, 8, device=META), torch.full((16,), 500, device=META)
    labels = torch.zeros(16, dtype=torch.long, device=META)
    cond = {"class_labels": labels}
    return {
        "DKDM teacher step (pool init, training)": lambda: dkdm.teacher_step(teacher, x, i, labels, 1.0, None),
        "ancestral step (synthetic set, evaluate.py)": lambda: teachers.ancestral(teacher, x, 2, cond, 1.0),
        "DDIM step (evaluate.py)": lambda: teachers.ddim(teacher, x, 2, cond, 1.0),
        "BOOT guided teacher, a CFG pair": lambda: boot.guided_teacher(teacher, cond, 3.0)(
            x, torch.full((16,), 0.5, device=META)
        ),
    }


@pytest.mark.parametrize("name", list(passes(None)))
def test_a_teacher_pass_stays_on_the_device_and_in_the_teachers_dtype(half_teacher, name):
    run = passes(half_teacher)[name]
    run()  # the first pass may place the schedule's tables on the device, once
    with Record() as record:
        run()
    reads = [op for op, _, _ in record.ops if "_local_scalar_dense" in op or "nonzero" in op]
    from_host = [(op, devices) for op, devices, _ in record.ops if "cpu" in devices]
    matmuls = [(op, dtypes) for op, _, dtypes in record.ops if op.startswith(MATMULS)]
    assert not reads, f"{name} reads values back to the host: {reads}"
    assert not from_host, f"{name} takes tensors from the CPU: {from_host[:5]}"
    assert matmuls and all(set(dtypes) == {torch.float16} for _, dtypes in matmuls), matmuls[:5]
