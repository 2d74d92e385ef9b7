//! PyTorch `.pth` files as fastai's `learn.save` writes them (torch's zip format): the plain
//! state_dict (`with_opt=False`) or `{'model': state_dict, 'opt': optimizer_state}`.
//!
//! The pickle is parsed by candle's reader, which executes nothing; before any tensor is read
//! every Python class the pickle names is checked against the plain tensor subset (tensors,
//! storages, `OrderedDict`), so a file that needs arbitrary objects is refused by name, as
//! `torch.load(weights_only=True)` would refuse it. The one exception is fastcore's `L` inside
//! the optimizer state (`'opt'`, never read) of fastai's default `learn.save`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::{DType, Tensor};

/// An opened `.pth` file: its tensors' names, dtypes and shapes, readable one by one.
pub(super) struct Pth {
    tensors: PthTensors,
    /// `"state_dict"` or `"{'model': state_dict, 'opt': ...}"`.
    pub layout: &'static str,
}

/// Runs `f`, turning a panic inside candle's pickle reader (it indexes into untrusted tuples)
/// into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(format!("{what}: malformed pickle (the reader panicked)")))
}

/// Whether a class a state_dict pickle may name.
fn allowed_class(module: &str, class: &str) -> bool {
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

/// The first class outside the tensor subset, walking the object tree without recursion.
/// Under the top-level `'opt'` entry (fastai's optimizer state, never read) fastcore's `L`,
/// which fastai keeps its hyper-parameters in, is allowed too.
fn foreign_class(root: &Object) -> Option<String> {
    let mut todo = vec![(root, false)];
    while let Some((obj, in_opt)) = todo.pop() {
        match obj {
            Object::Class {
                module_name,
                class_name,
            } if !allowed_class(module_name, class_name)
                && (!in_opt || module_name != "fastcore.foundation" || class_name != "L") =>
            {
                return Some(format!("{module_name}.{class_name}"));
            }
            Object::Tuple(v) | Object::List(v) => todo.extend(v.iter().map(|o| (o, in_opt))),
            Object::Dict(kv) => {
                for (k, v) in kv {
                    let opt = in_opt
                        || (std::ptr::eq(obj, root)
                            && matches!(k, Object::Unicode(s) if s == "opt"));
                    todo.push((k, in_opt));
                    todo.push((v, opt));
                }
            }
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                todo.push((callable, in_opt));
                todo.push((args, in_opt));
            }
            Object::PersistentLoad(o) => todo.push((o, in_opt)),
            _ => {}
        }
    }
    None
}

fn describe(obj: &Object) -> String {
    match obj {
        Object::Dict(_) => "a dict".into(),
        Object::List(_) => "a list".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => match &**callable {
            Object::Class {
                module_name,
                class_name,
            } => format!("a {module_name}.{class_name}"),
            _ => "an object".into(),
        },
        other => format!("{other:?}"),
    }
}

impl Pth {
    /// Opens `path`; the error says what the file is and what was expected.
    pub(super) fn open(path: &Path) -> Result<Pth, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let mut zip = zip::ZipArchive::new(BufReader::new(file))
            .map_err(|e| format!("not a readable zip archive (torch.save's format): {e}"))?;
        let names = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| format!("unreadable zip directory: {e}"))?;
        let pickles: Vec<String> = names
            .into_iter()
            .filter(|n| n.ends_with("data.pkl"))
            .collect();
        let pickle = match pickles.as_slice() {
            [one] => one.clone(),
            [] => return Err("a zip archive with no data.pkl: not written by torch.save".into()),
            _ => {
                return Err(format!(
                    "a zip archive with {} data.pkl entries",
                    pickles.len()
                ))
            }
        };
        let entry = zip
            .by_name(&pickle)
            .map_err(|e| format!("cannot read {pickle}: {e}"))?;
        let mut reader = BufReader::new(entry);
        let root = guarded(&pickle, || {
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut reader)
                .map_err(|e| format!("{pickle} is not a pickle this reader supports: {e}"))?;
            stack
                .finalize()
                .map_err(|e| format!("{pickle}: incomplete pickle: {e}"))
        })?;
        let Object::Dict(entries) = &root else {
            return Err(format!(
                "the pickle holds {}, expected a state_dict (a dict of tensors) or \
                 {{'model': state_dict, 'opt': ...}}",
                describe(&root)
            ));
        };
        let nested = entries.iter().any(|(k, v)| {
            matches!(k, Object::Unicode(s) if s == "model") && matches!(v, Object::Dict(_))
        });
        let (key, layout) = if nested {
            (Some("model"), "{'model': state_dict, 'opt': ...}")
        } else {
            (None, "state_dict")
        };
        if let Some(class) = foreign_class(&root) {
            return Err(format!(
                "the pickle needs the Python class {class}, outside the plain tensor subset \
                 (a state_dict of tensors, or {{'model': state_dict, 'opt': ...}}); \
                 torch.load(weights_only=True) would refuse it too"
            ));
        }
        let tensors = guarded("tensor table", || {
            PthTensors::new(path, key).map_err(|e| format!("cannot list the tensors: {e}"))
        })?;
        Ok(Pth { tensors, layout })
    }

    /// Every tensor's name with its dtype and shape.
    pub(super) fn header(&self) -> HashMap<String, (DType, Vec<usize>)> {
        self.tensors
            .tensor_infos()
            .iter()
            .map(|(k, info)| (k.clone(), (info.dtype, info.layout.dims().to_vec())))
            .collect()
    }

    /// Reads one tensor (on the CPU, in its stored dtype).
    pub(super) fn get(&self, name: &str) -> Result<Tensor, String> {
        guarded(name, || match self.tensors.get(name) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(format!("no tensor {name}")),
            Err(e) => Err(format!("tensor {name}: {e}")),
        })
    }
}
