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
and its protocol (--protocol, written into every record with its reference, n, resize, feature
network, clean-fid mode and the caption file's sha256):
    held-out      a fixed random split holds out n real images (the `real` row: the floor the
                  samplers are measured against) and keeps the rest as the reference of every row,
                  so all rows share n and n_ref (FD has a strong sample-size bias: only equal n compare)
    cifar10-50k   FID and KID of 50,000 samples against every image of --ref (CIFAR-10's training
                  set), Inception in clean-fid's legacy_tensorflow mode: the TF-Inception numbers
                  EDM, SiD and DKDM report
    coco2014-30k  GigaGAN's evaluation (SiD-LSG, DMD2): 30,000 captions (--captions: captions.txt,
                  or a fixed draw from captions_val2014.json), samples and --ref (val2014) centre-
                  cropped and Lanczos-resized to 256 px, clean-fid FID and KID, and the CLIP score
                  of openai/clip-vit-base-patch32 with "A photo depicts " before each caption
The two field protocols compute the reference statistics once from --ref and cache them in
--ref-stats (clean-fid's custom-statistics files); they report no precision / recall.

    python evaluate.py --teacher digits --nfe 1 10 50            # CPU: markdown table
    python evaluate.py --teacher digits --nfe 1 10 50 --json eval.json --grid grid.png
    python evaluate.py --run runs/boot-digits                    # student 1-step vs DDIM-1/10/50
    python evaluate.py --teacher ddpm-cifar10 --ref DIR --n 10000 # Inception FID, 1 GPU, online
    python evaluate.py --teacher sd21 --prompts prompts.txt --n 1000 --nfe 50  # + CLIP score
    torchrun --standalone --nproc_per_node=8 evaluate.py --teacher digits --num-samples 1000  # same numbers
    torchrun --standalone --nproc_per_node=8 evaluate.py --run runs/dkdm-ddpm-cifar10-cnn-dynamic \\
        --protocol cifar10-50k --ref cifar10-train/ --nfe 50 --dkdm-sampler ancestral --dkdm-steps 50
    torchrun --standalone --nproc_per_node=8 evaluate.py --run runs/boot-sd21 --protocol coco2014-30k \\
        --ref val2014/ --captions captions.txt --nfe 50 --save-images samples/
    python assets/train.py classifier       # re-train the digits feature classifier

--json writes the table's records; --grid a PNG whose rows share their initial noise (teacher at
each NFE, largest first, then the student); --save-images one PNG per sample (DIR/<sampler>-<NFE>/
<seed>[-caption<index>].png) for outside tools. Each process turns its own samples into features
batch by batch and only features are gathered: memory follows --batch, not n. The features of
teacher rows are kept in --cache (RUN/teacher-samples with --run): a second evaluation samples only
the student. Missing Inception or CLIP weights offline, like any bad input: one line, exit code 2,
before any sampling.
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
GRID_COLUMNS = 16  # --grid: the first 16 seeds of each row (the only images an evaluation keeps)
# where clean-fid's features.py looks for (and downloads) its Inception weights
INCEPTION_FILE = Path("." if sys.platform == "win32" else "/tmp") / "inception-2015-12-05.pt"
CAPTION_SEED = 0  # coco2014-30k from captions_val2014.json: random.Random(0).sample of its captions


# --- Protocols: what the samples are measured against ----------------------------------------------
@dataclass(frozen=True)
class Protocol:
    name: str
    n: int  # samples per row unless --n says otherwise
    reference: str  # what the samples are scored against
    cleanfid_mode: str | None = None  # clean-fid's Inception mode; None: the feature spaces of --features
    resize: str | None = None  # what is done to samples and reference before the features
    clip_prefix: str | None = None  # text teachers: the CLIP score reads prefix + caption


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("held-out", 1000, "a fixed random split of the real images: n held out, the rest the reference"),
        Protocol("cifar10-50k", 50_000, "every image of --ref (CIFAR-10's training set)", "legacy_tensorflow"),
        Protocol(
            "coco2014-30k",
            30_000,
            "every image of --ref (COCO 2014 val), cropped and resized as the samples",
            "clean",
            "centre crop on the long edge, Lanczos to 256x256",
            "A photo depicts ",
        ),
    )
}


# --- Config ----------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    teacher: str | None = flag(None, "teacher to score: registry name, hub id or dir")
    run: str | None = flag(None, "run directory of a distilled student (has student/)")
    protocol: str = flag(
        "held-out",
        "held-out: n real images held out, the rest the reference; cifar10-50k: FID-50k against all of --ref "
        "(legacy_tensorflow); coco2014-30k: 256 px FID-30k against --ref (val2014) and CLIP score with --captions",
        choices=list(PROTOCOLS),
    )
    nfe: tuple[int, ...] = flag((1, 10, 50), "teacher sampler steps to score", nargs="+")
    sampler: str = flag("ddim", "teacher sampler", choices=["ddim", "ancestral"])
    dkdm_sampler: str = flag(
        "auto",
        "a DKDM run's student: sampler to score it with; auto: the one its run exported "
        "(IDDPM pixel, DDIM latent and digits)",
        choices=["auto", "ddim", "ancestral"],
    )
    dkdm_steps: int | None = flag(None, "a DKDM run's student: sampler steps; default: its export's")
    n: int | None = flag(None, "samples per sampler (seeds seed .. seed + n - 1); default: the protocol's")
    seed: int = flag(0, "seed of the first sample")
    batch: int = flag(128, "generation batch per process (throughput is at this batch)")
    features: tuple[str, ...] | None = flag(
        None,
        "feature spaces: digits pixels inception; default digits pixels for 1x8x8 teachers, else inception",
        nargs="+",
        elem=str,
    )
    w: float | None = flag(None, "guidance weight (BOOT Eq. 9); default: the teacher's")
    ref: str | None = flag(None, "folder of real images (teachers without embedded data; the protocols' reference)")
    ref_stats: str | None = flag(
        None, "folder caching the protocols' reference statistics; default $XDG_CACHE_HOME/evaluate-ref-stats"
    )
    prompts: str | None = flag(None, "text teachers: prompt file; seed s gets line s mod L")
    captions: str | None = flag(
        None, "coco2014-30k: captions.txt (one per line) or captions_val2014.json; seed s gets caption s mod L"
    )
    clip_model: str = flag("openai/clip-vit-base-patch32", "CLIP for the CLIP score")
    json: str | None = flag(None, "write the records to this JSON file")
    grid: str | None = flag(None, "write a PNG grid (rows share the initial noise)")
    save_images: str | None = flag(None, "write one PNG per sample into DIR/<sampler>-<NFE>/ (no --cache then)")
    cache: str | None = flag(
        None,
        "folder of cached teacher features, reused when teacher, sampler, NFE, n, seed, w and protocol "
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


def check_inception_weights(path=None):
    """clean-fid's Inception weights on disk before any sampling: downloaded now when missing (atomically,
    where clean-fid would put them), else one line naming the file (offline, or HF_HUB_OFFLINE set)."""
    import urllib.request

    from cleanfid.downloads_helper import inception_url

    path = Path(path or INCEPTION_FILE)
    if path.is_file():
        return
    fix = f"download {inception_url} to that path with network"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"clean-fid's Inception weights '{path}' are missing and HF_HUB_OFFLINE is set: {fix}")
    try:
        with urllib.request.urlopen(inception_url, timeout=60) as response:
            runkit.atomic_write(path, lambda f: f.write(response.read()))
    except OSError as e:  # urllib's URLError is an OSError
        raise UserError(
            f"clean-fid's Inception weights '{path}' are missing and cannot be downloaded ({e}): {fix}"
        ) from None


def check_clip(model: str):
    """The CLIP model of the CLIP score, before any sampling: a local folder whose files are whole, or a hub id
    in the local cache or reachable (one line otherwise)."""
    if Path(model).expanduser().is_dir():
        return cli.check_model_dir(model, "CLIP model")
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise UserError(f"CLIP model '{model}' is neither a folder nor a hub id")
    cli.check_hub(model, f"CLIP model '{model}' is a hub id")


@functools.lru_cache(maxsize=2)
def inception_network(mode: str, device: str):
    """clean-fid's Inception-V3 (pool features, 2048-d) for images of floats in [0, 255]; legacy_tensorflow
    resizes inside the network, as TensorFlow's did, "clean" expects 299 x 299 (see _inception_features)."""
    from cleanfid.features import build_feature_extractor

    return build_feature_extractor(mode, device=torch.device(device), use_dataparallel=False)


def _inception_features(images, batch, device, mode="clean"):
    """clean-fid's Inception-V3 features in `mode`: "clean" resizes to 299 with PIL bicubic on floats,
    legacy_tensorflow leaves the resize to the network."""
    from cleanfid.resize import build_resizer

    model, resize, out = inception_network(mode, str(device)), build_resizer(mode), []
    for chunk in images.split(batch):
        u8 = (chunk * 255).round().clamp(0, 255).expand(-1, 3, -1, -1)  # as if saved to PNG
        hwc = u8.permute(0, 2, 3, 1).numpy()
        big = torch.stack([torch.from_numpy(np.asarray(resize(im), dtype=np.float32)).permute(2, 0, 1) for im in hwc])
        out.append(model(big.to(device)).cpu())
    return torch.cat(out)


@torch.no_grad()
def features(images, space: str, batch: int = 500, device="cpu", mode="clean") -> np.ndarray:
    """Features of images in [0, 1] in one of FEATURE_SPACES (inception: in clean-fid's `mode`), float64 N x D."""
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
        f = _inception_features(images, batch, device, mode)
    return f.double().numpy()


@torch.no_grad()
def digits_probs(images, batch: int = 500) -> np.ndarray:
    """p(y | x) of the digits classifier for 1x8x8 images in [0, 1]."""
    model, _ = load_classifier()
    logits = torch.cat([model(chunk.float() * 2 - 1) for chunk in images.split(batch)])
    return logits.softmax(1).double().numpy()


# --- The field's protocols: COCO captions, GigaGAN's 256 px crop, reference statistics from a folder -----
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


def caption_set(path, n: int) -> tuple[list[str], str]:
    """(captions, the text of the caption file scored): a .txt as given; from a .json a fixed draw of n of
    its captions (random.Random(CAPTION_SEED).sample), which run_evaluation writes out once."""
    import random

    captions = coco_captions(path)
    if Path(path).suffix.lower() != ".json":
        return captions, Path(path).read_text(encoding="utf-8")
    if n > len(captions):
        raise UserError(f"--n {n} is more than the {len(captions)} captions of '{path}'")
    drawn = random.Random(CAPTION_SEED).sample(captions, n)
    return drawn, "\n".join(drawn) + "\n"


def crop_resize(u8: np.ndarray, size: int = 256) -> np.ndarray:
    """GigaGAN's evaluation: an H x W x 3 uint8 image centre-cropped to a square on its long edge (torchvision's
    center_crop: offsets rounded half to even), then resized to size x size with PIL's Lanczos filter."""
    h, w = u8.shape[:2]
    s = min(h, w)
    top, left = round((h - s) / 2), round((w - s) / 2)
    im = Image.fromarray(u8[top : top + s, left : left + s])
    return np.asarray(im if s == size else im.resize((size, size), Image.LANCZOS))


def stats_dir(cfg) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cfg.ref_stats).expanduser() if cfg.ref_stats else Path(base) / "evaluate-ref-stats"


def ref_stats_files(cfg, protocol: Protocol, files) -> tuple[Path, Path]:
    """clean-fid's custom statistics of --ref under a protocol: NAME_MODE_custom_na.npz (mu, sigma) and
    NAME_MODE_custom_na_kid.npz (feats), NAME = the protocol and a digest of the folder's file names and sizes
    (so clean-fid reads them too, copied into its stats folder)."""
    listing = [(str(f.relative_to(cfg.ref)), f.stat().st_size) for f in files]
    name = f"{protocol.name}-{hashlib.sha256(repr(listing).encode()).hexdigest()[:12]}"
    base = stats_dir(cfg) / f"{name}_{protocol.cleanfid_mode}_custom_na".lower()
    return base.with_name(base.name + ".npz"), base.with_name(base.name + "_kid.npz")


def load_ref_images(files, protocol: Protocol) -> torch.Tensor:
    """Reference images in [0, 1], N x 3 x H x W, as RGB (coco2014-30k: each cropped and resized first)."""
    arrays = []
    for f in files:
        with Image.open(f) as im:
            u8 = np.asarray(im.convert("RGB"))
        arrays.append(crop_resize(u8) if protocol.resize else u8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


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
@functools.lru_cache(maxsize=2)
def _clip(model_dir: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(model_dir).to(device).eval(), CLIPProcessor.from_pretrained(model_dir)


@torch.no_grad()
def clip_cosines(images, texts, model_dir="openai/clip-vit-base-patch32", batch=64, device="cpu") -> np.ndarray:
    """Cosine similarity between CLIP's embeddings of each image in [0, 1], quantised to 8 bits, and of its
    text (CLIPProcessor's own resize, crop and normalisation), one per image."""
    if len(images) != len(texts):
        raise UserError(f"CLIP score: {len(images)} images but {len(texts)} prompts")
    model, processor = _clip(str(model_dir), str(device))
    scores = []
    for i in range(0, len(images), batch):
        rgb = (images[i : i + batch].float().cpu().expand(-1, 3, -1, -1) * 255).round().clamp(0, 255)
        inputs = processor(
            text=list(texts[i : i + batch]),
            images=list(rgb.to(torch.uint8).permute(0, 2, 3, 1).numpy()),  # 8-bit, as read from a PNG
            padding=True,
            truncation=True,
            return_tensors="pt",
        )
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        scores.append((out.image_embeds * out.text_embeds).sum(-1).cpu())  # both normalised by CLIPModel
    return torch.cat(scores).double().numpy()


def clip_score(images, prompts, model_dir="openai/clip-vit-base-patch32", batch=64, device="cpu") -> float:
    """Mean cosine similarity between CLIP's embeddings of images in [0, 1] and of their prompts."""
    return float(clip_cosines(images, prompts, model_dir, batch, device).mean())


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


class Scorer:
    """A batch of images in [0, 1] -> what an evaluation keeps of it, one row per image (numpy): features in
    each space (after the protocol's crop and resize), p(y|x) of the digits classifier ("probs") and, given
    texts, the CLIP cosine of each image with the protocol's prefix + its text ("clip")."""

    def __init__(self, protocol: Protocol, spaces, device="cpu", clip_model=None):
        self.protocol, self.spaces, self.device, self.clip_model = protocol, tuple(spaces), device, clip_model

    def prepare(self, images):
        if not self.protocol.resize:
            return images.float().cpu()
        u8 = (images.float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
        out = [crop_resize(im.permute(1, 2, 0).numpy()) for im in u8]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255

    def __call__(self, images, texts=None) -> dict:
        x, mode = self.prepare(images), self.protocol.cleanfid_mode or "clean"
        out = {space: features(x, space, device=self.device, mode=mode) for space in self.spaces}
        if "digits" in self.spaces:
            out["probs"] = digits_probs(x)
        if texts:
            prefixed = [(self.protocol.clip_prefix or "") + t for t in texts]
            out["clip"] = clip_cosines(x, prefixed, self.clip_model, device=self.device)
        return out


def save_pngs(images, seeds, folder, n_texts=None):
    """One PNG per image in [0, 1]: FOLDER/<seed>.png, or <seed>-caption<index>.png with texts (index = seed
    mod their number), as if the image had been quantised to 8 bits once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    u8 = (images.float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for s, im in zip(seeds, u8):
        name = f"{s:06d}" + (f"-caption{s % n_texts:05d}" if n_texts else "")
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(folder / f"{name}.png")


def _interleave(parts, n: int, world: int) -> dict:
    """{name: values} of rank r at positions r::world: every rank's values back in seed order."""
    if world == 1:
        return parts[0]
    out = {}
    for r, part in enumerate(parts):
        for k, v in part.items():
            out.setdefault(k, np.empty((n, *v.shape[1:]), v.dtype))[r::world] = v
    return out


def generate(sample, score, seeds, batch, dist=(0, 1), keep=0, desc=None):
    """({name: a value per seed, in seed order}, images/s, the first `keep` seeds' images or None).

    Rank r of dist = (rank, world) samples seeds[r::world] batch by batch and score(images, seeds) turns
    each batch into per-sample values (features, CLIP cosines) at once: only those and the kept images are
    gathered, so memory follows the batch, not n. images/s times the sampling alone, after one warm-up
    batch. With `desc`, rank 0 shows a progress bar."""
    (rank, world), seeds = dist, list(seeds)
    mine, kept_seeds = seeds[rank::world], set(seeds[:keep])
    for _ in range(1 if mine else 0):
        sample(mine[:batch])
    bar = tqdm(total=len(mine), desc=desc, unit="img", leave=False, disable=desc is None or rank != 0)
    parts, kept, seconds = [], {}, 0.0
    for i in range(0, len(mine), batch):
        chunk = mine[i : i + batch]
        start = time.perf_counter()
        images = sample(chunk)
        seconds += time.perf_counter() - start
        parts.append(score(images, chunk))
        kept.update({s: im.clone() for s, im in zip(chunk, images) if s in kept_seeds})  # not views of the batch
        bar.update(len(chunk))
    bar.close()
    local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    gathered = runkit.gather((local, seconds, kept), world)
    kept = {s: im for _, _, k in gathered for s, im in k.items()}
    grid = torch.stack([kept[s] for s in seeds[:keep]]) if keep else None
    return _interleave([g[0] for g in gathered], len(seeds), world), len(seeds) / max(g[1] for g in gathered), grid


# --- Records and the table -------------------------------------------------------------------------
class TeacherCache:
    """What an evaluation keeps of the teacher's samples, kept between runs: `evaluate --run` scores a new
    student against the same teacher rows without sampling the teacher again. One safetensors file per
    (teacher, sampler, NFE, n, seed) holding the per-sample values of a Scorer and the grid's images (never
    the samples); its key also holds w, the texts' digest, the protocol, the feature spaces, a fingerprint
    of the teacher's weights and, for the ancestral sampler (whose step noise follows the batches), the
    batch and process count."""

    def __init__(self, cfg, teacher, w, texts, world):
        where = cfg.cache if cfg.cache is not None else (str(Path(cfg.run) / "teacher-samples") if cfg.run else None)
        self.dir = None if where in (None, "off") or cfg.save_images else Path(where)  # --save-images: sample
        self.cfg, self.teacher, self.world, self.weights = cfg, teacher, world, None
        digest = texts and hashlib.sha256("\n".join(texts).encode()).hexdigest()
        self.base = {"teacher": teacher.name, "n": cfg.n, "seed": cfg.seed, "w": w, "texts": digest}
        self.base |= {"protocol": cfg.protocol, "features": cfg.features, "clip": texts and cfg.clip_model}

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
        """(values, images/s when they were made, grid images), or None (no cache, or no file for this key)."""
        if self.dir is None or not self.entry(sampler, nfe)[0].is_file():
            return None
        path, key = self.entry(sampler, nfe)
        with safe_open(str(path), framework="pt") as f:
            if f.metadata().get("key") != key:
                return None
            values = {k.removeprefix("values."): f.get_tensor(k).numpy() for k in f.keys() if k.startswith("values.")}
            return values, float(f.metadata()["images_per_s"]), f.get_tensor("grid")

    def save(self, sampler, nfe, values, ips, grid):
        if self.dir is not None:
            path, key = self.entry(sampler, nfe)
            tensors = {f"values.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()}
            data = safetensors.torch.save(
                {**tensors, "grid": grid.contiguous()}, {"key": key, "images_per_s": repr(ips)}
            )
            runkit.atomic_write(path, lambda f: f.write(data))


def sig3(x) -> str:
    """A positive number with 3 significant figures and no exponent: 0.0123, 4.56, 789, 12300."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    v = float(f"{x:.3g}")
    return f"{v:.{max(0, 2 - math.floor(math.log10(abs(v))))}f}"


def evaluate_samples(values: dict, ref_feats: dict, row: dict, precision_recall_k: int | None = 3) -> list[dict]:
    """One record per feature space in ref_feats (space -> reference features N_ref x D), from the values a
    Scorer kept of the samples (features per space, "probs", "clip"); `row` names what made them (name,
    sampler, nfe, images_per_s) and the protocol's fields, copied into every record. IS (digits classifier)
    goes with the digits record, the CLIP score with all; precision_recall_k None: no precision / recall."""
    clip = float(values["clip"].mean()) if "clip" in values else None
    records = []
    for space, ref in ref_feats.items():
        f = values[space]
        precision, recall = precision_recall(ref, f, precision_recall_k) if precision_recall_k else (None, None)
        kid, kid_std = kernel_distance(ref, f)
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
                "n": len(f),
                "n_ref": len(ref),
                "inception_score": inception_score(values["probs"]) if space == "digits" else None,
                "clip_score": clip,
                **row.get("about", {}).get(space, {}),
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
            f"KID ± std over subsets ({space})",
            f"precision ({space}, k=3)",
            f"recall ({space}, k=3)",
        ]
        head += ["IS (digits classifier)"] * has_is + ["CLIP score (CLIP cosine)"] * has_clip
        head += ["images/s", f"speed-up vs {baseline}" if baseline else "speed-up"]
        lines = [
            f"features: {space_about(space, rows[0].get('cleanfid_mode'))}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
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


def space_about(space: str, mode=None) -> str:
    if space == "digits":
        cfg = load_classifier()[1]
        return (
            f"digits = {cfg['feature_dim']}-d penultimate layer of assets/digits-classifier "
            f"(held-out accuracy {100 * cfg['held_out_accuracy']:.1f} %)"
        )
    return {
        "pixels": "pixels = flattened images in [-1, 1]",
        "inception": "inception = clean-fid Inception-V3 pool features (FID), "
        + ("resized inside the network (legacy_tensorflow)" if mode == "legacy_tensorflow" else "clean resize to 299"),
    }[space]


def save_grid(rows, path, upscale_to=32, columns=16):
    """PNG grid from [(label, images)], one row per sampler; columns share their initial noise."""
    cols = min(columns, min(len(images) for _, images in rows))
    x = torch.cat([images[:cols] for _, images in rows])
    if x.shape[-1] < upscale_to:
        x = F.interpolate(x, scale_factor=upscale_to // x.shape[-1], mode="nearest")
    save_image(x, path, nrow=cols, padding=2, pad_value=1.0)


# --- Inputs: real images, students -----------------------------------------------------------------
def image_files(path, recursive=False) -> list:
    """The images of a folder (recursive: and of its sub-folders, as clean-fid reads one), sorted; one line
    when there are none."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"image folder '{path}' does not exist")
    files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.suffix.lower() in IMAGE_EXTS)
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
    if cfg.dkdm_steps is not None and cfg.dkdm_steps < 1:
        raise UserError("--dkdm-steps must be at least 1")
    for space in cfg.features or ():
        check_space(space)
    for name, out in (("--json", cfg.json), ("--grid", cfg.grid)):
        if out:
            cli.check_output_file(out, name)
    if cfg.save_images:
        cli.check_output_dir(cfg.save_images, "--save-images")
    if cfg.prompts:
        cli.load_prompts(cfg.prompts)
    check_protocol(cfg)
    if cfg.run:
        check_run(cfg.run, cfg.dkdm_sampler, cfg.dkdm_steps)
    else:
        teachers.check_teacher_files(cfg.teacher)
        for name, given in (("--dkdm-sampler", cfg.dkdm_sampler != "auto"), ("--dkdm-steps", cfg.dkdm_steps)):
            if given:
                raise UserError(f"{name} applies to the student of a DKDM run (--run DIR)")


def check_protocol(cfg: EvalConfig):
    """What a protocol needs: held-out takes --ref as it is; a field protocol needs --ref (all of it the
    reference), Inception features, and coco2014-30k its --captions instead of --prompts."""
    protocol = PROTOCOLS[cfg.protocol]
    if not protocol.cleanfid_mode:
        if cfg.captions:
            raise UserError("--captions applies to --protocol coco2014-30k")
        return check_image_folder(cfg.ref) if cfg.ref else None
    if not cfg.ref:
        raise UserError(f"--protocol {cfg.protocol} needs --ref DIR: {protocol.reference}")
    if cfg.features not in (None, ("inception",)):
        raise UserError(f"--protocol {cfg.protocol} scores Inception features only (drop --features)")
    if cfg.prompts:
        raise UserError(f"--protocol {cfg.protocol} takes no --prompts (coco2014-30k: its --captions)")
    if bool(protocol.clip_prefix) != bool(cfg.captions):
        raise UserError(
            f"--protocol {cfg.protocol} "
            + ("needs --captions FILE" if cfg.captions is None else "takes no --captions")
        )
    if cfg.captions:
        caption_set(cfg.captions, cfg.n)
    cli.check_output_dir(stats_dir(cfg), "--ref-stats")
    if not ref_stats_files(cfg, protocol, image_files(cfg.ref, recursive=True))[1].is_file():
        check_image_folder(cfg.ref, recursive=True, one_size=not protocol.resize)


def check_run(run, dkdm_sampler="auto", dkdm_steps=None):
    """A finished run directory: its student description parses, its weights and its teacher's are whole."""
    info = students.check_finished_run(run, check_files=False)
    for name, given in (("--dkdm-sampler", dkdm_sampler != "auto"), ("--dkdm-steps", dkdm_steps is not None)):
        if given and info.get("method") != "dkdm":
            raise UserError(f"{name} applies to a DKDM run; '{run}' holds a one-step BOOT student")
    cli.check_model_dir(Path(run) / "student", "student")  # after: the sampler's misuse is named first
    teachers.check_teacher_files(info.get("teacher", ""), info.get("model_id"), info.get("stage", 1))


def check_image_folder(path, recursive=False, one_size=False):
    """Every image of --ref opens and decodes, and (one_size) all have the first one's size: one line naming
    the first file that does not."""
    files, size = image_files(path, recursive), None
    for f in files:
        try:
            with Image.open(f) as im:
                size = size or im.size
                same = im.size == size
                im.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError
            raise UserError(f"--ref: '{f}' is not a readable image ({type(e).__name__})") from None
        if one_size and not same:
            raise UserError(f"--ref: '{f}' is {im.size[0]}x{im.size[1]}, '{files[0]}' {size[0]}x{size[1]}")


def dry_run_view(cfg: EvalConfig) -> dict:
    """The config with the defaults that need no model filled in: feature spaces of the registry's
    teachers (or of a run's teacher), the cache folder and the reference statistics' folder."""
    shown = dataclasses.asdict(cfg)
    name = students.check_finished_run(cfg.run)["teacher"] if cfg.run else cfg.teacher
    if PROTOCOLS[cfg.protocol].cleanfid_mode:
        shown["features"], shown["ref_stats"] = ["inception"], str(stats_dir(cfg))
    elif cfg.features is None and name in teachers.REGISTRY:
        shown["features"] = list(default_spaces(DIGITS_SHAPE)) if name in ("digits", "gmm") else ["inception"]
    if cfg.cache is None:
        shown["cache"] = str(Path(cfg.run) / "teacher-samples") if cfg.run else "off"
    return shown


NETWORKS = {
    "digits": "assets/digits-classifier (128-d penultimate layer)",
    "pixels": None,
    "inception": "Inception-V3 pool features (2048-d), clean-fid's inception-2015-12-05.pt",
}


class Evaluation:
    """One command's evaluation: its teacher (and student), the texts seed s gets (line s mod L of --prompts
    or --captions), the feature spaces, the protocol and its reference. Every check that needs a model runs
    in __init__, on every process, before any process group or sampling."""

    def __init__(self, cfg: EvalConfig, device="cpu"):
        self.cfg, self.device, self.protocol = cfg, device, PROTOCOLS[cfg.protocol]
        self.student = students.ExportedStudent(cfg.run, device) if cfg.run else None
        if self.student and cfg.dkdm_sampler != "auto":
            self.student.info["sampler"] = cfg.dkdm_sampler  # ExportedStudent.generate reads it
        s = self.student
        name, model_id = (s.teacher_name, s.info.get("model_id")) if s else (cfg.teacher, None)
        self.teacher = t = teachers.load_teacher(name, device=device, model_id=model_id)
        self.texts, self.text_file = caption_set(cfg.captions, cfg.n) if cfg.captions else (None, None)
        if cfg.prompts:
            self.texts, self.text_file = cli.load_prompts(cfg.prompts), Path(cfg.prompts).read_text(encoding="utf-8")
        if hasattr(t, "encode_prompts") != bool(self.texts):
            drop = "--captions" if cfg.captions else "--prompts"
            raise UserError(
                f"teacher '{t.name}' "
                + ("is text-conditioned: pass --prompts FILE" if not self.texts else f"takes no prompts (drop {drop})")
            )
        if self.texts:
            check_clip(cfg.clip_model)
        for k in (*cfg.nfe, *([cfg.dkdm_steps] if cfg.dkdm_steps else [])):
            teachers.trailing_steps(t.schedule.T, k)
        if self.student and cfg.dkdm_steps:
            self.student.nfe = cfg.dkdm_steps
        with torch.no_grad():
            image_shape = tuple(t.decode(torch.zeros(1, *t.sample_shape, device=t.device)).shape[1:])
        default = ("inception",) if self.protocol.cleanfid_mode else default_spaces(image_shape)
        self.spaces = tuple(cfg.features or default)
        self.check_spaces(image_shape)
        self.w = cfg.w if cfg.w is not None else t.default_guidance
        self.scorer = Scorer(self.protocol, self.spaces, device, cfg.clip_model)

    def check_spaces(self, image_shape):
        """The feature spaces fit the images, their networks are on disk, and held-out's real images match."""
        for space in self.spaces:
            check_space(space, image_shape)
        if "inception" in self.spaces:
            check_inception_weights()
        if "digits" in self.spaces:
            load_classifier()
        self.real = None if self.protocol.cleanfid_mode else real_images(self.teacher, self.cfg.ref)
        if self.real is not None and self.real.shape[1:] != image_shape:
            raise UserError(
                f"image sizes differ: samples are {'x'.join(map(str, image_shape))}, "
                f"real images {'x'.join(map(str, self.real.shape[1:]))}"
            )

    def fields(self, reference: str) -> dict:
        """What every record says of its protocol, per feature space."""
        p, text = self.protocol, self.text_file
        sha = text and hashlib.sha256(text.encode()).hexdigest()
        return {
            space: {
                "protocol": p.name,
                "reference": reference,
                "resize": p.resize,
                "feature_network": NETWORKS[space],
                "cleanfid_mode": (p.cleanfid_mode or "clean") if space == "inception" else None,
                "captions_sha256": sha,
            }
            for space in self.spaces
        }

    def write_captions(self):
        """A draw from a captions json, written once into the statistics folder: the file the sha256 names."""
        if not self.cfg.captions or Path(self.cfg.captions).suffix.lower() != ".json":
            return
        sha = hashlib.sha256(self.text_file.encode()).hexdigest()
        path = stats_dir(self.cfg) / f"coco2014-captions-n{self.cfg.n}-seed{CAPTION_SEED}-{sha[:12]}.txt"
        if not path.is_file():
            runkit.write_text_atomic(path, self.text_file)
        print(f"captions: {self.cfg.n} drawn from {self.cfg.captions} (seed {CAPTION_SEED}) -> {path}")

    def reference(self, rank=0, world=1):
        """(reference features by space on rank 0, the `real` row's records). held-out: n real images held
        out, scored against the rest; a field protocol: its statistics of --ref, computed once (each process
        its share of the images) and cached."""
        if self.real is None:
            return {"inception": self.reference_stats(rank, world)}, []
        held, refh = split_real(len(self.real), self.cfg.n)
        where = self.cfg.ref or "the embedded digits"
        self.about = self.fields(f"held-out split: {len(refh)} of the {len(self.real)} real images ({where})")
        if rank != 0:
            return None, []
        ref = {s: features(self.real[refh], s, device=self.device) for s in self.spaces}
        return ref, evaluate_samples(self.scorer(self.real[held]), ref, {"name": "real", "about": self.about})

    def reference_stats(self, rank, world):
        cfg, files = self.cfg, image_files(self.cfg.ref, recursive=True)
        mu_file, kid_file = ref_stats_files(cfg, self.protocol, files)
        self.about = self.fields(f"{Path(cfg.ref).resolve()} ({len(files)} images; statistics {kid_file})")
        if runkit.decide(self.device, hit=kid_file.is_file())["hit"]:
            print0(f"reference statistics of {len(files)} images: {kid_file}")
            return np.load(kid_file)["feats"].astype(np.float64) if rank == 0 else None
        load = lambda idx: load_ref_images([files[i] for i in idx], self.protocol)  # noqa: E731
        score = lambda images, idx: self.scorer(images)  # noqa: E731
        values, _, _ = generate(load, score, range(len(files)), cfg.batch, (rank, world), desc="reference")
        if rank == 0:
            f = values["inception"]
            runkit.atomic_write(mu_file, lambda h: np.savez_compressed(h, mu=f.mean(0), sigma=np.cov(f, rowvar=False)))
            runkit.atomic_write(kid_file, lambda h: np.savez_compressed(h, feats=f.astype(np.float32)))
            print(f"reference statistics of {len(files)} images -> {mu_file}, {kid_file}")
            return f

    def runs(self):
        """[(name, sampler, NFE, seeds -> images)]: the teacher at each --nfe, largest first, then the student."""
        cfg, t = self.cfg, self.teacher
        out = [
            (t.name, cfg.sampler, k, teacher_sampler(t, cfg.sampler, k, self.w, self.texts))
            for k in sorted(cfg.nfe, reverse=True)
        ]
        if self.student:
            out.append(
                (Path(cfg.run).name, "student", self.student.nfe, student_sampler(self.student, t, self.w, self.texts))
            )
        return out

    def score(self, folder=None):
        """(images, seeds) -> the Scorer's values, with the texts of these seeds; --save-images: their PNGs."""
        texts = self.texts

        def score(images, seeds):
            if folder:
                save_pngs(images, seeds, folder, texts and len(texts))
            return self.scorer(images, texts and [texts[s % len(texts)] for s in seeds])

        return score


def run_evaluation(cfg: EvalConfig, rank=0, world=1, device="cpu"):
    """(records, grid rows, speed-up baseline) for a teacher or a run; records on rank 0 only."""
    ev = Evaluation(cfg, device)
    if rank == 0:
        ev.write_captions()
    if world > 1:  # every check above ran on every process before the process group is made
        runkit.setup()
    ref, records = ev.reference(rank, world)
    rows, seeds = [], range(cfg.seed, cfg.seed + cfg.n)
    cache = TeacherCache(cfg, ev.teacher, ev.w, ev.texts, world)
    for name, sampler, nfe, sample in ev.runs():
        label = f"{sampler}-{nfe}"
        found = cache.load(sampler, nfe) if rank == 0 and sampler != "student" else None
        if runkit.decide(device, hit=found is not None)["hit"]:  # rank 0's cache decides for every process
            values, ips, grid = found or (None, None, None)
            print0(f"{name} {label}: {cfg.n} samples' features from {cache.entry(sampler, nfe)[0]}")
        else:
            folder = cfg.save_images and Path(cfg.save_images) / label
            values, ips, grid = generate(
                sample, ev.score(folder), seeds, cfg.batch, (rank, world), GRID_COLUMNS, f"{name} {label}"
            )
            print0(f"{name} {label}: {cfg.n} samples, batch {cfg.batch} x {world} process(es), {sig3(ips)} images/s")
            if sampler != "student" and rank == 0:
                cache.save(sampler, nfe, values, ips, grid)
        if rank == 0:
            row = {"name": name, "sampler": sampler, "nfe": nfe, "images_per_s": ips, "about": ev.about}
            records += evaluate_samples(values, ref, row, None if ev.protocol.cleanfid_mode else 3)
            rows.append((label, grid))
    return records, rows, add_speedups(records)


def main(argv=None):
    return cli.main_of(command, argv, prefix="evaluate.py: ")


def command(argv):
    args = vars(parser().parse_args(argv))
    dry_run = args.pop("dry_run")
    cfg = EvalConfig(**args)
    if cfg.n is None:
        cfg.n = PROTOCOLS[cfg.protocol].n
    check_config(cfg)
    if dry_run:
        return print(json.dumps(dry_run_view(cfg), indent=2))
    if cfg.teacher:
        teachers.check_hub(cfg.teacher)  # before any process group or download
    if PROTOCOLS[cfg.protocol].cleanfid_mode or "inception" in (cfg.features or ()):
        check_inception_weights()  # before the teacher loads (Evaluation checks the default spaces)
    rank, world, device = runkit.env()
    try:
        records, rows, baseline = run_evaluation(cfg, rank, world, device)
    finally:
        runkit.teardown()
    if rank == 0:
        print(f"\n{summary(cfg, records)}\n")
        print(format_table(records, baseline))
        if cfg.json:
            Path(cfg.json).write_text(json.dumps(records, indent=2) + "\n")
            print(f"\nrecords -> {cfg.json}")
        if cfg.grid:
            save_grid(rows, cfg.grid)
            print(f"grid (rows, top to bottom: {', '.join(label for label, _ in rows)}) -> {cfg.grid}")
        if cfg.save_images:
            print(f"one PNG per sample -> {cfg.save_images}/<sampler>-<NFE>/")


def summary(cfg: EvalConfig, records) -> str:
    """What the table's numbers are measured against, in one paragraph."""
    seeds, p = f"{cfg.n} samples per sampler (seeds {cfg.seed}..{cfg.seed + cfg.n - 1})", PROTOCOLS[cfg.protocol]
    if not p.cleanfid_mode:
        n_ref = records[0]["n_ref"]
        return (
            f"{seeds} against a fixed reference split of {n_ref} of the {n_ref + cfg.n} real images; `real` = the "
            f"other {cfg.n} real images (equal n in every row: FD is biased by n)."
        )
    off = "" if cfg.n == p.n else f" (not the protocol's {p.n}: compare only with equal n)"
    return f"--protocol {p.name}: {seeds}{off} against {records[0]['reference']}; KID ± is the std over 100 subsets."


if __name__ == "__main__":
    sys.exit(main())
