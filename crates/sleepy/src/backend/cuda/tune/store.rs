//! Tuned GEMV configurations on disk: `$SLEEPY_HOME/tune/gemv.json`, one table per
//! (GPU name, driver version, kernel source hash). A launch shape measured fastest on one
//! GPU with one driver and one version of the kernels says nothing about another, so a table
//! is used only where all three match; otherwise it is ignored with a note on stderr.
//! Tuning more models on the same key adds to that key's table.

use super::{space, GemvProblem, LaunchConfig};
use crate::backend::cuda::driver::DeviceInfo;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Format of the file; another number is not read.
pub const FILE_VERSION: u32 = 1;

/// What a table of tuned configurations is valid for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TuneKey {
    pub gpu: String,
    pub driver: String,
    pub kernels: String,
}

impl TuneKey {
    pub fn for_device(info: &DeviceInfo) -> TuneKey {
        TuneKey { gpu: info.name.clone(), driver: driver_string(info.driver_version), kernels: crate::backend::cuda::compile::source_hash() }
    }
}

/// The kernel module's version (the driver users name, e.g. 580.159.04) where Linux shows
/// it, and the CUDA version the driver API reports.
fn driver_string(cuda_version: i32) -> String {
    let cuda = format!("CUDA {}.{}", cuda_version / 1000, (cuda_version % 1000) / 10);
    let module = std::fs::read_to_string("/proc/driver/nvidia/version").ok().and_then(|s| parse_module_version(&s));
    match module {
        Some(m) => format!("{m} ({cuda})"),
        None => cuda,
    }
}

/// "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu ..." -> "580.159.04".
fn parse_module_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    line.split_whitespace()
        .find(|t| t.contains('.') && t.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .map(str::to_string)
}

/// One tuned problem: the configuration chosen, the default it was measured against, and
/// both times (microseconds per launch, DRAM-bound, back to back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedEntry {
    #[serde(flatten)]
    pub problem: GemvProblem,
    pub config: LaunchConfig,
    pub default: LaunchConfig,
    pub default_us: f64,
    pub tuned_us: f64,
}

/// The decode step of one model before and after tuning (ms per token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeRecord {
    pub model: String,
    pub default_ms: f64,
    pub tuned_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedTable {
    #[serde(flatten)]
    pub key: TuneKey,
    pub entries: Vec<TunedEntry>,
    #[serde(default)]
    pub decode: Vec<DecodeRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunedFile {
    pub version: u32,
    pub tables: Vec<TunedTable>,
}

impl Default for TunedFile {
    fn default() -> Self {
        TunedFile { version: FILE_VERSION, tables: Vec::new() }
    }
}

/// The table for a key, or why there is none.
pub struct Selection<'a> {
    pub table: Option<&'a TunedTable>,
    pub note: Option<String>,
}

/// Where tuned configurations live.
pub fn path() -> PathBuf {
    crate::fetch::cache_dir().join("tune").join("gemv.json")
}

impl TunedFile {
    /// The file at `path`; None when there is none.
    pub fn read(path: &Path) -> Result<Option<TunedFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let file: TunedFile =
            serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: not a tuned GEMV table ({e})", path.display())))?;
        if file.version != FILE_VERSION {
            return Err(Error::Other(format!("{}: tuned GEMV table version {} (this build reads {FILE_VERSION})", path.display(), file.version)));
        }
        Ok(Some(file))
    }

    /// Write the file whole (through a temporary file, so a reader never sees half of it).
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Other(format!("tuned table: {e}")))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// The table made for exactly `key`; otherwise a note saying why none is used.
    pub fn select(&self, key: &TuneKey, path: &Path) -> Selection<'_> {
        if let Some(t) = self.tables.iter().find(|t| t.key == *key) {
            return Selection { table: Some(t), note: None };
        }
        let note = match self.tables.iter().find(|t| t.key.gpu == key.gpu) {
            Some(t) => {
                let mut differ = Vec::new();
                if t.key.driver != key.driver {
                    differ.push(format!("driver {} (now {})", t.key.driver, key.driver));
                }
                if t.key.kernels != key.kernels {
                    differ.push(format!("kernels {} (now {})", t.key.kernels, key.kernels));
                }
                Some(format!(
                    "note: ignoring the tuned GEMV configurations for {} in {}: they were measured with {}; using defaults (run `sleepy tune` to measure again)",
                    key.gpu,
                    path.display(),
                    differ.join(" and ")
                ))
            }
            None if !self.tables.is_empty() => {
                let gpus: Vec<&str> = self.tables.iter().map(|t| t.key.gpu.as_str()).collect();
                Some(format!(
                    "note: {} holds tuned GEMV configurations for {} only, not {}; using defaults (run `sleepy tune` to measure this GPU)",
                    path.display(),
                    gpus.join(", "),
                    key.gpu
                ))
            }
            None => None,
        };
        Selection { table: None, note }
    }

    /// Add `table`'s entries and decode records to the table of its key (same problems and
    /// models replaced). Tables of the same GPU under another driver or kernel version are
    /// dropped: they can never be used again by this build on this machine.
    pub fn merge(&mut self, table: TunedTable) {
        self.tables.retain(|t| t.key.gpu != table.key.gpu || t.key == table.key);
        match self.tables.iter_mut().find(|t| t.key == table.key) {
            Some(t) => {
                for e in table.entries {
                    t.entries.retain(|o| o.problem != e.problem);
                    t.entries.push(e);
                }
                for d in table.decode {
                    t.decode.retain(|o| o.model != d.model);
                    t.decode.push(d);
                }
            }
            None => self.tables.push(table),
        }
    }
}

/// Tuned configurations as the backend looks them up on every GEMV launch: a short list
/// (a model has a handful of problems), searched in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TunedSet {
    entries: Vec<(GemvProblem, LaunchConfig)>,
}

impl TunedSet {
    /// The launchable entries of `table`; a note for each entry that is not.
    pub fn from_table(table: &TunedTable) -> (TunedSet, Vec<String>) {
        let mut set = TunedSet::default();
        let mut notes = Vec::new();
        for e in &table.entries {
            if space::launchable(&e.problem, &e.config) {
                set = set.with(e.problem, e.config);
            } else {
                notes.push(format!("note: ignoring the tuned GEMV configuration {:?} for {}: it cannot be launched", e.config, e.problem.label()));
            }
        }
        (set, notes)
    }

    pub fn get(&self, p: &GemvProblem) -> Option<LaunchConfig> {
        self.entries.iter().find(|(q, _)| q == p).map(|e| e.1)
    }

    /// This set with `p` configured as `c`.
    pub fn with(&self, p: GemvProblem, c: LaunchConfig) -> TunedSet {
        let mut entries: Vec<_> = self.entries.iter().filter(|(q, _)| *q != p).copied().collect();
        entries.push((p, c));
        TunedSet { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether the user switched tuned configurations off (`SLEEPY_GEMV_TUNED=0`).
pub fn tuned_disabled() -> bool {
    std::env::var("SLEEPY_GEMV_TUNED").is_ok_and(|v| v == "0" || v.eq_ignore_ascii_case("off"))
}

/// The tuned configurations for this device, read once per process (notes go to stderr
/// once, not for every backend).
pub(crate) fn load_for_device(info: &DeviceInfo) -> Arc<TunedSet> {
    static LOADED: OnceLock<Arc<TunedSet>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            if tuned_disabled() {
                return Arc::new(TunedSet::default());
            }
            let (set, notes) = select_for(&path(), &TuneKey::for_device(info));
            for n in notes {
                eprintln!("{n}");
            }
            Arc::new(set)
        })
        .clone()
}

/// The set the file at `path` holds for `key`, and the notes to show the user.
pub fn select_for(path: &Path, key: &TuneKey) -> (TunedSet, Vec<String>) {
    match TunedFile::read(path) {
        Ok(None) => (TunedSet::default(), Vec::new()),
        Ok(Some(file)) => {
            let sel = file.select(key, path);
            match sel.table {
                Some(t) => TunedSet::from_table(t),
                None => (TunedSet::default(), sel.note.into_iter().collect()),
            }
        }
        Err(e) => (TunedSet::default(), vec![format!("note: ignoring tuned GEMV configurations: {e}")]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::gemv::GemvShape;
    use crate::quant::DType;

    fn key() -> TuneKey {
        TuneKey { gpu: "NVIDIA H100 80GB HBM3".into(), driver: "580.159.04 (CUDA 13.0)".into(), kernels: "0123456789abcdef".into() }
    }

    fn shape(rpb: u32) -> LaunchConfig {
        LaunchConfig::Dense(GemvShape { rows_per_block: rpb, threads_per_row: 64, vec: 8, blocks_per_sm: 4, streamed: false })
    }

    fn problem(units: usize) -> GemvProblem {
        GemvProblem { format: DType::BF16, units, k: 2560, norm: true, mode: 0 }
    }

    fn entry(units: usize, rpb: u32) -> TunedEntry {
        TunedEntry { problem: problem(units), config: shape(rpb), default: shape(1), default_us: 14.26, tuned_us: 13.29 }
    }

    fn table(k: TuneKey, entries: Vec<TunedEntry>) -> TunedTable {
        TunedTable { key: k, entries, decode: vec![DecodeRecord { model: "qwen3-4b".into(), default_ms: 4.1, tuned_ms: 3.9 }] }
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sleepy-tune-{}-{name}", std::process::id())).join("gemv.json")
    }

    #[test]
    fn file_round_trip() {
        let path = tmp("round-trip");
        let mut file = TunedFile::default();
        file.merge(table(key(), vec![entry(6144, 8), entry(151936, 4)]));
        file.write(&path).unwrap();
        let back = TunedFile::read(&path).unwrap().unwrap();
        assert_eq!(back, file);
        let (set, notes) = select_for(&path, &key());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(&problem(6144)), Some(shape(8)));
        assert_eq!(set.get(&GemvProblem { mode: 1, ..problem(6144) }), None, "the fused variant is part of the key");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn mismatched_keys_are_ignored_with_a_note() {
        let path = tmp("keys");
        let mut file = TunedFile::default();
        file.merge(table(key(), vec![entry(6144, 8)]));
        file.write(&path).unwrap();
        let cases = [
            (TuneKey { driver: "590.1 (CUDA 13.1)".into(), ..key() }, "driver 580.159.04"),
            (TuneKey { kernels: "fedcba9876543210".into(), ..key() }, "kernels 0123456789abcdef"),
            (TuneKey { gpu: "NVIDIA H200".into(), ..key() }, "not NVIDIA H200"),
        ];
        for (other, says) in cases {
            let (set, notes) = select_for(&path, &other);
            assert!(set.is_empty(), "{other:?} must not use the table");
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert!(notes[0].contains(says) && notes[0].starts_with("note:"), "{}", notes[0]);
        }
        // No file: defaults, silently.
        let (set, notes) = select_for(&tmp("absent"), &key());
        assert!(set.is_empty() && notes.is_empty());
        // A file of another format (the unkeyed table of earlier builds): ignored, with a note.
        std::fs::write(&path, r#"{"entries": [[6144, 2560, {"rows_per_block": 8}]]}"#).unwrap();
        let (set, notes) = select_for(&path, &key());
        assert!(set.is_empty());
        assert_eq!(notes.len(), 1);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn merge_keeps_other_gpus_and_drops_stale_tables() {
        let mut file = TunedFile::default();
        let h200 = TuneKey { gpu: "NVIDIA H200".into(), ..key() };
        file.merge(table(h200.clone(), vec![entry(6144, 2)]));
        file.merge(table(TuneKey { kernels: "old".into(), ..key() }, vec![entry(6144, 2)]));
        file.merge(table(key(), vec![entry(6144, 8)]));
        // Another model on the same key adds its shapes and replaces shared ones.
        file.merge(table(key(), vec![entry(6144, 2), entry(1024, 4)]));
        assert_eq!(file.tables.len(), 2, "the stale H100 table is gone, the H200 one kept");
        let t = file.select(&key(), Path::new("x")).table.unwrap();
        assert_eq!(t.entries.len(), 2);
        assert_eq!(TunedSet::from_table(t).0.get(&problem(6144)), Some(shape(2)));
        assert_eq!(t.decode.len(), 1);
        assert!(file.select(&h200, Path::new("x")).table.is_some());
    }

    #[test]
    fn unlaunchable_entries_are_dropped() {
        let bad = TunedEntry { config: LaunchConfig::Dense(GemvShape { rows_per_block: 3, threads_per_row: 48, vec: 8, blocks_per_sm: 4, streamed: false }), ..entry(6144, 8) };
        let (set, notes) = TunedSet::from_table(&table(key(), vec![bad, entry(1024, 4)]));
        assert_eq!(set.len(), 1);
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn module_version_is_parsed() {
        let text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct 30 2025\nGCC version: gcc 12.3\n";
        assert_eq!(parse_module_version(text).as_deref(), Some("580.159.04"));
        assert_eq!(parse_module_version("nothing here"), None);
    }
}
