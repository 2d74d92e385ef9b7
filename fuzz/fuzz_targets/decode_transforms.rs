//! bytes -> decode (PIL's `convert('RGB')`) -> item transforms -> batch transforms.
//!
//! The first three bytes pick the transform sizes (item size 1..=128, batch size 1..=64,
//! `val_xtra` 0..=1), the rest is the encoded image. A small pixel limit keeps bombs cheap.
#![no_main]

use fastai_infer::batch_tfms::BatchTfms;
use fastai_infer::candle_core::Device;
use fastai_infer::item_tfms::RandomResizedCrop;
use fastai_infer::{load_image_from_memory_with, DecodeOptions, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (params, bytes) = data.split_at(3);
    let options = DecodeOptions::default().with_max_pixels(1 << 20);
    let img = match load_image_from_memory_with(bytes, &options) {
        Ok(img) => img,
        Err(
            Error::ImageDecode { .. }
            | Error::UnsupportedImage { .. }
            | Error::UnrecognizedImage { .. }
            | Error::ImageTooLarge { .. },
        ) => return,
        Err(other) => panic!("decode gave an unexpected error kind: {other:?}"),
    };
    assert!(img.width() > 0 && img.height() > 0);
    assert!(u64::from(img.width()) * u64::from(img.height()) <= 1 << 20);

    let mut item = RandomResizedCrop::new(1 + u32::from(params[0] % 128));
    item.val_xtra = f64::from(params[2]) / 255.0;
    let item_img = item
        .encodes(&img)
        .expect("item transforms on a decoded image");
    assert_eq!(item_img.dimensions(), (item.width, item.height));

    let size = 1 + usize::from(params[1] % 64);
    let batch = BatchTfms {
        height: size,
        width: size,
        ..BatchTfms::default()
    };
    let x = batch
        .encodes_images(std::slice::from_ref(&item_img), &Device::Cpu)
        .expect("batch transforms on an item-transformed image");
    assert_eq!(x.dims(), &[1, 3, size, size]);
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|f| f.is_finite()), "non-finite model input");
});
