//! Loading fastai's weights: `learn.model.state_dict()` as a safetensors file
//! (`safetensors.torch.save_file`, or `scripts/export_fastai.py`, or `examples/convert.rs`) or
//! as the `.pth` fastai's `learn.save` writes (see [`pth`](self) below).
//!
//! Keys keep fastai's names: the body under `0.` (a timm body under `0.model.` with timm's
//! names, a torchvision ResNet under `0.0` ... `0.7` as `create_body` cuts it), the head under
//! `1.N.`. The architecture (the body's family and sizes, the head's layers, the classes) is read
//! off the keys and shapes ([`Config::infer`]); a ViT's attention heads from the recipe's `arch`
//! or the timm convention. Loading is strict: every missing key, unexpected key, shape mismatch and unusable dtype is reported
//! together in one [`Error::WeightsMismatch`]. Float tensors may be `F32`, `F16` or `BF16`
//! and are converted to `F32`; any other dtype (`F64`, integers, `BOOL`, FP8, ...) is a
//! [`KeyProblem::DType`] naming the key. Every float tensor is scanned once for NaN and
//! infinite values, reported by key in one [`Error::NonFiniteWeights`]. Safetensors files are
//! memory-mapped; a truncated file or a header whose offsets or sizes do not fit the data is an
//! [`Error::InvalidWeights`].
//!
//! The format is recognised by the file's first bytes, whatever its name: a zip archive is a
//! `.pth` (the plain state_dict of `learn.save(..., with_opt=False)` or the
//! `{'model': ..., 'opt': ...}` of the default `learn.save`), anything else must be
//! safetensors. A `.pth` is read through the one opened handle by the crate's own zip and
//! pickle readers, which execute nothing and bound every size, count and depth before
//! allocating: the pickle may name only tensor classes, plus, inside `'opt'` (never read),
//! fastcore's `L` and the numpy scalars `fit_one_cycle` leaves there; storages are checked
//! against their zip entries and tensors against their storages ([`Error::InvalidWeights`]
//! otherwise; ROBUSTNESS.md lists every limit).
//!
//! # Metadata
//! A safetensors header's `__metadata__` may hold the vocab under `"vocab"` (a JSON array of
//! strings in class-index order) and the preprocessing recipe under `"fastai_infer.recipe"`
//! (see [`crate::recipe`] for the format). A `.pth` carries neither.

mod pickle;
mod pth;
mod torchzip;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use safetensors::{Dtype, SafeTensors};

use crate::categorize::Vocab;
use crate::error::{Error, KeyProblem, NonFinite, Result};
use crate::model::{summarize, Config, Family, FastaiModel};
use crate::recipe::{Recipe, RECIPE_METADATA_KEY};

/// The metadata key that holds the vocab (a JSON array of strings).
pub const VOCAB_METADATA_KEY: &str = "vocab";

/// fastai's state_dict, loaded, checked against the architecture and placed on a device.
#[derive(Debug)]
pub struct FastaiWeights {
    path: PathBuf,
    format: &'static str,
    config: Config,
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

fn st_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::InvalidWeights {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A stored tensor's element type, as far as loading cares.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Float,
    Int,
    Other,
}

fn kind_of_st(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Kind::Float,
        Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::U32 | Dtype::U64 => {
            Kind::Int
        }
        _ => Kind::Other,
    }
}

/// What the file turned out to be.
enum Source<'a> {
    Safetensors(SafeTensors<'a>),
    Pth(pth::Pth),
}

/// The file's format from its first bytes.
fn sniff(path: &Path, file: &mut File) -> Result<bool> {
    let mut head = [0u8; 9];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(Error::Io {
                    what: "weights",
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        return Ok(true);
    }
    if head.first() == Some(&0x80) {
        return Err(st_err(
            path,
            "a legacy (pre-zip) PyTorch pickle; re-save it with torch >= 1.6, whose torch.save \
             writes the zip format fastai-infer reads",
        ));
    }
    if n < 9 || head[8] != b'{' {
        return Err(st_err(
            path,
            format!(
                "neither a safetensors file (8-byte header length, then a JSON header) nor a \
                 PyTorch .pth zip archive; it starts with {:02x?}",
                head
            ),
        ));
    }
    Ok(false)
}

impl FastaiWeights {
    /// Loads a fastai `vision_learner`'s weights (a timm ViT, torchvision or timm ResNet, or
    /// timm ConvNeXt body with fastai's head) from a safetensors or `.pth` file, with the
    /// architecture read off the keys and shapes (and the recipe's `arch`, checked against the
    /// body and, for a ViT, giving the attention heads).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_inner(path.as_ref(), None, None, device)
    }

    /// Like [`FastaiWeights::load`] with `recipe` in place of any recipe in the file's
    /// metadata (for a `.pth`, which carries none): its `arch` must name the body's family, and
    /// for a ViT its `arch`/`num_heads` fix the attention heads and its batch size the input
    /// size. [`FastaiWeights::recipe`] then returns it.
    pub fn load_with_recipe(
        path: impl AsRef<Path>,
        recipe: &Recipe,
        device: &Device,
    ) -> Result<Self> {
        Self::load_inner(path.as_ref(), None, Some(recipe), device)
    }

    /// Like [`FastaiWeights::load`] with the architecture given instead of inferred; the class
    /// count is replaced by the one found in the head's last linear weight when that tensor is
    /// present. Every key and shape must match `config`, which must pass [`Config::validate`].
    pub fn load_with_config(
        path: impl AsRef<Path>,
        config: Config,
        device: &Device,
    ) -> Result<Self> {
        Self::load_inner(path.as_ref(), Some(config), None, device)
    }

    fn load_inner(
        path: &Path,
        config: Option<Config>,
        recipe: Option<&Recipe>,
        device: &Device,
    ) -> Result<Self> {
        if let Some(c) = &config {
            c.validate()?;
        }
        let io_err = |source| Error::Io {
            what: "weights",
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        if file.metadata().map_err(io_err)?.is_dir() {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a directory",
            )));
        }
        let is_pth = sniff(path, &mut file)?;
        let mmap;
        let (source, mut metadata, format) = if is_pth {
            // The same handle, read once: never reopened by path.
            let len = file.metadata().map_err(io_err)?.len();
            let p = pth::Pth::open(file, len).map_err(|e| st_err(path, e))?;
            let format = if p.layout == "state_dict" {
                ".pth (state_dict)"
            } else {
                ".pth ({'model': state_dict, 'opt': ...})"
            };
            (Source::Pth(p), HashMap::new(), format)
        } else {
            // SAFETY: the map is read-only and lives only inside this function; the tensors
            // are copied out of it before it is dropped. A file truncated by another process
            // while mapped could fault, which is the documented caveat of memory-mapping; the
            // design asks for a mapped load to avoid reading the whole file into memory twice.
            mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
            let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| st_err(path, e))?;
            let metadata = header.metadata().clone().unwrap_or_default();
            let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, e))?;
            (Source::Safetensors(st), metadata, "safetensors")
        };

        let found: HashMap<String, (Kind, String, Vec<usize>)> = match &source {
            Source::Safetensors(st) => st
                .iter()
                .map(|(k, v)| {
                    let d = v.dtype();
                    (
                        k.to_string(),
                        (kind_of_st(d), format!("{d:?}"), v.shape().to_vec()),
                    )
                })
                .collect(),
            Source::Pth(p) => p.header(),
        };
        let config = match config {
            Some(c) => {
                let last = c
                    .head
                    .layers
                    .iter()
                    .rposition(|l| matches!(l, crate::model::head::Layer::Linear { .. }));
                match last.and_then(|i| found.get(&format!("1.{i}.weight"))) {
                    Some((_, _, shape)) if shape.len() == 2 => c.with_num_classes(shape[0]),
                    _ => c,
                }
            }
            None => {
                let recipe = match recipe {
                    Some(r) => {
                        metadata.insert(RECIPE_METADATA_KEY.to_string(), r.to_json());
                        r.clone()
                    }
                    None => recipe_from(path, &metadata)?,
                };
                let shapes: HashMap<String, Vec<usize>> = found
                    .iter()
                    .map(|(k, (_, _, s))| (k.clone(), s.clone()))
                    .collect();
                let recipe_err = |reason: String| Error::InvalidMetadata {
                    path: path.to_path_buf(),
                    key: RECIPE_METADATA_KEY.to_string(),
                    reason,
                };
                let (bh, bw) = recipe.input_size().map_err(recipe_err)?;
                let config = Config::infer(&shapes, bh, recipe.arch.as_deref(), recipe.num_heads)
                    .map_err(|e| match e {
                    Error::InvalidConfig { field, reason } if field == "vit.img_size" => {
                        recipe_err(format!(
                            "batch_tfms size {bh}: the model's {field} {reason}"
                        ))
                    }
                    Error::InvalidConfig { field, reason } => {
                        let mut keys: Vec<&String> = shapes.keys().collect();
                        keys.sort();
                        Error::NotFastaiLearner {
                            path: path.to_path_buf(),
                            reason: format!("{field} {reason}"),
                            found: summarize(&keys),
                        }
                    }
                    e => e.with_path(path),
                })?;
                if config.family() == Family::Vit && bh != bw {
                    return Err(recipe_err(format!(
                        "batch_tfms is {bh}x{bw}; timm ViTs here take square inputs"
                    )));
                }
                config
            }
        };

        let expected = config.state_dict_shapes();
        let mut problems = Vec::new();
        for (key, shape) in &expected {
            match found.get(key) {
                None => problems.push(KeyProblem::Missing {
                    key: key.clone(),
                    expected: shape.clone(),
                }),
                Some((kind, dtype, found_shape)) => {
                    if found_shape != shape {
                        problems.push(KeyProblem::ShapeMismatch {
                            key: key.clone(),
                            expected: shape.clone(),
                            found: found_shape.clone(),
                        });
                    }
                    let counter = key.ends_with("num_batches_tracked");
                    let want = if counter { Kind::Int } else { Kind::Float };
                    if *kind != want {
                        problems.push(KeyProblem::DType {
                            key: key.clone(),
                            expected: if counter {
                                "an integer"
                            } else {
                                "F32, F16 or BF16"
                            }
                            .to_string(),
                            found: dtype.clone(),
                        });
                    }
                }
            }
        }
        let expected_keys: std::collections::HashSet<&str> =
            expected.iter().map(|(k, _)| k.as_str()).collect();
        for (key, (_, _, shape)) in &found {
            if !expected_keys.contains(key.as_str()) {
                problems.push(KeyProblem::Unexpected {
                    key: key.clone(),
                    found: shape.clone(),
                });
            }
        }
        if !problems.is_empty() {
            problems.sort_by(|a, b| a.key().cmp(b.key()));
            return Err(Error::WeightsMismatch {
                path: path.to_path_buf(),
                problems,
            });
        }

        let mut tensors = HashMap::with_capacity(expected.len());
        let mut non_finite_tensors = Vec::new();
        for (key, _) in &expected {
            let counter = key.ends_with("num_batches_tracked");
            let target = if counter { DType::I64 } else { DType::F32 };
            let t = match &source {
                Source::Safetensors(st) => {
                    let view = st.tensor(key).map_err(|e| st_err(path, e))?;
                    view.load(device)
                        .and_then(|t| t.to_dtype(target))
                        .map_err(|e| st_err(path, format!("tensor {key}: {e}")))?
                }
                Source::Pth(p) => p
                    .get(key)
                    .and_then(|t| {
                        t.to_dtype(target)
                            .and_then(|t| t.to_device(device))
                            .map_err(|e| format!("tensor {key}: {e}"))
                    })
                    .map_err(|e| st_err(path, e))?,
            };
            if !counter {
                if let Some(bad) = non_finite(key, &t)? {
                    non_finite_tensors.push(bad);
                }
            }
            tensors.insert(key.clone(), t);
        }
        if !non_finite_tensors.is_empty() {
            non_finite_tensors.sort_by(|a, b| a.key.cmp(&b.key));
            return Err(Error::NonFiniteWeights {
                path: path.to_path_buf(),
                tensors: non_finite_tensors,
            });
        }
        Ok(FastaiWeights {
            path: path.to_path_buf(),
            format,
            config,
            tensors,
            metadata,
        })
    }

    /// The file's format: `"safetensors"`, `".pth (state_dict)"` or
    /// `".pth ({'model': state_dict, 'opt': ...})"`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    /// Every tensor of the state_dict by key (floats as `F32`, the BatchNorm counters as
    /// `I64`), e.g. to write them elsewhere.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The preprocessing recipe from the metadata (key `"fastai_infer.recipe"`, or the one
    /// given to [`FastaiWeights::load_with_recipe`]), or the pets lesson's when there is none.
    pub fn recipe(&self) -> Result<Recipe> {
        recipe_from(&self.path, &self.metadata)
    }

    /// Writes the state_dict as one self-describing safetensors file: every tensor under its
    /// fastai key (floats as `F32`, the BatchNorm counters as `I64`), the vocab under
    /// `"vocab"` when given, and `recipe` under `"fastai_infer.recipe"`.
    pub fn save_safetensors(
        &self,
        path: impl AsRef<Path>,
        vocab: Option<&Vocab>,
        recipe: &Recipe,
    ) -> Result<()> {
        let path = path.as_ref();
        if let Some(v) = vocab {
            v.check_len(self.config.num_classes(), "the vocab to save")?;
        }
        let mut metadata = HashMap::new();
        metadata.insert(RECIPE_METADATA_KEY.to_string(), recipe.to_json());
        if let Some(v) = vocab {
            metadata.insert(
                VOCAB_METADATA_KEY.to_string(),
                serde_json::to_string(v.labels()).map_err(|e| {
                    Error::InvalidArgument(format!("vocab cannot be written as JSON: {e}"))
                })?,
            );
        }
        let cpu: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
            .collect::<candle_core::Result<_>>()?;
        safetensors::serialize_to_file(
            cpu.iter().map(|(k, t)| (k.clone(), t)),
            Some(metadata),
            path,
        )
        .map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => Error::Io {
                what: "output weights",
                path: path.to_path_buf(),
                source,
            },
            other => st_err(path, other),
        })
    }

    /// The architecture: the body and fastai's head.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The file these weights came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The safetensors `__metadata__` entries.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The vocab stored in the metadata under [`VOCAB_METADATA_KEY`], if any. Its length must
    /// equal the number of classes.
    pub fn vocab(&self) -> Result<Option<Vocab>> {
        let Some(raw) = self.metadata.get(VOCAB_METADATA_KEY) else {
            return Ok(None);
        };
        let labels: Vec<String> =
            serde_json::from_str(raw).map_err(|e| Error::InvalidMetadata {
                path: self.path.clone(),
                key: VOCAB_METADATA_KEY.to_string(),
                reason: format!("expected a JSON array of strings: {e}"),
            })?;
        let vocab = Vocab::new(labels);
        vocab.check_len(
            self.config.num_classes(),
            &format!("the metadata of {}", self.path.display()),
        )?;
        Ok(Some(vocab))
    }

    /// Builds the model from these weights.
    pub fn build_model(&self) -> Result<FastaiModel> {
        let device = self
            .tensors
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &device);
        FastaiModel::new(&self.config, vb)
    }
}

/// Counts the NaN and infinite values of an `F32` tensor: one branch-free pass over the CPU
/// storage (no copy), and a counting pass only when something is found.
fn non_finite(key: &str, t: &Tensor) -> Result<Option<NonFinite>> {
    let t = t.to_device(&Device::Cpu)?;
    let (storage, layout) = t.storage_and_layout();
    let copied;
    let values: &[f32] = match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
        _ => {
            copied = t.flatten_all()?.to_vec1::<f32>()?;
            &copied
        }
    };
    // An f32 is NaN or infinite exactly when its exponent bits are all ones.
    const EXP: u32 = 0x7f80_0000;
    let any = values
        .iter()
        .fold(false, |acc, v| acc | (v.to_bits() & EXP == EXP));
    if !any {
        return Ok(None);
    }
    let (mut nan, mut inf, mut first) = (0, 0, None);
    for (i, v) in values.iter().enumerate() {
        if !v.is_finite() {
            if v.is_nan() {
                nan += 1;
            } else {
                inf += 1;
            }
            first.get_or_insert(i);
        }
    }
    Ok(first.map(|first_index| NonFinite {
        key: key.to_string(),
        nan,
        inf,
        first_index,
    }))
}

/// The recipe in `metadata`, or the default.
fn recipe_from(path: &Path, metadata: &HashMap<String, String>) -> Result<Recipe> {
    match metadata.get(RECIPE_METADATA_KEY) {
        None => Ok(Recipe::default()),
        Some(raw) => Recipe::from_json(raw).map_err(|reason| Error::InvalidMetadata {
            path: path.to_path_buf(),
            key: RECIPE_METADATA_KEY.to_string(),
            reason,
        }),
    }
}
