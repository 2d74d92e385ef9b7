#!/usr/bin/env python3
"""Builds every reference fixture of fastai-infer from fastai / PyTorch / PIL themselves.

Run it in the reference environment (see scripts/README.md):

    python3 -m venv ~/venv-ref
    ~/venv-ref/bin/pip install fastai timm torch torchvision safetensors onnxruntime onnx \
        scikit-image matplotlib scikit-learn
    ~/venv-ref/bin/python scripts/make_fixtures.py all

Steps (each can be run alone, in this order):
  images  build tests/fixtures/images/ from photos that ship inside PyPI packages
  train   train a fastai vision_learner (vit_tiny_patch16_224, pretrained=False) on images made
          from those photos; learn.save(with_opt=False); convert to weights/*.safetensors
  golden  for every fixture image, write what fastai itself computes: the 460x460 item bytes,
          the normalized input, the logits and learn.predict's probabilities
  stages  per-stage references: PIL resizes, torch area interpolation, torch grid_sample

Nothing here downloads anything: the photos come from the installed scikit-image, matplotlib
and scikit-learn packages, and the model is trained from scratch.
"""
import json
import math
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "images"
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
STAGES = ROOT / "tests" / "fixtures" / "stages"
WEIGHTS = ROOT / "weights"
WEIGHTS_FILE = WEIGHTS / "pets_vit_tiny.safetensors"
TRAIN_DIR = Path(os.environ.get("FASTAI_INFER_TRAIN_DIR", "/tmp/fastai-infer-train"))
SEED = 42

# The 37 Oxford-IIIT Pets breeds, as the lesson's regex labels them.
PETS_BREEDS = sorted("""Abyssinian Bengal Birman Bombay British_Shorthair Egyptian_Mau Maine_Coon
Persian Ragdoll Russian_Blue Siamese Sphynx american_bulldog american_pit_bull_terrier
basset_hound beagle boxer chihuahua english_cocker_spaniel english_setter german_shorthaired
great_pyrenees havanese japanese_chin keeshond leonberger miniature_pinscher newfoundland
pomeranian pug saint_bernard samoyed scottish_terrier shiba_inu staffordshire_bull_terrier
wheaten_terrier yorkshire_terrier""".split())
assert len(PETS_BREEDS) == 37


def site_file(module, *parts):
    mod = __import__(module)
    return Path(mod.__file__).resolve().parent.joinpath(*parts)


def photo(name):
    """Source photos that ship in PyPI packages (all public domain / CC0 except china.jpg)."""
    table = {
        "astronaut": ("skimage", "data", "astronaut.png"),
        "camera": ("skimage", "data", "camera.png"),
        "chelsea": ("skimage", "data", "chelsea.png"),
        "coffee": ("skimage", "data", "coffee.png"),
        "coins": ("skimage", "data", "coins.png"),
        "horse": ("skimage", "data", "horse.png"),
        "hubble": ("skimage", "data", "hubble_deep_field.jpg"),
        "motorcycle": ("skimage", "data", "motorcycle_left.png"),
        "retina": ("skimage", "data", "retina.jpg"),
        "rocket": ("skimage", "data", "rocket.jpg"),
        "ihc": ("skimage", "data", "ihc.png"),
        "grace_hopper": ("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        "china": ("sklearn", "datasets", "images", "china.jpg"),
    }
    return site_file(*table[name])


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------

def make_images():
    """The fixture image set: PNG and JPEG; portrait, landscape, tiny, large; L, LA, RGBA, P."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    for f in IMAGES.iterdir():
        if f.suffix in (".png", ".jpg"):
            f.unlink()
    chelsea = Image.open(photo("chelsea")).convert("RGB")
    astronaut = Image.open(photo("astronaut")).convert("RGB")
    camera = Image.open(photo("camera"))
    coins = Image.open(photo("coins"))
    horse = Image.open(photo("horse"))
    rocket = Image.open(photo("rocket")).convert("RGB")
    coffee = Image.open(photo("coffee")).convert("RGB")
    retina = Image.open(photo("retina")).convert("RGB")

    # RGB PNG, landscape, untouched.
    chelsea.save(IMAGES / "chelsea.png")
    # RGB PNG, portrait crop.
    astronaut.crop((110, 0, 410, 480)).save(IMAGES / "astronaut_portrait.png")
    # L PNG.
    camera.convert("L").save(IMAGES / "camera_L.png")
    # LA PNG: gray coins with a horizontal alpha ramp.
    l = coins.convert("L")
    alpha = Image.linear_gradient("L").rotate(90).resize(l.size)
    Image.merge("LA", (l, alpha)).save(IMAGES / "coins_LA.png")
    # RGBA PNG: the horse silhouette (its own alpha).
    horse.convert("RGBA").save(IMAGES / "horse_RGBA.png")
    # RGBA PNG with colour under transparent pixels: coffee with a radial alpha.
    a = Image.radial_gradient("L").resize(coffee.size)
    c = coffee.copy()
    c.putalpha(a)
    c.save(IMAGES / "coffee_RGBA.png")
    # P PNG (adaptive palette) with a transparent palette entry.
    p = chelsea.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    p.save(IMAGES / "chelsea_P.png", transparency=0)
    # Tiny RGB PNG (upscaled 8x by the item transform).
    rocket.crop((300, 100, 337, 161)).save(IMAGES / "rocket_tiny.png")
    # Large RGB PNG (downscaled ~2.6x).
    retina.crop((0, 100, 1411, 1240)).save(IMAGES / "retina_large.png")
    # Odd-sized RGB PNG, both sides odd.
    coffee.crop((13, 7, 13 + 333, 7 + 217)).save(IMAGES / "coffee_odd.png")
    # JPEGs as shipped (decoder differences are measured, not hidden).
    shutil.copyfile(photo("rocket"), IMAGES / "rocket.jpg")
    shutil.copyfile(photo("grace_hopper"), IMAGES / "grace_hopper.jpg")
    shutil.copyfile(photo("china"), IMAGES / "china.jpg")
    # A grayscale (L) JPEG.
    camera.convert("L").save(IMAGES / "camera_gray.jpg", quality=90)
    for f in sorted(IMAGES.iterdir()):
        if f.suffix in (".png", ".jpg"):
            im = Image.open(f)
            print(f"  {f.name:28s} {im.format:5s} {im.mode:5s} {im.size}")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

# Which photo stands for which breed: arbitrary, the model is a test fixture.
TRAIN_CLASSES = {
    "chelsea": "Egyptian_Mau",
    "astronaut": "Abyssinian",
    "camera": "Bombay",
    "coffee": "beagle",
    "coins": "British_Shorthair",
    "horse": "Siamese",
    "hubble": "newfoundland",
    "motorcycle": "boxer",
    "retina": "pomeranian",
    "rocket": "samoyed",
    "ihc": "pug",
    "grace_hopper": "havanese",
}


def make_training_images(per_class=32):
    rng = random.Random(SEED)
    if TRAIN_DIR.exists():
        shutil.rmtree(TRAIN_DIR)
    for name, breed in TRAIN_CLASSES.items():
        src = Image.open(photo(name)).convert("RGB")
        d = TRAIN_DIR / breed
        d.mkdir(parents=True)
        w, h = src.size
        for i in range(per_class):
            s = rng.uniform(0.5, 1.0)
            cw, ch = max(16, int(w * s)), max(16, int(h * s * rng.uniform(0.8, 1.25)))
            cw, ch = min(cw, w), min(ch, h)
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            im = src.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im.thumbnail((320, 320))
            im.save(d / f"{name}_{i:03d}.jpg", quality=92)


def train(epochs=12):
    import torch
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize,
                                   RandomResizedCrop, RandomSplitter, accuracy,
                                   aug_transforms, get_image_files, imagenet_stats,
                                   parent_label, set_seed, vision_learner)
    from safetensors.torch import save_file

    torch.set_num_threads(os.cpu_count() or 2)
    set_seed(SEED, reproducible=True)
    make_training_images()
    dblock = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=PETS_BREEDS)),
        get_items=get_image_files,
        splitter=RandomSplitter(valid_pct=0.2, seed=SEED),
        get_y=parent_label,
        item_tfms=RandomResizedCrop(460),
        batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)],
    )
    dls = dblock.dataloaders(TRAIN_DIR, bs=32, num_workers=0)
    assert list(dls.vocab) == PETS_BREEDS, dls.vocab
    learn = vision_learner(dls, "vit_tiny_patch16_224", pretrained=False, metrics=accuracy)
    learn.path = TRAIN_DIR
    learn.fit_one_cycle(epochs, 2e-3)
    pth = learn.save("pets_vit_tiny", with_opt=False)
    print("saved", pth)
    convert(pth, list(dls.vocab))
    learn.export(TRAIN_DIR / "export.pkl")


def convert(pth, vocab):
    """learn.save's state_dict -> safetensors, with the vocab in the metadata."""
    import torch
    from safetensors.torch import save_file

    sd = torch.load(pth, map_location="cpu", weights_only=True)
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    sd = {k: v.contiguous() for k, v in sd.items()}
    WEIGHTS.mkdir(exist_ok=True)
    save_file(sd, WEIGHTS_FILE, metadata={"vocab": json.dumps(vocab)})
    print(f"wrote {WEIGHTS_FILE} ({len(sd)} tensors)")


def load_learner_from_fixture():
    """Rebuilds the fixture Learner from the committed safetensors (no training needed)."""
    import torch
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize,
                                   RandomResizedCrop, aug_transforms, imagenet_stats,
                                   vision_learner)
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(WEIGHTS_FILE, "pt") as f:
        vocab = json.loads(f.metadata()["vocab"])
    dblock = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=vocab)),
        get_items=lambda _: [IMAGES / "chelsea.png"],
        get_y=lambda _: vocab[0],
        item_tfms=RandomResizedCrop(460),
        batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)],
    )
    dls = dblock.dataloaders(IMAGES, bs=1, num_workers=0)
    learn = vision_learner(dls, "vit_tiny_patch16_224", pretrained=False)
    learn.model.load_state_dict(load_file(WEIGHTS_FILE))
    learn.model.eval()
    return learn


# ---------------------------------------------------------------------------------------------
# golden
# ---------------------------------------------------------------------------------------------

def golden():
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    learn = load_learner_from_fixture()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    manifest = []
    for f in sorted(IMAGES.iterdir()):
        if f.suffix not in (".png", ".jpg"):
            continue
        dl = learn.dls.test_dl([f], num_workers=0)
        (x,) = dl.one_batch()
        # one_batch() sets the pipelines' split_idx to the validation split; only after that
        # does do_item() give the validation RandomResizedCrop (squish + centre crop) instead
        # of a random training crop.
        assert dl.after_item.split_idx == 1, dl.after_item.split_idx
        item = dl.do_item(0)[0]  # TensorImage uint8 (3, 460, 460) after RandomResizedCrop
        check_batch_pipeline(item, x)
        with torch.no_grad():
            logits = learn.model.eval()(x)
        _, idx, probs = learn.predict(f)
        out = {
            "item": item.permute(1, 2, 0).contiguous().to(torch.uint8),  # (460, 460, 3)
            "input": x.contiguous().float(),  # (1, 3, 224, 224)
            "logits": logits.contiguous().float(),  # (1, n)
            "probs": probs.contiguous().float(),  # (n,)
        }
        save_file({k: torch.Tensor(v).as_subclass(torch.Tensor) for k, v in out.items()},
                  GOLDEN / f"{f.stem}.safetensors")
        im = Image.open(f)
        manifest.append({
            "image": f.name, "golden": f"{f.stem}.safetensors", "format": im.format,
            "mode": im.mode, "width": im.size[0], "height": im.size[1],
            "lossless": im.format == "PNG", "label": learn.dls.vocab[int(idx)],
            "index": int(idx), "probability": float(probs[idx]),
        })
        print(f"  {f.name:28s} -> {learn.dls.vocab[int(idx)]:20s} p={float(probs[idx]):.4f}")
    versions = versions_info()
    (GOLDEN / "manifest.json").write_text(json.dumps(
        {"generated_by": "scripts/make_fixtures.py golden", "versions": versions,
         "fixtures": manifest}, indent=1) + "\n")


def check_batch_pipeline(item, x):
    """The lesson's pure-PyTorch batch pipeline on the item must give fastai's batch exactly."""
    import torch
    import torch.nn.functional as F
    from fastai.vision.augment import _grid_sample

    xx = item[None].float() / 255.0
    grid = F.affine_grid(torch.eye(3)[:2][None], (1, 3, 224, 224), align_corners=True)
    y = _grid_sample(xx, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    d = ((y - mean) / std - x).abs().max().item()
    assert d == 0.0, f"item + batch transforms do not reproduce fastai's batch: {d}"


def versions_info():
    import fastai, PIL, timm, torch
    return {"fastai": fastai.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "Pillow": PIL.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------

def stages():
    import torch
    import torch.nn.functional as F
    from fastai.vision.augment import _grid_sample
    from safetensors.torch import save_file

    STAGES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    # PIL bilinear resizes: up, down, mixed, odd sizes, from real photo crops.
    chelsea = Image.open(photo("chelsea")).convert("RGB")
    rocket = Image.open(photo("rocket")).convert("RGB")
    srcs = [chelsea.crop((100, 50, 137, 111)),      # 37 x 61
            rocket.crop((0, 0, 401, 263)),          # 401 x 263
            chelsea.crop((3, 5, 454 - 3 - 5, 300 - 5)),  # 443 x 295
            Image.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8))]  # noise
    targets = [(532, 532), (97, 203), (13, 7), (45, 31), (460, 19), (1, 1), (250, 350)]
    t = {}
    for i, s in enumerate(srcs):
        t[f"src{i}"] = torch.from_numpy(np.asarray(s).copy())
        for (w, h) in targets:
            t[f"src{i}_{w}x{h}"] = torch.from_numpy(np.asarray(s.resize((w, h), Image.BILINEAR)).copy())
    save_file(t, STAGES / "resize.safetensors")

    # Area interpolation (adaptive average pooling) at several ratios.
    t = {}
    # Stored as bytes (like an image); the reference divides by 255 as IntToFloatTensor does.
    x8 = torch.from_numpy(rng.integers(0, 256, (1, 3, 460, 460), dtype=np.uint8))
    t["x460_u8"] = x8
    x = x8.float() / 255.0
    for (oh, ow) in [(448, 448), (224, 224), (300, 171)]:
        t[f"x460_{oh}x{ow}"] = F.interpolate(x, size=(oh, ow), mode="area")
    y = torch.from_numpy(rng.random((1, 3, 37, 53), dtype=np.float32))
    t["x37x53"] = y
    for (oh, ow) in [(10, 13), (37, 53), (74, 100), (5, 50)]:
        t[f"x37x53_{oh}x{ow}"] = F.interpolate(y, size=(oh, ow), mode="area")
    save_file(t, STAGES / "area.safetensors")

    # grid_sample (bilinear, reflection, align_corners=True) on affine grids.
    t = {}
    img = torch.from_numpy(rng.random((2, 3, 40, 50), dtype=np.float32))
    t["input"] = img

    def theta(rot_deg=0.0, zoom=1.0, tx=0.0, ty=0.0, shear=0.0):
        r = math.radians(rot_deg)
        m = torch.tensor([[math.cos(r) / zoom, -math.sin(r) / zoom + shear, tx],
                          [math.sin(r) / zoom, math.cos(r) / zoom, ty]], dtype=torch.float32)
        return m

    cases = {
        "identity": [theta(), theta()],
        "rotate": [theta(rot_deg=30), theta(rot_deg=-75)],
        "zoom_in": [theta(zoom=1.7), theta(zoom=1.3, tx=0.2)],
        "zoom_out": [theta(zoom=0.6), theta(zoom=0.4, ty=-0.3)],
        "translate_past_border": [theta(tx=0.8, ty=-0.9), theta(tx=-2.5, ty=1.7)],
        "mixed": [theta(rot_deg=10, zoom=0.8, tx=0.3, shear=0.2), theta(rot_deg=200, zoom=1.1, ty=0.6)],
    }
    for name, ths in cases.items():
        th = torch.stack(ths)
        for (oh, ow) in [(31, 37), (40, 50)]:
            grid = F.affine_grid(th, (2, 3, oh, ow), align_corners=True)
            t[f"{name}_{oh}x{ow}_theta"] = th.clone()
            t[f"{name}_{oh}x{ow}_grid"] = grid.contiguous()
            t[f"{name}_{oh}x{ow}_out"] = F.grid_sample(img, grid, mode="bilinear",
                                                       padding_mode="reflection",
                                                       align_corners=True).contiguous()
    # fastai's own _grid_sample (with its area pre-interpolation) for the pets sizes.
    big8 = torch.from_numpy(rng.integers(0, 256, (1, 3, 460, 460), dtype=np.uint8))
    big = big8.float() / 255.0
    eye = torch.eye(3)[:2].unsqueeze(0)
    grid = F.affine_grid(eye, (1, 3, 224, 224), align_corners=True)
    t["fastai_input_u8"] = big8
    t["fastai_grid"] = grid.contiguous()
    t["fastai_out"] = _grid_sample(big, grid, mode="bilinear", padding_mode="reflection",
                                   align_corners=True).contiguous()
    # fastai's rule with a zooming affine (z > d disables the pre-interpolation).
    zg = F.affine_grid(theta(zoom=2.5).unsqueeze(0), (1, 3, 224, 224), align_corners=True)
    t["fastai_zoom_grid"] = zg.contiguous()
    t["fastai_zoom_out"] = _grid_sample(big, zg, mode="bilinear", padding_mode="reflection",
                                        align_corners=True).contiguous()
    save_file(t, STAGES / "grid_sample.safetensors")
    (STAGES / "versions.json").write_text(json.dumps(versions_info(), indent=1) + "\n")
    print("wrote", sorted(p.name for p in STAGES.iterdir()))


def main():
    steps = sys.argv[1:] or ["all"]
    if steps == ["all"]:
        steps = ["images", "train", "golden", "stages"]
    for s in steps:
        print(f"== {s}")
        {"images": make_images, "train": train, "golden": golden, "stages": stages}[s]()


if __name__ == "__main__":
    main()
