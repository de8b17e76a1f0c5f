//! The thin layer over the CUDA driver: finding the libraries (so users need not set
//! LD_LIBRARY_PATH), the device and its context, device memory, kernel launches (eager or
//! recorded) and graph replay of recorded launches.

use crate::error::{Error, Result};
use cudarc::driver::sys;
use std::cell::Cell;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub(crate) fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("{what}: {r:?}")))
    }
}

/// Folders where CUDA libraries usually live: the toolkit's, the driver's and the pip
/// wheels' (the nvidia-* packages PyTorch installs).
fn lib_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            roots.push(PathBuf::from(v));
        }
    }
    roots.push(PathBuf::from("/usr/local/cuda"));
    if let Ok(rd) = std::fs::read_dir("/usr/local") {
        let mut more: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cuda-"))).collect();
        more.sort();
        more.reverse(); // newest toolkit first
        roots.extend(more);
    }
    let mut dirs = Vec::new();
    for r in roots {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"] {
            dirs.push(r.join(sub));
        }
    }
    for d in ["/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib"] {
        dirs.push(PathBuf::from(d));
    }
    // Python wheels: <prefix>/lib/python3.X/{site,dist}-packages/nvidia/<pkg>/lib
    let mut prefixes = vec![PathBuf::from("/usr/local/lib"), PathBuf::from("/usr/lib")];
    if let Ok(rd) = std::fs::read_dir("/opt") {
        prefixes.extend(rd.flatten().map(|e| e.path().join(".venv/lib")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local/lib"));
    }
    for p in prefixes {
        for py in read_dir_names(&p).into_iter().filter(|n| n.starts_with("python3")) {
            for pk in ["site-packages", "dist-packages"] {
                let nv = p.join(&py).join(pk).join("nvidia");
                for sub in read_dir_names(&nv) {
                    dirs.push(nv.join(sub).join("lib"));
                }
            }
        }
    }
    dirs
}

fn read_dir_names(p: &Path) -> Vec<String> {
    std::fs::read_dir(p).map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect()).unwrap_or_default()
}

/// Load `lib<name>.so*` from the usual folders and keep it loaded, so that cudarc's later
/// load by soname finds it already in the process.
fn preload(name: &str) -> bool {
    let prefix = format!("lib{name}.so");
    for dir in lib_dirs() {
        let mut files: Vec<String> = read_dir_names(&dir).into_iter().filter(|f| f.starts_with(&prefix)).collect();
        // Longest (most specific version) first: libnvrtc.so.13.0.88 before libnvrtc.so.
        files.sort_by_key(|f| std::cmp::Reverse(f.len()));
        for f in files {
            // SAFETY: loading a CUDA library runs its initialisers, which is what the
            // driver's users do anyway.
            if let Ok(lib) = unsafe { libloading::Library::new(dir.join(&f)) } {
                std::mem::forget(lib);
                return true;
            }
        }
    }
    false
}

/// Make sure the driver (and, when asked, NVRTC or cuBLAS) can be loaded; never panics.
pub(crate) fn ensure_libs() -> Result<()> {
    // SAFETY: probing for a shared library.
    if !unsafe { sys::is_culib_present() } {
        preload("cuda");
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda("no CUDA driver (libcuda.so) found: is an NVIDIA driver installed?".into()));
        }
    }
    ensure_nvrtc()
}

/// Make sure NVRTC can be loaded (it needs no GPU).
pub(crate) fn ensure_nvrtc() -> Result<()> {
    // SAFETY: probing for a shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        preload("nvrtc-builtins");
        preload("nvrtc");
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(Error::Cuda(
                "NVRTC (libnvrtc.so) not found: install the CUDA toolkit or the nvidia-cuda-nvrtc wheel, or set CUDA_HOME".into(),
            ));
        }
    }
    Ok(())
}

/// Whether cuBLAS can be loaded (prefill uses it; without it prefill falls back to GEMV).
pub(crate) fn cublas_present() -> bool {
    // SAFETY: probing for a shared library.
    unsafe {
        if cudarc::cublas::sys::is_culib_present() {
            return true;
        }
        preload("cublasLt");
        preload("cublas");
        cudarc::cublas::sys::is_culib_present()
    }
}

/// The context every buffer and launch of this process uses (device 0's primary context).
#[derive(Clone, Copy)]
pub(crate) struct Ctx(pub sys::CUcontext);
// SAFETY: a CUcontext is a process-wide handle the driver lets any thread make current.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

static CONTEXT: OnceLock<Ctx> = OnceLock::new();

thread_local! {
    static BOUND: Cell<usize> = const { Cell::new(0) };
}

pub(crate) fn set_context(ctx: Ctx) -> Ctx {
    *CONTEXT.get_or_init(|| ctx)
}

/// Make the context current on this thread (cheap when it already is).
pub(crate) fn bind() -> Result<()> {
    let Some(ctx) = CONTEXT.get() else { return Err(Error::Cuda("no CUDA context".into())) };
    if BOUND.with(|b| b.get()) != ctx.0 as usize {
        // SAFETY: the context lives for the whole process (primary context, never released).
        check(unsafe { sys::cuCtxSetCurrent(ctx.0) }, "cuCtxSetCurrent")?;
        BOUND.with(|b| b.set(ctx.0 as usize));
    }
    Ok(())
}

/// Device memory, freed on drop.
pub struct DevBuf {
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
}

impl DevBuf {
    pub(crate) fn alloc(bytes: usize) -> Result<DevBuf> {
        bind()?;
        let mut ptr = 0;
        // SAFETY: plain allocation; at least 1 byte so every buffer has a distinct address.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(1)) };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: queries only.
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) };
            return Err(Error::Cuda(format!(
                "out of GPU memory allocating {:.1} MiB ({:.0} MiB free of {:.0} MiB); try a shorter context (-c)",
                bytes as f64 / 1048576.0,
                free as f64 / 1048576.0,
                total as f64 / 1048576.0
            )));
        }
        check(r, "cuMemAlloc")?;
        Ok(DevBuf { ptr, bytes })
    }

    pub(crate) fn zeroed(bytes: usize, stream: sys::CUstream) -> Result<DevBuf> {
        let b = DevBuf::alloc(bytes)?;
        // SAFETY: the range is inside the allocation.
        check(unsafe { sys::cuMemsetD8Async(b.ptr, 0, bytes, stream) }, "cuMemsetD8Async")?;
        Ok(b)
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if bind().is_ok() {
            // SAFETY: ptr came from cuMemAlloc and is freed once; cuMemFree waits for
            // work that may still use it.
            unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

/// A CUDA event, destroyed on drop.
pub(crate) struct Event(sys::CUevent);

// SAFETY: an event handle may be used from any thread of the context.
unsafe impl Send for Event {}

impl Event {
    pub(crate) fn new() -> Result<Event> {
        bind()?;
        let mut e = std::ptr::null_mut();
        // SAFETY: creates an event in the current context.
        check(unsafe { sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DEFAULT as u32) }, "cuEventCreate")?;
        Ok(Event(e))
    }

    pub(crate) fn record(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: records a live event on a live stream.
        check(unsafe { sys::cuEventRecord(self.0, stream) }, "cuEventRecord")
    }

    /// Wait until the work before the last record has run.
    pub(crate) fn synchronize(&self) -> Result<()> {
        bind()?;
        // SAFETY: waits on a live event.
        check(unsafe { sys::cuEventSynchronize(self.0) }, "GPU work failed")
    }

    /// Milliseconds from `self` to `end` (both recorded and complete).
    pub(crate) fn ms_until(&self, end: &Event) -> Result<f64> {
        let mut ms = 0f32;
        // SAFETY: two live events of the same context.
        check(unsafe { sys::cuEventElapsedTime_v2(&mut ms, self.0, end.0) }, "cuEventElapsedTime_v2")?;
        Ok(ms as f64)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if bind().is_ok() {
            // SAFETY: destroyed once.
            unsafe { sys::cuEventDestroy_v2(self.0) };
        }
    }
}

/// Page-locked host memory of `n` 32-bit words, which the device copies into
/// asynchronously (a pageable destination would make the copy wait for the stream).
pub(crate) struct HostWords {
    ptr: *mut u32,
    n: usize,
}

// SAFETY: plain memory owned by this value; reads go through `read`.
unsafe impl Send for HostWords {}

impl HostWords {
    pub(crate) fn alloc(n: usize) -> Result<HostWords> {
        bind()?;
        let mut p = std::ptr::null_mut();
        // SAFETY: plain page-locked allocation.
        check(unsafe { sys::cuMemAllocHost_v2(&mut p, n.max(1) * 4) }, "cuMemAllocHost")?;
        Ok(HostWords { ptr: p as *mut u32, n })
    }

    /// Queue a copy of the device word at `src` into word `i` (stream-ordered).
    pub(crate) fn copy_from(&self, i: usize, src: sys::CUdeviceptr, stream: sys::CUstream) -> Result<()> {
        assert!(i < self.n);
        // SAFETY: word i lies inside the allocation, which outlives the copy (callers wait on
        // it before reading or dropping).
        check(unsafe { sys::cuMemcpyDtoHAsync_v2(self.ptr.add(i) as *mut c_void, src, 4, stream) }, "copy from GPU")
    }

    /// Word `i`, once the copy into it has completed.
    pub(crate) fn read(&self, i: usize) -> u32 {
        assert!(i < self.n);
        // SAFETY: in bounds; volatile because the device wrote it behind the compiler's back.
        unsafe { std::ptr::read_volatile(self.ptr.add(i)) }
    }
}

impl Drop for HostWords {
    fn drop(&mut self) {
        if bind().is_ok() {
            // SAFETY: allocated by cuMemAllocHost, freed once.
            unsafe { sys::cuMemFreeHost(self.ptr as *mut c_void) };
        }
    }
}

/// Copy host data to device memory at `dst` (stream-ordered; the source is staged at once).
pub(crate) fn upload<T: Copy>(dst: sys::CUdeviceptr, src: &[T], stream: sys::CUstream) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    bind()?;
    // SAFETY: the caller sized dst for src; pageable copies are staged before returning.
    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr() as *const c_void, std::mem::size_of_val(src), stream) }, "copy to GPU")
}

/// Copy device memory back to the host and wait for it.
pub(crate) fn download<T: Copy + Default>(src: sys::CUdeviceptr, n: usize, stream: sys::CUstream) -> Result<Vec<T>> {
    bind()?;
    let mut out = vec![T::default(); n];
    if n > 0 {
        // SAFETY: out has room for n values; the stream is synchronised before returning.
        unsafe {
            check(sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr() as *mut c_void, src, n * std::mem::size_of::<T>(), stream), "copy from GPU")?;
        }
    }
    sync(stream)?;
    Ok(out)
}

pub(crate) fn sync(stream: sys::CUstream) -> Result<()> {
    bind()?;
    // SAFETY: waits on a live stream.
    check(unsafe { sys::cuStreamSynchronize(stream) }, "GPU work failed")
}

/// One kernel launch as data: recorded launches are compared, captured and replayed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Launch {
    pub func: usize,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
    pub nargs: usize,
    /// Each argument in its own 8-byte slot (the driver reads as many bytes as the parameter has).
    pub args: [u64; 16],
}

/// A kernel argument in its 8-byte slot.
pub(crate) trait KArg {
    fn slot(self) -> u64;
}
impl KArg for u64 {
    fn slot(self) -> u64 {
        self
    }
}
impl KArg for i32 {
    fn slot(self) -> u64 {
        self as u32 as u64
    }
}
impl KArg for u32 {
    fn slot(self) -> u64 {
        self as u64
    }
}
impl KArg for i64 {
    fn slot(self) -> u64 {
        self as u64
    }
}
impl KArg for f32 {
    fn slot(self) -> u64 {
        self.to_bits() as u64
    }
}

/// `kargs![a, b, ...]` packs kernel arguments into slots.
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {{
        let mut slots = [0u64; 16];
        let mut n = 0usize;
        $( slots[n] = $crate::backend::cuda::driver::KArg::slot($a); n += 1; )*
        (slots, n)
    }};
}
pub(crate) use kargs;

/// Issue one launch on the stream; `pdl` lets it start before the previous kernel ends.
pub(crate) fn launch_now(l: &Launch, stream: sys::CUstream, pdl: bool) -> Result<()> {
    let mut args = l.args;
    let mut ptrs: [*mut c_void; 16] = [std::ptr::null_mut(); 16];
    for (p, a) in ptrs.iter_mut().zip(args.iter_mut()) {
        *p = a as *mut u64 as *mut c_void;
    }
    // SAFETY: zero is a valid bit pattern for the attribute (a C struct of plain data).
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: l.grid[0],
        gridDimY: l.grid[1],
        gridDimZ: l.grid[2],
        blockDimX: l.block[0],
        blockDimY: l.block[1],
        blockDimZ: l.block[2],
        sharedMemBytes: l.smem,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: if pdl { 1 } else { 0 },
    };
    // SAFETY: func is a loaded kernel whose parameters match the slots the caller packed.
    check(unsafe { sys::cuLaunchKernelEx(&cfg, l.func as sys::CUfunction, ptrs.as_mut_ptr(), std::ptr::null_mut()) }, "kernel launch")
}

/// An instantiated graph of a recorded launch list.
pub(crate) struct Graph {
    pub launches: Vec<Launch>,
    exec: sys::CUgraphExec,
}
// SAFETY: graph executables are driver handles usable from any thread with the context.
unsafe impl Send for Graph {}

impl Graph {
    /// Capture `launches` on `stream` into a graph (the stream must be idle of other capture).
    pub(crate) fn capture(launches: Vec<Launch>, stream: sys::CUstream, pdl: bool) -> Result<Graph> {
        // SAFETY: capture brackets only our own launches on our own stream.
        unsafe {
            check(
                sys::cuStreamBeginCapture_v2(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                "begin graph capture",
            )?;
            let mut issued = Ok(());
            for l in &launches {
                issued = launch_now(l, stream, pdl);
                if issued.is_err() {
                    break;
                }
            }
            let mut graph = std::ptr::null_mut();
            let ended = check(sys::cuStreamEndCapture(stream, &mut graph), "end graph capture");
            issued?;
            ended?;
            let mut exec = std::ptr::null_mut();
            let inst = check(sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0), "instantiate graph");
            sys::cuGraphDestroy(graph);
            inst?;
            Ok(Graph { launches, exec })
        }
    }

    pub(crate) fn launch(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: exec is a live instantiated graph.
        check(unsafe { sys::cuGraphLaunch(self.exec, stream) }, "graph launch")
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if bind().is_ok() {
            // SAFETY: destroyed once.
            unsafe { sys::cuGraphExecDestroy(self.exec) };
        }
    }
}

/// Facts about the device the kernels are built and shaped for.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub arch: (i32, i32),
    pub sms: u32,
    pub max_smem_optin: u32,
    pub total_mem: usize,
    pub driver_version: i32,
}

/// Initialise the driver and device 0's primary context.
pub(crate) fn init_device() -> Result<(Ctx, sys::CUdevice, DeviceInfo)> {
    ensure_libs()?;
    // SAFETY: plain driver queries on device 0 after cuInit.
    unsafe {
        check(sys::cuInit(0), "cuInit (is the NVIDIA driver loaded?)")?;
        let mut count = 0;
        check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
        if count < 1 {
            return Err(Error::Cuda("no CUDA device found".into()));
        }
        let mut dev = 0;
        check(sys::cuDeviceGet(&mut dev, 0), "cuDeviceGet")?;
        let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
            let mut v = 0;
            check(sys::cuDeviceGetAttribute(&mut v, a, dev), "cuDeviceGetAttribute")?;
            Ok(v)
        };
        use sys::CUdevice_attribute as A;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let max_smem_optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(48 * 1024) as u32;
        let mut name_buf = [0i8; 256];
        check(sys::cuDeviceGetName(name_buf.as_mut_ptr() as *mut _, 255, dev), "cuDeviceGetName")?;
        let name = std::ffi::CStr::from_ptr(name_buf.as_ptr() as *const _).to_string_lossy().into_owned();
        let mut total_mem = 0usize;
        check(sys::cuDeviceTotalMem_v2(&mut total_mem, dev), "cuDeviceTotalMem")?;
        let mut driver_version = 0;
        check(sys::cuDriverGetVersion(&mut driver_version), "cuDriverGetVersion")?;
        let mut ctx = std::ptr::null_mut();
        check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
        let ctx = set_context(Ctx(ctx));
        bind()?;
        Ok((ctx, dev, DeviceInfo { name, arch: (major, minor), sms, max_smem_optin, total_mem, driver_version }))
    }
}
