//! Naming the device a [`crate::Learner`] runs on: `cpu`, `cuda` or `cuda:N`, as PyTorch names
//! them and as the examples' `--device` flag takes them.
//!
//! ```
//! use fastai_infer::DeviceSpec;
//!
//! # fn main() -> fastai_infer::Result<()> {
//! let spec: DeviceSpec = "cpu".parse()?;
//! let device = spec.device()?; // a `candle_core::Device`, for `Learner::load`
//! assert!(device.is_cpu());
//! assert_eq!("cuda".parse::<DeviceSpec>()?, DeviceSpec::Cuda(0));
//! assert_eq!("cuda:1".parse::<DeviceSpec>()?.to_string(), "cuda:1");
//! assert!("gpu".parse::<DeviceSpec>().is_err());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{Error, Result};

/// A device by name: the CPU, or one NVIDIA GPU by its CUDA index.
///
/// Parsed from `cpu`, `cuda` (the first GPU, `cuda:0`) or `cuda:N`; displayed as `cpu` or
/// `cuda:N`. [`DeviceSpec::device`] opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// The CUDA GPU with this index (`cuda:N`; plain `cuda` is 0).
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device.
    ///
    /// # Errors
    /// [`Error::Device`] when this build of the crate has no CUDA support (it was built without
    /// the `cuda` feature) and a GPU is asked for, or when the CUDA driver cannot open GPU `N`
    /// (no GPU, no such index, a driver error); the message says which.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(Error::Device {
                        device: self.to_string(),
                        reason: "this build of fastai-infer has no CUDA support: build it with \
                                 `--features cuda`"
                            .into(),
                    });
                }
                open_cuda(n).map_err(|reason| Error::Device {
                    device: self.to_string(),
                    reason,
                })
            }
        }
    }
}

/// Opens GPU `n` through candle, turning its error (or a panic in the driver bindings) into a
/// message.
fn open_cuda(n: usize) -> std::result::Result<Device, String> {
    match std::panic::catch_unwind(|| Device::new_cuda(n)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(format!("cannot open CUDA GPU {n}: {e}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!(
                "cannot open CUDA GPU {n}: the CUDA bindings panicked: {what}"
            ))
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Device {
            device: s.to_string(),
            reason: "expected cpu, cuda or cuda:N (N the GPU's index, from 0)".into(),
        };
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                // Digits only: `usize::from_str` would also take a leading `+`.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                n.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_prints_them_back() {
        for (text, spec, shown) in [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:0", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:3", DeviceSpec::Cuda(3), "cuda:3"),
            ("cuda:007", DeviceSpec::Cuda(7), "cuda:7"),
        ] {
            let got: DeviceSpec = text.parse().unwrap();
            assert_eq!(got, spec, "{text}");
            assert_eq!(got.to_string(), shown);
            assert_eq!(shown.parse::<DeviceSpec>().unwrap(), spec);
        }
        assert_eq!(DeviceSpec::default(), DeviceSpec::Cpu);
    }

    #[test]
    fn refuses_other_names_naming_them() {
        for bad in [
            "",
            "gpu",
            "CPU",
            "Cuda",
            " cpu",
            "cpu ",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda:1.0",
            "cuda:x",
            "cuda:0:1",
            "cuda0",
            "cuda:99999999999999999999999999",
            "mps",
        ] {
            match bad.parse::<DeviceSpec>() {
                Err(Error::Device { device, reason }) => {
                    assert_eq!(device, bad);
                    assert!(reason.contains("expected cpu, cuda or cuda:N"), "{reason}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let msg = "gpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "device \"gpu\": expected cpu, cuda or cuda:N (N the GPU's index, from 0)"
        );
    }

    #[test]
    fn cpu_opens() {
        assert!(DeviceSpec::Cpu.device().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        for spec in [DeviceSpec::Cuda(0), DeviceSpec::Cuda(2)] {
            let e = spec.device().unwrap_err();
            assert!(matches!(&e, Error::Device { device, .. } if *device == spec.to_string()));
            let msg = e.to_string();
            assert!(
                msg.contains("no CUDA support") && msg.contains("--features cuda"),
                "{msg}"
            );
        }
    }

    /// With the feature, a GPU index no machine has is refused with candle's reason, not a
    /// panic (on a machine without a GPU every index is).
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_with_the_feature_refuses_a_missing_gpu() {
        let e = DeviceSpec::Cuda(4096).device().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot open CUDA GPU 4096"), "{msg}");
    }
}
