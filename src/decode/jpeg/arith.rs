//! Arithmetic-coded scans, sequential and progressive (`jdarith.c`).
//!
//! The decoder follows libjpeg-turbo's `jdarith.c` step for step, so that every stream, valid
//! or corrupt, gives the coefficients libjpeg gives:
//! - the QM-coder with libjpeg's floating cut-point `C` register ([`ArithReader`]): 16 bits of
//!   interval base plus up to 8 buffered bits, `ct` bits of them still unread;
//! - statistics areas of 64 DC bins and 256 AC bins a table, reset at the start of each scan
//!   and at each restart; one fixed bin (state 113, probability 1/2) for the signs of AC
//!   coefficients and for the bits of refinement scans;
//! - a marker met inside the entropy-coded data stops the reading: zeros are fed from then on
//!   (legal in arithmetic coding), and the marker is handed back to the marker reader;
//! - corrupt data (a magnitude or spectral overflow) puts the decoder in the error state
//!   (`ct = -1`): the MCUs up to the next restart marker are skipped (their coefficients stay
//!   as they are), as libjpeg does after its `JWRN_ARITH_BAD_CODE` warning;
//! - wrong or missing restart markers are resynchronized as `jpeg_resync_to_restart` does.
//!
//! Data that ends inside a scan is an error: PIL feeds libjpeg from a suspending source, and
//! `jdarith.c` cannot suspend, so libjpeg stops with `JERR_CANT_SUSPEND` there.

use super::{Frame, JpegError, JpegResult, Scan};

/// The arithmetic conditioning values from the DAC markers, per table index 0..=15: libjpeg
/// has 16 arithmetic tables of each class (`NUM_ARITH_TBLS`), a DAC entry `Tc << 4 | Tb`
/// names DC table `Tb` (`Tc = 0`) or AC table `Tb` (`Tc = 1`), and a scan may select any of
/// the 16 (defaults, restored by SOI: DC `L = 0`, `U = 1`; AC `Kx = 5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArithConditioning {
    /// DC lower bound `L` per DC table.
    pub dc_l: [u8; NUM_ARITH_TBLS],
    /// DC upper bound `U` per DC table.
    pub dc_u: [u8; NUM_ARITH_TBLS],
    /// AC `Kx` per AC table.
    pub ac_k: [u8; NUM_ARITH_TBLS],
}

impl Default for ArithConditioning {
    fn default() -> Self {
        Self {
            dc_l: [0; NUM_ARITH_TBLS],
            dc_u: [1; NUM_ARITH_TBLS],
            ac_k: [5; NUM_ARITH_TBLS],
        }
    }
}

/// Arithmetic conditioning tables of each class (DC, AC), as libjpeg's `NUM_ARITH_TBLS`.
pub(super) const NUM_ARITH_TBLS: usize = 16;

/// The zigzag index of each coefficient -> its natural (row-major) position in the block.
const NATURAL_ORDER: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// The probability estimation state machine of T.81 Table D.2, one row a state:
/// `(Qe, Next_Index_LPS, Next_Index_MPS, Switch_MPS)`. State 113 is the fixed estimate of
/// 1/2 (T.851), which never moves.
const QE_STATES: [(u16, u8, u8, u8); 114] = [
    (0x5a1d, 1, 1, 1),
    (0x2586, 14, 2, 0),
    (0x1114, 16, 3, 0),
    (0x080b, 18, 4, 0),
    (0x03d8, 20, 5, 0),
    (0x01da, 23, 6, 0),
    (0x00e5, 25, 7, 0),
    (0x006f, 28, 8, 0),
    (0x0036, 30, 9, 0),
    (0x001a, 33, 10, 0),
    (0x000d, 35, 11, 0),
    (0x0006, 9, 12, 0),
    (0x0003, 10, 13, 0),
    (0x0001, 12, 13, 0),
    (0x5a7f, 15, 15, 1),
    (0x3f25, 36, 16, 0),
    (0x2cf2, 38, 17, 0),
    (0x207c, 39, 18, 0),
    (0x17b9, 40, 19, 0),
    (0x1182, 42, 20, 0),
    (0x0cef, 43, 21, 0),
    (0x09a1, 45, 22, 0),
    (0x072f, 46, 23, 0),
    (0x055c, 48, 24, 0),
    (0x0406, 49, 25, 0),
    (0x0303, 51, 26, 0),
    (0x0240, 52, 27, 0),
    (0x01b1, 54, 28, 0),
    (0x0144, 56, 29, 0),
    (0x00f5, 57, 30, 0),
    (0x00b7, 59, 31, 0),
    (0x008a, 60, 32, 0),
    (0x0068, 62, 33, 0),
    (0x004e, 63, 34, 0),
    (0x003b, 32, 35, 0),
    (0x002c, 33, 9, 0),
    (0x5ae1, 37, 37, 1),
    (0x484c, 64, 38, 0),
    (0x3a0d, 65, 39, 0),
    (0x2ef1, 67, 40, 0),
    (0x261f, 68, 41, 0),
    (0x1f33, 69, 42, 0),
    (0x19a8, 70, 43, 0),
    (0x1518, 72, 44, 0),
    (0x1177, 73, 45, 0),
    (0x0e74, 74, 46, 0),
    (0x0bfb, 75, 47, 0),
    (0x09f8, 77, 48, 0),
    (0x0861, 78, 49, 0),
    (0x0706, 79, 50, 0),
    (0x05cd, 48, 51, 0),
    (0x04de, 50, 52, 0),
    (0x040f, 50, 53, 0),
    (0x0363, 51, 54, 0),
    (0x02d4, 52, 55, 0),
    (0x025c, 53, 56, 0),
    (0x01f8, 54, 57, 0),
    (0x01a4, 55, 58, 0),
    (0x0160, 56, 59, 0),
    (0x0125, 57, 60, 0),
    (0x00f6, 58, 61, 0),
    (0x00cb, 59, 62, 0),
    (0x00ab, 61, 63, 0),
    (0x008f, 61, 32, 0),
    (0x5b12, 65, 65, 1),
    (0x4d04, 80, 66, 0),
    (0x412c, 81, 67, 0),
    (0x37d8, 82, 68, 0),
    (0x2fe8, 83, 69, 0),
    (0x293c, 84, 70, 0),
    (0x2379, 86, 71, 0),
    (0x1edf, 87, 72, 0),
    (0x1aa9, 87, 73, 0),
    (0x174e, 72, 74, 0),
    (0x1424, 72, 75, 0),
    (0x119c, 74, 76, 0),
    (0x0f6b, 74, 77, 0),
    (0x0d51, 75, 78, 0),
    (0x0bb6, 77, 79, 0),
    (0x0a40, 77, 48, 0),
    (0x5832, 80, 81, 1),
    (0x4d1c, 88, 82, 0),
    (0x438e, 89, 83, 0),
    (0x3bdd, 90, 84, 0),
    (0x34ee, 91, 85, 0),
    (0x2eae, 92, 86, 0),
    (0x299a, 93, 87, 0),
    (0x2516, 86, 71, 0),
    (0x5570, 88, 89, 1),
    (0x4ca9, 95, 90, 0),
    (0x44d9, 96, 91, 0),
    (0x3e22, 97, 92, 0),
    (0x3824, 99, 93, 0),
    (0x32b4, 99, 94, 0),
    (0x2e17, 93, 86, 0),
    (0x56a8, 95, 96, 1),
    (0x4f46, 101, 97, 0),
    (0x47e5, 102, 98, 0),
    (0x41cf, 103, 99, 0),
    (0x3c3d, 104, 100, 0),
    (0x375e, 99, 93, 0),
    (0x5231, 105, 102, 0),
    (0x4c0f, 106, 103, 0),
    (0x4639, 107, 104, 0),
    (0x415e, 103, 99, 0),
    (0x5627, 105, 106, 1),
    (0x50e7, 108, 107, 0),
    (0x4b85, 109, 103, 0),
    (0x5597, 110, 109, 0),
    (0x504f, 111, 107, 0),
    (0x5a10, 110, 111, 1),
    (0x5522, 112, 109, 0),
    (0x59eb, 112, 111, 1),
    (0x5a1d, 113, 113, 0),
];

/// [`QE_STATES`] packed as libjpeg packs it, `Qe << 16 | Next_MPS << 8 | Switch << 7 |
/// Next_LPS`, and padded to 128 rows (a statistics bin's low 7 bits index it; only states
/// 0..=113 ever occur, the padding rows repeat the fixed state).
const PACKED_STATES: [u32; 128] = pack_states();

/// Builds [`PACKED_STATES`].
const fn pack_states() -> [u32; 128] {
    let mut out = [0u32; 128];
    let mut i = 0;
    while i < 128 {
        let row = if i < QE_STATES.len() {
            QE_STATES[i]
        } else {
            QE_STATES[QE_STATES.len() - 1]
        };
        out[i] =
            ((row.0 as u32) << 16) | ((row.2 as u32) << 8) | ((row.3 as u32) << 7) | row.1 as u32;
        i += 1;
    }
    out
}

/// The fixed-probability bin (state 113, MPS 0): never changes.
const FIXED_BIN: u8 = 113;

/// DC statistics bins a table (T.81 needs 49).
const DC_STAT_BINS: usize = 64;
/// AC statistics bins a table (T.81 needs 245).
const AC_STAT_BINS: usize = 256;

/// The arithmetic decoder's registers and its read position in the entropy-coded data.
#[derive(Debug)]
struct ArithReader<'a> {
    /// The scan's data (from just after SOS to the end of the file).
    data: &'a [u8],
    /// Next byte to read in `data`.
    pos: usize,
    /// `C`: base of the coding interval plus the input bit buffer.
    c: i64,
    /// `A`: the normalized size of the coding interval.
    a: i64,
    /// Bits left in the bit buffer part of `C`: `-16` at a (re)start, `0..=7` while
    /// decoding, `-1` in the error state (MCUs skipped until the next restart).
    ct: i32,
    /// A marker code met in the data (or by the restart logic) and not yet consumed; `0`:
    /// none. While set, the decoder is fed zero bytes.
    unread_marker: u8,
    /// Offset in `data` of the `0xFF` right before `unread_marker`'s code.
    marker_pos: usize,
}

impl<'a> ArithReader<'a> {
    /// A reader at the start of `data`, registers as at a scan start.
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            c: 0,
            a: 0,
            ct: -16,
            unread_marker: 0,
            marker_pos: 0,
        }
    }

    /// Resets the registers so that the next decision first reads two bytes (scan start,
    /// restart).
    fn reset(&mut self) {
        self.c = 0;
        self.a = 0;
        self.ct = -16;
    }

    /// The next byte of the data; the data may not end inside a scan.
    fn get_byte(&mut self) -> JpegResult<u8> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(JpegError::Malformed(format!(
                "arithmetic-coded data ends inside a scan ({} bytes after SOS)",
                self.data.len()
            ))),
        }
    }

    /// The next byte of entropy-coded data for the `C` register: stuffed `FF 00` gives
    /// `0xFF`, fill `0xFF`s are swallowed, and a marker stops the reading (`0` from then on).
    fn next_data_byte(&mut self) -> JpegResult<u8> {
        if self.unread_marker != 0 {
            return Ok(0);
        }
        let mut data = self.get_byte()?;
        if data == 0xFF {
            loop {
                data = self.get_byte()?;
                if data != 0xFF {
                    break;
                }
            }
            if data == 0 {
                return Ok(0xFF);
            }
            self.unread_marker = data;
            self.marker_pos = self.pos - 2;
            return Ok(0);
        }
        Ok(data)
    }

    /// Decodes one binary decision with the statistics bin `st` (MPS in bit 7, state index in
    /// bits 0..=6), updating the bin: T.81 D.2.4 to D.2.6 as `jdarith.c` writes them.
    fn decode(&mut self, st: &mut u8) -> JpegResult<bool> {
        // Renormalization and data input.
        while self.a < 0x8000 {
            self.ct -= 1;
            if self.ct < 0 {
                let data = self.next_data_byte()?;
                self.c = (self.c << 8) | i64::from(data);
                self.ct += 8;
                if self.ct < 0 {
                    // Still reading the two initial bytes.
                    self.ct += 1;
                    if self.ct == 0 {
                        // Both in: A becomes 0x10000 as the loop ends.
                        self.a = 0x8000;
                    }
                }
            }
            self.a <<= 1;
        }

        let sv = *st;
        let packed = PACKED_STATES[usize::from(sv & 0x7F)];
        let qe = i64::from(packed >> 16);
        let nl = (packed & 0xFF) as u8;
        let nm = ((packed >> 8) & 0xFF) as u8;

        let mut sv = sv;
        let temp = self.a - qe;
        self.a = temp;
        let temp = temp << self.ct.clamp(0, 31);
        if self.c >= temp {
            self.c -= temp;
            // Conditional LPS exchange.
            if self.a < qe {
                self.a = qe;
                *st = (sv & 0x80) ^ nm;
            } else {
                self.a = qe;
                *st = (sv & 0x80) ^ nl;
                sv ^= 0x80;
            }
        } else if self.a < 0x8000 {
            // Conditional MPS exchange.
            if self.a < qe {
                *st = (sv & 0x80) ^ nl;
                sv ^= 0x80;
            } else {
                *st = (sv & 0x80) ^ nm;
            }
        }
        Ok(sv >> 7 != 0)
    }

    /// Reads up to the next marker as libjpeg's `next_marker` does (skipping any garbage and
    /// stuffed `FF 00` pairs) and makes it the unread marker. `Ok(false)` when the data ends
    /// first.
    fn next_marker(&mut self) -> bool {
        loop {
            // Skip any non-FF bytes.
            loop {
                match self.data.get(self.pos) {
                    None => return false,
                    Some(&0xFF) => break,
                    Some(_) => self.pos += 1,
                }
            }
            // Swallow fill FFs.
            let mut code;
            loop {
                self.pos += 1;
                match self.data.get(self.pos) {
                    None => return false,
                    Some(&b) => code = b,
                }
                if code != 0xFF {
                    break;
                }
            }
            self.pos += 1;
            if code != 0 {
                self.unread_marker = code;
                self.marker_pos = self.pos - 2;
                return true;
            }
        }
    }
}

/// What kind of MCU decoding a scan does (`jdarith.c`'s four progressive routines and the
/// sequential one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    /// Sequential: DC and AC 1..=63 of every block, whatever `Ss`/`Se` say.
    Sequential,
    /// Progressive DC first scan.
    DcFirst,
    /// Progressive AC first scan.
    AcFirst,
    /// Progressive DC refinement scan.
    DcRefine,
    /// Progressive AC refinement scan.
    AcRefine,
}

/// The state of one scan's decoding: the reader, statistics areas, DC predictions and the
/// restart bookkeeping.
struct ScanDecoder<'a> {
    /// Arithmetic decoder registers and input.
    rd: ArithReader<'a>,
    /// DC statistics, per DC table.
    dc_stats: [[u8; DC_STAT_BINS]; NUM_ARITH_TBLS],
    /// AC statistics, per AC table.
    ac_stats: [[u8; AC_STAT_BINS]; NUM_ARITH_TBLS],
    /// The fixed-probability bin (stays at state 113).
    fixed_bin: u8,
    /// Last DC value per component of the scan (`0..=0xFFFF`, wrapped as libjpeg wraps it).
    last_dc_val: [i32; 4],
    /// DC conditioning context per component of the scan (0, 4, 8, 12 or 16).
    dc_context: [usize; 4],
    /// MCUs left before the next restart marker.
    restarts_to_go: usize,
    /// The RSTn number expected next (0..=7).
    next_restart_num: u8,
    /// The scan's restart interval in MCUs (0: none).
    restart_interval: usize,
    /// Which decoding routine the scan uses.
    kind: ScanKind,
    /// DC table of each component of the scan (progressive refinement scans may name any).
    dc_tbl: [usize; 4],
    /// AC table of each component of the scan.
    ac_tbl: [usize; 4],
    /// The conditioning values from DAC.
    cond: ArithConditioning,
    /// Spectral selection start.
    ss: usize,
    /// Spectral selection end.
    se: usize,
    /// Successive approximation low bit.
    al: u32,
    /// Components in the scan.
    ncomps: usize,
}

impl ScanDecoder<'_> {
    /// Clears the statistics the scan uses and its DC predictions (scan start and restarts,
    /// `start_pass` / `process_restart`).
    fn reset_statistics(&mut self) {
        let dc_used = matches!(self.kind, ScanKind::Sequential | ScanKind::DcFirst);
        let ac_used = matches!(
            self.kind,
            ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine
        );
        for ci in 0..self.ncomps {
            if dc_used {
                self.dc_stats[self.dc_tbl[ci]] = [0; DC_STAT_BINS];
                self.last_dc_val[ci] = 0;
                self.dc_context[ci] = 0;
            }
            if ac_used {
                self.ac_stats[self.ac_tbl[ci]] = [0; AC_STAT_BINS];
            }
        }
    }

    /// libjpeg's `process_restart`: reads the restart marker (resynchronizing when it is not
    /// the expected one), then resets statistics, predictions and registers.
    fn process_restart(&mut self) -> JpegResult<()> {
        if self.rd.unread_marker == 0 && !self.rd.next_marker() {
            return Err(JpegError::Malformed(format!(
                "arithmetic-coded data ends before restart marker RST{} ({} bytes after SOS)",
                self.next_restart_num,
                self.rd.data.len()
            )));
        }
        if self.rd.unread_marker == 0xD0 + self.next_restart_num {
            self.rd.unread_marker = 0;
        } else {
            self.resync_to_restart()?;
        }
        self.next_restart_num = (self.next_restart_num + 1) & 7;

        self.reset_statistics();
        self.rd.reset();
        self.restarts_to_go = self.restart_interval;
        Ok(())
    }

    /// libjpeg's `jpeg_resync_to_restart` for the unread marker, which is not the expected
    /// RSTn: skip forward to a later marker, drop this one, or leave it unread (the decoder
    /// then reads an empty segment: zeros).
    fn resync_to_restart(&mut self) -> JpegResult<()> {
        let desired = self.next_restart_num;
        loop {
            let marker = self.rd.unread_marker;
            let rst = |n: u8| 0xD0 + (n & 7);
            // 1: discard the marker; 2: scan to the next marker and decide again; 3: leave it
            // (a valid non-restart marker, or one of the next two restarts).
            let action = if marker < 0xC0 {
                2
            } else if !(0xD0..=0xD7).contains(&marker)
                || marker == rst(desired.wrapping_add(1))
                || marker == rst(desired.wrapping_add(2))
            {
                3
            } else if marker == rst(desired.wrapping_sub(1))
                || marker == rst(desired.wrapping_sub(2))
            {
                2
            } else {
                1
            };
            match action {
                1 => {
                    self.rd.unread_marker = 0;
                    return Ok(());
                }
                2 => {
                    if !self.rd.next_marker() {
                        return Err(JpegError::Malformed(format!(
                            "arithmetic-coded data ends while resynchronizing to RST{desired} \
                             ({} bytes after SOS)",
                            self.rd.data.len()
                        )));
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Decodes a DC difference for scan component `ci` with DC table `tbl` into
    /// `last_dc_val[ci]` (T.81 F.2.4.1, `jdarith.c`). `Ok(false)`: magnitude overflow, the
    /// decoder is now in the error state.
    fn decode_dc(&mut self, ci: usize, tbl: usize) -> JpegResult<bool> {
        let stats = &mut self.dc_stats[tbl];
        let rd = &mut self.rd;
        let ctx = self.dc_context[ci];
        if !rd.decode(&mut stats[ctx])? {
            self.dc_context[ci] = 0;
            return Ok(true);
        }
        let sign = usize::from(rd.decode(&mut stats[ctx + 1])?);
        let mut st = ctx + 2 + sign;
        let mut m = i32::from(rd.decode(&mut stats[st])?);
        if m != 0 {
            st = 20;
            while rd.decode(&mut stats[st])? {
                m <<= 1;
                if m == 0x8000 {
                    rd.ct = -1;
                    return Ok(false);
                }
                st += 1;
            }
        }
        // Conditioning category for the next DC difference (F.1.4.4.1.2).
        let lower = (1i64 << self.cond.dc_l[tbl].min(62)) >> 1;
        let upper = (1i64 << self.cond.dc_u[tbl].min(62)) >> 1;
        self.dc_context[ci] = if i64::from(m) < lower {
            0
        } else if i64::from(m) > upper {
            12 + sign * 4
        } else {
            4 + sign * 4
        };
        let mut v = m;
        st += 14;
        let mut bit = m >> 1;
        while bit != 0 {
            if rd.decode(&mut stats[st])? {
                v |= bit;
            }
            bit >>= 1;
        }
        v += 1;
        if sign != 0 {
            v = -v;
        }
        self.last_dc_val[ci] = (self.last_dc_val[ci] + v) & 0xFFFF;
        Ok(true)
    }

    /// Decodes the AC coefficients `ss..=se` (first pass) of `block` with AC table `tbl`,
    /// each shifted left by `al` (T.81 F.2.4.2). `Ok(false)`: spectral or magnitude
    /// overflow, the decoder is now in the error state.
    fn decode_ac(
        &mut self,
        block: &mut [i16; 64],
        tbl: usize,
        ss: usize,
        se: usize,
        al: u32,
    ) -> JpegResult<bool> {
        let stats = &mut self.ac_stats[tbl];
        let rd = &mut self.rd;
        let kx = usize::from(self.cond.ac_k[tbl]);
        let mut k = ss;
        while k <= se {
            let mut st = 3 * (k - 1);
            if rd.decode(&mut stats[st])? {
                break; // EOB
            }
            while !rd.decode(&mut stats[st + 1])? {
                st += 3;
                k += 1;
                if k > se {
                    rd.ct = -1; // spectral overflow
                    return Ok(false);
                }
            }
            let sign = rd.decode(&mut self.fixed_bin)?;
            st += 2;
            let mut m = i32::from(rd.decode(&mut stats[st])?);
            if m != 0 && rd.decode(&mut stats[st])? {
                m <<= 1;
                st = if k <= kx { 189 } else { 217 };
                while rd.decode(&mut stats[st])? {
                    m <<= 1;
                    if m == 0x8000 {
                        rd.ct = -1; // magnitude overflow
                        return Ok(false);
                    }
                    st += 1;
                }
            }
            let mut v = m;
            st += 14;
            let mut bit = m >> 1;
            while bit != 0 {
                if rd.decode(&mut stats[st])? {
                    v |= bit;
                }
                bit >>= 1;
            }
            v += 1;
            if sign {
                v = -v;
            }
            // As libjpeg's `(JCOEF)((unsigned)v << Al)`: wrapped to 16 bits.
            block[NATURAL_ORDER[k]] = ((v as u32) << al) as i16;
            k += 1;
        }
        Ok(true)
    }

    /// Decodes one AC refinement pass over `block` (T.81 G.1.3.3, `decode_mcu_AC_refine`).
    /// `Ok(false)`: spectral overflow, the decoder is now in the error state.
    fn decode_ac_refine(&mut self, block: &mut [i16; 64], tbl: usize) -> JpegResult<bool> {
        let stats = &mut self.ac_stats[tbl];
        let rd = &mut self.rd;
        let (ss, se) = (self.ss, self.se);
        // al <= 13 (checked at the scan start): both fit in an i16.
        let p1 = (1i32 << self.al) as i16;
        let m1 = (-1i32 << self.al) as i16;
        // EOBx: the end of block in the previous stage.
        let mut kex = se;
        while kex > 0 && block[NATURAL_ORDER[kex]] == 0 {
            kex -= 1;
        }
        let mut k = ss;
        while k <= se {
            let mut st = 3 * (k - 1);
            if k > kex && rd.decode(&mut stats[st])? {
                break; // EOB
            }
            loop {
                let coef = &mut block[NATURAL_ORDER[k]];
                if *coef != 0 {
                    // Previously nonzero: one correction bit.
                    if rd.decode(&mut stats[st + 2])? {
                        *coef = if *coef < 0 {
                            coef.wrapping_add(m1)
                        } else {
                            coef.wrapping_add(p1)
                        };
                    }
                    break;
                }
                if rd.decode(&mut stats[st + 1])? {
                    // Newly nonzero.
                    *coef = if rd.decode(&mut self.fixed_bin)? {
                        m1
                    } else {
                        p1
                    };
                    break;
                }
                st += 3;
                k += 1;
                if k > se {
                    rd.ct = -1; // spectral overflow
                    return Ok(false);
                }
            }
            k += 1;
        }
        Ok(true)
    }
}

/// Where one block of an MCU lives: component (index into [`Frame::components`]), scan
/// component index, and block index in the component's `coefs`.
#[derive(Debug, Clone, Copy, Default)]
struct McuBlock {
    /// Index into [`Frame::components`].
    comp: usize,
    /// Index of the component in the scan.
    ci: usize,
    /// Index into the component's `coefs`.
    block: usize,
}

/// Checks the scan parameters as `jdarith.c`'s `start_pass` does, updates the components'
/// `coef_bits` (progressive), and picks the decoding routine.
fn start_pass(frame: &mut Frame, scan: &Scan) -> JpegResult<ScanKind> {
    let (ss, se, ah, al) = (scan.ss, scan.se, scan.ah, scan.al);
    if !frame.progressive {
        // Ss/Se/Ah/Al other than 0/63/0/0 only draw a warning from libjpeg.
        return Ok(ScanKind::Sequential);
    }
    let bad = (ss == 0 && se != 0)
        || (ss != 0 && (se < ss || se > 63 || scan.comps.len() != 1))
        || (ah != 0 && ah - 1 != al)
        || al > 13;
    if bad {
        return Err(JpegError::Malformed(format!(
            "invalid progressive parameters Ss={ss} Se={se} Ah={ah} Al={al} in an \
             arithmetic-coded scan (SOS)"
        )));
    }
    // Progression status: inconsistencies are warnings only, as in libjpeg.
    for &comp in &scan.comps {
        frame.components[comp].coef_bits[usize::from(ss)..=usize::from(se)].fill(i32::from(al));
    }
    Ok(match (ah == 0, ss == 0) {
        (true, true) => ScanKind::DcFirst,
        (true, false) => ScanKind::AcFirst,
        (false, true) => ScanKind::DcRefine,
        (false, false) => ScanKind::AcRefine,
    })
}

/// Decodes one arithmetic-coded scan into `frame`'s coefficients. `data` starts right after
/// the SOS segment; restart markers (RSTn) inside it are handled here. Returns the offset in
/// `data` of the first marker that ends the scan (not an RSTn): the offset of the `0xFF`
/// right before its code, or `data.len()` when the data ends after the scan's last MCU
/// without another marker.
pub(super) fn decode_scan(
    frame: &mut Frame,
    scan: &Scan,
    cond: &ArithConditioning,
    data: &[u8],
) -> JpegResult<usize> {
    let ncomps = scan.comps.len();
    if ncomps == 0
        || ncomps > 4
        || scan.dc_table.len() < ncomps
        || scan.ac_table.len() < ncomps
        || scan.comps.iter().any(|&c| c >= frame.components.len())
    {
        return Err(JpegError::Malformed(format!(
            "arithmetic-coded scan with an invalid component list ({ncomps} components)"
        )));
    }
    let kind = start_pass(frame, scan)?;

    let mut dc_tbl = [0usize; 4];
    let mut ac_tbl = [0usize; 4];
    for ci in 0..ncomps {
        let uses_dc = matches!(kind, ScanKind::Sequential | ScanKind::DcFirst);
        let uses_ac = matches!(
            kind,
            ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine
        );
        if uses_dc {
            if scan.dc_table[ci] >= NUM_ARITH_TBLS {
                return Err(JpegError::Malformed(format!(
                    "arithmetic DC table {} out of range (SOS)",
                    scan.dc_table[ci]
                )));
            }
            dc_tbl[ci] = scan.dc_table[ci];
        }
        if uses_ac {
            if scan.ac_table[ci] >= NUM_ARITH_TBLS {
                return Err(JpegError::Malformed(format!(
                    "arithmetic AC table {} out of range (SOS)",
                    scan.ac_table[ci]
                )));
            }
            ac_tbl[ci] = scan.ac_table[ci];
        }
    }

    // The MCU geometry (`jdinput.c`, `per_scan_setup`).
    let (mcus_x, mcus_y, blocks_in_mcu) = if ncomps == 1 {
        let comp = &frame.components[scan.comps[0]];
        (comp.width_in_blocks, comp.height_in_blocks, 1)
    } else {
        let bw = 8 * frame.max_h.max(1);
        let bh = 8 * frame.max_v.max(1);
        let blocks: usize = scan
            .comps
            .iter()
            .map(|&c| frame.components[c].h * frame.components[c].v)
            .sum();
        (frame.width.div_ceil(bw), frame.height.div_ceil(bh), blocks)
    };
    if blocks_in_mcu > 10 {
        return Err(JpegError::Malformed(format!(
            "{blocks_in_mcu} blocks in an MCU (at most 10) in an arithmetic-coded scan (SOS)"
        )));
    }
    // Every block an MCU names must exist in the coefficient arrays.
    for &c in &scan.comps {
        let comp = &frame.components[c];
        let (need_w, need_h) = if ncomps == 1 {
            (mcus_x, mcus_y)
        } else {
            (mcus_x * comp.h, mcus_y * comp.v)
        };
        if need_w > comp.blocks_w
            || need_h > comp.blocks_h
            || comp.coefs.len() < comp.blocks_w * comp.blocks_h
        {
            return Err(JpegError::Malformed(format!(
                "component {} coefficient array smaller than the scan's MCUs",
                comp.id
            )));
        }
    }

    let mut dec = ScanDecoder {
        rd: ArithReader::new(data),
        dc_stats: [[0; DC_STAT_BINS]; NUM_ARITH_TBLS],
        ac_stats: [[0; AC_STAT_BINS]; NUM_ARITH_TBLS],
        fixed_bin: FIXED_BIN,
        last_dc_val: [0; 4],
        dc_context: [0; 4],
        restarts_to_go: scan.restart_interval,
        next_restart_num: 0,
        restart_interval: scan.restart_interval,
        kind,
        dc_tbl,
        ac_tbl,
        cond: *cond,
        ss: usize::from(scan.ss),
        se: usize::from(scan.se),
        al: u32::from(scan.al),
        ncomps,
    };
    dec.reset_statistics();

    let mut mcu = [McuBlock::default(); 10];
    for my in 0..mcus_y {
        for mx in 0..mcus_x {
            // The blocks of this MCU, in scan order.
            let mut n = 0;
            if ncomps == 1 {
                let comp = scan.comps[0];
                mcu[0] = McuBlock {
                    comp,
                    ci: 0,
                    block: my * frame.components[comp].blocks_w + mx,
                };
                n = 1;
            } else {
                for (ci, &comp) in scan.comps.iter().enumerate() {
                    let c = &frame.components[comp];
                    for by in 0..c.v {
                        for bx in 0..c.h {
                            mcu[n] = McuBlock {
                                comp,
                                ci,
                                block: (my * c.v + by) * c.blocks_w + mx * c.h + bx,
                            };
                            n += 1;
                        }
                    }
                }
            }
            decode_mcu(&mut dec, frame, &mcu[..n])?;
        }
    }

    if dec.rd.unread_marker != 0 {
        return Ok(dec.rd.marker_pos);
    }
    if dec.rd.next_marker() {
        Ok(dec.rd.marker_pos)
    } else {
        Ok(data.len())
    }
}

/// Decodes one MCU (restart handling first), as the routine for the scan's kind does.
fn decode_mcu(dec: &mut ScanDecoder<'_>, frame: &mut Frame, mcu: &[McuBlock]) -> JpegResult<()> {
    if dec.restart_interval != 0 {
        if dec.restarts_to_go == 0 {
            dec.process_restart()?;
        }
        dec.restarts_to_go -= 1;
    }
    // The DC refinement routine has no error state to honour (nothing in it can set one).
    if dec.rd.ct == -1 && dec.kind != ScanKind::DcRefine {
        return Ok(());
    }
    for b in mcu {
        let block = &mut frame.components[b.comp].coefs[b.block];
        match dec.kind {
            ScanKind::Sequential => {
                if !dec.decode_dc(b.ci, dec.dc_tbl[b.ci])? {
                    return Ok(());
                }
                block[0] = dec.last_dc_val[b.ci] as i16;
                if !dec.decode_ac(block, dec.ac_tbl[b.ci], 1, 63, 0)? {
                    return Ok(());
                }
            }
            ScanKind::DcFirst => {
                if !dec.decode_dc(b.ci, dec.dc_tbl[b.ci])? {
                    return Ok(());
                }
                block[0] = (dec.last_dc_val[b.ci] << dec.al) as i16;
            }
            ScanKind::AcFirst => {
                let (ss, se, al) = (dec.ss, dec.se, dec.al);
                if !dec.decode_ac(block, dec.ac_tbl[b.ci], ss, se, al)? {
                    return Ok(());
                }
            }
            ScanKind::DcRefine => {
                let mut fixed = dec.fixed_bin;
                if dec.rd.decode(&mut fixed)? {
                    block[0] |= (1i32 << dec.al) as i16;
                }
                dec.fixed_bin = fixed;
            }
            ScanKind::AcRefine => {
                if !dec.decode_ac_refine(block, dec.ac_tbl[b.ci])? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ColorSpace, Component};
    use super::*;

    /// A one-component 8-bit frame of `w` x `h` pixels, coefficients zeroed.
    fn gray_frame(w: usize, h: usize, progressive: bool) -> Frame {
        let wb = w.div_ceil(8);
        let hb = h.div_ceil(8);
        Frame {
            width: w,
            height: h,
            precision: 8,
            progressive,
            arithmetic: true,
            components: vec![Component {
                id: 1,
                h: 1,
                v: 1,
                tq: 0,
                quant: [1; 64],
                width_in_blocks: wb,
                height_in_blocks: hb,
                downsampled_width: w,
                downsampled_height: h,
                blocks_w: wb,
                blocks_h: hb,
                coefs: vec![[0; 64]; wb * hb],
                coef_row0: 0,
                coef_bits: [-1; 64],
            }],
            max_h: 1,
            max_v: 1,
            color_space: ColorSpace::Gray,
            adobe: false,
            exif: None,
            progress: Default::default(),
            streamed: None,
        }
    }

    /// A scan of the one component with the given spectral and approximation parameters.
    fn scan(ss: u8, se: u8, ah: u8, al: u8, restart_interval: usize) -> Scan {
        Scan {
            comps: vec![0],
            dc_table: vec![0],
            ac_table: vec![0],
            ss,
            se,
            ah,
            al,
            restart_interval,
        }
    }

    #[test]
    fn packed_states_follow_table_d2() {
        // State 0: Qe 0x5A1D, LPS -> 1 with an MPS switch, MPS -> 1.
        assert_eq!(PACKED_STATES[0], 0x5A1D << 16 | 1 << 8 | 1 << 7 | 1);
        // State 35: Qe 0x002C, LPS -> 33, MPS -> 9, no switch.
        assert_eq!(PACKED_STATES[35], 0x002C << 16 | 9 << 8 | 33);
        // The fixed state 113 stays where it is whatever is decoded.
        assert_eq!(PACKED_STATES[113], 0x5A1D << 16 | 113 << 8 | 113);
    }

    #[test]
    fn first_decisions_on_zero_data() {
        // Worked by hand from T.81 D.2: after the two initial bytes C = 0, A = 0x10000.
        // Decision 1 (state 0, Qe 0x5A1D): A - Qe = 0xA5E3 > C and >= 0x8000: the MPS (0),
        // no renormalization, the bin unchanged. Decision 2: A = 0xA5E3 - 0x5A1D = 0x4BC6,
        // still > C but below both 0x8000 and Qe: a conditional exchange, the LPS (1) is
        // decoded, A stays 0x4BC6 (renormalized before the next decision) and the bin moves to
        // state 1 with MPS switched (0x81).
        let data = [0u8; 64];
        let mut rd = ArithReader::new(&data);
        let mut st = 0u8;
        assert!(!rd.decode(&mut st).unwrap());
        assert_eq!((st, rd.a, rd.ct, rd.pos), (0, 0xA5E3, 0, 2));
        assert!(rd.decode(&mut st).unwrap());
        assert_eq!((st, rd.a), (0x81, 0x4BC6));
        // The fixed bin never changes.
        let mut fixed = FIXED_BIN;
        for _ in 0..100 {
            rd.decode(&mut fixed).unwrap();
            assert_eq!(fixed, FIXED_BIN);
        }
    }

    #[test]
    fn byte_stuffing_and_markers_in_data() {
        // FF 00 is a data byte 0xFF; fill FFs before it are swallowed.
        let data = [0xFF, 0x00, 0xFF, 0xFF, 0x00, 0x12];
        let mut rd = ArithReader::new(&data);
        assert_eq!(rd.next_data_byte().unwrap(), 0xFF);
        assert_eq!(rd.next_data_byte().unwrap(), 0xFF);
        assert_eq!(rd.next_data_byte().unwrap(), 0x12);
        assert_eq!(rd.unread_marker, 0);
        // A marker stops the reading: zeros from then on, the marker kept for later.
        let data = [0x34, 0xFF, 0xFF, 0xD9, 0x56];
        let mut rd = ArithReader::new(&data);
        assert_eq!(rd.next_data_byte().unwrap(), 0x34);
        assert_eq!(rd.next_data_byte().unwrap(), 0);
        assert_eq!((rd.unread_marker, rd.marker_pos, rd.pos), (0xD9, 2, 4));
        assert_eq!(rd.next_data_byte().unwrap(), 0);
        assert_eq!(rd.pos, 4);
    }

    #[test]
    fn data_ending_inside_a_scan_is_an_error() {
        let mut frame = gray_frame(8, 8, false);
        let err = decode_scan(
            &mut frame,
            &scan(0, 63, 0, 0, 0),
            &Default::default(),
            &[0x12],
        )
        .unwrap_err();
        assert!(matches!(err, JpegError::Malformed(m) if m.contains("ends inside a scan")));
    }

    #[test]
    fn scan_end_is_the_next_marker_after_any_garbage() {
        // The zero stream decodes an all-zero block within its first bytes (checked against
        // libjpeg through the fixtures); what follows is garbage with a stuffed FF 00, then
        // fill bytes and EOI: the offset is that of the FF right before D9.
        let mut data = vec![0u8; 16];
        data.extend_from_slice(&[0x11, 0xFF, 0x00, 0x22, 0xFF, 0xFF, 0xD9]);
        let mut frame = gray_frame(8, 8, false);
        let end = decode_scan(
            &mut frame,
            &scan(0, 63, 0, 0, 0),
            &Default::default(),
            &data,
        )
        .unwrap();
        assert_eq!(end, data.len() - 2);
        // No marker at all after the scan: the end of the data.
        let mut frame = gray_frame(8, 8, false);
        let end = decode_scan(
            &mut frame,
            &scan(0, 63, 0, 0, 0),
            &Default::default(),
            &[0; 40],
        )
        .unwrap();
        assert_eq!(end, 40);
    }

    /// Decodes a two-MCU gray scan (16x8, restart every MCU) whose first interval is 4 zero
    /// bytes followed by `marker`, then 4 zero bytes and EOI; returns the scan's end offset.
    fn restart_case(marker: u8) -> JpegResult<usize> {
        let mut data = vec![0, 0, 0, 0, 0xFF, marker, 0, 0, 0, 0, 0xFF, 0xD9];
        let mut frame = gray_frame(16, 8, false);
        data.extend_from_slice(&[0; 4]);
        decode_scan(
            &mut frame,
            &scan(0, 63, 0, 0, 1),
            &Default::default(),
            &data,
        )
    }

    #[test]
    fn restart_markers_resynchronize_as_libjpeg() {
        // The expected RST0: swallowed, the scan ends at EOI (offset 10).
        assert_eq!(restart_case(0xD0), Ok(10));
        // RST1 (one ahead): left unread (action 3), the second MCU decodes zeros and the
        // scan ends at the RST1 (offset 4).
        assert_eq!(restart_case(0xD1), Ok(4));
        // RST2 (two ahead): also action 3.
        assert_eq!(restart_case(0xD2), Ok(4));
        // RST4 (too far): taken for the expected one (action 1), decoding goes on after it.
        assert_eq!(restart_case(0xD4), Ok(10));
        // RST7 (one behind): skip to the next marker (action 2); that is EOI, a valid
        // non-restart marker: left unread (action 3), the scan ends there.
        assert_eq!(restart_case(0xD7), Ok(10));
        // EOI instead of a restart: left unread.
        assert_eq!(restart_case(0xD9), Ok(4));
        // An invalid marker code (below SOF0): skipped like garbage (action 2).
        assert_eq!(restart_case(0x05), Ok(10));
    }

    #[test]
    fn progression_parameters_are_checked() {
        let bad = [
            (0, 1, 0, 0),  // DC scan with Se != 0
            (2, 1, 0, 0),  // Se < Ss
            (1, 64, 0, 0), // Se > 63
            (1, 5, 2, 0),  // Al != Ah - 1
            (0, 0, 0, 14), // Al > 13
        ];
        for (ss, se, ah, al) in bad {
            let mut frame = gray_frame(8, 8, true);
            let r = decode_scan(
                &mut frame,
                &scan(ss, se, ah, al, 0),
                &Default::default(),
                &[0; 8],
            );
            assert!(
                matches!(r, Err(JpegError::Malformed(_))),
                "{ss} {se} {ah} {al}"
            );
        }
        // An AC scan of more than one component is refused too.
        let mut frame = gray_frame(8, 8, true);
        let mut two = frame.components[0].clone();
        two.id = 2;
        frame.components.push(two);
        let mut s = scan(1, 5, 0, 0, 0);
        s.comps = vec![0, 1];
        s.dc_table = vec![0, 0];
        s.ac_table = vec![0, 0];
        assert!(decode_scan(&mut frame, &s, &Default::default(), &[0; 8]).is_err());
    }

    #[test]
    fn coef_bits_follow_the_progression() {
        let mut frame = gray_frame(8, 8, true);
        let cond = ArithConditioning::default();
        decode_scan(&mut frame, &scan(0, 0, 0, 1, 0), &cond, &[0; 8]).unwrap();
        decode_scan(&mut frame, &scan(1, 5, 0, 2, 0), &cond, &[0; 8]).unwrap();
        decode_scan(&mut frame, &scan(1, 5, 2, 1, 0), &cond, &[0; 8]).unwrap();
        let bits = frame.components[0].coef_bits;
        assert_eq!(&bits[..7], &[1, 1, 1, 1, 1, 1, -1]);
        // A sequential scan leaves them alone.
        let mut frame = gray_frame(8, 8, false);
        decode_scan(&mut frame, &scan(0, 63, 0, 0, 0), &cond, &[0; 8]).unwrap();
        assert_eq!(frame.components[0].coef_bits, [-1; 64]);
    }

    #[test]
    fn refinement_scans_need_no_valid_dc_table() {
        // libjpeg checks the DC table of DC first scans only: a DC refinement scan may name
        // any table.
        let mut frame = gray_frame(8, 8, true);
        let mut s = scan(0, 0, 1, 0, 0);
        s.dc_table = vec![99];
        assert!(decode_scan(&mut frame, &s, &Default::default(), &[0; 8]).is_ok());
        let mut s = scan(0, 0, 0, 0, 0);
        s.dc_table = vec![16];
        assert!(decode_scan(&mut frame, &s, &Default::default(), &[0; 8]).is_err());
    }

    /// SHA-256 of a component's coefficients as the fixture script hashes them.
    fn coef_sha256(c: &Component) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for by in 0..c.height_in_blocks {
            for bx in 0..c.width_in_blocks {
                for v in c.coefs[by * c.blocks_w + bx] {
                    h.update(v.to_le_bytes());
                }
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn fixtures_match_libjpeg_coefficients() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg_arith");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let files = manifest.as_object().unwrap();
        assert!(files.len() >= 30);
        for (name, want) in files {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let got = super::super::decode_coefficients(&bytes, u64::MAX);
            match want["components"].as_array() {
                None => assert!(got.is_err(), "{name}: libjpeg (under PIL) refuses it"),
                Some(comps) => {
                    let frame = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                    assert_eq!(frame.components.len(), comps.len(), "{name}");
                    for (c, w) in frame.components.iter().zip(comps) {
                        assert_eq!(
                            c.width_in_blocks as u64,
                            w["width_in_blocks"].as_u64().unwrap()
                        );
                        assert_eq!(
                            c.height_in_blocks as u64,
                            w["height_in_blocks"].as_u64().unwrap()
                        );
                        assert_eq!(
                            coef_sha256(c),
                            w["sha256"].as_str().unwrap(),
                            "{name} component {}",
                            c.id
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fixtures_match_pil_pixels() {
        use sha2::{Digest, Sha256};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg_arith");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let mut checked = 0;
        for (name, want) in manifest.as_object().unwrap() {
            let pil = &want["pil"];
            if pil.get("error").is_some() {
                continue;
            }
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let img =
                super::super::decode(&bytes, u64::MAX).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let mode = match img.mode {
                super::super::Mode::L => "L",
                super::super::Mode::Rgb => "RGB",
                super::super::Mode::Cmyk => "CMYK",
            };
            assert_eq!(mode, pil["mode"].as_str().unwrap(), "{name}");
            assert_eq!(img.width as u64, pil["width"].as_u64().unwrap(), "{name}");
            assert_eq!(img.height as u64, pil["height"].as_u64().unwrap(), "{name}");
            let sha: String = Sha256::digest(&img.data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                sha,
                pil["sha256"].as_str().unwrap(),
                "{name}: pixels differ from PIL's"
            );
            checked += 1;
        }
        assert!(checked >= 30, "{checked}");
    }
}
