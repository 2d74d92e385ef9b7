// Reads coefficient dumps (scripts/check_jpeg_pixels.py format) and writes PIL-order pixels.
use crate::jpeg::*;
use std::io::Read;

struct R<'a>(&'a [u8], usize);
impl R<'_> {
    fn u8(&mut self) -> u8 {
        self.1 += 1;
        self.0[self.1 - 1]
    }
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.0[self.1], self.0[self.1 + 1]]);
        self.1 += 2;
        v
    }
    fn i16(&mut self) -> i16 {
        self.u16() as i16
    }
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.0[self.1..self.1 + 4].try_into().unwrap());
        self.1 += 4;
        v
    }
}

fn frame_from_dump(b: &[u8]) -> Frame {
    let mut r = R(b, 0);
    assert_eq!(&b[..4], b"JPXD");
    r.1 = 4;
    let width = r.u32() as usize;
    let height = r.u32() as usize;
    let cs = match r.u8() {
        0 => ColorSpace::Gray,
        1 => ColorSpace::YCbCr,
        2 => ColorSpace::Rgb,
        3 => ColorSpace::Cmyk,
        _ => ColorSpace::Ycck,
    };
    let progressive = r.u8() != 0;
    let n = r.u8() as usize;
    let mut comps = Vec::new();
    let mut hv = Vec::new();
    for _ in 0..n {
        let h = r.u8() as usize;
        let v = r.u8() as usize;
        let wib = r.u32() as usize;
        let hib = r.u32() as usize;
        let mut quant = [0u16; 64];
        for q in quant.iter_mut() {
            *q = r.u16();
        }
        let mut cb = [0i32; 64];
        for c in cb.iter_mut() {
            *c = r.u32() as i32;
        }
        let mut blocks = vec![[0i16; 64]; wib * hib];
        for bl in blocks.iter_mut() {
            for x in bl.iter_mut() {
                *x = r.i16();
            }
        }
        hv.push((h, v));
        comps.push((h, v, wib, hib, quant, cb, blocks));
    }
    let max_h = hv.iter().map(|x| x.0).max().unwrap();
    let max_v = hv.iter().map(|x| x.1).max().unwrap();
    let components = comps
        .into_iter()
        .enumerate()
        .map(|(i, (h, v, wib, hib, quant, coef_bits, blocks))| {
            let dw = (width * h).div_ceil(max_h);
            let dh = (height * v).div_ceil(max_v);
            assert_eq!(wib, dw.div_ceil(8));
            assert_eq!(hib, dh.div_ceil(8));
            let bw = wib.div_ceil(h) * h;
            let bh = hib.div_ceil(v) * v;
            let mut coefs = vec![[0i16; 64]; bw * bh];
            for y in 0..hib {
                for x in 0..wib {
                    coefs[y * bw + x] = blocks[y * wib + x];
                }
            }
            Component {
                id: i as u8 + 1,
                h,
                v,
                tq: 0,
                quant,
                width_in_blocks: wib,
                height_in_blocks: hib,
                downsampled_width: dw,
                downsampled_height: dh,
                blocks_w: bw,
                blocks_h: bh,
                coefs,
                coef_bits,
            }
        })
        .collect();
    Frame {
        width,
        height,
        precision: 8,
        progressive,
        arithmetic: false,
        components,
        max_h,
        max_v,
        color_space: cs,
        adobe: false,
        exif: None,
    }
}

pub fn run() {
    let args: Vec<String> = std::env::args().collect();
    // pix DUMP OUT [reps]
    let mut b = Vec::new();
    std::fs::File::open(&args[1])
        .unwrap()
        .read_to_end(&mut b)
        .unwrap();
    let f = frame_from_dump(&b);
    let reps: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(0);
    let d = harness_to_pixels(&f).unwrap();
    if reps > 0 {
        let mut best = f64::MAX;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let t1 = std::time::Instant::now();
            std::hint::black_box(harness_to_pixels(&f).unwrap());
            best = best.min(t1.elapsed().as_secs_f64());
        }
        eprintln!(
            "mean {:.3} ms, best {:.3} ms",
            t.elapsed().as_secs_f64() * 1e3 / reps as f64,
            best * 1e3
        );
    }
    std::fs::write(&args[2], &d.data).unwrap();
}
