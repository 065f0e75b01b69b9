//! Reading a checkpoint's tensors: safetensors with plain reads, or the legacy PyTorch pickle.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::files::WeightsFile;

/// Opens the weights for reading tensors by name, converting them to `dtype` on `device`.
pub fn open_weights(
    weights: &WeightsFile,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    match weights {
        WeightsFile::Safetensors(path) => {
            let reader = SafetensorsReader::open(path)
                .with_context(|| format!("cannot read weights {}", path.display()))?;
            Ok(VarBuilder::from_backend(
                Box::new(reader),
                dtype,
                device.clone(),
            ))
        }
        WeightsFile::Pytorch(path) => VarBuilder::from_pth(path, dtype, device)
            .with_context(|| format!("cannot read weights {}", path.display())),
    }
}

/// Reads tensors from a safetensors file one at a time, with plain reads. A memory map (candle's
/// way) would leave every page it touched resident next to the converted copy, doubling the
/// memory peak while the model loads.
struct SafetensorsReader {
    file: Mutex<File>,
    /// Where the data section begins, after the length and the JSON header.
    data_start: u64,
    tensors: HashMap<String, StoredTensor>,
}

struct StoredTensor {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range within the data section.
    offsets: (u64, u64),
}

/// A safetensors header longer than this is not one (the format caps it at 100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

impl SafetensorsReader {
    fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path)?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length)
            .context("too short for a safetensors file")?;
        let header_length = u64::from_le_bytes(length);
        ensure!(
            header_length <= MAX_SAFETENSORS_HEADER,
            "not a safetensors file (its header would be {header_length} bytes)"
        );
        let mut header = vec![0u8; header_length as usize];
        file.read_exact(&mut header)
            .context("the safetensors header is truncated")?;
        let header: HashMap<String, Value> =
            serde_json::from_slice(&header).context("the safetensors header is not JSON")?;
        let file_length = file.metadata()?.len();
        let data_start = 8 + header_length;
        let mut tensors = HashMap::new();
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let stored = StoredTensor::from_header(&info)
                .with_context(|| format!("bad safetensors entry for tensor {name}"))?;
            ensure!(
                data_start + stored.offsets.1 <= file_length,
                "tensor {name} lies past the end of the file: is it truncated?"
            );
            tensors.insert(name, stored);
        }
        Ok(SafetensorsReader {
            file: Mutex::new(file),
            data_start,
            tensors,
        })
    }

    fn stored(&self, name: &str) -> candle_core::Result<&StoredTensor> {
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })
    }

    fn read(&self, name: &str, stored: &StoredTensor) -> candle_core::Result<candle_core::Tensor> {
        let (start, end) = stored.offsets;
        let length = (end - start) as usize;
        let read_into = |bytes: &mut [u8]| -> std::io::Result<()> {
            let mut file = self.file.lock().expect("weights file lock poisoned");
            file.seek(SeekFrom::Start(self.data_start + start))?;
            file.read_exact(bytes)
        };
        // f32 (all of OpenAI's CLIP) is read straight into the tensor's own buffer: one pass
        // over fresh memory instead of two.
        if stored.dtype == DType::F32 && cfg!(target_endian = "little") {
            let mut values = vec![0.0f32; length / 4];
            // SAFETY: the bytes of an f32 slice; every bit pattern is a valid f32, and the file
            // stores little-endian values, as this machine reads them.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), length) };
            read_into(bytes)?;
            return candle_core::Tensor::from_vec(values, stored.shape.as_slice(), &Device::Cpu)
                .map_err(|err| err.context(format!("tensor {name}")));
        }
        let mut bytes = vec![0u8; length];
        read_into(&mut bytes)?;
        candle_core::Tensor::from_raw_buffer(&bytes, stored.dtype, &stored.shape, &Device::Cpu)
            .map_err(|err| err.context(format!("tensor {name}")))
    }
}

impl StoredTensor {
    fn from_header(info: &Value) -> Result<Self> {
        let dtype = match info["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            Some("I64") => DType::I64,
            Some("I32") => DType::I32,
            Some("U32") => DType::U32,
            Some("U8") => DType::U8,
            other => bail!("unsupported dtype {other:?}"),
        };
        let numbers = |key: &str| -> Result<Vec<u64>> {
            info[key]
                .as_array()
                .and_then(|items| items.iter().map(Value::as_u64).collect())
                .with_context(|| format!("{key} is not a list of numbers"))
        };
        let shape: Vec<usize> = numbers("shape")?.into_iter().map(|n| n as usize).collect();
        let offsets = match numbers("data_offsets")?[..] {
            [start, end] if start <= end => (start, end),
            _ => bail!("data_offsets is not [start, end]"),
        };
        let expected = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        ensure!(
            offsets.1 - offsets.0 == expected,
            "{} bytes stored for a {shape:?} {dtype:?} tensor",
            offsets.1 - offsets.0
        );
        Ok(StoredTensor {
            dtype,
            shape,
            offsets,
        })
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsReader {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let stored = self.stored(name)?;
        if stored.shape != shape.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: stored.shape.clone().into(),
            }
            .bt());
        }
        self.get_unchecked(name, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let stored = self.stored(name)?;
        self.read(name, stored)?.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Reads one tensor, naming it and the file when it is missing or of the wrong shape.
pub fn tensor(
    vb: &VarBuilder,
    shape: impl Into<candle_core::Shape>,
    name: &str,
) -> Result<candle_core::Tensor> {
    let shape = shape.into();
    vb.get(shape.clone(), name).map_err(|err| {
        let full_name = if vb.prefix().is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", vb.prefix())
        };
        if vb.contains_tensor(name) {
            // candle appends a backtrace on later lines when RUST_BACKTRACE is set; keep the cause.
            let cause = err.to_string();
            let cause = cause.lines().next().unwrap_or_default();
            anyhow!(
                "tensor {full_name} does not have the shape {shape:?} that config.json implies ({cause}); \
                 the weights and config.json are from different models"
            )
        } else {
            anyhow!(
                "the checkpoint has no tensor {full_name}; is it a CLIP model in Hugging Face format?"
            )
        }
    })
}
