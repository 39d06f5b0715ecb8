//! Settling the machines of processes that are gone: the next run's sweep, and the crash
//! watcher's work when its owner dies.
//!
//! Guarantees:
//! * only ledger entries whose owner is dead are considered: never a live process's, never
//!   one of another pid namespace (its pids mean nothing here), never a kept one;
//! * each is judged by the one ownership rule, so a machine made by hand under the same name
//!   is never deleted (on smolvm ≥ 1.8.0 by its labels; before, by the evidence recorded at
//!   create time);
//! * an entry goes only when its machine is deleted, kept, someone else's, or provably never
//!   created: a `machine create` still running (found by its mark on Linux) keeps it, however
//!   slow the pull. Where that cannot be seen (no `/proc`), a create is assumed over
//!   [`UNSEEN_CREATE_BOUND`] after the entry was written;
//! * the keep policy holds: an owner that died with machines left counts as failed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::ledger::{self, Entry, Target};
use super::owner::{judge, CreateState, Role, Stage, Verdict};
use super::process::{self, Liveness};
use super::registry::{keep_entry, left_alone};
use crate::diag;
use crate::error::Result;
use crate::runner::lock;
use crate::Smolvm;

/// Where a running create cannot be seen, how long after its entry was written a create is
/// assumed to be over.
pub(crate) const UNSEEN_CREATE_BOUND: Duration = Duration::from_secs(24 * 3600);

/// How long a `smolvm serve` runs one request at most (`API_REQUEST_TIMEOUT_SECS`, its 408):
/// a create sent by a process that died is over after that.
pub(crate) const REMOTE_CREATE_BOUND: Duration = Duration::from_secs(300);

/// Delete the machines that test processes left behind when they died.
///
/// Considered: entries in the harness ledger (`$SMOLVM_HARNESS_STATE_DIR/ledger/`) made with
/// the same smolvm target as `smolvm` (same program, process env and state-locating
/// variables such as `SMOLVM_DATA_DIR`), whose owner process is dead (gone, a zombie, a pid
/// reused by another process, or an earlier boot) and that are not kept. A machine is deleted
/// only when it is provably the entry's (its `smolvm-harness.owner` label on smolvm ≥ 1.8.0;
/// before, a generated name or a chosen name that was free when it was created); one made by
/// hand, kept, or held by a live process is never touched. A machine whose keep policy says
/// so (`SMOLVM_HARNESS_KEEP=always` or `on-failure`: a process that died counts as failed) is
/// kept instead, and the command that deletes it printed. Entries of machines that no longer
/// exist are removed; an entry whose `machine create` may still be running stays.
///
/// Returns the names deleted. A machine that could not be deleted is reported on stderr and
/// left in the ledger for the next sweep; an error is returned only if the machines cannot be
/// listed. Clients with an in-process runner have nothing to sweep.
///
/// The harness runs this itself, once per process and smolvm target, before its first
/// machine is created; call it directly for a cleanup step in CI.
///
/// ```no_run
/// let deleted = smolvm_harness::sweep(&smolvm_harness::Smolvm::from_env())?;
/// println!("reclaimed {deleted:?}");
/// # Ok::<(), smolvm_harness::Error>(())
/// ```
pub fn sweep(smolvm: &Smolvm) -> Result<Vec<String>> {
    let Some(target) = Target::of(smolvm) else {
        return Ok(Vec::new());
    };
    let ledger_dir = ledger::dir();
    let candidates: Vec<(PathBuf, Entry)> = ledger::read_all(&ledger_dir)
        .into_iter()
        .filter(|(_, e)| {
            e.target.same_server(&target)
                && e.claim.owner.liveness() == Liveness::Dead
                && !e.claim.role.is_shared_golden()
        })
        .collect();
    let mut deleted = Vec::new();
    if !candidates.is_empty() {
        // (The common case costs no smolvm call at all.)
        deleted = settle(smolvm, candidates, &ledger_dir)?.deleted;
    }
    // Goldens a run shared, once no process has held them for their grace period.
    if let Ok(root) = crate::state_dir::root() {
        super::goldens::retire(&root, super::owner::run_id().as_deref());
    }
    Ok(deleted)
}

/// Run [`sweep`] once per process and smolvm target; report, never fail.
pub(crate) fn startup_sweep(smolvm: &Smolvm, target: &Target) {
    static SWEPT: OnceLock<Mutex<HashSet<Target>>> = OnceLock::new();
    if !lock(SWEPT.get_or_init(Default::default)).insert(target.clone()) {
        return;
    }
    match sweep(smolvm) {
        Ok(names) if names.is_empty() => {}
        Ok(names) => diag::log(&format!(
            "smolvm-harness: deleted {} machine(s) left by test processes that died: {}",
            names.len(),
            names.join(", ")
        )),
        Err(e) => diag::log(&format!(
            "smolvm-harness: could not sweep machines left by dead test processes: {e}"
        )),
    }
}

/// What [`settle`] did.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) deleted: Vec<String>,
    /// Entries left because their create may still land (or their delete failed).
    pub(crate) waiting: Vec<(PathBuf, Entry)>,
}

/// Settle entries of dead owners, all of one smolvm target reached through `smolvm`, clones
/// before goldens. A golden waits while the ledger (`ledger_dir`) still holds a clone of it,
/// and stays (kept) when a clone of it is kept.
pub(crate) fn settle(
    smolvm: &Smolvm,
    mut entries: Vec<(PathBuf, Entry)>,
    ledger_dir: &Path,
) -> Result<Settled> {
    entries.sort_by_key(|(_, e)| e.claim.role.rank());
    // Whether each create is over is asked *before* listing: a create found over cannot have
    // added its machine after the listing.
    let creates: Vec<CreateState> = entries.iter().map(|(_, e)| create_state(e)).collect();
    let machines: HashMap<String, crate::MachineInfo> = smolvm
        .machine_list()?
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
    let mut settled = Settled::default();
    for ((path, entry), create) in entries.into_iter().zip(creates) {
        let name = entry.claim.name.clone();
        let seen = machines.get(&name);
        let create = if entry.target.remote.is_some() {
            server_create_state(entry.created_at, seen.is_some())
        } else {
            create
        };
        if entry.kept {
            if seen.is_none() {
                ledger::remove(&path);
            }
            continue;
        }
        if let Role::Golden { .. } = entry.claim.role {
            // Read now, after the clones of this pass were settled.
            let clones: Vec<Entry> = ledger::read_all(ledger_dir)
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| super::goldens::is_clone_of(e, &entry))
                .collect();
            if clones.iter().any(|c| c.kept) {
                diag::log(&format!(
                    "smolvm-harness: keeping golden machine {name}: a clone of it is kept; \
                     delete it with: {}",
                    crate::machine::delete_command_for(smolvm, &name, &entry.claim.role)
                ));
                keep_entry(&path, entry);
                continue;
            }
            if !clones.is_empty() && seen.is_some() {
                settled.waiting.push((path, entry));
                continue;
            }
        }
        match judge(&entry.claim, seen, create) {
            Verdict::Ours if entry.claim.keep.keeps(true) => {
                diag::log(&format!(
                    "smolvm-harness: keeping machine {name} of dead process {} \
                     (SMOLVM_HARNESS_KEEP); delete it with: {}",
                    entry.claim.owner.token(),
                    crate::machine::delete_command_for(smolvm, &name, &entry.claim.role)
                ));
                keep_entry(&path, entry);
            }
            Verdict::Ours => match super::registry::delete(smolvm, &name, &entry.claim.role) {
                Ok(true) => {
                    ledger::remove(&path);
                    settled.deleted.push(name);
                }
                Ok(false) => keep_entry(&path, entry),
                Err(e) => {
                    diag::log(&format!(
                        "smolvm-harness: could not delete machine {name} left by dead process \
                         {}: {e}; it stays in the ledger for the next sweep",
                        entry.claim.owner.token()
                    ));
                    settled.waiting.push((path, entry));
                }
            },
            // Someone else's machine under that name, or nothing: ours is gone or never was.
            Verdict::NotOurs | Verdict::Gone => ledger::remove(&path),
            Verdict::CannotTell => {
                diag::log(&left_alone(smolvm, &name));
                ledger::remove(&path);
            }
            Verdict::Pending => settled.waiting.push((path, entry)),
        }
    }
    Ok(settled)
}

/// Whether a create sent to a server (`sent_at`, Unix seconds) is over: a server finishes a
/// request whatever becomes of its client, out of our sight, so it is over once its machine
/// is `listed`, or once the server's own request limit (300 s) and ours have surely passed.
/// The one rule for the signal thread, the exit hook, the watcher and the sweep.
pub(crate) fn server_create_state(sent_at: u64, listed: bool) -> CreateState {
    if listed {
        return CreateState::Over;
    }
    let age = ledger::now().saturating_sub(sent_at);
    let bound = REMOTE_CREATE_BOUND.max(crate::config::config_or_default().call_timeout);
    if age > bound.as_secs() + 30 {
        CreateState::Over
    } else {
        CreateState::Unknown
    }
}

/// Whether the create an entry was written for may still be running.
pub(crate) fn create_state(entry: &Entry) -> CreateState {
    if entry.claim.stage == Stage::Created {
        return CreateState::Over;
    }
    if entry.target.remote.is_some() {
        return server_create_state(entry.created_at, false);
    }
    match process::create_running(&entry.key()) {
        Some(true) => CreateState::Running,
        Some(false) => CreateState::Over,
        None => {
            let age = ledger::now().saturating_sub(entry.created_at);
            if age > UNSEEN_CREATE_BOUND.as_secs() {
                CreateState::Over
            } else {
                CreateState::Unknown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_create_is_over_once_listed_or_past_the_server_limit() {
        let now = ledger::now();
        assert_eq!(server_create_state(now, true), CreateState::Over);
        assert_eq!(server_create_state(now, false), CreateState::Unknown);
        let long_ago = now.saturating_sub(REMOTE_CREATE_BOUND.as_secs() * 10);
        assert_eq!(server_create_state(long_ago, false), CreateState::Over);
    }
}
