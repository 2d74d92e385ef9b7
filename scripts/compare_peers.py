#!/usr/bin/env python3
"""Times fastai-infer beside ONNX Runtime, PyTorch eager and fastai, in one run, on the same
weights (the shipped fixture) and the same images, and prints medians and ratios.

    ~/venv-ref/bin/python scripts/compare_peers.py [--iters N] [--rounds N] [--json FILE] [IMAGE]

What it measures (every runtime limited to the machine's cores, 2 here):
- forward pass at batch 1, 8 and 32: the crate, ONNX Runtime (the fixture exported with
  torch.onnx), PyTorch eager;
- end to end for one image, file to probabilities: the crate, the lesson's pure-PyTorch
  pipeline (PIL + torch, the same arithmetic as fastai), fastai's `learn.predict`;
- item + batch transforms alone for one decoded image (decode excluded): the crate, PIL + torch;
- a directory of 200 images (the fixtures, cycled, in a temporary folder), 32 per forward pass:
  the crate's `predict_paths`, ONNX Runtime with PIL + torch preprocessing;
- cold start (weights file to the first prediction, imports excluded and reported apart) and
  peak RSS, each in a fresh process: the crate, PyTorch (the fastai learner rebuilt from the
  same weights), ONNX Runtime (its process also imports torch and fastai for the lesson's
  preprocessing, which is what a deployment with the same preprocessing would load).

The crate is timed through `cargo run --release --example bench -- --json`, first before this
process loads torch or ONNX Runtime (whose idle worker threads could spin beside it), then in
rounds alternating with the peers: each round times every figure of the crate, then every
figure of the peers (forward passes, end to end, transforms, the directory), and each figure is
the median over the rounds, so that a slow spell of a shared machine does not land on one side
only. The per-round figures are kept in the JSON output under "rounds".
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests/fixtures/images"
ONNX_PATH = Path(tempfile.gettempdir()) / "fastai-infer-peer.onnx"
sys.path.insert(0, str(ROOT / "scripts"))


def median_ms(fn, iters, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def make_dir200():
    d = Path(tempfile.mkdtemp(prefix="fastai-infer-dir200-"))
    files = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    for i in range(200):
        src = files[i % len(files)]
        shutil.copy(src, d / f"{i:03d}_{src.name}")
    return d


def crate_bench(batch, iters, image, extra=()):
    out = subprocess.run(
        ["cargo", "run", "-q", "--release", "--example", "bench", "--", "--batch", str(batch),
         "--iters", str(iters), "--json", *extra, str(image)],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# Run in a fresh interpreter by --cold: imports, weights to first prediction, peak RSS.
COLD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
kind, root, image = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, root + "/scripts")
import numpy as np
import torch
import fastai.vision.all
import make_fixtures as mf
from compare_peers import lesson_preprocess, ONNX_PATH
pre = lesson_preprocess()
if kind == "ort":
    import onnxruntime as ort
t1 = time.perf_counter()
if kind == "torch":
    learn = mf.load_learner_from_fixture()
    with torch.no_grad():
        torch.softmax(learn.model(pre(image)), -1)
else:
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(sys.argv[4])
    sess = ort.InferenceSession(str(ONNX_PATH), so, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"x": pre(image).numpy()})[0]
t2 = time.perf_counter()
# VmHWM: peak RSS of this process image (ru_maxrss would include the parent's, inherited
# across fork).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "cold_start_ms": (t2 - t1) * 1e3,
                  "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def lesson_preprocess():
    """The lesson's pure-PyTorch validation pipeline: PIL squish to 532, centre crop 460,
    to-tensor, fastai's _grid_sample (area to 448, bilinear reflection grid_sample), normalize.
    Gives fastai's input tensor exactly (checked in make_fixtures.py)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from fastai.vision.augment import _grid_sample
    from PIL import Image

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    grid = F.affine_grid(torch.eye(3)[:2][None], (1, 3, 224, 224), align_corners=True)

    def transforms(im):
        im = im.resize((532, 532), Image.BILINEAR).crop((36, 36, 496, 496))
        x = torch.from_numpy(np.asarray(im)).permute(2, 0, 1)[None].float() / 255.0
        x = _grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        return (x - mean) / std

    def preprocess(path_or_image):
        im = path_or_image
        if not isinstance(im, Image.Image):
            im = Image.open(im).convert("RGB")
        return transforms(im)

    return preprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of the crate and the peers")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds to wait after building, before timing")
    ap.add_argument("image", nargs="?", default=str(IMAGES / "grace_hopper.jpg"))
    args = ap.parse_args()
    threads = os.cpu_count() or 2
    dir200 = make_dir200()
    r = {}

    # --- the crate first, before torch and ONNX Runtime are loaded in this process --------
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "bench"], cwd=ROOT,
                   check=True)
    time.sleep(args.settle)
    rounds = []

    def crate_round():
        c = {}
        b1 = crate_bench(1, args.iters, args.image)
        c["rust_e2e"] = b1["end_to_end_ms"]
        c["rust_transforms"] = b1["transforms_ms"]
        c["rust_fwd_b1"] = b1["forward_ms"]
        c["rust_fwd_b8"] = crate_bench(8, args.iters, args.image)["forward_ms"]
        b32 = crate_bench(32, max(5, args.iters // 2), args.image, ["--dir", str(dir200)])
        c["rust_fwd_b32"] = b32["forward_ms"]
        c["rust_dir200_images_per_s"] = b32["dir_images_per_s"]
        return c, b1

    first, b1 = crate_round()
    r["rust_cold_start_ms"] = b1["cold_start_ms"]
    r["rust_peak_rss_mb"] = b1["peak_rss_mb"]

    # --- the Python peers --------------------------------------------------------------------
    import numpy as np
    import onnxruntime as ort
    import torch
    from PIL import Image

    import make_fixtures as mf

    torch.set_num_threads(threads)
    learn = mf.load_learner_from_fixture()
    model = learn.model.eval()
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), ONNX_PATH, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}}, opset_version=17,
                      dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(ONNX_PATH), so, providers=["CPUExecutionProvider"])

    pre = lesson_preprocess()
    decoded = Image.open(args.image).convert("RGB")
    files = sorted(dir200.iterdir())

    def pure_torch(path):
        with torch.no_grad():
            return torch.softmax(model(pre(path)), -1)

    def ort_dir():
        for i in range(0, len(files), 32):
            x = torch.cat([pre(f) for f in files[i:i + 32]]).numpy()
            sess.run(None, {"x": x})

    def peer_round():
        p = {}
        for n in (1, 8, 32):
            it = args.iters if n < 32 else max(5, args.iters // 2)
            x = torch.randn(n, 3, 224, 224)
            xn = x.numpy()
            with torch.no_grad():
                p[f"torch_fwd_b{n}"] = median_ms(lambda: model(x), it)
            p[f"ort_fwd_b{n}"] = median_ms(lambda: sess.run(None, {"x": xn}), it)
        p["torch_pipeline_e2e"] = median_ms(lambda: pure_torch(args.image), args.iters)
        p["torch_transforms"] = median_ms(lambda: pre(decoded), args.iters)
        with learn.no_bar(), learn.no_logging():
            p["fastai_predict_e2e"] = median_ms(lambda: learn.predict(args.image), args.iters)
        ms = median_ms(ort_dir, 3, warmup=1)
        p["ort_pil_dir200_images_per_s"] = len(files) / (ms / 1e3)
        return p

    # Alternate the crate and the peers, then take each figure's median over the rounds, so
    # that a slow spell of this (virtual) machine does not land on one side only.
    rounds.append({**first, **peer_round()})
    for _ in range(args.rounds - 1):
        c, _ = crate_round()
        rounds.append({**c, **peer_round()})
    for k in rounds[0]:
        r[k] = statistics.median(rd[k] for rd in rounds)
    r["rounds"] = rounds

    for kind in ("torch", "ort"):
        out = subprocess.run([sys.executable, "-c", COLD, kind, str(ROOT), args.image, str(threads)],
                             check=True, capture_output=True, text=True).stdout
        c = json.loads(out.strip().splitlines()[-1])
        r[f"{kind}_import_ms"] = c["import_ms"]
        r[f"{kind}_cold_start_ms"] = c["cold_start_ms"]
        r[f"{kind}_peak_rss_mb"] = c["peak_rss_mb"]
    shutil.rmtree(dir200, ignore_errors=True)

    print(f"image: {args.image}, threads: {threads}, iters: {args.iters}, rounds: {args.rounds}")
    print(f"{'what':34s} {'value':>9s}")
    for k, v in r.items():
        if k != "rounds":
            print(f"{k:34s} {v:9.2f}")
    print("ratios (the crate's time / the peer's; below 1 is faster):")
    for n in (1, 8, 32):
        print(f"  forward b{n}: vs ONNX Runtime {r[f'rust_fwd_b{n}'] / r[f'ort_fwd_b{n}']:.2f}x,"
              f" vs PyTorch {r[f'rust_fwd_b{n}'] / r[f'torch_fwd_b{n}']:.2f}x")
    print(f"  end to end: {r['torch_pipeline_e2e'] / r['rust_e2e']:.2f}x faster than the pure-PyTorch"
          f" pipeline, {r['fastai_predict_e2e'] / r['rust_e2e']:.2f}x faster than learn.predict")
    print(f"  transforms alone: {r['torch_transforms'] / r['rust_transforms']:.2f}x faster than PIL + torch")
    print(f"  200-image directory: {r['rust_dir200_images_per_s'] / r['ort_pil_dir200_images_per_s']:.2f}x"
          " the throughput of ONNX Runtime with PIL + torch preprocessing")
    print(f"  cold start: crate {r['rust_cold_start_ms']:.0f} ms, PyTorch {r['torch_cold_start_ms']:.0f} ms"
          f" (+{r['torch_import_ms']:.0f} ms imports), ONNX Runtime {r['ort_cold_start_ms']:.0f} ms"
          f" (+{r['ort_import_ms']:.0f} ms imports)")
    print(f"  peak RSS: crate {r['rust_peak_rss_mb']:.0f} MiB, PyTorch {r['torch_peak_rss_mb']:.0f} MiB,"
          f" ONNX Runtime {r['ort_peak_rss_mb']:.0f} MiB")
    print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
