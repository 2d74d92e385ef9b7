//! The decoded coefficients to PIL's pixels: IDCT (with block smoothing for progressive
//! files), upsampling and colour conversion over the whole frame.
//!
//! Every output row depends only on the coefficients, so the work is split into bands of
//! rows run in parallel: first the IDCT of every component (bands of block rows), then the
//! upsampling and colour conversion (bands of output rows).

use rayon::prelude::*;

use super::huffman::ScanDecoder;
use super::idct::{self, DcWindow};
use super::upsample::{self, Method, Plane};
use super::{color, simd, ColorSpace, Component, Decoded, Frame, JpegError, JpegResult, Mode};

/// iMCU rows a parallel task converts (a band: its block rows stay in cache from the IDCT
/// to the colour conversion; the fancy filters' context block rows are transformed twice).
const BAND_IMCU_ROWS: usize = 8;

/// iMCU rows a band of a streamed decode ([`stream_bands`]) makes at a time: its window holds
/// two more.
pub(super) const STREAM_IMCU_ROWS: usize = 8;

/// Output bytes a streamed band must have for its rows to be made on several threads.
const PAR_BAND_BYTES: usize = 1 << 19;

/// What libjpeg remembers of an unfinished progressive decode (a scan cut short by a marker
/// or the end of data, `insufficient_data`), which decides block smoothing below the last
/// good iMCU row (`jdcoefct.c`, `decompress_smooth_data`).
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Each component's `coef_bits` before the last scan that included it (the second half
    /// of libjpeg's `coef_bits` array, set in `jdphuff.c` `start_pass_phuff_decoder`; zero
    /// when that scan was the file's first). Entries 1..=9 are used.
    pub prev_coef_bits: Vec<[i32; 64]>,
    /// libjpeg's `last_good_iMCU_row`: the last iMCU row an MCU was decoded in while the
    /// data were sufficient, over all scans (`jdcoefct.c`, `consume_data`).
    pub last_good_imcu_row: usize,
    /// libjpeg's `input_scan_number` at the end: the scans started.
    pub scans: usize,
}

impl Default for Progress {
    /// Every iMCU row good: the final `coef_bits` everywhere.
    fn default() -> Self {
        Progress {
            prev_coef_bits: Vec::new(),
            last_good_imcu_row: usize::MAX,
            scans: 0,
        }
    }
}

impl Progress {
    /// At a progressive scan's start, before its `coef_bits` are set (`start_pass_phuff_decoder`,
    /// `start_pass` in `jdarith.c`): each of its components' `coef_bits[min(ss, 1)..=max(se, 9)]`
    /// is remembered (as 0 for the file's first scan).
    pub(crate) fn start_scan(
        &mut self,
        components: &[super::Component],
        comps: &[usize],
        ss: u8,
        se: u8,
    ) {
        self.scans += 1;
        if self.prev_coef_bits.len() < components.len() {
            self.prev_coef_bits.resize(components.len(), [0; 64]);
        }
        for &c in comps {
            for k in usize::from(ss).min(1)..=usize::from(se).clamp(9, 63) {
                self.prev_coef_bits[c][k] = if self.scans <= 1 {
                    0
                } else {
                    components[c].coef_bits[k]
                };
            }
        }
    }
}

/// The image PIL holds after `load()` for a frame whose scans have all been decoded.
pub(super) fn to_pixels(frame: &Frame) -> JpegResult<Decoded> {
    to_pixels_with(frame, Some(&frame.progress))
}

/// [`to_pixels`], with what libjpeg remembers of the scans when the data ran short (block
/// smoothing then uses the previous `coef_bits` below the last good iMCU row).
pub(super) fn to_pixels_with(frame: &Frame, progress: Option<&Progress>) -> JpegResult<Decoded> {
    let plan = PixelPlan::new(frame)?;
    let mut data = plan.alloc(frame);
    plan.fill(frame, progress, 0, &mut data, BAND_IMCU_ROWS)?;
    Ok(plan.decoded(frame, data))
}

/// Decodes the single scan of a sequential file and its pixels together, band by band as
/// libjpeg does (`jdcoefct.c` without a whole-image buffer): the scan's MCU rows for
/// [`STREAM_IMCU_ROWS`] iMCU rows (and one more, the context of the fancy vertical filters)
/// go into a window of coefficients ([`Component::coef_row0`]), whose output rows are then
/// made; the window slides on. The same pixels as [`to_pixels`] on the whole frame, without
/// holding every coefficient.
///
/// `band`: the iMCU rows a band makes, [`STREAM_IMCU_ROWS`] in use (tests use small bands to
/// slide the window often).
pub(super) fn stream_bands(
    frame: &mut Frame,
    dec: &mut ScanDecoder<'_, '_>,
    band: usize,
) -> JpegResult<Decoded> {
    let band = band.max(1);
    for c in &mut frame.components {
        c.coefs = Vec::new();
        c.coef_row0 = 0;
    }
    let plan = PixelPlan::new(frame)?;
    let mut data = plan.alloc(frame);
    let total = plan.total_imcu_rows;
    let windows: Vec<usize> = frame
        .components
        .iter()
        .map(|c| (band + 2) * c.v * c.blocks_w)
        .collect();
    for (c, &n) in frame.components.iter_mut().zip(&windows) {
        c.coefs = vec![[0; 64]; n];
    }
    let row_bytes = frame.width * plan.bpp;
    let imcu_px = 8 * frame.max_v;
    // A band's rows are split among the threads only when it is big enough to pay for
    // waking them (a 512-pixel-wide band is about 0.2 MB, made in about 0.1 ms).
    let band_bytes = band * imcu_px * row_bytes;
    let chunk = if band_bytes >= PAR_BAND_BYTES {
        band.div_ceil(rayon::current_num_threads().max(1))
    } else {
        band
    };
    let mut k0 = 0;
    while k0 < total {
        let k1 = (k0 + band).min(total);
        // Slide the window to start one iMCU row above the band (the filters' context).
        for c in &mut frame.components {
            let row0 = k0.saturating_sub(1) * c.v;
            let shift = (row0 - c.coef_row0) * c.blocks_w;
            if shift > 0 {
                let n = c.coefs.len();
                if shift < n {
                    c.coefs.copy_within(shift.., 0);
                }
                c.coefs[n - shift.min(n)..].fill([0; 64]);
                c.coef_row0 = row0;
            }
        }
        dec.decode_rows(frame, dec.mcu_rows_of_imcu_rows((k1 + 1).min(total)))?;
        let (y0, y1) = (k0 * imcu_px, (k1 * imcu_px).min(frame.height));
        let Some(out) = data.get_mut(y0 * row_bytes..y1 * row_bytes) else {
            return Err(JpegError::Malformed("output rows outside the image".into()));
        };
        plan.fill(frame, None, y0, out, chunk)?;
        k0 = k1;
    }
    Ok(plan.decoded(frame, data))
}

/// What the pixel stage works out once for a frame: PIL's mode, each component's
/// upsampling method, and whether progressive blocks are smoothed.
pub(super) struct PixelPlan {
    /// PIL's mode.
    mode: Mode,
    /// Samples a pixel (1, 3 or 4).
    bpp: usize,
    /// Each component's upsampling.
    methods: Vec<Method>,
    /// Block smoothing (`jdcoefct.c`) applies.
    smooth: bool,
    /// libjpeg's `total_iMCU_rows`.
    total_imcu_rows: usize,
}

impl PixelPlan {
    /// Checks that `frame` is one the pixel stage handles (colour space, precision,
    /// geometry) and chooses how it is converted.
    pub(super) fn new(frame: &Frame) -> JpegResult<Self> {
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
        if width == 0 || height == 0 || frame.max_h == 0 || frame.max_v == 0 {
            return Err(JpegError::Malformed(format!(
                "empty image ({width}x{height}, sampling {}x{})",
                frame.max_h, frame.max_v
            )));
        }
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
        Ok(Self {
            mode,
            bpp: ncomp,
            methods,
            smooth,
            total_imcu_rows: height.div_ceil(8 * frame.max_v),
        })
    }

    /// The zeroed output buffer of the whole image.
    pub(super) fn alloc(&self, frame: &Frame) -> Vec<u8> {
        vec![0u8; frame.width * frame.height * self.bpp]
    }

    /// Wraps the filled output buffer.
    pub(super) fn decoded(&self, frame: &Frame, data: Vec<u8>) -> Decoded {
        Decoded {
            width: frame.width,
            height: frame.height,
            mode: self.mode,
            data,
        }
    }

    /// Output rows from `y0` on, as many as `out` holds (whole rows of the image): IDCT,
    /// upsampling and colour conversion, in parallel bands of rows. Every component's
    /// coefficients must hold the block rows these output rows need (the context rows of
    /// the fancy vertical filters included).
    pub(super) fn fill(
        &self,
        frame: &Frame,
        progress: Option<&Progress>,
        y0: usize,
        out: &mut [u8],
        band_imcu_rows: usize,
    ) -> JpegResult<()> {
        let width = frame.width;
        let bpp = self.bpp;
        let ncomp = bpp;
        let methods = &self.methods;
        let smooth = self.smooth;
        let total_imcu_rows = self.total_imcu_rows;
        // Bands of iMCU rows: each task transforms the block rows its output rows need (plus
        // the context rows of the fancy vertical filters) into buffers it reuses, then
        // upsamples and converts its rows.
        let band_out_rows = 8 * frame.max_v * band_imcu_rows.max(1);
        let space = frame.color_space;
        let comps = &frame.components;
        let start = y0;
        out.par_chunks_mut(width * bpp * band_out_rows)
            .enumerate()
            .try_for_each_init(
                || {
                    (
                        vec![Vec::new(); ncomp],
                        vec![vec![0u8; width]; ncomp],
                        Vec::new(),
                    )
                },
                |(bufs, rows, scratch), (band, chunk)| -> JpegResult<()> {
                    let y0 = start + band * band_out_rows;
                    let y1 = y0 + chunk.len() / (width * bpp);
                    let mut planes = Vec::with_capacity(ncomp);
                    for (ci, ((c, m), buf)) in
                        comps.iter().zip(methods).zip(bufs.iter_mut()).enumerate()
                    {
                        let vf = m.v_factor();
                        let ctx = usize::from(matches!(m, Method::H1V2Fancy | Method::H2V2Fancy));
                        let s0 = (y0 / vf).saturating_sub(ctx);
                        let s1 = ((y1 - 1) / vf + 1 + ctx).min(c.downsampled_height);
                        let (b0, b1) = (s0 / 8, s1.div_ceil(8));
                        let held = c.coefs.len() / c.blocks_w.max(1);
                        if b0 < c.coef_row0
                            || b1 > c.coef_row0 + held
                            || (smooth && (c.coef_row0 != 0 || held != c.blocks_h))
                        {
                            return Err(JpegError::Malformed(format!(
                                "component {}: block rows {b0}..{b1} are not held",
                                c.id
                            )));
                        }
                        let stride = c.width_in_blocks * 8;
                        buf.resize(stride * 8 * (b1 - b0), 0);
                        let sm = smooth.then(|| Smoothing {
                            total_imcu_rows,
                            prev: progress.map(|p| (p, ci)),
                        });
                        idct_rows(c, b0, b1, sm.as_ref(), buf);
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
                            if *m != Method::Full {
                                upsample::row(*m, p, y, r, scratch);
                            }
                        }
                        // Full-size components are read in place.
                        let mut src: [&[u8]; 4] = [&[]; 4];
                        for (((s, m), p), r) in
                            src.iter_mut().zip(methods).zip(&planes).zip(rows.iter())
                        {
                            *s = if *m == Method::Full {
                                p.full_row(y, width)
                            } else {
                                r
                            };
                        }
                        let rows = &src;
                        match space {
                            ColorSpace::YCbCr => {
                                simd::ycc_to_rgb_row(rows[0], rows[1], rows[2], out)
                            }
                            ColorSpace::Ycck => color::ycck_to_cmyk_inverted_row(
                                rows[0], rows[1], rows[2], rows[3], out,
                            ),
                            ColorSpace::Gray => out.copy_from_slice(rows[0]),
                            ColorSpace::Rgb => {
                                color::interleave_row(&[rows[0], rows[1], rows[2]], out, false)
                            }
                            ColorSpace::Cmyk => color::interleave_row(
                                &[rows[0], rows[1], rows[2], rows[3]],
                                out,
                                true,
                            ),
                        }
                    }
                    Ok(())
                },
            )
    }
}

/// Checks the geometry fields the pixel stage indexes with against the coefficients held
/// (whole block rows, within the component).
fn check_component(f: &Frame, c: &Component) -> JpegResult<()> {
    let ok = c.h > 0
        && c.v > 0
        && c.downsampled_width == (f.width * c.h).div_ceil(f.max_h)
        && c.downsampled_height == (f.height * c.v).div_ceil(f.max_v)
        && c.width_in_blocks == c.downsampled_width.div_ceil(8)
        && c.height_in_blocks == c.downsampled_height.div_ceil(8)
        && c.width_in_blocks <= c.blocks_w
        && c.height_in_blocks <= c.blocks_h
        && c.blocks_w > 0
        && c.coefs.len().is_multiple_of(c.blocks_w)
        && c.downsampled_width <= c.width_in_blocks * 8
        && c.downsampled_height <= c.height_in_blocks * 8
        && c.downsampled_width > 0
        && c.downsampled_height > 0;
    if ok {
        Ok(())
    } else {
        Err(JpegError::Malformed(format!(
            "component {}: inconsistent block geometry",
            c.id
        )))
    }
}

/// How a component's blocks are smoothed.
struct Smoothing<'a> {
    /// libjpeg's `total_iMCU_rows`.
    total_imcu_rows: usize,
    /// The unfinished-decode state and the component's index, if the data ran short.
    prev: Option<(&'a Progress, usize)>,
}

/// The IDCT of block rows `b0..b1` of a component (its real blocks, `width_in_blocks` a
/// row), smoothed first when `smooth` is given, into `out`: `8 * width_in_blocks` samples a
/// row.
fn idct_rows(c: &Component, b0: usize, b1: usize, smooth: Option<&Smoothing<'_>>, out: &mut [u8]) {
    let stride = c.width_in_blocks * 8;
    let mult = idct::mult_table(&c.quant);
    for (band, by) in out.chunks_exact_mut(stride * 8).zip(b0..b1) {
        let at = (by - c.coef_row0) * c.blocks_w;
        let row = &c.coefs[at..at + c.width_in_blocks];
        if let Some(sm) = smooth {
            let rows = smoothing_rows(c, by, sm.total_imcu_rows);
            // Below the last good iMCU row libjpeg latches the previous scan's `coef_bits`
            // (or -1 everywhere when only one scan started).
            let bits = match sm.prev {
                Some((p, ci)) if by / c.v > p.last_good_imcu_row => {
                    if p.scans > 1 {
                        p.prev_coef_bits.get(ci).copied().unwrap_or([-1; 64])
                    } else {
                        [-1; 64]
                    }
                }
                _ => c.coef_bits,
            };
            for (bx, blk) in row.iter().enumerate() {
                let mut ws = *blk;
                let dc = dc_window(c, &rows, bx);
                idct::smooth_block(&mut ws, &dc, &c.quant, &bits);
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

#[cfg(test)]
mod tests {
    //! Small frames whose coefficients jpeglib read from cjpeg files, with the bytes PIL
    //! (Pillow 13.0.0, libjpeg-turbo 3.2.0) decodes from those files.
    use super::*;

    /// A frame of the given size and sampling factors, geometry as libjpeg computes it, all
    /// coefficients zero and quantization tables of ones.
    fn frame(
        w: usize,
        h: usize,
        cs: ColorSpace,
        progressive: bool,
        hv: &[(usize, usize)],
    ) -> Frame {
        let max_h = hv.iter().map(|x| x.0).max().unwrap_or(1);
        let max_v = hv.iter().map(|x| x.1).max().unwrap_or(1);
        let components = hv
            .iter()
            .enumerate()
            .map(|(i, &(ch, cv))| {
                let dw = (w * ch).div_ceil(max_h);
                let dh = (h * cv).div_ceil(max_v);
                let (wib, hib) = (dw.div_ceil(8), dh.div_ceil(8));
                let (bw, bh) = (wib.div_ceil(ch) * ch, hib.div_ceil(cv) * cv);
                Component {
                    id: i as u8 + 1,
                    h: ch,
                    v: cv,
                    tq: 0,
                    quant: [1; 64],
                    width_in_blocks: wib,
                    height_in_blocks: hib,
                    downsampled_width: dw,
                    downsampled_height: dh,
                    blocks_w: bw,
                    blocks_h: bh,
                    coefs: vec![[0; 64]; bw * bh],
                    coef_row0: 0,
                    coef_bits: [0; 64],
                }
            })
            .collect();
        Frame {
            width: w,
            height: h,
            precision: 8,
            progressive,
            arithmetic: false,
            components,
            max_h,
            max_v,
            color_space: cs,
            adobe: false,
            exif: None,
            progress: Progress::default(),
            streamed: None,
        }
    }

    /// Sets coefficients `(block row, block column, natural index, value)`.
    fn set(c: &mut Component, nz: &[(usize, usize, usize, i16)]) {
        for &(by, bx, k, v) in nz {
            c.coefs[by * c.blocks_w + bx][k] = v;
        }
    }

    /// A 5x3 4:2:0 baseline photo (h2v2 fancy upsampling on 3 chroma samples).
    fn tiny_420() -> (Frame, &'static [u8]) {
        let mut f = frame(5, 3, ColorSpace::YCbCr, false, &[(2, 2), (1, 1), (1, 1)]);
        f.components[0].quant = [
            8, 6, 5, 8, 12, 20, 26, 31, 6, 6, 7, 10, 13, 29, 30, 28, 7, 7, 8, 12, 20, 29, 35, 28,
            7, 9, 11, 15, 26, 44, 40, 31, 9, 11, 19, 28, 34, 55, 52, 39, 12, 18, 28, 32, 41, 52,
            57, 46, 25, 32, 39, 44, 52, 61, 60, 51, 36, 46, 48, 49, 56, 50, 52, 50,
        ];
        set(
            &mut f.components[0],
            &[
                (0, 0, 0, 10),
                (0, 0, 2, 3),
                (0, 0, 3, 1),
                (0, 0, 4, -1),
                (0, 0, 5, -1),
                (0, 0, 6, -1),
                (0, 0, 8, -6),
                (0, 0, 9, -1),
                (0, 0, 16, -4),
                (0, 0, 24, -3),
                (0, 0, 32, -1),
            ],
        );
        f.components[1].quant = [
            9, 9, 12, 24, 50, 50, 50, 50, 9, 11, 13, 33, 50, 50, 50, 50, 12, 13, 28, 50, 50, 50,
            50, 50, 24, 33, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
            50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
        ];
        set(
            &mut f.components[1],
            &[(0, 0, 0, -51), (0, 0, 8, 1), (0, 0, 16, 1)],
        );
        f.components[2].quant = [
            9, 9, 12, 24, 50, 50, 50, 50, 9, 11, 13, 33, 50, 50, 50, 50, 12, 13, 28, 50, 50, 50,
            50, 50, 24, 33, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
            50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
        ];
        set(
            &mut f.components[2],
            &[(0, 0, 0, 13), (0, 0, 1, -1), (0, 0, 2, -1)],
        );
        (
            f,
            &[
                135, 131, 24, 147, 143, 36, 133, 126, 20, 135, 126, 21, 145, 134, 29, 145, 141, 34,
                157, 153, 46, 143, 136, 30, 144, 135, 30, 154, 143, 38, 154, 150, 42, 165, 161, 53,
                152, 145, 38, 153, 145, 38, 163, 152, 46,
            ],
        )
    }
    /// A 17x9 4:2:0 progressive file with only its DC scan: block smoothing with DC interpolation.
    fn dc_only_prog() -> (Frame, &'static [u8]) {
        let mut f = frame(17, 9, ColorSpace::YCbCr, true, &[(2, 2), (1, 1), (1, 1)]);
        f.components[0].quant = [
            8, 6, 5, 8, 12, 20, 26, 31, 6, 6, 7, 10, 13, 29, 30, 28, 7, 7, 8, 12, 20, 29, 35, 28,
            7, 9, 11, 15, 26, 44, 40, 31, 9, 11, 19, 28, 34, 55, 52, 39, 12, 18, 28, 32, 41, 52,
            57, 46, 25, 32, 39, 44, 52, 61, 60, 51, 36, 46, 48, 49, 56, 50, 52, 50,
        ];
        f.components[0].coef_bits = [
            0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        ];
        set(
            &mut f.components[0],
            &[
                (0, 0, 0, 29),
                (0, 1, 0, 24),
                (0, 2, 0, 35),
                (1, 0, 0, 54),
                (1, 1, 0, 45),
                (1, 2, 0, 34),
            ],
        );
        f.components[1].quant = [
            9, 9, 12, 24, 50, 50, 50, 50, 9, 11, 13, 33, 50, 50, 50, 50, 12, 13, 28, 50, 50, 50,
            50, 50, 24, 33, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
            50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
        ];
        f.components[1].coef_bits = [
            0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        ];
        set(&mut f.components[1], &[(0, 0, 0, -66), (0, 1, 0, 47)]);
        f.components[2].quant = [
            9, 9, 12, 24, 50, 50, 50, 50, 9, 11, 13, 33, 50, 50, 50, 50, 12, 13, 28, 50, 50, 50,
            50, 50, 24, 33, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
            50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,
        ];
        f.components[2].coef_bits = [
            0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        ];
        set(&mut f.components[2], &[(0, 0, 0, 17), (0, 1, 0, 33)]);
        (
            f,
            &[
                178, 174, 0, 178, 173, 0, 177, 173, 0, 177, 172, 0, 176, 170, 0, 175, 167, 4, 174,
                165, 8, 173, 163, 14, 176, 160, 25, 177, 157, 36, 178, 153, 50, 182, 150, 67, 185,
                147, 85, 187, 144, 101, 191, 141, 116, 192, 140, 129, 197, 138, 144, 179, 175, 0,
                179, 174, 0, 178, 174, 0, 178, 173, 0, 177, 171, 0, 175, 167, 4, 174, 165, 8, 173,
                163, 14, 177, 161, 26, 177, 157, 36, 178, 153, 50, 182, 150, 67, 185, 147, 85, 187,
                144, 101, 191, 141, 116, 192, 140, 129, 197, 138, 144, 180, 176, 0, 180, 175, 0,
                179, 175, 0, 179, 174, 0, 178, 172, 0, 177, 169, 6, 175, 166, 9, 175, 165, 16, 178,
                162, 27, 178, 158, 37, 179, 154, 51, 182, 150, 67, 185, 147, 85, 187, 144, 101,
                192, 142, 117, 192, 140, 129, 198, 139, 145, 182, 178, 0, 182, 177, 0, 181, 177, 0,
                181, 176, 0, 180, 174, 2, 179, 171, 8, 177, 168, 11, 177, 167, 18, 179, 163, 28,
                180, 160, 39, 181, 156, 53, 184, 152, 69, 186, 148, 86, 188, 145, 102, 192, 142,
                117, 193, 141, 130, 199, 140, 146, 185, 181, 0, 185, 180, 0, 184, 180, 0, 184, 179,
                1, 183, 177, 5, 181, 173, 10, 180, 171, 14, 179, 169, 20, 182, 166, 31, 183, 163,
                42, 183, 158, 55, 186, 154, 71, 188, 150, 88, 190, 147, 104, 194, 144, 119, 194,
                142, 131, 200, 141, 147, 188, 184, 0, 188, 183, 0, 187, 183, 0, 187, 182, 4, 186,
                180, 8, 185, 177, 14, 184, 175, 18, 183, 173, 24, 185, 169, 34, 186, 166, 45, 186,
                161, 58, 189, 157, 74, 191, 153, 91, 192, 149, 106, 196, 146, 121, 197, 145, 134,
                201, 142, 148, 191, 187, 0, 191, 186, 0, 190, 186, 1, 190, 185, 7, 189, 183, 11,
                188, 180, 17, 187, 178, 21, 186, 176, 27, 188, 172, 37, 188, 168, 47, 189, 164, 61,
                191, 159, 76, 193, 155, 93, 194, 151, 108, 198, 148, 123, 199, 147, 136, 201, 142,
                148, 193, 189, 0, 193, 188, 0, 192, 188, 3, 192, 187, 9, 191, 185, 13, 190, 182,
                19, 188, 179, 22, 188, 178, 29, 190, 174, 39, 190, 170, 49, 190, 165, 62, 193, 161,
                78, 194, 156, 94, 196, 153, 110, 199, 149, 124, 200, 148, 137, 202, 143, 149, 198,
                194, 1, 198, 193, 3, 197, 193, 8, 197, 192, 14, 196, 190, 18, 195, 187, 24, 193,
                184, 27, 193, 183, 34, 194, 178, 43, 195, 175, 54, 195, 170, 67, 197, 165, 82, 198,
                160, 98, 198, 155, 112, 200, 150, 125, 200, 148, 137, 204, 145, 151,
            ],
        )
    }
    /// An 8x8 gray block with DQT entries of 255 and large coefficients: 16-bit dequantization and saturation (the AVX2 kernel, not jidctint.c).
    fn extreme_gray() -> (Frame, &'static [u8]) {
        let mut f = frame(8, 8, ColorSpace::Gray, false, &[(1, 1)]);
        f.components[0].quant = [
            255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
            255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        set(
            &mut f.components[0],
            &[
                (0, 0, 0, 700),
                (0, 0, 1, -900),
                (0, 0, 2, 300),
                (0, 0, 8, 800),
                (0, 0, 10, -1000),
                (0, 0, 15, 5),
                (0, 0, 27, 1023),
                (0, 0, 63, -1023),
            ],
        );
        (
            f,
            &[
                255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0,
                255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0,
                255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0,
            ],
        )
    }

    #[test]
    fn frames_decode_to_pils_bytes() {
        for (name, (f, want)) in [
            ("tiny_420", tiny_420()),
            ("dc_only_prog", dc_only_prog()),
            ("extreme_gray", extreme_gray()),
        ] {
            let d = to_pixels(&f).unwrap();
            assert_eq!((d.width, d.height), (f.width, f.height), "{name}");
            assert_eq!(d.data, want, "{name}");
        }
        assert_eq!(to_pixels(&extreme_gray().0).unwrap().mode, Mode::L);
    }

    #[test]
    fn smoothing_changes_the_dc_only_frame() {
        // Without smoothing (a baseline reading of the same coefficients) the bytes differ:
        // the test above checks smoothing, not a coincidence.
        let (mut f, want) = dc_only_prog();
        f.progressive = false;
        assert_ne!(to_pixels(&f).unwrap().data, want);
    }

    #[test]
    fn inconsistent_geometry_is_an_error() {
        let (mut f, _) = tiny_420();
        f.components[1].downsampled_width = 40;
        assert!(matches!(to_pixels(&f), Err(JpegError::Malformed(_))));
        let (mut f, _) = tiny_420();
        f.components[0].coefs.pop();
        assert!(matches!(to_pixels(&f), Err(JpegError::Malformed(_))));
        let (mut f, _) = tiny_420();
        f.components[1].h = 3;
        f.max_h = 2;
        assert!(to_pixels(&f).is_err());
        let mut f = frame(0, 0, ColorSpace::Gray, false, &[(1, 1)]);
        f.components.clear();
        assert!(to_pixels(&f).is_err());
    }
}
