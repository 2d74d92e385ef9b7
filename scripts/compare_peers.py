#!/usr/bin/env python3
"""Times fastai-infer beside ONNX Runtime, PyTorch eager and fastai, in one run, on the same
weights (the shipped fixture) and the same image, and prints medians and ratios.

    ~/venv-ref/bin/python scripts/compare_peers.py [--iters N] [IMAGE]

The crate is timed through `cargo run --release --example bench -- --json`. ONNX Runtime runs
the same fixture model exported with torch.onnx. Every runtime is limited to the machine's cores
(2 here).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("image", nargs="?", default=str(ROOT / "tests/fixtures/images/grace_hopper.jpg"))
    args = ap.parse_args()
    threads = os.cpu_count() or 2

    import numpy as np
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F
    from fastai.vision.augment import _grid_sample
    from PIL import Image

    import make_fixtures as mf

    torch.set_num_threads(threads)
    learn = mf.load_learner_from_fixture()
    model = learn.model.eval()

    onnx_path = Path("/tmp/fastai-infer-peer.onnx")
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), onnx_path, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}}, opset_version=17,
                      dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    results = {}
    for n in (1, 32):
        x = torch.randn(n, 3, 224, 224)
        xn = x.numpy()
        with torch.no_grad():
            results[f"torch_fwd_b{n}"] = median_ms(lambda: model(x), args.iters)
        results[f"ort_fwd_b{n}"] = median_ms(lambda: sess.run(None, {"x": xn}), args.iters)
        out = subprocess.run(
            ["cargo", "run", "-q", "--release", "--example", "bench", "--", "--batch", str(n),
             "--iters", str(args.iters), "--json", args.image],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[f"rust_fwd_b{n}"] = r["forward_ms"]
        results["rust_e2e"] = r["end_to_end_ms"]

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    grid = F.affine_grid(torch.eye(3)[:2][None], (1, 3, 224, 224), align_corners=True)

    def preprocess(path):
        im = Image.open(path).convert("RGB").resize((532, 532), Image.BILINEAR)
        im = im.crop((36, 36, 496, 496))
        x = torch.from_numpy(np.asarray(im)).permute(2, 0, 1)[None].float() / 255.0
        x = _grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        return (x - mean) / std

    def pure_torch(path):
        with torch.no_grad():
            return torch.softmax(model(preprocess(path)), -1)

    results["torch_pipeline_e2e"] = median_ms(lambda: pure_torch(args.image), args.iters)
    results["torch_preprocess"] = median_ms(lambda: preprocess(args.image), args.iters)
    with learn.no_bar(), learn.no_logging():
        results["fastai_predict_e2e"] = median_ms(lambda: learn.predict(args.image), args.iters)

    print(f"image: {args.image}, threads: {threads}, iters: {args.iters}")
    print(f"{'what':42s} {'ms':>9s}")
    for k, v in results.items():
        print(f"{k:42s} {v:9.2f}")
    print("ratios (the crate's time / the peer's; below 1 is faster):")
    for n in (1, 32):
        print(f"  forward b{n}: vs ONNX Runtime {results[f'rust_fwd_b{n}'] / results[f'ort_fwd_b{n}']:.2f}x,"
              f" vs PyTorch {results[f'rust_fwd_b{n}'] / results[f'torch_fwd_b{n}']:.2f}x")
    print(f"  end to end: vs pure-PyTorch pipeline {results['rust_e2e'] / results['torch_pipeline_e2e']:.2f}x,"
          f" vs learn.predict {results['rust_e2e'] / results['fastai_predict_e2e']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
