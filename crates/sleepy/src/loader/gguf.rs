//! GGUF reader (versions 2 and 3): header, metadata of every value type, tensor table and
//! memory-mapped tensor data. Every length, offset and size is checked against the file
//! before it is used, so a truncated or corrupted file gives an error naming what is wrong.

use crate::error::{Error, Result};
use crate::quant::DType;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::bytes::Bytes;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value. Arrays keep their element values (tokenizer vocabularies are arrays
/// of strings).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type as u64 (negative values are rejected).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: dims[0] is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub n_bytes: usize,
}

pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: Arc<Mmap>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is
        // not truncated by another process while the model runs.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(mmap)
    }

    fn parse(mmap: Mmap) -> Result<GgufFile> {
        let mut r = Reader { buf: &mmap, pos: 0 };
        let magic = r.bytes(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::Gguf(format!("bad magic {:?}, expected \"GGUF\"", magic)));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf(format!("unsupported version {version} (supported: 2, 3)")));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each entry needs at least a few bytes, so counts beyond the file size are corrupt.
        let remaining = (r.buf.len() - r.pos) as u64;
        if n_tensors > remaining / 8 || n_kv > remaining / 8 {
            return Err(Error::Gguf(format!(
                "absurd counts: {n_tensors} tensors, {n_kv} metadata entries in a {} byte file",
                r.buf.len()
            )));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of metadata '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let n_dims = r.u32(&format!("dims of tensor '{name}'"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::tensor(&name, format!("{n_dims} dimensions (expected 1 to 4)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("shape of tensor '{name}'"))?);
            }
            let ty = r.u32(&format!("type of tensor '{name}'"))?;
            let offset = r.u64(&format!("offset of tensor '{name}'"))?;
            infos.push((name, dims, ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| *a > 0 && a.is_power_of_two()).ok_or_else(|| {
                Error::Gguf(format!("general.alignment {v:?} is not a power of two"))
            })?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ty, offset) in infos {
            let dtype = DType::from_ggml(ty)
                .ok_or_else(|| Error::tensor(&name, format!("unsupported GGML type id {ty}")))?;
            let n_elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let n_elems = n_elems.ok_or_else(|| Error::tensor(&name, "shape overflows"))?;
            let row = dims[0] as usize;
            let row_bytes = dtype.row_bytes(row).ok_or_else(|| {
                Error::tensor(&name, format!("row length {row} is not a multiple of the {} block", dtype.name()))
            })? as u64;
            let n_bytes = (n_elems / dims[0].max(1))
                .checked_mul(row_bytes)
                .ok_or_else(|| Error::tensor(&name, "size overflows"))?;
            if offset % alignment != 0 {
                return Err(Error::tensor(&name, format!("offset {offset} is not aligned to {alignment}")));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => tensors.push(TensorInfo {
                    name,
                    dims,
                    dtype,
                    offset: s as usize,
                    n_bytes: n_bytes as usize,
                }),
                _ => {
                    return Err(Error::tensor(
                        &name,
                        format!(
                            "data [{data_start}+{offset}, +{n_bytes}) lies past the end of the file ({file_len} bytes): truncated file?"
                        ),
                    ))
                }
            }
        }
        Ok(GgufFile { version, metadata, tensors, mmap: Arc::new(mmap) })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// The bytes of a tensor, borrowed from the memory map (no copy).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.n_bytes]
    }
    /// The same bytes as a shared handle that keeps the file mapped.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Bytes {
        Bytes::slice_of(self.mmap.clone(), info.offset, info.n_bytes)
    }
}

/// Bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Nesting depth of arrays allowed in metadata (real files use 1).
const MAX_DEPTH: u32 = 4;

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(Error::Gguf(format!(
                "file ends while reading {what} ({n} bytes at offset {} of {}): truncated file?",
                self.pos,
                self.buf.len()
            ))),
        }
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len() - self.pos)
            .ok_or_else(|| Error::Gguf(format!("{what}: length {n} exceeds the rest of the file")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let bytes = self.bytes(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::Gguf(format!("{what} at offset {} is not valid UTF-8", self.pos - n)))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(Error::Gguf(format!("metadata '{key}': arrays nested too deep")));
                }
                let elem_ty = self.u32(key)?;
                let n = self.len(key)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(Error::Gguf(format!("metadata '{key}': unknown value type {t}"))),
        })
    }
}
