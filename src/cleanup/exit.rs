//! Deleting on the way out: the signal thread (SIGINT, SIGTERM, SIGHUP, SIGQUIT) and the exit
//! hook (normal exit and `std::process::exit`, for machines never dropped: statics, rstest
//! `#[once]` fixtures).
//!
//! Guarantees, for both:
//! * every smolvm call of this process still running is stopped first (a create would
//!   otherwise land after we looked, and leak), and waited for;
//! * each registered machine is judged by the one ownership rule: a chosen name that belongs
//!   to someone else is never deleted, and a record whose machine we cannot judge stays in the
//!   ledger for the crash watcher or the next sweep;
//! * the keep policy holds: `always` keeps; `on-failure` keeps when the process is killed by
//!   a signal (a killed test counts as failed) or, at exit, when a panic was seen;
//! * nothing here panics out or hangs the exit: every smolvm call is bounded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use super::goldens;
use super::owner::{judge, CreateState, Evidence, Role, Stage, Verdict};
use super::process;
use super::registry::{self, Drain, Registered, Scope};
use crate::diag;
use crate::runner::ProcessRunner;
use crate::Smolvm;

/// How long one smolvm call may take on the signal and exit paths: nextest's grace period is
/// 10 s by default, and whatever is left over is the watcher's job.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Install, once per process: the signal thread, the panic observer, and a reference that
/// keeps the exit hook linked.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::hint::black_box(exit_hook as fn());
        install_signal_thread();
    });
    // `set_hook` panics when called on a panicking thread (a machine made in a `Drop` during
    // unwinding): then the observer is installed by a later registration.
    static OBSERVER: Once = Once::new();
    if !std::thread::panicking() {
        OBSERVER.call_once(observe_panics);
    }
}

/// Set by the first panic anywhere in the process: at exit, `on-failure` then keeps.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Chain a panic hook that notes that something failed, then does what the previous hook
/// did (libtest's output capture and messages are untouched). Any panic counts, also one a
/// test expected (`#[should_panic]`, `catch_unwind`): `on-failure` then keeps at exit, which
/// errs towards keeping. A hook set later by the user replaces this one.
fn observe_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        previous(info);
    }));
}

/// What one pass of [`settle_own`] did.
#[derive(Default)]
struct Tally {
    deleted: usize,
    kept: usize,
    left: usize,
}

/// Stop our smolvm calls, then delete, keep or leave each machine this process registered.
fn settle_own(how: Drain, failing: bool) -> Tally {
    // First the mark, then the kill: a create about to spawn is refused, one being spawned is
    // waited for until it is in the in-flight list (`ProcessRunner`), so the kill reaches
    // every create that will ever run, and none can land after we looked.
    registry::TERMINATING.store(true, Ordering::SeqCst);
    crate::runner::quiesce_creates(Duration::from_secs(2));
    // The signal reached only our process group; smolvm calls run in their own groups.
    let killed = crate::runner::kill_in_flight();
    crate::remote::http::cancel_in_flight();
    process::wait_dead(&killed, Duration::from_secs(2));
    let mut drained = registry::drain(how);
    // Clones before the goldens they were forked from.
    drained.sort_by_key(|r| r.claim.role.rank());
    goldens::release_own();
    let mut tally = Tally::default();
    // One `machine ls` per smolvm state.
    let mut listings: HashMap<Scope, Option<Vec<crate::MachineInfo>>> = HashMap::new();
    // Goldens with a clone that stays: kept ones keep their golden (kept too); one left for a
    // later layer (not deleted now) leaves its golden to that layer, which deletes it after
    // the clone. Clones kept earlier by `keep`/`disable_cleanup` count as kept.
    let mut clones_kept: HashSet<(Scope, String)> = registry::goldens_of_kept_clones();
    let mut clones_left: HashSet<(Scope, String)> = HashSet::new();
    for reg in drained {
        let client = cleanup_client(&reg);
        let name = reg.claim.name.clone();
        let scope = Scope::of(&reg.smolvm);
        if reg.claim.role.is_shared_golden() {
            // The run's, not ours to end: retired once nobody holds it (see `goldens`).
            continue;
        }
        if let Role::Golden { .. } = reg.claim.role {
            let key = (scope.clone(), name.clone());
            if clones_kept.contains(&key) {
                keep(&reg, &client, "a clone of it is kept");
                tally.kept += 1;
                continue;
            }
            if clones_left.contains(&key) {
                // Its ledger entry stays as it is: the watcher or the next sweep deletes
                // the clone, then the golden.
                tally.left += 1;
                continue;
            }
        }
        let golden_of = match &reg.claim.role {
            Role::Clone { golden } => Some((scope.clone(), golden.clone())),
            _ => None,
        };
        if reg.claim.keep.keeps(failing) {
            keep(&reg, &client, "SMOLVM_HARNESS_KEEP");
            tally.kept += 1;
            clones_kept.extend(golden_of);
            continue;
        }
        // Judged by the one rule, against one `machine ls` per smolvm state: a machine of
        // ours replaced by someone else's (other labels) is not deleted.
        let listing = listings
            .entry(Scope::of(&reg.smolvm))
            .or_insert_with(|| client.machine_list().ok());
        let verdict = match (listing, reg.claim.stage) {
            // Our creates were stopped and waited for above: over. Not a create sent to a
            // server: it goes on there, and until its machine is listed it may yet land
            // (its entry stays for the watcher and the next sweep).
            (Some(list), stage) => {
                let seen = list.iter().find(|m| m.name == name);
                let create = if reg.smolvm.remote_url().is_some() && stage == Stage::Creating {
                    super::sweep::server_create_state(reg.claim.registered_at, seen.is_some())
                } else {
                    CreateState::Over
                };
                judge(&reg.claim, seen, create)
            }
            // Cannot list. Where labels would decide, nothing is deleted unproven: the
            // watcher or the next sweep looks again. Without labels our succeeded create is
            // all the proof there is: delete what is there rather than leak it.
            // (In-process clients have no one to defer to: their machines go by name.)
            // (Over the API the server's `createdAt` is the proof, and it needs the listing:
            // a server that cannot list now is left to the watcher and the next sweep.)
            (None, Stage::Created)
                if (reg.claim.evidence != Evidence::OwnerLabel || reg.ledger.is_none())
                    && reg.smolvm.remote_url().is_none() =>
            {
                Verdict::Ours
            }
            (None, _) => Verdict::Pending,
        };
        match verdict {
            Verdict::Ours => match registry::delete(&client, &name, &reg.claim.role) {
                Ok(true) => {
                    drop_record(&reg);
                    tally.deleted += 1;
                }
                Ok(false) => {
                    // A golden with clones someone else made: said by `delete`; kept.
                    if let Some((path, entry)) = &reg.ledger {
                        registry::keep_entry(path, entry.clone());
                    }
                    tally.kept += 1;
                }
                Err(e) => {
                    tally.left += 1;
                    clones_left.extend(golden_of);
                    diag::log(&format!(
                        "smolvm-harness: could not delete machine {name}: {e}. It stays in the \
                         ledger for the crash watcher or the next sweep; by hand: {}",
                        crate::machine::delete_command_for(&client, &name, &reg.claim.role)
                    ));
                }
            },
            Verdict::NotOurs | Verdict::Gone => drop_record(&reg),
            Verdict::CannotTell => {
                diag::log(&registry::left_alone(&client, &name));
                drop_record(&reg);
            }
            // In-process machines die with the process; only a ledgered one is left to the
            // watcher and the next sweep.
            Verdict::Pending if reg.ledger.is_none() => {}
            Verdict::Pending => {
                tally.left += 1;
                clones_left.extend(golden_of);
            }
        }
    }
    tally
}

fn keep(reg: &Registered, client: &Smolvm, why: &str) {
    if let Some((path, entry)) = &reg.ledger {
        registry::keep_entry(path, entry.clone());
    }
    diag::log(&format!(
        "smolvm-harness: keeping machine {} ({why}); delete it with: {}",
        reg.claim.name,
        crate::machine::delete_command_for(client, &reg.claim.name, &reg.claim.role)
    ));
}

fn drop_record(reg: &Registered) {
    if let Some((path, _)) = &reg.ledger {
        super::ledger::remove(path);
    }
}

/// The client for deleting on the way out: a bounded timeout and, for real smolvm, the
/// process runner, which on Unix spawns no thread (the exit hook cannot).
fn cleanup_client(reg: &Registered) -> Smolvm {
    let smolvm = &reg.smolvm;
    let client = smolvm.with_timeout(smolvm.timeout().min(CLEANUP_TIMEOUT));
    if smolvm.process_target().is_none() {
        // In-process runners, and clients of `smolvm serve` (whose requests spawn nothing).
        return client;
    }
    let client = client.with_runner(ProcessRunner);
    match reg.version {
        Some(v) => client.with_version(v),
        None => client,
    }
}

fn report(when: &str, t: &Tally) {
    if t.deleted + t.kept + t.left == 0 {
        return;
    }
    // At exit these are machines no guard dropped: statics, `#[once]` fixtures, goldens
    // of `Golden::shared` and their clones; none of them is a leak.
    let mut msg = format!(
        "smolvm-harness: {when} deleted {} machine(s) that no guard dropped",
        t.deleted
    );
    if t.kept > 0 {
        msg.push_str(&format!(", kept {}", t.kept));
    }
    if t.left > 0 {
        msg.push_str(&format!(", {} left to the crash watcher", t.left));
    }
    diag::log(&msg);
}

/// Process exit: machines whose guards were never dropped are settled here. Runs on normal
/// exit and `std::process::exit` (which libtest uses when tests fail), not on a fatal signal
/// or abort (the watcher covers those).
///
/// Kept minimal, as code after `main` must be: no threads (the process runner starts none),
/// no panics escaping, messages as raw writes to fd 2.
#[dtor::dtor(unsafe)]
fn exit_hook() {
    let _ = std::panic::catch_unwind(|| {
        if registry::SIGNALLED.load(Ordering::SeqCst) {
            // The signal thread is settling (the signal ended a call the main thread was in,
            // and `main` returned): it owns the teardown. Cancelling its calls or draining
            // under it would leave machines behind; wait for it (bounded), then let the
            // process end as the signal says.
            let deadline = std::time::Instant::now() + signal_teardown_limit();
            while !SIGNAL_SETTLED.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Then the signal thread re-raises the signal, which ends the process with the
            // status that names it. Returning first would end it as a success: if it has not
            // happened (a teardown past the limit), raise it from here.
            std::thread::sleep(Duration::from_secs(2));
            #[cfg(unix)]
            {
                let signal = SIGNAL_NUMBER.load(Ordering::SeqCst);
                if signal != 0 {
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                }
            }
            return;
        }
        let failing = PANICKED.load(Ordering::SeqCst);
        let tally = settle_own(Drain::TryFor(Duration::from_secs(2)), failing);
        report("at exit", &tally);
    });
}

/// The signals that end a test process politely. SIGHUP and SIGQUIT come for free.
#[cfg(unix)]
const TERMINATING_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// A thread that on the first terminating signal settles what is registered and then
/// re-raises the signal with its default action, so the exit status still says which signal
/// ended the process (nextest and shells report it).
fn install_signal_thread() {
    #[cfg(unix)]
    {
        // A signal the process ignores (nohup's SIGHUP) stays ignored.
        let wanted: Vec<i32> = TERMINATING_SIGNALS
            .into_iter()
            .filter(|&s| !is_ignored(s))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // A second signal while cleanup runs ends the process at once, as a second Ctrl-C
        // should; the crash watcher then finishes the job.
        for &signal in &wanted {
            let _ = signal_hook::flag::register_conditional_default(
                signal,
                Arc::clone(second_signal()),
            );
        }
        let mut signals = match signal_hook::iterator::Signals::new(&wanted) {
            Ok(s) => s,
            Err(e) => {
                diag::log(&format!(
                    "smolvm-harness: cannot watch SIGINT/SIGTERM ({e}); machines of an \
                     interrupted run are left to the crash watcher"
                ));
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("smolvm-harness-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    terminate(signal);
                }
            });
        if let Err(e) = spawned {
            diag::log(&format!(
                "smolvm-harness: cannot start the signal thread ({e}); machines of an \
                 interrupted run are left to the crash watcher"
            ));
        }
    }
}

/// Set when the first terminating signal is being handled.
#[cfg(unix)]
fn second_signal() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(Default::default)
}

#[cfg(unix)]
fn is_ignored(signal: i32) -> bool {
    // SAFETY: with a null new action, sigaction only writes the current one into `old`, for
    // which an all-zero sigaction is a valid initial value.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Set when the signal thread has settled what was registered (see [`exit_hook`]).
static SIGNAL_SETTLED: AtomicBool = AtomicBool::new(false);

/// The signal being handled, for the exit hook to end the process by it.
static SIGNAL_NUMBER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// How long the exit hook waits for the signal thread's teardown: twice the bound of one of
/// its calls (a listing and a delete; 120 s by default), then it ends the process by the
/// signal itself.
fn signal_teardown_limit() -> Duration {
    let call = crate::config::config_or_default()
        .call_timeout
        .min(CLEANUP_TIMEOUT);
    call.saturating_mul(2)
}

#[cfg(unix)]
fn terminate(signal: i32) -> ! {
    SIGNAL_NUMBER.store(signal, Ordering::SeqCst);
    registry::SIGNALLED.store(true, Ordering::SeqCst);
    registry::TERMINATING.store(true, Ordering::SeqCst);
    second_signal().store(true, Ordering::SeqCst);
    // A killed test counts as failed, for `on-failure`.
    let tally = std::panic::catch_unwind(|| settle_own(Drain::Wait, true)).unwrap_or(Tally {
        left: 1,
        ..Tally::default()
    });
    report(&format!("{}:", signal_name(signal)), &tally);
    SIGNAL_SETTLED.store(true, Ordering::SeqCst);
    // Re-raise with the default action: the exit status then names the signal.
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    // Only if the default action did not end the process.
    std::process::exit(128 + signal)
}

#[cfg(unix)]
fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}
