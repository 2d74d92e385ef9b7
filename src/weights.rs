//! Loading fastai's weights: a safetensors file holding `learn.model.state_dict()` as
//! `safetensors.torch.save_file` writes it.
//!
//! Keys keep fastai's names: the body under `0.model.` (timm's names), the head under `1.N.`.
//! Loading is strict: every missing key, unexpected key, shape mismatch and unusable dtype is
//! reported together in one [`Error::WeightsMismatch`]. The number of classes is read from
//! `1.6.weight`. The file is memory-mapped. Float tensors may be stored as `F32`, `F16` or
//! `BF16` and are converted to `F32`.
//!
//! # Metadata
//! The safetensors header's `__metadata__` may hold the vocab under the key `"vocab"` as a
//! JSON array of strings in class-index order, e.g. `["Abyssinian", "Bengal", ...]`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use safetensors::{Dtype, SafeTensors};

use crate::categorize::Vocab;
use crate::error::{Error, KeyProblem, Result};
use crate::model::{Config, FastaiVit};

/// The metadata key that holds the vocab (a JSON array of strings).
pub const VOCAB_METADATA_KEY: &str = "vocab";

/// fastai's state_dict, loaded, checked against the architecture and placed on a device.
#[derive(Debug)]
pub struct FastaiWeights {
    path: PathBuf,
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

fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

fn is_int(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::U32 | Dtype::U64
    )
}

impl FastaiWeights {
    /// Memory-maps and loads a safetensors file of fastai's state_dict for the default
    /// architecture (`vit_tiny_patch16_224`), with the number of classes read from
    /// `1.6.weight`.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with_config(path, Config::default(), device)
    }

    /// Like [`FastaiWeights::load`] for another architecture; `config.num_classes` is
    /// replaced by the class count found in `1.6.weight` when that tensor is present.
    pub fn load_with_config(
        path: impl AsRef<Path>,
        mut config: Config,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            what: "weights",
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        if file.metadata().map_err(io_err)?.is_dir() {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a directory",
            )));
        }
        // SAFETY: the map is read-only and lives only inside this function; the tensors are
        // copied out of it before it is dropped. A file truncated by another process while
        // mapped could fault, which is the documented caveat of memory-mapping; the issue's
        // design asks for a mapped load to avoid reading the whole file into memory twice.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| st_err(path, e))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, e))?;

        let found: HashMap<String, (Dtype, Vec<usize>)> = st
            .iter()
            .map(|(k, v)| (k.to_string(), (v.dtype(), v.shape().to_vec())))
            .collect();
        if let Some((_, shape)) = found.get("1.6.weight") {
            if shape.len() == 2 {
                config.num_classes = shape[0];
            }
        }
        let expected = config.state_dict_shapes();
        let mut problems = Vec::new();
        for (key, shape) in &expected {
            match found.get(key) {
                None => problems.push(KeyProblem::Missing {
                    key: key.clone(),
                    expected: shape.clone(),
                }),
                Some((dtype, found_shape)) => {
                    if found_shape != shape {
                        problems.push(KeyProblem::ShapeMismatch {
                            key: key.clone(),
                            expected: shape.clone(),
                            found: found_shape.clone(),
                        });
                    }
                    let counter = key.ends_with("num_batches_tracked");
                    let ok = if counter {
                        is_int(*dtype)
                    } else {
                        is_float(*dtype)
                    };
                    if !ok {
                        problems.push(KeyProblem::DType {
                            key: key.clone(),
                            expected: if counter {
                                "an integer"
                            } else {
                                "F32, F16 or BF16"
                            }
                            .to_string(),
                            found: format!("{dtype:?}"),
                        });
                    }
                }
            }
        }
        let expected_keys: std::collections::HashSet<&str> =
            expected.iter().map(|(k, _)| k.as_str()).collect();
        for (key, (_, shape)) in &found {
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
        for (key, _) in &expected {
            if key.ends_with("num_batches_tracked") {
                continue;
            }
            let view = st.tensor(key).map_err(|e| st_err(path, e))?;
            let t = view
                .load(device)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| st_err(path, format!("tensor {key}: {e}")))?;
            tensors.insert(key.clone(), t);
        }
        Ok(FastaiWeights {
            path: path.to_path_buf(),
            config,
            tensors,
            metadata,
        })
    }

    /// The architecture, with `num_classes` from `1.6.weight`.
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
            self.config.num_classes,
            &format!("the metadata of {}", self.path.display()),
        )?;
        Ok(Some(vocab))
    }

    /// Builds the model from these weights.
    pub fn build_model(&self) -> Result<FastaiVit> {
        let device = self
            .tensors
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &device);
        Ok(FastaiVit::new(&self.config, vb)?)
    }
}
