//! The CUDA backend: the same fused ops as the CPU reference, as NVRTC-compiled kernels
//! (`kernels/*.cu`) on one stream. Decode steps (one token) are recorded between
//! `begin_forward` and `end_forward` and replayed as a CUDA graph; prompts go through cuBLAS
//! GEMMs and a causal attention kernel. The driver, NVRTC and cuBLAS are loaded at run time,
//! so the binary runs (on the CPU) where there is no GPU.

pub(crate) mod driver;
mod compile;
pub mod gemv;
mod attn;
mod ops;
mod prefill;
mod topk;
pub mod quant;
pub mod tune;

use crate::error::{Error, Result};
use compile::Module;
use cudarc::driver::sys;
use driver::{DevBuf, DeviceInfo, Graph, Launch};
pub use driver::DeviceInfo as CudaDeviceInfo;
use gemv::GemvTable;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

/// What is shared by every CUDA backend of the process: the device and the kernels.
struct Gpu {
    info: DeviceInfo,
    module: Mutex<Module>,
}

static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();

fn gpu() -> Result<&'static Gpu> {
    let g = GPU.get_or_init(|| {
        // A driver too old for a symbol cudarc asks for panics inside cudarc: turn that
        // into an error like any other reason the GPU cannot be used.
        let r = std::panic::catch_unwind(|| -> Result<Gpu> {
            let (_ctx, _dev, info) = driver::init_device()?;
            let image = compile::cubin(info.arch)?;
            let module = Module::load(&image)?;
            Ok(Gpu { info, module: Mutex::new(module) })
        });
        match r {
            Ok(Ok(g)) => Ok(g),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("CUDA: the driver libraries could not be used (too old?)".to_string()),
        }
    });
    g.as_ref().map_err(|e| Error::Cuda(e.trim_start_matches("CUDA: ").to_string()))
}

/// A stream handle (a driver pointer, usable from any thread).
#[derive(Clone, Copy)]
struct Stream(sys::CUstream);
// SAFETY: streams are driver handles; all use goes through the backend's lock discipline.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

/// Device buffers of activations are pooled by size, so a decode step reuses the same
/// addresses and its recorded graph can be replayed.
type Pool = Mutex<HashMap<usize, Vec<DevBuf>>>;
const POOLED_MAX_BYTES: usize = 64 << 20;

pub struct PooledBuf {
    buf: Option<DevBuf>,
    pool: Weak<Pool>,
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let (Some(b), Some(pool)) = (self.buf.take(), self.pool.upgrade()) {
            if b.bytes <= POOLED_MAX_BYTES {
                if let Ok(mut p) = pool.lock() {
                    p.entry(b.bytes).or_default().push(b);
                }
            }
        }
    }
}

/// An f32 activation matrix `[rows, cols]` in device memory.
pub struct CudaAct {
    pub rows: usize,
    pub cols: usize,
    buf: Arc<PooledBuf>,
}

impl CudaAct {
    pub fn ptr(&self) -> u64 {
        self.buf.buf.as_ref().map_or(0, |b| b.ptr)
    }
}

/// A weight matrix `[n, k]` in 16-bit floats (dt 0 bf16, 1 f16), or (`quant`) made of row
/// segments of quantized or mixed formats stored in `buf` (dt 0: prefill runs in bf16).
pub struct CudaWeight {
    pub n: usize,
    pub k: usize,
    pub dt: u32,
    buf: DevBuf,
    quant: Option<Box<quant::QuantLayout>>,
}

/// The KV cache of one sequence (bf16, `[layer][pos][kv_head * head_dim]`) and the scratch
/// its decode attention needs (per-chunk partials, zeroed counters).
pub struct CudaKv {
    pub max_seq: usize,
    pub kv_dim: usize,
    k: DevBuf,
    v: DevBuf,
    part: DevBuf,
    counters: DevBuf,
    /// Decode attention's split of the work before position `short_ctx` and from it on.
    short: AttnSplit,
    long: AttnSplit,
    short_ctx: usize,
    /// The fewest positions a chunk holds.
    min_chunk: usize,
}

impl CudaKv {
    /// Run decode attention from position `short_ctx` on (every position where the split does
    /// not switch) on the tensor-core kernels, as SLEEPY_ATTN_MMA does; tests use it. Heads of
    /// 64 or 128 from sm_80 only (others fail at the launch: no such kernel).
    pub fn set_attn_mma(&mut self, on: bool) {
        self.long.mma = on;
    }

    /// Run contexts of one chunk at one head a block on attn_decode_one_* (true) or on the
    /// split's kernel (false), as SLEEPY_ATTN_ONE does; tests use it.
    pub fn set_attn_one(&mut self, on: bool) {
        self.short.one = on;
        self.long.one = on;
    }
}

/// Query heads per decode-attention block, and chunks per head group.
#[derive(Clone, Copy, Debug)]
struct AttnSplit {
    heads_per_block: usize,
    chunks: usize,
    /// The tensor-core kernels (attn_decode_mma_*, SLEEPY_ATTN_MMA).
    mma: bool,
    /// A context of one chunk at one head a block runs on attn_decode_one_* (attn.rs,
    /// one_block_a_head), not on the split's kernel.
    one: bool,
}

/// Mutable state behind the backend's lock.
struct State {
    /// Launches of the decode step being recorded (None: launch at once).
    recording: Option<Vec<Launch>>,
    /// Ablation (timing only, results wrong): launch index ranges of each GEMV op and of each
    /// attention launch in the recorded step.
    gemv_ops: Vec<(usize, usize)>,
    attn_ops: Vec<usize>,
    /// Recently used graphs, most recent last.
    graphs: Vec<Graph>,
    graphs_ok: bool,
    /// Device copy of the step's position, and what was last written there.
    step: DevBuf,
    step_pos: Option<i32>,
    ids: DevBuf,
    /// 16-bit copies of GEMM inputs (prefill).
    half: DevBuf,
    rope: Option<(Vec<f32>, DevBuf)>,
    /// argmax: per-block partials (values, indices), a counter and the result.
    argmax: DevBuf,
    /// Kernel handles by launch key, with the shared memory limit already set.
    funcs: HashMap<u64, (usize, u32)>,
    /// Resident blocks per SM by (launch key, threads, shared memory).
    occupancy: HashMap<(u64, u32, u32), u32>,
    /// GEMV launches noted while the tuner or `sleepy bench` asks (see tune::log_gemv_calls).
    gemv_log: Option<Vec<tune::GemvCall>>,
    /// Queued argmax results (Backend::queue_argmax): slots in flight, oldest first; the
    /// page-locked words they are copied to and the events marking each copy.
    queued: VecDeque<usize>,
    queue_host: driver::HostWords,
    queue_events: Vec<driver::Event>,
}

pub struct CudaBackend {
    gpu: &'static Gpu,
    stream: Stream,
    blas: Option<prefill::Blas>,
    pool: Arc<Pool>,
    st: Mutex<State>,
    table: GemvTable,
    /// Measured launch configurations (`sleepy tune`), consulted before `table`.
    tuned: RwLock<Arc<tune::TunedSet>>,
    gemv_logging: AtomicBool,
    pdl: bool,
    /// Sampling selects its top-k on the device (topk.rs).
    top_k_on_device: AtomicBool,
    /// SLEEPY_ABLATE's roles (see `ablated`).
    ablate: Vec<&'static str>,
    /// The first layer's output projection runs the streamed GEMV kernel for one token row
    /// (noted at its upload): decode attention's default for contexts of one chunk follows
    /// it (attn.rs, one_block_a_head).
    o_streams: AtomicBool,
}

const ARGMAX_BLOCKS: usize = 128;
/// Offset of the argmax result in the argmax scratch (after the partials and the counter).
const ARGMAX_RESULT: u64 = (ARGMAX_BLOCKS * 8 + 32) as u64;
/// Argmax results that may be queued and not yet taken (greedy decoding keeps at most two).
const QUEUE_SLOTS: usize = 4;
const MAX_GRAPHS: usize = 8;

fn env_off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "0" || v.eq_ignore_ascii_case("off"))
}

impl CudaBackend {
    /// The first CUDA device, with kernels compiled (or read from the cache). Fails with a
    /// clear error, never a panic, where there is no usable GPU.
    pub fn new() -> Result<CudaBackend> {
        let gpu = gpu()?;
        driver::bind()?;
        let mut stream = std::ptr::null_mut();
        // SAFETY: creates a stream in the current context.
        driver::check(unsafe { sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32) }, "cuStreamCreate")?;
        let stream = Stream(stream);
        let blas = if driver::cublas_present() { prefill::Blas::new(stream.0).ok() } else { None };
        let st = State {
            recording: None,
            gemv_ops: Vec::new(),
            attn_ops: Vec::new(),
            graphs: Vec::new(),
            graphs_ok: !env_off("SLEEPY_CUDA_GRAPHS"),
            step: DevBuf::zeroed(16, stream.0)?,
            step_pos: None,
            ids: DevBuf::alloc(4 * 4096)?,
            half: DevBuf::alloc(1 << 20)?,
            rope: None,
            argmax: DevBuf::zeroed(ARGMAX_BLOCKS * 8 + 64, stream.0)?,
            funcs: HashMap::new(),
            occupancy: HashMap::new(),
            gemv_log: None,
            queued: VecDeque::new(),
            queue_host: driver::HostWords::alloc(QUEUE_SLOTS)?,
            queue_events: (0..QUEUE_SLOTS).map(|_| driver::Event::new()).collect::<Result<_>>()?,
        };
        // PDL needs sm_90 and a driver that captures it into graphs (CUDA 12.3+).
        let pdl = gpu.info.arch.0 >= 9 && gpu.info.driver_version >= 12030 && !env_off("SLEEPY_PDL");
        let ablate = match std::env::var("SLEEPY_ABLATE") {
            Ok(v) => v
                .split('+')
                .filter(|r| !r.is_empty() && *r != "none")
                .map(|r| ABLATE_ROLES.iter().copied().find(|k| *k == r).ok_or_else(|| Error::Cuda(format!("SLEEPY_ABLATE: unknown role {r} (roles: {})", ABLATE_ROLES.join(", ")))))
                .collect::<Result<_>>()?,
            Err(_) => Vec::new(),
        };
        // Bulk asynchronous copies (the streamed GEMV) need sm_90.
        let mut table = GemvTable::load(&gpu.info.name);
        table.streamed = gpu.info.arch.0 >= 9 && !env_off("SLEEPY_GEMV_STREAM");
        Ok(CudaBackend {
            gpu,
            stream,
            blas,
            pool: Arc::new(Mutex::new(HashMap::new())),
            st: Mutex::new(st),
            table,
            tuned: RwLock::new(tune::store::load_for_device(&gpu.info)),
            gemv_logging: AtomicBool::new(false),
            pdl,
            top_k_on_device: AtomicBool::new(!env_off("SLEEPY_TOP_K_GPU")),
            o_streams: AtomicBool::new(false),
            ablate,
        })
    }

    pub fn device_info(&self) -> &DeviceInfo {
        &self.gpu.info
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.st.lock().map_err(|_| Error::Cuda("backend state poisoned by an earlier panic".into()))
    }

    fn func(&self, name: &str, smem: u32) -> Result<(usize, u32)> {
        if smem > self.gpu.info.max_smem_optin {
            return Err(Error::Cuda(format!("kernel {name} needs {smem} bytes of shared memory; the device allows {}", self.gpu.info.max_smem_optin)));
        }
        self.gpu.module.lock().map_err(|_| Error::Cuda("kernel table poisoned".into()))?.func(name, smem)
    }

    /// Launch the kernel `name` now, or record it when a decode step is being recorded.
    fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], smem: u32, args: ([u64; 16], usize)) -> Result<()> {
        // FNV-1a of the name: a cheap key for the handle cache.
        let key = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        self.launch_keyed(key, &|| name.to_string(), grid, block, smem, args)
    }

    /// The kernel behind `key` (looked up, and its shared memory limit raised, on first use).
    fn func_keyed(&self, st: &mut State, key: u64, name: &dyn Fn() -> String, smem: u32) -> Result<usize> {
        match st.funcs.get(&key) {
            Some(&(f, limit)) if smem <= limit => Ok(f),
            _ => {
                let (f, limit) = self.func(&name(), smem)?;
                st.funcs.insert(key, (f, limit));
                Ok(f)
            }
        }
    }

    /// How many blocks of `threads` threads and `smem` bytes of the kernel behind `key` fit
    /// on one SM at once (registers, shared memory and threads all counted).
    fn blocks_per_sm(&self, key: u64, name: &dyn Fn() -> String, threads: u32, smem: u32) -> Result<u32> {
        let mut st = self.state()?;
        if let Some(&n) = st.occupancy.get(&(key, threads, smem)) {
            return Ok(n);
        }
        driver::bind()?;
        let f = self.func_keyed(&mut st, key, name, smem)?;
        let mut n = 0;
        // SAFETY: a query on a loaded kernel.
        driver::check(
            unsafe { sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut n, f as sys::CUfunction, threads as i32, smem as usize) },
            "occupancy query",
        )?;
        if n < 1 {
            // Registers or shared memory too many for one block: a launch would fail.
            return Err(Error::Cuda(format!("kernel {} cannot run blocks of {threads} threads ({smem} bytes of shared memory) on this device", name())));
        }
        let n = n as u32;
        st.occupancy.insert((key, threads, smem), n);
        Ok(n)
    }

    /// Launch by a caller-chosen key (the name is only built on the first use of the key):
    /// a decode step records ~5 launches per layer, so this path is kept free of allocation.
    fn launch_keyed(&self, key: u64, name: &dyn Fn() -> String, grid: [u32; 3], block: [u32; 3], smem: u32, args: ([u64; 16], usize)) -> Result<()> {
        driver::bind()?;
        let mut st = self.state()?;
        let func = self.func_keyed(&mut st, key, name, smem)?;
        let l = Launch { func, grid, block, smem, nargs: args.1, args: args.0 };
        match st.recording.as_mut() {
            Some(list) => {
                list.push(l);
                Ok(())
            }
            None => {
                drop(st);
                driver::launch_now(&l, self.stream.0, self.pdl)
            }
        }
    }

    /// Issue what was recorded so far, eagerly: needed before any stream work that is not a
    /// kernel (copies, cuBLAS) so the order stays right.
    fn flush(&self) -> Result<()> {
        let pending = self.state()?.recording.take();
        driver::bind()?;
        if let Some(list) = pending {
            for l in &list {
                driver::launch_now(l, self.stream.0, self.pdl)?;
            }
        }
        Ok(())
    }

    /// A pooled device buffer of at least `bytes`.
    fn buffer(&self, bytes: usize) -> Result<Arc<PooledBuf>> {
        let bytes = bytes.max(4).next_multiple_of(256);
        let reused = self.pool.lock().ok().and_then(|mut p| p.get_mut(&bytes).and_then(|v| v.pop()));
        let buf = match reused {
            Some(b) => b,
            None => DevBuf::alloc(bytes)?,
        };
        Ok(Arc::new(PooledBuf { buf: Some(buf), pool: Arc::downgrade(&self.pool) }))
    }

    fn new_act(&self, rows: usize, cols: usize) -> Result<CudaAct> {
        Ok(CudaAct { rows, cols, buf: self.buffer(rows * cols * 4)? })
    }

    /// Write the step's position to device memory (kernels of a replayed graph read it there).
    fn set_pos(&self, pos: usize) -> Result<u64> {
        let pos = i32::try_from(pos).map_err(|_| Error::Other(format!("position {pos} is too large")))?;
        let mut st = self.state()?;
        if st.step_pos != Some(pos) {
            driver::upload(st.step.ptr, &[pos], self.stream.0)?;
            st.step_pos = Some(pos);
        }
        Ok(st.step.ptr)
    }

    /// Device copy of the rope frequencies (uploaded when they change).
    fn rope_freqs(&self, inv_freqs: &[f32]) -> Result<u64> {
        let mut st = self.state()?;
        if let Some((f, b)) = &st.rope {
            if f.as_slice() == inv_freqs {
                return Ok(b.ptr);
            }
        }
        let b = DevBuf::alloc(inv_freqs.len().max(1) * 4)?;
        driver::upload(b.ptr, inv_freqs, self.stream.0)?;
        let ptr = b.ptr;
        st.rope = Some((inv_freqs.to_vec(), b));
        Ok(ptr)
    }

    /// Start recording a forward pass of `tokens` tokens (decode steps only).
    fn begin(&self, tokens: usize) -> Result<()> {
        let mut st = self.state()?;
        // Launches left by a forward pass that failed half-way are dropped.
        st.recording = if tokens == 1 && st.graphs_ok { Some(Vec::new()) } else { None };
        st.gemv_ops.clear();
        st.attn_ops.clear();
        Ok(())
    }

    /// Replay the recorded step as a graph (captured the first time this exact launch list
    /// is seen). If capture fails, the launches run eagerly and graphs are switched off.
    fn end(&self) -> Result<()> {
        let mut st = self.state()?;
        let Some(mut list) = st.recording.take() else { return Ok(()) };
        if list.is_empty() {
            return Ok(());
        }
        if !self.ablate.is_empty() {
            let drop = ablated(&self.ablate, list.len(), &st.gemv_ops, &st.attn_ops);
            let mut i = 0;
            list.retain(|_| {
                i += 1;
                !drop[i - 1]
            });
        }
        driver::bind()?;
        if let Some(i) = st.graphs.iter().position(|g| g.launches == list) {
            let g = st.graphs.remove(i);
            let r = g.launch(self.stream.0);
            st.graphs.push(g);
            return r;
        }
        match Graph::capture(list.clone(), self.stream.0, self.pdl) {
            Ok(g) => {
                let r = g.launch(self.stream.0);
                if st.graphs.len() >= MAX_GRAPHS {
                    st.graphs.remove(0);
                }
                st.graphs.push(g);
                r
            }
            Err(_) => {
                st.graphs_ok = false;
                drop(st);
                for l in &list {
                    driver::launch_now(l, self.stream.0, self.pdl)?;
                }
                Ok(())
            }
        }
    }

    /// For SLEEPY_ABLATE: launches recorded so far in this step (None: not recording, or no
    /// ablation asked for, so the decode step takes no extra lock for it).
    fn recorded(&self) -> Result<Option<usize>> {
        if self.ablate.is_empty() {
            return Ok(None);
        }
        Ok(self.state()?.recording.as_ref().map(Vec::len))
    }

    /// Note for SLEEPY_ABLATE that the launches recorded since `first` are one GEMV op.
    fn note_gemv(&self, first: Option<usize>) -> Result<()> {
        if first.is_none() {
            return Ok(());
        }
        let mut st = self.state()?;
        if let (Some(a), Some(b)) = (first, st.recording.as_ref().map(Vec::len)) {
            st.gemv_ops.push((a, b));
        }
        Ok(())
    }

    /// Note for SLEEPY_ABLATE that the launch just recorded is a decode attention.
    fn note_attn(&self) -> Result<()> {
        if self.ablate.is_empty() {
            return Ok(());
        }
        let mut st = self.state()?;
        if let Some(n) = st.recording.as_ref().map(Vec::len) {
            st.attn_ops.push(n - 1);
        }
        Ok(())
    }

    /// Copy bandwidth of device memory in GB/s (bytes read + written), from the median of
    /// repeated 1 GiB device-to-device copies.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        self.flush()?;
        let bytes = 1usize << 30;
        let a = DevBuf::zeroed(bytes, self.stream.0)?;
        let b = DevBuf::alloc(bytes)?;
        let mut times = Vec::new();
        for i in 0..13 {
            driver::sync(self.stream.0)?;
            let t = std::time::Instant::now();
            // SAFETY: both buffers hold `bytes`.
            driver::check(unsafe { sys::cuMemcpyDtoDAsync_v2(b.ptr, a.ptr, bytes, self.stream.0) }, "device copy")?;
            driver::sync(self.stream.0)?;
            if i >= 3 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / times[times.len() / 2] / 1e9)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        driver::sync(self.stream.0)
    }
}

/// What SLEEPY_ABLATE may drop from a decode step: the GEMVs by their place in a layer (the
/// decoder's order: QKV, output, gate+up, down; the last GEMV of the step is the logits) and
/// the decode attention.
const ABLATE_ROLES: [&str; 6] = ["qkv", "o", "gate_up", "down", "logits", "attn"];

/// Which of a step's `n` launches to leave out of its graph for SLEEPY_ABLATE=role+role...:
/// a timing experiment (what each kind of launch costs inside the graph), whose results are
/// wrong. `gemv_ops`: each GEMV op's launch range, in order; `attn_ops`: attention launches.
fn ablated(roles: &[&str], n: usize, gemv_ops: &[(usize, usize)], attn_ops: &[usize]) -> Vec<bool> {
    let mut drop = vec![false; n];
    for (i, &(a, b)) in gemv_ops.iter().enumerate() {
        let role = if i + 1 == gemv_ops.len() { "logits" } else { ABLATE_ROLES[i % 4] };
        if roles.contains(&role) {
            drop[a..b].iter_mut().for_each(|d| *d = true);
        }
    }
    if roles.contains(&"attn") {
        attn_ops.iter().for_each(|&i| drop[i] = true);
    }
    drop
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Queued work may still use buffers dropped right after this. (The stream and the
        // cuBLAS handle are kept for the life of the process: one per backend.)
        if driver::bind().is_ok() {
            // SAFETY: waits on our own live stream.
            unsafe {
                sys::cuStreamSynchronize(self.stream.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ablated;

    #[test]
    fn ablation_drops_the_named_roles_only() {
        // embed 0; layer 0: qkv 1, attn 2, o 3, gate_up 4-5 (two launches), down 6; layer 1:
        // qkv 7, attn 8, o 9, gate_up 10, down 11; logits 12; argmax 13.
        let gemv = [(1, 2), (3, 4), (4, 6), (6, 7), (7, 8), (9, 10), (10, 11), (11, 12), (12, 13)];
        let attn = [2, 8];
        let dropped = |roles: &[&str]| ablated(roles, 14, &gemv, &attn).iter().enumerate().filter(|d| *d.1).map(|d| d.0).collect::<Vec<_>>();
        assert_eq!(dropped(&[]), Vec::<usize>::new());
        assert_eq!(dropped(&["gate_up"]), vec![4, 5, 10]);
        assert_eq!(dropped(&["attn", "logits"]), vec![2, 8, 12]);
        assert_eq!(dropped(&["qkv", "down"]), vec![1, 6, 7, 11]);
    }
}
