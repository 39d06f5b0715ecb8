//! The in-process registry: every machine this process may have created and not yet
//! deleted or kept, with its ledger entry, for the signal thread and the exit hook.
//!
//! Guarantees:
//! * a machine is registered (and ledgered, for clients that spawn smolvm) *before* its
//!   `machine create` runs, with the evidence that will later prove it ours;
//! * names are reserved per smolvm state ([`Scope`]): two live guards never share one name on
//!   one smolvm, while independent simulations may reuse names freely;
//! * a record is dropped only when its machine is deleted, kept, provably not ours, or
//!   provably never created ([`abandon`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use super::ledger::{self, Entry, Target};
use super::owner::{self, judge, Claim, Clock, CreateState, Evidence, Owner, Role, Stage, Verdict};
use super::{exit, sweep, watcher};
use crate::cli::{CreateOptions, ForkOptions, PortMapping};
use crate::config::KeepPolicy;
use crate::diag;
use crate::dialect::Version;
use crate::error::{Error, Result};
use crate::runner::lock;
use crate::Smolvm;

/// Which smolvm state a machine name lives in: names only collide within one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// A real smolvm (or the fake CLI): its program and state-locating env.
    Process(Target),
    /// An in-process runner: one simulation (or script), shared by clones of its client.
    InProcess(usize),
}

impl Scope {
    pub(crate) fn of(smolvm: &Smolvm) -> Scope {
        match Target::of(smolvm) {
            Some(target) => Scope::Process(target),
            None => Scope::InProcess(smolvm.runner_id()),
        }
    }
}

/// A name held by a live guard of this process, on one smolvm state. Released on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    scope: Scope,
    name: String,
}

fn reserved() -> MutexGuard<'static, HashSet<(Scope, String)>> {
    static RESERVED: OnceLock<Mutex<HashSet<(Scope, String)>>> = OnceLock::new();
    lock(RESERVED.get_or_init(Default::default))
}

impl Reservation {
    /// Reserve `name` on `smolvm`'s state, or say that a live guard of this process holds it.
    pub(crate) fn take(smolvm: &Smolvm, name: &str) -> Result<Reservation> {
        let scope = Scope::of(smolvm);
        if reserved().insert((scope.clone(), name.to_string())) {
            Ok(Reservation {
                scope,
                name: name.to_string(),
            })
        } else {
            Err(Error::NameInUse {
                name: name.to_string(),
            })
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        reserved().remove(&(self.scope.clone(), std::mem::take(&mut self.name)));
    }
}

/// One registered machine.
pub(crate) struct Registered {
    pub(crate) smolvm: Smolvm,
    pub(crate) claim: Claim,
    /// Known at register time, so the exit path never has to ask `--version`.
    pub(crate) version: Option<Version>,
    /// The ledger file and what it says, for clients that spawn smolvm.
    pub(crate) ledger: Option<(PathBuf, Entry)>,
}

type Key = (Scope, String);

static REGISTRY: OnceLock<Mutex<HashMap<Key, Registered>>> = OnceLock::new();

fn registry() -> MutexGuard<'static, HashMap<Key, Registered>> {
    lock(REGISTRY.get_or_init(Default::default))
}

/// Set once the process is ending (a signal is being handled, or the exit hook runs): no new
/// machine may start, and a `machine create` spawned from now on stops itself.
pub(crate) static TERMINATING: AtomicBool = AtomicBool::new(false);

/// Set, with [`TERMINATING`], when the teardown is a signal's (not the exit hook's).
pub(crate) static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// Whether the process is being torn down (see [`TERMINATING`]).
pub(crate) fn terminating() -> bool {
    TERMINATING.load(Ordering::SeqCst)
}

/// Before `machine create`: record intent in the on-disk ledger and the in-process registry.
/// On first use per process (and smolvm target) this also runs the startup sweep and makes
/// sure a crash watcher watches us. Err only if the ledger cannot be written.
pub(crate) fn register(
    smolvm: &Smolvm,
    name: &str,
    evidence: Evidence,
    keep: KeepPolicy,
    stage: Stage,
    role: Role,
) -> Result<()> {
    if TERMINATING.load(Ordering::SeqCst) {
        if SIGNALLED.load(Ordering::SeqCst) {
            // A signal is being handled and the process ends in a moment; a machine created
            // now could be missed by the cleanup already under way.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // At exit (a destructor that runs after the exit hook): refused, never a hang.
        return Err(Error::invalid(
            "machine",
            "the process is exiting and its machines were already cleaned up; no new machine \
             is created",
        ));
    }
    exit::install();
    let claim = Claim {
        name: name.to_string(),
        owner: Owner::current(),
        run_id: owner::run_id(),
        evidence,
        stage,
        keep,
        // A machine registered again after its create (cleanup switched back on) was made
        // earlier: its window starts at the beginning of time, and ends now.
        registered_at: if stage == Stage::Created {
            0
        } else {
            ledger::now()
        },
        created_by: (stage == Stage::Created).then(ledger::now),
        role,
        clock: if smolvm.remote_url().is_some() {
            // Registered again after its create: the server says when it made it.
            let made_at = (stage == Stage::Created)
                .then(|| smolvm.machine_status(name).ok().flatten())
                .flatten()
                .and_then(|m| m.created_at);
            Clock::Server { made_at }
        } else {
            Clock::Local
        },
    };
    let scope = Scope::of(smolvm);
    // Registered again (cleanup switched back on): no longer a kept clone.
    kept_clones().remove(&(scope.clone(), name.to_string()));
    let (version, ledger) = match &scope {
        Scope::InProcess(_) => (None, None),
        Scope::Process(target) => {
            // Asked now (the create needs it anyway, so it is cached), so that the exit path
            // and the watcher never have to.
            let version = smolvm.version().ok();
            sweep::startup_sweep(smolvm, target);
            watcher::ensure_watched();
            let entry = Entry::new(claim.clone(), target.clone(), version)?;
            let path = ledger::write(&ledger::dir(), &entry)?;
            (version, Some((path, entry)))
        }
    };
    registry().insert(
        (scope, name.to_string()),
        Registered {
            smolvm: smolvm.clone(),
            claim,
            version,
            ledger,
        },
    );
    Ok(())
}

thread_local! {
    /// The create mark of the `machine create` this thread is running, if ledgered.
    static CREATE_MARK: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The mark to put on the smolvm process about to be spawned on this thread, if it is a
/// ledgered `machine create` (read by the CLI layer).
pub(crate) fn create_mark() -> Option<String> {
    CREATE_MARK.with(|m| m.borrow().clone())
}

/// Run `machine create` for a registered machine, its process marked so that a later look
/// can tell whether it still runs; on success the record moves to [`Stage::Created`].
pub(crate) fn create(smolvm: &Smolvm, name: &str, options: &CreateOptions) -> Result<()> {
    made_by(smolvm, name, || smolvm.machine_create(name, options))
}

/// [`create`] for a clone: `machine fork` of `golden` into the registered `name`.
pub(crate) fn fork(
    smolvm: &Smolvm,
    golden: &str,
    name: &str,
    options: &ForkOptions,
) -> Result<Vec<PortMapping>> {
    made_by(smolvm, name, || smolvm.machine_fork(golden, name, options))
}

/// Delete a machine of ours the way its role needs; `Ok(false)` when it must stay.
///
/// A golden goes only once it has no clone left (ours are deleted first, in every layer):
/// with `--cascade`, never a bare `delete -f`, which would leave a clone broken. A golden that
/// still has clones (someone forked it by hand) stays: they are not ours to delete or break.
/// Anything else goes with `delete -f`.
pub(crate) fn delete(smolvm: &Smolvm, name: &str, role: &Role) -> Result<bool> {
    match role {
        Role::Golden { .. } => {
            if smolvm.golden_has_clones(name)? {
                diag::log(&format!(
                    "smolvm-harness: golden machine {name} stays: it has clones that are not \
                     the harness's (forked by hand?). Delete them, then the golden with: {}",
                    crate::machine::cascade_command(smolvm, name)
                ));
                return Ok(false);
            }
            smolvm.machine_delete_cascade(name)?;
            Ok(true)
        }
        Role::Machine | Role::Clone { .. } => smolvm.machine_delete(name).map(|()| true),
    }
}

/// Clones kept in this process (`Machine::keep`, `disable_cleanup`), by smolvm state and
/// clone name, with their golden: the exit hook must keep those goldens too, though the
/// clones themselves are no longer registered.
fn kept_clones() -> MutexGuard<'static, HashMap<(Scope, String), String>> {
    static KEPT: OnceLock<Mutex<HashMap<(Scope, String), String>>> = OnceLock::new();
    lock(KEPT.get_or_init(Default::default))
}

/// The goldens (by smolvm state) of the clones kept in this process.
pub(crate) fn goldens_of_kept_clones() -> HashSet<(Scope, String)> {
    kept_clones()
        .iter()
        .map(|((scope, _), golden)| (scope.clone(), golden.clone()))
        .collect()
}

/// Run the call that makes a registered machine (create or fork), marked; on success the
/// record moves to [`Stage::Created`].
fn made_by<T>(smolvm: &Smolvm, name: &str, call: impl FnOnce() -> Result<T>) -> Result<T> {
    let key = (Scope::of(smolvm), name.to_string());
    let mark = registry()
        .get(&key)
        .and_then(|r| r.ledger.as_ref().map(|(_, e)| e.key()));
    /// Clears the mark however `machine_create` returns (a runner may panic), so no later
    /// call on this thread is taken for a create.
    struct Marked;
    impl Drop for Marked {
        fn drop(&mut self) {
            let _ = CREATE_MARK.try_with(|m| m.borrow_mut().take());
        }
    }
    CREATE_MARK.with(|m| *m.borrow_mut() = mark);
    let marked = Marked;
    let result = call();
    drop(marked);
    let value = result?;
    // A server's own time for the machine our create made: what its owner is told by (asked
    // of the server when the create's answer did not say).
    let clock = smolvm.remote_url().map(|_| Clock::Server {
        made_at: smolvm.server_made_at(name).or_else(|| {
            smolvm
                .machine_status(name)
                .ok()
                .flatten()
                .and_then(|m| m.created_at)
        }),
    });
    let mut reg = registry();
    if let Some(r) = reg.get_mut(&key) {
        let done = ledger::now();
        r.claim.stage = Stage::Created;
        r.claim.created_by = Some(done);
        if let Some(clock) = clock {
            r.claim.clock = clock;
        }
        if let Some((path, entry)) = &mut r.ledger {
            entry.claim.stage = Stage::Created;
            entry.claim.created_by = Some(done);
            entry.claim.clock = r.claim.clock;
            // If this fails the entry still says "creating": later layers then wait for the
            // create to be over and judge by the evidence, which is as safe, only slower.
            if let Err(e) = entry
                .to_json()
                .and_then(|j| ledger::write_atomically(path, &j))
            {
                diag::log(&format!(
                    "smolvm-harness: could not update the ledger entry of machine {name}: {e}"
                ));
            }
        }
    }
    Ok(value)
}

/// After a failed `machine create`: delete what it may have left, but only if provably ours;
/// drop the record unless the machine may still exist and be ours.
pub(crate) fn abandon(smolvm: &Smolvm, name: &str, err: &Error) {
    let key = (Scope::of(smolvm), name.to_string());
    let Some((claim, ledgered)) = registry()
        .get(&key)
        .map(|r| (r.claim.clone(), r.ledger.is_some()))
    else {
        // Drained by the signal thread or the exit hook, which settle it themselves.
        return;
    };
    if !may_have_created(err) {
        forget(&key);
        return;
    }
    // The create returned (a timed-out one was killed and reaped), so it is over.
    let seen = match smolvm.machine_list() {
        Ok(list) => list.into_iter().find(|m| m.name == name),
        // An in-process runner's machines die with the process: no later layer could do
        // better than this one.
        Err(_) if !ledgered => {
            forget(&key);
            return;
        }
        Err(e) => {
            diag::log(&format!(
                "smolvm-harness: after a failed create, could not list machines to see whether \
                 {name} was left behind ({e}); the crash watcher or the next sweep will look"
            ));
            return;
        }
    };
    if seen.is_none() && smolvm.remote_url().is_some() && may_still_land(err) {
        // A server goes on with a create whose answer we did not get (no answer in time, its
        // own 408, a proxy's gateway error): the record and its entry stay, for the exit hook,
        // the watcher and the next sweep, which wait until it is listed or surely over.
        diag::log(&format!(
            "smolvm-harness: the server may still be creating {name} ({err}); the exit hook, \
             the crash watcher or the next sweep will look"
        ));
        return;
    }
    match judge(&claim, seen.as_ref(), CreateState::Over) {
        Verdict::Ours => match delete(smolvm, name, &claim.role) {
            Ok(true) => forget(&key),
            Ok(false) => mark_kept(smolvm, name),
            Err(e) => diag::log(&format!(
                "smolvm-harness: failed to delete machine {name} left by a failed create: {e}"
            )),
        },
        Verdict::CannotTell => {
            diag::log(&left_alone(smolvm, name));
            forget(&key);
        }
        Verdict::NotOurs | Verdict::Gone | Verdict::Pending => forget(&key),
    }
}

/// What to say of a machine that may be ours but is not provably so ([`Verdict::CannotTell`]).
pub(crate) fn left_alone(smolvm: &Smolvm, name: &str) -> String {
    format!(
        "smolvm-harness: machine {name} was not deleted: its create did not succeed, and on \
         smolvm without labels a machine of that name may as well be someone else's. If it is \
         yours, delete it with: {}",
        crate::machine::delete_command(smolvm, name)
    )
}

/// Whether a failed create sent to a server may still make its machine there: the request
/// may have reached it and it did not finish answering (no answer in time, a broken
/// connection, its own 408 timeout, a proxy's 502/503/504). A refused or missing socket
/// means it never got it; any other answer of the server's (a 500 included) means it is
/// done, and a listing now is the truth.
fn may_still_land(err: &Error) -> bool {
    match err {
        Error::Unreachable { source, .. } => !matches!(
            source.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
        ),
        // The server's own timeout, or a proxy's answer for a server that did not answer it
        // in time (502, 504; a 503 without smolvm's own code): the server may go on.
        Error::Api { status, code, .. } => {
            *status == 408 || *status == 502 || *status == 504 || (*status == 503 && code.is_none())
        }
        _ => false,
    }
}

/// False when smolvm never ran (missing binary, spawn failure), refused the input before
/// running, or refused the name as taken: then there is nothing of ours to delete.
fn may_have_created(err: &Error) -> bool {
    let refused = matches!(
        err,
        Error::NotFound { .. }
            | Error::Spawn { .. }
            | Error::InvalidInput { .. }
            | Error::Unsupported { .. }
            | Error::NameInUse { .. }
    );
    // A server that refused the request (4xx but its own timeout), or that was never reached.
    let api_refused = match err {
        Error::Api { .. } if may_still_land(err) => false,
        Error::Api { status, .. } => (400..500).contains(status),
        Error::Unreachable { .. } => !may_still_land(err),
        _ => false,
    };
    !refused && !api_refused && !is_already_exists(err)
}

/// smolvm's duplicate-name refusal: `machine 'N' already exists` (0.8.x) or `… already exists
/// or is being created` (≥ 1.0.0).
pub(crate) fn is_already_exists(err: &Error) -> bool {
    match err {
        Error::Failed { stderr, .. } => String::from_utf8_lossy(stderr).contains("already exists"),
        Error::Api {
            status: 409,
            code,
            message,
            ..
        } => code.as_deref() == Some("CONFLICT") && message.contains("already exists"),
        _ => false,
    }
}

/// The machine is gone (deleted by its guard): forget it everywhere.
pub(crate) fn unregister(smolvm: &Smolvm, name: &str) {
    forget(&(Scope::of(smolvm), name.to_string()));
}

fn forget(key: &Key) {
    let removed = registry().remove(key);
    if let Some((path, _)) = removed.and_then(|r| r.ledger) {
        ledger::remove(&path);
    }
}

/// The machine is kept on purpose: forget it in-process and mark it kept in the ledger, so
/// no sweep or watcher ever deletes it.
pub(crate) fn mark_kept(smolvm: &Smolvm, name: &str) {
    let key = (Scope::of(smolvm), name.to_string());
    let removed = registry().remove(&key);
    if let Some(Role::Clone { golden }) = removed.as_ref().map(|r| &r.claim.role) {
        kept_clones().insert(key, golden.clone());
    }
    if let Some((path, entry)) = removed.and_then(|r| r.ledger) {
        keep_entry(&path, entry);
    }
}

/// Rewrite a ledger entry as kept.
pub(crate) fn keep_entry(path: &std::path::Path, mut entry: Entry) {
    entry.kept = true;
    if let Err(e) = entry
        .to_json()
        .and_then(|j| ledger::write_atomically(path, &j))
    {
        diag::log(&format!(
            "smolvm-harness: could not mark machine {} as kept in the ledger: {e}; a later \
             sweep may delete it once this process has exited",
            entry.claim.name
        ));
    }
}

/// How [`drain`] takes the registry lock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Drain {
    /// Wait for it (the signal thread: other threads may hold it briefly).
    Wait,
    /// Give up after a while (at exit, another thread may be stopped holding it forever).
    TryFor(Duration),
}

/// Take every machine registered by this process out of the registry.
pub(crate) fn drain(how: Drain) -> Vec<Registered> {
    let Some(registry) = REGISTRY.get() else {
        return Vec::new();
    };
    let mut guard = match how {
        Drain::Wait => lock(registry),
        Drain::TryFor(limit) => {
            let deadline = Instant::now() + limit;
            loop {
                match registry.try_lock() {
                    Ok(g) => break g,
                    Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                    Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(TryLockError::WouldBlock) => {
                        diag::log(
                            "smolvm-harness: registry busy at exit; leaving machines to the \
                             crash watcher",
                        );
                        return Vec::new();
                    }
                }
            }
        }
    };
    // A child forked without exec inherits the registry, and must not settle its parent's
    // machines when it exits.
    let me = std::process::id();
    let keys: Vec<Key> = guard
        .iter()
        .filter(|(_, r)| r.claim.owner.pid == me)
        .map(|(k, _)| k.clone())
        .collect();
    keys.into_iter().filter_map(|k| guard.remove(&k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::MachineInfo;

    /// Cleanup switched back on for a machine made long ago (smolvm without labels): the
    /// machine is still provably ours, whatever its creation time says.
    #[test]
    fn a_machine_registered_again_after_its_create_stays_ours() {
        let smolvm = Smolvm::simulated_version(Version::new(0, 8, 0));
        register(
            &smolvm,
            "smt-rearmed-x-0",
            Evidence::GeneratedName,
            KeepPolicy::Never,
            Stage::Created,
            Role::Machine,
        )
        .unwrap();
        let key = (Scope::of(&smolvm), "smt-rearmed-x-0".to_string());
        let claim = registry().get(&key).map(|r| r.claim.clone()).unwrap();
        forget(&key);
        let made_long_ago = MachineInfo {
            name: "smt-rearmed-x-0".into(),
            state: crate::cli::MachineState::Stopped,
            pid: None,
            created_at: Some(1000),
            image: None,
            labels: Default::default(),
            network: None,
        };
        assert_eq!(
            judge(&claim, Some(&made_long_ago), CreateState::Over),
            Verdict::Ours
        );
    }
}
