"""A one-step BOOT student as a diffusers pipeline: one network call from noise to an image.

BOOT (Gu et al., ICML 2024, arXiv:2306.05544) trains y_theta(eps, t, c, w) to follow the teacher's
Signal-ODE from pure noise eps; the sample is y_theta(eps, 0, c, w). Every exported student carries a
copy of this file, so that

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("runs/boot-digits/student", trust_remote_code=True)
    images = pipe(batch_size=10, class_labels=list(range(10)), generator=torch.manual_seed(0)).images

needs nothing of the repository. `boot_generate` is y_theta as boot.py trains it (`boot.y_theta`, one
function per kind of student there), written for a pipeline's config: a copy of those few lines that
tests/test_exports.py holds bitwise equal to them. How the network is called (all in model_index.json):
  * a teacher copy keeps its native timestep fixed at t_max (T - 1) and predicts eps there; the
    target time t and guidance weight w enter as `timestep_cond`, sinusoidal embeddings of t * 1000
    and w * 100 (cos first, time_cond_dim / 2 each; w = None embeds as 0). The image is
    y = (eps - sigma_tmax eps_hat) / alpha_tmax, the teacher's x0-hat at t_max at initialisation.
  * a copy of an unconditional UNet2DModel takes t (T - 1) through its class embedding instead.
  * a smaller fresh student (native_time = "target") takes t (T - 1) as its timestep and
    outputs the sample directly.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils.torch_utils import randn_tensor


def target_time_cond(t, w, dim: int):
    """BOOT student's extra input: sinusoidal embeddings of the target time t (and weight w).

    Fed to the student's zero-initialised `cond_proj` (diffusers' time_cond_proj_dim), so at init
    the student ignores it and equals the teacher at its fixed native timestep t_max.
    """
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    w = (
        torch.zeros_like(t)
        if w is None
        else torch.as_tensor(w, dtype=torch.float32, device=t.device).reshape(-1).expand_as(t)
    )
    half = dim // 2
    e_t = get_timestep_embedding(t * 1000, half, flip_sin_to_cos=True, downscale_freq_shift=0)
    e_w = get_timestep_embedding(w * 100, dim - half, flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat([e_t, e_w], dim=1)


def call_net(unet, x, timestep, cond: dict | None, **extra):
    """The student UNet's forward with a condition dict: `class_labels`, `encoder_hidden_states`, and IF-II's
    `lowres`, concatenated to x (teachers.call_net, here for the UNets a BOOT student can be)."""
    cond = cond or {}
    if "lowres" in cond:  # IF-II: the noised upscaled stage-I image is concatenated to x_t
        x = torch.cat([x, cond["lowres"].to(x.dtype)], dim=1)
    kwargs = {k: v for k, v in cond.items() if k in ("class_labels", "encoder_hidden_states")}
    if type(unet).__name__ == "UNet2DConditionModel":
        kwargs.setdefault("encoder_hidden_states", None)
    return unet(x, timestep, **kwargs, **extra, return_dict=False)[0]


def boot_generate(model, info, eps, t, cond=None, w=None):
    """y_theta(eps, t, c, w) of a BOOT student described by `info` (the pipeline's config)."""
    T = info["T"]
    extra = {}
    if info.get("time_cond_dim"):
        w = w if (w is not None or not info.get("guided")) else info.get("default_w")
        extra["timestep_cond"] = target_time_cond(t, w, info["time_cond_dim"]).to(eps)
    if info.get("time_input") == "class_labels":  # a UNet2DModel copy: t enters its zeroed class embedding
        cond = {**(cond or {}), "class_labels": t * (T - 1)}
    if info.get("native_time") == "target" or not (info.get("time_cond_dim") or info.get("time_input")):
        timestep = t * (T - 1)  # a fresh student of another architecture: the target time is its timestep
    else:
        timestep = torch.full_like(t, info["t_max"] * (T - 1))  # a teacher copy: fixed at t_max
    out = call_net(model, eps, timestep, cond, **extra)[:, : eps.shape[1]]
    if info["output"] == "eps":  # y = (eps - sigma_tmax eps_hat) / alpha_tmax: the teacher's x0 at t_max
        return (eps - info["sigma_tmax"] * out) / info["alpha_tmax"]
    return out


def to_images(x, vae=None, output_type="pil"):
    """Model space -> images: latents through the VAE / VQ decoder, then diffusers' postprocess (pixels
    from [-1, 1] to [0, 1], as pt, np or pil)."""
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"output_type must be pil, np, pt or latent, not {output_type!r}")
    if vae is not None and output_type != "latent":  # latents were multiplied by the config's scaling_factor
        x = vae.decode(x / (getattr(vae.config, "scaling_factor", None) or 1.0)).sample
    return x if output_type == "latent" else VaeImageProcessor().postprocess(x.float(), output_type)


class BootPipeline(DiffusionPipeline):
    """One-step BOOT student: `pipe(batch_size, generator, class_labels | prompt, guidance_scale)`.
    `num_inference_steps` is accepted for code written for few-step pipelines, and must be 1.

    guidance_scale is the CFG weight w (BOOT Eq. 9) the student was distilled at (or within, when
    trained on a range); the student conditions on it, it does not run two passes. The negative
    condition (the empty prompt, the null label) was fixed at distillation, so `negative_prompt`
    only accepts None or "". IF stage II: `image` is the stage-I output (a tensor in [-1, 1] or
    numpy NHWC in [0, 1]); it is upscaled bilinearly and noised at `noise_level` as IF does.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["text_encoder", "tokenizer", "vae", "image_noising_scheduler"]

    def __init__(
        self,
        unet,
        text_encoder=None,
        tokenizer=None,
        vae=None,
        image_noising_scheduler=None,
        T: int = 1000,
        t_max: float = 0.9,
        alpha_tmax: float = 1.0,
        sigma_tmax: float = 0.0,
        time_cond_dim: int | None = None,
        time_input: str | None = None,
        native_time: str | None = None,
        output: str = "eps",
        guided: bool = False,
        default_w: float | None = None,
        num_classes: int | None = None,
        sample_channels: int = 3,
        sample_size: int = 64,
        max_length: int = 77,
        use_mask: bool = False,
        noise_level: int = 250,
    ):
        super().__init__()
        self.register_modules(
            unet=unet,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vae=vae,
            image_noising_scheduler=image_noising_scheduler,
        )
        self.register_to_config(
            T=T,
            t_max=t_max,
            alpha_tmax=alpha_tmax,
            sigma_tmax=sigma_tmax,
            time_cond_dim=time_cond_dim,
            time_input=time_input,
            native_time=native_time,
            output=output,
            guided=guided,
            default_w=default_w,
            num_classes=num_classes,
            sample_channels=sample_channels,
            sample_size=sample_size,
            max_length=max_length,
            use_mask=use_mask,
            noise_level=noise_level,
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

    @torch.no_grad()
    def encode_prompt(self, prompt: list[str]):
        """Text embeddings as the teacher's pipeline makes them (padded to max_length)."""
        if self.text_encoder is None:
            raise ValueError("this student is not text-conditioned: pass no prompt")
        tok = self.tokenizer(
            list(prompt), padding="max_length", max_length=self.config.max_length, truncation=True, return_tensors="pt"
        )
        kw = {"attention_mask": tok.attention_mask.to(self.device)} if self.config.use_mask else {}
        return self.text_encoder(tok.input_ids.to(self.device), **kw)[0].to(self.unet.dtype)

    def lowres(self, image, noise_level: int, generator=None):
        """IF-II's extra input: the stage-I image upscaled bilinearly, noised at noise_level."""
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image).permute(0, 3, 1, 2) * 2 - 1
        image = image.to(self.device, torch.float32).clamp(-1, 1)
        size = self.config.sample_size
        up = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=True)
        ab = self.image_noising_scheduler.alphas_cumprod[noise_level].float()
        z = randn_tensor(up.shape, generator=generator, device=torch.device("cpu")).to(up)
        up = ab.sqrt() * up + (1 - ab).sqrt() * z
        level = torch.full((up.shape[0],), noise_level, dtype=torch.long, device=self.device)
        return {"lowres": up.to(self.unet.dtype), "class_labels": level}

    @torch.no_grad()
    def denoise(self, latents, cond: dict | None = None, guidance_scale: float | None = None):
        """y_theta(eps, 0, c, w) in model space: the one network call."""
        t = torch.zeros(latents.shape[0], device=latents.device)
        return boot_generate(self.unet, self.config, latents, t, cond, guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator=None,
        class_labels=None,
        prompt=None,
        negative_prompt=None,
        guidance_scale: float | None = None,
        image=None,
        noise_level: int | None = None,
        latents=None,
        prompt_embeds=None,
        output_type: str = "pil",
        return_dict: bool = True,
        num_inference_steps: int = 1,
    ):
        cfg, cond = self.config, {}
        if num_inference_steps != 1:
            raise ValueError(
                f"a BOOT student samples in one step: num_inference_steps must be 1, not {num_inference_steps}"
            )
        batch_size = batch_size if latents is None else latents.shape[0]
        if negative_prompt not in (None, "") and not (
            isinstance(negative_prompt, list) and set(negative_prompt) <= {""}
        ):
            raise ValueError(
                "a BOOT student learned guidance against the empty prompt: negative_prompt cannot change it"
            )
        if isinstance(prompt, str):
            prompt = [prompt] * batch_size
        if prompt is not None or prompt_embeds is not None:  # encode_prompt: an error without a text encoder
            cond["encoder_hidden_states"] = self.encode_prompt(prompt) if prompt_embeds is None else prompt_embeds
            batch_size = cond["encoder_hidden_states"].shape[0]
        elif self.text_encoder is not None:
            raise ValueError("this student is text-conditioned: pass prompt=")
        if cfg.num_classes:
            if class_labels is None:
                class_labels = [k % cfg.num_classes for k in range(batch_size)]
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
            labels = labels.expand(batch_size) if labels.numel() == 1 else labels  # a list sets the batch
            batch_size = labels.numel()
            if labels.min() < 0 or labels.max() >= cfg.num_classes:
                raise ValueError(f"class_labels must lie in 0..{cfg.num_classes - 1}")
            cond["class_labels"] = labels.to(self.device)
        elif class_labels is not None:
            raise ValueError("this student is not class-conditional: pass no class_labels")
        if latents is None:
            shape = (batch_size, cfg.sample_channels, cfg.sample_size, cfg.sample_size)
            latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"))
        latents = latents.to(self.device, self.unet.dtype)
        if self.image_noising_scheduler is not None:
            if image is None:
                raise ValueError("an IF stage-II student needs image= (the stage-I output)")
            cond.update(self.lowres(image, cfg.noise_level if noise_level is None else noise_level, generator))
        x = self.denoise(latents, cond or None, guidance_scale)
        images = to_images(x, self.vae, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
