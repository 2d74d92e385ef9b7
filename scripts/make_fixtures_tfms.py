#!/usr/bin/env python3
"""Reference fixtures for the item and batch transforms and the multi-label learner, made by
fastai 2.8.12 itself.

Run it in the reference environment (see scripts/make_fixtures.py), from any directory:

    ~/venv-ref/bin/python scripts/make_fixtures_tfms.py all

Subcommands:
  tfms        for every case of CASES: a `DataBlock(ImageBlock, CategoryBlock)` with the case's
              item and batch transforms over the lossless fixture PNGs, then
              `dls.test_dl(files).one_batch()` (fastai's own validation pipeline, as
              learn.predict runs it). Writes tests/fixtures/tfms/tfms.safetensors with
              `<case>.items` (uint8 (N, 3, H, W), fastai's item-transformed images, from the test
              DataLoader's `after_item`) and `<case>.input` (f32, the model input; not stored where the batch transforms are
              fastai's IntToFloatTensor alone: it is then the items / 255, checked here), and
              tests/fixtures/tfms/cases.json with each case's recipe (format 2, the JSON the
              crate reads; written by scripts/export_fastai.py's own recipe reader from the
              DataLoaders, so that reader is exercised too) and its images.
  multilabel  a small real multi-label learner: photos from scikit-image / matplotlib /
              scikit-learn, cut into 96 crops, each labelled with the set of the photo's tags
              (MultiCategoryBlock); `vision_learner(dls, <narrow torchvision resnet>,
              pretrained=False, loss_func=BCEWithLogitsLossFlat(thresh=0.35))`, real
              `fit_one_cycle`; exported with scripts/export_fastai.py (which checks its recipe
              against fastai's test_dl batch) to tests/fixtures/tfms/multilabel.safetensors,
              and fastai's answers for the lossless fixture PNGs (`learn.get_preds` sigmoid
              probabilities and `learn.predict`'s decoded label sets) to
              tests/fixtures/tfms/multilabel_golden.safetensors + multilabel.json.
  all         both.

Nothing is downloaded.
"""
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT
OUT = ROOT / "tests" / "fixtures" / "tfms"
SEED = mf.SEED

ALL = ["astronaut_portrait.png", "camera_L.png", "chelsea.png", "chelsea_P.png",
       "coffee_RGBA.png", "coffee_odd.png", "coins_LA.png", "horse_RGBA.png",
       "retina_large.png", "rocket_tiny.png"]
# A smaller set (odd sizes, portrait and landscape, RGBA, L, a tiny one) for the costlier cases.
FEW = ["astronaut_portrait.png", "camera_L.png", "coffee_odd.png", "horse_RGBA.png",
       "rocket_tiny.png"]


def cases():
    """name -> (item_tfms, batch_tfms, images). Sizes are small to keep the fixture small."""
    from fastai.vision.all import (CropPad, IntToFloatTensor, Normalize, RandomResizedCrop,
                                   Resize, aug_transforms, imagenet_stats)
    from PIL import Image
    NEAREST = Image.Resampling.NEAREST
    norm = Normalize.from_stats(*imagenet_stats)
    c = {}
    for method in ("crop", "squish", "pad"):
        for pad in ("reflection", "zeros", "border"):
            if method != "pad" and pad != "reflection":
                continue  # pad_mode only matters when padding
            c[f"resize_{method}_{pad}_sq"] = ([Resize(29, method=method, pad_mode=pad)], [], ALL)
            c[f"resize_{method}_{pad}_hw"] = ([Resize((23, 37), method=method, pad_mode=pad)],
                                              [], ALL)
            c[f"resize_{method}_{pad}_wh"] = ([Resize((41, 19), method=method, pad_mode=pad)],
                                              [], ALL)
    for method in ("crop", "squish", "pad"):
        c[f"resize_{method}_nearest"] = ([Resize((27, 35), method=method, pad_mode="zeros",
                                                 resamples=(NEAREST, NEAREST))], [], ALL)
    # Upsizing (the tiny image grows), and a size equal to an image's (PIL copies it).
    c["resize_squish_up"] = ([Resize((70, 45), method="squish")], [], ["rocket_tiny.png"])
    c["resize_same_size"] = ([Resize((61, 37))], [], ["rocket_tiny.png"])
    c["croppad_zeros"] = ([CropPad((40, 52))], [], ["rocket_tiny.png", "coffee_odd.png"])
    c["croppad_reflection"] = ([CropPad((150, 30), pad_mode="reflection")], [],
                               ["rocket_tiny.png", "coffee_odd.png"])
    c["croppad_border"] = ([CropPad((45, 90), pad_mode="border")], [],
                           ["rocket_tiny.png", "coffee_odd.png"])
    c["croppad_then_resize"] = ([CropPad(200), Resize((24, 30), method="squish")], [], FEW)
    c["rrc"] = ([RandomResizedCrop(30)], [], FEW)
    c["rrc_hw"] = ([RandomResizedCrop((26, 34), val_xtra=0.3)], [], FEW)
    c["rrc_nearest"] = ([RandomResizedCrop(30, resamples=(NEAREST, NEAREST))], [], FEW)
    # Batch transforms (after Resize).
    c["aug_nosize_norm"] = ([Resize((26, 34))], [*aug_transforms(), norm], ALL)
    c["aug_nosize_nonorm"] = ([Resize(31, method="squish")], aug_transforms(), ALL)
    c["aug_size_norm"] = ([Resize((40, 50))], [*aug_transforms(size=(20, 24)), norm], ALL)
    c["aug_size_down_area"] = ([Resize((60, 66), method="pad")],
                               [*aug_transforms(size=(14, 16)), norm], FEW)
    c["aug_size_up"] = ([Resize(20)], [*aug_transforms(size=33)], FEW)
    c["norm_only"] = ([Resize((26, 34))], [norm], FEW)
    c["int_to_float_only"] = ([Resize((26, 34))], [IntToFloatTensor()], FEW)
    c["aug_nosize_zeros"] = ([Resize(25)], [*aug_transforms(pad_mode="zeros"), norm], FEW)
    c["aug_size_border"] = ([Resize(25)], [*aug_transforms(size=18, pad_mode="border"), norm],
                            FEW)
    return c


def dataloaders(item_tfms, batch_tfms, files):
    from fastai.vision.all import CategoryBlock, DataBlock, ImageBlock, IndexSplitter
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda p: "x",
                       splitter=IndexSplitter([0]), item_tfms=item_tfms,
                       batch_tfms=batch_tfms or None)
    return dblock.dataloaders(files + files, bs=len(files), num_workers=0)


def tfms():
    import torch
    from safetensors.torch import save_file
    import export_fastai as ef

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    tensors, manifest = {}, {}
    for name, (item_tfms, batch_tfms, images) in cases().items():
        files = [mf.IMAGES / n for n in images]
        dls = dataloaders(item_tfms, batch_tfms, files)
        dl = dls.test_dl(files, num_workers=0, bs=len(files))
        (x,) = dl.one_batch()
        x = torch.Tensor(x).as_subclass(torch.Tensor).float().contiguous()
        items = torch.stack([torch.Tensor(dl.do_item(i)[0]).as_subclass(torch.Tensor)
                             for i in range(len(files))]).contiguous()
        assert items.dtype == torch.uint8, items.dtype
        recipe = ef.transforms_recipe(dls)
        tensors[f"{name}.items"] = items
        if batch_tfms:
            tensors[f"{name}.input"] = x
        else:
            # IntToFloatTensor alone: the input is the items / 255 (checked, not stored).
            assert torch.equal(x, items.float() / 255.0), name
        manifest[name] = {"images": images, "recipe": recipe,
                          "item_shape": list(items.shape), "input_shape": list(x.shape)}
        print(f"{name}: items {tuple(items.shape)} input {tuple(x.shape)}", flush=True)
    save_file(tensors, str(OUT / "tfms.safetensors"))
    (OUT / "cases.json").write_text(json.dumps({
        "generated_by": "scripts/make_fixtures_tfms.py tfms",
        "versions": mf.versions_info(), "cases": manifest}, indent=1) + "\n")


# ---------------------------------------------------------------- multi-label
# Photos and their tags; crops of each photo get the photo's tags.
PHOTOS = {
    "chelsea": ("skimage", ["animal", "cat", "indoor"]),
    "coffee": ("skimage", ["cup", "indoor"]),
    "astronaut": ("skimage", ["person", "space"]),
    "rocket": ("skimage", ["space", "outdoor"]),
    "hubble": ("skimage", ["space"]),
    "grace_hopper": ("mpl", ["person", "indoor"]),
    "china": ("sklearn", ["outdoor"]),
    "motorcycle": ("skimage", ["vehicle", "outdoor"]),
}
ML_SIZE = (48, 64)  # (height, width)
ML_THRESH = 0.35
ML_IMAGES = ["chelsea.png", "astronaut_portrait.png", "coffee_odd.png", "rocket_tiny.png",
             "horse_RGBA.png", "camera_L.png"]


def ml_dataset(root):
    """96 crops of the photos (random boxes, seeded), as PNGs under root, with their tags."""
    import random
    from PIL import Image
    rng = random.Random(SEED)
    labels = {}
    for name, (_, tags) in PHOTOS.items():
        src = Image.open(mf.photo(name)).convert("RGB")
        w, h = src.size
        for k in range(12):
            cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            crop = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((cw // 3, ch // 3))
            p = root / f"{name}_{k}.png"
            crop.save(p)
            labels[p.name] = tags
    return labels


def multilabel():
    import tempfile
    import torch
    from safetensors.torch import save_file
    from fastai.vision.all import (BCEWithLogitsLossFlat, DataBlock, ImageBlock,
                                   MultiCategoryBlock, Normalize, RandomSplitter, Resize,
                                   aug_transforms, imagenet_stats, set_seed, vision_learner)
    import export_fastai as ef
    import make_fixtures_models as mfm

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        labels = ml_dataset(root)
        set_seed(SEED, reproducible=True)
        dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock),
                           get_items=lambda r: sorted(Path(r).glob("*.png")),
                           get_y=lambda p: labels[Path(p).name],
                           splitter=RandomSplitter(0.2, seed=SEED),
                           item_tfms=Resize(ML_SIZE, method="pad", pad_mode="zeros"),
                           batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])
        dls = dblock.dataloaders(root, bs=16, num_workers=0)
        learn = vision_learner(dls, mfm.resnet_basic_1111, pretrained=False,
                               loss_func=BCEWithLogitsLossFlat(thresh=ML_THRESH))
        with learn.no_bar():
            learn.fit_one_cycle(8, 1e-2)
        learn.model.eval()
        summary = ef.export_learner(learn, OUT / "multilabel.safetensors")
        files = [mf.IMAGES / n for n in ML_IMAGES]
        dl = learn.dls.test_dl(files, num_workers=0)
        probs, _ = learn.get_preds(dl=dl)
        (x,) = dl.one_batch()
        x = torch.Tensor(x).as_subclass(torch.Tensor).float().contiguous()
        with torch.no_grad():
            logits = learn.model(x).float()
        d = (torch.sigmoid(logits) - probs).abs().max().item()
        assert d < 1e-6, f"get_preds is not sigmoid(model(input)): {d}"
        predicted = []
        for f in files:
            decoded, mask, p = learn.predict(f)
            predicted.append(list(decoded))
        vocab = list(dls.vocab)
        margin = float((probs - ML_THRESH).abs().min())
        save_file({"input": x, "logits": logits.contiguous(), "probs": probs.float().contiguous()},
                  str(OUT / "multilabel_golden.safetensors"))
        (OUT / "multilabel.json").write_text(json.dumps({
            "generated_by": "scripts/make_fixtures_tfms.py multilabel",
            "versions": mf.versions_info(), "images": ML_IMAGES, "vocab": vocab,
            "thresh": ML_THRESH, "labels": predicted, "min_margin_to_thresh": margin,
            "export": summary, "train_labels": labels}, indent=1) + "\n")
        print("vocab", vocab, "\nlabels", predicted, "\nmargin", margin)


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("tfms", "all"):
        tfms()
    if what in ("multilabel", "all"):
        multilabel()
    if what not in ("tfms", "multilabel", "all"):
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
