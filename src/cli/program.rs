//! Which binary a client runs: `SMOLVM_BIN` or `smolvm`, looked up on `PATH` unless it has a
//! directory part, the way a shell would but without one; and how to say where it looked when
//! it is missing.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The value of `SMOLVM_BIN`, or `smolvm`.
pub(crate) fn smolvm_bin_from_env() -> PathBuf {
    match std::env::var_os("SMOLVM_BIN") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("smolvm"),
    }
}

/// Where `program` resolves: itself if it has a `/`, else the first executable file of that
/// name on `PATH`.
pub(crate) fn resolve_program(program: &Path) -> Result<PathBuf> {
    let has_dir = program.components().count() > 1 || program.is_absolute();
    if has_dir {
        if is_executable(program) {
            return Ok(program.to_path_buf());
        }
    } else if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(program);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(Error::NotFound {
        binary: program.display().to_string(),
        looked: describe_lookup(program),
    })
}

/// How the lookup of `program` failed, in words that name where it looked.
pub(super) fn describe_lookup(program: &Path) -> String {
    let from_env = std::env::var_os("SMOLVM_BIN").is_some_and(|v| Path::new(&v) == program);
    let has_dir = program.components().count() > 1 || program.is_absolute();
    match (from_env, has_dir) {
        (true, _) if !program.exists() && program.to_string_lossy().contains("/examples/") => {
            // The usual slip with an example fake: not built yet, or built elsewhere.
            format!(
                "SMOLVM_BIN={} is not an executable file (no such file: `cargo build --examples` \
                 builds it, under $CARGO_TARGET_DIR when that is set)",
                program.display()
            )
        }
        (true, _) => format!("SMOLVM_BIN={} is not an executable file", program.display()),
        (false, true) => format!("{} is not an executable file", program.display()),
        (false, false) => format!("`{}` is not on PATH", program.display()),
    }
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// `SMOLVM_HOST`, when set and not empty: the `smolvm serve` API to use instead of a CLI.
pub(crate) fn smolvm_host_from_env() -> Option<String> {
    std::env::var("SMOLVM_HOST").ok().filter(|v| !v.is_empty())
}
