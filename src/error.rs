//! The crate's typed errors.
//!
//! Every failure caused by user input (an image, a weights file, a labels file, an argument)
//! comes back as an [`Error`] that names the file, the key and the expected and found values.

use std::fmt;
use std::path::PathBuf;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong between an image file and a [`crate::Prediction`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read (missing, a directory, no permission, ...).
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        /// What the file was meant to be: "image", "weights", "labels".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// An image's bytes could not be decoded.
    #[error("cannot decode image {origin}: {source}")]
    ImageDecode {
        /// The file, or `<memory>` for in-memory bytes.
        origin: String,
        /// The decoder's error.
        source: image::ImageError,
    },

    /// An image decoded, but has a pixel format this crate does not convert the way PIL does.
    #[error("unsupported image {origin}: {reason}")]
    UnsupportedImage {
        /// The file, or `<memory>` for in-memory bytes.
        origin: String,
        /// What is unsupported.
        reason: String,
    },

    /// The bytes are not an image in a format this crate reads (an empty file, text, an
    /// unknown signature): PIL's "cannot identify image file".
    #[error("cannot identify image {origin}: {reason}")]
    UnrecognizedImage {
        /// The file, or `<memory>` for in-memory bytes.
        origin: String,
        /// What was found instead.
        reason: String,
    },

    /// An image declares more pixels than the decode limit
    /// ([`crate::decode::DecodeOptions::max_pixels`]); refused after reading its header, before
    /// any pixel buffer is allocated (PIL's `DecompressionBombError`).
    #[error("{}", too_large(origin, *width, *height, *max_pixels))]
    ImageTooLarge {
        /// The file, or `<memory>` for in-memory bytes.
        origin: String,
        /// The width the image declares.
        width: u32,
        /// The height the image declares.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },

    /// A weights file is not a readable safetensors or `.pth` file.
    #[error("invalid weights file {}: {reason}", path.display())]
    InvalidWeights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A state_dict holds tensors, but not the layout of a fastai `vision_learner` this crate
    /// runs: no body it recognises (see [`crate::model::detect_family`]) or a body whose keys and
    /// shapes do not fit it.
    #[error("{} is not a fastai vision_learner fastai-infer runs: {reason}; found {found}; expected fastai's state_dict keys, a body under 0.* (a timm ViT or ConvNeXt under 0.model.*, a torchvision ResNet as create_body cuts it under 0.0-0.7) and fastai's create_head under 1.*", source_name(path))]
    NotFastaiLearner {
        /// The weights file (empty when the state_dict did not come from a file, as in
        /// [`crate::model::Config::infer`]).
        path: PathBuf,
        /// The first thing that did not fit.
        reason: String,
        /// Some of the keys found.
        found: String,
    },

    /// The head (`1.*` keys) is not one fastai's `create_head` builds (a `custom_head`, or a
    /// head edited by hand): the error names the layer or key that does not fit.
    #[error("{} has a head fastai-infer does not run: {reason}; fastai-infer runs the heads of fastai's create_head (AdaptiveConcatPool2d or AdaptiveAvgPool2d, Flatten, then BatchNorm1d, Dropout, Linear and ReLU layers as its lin_ftrs, ps, first_bn, bn_final and lin_first make them)", source_name(path))]
    UnsupportedHead {
        /// The weights file (empty when the state_dict did not come from a file).
        path: PathBuf,
        /// The layer or key that does not fit, and what was expected.
        reason: String,
    },

    /// The recipe's `arch` names one architecture family and the weights' keys are another.
    #[error("{}: the recipe's arch \"{arch}\" is a {arch_family} but the weights are a {found} body ({})", source_name(path), evidence.join(", "))]
    ArchMismatch {
        /// The weights file (empty when the state_dict did not come from a file).
        path: PathBuf,
        /// The recipe's `arch` string.
        arch: String,
        /// The family that `arch` names.
        arch_family: crate::model::Family,
        /// The body the keys are, e.g. `timm ConvNeXt` or `torchvision ResNet`.
        found: &'static str,
        /// The keys that identify `found`.
        evidence: &'static [&'static str],
    },

    /// A model configuration is degenerate (a zero width, heads that do not divide the token
    /// width, a head whose layer sizes do not chain, ...).
    #[error("invalid model config: {field} {reason}")]
    InvalidConfig {
        /// The field, e.g. `vit.num_heads` or `head.layers[4]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A weights file's tensors do not match the model: every missing key, unexpected key
    /// and shape mismatch is listed.
    #[error("weights {} do not match the fastai vision_learner their keys describe ({} problem(s)):\n{}", path.display(), problems.len(), Bullets(problems))]
    WeightsMismatch {
        /// The weights file.
        path: PathBuf,
        /// One entry per offending key, sorted by key.
        problems: Vec<KeyProblem>,
    },

    /// Tensors of a weights file hold NaN or infinite values: every such tensor is listed by
    /// key with its counts.
    #[error("weights {} hold non-finite values ({} tensor(s)):\n{}", path.display(), tensors.len(), Bullets(tensors))]
    NonFiniteWeights {
        /// The weights file.
        path: PathBuf,
        /// One entry per offending tensor, sorted by key.
        tensors: Vec<NonFinite>,
    },

    /// The vocab's length differs from the number of classes the model's head outputs.
    #[error(
        "vocab from {origin} has {found} labels but the model's head outputs {expected} classes"
    )]
    VocabMismatch {
        /// Where the vocab came from.
        origin: String,
        /// The number of classes of the model.
        expected: usize,
        /// The number of labels found.
        found: usize,
    },

    /// No vocab was found: the weights carry none in their metadata and no labels file was given.
    #[error("weights {} carry no vocab in their safetensors metadata (key \"vocab\"); pass a labels file (one label per line)", path.display())]
    MissingVocab {
        /// The weights file.
        path: PathBuf,
    },

    /// A metadata entry of the weights file could not be parsed.
    #[error("invalid metadata \"{key}\" in {}: {reason}", path.display())]
    InvalidMetadata {
        /// The weights file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument is out of its domain (a zero size, an empty batch, a wrong tensor shape).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A device could not be named or opened ([`crate::DeviceSpec`]): an unknown name, a GPU
    /// asked of a build without the `cuda` feature, or a GPU the CUDA driver cannot open.
    #[error("device {device:?}: {reason}")]
    Device {
        /// The device as given (`gpu`, `cuda:1`, ...).
        device: String,
        /// What is wrong.
        reason: String,
    },

    /// An error from candle while running tensor ops.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One key of a weights file that does not fit the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    /// The model needs this key and the file lacks it.
    Missing {
        /// The state_dict key, e.g. `0.model.blocks.3.attn.qkv.weight`.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// The file has a key the model does not use.
    Unexpected {
        /// The state_dict key.
        key: String,
        /// The shape found in the file.
        found: Vec<usize>,
    },
    /// The key is present with a different shape.
    ShapeMismatch {
        /// The state_dict key.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape found in the file.
        found: Vec<usize>,
    },
    /// The key is present with a dtype the model cannot use.
    DType {
        /// The state_dict key.
        key: String,
        /// The dtypes accepted for this key.
        expected: String,
        /// The dtype found in the file.
        found: String,
    },
}

impl KeyProblem {
    /// The state_dict key this problem is about.
    pub fn key(&self) -> &str {
        match self {
            KeyProblem::Missing { key, .. }
            | KeyProblem::Unexpected { key, .. }
            | KeyProblem::ShapeMismatch { key, .. }
            | KeyProblem::DType { key, .. } => key,
        }
    }
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Missing { key, expected } => {
                write!(f, "missing key {key} (expected shape {expected:?})")
            }
            KeyProblem::Unexpected { key, found } => {
                write!(f, "unexpected key {key} (shape {found:?})")
            }
            KeyProblem::ShapeMismatch {
                key,
                expected,
                found,
            } => write!(
                f,
                "shape mismatch for {key}: expected {expected:?}, found {found:?}"
            ),
            KeyProblem::DType {
                key,
                expected,
                found,
            } => write!(
                f,
                "unsupported dtype for {key}: expected {expected}, found {found}"
            ),
        }
    }
}

impl Error {
    /// The error with `path` as its weights file, for the variants that name one and were made
    /// without a file (by [`crate::model::Config::infer`]).
    pub(crate) fn with_path(self, file: &std::path::Path) -> Self {
        match self {
            Error::NotFastaiLearner { reason, found, .. } => Error::NotFastaiLearner {
                path: file.to_path_buf(),
                reason,
                found,
            },
            Error::UnsupportedHead { reason, .. } => Error::UnsupportedHead {
                path: file.to_path_buf(),
                reason,
            },
            Error::ArchMismatch {
                arch,
                arch_family,
                found,
                evidence,
                ..
            } => Error::ArchMismatch {
                path: file.to_path_buf(),
                arch,
                arch_family,
                found,
                evidence,
            },
            other => other,
        }
    }
}

/// How an error names the state_dict: the file, or "the state_dict" when there is none.
fn source_name(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        "the state_dict".to_string()
    } else {
        path.display().to_string()
    }
}

/// The message of [`Error::ImageTooLarge`].
fn too_large(origin: &str, width: u32, height: u32, max_pixels: u64) -> String {
    let pixels = u64::from(width) * u64::from(height);
    let why = if pixels > max_pixels {
        format!("over the limit of {max_pixels} pixels")
    } else {
        format!(
            "under the limit of {max_pixels} pixels, but its decoded samples need more memory \
             than that limit allows (8 bytes a pixel)"
        )
    };
    format!(
        "image {origin} is {width}x{height} = {pixels} pixels, {why} (a decompression bomb?); \
         raise DecodeOptions::max_pixels to decode it"
    )
}

/// A tensor of a weights file that holds NaN or infinite values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFinite {
    /// The state_dict key.
    pub key: String,
    /// How many elements are NaN.
    pub nan: usize,
    /// How many elements are +inf or -inf.
    pub inf: usize,
    /// The flat index of the first non-finite element.
    pub first_index: usize,
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} NaN, {} infinite (first at flat index {})",
            self.key, self.nan, self.inf, self.first_index
        )
    }
}

/// Formats a list one item per line, as `  - item`.
struct Bullets<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Bullets<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}
