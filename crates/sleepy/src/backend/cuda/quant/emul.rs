//! A CPU emulation of kernels/quant_units.cu, line by line (the same unit mapping, bit
//! tricks, integer dot products and activation quantization), tested here against the CPU
//! reference on fresh random blocks: the index math of the GPU kernels is checked on every
//! machine, with or without a GPU. Keep it in step with the .cu file. (One exception:
//! `dot_pair` builds a Q4_K / Q5_K pair from two single-unit loads, so the pair's own loads
//! are checked by the GPU tests alone.)

use super::layout::{k45_pos, repack, QFmt, ALL_FORMATS};
use crate::quant::{self, DType};
use rand::{Rng, SeedableRng};

/// The shared-memory activations of a GEMV block.
struct Acts {
    q: Vec<i8>,
    d32: Vec<f32>,
    s32: Vec<f32>,
    s16: Vec<i32>,
}

fn f16r(f: f32) -> f32 {
    half::f16::from_f32(f).to_f32()
}

/// `ActOf<FMT>`: 0 Q8_0, 1 Q8_1, 2 Q8_K.
fn act_of(fmt: QFmt) -> u32 {
    match fmt {
        QFmt::Q4K | QFmt::Q5K | QFmt::Q6K => 2,
        QFmt::Q4_1 | QFmt::Q5_1 => 1,
        _ => 0,
    }
}

/// act_slot: where chunk i (values 8i .. 8i + 7) goes in q, and the s16 slot of its 16 values
/// (unit order for the K-quants).
fn act_slot(fmt: QFmt, i: usize, k: usize) -> (usize, usize) {
    if act_of(fmt) != 2 {
        return (8 * i, i >> 1);
    }
    let (sb, r) = (i >> 5, (8 * i) & 255);
    let q6 = fmt == QFmt::Q6K;
    let p = if q6 { (r >> 6) & 1 } else { (r >> 5) & 1 };
    let cc = 8 * sb + if q6 { 4 * (r >> 7) + ((r >> 4) & 3) } else { 2 * (r >> 6) + ((r >> 4) & 1) };
    let pos = if q6 { cc } else { k45_pos(cc, k / 32) };
    (p * (k / 2) + 16 * pos + (r & 15), 2 * cc + p)
}

/// quantize_acts: 8 values per thread; 4 threads share a 32-block, a warp a 256-block.
fn quantize_acts(fmt: QFmt, x: &[f32], norm: Option<(&[f32], f32)>) -> Acts {
    let act = act_of(fmt);
    let k = x.len();
    let mut v: Vec<f32> = x.to_vec();
    if let Some((g, eps)) = norm {
        let ss = x.iter().map(|v| v * v).sum::<f32>();
        let scale = 1.0 / (ss / k as f32 + eps).sqrt();
        v.iter_mut().zip(g).for_each(|(v, g)| *v = *v * scale * g);
    }
    let mut a = Acts { q: vec![0; k], d32: vec![0.0; k / 32], s32: vec![0.0; k / 32], s16: vec![0; k / 16] };
    let group = if act == 2 { 256 } else { 32 };
    // In value order first; then each chunk of 8 to its slot.
    let mut q = vec![0i8; k];
    for (gi, blk) in v.chunks_exact(group).enumerate() {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let d = if act == 2 { if amax != 0.0 { 1.0 / id } else { 0.0 } } else { f16r(amax / 127.0) };
        for (j, &val) in blk.iter().enumerate() {
            q[gi * group + j] = (val * id).round_ties_even() as i32 as i8;
        }
        for b32 in 0..group / 32 {
            let at = gi * group / 32 + b32;
            a.d32[at] = d;
            let s16: Vec<i32> = (0..2).map(|h| q[32 * at + 16 * h..32 * at + 16 * h + 16].iter().map(|&q| q as i32).sum()).collect();
            for (h, &s) in s16.iter().enumerate() {
                // The int16 store of the K-quants' slots (|s| <= 16 * 127).
                a.s16[act_slot(fmt, 4 * at + 2 * h, k).1] = if act == 2 { s as i16 as i32 } else { s };
            }
            if act == 1 {
                a.s32[at] = f16r(amax / 127.0 * (s16[0] + s16[1]) as f32);
            }
        }
    }
    for (i, chunk) in q.chunks_exact(8).enumerate() {
        let at = act_slot(fmt, i, k).0;
        a.q[at..at + 8].copy_from_slice(chunk);
    }
    a
}

/// One segment as the kernel sees it: region slices.
struct Seg<'a> {
    r: [&'a [u8]; 4],
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn uint4(b: &[u8], at: usize) -> [u32; 4] {
    [u32_at(b, at), u32_at(b, at + 4), u32_at(b, at + 8), u32_at(b, at + 12)]
}
fn f16v(h: u32) -> f32 {
    half::f16::from_bits(h as u16).to_f32()
}
fn ubyte(w: u32, i: usize) -> i32 {
    ((w >> (8 * i)) & 0xff) as i32
}
fn sbyte(w: u32, i: usize) -> i32 {
    ((w >> (8 * i)) & 0xff) as u8 as i8 as i32
}
fn dot16(w: [u32; 4], a: &[i8]) -> i32 {
    (0..16).map(|j| sbyte(w[j / 4], j % 4) * a[j] as i32).sum()
}
fn spread4(b: u32) -> u32 {
    (((b & 0xF).wrapping_mul(0x0020_4081)) & 0x0101_0101) << 4
}

/// A loaded unit: quants, and the aux words each format reads.
struct Unit {
    q: [u32; 4],
    aux: [u32; 4],
    aux2: [u32; 4],
    d: f32,
}

fn load(fmt: QFmt, s: &Seg, row: usize, nb: usize, nu: usize, cc: usize) -> Unit {
    let pos = if matches!(fmt, QFmt::Q4K | QFmt::Q5K) { k45_pos(cc, nu) } else { cc };
    let q = uint4(s.r[0], 16 * (row * nu + pos));
    let mut u = Unit { q, aux: [0; 4], aux2: [0; 4], d: 0.0 };
    match fmt {
        QFmt::Q8_0 => u.d = f16v(u16_at(s.r[1], row * nb + (cc >> 1)) as u32),
        QFmt::Q4_0 | QFmt::Q5_0 => u.aux[0] = u16_at(s.r[1], row * nb + cc) as u32,
        QFmt::Q4_1 | QFmt::Q5_1 => u.aux[0] = u32_at(s.r[1], 4 * (row * nb + cc)),
        QFmt::Q4K | QFmt::Q5K => {
            let sb = row * nb + (cc >> 3);
            u.aux = uint4(s.r[1], 16 * sb);
            if fmt == QFmt::Q5K {
                u.aux2 = uint4(s.r[2], 32 * sb + 16 * (cc & 1));
            }
        }
        QFmt::Q6K => {
            let sb = row * nb + (cc >> 3);
            let wi = cc & 7;
            u.aux = uint4(s.r[1], 64 * sb + 32 * (wi >> 2) + 16 * (wi & 1));
            u.aux2 = uint4(s.r[2], 16 * sb);
            u.d = f16v(u16_at(s.r[3], sb) as u32);
        }
    }
    if matches!(fmt, QFmt::Q5_0 | QFmt::Q5_1) {
        u.aux[1] = u32_at(s.r[2], 4 * (row * nb + cc));
    }
    u
}

/// The lo and hi quant words (QLegacy / QK45 / QUnit<7> lo_word, hi_word) and the value
/// offsets of the two groups (hi None for Q8_0).
fn words(fmt: QFmt, u: &Unit, cc: usize) -> ([u32; 4], [u32; 4], usize, Option<usize>) {
    let (mut lo, mut hi) = ([0u32; 4], [0u32; 4]);
    match fmt {
        QFmt::Q8_0 => return (u.q, hi, 16 * cc, None),
        QFmt::Q4_0 | QFmt::Q4_1 | QFmt::Q5_0 | QFmt::Q5_1 => {
            let five = matches!(fmt, QFmt::Q5_0 | QFmt::Q5_1);
            for i in 0..4 {
                lo[i] = u.q[i] & 0x0F0F_0F0F;
                hi[i] = (u.q[i] >> 4) & 0x0F0F_0F0F;
                if five {
                    lo[i] |= spread4(u.aux[1] >> (4 * i));
                    hi[i] |= spread4(u.aux[1] >> (16 + 4 * i));
                }
            }
            (lo, hi, 32 * cc, Some(32 * cc + 16))
        }
        QFmt::Q4K | QFmt::Q5K => {
            let c = (cc & 7) >> 1;
            for i in 0..4 {
                lo[i] = u.q[i] & 0x0F0F_0F0F;
                hi[i] = (u.q[i] >> 4) & 0x0F0F_0F0F;
                if fmt == QFmt::Q5K {
                    lo[i] |= ((u.aux2[i] >> (2 * c)) & 0x0101_0101) << 4;
                    hi[i] |= ((u.aux2[i] >> (2 * c + 1)) & 0x0101_0101) << 4;
                }
            }
            let vl = 256 * (cc >> 3) + 64 * c + 16 * (cc & 1);
            (lo, hi, vl, Some(vl + 32))
        }
        QFmt::Q6K => {
            let s = if (cc & 3) >= 2 { 2 } else { 0 };
            for i in 0..4 {
                lo[i] = (u.q[i] & 0x0F0F_0F0F) | (((u.aux[i] >> s) & 0x0303_0303) << 4);
                hi[i] = ((u.q[i] >> 4) & 0x0F0F_0F0F) | (((u.aux[i] >> (s + 4)) & 0x0303_0303) << 4);
            }
            let vl = 256 * (cc >> 3) + 128 * ((cc & 7) >> 2) + 16 * (cc & 3);
            (lo, hi, vl, Some(vl + 64))
        }
    }
}

/// QK45::scale_word: (s0, s1, m0, m1) of sub-blocks 2c and 2c + 1.
fn k_scales(meta: &[u32; 4], c: usize) -> (i32, i32, i32, i32) {
    let lo = ((if c < 2 { meta[1] } else { meta[2] }) >> (4 * (c & 1))) & 0x0F0F_0F0F;
    let w = lo | (((meta[3] >> (2 * c)) & 0x0303_0303) << 4);
    (ubyte(w, 0), ubyte(w, 1), ubyte(w, 2), ubyte(w, 3))
}

/// QUnit<7>::scales: (lo, hi).
fn q6_scales(sc: &[u32; 4], cc: usize) -> (i32, i32) {
    let (h, j) = ((cc & 7) >> 2, cc & 3);
    (sbyte(if h == 1 { sc[2] } else { sc[0] }, j), sbyte(if h == 1 { sc[3] } else { sc[1] }, j))
}

fn dot(fmt: QFmt, u: &Unit, cc: usize, a: &Acts) -> f32 {
    let (lw, hw, vl, vh) = words(fmt, u, cc);
    if act_of(fmt) == 2 {
        // Unit order: the lo and hi groups' activations, sums and scale at cc (the kernels
        // keep the two sums and the scale in one 8-byte record a unit: the same values).
        let half = a.q.len() / 2;
        let lo = dot16(lw, &a.q[16 * cc..16 * cc + 16]);
        let hi = dot16(hw, &a.q[half + 16 * cc..half + 16 * cc + 16]);
        let (slo, shi, da) = (a.s16[2 * cc], a.s16[2 * cc + 1], a.d32[cc]);
        return match fmt {
            QFmt::Q6K => {
                let (sl, sh) = q6_scales(&u.aux2, cc);
                u.d * da * (sl * (lo - 32 * slo) + sh * (hi - 32 * shi)) as f32
            }
            _ => unreachable!("Q4_K and Q5_K take pairs of units (dot_pair)"),
        };
    }
    let lo = dot16(lw, &a.q[vl..vl + 16]);
    let hi = vh.map_or(0, |vh| dot16(hw, &a.q[vh..vh + 16]));
    match fmt {
        QFmt::Q8_0 => u.d * a.d32[vl >> 5] * lo as f32,
        QFmt::Q4_0 | QFmt::Q5_0 => {
            let off = if fmt == QFmt::Q5_0 { 16 } else { 8 };
            f16v(u.aux[0] & 0xffff) * a.d32[cc] * (lo + hi - off * (a.s16[2 * cc] + a.s16[2 * cc + 1])) as f32
        }
        QFmt::Q4_1 | QFmt::Q5_1 => f16v(u.aux[0] & 0xffff) * a.d32[cc] * (lo + hi) as f32 + f16v(u.aux[0] >> 16) * a.s32[cc],
        // Unit order, above.
        QFmt::Q4K | QFmt::Q5K | QFmt::Q6K => unreachable!("K-quant activations are in unit order"),
    }
}

/// QK45Pair::dot (the decode GEMVs' Q4_K / Q5_K unit): units 2 pc and 2 pc + 1 of a row,
/// each sub-block's 32 products in one integer sum, the scales applied once.
fn dot_pair(fmt: QFmt, a0: &Unit, a1: &Unit, pc: usize, a: &Acts) -> f32 {
    let (cc, half) = (2 * pc, a.q.len() / 2);
    let (l0, h0, _, _) = words(fmt, a0, cc);
    let (l1, h1, _, _) = words(fmt, a1, cc + 1);
    // The activations in the weights' even-odd order: at 16 pc in each half.
    let (e, o) = (16 * pc, 16 * pc + half / 2);
    let lo = dot16(l0, &a.q[e..e + 16]) + dot16(l1, &a.q[o..o + 16]);
    let hi = dot16(h0, &a.q[half + e..half + e + 16]) + dot16(h1, &a.q[half + o..half + o + 16]);
    let (s0, s1, m0, m1) = k_scales(&a0.aux, pc & 3);
    let (slo, shi) = (a.s16[2 * cc] + a.s16[2 * cc + 2], a.s16[2 * cc + 1] + a.s16[2 * cc + 3]);
    let da = a.d32[cc];
    let (dx, dmin) = (f16v(a0.aux[0] & 0xffff) * da, f16v(a0.aux[0] >> 16) * da);
    dx * (s0 * lo + s1 * hi) as f32 - dmin * (m0 * slo + m1 * shi) as f32
}

/// One row's GEMV sum as the decode kernels take it: over their units (GemvUnit: pairs for
/// Q4_K and Q5_K), in unit order.
fn gemv_row(fmt: QFmt, s: &Seg, row: usize, nb: usize, nu: usize, a: &Acts) -> f32 {
    if matches!(fmt, QFmt::Q4K | QFmt::Q5K) {
        return (0..nu / 2).map(|pc| dot_pair(fmt, &load(fmt, s, row, nb, nu, 2 * pc), &load(fmt, s, row, nb, nu, 2 * pc + 1), pc, a)).sum();
    }
    (0..nu).map(|cc| dot(fmt, &load(fmt, s, row, nb, nu, cc), cc, a)).sum()
}

/// `values`: the unit's dequantized weights at their row offsets.
fn values(fmt: QFmt, u: &Unit, cc: usize, out: &mut [f32]) {
    let (lw, hw, vl, vh) = words(fmt, u, cc);
    let get = |w: &[u32; 4], i: usize| ubyte(w[i / 4], i % 4);
    for i in 0..16 {
        let (l, h) = (get(&lw, i), get(&hw, i));
        let (lo, hi) = match fmt {
            QFmt::Q8_0 => (sbyte(lw[i / 4], i % 4) as f32 * u.d, 0.0),
            QFmt::Q4_0 | QFmt::Q5_0 => {
                let (d, off) = (f16v(u.aux[0] & 0xffff), if fmt == QFmt::Q5_0 { 16 } else { 8 });
                ((l - off) as f32 * d, (h - off) as f32 * d)
            }
            QFmt::Q4_1 | QFmt::Q5_1 => {
                let (d, m) = (f16v(u.aux[0] & 0xffff), f16v(u.aux[0] >> 16));
                (l as f32 * d + m, h as f32 * d + m)
            }
            QFmt::Q4K | QFmt::Q5K => {
                let (s0, s1, m0, m1) = k_scales(&u.aux, (cc & 7) >> 1);
                let (d, dmin) = (f16v(u.aux[0] & 0xffff), f16v(u.aux[0] >> 16));
                ((d * s0 as f32) * l as f32 - dmin * m0 as f32, (d * s1 as f32) * h as f32 - dmin * m1 as f32)
            }
            QFmt::Q6K => {
                let (slo, shi) = q6_scales(&u.aux2, cc);
                ((u.d * slo as f32) * (l - 32) as f32, (u.d * shi as f32) * (h - 32) as f32)
            }
        };
        out[vl + i] = lo;
        if let Some(vh) = vh {
            out[vh + i] = hi;
        }
    }
}

fn seg<'a>(bytes: &'a [u8], off: &[usize; 4]) -> Seg<'a> {
    Seg { r: [&bytes[off[0]..], &bytes[off[1]..], &bytes[off[2]..], &bytes[off[3]..]] }
}

fn geometry(fmt: QFmt, k: usize) -> (usize, usize) {
    (fmt.units_per_row(k), k / fmt.dtype().block_len())
}

fn random(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (r.random::<f32>() * 2.0 - 1.0) * scale + scale * 1e-3).collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Rows of random weights quantized with the CPU quantizer, in the file's layout.
fn random_rows(r: &mut impl Rng, dtype: DType, rows: usize, k: usize) -> Vec<u8> {
    let rb = dtype.row_bytes(k).expect("whole blocks");
    let mut out = vec![0u8; rows * rb];
    for row in out.chunks_exact_mut(rb) {
        quant::quantize_row(dtype, &random(r, k, 0.1), row);
    }
    out
}

#[test]
fn emulated_gemv_matches_cpu_dot() {
    let mut r = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9);
    for fmt in ALL_FORMATS {
        let dtype = fmt.dtype();
        let bl = dtype.block_len();
        for (rows, blocks) in [(5, 1), (3, 2), (7, 10), (2, 38)] {
            let k = blocks * bl.max(32);
            let bytes = random_rows(&mut r, dtype, rows, k);
            let (packed, off) = repack("w", fmt, k, rows, &bytes).unwrap();
            let s = seg(&packed, &off);
            let (nu, nb) = geometry(fmt, k);
            for with_norm in [false, true] {
                let x = random(&mut r, k, 1.0);
                let g: Vec<f32> = random(&mut r, k, 0.2).iter().map(|v| 1.0 + v).collect();
                let norm = with_norm.then_some((g.as_slice(), 1e-6f32));
                let acts = quantize_acts(fmt, &x, norm);
                // The CPU's input: the normed row, as CpuBackend::rmsnorm computes it.
                let xin: Vec<f32> = match norm {
                    Some((g, eps)) => {
                        let scale = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / k as f32 + eps).sqrt();
                        x.iter().zip(g).map(|(v, g)| v * scale * g).collect()
                    }
                    None => x.clone(),
                };
                let prepared = quant::prepare_acts(dtype, &xin);
                let rb = dtype.row_bytes(k).unwrap();
                let (mut gpu, mut cpu) = (Vec::new(), Vec::new());
                for row in 0..rows {
                    let w = &bytes[row * rb..(row + 1) * rb];
                    let got = gemv_row(fmt, &s, row, nb, nu, &acts);
                    gpu.push(got);
                    cpu.push(quant::dot_prepared(dtype, w, &prepared));
                    // Against the exact dot, relative to the size of its terms: only the int8
                    // rounding of the activations separates them.
                    let mut wf = vec![0f32; k];
                    quant::dequantize_row(dtype, w, &mut wf);
                    let mag: f32 = wf.iter().zip(&xin).map(|(a, b)| (a * b).abs()).sum();
                    let e = (got - quant::dot_f32(dtype, w, &xin)).abs() / mag;
                    assert!(e < 1e-2, "{fmt:?} row {row} k={k} norm={with_norm}: {e:e} against the f32 dot");
                }
                let e = rel_err(&gpu, &cpu);
                assert!(e < 1e-5, "{fmt:?} rows={rows} k={k} norm={with_norm}: {e:e} against the CPU fast path");
            }
        }
    }
}

#[test]
fn emulated_dequant_matches_cpu_bit_for_bit() {
    let mut r = rand::rngs::StdRng::seed_from_u64(77);
    for fmt in ALL_FORMATS {
        let dtype = fmt.dtype();
        let (rows, k) = (3, 2 * dtype.block_len().max(32));
        let bytes = random_rows(&mut r, dtype, rows, k);
        let (packed, off) = repack("w", fmt, k, rows, &bytes).unwrap();
        let s = seg(&packed, &off);
        let (nu, nb) = geometry(fmt, k);
        let rb = dtype.row_bytes(k).unwrap();
        for row in 0..rows {
            let mut want = vec![0f32; k];
            quant::dequantize_row(dtype, &bytes[row * rb..(row + 1) * rb], &mut want);
            let mut got = vec![f32::NAN; k];
            for cc in 0..nu {
                values(fmt, &load(fmt, &s, row, nb, nu, cc), cc, &mut got);
            }
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{fmt:?} row {row}");
        }
    }
}

/// Real tensors written by GGML's own quantizer (the cached test models, when present; no
/// fetch here): Q5_0, Q8_0, Q4_K and Q6_K of Qwen2.5-Coder's Q4_K_M file, Q4_1 of SmolLM2.
#[test]
fn emulated_gemv_matches_cpu_on_real_gguf_tensors() {
    use crate::loader::TensorSource;
    let files = [
        ("qwen2.5-coder-0.5b-instruct.gguf", &["blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight", "blk.1.ffn_down.weight", "token_embd.weight"][..]),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", &["blk.0.attn_q.weight", "blk.0.ffn_down.weight"][..]),
    ];
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    for (file, names) in files {
        let path = crate::fetch::cache_dir().join(file);
        let Ok(gguf) = crate::loader::gguf::GgufFile::open(&path) else {
            eprintln!("SKIP {file}: not in the model cache");
            continue;
        };
        // Plus the first Q4_K down projection (Q4_K_M alternates Q4_K and Q6_K by layer).
        let q4k = (0..64).map(|i| format!("blk.{i}.ffn_down.weight")).find(|n| gguf.tensor(n).is_some_and(|t| t.dtype == DType::Q4K));
        for name in names.iter().map(|n| n.to_string()).chain(q4k) {
            let name = name.as_str();
            let t = gguf.require(name).unwrap();
            let Some(fmt) = QFmt::of(t.dtype) else { continue };
            let (k, dtype) = (t.dims[0], t.dtype);
            let rb = dtype.row_bytes(k).unwrap();
            let rows = (t.bytes.len() / rb).min(64);
            let bytes = &t.bytes.as_slice()[..rows * rb];
            let (packed, off) = repack(name, fmt, k, rows, bytes).unwrap();
            let s = seg(&packed, &off);
            let (nu, nb) = geometry(fmt, k);
            let x = random(&mut r, k, 1.0);
            let acts = quantize_acts(fmt, &x, None);
            let prepared = quant::prepare_acts(dtype, &x);
            let mut got = Vec::new();
            let mut want = Vec::new();
            for row in 0..rows {
                got.push(gemv_row(fmt, &s, row, nb, nu, &acts));
                want.push(quant::dot_prepared(dtype, &bytes[row * rb..(row + 1) * rb], &prepared));
                let mut deq = vec![0f32; k];
                quant::dequantize_row(dtype, &bytes[row * rb..(row + 1) * rb], &mut deq);
                let mut vals = vec![f32::NAN; k];
                for cc in 0..nu {
                    values(fmt, &load(fmt, &s, row, nb, nu, cc), cc, &mut vals);
                }
                assert!(vals.iter().zip(&deq).all(|(a, b)| a.to_bits() == b.to_bits()), "{file} {name} row {row}: dequantized values");
            }
            let e = rel_err(&got, &want);
            eprintln!("{file} {name} ({}): {e:.2e}", dtype.name());
            assert!(e < 1e-5, "{file} {name}: {e:e} against the CPU fast path");
        }
    }
}
