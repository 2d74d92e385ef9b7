//! Huffman-coded scans, baseline and progressive (`jdhuff.c`, `jdphuff.c`).
//!
//! Every stream, valid or corrupt, gives the coefficients libjpeg-turbo gives:
//! - a code no table entry matches takes 17 bits and decodes as 0 (`JWRN_HUFF_BAD_CODE`);
//! - a marker met inside the entropy-coded data ends the data: zero bits are fed from then
//!   on, and once an MCU has used bits past the marker, the later MCUs of the segment (up to
//!   the next restart marker) are skipped (libjpeg's `insufficient_data`), their blocks left
//!   as they are;
//! - a run that carries the coefficient index past 63 writes to coefficient 63, as libjpeg's
//!   padded `jpeg_natural_order` does;
//! - a wrong or missing restart marker is resynchronized as `jpeg_resync_to_restart` does.
//!
//! The bit reader holds up to 64 bits; codes of up to [`LOOK`] bits are decoded with one
//! table look-up, and for AC tables a second table also decodes the coefficient's value when
//! the code and its extra bits fit in [`LOOK`] bits.

use super::markers::next_marker;
use super::{Frame, JpegError, JpegResult, Scan};

/// The zigzag index of each coefficient -> its natural (row-major) position, with libjpeg's
/// 16 extra entries (63) that absorb indices a corrupt run pushes past the end.
pub(super) const NATURAL: [u8; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// Bits of look-ahead: codes up to this long decode with one table look-up.
const LOOK: u32 = 11;
/// Entries of the look-ahead tables.
const LOOK_SIZE: usize = 1 << LOOK;

/// A Huffman table as a DHT segment defines it (`JHUFF_TBL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HuffSpec {
    /// `bits[l]`: the number of codes of length `l` (1..=16); `bits[0]` unused.
    pub bits: [u8; 17],
    /// The symbols in code order; zero past the defined ones, as libjpeg zeroes them.
    pub vals: [u8; 256],
}

impl HuffSpec {
    /// A table from its counts and symbols (the symbols past `vals.len()` are zero).
    pub(super) fn new(bits: [u8; 17], vals: &[u8]) -> Self {
        let mut v = [0u8; 256];
        for (d, s) in v.iter_mut().zip(vals) {
            *d = *s;
        }
        Self { bits, vals: v }
    }

    /// The standard tables of JPEG Annex K.3, which libjpeg-turbo installs in DC/AC slots 0
    /// and 1 when a file defines none there (`std_huff_tables`, for Motion-JPEG frames):
    /// `(dc0, ac0, dc1, ac1)`.
    pub(super) fn standard() -> [HuffSpec; 4] {
        let dc_bits = [0, 0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
        let dc_chroma_bits = [0, 0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
        let dc_vals = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        let ac_bits = [0, 0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125];
        let ac_vals: [u8; 162] = [
            1, 2, 3, 0, 4, 17, 5, 18, 33, 49, 65, 6, 19, 81, 97, 7, 34, 113, 20, 50, 129, 145, 161,
            8, 35, 66, 177, 193, 21, 82, 209, 240, 36, 51, 98, 114, 130, 9, 10, 22, 23, 24, 25, 26,
            37, 38, 39, 40, 41, 42, 52, 53, 54, 55, 56, 57, 58, 67, 68, 69, 70, 71, 72, 73, 74, 83,
            84, 85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105, 106, 115, 116, 117, 118,
            119, 120, 121, 122, 131, 132, 133, 134, 135, 136, 137, 138, 146, 147, 148, 149, 150,
            151, 152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178, 179, 180, 181,
            182, 183, 184, 185, 186, 194, 195, 196, 197, 198, 199, 200, 201, 202, 210, 211, 212,
            213, 214, 215, 216, 217, 218, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 241,
            242, 243, 244, 245, 246, 247, 248, 249, 250,
        ];
        let ac_chroma_bits = [0, 0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119];
        let ac_chroma_vals: [u8; 162] = [
            0, 1, 2, 3, 17, 4, 5, 33, 49, 6, 18, 65, 81, 7, 97, 113, 19, 34, 50, 129, 8, 20, 66,
            145, 161, 177, 193, 9, 35, 51, 82, 240, 21, 98, 114, 209, 10, 22, 36, 52, 225, 37, 241,
            23, 24, 25, 26, 38, 39, 40, 41, 42, 53, 54, 55, 56, 57, 58, 67, 68, 69, 70, 71, 72, 73,
            74, 83, 84, 85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105, 106, 115, 116,
            117, 118, 119, 120, 121, 122, 130, 131, 132, 133, 134, 135, 136, 137, 138, 146, 147,
            148, 149, 150, 151, 152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178,
            179, 180, 181, 182, 183, 184, 185, 186, 194, 195, 196, 197, 198, 199, 200, 201, 202,
            210, 211, 212, 213, 214, 215, 216, 217, 218, 226, 227, 228, 229, 230, 231, 232, 233,
            234, 242, 243, 244, 245, 246, 247, 248, 249, 250,
        ];
        [
            HuffSpec::new(dc_bits, &dc_vals),
            HuffSpec::new(ac_bits, &ac_vals),
            HuffSpec::new(dc_chroma_bits, &dc_vals),
            HuffSpec::new(ac_chroma_bits, &ac_chroma_vals),
        ]
    }
}

/// A table ready for decoding (`d_derived_tbl`), with look-ahead tables.
#[derive(Debug, Clone)]
pub(super) struct Derived {
    /// For each [`LOOK`]-bit prefix: `(length << 8) | symbol` of the code it starts with, or 0
    /// when the code is longer than [`LOOK`] bits (or no code matches).
    lookup: [u16; LOOK_SIZE],
    /// For AC tables, each [`LOOK`]-bit prefix whose code and extra bits both fit in it:
    /// `(value << 16) | (run << 8) | total length`; 0 otherwise.
    fast_ac: [i32; LOOK_SIZE],
    /// The largest code of each length (-1: none; `maxcode[17]` a sentinel).
    maxcode: [i32; 18],
    /// Symbol index of the first code of each length minus that code.
    valoffset: [i32; 18],
    /// The symbols in code order.
    vals: [u8; 256],
}

impl Derived {
    /// Builds the decoding tables of `spec`, validating it as `jpeg_make_d_derived_tbl`
    /// does: at most 256 codes, no length over-subscribed, DC symbols 0..=15.
    pub(super) fn new(spec: &HuffSpec, is_dc: bool) -> Result<Self, &'static str> {
        let mut huffsize = [0u8; 257];
        let mut p = 0usize;
        for l in 1..=16u8 {
            let n = usize::from(spec.bits[usize::from(l)]);
            if p + n > 256 {
                return Err("more than 256 Huffman codes");
            }
            for s in &mut huffsize[p..p + n] {
                *s = l;
            }
            p += n;
        }
        let numsymbols = p;
        let mut huffcode = [0u32; 257];
        let mut code = 0u32;
        let mut si = u32::from(huffsize[0]);
        p = 0;
        while huffsize[p] != 0 {
            while u32::from(huffsize[p]) == si {
                huffcode[p] = code;
                p += 1;
                code += 1;
            }
            if code >= (1u32 << si) {
                return Err("over-subscribed Huffman code lengths");
            }
            code <<= 1;
            si += 1;
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 18];
        p = 0;
        for l in 1..=16usize {
            let n = usize::from(spec.bits[l]);
            if n != 0 {
                valoffset[l] = p as i32 - huffcode[p] as i32;
                p += n;
                maxcode[l] = huffcode[p - 1] as i32;
            }
        }
        valoffset[17] = 0;
        maxcode[17] = 0xFFFFF;
        if is_dc && spec.vals[..numsymbols].iter().any(|&s| s > 15) {
            return Err("DC Huffman symbol above 15");
        }
        let mut lookup = [0u16; LOOK_SIZE];
        let mut fast_ac = [0i32; LOOK_SIZE];
        p = 0;
        for l in 1..=LOOK {
            for _ in 0..spec.bits[l as usize] {
                let sym = spec.vals[p];
                let first = (huffcode[p] << (LOOK - l)) as usize;
                let count = 1usize << (LOOK - l);
                for (i, e) in lookup[first..first + count].iter_mut().enumerate() {
                    *e = ((l as u16) << 8) | u16::from(sym);
                    let size = u32::from(sym & 15);
                    let run = i32::from(sym >> 4);
                    if !is_dc && size != 0 && l + size <= LOOK {
                        let extra = ((i as u32) >> (LOOK - l - size)) & ((1 << size) - 1);
                        let value = extend(extra, size);
                        fast_ac[first + i] = (value << 16) | (run << 8) | (l + size) as i32;
                    }
                }
                p += 1;
            }
        }
        Ok(Self {
            lookup,
            fast_ac,
            maxcode,
            valoffset,
            vals: spec.vals,
        })
    }
}

/// `HUFF_EXTEND`: the signed value of `s` extra bits `v` (`s` in 1..=16).
#[inline(always)]
fn extend(v: u32, s: u32) -> i32 {
    let v = v as i32;
    if v < (1 << (s - 1)) {
        v - (1 << s) + 1
    } else {
        v
    }
}

/// The entropy-coded data of one segment as libjpeg's bit reader sees it: bytes with their
/// `FF 00` stuffing removed, up to the marker (or the end of the data) that ends them, then
/// zero bits for ever.
pub(super) struct BitReader<'a> {
    /// The whole file.
    data: &'a [u8],
    /// The next byte to read.
    pos: usize,
    /// Bits not yet used, most significant first.
    buf: u64,
    /// How many of `buf`'s bits are valid.
    bits: u32,
    /// The marker that ended the data: its code and the offset just past the code.
    marker: Option<(u8, usize)>,
    /// Whether the data ended with the file, before any marker.
    eof: bool,
    /// Zero bits fed after the data ended (they sit at the end of the valid bits).
    phantom: u64,
}

impl<'a> BitReader<'a> {
    /// A reader of the entropy-coded data that starts at `pos`.
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            buf: 0,
            bits: 0,
            marker: None,
            eof: false,
            phantom: 0,
        }
    }

    /// A reader that stands right at a marker already read (its code, the offset past it):
    /// it gives only zero bits.
    fn at_marker(data: &'a [u8], code: u8, after: usize) -> Self {
        let mut r = Self::new(data, after);
        r.marker = Some((code, after));
        r
    }

    /// Whether some MCU has used bits past the end of the data (libjpeg's
    /// `insufficient_data` condition).
    #[inline(always)]
    fn overrun(&self) -> bool {
        u64::from(self.bits) < self.phantom
    }

    /// Makes sure at least `n` (<= 57) bits are valid.
    #[inline(always)]
    fn ensure(&mut self, n: u32) {
        if self.bits < n {
            self.refill();
        }
    }

    /// Loads bytes until more than 56 bits are valid.
    #[inline(always)]
    fn refill(&mut self) {
        if self.marker.is_none() && !self.eof {
            if let Some(s) = self.data.get(self.pos..self.pos + 8) {
                let w = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
                let x = !w;
                let has_ff =
                    (x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080) != 0;
                if !has_ff {
                    let n = (64 - self.bits) >> 3;
                    let take = w & (u64::MAX << (64 - 8 * n));
                    self.buf |= take >> self.bits;
                    self.bits += 8 * n;
                    self.pos += n as usize;
                    return;
                }
            }
        }
        self.refill_slow();
    }

    /// Byte-by-byte refill: unstuffs `FF 00` (and `FF FF .. FF 00`, as libjpeg), stops at a
    /// marker or the end of the data, and feeds zero bits after it.
    #[cold]
    fn refill_slow(&mut self) {
        while self.bits <= 56 {
            if self.marker.is_some() || self.eof {
                self.phantom += u64::from(64 - self.bits);
                self.bits = 64;
                return;
            }
            match self.data.get(self.pos) {
                None => self.eof = true,
                Some(&b) if b != 0xFF => {
                    self.buf |= u64::from(b) << (56 - self.bits);
                    self.bits += 8;
                    self.pos += 1;
                }
                Some(_) => {
                    let mut p = self.pos + 1;
                    while self.data.get(p) == Some(&0xFF) {
                        p += 1;
                    }
                    match self.data.get(p) {
                        None => {
                            self.eof = true;
                            self.pos = self.data.len();
                        }
                        Some(0) => {
                            self.buf |= 0xFFu64 << (56 - self.bits);
                            self.bits += 8;
                            self.pos = p + 1;
                        }
                        Some(&c) => self.marker = Some((c, p + 1)),
                    }
                }
            }
        }
    }

    /// The next `n` (1..=32) bits, not consumed.
    #[inline(always)]
    fn peek(&self, n: u32) -> u32 {
        (self.buf >> (64 - n)) as u32
    }

    /// Drops `n` bits (`n` <= valid bits).
    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.bits -= n;
    }

    /// The next `n` (0..=16) bits.
    #[inline(always)]
    fn get_bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }

    /// One Huffman symbol (at least 17 bits must be valid). A code no table entry matches
    /// takes 17 bits and decodes as 0, as libjpeg decodes it.
    #[inline(always)]
    fn decode(&mut self, t: &Derived) -> u8 {
        let e = t.lookup[self.peek(LOOK) as usize & (LOOK_SIZE - 1)];
        if e != 0 {
            self.consume(u32::from(e >> 8));
            return e as u8;
        }
        self.decode_slow(t)
    }

    /// A code longer than [`LOOK`] bits, bit by bit (`jpeg_huff_decode`).
    #[cold]
    fn decode_slow(&mut self, t: &Derived) -> u8 {
        let mut l = LOOK + 1;
        while l <= 16 {
            let code = self.peek(l) as i32;
            if code <= t.maxcode[l as usize] {
                self.consume(l);
                return t.vals[((code + t.valoffset[l as usize]) & 0xFF) as usize];
            }
            l += 1;
        }
        self.consume(17);
        0
    }
}

/// The Huffman tables a scan uses, by table slot.
pub(super) struct ScanTables<'t> {
    /// DC tables (slots 0..=3), derived for this scan.
    pub dc: [Option<&'t Derived>; 4],
    /// AC tables (slots 0..=3), derived for this scan.
    pub ac: [Option<&'t Derived>; 4],
}

/// What follows a scan's entropy-coded data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanEnd {
    /// A marker: its code and the offset just past the code.
    Marker(u8, usize),
    /// The end of the file, with no marker after the data.
    Eof,
}

/// What decoding a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScanOutcome {
    /// What ends the scan's data.
    pub end: ScanEnd,
    /// Whether the file ended inside the scan's entropy-coded data (before all its MCUs had
    /// their bits): libjpeg would have had to wait for more data.
    pub truncated: bool,
}

/// The kind of MCU a scan codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Sequential (baseline or extended): DC and AC of each block.
    Sequential,
    /// Progressive DC, first scan.
    DcFirst,
    /// Progressive DC, refinement.
    DcRefine,
    /// Progressive AC, first scan.
    AcFirst,
    /// Progressive AC, refinement.
    AcRefine,
}

/// One block of an MCU: where it lives and which tables decode it.
#[derive(Debug, Clone, Copy, Default)]
struct McuBlock {
    /// Index into the frame's components.
    comp: usize,
    /// Index of the component in the scan (its DC predictor).
    ci: usize,
    /// Block row and column offsets inside the MCU.
    dy: usize,
    /// Block column offset inside the MCU.
    dx: usize,
}

/// The decoder's state across MCUs (libjpeg's `savable_state` plus restart bookkeeping).
struct State<'a> {
    /// The bit reader of the current segment.
    reader: BitReader<'a>,
    /// DC predictor of each scan component.
    pred: [i32; 4],
    /// Remaining blocks of an end-of-band run (progressive AC).
    eobrun: u32,
    /// MCUs of the current segment are skipped (libjpeg's `insufficient_data`).
    insufficient: bool,
    /// MCUs before the next restart marker.
    restarts_to_go: usize,
    /// The number (0..=7) the next restart marker should have.
    next_restart: u8,
    /// The file ended inside the entropy-coded data (libjpeg would suspend).
    truncated: bool,
}

/// Decodes one Huffman-coded scan whose entropy-coded data starts at `start` in `data` (the
/// whole file) into `frame`'s coefficients. The scan has been validated (components,
/// progression parameters, tables present) by the marker reader; `tables` holds the derived
/// tables it names.
pub(super) fn decode_scan(
    frame: &mut Frame,
    scan: &Scan,
    tables: &ScanTables<'_>,
    data: &[u8],
    start: usize,
) -> JpegResult<ScanOutcome> {
    let mut dec = ScanDecoder::new(frame, scan, tables, data, start)?;
    dec.decode_rows(frame, dec.mcu_rows())?;
    Ok(dec.finish())
}

/// A scan being decoded MCU row by MCU row (libjpeg's entropy decoder between `start_pass`
/// and the end of the scan), so that a single-scan file can be turned into pixels band by
/// band while its coefficients are held only for the rows in use
/// ([`Component::coef_row0`]).
pub(super) struct ScanDecoder<'a, 't> {
    /// What the scan codes.
    kind: Kind,
    /// The DC table of each scan component.
    dc_t: Vec<&'t Derived>,
    /// The AC table of each scan component.
    ac_t: Vec<&'t Derived>,
    /// Bit reader, predictors, restart bookkeeping.
    st: State<'a>,
    /// The blocks of one MCU.
    layout: Vec<McuBlock>,
    /// MCUs in a row.
    mcus_x: usize,
    /// MCU rows in the scan.
    mcus_y: usize,
    /// Whether the scan has several components.
    interleaved: bool,
    /// Spectral selection start.
    ss: usize,
    /// Spectral selection end.
    se: usize,
    /// Successive approximation low bit.
    al: u32,
    /// The first scan component's vertical sampling factor.
    v0: usize,
    /// The restart interval in MCUs (0: none).
    restart_interval: usize,
    /// The whole file.
    data: &'a [u8],
    /// The next MCU row to decode.
    next_row: usize,
}

impl<'a, 't> ScanDecoder<'a, 't> {
    /// Starts decoding `scan`, whose entropy-coded data starts at `start` in `data`.
    pub(super) fn new(
        frame: &Frame,
        scan: &Scan,
        tables: &ScanTables<'t>,
        data: &'a [u8],
        start: usize,
    ) -> JpegResult<Self> {
        let kind = if !frame.progressive {
            Kind::Sequential
        } else {
            match (scan.ss == 0, scan.ah == 0) {
                (true, true) => Kind::DcFirst,
                (true, false) => Kind::DcRefine,
                (false, true) => Kind::AcFirst,
                (false, false) => Kind::AcRefine,
            }
        };
        let missing =
            || JpegError::Malformed("a scan names a Huffman table that is not defined".into());
        let empty: &'t Derived = EMPTY.get_or_init(empty_table);
        let mut dc_t: Vec<&'t Derived> = Vec::with_capacity(4);
        let mut ac_t: Vec<&'t Derived> = Vec::with_capacity(4);
        for i in 0..scan.comps.len() {
            let need_dc = matches!(kind, Kind::Sequential | Kind::DcFirst);
            let need_ac = matches!(kind, Kind::Sequential | Kind::AcFirst | Kind::AcRefine);
            let d = tables.dc.get(scan.dc_table[i]).copied().flatten();
            let a = tables.ac.get(scan.ac_table[i]).copied().flatten();
            match (need_dc, d) {
                (true, None) => return Err(missing()),
                (_, Some(t)) => dc_t.push(t),
                (false, None) => dc_t.push(empty),
            }
            match (need_ac, a) {
                (true, None) => return Err(missing()),
                (_, Some(t)) => ac_t.push(t),
                (false, None) => ac_t.push(empty),
            }
        }
        let Some(&first) = scan.comps.first() else {
            return Err(JpegError::Malformed("a scan with no components".into()));
        };
        let comp = |i: usize| {
            frame.components.get(i).ok_or_else(|| {
                JpegError::Malformed("a scan names a component the frame lacks".into())
            })
        };

        // The MCU layout (jdinput.c per_scan_setup).
        let mut layout: Vec<McuBlock> = Vec::with_capacity(10);
        let (mcus_x, mcus_y) = if scan.comps.len() == 1 {
            let c = comp(first)?;
            layout.push(McuBlock {
                comp: first,
                ..McuBlock::default()
            });
            (c.width_in_blocks, c.height_in_blocks)
        } else {
            for (ci, &ix) in scan.comps.iter().enumerate() {
                let c = comp(ix)?;
                for dy in 0..c.v {
                    for dx in 0..c.h {
                        layout.push(McuBlock {
                            comp: ix,
                            ci,
                            dy,
                            dx,
                        });
                    }
                }
            }
            (
                frame.width.div_ceil(frame.max_h * 8),
                frame.height.div_ceil(frame.max_v * 8),
            )
        };
        Ok(Self {
            kind,
            dc_t,
            ac_t,
            st: State {
                reader: BitReader::new(data, start),
                pred: [0; 4],
                eobrun: 0,
                insufficient: false,
                restarts_to_go: scan.restart_interval,
                next_restart: 0,
                truncated: false,
            },
            layout,
            mcus_x,
            mcus_y,
            interleaved: scan.comps.len() > 1,
            ss: usize::from(scan.ss),
            se: usize::from(scan.se),
            al: u32::from(scan.al),
            v0: comp(first)?.v,
            restart_interval: scan.restart_interval,
            data,
            next_row: 0,
        })
    }

    /// The scan's MCU rows: iMCU rows when it is interleaved, the component's block rows
    /// otherwise.
    pub(super) fn mcu_rows(&self) -> usize {
        self.mcus_y
    }

    /// The MCU rows that cover iMCU rows `0..k` (an interleaved scan's MCU row is an iMCU
    /// row; a single-component scan's is a block row, `v` of them an iMCU row).
    pub(super) fn mcu_rows_of_imcu_rows(&self, k: usize) -> usize {
        if self.interleaved {
            k
        } else {
            k.saturating_mul(self.v0)
        }
    }

    /// Decodes the MCU rows from the next one up to `until` (exclusive, at most
    /// [`ScanDecoder::mcu_rows`]) into `frame`'s coefficients, which must hold their block
    /// rows (from each component's [`Component::coef_row0`] on).
    pub(super) fn decode_rows(&mut self, frame: &mut Frame, until: usize) -> JpegResult<()> {
        let until = until.min(self.mcus_y);
        let outside =
            || JpegError::Malformed("scan geometry outside the coefficient arrays".into());
        let (ss, se, al) = (self.ss, self.se, self.al);
        let st = &mut self.st;
        for my in self.next_row..until {
            for mx in 0..self.mcus_x {
                if !st.insufficient {
                    // `consume_data` notes the last good iMCU row (block smoothing reads it).
                    frame.progress.last_good_imcu_row =
                        if self.interleaved { my } else { my / self.v0 };
                }
                if self.restart_interval != 0 {
                    if st.restarts_to_go == 0 {
                        process_restart(st, self.data, self.restart_interval)?;
                    }
                    st.restarts_to_go -= 1;
                }
                if st.insufficient {
                    continue;
                }
                for b in &self.layout {
                    let c = &mut frame.components[b.comp];
                    let (row, col) = if self.interleaved {
                        (my * c.v + b.dy, mx * c.h + b.dx)
                    } else {
                        (my, mx)
                    };
                    let idx = row
                        .checked_sub(c.coef_row0)
                        .map(|r| r * c.blocks_w + col)
                        .ok_or_else(outside)?;
                    let block = c.coefs.get_mut(idx).ok_or_else(outside)?;
                    let r = &mut st.reader;
                    match self.kind {
                        Kind::Sequential => decode_block_seq(
                            r,
                            self.dc_t[b.ci],
                            self.ac_t[b.ci],
                            &mut st.pred[b.ci],
                            block,
                        ),
                        Kind::DcFirst => {
                            r.ensure(32);
                            let s = u32::from(r.decode(self.dc_t[b.ci]));
                            let diff = if s != 0 { extend(r.get_bits(s), s) } else { 0 };
                            let Some(v) = st.pred[b.ci].checked_add(diff) else {
                                return Err(JpegError::Malformed(
                                    "DC coefficient out of range in a progressive scan".into(),
                                ));
                            };
                            st.pred[b.ci] = v;
                            block[0] = v.wrapping_shl(al) as i16;
                        }
                        Kind::DcRefine => {
                            r.ensure(1);
                            if r.get_bits(1) != 0 {
                                block[0] |= (1i32 << al) as i16;
                            }
                        }
                        Kind::AcFirst => {
                            decode_ac_first(r, self.ac_t[b.ci], &mut st.eobrun, block, ss, se, al)
                        }
                        Kind::AcRefine => {
                            decode_ac_refine(r, self.ac_t[b.ci], &mut st.eobrun, block, ss, se, al)
                        }
                    }
                }
                if st.reader.overrun() {
                    st.insufficient = true;
                    if st.reader.eof {
                        st.truncated = true;
                    }
                }
            }
        }
        self.next_row = self.next_row.max(until);
        Ok(())
    }

    /// Ends the scan: what follows its data, and whether the file ended inside it.
    pub(super) fn finish(self) -> ScanOutcome {
        let mut st = self.st;
        // The file ended inside the data the reader looked at: libjpeg, which loads bits
        // before it needs them, would have asked for more data there and PIL has none to
        // give. (Approximation: libjpeg's exact fill points are not modelled.)
        if st.reader.eof {
            st.truncated = true;
        }
        let end = match st.reader.marker {
            Some((code, after)) => ScanEnd::Marker(code, after),
            None => match next_marker(self.data, st.reader.pos) {
                Some((code, after)) => ScanEnd::Marker(code, after),
                None => ScanEnd::Eof,
            },
        };
        ScanOutcome {
            end,
            truncated: st.truncated,
        }
    }
}

/// A table with no codes, for the slots a scan does not use.
static EMPTY: std::sync::OnceLock<Derived> = std::sync::OnceLock::new();

/// [`EMPTY`]'s value.
fn empty_table() -> Derived {
    Derived {
        lookup: [0; LOOK_SIZE],
        fast_ac: [0; LOOK_SIZE],
        maxcode: [-1; 18],
        valoffset: [0; 18],
        vals: [0; 256],
    }
}

/// `process_restart`: drops the bits left, reads the restart marker (resynchronizing as
/// `jpeg_resync_to_restart` does when it is not the expected one), resets the predictors.
fn process_restart<'a>(st: &mut State<'a>, data: &'a [u8], interval: usize) -> JpegResult<()> {
    let truncated = || {
        JpegError::Malformed(format!(
            "image file is truncated: the data ends before restart marker RST{} (offset {})",
            st.next_restart,
            data.len()
        ))
    };
    let (mut code, mut after) = match st.reader.marker {
        Some(m) => m,
        None => next_marker(data, st.reader.pos).ok_or_else(truncated)?,
    };
    let desired = st.next_restart;
    let rst = |n: u8| 0xD0 + (n & 7);
    if code == rst(desired) {
        st.reader = BitReader::new(data, after);
    } else {
        loop {
            let action = if code < 0xC0 {
                2
            } else if !(0xD0..=0xD7).contains(&code)
                || code == rst(desired + 1)
                || code == rst(desired + 2)
            {
                // A valid non-restart marker, or one of the next two restarts: leave it.
                3
            } else if code == rst(desired.wrapping_sub(1)) || code == rst(desired.wrapping_sub(2)) {
                2
            } else {
                1
            };
            match action {
                1 => {
                    st.reader = BitReader::new(data, after);
                    break;
                }
                2 => {
                    (code, after) = next_marker(data, after).ok_or_else(truncated)?;
                }
                _ => {
                    st.reader = BitReader::at_marker(data, code, after);
                    break;
                }
            }
        }
    }
    st.next_restart = (desired + 1) & 7;
    st.pred = [0; 4];
    st.eobrun = 0;
    st.restarts_to_go = interval;
    if st.reader.marker.is_none() {
        st.insufficient = false;
    }
    Ok(())
}

/// One block of a sequential scan (`decode_mcu_slow`, with look-ahead tables).
#[inline(always)]
fn decode_block_seq(
    r: &mut BitReader<'_>,
    dc: &Derived,
    ac: &Derived,
    pred: &mut i32,
    block: &mut [i16; 64],
) {
    r.ensure(32);
    let s = u32::from(r.decode(dc));
    let diff = if s != 0 { extend(r.get_bits(s), s) } else { 0 };
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        r.ensure(32);
        let f = ac.fast_ac[r.peek(LOOK) as usize & (LOOK_SIZE - 1)];
        if f != 0 {
            r.consume((f & 0xFF) as u32);
            k += ((f >> 8) & 0xFF) as usize;
            block[usize::from(NATURAL[k.min(79)])] = (f >> 16) as i16;
            k += 1;
            continue;
        }
        let rs = r.decode(ac);
        let run = usize::from(rs >> 4);
        let s = u32::from(rs & 15);
        if s != 0 {
            k += run;
            let v = extend(r.get_bits(s), s);
            block[usize::from(NATURAL[k.min(79)])] = v as i16;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            break;
        }
    }
}

/// One block of a progressive AC first scan (`decode_mcu_AC_first`).
fn decode_ac_first(
    r: &mut BitReader<'_>,
    ac: &Derived,
    eobrun: &mut u32,
    block: &mut [i16; 64],
    ss: usize,
    se: usize,
    al: u32,
) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let mut k = ss;
    while k <= se {
        r.ensure(32);
        let rs = r.decode(ac);
        let run = u32::from(rs >> 4);
        let s = u32::from(rs & 15);
        if s != 0 {
            k += run as usize;
            let v = extend(r.get_bits(s), s);
            block[usize::from(NATURAL[k.min(79)])] = v.wrapping_shl(al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            let mut e = 1u32 << run;
            if run != 0 {
                e += r.get_bits(run);
            }
            *eobrun = e - 1;
            break;
        }
        k += 1;
    }
}

/// One block of a progressive AC refinement scan (`decode_mcu_AC_refine`).
fn decode_ac_refine(
    r: &mut BitReader<'_>,
    ac: &Derived,
    eobrun: &mut u32,
    block: &mut [i16; 64],
    ss: usize,
    se: usize,
    al: u32,
) {
    let p1 = (1i32 << al) as i16;
    let m1 = (-1i32 << al) as i16;
    let refine = |r: &mut BitReader<'_>, c: &mut i16| {
        r.ensure(1);
        if r.get_bits(1) != 0 && (*c & p1) == 0 {
            *c = if *c >= 0 {
                c.wrapping_add(p1)
            } else {
                c.wrapping_add(m1)
            };
        }
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            r.ensure(32);
            let rs = r.decode(ac);
            let mut run = i32::from(rs >> 4);
            let s = rs & 15;
            let mut value = 0i16;
            if s != 0 {
                // A size other than 1 only draws a warning from libjpeg.
                value = if r.get_bits(1) != 0 { p1 } else { m1 };
            } else if run != 15 {
                let mut e = 1u32 << run;
                if run != 0 {
                    r.ensure(32);
                    e += r.get_bits(run as u32);
                }
                *eobrun = e;
                break;
            }
            loop {
                let pos = usize::from(NATURAL[k.min(79)]);
                if block[pos] != 0 {
                    refine(r, &mut block[pos]);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
                if k > se {
                    break;
                }
            }
            if value != 0 {
                block[usize::from(NATURAL[k.min(79)])] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let pos = usize::from(NATURAL[k]);
            if block[pos] != 0 {
                refine(r, &mut block[pos]);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}
