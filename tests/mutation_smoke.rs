//! The fuzzers' CI smoke run: deterministic pseudo-random mutations of fixture files through
//! the same paths the cargo-fuzz targets take (`fuzz/`): decode -> item transforms -> batch
//! transforms, and the weights loader. Every case must end in `Ok` (with sane output) or in one
//! of the typed errors for bad input; a panic fails the test. No extra toolchain needed.

use std::path::Path;

use candle_core::Device;
use fastai_infer::batch_tfms::BatchTfms;
use fastai_infer::item_tfms::RandomResizedCrop;
use fastai_infer::{
    load_image_from_memory_with, DecodeOptions, Error, FastaiWeights, Learner, Vocab,
};

/// xorshift64*: a tiny deterministic generator (no dev-dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four mutations: bit flips, interesting bytes, big 32-bit values (dimension fields),
/// truncation, duplicated or deleted ranges.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            break;
        }
        let at = rng.below(v.len());
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = [0x00, 0xFF, 0x7F, 0x80, 0x01][rng.below(5)],
            2 => {
                let big = [0xFFFF_FFFFu32, 0x7FFF_FFFF, 0x0001_0000, 65_535, 0][rng.below(5)];
                let end = (at + 4).min(v.len());
                let bytes = if rng.below(2) == 0 {
                    big.to_be_bytes()
                } else {
                    big.to_le_bytes()
                };
                v[at..end].copy_from_slice(&bytes[..end - at]);
            }
            3 => v.truncate(at),
            4 => {
                let len = rng.below(64).min(v.len() - at);
                let chunk = v[at..at + len].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, chunk);
            }
            5 => {
                let len = rng.below(64).min(v.len() - at);
                v.drain(at..at + len);
            }
            _ => {
                // A digit in a JSON header (safetensors offsets and shapes) or anywhere else.
                if v[at].is_ascii_digit() {
                    v[at] = b'0' + rng.below(10) as u8;
                } else {
                    v[at] = v[at].wrapping_add(1);
                }
            }
        }
    }
    v
}

fn fixture_images() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode_transforms");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                // The seeds start with three parameter bytes; the image follows.
                std::fs::read(e.path()).unwrap()[3..].to_vec(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn mutated_images_decode_and_transform_or_fail_typed() {
    let seeds = fixture_images();
    assert!(seeds.len() >= 20);
    let options = DecodeOptions::default().with_max_pixels(1 << 20);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..600 {
        let (name, seed) = &seeds[case % seeds.len()];
        let bytes = mutate(&mut rng, seed);
        let img = match load_image_from_memory_with(&bytes, &options) {
            Ok(img) => img,
            Err(
                Error::ImageDecode { .. }
                | Error::UnsupportedImage { .. }
                | Error::UnrecognizedImage { .. }
                | Error::ImageTooLarge { .. },
            ) => {
                refused += 1;
                continue;
            }
            Err(other) => panic!("case {case} ({name}): unexpected error {other:?}"),
        };
        assert!(img.width() > 0 && u64::from(img.width()) * u64::from(img.height()) <= 1 << 20);
        let item = RandomResizedCrop::new(1 + rng.below(48) as u32);
        let item_img = item.encodes(&img).unwrap();
        let size = 1 + rng.below(24);
        let batch = BatchTfms {
            height: size,
            width: size,
            ..BatchTfms::default()
        };
        let x = batch
            .encodes_images(std::slice::from_ref(&item_img), &Device::Cpu)
            .unwrap();
        assert_eq!(x.dims(), &[1, 3, size, size]);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|f| f.is_finite()), "case {case} ({name})");
        ok += 1;
    }
    eprintln!("images: {ok} transformed, {refused} refused");
    // Both outcomes are exercised.
    assert!(ok > 50 && refused > 50, "ok {ok}, refused {refused}");
}

#[test]
fn mutated_weights_load_or_fail_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.safetensors");
    // The committed seed (not `tiny::bytes()`, whose header order varies from run to run), so
    // the cases are the same on every run.
    let seed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/weights/tiny.safetensors"),
    )
    .unwrap();
    let header_end = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let mut rng = Rng(0x5EED_1234_ABCD_0002);
    let mut outcomes = std::collections::BTreeMap::new();
    let image =
        image::RgbImage::from_fn(13, 9, |x, y| image::Rgb([x as u8 * 19, y as u8 * 27, 90]));
    for case in 0..400 {
        // Half the cases aim at the header (offsets, shapes, dtypes, metadata), half anywhere.
        let bytes = if case % 2 == 0 {
            let mut head = mutate(&mut rng, &seed[8..header_end]);
            let mut v = (head.len() as u64).to_le_bytes().to_vec();
            v.append(&mut head);
            v.extend_from_slice(&seed[header_end..]);
            v
        } else {
            mutate(&mut rng, &seed)
        };
        std::fs::write(&path, &bytes).unwrap();
        let kind = match FastaiWeights::load(&path, &Device::Cpu) {
            Ok(w) => {
                let _ = w.vocab();
                let _ = w.recipe();
                // Whatever loads must also predict, or refuse with a typed error.
                let n = w.config().num_classes();
                let vocab = Vocab::new((0..n).map(|i| format!("c{i}")).collect());
                match Learner::from_weights(&w, vocab).and_then(|l| l.predict(&image)) {
                    Ok(p) => {
                        assert_eq!(p.probabilities.len(), n);
                        let sum: f32 = p.probabilities.iter().sum();
                        assert!(sum.is_finite(), "case {case}: probabilities {sum}");
                        "Ok"
                    }
                    Err(Error::InvalidMetadata { .. }) | Err(Error::InvalidArgument(_)) => {
                        "Ok, refused by the learner"
                    }
                    Err(other) => panic!("case {case}: the learner failed with {other:?}"),
                }
            }
            Err(e @ Error::InvalidWeights { .. })
            | Err(e @ Error::NotFastaiLearner { .. })
            | Err(e @ Error::UnsupportedHead { .. })
            | Err(e @ Error::ArchMismatch { .. })
            | Err(e @ Error::WeightsMismatch { .. })
            | Err(e @ Error::InvalidMetadata { .. })
            | Err(e @ Error::NonFiniteWeights { .. }) => {
                assert!(e.to_string().contains("mutant.safetensors"), "{e}");
                match e {
                    Error::InvalidWeights { .. } => "InvalidWeights",
                    Error::NotFastaiLearner { .. } => "NotFastaiLearner",
                    Error::UnsupportedHead { .. } => "UnsupportedHead",
                    Error::ArchMismatch { .. } => "ArchMismatch",
                    Error::WeightsMismatch { .. } => "WeightsMismatch",
                    Error::InvalidMetadata { .. } => "InvalidMetadata",
                    _ => "NonFiniteWeights",
                }
            }
            Err(other) => panic!("case {case}: unexpected error {other:?}"),
        };
        *outcomes.entry(kind).or_insert(0) += 1;
    }
    eprintln!("weights: {outcomes:?}");
    assert!(outcomes.get("Ok").copied().unwrap_or(0) > 0, "{outcomes:?}");
    assert!(
        outcomes.get("InvalidWeights").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert!(
        !outcomes.contains_key("Ok, model build failed"),
        "{outcomes:?}"
    );
}
