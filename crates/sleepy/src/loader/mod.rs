pub mod bytes;
pub mod gguf;
pub mod gguf_write;
pub mod names;
pub mod safetensors;

pub use bytes::Bytes;

use crate::error::{Error, Result};
use crate::quant::DType;

/// One tensor as the decoder asks for it: GGUF name, format, GGUF-order dims (dims[0] is the
/// row length) and its bytes.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub bytes: Bytes,
}

/// Anything that can hand out tensors by their GGUF name (a GGUF file, or a Hugging Face
/// directory through the name table).
pub trait TensorSource {
    fn tensor(&self, name: &str) -> Option<TensorRef>;

    fn require(&self, name: &str) -> Result<TensorRef> {
        self.tensor(name).ok_or_else(|| Error::tensor(name, "missing from the model file"))
    }
}

impl TensorSource for gguf::GgufFile {
    fn tensor(&self, name: &str) -> Option<TensorRef> {
        let info = gguf::GgufFile::tensor(self, name)?;
        Some(TensorRef {
            name: info.name.clone(),
            dtype: info.dtype,
            dims: info.dims.iter().map(|&d| d as usize).collect(),
            bytes: self.tensor_bytes(info),
        })
    }
}
