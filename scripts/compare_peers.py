#!/usr/bin/env python3
"""Times fastai-infer beside ONNX Runtime, PyTorch eager and fastai, in one run, on the same
weights (the shipped fixture) and the same images, and prints medians and ratios.

    ~/venv-ref/bin/python scripts/compare_peers.py [--iters N] [--rounds N] [--json FILE]
        [--cnn] [--forward-only] [IMAGE]
    ~/venv-ref/bin/python scripts/compare_peers.py --decode [--iters N] [--rounds N]

`--iters` is the iterations of the batch-1 figures per runtime per round (fewer at batch 8 and 32).

What it measures (every runtime limited to the machine's cores, 2 here):
- forward pass at batch 1, 8 and 32: the crate, ONNX Runtime (the fixture exported with
  torch.onnx), PyTorch eager;
- end to end for one image, file to probabilities: the crate, the lesson's pure-PyTorch
  pipeline (PIL + torch, the same arithmetic as fastai), fastai's `learn.predict`;
- item + batch transforms alone for one decoded image (decode excluded): the crate, PIL + torch;
- decoding the image file alone: the crate, PIL (`Image.open(path).convert('RGB')`);
  `--decode` times JPEG decoding only, and nothing else: a 512x600 and a 4032x3024 JPEG,
  the crate on one thread and on its default pool beside PIL (see `decode_only`);
- a directory of 200 images (the fixtures, cycled, in a temporary folder), 32 per forward pass:
  the crate's `predict_paths`, ONNX Runtime with PIL + torch preprocessing;
- with `--cnn`, also the forward pass at batch 1 and 32 of full-size `resnet34` (torchvision)
  and `convnext_tiny` (timm) learners: `vision_learner(dls, arch, pretrained=False)` on a
  `Resize(224)` + `Normalize` DataLoaders (no hub download; random weights, BatchNorm running
  statistics randomized so that they are not the identity), written by
  `export_fastai.export_learner` for the crate (its own `bench --stdin` process per model) and
  exported with torch.onnx for ONNX Runtime, in the same interleaved rounds as the ViT;
  `--forward-only` leaves out everything but the forward figures (no end to end, transforms,
  decode, directory, cold start), for a quicker run;
- cold start (weights file to the first prediction, imports excluded and reported apart) and
  peak RSS, each in a fresh process: the crate, PyTorch (the fastai learner rebuilt from the
  same weights), ONNX Runtime (its process also imports torch and fastai for the lesson's
  preprocessing, which is what a deployment with the same preprocessing would load).

The crate runs in one long-lived process (`cargo run --release --example bench -- --stdin`),
which answers timing requests; the script interleaves it finely with the peers: each round
times every figure once for each runtime, a few iterations at a time, the crate first in even
rounds and last in odd ones, with a short pause at every switch so that idle worker threads
(torch's OpenMP, ONNX Runtime's pool, rayon) have gone to sleep before the next runtime starts.
This project's VM has slow spells lasting seconds (other tenants), which coarse alternation
would put on one side only. Each figure is the median of all its iterations over all rounds;
the ratios are of those medians, and the spread of the per-round ratios is printed beside
them. The per-round figures are kept in the JSON output under "rounds".
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


def make_dir200():
    d = Path(tempfile.mkdtemp(prefix="fastai-infer-dir200-"))
    files = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    for i in range(200):
        src = files[i % len(files)]
        shutil.copy(src, d / f"{i:03d}_{src.name}")
    return d


class Crate:
    """The crate's `bench --stdin` process: one JSON answer per request line."""

    def __init__(self, image, dir200, weights=None):
        subprocess.run(["cargo", "build", "-q", "--release", "--example", "bench"], cwd=ROOT,
                       check=True)
        extra = ["--weights", str(weights)] if weights else []
        self.proc = subprocess.Popen(
            ["cargo", "run", "-q", "--release", "--example", "bench", "--", "--stdin",
             "--batch", "32", "--dir", str(dir200), *extra, str(image)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first = json.loads(self.proc.stdout.readline())

    def times(self, request):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"bench --stdin {request!r}: {answer['error']}")
        return answer["times_ms"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def times_ms(fn, iters, warmup=True):
    if warmup:
        fn()  # one untimed call at every switch
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return ts


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


CNN_ARCHS = ("resnet34", "convnext_tiny")
# GFLOP per 224x224 image (2 x the multiply-adds of the convolutions and matrix products).
GFLOP = {"vit": 2 * 1.26, "resnet34": 2 * 3.67, "convnext_tiny": 2 * 4.47}


def cnn_learner(arch):
    """A full-size fastai learner of `arch` (random weights, `pretrained=False`), its model in
    eval mode with every BatchNorm's running statistics and affine parameters randomized
    (seeded) so that folding them is exercised, written for the crate by
    `export_fastai.export_learner`; returns (model, the .safetensors path)."""
    import torch
    import torchvision.models as tvm
    from fastai.vision.all import Normalize, Resize, imagenet_stats

    import export_fastai as ef

    a = getattr(tvm, arch) if arch.startswith("resnet") else arch
    learn = ef._learner(item_tfms=Resize(224),
                        batch_tfms=Normalize.from_stats(*imagenet_stats), arch=a)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in learn.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    learn.model.eval()
    path = Path(tempfile.gettempdir()) / f"fastai-infer-peer-{arch}.safetensors"
    ef.export_learner(learn, path)
    return learn.model, path


def decode_only(args):
    """`--decode`: JPEG decoding alone, file bytes in memory to RGB, the crate
    (`load_image_from_memory`, through `examples/decode_digest.rs --time`, with
    `RAYON_NUM_THREADS=1` and with the default pool) beside PIL
    (`Image.open(io.BytesIO(b)).convert('RGB')`, libjpeg-turbo with SIMD, one thread), on
    `grace_hopper.jpg` (512x600, 4:2:0 baseline, as shipped by matplotlib) and a 4032x3024
    JPEG made from it (PIL bicubic upscale, quality 90, 4:2:0: a phone photo's size), and
    the same 4032x3024 image saved 4:4:4 and progressive 4:2:0 (the slowest layouts to
    decode). Interleaved rounds as for the other figures; medians of all iterations."""
    import io

    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="fastai-infer-decode-"))
    small = IMAGES / "grace_hopper.jpg"
    large = tmp / "grace_hopper_4032x3024.jpg"
    big = Image.open(small).convert("RGB").resize((4032, 3024), Image.BICUBIC)
    big.save(large, quality=90, subsampling="4:2:0")
    large444 = tmp / "grace_hopper_4032x3024_444.jpg"
    big.save(large444, quality=90, subsampling="4:4:4")
    large_prog = tmp / "grace_hopper_4032x3024_progressive.jpg"
    big.save(large_prog, quality=90, subsampling="4:2:0", progressive=True)
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "decode_digest"],
                   cwd=ROOT, check=True)
    exe = ROOT / "target" / "release" / "examples" / "decode_digest"
    if os.environ.get("CARGO_TARGET_DIR"):
        exe = Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "examples" / "decode_digest"

    def crate_ms(path, iters, one_thread):
        env = dict(os.environ)
        if one_thread:
            env["RAYON_NUM_THREADS"] = "1"
        else:
            env.pop("RAYON_NUM_THREADS", None)
        out = subprocess.run([str(exe), "--time", str(iters), str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.splitlines()[0])["times_ms"]

    results = {}
    few = max(2, args.iters // 2)
    for path, iters, layout in ((small, args.iters * 5, "4:2:0"), (large, few, "4:2:0"),
                                (large444, few, "4:4:4"), (large_prog, few, "4:2:0 progressive")):
        data = path.read_bytes()
        im = Image.open(io.BytesIO(data))
        key = f"{im.size[0]}x{im.size[1]} {layout}"
        t = {"crate_1thread": [], "crate_default": [], "pil": []}
        for r in range(args.rounds):
            order = ["crate_1thread", "crate_default", "pil"]
            if r % 2:
                order.reverse()
            for who in order:
                if who == "pil":
                    t["pil"] += times_ms(lambda: Image.open(io.BytesIO(data)).convert("RGB"),
                                         iters)
                else:
                    t[who] += crate_ms(path, iters, who == "crate_1thread")
                time.sleep(args.pause)
        med = {k: statistics.median(v) for k, v in t.items()}
        results[key] = {"median_ms": med, "times_ms": t}
        print(f"decode {key} JPEG ({path.name}): crate 1 thread {med['crate_1thread']:.2f} ms, "
              f"crate default ({os.cpu_count()} cores) {med['crate_default']:.2f} ms, "
              f"PIL {med['pil']:.2f} ms; crate/PIL {med['crate_1thread'] / med['pil']:.2f}x "
              f"(1 thread), {med['crate_default'] / med['pil']:.2f}x (default)")
    shutil.rmtree(tmp)
    if args.json:
        Path(args.json).write_text(json.dumps({"decode": results}, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10,
                    help="iterations of each batch-1 figure per runtime per round")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--pause", type=float, default=0.2,
                    help="seconds to wait at every switch between runtimes")
    ap.add_argument("--cnn", action="store_true",
                    help="also time full-size resnet34 and convnext_tiny learners' forward pass")
    ap.add_argument("--forward-only", action="store_true",
                    help="time the forward passes only (no end to end, transforms, directory, "
                         "cold start)")
    ap.add_argument("--decode", action="store_true",
                    help="only JPEG decoding: the crate (1 thread and default) vs PIL on a "
                         "512x600 and a 4032x3024 JPEG (see decode_only)")
    ap.add_argument("image", nargs="?", default=str(IMAGES / "grace_hopper.jpg"))
    args = ap.parse_args()
    if args.decode:
        decode_only(args)
        return
    threads = os.cpu_count() or 2
    dir200 = make_dir200()

    # The crate's process starts (and measures its cold start) before this process loads
    # torch or ONNX Runtime.
    crate = Crate(args.image, dir200)

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

    def fastai_predict():
        with learn.no_bar(), learn.no_logging():
            learn.predict(args.image)

    inputs = {n: torch.randn(n, 3, 224, 224) for n in (1, 8, 32)}

    def torch_fwd(n, model=model):
        def f():
            with torch.no_grad():
                model(inputs[n])
        return f

    def ort_fwd(n, sess=sess):
        xn = inputs[n].numpy()
        return lambda: sess.run(None, {"x": xn})

    it = args.iters
    # figure -> (iterations, the crate's request, {peer: function})
    figures = {
        "fwd_b1": (it, f"forward 1 {it}", {"ort": ort_fwd(1), "torch": torch_fwd(1)}),
        "fwd_b8": (max(2, it // 2), f"forward 8 {max(2, it // 2)}",
                   {"ort": ort_fwd(8), "torch": torch_fwd(8)}),
        "fwd_b32": (max(1, it // 5), f"forward 32 {max(1, it // 5)}",
                    {"ort": ort_fwd(32), "torch": torch_fwd(32)}),
    }
    if not args.forward_only:
        figures.update({
            "e2e": (it, f"e2e {it}", {"torch_pipeline": lambda: pure_torch(args.image),
                                       "fastai_predict": fastai_predict}),
            "transforms": (2 * it, f"transforms {2 * it}", {"torch": lambda: pre(decoded)}),
            "decode": (2 * it, f"decode {2 * it}",
                       {"pil": lambda: Image.open(args.image).convert("RGB")}),
            "dir200": (1, "dir 1", {"ort_pil": ort_dir}),
        })
    crates = {f: crate for f in figures}
    for arch in CNN_ARCHS if args.cnn else ():
        cnn, weights = cnn_learner(arch)
        onnx_path = Path(tempfile.gettempdir()) / f"fastai-infer-peer-{arch}.onnx"
        torch.onnx.export(cnn, torch.randn(1, 3, 224, 224), onnx_path, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}},
                          opset_version=17, dynamo=False)
        cs = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        cc = Crate(args.image, dir200, weights)
        for n, iters in ((1, it), (32, max(1, it // 5))):
            f = f"{arch}_fwd_b{n}"
            figures[f] = (iters, f"forward {n} {iters}",
                          {"ort": ort_fwd(n, cs), "torch": torch_fwd(n, cnn)})
            crates[f] = cc
    pooled = {f: {} for f in figures}
    rounds = []
    for rd in range(args.rounds):
        this = {}
        for fig, (iters, request, peers) in figures.items():
            runners = [("rust", lambda c=crates[fig]: c.times(request))]
            # A pass over the directory is long enough to be its own warm-up.
            warm = fig != "dir200"
            runners += [(name, (lambda fn=fn: times_ms(fn, iters, warm)))
                        for name, fn in peers.items()]
            if rd % 2:
                runners.reverse()
            for name, run in runners:
                time.sleep(args.pause)
                ts = run()
                pooled[fig].setdefault(name, []).extend(ts)
                this[f"{name}_{fig}"] = statistics.median(ts)
        rounds.append(this)
        print(f"round {rd + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v:.1f}" for k, v in this.items()), file=sys.stderr, flush=True)
    for c in set(crates.values()):
        c.close()

    r = {"rust_cold_start_ms": crate.first["cold_start_ms"],
         "rust_peak_rss_mb": crate.first["peak_rss_mb"]}
    for fig, by in pooled.items():
        for name, ts in by.items():
            r[f"{name}_{fig}"] = statistics.median(ts)
    n_files = len(files)
    full = not args.forward_only
    if full:
        r["rust_dir200_images_per_s"] = n_files / (r["rust_dir200"] / 1e3)
        r["ort_pil_dir200_images_per_s"] = n_files / (r["ort_pil_dir200"] / 1e3)

    def per_round(num, den):
        v = sorted(rd[num] / rd[den] for rd in rounds)
        return f"(per round {v[0]:.2f}-{v[-1]:.2f}, median {statistics.median(v):.2f})"

    for kind in ("torch", "ort") if full else ():
        out = subprocess.run([sys.executable, "-c", COLD, kind, str(ROOT), args.image, str(threads)],
                             check=True, capture_output=True, text=True).stdout
        c = json.loads(out.strip().splitlines()[-1])
        r[f"{kind}_import_ms"] = c["import_ms"]
        r[f"{kind}_cold_start_ms"] = c["cold_start_ms"]
        r[f"{kind}_peak_rss_mb"] = c["peak_rss_mb"]
    shutil.rmtree(dir200, ignore_errors=True)

    ratios = {}
    print(f"image: {args.image}, threads: {threads}, iters: {args.iters}, rounds: {args.rounds}")
    print(f"{'what (median ms unless named)':34s} {'value':>9s}")
    for k, v in r.items():
        if isinstance(v, float):
            print(f"{k:34s} {v:9.2f}")
    print("ratios (the crate's time / the peer's; below 1 is faster):")
    for n in (1, 8, 32):
        f = f"fwd_b{n}"
        ratios[f"{f}_vs_ort"] = r[f"rust_{f}"] / r[f"ort_{f}"]
        ratios[f"{f}_vs_torch"] = r[f"rust_{f}"] / r[f"torch_{f}"]
        print(f"  forward b{n}: vs ONNX Runtime {ratios[f'{f}_vs_ort']:.2f}x"
              f" {per_round(f'rust_{f}', f'ort_{f}')}, vs PyTorch {ratios[f'{f}_vs_torch']:.2f}x")
    for arch in CNN_ARCHS if args.cnn else ():
        for n in (1, 32):
            f = f"{arch}_fwd_b{n}"
            ratios[f"{f}_vs_ort"] = r[f"rust_{f}"] / r[f"ort_{f}"]
            ratios[f"{f}_vs_torch"] = r[f"rust_{f}"] / r[f"torch_{f}"]
            gf = {who: GFLOP[arch] * n / (r[f"{who}_{f}"] / 1e3) for who in ("rust", "ort", "torch")}
            r[f"{f}_gflops"] = gf
            print(f"  {arch} forward b{n}: crate {r[f'rust_{f}']:.1f} ms, vs ONNX Runtime"
                  f" {ratios[f'{f}_vs_ort']:.2f}x {per_round(f'rust_{f}', f'ort_{f}')}, vs PyTorch"
                  f" {ratios[f'{f}_vs_torch']:.2f}x; GFLOP/s crate {gf['rust']:.0f},"
                  f" ORT {gf['ort']:.0f}, PyTorch {gf['torch']:.0f}")
    if not full:
        r["ratios"] = ratios
        r["rounds"] = rounds
        r["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(json.dumps(r))
        if args.json:
            Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        return
    print("speed-ups (the peer's time / the crate's; above 1 is faster):")
    ratios["e2e_vs_torch_pipeline"] = r["torch_pipeline_e2e"] / r["rust_e2e"]
    ratios["e2e_vs_fastai_predict"] = r["fastai_predict_e2e"] / r["rust_e2e"]
    ratios["transforms_vs_torch"] = r["torch_transforms"] / r["rust_transforms"]
    ratios["dir200_vs_ort_pil"] = r["ort_pil_dir200"] / r["rust_dir200"]
    print(f"  end to end: {ratios['e2e_vs_torch_pipeline']:.2f}x faster than the pure-PyTorch"
          f" pipeline {per_round('torch_pipeline_e2e', 'rust_e2e')},"
          f" {ratios['e2e_vs_fastai_predict']:.2f}x faster than learn.predict"
          f" {per_round('fastai_predict_e2e', 'rust_e2e')}")
    print(f"  transforms alone: {ratios['transforms_vs_torch']:.2f}x faster than PIL + torch"
          f" {per_round('torch_transforms', 'rust_transforms')}")
    ratios["decode_vs_pil"] = r["pil_decode"] / r["rust_decode"]
    print(f"  decode alone: {ratios['decode_vs_pil']:.2f}x faster than PIL"
          f" {per_round('pil_decode', 'rust_decode')}")
    print(f"  200-image directory: {ratios['dir200_vs_ort_pil']:.2f}x the throughput of ONNX Runtime"
          f" with PIL + torch preprocessing {per_round('ort_pil_dir200', 'rust_dir200')}")
    print(f"  cold start: crate {r['rust_cold_start_ms']:.0f} ms, PyTorch {r['torch_cold_start_ms']:.0f} ms"
          f" (+{r['torch_import_ms']:.0f} ms imports), ONNX Runtime {r['ort_cold_start_ms']:.0f} ms"
          f" (+{r['ort_import_ms']:.0f} ms imports)")
    print(f"  peak RSS: crate {r['rust_peak_rss_mb']:.0f} MiB, PyTorch {r['torch_peak_rss_mb']:.0f} MiB,"
          f" ONNX Runtime {r['ort_peak_rss_mb']:.0f} MiB")
    r["ratios"] = ratios
    r["rounds"] = rounds
    r["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    r["cpu"] = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                     if l.startswith("model name")), "?")
    print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
