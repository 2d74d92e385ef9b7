//! Decodes image files as the crate decodes them (`load_image`: PIL's `Image.open(f)
//! .convert('RGB')`) and prints the SHA-256 of each one's RGB bytes, to compare with PIL
//! (`scripts/check_jpegs_against_pil.py`), or times the decoding (`scripts/compare_peers.py
//! --decode`).
//!
//! ```text
//! cargo run --release --example decode_digest -- [--exif] [--time ITERS] PATH...
//! ```
//!
//! Each PATH is a file or a folder (its files, sorted, not recursing). For each file one line:
//! `ok<TAB>WIDTHxHEIGHT<TAB>SHA256<TAB>PATH`, or `error<TAB>MESSAGE<TAB>PATH`. With `--time
//! ITERS`, one JSON line a file instead: `{"file": PATH, "times_ms": [...]}`, one decode a
//! time (after one untimed decode). `--exif` applies the EXIF orientation.

use std::path::PathBuf;
use std::time::Instant;

use fastai_infer::{load_image_with, DecodeOptions};
use sha2::{Digest, Sha256};

fn main() {
    let mut iters = None;
    let mut options = DecodeOptions::default();
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--time" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => iters = Some(n),
                None => fail("--time needs a number of iterations"),
            },
            "--exif" => options = options.with_exif_orientation(true),
            "-h" | "--help" => {
                println!("usage: decode_digest [--exif] [--time ITERS] PATH...");
                return;
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        fail("no PATH given (files or folders)");
    }
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap_or_else(|e| fail(&format!("{}: {e}", p.display())))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p);
        }
    }
    for f in files {
        match iters {
            None => match load_image_with(&f, &options) {
                Ok(img) => {
                    let digest: String = Sha256::digest(img.as_raw())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    println!(
                        "ok\t{}x{}\t{digest}\t{}",
                        img.width(),
                        img.height(),
                        f.display()
                    );
                }
                Err(e) => println!(
                    "error\t{}\t{}",
                    e.to_string().replace(['\t', '\n'], " "),
                    f.display()
                ),
            },
            Some(n) => {
                let bytes =
                    std::fs::read(&f).unwrap_or_else(|e| fail(&format!("{}: {e}", f.display())));
                let decode = || fastai_infer::load_image_from_memory_with(&bytes, &options);
                if let Err(e) = decode() {
                    fail(&format!("{}: {e}", f.display()));
                }
                let times: Vec<String> = (0..n)
                    .map(|_| {
                        let t = Instant::now();
                        let img = decode();
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        drop(img);
                        format!("{ms:.4}")
                    })
                    .collect();
                println!(
                    "{{\"file\": {:?}, \"times_ms\": [{}]}}",
                    f.display().to_string(),
                    times.join(", ")
                );
            }
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("decode_digest: {msg}");
    std::process::exit(2)
}
