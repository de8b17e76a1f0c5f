// Temporary stub: replaced by the quant branch. The signatures are the contract.
use super::DType;
impl DType {
    pub fn from_ggml(id: u32) -> Option<DType> {
        Some(match id { 0 => DType::F32, 1 => DType::F16, 2 => DType::Q4_0, 3 => DType::Q4_1, 6 => DType::Q5_0, 7 => DType::Q5_1, 8 => DType::Q8_0, 12 => DType::Q4K, 13 => DType::Q5K, 14 => DType::Q6K, 30 => DType::BF16, _ => return None })
    }
    pub fn ggml_id(self) -> u32 { match self { DType::F32 => 0, DType::F16 => 1, DType::Q4_0 => 2, DType::Q4_1 => 3, DType::Q5_0 => 6, DType::Q5_1 => 7, DType::Q8_0 => 8, DType::Q4K => 12, DType::Q5K => 13, DType::Q6K => 14, DType::BF16 => 30 } }
    pub fn block_len(self) -> usize { match self { DType::F32 | DType::F16 | DType::BF16 => 1, DType::Q4K | DType::Q5K | DType::Q6K => 256, _ => 32 } }
    pub fn block_bytes(self) -> usize { match self { DType::F32 => 4, DType::F16 | DType::BF16 => 2, DType::Q8_0 => 34, DType::Q4_0 => 18, DType::Q4_1 => 20, DType::Q5_0 => 22, DType::Q5_1 => 24, DType::Q4K => 144, DType::Q5K => 176, DType::Q6K => 210 } }
    pub fn row_bytes(self, k: usize) -> Option<usize> { (k % self.block_len() == 0).then(|| k / self.block_len() * self.block_bytes()) }
    pub fn name(self) -> &'static str { match self { DType::F32 => "f32", DType::F16 => "f16", DType::BF16 => "bf16", DType::Q8_0 => "q8_0", DType::Q4_0 => "q4_0", DType::Q4_1 => "q4_1", DType::Q5_0 => "q5_0", DType::Q5_1 => "q5_1", DType::Q4K => "q4_k", DType::Q5K => "q5_k", DType::Q6K => "q6_k" } }
    /// Parse a name as written by `name()` (for `--quant`, `--type`).
    pub fn from_name(s: &str) -> Option<DType> { [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K].into_iter().find(|d| d.name() == s) }
    pub fn is_quantized(self) -> bool { self.block_len() > 1 }
}
pub struct PreparedActs { _x: Vec<f32> }
// Plain float formats only (the CUDA branch's tests need bf16/f16 on the CPU reference).
fn value(d: DType, b: &[u8], i: usize) -> f32 {
    match d {
        DType::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        DType::F16 => half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        DType::BF16 => half::bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
        _ => todo!(),
    }
}
pub fn dequantize_row(d: DType, s: &[u8], o: &mut [f32]) { for (i, v) in o.iter_mut().enumerate() { *v = value(d, s, i); } }
pub fn quantize_row(d: DType, s: &[f32], o: &mut [u8]) {
    for (i, &v) in s.iter().enumerate() {
        match d {
            DType::F32 => o[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes()),
            DType::F16 => o[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::BF16 => o[2 * i..2 * i + 2].copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            _ => todo!(),
        }
    }
}
pub fn dot_f32(d: DType, row: &[u8], x: &[f32]) -> f32 { x.iter().enumerate().map(|(i, &v)| value(d, row, i) * v).sum() }
pub fn prepare_acts(_d: DType, x: &[f32]) -> PreparedActs { PreparedActs { _x: x.to_vec() } }
pub fn dot_prepared(d: DType, r: &[u8], a: &PreparedActs) -> f32 { dot_f32(d, r, &a._x) }
