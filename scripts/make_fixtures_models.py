#!/usr/bin/env python3
"""Reference fixtures for the CNN bodies and fastai's create_head: small ResNet and ConvNeXt
learners made by fastai's own vision_learner, and the key layouts of full-size learners.

Run it in the reference environment (see scripts/make_fixtures.py), from any directory:

    ~/venv-ref/bin/python scripts/make_fixtures_models.py all

Subcommands (each can be run alone):
  models   build every learner of MODELS through `vision_learner(dls, arch, pretrained=False,
           ...)` on one DataLoaders (the lossless fixture PNGs, 3 classes, `Resize((64, 80))`,
           `Normalize.from_stats(*imagenet_stats)`), train it briefly (`fit_one_cycle`, so the
           BatchNorm statistics are real), round its floats to f16 and load them back, then write
           tests/fixtures/models/<name>.safetensors (the f16 state_dict; metadata `vocab`,
           `arch`, `head`) and, in tests/fixtures/models/golden.safetensors, `input` (fastai's
           normalized batch of GOLDEN_IMAGES from `learn.dls.test_dl(...).one_batch()`, shared by
           every model: one DataLoaders) and, per model, `<name>.logits` (`learn.model.eval()` on
           that input) and `<name>.probs` (`learn.get_preds(dl=...)`, fastai's softmax), plus
           manifest.json.
  layouts  tests/fixtures/models/layouts.json: key -> shape of the state_dict of full-size
           learners (`vision_learner(dls, resnet18/34/50/101/152, pretrained=False)` with
           torchvision's functions, and the timm strings 'resnet50', 'convnext_tiny',
           'convnext_small', 'convnext_base', 'vit_tiny_patch16_224') for 37 classes; shapes
           only, no weights.
           `models NAME ...` rebuilds only those models, keeping the others' entries.
  all      models, then layouts.

Training on CPU is not bit-reproducible across machines and library versions; the goldens are
computed from the f16 values written, so they agree with the committed weights whatever the
training gave. Nothing is downloaded (pretrained=False everywhere).
"""
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import make_fixtures as mf  # noqa: E402

ROOT = mf.ROOT
OUT = ROOT / "tests" / "fixtures" / "models"
SEED = mf.SEED
SIZE = (64, 80)  # (height, width): odd feature-map sizes deep in the nets (5x3 after ResNet's layer4)
EPOCHS = 4
# Training items: the lossless fixture images, three classes.
CLASSES = {
    "chelsea.png": "cat", "chelsea_P.png": "cat", "astronaut_portrait.png": "other",
    "camera_L.png": "gray", "coins_LA.png": "gray", "horse_RGBA.png": "other",
    "coffee_RGBA.png": "other", "coffee_odd.png": "other", "rocket_tiny.png": "other",
    "retina_large.png": "other",
}
GOLDEN_IMAGES = ["chelsea.png", "astronaut_portrait.png", "coffee_odd.png", "rocket_tiny.png"]


def narrow_resnet(block, layers, widths, groups=1, width_per_group=64):
    """A torchvision ResNet with narrower stages: torchvision's own `ResNet`, `BasicBlock`,
    `Bottleneck` and `_make_layer`, and the same children (conv1, bn1, relu, maxpool,
    layer1-4, avgpool, fc) as `ResNet.__init__` builds, with `widths` in place of
    (64, 128, 256, 512) so the fixture stays small."""
    import torch.nn as nn
    from torchvision.models.resnet import ResNet

    m = ResNet.__new__(ResNet)
    nn.Module.__init__(m)
    m._norm_layer = nn.BatchNorm2d
    m.inplanes, m.dilation, m.groups, m.base_width = widths[0], 1, groups, width_per_group
    m.conv1 = nn.Conv2d(3, m.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    m.bn1 = nn.BatchNorm2d(m.inplanes)
    m.relu = nn.ReLU(inplace=True)
    m.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    m.layer1 = m._make_layer(block, widths[0], layers[0])
    m.layer2 = m._make_layer(block, widths[1], layers[1], stride=2)
    m.layer3 = m._make_layer(block, widths[2], layers[2], stride=2)
    m.layer4 = m._make_layer(block, widths[3], layers[3], stride=2)
    m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    m.fc = nn.Linear(widths[3] * block.expansion, 1000)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return m


def resnet_basic_1111(pretrained=False):
    """torchvision ResNet(BasicBlock, [1, 1, 1, 1]) at widths (8, 16, 32, 64)."""
    from torchvision.models.resnet import BasicBlock
    return narrow_resnet(BasicBlock, [1, 1, 1, 1], (8, 16, 32, 64))


def resnet_bottleneck_2111(pretrained=False):
    """torchvision ResNet(Bottleneck, [2, 1, 1, 1], groups=2) at widths (8, 16, 32, 64)."""
    from torchvision.models.resnet import Bottleneck
    return narrow_resnet(Bottleneck, [2, 1, 1, 1], (8, 16, 32, 64), groups=2)


# name -> (arch, vision_learner kwargs, what it covers)
MODELS = {
    "resnet_basic": (resnet_basic_1111, {},
                     "torchvision BasicBlock [1,1,1,1]; default head (concat pool, lin_ftrs [512])"),
    "resnet_bottleneck": (resnet_bottleneck_2111, {"concat_pool": False},
                          "torchvision Bottleneck [2,1,1,1], groups 2; concat_pool=False"),
    "resnet_timm": ("resnet18", {"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 64),
                                 "stem_width": 8, "lin_ftrs": [32, 16]},
                    "timm ResNet (BasicBlock) through fastai's kwargs; lin_ftrs [32, 16]"),
    "resnet_lin_first": (resnet_basic_1111, {"lin_first": True, "bn_final": True,
                                             "lin_ftrs": [24]},
                         "torchvision BasicBlock; lin_first=True, bn_final=True, lin_ftrs [24]"),
    "convnext": ("convnext_tiny", {"depths": (1, 1, 2, 1), "dims": (16, 32, 48, 64)},
                 "timm ConvNeXt depths (1,1,2,1) dims (16,32,48,64); default head"),
    "convnext_plain_head": ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32),
                                              "concat_pool": False, "first_bn": False,
                                              "ps": 0.0, "lin_ftrs": []},
                            "timm ConvNeXt; concat_pool=False, first_bn=False, ps=0, lin_ftrs []"),
    # (timm.create_model drops None kwargs, so ls_init_value=None cannot reach the model.)
    "convnext_conv_mlp": ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32),
                                            "conv_mlp": True, "head_norm_first": True,
                                            "lin_ftrs": [16]},
                          "timm ConvNeXt with conv_mlp=True (1x1-conv MLP, LayerNorm2d), "
                          "head_norm_first=True (norm_pre); lin_ftrs [16]"),
}


def dataloaders():
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Normalize,
                                   Resize, imagenet_stats)
    items = [mf.IMAGES / n for n in CLASSES] * 4
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock),
                       get_y=lambda p: CLASSES[Path(p).name],
                       splitter=IndexSplitter(range(len(CLASSES))),
                       item_tfms=Resize(SIZE),
                       batch_tfms=Normalize.from_stats(*imagenet_stats))
    return dblock.dataloaders(items, bs=5, num_workers=0)


def build(name, dls, train=True):
    from fastai.vision.all import set_seed, vision_learner
    arch, kwargs, _ = MODELS[name]
    set_seed(SEED, reproducible=True)
    learn = vision_learner(dls, arch, pretrained=False, **kwargs)
    if train:
        learn.fit_one_cycle(EPOCHS, 1e-2)
    return learn


def round_to_f16(learn):
    """The state_dict with every float rounded to f16 (what the fixture stores); the model is
    reloaded with those values in f32, so the goldens are what the file computes."""
    import torch
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous()
          for k, v in learn.model.state_dict().items()}
    learn.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in sd.items()})
    return sd


def models(names=None):
    """Every model of MODELS, or only `names`: then the other models' entries of the existing
    golden.safetensors and manifest.json are kept (the input is the same, one DataLoaders)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    dls = dataloaders()
    files = [mf.IMAGES / n for n in GOLDEN_IMAGES]
    golden, manifest = {}, []
    if names:
        unknown = set(names) - set(MODELS)
        assert not unknown, f"unknown models {unknown}; known: {list(MODELS)}"
        golden = load_file(str(OUT / "golden.safetensors"))
        old = json.loads((OUT / "manifest.json").read_text())["models"]
        manifest = [m for m in old if m["name"] not in names]
        golden = {k: v for k, v in golden.items() if k.split(".")[0] not in names}
    for name, (arch, kwargs, covers) in MODELS.items():
        if names and name not in names:
            continue
        print(f"== {name}: {covers}", flush=True)
        learn = build(name, dls)
        sd = round_to_f16(learn)
        learn.model.eval()
        dl = learn.dls.test_dl(files, num_workers=0)
        (x,) = dl.one_batch()
        x = torch.Tensor(x).as_subclass(torch.Tensor).contiguous().float()
        if "input" in golden:
            assert torch.equal(golden["input"], x), "one DataLoaders, one input"
        golden["input"] = x
        with torch.no_grad():
            logits = learn.model(x).float()
        probs, _ = learn.get_preds(dl=dl)
        probs = probs.float()
        d = (torch.softmax(logits, 1) - probs).abs().max().item()
        assert d < 1e-6, f"{name}: get_preds is not softmax(model(input)): {d}"
        golden[f"{name}.logits"] = logits.contiguous()
        golden[f"{name}.probs"] = probs.contiguous()
        top2 = probs.topk(2, dim=1).values
        arch_name = arch if isinstance(arch, str) else arch.__name__
        meta = {"vocab": json.dumps(list(dls.vocab)), "arch": arch_name,
                "vision_learner_kwargs": json.dumps({k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in kwargs.items()}),
                "head": repr(learn.model[1]).replace("\n", " ")}
        save_file(sd, str(OUT / f"{name}.safetensors"), metadata=meta)
        manifest.append({
            "name": name, "arch": arch_name, "kwargs": meta["vision_learner_kwargs"],
            "covers": covers, "num_tensors": len(sd),
            "params": int(sum(v.numel() for v in sd.values() if v.is_floating_point())),
            "top1": probs.argmax(1).tolist(),
            "min_margin": float((top2[:, 0] - top2[:, 1]).min()),
        })
        print(learn.model[1])
        print(f"   logits {logits.tolist()}\n   margin {manifest[-1]['min_margin']:.4f}")
    order = {n: i for i, n in enumerate(MODELS)}
    manifest.sort(key=lambda m: order[m["name"]])
    save_file(golden, str(OUT / "golden.safetensors"))
    (OUT / "manifest.json").write_text(json.dumps({
        "generated_by": "scripts/make_fixtures_models.py models",
        "versions": mf.versions_info(), "size": list(SIZE), "images": GOLDEN_IMAGES,
        "vocab": list(dls.vocab), "models": manifest}, indent=1) + "\n")


LAYOUTS = {
    # name -> (arch: a torchvision function name or a timm string, is_timm)
    "resnet18": ("resnet18", False),
    "resnet34": ("resnet34", False),
    "resnet50": ("resnet50", False),
    "resnet101": ("resnet101", False),
    "resnet152": ("resnet152", False),
    "resnet50_timm": ("resnet50", True),
    "convnext_tiny": ("convnext_tiny", True),
    "convnext_small": ("convnext_small", True),
    "convnext_base": ("convnext_base", True),
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224", True),
}


def layouts():
    import torch
    import torchvision.models as tvm
    from fastai.vision.all import vision_learner

    torch.set_num_threads(2)
    dls = dataloaders()
    out = {"generated_by": "scripts/make_fixtures_models.py layouts",
           "versions": mf.versions_info(), "n_out": 37, "learners": {}}
    for name, (arch, is_timm) in LAYOUTS.items():
        print(f"== {name}", flush=True)
        learn = vision_learner(dls, arch if is_timm else getattr(tvm, arch), pretrained=False,
                               n_out=37)
        sd = learn.model.state_dict()
        out["learners"][name] = {
            "vision_learner": (f"vision_learner(dls, '{arch}', pretrained=False, n_out=37)"
                               if is_timm else
                               f"vision_learner(dls, torchvision.models.{arch}, pretrained=False, "
                               "n_out=37)"),
            "arch": arch,
            "keys": [[k, list(v.shape)] for k, v in sd.items()],
        }
    text = json.dumps(out, separators=(",", ":"))
    # One key per line keeps diffs readable.
    text = text.replace('],["', '],\n["')
    (OUT / "layouts.json").write_text(text + "\n")


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else "all"
    if cmd in ("models", "all"):
        models(sys.argv[2:] if cmd == "models" else None)
    if cmd in ("layouts", "all"):
        layouts()
    if cmd not in ("models", "layouts", "all"):
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
