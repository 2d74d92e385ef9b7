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
          from those photos; learn.save(with_opt=False); convert to weights/*.safetensors with
          every float rounded to f16 (the demo weights; the crate loads f16 as f32)
  half    round the committed weights file's floats to f16 in place (what `train` now writes;
          a no-op on an f16 file)
  golden  for every fixture image, write what fastai itself computes, with the committed
          (f16) weights loaded into the fastai model in f32: SHA-256 digests of the 460x460
          item bytes and of the normalized input, the logits and learn.predict's
          probabilities; the item bytes in full (as PNG) for the JPEGs, whose decoder differs,
          and the normalized input in full for chelsea.png (see GOLDEN_README)
  stages  per-stage references: PIL resizes, torch area interpolation, torch grid_sample
          (digests of the large outputs, inputs made by a seeded SplitMix64 or cut from the
          fixture PNGs, see STAGES_README)

Nothing here downloads anything: the photos come from the installed scikit-image, matplotlib
and scikit-learn packages, and the model is trained from scratch.
"""
import hashlib
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
    # RGBA PNG with colour under transparent pixels: a crop of coffee with a radial alpha
    # (transparent at the centre).
    c = coffee.crop((150, 100, 450, 300))
    c.putalpha(Image.radial_gradient("L").resize(c.size))
    c.save(IMAGES / "coffee_RGBA.png")
    # P PNG (adaptive palette) with a transparent palette entry.
    p = chelsea.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    p.save(IMAGES / "chelsea_P.png", transparency=0)
    # Tiny RGB PNG (upscaled 8x by the item transform).
    rocket.crop((300, 100, 337, 161)).save(IMAGES / "rocket_tiny.png")
    # Large RGB PNG (downscaled ~2.1x and 1.7x to 532x532).
    retina.crop((0, 0, 1100, 900)).save(IMAGES / "retina_large.png")
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
    """learn.save's state_dict -> safetensors, floats rounded to f16, the vocab in the metadata."""
    import torch

    sd = torch.load(pth, map_location="cpu", weights_only=True)
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    WEIGHTS.mkdir(exist_ok=True)
    write_half(sd, {"vocab": json.dumps(vocab)})


def write_half(sd, metadata):
    """Writes WEIGHTS_FILE with every floating-point tensor rounded to f16 (round to nearest
    even, torch's .half()); integer tensors (num_batches_tracked) unchanged."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            h = v.half()
            assert torch.isfinite(h).all(), f"{k} overflows f16"
            v = h
        out[k] = v.contiguous()
    save_file(out, WEIGHTS_FILE, metadata=metadata)
    print(f"wrote {WEIGHTS_FILE} ({len(out)} tensors, floats in f16)")


def half():
    """Rounds the committed weights file to f16 in place, keeping its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(WEIGHTS_FILE, "pt") as f:
        metadata = f.metadata()
    write_half(load_file(WEIGHTS_FILE), metadata)


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
    # The file's f16 values, exactly, in the f32 model.
    sd = load_file(WEIGHTS_FILE)
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float16}
    learn.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in sd.items()})
    learn.model.eval()
    return learn


# ---------------------------------------------------------------------------------------------
# golden
# ---------------------------------------------------------------------------------------------

# The images whose normalized input (1, 3, 224, 224) f32 is stored in full, to diagnose a
# digest mismatch and to hold the 1e-6 bar on an array; every other array is a digest.
FULL_INPUT = ["chelsea.png"]

GOLDEN_README = """# Golden outputs of fastai for the fixture images

Written by `scripts/make_fixtures.py golden` (versions in `manifest.json`) from the committed
`weights/pets_vit_tiny.safetensors` (f16 values, loaded into the fastai model in f32) and the
images of `tests/fixtures/images/`: for each image, `learn.dls.test_dl([path]).one_batch()`
(the normalized input), the 460x460 item bytes before the batch transforms
(`dl.do_item(0)` on the validation split), `learn.model(input)` (logits) and
`learn.predict(path)` (probabilities).

- `manifest.json`: per image its format, PIL mode, size, fastai's label and index, and the
  SHA-256 of fastai's item bytes (`item_sha256`, HWC `uint8`) and of its normalized input
  (`input_sha256`, NCHW `float32` little-endian bytes). A bit-identity test compares digests.
- `golden.safetensors`: `<stem>.logits` (1, 37) and `<stem>.probs` (37,) f32 for every image
  (tolerances are asserted on them), and `<stem>.input` in full for the images of
  `FULL_INPUT` (chelsea).
- `items/<stem>.png`: fastai's item bytes for the JPEG images, losslessly as PNG (their digest
  is `item_sha256`): the crate's JPEG decoder differs from libjpeg-turbo, so their item is
  compared by a tolerance, and the model's input is rebuilt from it.
"""


def sha256(t):
    """SHA-256 of a tensor's contiguous bytes (little-endian), as tests/common computes it."""
    import torch
    return hashlib.sha256(torch.Tensor(t).as_subclass(torch.Tensor).contiguous().numpy()
                          .tobytes()).hexdigest()


def golden():
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    learn = load_learner_from_fixture()
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    (GOLDEN / "items").mkdir(parents=True)
    manifest, out = [], {}
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
        x = torch.Tensor(x).as_subclass(torch.Tensor).contiguous().float()
        with torch.no_grad():
            logits = learn.model.eval()(x)
        _, idx, probs = learn.predict(f)
        probs = torch.Tensor(probs).as_subclass(torch.Tensor).contiguous().float()
        assert torch.allclose(torch.softmax(logits, -1)[0], probs, atol=1e-6)
        hwc = torch.Tensor(item).as_subclass(torch.Tensor).permute(1, 2, 0).contiguous().to(torch.uint8)
        im = Image.open(f)
        stem = f.stem
        out[f"{stem}.logits"] = logits.contiguous().float()
        out[f"{stem}.probs"] = probs
        entry = {
            "image": f.name, "stem": stem, "format": im.format, "mode": im.mode,
            "width": im.size[0], "height": im.size[1], "lossless": im.format == "PNG",
            "label": learn.dls.vocab[int(idx)], "index": int(idx),
            "probability": float(probs[idx]),
            "item_sha256": sha256(hwc), "input_sha256": sha256(x),
            "item_png": None, "input_stored": f.name in FULL_INPUT,
        }
        if f.name in FULL_INPUT:
            out[f"{stem}.input"] = x
        if im.format != "PNG":
            png = GOLDEN / "items" / f"{stem}.png"
            Image.fromarray(hwc.numpy()).save(png, optimize=True)
            assert sha256(torch.from_numpy(np.asarray(Image.open(png)).copy())) == entry["item_sha256"]
            entry["item_png"] = f"items/{png.name}"
        manifest.append(entry)
        top2 = probs.topk(2).values
        print(f"  {f.name:28s} -> {entry['label']:20s} p={float(top2[0]):.4f} "
              f"margin={float(top2[0] - top2[1]):.4f}")
    save_file(out, GOLDEN / "golden.safetensors")
    (GOLDEN / "manifest.json").write_text(json.dumps(
        {"generated_by": "scripts/make_fixtures.py golden", "versions": versions_info(),
         "fixtures": manifest}, indent=1) + "\n")
    (GOLDEN / "README.md").write_text(GOLDEN_README)


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

STAGES_README = """# Per-stage references from PIL and PyTorch

Written by `scripts/make_fixtures.py stages` (versions in `versions.json`). Bit-identity
tests compare SHA-256 digests of the reference arrays (`digests.json`: per file and key, the
SHA-256 of the array's contiguous little-endian bytes, and its shape); the arrays kept in
full in the `.safetensors` files are the inputs, the small outputs (for diagnosis) and the
affine grids (a tolerance is asserted on them). The large inputs are not stored: `noise_u8(seed, n)` (SplitMix64, the
same in `tests/common`) makes random bytes, and the photo sources are crops of the fixture
PNGs (`tests/fixtures/images/`), each checked against its digest before use.

- `resize.safetensors`: PIL `Image.resize(size, BILINEAR)` of 4 sources (crops of
  `chelsea.png` 37x61 and 443x290, of `retina_large.png` 401x263, and 17x23 noise) to 7
  sizes each (up, down, mixed, 1x1).
- `area.safetensors`: `F.interpolate(x, size, mode='area')` of a 460x460 noise image
  (`noise_u8(1, 3*460*460) / 255`) and of a stored (1, 3, 37, 53) f32 array.
- `grid_sample.safetensors`: `F.affine_grid` / `F.grid_sample` (bilinear, reflection,
  align_corners=True) on 12 affine grids over a stored (2, 3, 40, 50) input; fastai's
  `_grid_sample` (its area pre-interpolation) on a 460x460 noise image
  (`noise_u8(2, 3*460*460) / 255`) with the identity and a zooming grid.
- `gelu.safetensors` (`scripts/make_fixtures_v2.py gelu`): torch's GELU on 80,001 values.
"""

SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def noise_u8(seed, n):
    """n pseudo-random bytes: SplitMix64 from `seed`, each output's 8 bytes little-endian
    (tests/common/mod.rs has the same generator)."""
    out = bytearray()
    state = seed & MASK64
    while len(out) < n:
        state = (state + SPLITMIX_GAMMA) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out += z.to_bytes(8, "little")
    return np.frombuffer(bytes(out[:n]), dtype=np.uint8).copy()


# Outputs up to this many bytes are stored in full (for diagnosis); larger ones as digests.
STAGE_FULL_BYTES = 32 * 1024

# The photo crops the resize cases start from: (fixture PNG, box).
RESIZE_SOURCES = {
    "src0": ("chelsea.png", (100, 50, 137, 111)),      # 37 x 61
    "src1": ("retina_large.png", (500, 300, 901, 563)),  # 401 x 263
    "src2": ("chelsea.png", (3, 5, 446, 295)),         # 443 x 290
}


def save_stage(tensors, path, digests):
    """Saves `tensors` (the kept arrays) to `path`, and the digest and shape of every array in
    `digests` under the file's name in STAGES/digests.json (safetensors' own metadata would
    not keep its key order from run to run)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    index = STAGES / "digests.json"
    table = json.loads(index.read_text()) if index.exists() else {}
    table[path.name] = {k: {"sha256": sha256(v), "shape": list(v.shape)}
                        for k, v in sorted(digests.items())}
    index.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def stage_output(kept, digests, key, value):
    """Every output gets a digest; small ones are kept in full too."""
    digests[key] = value
    if value.numel() * value.element_size() <= STAGE_FULL_BYTES:
        kept[key] = value


def stages():
    import torch
    import torch.nn.functional as F
    from fastai.vision.augment import _grid_sample

    STAGES.mkdir(parents=True, exist_ok=True)
    for old in ("resize.safetensors", "area.safetensors", "grid_sample.safetensors",
                "digests.json"):
        (STAGES / old).unlink(missing_ok=True)
    rng = np.random.default_rng(SEED)

    # PIL bilinear resizes: up, down, mixed, odd sizes, from real photo crops and noise.
    kept, digests = {}, {}
    srcs = {}
    for key, (name, box) in RESIZE_SOURCES.items():
        srcs[key] = Image.open(IMAGES / name).convert("RGB").crop(box)
        digests[key] = torch.from_numpy(np.asarray(srcs[key]).copy())
    srcs["src3"] = Image.fromarray(rng.integers(0, 256, (17, 23, 3), dtype=np.uint8))
    kept["src3"] = torch.from_numpy(np.asarray(srcs["src3"]).copy())
    targets = [(532, 532), (97, 203), (13, 7), (45, 31), (460, 19), (1, 1), (250, 350)]
    for key, s in srcs.items():
        for (w, h) in targets:
            out = torch.from_numpy(np.asarray(s.resize((w, h), Image.BILINEAR)).copy())
            stage_output(kept, digests, f"{key}_{w}x{h}", out)
    save_stage(kept, STAGES / "resize.safetensors", digests)

    # Area interpolation (adaptive average pooling) at several ratios.
    kept, digests = {}, {}
    # Bytes (like an image); the reference divides by 255 as IntToFloatTensor does.
    x8 = torch.from_numpy(noise_u8(1, 3 * 460 * 460).reshape(1, 3, 460, 460))
    digests["x460_u8"] = x8
    x = x8.float() / 255.0
    for (oh, ow) in [(448, 448), (224, 224), (300, 171)]:
        stage_output(kept, digests, f"x460_{oh}x{ow}", F.interpolate(x, size=(oh, ow), mode="area"))
    y = torch.from_numpy(rng.random((1, 3, 37, 53), dtype=np.float32))
    kept["x37x53"] = y
    for (oh, ow) in [(10, 13), (37, 53), (74, 100), (5, 50)]:
        stage_output(kept, digests, f"x37x53_{oh}x{ow}", F.interpolate(y, size=(oh, ow), mode="area"))
    save_stage(kept, STAGES / "area.safetensors", digests)

    # grid_sample (bilinear, reflection, align_corners=True) on affine grids.
    kept, digests = {}, {}
    img = torch.from_numpy(rng.random((2, 3, 40, 50), dtype=np.float32))
    kept["input"] = img

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
            kept[f"{name}_{oh}x{ow}_theta"] = th.clone()
            # The grids are the grid_sample inputs, and affine_grid is held to a tolerance.
            kept[f"{name}_{oh}x{ow}_grid"] = grid.contiguous()
            digests[f"{name}_{oh}x{ow}_grid"] = grid
            out = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection",
                                align_corners=True).contiguous()
            stage_output(kept, digests, f"{name}_{oh}x{ow}_out", out)
    # fastai's own _grid_sample (with its area pre-interpolation) for the pets sizes.
    big8 = torch.from_numpy(noise_u8(2, 3 * 460 * 460).reshape(1, 3, 460, 460))
    digests["fastai_input_u8"] = big8
    big = big8.float() / 255.0
    eye = torch.eye(3)[:2].unsqueeze(0)
    grid = F.affine_grid(eye, (1, 3, 224, 224), align_corners=True)
    digests["fastai_grid"] = grid
    digests["fastai_out"] = _grid_sample(big, grid, mode="bilinear", padding_mode="reflection",
                                         align_corners=True)
    # fastai's rule with a zooming affine (z > d disables the pre-interpolation).
    zt = theta(zoom=2.5).unsqueeze(0)
    kept["fastai_zoom_theta"] = zt
    zg = F.affine_grid(zt, (1, 3, 224, 224), align_corners=True)
    digests["fastai_zoom_grid"] = zg
    digests["fastai_zoom_out"] = _grid_sample(big, zg, mode="bilinear", padding_mode="reflection",
                                              align_corners=True)
    save_stage(kept, STAGES / "grid_sample.safetensors", digests)
    (STAGES / "versions.json").write_text(json.dumps(versions_info(), indent=1) + "\n")
    (STAGES / "README.md").write_text(STAGES_README)
    print("wrote", sorted(p.name for p in STAGES.iterdir()))


def main():
    steps = sys.argv[1:] or ["all"]
    if steps == ["all"]:
        steps = ["images", "train", "golden", "stages"]
    table = {"images": make_images, "train": train, "half": half, "golden": golden,
             "stages": stages}
    for s in steps:
        if s not in table:
            sys.exit(f"unknown step {s!r}; steps: {', '.join(table)}, all")
    for s in steps:
        print(f"== {s}")
        table[s]()


if __name__ == "__main__":
    main()
