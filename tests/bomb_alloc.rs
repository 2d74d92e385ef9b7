//! Decompression bombs, and `.pth` files whose pickle declares huge sizes, are refused before
//! any large allocation: a counting allocator records the largest single allocation made by
//! the test's own thread while each bomb is decoded or loaded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use fastai_infer::{load_image_from_memory, Error};

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-local only
// records sizes (const-initialised, so recording never allocates).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hostile")
            .join(name),
    )
    .unwrap()
}

/// The shipped JPEG with its frame header (SOF0) patched to declare 65500x65500.
fn jpeg_bomb() -> Vec<u8> {
    let mut j = fixture("rgb8.jpg");
    let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    j[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
    j
}

/// A 54-byte BMP header declaring 60000x60000 24-bit pixels, and no pixels.
fn bmp_bomb() -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend(&(54u32 + 3).to_le_bytes()); // file size
    b.extend(&[0; 4]);
    b.extend(&54u32.to_le_bytes()); // pixel data offset
    b.extend(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    b.extend(&60_000i32.to_le_bytes());
    b.extend(&60_000i32.to_le_bytes());
    b.extend(&1u16.to_le_bytes());
    b.extend(&24u16.to_le_bytes());
    b.extend(&[0; 24]);
    b.extend(&[0; 3]);
    b
}

/// A 4x4 RGBA f32 TIFF whose header is patched to 12000x12000: 144M pixels, under the pixel
/// limit, but 2.3 GB of decoded samples, over the allocation limit the pixel limit implies.
fn tiff_f32_bomb() -> Vec<u8> {
    let img = image::DynamicImage::ImageRgba32F(image::ImageBuffer::from_pixel(
        4,
        4,
        image::Rgba([0.5f32, 0.25, 1.0, 1.0]),
    ));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Tiff).unwrap();
    let mut b = out.into_inner();
    let ifd = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes(b[ifd..ifd + 2].try_into().unwrap()) as usize;
    for e in 0..n {
        let at = ifd + 2 + 12 * e;
        let tag = u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
        let long = u16::from_le_bytes(b[at + 2..at + 4].try_into().unwrap()) == 4;
        if (tag == 256 || tag == 257) && long {
            b[at + 8..at + 12].copy_from_slice(&12_000u32.to_le_bytes());
        }
    }
    b
}

#[test]
fn bombs_are_refused_before_any_large_allocation() {
    // The tracker sees the decoder's buffers: a real 451x300 image allocates its 405,900 bytes.
    let chelsea = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/chelsea.png"),
    )
    .unwrap();
    LARGEST.with(|c| c.set(0));
    load_image_from_memory(&chelsea).unwrap();
    assert!(LARGEST.with(|c| c.get()) >= 451 * 300 * 3);

    for (what, bytes, dims) in [
        ("png", fixture("bomb_png.png"), (100_000, 100_000)),
        ("gif", fixture("bomb_gif.gif"), (65_535, 65_535)),
        ("jpeg", jpeg_bomb(), (65_500, 65_500)),
        ("bmp", bmp_bomb(), (60_000, 60_000)),
        ("tiff f32", tiff_f32_bomb(), (12_000, 12_000)),
    ] {
        LARGEST.with(|c| c.set(0));
        let err = load_image_from_memory(&bytes).unwrap_err();
        let largest = LARGEST.with(|c| c.get());
        let msg = err.to_string();
        match err {
            Error::ImageTooLarge { width, height, .. } => {
                assert_eq!((width, height), dims, "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
        // The message says which limit was hit.
        let by_bytes = what == "tiff f32";
        assert_eq!(
            msg.contains("over the limit of 178956970 pixels"),
            !by_bytes,
            "{msg}"
        );
        assert_eq!(msg.contains("need more memory"), by_bytes, "{msg}");
        assert!(
            largest < 1 << 20,
            "{what}: a {largest}-byte allocation before the refusal"
        );
    }
}

/// A torch-style zip archive holding `archive/data.pkl` = `pickle`, written by the `zip` crate.
fn torch_zip(pickle: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.finish().unwrap().into_inner()
}

#[test]
fn hostile_pth_files_are_refused_before_any_large_allocation() {
    // Issue 15's three files: a memo-clone bomb (a tree of 2^40 leaves in 40 shared nodes), a
    // BINUNICODE declaring 4,294,967,280 bytes with 3 present, 2,000,000 nested TUPLE1.
    let mut bomb = vec![0x80, 2, b')', b'q', 0];
    for _ in 0..40 {
        bomb.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    bomb.push(b'.');
    let mut huge = vec![0x80, 2, b'X'];
    huge.extend(0xFFFF_FFF0u32.to_le_bytes());
    huge.extend(b"abc");
    let mut deep = vec![0x80, 2, b')'];
    deep.extend(std::iter::repeat_n(0x85, 2_000_000));
    deep.push(b'.');
    let dir = tempfile::tempdir().unwrap();
    for (name, pickle, says) in [
        ("bomb.pth", bomb, "expected a state_dict"),
        ("huge.pth", huge, "declares 4294967280 bytes, 3 left"),
        ("deep.pth", deep, "nested more than 100 deep"),
    ] {
        let p = dir.path().join(name);
        let bytes = torch_zip(&pickle);
        std::fs::write(&p, &bytes).unwrap();
        LARGEST.with(|c| c.set(0));
        let err = fastai_infer::FastaiWeights::load(&p, &fastai_infer::candle_core::Device::Cpu)
            .unwrap_err();
        let largest = LARGEST.with(|c| c.get());
        assert!(
            matches!(&err, Error::InvalidWeights { reason, .. } if reason.contains(says)),
            "{name}: {err:?}"
        );
        // Nothing larger than the pickle itself (read once) plus 1 MiB.
        assert!(
            largest < pickle.len() + (1 << 20),
            "{name}: a {largest}-byte allocation"
        );
    }
}
