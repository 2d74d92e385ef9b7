//! PyTorch `.pth` files as fastai's `learn.save` writes them (torch's zip format): the plain
//! state_dict (`with_opt=False`) or `{'model': state_dict, 'opt': optimizer_state}`.
//!
//! The file is opened once and read through that one handle ([`super::torchzip`]); its pickle
//! is parsed by a bounded reader that executes nothing ([`super::pickle`]). Classes are checked
//! by name while parsing and again by where they appear:
//! - anywhere: the plain tensor subset (tensors, storages, `OrderedDict`), what
//!   `torch.load(weights_only=True)` accepts for a state_dict;
//! - inside the top-level `'opt'` entry only (fastai's optimizer state, which is never read):
//!   fastcore's `L` (the hyper-parameters' list), numpy's scalar and dtype constructors and
//!   `_codecs.encode` (the `np.float64` learning rates and momentums that `fit_one_cycle` leaves
//!   there), kept as data;
//! - any other class, anywhere, is refused by name, and so is any class but the tensor subset
//!   inside `'model'`.
//!
//! Every tensor's storage is checked before anything is allocated: its zip entry exists, is
//! stored uncompressed, lies inside the file and holds exactly the storage's declared size;
//! the tensor's offset, shape and strides stay inside the storage, it has no more elements
//! than the storage, and all the state_dict's tensors together have no more bytes than their
//! storages. The loader then checks every shape against the architecture before it reads any
//! tensor's data.

use std::collections::{HashMap, HashSet};
use std::fs::File;

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, Id, Node, Pickle};
use super::torchzip::Archive;
use super::Kind;

/// The deepest shape read (real tensors: at most 4 dimensions).
const MAX_RANK: usize = 16;

/// A storage's element type, from its class (`torch.FloatStorage`, ...).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    fn of_storage(class: &str) -> Option<Dtype> {
        Some(match class {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }

    fn size(self) -> u64 {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The name the loader's messages use (safetensors' spelling).
    fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Kind::Float,
            Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 => Kind::Int,
            Dtype::F64 | Dtype::Bool => Kind::Other,
        }
    }
}

/// Where one tensor's values are, checked against its storage.
#[derive(Debug)]
struct TensorInfo {
    dtype: Dtype,
    shape: Vec<usize>,
    stride: Vec<usize>,
    /// In elements, from the storage's start.
    offset: u64,
    /// The storage's data: its start in the file.
    start: u64,
}

/// An opened `.pth` file: its tensors' names, dtypes and shapes, readable one by one.
#[derive(Debug)]
pub(super) struct Pth {
    archive: Archive,
    tensors: HashMap<String, TensorInfo>,
    /// `"state_dict"` or `"{'model': state_dict, 'opt': ...}"`.
    pub layout: &'static str,
}

/// The plain tensor subset: allowed anywhere.
fn tensor_class(module: &str, class: &str) -> bool {
    matches!(
        (module, class),
        ("collections", "OrderedDict")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_parameter")
            | ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch", "Tensor")
            | ("torch.nn.parameter", "Parameter")
    ) || (module == "torch" && class.ends_with("Storage"))
}

/// What fastai's optimizer state names besides tensors: allowed inside `'opt'` only.
fn opt_class(module: &str, class: &str) -> bool {
    matches!(
        (module, class),
        ("fastcore.foundation", "L")
            | ("numpy.core.multiarray", "scalar")
            | ("numpy._core.multiarray", "scalar")
            | ("numpy", "dtype")
            | ("_codecs", "encode")
    )
}

/// The first class used outside the part of the pickle that may use it: walking from the
/// root, each node once per context (inside `'opt'` or not), without recursion.
fn misplaced_class(p: &Pickle, opt: Option<Id>) -> Option<String> {
    let mut seen = vec![0u8; p.nodes.len()];
    let mut todo = vec![(p.root, false)];
    let mut children = Vec::new();
    while let Some((id, in_opt)) = todo.pop() {
        let bit = if in_opt { 2 } else { 1 };
        let s = &mut seen[id as usize];
        if *s & bit != 0 {
            continue;
        }
        *s |= bit;
        if let Some((m, c)) = p.global(id) {
            if !(tensor_class(m, c) || (in_opt && opt_class(m, c))) {
                return Some(format!("{m}.{c}"));
            }
        }
        children.clear();
        p.children(id, &mut children);
        todo.extend(
            children
                .iter()
                .map(|&c| (c, in_opt || (id == p.root && Some(c) == opt))),
        );
    }
    None
}

fn as_usize(p: &Pickle, id: Id, what: &str) -> Result<u64, String> {
    match p.int(id) {
        Some(v) if v >= 0 => Ok(v as u64),
        _ => Err(format!(
            "{what} is {}, not a non-negative int",
            p.describe(id)
        )),
    }
}

fn ints(p: &Pickle, id: Id, what: &str) -> Result<Vec<u64>, String> {
    let items = p
        .seq(id)
        .ok_or_else(|| format!("{what} is {}, not a tuple", p.describe(id)))?;
    if items.len() > MAX_RANK {
        return Err(format!("{what} has {} dimensions", items.len()));
    }
    items.iter().map(|&i| as_usize(p, i, what)).collect()
}

/// A storage's persistent id `('storage', torch.XStorage, key, location, numel)`.
fn storage(p: &Pickle, id: Id) -> Result<(Dtype, String, u64), String> {
    let Node::PersId(pid) = p.node(id) else {
        return Err(format!("its storage is {}", p.describe(id)));
    };
    match p.seq(*pid) {
        Some(&[tag, class, key, _location, numel]) if p.str(tag) == Some("storage") => {
            let dtype = match p.global(class) {
                Some(("torch", c)) => Dtype::of_storage(c)
                    .ok_or_else(|| format!("its storage type torch.{c} is not read"))?,
                _ => return Err(format!("its storage type is {}", p.describe(class))),
            };
            let key = p
                .str(key)
                .ok_or_else(|| "its storage key is not a string".to_string())?;
            Ok((
                dtype,
                key.to_string(),
                as_usize(p, numel, "its storage size")?,
            ))
        }
        _ => Err("its persistent id is not torch's ('storage', ...) tuple".into()),
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)` (or a `Parameter` around one).
fn tensor_args(p: &Pickle, id: Id) -> Result<Id, String> {
    let mut id = id;
    for _ in 0..4 {
        let Node::Call(c) = p.node(id) else {
            return Err(format!("{}, not a tensor", p.describe(id)));
        };
        let args = p.seq(c.args).unwrap_or(&[]);
        match p.global(c.func) {
            Some(("torch._utils", "_rebuild_tensor_v2")) => return Ok(c.args),
            Some(("torch._utils", "_rebuild_parameter")) => match args.first() {
                Some(&t) => id = t,
                None => break,
            },
            Some(("torch._tensor", "_rebuild_from_type_v2")) => match args {
                [f, _, a, ..] if p.global(*f) == Some(("torch._utils", "_rebuild_tensor_v2")) => {
                    return Ok(*a)
                }
                _ => break,
            },
            _ => return Err(format!("{}, not a tensor", p.describe(id))),
        }
    }
    Err(format!(
        "{}, not a tensor torch.save writes",
        p.describe(id)
    ))
}

impl Pth {
    /// Reads the directory and the pickle of the archive `file` (`len` bytes, already
    /// opened); the error says what the file is and what was expected.
    pub(super) fn open(file: File, len: u64) -> Result<Pth, String> {
        let archive = Archive::open(file, len)?;
        let pickles: Vec<&str> = archive
            .names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .collect();
        let pkl = match pickles.as_slice() {
            [one] => one.to_string(),
            [] => return Err("a zip archive with no data.pkl: not written by torch.save".into()),
            _ => {
                return Err(format!(
                    "a zip archive with {} data.pkl entries",
                    pickles.len()
                ))
            }
        };
        let prefix = &pkl[..pkl.len() - "data.pkl".len()];
        if let Ok(order) = archive.read_entry(&format!("{prefix}byteorder"), 16) {
            if order != b"little" {
                return Err(format!(
                    "the tensors are stored {:?}-endian; only little-endian files are read",
                    String::from_utf8_lossy(&order)
                ));
            }
        }
        let data = archive.read_entry(&pkl, pickle::MAX_PICKLE_BYTES)?;
        let p =
            pickle::parse(&data, &|m, c| tensor_class(m, c) || opt_class(m, c)).map_err(|e| {
                if e.contains("Python class fastai.") {
                    format!(
                        "{e} (a learn.export() file is a pickle of the whole Learner: convert \
                         it with scripts/export_fastai.py, or use learn.save's .pth)"
                    )
                } else {
                    e
                }
            })?;
        drop(data);
        let Some(entries) = p.dict(p.root) else {
            return Err(format!(
                "the pickle holds {}, expected a state_dict (a dict of tensors) or \
                 {{'model': state_dict, 'opt': ...}}",
                p.describe(p.root)
            ));
        };
        let model = entries
            .iter()
            .find(|(k, v)| p.str(*k) == Some("model") && p.dict(*v).is_some())
            .map(|(_, v)| *v);
        let opt = model.and_then(|_| {
            entries
                .iter()
                .find(|(k, _)| p.str(*k) == Some("opt"))
                .map(|(_, v)| *v)
        });
        let (sd, layout) = match model {
            Some(m) => (m, "{'model': state_dict, 'opt': ...}"),
            None => (p.root, "state_dict"),
        };
        if let Some(class) = misplaced_class(&p, opt) {
            let place = if opt.is_some() {
                "outside the optimizer state ('opt')"
            } else {
                "in a state_dict"
            };
            return Err(format!(
                "the pickle names the Python class {class} {place}, where only the plain \
                 tensor subset (tensors, storages, OrderedDict) is allowed"
            ));
        }
        let mut tensors = HashMap::new();
        let mut storages = HashSet::new();
        let (mut tensor_bytes, mut storage_bytes) = (0u64, 0u64);
        for &(k, v) in p.dict(sd).unwrap_or(&[]) {
            let key = p.str(k).ok_or_else(|| {
                format!(
                    "the state_dict has a key that is {}, not a str",
                    p.describe(k)
                )
            })?;
            let info = Self::check_tensor(&p, &archive, prefix, v, &mut storages)
                .map_err(|e| format!("tensor {key}: {e}"))?;
            let (info, new_storage) = info;
            storage_bytes += new_storage.unwrap_or(0);
            let numel: u64 = info.shape.iter().map(|&d| d as u64).product();
            tensor_bytes = tensor_bytes.saturating_add(numel * info.dtype.size());
            tensors.insert(key.to_string(), info);
        }
        if tensor_bytes > storage_bytes {
            return Err(format!(
                "the state_dict's tensors add up to {tensor_bytes} bytes, more than the \
                 {storage_bytes} bytes of their storages"
            ));
        }
        Ok(Pth {
            archive,
            tensors,
            layout,
        })
    }

    /// Checks one state_dict value; returns it, and its storage's size in bytes the first time
    /// that storage is seen.
    fn check_tensor(
        p: &Pickle,
        archive: &Archive,
        prefix: &str,
        id: Id,
        storages: &mut HashSet<String>,
    ) -> Result<(TensorInfo, Option<u64>), String> {
        let args = tensor_args(p, id)?;
        let (storage_id, offset, size, stride) = match p.seq(args) {
            Some(&[s, o, z, t, ..]) => (s, o, z, t),
            _ => return Err("_rebuild_tensor_v2 with fewer than 4 arguments".into()),
        };
        let (dtype, key, numel_storage) = storage(p, storage_id)?;
        let offset = as_usize(p, offset, "its storage offset")?;
        let shape = ints(p, size, "its shape")?;
        let stride = ints(p, stride, "its stride")?;
        if shape.len() != stride.len() {
            return Err(format!(
                "its shape {shape:?} and stride {stride:?} have different lengths"
            ));
        }
        let entry = format!("{prefix}data/{key}");
        let (start, bytes) = archive.data_offset(&entry)?;
        let want = numel_storage.checked_mul(dtype.size());
        if want != Some(bytes) {
            return Err(format!(
                "its storage {entry} declares {numel_storage} {} elements, but the entry \
                 holds {bytes} bytes",
                dtype.name()
            ));
        }
        let too_big = || {
            format!(
                "its shape {shape:?} (stride {stride:?}, offset {offset}) does not fit its \
                 storage of {numel_storage} elements"
            )
        };
        let mut numel = 1u64;
        let mut last = offset;
        for (&d, &s) in shape.iter().zip(&stride) {
            numel = numel.checked_mul(d).ok_or_else(too_big)?;
            if d > 0 {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(too_big)?;
            }
        }
        if numel > 0 && (last >= numel_storage || numel > numel_storage) {
            return Err(too_big());
        }
        let to_usize = |v: Vec<u64>| -> Result<Vec<usize>, String> {
            v.into_iter()
                .map(|x| usize::try_from(x).map_err(|_| too_big()))
                .collect()
        };
        let info = TensorInfo {
            dtype,
            shape: to_usize(shape.clone())?,
            stride: to_usize(stride.clone())?,
            offset,
            start,
        };
        let first = storages.insert(entry).then_some(bytes);
        Ok((info, first))
    }

    /// Every tensor's name with its kind, dtype name and shape.
    pub(super) fn header(&self) -> HashMap<String, (Kind, String, Vec<usize>)> {
        self.tensors
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    (t.dtype.kind(), t.dtype.name().to_string(), t.shape.clone()),
                )
            })
            .collect()
    }

    /// Reads one tensor (on the CPU): floats in their stored dtype, integers as `I64`.
    pub(super) fn get(&self, name: &str) -> Result<Tensor, String> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("no tensor {name}"))?;
        let es = t.dtype.size();
        let numel: usize = t.shape.iter().product();
        // Row-major strides: one read. Otherwise read the span and gather.
        let mut contiguous = true;
        let mut expect = 1usize;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            if d > 1 && s != expect {
                contiguous = false;
            }
            expect = expect.saturating_mul(d);
        }
        let bytes = if numel == 0 {
            Vec::new()
        } else if contiguous {
            let mut buf = vec![0u8; numel * es as usize];
            self.archive.read(t.start, t.offset * es, &mut buf)?;
            buf
        } else {
            let span = 1 + t
                .shape
                .iter()
                .zip(&t.stride)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>();
            let mut raw = vec![0u8; span * es as usize];
            self.archive.read(t.start, t.offset * es, &mut raw)?;
            let es = es as usize;
            let mut out = Vec::with_capacity(numel * es);
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let at: usize = idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum();
                out.extend_from_slice(&raw[at * es..(at + 1) * es]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < t.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            out
        };
        let dev = &Device::Cpu;
        let shape = t.shape.as_slice();
        let err = |e: candle_core::Error| format!("tensor {name}: {e}");
        let float = |dt| Tensor::from_raw_buffer(&bytes, dt, shape, dev).map_err(err);
        let ints = |v: Vec<i64>| Tensor::from_vec(v, shape, dev).map_err(err);
        match t.dtype {
            Dtype::F64 => float(DType::F64),
            Dtype::F32 => float(DType::F32),
            Dtype::F16 => float(DType::F16),
            Dtype::BF16 => float(DType::BF16),
            Dtype::I64 => ints(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            Dtype::I32 => ints(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])).into())
                    .collect(),
            ),
            Dtype::I16 => ints(
                bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes(c.try_into().unwrap_or([0; 2])).into())
                    .collect(),
            ),
            Dtype::I8 => ints(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
            Dtype::U8 | Dtype::Bool => ints(bytes.iter().map(|&b| i64::from(b)).collect()),
        }
    }
}
