"""VQ latent decoding: CompVis/ldm-celebahq-256's VQ config has no scaling_factor (its latents are
unscaled); diffusers fills in 0.18215, which must not be divided out. An explicit factor is."""

import json
import sys
from pathlib import Path

import torch

import teachers


sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_dkdm_cli import tiny_latent_teacher


def test_vq_decode_divides_only_by_a_factor_the_checkpoint_sets(tmp_path):
    d = tiny_latent_teacher(tmp_path / "ldm")
    conf = json.loads((d / "vqvae" / "config.json").read_text())
    x = torch.randn(2, 3, 8, 8)
    for scale in (None, 0.5):  # None: a config without the key, like the 2022 CompVis upload
        conf.pop("scaling_factor", None)
        if scale is not None:
            conf["scaling_factor"] = scale
        (d / "vqvae" / "config.json").write_text(json.dumps(conf))
        t = teachers.load_teacher(str(d))
        assert t.vae.config.scaling_factor == (0.18215 if scale is None else scale)  # diffusers' default fills in
        with torch.no_grad():
            want = ((t.vae.decode(x / (scale or 1.0)).sample + 1) / 2).clamp(0, 1)
            assert torch.allclose(t.decode(x), want, atol=1e-6)


def test_kl_decode_divides_by_the_sd_factor(tiny_sd_dir):
    t = teachers.load_teacher(str(tiny_sd_dir))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        want = ((t.vae.decode(x / 0.18215).sample + 1) / 2).clamp(0, 1)
        assert t.vae.config.scaling_factor == 0.18215 and torch.allclose(t.decode(x), want, atol=1e-6)
