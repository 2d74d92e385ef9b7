//! The marker segments into a [`Frame`] and its [`Scan`]s (`jdmarker.c`, `jdapimin.c`,
//! `jdinput.c`), each scan's entropy-coded data handed to `huffman` or `arith`.
//!
//! The file is read as PIL reads it: Pillow's own header parser (`JpegImagePlugin._open`, up
//! to the first SOS) refuses what libjpeg would take in a few places (a TEM marker, sample
//! precision other than 8, component counts other than 1, 3 or 4), then libjpeg reads the
//! whole file from a suspending source. Data that ends early is refused ("image file is
//! truncated") unless every scanline was already out: a single-scan file may lack anything
//! after its scan (EOI included); a multi-scan (progressive) file needs its EOI.

use super::arith::{self, ArithConditioning};
use super::huffman::{self, Derived, HuffSpec, ScanEnd, ScanTables};
use super::{pixels, ColorSpace, Component, Frame, JpegError, JpegResult, Scan};

/// libjpeg's `JPEG_MAX_DIMENSION`.
const MAX_DIMENSION: usize = 65500;
/// libjpeg's `D_MAX_BLOCKS_IN_MCU`.
const MAX_BLOCKS_IN_MCU: usize = 10;

/// `next_marker`: from `pos`, skips bytes up to an `FF`, any fill `FF`s, and stuffed `FF 00`
/// pairs; returns the marker code and the offset just past it, or `None` at the end of the
/// data.
pub(super) fn next_marker(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    loop {
        while *data.get(pos)? != 0xFF {
            pos += 1;
        }
        pos += 1;
        let mut c = *data.get(pos)?;
        while c == 0xFF {
            pos += 1;
            c = *data.get(pos)?;
        }
        pos += 1;
        if c != 0 {
            return Some((c, pos));
        }
    }
}

/// How far [`read`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Up to the first SOS (size, colour space, EXIF); no coefficients allocated.
    Header,
    /// Every scan, up to EOI, every coefficient kept.
    End,
    /// Every scan, up to EOI, as [`Until::End`]; but a sequential Huffman-coded file with a
    /// single scan is turned into pixels band by band as it is read ([`Frame::streamed`]),
    /// its coefficients not kept.
    Pixels,
}

/// Why reading stopped early.
enum Fail {
    /// The data ended (libjpeg would wait for more): refused unless every scanline is out.
    Truncated(String),
    /// An error libjpeg (or Pillow's header parser) raises.
    Error(JpegError),
}

impl From<JpegError> for Fail {
    fn from(e: JpegError) -> Self {
        Fail::Error(e)
    }
}

/// A `Malformed` error.
fn bad(msg: String) -> Fail {
    Fail::Error(JpegError::Malformed(msg))
}

/// The name of a marker code, for messages.
fn marker_name(code: u8) -> String {
    match code {
        0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => format!("SOF{}", code - 0xC0),
        0xC4 => "DHT".into(),
        0xCC => "DAC".into(),
        0xD0..=0xD7 => format!("RST{}", code - 0xD0),
        0xD8 => "SOI".into(),
        0xD9 => "EOI".into(),
        0xDA => "SOS".into(),
        0xDB => "DQT".into(),
        0xDD => "DRI".into(),
        0xE0..=0xEF => format!("APP{}", code - 0xE0),
        0xFE => "COM".into(),
        _ => format!("0xFF{code:02X}"),
    }
}

/// The frame header as SOF gives it, before the first scan fills in the geometry.
struct Sof {
    /// Image width.
    width: usize,
    /// Image height.
    height: usize,
    /// Progressive (SOF2, SOF10).
    progressive: bool,
    /// Arithmetic coding (SOF9, SOF10).
    arithmetic: bool,
    /// `(id, h, v, tq)` of each component.
    comps: Vec<(u8, usize, usize, usize)>,
}

/// The reader's state across markers.
struct Reader<'a> {
    /// The whole file.
    data: &'a [u8],
    /// How far to read.
    until: Until,
    /// The caller's pixel limit.
    max_pixels: u64,
    /// The frame header, once SOF is read.
    sof: Option<Sof>,
    /// The frame, from the first SOS on.
    frame: Option<Frame>,
    /// DC Huffman tables by slot.
    dc: [Option<HuffSpec>; 4],
    /// AC Huffman tables by slot.
    ac: [Option<HuffSpec>; 4],
    /// Quantization tables by slot, natural order.
    quant: [Option<[u16; 64]>; 4],
    /// Whether each component's quantization table is latched.
    latched: Vec<bool>,
    /// DRI's restart interval.
    restart_interval: usize,
    /// DAC's conditioning.
    cond: ArithConditioning,
    /// A JFIF APP0 was seen (since SOI).
    saw_jfif: bool,
    /// An Adobe APP14 was seen (since SOI), with its transform.
    adobe: Option<u8>,
    /// The EXIF payloads (APP1 "Exif\0\0" before the first SOS), concatenated as PIL does.
    exif: Option<Vec<u8>>,
    /// Whether the file has several scans (decided at the first SOS, as `jdinput.c`).
    multi_scan: bool,
    /// Scans decoded so far.
    scans: usize,
    /// iMCU rows a band of a streamed decode makes at a time ([`Until::Pixels`]).
    stream_band: usize,
}

/// Reads `bytes` as PIL (Pillow + libjpeg-turbo) reads a JPEG: the markers, and with
/// [`Until::End`] every scan's coefficients.
pub(super) fn read(bytes: &[u8], max_pixels: u64, until: Until) -> JpegResult<Frame> {
    read_with_band(bytes, max_pixels, until, pixels::STREAM_IMCU_ROWS)
}

/// [`read`], a streamed decode making `stream_band` iMCU rows at a time.
pub(super) fn read_with_band(
    bytes: &[u8],
    max_pixels: u64,
    until: Until,
    stream_band: usize,
) -> JpegResult<Frame> {
    let mut r = Reader {
        data: bytes,
        until,
        max_pixels,
        sof: None,
        frame: None,
        dc: Default::default(),
        ac: Default::default(),
        quant: [None; 4],
        latched: Vec::new(),
        restart_interval: 0,
        cond: ArithConditioning::default(),
        saw_jfif: false,
        adobe: None,
        exif: None,
        multi_scan: false,
        scans: 0,
        stream_band,
    };
    match r.run() {
        Ok(()) => {}
        Err(Fail::Error(e)) => return Err(e),
        Err(Fail::Truncated(msg)) => {
            // A single-scan file whose scanlines are all out: PIL ignores the suspension in
            // jpeg_finish_decompress.
            if !(until != Until::Header && r.scans > 0 && !r.multi_scan) {
                return Err(JpegError::Malformed(msg));
            }
        }
    }
    r.frame
        .ok_or_else(|| JpegError::Malformed("no image in the JPEG data".into()))
}

impl<'a> Reader<'a> {
    /// The marker loop.
    fn run(&mut self) -> Result<(), Fail> {
        let data = self.data;
        if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
            if data.len() < 2 {
                return Err(Fail::Truncated("image file is truncated: no SOI".into()));
            }
            return Err(bad("not a JPEG file: no SOI marker at offset 0".into()));
        }
        let mut pos = 2usize;
        let mut pending: Option<(u8, usize)> = None;
        loop {
            let (code, after) = match pending.take() {
                Some(m) => m,
                None => next_marker(data, pos).ok_or_else(|| {
                    Fail::Truncated(format!(
                        "image file is truncated: the data ends at offset {} before {}",
                        data.len(),
                        if self.frame.is_none() {
                            "the first scan"
                        } else {
                            "EOI"
                        }
                    ))
                })?,
            };
            pos = after;
            let at = after - 2;
            match code {
                0xD8 => return Err(bad(format!("a second SOI marker at offset {at}"))),
                0xC0 | 0xC1 | 0xC2 | 0xC9 | 0xCA => {
                    pos = self.sof(code, pos)?;
                }
                0xC3 | 0xCB | 0xC5..=0xC7 | 0xC8 | 0xCD..=0xCF => {
                    if self.sof.is_some() {
                        return Err(bad(format!("two SOF markers (the second at offset {at})")));
                    }
                    return Err(Fail::Error(JpegError::Unsupported(format!(
                        "{} JPEG (lossless, hierarchical or extension: marker {} at offset {at})",
                        match code {
                            0xC3 | 0xCB => "lossless",
                            0xC8 => "JPG-extension",
                            _ => "hierarchical",
                        },
                        marker_name(code)
                    ))));
                }
                0xDA => {
                    let (end, next) = self.sos(pos, at)?;
                    if self.until == Until::Header {
                        return Ok(());
                    }
                    pos = end;
                    pending = next;
                }
                0xD9 => {
                    if self.frame.is_some() {
                        return Ok(());
                    }
                    if self.sof.is_some() {
                        return Err(bad(format!("EOI at offset {at} before any scan")));
                    }
                    // A tables-only datastream: libjpeg (as Pillow calls it) starts over on
                    // the SOI that must follow at once, keeping the tables.
                    match (data.get(pos), data.get(pos + 1)) {
                        (Some(0xFF), Some(0xD8)) => {
                            pos += 2;
                            self.restart_interval = 0;
                            self.cond = ArithConditioning::default();
                            self.saw_jfif = false;
                            self.adobe = None;
                        }
                        (None, _) | (Some(0xFF), None) => {
                            return Err(Fail::Truncated(format!(
                                "image file is truncated: tables only, no image after EOI at offset {at}"
                            )))
                        }
                        _ => {
                            return Err(bad(format!(
                                "no SOI after the tables-only datastream ending at offset {pos}"
                            )))
                        }
                    }
                }
                0xC4 => pos = self.dht(pos, at)?,
                0xDB => pos = self.dqt(pos, at)?,
                0xDD => pos = self.dri(pos, at)?,
                0xCC => pos = self.dac(pos, at)?,
                0xE0..=0xEF | 0xFE => pos = self.appn(code, pos, at)?,
                0xDC => pos = self.segment(code, pos, at)?.1,
                0xD0..=0xD7 => {}
                0x01 if self.frame.is_some() => {}
                _ => {
                    return Err(bad(format!(
                        "unknown or reserved marker {} at offset {at}",
                        marker_name(code)
                    )))
                }
            }
        }
    }

    /// A marker segment's payload (after its length) and the offset past it.
    fn segment(&self, code: u8, pos: usize, at: usize) -> Result<(&'a [u8], usize), Fail> {
        let data = self.data;
        let trunc = || {
            Fail::Truncated(format!(
                "image file is truncated inside the {} segment at offset {at}",
                marker_name(code)
            ))
        };
        let len = match (data.get(pos), data.get(pos + 1)) {
            (Some(&a), Some(&b)) => usize::from(a) << 8 | usize::from(b),
            _ => return Err(trunc()),
        };
        if len < 2 {
            if self.frame.is_none() {
                // Pillow's header parser reads the rest of the file as the segment and fails.
                return Err(bad(format!(
                    "{} segment at offset {at} with length {len}",
                    marker_name(code)
                )));
            }
            return Ok((&[], pos + 2));
        }
        let end = pos + len;
        if end > data.len() {
            return Err(trunc());
        }
        Ok((&data[pos + 2..end], end))
    }

    /// SOF0/1/2/9/10.
    fn sof(&mut self, code: u8, pos: usize) -> Result<usize, Fail> {
        let at = pos - 2;
        if self.sof.is_some() {
            return Err(bad(format!("two SOF markers (the second at offset {at})")));
        }
        let (seg, end) = self.segment(code, pos, at)?;
        if seg.len() < 6 {
            return Err(bad(format!("SOF segment at offset {at} too short")));
        }
        let precision = seg[0];
        let height = usize::from(seg[1]) << 8 | usize::from(seg[2]);
        let width = usize::from(seg[3]) << 8 | usize::from(seg[4]);
        let n = usize::from(seg[5]);
        if precision != 8 {
            return Err(Fail::Error(JpegError::Unsupported(format!(
                "{precision}-bit JPEG (marker {} at offset {at}); PIL reads 8-bit only",
                marker_name(code)
            ))));
        }
        if !matches!(n, 1 | 3 | 4) {
            return Err(Fail::Error(JpegError::Unsupported(format!(
                "JPEG with {n} components (SOF at offset {at}); PIL reads 1, 3 or 4"
            ))));
        }
        if width == 0 || height == 0 {
            return Err(bad(format!(
                "empty image {width}x{height} (SOF at offset {at})"
            )));
        }
        if seg.len() != 6 + 3 * n {
            return Err(bad(format!(
                "SOF segment at offset {at}: length {} for {n} components",
                seg.len() + 2
            )));
        }
        if (width as u64) * (height as u64) > self.max_pixels {
            return Err(Fail::Error(JpegError::TooLarge {
                width: width as u32,
                height: height as u32,
            }));
        }
        let comps = seg[6..]
            .chunks_exact(3)
            .map(|c| {
                (
                    c[0],
                    usize::from(c[1] >> 4),
                    usize::from(c[1] & 15),
                    usize::from(c[2]),
                )
            })
            .collect();
        self.sof = Some(Sof {
            width,
            height,
            progressive: matches!(code, 0xC2 | 0xCA),
            arithmetic: matches!(code, 0xC9 | 0xCA),
            comps,
        });
        Ok(end)
    }

    /// DHT.
    fn dht(&mut self, pos: usize, at: usize) -> Result<usize, Fail> {
        let (seg, end) = self.segment(0xC4, pos, at)?;
        let mut rest = seg;
        while rest.len() > 16 {
            let index = rest[0];
            let mut bits = [0u8; 17];
            bits[1..].copy_from_slice(&rest[1..17]);
            let count: usize = bits.iter().map(|&b| usize::from(b)).sum();
            rest = &rest[17..];
            if count > 256 || count > rest.len() {
                return Err(bad(format!(
                    "bad Huffman table (DHT at offset {at}): {count} codes"
                )));
            }
            let spec = HuffSpec::new(bits, &rest[..count]);
            rest = &rest[count..];
            let (slot, is_ac) = if index & 0x10 != 0 {
                (index - 0x10, true)
            } else {
                (index, false)
            };
            if slot >= 4 {
                return Err(bad(format!(
                    "Huffman table index {index:#04x} out of range (DHT at offset {at})"
                )));
            }
            if is_ac {
                self.ac[usize::from(slot)] = Some(spec);
            } else {
                self.dc[usize::from(slot)] = Some(spec);
            }
        }
        if !rest.is_empty() {
            return Err(bad(format!("DHT segment at offset {at}: bad length")));
        }
        Ok(end)
    }

    /// DQT (8- and 16-bit entries, stored in natural order).
    fn dqt(&mut self, pos: usize, at: usize) -> Result<usize, Fail> {
        let (seg, end) = self.segment(0xDB, pos, at)?;
        let mut rest = seg;
        while !rest.is_empty() {
            let n = usize::from(rest[0] & 15);
            let wide = rest[0] >> 4 != 0;
            let size = if wide { 129 } else { 65 };
            if rest.len() < size {
                return Err(bad(format!(
                    "bad quantization table marker (DQT at offset {at})"
                )));
            }
            if n >= 4 {
                return Err(bad(format!(
                    "quantization table index {n} out of range (DQT at offset {at})"
                )));
            }
            let mut table = [0u16; 64];
            for i in 0..64 {
                let v = if wide {
                    u16::from(rest[1 + 2 * i]) << 8 | u16::from(rest[2 + 2 * i])
                } else {
                    u16::from(rest[1 + i])
                };
                table[usize::from(huffman::NATURAL[i])] = v;
            }
            self.quant[n] = Some(table);
            rest = &rest[size..];
        }
        Ok(end)
    }

    /// DRI.
    fn dri(&mut self, pos: usize, at: usize) -> Result<usize, Fail> {
        let (seg, end) = self.segment(0xDD, pos, at)?;
        if seg.len() != 2 {
            return Err(bad(format!("DRI segment at offset {at}: bad length")));
        }
        self.restart_interval = usize::from(seg[0]) << 8 | usize::from(seg[1]);
        Ok(end)
    }

    /// DAC.
    fn dac(&mut self, pos: usize, at: usize) -> Result<usize, Fail> {
        let (seg, end) = self.segment(0xCC, pos, at)?;
        if seg.len() % 2 != 0 {
            return Err(bad(format!("DAC segment at offset {at}: bad length")));
        }
        // libjpeg's NUM_ARITH_TBLS: as many tables of each class as `ArithConditioning` has.
        let ntbl = self.cond.ac_k.len();
        for pair in seg.chunks_exact(2) {
            let (index, val) = (usize::from(pair[0]), pair[1]);
            if index >= 2 * ntbl {
                return Err(bad(format!(
                    "arithmetic table index {index} out of range (DAC at offset {at})"
                )));
            }
            if index >= ntbl {
                self.cond.ac_k[index - ntbl] = val;
            } else {
                let (l, u) = (val & 15, val >> 4);
                if l > u {
                    return Err(bad(format!(
                        "bad arithmetic conditioning value {val:#04x} (DAC at offset {at})"
                    )));
                }
                self.cond.dc_l[index] = l;
                self.cond.dc_u[index] = u;
            }
        }
        Ok(end)
    }

    /// APPn and COM: JFIF (APP0), Adobe (APP14), EXIF (APP1, before the first scan).
    fn appn(&mut self, code: u8, pos: usize, at: usize) -> Result<usize, Fail> {
        let (seg, end) = self.segment(code, pos, at)?;
        match code {
            0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => self.saw_jfif = true,
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => self.adobe = Some(seg[11]),
            0xE1 if self.frame.is_none() && seg.starts_with(b"Exif\0\0") => {
                self.exif
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&seg[6..]);
            }
            _ => {}
        }
        Ok(end)
    }

    /// The first SOS: component geometry (`initial_setup`), the colour space
    /// (`default_decompress_parms`), the coefficient arrays.
    fn start_frame(&mut self, at: usize) -> Result<(), Fail> {
        let Some(sof) = &self.sof else {
            return Err(bad(format!("SOS at offset {at} before any SOF")));
        };
        if sof.width > MAX_DIMENSION || sof.height > MAX_DIMENSION {
            return Err(bad(format!(
                "image too big: {}x{} (more than {MAX_DIMENSION} a side)",
                sof.width, sof.height
            )));
        }
        if sof
            .comps
            .iter()
            .any(|&(_, h, v, _)| !(1..=4).contains(&h) || !(1..=4).contains(&v))
        {
            return Err(bad(format!(
                "bad sampling factors in SOF (first SOS at offset {at})"
            )));
        }
        let max_h = sof.comps.iter().map(|c| c.1).max().unwrap_or(1);
        let max_v = sof.comps.iter().map(|c| c.2).max().unwrap_or(1);
        let (w, hgt) = (sof.width, sof.height);
        let alloc = match self.until {
            Until::Header => false,
            Until::End => true,
            Until::Pixels => !self.streams(),
        };
        let components = sof
            .comps
            .iter()
            .map(|&(id, h, v, tq)| {
                let width_in_blocks = (w * h).div_ceil(max_h * 8);
                let height_in_blocks = (hgt * v).div_ceil(max_v * 8);
                let blocks_w = width_in_blocks.div_ceil(h) * h;
                let blocks_h = height_in_blocks.div_ceil(v) * v;
                Component {
                    id,
                    h,
                    v,
                    tq,
                    quant: [0; 64],
                    width_in_blocks,
                    height_in_blocks,
                    downsampled_width: (w * h).div_ceil(max_h),
                    downsampled_height: (hgt * v).div_ceil(max_v),
                    blocks_w,
                    blocks_h,
                    coefs: if alloc {
                        vec![[0i16; 64]; blocks_w * blocks_h]
                    } else {
                        Vec::new()
                    },
                    coef_row0: 0,
                    coef_bits: [-1; 64],
                }
            })
            .collect::<Vec<_>>();
        let ids: Vec<u8> = sof.comps.iter().map(|c| c.0).collect();
        let color_space = match ids.len() {
            1 => ColorSpace::Gray,
            3 => {
                if self.saw_jfif {
                    ColorSpace::YCbCr
                } else if let Some(t) = self.adobe {
                    if t == 0 {
                        ColorSpace::Rgb
                    } else {
                        ColorSpace::YCbCr
                    }
                } else if ids == [82, 71, 66] {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            }
            _ => match self.adobe {
                Some(0) | None => ColorSpace::Cmyk,
                Some(_) => ColorSpace::Ycck,
            },
        };
        self.latched = vec![false; components.len()];
        self.frame = Some(Frame {
            width: w,
            height: hgt,
            precision: 8,
            progressive: sof.progressive,
            arithmetic: sof.arithmetic,
            components,
            max_h,
            max_v,
            color_space,
            adobe: self.adobe.is_some(),
            exif: self.exif.take(),
            progress: Default::default(),
            streamed: None,
        });
        // libjpeg-turbo's Huffman decoders fill the empty slots 0 and 1 with the standard
        // tables when they start (jstdhuff.c).
        if !sof.arithmetic {
            let [dc0, ac0, dc1, ac1] = HuffSpec::standard();
            for (slot, spec) in [(0, dc0), (1, dc1)] {
                self.dc[slot].get_or_insert(spec);
            }
            for (slot, spec) in [(0, ac0), (1, ac1)] {
                self.ac[slot].get_or_insert(spec);
            }
        }
        Ok(())
    }

    /// Whether the frame is decoded to pixels band by band as its scan is read: asked for,
    /// sequential, Huffman-coded, one scan (decided at the first SOS).
    fn streams(&self) -> bool {
        self.until == Until::Pixels
            && !self.multi_scan
            && self
                .sof
                .as_ref()
                .is_some_and(|s| !s.arithmetic && !s.progressive)
    }

    /// SOS: the scan header, then (with [`Until::End`]) its data. Returns the offset to go
    /// on from and the marker that ended the scan's data, if one was read.
    fn sos(&mut self, pos: usize, at: usize) -> Result<(usize, Option<(u8, usize)>), Fail> {
        let Some(sof) = &self.sof else {
            return Err(bad(format!("SOS at offset {at} before any SOF")));
        };
        let (seg, end) = self.segment(0xDA, pos, at)?;
        let n = seg.first().map_or(0, |&n| usize::from(n));
        if seg.len() != 2 * n + 4 || !(1..=4).contains(&n) {
            return Err(bad(format!("SOS segment at offset {at}: bad length")));
        }
        // Component look-up exactly as get_sos does it (only the first four SOF components
        // can be found, and a component index already used at that scan position is passed).
        let mut cur: [Option<usize>; 4] = [None; 4];
        let mut dc_table = Vec::with_capacity(n);
        let mut ac_table = Vec::with_capacity(n);
        for i in 0..n {
            let cc = seg[1 + 2 * i];
            let c = seg[2 + 2 * i];
            let found =
                (0..sof.comps.len().min(4)).find(|&ci| sof.comps[ci].0 == cc && cur[ci].is_none());
            let Some(ci) = found else {
                return Err(bad(format!(
                    "invalid component id {cc} in SOS at offset {at}"
                )));
            };
            cur[i] = Some(ci);
            if cur[..i].contains(&Some(ci)) {
                return Err(bad(format!(
                    "invalid component id {cc} in SOS at offset {at}"
                )));
            }
            dc_table.push(usize::from(c >> 4));
            ac_table.push(usize::from(c & 15));
        }
        let comps: Vec<usize> = cur[..n].iter().flatten().copied().collect();
        let ss = seg[1 + 2 * n];
        let se = seg[2 + 2 * n];
        let ah = seg[3 + 2 * n] >> 4;
        let al = seg[3 + 2 * n] & 15;
        let ncomp = sof.comps.len();
        let progressive = sof.progressive;
        let arithmetic = sof.arithmetic;
        if self.frame.is_none() {
            self.multi_scan = n < ncomp || progressive;
            self.start_frame(at)?;
            if self.until == Until::Header {
                return Ok((end, None));
            }
        } else if !self.multi_scan {
            return Err(bad(format!(
                "a second scan (SOS at offset {at}) in a single-scan file: EOI expected"
            )));
        }
        let streams = self.streams();
        let scan = Scan {
            comps,
            dc_table,
            ac_table,
            ss,
            se,
            ah,
            al,
            restart_interval: self.restart_interval,
        };
        let Some(frame) = self.frame.as_mut() else {
            return Err(bad("no frame".into()));
        };
        // per_scan_setup: the MCU size.
        if n > 1 {
            let blocks: usize = scan
                .comps
                .iter()
                .map(|&c| frame.components[c].h * frame.components[c].v)
                .sum();
            if blocks > MAX_BLOCKS_IN_MCU {
                return Err(bad(format!(
                    "{blocks} blocks in an MCU (SOS at offset {at}); at most {MAX_BLOCKS_IN_MCU}"
                )));
            }
        }
        // latch_quant_tables.
        for &c in &scan.comps {
            if !self.latched[c] {
                let tq = frame.components[c].tq;
                let Some(table) = self.quant.get(tq).copied().flatten() else {
                    return Err(bad(format!(
                        "quantization table {tq} not defined (SOS at offset {at})"
                    )));
                };
                frame.components[c].quant = table;
                self.latched[c] = true;
            }
        }
        self.scans += 1;
        if arithmetic {
            let done = arith::decode_scan(frame, &scan, &self.cond, &self.data[end..])?;
            return Ok((end + done, None));
        }
        // The entropy decoder's start_pass.
        let mut need_dc = true;
        let mut need_ac = true;
        if progressive {
            let dc_band = ss == 0;
            let badp = (dc_band && se != 0)
                || (!dc_band && (ss > se || se > 63 || n != 1))
                || (ah != 0 && al + 1 != ah)
                || al > 13;
            if badp {
                return Err(bad(format!(
                    "invalid progressive parameters Ss={ss} Se={se} Ah={ah} Al={al} (SOS at offset {at})"
                )));
            }
            frame
                .progress
                .start_scan(&frame.components, &scan.comps, ss, se);
            for &c in &scan.comps {
                let bits = &mut frame.components[c].coef_bits;
                for b in &mut bits[usize::from(ss)..=usize::from(se)] {
                    *b = i32::from(al);
                }
            }
            need_dc = dc_band && ah == 0;
            need_ac = !dc_band;
        }
        let mut derived: [Option<Derived>; 8] = Default::default();
        for i in 0..n {
            for (need, slot, specs, off, is_dc) in [
                (need_dc, scan.dc_table[i], &self.dc, 0, true),
                (need_ac, scan.ac_table[i], &self.ac, 4, false),
            ] {
                if !need || (slot < 4 && derived[off + slot].is_some()) {
                    continue;
                }
                let Some(spec) = specs.get(slot).and_then(|s| s.as_ref()) else {
                    return Err(bad(format!(
                        "Huffman table {slot} not defined (SOS at offset {at})"
                    )));
                };
                let d = Derived::new(spec, is_dc).map_err(|e| {
                    bad(format!(
                        "bad Huffman table {slot}: {e} (SOS at offset {at})"
                    ))
                })?;
                derived[off + slot] = Some(d);
            }
        }
        let tables = ScanTables {
            dc: [0, 1, 2, 3].map(|i| derived[i].as_ref()),
            ac: [4, 5, 6, 7].map(|i| derived[i].as_ref()),
        };
        let outcome = if streams {
            let mut dec = huffman::ScanDecoder::new(frame, &scan, &tables, self.data, end)?;
            frame.streamed = Some(pixels::stream_bands(frame, &mut dec, self.stream_band)?);
            dec.finish()
        } else {
            huffman::decode_scan(frame, &scan, &tables, self.data, end)?
        };
        if outcome.truncated {
            // Not every scanline is out: refused even for a single-scan file.
            return Err(Fail::Error(JpegError::Malformed(format!(
                "image file is truncated: the data ends inside scan {} (SOS at offset {at})",
                self.scans
            ))));
        }
        match outcome.end {
            ScanEnd::Marker(code, after) => Ok((after, Some((code, after)))),
            ScanEnd::Eof => Err(Fail::Truncated(format!(
                "image file is truncated: no marker after scan {} (SOS at offset {at})",
                self.scans
            ))),
        }
    }
}
