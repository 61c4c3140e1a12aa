"""Progress bars show the losses and the per-iteration time split from the first iteration on,
not only from the first metrics record (log_every iterations later)."""

import tqdm as tqdm_module

import boot
import dkdm
import runkit

from test_dkdm_cli import tiny_latent_teacher


class Recorder(tqdm_module.tqdm):
    """tqdm that remembers each postfix together with the bar's count at that moment."""

    seen = []

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        Recorder.seen.append((self.n, dict(ordered_dict or {}, **kwargs)))
        return super().set_postfix(ordered_dict, refresh, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        Recorder.seen.append((self.n, s))
        return super().set_postfix_str(s, refresh)


def test_boot_bar_shows_losses_and_times_from_iteration_one(tmp_path, monkeypatch):
    monkeypatch.setattr(runkit, "tqdm", Recorder)  # the run's bar
    Recorder.seen = []
    assert (
        boot.main(
            [
                "--teacher",
                "gmm",
                "--iters",
                "3",
                "--batch",
                "4",
                "--log-every",
                "50",
                "--preview",
                "0",
                "--check",
                "0",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    n, post = Recorder.seen[0]
    assert n == 1 and set(post) == {"loss", "bc", "ms"} and post["ms"].startswith("T")
    assert float(post["loss"]) > 0


def test_dkdm_bar_shows_losses_and_times_from_iteration_one(tmp_path, monkeypatch):
    ldm = tiny_latent_teacher(tmp_path / "ldm")
    monkeypatch.setattr(runkit, "tqdm", Recorder)  # the run's bar
    Recorder.seen = []
    assert (
        dkdm.main(
            [
                "--teacher",
                str(ldm),
                "--rho",
                "0.01",
                "--batch",
                "8",
                "--chains",
                "16",
                "--iters",
                "3",
                "--log-every",
                "50",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    n, post = Recorder.seen[0]  # the same bar as boot.py's: losses and the time split
    assert n == 1 and set(post) == {"loss", "mse", "vb", "ms"} and post["ms"].startswith("T")
    assert float(post["loss"]) > 0
