"""Evaluate diffusion teachers and their distilled students: sample quality and speed.

Scores the samplers of BOOT (Gu et al. 2023, "BOOT: Data-free Distillation of Denoising Diffusion
Models with Bootstrapping", arXiv:2306.05544) and DKDM (Xiang et al. 2024, "DKDM: Data-Free
Knowledge Distillation for Diffusion Models with Any Architecture", arXiv:2409.03550) the way
both papers report them, on samples with per-image seeds (sample i uses seed --seed + i):

    FD          Frechet distance between Gaussian fits of features (Heusel et al. 2017, via
                clean-fid); "FID" when the features are Inception's
    KID         kernel distance (Binkowski et al. 2018, clean-fid's): unbiased in n, with its spread
                (std) over 100 subsets
    precision,  the k = 3 nearest-neighbour manifold estimate of Kynkaenniemi et al. 2019
    recall
    IS          Inception Score exp E KL(p(y|x) || p(y)) with the shipped digits classifier
    CLIP score  mean cosine similarity of CLIP image and prompt embeddings (text teachers; the
                convention of BOOT Sec. 4.1)
    images/s    generation throughput after one warm-up batch, and the speed-up over the
                teacher's slowest sampler timed in the same run

Every number names its feature space:
    digits      128-d penultimate layer of a small CNN trained on scikit-learn's real 8x8 digits,
                shipped in assets/digits-classifier (offline; the default for 1x8x8 teachers)
    pixels      the flattened image in [-1, 1] (the raw-pixel Frechet distance for 8x8)
    inception   clean-fid's Inception-V3 pool features, "clean" resize to 299 (downloads its
                weights on first use: online only; the default for other teachers)
FD has a strong sample-size bias: rows print n (samples) and n_ref (reference images), and only
rows with equal n compare. A fixed random split holds out n real images (the `real` row: the
floor the samplers are measured against) and keeps the rest as the reference of every row, so all
rows share n and n_ref.

    python evaluate.py --teacher digits --nfe 1 10 50            # CPU: markdown table
    python evaluate.py --teacher digits --nfe 1 10 50 --json eval.json --grid grid.png
    python evaluate.py --run runs/boot-digits                    # student 1-step vs DDIM-1/10/50
    python evaluate.py --teacher ddpm-cifar10 --ref DIR --n 10000 # Inception FID, 1 GPU, online
    python evaluate.py --teacher sd21 --prompts prompts.txt --n 1000 --nfe 50  # + CLIP score
    torchrun --standalone --nproc_per_node=8 evaluate.py --teacher digits --num-samples 1000  # same numbers
    python assets/train.py classifier       # re-train the digits feature classifier

--json writes the table's records; --grid a PNG whose rows share their initial noise (teacher at
each NFE, largest first, then the student). Teacher samples are kept in --cache (RUN/teacher-samples
with --run): a second evaluation samples only the student. Bad input: one line, exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cli
from cli import UserError, flag


CLASSIFIER_DIR = Path(__file__).resolve().parent / "assets" / "digits-classifier"
FEATURE_SPACES = ("digits", "pixels", "inception")
DIGITS_SHAPE = (1, 8, 8)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# --- Config ----------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    teacher: str | None = flag(None, "teacher to score: registry name, hub id or dir")
    run: str | None = flag(None, "run directory of a distilled student (has student/)")
    nfe: tuple[int, ...] = flag((1, 10, 50), "teacher sampler steps to score", nargs="+")
    sampler: str = flag("ddim", "teacher sampler", choices=["ddim", "ancestral"])
    dkdm_sampler: str = flag(
        "auto",
        "a DKDM run's student: sampler to score it with; auto: the one its run exported "
        "(IDDPM pixel, DDIM latent and digits)",
        choices=["auto", "ddim", "ancestral"],
    )
    n: int = flag(1000, "samples per sampler (seeds seed .. seed + n - 1)")
    seed: int = flag(0, "seed of the first sample")
    batch: int = flag(128, "generation batch per process (throughput is at this batch)")
    features: tuple[str, ...] | None = flag(
        None,
        "feature spaces: digits pixels inception; default digits pixels for 1x8x8 teachers, else inception",
        nargs="+",
        elem=str,
    )
    w: float | None = flag(None, "guidance weight (BOOT Eq. 9); default: the teacher's")
    ref: str | None = flag(None, "folder of real images (teachers without embedded data)")
    prompts: str | None = flag(None, "text teachers: prompt file; seed s gets line s mod L")
    clip_model: str = flag("openai/clip-vit-base-patch32", "CLIP for the CLIP score")
    json: str | None = flag(None, "write the records to this JSON file")
    grid: str | None = flag(None, "write a PNG grid (rows share the initial noise)")
    cache: str | None = flag(
        None,
        "folder of cached teacher samples, reused when teacher, sampler, NFE, n, seed and w "
        "match; default RUN/teacher-samples with --run, none with --teacher; off: never",
    )


def parser():
    p = cli.parser_from_dataclass(EvalConfig, __doc__)
    # torchrun's own flags (--nnodes, --node-rank, ...) make a bare --n ambiguous on its command line
    p.add_argument("--num-samples", dest="n", type=int, help="same as --n (use this one under torchrun)")
    return p


if __name__ == "__main__" and cli.answers_alone(sys.argv[1:]):  # --help: before torch is imported
    parser().parse_args(sys.argv[1:])

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from torchvision.utils import save_image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import runkit  # noqa: E402
import teachers  # noqa: E402
from pipelines import students  # noqa: E402
from runkit import print0  # noqa: E402


# --- The shipped feature extractor: a small CNN trained on the embedded real digits ----------------
class DigitsClassifier(nn.Module):
    """1x8x8 in [-1, 1] -> 10 logits; `features` is the penultimate layer (feature_dim)."""

    def __init__(self, channels=(32, 64, 64), feature_dim=128, num_classes=10):
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.SiLU(),  # 8x8
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.SiLU(),  # 4x4
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.SiLU(),  # 2x2
            nn.Flatten(),
            nn.Linear(c3 * 4, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)  # features: the body's output

    def forward(self, x):
        return self.head(self.body(x))


@functools.lru_cache(maxsize=2)
def load_classifier(path=CLASSIFIER_DIR):
    """(frozen DigitsClassifier, its config dict) from safetensors weights + config.json."""
    path = Path(path)
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise UserError(f"digits classifier missing in '{path}': run python assets/train.py classifier")
    cfg = json.loads((path / "config.json").read_text())
    model = DigitsClassifier(tuple(cfg["channels"]), cfg["feature_dim"], cfg["num_classes"])
    model.load_state_dict(safetensors.torch.load_file(path / "model.safetensors"))
    return model.eval().requires_grad_(False), cfg


# --- Feature spaces: images in [0, 1], N x C x H x W -> float64 features N x D ---------------------
def check_space(space: str, image_shape=None):
    """One-line error when a feature space is unknown or (given their shape) does not fit the images."""
    if space not in FEATURE_SPACES:
        raise UserError(f"unknown feature space '{space}' (known: {', '.join(FEATURE_SPACES)})")
    if image_shape is None:
        return
    if space == "digits" and tuple(image_shape) != DIGITS_SHAPE:
        raise UserError(f"feature space 'digits' needs 1x8x8 images, got {'x'.join(map(str, image_shape))}")
    if space == "inception" and image_shape[0] not in (1, 3):
        raise UserError(f"feature space 'inception' needs 1 or 3 channels, got {image_shape[0]}")


def default_spaces(image_shape):
    return ("digits", "pixels") if tuple(image_shape) == DIGITS_SHAPE else ("inception",)


def _inception_features(images, batch, device):
    """clean-fid's Inception-V3 features with its "clean" (PIL bicubic, float) resize to 299."""
    from cleanfid.features import build_feature_extractor
    from cleanfid.resize import build_resizer

    model = build_feature_extractor("clean", device=torch.device(device), use_dataparallel=False)
    resize = build_resizer("clean")
    out = []
    for chunk in tqdm(
        images.split(batch),
        desc="inception features",
        unit="batch",
        leave=False,
        disable=int(os.environ.get("RANK", 0)) != 0,
    ):
        u8 = (chunk * 255).round().clamp(0, 255).expand(-1, 3, -1, -1)  # as if saved to PNG
        hwc = u8.permute(0, 2, 3, 1).numpy()
        big = torch.stack([torch.from_numpy(resize(im)).permute(2, 0, 1) for im in hwc])
        with torch.no_grad():
            out.append(model(big.to(device)).cpu())
    return torch.cat(out)


@torch.no_grad()
def features(images, space: str, batch: int = 500, device="cpu") -> np.ndarray:
    """Features of images in [0, 1] in one of FEATURE_SPACES, as a float64 array N x D."""
    if images.ndim != 4 or len(images) == 0:
        raise UserError(f"expected a non-empty batch of images N x C x H x W, got shape {tuple(images.shape)}")
    check_space(space, images.shape[1:])
    images = images.float().cpu()
    if space == "pixels":
        f = (images * 2 - 1).flatten(1)
    elif space == "digits":
        model, _ = load_classifier()
        f = torch.cat([model.body(chunk * 2 - 1) for chunk in images.split(batch)])
    else:
        f = _inception_features(images, batch, device)
    return f.double().numpy()


@torch.no_grad()
def digits_probs(images, batch: int = 500) -> np.ndarray:
    """p(y | x) of the digits classifier for 1x8x8 images in [0, 1]."""
    model, _ = load_classifier()
    logits = torch.cat([model(chunk.float() * 2 - 1) for chunk in images.split(batch)])
    return logits.softmax(1).double().numpy()


# --- The field's protocols: COCO captions ------------------------------------------------------------------
def coco_captions(path) -> list[str]:
    """COCO captions, without torch: every caption of a captions_*2014.json (annotation order, whitespace
    collapsed to single spaces) or the lines of a text file with one caption per line (GigaGAN's
    captions.txt; blank lines skipped). One line naming the file when it holds none."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"captions file '{path}' does not exist")
    if p.suffix.lower() == ".json":
        annotations = cli.read_json(p, "COCO captions file").get("annotations")
        if not isinstance(annotations, list) or not all(isinstance(a, dict) and "caption" in a for a in annotations):
            raise UserError(f"COCO captions file '{path}' has no annotations[].caption list")
        captions = [" ".join(str(a["caption"]).split()) for a in annotations]
    else:
        captions = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    captions = [c for c in captions if c]
    if not captions:
        raise UserError(f"captions file '{path}' holds no captions")
    return captions


# --- Metrics on features ---------------------------------------------------------------------------
def _check_pair(a, b, what):
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise UserError(f"{what}: feature sets must be N x D with equal D, got {a.shape} and {b.shape}")


# --- Frechet distance (Heusel et al. 2017): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)
def frechet_distance_features(feats_a, feats_b) -> float:
    """Frechet distance between Gaussian fits (mean, unbiased covariance) of two feature sets."""
    _check_pair(feats_a, feats_b, "Frechet distance")
    if min(len(feats_a), len(feats_b)) < 2 or feats_a.shape[1] < 2:  # scipy's sqrtm breaks clean-fid at 1x1
        raise UserError("Frechet distance needs at least 2 samples per set and at least 2 feature dimensions")
    from cleanfid import fid
    from scipy.linalg import LinAlgWarning

    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    with warnings.catch_warnings():
        # scipy >= 1.16 deprecates sqrtm(disp=...), which clean-fid passes; pixel covariances are
        # singular (digits' corner pixels are always blank) and sqrtm warns, yet stays accurate.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(fid.frechet_distance(mu_a, s_a, mu_b, s_b))


# --- Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel
def kernel_distance(feats_a, feats_b, subsets: int = 100) -> tuple[float, float]:
    """(mean, std) of clean-fid's kernel distance over `subsets` random subsets of min(n_a, n_b, 1000)
    samples of each set (seeded). Unbiased in n, unlike FD; the std says how far one number holds."""
    _check_pair(feats_a, feats_b, "kernel distance")
    from cleanfid import fid

    state = np.random.get_state()
    np.random.seed(0)
    try:
        values = [fid.kernel_distance(feats_a, feats_b, num_subsets=1) for _ in range(subsets)]
    finally:
        np.random.set_state(state)
    return float(np.mean(values)), float(np.std(values))


# --- Improved precision and recall (Kynkaenniemi et al. 2019, Sec. 3): a set's manifold is the
# union of balls around its points, radius = distance to the k-th nearest neighbour in the set.
def _knn_radii(x, k):
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return d.kthvalue(k + 1, dim=1).values  # the 1st "neighbour" is the point itself


def _in_manifold(points, radii, queries, chunk=1024):
    """For each query: does it lie in some ball (point, radius) of the manifold?"""
    hits = [
        (torch.cdist(q, points, compute_mode="donot_use_mm_for_euclid_dist") <= radii).any(1)
        for q in queries.split(chunk)
    ]
    return torch.cat(hits)


def precision_recall(real_feats, fake_feats, k: int = 3) -> tuple[float, float]:
    """precision = share of fakes inside the real manifold; recall = share of reals inside the fake one."""
    _check_pair(real_feats, fake_feats, "precision/recall")
    if min(len(real_feats), len(fake_feats)) <= k:
        raise UserError(f"precision/recall with k = {k} needs more than {k} samples per set")
    r, f = torch.as_tensor(real_feats, dtype=torch.float64), torch.as_tensor(fake_feats, dtype=torch.float64)
    precision = _in_manifold(r, _knn_radii(r, k), f).double().mean().item()
    recall = _in_manifold(f, _knn_radii(f, k), r).double().mean().item()
    return precision, recall


# --- Inception Score (Salimans et al. 2016) with any classifier's p(y|x)
def inception_score(probs) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    p_y = probs.mean(0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(p_y + 1e-12))).sum(1)
    return float(np.exp(kl.mean()))


# --- CLIP score (Radford et al. 2021; BOOT Sec. 4.1 reports the mean cosine similarity)
@torch.no_grad()
def clip_score(images, prompts, model_dir="openai/clip-vit-base-patch32", batch=64, device="cpu") -> float:
    """Mean cosine similarity between CLIP's embeddings of images in [0, 1] and of their prompts
    (CLIPProcessor's own resize, crop and normalisation)."""
    if len(images) != len(prompts):
        raise UserError(f"CLIP score: {len(images)} images but {len(prompts)} prompts")
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(model_dir).to(device).eval(), CLIPProcessor.from_pretrained(model_dir)
    scores = []
    for i in range(0, len(images), batch):
        rgb = images[i : i + batch].float().cpu().expand(-1, 3, -1, -1)
        inputs = processor(
            text=list(prompts[i : i + batch]),
            images=list(rgb),
            do_rescale=False,
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        scores.append((out.image_embeds * out.text_embeds).sum(-1).cpu())  # both normalised by CLIPModel
    return torch.cat(scores).mean().item()


# --- Generation with per-image seeds (identical on 1 or N processes), timed after a warm-up --------
def condition(teacher, seeds, prompts=None):
    """cond for these seeds: label seed mod num_classes, prompt seed mod len(prompts), or None."""
    if teacher.num_classes:
        return teacher.label_cond(torch.tensor([s % teacher.num_classes for s in seeds]))
    if prompts:
        return teacher.encode_prompts([prompts[s % len(prompts)] for s in seeds])
    return None


def teacher_sampler(teacher, sampler="ddim", nfe=50, w=None, prompts=None):
    """seeds -> images in [0, 1] (CPU) from the teacher's DDIM or ancestral sampler at `nfe` steps."""

    def sample(seeds):
        noise = teachers.seeded_noise(seeds, teacher.sample_shape, teacher.device)
        cond = condition(teacher, seeds, prompts)
        if sampler == "ddim":
            x0 = teachers.ddim(teacher, noise, nfe, cond, w)
        else:  # the step noise of one batch comes from its first seed: reproducible at equal --batch
            x0 = teachers.ancestral(
                teacher, noise, nfe, cond, w, generator=torch.Generator(teacher.device).manual_seed(seeds[0])
            )
        return teacher.decode(x0).float().cpu()

    return sample


def student_sampler(student, teacher, w=None, prompts=None):
    """seeds -> images in [0, 1] (CPU) from a distilled generator, from the same noise and cond."""

    @torch.no_grad()
    def sample(seeds):
        noise = teachers.seeded_noise(seeds, teacher.sample_shape, teacher.device)
        extra = {}
        if getattr(student, "info", {}).get("sampler") == "ancestral":  # its step noise, as teacher_sampler's
            extra["generator"] = torch.Generator(teacher.device).manual_seed(seeds[0])
        return teacher.decode(student.generate(noise, condition(teacher, seeds, prompts), w=w, **extra)).float().cpu()

    return sample


def generate(sample, seeds, batch, rank=0, world=1, warmup=1, desc=None):
    """(images for all seeds in order, images/s). Rank r makes seeds[r::world]; results gathered.
    With `desc`, rank 0 shows a progress bar (images/s of this process)."""
    seeds = list(seeds)
    mine = seeds[rank::world]
    for _ in range(warmup if mine else 0):
        sample(mine[:batch])
    bar = tqdm(total=len(mine), desc=desc, unit="img", leave=False, disable=desc is None or rank != 0)
    start = time.perf_counter()
    chunks = []
    for i in range(0, len(mine), batch):
        chunks.append(sample(mine[i : i + batch]))
        bar.update(len(chunks[-1]))
    seconds = time.perf_counter() - start
    bar.close()
    local = torch.cat(chunks) if chunks else None
    if world == 1:
        return local, len(seeds) / seconds
    parts = runkit.gather((local, seconds), world)
    first = next(p[0] for p in parts if p[0] is not None)
    images = torch.empty(len(seeds), *first.shape[1:], dtype=first.dtype)
    for r, (part, _) in enumerate(parts):
        if part is not None:
            images[r::world] = part
    return images, len(seeds) / max(s for _, s in parts)


# --- Records and the table -------------------------------------------------------------------------
class TeacherCache:
    """Teacher samples kept between runs: `evaluate --run` scores a new student against the same
    teacher rows without sampling the teacher again. One safetensors file per (teacher, sampler,
    NFE, n, seed); its key also holds w, the prompts, a fingerprint of the teacher's weights and,
    for the ancestral sampler (whose step noise follows the batches), the batch and process count."""

    def __init__(self, cfg, teacher, w, prompts, world):
        where = cfg.cache if cfg.cache is not None else (str(Path(cfg.run) / "teacher-samples") if cfg.run else None)
        self.dir = None if where in (None, "off") else Path(where)
        self.cfg, self.teacher, self.world, self.weights = cfg, teacher, world, None
        self.base = {"teacher": teacher.name, "n": cfg.n, "seed": cfg.seed, "w": w, "prompts": prompts}

    def entry(self, sampler, nfe):
        """(file, key) of these samples. The key holds a digest of the teacher's weights (shapes and sums):
        a retrained teacher misses the cache."""
        if self.weights is None:
            parts = [(k, tuple(v.shape), float(v.double().sum())) for k, v in self.teacher.state_dict().items()]
            self.weights = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
        c, extra = self.cfg, {"batch": self.cfg.batch, "world": self.world} if sampler == "ancestral" else {}
        key = json.dumps(
            {**self.base, "sampler": sampler, "nfe": nfe, "weights": self.weights, **extra}, sort_keys=True
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        name = f"{Path(self.teacher.name).name}-{sampler}{nfe}-n{c.n}-seed{c.seed}-{digest}"
        return self.dir / f"{name}.safetensors", key

    def load(self, sampler, nfe):
        """(images, images/s when they were made), or None (no cache, or no file for this key)."""
        if self.dir is None or not self.entry(sampler, nfe)[0].is_file():
            return None
        path, key = self.entry(sampler, nfe)
        with safe_open(str(path), framework="pt") as f:
            if f.metadata().get("key") != key:
                return None
            return f.get_tensor("images"), float(f.metadata()["images_per_s"])

    def save(self, sampler, nfe, images, ips):
        if self.dir is not None:
            path, key = self.entry(sampler, nfe)
            meta = {"key": key, "images_per_s": repr(float(ips))}
            runkit.atomic_write(path, lambda f: f.write(safetensors.torch.save({"images": images.contiguous()}, meta)))


def sig3(x) -> str:
    """A positive number with 3 significant figures and no exponent: 0.0123, 4.56, 789, 12300."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    v = float(f"{x:.3g}")
    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"


def evaluate_samples(images, ref_feats: dict, row: dict, prompts=None, clip_model=None, device="cpu") -> list[dict]:
    """One record per feature space in ref_feats (space -> reference features N_ref x D); `row` names
    what made the images: name, sampler, nfe, images_per_s.

    IS (digits classifier) goes with the digits record; the CLIP score (with prompts) with all.
    """
    clip = clip_score(images, prompts, clip_model, device=device) if prompts else None
    records = []
    for space, ref in ref_feats.items():
        f = features(images, space, device=device)
        (precision, recall), (kid, kid_std) = precision_recall(ref, f), kernel_distance(ref, f)
        records.append(
            {
                "name": row["name"],
                "sampler": row.get("sampler"),
                "nfe": row.get("nfe"),
                "features": space,
                "fid": frechet_distance_features(f, ref),
                "kid": kid,
                "kid_std": kid_std,
                "precision": precision,
                "recall": recall,
                "images_per_s": row.get("images_per_s"),
                "n": len(images),
                "n_ref": len(ref),
                "inception_score": inception_score(digits_probs(images)) if space == "digits" else None,
                "clip_score": clip,
            }
        )
    return records


class Probe:
    """--eval-every's proxy: FD and KID of n samples of a training student against n other samples of the
    teacher's own DDIM-50 (the same conditions, other noise: paired samples would bias KID), in the digits
    classifier's features (1x8x8) or in pixels at 16 x 16 at most. A proxy to pick a checkpoint by, not
    the evaluation: small n, the teacher as the reference, its own score at this n (the floor) in the
    label every record carries."""

    def __init__(self, teacher, cond, n=256, w=None):
        self.noise, self.cond = teachers.seeded_noise(range(n), teacher.sample_shape, teacher.device), cond
        ddim50 = lambda noise, cond: teacher.decode(teachers.ddim(teacher, noise, 50, cond, w))  # noqa: E731
        images = ddim50(teachers.seeded_noise(range(n, 2 * n), teacher.sample_shape, teacher.device), cond)
        self.space = "digits" if tuple(images.shape[1:]) == DIGITS_SHAPE else "pixels"
        self.ref, self.about = self.features(images), ""
        floor = self(ddim50)
        self.about = (
            f"proxy: n={n} against {n} other samples of the teacher's DDIM-50, {self.space} features "
            f"(the teacher's own DDIM-50: FD {floor['proxy_fd']:.3g}, KID {floor['proxy_kid']:.2g})"
        )

    def features(self, images):
        if self.space == "pixels" and images.shape[-1] > 16:  # a covariance the size of the image is out of reach
            images = F.adaptive_avg_pool2d(images.float(), 16)
        return features(images.float().cpu(), self.space)

    @torch.no_grad()
    def __call__(self, sample) -> dict:
        """sample(noise, cond) -> images in [0, 1]: {"proxy_fd", "proxy_kid", "proxy"} for metrics.jsonl."""
        f = self.features(sample(self.noise, self.cond))
        return {
            "proxy_fd": frechet_distance_features(f, self.ref),
            "proxy_kid": kernel_distance(f, self.ref, 1)[0],
            "proxy": self.about,
        }


def proxy(every: int, teacher, cond_of, w, meter, sample, n=256):
    """--eval-every of boot.py / dkdm.py: step -> the Probe's fields every `every`-th step, else {} (timed as
    the meter's "eval"); None where there is no proxy (every = 0, or not rank 0). cond_of(n): the conditions.
    The Probe (2n teacher samples) is built at the first step that needs it: a shorter run pays nothing."""
    if not every or not runkit.is_rank0():
        return None
    probe = functools.cache(lambda: Probe(teacher, cond_of(n), n, w))

    def fields(step):
        if step % every:
            return {}
        with meter.time("eval"):
            return probe()(sample)

    return fields


def add_speedups(records):
    """speedup = images/s over that of the slowest (largest-NFE) teacher row timed in this run."""
    timed = [r for r in records if r["images_per_s"] and r["sampler"] != "student"]
    if not timed:
        return None
    base = max(timed, key=lambda r: r["nfe"])
    for r in records:
        r["speedup"] = r["images_per_s"] / base["images_per_s"] if r["images_per_s"] else None
    return f"{base['sampler'].upper()}-{base['nfe']}"


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def format_table(records, baseline=None) -> str:
    """Markdown, one table per feature space; every header names the space of its numbers."""
    out = []
    for space in dict.fromkeys(r["features"] for r in records):
        rows = [r for r in records if r["features"] == space]
        has_is, has_clip = any(r["inception_score"] for r in rows), any(r["clip_score"] for r in rows)
        head = [
            "name",
            "sampler",
            "NFE",
            "n vs n_ref",
            f"FD ({space})",
            f"KID ({space})",
            f"precision ({space}, k=3)",
            f"recall ({space}, k=3)",
        ]
        head += ["IS (digits classifier)"] * has_is + ["CLIP score (CLIP cosine)"] * has_clip
        head += ["images/s", f"speed-up vs {baseline}" if baseline else "speed-up"]
        lines = [f"features: {space_about(space)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [
                r["name"],
                r["sampler"] or "–",
                _fmt(r["nfe"], "d"),
                f"{r['n']} vs {r['n_ref']}",
                _fmt(r["fid"], ".3f"),
                "–" if r.get("kid") is None else f"{r['kid']:.3g} ± {r['kid_std']:.2g}",
                _fmt(r["precision"], ".3f"),
                _fmt(r["recall"], ".3f"),
            ]
            cells += [_fmt(r["inception_score"], ".2f")] * has_is + [_fmt(r["clip_score"], ".4f")] * has_clip
            speedup = r.get("speedup")
            cells += [sig3(r["images_per_s"]), "–" if speedup is None else f"{speedup:.1f}×"]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def space_about(space: str) -> str:
    if space == "digits":
        cfg = load_classifier()[1]
        return (
            f"digits = {cfg['feature_dim']}-d penultimate layer of assets/digits-classifier "
            f"(held-out accuracy {100 * cfg['held_out_accuracy']:.1f} %)"
        )
    return {
        "pixels": "pixels = flattened images in [-1, 1]",
        "inception": "inception = clean-fid Inception-V3 pool features (FID), clean resize to 299",
    }[space]


def save_grid(rows, path, upscale_to=32, columns=16):
    """PNG grid from [(label, images)], one row per sampler; columns share their initial noise."""
    cols = min(columns, min(len(images) for _, images in rows))
    x = torch.cat([images[:cols] for _, images in rows])
    if x.shape[-1] < upscale_to:
        x = F.interpolate(x, scale_factor=upscale_to // x.shape[-1], mode="nearest")
    save_image(x, path, nrow=cols, padding=2, pad_value=1.0)


# --- Inputs: real images, students -----------------------------------------------------------------
def image_files(path) -> list:
    """The images of a folder, sorted; one line when there are none."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"image folder '{path}' does not exist")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UserError(f"image folder '{path}' is empty (no {'/'.join(IMAGE_EXTS)} files)")
    return files


def load_image_folder(path) -> torch.Tensor:
    """All images of a folder (sorted) as N x C x H x W in [0, 1]; one size, gray or RGB."""
    files, arrays = image_files(path), []
    for f in files:
        with Image.open(f) as im:
            if not arrays:
                mode, size = ("L" if im.mode in ("1", "L", "I;16") else "RGB"), im.size  # as the first image
            if im.size != size:
                raise UserError(
                    f"images in '{path}' differ in size: {files[0].name} is {size[0]}x{size[1]}, "
                    f"{f.name} is {im.size[0]}x{im.size[1]}"
                )
            arrays.append(np.asarray(im.convert(mode), dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(arrays))
    return x[:, None] if mode == "L" else x.permute(0, 3, 1, 2)


def real_images(teacher, ref=None):
    """Real images in [0, 1]: --ref if given, else the embedded digits for 1x8x8 teachers."""
    if ref:
        return load_image_folder(ref)
    if teacher.sample_shape == DIGITS_SHAPE:
        x, _ = teachers.load_digits_tensor()
        return (x + 1) / 2
    raise UserError(f"no real images for teacher '{teacher.name}': pass --ref DIR (a folder of real images)")


def split_real(n_real, n_held, seed=0):
    """A fixed random split of n_real real images: n_held held out (the `real` row) and the rest,
    the reference every row is scored against. Holding out as many real images as each sampler
    draws samples gives every row the same n and n_ref, so FD's sample-size bias cancels."""
    if n_real - n_held < max(n_held // 2, 4):
        raise UserError(
            f"--n {n_held} leaves too few of the {n_real} real images for the reference split "
            f"(use --n {2 * n_real // 3} or less)"
        )
    perm = torch.randperm(n_real, generator=torch.Generator().manual_seed(seed))
    return perm[:n_held], perm[n_held:]


# --- main ------------------------------------------------------------------------------------------
def check_config(cfg: EvalConfig):
    """Argument errors that need no model: raised before any work."""
    cli.check_finite_fields(cfg)
    if (cfg.teacher is None) == (cfg.run is None):
        raise UserError("give exactly one of --teacher NAME or --run DIR")
    if cfg.n < 4:
        raise UserError("--n must be at least 4 (precision/recall uses k = 3 neighbours)")
    if cfg.batch < 1 or any(k < 1 for k in cfg.nfe):
        raise UserError("--batch and every --nfe must be at least 1")
    for space in cfg.features or ():
        check_space(space)
    for name, out in (("--json", cfg.json), ("--grid", cfg.grid)):
        if out:
            cli.check_output_file(out, name)
    if cfg.prompts:
        cli.load_prompts(cfg.prompts)
    if cfg.ref:
        check_image_folder(cfg.ref)
    if cfg.run:
        check_run(cfg.run, cfg.dkdm_sampler)
    else:
        teachers.check_teacher_files(cfg.teacher)
        if cfg.dkdm_sampler != "auto":
            raise UserError("--dkdm-sampler applies to the student of a DKDM run (--run DIR)")


def check_run(run, dkdm_sampler="auto"):
    """A finished run directory: its student description parses, its weights and its teacher's are whole."""
    info = students.check_finished_run(run, check_files=False)
    if dkdm_sampler != "auto" and info.get("method") != "dkdm":
        raise UserError(f"--dkdm-sampler applies to a DKDM run; '{run}' holds a one-step BOOT student")
    cli.check_model_dir(Path(run) / "student", "student")  # after: the sampler's misuse is named first
    teachers.check_teacher_files(info.get("teacher", ""), info.get("model_id"), info.get("stage", 1))


def check_image_folder(path):
    """Every image of --ref opens and decodes (one line naming the first file that does not)."""
    for f in image_files(path):
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError
            raise UserError(f"--ref: '{f}' is not a readable image ({type(e).__name__})") from None


def dry_run_view(cfg: EvalConfig) -> dict:
    """The config with the defaults that need no model filled in: feature spaces of the registry's
    teachers (or of a run's teacher) and the cache folder."""
    shown = dataclasses.asdict(cfg)
    name = students.check_finished_run(cfg.run)["teacher"] if cfg.run else cfg.teacher
    if cfg.features is None and name in teachers.REGISTRY:
        shown["features"] = list(default_spaces(DIGITS_SHAPE)) if name in ("digits", "gmm") else ["inception"]
    if cfg.cache is None:
        shown["cache"] = str(Path(cfg.run) / "teacher-samples") if cfg.run else "off"
    return shown


def run_evaluation(cfg: EvalConfig, rank=0, world=1, device="cpu"):
    """(records, grid rows, speed-up baseline) for a teacher or a run; records on rank 0 only."""
    student = students.ExportedStudent(cfg.run, device) if cfg.run else None
    if student and cfg.dkdm_sampler != "auto":
        student.info["sampler"] = cfg.dkdm_sampler  # ExportedStudent.generate reads it
    if student:
        teacher = teachers.load_teacher(student.teacher_name, device=device, model_id=student.info.get("model_id"))
    else:
        teacher = teachers.load_teacher(cfg.teacher, device=device)
    prompts = cli.load_prompts(cfg.prompts) if cfg.prompts else None
    if hasattr(teacher, "encode_prompts") != bool(prompts):
        raise UserError(
            f"teacher '{teacher.name}' is text-conditioned: pass --prompts FILE"
            if prompts is None
            else f"teacher '{teacher.name}' takes no prompts (drop --prompts)"
        )
    for k in cfg.nfe:
        teachers.trailing_steps(teacher.schedule.T, k)
    with torch.no_grad():
        image_shape = tuple(teacher.decode(torch.zeros(1, *teacher.sample_shape, device=teacher.device)).shape[1:])
    spaces = tuple(cfg.features or default_spaces(image_shape))
    for space in spaces:
        check_space(space, image_shape)
    real = real_images(teacher, cfg.ref)
    if real.shape[1:] != image_shape:
        raise UserError(
            f"image sizes differ: samples are {'x'.join(map(str, image_shape))}, "
            f"real images {'x'.join(map(str, real.shape[1:]))}"
        )
    if "digits" in spaces:
        load_classifier()
    w = cfg.w if cfg.w is not None else teacher.default_guidance
    if world > 1:  # every check above ran on every process before the process group is made
        runkit.setup()

    records, rows = [], []
    held, refh = split_real(len(real), cfg.n)
    if rank == 0:  # the `real` row: n held-out real images; every row is scored against the rest
        ref_feats = {s: features(real[refh], s, device=device) for s in spaces}
        records += evaluate_samples(real[held], ref_feats, {"name": "real"}, device=device)
    runs = [
        (teacher.name, cfg.sampler, k, teacher_sampler(teacher, cfg.sampler, k, w, prompts))
        for k in sorted(cfg.nfe, reverse=True)
    ]
    if student:
        runs.append((Path(cfg.run).name, "student", student.nfe, student_sampler(student, teacher, w, prompts)))
    seeds = range(cfg.seed, cfg.seed + cfg.n)
    cache = TeacherCache(cfg, teacher, w, prompts, world)
    for name, sampler, nfe, sample in runs:
        hit = cache.load(sampler, nfe) if sampler != "student" else None
        if hit is not None:
            images, ips = hit
            print0(
                f"{name} {sampler}-{nfe}: {cfg.n} samples from {cache.entry(sampler, nfe)[0]} "
                f"({sig3(ips)} images/s when they were made)"
            )
        else:
            images, ips = generate(sample, seeds, cfg.batch, rank, world, desc=f"{name} {sampler}-{nfe}")
            print0(
                f"{name} {sampler}-{nfe}: {cfg.n} samples, batch {cfg.batch} x {world} process(es), "
                f"{sig3(ips)} images/s"
            )
            if sampler != "student" and rank == 0:
                cache.save(sampler, nfe, images, ips)
        if rank == 0:
            ps = [prompts[s % len(prompts)] for s in seeds] if prompts else None
            row = {"name": name, "sampler": sampler, "nfe": nfe, "images_per_s": ips}
            records += evaluate_samples(images, ref_feats, row, ps, cfg.clip_model, device)
            rows.append((f"{sampler}-{nfe}", images))
    return records, rows, add_speedups(records)


def main(argv=None):
    return cli.main_of(command, argv, prefix="evaluate.py: ")


def command(argv):
    args = vars(parser().parse_args(argv))
    dry_run = args.pop("dry_run")
    cfg = EvalConfig(**args)
    check_config(cfg)
    if dry_run:
        return print(json.dumps(dry_run_view(cfg), indent=2))
    if cfg.teacher:
        teachers.check_hub(cfg.teacher)  # before any process group or download
    rank, world, device = runkit.env()
    try:
        records, rows, baseline = run_evaluation(cfg, rank, world, device)
    finally:
        runkit.teardown()
    if rank == 0:
        n_real = records[0]["n"] + records[0]["n_ref"]
        print(
            f"\n{cfg.n} samples per sampler (seeds {cfg.seed}..{cfg.seed + cfg.n - 1}) against a fixed reference "
            f"split of {records[0]['n_ref']} of the {n_real} real images; `real` = the other {cfg.n} real images "
            f"(equal n in every row: FD is biased by n).\n"
        )
        print(format_table(records, baseline))
        if cfg.json:
            Path(cfg.json).write_text(json.dumps(records, indent=2) + "\n")
            print(f"\nrecords -> {cfg.json}")
        if cfg.grid:
            save_grid(rows, cfg.grid)
            print(f"grid (rows, top to bottom: {', '.join(label for label, _ in rows)}) -> {cfg.grid}")


if __name__ == "__main__":
    sys.exit(main())
