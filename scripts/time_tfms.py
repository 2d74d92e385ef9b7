#!/usr/bin/env python3
"""Times fastai-infer's item + batch transforms for the recipe-2 item transforms beside the
same transforms done by fastai's own objects (PIL) and PyTorch, for one decoded image.

    ~/venv-ref/bin/python scripts/time_tfms.py [--iters N] [--rounds N] [IMAGE]

For each case (Resize(224) crop / squish / pad-reflection / pad-zeros-nearest, CropPad(300) then
Resize(224), each followed by aug_transforms() without a size and ImageNet Normalize, as the
fastai course's learners do), it writes the small ResNet fixture with that recipe (`convert
--recipe`), starts `bench --stdin` on it (the crate times `Learner::model_input` of one decoded
image) and times, interleaved round by round, the reference: fastai's item transform objects
on the PIL image (`t(img, split_idx=1)`), `ToTensor`, `/ 255`, fastai's `_grid_sample` with
the identity affine, Normalize; and, for Resize crop and squish, the same with the item
transform as bare PIL calls (`crop` + `resize`, no fastai dispatch overhead). Prints the
medians and the ratios (reference / crate). Every runtime is limited to 2 threads.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/fixtures/models/resnet_basic.safetensors"
NORM = {"name": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
BATCH = [{"name": "IntToFloatTensor", "div": 255.0},
         {"name": "AffineCoordTfm", "height": None, "width": None, "mode": "bilinear",
          "pad_mode": "reflection", "align_corners": True}, NORM]


def resize(method="crop", pad_mode="reflection", resample="bilinear", size=224):
    return {"name": "Resize", "height": size, "width": size, "method": method,
            "pad_mode": pad_mode, "resample": resample}


CASES = {
    "Resize(224) crop": [resize()],
    "Resize(224) squish": [resize("squish")],
    "Resize(224) pad reflection": [resize("pad")],
    "Resize(224) pad zeros nearest": [resize("pad", "zeros", "nearest")],
    "CropPad(300) + Resize(224)": [{"name": "CropPad", "height": 300, "width": 300,
                                    "pad_mode": "zeros"}, resize()],
}


def plain_pil(item_steps):
    """The item transform as bare PIL calls (no fastai dispatch), for crop and squish Resize;
    None for the other cases."""
    from PIL import Image
    if len(item_steps) != 1 or item_steps[0]["name"] != "Resize" \
            or item_steps[0]["method"] not in ("crop", "squish"):
        return None
    s = item_steps[0]
    size = (s["width"], s["height"])

    def run(img):
        if s["method"] == "squish":
            return img.resize(size, Image.Resampling.BILINEAR)
        w, h = img.size
        m = min(w / size[0], h / size[1])
        cw, ch = int(m * size[0]), int(m * size[1])
        left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
        return img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BILINEAR)
    return run


def reference(item_steps, bare=False):
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(ROOT / "scripts"))
    from export_fastai import _fastai_steps
    from fastai.vision.augment import _grid_sample
    steps = [plain_pil(item_steps)] if bare else _fastai_steps({"item_tfms": item_steps})
    mean = torch.tensor(NORM["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(NORM["std"]).view(1, 3, 1, 1)

    def run(img):
        for t in steps:
            img = t(img) if bare else t(img, split_idx=1)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255.0
        grid = F.affine_grid(torch.eye(3)[:2][None], (1, 3, *x.shape[-2:]), align_corners=True)
        x = _grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=True)
        return (x - mean) / std
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--torch-threads", type=int, default=2,
                    help="torch.set_num_threads for the reference (on a loaded 2-core machine "
                         "1 is faster than 2: OpenMP's spinning threads compete)")
    ap.add_argument("image", nargs="?", default=str(ROOT / "tests/fixtures/images/chelsea.png"))
    args = ap.parse_args()
    import torch
    from PIL import Image
    torch.set_num_threads(args.torch_threads)
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "bench", "--example",
                    "convert"], cwd=ROOT, check=True)
    img = Image.open(args.image).convert("RGB")
    tmp = Path(tempfile.mkdtemp(prefix="fastai-infer-tfms-"))
    print(f"{args.image} ({img.width}x{img.height}), {args.rounds} rounds x {args.iters} "
          f"iterations, torch threads {args.torch_threads}, medians in ms")
    results = {}
    for name, steps in CASES.items():
        recipe = {"format_version": 2, "item_tfms": steps, "batch_tfms": BATCH}
        rp = tmp / "recipe.json"
        rp.write_text(json.dumps(recipe))
        w = tmp / "w.safetensors"
        subprocess.run([str(ROOT / "target/release/examples/convert"), "--recipe", str(rp),
                        str(MODEL), str(w)], check=True, capture_output=True)
        proc = subprocess.Popen([str(ROOT / "target/release/examples/bench"), "--stdin",
                                 "--weights", str(w), args.image],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={"RAYON_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
        proc.stdout.readline()
        ref = reference(steps)
        ref(img)
        bare = reference(steps, bare=True) if plain_pil(steps) else None
        crate, peer, peer_bare = [], [], []
        for r in range(args.rounds):
            proc.stdin.write(f"transforms {args.iters}\n")
            proc.stdin.flush()
            crate += json.loads(proc.stdout.readline())["times_ms"]
            time.sleep(0.2)
            for _ in range(args.iters):
                t = time.perf_counter()
                ref(img)
                peer.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.2)
            for _ in range(args.iters if bare else 0):
                t = time.perf_counter()
                bare(img)
                peer_bare.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.2)
        proc.stdin.close()
        proc.wait(timeout=60)
        c, p = statistics.median(crate), statistics.median(peer)
        results[name] = {"crate_ms": c, "fastai_pil_torch_ms": p, "ratio": p / c}
        line = f"{name:30} crate {c:6.3f}  fastai's objects + torch {p:7.3f} ({p / c:5.1f}x)"
        if peer_bare:
            b = statistics.median(peer_bare)
            results[name].update({"bare_pil_torch_ms": b, "bare_ratio": b / c})
            line += f"  bare PIL + torch {b:7.3f} ({b / c:5.1f}x)"
        print(line)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
