//! Packed machines: `smolvm pack create` once, then `machine create --from` as often as needed.
//!
//! Creating from a pack skips the image pull at start (which, on smolvm ≥ 1.7.3, happens
//! inside the guest and needs network). Packing is slow, so [`Pack::shared`] packs each image
//! once per test run and hands the same files to every test.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use crate::cli::Smolvm;
use crate::error::{Error, Result};
use crate::names::fnv1a_64;
use crate::runner::lock;
use crate::state_dir::{self, Access};
use crate::validate::validate_image;

/// Run directories of the shared cache whose last use is older than this are deleted when a
/// new run directory is created. Long enough for any test run; short enough that a machine
/// that packs once a day does not pile up images.
const STALE_RUN_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// A packed image: the `.smolmachine` sidecar that [`crate::CreateOptions::from_path`] and
/// [`crate::MachineBuilder::from_pack`] take, and the directory holding it.
///
/// A pack from [`Pack::create`] owns a fresh temporary directory, removed when the `Pack` is
/// dropped; keep the `Pack` alive as long as machines are created from it. A pack from
/// [`Pack::shared`] is never removed by drop, because other tests and other test processes
/// use the same files; see there for when it is removed.
///
/// ```no_run
/// use smolvm_harness::{Machine, Pack};
///
/// let pack = Pack::create("alpine:latest")?;
/// let vm = Machine::builder().from_pack(&pack).start()?;
/// vm.exec(&["true"])?.assert_success();
/// # Ok::<(), smolvm_harness::Error>(())
/// ```
#[must_use]
pub struct Pack {
    image: String,
    path: PathBuf,
    /// `None` for shared packs (and after `keep`): nothing to remove on drop.
    dir: Option<TempDir>,
}

impl fmt::Debug for Pack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pack")
            .field("image", &self.image)
            .field("path", &self.path)
            .field("removed_on_drop", &self.dir.is_some())
            .finish()
    }
}

impl Pack {
    /// Pack `image` with the smolvm of the environment ([`Smolvm::from_env`]) into a fresh
    /// temporary directory.
    pub fn create(image: &str) -> Result<Pack> {
        Pack::create_with(&Smolvm::from_env(), image)
    }

    /// Pack `image` with `smolvm` into a fresh temporary directory: `smolvm pack create
    /// --image IMAGE -o DIR/pack`, which writes `DIR/pack` and the sidecar
    /// `DIR/pack.smolmachine`. If packing fails, the directory is removed before the error is
    /// returned.
    ///
    /// ```
    /// use smolvm_harness::{Pack, ScriptedRunner, Smolvm};
    ///
    /// let runner = ScriptedRunner::new();
    /// let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    /// let pack = Pack::create_with(&smolvm, "alpine:latest").unwrap();
    /// assert!(pack.path().ends_with("pack.smolmachine"));
    /// let argv = &runner.argvs()[0];
    /// assert_eq!(argv[..4], ["pack", "create", "--image", "alpine:latest"]);
    /// ```
    pub fn create_with(smolvm: &Smolvm, image: &str) -> Result<Pack> {
        validate_image(image)?;
        let dir = tempfile::Builder::new()
            .prefix("smolvm-pack-")
            .tempdir()
            .map_err(|e| Error::io("create pack directory", std::env::temp_dir(), e))?;
        let path = smolvm.pack_create(image, dir.path().join("pack"))?;
        Ok(Pack {
            image: image.to_string(),
            path,
            dir: Some(dir),
        })
    }

    /// The pack of `image` shared by every caller in this test run, made with the smolvm of
    /// the environment; see [`Pack::shared_with`].
    pub fn shared(image: &str) -> Result<Arc<Pack>> {
        Pack::shared_with(&Smolvm::from_env(), image)
    }

    /// The pack of `image` shared by every caller in this test run: packed once per image per
    /// process, and, for clients that run a real smolvm binary, once per image across all
    /// processes of the run.
    ///
    /// - **In a process**, concurrent callers for the same image wait for the first one
    ///   instead of packing twice. A failed pack is not remembered: the next caller tries
    ///   again.
    /// - **Across processes** (nextest runs one process per test), packs live under
    ///   `SMOLVM_HARNESS_STATE_DIR/packs/<run id>/<hash of binary and image>/`. The first
    ///   process packs while holding an exclusive file lock there; the others wait on the
    ///   lock and reuse its result, which is only recorded as done once `pack create`
    ///   succeeded. The run id is `NEXTEST_RUN_ID`, else `SMOLVM_HARNESS_RUN_ID` (set it to
    ///   share packs between `cargo test` binaries of one run), else one private to this
    ///   process. A pack found there is used only if its files are regular files of yours
    ///   (not symlinks, not another user's), in a state directory verified to be yours;
    ///   otherwise it is packed again.
    /// - **Removal**: shared packs are not removed by drop, since other processes may still
    ///   be creating machines from them. A run's directory is deleted by a later run, once it
    ///   has not been used for 24 hours.
    ///
    /// For in-process runners (the simulation, [`crate::ScriptedRunner`]) only the
    /// per-process cache applies; it is keyed by the program name and the image, so two such
    /// clients in one process share a pack.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use smolvm_harness::{Pack, ScriptedRunner, Smolvm};
    ///
    /// let runner = ScriptedRunner::new();
    /// let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    /// let a = Pack::shared_with(&smolvm, "doc-example:1").unwrap();
    /// let b = Pack::shared_with(&smolvm, "doc-example:1").unwrap();
    /// assert!(Arc::ptr_eq(&a, &b));
    /// assert_eq!(runner.argvs().iter().filter(|a| a[0] == "pack").count(), 1);
    /// ```
    pub fn shared_with(smolvm: &Smolvm, image: &str) -> Result<Arc<Pack>> {
        validate_image(image)?;
        let process = smolvm.outlives_process();
        let key = CacheKey {
            process,
            program: smolvm.program().to_path_buf(),
            image: image.to_string(),
        };
        let slot = Arc::clone(lock(process_cache()).entry(key).or_default());
        // Held while packing: a second caller for the same image waits here, and callers
        // for other images are not held up (the map lock above is already released).
        let mut slot = lock(&slot);
        if let Some(pack) = slot.as_ref() {
            return Ok(Arc::clone(pack));
        }
        let pack = if process {
            shared_on_disk(smolvm, image)?
        } else {
            shared_in_process(smolvm, image)?
        };
        let pack = Arc::new(pack);
        *slot = Some(Arc::clone(&pack));
        Ok(pack)
    }

    /// The `.smolmachine` sidecar: what `machine create --from` takes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image that was packed.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Keep the files: the directory is no longer removed on drop. Returns the sidecar path
    /// (as [`Pack::path`]); its parent directory holds both files and is yours to delete.
    pub fn keep(mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        std::mem::take(&mut self.path)
    }

    /// Switch removal on drop off (`true`) or back on (`false`), in place; for debugging.
    /// No effect on a shared pack, which is never removed on drop.
    pub fn disable_cleanup(&mut self, disable: bool) {
        if let Some(dir) = self.dir.as_mut() {
            dir.disable_cleanup(disable);
        }
    }

    /// Remove the files now and report a failure, which drop would ignore. A no-op for a
    /// shared pack.
    pub fn close(mut self) -> Result<()> {
        match self.dir.take() {
            Some(dir) => {
                let path = dir.path().to_path_buf();
                dir.close()
                    .map_err(|e| Error::io("remove pack directory", path, e))
            }
            None => Ok(()),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    process: bool,
    program: PathBuf,
    image: String,
}

type PackSlot = Arc<Mutex<Option<Arc<Pack>>>>;

fn process_cache() -> &'static Mutex<HashMap<CacheKey, PackSlot>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, PackSlot>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// An in-process runner's pack, in a directory of this process's run: the `Pack` lives in a
/// static that is never dropped, so a plain temp dir would outlive the process forever; here
/// the stale-run sweep removes it.
fn shared_in_process(smolvm: &Smolvm, image: &str) -> Result<Pack> {
    let run = run_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("inproc-")
        .tempdir_in(&run)
        .map_err(|e| Error::io("create pack directory", &run, e))?;
    let path = smolvm.pack_create(image, dir.path().join("pack"))?;
    let _ = dir.keep();
    Ok(Pack {
        image: image.to_string(),
        path,
        dir: None,
    })
}

/// Pack once per run across processes, under an exclusive lock on `<dir>/lock`.
fn shared_on_disk(smolvm: &Smolvm, image: &str) -> Result<Pack> {
    let run = run_dir()?;
    // The binary is part of the key: packs of different smolvm versions need not be
    // interchangeable. Its env is not: it locates machine state, not pack formats.
    let key = format!("{}\0{image}", smolvm.program().display());
    let dir = run.join(format!("{:016x}", fnv1a_64(key.as_bytes())));
    state_dir::ensure_dir(&dir)?;

    let lock_path = dir.join("lock");
    let lock_file = state_dir::open_or_replace(&lock_path, Access::Lock)?;
    lock_file
        .lock()
        .map_err(|e| Error::io("lock pack cache", &lock_path, e))?;

    let output = dir.join("pack");
    let marker = dir.join("done");
    let sidecar = sidecar_of(&output);
    // Believed only if all three are regular files of ours: a pack planted by someone else
    // would be booted with the test's `--env` values. (The directory is verified ours, so
    // no one else can swap them once checked.)
    if [&marker, &output, &sidecar]
        .into_iter()
        .all(|p| state_dir::is_own_file(p))
    {
        return Ok(Pack {
            image: image.to_string(),
            path: sidecar,
            dir: None,
        });
    }
    // Whatever is here is from a pack that failed or was killed, or is not ours: smolvm may
    // refuse to overwrite, and a half-written or planted file must not be mistaken for a
    // result. (Unlinking removes a symlink itself, never its target.)
    for stale in [&marker, &output, &sidecar] {
        match fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove a stale or untrusted pack file", stale, e)),
        }
    }
    let path = smolvm.pack_create(image, &output)?;
    // Written only after success, and while still holding the lock, so a waiter that sees
    // it sees finished files.
    state_dir::open_or_replace(&marker, Access::Write)?
        .write_all(format!("{image}\n").as_bytes())
        .map_err(|e| Error::io("mark pack as done", &marker, e))?;
    drop(lock_file);
    Ok(Pack {
        image: image.to_string(),
        path,
        dir: None,
    })
}

fn sidecar_of(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".smolmachine");
    PathBuf::from(s)
}

/// This run's directory of the shared cache, created on first use. Creating it sweeps run
/// directories not used for 24 hours; every use refreshes this run's `stamp`, so a long run
/// is not swept by a newer one.
fn run_dir() -> Result<PathBuf> {
    let root = state_dir::subdir("packs")?;
    let dir = root.join(run_id());
    let fresh = fs::symlink_metadata(&dir).is_err();
    state_dir::ensure_dir(&dir)?;
    touch(&dir.join("stamp"));
    if fresh {
        sweep_stale_runs(&root, &dir);
    }
    Ok(dir)
}

fn touch(path: &Path) {
    if let Ok(file) = state_dir::open_or_replace(path, Access::Lock) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Best effort: a directory that cannot be read or removed is left for the next sweep.
fn sweep_stale_runs(root: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        // `symlink_metadata`: a symlink here is not a run directory (and removing one with
        // `remove_dir_all` would not follow it anyway).
        if path == current || !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let last_used = fs::metadata(path.join("stamp"))
            .or_else(|_| fs::metadata(&path))
            .and_then(|m| m.modified());
        let Ok(last_used) = last_used else { continue };
        if now
            .duration_since(last_used)
            .is_ok_and(|age| age > STALE_RUN_AGE)
        {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// `NEXTEST_RUN_ID`, else `SMOLVM_HARNESS_RUN_ID`, else `pid-<pid>-<start ms>`: the start time
/// keeps a later process that reuses the pid from reusing this one's packs.
fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        for var in ["NEXTEST_RUN_ID", "SMOLVM_HARNESS_RUN_ID"] {
            if let Ok(v) = std::env::var(var) {
                if !v.trim().is_empty() {
                    return dir_safe(&v);
                }
            }
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("pid-{}-{ms}", std::process::id())
    })
}

/// The value itself when it is a harmless directory name, else a hash of it.
fn dir_safe(value: &str) -> String {
    let ok = value.len() <= 64
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        value.to_string()
    } else {
        format!("h{:016x}", fnv1a_64(value.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_safe_directory_names() {
        assert_eq!(dir_safe("0b7c-uuid_1.2"), "0b7c-uuid_1.2");
        for bad in ["../etc", "a/b", ".hidden", "", &"x".repeat(65)] {
            let d = dir_safe(bad);
            assert!(d.starts_with('h') && d.len() == 17, "{bad:?} -> {d}");
        }
    }

    #[test]
    fn sweep_removes_only_stale_other_runs() {
        let root = tempfile::tempdir().unwrap();
        let current = root.path().join("current");
        let old = root.path().join("old");
        let recent = root.path().join("recent");
        for d in [&current, &old, &recent] {
            fs::create_dir_all(d).unwrap();
            touch(&d.join("stamp"));
        }
        let long_ago = SystemTime::now() - STALE_RUN_AGE - Duration::from_secs(60);
        for d in [&current, &old] {
            fs::File::options()
                .write(true)
                .open(d.join("stamp"))
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        sweep_stale_runs(root.path(), &current);
        assert!(current.exists());
        assert!(!old.exists());
        assert!(recent.exists());
    }
}
