#!/usr/bin/env python3
"""Exports a fastai vision Learner to one self-describing safetensors file for fastai-infer.

    python scripts/export_fastai.py [--dtype f32|f16|bf16] EXPORT_PKL OUTPUT.safetensors
    python scripts/export_fastai.py --self-test

EXPORT_PKL is what `learn.export()` wrote (any file name: export.pkl, model.pth, ...), read
with `fastai.learner.load_learner(path, cpu=True)` (which unpickles it: only pass files you
trust). A `learn.save()` .pth holds only the weights, not the vocab nor the transforms: it is
refused; convert it with `cargo run --example convert` and explicit recipe flags (or
`--recipe FILE`) instead.

From Python, for a live Learner:

    import sys; sys.path.insert(0, "scripts")
    from export_fastai import export_learner
    export_learner(learn, "model.safetensors", dtype="f16")

The file holds `learn.model.state_dict()` with fastai's own key names (`0.*`: the body;
`1.N.*`: fastai's head, BatchNorm running statistics and `num_batches_tracked` included),
floating-point tensors cast to --dtype (integer tensors kept as they are), and two metadata
entries (safetensors metadata values are strings):

  "vocab"                JSON array: list(learn.dls.vocab)
  "fastai_infer.recipe"  JSON object, format version 2 (see fastai_infer::recipe):
      {"format_version": 2, "arch": "resnet34",
       "item_tfms": [{"name": "Resize", "height": H, "width": W, "method": "crop",
                      "pad_mode": "reflection", "resample": "bilinear"}],
       "batch_tfms": [{"name": "IntToFloatTensor", "div": 255.0},
                      {"name": "AffineCoordTfm", "height": null, "width": null,
                       "mode": "bilinear", "pad_mode": "reflection", "align_corners": true},
                      {"name": "Normalize", "mean": [r, g, b], "std": [r, g, b]}],
       "loss_func": {"name": "BCEWithLogitsLossFlat", "thresh": 0.5}}
    item_tfms: Resize / CropPad / RandomResizedCrop steps in pipeline order; batch_tfms:
    IntToFloatTensor, then the optional AffineCoordTfm (height/width null: aug_transforms()
    without a size) and the optional Normalize; loss_func: CrossEntropyLossFlat (softmax) or
    BCEWithLogitsLossFlat with its thresh (multi-label). "num_heads" is added for a ViT only
    when neither the arch name nor embed_dim/64 gives the number of attention heads, which is
    how fastai-infer derives it otherwise.

Every value is read from the Learner's validation pipelines (`learn.dls.valid.after_item`,
`.after_batch`), its model and its loss function, then checked end to end: fastai's own
`test_dl` batch of two synthetic images must equal what the recipe alone describes (fastai's
item transforms rebuilt from it, then IntToFloatTensor, the identity-affine grid sample and
Normalize).

Refused (exit code 2, the message names the transform or module and what is supported), for
anything fastai-infer cannot reproduce at validation time:
  - item transforms other than Resize (crop/squish/pad; reflection/zeros/border; PIL bilinear
    or nearest), CropPad and RandomResizedCrop (bilinear or nearest) + ToTensor: RatioResize,
    RandomCrop, other resamples, ... (training-only ones, split_idx 0, are ignored);
  - batch transforms other than IntToFloatTensor(div=255), at most one AffineCoordTfm
    (aug_transforms: mode bilinear, align_corners True) and at most one 3-channel Normalize;
    e.g. RandomResizedCropGPU (aug_transforms(min_scale<1)); training-only ones are ignored;
  - a model that is not nn.Sequential(body, head) with a TimmBody(timm VisionTransformer with a
    class token, global_pool 'token', no register tokens, square input) and fastai's default
    head, or a torchvision ResNet cut by create_body / TimmBody(timm ResNet or ConvNeXt) with
    create_head's modules (fastai-infer's loader then checks the exact layout);
  - a loss function whose activation/decodes are neither softmax + argmax nor sigmoid +
    `> thresh`.

Exit codes: 0 written; 1 usage or I/O error; 2 refused.
`--self-test` builds small learners (pretrained=False, no training, the images in
tests/fixtures/images) with each refused setup, exports them with learn.export to a temporary
folder, runs this exporter on them and checks the refusal messages; and checks the recipe of
accepted setups, non-square sizes included.
"""
import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
from pathlib import Path

RECIPE_KEY = "fastai_infer.recipe"
FORMAT_VERSION = 2
EXIT_REFUSED = 2

ITEM_SUPPORT = ("fastai-infer reproduces Resize (method crop/squish/pad, pad_mode "
                "reflection/zeros/border, PIL bilinear or nearest), CropPad and "
                "RandomResizedCrop (PIL bilinear or nearest), then ToTensor, as item transforms")
BATCH_SUPPORT = ("fastai-infer reproduces only IntToFloatTensor(div=255), at most one "
                 "AffineCoordTfm (aug_transforms with or without a size: mode 'bilinear', "
                 "align_corners=True) and at most one 3-channel Normalize as batch transforms")
MODEL_SUPPORT = ("fastai-infer runs vision_learner models: nn.Sequential(body, head) with a "
                 "TimmBody(timm VisionTransformer with a class token, global_pool='token', no "
                 "register tokens) and fastai's default head, or a torchvision ResNet cut by "
                 "create_body / a TimmBody(timm ResNet or ConvNeXt) with fastai's create_head")
LOSS_SUPPORT = ("fastai-infer decodes CrossEntropyLossFlat (softmax, argmax) and "
                "BCEWithLogitsLossFlat (sigmoid, labels over thresh)")


class ExportRefused(Exception):
    """The Learner uses something fastai-infer cannot reproduce; the message says what."""


def _refuse(msg):
    raise ExportRefused(msg)


def _dtype(name):
    import torch
    table = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, not {name!r}")
    return table[name]


def _f32(v):
    """A float32 value as the shortest decimal that reads back as the same float32."""
    import numpy as np
    return float(str(np.float32(v)))


def _desc(t):
    """A transform's name and its fastai repr on one line."""
    return f"{type(t).__name__} ({' '.join(repr(t).split())})"


def _runs_on_valid(t):
    """Whether a transform runs on the validation set (split_idx None or 1).

    AffineCoordTfm.before_call overwrites its own instance `split_idx` with the split of the
    last batch it saw (0 after a training batch), so its class attribute (None: it always
    runs, as an identity affine at validation) is what counts.
    """
    from fastai.vision.augment import AffineCoordTfm
    si = type(t).split_idx if isinstance(t, AffineCoordTfm) else getattr(t, "split_idx", None)
    return si is None or si == 1


def _pipeline(learn_or_dls, name):
    dls = getattr(learn_or_dls, "dls", learn_or_dls)
    valid = getattr(dls, "valid", None)
    p = getattr(valid, name, None) if valid is not None else None
    return p if p is not None else getattr(dls, name)


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------

def _sides(size):
    """fastai's item transforms store size as (width, height) (`_process_sz`)."""
    width, height = (int(s) for s in size)
    return height, width


_RESAMPLES = None


def _resample_name(t, mode):
    from PIL import Image
    table = {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.NEAREST: "nearest"}
    try:
        return table[Image.Resampling(mode)]
    except (KeyError, ValueError):
        _refuse(f"item transform {_desc(t)} resamples images with "
                f"{getattr(Image.Resampling(mode), 'name', mode)}; {ITEM_SUPPORT}")


def _pad_name(t, pad_mode):
    p = str(pad_mode)
    if p not in ("reflection", "zeros", "border"):
        _refuse(f"item transform {_desc(t)} has pad_mode {pad_mode!r}; {ITEM_SUPPORT}")
    return p


def item_recipe(dls):
    """The validation item pipeline (in order) as the recipe's item_tfms list."""
    from fastai.data.transforms import ToTensor
    from fastai.vision.augment import CropPad, RandomResizedCrop, Resize

    steps, to_tensor = [], []
    for t in _pipeline(dls, "after_item").fs:
        if not _runs_on_valid(t):
            continue
        if type(t) is RandomResizedCrop:
            vx = float(t.val_xtra)
            if not (math.isfinite(vx) and vx >= 0):
                _refuse(f"item transform {_desc(t)} has val_xtra {vx}; it must be a finite "
                        f"number >= 0")
            h, w = _sides(t.size)
            steps.append({"name": "RandomResizedCrop", "height": h, "width": w,
                          "val_xtra": vx, "resample": _resample_name(t, t.mode)})
        elif type(t) is Resize:
            h, w = _sides(t.size)
            method = str(t.method)
            if method not in ("crop", "squish", "pad"):
                _refuse(f"item transform {_desc(t)} has method {t.method!r}; {ITEM_SUPPORT}")
            steps.append({"name": "Resize", "height": h, "width": w, "method": method,
                          "pad_mode": _pad_name(t, t.pad_mode),
                          "resample": _resample_name(t, t.mode)})
        elif type(t) is CropPad:
            h, w = _sides(t.size)
            steps.append({"name": "CropPad", "height": h, "width": w,
                          "pad_mode": _pad_name(t, t.pad_mode)})
        elif isinstance(t, ToTensor):
            to_tensor.append(t)
        else:
            _refuse(f"item transform {_desc(t)} runs on the validation set; {ITEM_SUPPORT}")
    if not steps:
        _refuse(f"the item transforms hold no Resize, CropPad or RandomResizedCrop: images of "
                f"different sizes cannot be batched; {ITEM_SUPPORT}")
    if len(to_tensor) != 1:
        _refuse(f"the item transforms hold {len(to_tensor)} ToTensor (need exactly one); "
                f"{ITEM_SUPPORT}")
    return steps


def batch_recipe(dls):
    """The validation batch pipeline as the recipe's batch_tfms list: IntToFloatTensor, then
    an optional AffineCoordTfm (aug_transforms), then an optional Normalize."""
    from fastai.data.transforms import IntToFloatTensor, Normalize
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU

    before = [t for t in _pipeline(dls, "before_batch").fs if _runs_on_valid(t)]
    if before:
        _refuse(f"before_batch transform {_desc(before[0])} runs on the validation set; "
                f"fastai-infer reproduces no before_batch transforms")
    to_float, affine, norm = [], [], []
    for t in _pipeline(dls, "after_batch").fs:
        if not _runs_on_valid(t):
            continue
        if isinstance(t, RandomResizedCropGPU):
            _refuse(f"batch transform {_desc(t)} runs on the validation set (aug_transforms "
                    f"adds it when min_scale < 1); {BATCH_SUPPORT}")
        if type(t) is IntToFloatTensor:
            to_float.append(t)
        elif isinstance(t, AffineCoordTfm):
            affine.append(t)
        elif type(t) is Normalize:
            norm.append(t)
        else:
            _refuse(f"batch transform {_desc(t)} runs on the validation set; {BATCH_SUPPORT}")

    if len(to_float) != 1:
        _refuse(f"the batch transforms hold {len(to_float)} IntToFloatTensor (need exactly "
                f"one); {BATCH_SUPPORT}")
    if float(to_float[0].div) != 255.0:
        _refuse(f"batch transform {_desc(to_float[0])} divides by {to_float[0].div}; "
                f"{BATCH_SUPPORT}")
    steps = [{"name": "IntToFloatTensor", "div": 255.0}]

    if len(affine) > 1:
        _refuse(f"the batch transforms hold {len(affine)} AffineCoordTfm "
                f"({', '.join(type(a).__name__ for a in affine)}; need at most one); "
                f"{BATCH_SUPPORT}")
    for a in affine:
        if a.mode != "bilinear":
            _refuse(f"batch transform {_desc(a)} has mode {a.mode!r}; {BATCH_SUPPORT}")
        if str(a.pad_mode) not in ("reflection", "zeros", "border"):
            _refuse(f"batch transform {_desc(a)} has pad_mode {a.pad_mode!r}; {BATCH_SUPPORT}")
        if a.align_corners is not True:
            _refuse(f"batch transform {_desc(a)} has align_corners={a.align_corners!r}; "
                    f"{BATCH_SUPPORT}")
        # AffineCoordTfm keeps size as the user gave it, (height, width); None keeps the
        # item's size (the identity affine still resamples: fastai's grid_sample runs).
        if a.size is None:
            height = width = None
        elif isinstance(a.size, int):
            height = width = int(a.size)
        else:
            height, width = (int(s) for s in a.size)
        steps.append({"name": "AffineCoordTfm", "height": height, "width": width,
                      "mode": "bilinear", "pad_mode": str(a.pad_mode), "align_corners": True})

    if len(norm) > 1:
        _refuse(f"the batch transforms hold {len(norm)} Normalize (need at most one); "
                f"{BATCH_SUPPORT}")
    for n in norm:
        if n.mean is None or n.std is None:
            _refuse(f"batch transform {_desc(n)} has no statistics; {BATCH_SUPPORT}")
        mean = [_f32(v) for v in n.mean.detach().cpu().float().flatten().tolist()]
        std = [_f32(v) for v in n.std.detach().cpu().float().flatten().tolist()]
        if len(mean) != 3 or len(std) != 3 or tuple(n.mean.shape) != (1, 3, 1, 1) \
                or tuple(n.std.shape) != (1, 3, 1, 1) or tuple(n.axes) != (0, 2, 3):
            _refuse(f"batch transform {_desc(n)} is not a per-channel 3-channel Normalize "
                    f"(mean shape {tuple(n.mean.shape)}, std shape {tuple(n.std.shape)}, axes "
                    f"{tuple(n.axes)}); {BATCH_SUPPORT}")
        if not all(math.isfinite(v) for v in mean) \
                or not all(math.isfinite(v) and v > 0 for v in std):
            _refuse(f"batch transform {_desc(n)} has non-finite or non-positive statistics")
        steps.append({"name": "Normalize", "mean": mean, "std": std})
    return steps


def transforms_recipe(dls):
    """The item and batch transforms of a DataLoaders' validation pipeline (recipe format 2)."""
    return {"item_tfms": item_recipe(dls), "batch_tfms": batch_recipe(dls)}


def input_size(recipe):
    """(height, width) of the model input the recipe's transforms make."""
    for b in recipe["batch_tfms"]:
        if b["name"] == "AffineCoordTfm" and b["height"] is not None:
            return b["height"], b["width"]
    last = recipe["item_tfms"][-1]
    return last["height"], last["width"]


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------

def _heads_from_name(arch, embed_dim):
    """How fastai-infer derives the attention heads when the recipe has no num_heads."""
    table = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}
    parts = arch.split("_") if arch else []
    if arch and arch.startswith("vit_") and len(parts) > 1 and parts[1] in table:
        return table[parts[1]]
    return embed_dim // 64


def model_info(learn, n_classes):
    """Checks the model is a fastai ViT learner fastai-infer runs; returns arch and heads."""
    import torch.nn as nn
    from fastai.vision.learner import TimmBody
    from timm.layers import Mlp, PatchEmbed
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    m = learn.model
    if not isinstance(m, nn.Sequential) or len(m) != 2:
        _refuse(f"the model is a {type(m).__name__}, not nn.Sequential(body, head); {MODEL_SUPPORT}")
    body, head = m[0], m[1]
    if not isinstance(body, TimmBody):
        _refuse(f"the model's body is a {type(body).__name__}, not fastai's TimmBody; {MODEL_SUPPORT}")
    vit = body.model
    if type(vit) is not VisionTransformer:
        _refuse(f"the TimmBody wraps a {type(vit).__module__}.{type(vit).__name__}, not timm's "
                f"VisionTransformer; {MODEL_SUPPORT}")
    if body.needs_pool:
        _refuse(f"the TimmBody pools the features itself (needs_pool); {MODEL_SUPPORT}")

    def bad(what):
        _refuse(f"the timm VisionTransformer has {what}; {MODEL_SUPPORT}")

    if vit.cls_token is None or not getattr(vit, "has_class_token", True):
        bad("no class token")
    if vit.global_pool != "token":
        bad(f"global_pool={vit.global_pool!r}")
    if getattr(vit, "num_reg_tokens", 0) or getattr(vit, "reg_token", None) is not None:
        bad(f"{getattr(vit, 'num_reg_tokens', '?')} register tokens")
    if getattr(vit, "no_embed_class", False):
        bad("no_embed_class=True")
    if getattr(vit, "dynamic_img_size", False):
        bad("dynamic_img_size=True")
    if getattr(vit, "attn_pool", None) is not None:
        bad("an attention-pool head")
    for name in ("norm_pre", "fc_norm", "head", "patch_drop"):
        if not isinstance(getattr(vit, name, nn.Identity()), nn.Identity):
            bad(f"a {type(getattr(vit, name)).__name__} {name}")
    if vit.pos_embed is None:
        bad("no position embedding")
    pe = vit.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.Identity) \
            or pe.proj.bias is None or tuple(pe.proj.stride) != tuple(pe.proj.kernel_size) \
            or tuple(pe.proj.padding) != (0, 0) or pe.proj.kernel_size[0] != pe.proj.kernel_size[1]:
        bad(f"a non-standard patch embedding ({pe})")
    if pe.proj.in_channels != 3:
        bad(f"{pe.proj.in_channels} input channels (fastai-infer feeds RGB)")
    ih, iw = pe.img_size
    if ih != iw or ih % pe.proj.kernel_size[0]:
        bad(f"a non-square or non-multiple input size {pe.img_size}")
    if not isinstance(vit.norm, nn.LayerNorm) or vit.norm.eps != 1e-6:
        bad(f"a final norm {vit.norm} (need LayerNorm eps=1e-6)")
    for i, blk in enumerate(vit.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention or type(blk.mlp) is not Mlp:
            bad(f"a non-standard block {i} ({type(blk).__name__}, {type(blk.attn).__name__}, "
                f"{type(blk.mlp).__name__})")
        for name in ("ls1", "ls2"):
            if not isinstance(getattr(blk, name), nn.Identity):
                bad(f"layer scale in block {i}")
        for name in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(blk.attn, name, nn.Identity()), nn.Identity):
                bad(f"attention {name} in block {i}")
        if blk.attn.qkv.bias is None:
            bad(f"no qkv bias in block {i}")
        act = blk.mlp.act
        if type(act) is not nn.GELU or act.approximate != "none":
            bad(f"MLP activation {act} in block {i} (need exact GELU)")
        if not isinstance(getattr(blk.mlp, "norm", nn.Identity()), nn.Identity):
            bad(f"an MLP norm in block {i}")
        for name in ("norm1", "norm2"):
            ln = getattr(blk, name)
            if not isinstance(ln, nn.LayerNorm) or ln.eps != 1e-6:
                bad(f"{name} {ln} in block {i} (need LayerNorm eps=1e-6)")

    depth, embed = len(vit.blocks), vit.embed_dim
    kinds = [type(x) for x in head] if isinstance(head, nn.Sequential) else [type(head)]
    want_kinds = [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout,
                  nn.Linear]
    if kinds != want_kinds:
        _refuse(f"the head is {[k.__name__ for k in kinds]}, not fastai's default head "
                f"{[k.__name__ for k in want_kinds]}; {MODEL_SUPPORT}")
    for i in (0, 4):
        b = head[i]
        if b.eps != 1e-5 or not b.affine or not b.track_running_stats:
            _refuse(f"head BatchNorm1d 1.{i} is {b} (need eps=1e-05, affine, running stats); "
                    f"{MODEL_SUPPORT}")
    for i in (2, 6):
        if head[i].bias is not None:
            _refuse(f"head Linear 1.{i} has a bias; {MODEL_SUPPORT}")
    if head[0].num_features != embed or head[2].in_features != embed \
            or head[4].num_features != head[2].out_features \
            or head[6].in_features != head[2].out_features:
        _refuse(f"the head's widths do not chain ({head}); {MODEL_SUPPORT}")
    if head[6].out_features != n_classes:
        _refuse(f"the head has {head[6].out_features} outputs but the vocab {n_classes} labels")

    # The state_dict must have exactly the keys fastai-infer loads.
    want = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias"}
    for i in range(depth):
        for p in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            want |= {f"blocks.{i}.{p}.weight", f"blocks.{i}.{p}.bias"}
    want = {f"0.model.{k}" for k in want}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    want |= {f"1.0.{k}" for k in bn} | {f"1.4.{k}" for k in bn} | {"1.2.weight", "1.6.weight"}
    have = set(m.state_dict())
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        _refuse(f"the model's state_dict keys differ from a fastai ViT learner's (unexpected: "
                f"{extra[:5]}{' ...' if len(extra) > 5 else ''}; missing: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}); {MODEL_SUPPORT}")

    cfg = getattr(vit, "pretrained_cfg", None) or getattr(vit, "default_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        _refuse("the timm model records no architecture name (pretrained_cfg['architecture'])")
    heads = vit.blocks[0].attn.num_heads
    return {"arch": arch, "num_heads": heads, "img_size": (ih, iw),
            "num_heads_needed": heads != _heads_from_name(arch, embed)}


CNN_HEAD_MODULES = ("AdaptiveConcatPool2d", "AdaptiveAvgPool2d", "Flatten", "BatchNorm1d",
                    "Dropout", "Linear", "ReLU")


def cnn_info(learn, n_classes):
    """Checks the model is a fastai CNN learner fastai-infer runs (a torchvision ResNet cut by
    create_body, or timm's ResNet/ConvNeXt in a TimmBody, with fastai's create_head); returns
    the arch name (None when fastai recorded none). fastai-infer's loader reads the exact
    layout off the state_dict's keys and shapes and refuses anything else, naming it."""
    import torch.nn as nn
    from fastai.vision.learner import TimmBody

    m = learn.model
    if not isinstance(m, nn.Sequential) or len(m) != 2:
        _refuse(f"the model is a {type(m).__name__}, not nn.Sequential(body, head); {MODEL_SUPPORT}")
    body, head = m[0], m[1]
    arch = None
    if isinstance(body, TimmBody):
        inner = body.model
        kind = f"{type(inner).__module__}.{type(inner).__name__}"
        if kind not in ("timm.models.resnet.ResNet", "timm.models.convnext.ConvNeXt"):
            _refuse(f"the TimmBody wraps a {kind}; {MODEL_SUPPORT}")
        cfg = getattr(inner, "pretrained_cfg", None) or getattr(inner, "default_cfg", None) or {}
        arch = cfg.get("architecture")
    elif isinstance(body, nn.Sequential):
        from torchvision.models.resnet import BasicBlock, Bottleneck
        kinds = [type(c).__name__ for c in body]
        if kinds[:4] != ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] or len(kinds) != 8 \
                or not all(isinstance(s, nn.Sequential) and all(
                    isinstance(b, (BasicBlock, Bottleneck)) for b in s) for s in body[4:]):
            _refuse(f"the model's body is nn.Sequential({', '.join(kinds)}), not a torchvision "
                    f"ResNet cut by create_body; {MODEL_SUPPORT}")
        a = getattr(learn, "arch", None)
        arch = a if isinstance(a, str) else getattr(a, "__name__", None)
    else:
        _refuse(f"the model's body is a {type(body).__name__}, not fastai's TimmBody or a "
                f"create_body ResNet; {MODEL_SUPPORT}")
    mods = list(head) if isinstance(head, nn.Sequential) else [head]
    bad = [type(x).__name__ for x in mods if type(x).__name__ not in CNN_HEAD_MODULES]
    if bad:
        _refuse(f"the head holds {', '.join(bad)}, not only fastai's create_head modules "
                f"({', '.join(CNN_HEAD_MODULES)}); {MODEL_SUPPORT}")
    lins = [x for x in mods if isinstance(x, nn.Linear)]
    if not lins or lins[-1].out_features != n_classes:
        _refuse(f"the head's last Linear has {lins[-1].out_features if lins else 'no'} outputs "
                f"but the vocab {n_classes} labels")
    return {"arch": arch}


def is_vit_learner(learn):
    import torch.nn as nn
    from fastai.vision.learner import TimmBody
    m = learn.model
    return isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], TimmBody) \
        and "VisionTransformer" in type(m[0].model).__name__


def loss_recipe(learn):
    """The loss function's activation and decoding as the recipe's loss_func: softmax + argmax
    (CrossEntropyLossFlat) or sigmoid + threshold (BCEWithLogitsLossFlat)."""
    import torch
    lf = learn.loss_func
    act = getattr(lf, "activation", None)
    dec = getattr(lf, "decodes", None)
    name = type(lf).__name__
    if name == "BaseLoss" and getattr(lf, "func", None) is not None:
        name = f"BaseLoss({type(lf.func).__name__})"  # e.g. L1LossFlat()
    if act is None or dec is None:
        _refuse(f"the loss function {name} has no activation/decodes: fastai-infer cannot tell "
                f"how learn.predict decodes its outputs ({LOSS_SUPPORT})")
    x = torch.tensor([[0.3, -1.2, 2.0, 0.7]])
    try:
        a = act(x).float()
        d = torch.as_tensor(dec(x))
    except Exception as e:
        _refuse(f"the loss function {name}'s activation/decodes fail on a test row ({e}); "
                f"{LOSS_SUPPORT}")
    if torch.allclose(a, torch.softmax(x, dim=-1), atol=1e-6) and d.numel() == 1 \
            and int(d.flatten()[0]) == 2:
        return {"name": "CrossEntropyLossFlat"}
    thresh = getattr(lf, "thresh", None)
    if thresh is not None and torch.allclose(a, torch.sigmoid(x), atol=1e-6):
        t = float(thresh)
        probe = torch.tensor([[t - 1e-3, t + 1e-3, t, 5.0]])
        # fastai's BCEWithLogitsLossFlat.decodes is `x > thresh` on the activations.
        if math.isfinite(t) and torch.equal(torch.as_tensor(dec(probe)).bool().flatten(),
                                            torch.tensor([False, True, False, True])):
            return {"name": "BCEWithLogitsLossFlat", "thresh": _f32(t)}
    _refuse(f"the loss function {name}'s activation/decodes are neither softmax + argmax nor "
            f"sigmoid + `> thresh`; {LOSS_SUPPORT}")


def _fastai_steps(recipe):
    """fastai's own transform objects rebuilt from the recipe alone (validation split)."""
    import torch
    from PIL import Image
    from fastai.vision.augment import CropPad, RandomResizedCrop, Resize

    rs = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    items = []
    for s in recipe["item_tfms"]:
        size = (s["height"], s["width"])
        if s["name"] == "Resize":
            items.append(Resize(size, method=s["method"], pad_mode=s["pad_mode"],
                                resamples=(rs[s["resample"]], Image.Resampling.NEAREST)))
        elif s["name"] == "CropPad":
            items.append(CropPad(size, pad_mode=s["pad_mode"]))
        else:
            items.append(RandomResizedCrop(size, val_xtra=s["val_xtra"], resamples=(
                rs[s["resample"]], Image.Resampling.NEAREST)))
    return items


def check_reproduces(learn, recipe):
    """fastai's test_dl batch of two synthetic images (portrait and landscape) must equal what
    the recipe alone describes: fastai's own item transforms rebuilt from it, then
    IntToFloatTensor, the identity-affine grid sample and Normalize as the recipe says."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from fastai.vision.augment import _grid_sample

    first = recipe["item_tfms"][0]
    rng = np.random.default_rng(0)
    srcs = []
    for h0, w0 in ((max(9, first["height"] // 2 + 7), max(9, first["width"] // 3 + 5)),
                   (max(9, first["height"] // 3 + 4), max(9, first["width"] + 11))):
        yy, xx = np.mgrid[0:h0, 0:w0]
        base = np.stack([xx * 255 // w0, yy * 255 // h0, (xx + yy) % 256], -1)
        arr = np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
        srcs.append(Image.fromarray(arr, "RGB"))

    steps = _fastai_steps(recipe)
    wants = []
    for src in srcs:
        item = src
        for t in steps:
            item = t(item, split_idx=1)
        x = torch.from_numpy(np.asarray(item).copy()).permute(2, 0, 1)[None].float() / 255.0
        for b in recipe["batch_tfms"][1:]:
            if b["name"] == "AffineCoordTfm":
                h = x.shape[-2] if b["height"] is None else b["height"]
                w = x.shape[-1] if b["width"] is None else b["width"]
                grid = F.affine_grid(torch.eye(3)[:2][None], (1, 3, h, w), align_corners=True)
                x = _grid_sample(x, grid, mode="bilinear", padding_mode=b["pad_mode"],
                                 align_corners=True)
            else:
                x = (x - torch.tensor(b["mean"]).view(1, 3, 1, 1)) \
                    / torch.tensor(b["std"]).view(1, 3, 1, 1)
        wants.append(x)
    want = torch.cat(wants)

    # Files, as learn.predict gets: fastai's type transform opens them (PILImage.create
    # converts to RGB, PILImageBW to L); a PIL image in memory would skip that conversion.
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, src in enumerate(srcs):
            files.append(Path(d) / f"check{i}.png")
            src.save(files[-1])
        dl = learn.dls.test_dl(files, num_workers=0, bs=len(files))
        got = dl.one_batch()[0]
    got = torch.Tensor(got.detach().cpu().float()).as_subclass(torch.Tensor)
    sizes = ", ".join(f"{s.width}x{s.height}" for s in srcs)
    if tuple(got.shape) != tuple(want.shape):
        _refuse(f"fastai's validation pipeline gives a batch of shape {tuple(got.shape)} for "
                f"{sizes} RGB images, the recipe {tuple(want.shape)}: the learner does "
                f"something the recipe does not describe (e.g. a grayscale ImageBlock)")
    d = (got - want).abs().max().item()
    if not d <= 1e-5:
        _refuse(f"fastai's validation pipeline differs from the recipe on {sizes} RGB images "
                f"(max |difference| {d:.3g}): the learner does something the recipe does not "
                f"describe (e.g. a grayscale ImageBlock or a custom type transform)")
    return d


def recipe_from_learner(learn, check=True):
    """The recipe dict (format 2) read from a Learner; raises ExportRefused when unsupported."""
    vocab = [v if isinstance(v, str) else str(v) for v in learn.dls.vocab]
    recipe = {"format_version": FORMAT_VERSION}
    recipe.update(transforms_recipe(learn.dls))
    if check:
        if is_vit_learner(learn):
            info = model_info(learn, len(vocab))
            recipe["arch"] = info["arch"]
            if info["num_heads_needed"]:
                recipe["num_heads"] = info["num_heads"]
            h, w = input_size(recipe)
            if (h, w) != tuple(info["img_size"]):
                _refuse(f"the batch transforms give {h}x{w} (HxW) inputs but the model takes "
                        f"{info['img_size'][0]}x{info['img_size'][1]}")
        else:
            info = cnn_info(learn, len(vocab))
            if info["arch"]:
                recipe["arch"] = info["arch"]
        recipe["loss_func"] = loss_recipe(learn)
    check_reproduces(learn, recipe)
    return recipe, vocab


def export_learner(learn, output_path, dtype="f32"):
    """Writes learn's weights, vocab and recipe to output_path; returns a summary dict."""
    import torch
    from safetensors.torch import save_file

    dt = _dtype(dtype)
    recipe, vocab = recipe_from_learner(learn)
    sd = {}
    for k, v in learn.model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.to(dt)
        sd[k] = v.contiguous().clone()
    meta = {"vocab": json.dumps(vocab), RECIPE_KEY: json.dumps(recipe)}
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(output_path), metadata=meta)
    return {"path": str(output_path), "tensors": len(sd), "dtype": dtype,
            "bytes": output_path.stat().st_size, "recipe": recipe, "vocab": vocab}


def load_export(path):
    """load_learner(path, cpu=True), refusing learn.save() state dicts with a clear message."""
    import warnings
    import zipfile
    import torch
    from fastai.learner import Learner, load_learner

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            obj = None  # needs more than tensors: a Learner, or fastai's {'model','opt'} save
        if obj is not None:
            _refuse(f"{path} is a plain state dict (learn.save(..., with_opt=False) or "
                    f"torch.save), not a learn.export() Learner: it holds no vocab and no "
                    f"transforms. Pass the file learn.export() writes, call export_learner(learn, "
                    f"...) from Python, or run `cargo run --example convert` with recipe flags")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            learn = load_learner(path, cpu=True)
        except AttributeError:
            # load_learner calls res.dls.cpu(): what did it unpickle? (the same trust as
            # load_learner itself: it unpickles arbitrary objects)
            learn = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(learn, dict):
                raise
    if isinstance(learn, dict):
        _refuse(f"{path} is a learn.save() file (keys {sorted(learn)[:4]}), not a "
                f"learn.export() Learner: it holds no vocab and no transforms. Pass the file "
                f"learn.export() writes, or run `cargo run --example convert` with recipe flags")
    if not isinstance(learn, Learner):
        _refuse(f"{path} holds a {type(learn).__name__}, not a fastai Learner")
    return learn


def export_file(input_path, output_path, dtype="f32"):
    return export_learner(load_export(input_path), output_path, dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Export a fastai ViT Learner (learn.export's file) to a safetensors file "
                    "with its vocab and preprocessing recipe, for fastai-infer.",
        epilog="exit codes: 0 written, 1 usage or I/O error, 2 refused (unsupported learner)")
    ap.add_argument("--dtype", choices=("f32", "f16", "bf16"), default="f32",
                    help="dtype of the floating-point tensors (default f32)")
    ap.add_argument("--self-test", action="store_true",
                    help="build small learners with supported and refused setups and check")
    ap.add_argument("input", nargs="?", help="learn.export()'s file (export.pkl)")
    ap.add_argument("output", nargs="?", help="the .safetensors file to write")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.input or not args.output:
        ap.print_usage(sys.stderr)
        print("error: INPUT and OUTPUT are required", file=sys.stderr)
        return 1
    try:
        info = export_file(args.input, args.output, args.dtype)
    except ExportRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {info['path']}: {info['tensors']} tensors ({info['dtype']}), "
          f"{info['bytes']} bytes, {len(info['vocab'])} labels")
    print(f"recipe: {json.dumps(info['recipe'])}")
    return 0


# ---------------------------------------------------------------------------------------------
# self-test
# ---------------------------------------------------------------------------------------------

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"


def _learner(item_tfms=None, batch_tfms=None, arch="vit_tiny_patch16_224", block=None,
             y_block=None, **kw):
    import warnings
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize,
                                   RandomResizedCrop, aug_transforms, imagenet_stats,
                                   vision_learner)
    vocab = ["cat", "coffee"]
    items = [IMAGES / "chelsea.png", IMAGES / "coffee_odd.png"]
    if item_tfms is None:
        item_tfms = RandomResizedCrop(224)
    if batch_tfms is None:
        batch_tfms = [*aug_transforms(size=224), Normalize.from_stats(*imagenet_stats)]
    dblock = DataBlock(
        blocks=(block or ImageBlock, y_block or CategoryBlock(vocab=vocab)),
        get_items=lambda _: items,
        get_y=(lambda p: [vocab[p.name.startswith("coffee")]]) if y_block is not None
        else (lambda p: vocab[p.name.startswith("coffee")]),
        splitter=lambda o: ([0], [1]),
        item_tfms=item_tfms, batch_tfms=batch_tfms)
    dls = dblock.dataloaders(IMAGES, bs=1, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vision_learner(dls, arch, pretrained=False, **kw)


def self_test():
    import os
    import subprocess
    import warnings
    import torch
    from PIL import Image
    from fastai.vision.all import (BCEWithLogitsLossFlat, CropPad, FlipItem, ImageBlock,
                                   L1LossFlat, MultiCategoryBlock,
                                   Normalize, PILImage, PILImageBW, RandomCrop,
                                   RandomResizedCrop, RatioResize, Resize, Rotate,
                                   TransformBlock, IntToFloatTensor, aug_transforms,
                                   imagenet_stats, resnet18, set_seed)
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fastai.vision.all import Transform

    class _AddOne(Transform):
        """A custom batch transform that runs on the validation set (split_idx None)."""
        order = 50

        def encodes(self, x):
            return x + 1

    warnings.filterwarnings("ignore")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    set_seed(0)
    norm = Normalize.from_stats(*imagenet_stats)
    tmp = Path(tempfile.mkdtemp(prefix="export_fastai_selftest_"))
    failures = []

    def run_cli(pkl, out, *flags):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([*flags, str(pkl), str(out)])
        return code, err.getvalue().strip()

    def export_pkl(learn, name):
        learn.path = tmp
        learn.export(f"{name}.pkl")
        return tmp / f"{name}.pkl"

    def expect_refusal(name, make, *says):
        try:
            learn = make()
            pkl = export_pkl(learn, name)
            code, msg = run_cli(pkl, tmp / f"{name}.safetensors")
            ok = code == EXIT_REFUSED and all(s in msg for s in says) \
                and not (tmp / f"{name}.safetensors").exists()
        except Exception as e:  # building the learner failed: a bug in the test
            code, msg, ok = None, f"{type(e).__name__}: {e}", False
        print(f"[{'ok' if ok else 'FAIL'}] {name}: exit {code}\n    {msg}")
        if not ok:
            failures.append(name)

    def expect_recipe(name, learn, want, check_model=True, dtype="f32"):
        try:
            if check_model:
                pkl = export_pkl(learn, name)
                out = tmp / f"{name}.safetensors"
                code, msg = run_cli(pkl, out, "--dtype", dtype)
                assert code == 0, f"exit {code}: {msg}"
                with safe_open(str(out), "pt") as f:
                    meta = f.metadata()
                recipe = json.loads(meta[RECIPE_KEY])
                vocab = json.loads(meta["vocab"])
                assert vocab == list(learn.dls.vocab), vocab
                sd, ref = load_file(str(out)), learn.model.state_dict()
                assert set(sd) == set(ref)
                dt = _dtype(dtype)
                for k, v in ref.items():
                    w = v.to(dt) if v.is_floating_point() else v
                    assert sd[k].dtype == w.dtype and torch.equal(sd[k], w), k
                nbt = [k for k in sd if k.endswith("num_batches_tracked")]
                assert nbt and all(sd[k].dtype == torch.int64 and sd[k].dim() == 0
                                   for k in nbt)
            else:
                recipe, _ = recipe_from_learner(learn, check=False)
            ok = all(recipe.get(k) == v for k, v in want.items())
            msg = json.dumps(recipe)
        except Exception as e:
            ok, msg = False, f"{type(e).__name__}: {e}"
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {msg}")
        if not ok:
            failures.append(name)

    pets_item = [{"name": "RandomResizedCrop", "height": 460, "width": 460, "val_xtra": 0.14,
                  "resample": "bilinear"}]
    to_float = {"name": "IntToFloatTensor", "div": 255.0}
    affine = {"name": "AffineCoordTfm", "height": 224, "width": 224, "mode": "bilinear",
              "pad_mode": "reflection", "align_corners": True}
    pets_norm = {"name": "Normalize", "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225]}
    pets_batch = [to_float, affine, pets_norm]
    single = {"name": "CrossEntropyLossFlat"}

    def rrc(h, w, vx=0.14):
        return [{**pets_item[0], "height": h, "width": w, "val_xtra": vx}]

    def resize(h, w, method="crop", pad_mode="reflection", resample="bilinear"):
        return {"name": "Resize", "height": h, "width": w, "method": method,
                "pad_mode": pad_mode, "resample": resample}

    print("== accepted setups")
    expect_recipe("pets_lesson", _learner(RandomResizedCrop(460)),
                  {"format_version": 2, "arch": "vit_tiny_patch16_224", "item_tfms": pets_item,
                   "batch_tfms": pets_batch, "loss_func": single})
    expect_recipe("pets_lesson_f16", _learner(RandomResizedCrop(460)), {"item_tfms": pets_item},
                  dtype="f16")
    expect_recipe("pets_lesson_bf16", _learner(RandomResizedCrop(460)), {"item_tfms": pets_item},
                  dtype="bf16")
    # RandomResizedCrop((300, 460)) is (height, width); fastai stores (460, 300).
    expect_recipe("item_300x460", _learner(RandomResizedCrop((300, 460), val_xtra=0.2)),
                  {"item_tfms": rrc(300, 460, 0.2), "batch_tfms": pets_batch})
    # A non-square batch size: AffineCoordTfm keeps (height, width). The model would need
    # that input size, so only the transforms are checked here (check=False).
    expect_recipe("batch_192x240", _learner(
        RandomResizedCrop((300, 460)), [*aug_transforms(size=(192, 240)), norm]),
        {"item_tfms": rrc(300, 460),
         "batch_tfms": [to_float, {**affine, "height": 192, "width": 240}, pets_norm]},
        check_model=False)
    # aug_transforms() without a size keeps the item size (the identity affine still
    # resamples); training-only item tfms are ignored.
    expect_recipe("no_batch_size", _learner([FlipItem(), RandomResizedCrop(224)],
                                            [*aug_transforms(), norm]),
                  {"item_tfms": rrc(224, 224),
                   "batch_tfms": [to_float, {**affine, "height": None, "width": None},
                                  pets_norm]})
    expect_recipe("other_stats", _learner(RandomResizedCrop(256, val_xtra=0.0), [
        *aug_transforms(size=224, max_rotate=30, flip_vert=True), Normalize.from_stats(
            [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])]),
        {"item_tfms": rrc(256, 256, 0.0),
         "batch_tfms": [to_float, affine, {"name": "Normalize", "mean": [0.5, 0.4, 0.3],
                                           "std": [0.2, 0.25, 0.3]}]})
    # After a training batch, the merged AffineCoordTfm's instance split_idx is 0 (its
    # before_call stores the split it last saw); it still runs at validation.
    learn = _learner(RandomResizedCrop(460))
    learn.dls.train.one_batch()
    aff = [t for t in learn.dls.valid.after_batch.fs if type(t).__name__ == "Flip"][0]
    print(f"     (Flip.split_idx after a training batch: {aff.split_idx}; class: "
          f"{type(aff).split_idx})")
    expect_recipe("after_training_batch", learn, {"item_tfms": pets_item,
                                                  "batch_tfms": pets_batch})
    expect_recipe("vit_small", _learner(arch="vit_small_patch16_224"),
                  {"arch": "vit_small_patch16_224"})
    # The fastai course's learners: Resize, CropPad, other pad modes, nearest, no Normalize,
    # no aug_transforms, CNN bodies, multi-label.
    expect_recipe("vit_Resize_squish", _learner(Resize(224, method="squish")),
                  {"item_tfms": [resize(224, 224, "squish")], "batch_tfms": pets_batch})
    expect_recipe("vit_Resize_pad_nearest_no_aug", _learner(
        Resize((200, 300), method="pad", pad_mode="zeros",
               resamples=(Image.Resampling.NEAREST, Image.Resampling.NEAREST)),
        [*aug_transforms(size=224, pad_mode="zeros")]),
        {"item_tfms": [resize(200, 300, "pad", "zeros", "nearest")],
         "batch_tfms": [to_float, {**affine, "pad_mode": "zeros"}]})
    expect_recipe("vit_CropPad_no_affine", _learner([CropPad(300, pad_mode="border"),
                                                     Resize(224)], [norm]),
                  {"item_tfms": [{"name": "CropPad", "height": 300, "width": 300,
                                  "pad_mode": "border"}, resize(224, 224)],
                   "batch_tfms": [to_float, pets_norm]})
    expect_recipe("resnet18_course", _learner(Resize(224), [*aug_transforms(), norm],
                                              arch=resnet18),
                  {"arch": "resnet18", "item_tfms": [resize(224, 224)],
                   "batch_tfms": [to_float, {**affine, "height": None, "width": None},
                                  pets_norm], "loss_func": single})
    expect_recipe("timm_convnext_multilabel", _learner(
        Resize(64), [*aug_transforms(), norm], arch="convnext_tiny",
        y_block=MultiCategoryBlock(vocab=["cat", "coffee"]), depths=(1, 1, 1, 1),
        dims=(8, 16, 24, 32), loss_func=BCEWithLogitsLossFlat(thresh=0.3)),
        {"arch": "convnext_tiny", "loss_func": {"name": "BCEWithLogitsLossFlat",
                                                "thresh": 0.3}})

    print("== refused setups")
    expect_refusal("item_RatioResize", lambda: _learner(RatioResize(460)),
                   "item transform RatioResize", ITEM_SUPPORT)
    expect_refusal("item_RandomCrop", lambda: _learner(RandomCrop(224)),
                   "item transform RandomCrop", ITEM_SUPPORT)
    expect_refusal("item_RRC_bicubic", lambda: _learner(
        RandomResizedCrop(460, resamples=(Image.Resampling.BICUBIC, Image.Resampling.NEAREST))),
        "RandomResizedCrop", "BICUBIC", ITEM_SUPPORT)
    expect_refusal("item_Resize_lanczos", lambda: _learner(
        Resize(224, resamples=(Image.Resampling.LANCZOS, Image.Resampling.NEAREST))),
        "Resize", "LANCZOS", ITEM_SUPPORT)
    expect_refusal("item_none", lambda: _learner([]), "no Resize, CropPad or RandomResizedCrop",
                   ITEM_SUPPORT)
    expect_refusal("batch_RandomResizedCropGPU", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224, min_scale=0.75), norm]),
        "batch transform RandomResizedCropGPU", BATCH_SUPPORT)
    expect_refusal("batch_mode_nearest", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224, mode="nearest"), norm]),
        "mode 'nearest'", BATCH_SUPPORT)
    expect_refusal("batch_align_corners_false", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224, align_corners=False), norm]),
        "align_corners=False", BATCH_SUPPORT)
    expect_refusal("batch_normalize_1ch", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224), Normalize.from_stats([0.5], [0.5])]),
        "not a per-channel 3-channel Normalize", BATCH_SUPPORT)
    expect_refusal("batch_div_1", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224), norm],
        block=TransformBlock(type_tfms=PILImage.create, batch_tfms=IntToFloatTensor(div=1.))),
        "IntToFloatTensor", "divides by 1.0", BATCH_SUPPORT)
    expect_refusal("batch_custom", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224), _AddOne(), norm]),
        "batch transform _AddOne", BATCH_SUPPORT)
    expect_refusal("batch_two_affine", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=224), Rotate(size=224), norm]),
        "2 AffineCoordTfm", BATCH_SUPPORT)
    expect_refusal("grayscale_block", lambda: _learner(
        RandomResizedCrop(460), block=ImageBlock(cls=PILImageBW)),
        "does something the recipe does not describe")
    expect_refusal("model_timm_efficientnet", lambda: _learner(arch="efficientnet_b0"),
                   "the TimmBody wraps a timm.models.efficientnet.EfficientNet", MODEL_SUPPORT)
    expect_refusal("model_cnn_custom_head", lambda: _learner(
        Resize(64), arch=resnet18, custom_head=torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(512, 2),
            torch.nn.Sigmoid())), "the head holds Sigmoid", MODEL_SUPPORT)
    expect_refusal("model_avg_pool", lambda: _learner(global_pool="avg"),
                   "global_pool='avg'", MODEL_SUPPORT)
    expect_refusal("model_reg_tokens", lambda: _learner(reg_tokens=4),
                   "register tokens", MODEL_SUPPORT)
    expect_refusal("model_distilled", lambda: _learner(arch="deit_tiny_distilled_patch16_224"),
                   "VisionTransformerDistilled", MODEL_SUPPORT)
    expect_refusal("model_custom_head", lambda: _learner(lin_ftrs=[256, 128]),
                   "not fastai's default head", MODEL_SUPPORT)
    expect_refusal("model_input_size", lambda: _learner(
        RandomResizedCrop(460), [*aug_transforms(size=192), norm]),
        "the batch transforms give 192x192 (HxW) inputs but the model takes 224x224")
    expect_refusal("loss_regression", lambda: _learner(loss_func=L1LossFlat()),
                   "BaseLoss(L1Loss)", LOSS_SUPPORT)

    print("== refused files")
    learn = _learner(RandomResizedCrop(460))
    learn.path, learn.model_dir = tmp, "."
    learn.create_opt()  # else learn.save has no optimizer state to write
    for name, kw in (("learn_save_plain", {"with_opt": False}), ("learn_save_opt", {})):
        pth = learn.save(name, **kw)
        code, msg = run_cli(pth, tmp / f"{name}.safetensors")
        ok = code == EXIT_REFUSED and "not a learn.export() Learner" in msg
        print(f"[{'ok' if ok else 'FAIL'}] {name}: exit {code}\n    {msg}")
        if not ok:
            failures.append(name)

    # The real exit code, through a fresh interpreter.
    pkl = export_pkl(_learner(RatioResize(460)), "subprocess_RatioResize")
    r = subprocess.run([sys.executable, __file__, str(pkl), str(tmp / "sub.safetensors")],
                       capture_output=True, text=True)
    ok = r.returncode == EXIT_REFUSED and "item transform RatioResize" in r.stderr
    print(f"[{'ok' if ok else 'FAIL'}] subprocess exit code {r.returncode}: "
          f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    if not ok:
        failures.append("subprocess")

    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"== {'all passed' if not failures else 'FAILED: ' + ', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
