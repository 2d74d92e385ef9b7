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

/// Output rows converted by one parallel task.
const ROWS_PER_TASK: usize = 32;
/// Block rows transformed by one parallel task.
const BLOCK_ROWS_PER_TASK: usize = 4;

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
        check_component(c)?;
    }

    let smooth = frame.progressive && {
        let q: Vec<&[u16; 64]> = frame.components.iter().map(|c| &c.quant).collect();
        let cb: Vec<&[i32; 64]> = frame.components.iter().map(|c| &c.coef_bits).collect();
        idct::smoothing_ok(&q, &cb)
    };
    let total_imcu_rows = height.div_ceil(8 * frame.max_v);
    let planes: Vec<Vec<u8>> = frame
        .components
        .iter()
        .map(|c| idct_component(c, smooth, total_imcu_rows))
        .collect();
    let planes: Vec<Plane<'_>> = frame
        .components
        .iter()
        .zip(&planes)
        .map(|(c, data)| Plane {
            data,
            stride: c.width_in_blocks * 8,
            width: c.downsampled_width,
            height: c.downsampled_height,
        })
        .collect();

    let bpp = ncomp;
    let mut data = vec![0u8; width * height * bpp];
    let space = frame.color_space;
    data.par_chunks_mut(width * bpp * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let mut rows = vec![vec![0u8; width]; ncomp];
            for (i, out) in chunk.chunks_exact_mut(width * bpp).enumerate() {
                let y = task * ROWS_PER_TASK + i;
                for ((m, p), r) in methods.iter().zip(&planes).zip(rows.iter_mut()) {
                    upsample::row(*m, p, y, r);
                }
                match space {
                    ColorSpace::YCbCr => simd::ycc_to_rgb_row(&rows[0], &rows[1], &rows[2], out),
                    ColorSpace::Ycck => color::ycck_to_cmyk_inverted_row(
                        &rows[0], &rows[1], &rows[2], &rows[3], out,
                    ),
                    ColorSpace::Gray | ColorSpace::Rgb => {
                        let r: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
                        color::interleave_row(&r, out, false)
                    }
                    ColorSpace::Cmyk => {
                        let r: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
                        color::interleave_row(&r, out, true)
                    }
                }
            }
        });
    Ok(Decoded {
        width,
        height,
        mode,
        data,
    })
}

/// Checks the geometry fields the pixel stage indexes with against the coefficients held.
fn check_component(c: &Component) -> JpegResult<()> {
    let ok = c.width_in_blocks <= c.blocks_w
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

/// The IDCT of every real block of a component (`width_in_blocks` x `height_in_blocks`),
/// smoothed first when `smooth`: a plane of `8 * width_in_blocks` samples a row.
fn idct_component(c: &Component, smooth: bool, total_imcu_rows: usize) -> Vec<u8> {
    let stride = c.width_in_blocks * 8;
    let mut plane = vec![0u8; stride * c.height_in_blocks * 8];
    let mult = idct::mult_table(&c.quant);
    plane
        .par_chunks_mut(stride * 8 * BLOCK_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, band) in chunk.chunks_exact_mut(stride * 8).enumerate() {
                let by = task * BLOCK_ROWS_PER_TASK + i;
                let row = &c.coefs[by * c.blocks_w..by * c.blocks_w + c.width_in_blocks];
                if smooth {
                    let rows = smoothing_rows(c, by, total_imcu_rows);
                    for bx in 0..c.width_in_blocks {
                        let mut ws = row[bx];
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
        });
    plane
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
