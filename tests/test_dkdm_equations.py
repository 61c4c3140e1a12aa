"""DKDM Eq. (19)-(21) against torch.distributions, and the knowledge streams of Sec. 3.3 / Alg. 1
with counted teacher calls, on cheap teachers with T = 20 (the analytic mixture, a tiny UNet)."""

import math

import pytest
import torch

import dkdm
import teachers
from pipelines import students


T = 20


def schedule(T=T):
    return teachers.Schedule(teachers.beta_table("squaredcos_cap_v2", T=T))


def gmm_teacher(T=T):
    x, y = teachers.load_digits_tensor()
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    return teachers.GaussianMixture(means, torch.full((10,), 0.25), schedule=schedule(T)).eval().requires_grad_(False)


def tiny_teacher(learned=True, clip="static", T=T, conditional=True):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=2 if learned else 1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        norm_num_groups=4,
        num_class_embeds=11 if conditional else None,
    )
    t = teachers.UNetTeacher(
        unet,
        schedule(T),
        (1, 8, 8),
        variance_type="learned_range" if learned else "fixed_small",
        clip=clip,
        num_classes=10 if conditional else None,
        name="tiny",
    )
    if conditional:
        t.null = {"class_labels": torch.tensor([10])}
    return t.eval().requires_grad_(False)


def count_calls(teacher):
    """Record the batch size of every network forward of the teacher."""
    calls, net = [], teacher.net

    def counted(x, t, cond):
        calls.append(x.shape[0])
        return net(x, t, cond)

    teacher.net = counted
    return calls


# --- Eq. (21): the vlb term ---------------------------------------------------------------------
def test_vlb_equals_torch_kl_over_ln2():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    lv1, lv2 = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(dkdm.l_vlb(m1, lv1, m2, lv2), ref.mean(dim=(1, 2, 3)) / math.log(2))


def test_loss_terms_and_gradients_reach_their_heads():
    """L*simple reaches only the eps channels, L*vlb only the variance channels (mean detached)."""
    teacher = tiny_teacher()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=g)
    i = torch.tensor([0, 1, 5, 10, 18, 19])
    cond = teacher.label_cond(torch.arange(6))
    target = teacher.p_mean_logvar(x, i, cond)
    out = torch.randn(6, 2, 8, 8, generator=g, requires_grad=True)
    loss, mse, vb = dkdm.dkdm_loss(teacher.schedule, x, i, out, target, 0.7, True)
    torch.testing.assert_close(loss, mse + 0.7 * vb)
    torch.testing.assert_close(mse, ((target[2] - out[:, :1]) ** 2).mean(dim=(1, 2, 3)))
    vb.sum().backward(retain_graph=True)
    assert out.grad[:, :1].abs().max() == 0 and out.grad[:, 1:].abs().max() > 0
    out.grad = None
    mse.sum().backward()
    assert out.grad[:, 1:].abs().max() == 0 and out.grad[:, :1].abs().max() > 0


def test_vlb_is_zero_for_a_student_equal_to_an_unclipped_teacher():
    teacher = tiny_teacher(clip=None)
    x, i = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 11, 19])
    cond = teacher.label_cond(torch.tensor([1, 2, 3, 10]))
    out = teacher.model_output(x, teacher.schedule.t_of(i).float(), cond)
    target = teacher.p_mean_logvar(x, i, cond, out=out)
    _, mse, vb = dkdm.dkdm_loss(teacher.schedule, x, i, torch.cat(out, 1), target, 1.0, True)
    assert mse.abs().max() < 1e-12 and vb.abs().max() < 1e-5


# --- Sec. 3.3: iterative, shuffled, dynamic streams ---------------------------------------------
def test_iterative_one_t_per_batch_decreasing_by_one():
    teacher = gmm_teacher()
    pool = dkdm.init_noise(teacher, 8, torch.Generator().manual_seed(0))
    for k in range(2 * T + 3):
        _, i, _, _ = dkdm.knowledge_step(teacher, pool, 8)
        assert (i == (T - 1 - k) % T).all()


def test_shuffled_staggered_t_each_entry_steps_once_per_iteration():
    teacher = gmm_teacher()
    calls = count_calls(teacher)
    pool = dkdm.init_shuffle(teacher, 64, torch.Generator().manual_seed(0))
    assert sum(calls) == int((T - 1 - pool.i).sum())  # shuffle denoise: T - 1 - i_end steps each
    assert len(pool.i.unique()) > T // 2
    for _ in range(5):
        before = pool.i.clone()
        dkdm.knowledge_step(teacher, pool, 64)
        torch.testing.assert_close(pool.i, torch.where(before == 0, T - 1, before - 1))


def test_dynamic_pool_size_one_forward_per_sample_and_flat_histogram():
    teacher, b, rho = gmm_teacher(), 16, 0.5
    cfg = dkdm.DKDMConfig(rho=rho, method="dynamic")
    n = dkdm.pool_size(cfg, T, b)
    assert n == round(rho * T * b)
    pool = dkdm.init_staggered(teacher, n, 64, torch.Generator().manual_seed(0))
    calls = count_calls(teacher)
    drawn = []
    for _ in range(1500):
        _, i, _, _ = dkdm.knowledge_step(teacher, pool, b)
        drawn.append(i)
    assert calls == [b] * 1500  # exactly one teacher forward of the b drawn samples per iteration
    hist = torch.bincount(torch.cat(drawn), minlength=T).float()
    assert (hist / hist.mean() - 1).abs().max() < 0.12, hist
    assert (torch.bincount(pool.i, minlength=T) > 0).all()  # the pool still covers every t


def test_write_back_advances_the_drawn_entries_by_one_teacher_step_and_t0_restarts_from_noise():
    """Alg. 1 lines 4 and 8, seen from outside the pool: one knowledge step changes exactly the b drawn
    entries. The student trains on their pre-step states; an entry at step i > 0 moves to i - 1 by a draw
    from the teacher's p(x_{i-1} | x_i), so (x_new - mean) / sigma is standard normal; an entry at i = 0
    restarts at T - 1 from N(0, I) with a fresh label."""
    teacher, n, b = gmm_teacher(), 1024, 512
    pool = dkdm.init_staggered(teacher, n, 64, torch.Generator().manual_seed(3))
    pool.i[: n // 4] = 0  # a quarter of the pool is about to take its last step
    x0, i0 = pool.x.clone(), pool.i.clone()
    x_in, i_in, labels_in, (mean, logvar, _) = dkdm.knowledge_step(teacher, pool, b)
    drawn = torch.cdist(x_in.flatten(1).double(), x0.flatten(1).double()).argmin(1)  # where each came from
    assert torch.equal(x_in, x0[drawn]) and torch.equal(i_in, i0[drawn]) and len(drawn.unique()) == b
    changed = (pool.x != x0).flatten(1).any(1) | (pool.i != i0)
    assert torch.equal(changed.nonzero().squeeze(1), drawn.sort().values)  # the drawn entries, no other
    ref_mean, ref_logvar, _ = teacher.p_mean_logvar(x_in, i_in, dkdm.as_cond(labels_in))
    torch.testing.assert_close(mean, ref_mean)  # the distillation target is the teacher's step at x_t
    stepped, restarted = i_in > 0, i_in == 0
    assert stepped.sum() > 100 and restarted.sum() > 50
    assert torch.equal(pool.i[drawn][stepped], i_in[stepped] - 1)
    z = (pool.x[drawn] - ref_mean) / (0.5 * ref_logvar).exp()
    assert abs(z[stepped].mean()) < 0.03 and abs(z[stepped].std() - 1) < 0.03
    assert (pool.i[drawn][restarted] == T - 1).all()
    fresh = pool.x[drawn][restarted]
    assert abs(fresh.mean()) < 0.05 and abs(fresh.std() - 1) < 0.05
    assert ((0 <= pool.labels[drawn]) & (pool.labels[drawn] < 10)).all()


def test_staggered_init_uniform_t_counted_passes_and_distinct_chains():
    teacher = gmm_teacher()
    for chains, n in ((24, 100), (64, 40)):
        calls = count_calls(teacher)
        pool, chain_of = dkdm.init_staggered(teacher, n, chains, torch.Generator().manual_seed(0), return_chains=True)
        assert calls == [chains] * (T - 1)  # T - 1 batched passes (the states at T - 1 are the noise)
        hist = torch.bincount(pool.i, minlength=T)
        assert hist.max() - hist.min() <= 1 and hist.sum() == n
        assert len(chain_of.unique()) >= min(chains, n)
        teacher.net = type(teacher).net.__get__(teacher)
    with pytest.raises(teachers.UserError):
        dkdm.init_staggered(teacher, 10 * T, 5, torch.Generator().manual_seed(0))


def test_pool_state_round_trip_continues_the_same_stream():
    teacher = gmm_teacher()
    pool = dkdm.init_staggered(teacher, 60, 16, torch.Generator().manual_seed(0))
    saved = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in pool.state_dict().items()}
    a = [dkdm.knowledge_step(teacher, pool, 6)[0] for _ in range(4)]
    other = dkdm.init_noise(teacher, 60, torch.Generator().manual_seed(9))
    other.load_state_dict(saved)
    b = [dkdm.knowledge_step(teacher, other, 6)[0] for _ in range(4)]
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# --- students -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_students_fit_the_teacher_and_train_deterministically(kind):
    teacher = tiny_teacher()
    student = dkdm.build_student(dkdm.DKDMConfig(student=kind), teacher).train()
    x, i = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 10, 19])
    cond = dkdm.as_cond(torch.tensor([0, 3, 9, 10]))
    out = teachers.call_net(student, x, i.float(), cond)
    assert out.shape == (4, 2, 8, 8)
    assert torch.equal(out, teachers.call_net(student, x, i.float(), cond))  # no random label drop


def test_student_that_does_not_fit_is_refused(tmp_path):
    from diffusers import UNet2DModel

    teacher = tiny_teacher()
    for kw in (
        {"in_channels": 3, "out_channels": 2},
        {"sample_size": 16},
        {"out_channels": 1},
        {"num_class_embeds": None},
    ):
        conf = {**students.cnn_config(teacher), **kw}
        with pytest.raises(teachers.UserError):
            dkdm.check_student_fits(UNet2DModel(**conf), teacher, "custom")
