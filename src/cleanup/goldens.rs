//! Goldens shared by a run ([`crate::Golden::shared`]): which processes hold one, and when one
//! that nobody has held for its grace period is retired.
//!
//! A shared golden outlives the process that made it (under nextest every test is a process),
//! so its end is not its maker's: each process that uses it writes a holder file in
//! `<state dir>/goldens/<key>/holders/`, named after its random token and holding its identity;
//! the exit hook removes this process's holder files, and a holder whose process is dead is
//! removed by whoever looks. Each change touches `stamp`. A golden with no live holder and a
//! stamp older than its grace is deleted (with `--cascade`, after its clones, which their own
//! processes delete first) by the crash watcher, which stays up while such goldens exist, or
//! else by the next run's sweep. Kept clones keep their golden.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use super::ledger::{self, Entry};
use super::owner::{judge, Owner, Role, Verdict};
use super::process::Liveness;
use super::registry::{self, keep_entry};
use crate::diag;
use crate::error::{Error, Result};
use crate::runner::lock;
use crate::state_dir::{self, Access};

/// The directory of the shared golden `key` under the state directory `root`.
pub(crate) fn dir_in(root: &Path, key: &str) -> PathBuf {
    root.join("goldens").join(key)
}

/// This process holds the shared golden `key` (until it exits).
pub(crate) fn hold(key: &str) -> Result<()> {
    let dir = dir_in(&state_dir::root()?, key);
    let holders = dir.join("holders");
    state_dir::ensure_dir(&dir)?;
    state_dir::ensure_dir(&holders)?;
    let me = Owner::current();
    let path = holders.join(&me.nonce);
    let text = ledger::owner_json(&me).to_string();
    state_dir::open_or_replace(&path, Access::Write)?
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("write golden holder", &path, e))?;
    touch(&dir.join("stamp"));
    lock(held()).insert(dir);
    Ok(())
}

/// At exit: this process holds no shared golden any more.
pub(crate) fn release_own() {
    let me = Owner::current().nonce;
    let dirs: Vec<PathBuf> = lock(held()).drain().collect();
    for dir in dirs {
        let _ = fs::remove_file(dir.join("holders").join(&me));
        touch(&dir.join("stamp"));
    }
}

fn held() -> &'static Mutex<HashSet<PathBuf>> {
    static HELD: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Retire the shared goldens of the state directory `root` that nobody holds and whose grace
/// is over. Returns how many shared goldens remain (held, in grace, or waiting for clones):
/// the watcher stays up while there are any.
///
/// `this_run`: the run of the calling test process (the next run's sweep). A golden of another
/// run that nobody holds is retired without waiting for its grace: no process of a run that
/// has ended can join it. The watcher, which serves every run, passes `None`.
pub(crate) fn retire(root: &Path, this_run: Option<&str>) -> usize {
    // The common case (no run ever shared a golden here) costs one stat.
    if fs::symlink_metadata(root.join("goldens")).is_err() {
        return 0;
    }
    let ledger_dir = root.join("ledger");
    let entries = ledger::read_all(&ledger_dir);
    let mut remaining = 0;
    for (path, entry) in &entries {
        let Role::Golden {
            shared: Some(shared),
        } = &entry.claim.role
        else {
            continue;
        };
        if entry.kept {
            continue;
        }
        let dir = dir_in(root, &shared.key);
        // The lock a joining process holds while it checks the golden and becomes a holder:
        // a golden is never retired under a process that is joining it.
        let Some(_joining) = try_lock(&dir.join("lock")) else {
            remaining += 1;
            continue;
        };
        let other_run = this_run.is_some() && entry.claim.run_id.as_deref() != this_run;
        if has_live_holder(&dir) || (!other_run && idle_secs(&dir) < shared.grace_secs) {
            remaining += 1;
            continue;
        }
        let clones: Vec<&Entry> = entries
            .iter()
            .map(|(_, e)| e)
            .filter(|e| is_clone_of(e, entry))
            .collect();
        if clones.iter().any(|c| c.kept) {
            diag::log(&format!(
                "smolvm-harness: keeping golden machine {} because a clone of it is kept; \
                 delete both with: {}",
                entry.claim.name,
                crate::machine::cascade_command(
                    &entry.target.client(entry.smolvm_version),
                    &entry.claim.name
                )
            ));
            keep_entry(path, entry.clone());
            continue;
        }
        if !clones.is_empty() {
            // Their processes' own cleanup deletes them first.
            remaining += 1;
            continue;
        }
        if delete_golden(path, entry) {
            // Its record goes with it; the lock file stays (a joiner may be waiting on it).
            let _ = fs::remove_file(dir.join("golden"));
        } else {
            remaining += 1;
        }
    }
    remaining
}

/// Whether `e` is a clone of the golden `golden` on the same smolvm.
pub(crate) fn is_clone_of(e: &Entry, golden: &Entry) -> bool {
    matches!(&e.claim.role, Role::Clone { golden: g } if *g == golden.claim.name)
        && e.target.same_server(&golden.target)
}

/// Judge and delete one retired golden; true when it is settled (deleted, gone, or not ours).
fn delete_golden(path: &Path, entry: &Entry) -> bool {
    let client = entry.target.client(entry.smolvm_version);
    let name = &entry.claim.name;
    let seen = match client.machine_list() {
        Ok(list) => list.into_iter().find(|m| m.name == *name),
        Err(e) => {
            diag::log(&format!(
                "smolvm-harness: cannot list machines to retire golden {name}: {e}"
            ));
            return false;
        }
    };
    // Its maker may have died while the create ran: a create still running may land yet.
    match judge(
        &entry.claim,
        seen.as_ref(),
        super::sweep::create_state(entry),
    ) {
        Verdict::Ours if entry.claim.keep == crate::KeepPolicy::Always => {
            keep_entry(path, entry.clone());
            true
        }
        Verdict::Ours => match registry::delete(&client, name, &entry.claim.role) {
            Ok(true) => {
                ledger::remove(path);
                true
            }
            Ok(false) => {
                keep_entry(path, entry.clone());
                true
            }
            Err(e) => {
                diag::log(&format!(
                    "smolvm-harness: could not delete retired golden machine {name}: {e}"
                ));
                false
            }
        },
        Verdict::Pending => false,
        Verdict::NotOurs | Verdict::Gone | Verdict::CannotTell => {
            ledger::remove(path);
            true
        }
    }
}

/// Whether a process that holds the golden still runs; holder files of dead processes are
/// removed on the way (which restarts the grace).
fn has_live_holder(dir: &Path) -> bool {
    let holders = dir.join("holders");
    let Ok(list) = fs::read_dir(&holders) else {
        return false;
    };
    let mut live = false;
    for e in list.flatten() {
        let path = e.path();
        let owner = state_dir::is_own_file(&path)
            .then(|| fs::read_to_string(&path).ok())
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok())
            .and_then(|v| ledger::owner_from_json(&v));
        match owner.map(|o| o.liveness()) {
            // A holder in another pid namespace may be alive: never retire under it.
            Some(Liveness::Alive) | Some(Liveness::Elsewhere) => live = true,
            Some(Liveness::Dead) | None => {
                let _ = fs::remove_file(&path);
                touch(&dir.join("stamp"));
            }
        }
    }
    live
}

/// Seconds since a holder last came or went.
fn idle_secs(dir: &Path) -> u64 {
    fs::symlink_metadata(dir.join("stamp"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(u64::MAX, |d| d.as_secs())
}

/// The lock file, locked; `None` if another process holds it (or it cannot be opened).
fn try_lock(path: &Path) -> Option<fs::File> {
    let file = state_dir::open_or_replace(path, Access::Lock).ok()?;
    file.try_lock().ok()?;
    Some(file)
}

fn touch(path: &Path) {
    if let Ok(file) = state_dir::open_or_replace(path, Access::Lock) {
        let _ = file.set_modified(SystemTime::now());
    }
}
