//! Kernels are compiled at run time by NVRTC for the device's own architecture and cached
//! on disk under `$SLEEPY_HOME/kernels` (default `~/.cache/sleepy/kernels`), keyed by a hash
//! of the source, the options, the architecture and the NVRTC version.

use super::driver::{bind, check};
use crate::error::{Error, Result};
use cudarc::driver::sys;
use cudarc::nvrtc::sys as nvrtc;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};

/// Every kernel source, in the order they are compiled as one program.
const SOURCES: [(&str, &str); 9] = [
    ("prelude.cuh", include_str!("kernels/prelude.cuh")),
    ("rope.cu", include_str!("kernels/rope.cu")),
    // Here, before the GEMVs, as when its kernels were measured: placed after
    // prefill_attention.cu, NVRTC 13.5 schedules them differently (sm_90 SASS).
    ("decode_attention_mma.cu", include_str!("kernels/decode_attention_mma.cu")),
    ("decode_attention.cu", include_str!("kernels/decode_attention.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
    ("quant_units.cu", include_str!("kernels/quant_units.cu")),
    ("gemv_quant.cu", include_str!("kernels/gemv_quant.cu")),
    ("prefill_attention.cu", include_str!("kernels/prefill_attention.cu")),
    ("misc.cu", include_str!("kernels/misc.cu")),
];

fn nvrtc_check(r: nvrtc::nvrtcResult, what: &str) -> Result<()> {
    if r == nvrtc::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("NVRTC {what}: {r:?}")))
    }
}

fn nvrtc_version() -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: writes two ints.
    unsafe { nvrtc::nvrtcVersion(&mut a, &mut b) };
    (a, b)
}

/// The whole program's source text.
fn program_source() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// A short hash of every kernel's source: tuned launch shapes are only valid for the kernels
/// they were measured with.
pub(crate) fn source_hash() -> String {
    Sha256::digest(program_source().as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The compiled module image (CUBIN) for `arch`, from the disk cache or NVRTC.
pub(crate) fn cubin(arch: (i32, i32)) -> Result<Vec<u8>> {
    let src = program_source();
    let opts = options(arch);
    let ver = nvrtc_version();
    let mut h = Sha256::new();
    h.update(src.as_bytes());
    h.update(opts.join(" ").as_bytes());
    h.update(format!("nvrtc {}.{}", ver.0, ver.1).as_bytes());
    let key: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let dir = crate::fetch::cache_dir().join("kernels");
    let path = dir.join(format!("sleepy-sm{}{}-{key}.cubin", arch.0, arch.1));
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    let image = compile(&src, &opts)?;
    // The cache is an optimisation: failing to write it is not an error.
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &image).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(image)
}

fn compile(src: &str, opts: &[String]) -> Result<Vec<u8>> {
    let csrc = CString::new(src).map_err(|_| Error::Cuda("kernel source has a NUL byte".into()))?;
    let name = CString::new("sleepy.cu").unwrap_or_default();
    let copts: Vec<CString> = opts.iter().filter_map(|o| CString::new(o.as_str()).ok()).collect();
    let popts: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: NVRTC calls on a program we create and destroy here; buffers sized by NVRTC.
    unsafe {
        let mut prog = std::ptr::null_mut();
        nvrtc_check(nvrtc::nvrtcCreateProgram(&mut prog, csrc.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()), "create program")?;
        let compiled = nvrtc::nvrtcCompileProgram(prog, popts.len() as i32, popts.as_ptr());
        let mut log_len = 0usize;
        nvrtc::nvrtcGetProgramLogSize(prog, &mut log_len);
        let mut log = vec![0u8; log_len.max(1)];
        nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
        let log = CStr::from_bytes_until_nul(&log).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        if compiled != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            nvrtc::nvrtcDestroyProgram(&mut prog);
            return Err(Error::Cuda(format!("kernel compilation failed ({compiled:?}):\n{log}")));
        }
        let mut size = 0usize;
        let r = nvrtc::nvrtcGetCUBINSize(prog, &mut size);
        let mut image = vec![0u8; size];
        let r2 = if r == nvrtc::nvrtcResult::NVRTC_SUCCESS { nvrtc::nvrtcGetCUBIN(prog, image.as_mut_ptr() as *mut c_char) } else { r };
        nvrtc::nvrtcDestroyProgram(&mut prog);
        nvrtc_check(r2, "get CUBIN")?;
        if std::env::var_os("SLEEPY_NVRTC_LOG").is_some() {
            eprintln!("{log}");
        }
        Ok(image)
    }
}

/// NVRTC options for `arch`.
fn options(arch: (i32, i32)) -> Vec<String> {
    vec![format!("--gpu-architecture=sm_{}{}", arch.0, arch.1), "--std=c++17".to_string(), "-default-device".to_string()]
}

/// SLEEPY_CARVEOUT=P (0-100): every kernel prefers P% of the SM's L1/shared memory as shared
/// memory, to measure whether the driver's own choice keeps consecutive kernels off each
/// other's SMs (an SM changes its split only when idle, so the next kernel's blocks could not
/// start beside the previous kernel's; BENCHMARKS.md, session 12). Unset: the driver's choice.
fn carveout() -> Result<Option<i32>> {
    match std::env::var("SLEEPY_CARVEOUT") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<i32>() {
            Ok(p) if (0..=100).contains(&p) => Ok(Some(p)),
            _ => Err(Error::Cuda(format!("SLEEPY_CARVEOUT={v}: must be a percentage, 0 to 100"))),
        },
    }
}

/// The loaded module and its kernels by name.
pub(crate) struct Module {
    _module: sys::CUmodule,
    /// Kernel handle and the dynamic shared memory limit set on it so far.
    funcs: HashMap<String, (usize, u32)>,
}
// SAFETY: module and function handles are process-wide driver handles.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    pub(crate) fn load(image: &[u8]) -> Result<Module> {
        bind()?;
        let mut module = std::ptr::null_mut();
        // SAFETY: image is a CUBIN NVRTC produced for this device.
        check(unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr() as *const _) }, "load kernels")?;
        Ok(Module { _module: module, funcs: HashMap::new() })
    }

    /// The kernel `name` (looked up once), with its dynamic shared memory limit raised to
    /// `smem` bytes when that is over the default (48 KiB less its static shared memory); the
    /// limit it has now.
    pub(crate) fn func(&mut self, name: &str, smem: u32) -> Result<(usize, u32)> {
        let (f, limit) = match self.funcs.get(name) {
            Some(&e) => e,
            None => {
                let cname = CString::new(name).map_err(|_| Error::Cuda(format!("bad kernel name {name}")))?;
                let mut f = std::ptr::null_mut();
                // SAFETY: looks a name up in a loaded module.
                check(unsafe { sys::cuModuleGetFunction(&mut f, self._module, cname.as_ptr()) }, &format!("kernel {name}"))?;
                if let Some(c) = carveout()? {
                    // SAFETY: sets a hint on a function just looked up.
                    check(unsafe { sys::cuFuncSetAttribute(f, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, c) }, &format!("shared memory carveout of {name}"))?;
                }
                let mut fixed = 0i32;
                // SAFETY: reads an attribute of a function just looked up.
                check(unsafe { sys::cuFuncGetAttribute(&mut fixed, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, f) }, &format!("static shared memory of {name}"))?;
                let limit = (48 * 1024u32).saturating_sub(fixed.max(0) as u32);
                self.funcs.insert(name.to_string(), (f as usize, limit));
                (f as usize, limit)
            }
        };
        if smem > limit {
            // SAFETY: raises a per-function limit; the caller checked it against the device.
            check(
                unsafe {
                    sys::cuFuncSetAttribute(f as sys::CUfunction, sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                },
                &format!("shared memory of {name}"),
            )?;
            self.funcs.insert(name.to_string(), (f, smem));
            return Ok((f, smem));
        }
        Ok((f, limit))
    }
}

#[cfg(test)]
mod tests {
    /// The kernels compile for Hopper, Ampere and Turing wherever NVRTC can be loaded (no GPU
    /// needed).
    #[test]
    fn kernels_compile_with_nvrtc() {
        if super::super::driver::ensure_nvrtc().is_err() {
            eprintln!("SKIP kernels_compile_with_nvrtc: NVRTC not found");
            return;
        }
        for arch in [(9, 0), (8, 0), (7, 5)] {
            let mut opts = super::options(arch);
            if std::env::var_os("SLEEPY_NVRTC_LOG").is_some() {
                opts.push("--ptxas-options=-v".to_string());
            }
            match super::compile(&super::program_source(), &opts) {
                Ok(image) => assert!(!image.is_empty()),
                Err(e) => panic!("sm_{}{}: {e}", arch.0, arch.1),
            }
        }
    }
}
