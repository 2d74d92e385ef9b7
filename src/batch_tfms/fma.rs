//! `a * b + c` on `f32` tensors with a single rounding (a fused multiply-add), on any device: the
//! CPU through [`f32::mul_add`], CUDA through `fmaf` in a kernel compiled at build time
//! (`kernels/fma.cu`). PyTorch's grid sampler accumulates its bilinear taps this way, so the
//! device-generic batch transforms need it to give PyTorch's bits without a detour through `f64`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// The candle op behind [`fused_mul_add`]: three contiguous `f32` tensors of one shape.
struct Fma;

/// The contiguous `f32` data of one operand, or candle's error naming it.
fn operand<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("fused_mul_add: {what} is not f32");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("fused_mul_add: {what} is not contiguous");
    };
    Ok(&data[start..end])
}

impl CustomOp3 for Fma {
    fn name(&self) -> &'static str {
        "fastai-infer-fma"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b, c) = (
            operand(s1, l1, "a")?,
            operand(s2, l2, "b")?,
            operand(s3, l3, "c")?,
        );
        let out = a
            .iter()
            .zip(b)
            .zip(c)
            .map(|((&a, &b), &c)| a.mul_add(b, c))
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fma.ptx"));
        let dev = &s1.device;
        fn slice<'a>(
            s: &'a candle_core::CudaStorage,
            l: &Layout,
            what: &str,
        ) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>>
        {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("fused_mul_add: {what} is not contiguous");
            };
            Ok(s.as_cuda_slice::<f32>()?.slice(start..end))
        }
        let (a, b, c) = (
            slice(s1, l1, "a")?,
            slice(s2, l2, "b")?,
            slice(s3, l3, "c")?,
        );
        let n = l1.shape().elem_count();
        let func = dev.get_or_load_custom_func("fastai_infer_fma_f32", "fastai_infer_fma", PTX)?;
        // SAFETY: every element is written by the kernel below before the slice is read.
        let out = unsafe { dev.alloc::<f32>(n)? };
        let mut builder = func.builder();
        builder.arg(&n);
        builder.arg(&a);
        builder.arg(&b);
        builder.arg(&c);
        builder.arg(&out);
        let cfg = LaunchConfig::for_num_elems(n as u32);
        // SAFETY: the kernel reads `n` elements of `a`, `b` and `c` (each a contiguous view of
        // exactly `n` elements, checked by the caller) and writes `n` elements of `out`.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            l1.shape().clone(),
        ))
    }
}

/// `a * b + c`, each element rounded once, for `f32` tensors on one device; `b` and `c` are
/// broadcast to `a`'s shape.
pub fn fused_mul_add(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    for (t, what) in [(a, "a"), (b, "b"), (c, "c")] {
        if t.dtype() != DType::F32 {
            return Err(Error::InvalidArgument(format!(
                "fused_mul_add: {what} is {:?}, expected f32",
                t.dtype()
            )));
        }
    }
    let shape = a.shape();
    if shape.elem_count() > u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "fused_mul_add: {} elements, more than one launch takes",
            shape.elem_count()
        )));
    }
    let a = a.contiguous()?;
    let b = b.broadcast_as(shape)?.contiguous()?;
    let c = c.broadcast_as(shape)?.contiguous()?;
    Ok(a.apply_op3_no_bwd(&b, &c, &Fma)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rounds_once() {
        // 1 + 2^-12 squared is 1 + 2^-11 + 2^-24: the last term is lost when the product is
        // rounded to f32 first, and kept by a fused multiply-add (then cancelled by c).
        let x = 1.0f32 + f32::EPSILON * 2048.0;
        let a = Tensor::new(&[x, 2.0, -3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[x, 0.5, 4.0], &Device::Cpu).unwrap();
        let c = Tensor::new(&[-(1.0 + 2.0f32.powi(-11)), 1.0, 0.25], &Device::Cpu).unwrap();
        let out = fused_mul_add(&a, &b, &c).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(out, vec![2.0f32.powi(-24), 2.0, -11.75]);
        // Unfused, the first element is 0.
        assert_eq!(x * x - (1.0 + 2.0f32.powi(-11)), 0.0);
    }

    #[test]
    fn broadcasts_b_and_refuses_other_dtypes() {
        let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[10f32, 100.0], &Device::Cpu).unwrap();
        let c = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let out = fused_mul_add(&a, &b, &c).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out, vec![vec![10.0, 200.0], vec![30.0, 400.0]]);
        let err = fused_mul_add(&a.to_dtype(DType::F64).unwrap(), &b, &c).unwrap_err();
        assert!(err.to_string().contains("a is F64"), "{err}");
    }
}
