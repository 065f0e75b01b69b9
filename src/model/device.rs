//! Where the model runs, named as `cpu`, `cuda` (or `gpu`) or `cuda:N`.

use candle_core::Device;

/// Why a device name gives no device.
#[derive(Debug)]
pub enum DeviceError {
    /// Not `cpu`, `cuda`, `gpu` or `cuda:N`.
    Unknown { spec: String },
    /// A CUDA device was asked of a build without the `cuda` feature.
    NoCudaSupport { spec: String },
    /// The build has CUDA, but GPU `ordinal` cannot be opened.
    NoGpu {
        spec: String,
        ordinal: usize,
        source: candle_core::Error,
    },
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Unknown { spec } => {
                write!(f, "unknown device {spec:?}; use cpu, cuda or cuda:N")
            }
            DeviceError::NoCudaSupport { spec } => write!(
                f,
                "device {spec}: this sclip was built without CUDA support; rebuild it with the \
                 `cuda` feature (needs the CUDA toolkit) or use the cpu"
            ),
            DeviceError::NoGpu { spec, ordinal, .. } => write!(
                f,
                "device {spec}: no usable CUDA GPU {ordinal}; check nvidia-smi, or use the cpu"
            ),
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceError::NoGpu { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The device `spec` names (case and surrounding blanks ignored).
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let ordinal = match spec.trim().to_ascii_lowercase().as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(DeviceError::Unknown {
                    spec: spec.to_string(),
                })
            }
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NoCudaSupport {
            spec: spec.to_string(),
        });
    }
    Device::new_cuda(ordinal).map_err(|source| DeviceError::NoGpu {
        spec: spec.to_string(),
        ordinal,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_unknown_ones_refused() {
        assert!(matches!(parse_device(" CPU "), Ok(Device::Cpu)));
        for spec in ["tpu", "cuda:x", "cuda:-1", ""] {
            assert!(
                matches!(parse_device(spec), Err(DeviceError::Unknown { .. })),
                "{spec}"
            );
        }
        if !candle_core::utils::cuda_is_available() {
            assert!(matches!(
                parse_device("cuda:1"),
                Err(DeviceError::NoCudaSupport { .. })
            ));
        }
    }
}
