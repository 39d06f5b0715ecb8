//! The version cache: `smolvm --version` is asked once per binary and environment, in this
//! process (a map) and across processes (a small file per binary under the state directory,
//! since nextest runs one process per test). The key includes the binary's size and
//! modification time, so an upgrade in place is seen at once; an entry that is not a regular
//! file of ours is not believed, since a planted version would choose the dialect.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::program::resolve_program;
use crate::dialect::Version;
use crate::error::Result;
use crate::runner::lock;

/// The version of the binary `program` run with `process_env`: from this process's map, else
/// the on-disk entry, else `probe` (whose answer is then stored in both).
pub(super) fn version_of(
    program: &Path,
    process_env: &[(String, String)],
    probe: impl FnOnce() -> Result<Version>,
) -> Result<Version> {
    // Keyed by binary and environment: the same program can front different smolvms (a
    // wrapper, or the fake CLI told which version to be through SMOLVM_FAKE_VERSION).
    type Key = (PathBuf, Vec<(String, String)>);
    static BY_BINARY: OnceLock<Mutex<HashMap<Key, Version>>> = OnceLock::new();
    let by_binary = BY_BINARY.get_or_init(Default::default);
    let key = (program.to_path_buf(), version_env(process_env));
    // One probe per binary even when many test threads ask at once.
    static PROBING: Mutex<()> = Mutex::new(());
    let _probing = lock(&PROBING);
    if let Some(v) = lock(by_binary).get(&key).copied() {
        return Ok(v);
    }
    // Across processes (nextest runs one per test): a small file per binary, keyed by its
    // path, size, modification time and the process env, so an upgrade is seen at once.
    let disk = version_cache_path(program, &key.1);
    let cached = disk.as_deref().and_then(read_version_cache);
    let v = match cached {
        Some(v) => v,
        None => {
            let v = probe()?;
            if let Some(path) = &disk {
                write_version_cache(path, v);
            }
            v
        }
    };
    lock(by_binary).insert(key, v);
    Ok(v)
}

/// The environment that can change what a binary says it is: the client's process env and
/// every `SMOLVM_*` variable it inherits.
fn version_env(process_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| k.starts_with("SMOLVM_") && !k.starts_with("SMOLVM_HARNESS_"))
        .collect();
    env.sort();
    env.extend(process_env.iter().cloned());
    env
}

/// The on-disk version cache entry of a binary: `None` when the binary cannot be found (the
/// probe then reports that) or the configuration is unusable.
fn version_cache_path(program: &Path, env: &[(String, String)]) -> Option<PathBuf> {
    let resolved = resolve_program(program).ok()?;
    let resolved = std::fs::canonicalize(&resolved).unwrap_or(resolved);
    let meta = std::fs::metadata(&resolved).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut key = format!("{}\0{}\0{mtime}", resolved.display(), meta.len());
    for (k, v) in env {
        key.push_str(&format!("\0{k}={v}"));
    }
    // Created and verified here, before anything is read from it or written to it: an unsafe
    // state directory only means no cache (the error surfaces where the state dir is needed).
    let dir = crate::state_dir::subdir("versions").ok()?;
    Some(dir.join(format!("{:016x}", crate::names::fnv1a_64(key.as_bytes()))))
}

/// The cached version, if the entry is a regular file of ours (opened without following
/// symlinks): a version planted by someone else would choose the dialect, e.g. one that
/// silently drops an egress policy.
fn read_version_cache(path: &Path) -> Option<Version> {
    use std::io::Read;
    let mut text = String::new();
    crate::state_dir::open(path, crate::state_dir::Access::Read)
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Best effort: a cache that cannot be written only costs the next process one probe. The
/// rename replaces whatever entry was there (a symlink itself, never its target).
fn write_version_cache(path: &Path, version: Version) {
    use std::io::Write;
    let Some(dir) = path.parent() else { return };
    if crate::state_dir::ensure_dir(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let written = crate::state_dir::open_or_replace(&tmp, crate::state_dir::Access::Write)
        .is_ok_and(|mut f| f.write_all(version.to_string().as_bytes()).is_ok());
    if !written || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_cache_key_follows_the_binary_and_its_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("smolvm");
        std::fs::write(&bin, "#!/bin/true\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let env = vec![("SMOLVM_FAKE_VERSION".to_string(), "0.8.0".to_string())];
        let a = version_cache_path(&bin, &env).expect("a cache path");
        assert_eq!(version_cache_path(&bin, &env), Some(a.clone()));
        assert_ne!(
            version_cache_path(&bin, &[]),
            Some(a.clone()),
            "env is part of the key"
        );
        // An upgrade in place (other size) is a new key.
        std::fs::write(&bin, "#!/bin/true\n# upgraded\n").expect("write");
        assert_ne!(version_cache_path(&bin, &env), Some(a.clone()));
        assert_eq!(version_cache_path(&dir.path().join("missing"), &env), None);

        let cache = dir.path().join("versions").join("k");
        write_version_cache(&cache, Version::new(0, 8, 2));
        assert_eq!(std::fs::read_to_string(&cache).expect("cached"), "0.8.2");
        assert_eq!(read_version_cache(&cache), Some(Version::new(0, 8, 2)));
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_version_cache_entry_is_not_believed_nor_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let versions = dir.path().join("versions");
        std::fs::create_dir(&versions).expect("mkdir");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "1.9.2").expect("write");
        let cache = versions.join("k");
        std::os::unix::fs::symlink(&elsewhere, &cache).expect("symlink");
        assert_eq!(
            read_version_cache(&cache),
            None,
            "a symlink is not believed"
        );
        write_version_cache(&cache, Version::new(0, 8, 2));
        assert_eq!(std::fs::read_to_string(&elsewhere).expect("read"), "1.9.2");
        assert_eq!(read_version_cache(&cache), Some(Version::new(0, 8, 2)));
        // Another user's file.
        std::os::unix::fs::chown(&cache, Some(12345), None).expect("chown (tests run as root)");
        assert_eq!(
            read_version_cache(&cache),
            None,
            "a foreign file is not believed"
        );
    }
}
