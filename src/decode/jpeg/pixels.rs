//! The decoded coefficients to PIL's pixels: IDCT (with block smoothing for progressive
//! files), upsampling and colour conversion over the whole frame.
//!
//! Every output row depends only on the coefficients, so the work is split into bands of
//! rows run in parallel: first the IDCT of every component (bands of block rows), then the
//! upsampling and colour conversion (bands of output rows).

use rayon::prelude::*;

use super::idct::{self, DcWindow};
use super::upsample::{self, Method, Plane};
use super::{color, simd, ColorSpace, Component, Decoded, Frame, JpegError, JpegResult, Mode};

/// iMCU rows a parallel task converts (a band: its block rows stay in cache from the IDCT
/// to the colour conversion; the fancy filters' context block rows are transformed twice).
const BAND_IMCU_ROWS: usize = 8;

/// The image PIL holds after `load()` for a frame whose scans have all been decoded.
pub(super) fn to_pixels(frame: &Frame) -> JpegResult<Decoded> {
    let (mode, ncomp) = match frame.color_space {
        ColorSpace::Gray => (Mode::L, 1),
        ColorSpace::YCbCr | ColorSpace::Rgb => (Mode::Rgb, 3),
        ColorSpace::Cmyk | ColorSpace::Ycck => (Mode::Cmyk, 4),
    };
    if frame.components.len() != ncomp {
        return Err(JpegError::Unsupported(format!(
            "{} components for colour space {:?}",
            frame.components.len(),
            frame.color_space
        )));
    }
    if frame.precision != 8 {
        return Err(JpegError::Unsupported(format!(
            "{}-bit samples",
            frame.precision
        )));
    }
    let (width, height) = (frame.width, frame.height);
    let methods = frame
        .components
        .iter()
        .map(|c| Method::choose(c.h, c.v, frame.max_h, frame.max_v, c.downsampled_width))
        .collect::<JpegResult<Vec<_>>>()?;
    for c in &frame.components {
        check_component(frame, c)?;
    }

    let smooth = frame.progressive && {
        let q: Vec<&[u16; 64]> = frame.components.iter().map(|c| &c.quant).collect();
        let cb: Vec<&[i32; 64]> = frame.components.iter().map(|c| &c.coef_bits).collect();
        idct::smoothing_ok(&q, &cb)
    };
    let total_imcu_rows = height.div_ceil(8 * frame.max_v);
    // Bands of iMCU rows: each task transforms the block rows its output rows need (plus
    // the context rows of the fancy vertical filters) into buffers it reuses, then
    // upsamples and converts its rows.
    let band_out_rows = 8 * frame.max_v * BAND_IMCU_ROWS;
    let bpp = ncomp;
    let mut data = vec![0u8; width * height * bpp];
    let space = frame.color_space;
    let comps = &frame.components;
    data.par_chunks_mut(width * bpp * band_out_rows)
        .enumerate()
        .for_each_init(
            || {
                (
                    vec![Vec::new(); ncomp],
                    vec![vec![0u8; width]; ncomp],
                    Vec::new(),
                )
            },
            |(bufs, rows, scratch), (band, chunk)| {
                let y0 = band * band_out_rows;
                let y1 = y0 + chunk.len() / (width * bpp);
                let mut planes = Vec::with_capacity(ncomp);
                for ((c, m), buf) in comps.iter().zip(&methods).zip(bufs.iter_mut()) {
                    let vf = m.v_factor();
                    let ctx = usize::from(matches!(m, Method::H1V2Fancy | Method::H2V2Fancy));
                    let s0 = (y0 / vf).saturating_sub(ctx);
                    let s1 = ((y1 - 1) / vf + 1 + ctx).min(c.downsampled_height);
                    let (b0, b1) = (s0 / 8, s1.div_ceil(8));
                    let stride = c.width_in_blocks * 8;
                    buf.resize(stride * 8 * (b1 - b0), 0);
                    idct_rows(c, b0, b1, smooth, total_imcu_rows, buf);
                    planes.push(Plane {
                        data: &buf[..],
                        stride,
                        width: c.downsampled_width,
                        height: c.downsampled_height,
                        row0: b0 * 8,
                    });
                }
                for (i, out) in chunk.chunks_exact_mut(width * bpp).enumerate() {
                    let y = y0 + i;
                    for ((m, p), r) in methods.iter().zip(&planes).zip(rows.iter_mut()) {
                        upsample::row(*m, p, y, r, scratch);
                    }
                    match space {
                        ColorSpace::YCbCr => {
                            simd::ycc_to_rgb_row(&rows[0], &rows[1], &rows[2], out)
                        }
                        ColorSpace::Ycck => color::ycck_to_cmyk_inverted_row(
                            &rows[0], &rows[1], &rows[2], &rows[3], out,
                        ),
                        ColorSpace::Gray => out.copy_from_slice(&rows[0]),
                        ColorSpace::Rgb => {
                            color::interleave_row(&[&rows[0], &rows[1], &rows[2]], out, false)
                        }
                        ColorSpace::Cmyk => color::interleave_row(
                            &[&rows[0], &rows[1], &rows[2], &rows[3]],
                            out,
                            true,
                        ),
                    }
                }
            },
        );
    Ok(Decoded {
        width,
        height,
        mode,
        data,
    })
}

/// Checks the geometry fields the pixel stage indexes with against the coefficients held.
fn check_component(f: &Frame, c: &Component) -> JpegResult<()> {
    let ok = c.h > 0
        && c.v > 0
        && c.downsampled_width == (f.width * c.h).div_ceil(f.max_h)
        && c.downsampled_height == (f.height * c.v).div_ceil(f.max_v)
        && c.width_in_blocks == c.downsampled_width.div_ceil(8)
        && c.height_in_blocks == c.downsampled_height.div_ceil(8)
        && c.width_in_blocks <= c.blocks_w
        && c.height_in_blocks <= c.blocks_h
        && c.coefs.len() == c.blocks_w * c.blocks_h
        && c.downsampled_width <= c.width_in_blocks * 8
        && c.downsampled_height <= c.height_in_blocks * 8
        && c.downsampled_width > 0
        && c.downsampled_height > 0
        && c.h > 0
        && c.v > 0;
    if ok {
        Ok(())
    } else {
        Err(JpegError::Malformed(format!(
            "component {}: inconsistent block geometry",
            c.id
        )))
    }
}

/// The IDCT of block rows `b0..b1` of a component (its real blocks, `width_in_blocks` a
/// row), smoothed first when `smooth`, into `out`: `8 * width_in_blocks` samples a row.
fn idct_rows(
    c: &Component,
    b0: usize,
    b1: usize,
    smooth: bool,
    total_imcu_rows: usize,
    out: &mut [u8],
) {
    let stride = c.width_in_blocks * 8;
    let mult = idct::mult_table(&c.quant);
    for (band, by) in out.chunks_exact_mut(stride * 8).zip(b0..b1) {
        let row = &c.coefs[by * c.blocks_w..by * c.blocks_w + c.width_in_blocks];
        if smooth {
            let rows = smoothing_rows(c, by, total_imcu_rows);
            for (bx, blk) in row.iter().enumerate() {
                let mut ws = *blk;
                let dc = dc_window(c, &rows, bx);
                idct::smooth_block(&mut ws, &dc, &c.quant, &c.coef_bits);
                simd::idct_block(&ws, &mult, &mut band[bx * 8..], stride);
            }
        } else {
            for (bx, blk) in row.iter().enumerate() {
                simd::idct_block(blk, &mult, &mut band[bx * 8..], stride);
            }
        }
    }
}

/// The block rows (prev-prev, prev, this, next, next-next) whose DC values smooth block row
/// `by`, chosen exactly as `decompress_smooth_data` chooses them, including its use of the
/// last iMCU row's (possibly smaller) block count in the row arithmetic.
fn smoothing_rows(c: &Component, by: usize, total_imcu_rows: usize) -> [usize; 5] {
    let v = c.v;
    let imcu = by / v;
    let block_row = by % v;
    let last_imcu = total_imcu_rows.saturating_sub(1);
    let block_rows = if imcu < last_imcu {
        v
    } else {
        match c.height_in_blocks % v {
            0 => v,
            r => r,
        }
    };
    let image_block_rows = block_rows * total_imcu_rows;
    let image_block_row = imcu * block_rows + block_row;
    let clamp = |r: isize| r.clamp(0, c.blocks_h as isize - 1) as usize;
    let b = by as isize;
    let prev = if image_block_row > 0 {
        clamp(b - 1)
    } else {
        by
    };
    let prev_prev = if image_block_row > 1 {
        clamp(b - 2)
    } else {
        prev
    };
    let next = if image_block_row + 1 < image_block_rows {
        clamp(b + 1)
    } else {
        by
    };
    let next_next = if image_block_row + 2 < image_block_rows {
        clamp(b + 2)
    } else {
        next
    };
    [prev_prev, prev, by, next, next_next]
}

/// The 5x5 DC window around block `bx` of the given block rows, columns clamped to the
/// component's real blocks as libjpeg's sliding registers clamp them.
fn dc_window(c: &Component, rows: &[usize; 5], bx: usize) -> DcWindow {
    let last = c.width_in_blocks as isize - 1;
    let mut w = [[0i32; 5]; 5];
    for (wr, &r) in w.iter_mut().zip(rows) {
        for (k, d) in wr.iter_mut().enumerate() {
            let x = (bx as isize + k as isize - 2).clamp(0, last) as usize;
            *d = c.coefs[r * c.blocks_w + x][0] as i32;
        }
    }
    w
}
