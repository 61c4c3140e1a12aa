"""DDIM for the embedded digits teacher and DKDM students, as a diffusers pipeline.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("runs/dkdm-digits-cnn-dynamic/student", trust_remote_code=True)
    images = pipe(batch_size=10, class_labels=list(range(10)), num_inference_steps=50).images

The sampler is the repository's DDIM (`teachers.ddim`, BOOT Eq. 1), written for diffusers'
`DDIMScheduler` whose config says how: `timestep_spacing="trailing"` (the first step at T - 1),
`set_alpha_to_one=True` (the last step returns x0-hat), `clip_sample=True` (x0-hat clipped to
[-1, 1]), and eps recomputed from the clipped x0-hat (`DDIMScheduler.step(...,
use_clipped_model_output=True)`, eta = 0). Each step goes to the next entry of the trailing grid,
which is what `DDIMScheduler.step` does when num_inference_steps divides T (10, 50, ...).

The denoiser is any diffusers UNet2DModel, UNet2DConditionModel without cross-attention, or
DiTTransformer2DModel predicting eps on its first C output channels (a learned variance, when
`variance_type` says so, sits on the next C and is not used by DDIM). Class-conditional models
take `class_labels=`; label `num_classes` is the null label of classifier-free guidance,
f_n + w (f_c - f_n) with w = `guidance_scale` (w = 1: the plain conditional model, one pass).
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor


def to_images(x, vae=None, output_type="pil"):
    """Model space -> images: latents through the VAE / VQ decoder, then diffusers' postprocess (pixels
    from [-1, 1] to [0, 1], as pt, np or pil)."""
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type must be pil, np, pt or latent, not {output_type!r}")
    if vae is not None and output_type != "latent":  # latents were multiplied by the config's scaling_factor
        x = vae.decode(x / (getattr(vae.config, "scaling_factor", None) or 1.0)).sample
    return x if output_type == "latent" else VaeImageProcessor().postprocess(x.float(), output_type)


class TrailingDDIMPipeline(DiffusionPipeline):
    """`pipe(batch_size, generator, class_labels, guidance_scale, num_inference_steps)` -> .images"""

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet,
        scheduler,
        vae=None,
        num_classes: int | None = None,
        variance_type: str = "fixed_small",
        default_guidance: float | None = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(
            num_classes=num_classes, variance_type=variance_type, default_guidance=default_guidance
        )

    def save_config(self, save_directory, **kwargs):
        """model_index.json names this file (the list-form `_class_name`) and the file is copied beside
        it, so that a saved or pushed copy loads again with trust_remote_code=True, without this repository."""
        super().save_config(save_directory)
        d, source = Path(save_directory), Path(inspect.getfile(type(self)))
        if not (d / source.name).exists() or not (d / source.name).samefile(source):
            shutil.copyfile(source, d / source.name)
        index = json.loads((d / "model_index.json").read_text())
        index["_class_name"] = [source.stem, type(self).__name__]
        (d / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def eps(self, x, t, labels=None, w=None):
        """The (guided) eps prediction at integer timestep t: the first C output channels."""
        C, B = x.shape[1], x.shape[0]
        kwargs = {}
        if type(self.unet).__name__ == "UNet2DConditionModel":
            kwargs["encoder_hidden_states"] = None
        if labels is None and type(self.unet).__name__ == "DiTTransformer2DModel":
            labels = torch.zeros(B, dtype=torch.long, device=x.device)  # DiT always embeds a label
        timestep = torch.as_tensor(t, device=x.device).expand(B)
        if labels is None or w is None or w == 1.0 or not self.config.num_classes:
            extra = {} if labels is None else {"class_labels": labels}
            return self.unet(x, timestep, **kwargs, **extra, return_dict=False)[0][:, :C]
        null = torch.full_like(labels, self.config.num_classes)
        out = self.unet(
            torch.cat([x, x]),
            torch.cat([timestep, timestep]),
            **kwargs,
            class_labels=torch.cat([labels, null]),
            return_dict=False,
        )[0][:, :C]
        out_c, out_n = out.chunk(2)
        return out_n + w * (out_c - out_n)

    @torch.no_grad()
    def denoise(self, latents, class_labels=None, guidance_scale=None, num_inference_steps: int = 50):
        """DDIM from x_{T-1} = latents to x0 in model space (the docstring's semantics)."""
        sch = self.scheduler
        if sch.config.prediction_type != "epsilon":
            raise ValueError(f"this pipeline samples eps-prediction models, not {sch.config.prediction_type}")
        sch.set_timesteps(num_inference_steps)
        ts = sch.timesteps.tolist()
        ab = sch.alphas_cumprod.to(latents.device, torch.float32)
        x = latents
        for k, t in enumerate(ts):
            eps = self.eps(x, t, class_labels, guidance_scale)
            a_t = ab[t]
            a_s = ab[ts[k + 1]] if k + 1 < len(ts) else torch.as_tensor(sch.final_alpha_cumprod, dtype=torch.float32)
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if sch.config.clip_sample:
                x0 = x0.clamp(-sch.config.clip_sample_range, sch.config.clip_sample_range)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # use_clipped_model_output=True
            x = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
        return x

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator=None,
        class_labels=None,
        guidance_scale: float | None = None,
        num_inference_steps: int = 50,
        latents=None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        K = self.config.num_classes
        labels = None
        batch_size = batch_size if latents is None else latents.shape[0]
        if K:
            if class_labels is None:
                class_labels = [k % K for k in range(batch_size)]
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            labels = labels.expand(batch_size) if labels.numel() == 1 else labels  # a list sets the batch
            batch_size = labels.numel()
            if labels.min() < 0 or labels.max() >= K:
                raise ValueError(f"class_labels must lie in 0..{K - 1}")
            labels = labels.to(self.device)
        elif class_labels is not None:
            raise ValueError("this model is not class-conditional: pass no class_labels")
        if not 1 <= num_inference_steps <= self.scheduler.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps must lie in 1..{self.scheduler.config.num_train_timesteps}")
        if latents is None:
            c = self.unet.config
            size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
            latents = randn_tensor(
                (batch_size, c.in_channels, size, size), generator=generator, device=torch.device("cpu")
            )
        latents = latents.to(self.device, self.unet.dtype)
        w = self.config.default_guidance if guidance_scale is None else guidance_scale
        x = self.denoise(latents, labels, w, num_inference_steps)
        images = to_images(x, self.vae, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
