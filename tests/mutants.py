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
        ("dkdm.py", "self.clip_grad = 1.0 if self.teacher in EMBEDDED else 0.0", "self.clip_grad = 1.0"),
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
