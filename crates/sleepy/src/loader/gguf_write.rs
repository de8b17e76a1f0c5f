//! GGUF v3 writer: header, metadata of every value type (arrays included, nested too), the
//! tensor table and the tensor data, each tensor aligned to 32 bytes (GGUF's default, so no
//! `general.alignment` key is needed). Used by `sleepy convert` and by tests.
//!
//! The tensor table must be written before any data, but a converted model does not fit in
//! memory all at once: tensors are declared first (name, format, shape: enough to place
//! them), and their bytes are asked for one at a time while the file is written.

use super::gguf::Value;
use crate::error::{Error, Result};
use crate::quant::DType;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const ALIGNMENT: usize = 32;
const VERSION: u32 = 3;

/// A tensor to be written: GGUF name, stored format and GGUF-order dims (dims[0] is the row
/// length).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<u64>,
    /// Bytes of data, checked against the format's block geometry when declared.
    pub n_bytes: usize,
}

#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorPlan>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Set a metadata key (a second call with the same key replaces the value).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    pub fn tensors(&self) -> &[TensorPlan] {
        &self.tensors
    }

    /// Declare the next tensor of the file.
    pub fn add_tensor(&mut self, name: &str, dtype: DType, dims: &[u64]) -> Result<()> {
        if dims.is_empty() || dims.len() > 4 {
            return Err(Error::tensor(name, format!("{} dimensions (GGUF allows 1 to 4)", dims.len())));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::tensor(name, "declared twice"));
        }
        let row = usize::try_from(dims[0]).map_err(|_| Error::tensor(name, "row length overflows"))?;
        let row_bytes = dtype
            .row_bytes(row)
            .ok_or_else(|| Error::tensor(name, format!("row length {row} is not a multiple of the {} block", dtype.name())))?;
        let n_rows = dims[1..].iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n_bytes = n_rows
            .and_then(|r| usize::try_from(r).ok())
            .and_then(|r| r.checked_mul(row_bytes))
            .ok_or_else(|| Error::tensor(name, "size overflows"))?;
        self.tensors.push(TensorPlan { name: name.to_string(), dtype, dims: dims.to_vec(), n_bytes });
        Ok(())
    }

    /// Write the file. `data(i, plan)` returns the bytes of the i-th declared tensor, exactly
    /// `plan.n_bytes` of them. The file appears at `path` only once it is complete (it is
    /// written beside it first), so a failed conversion leaves no truncated model behind.
    pub fn write(&self, path: &Path, data: &mut dyn FnMut(usize, &TensorPlan) -> Result<Vec<u8>>) -> Result<()> {
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        let result = self.write_to(&part, data).and_then(|_| std::fs::rename(&part, path).map_err(|e| Error::io(path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }

    fn write_to(&self, path: &Path, data: &mut dyn FnMut(usize, &TensorPlan) -> Result<Vec<u8>>) -> Result<()> {
        let io = |e: std::io::Error| Error::io(path, e);
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = Counted { inner: BufWriter::with_capacity(1 << 20, file), pos: 0 };
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&value_type(value, key)?.to_le_bytes());
            put_value(&mut head, value, key)?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.n_bytes).next_multiple_of(ALIGNMENT);
        }
        w.write_all(&head).map_err(io)?;
        w.pad().map_err(io)?;
        for (i, t) in self.tensors.iter().enumerate() {
            let bytes = data(i, t)?;
            if bytes.len() != t.n_bytes {
                return Err(Error::tensor(&t.name, format!("{} bytes of data, expected {}", bytes.len(), t.n_bytes)));
            }
            w.write_all(&bytes).map_err(io)?;
            w.pad().map_err(io)?;
        }
        let file = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }
}

/// A writer that knows its position, to pad to the alignment.
struct Counted<W: Write> {
    inner: W,
    pos: usize,
}

impl<W: Write> Counted<W> {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.pos += b.len();
        self.inner.write_all(b)
    }
    fn pad(&mut self) -> std::io::Result<()> {
        let n = self.pos.next_multiple_of(ALIGNMENT) - self.pos;
        self.write_all(&[0u8; ALIGNMENT][..n])
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF type id of a value.
fn value_type(v: &Value, key: &str) -> Result<u32> {
    Ok(match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(items) => {
            // Elements of one array share one type id, written once.
            if let Some(first) = items.first() {
                let ty = value_type(first, key)?;
                for item in items {
                    if value_type(item, key)? != ty {
                        return Err(Error::Gguf(format!("metadata '{key}': array elements of different types")));
                    }
                }
            }
            9
        }
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    })
}

fn put_value(out: &mut Vec<u8>, v: &Value, key: &str) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array still needs an element type; any is valid, u8 is the smallest.
            let elem_ty = match items.first() {
                Some(first) => value_type(first, key)?,
                None => 0,
            };
            out.extend_from_slice(&elem_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item, key)?;
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}
