// fastai-infer's CUDA kernels for the batch transforms, compiled to PTX at build time (build.rs)
// when the `cuda` feature is on.

#include <stddef.h>

// out[i] = fmaf(a[i], b[i], c[i]): a * b + c rounded once, as PyTorch's CPU grid sampler
// accumulates its bilinear taps (the compiler contracts them into fused multiply-adds).
extern "C" __global__ void fastai_infer_fma_f32(const size_t n, const float *a, const float *b,
                                                const float *c, float *out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        out[i] = fmaf(a[i], b[i], c[i]);
    }
}
