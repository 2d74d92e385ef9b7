#!/usr/bin/env python3
"""More reference fixtures for fastai-infer: a small f16 ViT learner and fastai .pth files.

Run it in the reference environment (see scripts/make_fixtures.py), from any directory:

    ~/venv-ref/bin/python scripts/make_fixtures_v2.py all

Subcommands (each can be run alone):
  small         train vision_learner(dls, 'vit_small_patch16_224', pretrained=False, depth=2,
                mlp_ratio=1.0) (SMALL_KWARGS: timm's ViT-small width, 384, and 6 heads, with 2
                blocks instead of 12 and a 384-wide MLP instead of 1536, so the file stays small)
                briefly on the same photo crops and pets vocab as make_fixtures.py's `train`
                (RandomResizedCrop(460), aug_transforms(size=224),
                Normalize.from_stats(*imagenet_stats)); learn.export() it and convert that with
                `scripts/export_fastai.py --dtype f16` to tests/fixtures/vit_small/model.safetensors
                (+ recipe_expected.json); then run `small-golden`.
  small-golden  rebuild the learner from the committed model.safetensors (its f16 values cast to
                f32, so the goldens are what the f16 file computes) and write
                tests/fixtures/vit_small/golden.safetensors and manifest.json: for each image in
                GOLDEN_IMAGES, `<stem>.logits` (1,37) f32 from learn.model.eval()(input) and
                `<stem>.probs` (37,) f32 from learn.predict(path); the manifest holds the SHA-256 of
                the input (1,3,224,224) f32 from learn.dls.test_dl([path]).one_batch() and of the
                460x460 item bytes, which are those of tests/fixtures/golden (same recipe;
                checked), so the tests rebuild the input from there.
  pth           run scripts/make_fixtures_pth.py: .pth files from real fastai training runs in
                tests/fixtures/pth/ (see tests/fixtures/pth/README.md).
  gelu          tests/fixtures/stages/gelu.safetensors: `x` (f32: the grid -10..10 in steps of
                1/1000, then 60,000 draws of N(0, 2.5²) from torch.manual_seed(0)) and
                `gelu` = torch.nn.functional.gelu(x) on the CPU, as timm's nn.GELU() computes
                inside fastai's model; the metadata records torch's CPU capability (the
                vectorized kernel it ran: AVX2 or AVX512 use the same arithmetic).
  all           small, then pth, then gelu.

Training on CPU is not bit-reproducible across machines and library versions; everything
downstream of the committed model.safetensors (goldens, recipe) is.
Nothing is downloaded.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT
SMALL = ROOT / "tests" / "fixtures" / "vit_small"
SMALL_MODEL = SMALL / "model.safetensors"
PTH = ROOT / "tests" / "fixtures" / "pth"
SMALL_ARCH = "vit_small_patch16_224"
# timm kwargs (through vision_learner): ViT-small's width and heads, 2 blocks, a 1x MLP.
SMALL_KWARGS = {"depth": 2, "mlp_ratio": 1.0}
SMALL_EPOCHS = int(os.environ.get("FASTAI_INFER_SMALL_EPOCHS", "8"))
SMALL_LR = float(os.environ.get("FASTAI_INFER_SMALL_LR", "2e-3"))
SMALL_TRAIN_DIR = Path(os.environ.get("FASTAI_INFER_SMALL_TRAIN_DIR", "/tmp/fastai-infer-train-small"))
# At least one JPEG, the L, RGBA and tiny PNGs.
GOLDEN_IMAGES = ["chelsea.png", "coffee_RGBA.png", "camera_L.png", "rocket_tiny.png",
                 "grace_hopper.jpg", "astronaut_portrait.png", "horse_RGBA.png", "rocket.jpg"]


def _pets_dblock(vocab, **kw):
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize,
                                   RandomResizedCrop, aug_transforms, imagenet_stats)
    return DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=vocab)),
        item_tfms=RandomResizedCrop(460),
        batch_tfms=[*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)],
        **kw)


# ---------------------------------------------------------------------------------------------
# small
# ---------------------------------------------------------------------------------------------

def small():
    import torch
    from fastai.vision.all import (RandomSplitter, accuracy, get_image_files, parent_label,
                                   set_seed, vision_learner)
    from safetensors import safe_open

    torch.set_num_threads(os.cpu_count() or 2)
    set_seed(mf.SEED, reproducible=True)
    mf.TRAIN_DIR = SMALL_TRAIN_DIR  # make_training_images writes there
    mf.make_training_images()
    dblock = _pets_dblock(mf.PETS_BREEDS, get_items=get_image_files,
                          splitter=RandomSplitter(valid_pct=0.2, seed=mf.SEED),
                          get_y=parent_label)
    dls = dblock.dataloaders(SMALL_TRAIN_DIR, bs=32, num_workers=0)
    assert list(dls.vocab) == mf.PETS_BREEDS, dls.vocab
    learn = vision_learner(dls, SMALL_ARCH, pretrained=False, metrics=accuracy, **SMALL_KWARGS)
    learn.path = SMALL_TRAIN_DIR
    learn.fit_one_cycle(SMALL_EPOCHS, SMALL_LR)
    learn.export("export.pkl")

    SMALL.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(SCRIPTS / "export_fastai.py"), "--dtype", "f16",
           str(SMALL_TRAIN_DIR / "export.pkl"), str(SMALL_MODEL)]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)
    with safe_open(str(SMALL_MODEL), "pt") as f:
        recipe = json.loads(f.metadata()["fastai_infer.recipe"])
    (SMALL / "recipe_expected.json").write_text(json.dumps(recipe, indent=1) + "\n")
    small_golden()


def load_small_learner():
    """The vit_small learner with exactly the (f16) values of the committed file, in f32."""
    import torch
    from fastai.vision.all import vision_learner
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(SMALL_MODEL), "pt") as f:
        vocab = json.loads(f.metadata()["vocab"])
    dblock = _pets_dblock(vocab, get_items=lambda _: [mf.IMAGES / "chelsea.png"],
                          get_y=lambda _: vocab[0])
    dls = dblock.dataloaders(mf.IMAGES, bs=1, num_workers=0)
    learn = vision_learner(dls, SMALL_ARCH, pretrained=False, **SMALL_KWARGS)
    sd = load_file(str(SMALL_MODEL))
    assert {v.dtype for k, v in sd.items() if v.is_floating_point()} == {torch.float16}
    learn.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in sd.items()})
    learn.model.eval()
    return learn


def small_golden():
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    learn = load_small_learner()
    tiny = {f["image"]: f for f in json.loads((mf.GOLDEN / "manifest.json").read_text())["fixtures"]}
    out, manifest = {}, []
    for name in GOLDEN_IMAGES:
        f = mf.IMAGES / name
        dl = learn.dls.test_dl([f], num_workers=0)
        (x,) = dl.one_batch()
        # After one_batch() the pipelines are on the validation split (see make_fixtures.py).
        assert dl.after_item.split_idx == 1, dl.after_item.split_idx
        item = dl.do_item(0)[0]
        mf.check_batch_pipeline(item, x)
        x = torch.Tensor(x).as_subclass(torch.Tensor).contiguous().float()
        hwc = torch.Tensor(item).as_subclass(torch.Tensor).permute(1, 2, 0).contiguous().to(torch.uint8)
        # The same recipe as the ViT-tiny learner's: the same item bytes and input, whose
        # digests (and, for the JPEGs, item bytes) tests/fixtures/golden holds.
        assert mf.sha256(hwc) == tiny[name]["item_sha256"], name
        assert mf.sha256(x) == tiny[name]["input_sha256"], name
        with torch.no_grad():
            logits = learn.model.eval()(x)
        _, idx, probs = learn.predict(f)
        probs = torch.Tensor(probs).as_subclass(torch.Tensor).contiguous().float()
        assert torch.allclose(torch.softmax(logits, -1)[0], probs, atol=1e-6)
        top2 = probs.topk(2).values
        stem = f.stem
        out[f"{stem}.logits"] = logits.contiguous().float()
        out[f"{stem}.probs"] = probs
        manifest.append({"image": name, "stem": stem, "label": learn.dls.vocab[int(idx)],
                         "index": int(idx), "lossless": Image.open(f).format == "PNG",
                         "probability": float(top2[0]), "margin": float(top2[0] - top2[1]),
                         "item_sha256": mf.sha256(hwc), "input_sha256": mf.sha256(x)})
        print(f"  {name:24s} -> {learn.dls.vocab[int(idx)]:20s} p={float(top2[0]):.4f} "
              f"margin={float(top2[0] - top2[1]):.4f}")
    save_file(out, str(SMALL / "golden.safetensors"))
    (SMALL / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (SMALL / "versions.json").write_text(json.dumps(mf.versions_info(), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# pth
# ---------------------------------------------------------------------------------------------

def pth():
    """The .pth fixtures now come from real fastai training runs: scripts/make_fixtures_pth.py."""
    import make_fixtures_pth
    make_fixtures_pth.main()


def gelu():
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    grid = torch.arange(-10_000, 10_001, dtype=torch.float64) / 1000
    x = torch.cat([grid.float(), torch.randn(60_000) * 2.5]).contiguous()
    g = torch.nn.functional.gelu(x)
    out = mf.STAGES / "gelu.safetensors"
    cap = torch.backends.cpu.get_cpu_capability()
    save_file({"x": x, "gelu": g}, str(out),
              metadata={"torch": torch.__version__, "cpu_capability": cap})
    print(f"  wrote {out} ({x.numel()} values, torch {torch.__version__}, CPU capability {cap})")


def main():
    steps = sys.argv[1:] or ["all"]
    if steps == ["all"]:
        steps = ["small", "pth", "gelu"]
    table = {"small": small, "small-golden": small_golden, "pth": pth, "gelu": gelu}
    for s in steps:
        if s not in table:
            sys.exit(f"unknown step {s!r}; steps: {', '.join(table)}, all")
    for s in steps:
        print(f"== {s}")
        table[s]()


if __name__ == "__main__":
    main()
