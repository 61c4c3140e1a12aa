"""Shared offline fixtures: tiny SD-like and IF-like pipelines built from configs, saved to disk,
and loaded back through the same `load_teacher(path)` code path that a hub id takes."""

import math
import os
import sys
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import teachers  # noqa: E402


class CosineSchedule(teachers.Schedule):
    """The cosine schedule (Nichol & Dhariwal 2021) in closed form at every t, not interpolated between
    grid points: alpha_bar(t) = cos^2((t + s) / (1 + s) pi / 2) / cos^2(s / (1 + s) pi / 2). Exact
    derivatives of lambda_t for the derivation tests; its table is sampled on the same grid."""

    def __init__(self, T=1000, s=0.008):
        self.s = s
        super().__init__(self.alpha_bar_at(torch.linspace(0, 1, T, dtype=torch.float64)))

    def alpha_bar_at(self, t):
        return (
            torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2
            / math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2
        )

    def log_snr(self, t):
        ab = self.alpha_bar_at(torch.as_tensor(t, dtype=torch.float64)).clamp(1e-12, 1.0 - 1e-12)
        return torch.log(ab) - torch.log1p(-ab)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of more than ~20 s (deselect with -m 'not slow')")


def byte_tokenizer(path):
    """A CLIPTokenizer over the 256 byte-level characters (no merges): tokenizes any text offline."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def tiny_unet(in_channels, out_channels, size=8, cross=32, **kw):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=8,
        norm_num_groups=8,
        **kw,
    )


def tiny_ddpm_dir(path, learned=False):
    """A tiny unconditional 3x8x8 DDPMPipeline (the ddpm-cifar10 family: a UNet2DModel, fixed variance, linear
    betas; learned: 6 output channels and learned_range, the DKDM paper's teachers) with seeded random weights,
    saved to `path`."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=6 if learned else 3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    sched = DDPMScheduler(variance_type="learned_range" if learned else "fixed_small")  # linear betas, T = 1000
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """An SD-2.1-like pipeline: latent 4x8x8, KL-VAE (16x16 images), tiny CLIP text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-sd")
    tok = byte_tokenizer(d / "_tok")
    enc = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    )
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=enc,
        tokenizer=tok,
        unet=tiny_unet(4, 4),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(d / "pipe")
    return d / "pipe"


@pytest.fixture(scope="session")
def tiny_if_dirs(tmp_path_factory):
    """IF-like stage I (3x8x8 pixels, learned variance) and stage II (16x16, 6-channel input) + T5."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-if")
    tok = byte_tokenizer(d / "_tok")
    enc = T5EncoderModel(T5Config(vocab_size=514, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4))

    def sched():
        return DDPMScheduler(
            beta_schedule="squaredcos_cap_v2",
            variance_type="learned_range",
            thresholding=True,
            dynamic_thresholding_ratio=0.95,
            sample_max_value=1.5,
        )

    common = dict(
        tokenizer=tok,
        text_encoder=enc,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    IFPipeline(unet=tiny_unet(3, 6), scheduler=sched(), **common).save_pretrained(d / "stage1")
    noising = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    unet2 = tiny_unet(6, 6, size=16, class_embed_type="timestep")
    IFSuperResolutionPipeline(
        unet=unet2, scheduler=sched(), image_noising_scheduler=noising, **common
    ).save_pretrained(d / "stage2")
    return d / "stage1", d / "stage2"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A CLIP model (16 x 16 images, byte-level tokenizer) with random weights, saved as from_pretrained reads it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-clip")
    text = dict(
        vocab_size=514,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        image_size=16, patch_size=8, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(d)
    byte_tokenizer(d).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(d)
    return d
