"""evaluate.py --protocol: the field's protocols end to end, offline, on stand-ins (a random-weight network in
place of Inception, a tiny random CLIP, a fake CIFAR-10 folder, a 20-image fake COCO with captions and images
of mixed sizes). Each number is checked against an independent computation from the PNGs --save-images
wrote and the reference folder, done the way clean-fid and GigaGAN's evaluation read them; the reference
statistics are computed once and cached; missing weights offline stop with one line before any sampling."""

import hashlib
import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import evaluate as E
import teachers


class StandInInception(nn.Module):
    """A random-weight network in place of Inception-V3: images of floats in [0, 255], any size -> 32 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    @torch.no_grad()
    def forward(self, x):
        return self.net(x / 255 - 0.5)


@pytest.fixture
def inception(monkeypatch, tmp_path):
    """The stand-in where clean-fid's network would be built; a placeholder where its weights would lie.
    Returns (the network, the clean-fid modes it was asked for)."""
    weights = tmp_path / "inception-2015-12-05.pt"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(E, "INCEPTION_FILE", weights)
    net, modes = StandInInception().eval(), []
    monkeypatch.setattr(E, "inception_network", lambda mode, device: modes.append(mode) or net)
    return net, modes


def fake_cifar(folder, n=30):
    """n random 8x8 RGB PNGs in two class folders, as CIFAR-10 extractions lay them out."""
    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"class{i % 2}" / f"{i}.png")
    return folder


def fake_coco(root, sizes=((24, 16), (16, 30), (20, 20), (33, 18), (17, 40))):
    """val2014/ with 20 images of mixed sizes (W x H) and captions_val2014.json with 2 captions each, some
    with the stray whitespace and newlines real COCO captions have."""
    rng, images, annotations = np.random.default_rng(1), [], []
    (root / "val2014").mkdir(parents=True)
    for i in range(20):
        w, h = sizes[i % len(sizes)]
        name = f"COCO_val2014_{i:012d}.jpg" if i % 2 else f"COCO_val2014_{i:012d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val2014" / name, quality=95)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        annotations += [
            {"image_id": i, "id": 2 * i, "caption": f"A photo of thing {i} on a table. "},
            {"image_id": i, "id": 2 * i + 1, "caption": f"  thing {i}\nin a  room"},
        ]
    (root / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root / "val2014", root / "captions_val2014.json"


def standin_features(net, arrays, mode):
    """Independent of evaluate.py: uint8 H x W x 3 arrays as clean-fid's folder reader hands them on (floats
    in [0, 255]; "clean": its PIL-bicubic resize to 299 first, legacy_tensorflow: none) through the network."""
    from cleanfid.resize import build_resizer

    resize = build_resizer(mode)
    x = torch.stack([torch.from_numpy(np.asarray(resize(a), dtype=np.float32)).permute(2, 0, 1) for a in arrays])
    return net(x).double().numpy()


def read_rgb(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def gigagan_256(im):
    """GigaGAN's evaluation transform, written from its description: torchvision's center_crop to the short
    side, then PIL Lanczos to 256 x 256."""
    from torchvision.transforms import functional as TF

    return np.asarray(TF.center_crop(im, min(im.size)).resize((256, 256), Image.LANCZOS))


def one_line_error(capsys, argv):
    code = E.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Loading weights" not in ln]  # bars
    assert code == 2 and len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------------------------
# CIFAR-10 50k: legacy_tensorflow Inception, the whole training folder as the reference
# ---------------------------------------------------------------------------------------------
def test_cifar10_protocol_scores_against_the_whole_folder(inception, tmp_path, monkeypatch, capsys):
    from cleanfid import fid

    net, modes = inception
    ref, stats, png = fake_cifar(tmp_path / "cifar"), tmp_path / "stats", tmp_path / "png"
    argv = ["--teacher", "gmm", "--protocol", "cifar10-50k", "--ref", str(ref), "--ref-stats", str(stats)]
    argv += ["--nfe", "2", "--n", "24", "--batch", "10", "--save-images", str(png), "--json", str(tmp_path / "a.json")]
    assert E.main(argv) == 0
    out = capsys.readouterr().out
    assert "--protocol cifar10-50k: 24 samples" in out and "not the protocol's 50000" in out
    (r,) = json.loads((tmp_path / "a.json").read_text())  # no `real` row: nothing is held out
    assert set(modes) == {"legacy_tensorflow"} and r["cleanfid_mode"] == "legacy_tensorflow"
    assert (r["protocol"], r["n"], r["n_ref"], r["resize"], r["captions_sha256"]) == (
        "cifar10-50k",
        24,
        30,
        None,
        None,
    )
    assert str(ref.resolve()) in r["reference"] and r["precision"] is None and r["recall"] is None
    files = sorted((png / "ddim-2").iterdir())
    assert [f.name for f in files] == [f"{s:06d}.png" for s in range(24)]
    fake = standin_features(net, [np.asarray(read_rgb(f)) for f in files], "legacy_tensorflow")
    real = standin_features(net, [np.asarray(read_rgb(f)) for f in sorted(ref.rglob("*.png"))], "legacy_tensorflow")
    assert r["fid"] == pytest.approx(fid.fid_from_feats(fake, real), rel=1e-6)
    assert r["kid"] == pytest.approx(E.kernel_distance(real, fake)[0], rel=1e-6, abs=1e-9)
    # clean-fid's custom statistics, computed once: mu and sigma, and every feature for KID
    mu_file, kid_file = sorted(stats.iterdir())
    assert mu_file.name.endswith("_legacy_tensorflow_custom_na.npz") and kid_file.name.endswith("_custom_na_kid.npz")
    assert np.allclose(np.load(mu_file)["mu"], real.mean(0), atol=1e-6)
    assert np.allclose(np.load(mu_file)["sigma"], np.cov(real, rowvar=False), atol=1e-6)
    assert np.load(kid_file)["feats"].shape == (30, 32)
    monkeypatch.setattr(E, "load_ref_images", lambda *a: pytest.fail("the reference was read again"))
    assert E.main([*argv[:-2], "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())[0]["fid"] == r["fid"]


# ---------------------------------------------------------------------------------------------
# COCO-2014 30k: captions, 256 px centre crop + Lanczos on both sides, clean-fid FID, CLIP score with the prefix
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_clip_dir(tmp_path_factory, tiny_clip_dir):
    """The tiny CLIP with room for a caption after "A photo depicts " (its byte tokenizer: one token a character)."""
    from transformers import CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("long-clip")
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    model.config.text_config.max_position_embeddings = 96
    torch.manual_seed(1)
    bigger = CLIPModel(model.config)
    bigger.save_pretrained(d)
    tok = CLIPTokenizer.from_pretrained(tiny_clip_dir, model_max_length=96)
    tok.save_pretrained(d)
    (d / "preprocessor_config.json").write_text((tiny_clip_dir / "preprocessor_config.json").read_text())
    return d


def clip_by_hand(clip_dir, images, texts):
    """Cosine of CLIP's image and text embeddings, through transformers directly (PIL images in)."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    inputs = processor(text=texts, images=images, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).double().numpy()


def test_coco2014_protocol_crops_resizes_and_prefixes(inception, long_clip_dir, tiny_sd_dir, tmp_path, capsys):
    from cleanfid import fid

    net, modes = inception
    val, ann = fake_coco(tmp_path / "coco")
    stats, png = tmp_path / "stats", tmp_path / "png"
    argv = ["--teacher", str(tiny_sd_dir), "--protocol", "coco2014-30k", "--ref", str(val), "--captions", str(ann)]
    argv += ["--clip-model", str(long_clip_dir), "--ref-stats", str(stats), "--nfe", "1", "--n", "6", "--batch", "4"]
    assert E.main([*argv, "--save-images", str(png), "--json", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    (r,) = json.loads((tmp_path / "a.json").read_text())
    # the fixed draw of n captions from the json (seed 0), written once: its sha256 is in the record
    (drawn,) = stats.glob("coco2014-captions-n6-seed0-*.txt")
    every = [" ".join(a["caption"].split()) for a in json.loads(ann.read_text())["annotations"]]
    captions = random.Random(0).sample(every, 6)
    assert drawn.read_text().splitlines() == captions
    assert r["captions_sha256"] == hashlib.sha256(drawn.read_bytes()).hexdigest()
    assert (r["protocol"], r["cleanfid_mode"], r["n_ref"]) == ("coco2014-30k", "clean", 20) and set(modes) == {"clean"}
    assert r["resize"].startswith("centre crop")
    files = sorted((png / "ddim-1").iterdir())
    assert [f.name for f in files] == [f"{s:06d}-caption{s:05d}.png" for s in range(6)]
    fake = [gigagan_256(read_rgb(f)) for f in files]
    real = standin_features(net, [gigagan_256(read_rgb(f)) for f in sorted(val.iterdir())], "clean")
    assert r["fid"] == pytest.approx(fid.fid_from_feats(standin_features(net, fake, "clean"), real), rel=1e-6)
    cos = clip_by_hand(long_clip_dir, [Image.fromarray(a) for a in fake], ["A photo depicts " + c for c in captions])
    assert r["clip_score"] == pytest.approx(cos.mean(), abs=1e-5)
    # a text file of captions is used as it is: seed s gets line s mod L; its own sha256
    txt = tmp_path / "captions.txt"
    txt.write_text("a red car\n\na cat on a mat\n")
    argv[argv.index(str(ann))] = str(txt)
    assert E.main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    assert (
        json.loads((tmp_path / "b.json").read_text())[0]["captions_sha256"]
        == hashlib.sha256(txt.read_bytes()).hexdigest()
    )
    assert len(list(stats.glob("*.npz"))) == 2  # the reference statistics were computed once


def test_coco_captions_reads_json_and_text(tmp_path):
    _, ann = fake_coco(tmp_path)
    captions = E.coco_captions(ann)
    assert len(captions) == 40 and captions[:2] == ["A photo of thing 0 on a table.", "thing 0 in a room"]
    (tmp_path / "c.txt").write_text(" one caption \n\ntwo\n")
    assert E.coco_captions(tmp_path / "c.txt") == ["one caption", "two"]
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    for path, message in (
        (tmp_path / "none.txt", "does not exist"),
        (tmp_path / "bad.json", r"has no annotations\[\]\.caption list"),
    ):
        with pytest.raises(E.UserError, match=message):
            E.coco_captions(path)


def test_crop_is_centred_as_torchvision_rounds_it():
    """An odd margin: torchvision's center_crop rounds the offset half to even (5 / 2 -> 2, 3 / 2 -> 2)."""
    from torchvision.transforms import functional as TF

    for h, w in ((21, 16), (16, 19), (8, 8), (300, 256)):
        a = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        expect = np.asarray(TF.center_crop(Image.fromarray(a), min(h, w)).resize((256, 256), Image.LANCZOS))
        assert np.array_equal(E.crop_resize(a), expect), (h, w)


# ---------------------------------------------------------------------------------------------
# Missing weights offline: one line naming the file, exit code 2, before any sampling
# ---------------------------------------------------------------------------------------------
def test_missing_weights_stop_before_any_sampling(tmp_path, monkeypatch, capsys, tiny_sd_dir):
    import urllib.error
    import urllib.request

    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    monkeypatch.setattr(E, "INCEPTION_FILE", missing)
    monkeypatch.setattr(teachers, "ddim", lambda *a, **k: pytest.fail("sampled before the weights were checked"))
    ref = fake_cifar(tmp_path / "cifar")
    cifar = ["--teacher", "gmm", "--protocol", "cifar10-50k", "--ref", str(ref), "--ref-stats", str(tmp_path / "s")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert E.main([*cifar, "--dry-run"]) == 0  # the resolved config needs no weights
    shown = json.loads(capsys.readouterr().out)
    assert (shown["n"], shown["features"], shown["ref_stats"]) == (50_000, ["inception"], str(tmp_path / "s"))
    line = one_line_error(capsys, cifar)
    assert f"Inception weights '{missing}' are missing and HF_HUB_OFFLINE is set" in line
    assert str(missing) in one_line_error(capsys, ["--teacher", "gmm", "--features", "inception"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online in name, the network unreachable: the download fails

    def unreachable(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    assert f"'{missing}' are missing and cannot be downloaded (<urlopen error no route" in one_line_error(
        capsys, cifar
    )
    # CLIP: a hub id neither cached nor to be had (HF_HUB_OFFLINE), found before the teacher samples
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    argv = ["--teacher", str(tiny_sd_dir), "--prompts", str(prompts), "--features", "pixels", "--n", "6", "--nfe", "1"]
    line = one_line_error(capsys, [*argv, "--clip-model", "openai/clip-vit-base-patch32"])
    assert "CLIP model 'openai/clip-vit-base-patch32' is a hub id, not in the local Hugging Face cache" in line
    assert "neither a folder nor a hub id" in one_line_error(capsys, [*argv, "--clip-model", "no-such-clip"])
    assert not missing.parent.exists() and not (tmp_path / "s").exists()
