//! Cross-process machine slots: at most `SMOLVM_HARNESS_MAX_MACHINES` machines alive at once,
//! across every test process of the user that uses the same state directory (nextest runs one
//! process per test, so an in-process semaphore would cap nothing). The slots are not per
//! run: two runs at once (two terminals, two nextest invocations) share them, which is the
//! point, since they share the machine's CPUs and memory.
//!
//! A slot is an exclusive lock on one of N files, `$SMOLVM_HARNESS_STATE_DIR/slots/slot-<i>.lock`
//! (N = [`crate::Config::machine_cap`]). Why file locks: the kernel releases them when the
//! holder's file is closed, including when the process is SIGKILLed, so a crashed test never
//! holds a slot forever, and there is no count file to go stale (serial_test's
//! `file_parallel` weakness). The lock files are close-on-exec, so smolvm children do not
//! inherit them.
//!
//! The slot directory is created and verified by [`crate::state_dir`], and each lock file is
//! opened without following symlinks: an entry that is not a regular file of ours (a symlink
//! planted to make us write elsewhere, another user's file locked to hold a slot forever) is
//! removed and a fresh lock file created.
//!
//! Processes configured with different caps share slots `0..min` and each respects its own
//! cap; the host-wide bound is the largest cap in use.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::config;
use crate::diag;
use crate::error::{Error, Result};
use crate::runner::lock;
use crate::state_dir::{self, Access};
use crate::Smolvm;

/// After this long without a slot, say once why the test is waiting.
const WAIT_NOTICE: Duration = Duration::from_secs(10);

/// A cross-process slot under `SMOLVM_HARNESS_MAX_MACHINES` (`config().machine_cap()`).
/// Released on drop: the lock file is closed (the kernel also releases it if the process
/// dies, so a SIGKILLed holder never holds a slot forever).
pub(crate) struct Slot {
    /// Holding the open, locked file is holding the slot.
    _file: File,
    index: usize,
    path: PathBuf,
    holder: (ThreadId, PathBuf),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(held_by_thread());
        if let Some(n) = held.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.holder);
            }
        }
    }
}

/// Slots held per thread and slot directory. A thread that holds every slot and asks for one
/// more would wait for itself forever: that is refused at once instead.
fn held_by_thread() -> &'static Mutex<HashMap<(ThreadId, PathBuf), usize>> {
    static HELD: OnceLock<Mutex<HashMap<(ThreadId, PathBuf), usize>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index)
            .field("path", &self.path)
            .finish()
    }
}

impl Slot {
    /// Which slot, `0..cap`.
    #[cfg(test)]
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

/// Take a slot for a machine of this client, blocking until one is free.
///
/// `None` for in-process runners (their machines do not outlive the process): they start no VM, so there is
/// nothing to cap. The wait ends when another machine's guard is dropped or its process dies;
/// after 10 s a line on stderr says what the test waits for. It fails at once when this thread
/// already holds every slot (a test that needs more machines at once than the cap), and after
/// `SMOLVM_HARNESS_TIMEOUT` otherwise (tests in several processes each holding some slots and
/// waiting for more would wait for each other forever).
pub(crate) fn acquire(smolvm: &Smolvm) -> Result<Option<Slot>> {
    if !smolvm.outlives_process() {
        return Ok(None);
    }
    let cfg = config()?;
    // The cap is per host: the local smolvm's, and each server's own.
    let dir = match crate::cleanup::target_digest(smolvm).filter(|_| smolvm.remote_url().is_some())
    {
        Some(digest) => state_dir::subdir(&format!("slots-{digest}"))?,
        None => state_dir::subdir("slots")?,
    };
    acquire_in(&dir, cfg.machine_cap(), cfg.call_timeout).map(Some)
}

/// [`acquire`] against an explicit directory, cap and longest wait. `dir` is created (0700)
/// and verified like the state directory; its parent must exist.
pub(crate) fn acquire_in(dir: &Path, cap: usize, max_wait: Duration) -> Result<Slot> {
    state_dir::ensure_dir(dir)?;
    let cap = cap.max(1);
    let holder = (std::thread::current().id(), dir.to_path_buf());
    let too_many = |reason: String| {
        Error::io(
            "acquire a machine slot in",
            dir,
            std::io::Error::new(std::io::ErrorKind::WouldBlock, reason),
        )
    };
    if lock(held_by_thread()).get(&holder).copied().unwrap_or(0) >= cap {
        return Err(too_many(format!(
            "this test already holds all {cap} machine slots (SMOLVM_HARNESS_MAX_MACHINES); \
             raise the cap to run more machines at once"
        )));
    }
    let mut files = Vec::with_capacity(cap);
    for i in 0..cap {
        let path = dir.join(format!("slot-{i}.lock"));
        let file = state_dir::open_or_replace(&path, Access::Lock)?;
        files.push(Some((file, path)));
    }
    let mut rng = Jitter::new();
    let started = Instant::now();
    let mut told = false;
    loop {
        // Start each round at a random slot, so waiters do not all contend for slot 0.
        let first = rng.below(cap as u64) as usize;
        for k in 0..cap {
            let i = (first + k) % cap;
            let Some((file, path)) = &files[i] else {
                continue;
            };
            match file.try_lock() {
                Ok(()) => {
                    let (file, path) = files[i].take().ok_or_else(|| {
                        Error::io(
                            "lock machine slot",
                            dir,
                            std::io::Error::other("slot vanished"),
                        )
                    })?;
                    *lock(held_by_thread()).entry(holder.clone()).or_insert(0) += 1;
                    return Ok(Slot {
                        _file: file,
                        index: i,
                        path,
                        holder,
                    });
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io("lock machine slot", path.clone(), e));
                }
            }
        }
        if started.elapsed() >= max_wait {
            return Err(too_many(format!(
                "all {cap} machine slots stayed taken for {max_wait:?} \
                 (SMOLVM_HARNESS_MAX_MACHINES; SMOLVM_HARNESS_TIMEOUT bounds the wait)"
            )));
        }
        if !told && started.elapsed() >= WAIT_NOTICE {
            told = true;
            diag::log(&format!(
                "smolvm-harness: waiting for a machine slot: all {cap} are taken \
                 (SMOLVM_HARNESS_MAX_MACHINES; lock files in {})",
                dir.display()
            ));
        }
        // 5–20 ms, jittered so that waiters released together do not retry in lockstep.
        std::thread::sleep(Duration::from_millis(5 + rng.below(16)));
    }
}

/// A tiny xorshift generator: jitter needs no quality, only independence between processes
/// and threads, which the seed gives.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17);
        Jitter(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        if n == 0 {
            0
        } else {
            x % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn never_more_than_cap_holders_among_threads() {
        let dir = tempfile::tempdir().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (dir, held, peak) = (dir.path().to_path_buf(), held.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..3 {
                        let slot = acquire_in(&dir, 2, Duration::from_secs(60)).unwrap();
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(15));
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn slots_are_distinct_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = acquire_in(dir.path(), 2, Duration::from_secs(60)).unwrap();
        let b = acquire_in(dir.path(), 2, Duration::from_secs(60)).unwrap();
        assert_ne!(a.index(), b.index());
        drop(a);
        let c = acquire_in(dir.path(), 2, Duration::from_secs(60)).unwrap();
        assert_ne!(c.index(), b.index());
        assert!(format!("{c:?}").contains("slot-"));
    }

    #[test]
    fn a_thread_holding_every_slot_is_refused_not_deadlocked() {
        let dir = tempfile::tempdir().unwrap();
        let one = acquire_in(dir.path(), 1, Duration::from_secs(60)).unwrap();
        let started = Instant::now();
        let err = acquire_in(dir.path(), 1, Duration::from_secs(60)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            err.to_string()
                .contains("already holds all 1 machine slots"),
            "{err}"
        );
        drop(one);
        // Released: the same thread can take it again.
        acquire_in(dir.path(), 1, Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn waiting_for_a_slot_held_elsewhere_ends_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let slot = acquire_in(&path, 1, Duration::from_secs(60)).unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(slot);
        });
        rx.recv().unwrap();
        let err = acquire_in(dir.path(), 1, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("stayed taken"), "{err}");
        holder.join().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_slot_directory_is_refused_and_a_planted_lock_file_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        let link = tmp.path().join("slots");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = acquire_in(&link, 1, Duration::from_secs(60)).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);

        let dir = tmp.path().join("real");
        fs::create_dir(&dir).unwrap();
        let victim = tmp.path().join("victim");
        std::os::unix::fs::symlink(&victim, dir.join("slot-0.lock")).unwrap();
        let (slot, said) = crate::diag::capture(|| acquire_in(&dir, 1, Duration::from_secs(60)));
        let slot = slot.unwrap();
        assert!(said[0].contains("it is a symbolic link"), "{said:?}");
        assert_eq!(slot.index(), 0);
        assert!(!victim.exists(), "created through the planted link");
        assert!(fs::symlink_metadata(dir.join("slot-0.lock"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new();
        assert!((0..1000).all(|_| j.below(16) < 16));
        assert_eq!(j.below(0), 0);
    }
}
