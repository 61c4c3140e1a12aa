"""Mutation suite: does a wrong equation fail a test?

    python tests/mutants.py                  # every mutant, 2 at a time (11 CPU-min)
    python tests/mutants.py -j 1 boot-eq8-at-tmin dkdm-eq21-kl-direction   # some of them

Each mutant in MUTANTS is a mistake a reader of the papers could make, tied to the equation or
algorithm line it breaks: one or more (file, old snippet, new snippet) edits, each old snippet
found exactly once (else the mutant is STALE: update the snippet after moving code). The runner
copies the checkout (tracked files and new .py files) to a temporary directory per
mutant, applies it, runs the fast tests it names (`-m "not slow"`, stop at the first failure),
prints `killed by test_x` or `SURVIVED` per mutant, then `N mutants, K killed, S survived`;
the exit code is non-zero if any mutant survived or is stale. The unmutated copy is run first.
Own ~100 lines instead of mutmut / cosmic-ray: those mutate operators blindly over every line and
need a results database, while each mutant here is one named, paper-level mistake with its tests.
"""

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

BE, BD = "tests/test_boot_equations.py::", "tests/test_boot_derivations.py::"
DE, DD = "tests/test_dkdm_equations.py::", "tests/test_dkdm_derivations.py::"
TT = "tests/test_teachers.py::"
EX, XP = "tests/test_checkpoints_exports.py::", "tests/test_exports.py::"
ES, PR = "tests/test_eval_scale.py::", "tests/test_protocols.py::"


BAD = "tests/test_bad_inputs.py::test_bad_input_is_one_line_exit_2_nothing_written"
PS, ME, BC = "tests/test_paper_scale.py::", "tests/test_memory_estimate.py::", "tests/test_boot_cli.py::"


def M(name, breaks, tests, *edits):
    """A mutant: name, the paper item it breaks, the tests that must kill it, (file, old, new) edits."""
    return {"name": name, "breaks": breaks, "tests": tests, "edits": edits}


MUTANTS = [
    # --- the teacher: schedule, DDIM (BOOT Eq. 1), ancestral step (DKDM Eq. 16), CFG, thresholding
    M(
        "schedule-interpolation-swapped",
        "teacher schedule",
        [TT + "test_schedule_matches_diffusers_tables"],
        (
            "teachers.py",
            "table[lo] * (1 - frac) + table[lo + 1] * frac",
            "table[lo] * frac + table[lo + 1] * (1 - frac)",
        ),
    ),
    M(
        "schedule-grid-off-by-one",
        "teacher schedule",
        [TT + "test_schedule_matches_diffusers_tables"],
        ("teachers.py", "dtype=torch.float64) / (self.T - 1)", "dtype=torch.float64) / self.T"),
    ),
    M(
        "schedule-sigma-is-alpha",
        "teacher schedule",
        [TT + "test_schedule_matches_diffusers_tables"],
        (
            "teachers.py",
            "return torch.sigmoid(-self.log_snr(t)).sqrt()",
            "return torch.sigmoid(self.log_snr(t)).sqrt()",
        ),
    ),
    M(
        "lambda-sign",
        "BOOT lambda_t = -log(a/s)",
        [TT + "test_schedule_matches_diffusers_tables"],
        ("teachers.py", "return -0.5 * self.log_snr(t)", "return 0.5 * self.log_snr(t)"),
    ),
    M(
        "ddim-alpha-sigma-swap",
        "BOOT Eq. 1 (DDIM)",
        [TT + "test_ddim_matches_diffusers"],
        (
            "teachers.py",
            "x = s_s / s_t * x + (a_s - a_t * s_s / s_t) * f",
            "x = a_s / a_t * x + (s_s - s_t * a_s / a_t) * f",
        ),
    ),
    M(
        "ddim-trailing-off-by-one",
        "BOOT Eq. 1 (DDIM)",
        [TT + "test_ddim_matches_diffusers"],
        ("teachers.py", "int(round(T - k * T / steps)) - 1", "int(round(T - k * T / steps)) - 2"),
    ),
    M(
        "eps-to-x0-alpha-sigma-swap",
        "teacher f_phi",
        [TT + "test_ddim_matches_diffusers"],
        ("teachers.py", "return out, (x - s * out) / a", "return out, (x - a * out) / s"),
    ),
    M(
        "posterior-mean-denominator",
        "DKDM Eq. 16 (ancestral)",
        [TT + "test_ancestral_step_matches_ddpm_scheduler_learned_range"],
        ("teachers.py", "* (1 - ab_p) * x) / (1 - ab_t)", "* (1 - ab_p) * x) / (1 - ab_p)"),
    ),
    M(
        "learned-range-swapped",
        "DKDM Eq. 12/16",
        [TT + "test_ancestral_step_matches_ddpm_scheduler_learned_range"],
        (
            "teachers.py",
            "logvar = frac * max_log + (1 - frac) * min_log",
            "logvar = frac * min_log + (1 - frac) * max_log",
        ),
    ),
    M(
        "ancestral-last-step-noised",
        "DKDM sampling",
        [TT + "test_ancestral_sampler_runs_and_is_seeded"],
        (
            "teachers.py",
            "prev = grid[k + 1] if k + 1 < len(grid) else -1",
            "prev = grid[k + 1] if k + 1 < len(grid) else 0",
        ),
    ),
    M(
        "cfg-from-conditional",
        "BOOT Eq. 9 (CFG)",
        [TT + "test_cfg_is_eq9_on_the_exact_denoiser"],
        ("teachers.py", "guided = out_n[:, :C] + bcast(w, x)", "guided = out_c[:, :C] + bcast(w, x)"),
    ),
    M(
        "cfg-variance-from-null",
        "IF/IDDPM CFG variance",
        [DD + "test_guided_learned_variance_comes_from_the_conditional_model"],
        ("teachers.py", "return guided, (out_c[:, C:]", "return guided, (out_n[:, C:]"),
    ),
    M(
        "threshold-static-wrong-clamp",
        "thresholding (clip)",
        [TT + "test_thresholding_matches_diffusers"],
        ("teachers.py", "return x0.clamp(-1, 1)", "return x0.clamp(-1.5, 1.5)"),
    ),
    M(
        "threshold-dynamic-no-rescale",
        "dynamic thresholding",
        [TT + "test_thresholding_matches_diffusers"],
        ("teachers.py", "return x0.clamp(-s, s) / s", "return x0.clamp(-s, s)"),
    ),
    M(
        "gmm-posterior-alpha-sigma-swap",
        "analytic teacher",
        [TT + "test_gmm_denoiser_is_the_posterior_mean"],
        ("teachers.py", "var_t = a**2 * var0 + s**2", "var_t = s**2 * var0 + a**2"),
    ),
    M(
        "threshold-dynamic-no-lower-bound",
        "dynamic thresholding (s >= 1)",
        [TT + "test_thresholding_matches_diffusers"],
        ("teachers.py", "s = bcast(s.clamp(1.0, max_value), x0)", "s = bcast(s.clamp(max=max_value), x0)"),
    ),
    M(
        "fixed-large-is-fixed-small",
        "fixed_large ancestral step",
        [TT + "test_ancestral_step_matches_ddpm_scheduler_fixed_large"],
        (
            "teachers.py",
            "logvar = torch.where(bcast(prev, x) < 0, min_log, max_log).expand_as(x)",
            "logvar = min_log.expand_as(x)",
        ),
    ),
    M(
        "v-prediction-alpha-sigma-swap",
        "v-prediction conversion",
        [TT + "test_v_prediction_matches_diffusers"],
        (
            "teachers.py",
            "return a * out + s * x, a * x - s * out  # v-prediction",
            "return s * out + a * x, s * x - a * out",
        ),
    ),
    M(
        "ema-weight-is-the-decay",
        "EMA of the exported student",
        [EX + "test_ema_is_the_closed_form_average_of_the_parameter_sequence"],
        ("runkit.py", "[state[k] for k in floats], 1 - self.decay)", "[state[k] for k in floats], self.decay)"),
    ),
    M(
        "export-saved-without-its-pipeline-file",
        "exports survive save_pretrained",
        [XP + "test_every_export_loads_in_plain_diffusers_and_matches_the_repository"],
        (
            "pipelines/pipeline_boot.py",
            'index["_class_name"] = [source.stem, type(self).__name__]',
            'index["_class_name"] = type(self).__name__',
        ),
    ),
    # --- BOOT: Signal-ODE step (Eq. 4/7/15), loss and weights (Eq. 13/14), boundary (Eq. 8), Alg. 1
    M(
        "boot-eq4-sign",
        "BOOT Eq. 4",
        [BE + "test_signal_step_equals_a_ddim_step_of_diffusers_mapped_to_signal_space"],
        ("boot.py", "return y_t + bcast(dl, y_t) * (f_t - y_t)", "return y_t + bcast(dl, y_t) * (y_t - f_t)"),
    ),
    M(
        "boot-eq4-t-s-swap",
        "BOOT Eq. 4 / Alg. 1 line 6",
        [BE + "test_signal_step_equals_a_ddim_step_of_diffusers_mapped_to_signal_space"],
        (
            "boot.py",
            "1 - schedule.alpha(t) * schedule.sigma(s) / (schedule.sigma(t) * schedule.alpha(s))",
            "1 - schedule.alpha(s) * schedule.sigma(t) / (schedule.sigma(s) * schedule.alpha(t))",
        ),
    ),
    M(
        "boot-noisy-alpha-sigma-swap",
        "BOOT Alg. 1 line 8",
        [BE + "test_loss_vanishes_on_the_exact_signal_ode_solution"],
        (
            "boot.py",
            "bcast(schedule.alpha(t), y) * y + bcast(schedule.sigma(t), y) * eps",
            "bcast(schedule.sigma(t), y) * y + bcast(schedule.alpha(t), y) * eps",
        ),
    ),
    M(
        "boot-eq7-teacher-at-s",
        "BOOT Eq. 7",
        [BE + "test_loss_vanishes_on_the_exact_signal_ode_solution"],
        ("boot.py", "f_t = f(noisy(schedule, y_t, eps, t), t)", "f_t = f(noisy(schedule, y_t, eps, s), s)"),
    ),
    M(
        "boot-eq15-corrector-at-t",
        "BOOT Eq. 15 (Heun)",
        [BE + "test_heun_error_shrinks_an_order_faster_than_euler"],
        ("boot.py", "f_s = f(noisy(schedule, y_euler, eps, s), s)", "f_s = f(noisy(schedule, y_euler, eps, t), t)"),
    ),
    M(
        "boot-eq15-step-from-euler-point",
        "BOOT Eq. 15 (Heun)",
        [BE + "test_heun_error_shrinks_an_order_faster_than_euler"],
        (
            "boot.py",
            "return signal_step(y_t, (f_t + f_s) / 2, dl)",
            "return signal_step(y_euler, (f_t + f_s) / 2, dl)",
        ),
    ),
    M(
        "boot-eq7-no-stop-gradient",
        "BOOT Eq. 7 SG[.]",
        [BD + "test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target"],
        ("boot.py", "@torch.no_grad()\ndef bootstrap_target", "def bootstrap_target"),
        ("boot.py", 'with timed("student"), torch.no_grad(), amp():', 'with timed("student"), amp():'),
    ),
    M(
        "boot-eq13-weight-ignored",
        "BOOT Eq. 13/14",
        [BD + "test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target"],
        (
            "boot.py",
            "loss_bs = bootstrap_loss(y[: len(eps)], target, weight, cfg.loss)",
            "loss_bs = bootstrap_loss(y[: len(eps)], target, torch.ones_like(weight), cfg.loss)",
        ),
    ),
    M(
        "boot-eq14-batch-mean-weight",
        "BOOT Eq. 14",
        [BD + "test_weights_make_the_bootstrapping_loss_a_finite_limit_as_delta_shrinks"],
        (
            "boot.py",
            "(weight.to(per_example) * per_example).mean()",
            "weight.mean().to(per_example) * per_example.mean()",
        ),
    ),
    M(
        "boot-eq13-uniform-not-squared",
        "BOOT Eq. 13",
        [BD + "test_weights_make_the_bootstrapping_loss_a_finite_limit_as_delta_shrinks"],
        ("boot.py", "1.0 / delta**2)", "1.0 / delta)"),
    ),
    M(
        "boot-eq14-lambda-not-squared",
        "BOOT Eq. 14 / Alg. 1",
        [BD + "test_weights_make_the_bootstrapping_loss_a_finite_limit_as_delta_shrinks"],
        ("boot.py", "return 1.0 / delta_lambda(schedule, t, s) ** 2", "return 1.0 / delta_lambda(schedule, t, s)"),
    ),
    M(
        "boot-alg1-line10-analytic-lambda-prime",
        "BOOT Alg. 1 line 10 (discrete delta lambda')",
        [BE + "test_loss_weights"],
        (
            "boot.py",
            "return 1.0 / delta_lambda(schedule, t, s) ** 2",
            "return 1.0 / (delta * (schedule.lam(t + 1e-4) - schedule.lam(t - 1e-4)) / 2e-4) ** 2",
        ),
    ),
    M(
        "boot-alg1-line4-min",
        "BOOT Alg. 1 line 4",
        [BD + "test_step_back_takes_a_full_step_when_there_is_room_and_stops_at_t_min"],
        ("boot.py", "return (t - delta).clamp(min=t_min)", "return (t - delta).clamp(max=t_min)"),
    ),
    M(
        "boot-alg1-line4-one-t-per-batch",
        "BOOT Alg. 1 line 4",
        [BD + "test_time_draws_are_uniform_per_example_and_progressive_slides_down"],
        (
            "boot.py",
            "u = torch.rand(B, generator=g, dtype=torch.float64)",
            "u = torch.rand(1, generator=g, dtype=torch.float64).expand(B)",
        ),
    ),
    M(
        "boot-progressive-reversed",
        "BOOT Sec. 4.3 progressive",
        [BD + "test_time_draws_are_uniform_per_example_and_progressive_slides_down"],
        (
            "boot.py",
            "centre = cfg.t_max - (cfg.t_max - cfg.t_min) * step",
            "centre = cfg.t_min + (cfg.t_max - cfg.t_min) * step",
        ),
    ),
    M(
        "boot-alg1-line7-y-at-s",
        "BOOT Alg. 1 line 7",
        [BD + "test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target"],
        (
            "boot.py",
            "y_t = y_theta(raw, student, eps, t.to(dev, torch.float32), cond, w)",
            "y_t = y_theta(raw, student, eps, s.to(dev, torch.float32), cond, w)",
        ),
    ),
    M(
        "boot-alg1-line10-student-at-t",
        "BOOT Alg. 1 line 7/10",
        [BD + "test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target"],
        ("boot.py", "times, noise, conds, ws = s, eps, cond, w", "times, noise, conds, ws = t, eps, cond, w"),
    ),
    M(
        "boot-huber-without-sqrt",
        "BOOT --loss huber (pseudo-Huber)",
        [BD + "test_each_distance_keeps_the_stop_gradient_and_the_weight_per_example"],
        (
            "boot.py",
            "per_example = ((y_s - target).pow(2).flatten(1).sum(1) + c**2).sqrt() - c",
            "per_example = (y_s - target).pow(2).flatten(1).sum(1) + c**2 - c",
        ),
    ),
    M(
        "boot-huber-c-unscaled",
        "BOOT --loss huber (c = 0.00054 sqrt(d))",
        [BD + "test_each_distance_keeps_the_stop_gradient_and_the_weight_per_example"],
        ("boot.py", "c = 0.00054 * math.sqrt(y_s[0].numel())", "c = 0.00054"),
    ),
    M(
        "boot-huber-is-l2",
        "BOOT --loss huber",
        [BD + "test_each_distance_keeps_the_stop_gradient_and_the_weight_per_example"],
        ("boot.py", 'elif loss == "huber":', 'elif loss == "hub":'),
    ),
    M(
        "boot-lpips-against-itself",
        "BOOT --loss lpips",
        [BD + "test_each_distance_keeps_the_stop_gradient_and_the_weight_per_example"],
        ("boot.py", "(*x.chunk(2))", "(x.chunk(2)[1], x.chunk(2)[1])"),
    ),
    M(
        "boot-lpips-on-latents",
        "BOOT --loss lpips (pixel teachers)",
        [BD + "test_lpips_needs_a_pixel_teacher_and_says_what_to_download"],
        (
            "boot.py",
            'if cfg.loss == "lpips" and teacher.latent:',
            'if cfg.loss == "lpips" and teacher.latent and False:',
        ),
    ),
    M(
        "boot-eq8-at-tmin",
        "BOOT Eq. 8 (boundary)",
        [BD + "test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target"],
        ("boot.py", "torch.full_like(s, cfg.t_max)", "torch.full_like(s, cfg.t_min)"),
        (
            "boot.py",
            "f_tmax = f(eps, torch.full_like(t, cfg.t_max))",
            "f_tmax = f(eps, torch.full_like(t, cfg.t_min))",
        ),
    ),
    M(
        "boot-boundary-loss-sign",
        "BOOT L = L_BS + beta L_BC",
        [BD + "test_boot_step_is_eq7_plus_eq8_with_a_stop_gradient_target"],
        ("boot.py", "return loss_bs + cfg.beta * loss_bc, {", "return loss_bs - cfg.beta * loss_bc, {"),
    ),
    M(
        "boot-sample-at-tmax",
        "BOOT sample y(eps, t_min)",
        [BD + "test_a_short_gmm_run_learns_the_teachers_ode_output"],
        (
            "pipelines/pipeline_boot.py",
            "t = torch.zeros(latents.shape[0], device=latents.device)",
            "t = torch.full((latents.shape[0],), self.config.t_max, device=latents.device)",
        ),
    ),
    M(
        "boot-eq8-l1",
        "BOOT Eq. 8 (boundary)",
        [BD + "test_boundary_loss_is_torchs_mse"],
        ("boot.py", "return (f_tmax - y_tmax).pow(2).mean()", "return (f_tmax - y_tmax).abs().mean()"),
    ),
    M(
        "boot-alg1-line2-one-eps-per-batch",
        "BOOT Alg. 1 line 2",
        [BD + "test_a_short_gmm_run_learns_the_teachers_ode_output"],
        (
            "boot.py",
            "eps = torch.randn((B, *teacher.sample_shape), generator=g)[lo:hi]",
            "eps = torch.randn((1, *teacher.sample_shape), generator=g).expand(B, *teacher.sample_shape)[lo:hi]",
        ),
    ),
    M(
        "boot-alg1-line3-one-label-per-batch",
        "BOOT Alg. 1 line 3",
        [BD + "test_student_is_conditioned_on_w_drawn_per_example"],
        (
            "boot.py",
            "torch.randint(0, self.teacher.num_classes, (B,), generator=g)[lo:hi]",
            "torch.randint(0, self.teacher.num_classes, (1,), generator=g).expand(B)[lo:hi]",
        ),
    ),
    M(
        "boot-eq9-student-without-w",
        "BOOT Eq. 9 (w input)",
        [BD + "test_student_is_conditioned_on_w_drawn_per_example"],
        ("boot.py", "w = torch.zeros_like(t) if w is None else", "w = torch.zeros_like(t) if True else"),
    ),
    M(
        "boot-eq9-one-w-per-batch",
        "BOOT Eq. 9 (w ~ U)",
        [BD + "test_student_is_conditioned_on_w_drawn_per_example"],
        (
            "boot.py",
            "(w_hi - w_lo) * torch.rand(B, generator=g, dtype=torch.float64)",
            "(w_hi - w_lo) * torch.rand(1, generator=g, dtype=torch.float64).expand(B)",
        ),
    ),
    M(
        "boot-init-cond-proj-not-zeroed",
        "BOOT student init",
        [BE + "test_teacher_copy_equals_teacher_at_tmax_for_every_t_and_boundary_loss_is_zero"],
        (
            "boot.py",
            "torch.nn.init.zeros_(model.time_embedding.cond_proj.weight)",
            "torch.nn.init.normal_(model.time_embedding.cond_proj.weight)",
        ),
    ),
    M(
        "boot-init-output-alpha-sigma-swap",
        "BOOT student init",
        [BE + "test_teacher_copy_equals_teacher_at_tmax_for_every_t_and_boundary_loss_is_zero"],
        (
            "boot.py",
            "timestep_cond=emb)[:, : eps.shape[1]]\n    return (eps - s.sigma_tmax * eps_hat) / s.alpha_tmax",
            "timestep_cond=emb)[:, : eps.shape[1]]\n    return (eps - s.alpha_tmax * eps_hat) / s.sigma_tmax",
        ),
    ),
    M(
        "boot-init-native-time-off-by-one",
        "BOOT student init",
        [BE + "test_teacher_copy_equals_teacher_at_tmax_for_every_t_and_boundary_loss_is_zero"],
        (
            "boot.py",
            "native = torch.full_like(t, s.t_max * (s.T - 1))\n    emb =",
            "native = torch.full_like(t, s.t_max * s.T)\n    emb =",
        ),
    ),
    M(
        "boot-if2-noise-level-0",
        "BOOT IF stage II",
        [BD + "test_if_stage2_input_is_the_pipelines_noise_augmentation"],
        (
            "teachers.py",
            "self.noising.alpha_bar(torch.tensor(noise_level))",
            "self.noising.alpha_bar(torch.tensor(0))",
        ),
    ),
    M(
        "boot-if2-upscale-corners",
        "BOOT IF stage II",
        [BD + "test_if_stage2_input_is_the_pipelines_noise_augmentation"],
        ("teachers.py", 'mode="bilinear", align_corners=True)', 'mode="bilinear", align_corners=False)'),
    ),
    # --- DKDM: objective Eq. 19-21 (with Eq. 12), Alg. 1, pool, streams, inits
    M(
        "dkdm-eq20-sum-not-mean",
        "DKDM Eq. 20",
        [DD + "test_fixed_variance_teacher_gives_l_simple_only"],
        ("dkdm.py", "return ((eps_T - eps_S) ** 2).mean(", "return ((eps_T - eps_S) ** 2).sum("),
    ),
    M(
        "dkdm-eq21-kl-direction",
        "DKDM Eq. 21",
        [DD + "test_vlb_is_the_kl_from_the_teacher_step_to_the_student_step"],
        (
            "dkdm.py",
            "vb = l_vlb(mean_T, logvar_T, mean_S, logvar_S)",
            "vb = l_vlb(mean_S, logvar_S, mean_T, logvar_T)",
        ),
    ),
    M(
        "dkdm-eq21-nats-not-bits",
        "DKDM Eq. 21",
        [DE + "test_vlb_equals_torch_kl_over_ln2"],
        (
            "dkdm.py",
            "return kl.mean(dim=tuple(range(1, kl.dim()))) / math.log(2.0)",
            "return kl.mean(dim=tuple(range(1, kl.dim())))",
        ),
    ),
    M(
        "dkdm-eq21-mean-not-detached",
        "DKDM Eq. 21 (IDDPM)",
        [DE + "test_loss_terms_and_gradients_reach_their_heads"],
        ("dkdm.py", "(1 - ab).sqrt() * eps_S.detach()", "(1 - ab).sqrt() * eps_S"),
    ),
    M(
        "dkdm-eq12-x0-alpha-sigma-swap",
        "DKDM Eq. 12",
        [DD + "test_vlb_is_the_kl_from_the_teacher_step_to_the_student_step"],
        (
            "dkdm.py",
            "x0_S = (x_t - (1 - ab).sqrt() * eps_S.detach()) / ab.sqrt()",
            "x0_S = (x_t - ab.sqrt() * eps_S.detach()) / (1 - ab).sqrt()",
        ),
    ),
    M(
        "dkdm-eq12-step-off-by-one",
        "DKDM Eq. 12",
        [DD + "test_vlb_is_the_kl_from_the_teacher_step_to_the_student_step"],
        ("dkdm.py", "x0_S, i, i - 1, v_S", "x0_S, i, i - 2, v_S"),
    ),
    M(
        "dkdm-eq19-lambda-dropped",
        "DKDM Eq. 19",
        [DE + "test_loss_terms_and_gradients_reach_their_heads"],
        ("dkdm.py", "return mse + lam * vb, mse, vb", "return mse + vb, mse, vb"),
    ),
    M(
        "dkdm-eq16-std-as-variance",
        "DKDM Eq. 16 (g_T)",
        [DD + "test_teacher_step_is_a_ddpm_scheduler_step"],
        (
            "dkdm.py",
            "return (mean, logvar, eps), mean + (0.5 * logvar).exp() * z",
            "return (mean, logvar, eps), mean + logvar.exp() * z",
        ),
    ),
    M(
        "dkdm-alg1-draw-with-replacement",
        "DKDM Alg. 1 line 4",
        [DD + "test_pool_draws_without_replacement"],
        (
            "dkdm.py",
            "torch.randperm(len(self), generator=self.g, device=self.g.device)[:b]",
            "torch.randint(0, len(self), (b,), generator=self.g, device=self.g.device)",
        ),
    ),
    M(
        "dkdm-pool-no-write-back",
        "DKDM pool write-back",
        [DD + "test_pool_inits_and_write_back_keep_every_entry_at_its_marginal"],
        ("dkdm.py", "self.x[idx], self.i[idx] = new_x, new_i", "self.i[idx] = new_i"),
    ),
    M(
        "dkdm-pool-step-not-advanced",
        "DKDM pool write-back",
        [DE + "test_shuffled_staggered_t_each_entry_steps_once_per_iteration"],
        ("dkdm.py", "new_x, new_i = x_prev.float(), i - 1", "new_x, new_i = x_prev.float(), i"),
    ),
    M(
        "dkdm-refill-off-by-one",
        "DKDM pool refill",
        [DE + "test_iterative_one_t_per_batch_decreasing_by_one"],
        ("dkdm.py", "done = i == 0", "done = i == 1"),
    ),
    M(
        "dkdm-refill-at-T-2",
        "DKDM pool refill",
        [DE + "test_iterative_one_t_per_batch_decreasing_by_one"],
        (
            "dkdm.py",
            "new_x[done], new_i[done] = x0, teacher.schedule.T - 1",
            "new_x[done], new_i[done] = x0, teacher.schedule.T - 2",
        ),
    ),
    M(
        "dkdm-alg1-train-on-post-step",
        "DKDM Alg. 1 lines 5-7",
        [DD + "test_a_student_equal_to_the_teacher_has_zero_loss_on_the_stream"],
        ("dkdm.py", "    return x_t, i, labels, target\n", "    return pool.x[idx], pool.i[idx], labels, target\n"),
    ),
    M(
        "dkdm-alg1-student-step-off-by-one",
        "DKDM Alg. 1 lines 5-7",
        [DD + "test_a_student_equal_to_the_teacher_has_zero_loss_on_the_stream"],
        (
            "dkdm.py",
            "out = teachers.call_net(model, x_t, i.to(x_t.dtype)",
            "out = teachers.call_net(model, x_t, (i - 1).to(x_t.dtype)",
        ),
    ),
    M(
        "dkdm-shuffle-denoise-off-by-one",
        "DKDM shuffle denoise",
        [DD + "test_pool_inits_and_write_back_keep_every_entry_at_its_marginal"],
        ("dkdm.py", "active = by_end[: going[s - 1]]", "active = by_end[: going[s]]"),
    ),
    M(
        "dkdm-staggered-step-off-by-one",
        "DKDM staggered init",
        [DD + "test_pool_inits_and_write_back_keep_every_entry_at_its_marginal"],
        ("dkdm.py", "torch.full((chains,), s, device=xc.device)", "torch.full((chains,), s - 1, device=xc.device)"),
    ),
    M(
        "dkdm-staggered-labels-shifted",
        "DKDM staggered init",
        [DD + "test_pool_inits_and_write_back_keep_every_entry_at_its_marginal"],
        ("dkdm.py", "labels[slot : slot + k] = lc[take.to(xc.device)]", "labels[slot : slot + k] = lc[:k]"),
    ),
    M(
        "dkdm-iterative-starts-at-T-2",
        "DKDM iterative stream",
        [DE + "test_iterative_one_t_per_batch_decreasing_by_one"],
        (
            "dkdm.py",
            "torch.full((n,), teacher.schedule.T - 1, device=x.device)",
            "torch.full((n,), teacher.schedule.T - 2, device=x.device)",
        ),
    ),
    M(
        "dkdm-shuffled-gets-a-big-pool",
        "DKDM three streams",
        [DD + "test_the_three_streams"],
        ("dkdm.py", 'if cfg.method == "dynamic" else b_local', 'if cfg.method != "iterative" else b_local'),
    ),
    M(
        "dkdm-shuffled-starts-from-noise",
        "DKDM three streams",
        [DD + "test_the_three_streams"],
        ("dkdm.py", '"shuffled": "shuffle"', '"shuffled": "noise"'),
    ),
    M(
        "dkdm-clips-the-papers-teachers",
        "DKDM training (no gradient clipping)",
        ["tests/test_defaults.py::test_clip_grad_default_is_the_papers_none_except_on_the_embedded_teachers"],
        ("dkdm.py", "rho=0.4, clip_grad=0.0)", "rho=0.4, clip_grad=1.0)"),
        ("dkdm.py", "warmup=0, clip_grad=0.0)", "warmup=0, clip_grad=1.0)"),
    ),
    M(
        "dkdm-staggered-init-on-the-papers-teachers",
        "DKDM pool init (shuffle denoise, Fig. 3)",
        [
            "tests/test_defaults.py::test_dynamic_pool_init_default_is_the_papers_shuffle_except_on_the_embedded_teachers"
        ],
        ("dkdm.py", 'dynamic = "staggered" if cfg.teacher in EMBEDDED else "shuffle"', 'dynamic = "staggered"'),
    ),
    # --- evaluation: which set is real, the field's protocols, memory that follows the batch
    M(
        "eval-precision-recall-roles-swapped",
        "precision / recall (Kynkaenniemi et al.)",
        [ES + "test_a_record_scores_the_samples_against_the_reference_not_the_reverse"],
        (
            "evaluate.py",
            "precision_recall(ref, f, precision_recall_k)",
            "precision_recall(f, ref, precision_recall_k)",
        ),
    ),
    M(
        "eval-cifar10-clean-mode",
        "CIFAR-10 FID (TF-Inception, legacy_tensorflow)",
        [PR + "test_cifar10_protocol_scores_against_the_whole_folder"],
        ("evaluate.py", 'training set)", "legacy_tensorflow"),', 'training set)", "clean"),'),
    ),
    M(
        "eval-coco-crop-offset-floored",
        "COCO-30k 256 px centre crop (GigaGAN)",
        [PR + "test_crop_is_centred_as_torchvision_rounds_it"],
        (
            "evaluate.py",
            "top, left = round((h - s) / 2), round((w - s) / 2)",
            "top, left = (h - s) // 2, (w - s) // 2",
        ),
    ),
    M(
        "eval-coco-clip-without-prefix",
        'COCO-30k CLIP score ("A photo depicts ")',
        [PR + "test_coco2014_protocol_crops_resizes_and_prefixes"],
        ("evaluate.py", '[(self.protocol.clip_prefix or "") + t for t in texts]', "list(texts)"),
    ),
    M(
        "eval-grid-keeps-every-image",
        "features gathered, never images",
        [ES + "test_no_row_cache_or_grid_keeps_more_than_a_batch_of_images"],
        (
            "evaluate.py",
            "kept_seeds = seeds[rank::world], set(seeds[:keep])",
            "kept_seeds = seeds[rank::world], set(seeds)",
        ),
    ),
    # --- the paper-scale run: the mistakes the suite missed, and the guarantees added with them
    M(
        "dkdm-lr-warmup-starts-at-0",
        "DKDM lr: warm-up's first step",
        [PS + "test_dkdm_learning_rate_at_given_steps"],
        ("dkdm.py", "min(1.0, (step + 1) / max(1, cfg.warmup))", "min(1.0, step / max(1, cfg.warmup))"),
    ),
    M(
        "dkdm-lr-cosine-past-its-end",
        "DKDM lr: after the decay's end",
        [PS + "test_dkdm_learning_rate_at_given_steps"],
        ("dkdm.py", "min(step - start, end - start) / (end - start)", "(step - start) / (end - start)"),
    ),
    M(
        "dkdm-lr-restarts-on-resume",
        "DKDM lr: a continued run",
        [PS + "test_a_continued_run_keeps_its_schedule"],
        (
            "dkdm.py",
            'group["lr"] = learning_rate(cfg, step)',
            'group["lr"] = learning_rate(cfg, step - (run.resume_step or 0))',
        ),
    ),
    M(
        "dkdm-digits-schedule-on-every-teacher",
        "DKDM presets per teacher",
        [PS + "test_dkdm_presets_follow_the_teacher"],
        ("dkdm.py", "    row = PRESETS[name]\n", '    row = PRESETS["digits"]\n'),
    ),
    M(
        "ema-copy-refreshed-only-once",
        "EMA weights of later exports / proxies",
        [EX + "test_every_export_holds_the_ema_of_its_step", EX + "test_later_proxy_evaluations_see_the_current_ema"],
        (
            "runkit.py",
            "            self.copy.zero_grad(set_to_none=True)\n        self.copy_to(self.copy)",
            "            self.copy.zero_grad(set_to_none=True)\n            self.copy_to(self.copy)",
        ),
    ),
    M(
        "dkdm-proxy-ema-not-refreshed",
        "EMA weights of later proxies",
        [EX + "test_later_proxy_evaluations_see_the_current_ema"],
        ("dkdm.py", "        ema.model()  # the averaged weights, refreshed into that copy\n", ""),
    ),
    M(
        "boot-proxy-ema-taken-once",
        "EMA weights of later proxies",
        [EX + "test_later_proxy_evaluations_see_the_current_ema"],
        (
            "boot.py",
            "    w = default_weight(cfg, teacher)\n\n    def sample(noise, cond):",
            "    w = default_weight(cfg, teacher)\n    net = ema.model()\n\n    def sample(noise, cond):",
        ),
        ("boot.py", "y_theta(ema.model(), student, noise, t, cond, w)", "y_theta(net, student, noise, t, cond, w)"),
    ),
    M(
        "memory-16-bytes-a-parameter",
        "--dry-run memory: bytes per parameter",
        [ME + "test_bytes_per_parameter_and_the_batch_that_fits"],
        ("costs.py", "t_bytes + 20 * n_s + fixed", "t_bytes + 16 * n_s + fixed"),
        ("costs.py", "round(20 * n_s / GiB, 3)", "round(16 * n_s / GiB, 3)"),
    ),
    M(
        "memory-fits-without-headroom",
        "--dry-run memory: the batch that fits",
        [ME + "test_bytes_per_parameter_and_the_batch_that_fits"],
        ("costs.py", "int((0.9 * cap * 1e9 - static) // per)", "int((cap * 1e9 - static) // per)"),
    ),
    M(
        "boot-pipeline-drops-guidance-scale",
        "BootPipeline(guidance_scale=w)",
        [XP + "test_the_exported_pipeline_computes_boot_y_theta_bitwise"],
        (
            "pipelines/pipeline_boot.py",
            "x = self.denoise(latents, cond or None, guidance_scale)",
            "x = self.denoise(latents, cond or None)",
        ),
    ),
    M(
        "boot-bc-averaged-over-every-iteration",
        "logged mean of the boundary loss (Eq. 8)",
        [BC + "test_logged_boundary_loss_is_its_mean_over_the_iterations_that_compute_it"],
        ("boot.py", '**({"bc": parts["bc"]} if boundary else {})', 'bc=parts["bc"]'),
    ),
    M(
        "meter-mean-over-the-whole-window",
        "logged mean of the boundary loss (Eq. 8)",
        [BC + "test_logged_boundary_loss_is_its_mean_over_the_iterations_that_compute_it"],
        ("runkit.py", "v / max(self.counts[key], 1) for key, v", "v / max(self.n, 1) for key, v"),
    ),
    M(
        "dkdm-text-teacher-accepted",
        "DKDM refuses a text-to-image teacher before loading",
        [
            BAD + "[dkdm: --teacher sd21 --iters 2]",
            BAD + "[dkdm: --teacher if --iters 2 --dry-run]",
        ],
        ("dkdm.py", "    if teachers.is_text_teacher(cfg.teacher, cfg.model_id):", "    if False:"),
    ),
    M(
        "boot-prompts-checked-after-loading",
        "text-to-image teacher without --prompts",
        [BC + "test_text_teacher_without_prompts"],
        (
            "boot.py",
            "check_prompts(cfg, teachers.is_text_teacher(cfg.teacher, cfg.model_id))",
            "check_prompts(cfg, None)",
        ),
    ),
    M(
        "boot-dry-run-refuses-half-on-cpu",
        "--dry-run for the GPU command",
        [PS + "test_the_dry_run_plans_the_gpu_command_on_a_cpu"],
        (
            "boot.py",
            "    cli.check_run_fields(cfg)\n    checks = [",
            "    cli.check_run_fields(cfg)\n    runkit.teacher_dtype(cfg.half, 'cpu')\n    checks = [",
        ),
    ),
    M(
        "dkdm-dry-run-reads-weights",
        "--dry-run for the GPU command",
        [PS + "test_the_dry_run_plans_the_gpu_command_on_a_cpu"],
        (
            "dkdm.py",
            'load_teacher(cfg.teacher, "meta", dtype, model_id=cfg.model_id, weights=False)',
            "load_teacher(cfg.teacher, model_id=cfg.model_id)",
        ),
    ),
    M(
        "dry-run-hours-of-one-gpu",
        "--dry-run time: GPU-hours",
        [PS + "test_dry_run_time_from_the_gpu_records"],
        ("costs.py", "ms * scale * iters * world / 3.6e6", "ms * scale * iters / 3.6e6"),
    ),
    M(
        "gpu-record-replaces-every-device",
        "bench/gpu.py: one record per device kind",
        [PS + "test_dry_run_time_from_the_gpu_records"],
        (
            "bench/gpu.py",
            'return {**costs.gpu_records(results), record["device"]: record}',
            'return {record["device"]: record}',
        ),
    ),
    M(
        "ranks-resume-mixed-states",
        "many nodes: one run, one step",
        ["tests/test_strict_dist.py::test_two_nodes_resuming_different_steps_stop_on_every_rank"],
        (
            "runkit.py",
            "        self.same_run(device)  # before anything is written",
            "        pass  # before anything is written",
        ),
    ),
    M(
        "checkpoint-written-in-the-loop",
        "checkpoints that do not stall",
        ["tests/test_run_safety.py::test_ranks_train_on_while_rank_0_writes_a_checkpoint"],
        (
            "runkit.py",
            '        self.thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)\n'
            "        self.thread.start()",
            "        write()",
        ),
    ),
    M(
        "prompts-keep-coco-captions",
        "prompt file without COCO captions",
        ["tests/test_prompts_tool.py::test_normalised_unique_prompts_without_coco_captions"],
        ("tools/prompts.py", "        if key in coco:\n", "        if key in coco and False:\n"),
    ),
    M(
        "prompts-unique-before-normalising",
        "prompt file de-duplicated after normalising",
        ["tests/test_prompts_tool.py::test_normalised_unique_prompts_without_coco_captions"],
        ("tools/prompts.py", "        key = normalise(p)\n", "        key = p.strip()\n"),
    ),
]


def files():
    """The tracked files, plus new (untracked, not ignored) .py files: a test not yet committed."""

    def git(*args):
        return subprocess.run(
            ["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\0")

    new = [f for f in git("--others", "--exclude-standard") if f.endswith(".py")]
    return [f for f in git() + new if f and (ROOT / f).is_file()]


def stale(mutant):
    """Why the mutant cannot be applied (an old snippet not found exactly once), or None."""
    for path, old, _ in mutant["edits"]:
        n = (ROOT / path).read_text().count(old)
        if n != 1:
            return f"{path}: snippet {old[:50]!r} found {n} times"
    return None


def run(mutant, listing, timeout):
    """Copy, mutate, run the mutant's tests: 'killed by test_x' or 'SURVIVED'."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        for f in listing:
            (Path(tmp) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, Path(tmp) / f)
        for path, old, new in mutant["edits"]:
            p = Path(tmp) / path
            p.write_text(p.read_text().replace(old, new, 1))
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-m",
            "not slow",
            "-p",
            "no:cacheprovider",
            "-rfE",
            *mutant["tests"],
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed by timeout"
    if p.returncode == 0:
        return "SURVIVED"
    if p.returncode not in (1, 2):  # 5: no test collected, 3/4: pytest itself failed
        return f"SURVIVED (pytest exit {p.returncode}: no test ran)"
    hit = re.search(r"^(?:FAILED|ERROR) \S*?::(\w+)", p.stdout, re.M)
    return f"killed by {hit.group(1)}" if hit else "killed (collection error)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="run only these mutants (default: all)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="mutants run in parallel")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per mutant before it counts as killed")
    a = ap.parse_args(argv)
    unknown = sorted(set(a.names) - {m["name"] for m in MUTANTS})
    if unknown or a.jobs < 1 or a.timeout < 1:
        print(
            f"mutants.py: error: unknown mutant(s) {', '.join(unknown)}"
            if unknown
            else "mutants.py: error: need --jobs >= 1 and --timeout >= 1",
            file=sys.stderr,
        )
        return 2
    todo = [m for m in MUTANTS if not a.names or m["name"] in a.names]
    listing = files()
    baseline = {"name": "unmutated", "edits": [], "tests": sorted({t for m in todo for t in m["tests"]})}
    if run(baseline, listing, 4 * a.timeout) != "SURVIVED":
        print("mutants.py: error: the named tests fail on the unmutated copy; fix them first", file=sys.stderr)
        return 2
    results = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = {m["name"]: (None if stale(m) else pool.submit(run, m, listing, a.timeout)) for m in todo}
        for m in todo:
            f = futures[m["name"]]
            results[m["name"]] = f.result() if f else f"STALE ({stale(m)})"
            print(f"{m['name']:40s} {m['breaks']:34s} {results[m['name']]}", flush=True)
    killed = sum(r.startswith("killed") for r in results.values())
    n_stale = sum(r.startswith("STALE") for r in results.values())
    print(
        f"{len(todo)} mutants, {killed} killed, {len(todo) - killed - n_stale} survived"
        + (f", {n_stale} stale" if n_stale else "")
    )
    return 0 if killed == len(todo) else 1


if __name__ == "__main__":
    sys.exit(main())
