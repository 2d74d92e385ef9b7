#!/usr/bin/env python3
"""fastai `.pth` fixtures from REAL fastai training runs (tests/fixtures/pth/).

Run it in the reference environment (see scripts/make_fixtures.py), from any directory:

    ~/venv-ref/bin/python scripts/make_fixtures_pth.py

What it does:
  1. A tiny real-photo dataset: crops of six photos that ship in PyPI packages (scikit-image,
     matplotlib), each crop labelled by the photo it was cut from (/tmp, not committed).
  2. A small fastai `vision_learner` on it: timm's `vit_tiny_patch16_224` made smaller through
     vision_learner's kwargs (MODEL_KWARGS: embed_dim 64, depth 1, one 64-wide head, a 1x MLP;
     fastai's head with lin_ftrs=[32]), pretrained=False, with the pets recipe's transforms
     (RandomResizedCrop(460), aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)),
     so the crate's default recipe is this learner's.
  3. Real training runs, each saved with fastai's own `learn.save` (VARIANTS below): after
     fit_one_cycle (default with_opt=True: numpy scalars and Adam state), after to_fp16(),
     after freeze() + fit_one_cycle, after fine_tune (freeze, fit, unfreeze, fit), with
     with_opt=False, with the body cast to bf16; and learn.export()'s export.pkl (tried, not
     committed: it is a pickle of the whole Learner, which the crate does not read).
  4. fastai's own predictions (learn.predict) for PRED_IMAGES, lossless PNGs of
     tests/fixtures/images, with each file loaded into a fresh f32 learner by learn.load
     (a bf16 file's values cast to f32): predictions.json.
  5. The small hand-made files: head_only.pth, not_a_learner.pth, with_object.pth.
  6. A description of every file (layout, tensors, dtypes, the classes its pickle names, what
     torch.load(weights_only=True) says): files.json, used for README.md's table.

Training on CPU is not bit-reproducible across machines and library versions; the tests hold the
crate to the committed files and predictions, not to a re-run.
"""
import json
import os
import pickletools
import random
import shutil
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT
PTH = ROOT / "tests" / "fixtures" / "pth"
TRAIN_DIR = Path(os.environ.get("FASTAI_INFER_PTH_TRAIN_DIR", "/tmp/fastai-infer-train-pth"))
ARCH = "vit_tiny_patch16_224"
# timm kwargs through vision_learner: 64 wide (one 64-wide head, timm's convention, so the crate
# infers it without a recipe), one block, a 64-wide MLP. Head: fastai's create_head with one
# hidden layer of 32.
MODEL_KWARGS = {"embed_dim": 64, "depth": 1, "num_heads": 1, "mlp_ratio": 1.0}
HEAD_KWARGS = {"lin_ftrs": [32]}
# Photo -> class (the class is the photo's name).
CLASSES = ["astronaut", "camera", "chelsea", "coffee", "horse", "rocket"]
PER_CLASS = 16
PRED_IMAGES = ["chelsea.png", "coffee_RGBA.png", "camera_L.png", "astronaut_portrait.png",
               "horse_RGBA.png", "rocket_tiny.png"]


def make_images():
    from PIL import Image
    rng = random.Random(mf.SEED)
    if TRAIN_DIR.exists():
        shutil.rmtree(TRAIN_DIR)
    for name in CLASSES:
        src = Image.open(mf.photo(name)).convert("RGB")
        d = TRAIN_DIR / "images" / name
        d.mkdir(parents=True)
        w, h = src.size
        for i in range(PER_CLASS):
            s = rng.uniform(0.5, 1.0)
            cw, ch = max(16, int(w * s)), max(16, int(h * s * rng.uniform(0.8, 1.25)))
            cw, ch = min(cw, w), min(ch, h)
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            im = src.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im.thumbnail((256, 256))
            im.save(d / f"{name}_{i:03d}.png")


def dblock(**kw):
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize,
                                   RandomResizedCrop, aug_transforms, imagenet_stats)
    return DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=CLASSES)),
        item_tfms=RandomResizedCrop(460),
        batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)],
        **kw)


def dataloaders():
    from fastai.vision.all import RandomSplitter, get_image_files, parent_label
    db = dblock(get_items=get_image_files, splitter=RandomSplitter(valid_pct=0.25, seed=mf.SEED),
                get_y=parent_label)
    dls = db.dataloaders(TRAIN_DIR / "images", bs=16, num_workers=0)
    assert list(dls.vocab) == CLASSES, dls.vocab
    return dls


def learner(dls):
    from fastai.vision.all import accuracy, set_seed, vision_learner
    set_seed(mf.SEED, reproducible=True)
    learn = vision_learner(dls, ARCH, pretrained=False, metrics=accuracy, **HEAD_KWARGS,
                           **MODEL_KWARGS)
    learn.path, learn.model_dir = TRAIN_DIR, "models"
    return learn


def fit_default(learn):
    learn.fit_one_cycle(3, 3e-3)
    learn.save("model")  # fastai's default: with_opt=True


def fit_fp16(learn):
    learn.to_fp16()
    learn.fit_one_cycle(1, 3e-3)
    learn.save("fp16")


def fit_frozen(learn):
    learn.freeze()
    learn.fit_one_cycle(1, 3e-3)
    learn.save("frozen")


def fit_fine_tune(learn):
    # fine_tune: freeze, fit_one_cycle(freeze_epochs), unfreeze, fit_one_cycle(epochs).
    learn.fine_tune(1, 3e-3, freeze_epochs=1)
    learn.save("fine_tune")


# name -> how it is trained (each on a fresh learner from the same seed).
VARIANTS = {
    "model": fit_default,
    "fp16": fit_fp16,
    "frozen": fit_frozen,
    "fine_tune": fit_fine_tune,
}


def pickle_globals(path):
    """The (module, name) pairs the pickle names, by reading its opcodes (nothing executed)."""
    with zipfile.ZipFile(path) as z:
        (pkl,) = [n for n in z.namelist() if n.endswith("data.pkl")]
        data = z.read(pkl)
    out = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
    return sorted(out)


def describe(path):
    import torch
    obj = torch.load(path, map_location="cpu", weights_only=False)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        weights_only = "loads"
    except Exception as e:
        msg = str(e)
        i = msg.find("Unsupported global")
        weights_only = "refuses: " + (msg[i:].split(" was not")[0] if i >= 0 else msg[:80])
    tensors = {"model": [], "opt": [], "other": []}

    def walk(o, part):
        if isinstance(o, torch.Tensor):
            tensors[part].append(o)
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, part)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, part)
        elif hasattr(o, "items") and not isinstance(o, (str, bytes)):  # fastcore L
            for v in list(o):
                walk(v, part)

    if isinstance(obj, dict) and set(obj) == {"model", "opt"}:
        walk(obj["model"], "model")
        walk(obj["opt"], "opt")
        layout = "{'model': state_dict, 'opt': ...}"
    elif isinstance(obj, dict):
        walk(obj, "model")
        layout = f"{type(obj).__name__} state_dict"
    else:
        layout = type(obj).__module__ + "." + type(obj).__name__
    dt = {}
    for part, ts in tensors.items():
        for t in ts:
            k = f"{part}:{str(t.dtype).replace('torch.', '')}"
            dt[k] = dt.get(k, 0) + 1
    return {"file": path.name, "bytes": path.stat().st_size, "layout": layout,
            "tensors": {p: len(t) for p, t in tensors.items() if t}, "dtypes": dt,
            "classes": pickle_globals(path), "weights_only": weights_only}


def predictions(files):
    """learn.predict on PRED_IMAGES with each file loaded into a fresh f32 learner."""
    import torch
    from fastai.vision.all import vision_learner
    db = dblock(get_items=lambda _: [mf.IMAGES / "chelsea.png"], get_y=lambda _: CLASSES[0])
    dls = db.dataloaders(mf.IMAGES, bs=1, num_workers=0)
    out = {"classes": CLASSES, "images": PRED_IMAGES, "files": {}}
    for f in files:
        learn = vision_learner(dls, ARCH, pretrained=False, **HEAD_KWARGS, **MODEL_KWARGS)
        sd = torch.load(f, map_location="cpu", weights_only=False)
        sd = sd["model"] if "model" in sd and "opt" in sd else sd
        learn.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                     for k, v in sd.items()})
        learn.model.eval()
        rows = []
        for name in PRED_IMAGES:
            label, idx, probs = learn.predict(mf.IMAGES / name)
            probs = [float(p) for p in probs]
            rows.append({"image": name, "label": str(label), "index": int(idx),
                         "probabilities": probs})
            print(f"  {f.name:22s} {name:24s} -> {label} p={max(probs):.4f}")
        out["files"][f.name] = rows
    return out


# The learner files committed to tests/fixtures/pth (the rest are described in files.json only:
# fp16.pth has model.pth's layout, classes and dtypes, and plain.pth is model.pth's weights
# without the optimizer, as plain_bf16_body.pth is; the fixture budget is 3 MiB).
COMMITTED = ["model.pth", "fine_tune.pth", "frozen.pth", "plain_bf16_body.pth"]


def main():
    import torch
    from fastai.learner import save_model
    torch.set_num_threads(int(os.environ.get("FASTAI_INFER_THREADS", "2")))
    make_images()
    dls = dataloaders()
    PTH.mkdir(parents=True, exist_ok=True)
    for f in PTH.glob("*.pth"):
        f.unlink()
    models = TRAIN_DIR / "models"
    for name, fit in VARIANTS.items():
        learn = learner(dls)
        fit(learn)
        if name == "model":
            # The same weights without the optimizer (learn.save(..., with_opt=False)), and with
            # the body cast to bf16 (fastai's head kept in f32).
            learn.save("plain", with_opt=False)
            learn.model[0].to(torch.bfloat16)
            learn.save("plain_bf16_body", with_opt=False)
            learn.model[0].to(torch.float32)
            learn.export("export.pkl")
            # The head alone, f32, the way save_model writes a state_dict.
            head = OrderedDict((k, v) for k, v in learn.model.state_dict().items()
                               if k.startswith("1."))
            torch.save(head, PTH / "head_only.pth", pickle_protocol=2)
    for name in COMMITTED:
        shutil.copyfile(models / name, PTH / name)
    # Some other model's state_dict.
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 2)
    save_model(PTH / "not_a_learner.pth", lin, None, with_opt=False)
    # A pickle naming a class outside the tensor subset.
    torch.save({"model": lin.state_dict(), "extra": FixtureMarker("not a tensor")},
               PTH / "with_object.pth", pickle_protocol=2)
    (PTH / "labels.txt").write_text("\n".join(CLASSES) + "\n")

    rows = [describe(p) for p in sorted(PTH.glob("*.pth"))]
    for extra in ["plain.pth", "fp16.pth"]:
        rows.append(dict(describe(models / extra), committed=False))
    rows.append(dict(describe(TRAIN_DIR / "export.pkl"), committed=False))
    for r in rows:
        print("  " + json.dumps(r))
    (PTH / "files.json").write_text(json.dumps({"versions": mf.versions_info(), "files": rows},
                                               indent=1) + "\n")
    preds = predictions([PTH / n for n in COMMITTED])
    (PTH / "predictions.json").write_text(json.dumps(preds, indent=1) + "\n")


class FixtureMarker:
    """An arbitrary Python object: torch.load(weights_only=True) refuses to unpickle it."""

    def __init__(self, note):
        self.note = note


if __name__ == "__main__":
    # Run through the importable module, so that FixtureMarker pickles as
    # make_fixtures_pth.FixtureMarker rather than __main__.FixtureMarker.
    import make_fixtures_pth
    make_fixtures_pth.main()
