//! Hugging Face model directories: config.json, and weights from `model.safetensors` or the
//! shards listed in `model.safetensors.index.json`, memory-mapped (no copies at load).

use super::{names, Bytes, TensorRef, TensorSource};
use crate::error::{Error, Result};
use crate::quant::DType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one tensor lies: which shard, byte range, format and HF (torch-order) shape.
struct Entry {
    shard: usize,
    start: usize,
    len: usize,
    dtype: DType,
    shape: Vec<usize>,
}

pub struct SafetensorsDir {
    pub dir: PathBuf,
    shards: Vec<Arc<Mmap>>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Safetensors(format!("{}: {e}", index.display())))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Safetensors(format!("{}: no weight_map", index.display())))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            for n in &names {
                if n.contains('/') || n.contains("..") {
                    return Err(Error::Safetensors(format!("shard name '{n}' leaves the model directory")));
                }
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: read-only mapping of a file we do not modify.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| Error::Safetensors(format!("{}: {e}", path.display())))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let dtype = match info.dtype {
                    safetensors::Dtype::BF16 => DType::BF16,
                    safetensors::Dtype::F16 => DType::F16,
                    safetensors::Dtype::F32 => DType::F32,
                    other => {
                        return Err(Error::tensor(&name, format!("dtype {other:?} is not supported (bf16, f16, f32 are)")))
                    }
                };
                let (s, e) = info.data_offsets;
                // read_metadata has checked the offsets against the buffer.
                entries.insert(name, Entry { shard: i, start: data_start + s, len: e - s, dtype, shape: info.shape.clone() });
            }
            shards.push(Arc::new(mmap));
        }
        Ok(SafetensorsDir { dir: dir.to_path_buf(), shards, entries })
    }

    /// A tensor by its HF name, with the HF (torch-order) shape.
    pub fn hf_tensor(&self, hf: &str) -> Option<(DType, Vec<usize>, Bytes)> {
        let e = self.entries.get(hf)?;
        Some((e.dtype, e.shape.clone(), Bytes::slice_of(self.shards[e.shard].clone(), e.start, e.len)))
    }

    pub fn hf_names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }
}

impl TensorSource for SafetensorsDir {
    fn tensor(&self, name: &str) -> Option<TensorRef> {
        let hf = names::hf_name(name)?;
        let (dtype, mut shape, bytes) = self.hf_tensor(&hf)?;
        // torch order [out, in] -> GGUF order [in, out]
        shape.reverse();
        Some(TensorRef { name: name.to_string(), dtype, dims: shape, bytes })
    }
}
