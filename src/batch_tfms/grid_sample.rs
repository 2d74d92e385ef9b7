//! Bilinear `grid_sample` with reflection padding and `align_corners=True`, fastai's 'area'
//! pre-interpolation, and `affine_grid`, all as candle tensor ops (CPU or CUDA).
//!
//! The arithmetic follows PyTorch's CPU kernels operation by operation in `f32`, so results
//! agree with `torch.nn.functional.grid_sample` and `F.interpolate(mode='area')` to within a
//! rounding step.

use candle_core::{DType, Device, Tensor, D};

use super::fma::fused_mul_add;
use crate::error::{Error, Result};

/// The four dimensions of `t`, or an [`Error::InvalidArgument`] that says what was expected.
fn dims4(t: &Tensor, expected: &str) -> Result<(usize, usize, usize, usize)> {
    t.dims4()
        .map_err(|_| Error::InvalidArgument(format!("{expected}, got {:?}", t.dims())))
}

/// A scalar `f32` tensor on `device`, for exact element-wise arithmetic with broadcasting.
fn scalar(v: f32, device: &Device) -> Result<Tensor> {
    Ok(Tensor::new(v, device)?)
}

/// `torch.linspace(-1, 1, n)` in `f32` as `F.affine_grid(align_corners=True)` builds it:
/// the first half is `-1 + step * i`, the second half `1 - step * (n - 1 - i)`, with
/// `step = 2 / (n - 1)` in `f32` and each product-sum fused (PyTorch's vectorized CPU kernel
/// uses fused multiply-add; plain `f32` arithmetic differs by one ulp at 134 of 224 points).
/// A single step is `[0]`.
pub fn linspace_neg_one_to_one(n: usize) -> Vec<f32> {
    if n <= 1 {
        return vec![0.0; n];
    }
    let (start, end) = (-1f32, 1f32);
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The identity sampling grid `F.affine_grid(eye, (n, c, height, width), align_corners=True)`,
/// shape `(n, height, width, 2)` holding `(x, y)` in `[-1, 1]`.
pub fn identity_grid(n: usize, height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let xs = Tensor::from_vec(linspace_neg_one_to_one(width), (1, width, 1), device)?;
    let ys = Tensor::from_vec(linspace_neg_one_to_one(height), (height, 1, 1), device)?;
    let xs = xs.broadcast_as((height, width, 1))?;
    let ys = ys.broadcast_as((height, width, 1))?;
    let grid = Tensor::cat(&[&xs, &ys], 2)?;
    Ok(grid
        .unsqueeze(0)?
        .broadcast_as((n, height, width, 2))?
        .contiguous()?)
}

/// `F.affine_grid(theta, (n, c, height, width), align_corners=True)`: `theta` has shape
/// `(n, 2, 3)` and maps output coordinates `(x, y, 1)` to input coordinates in `[-1, 1]`.
/// Returns `(n, height, width, 2)`.
pub fn affine_grid(theta: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (n, r, c) = theta.dims3().map_err(|_| {
        Error::InvalidArgument(format!(
            "affine_grid: theta must have shape (N, 2, 3), got {:?}",
            theta.dims()
        ))
    })?;
    if (r, c) != (2, 3) {
        return Err(Error::InvalidArgument(format!(
            "affine_grid: theta must have shape (N, 2, 3), got {:?}",
            theta.dims()
        )));
    }
    let device = theta.device();
    let base = identity_grid(1, height, width, device)?.squeeze(0)?; // (H, W, 2)
    let ones = Tensor::ones((height, width, 1), DType::F32, device)?;
    let base = Tensor::cat(&[&base, &ones], 2)?.reshape((1, height * width, 3))?;
    let base = base.broadcast_as((n, height * width, 3))?.contiguous()?;
    let theta_t = theta.to_dtype(DType::F32)?.transpose(1, 2)?.contiguous()?;
    let grid = base.matmul(&theta_t)?; // (N, H*W, 2)
    Ok(grid.reshape((n, height, width, 2))?)
}

/// Start and end (exclusive) of adaptive pooling window `i` of `out` over `inp` elements,
/// with PyTorch's integer formulas.
pub(crate) fn pool_window(i: usize, out: usize, inp: usize) -> (usize, usize) {
    let start = (i / out) * inp + ((i % out) * inp) / out;
    let end = 1 + ((i + 1) * inp - 1) / out;
    (start, end)
}

/// `F.interpolate(x, size=(out_h, out_w), mode='area')`, i.e. `adaptive_avg_pool2d`, on a
/// `(N, C, H, W)` `f32` tensor.
///
/// Each output is the mean of its window, summed in row-major order from zero and divided by
/// the window height then width, as PyTorch's CPU kernel does.
///
/// On the CPU this runs as a direct loop; on other devices as candle ops
/// (`area_interpolate_ops`). Both give the same bits.
pub fn area_interpolate(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        area_interpolate_cpu(x, out_h, out_w)
    } else {
        area_interpolate_ops(x, out_h, out_w)
    }
}

fn check_area_args(x: &Tensor, out_h: usize, out_w: usize) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = dims4(x, "area_interpolate: expected (N, C, H, W)")?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "area_interpolate: cannot pool {h}x{w} to {out_h}x{out_w}"
        )));
    }
    Ok((n, c, h, w))
}

/// [`area_interpolate`] as a plain loop over a CPU tensor, PyTorch's kernel arithmetic.
fn area_interpolate_cpu(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (n, c, h, w) = check_area_args(x, out_h, out_w)?;
    let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let rows: Vec<(usize, usize)> = (0..out_h).map(|i| pool_window(i, out_h, h)).collect();
    let cols: Vec<(usize, usize)> = (0..out_w).map(|i| pool_window(i, out_w, w)).collect();
    let mut out = Vec::with_capacity(n * c * out_h * out_w);
    for plane in data.chunks_exact(h * w) {
        for &(r0, r1) in &rows {
            for &(c0, c1) in &cols {
                let mut sum = 0f32;
                for row in plane[r0 * w..r1 * w].chunks_exact(w) {
                    for &v in &row[c0..c1] {
                        sum += v;
                    }
                }
                out.push(sum / (r1 - r0) as f32 / (c1 - c0) as f32);
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, out_h, out_w), x.device())?)
}

/// [`area_interpolate`] as device-generic candle ops: one gather per window offset, summed
/// in PyTorch's order with zero masks for shorter windows. The reference the direct loop is
/// tested against in `tests/batch_tfms.rs`; hidden from the docs, not part of the supported API.
#[doc(hidden)]
pub fn area_interpolate_ops(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = check_area_args(x, out_h, out_w)?;
    let device = x.device();
    let rows: Vec<(usize, usize)> = (0..out_h).map(|i| pool_window(i, out_h, h)).collect();
    let cols: Vec<(usize, usize)> = (0..out_w).map(|i| pool_window(i, out_w, w)).collect();
    let kh_max = rows.iter().map(|(s, e)| e - s).max().unwrap_or(1);
    let kw_max = cols.iter().map(|(s, e)| e - s).max().unwrap_or(1);

    // Offset `k` into every window: clamped index and a 0/1 mask for windows shorter than k.
    let offsets = |wins: &[(usize, usize)], k: usize, len: usize| -> Result<(Tensor, Vec<f32>)> {
        let idx: Vec<u32> = wins
            .iter()
            .map(|&(s, _)| (s + k).min(len - 1) as u32)
            .collect();
        let mask = wins
            .iter()
            .map(|&(s, e)| if s + k < e { 1.0 } else { 0.0 })
            .collect();
        Ok((Tensor::new(idx, device)?, mask))
    };

    let x = x.to_dtype(DType::F32)?;
    let mut sum: Option<Tensor> = None;
    for i in 0..kh_max {
        let (ridx, rmask) = offsets(&rows, i, h)?;
        let xr = x.index_select(&ridx, 2)?;
        for j in 0..kw_max {
            let (cidx, cmask) = offsets(&cols, j, w)?;
            let v = xr.index_select(&cidx, 3)?;
            let v = if i == 0 && j == 0 {
                // Every window has at least one element.
                v
            } else {
                let mask: Vec<f32> = rmask
                    .iter()
                    .flat_map(|&r| cmask.iter().map(move |&c| r * c))
                    .collect();
                let mask = Tensor::from_vec(mask, (out_h, out_w), device)?;
                v.broadcast_mul(&mask)?
            };
            sum = Some(match sum {
                None => v,
                Some(s) => (s + v)?,
            });
        }
    }
    let sum = sum.ok_or_else(|| Error::InvalidArgument("area_interpolate: empty window".into()))?;
    let kh: Vec<f32> = rows.iter().map(|(s, e)| (e - s) as f32).collect();
    let kw: Vec<f32> = cols.iter().map(|(s, e)| (e - s) as f32).collect();
    let kh = Tensor::from_vec(kh, (out_h, 1), device)?;
    let kw = Tensor::from_vec(kw, (1, out_w), device)?;
    Ok(sum.broadcast_div(&kh)?.broadcast_div(&kw)?)
}

/// Source coordinates along one axis of `size` pixels, as PyTorch computes them for bilinear
/// sampling with reflection padding and `align_corners=True`: unnormalize, reflect about the
/// borders, clip.
fn reflect_coords(g: &Tensor, size: usize) -> Result<Tensor> {
    let device = g.device();
    if size <= 1 {
        return Ok(g.zeros_like()?);
    }
    let scaling = (size - 1) as f32 / 2.0;
    let twice_span = (size - 1) as f32 * 2.0;
    let max_val = (size - 1) as f32;
    // unnormalize: (g + 1) * ((size - 1) / 2)
    let x = g
        .broadcast_add(&scalar(1.0, device)?)?
        .broadcast_mul(&scalar(scaling, device)?)?;
    // reflect: extra = |x| - trunc(|x| / twice_span) * twice_span; min(extra, twice_span - extra)
    let span = scalar(twice_span, device)?;
    let abs = x.abs()?;
    let flips = abs.broadcast_div(&span)?.floor()?; // |x| >= 0, so floor == trunc
    let extra = (&abs - flips.broadcast_mul(&span)?)?;
    let reflected = extra.minimum(&span.broadcast_sub(&extra)?)?;
    // clip to [0, size - 1]
    Ok(reflected
        .broadcast_maximum(&scalar(0.0, device)?)?
        .broadcast_minimum(&scalar(max_val, device)?)?)
}

/// `F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=True)`.
///
/// `x` is `(N, C, H, W)` `f32`; `grid` is `(N, H_out, W_out, 2)` holding `(x, y)` sample
/// positions in `[-1, 1]` (beyond it they reflect off the borders). Returns
/// `(N, C, H_out, W_out)`.
pub fn grid_sample(x: &Tensor, grid: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = dims4(x, "grid_sample: input must be (N, C, H, W)")?;
    let (gn, ho, wo, two) = dims4(grid, "grid_sample: grid must be (N, H_out, W_out, 2)")?;
    if gn != n || two != 2 {
        return Err(Error::InvalidArgument(format!(
            "grid_sample: grid {:?} does not fit input {:?}",
            grid.dims(),
            x.dims()
        )));
    }
    if h == 0 || w == 0 {
        return Err(Error::InvalidArgument(format!(
            "grid_sample: empty input {:?}",
            x.dims()
        )));
    }
    let device = x.device();
    let grid = grid.to_dtype(DType::F32)?;
    let gx = grid.narrow(D::Minus1, 0, 1)?.reshape((n, 1, ho * wo))?;
    let gy = grid.narrow(D::Minus1, 1, 1)?.reshape((n, 1, ho * wo))?;
    let xf = reflect_coords(&gx, w)?;
    let yf = reflect_coords(&gy, h)?;

    let x_w = xf.floor()?;
    let y_n = yf.floor()?;
    let one = scalar(1.0, device)?;
    let we = (&xf - &x_w)?; // distance to the west pixel
    let ea = one.broadcast_sub(&we)?;
    let no = (&yf - &y_n)?; // distance to the north pixel
    let so = one.broadcast_sub(&no)?;
    let nw = (&so * &ea)?;
    let ne = (&so * &we)?;
    let sw = (&no * &ea)?;
    let se = (&no * &we)?;

    // Coordinates are clipped to [0, size - 1], so west/north are always inside; east/south
    // fall outside on the last column/row, where PyTorch reads zero.
    let ix = x_w.to_dtype(DType::U32)?;
    let iy = y_n.to_dtype(DType::U32)?;
    let wm1 = Tensor::new((w - 1) as u32, device)?;
    let hm1 = Tensor::new((h - 1) as u32, device)?;
    let e_in = ix.broadcast_lt(&wm1)?.to_dtype(DType::F32)?;
    let s_in = iy.broadcast_lt(&hm1)?.to_dtype(DType::F32)?;
    let ix_e = (&ix + 1.0)?.broadcast_minimum(&wm1)?;
    let iy_s = (&iy + 1.0)?.broadcast_minimum(&hm1)?;

    let wt = Tensor::new(w as u32, device)?;
    let flat = x
        .to_dtype(DType::F32)?
        .reshape((n, c, h * w))?
        .contiguous()?;
    let gather = |iy: &Tensor, ix: &Tensor| -> Result<Tensor> {
        let idx = iy
            .broadcast_mul(&wt)?
            .add(ix)?
            .broadcast_as((n, c, ho * wo))?
            .contiguous()?;
        Ok(flat.gather(&idx, 2)?)
    };
    let v_nw = gather(&iy, &ix)?;
    let v_ne = gather(&iy, &ix_e)?.broadcast_mul(&e_in)?;
    let v_sw = gather(&iy_s, &ix)?.broadcast_mul(&s_in)?;
    let v_se = gather(&iy_s, &ix_e)?.broadcast_mul(&(&e_in * &s_in)?)?;

    // PyTorch's vectorized kernel accumulates `nw_val * nw + ne_val * ne + ...` with fused
    // multiply-adds (the compiler contracts it), so each step after the first is rounded
    // once: `fused_mul_add` does the same on every device, in f32.
    let out = v_nw.broadcast_mul(&nw)?;
    let out = fused_mul_add(&v_ne, &ne, &out)?;
    let out = fused_mul_add(&v_sw, &sw, &out)?;
    let out = fused_mul_add(&v_se, &se, &out)?;
    Ok(out.reshape((n, c, ho, wo))?)
}

/// The output size of fastai's 'area' pre-interpolation for an input of `h` x `w` sampled by a
/// grid of shape `(N, h_out, w_out, 2)` whose values span `coord_range` (max - min), or `None`
/// when fastai does not pre-interpolate.
///
/// fastai's `_grid_sample` computes `z = 1 / coord_range * 2` (the affine zoom) and
/// `d = min(h / w_out, w / 2) / 2`: it compares the input with `coords.shape[-2]` (the
/// output *width*) and `coords.shape[-1]` (always 2), quirks reproduced here. When `d > 1`
/// and `d > z` it calls `F.interpolate(x, scale_factor=1/d, mode='area',
/// recompute_scale_factor=True)`, whose size is `floor(in * (1/d))`, all in `f64`.
pub fn area_pre_size(h: usize, w: usize, w_out: usize, coord_range: f32) -> Option<(usize, usize)> {
    let z = if coord_range > 0.0 {
        1.0 / f64::from(coord_range) * 2.0
    } else {
        f64::INFINITY
    };
    let d = f64::min(h as f64 / w_out as f64, w as f64 / 2.0) / 2.0;
    if d > 1.0 && d > z {
        let s = 1.0 / d;
        let oh = (h as f64 * s).floor() as usize;
        let ow = (w as f64 * s).floor() as usize;
        (oh > 0 && ow > 0).then_some((oh, ow))
    } else {
        None
    }
}

/// fastai's `_grid_sample(x, coords, mode='bilinear', padding_mode='reflection',
/// align_corners=True)`: the 'area' pre-interpolation (`area_pre_size`) followed by
/// [`grid_sample`].
///
/// The pre-interpolation depends on the coordinates' range (max - min), which this reads back
/// from the device: one synchronisation. [`fastai_grid_sample_with_range`] takes the range
/// from the caller instead, as the batch transforms do for the grid they build.
pub fn fastai_grid_sample(x: &Tensor, coords: &Tensor) -> Result<Tensor> {
    let flat = coords.to_dtype(DType::F32)?.flatten_all()?;
    let mn = flat.min(0)?.to_scalar::<f32>()?;
    let mx = flat.max(0)?.to_scalar::<f32>()?;
    fastai_grid_sample_with_range(x, coords, mx - mn)
}

/// [`fastai_grid_sample`] with the coordinates' range (max - min over the whole grid) given,
/// so nothing is read back from the device.
pub fn fastai_grid_sample_with_range(
    x: &Tensor,
    coords: &Tensor,
    coord_range: f32,
) -> Result<Tensor> {
    let (_, _, h, w) = dims4(x, "grid_sample: input must be (N, C, H, W)")?;
    let (_, _, w_out, _) = dims4(coords, "grid_sample: grid must be (N, H_out, W_out, 2)")?;
    match area_pre_size(h, w, w_out, coord_range) {
        Some((oh, ow)) => grid_sample(&area_interpolate(x, oh, ow)?, coords),
        None => grid_sample(x, coords),
    }
}

/// The range (max - min) of the values of [`identity_grid`]`(n, height, width)`, computed on
/// the host: the same `f32` as reading the grid back.
pub fn identity_grid_range(height: usize, width: usize) -> f32 {
    let values: Vec<f32> = linspace_neg_one_to_one(height)
        .into_iter()
        .chain(linspace_neg_one_to_one(width))
        .collect();
    let mn = values.iter().copied().fold(f32::INFINITY, f32::min);
    let mx = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if values.is_empty() {
        0.0
    } else {
        mx - mn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pets_pre_interpolation_is_448() {
        assert_eq!(area_pre_size(460, 460, 224, 2.0), Some((448, 448)));
        // No pre-interpolation when the input is small.
        assert_eq!(area_pre_size(224, 224, 224, 2.0), None);
        // A strong zoom-in (small coordinate range) disables it.
        assert_eq!(area_pre_size(460, 460, 224, 0.5), None);
    }

    #[test]
    fn pool_windows_cover_the_input() {
        for (inp, out) in [(460, 448), (7, 3), (5, 5), (3, 7)] {
            let (s0, _) = pool_window(0, out, inp);
            let (_, e_last) = pool_window(out - 1, out, inp);
            assert_eq!((s0, e_last), (0, inp));
        }
    }

    #[test]
    fn linspace_ends_exactly() {
        let l = linspace_neg_one_to_one(224);
        assert_eq!(l[0], -1.0);
        assert_eq!(l[223], 1.0);
        assert_eq!(linspace_neg_one_to_one(1), vec![0.0]);
    }
}
