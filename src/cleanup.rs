//! Leak-proof cleanup: whatever ends a test process, its machines are deleted.
//!
//! Each layer covers what the one before it cannot:
//!
//! | how the test process ends | what deletes its machines |
//! |---|---|
//! | the guard is dropped (test passed or panicked) | `Machine`'s `Drop` |
//! | normal exit with guards never dropped (a `static`, an rstest `#[once]` fixture) | the exit hook (`dtor`) |
//! | SIGINT, SIGTERM, SIGHUP, SIGQUIT (Ctrl-C; nextest's timeout) | a signal thread, which then re-raises the signal |
//! | SIGKILL, abort, OOM kill, a crash | the crash watcher: a copy of this binary waiting for EOF on a pipe from us |
//! | the watcher was killed too (reboot, `kill -9` of everything) | the next run's sweep ([`sweep`]) |
//!
//! **Intent is recorded before `machine create`** ([`register`]), so a process that dies
//! mid-create is covered like any other (testcontainers-java PR #110, smolvm #582).
//!
//! **The ledger.** For clients that spawn real smolvm processes, every machine has one small
//! JSON file in `$SMOLVM_HARNESS_STATE_DIR/ledger/`, written (temp file + rename) before
//! create: its name, the owner's pid and start time (so a reused pid is not mistaken for the
//! owner), the smolvm program and the *process* env of the client (e.g. `SMOLVM_DATA_DIR`;
//! never a guest `-e` value), the variables that locate smolvm's state, the version, the
//! creation time, a `kept` flag and `NEXTEST_RUN_ID`. Machines of in-process runners
//! (simulated, scripted) die with the process and are not ledgered.
//!
//! **The sweep** deletes a machine only if all of these hold: it has a ledger entry; the
//! entry's owner is dead (no such pid, a zombie, or a pid reused by a process with another
//! start time); it is not kept; and the machine is recognisably the one the entry describes
//! (its `smolvm-harness.owner` label matches, on smolvm ≥ 1.8.0; its name has the harness
//! prefix, before). So it never touches a live process's machine, a kept machine, or one made
//! by hand.
//!
//! **Environment.** `SMOLVM_HARNESS_WATCHER=off` (or `0`, `false`, `no`) disables the crash
//! watcher; the next run's sweep still reclaims what a crashed process left. Internally, a
//! pid value of that variable is how a process is told it *is* a watcher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::config_or_default;
use crate::diag;
use crate::dialect::Version;
use crate::error::{Error, Result};
use crate::runner::{lock, ProcessRunner};
use crate::Smolvm;

/// Label naming the process that owns a machine: `<pid>-<start time>` (or `<pid>` where the
/// start time is unknown), the same token as the ledger's owner.
pub(crate) const OWNER_LABEL: &str = "smolvm-harness.owner";
/// Label carrying `NEXTEST_RUN_ID`, when set.
pub(crate) const RUN_LABEL: &str = "smolvm-harness.run";
/// Disables the watcher (`off`), or, holding an owner token, makes this process the watcher.
const WATCHER_ENV: &str = "SMOLVM_HARNESS_WATCHER";
/// Private: set only by [`spawn_watcher`] on the process it starts, with the owner's token.
/// A separate name, so that a user writing `SMOLVM_HARNESS_WATCHER=1` ("on") can never turn
/// an ordinary run into a watcher.
const WATCHER_OWNER_ENV: &str = "SMOLVM_HARNESS_WATCHER_OWNER_PRIVATE";
/// How long one smolvm call may take on the signal and exit paths: nextest's grace period is
/// 10 s by default, and whatever is left over is the watcher's job.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Variables, inherited by smolvm from us, that decide which machines it sees. Recorded so a
/// later sweep only judges entries against the same smolvm state: otherwise a run with
/// another `SMOLVM_DATA_DIR` would see "no such machine" and forget a real leak.
/// `SMOLVM_FAKE_STATE` is the crate's own fake smolvm's.
const STATE_ENV: &[&str] = &[
    "SMOLVM_DATA_DIR",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "HOME",
    "SMOLVM_FAKE_STATE",
];
/// Ledger format, for a future change of fields.
const LEDGER_FORMAT: u64 = 1;

// ---------------------------------------------------------------------------------------
// The in-process registry
// ---------------------------------------------------------------------------------------

struct Registered {
    smolvm: Smolvm,
    /// The registering process: a child forked without exec inherits the registry, and must
    /// not delete its parent's machines when it exits.
    pid: u32,
    /// Known at register time, so the exit path never has to ask `--version`.
    version: Option<Version>,
    /// The ledger file, for process-runner clients.
    ledger: Option<PathBuf>,
}

static REGISTRY: OnceLock<Mutex<HashMap<String, Registered>>> = OnceLock::new();

/// Set once a signal is being handled: the process is about to end, no new machine may start.
static TERMINATING: AtomicBool = AtomicBool::new(false);

fn registry() -> MutexGuard<'static, HashMap<String, Registered>> {
    lock(REGISTRY.get_or_init(Default::default))
}

/// Before `machine create`: record intent in the on-disk ledger and the in-process registry
/// (signals, exit hook, crash watcher); on first use per process also runs the startup sweep
/// (once per process and smolvm target, errors logged not returned). Err only if the ledger
/// cannot be written.
pub(crate) fn register(smolvm: &Smolvm, name: &str) -> Result<()> {
    if TERMINATING.load(Ordering::SeqCst) {
        // A signal is being handled and the process will end in a moment; a machine created
        // now could be missed by the cleanup already under way.
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    install_signal_thread();
    keep_exit_hook();
    let (version, ledger) = match Target::of(smolvm) {
        None => (None, None),
        Some(target) => {
            // Asked now (the create needs it anyway, so it is cached), so that the exit path
            // and the watcher never have to.
            let version = smolvm.version().ok();
            startup_sweep(smolvm, &target);
            start_watcher();
            let entry = Entry::for_this_process(name, &target, version)?;
            (version, Some(write_entry(&ledger_dir(), &entry)?))
        }
    };
    registry().insert(
        name.to_string(),
        Registered {
            smolvm: smolvm.clone(),
            pid: std::process::id(),
            version,
            ledger,
        },
    );
    Ok(())
}

/// Labels every harness machine carries (the CLI layer sends them only on smolvm >= 1.8.0):
/// `smolvm-harness.owner=<pid>-<start time>` and, under nextest, `smolvm-harness.run=<run id>`.
pub(crate) fn ownership_labels() -> Vec<(String, String)> {
    let pid = std::process::id();
    let mut labels = vec![(
        OWNER_LABEL.to_string(),
        owner_token(pid, start_time_of(pid)),
    )];
    if let Some(run) = run_id() {
        labels.push((RUN_LABEL.to_string(), run));
    }
    labels
}

/// The machine is gone: forget it everywhere (registry and ledger file).
pub(crate) fn unregister(name: &str) {
    let path = forget(name);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != io::ErrorKind::NotFound {
            diag::log(&format!(
                "smolvm-harness: could not remove ledger entry {}: {e}",
                path.display()
            ));
        }
    }
}

/// The machine is kept on purpose: forget it in-process, mark it kept in the ledger so no
/// sweep or watcher ever deletes it.
pub(crate) fn mark_kept(name: &str) {
    let path = forget(name);
    match read_entry(&path) {
        Ok(Some(mut entry)) => {
            entry.kept = true;
            if let Err(e) = entry
                .to_json()
                .and_then(|json| write_atomically(&path, &json))
            {
                diag::log(&format!(
                    "smolvm-harness: could not mark machine {name} as kept in the ledger: {e}; \
                     a later sweep may delete it once this process has exited"
                ));
            }
        }
        // In-process runners have no ledger entry.
        Ok(None) => {}
        Err(e) => diag::log(&format!(
            "smolvm-harness: could not read the ledger entry of machine {name}: {e}"
        )),
    }
}

/// Remove `name` from the registry; return where its ledger entry is (or would be).
fn forget(name: &str) -> PathBuf {
    let removed = registry().remove(name);
    // Also when it was not registered (the signal thread may have drained it): the file name
    // is a function of the name and our pid.
    removed
        .and_then(|r| r.ledger)
        .unwrap_or_else(|| ledger_path(&ledger_dir(), name, std::process::id()))
}

// ---------------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------------

/// Delete the machines that test processes left behind when they died: those with a
/// harness ledger entry (in `SMOLVM_HARNESS_STATE_DIR/ledger/`) whose owner process is dead,
/// that are not kept, and that are recognisably the entry's machine (matching
/// `smolvm-harness.owner` label on smolvm ≥ 1.8.0; the `SMOLVM_HARNESS_PREFIX` name prefix
/// before). Never a live process's machine, a kept one, or one made by hand (no ledger entry).
///
/// Only entries made with the same smolvm target as `smolvm` are considered: the same
/// program, the same process env, and the same state-locating variables (`SMOLVM_DATA_DIR`,
/// `XDG_*`, `HOME`). Entries of dead owners whose machine no longer exists are removed.
///
/// Returns the names deleted. A machine that could not be deleted is reported on stderr and
/// left in the ledger for the next sweep; an error is returned only if the machines cannot be
/// listed. Clients with an in-process runner have nothing to sweep.
///
/// The harness runs this itself, once per process, before its first machine is created;
/// call it directly for a cleanup step in CI.
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
    let dir = ledger_dir();
    let ours = pid_namespace();
    let candidates: Vec<(PathBuf, Entry)> = read_ledger(&dir)
        .into_iter()
        .filter(|(_, e)| e.target == target)
        // Another pid namespace (a container sharing the state dir): its pids mean nothing here.
        .filter(|(_, e)| e.pid_ns.is_none() || e.pid_ns == ours)
        .filter(|(_, e)| !owner_alive(e.owner_pid, e.owner_start))
        .collect();
    if candidates.is_empty() {
        // The common case costs no smolvm call at all.
        return Ok(Vec::new());
    }
    let machines: HashMap<String, crate::MachineInfo> = smolvm
        .machine_list()?
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
    let prefix = format!("{}-", config_or_default().prefix);
    let mut deleted = Vec::new();
    for (path, entry) in candidates {
        let Some(machine) = machines.get(&entry.name) else {
            // Owner dead, machine gone: nothing left to protect or reclaim.
            remove_quietly(&path);
            continue;
        };
        if entry.kept {
            continue;
        }
        match entry.recognises(&machine.labels, &prefix) {
            Recognised::Yes => {}
            Recognised::NotOurs => {
                // Same name, other owner: ours is gone, this one is someone else's.
                remove_quietly(&path);
                continue;
            }
            Recognised::CannotTell => continue,
        }
        match smolvm.machine_delete(&entry.name) {
            Ok(()) => {
                remove_quietly(&path);
                deleted.push(entry.name);
            }
            Err(e) => diag::log(&format!(
                "smolvm-harness: sweep could not delete machine {} left by dead process {}: \
                 {e}; it stays in the ledger for the next sweep",
                entry.name,
                entry.owner()
            )),
        }
    }
    Ok(deleted)
}

/// Run [`sweep`] once per process and smolvm target; report, never fail.
fn startup_sweep(smolvm: &Smolvm, target: &Target) {
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

// ---------------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------------

/// What reaches one smolvm state: the program and the env that tells smolvm where its state is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Target {
    /// Absolute when configured with a directory part; a bare name is looked up on `PATH`.
    program: PathBuf,
    /// The client's extra process env, in order.
    process_env: Vec<(String, String)>,
    /// The effective values of [`STATE_ENV`] for the smolvm process (client env first, then
    /// ours), only those set.
    state_env: BTreeMap<String, String>,
}

impl Target {
    /// `None` for in-process runners.
    fn of(smolvm: &Smolvm) -> Option<Target> {
        let (program, process_env) = smolvm.process_target()?;
        let program = absolute_program(program);
        let mut state_env = BTreeMap::new();
        for key in STATE_ENV {
            let client = process_env.iter().rev().find(|(k, _)| k == key);
            let value = match client {
                Some((_, v)) => Some(v.clone()),
                None => std::env::var(key).ok(),
            };
            if let Some(v) = value {
                state_env.insert(key.to_string(), v);
            }
        }
        Some(Target {
            program,
            process_env,
            state_env,
        })
    }

    /// A client that reaches this target from any process.
    fn client(&self, version: Option<Version>) -> Smolvm {
        let mut smolvm = Smolvm::new(self.program.clone());
        for (k, v) in &self.process_env {
            smolvm = smolvm.with_process_env(k.clone(), v.clone());
        }
        if let Some(v) = version {
            smolvm = smolvm.with_version(v);
        }
        smolvm
    }
}

/// A relative path with a directory part (`./bin/smolvm`) is made absolute, so the watcher
/// and later sweeps reach the same binary from anywhere; a bare name stays a `PATH` lookup.
fn absolute_program(program: PathBuf) -> PathBuf {
    let has_dir = program.components().count() > 1;
    if has_dir && program.is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(program);
        }
    }
    program
}

/// One ledger file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    owner_pid: u32,
    /// Linux: field 22 of `/proc/PID/stat` (clock ticks after boot).
    owner_start: Option<u64>,
    /// Linux: the owner's pid namespace (`pid:[…]`), since pids only mean something inside one.
    pid_ns: Option<String>,
    target: Target,
    smolvm_version: Option<Version>,
    created_at: u64,
    kept: bool,
    run_id: Option<String>,
}

/// Whether a listed machine is the one a ledger entry describes.
#[derive(Debug, PartialEq, Eq)]
enum Recognised {
    Yes,
    /// Labels say another owner made it.
    NotOurs,
    /// Not enough information to be sure: leave it.
    CannotTell,
}

impl Entry {
    fn for_this_process(name: &str, target: &Target, version: Option<Version>) -> Result<Entry> {
        if target.program.to_str().is_none() {
            return Err(Error::invalid(
                "smolvm program path",
                format!(
                    "{} is not valid UTF-8, so the crash ledger cannot record it",
                    target.program.display()
                ),
            ));
        }
        let pid = std::process::id();
        Ok(Entry {
            name: name.to_string(),
            owner_pid: pid,
            owner_start: start_time_of(pid),
            pid_ns: pid_namespace(),
            target: target.clone(),
            smolvm_version: version,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kept: false,
            run_id: run_id(),
        })
    }

    fn owner(&self) -> String {
        owner_token(self.owner_pid, self.owner_start)
    }

    fn recognises(&self, labels: &BTreeMap<String, String>, prefix: &str) -> Recognised {
        if let Some(owner) = labels.get(OWNER_LABEL) {
            let same_run = labels.get(RUN_LABEL) == self.run_id.as_ref();
            return if *owner == self.owner() && same_run {
                Recognised::Yes
            } else {
                Recognised::NotOurs
            };
        }
        // No owner label. If the smolvm that created ours takes labels, ours had one.
        let labelled = self.smolvm_version.is_some_and(|v| v.dialect().labels);
        if labelled {
            Recognised::NotOurs
        } else if self.name.starts_with(prefix) {
            Recognised::Yes
        } else {
            Recognised::CannotTell
        }
    }

    fn to_json(&self) -> Result<String> {
        let program =
            self.target.program.to_str().ok_or_else(|| {
                Error::invalid("smolvm program path", "not valid UTF-8".to_string())
            })?;
        let mut o = serde_json::Map::new();
        o.insert("format".into(), LEDGER_FORMAT.into());
        o.insert("name".into(), self.name.clone().into());
        o.insert("owner".into(), self.owner().into());
        o.insert("owner_pid".into(), self.owner_pid.into());
        if let Some(s) = self.owner_start {
            o.insert("owner_start".into(), s.into());
        }
        if let Some(ns) = &self.pid_ns {
            o.insert("pid_ns".into(), ns.clone().into());
        }
        o.insert("program".into(), program.into());
        let env: Vec<serde_json::Value> = self
            .target
            .process_env
            .iter()
            .map(|(k, v)| serde_json::Value::from(vec![k.clone(), v.clone()]))
            .collect();
        o.insert("process_env".into(), env.into());
        let state: serde_json::Map<String, serde_json::Value> = self
            .target
            .state_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        o.insert("state_env".into(), state.into());
        if let Some(v) = self.smolvm_version {
            o.insert("smolvm_version".into(), v.to_string().into());
        }
        o.insert("created_at".into(), self.created_at.into());
        o.insert("kept".into(), self.kept.into());
        if let Some(run) = &self.run_id {
            o.insert("run_id".into(), run.clone().into());
        }
        serde_json::to_string_pretty(&serde_json::Value::Object(o))
            .map_err(|e| Error::invalid("ledger entry", e.to_string()))
    }

    fn from_json(text: &str) -> Option<Entry> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        if v.get("format")?.as_u64()? != LEDGER_FORMAT {
            return None;
        }
        let str_of = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
        let process_env = v
            .get("process_env")?
            .as_array()?
            .iter()
            .map(|pair| {
                let pair = pair.as_array()?;
                Some((
                    pair.first()?.as_str()?.to_string(),
                    pair.get(1)?.as_str()?.to_string(),
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        let state_env = v
            .get("state_env")?
            .as_object()?
            .iter()
            .map(|(k, x)| Some((k.clone(), x.as_str()?.to_string())))
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Entry {
            name: str_of("name")?,
            owner_pid: u32::try_from(v.get("owner_pid")?.as_u64()?).ok()?,
            owner_start: v.get("owner_start").and_then(|x| x.as_u64()),
            pid_ns: str_of("pid_ns"),
            target: Target {
                program: PathBuf::from(str_of("program")?),
                process_env,
                state_env,
            },
            smolvm_version: str_of("smolvm_version").and_then(|s| s.parse().ok()),
            created_at: v.get("created_at").and_then(|x| x.as_u64()).unwrap_or(0),
            kept: v.get("kept").and_then(|x| x.as_bool()).unwrap_or(false),
            run_id: str_of("run_id"),
        })
    }
}

fn ledger_dir() -> PathBuf {
    config_or_default().state_dir.join("ledger")
}

/// `<name>.<pid>.json`: machine names never contain `.`, and the pid keeps two processes
/// that reuse a name (explicit names, separate smolvm states) from overwriting each other.
fn ledger_path(dir: &Path, name: &str, pid: u32) -> PathBuf {
    dir.join(format!("{name}.{pid}.json"))
}

fn write_entry(dir: &Path, entry: &Entry) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create ledger directory", dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    if !trusted(dir) {
        return Err(Error::io(
            "use ledger directory",
            dir,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "it belongs to another user or others can write to it; set \
                 SMOLVM_HARNESS_STATE_DIR to a directory of your own",
            ),
        ));
    }
    let path = ledger_path(dir, &entry.name, entry.owner_pid);
    write_atomically(&path, &entry.to_json()?)?;
    Ok(path)
}

/// Write to a temp file beside `path`, then rename: a reader (a sweep, the watcher) sees the
/// old entry or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write ledger entry", &tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write ledger entry", path, e)
    })
}

/// `Ok(None)` when there is no such file.
fn read_entry(path: &Path) -> io::Result<Option<Entry>> {
    match fs::read_to_string(path) {
        Ok(text) => Entry::from_json(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not a ledger entry this crate wrote",
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every readable entry. Temp files and foreign files are skipped; nothing here fails, since
/// a sweep or watcher should do what it can with the rest.
fn read_ledger(dir: &Path) -> Vec<(PathBuf, Entry)> {
    // Entries name a program that the watcher runs: only our own files in our own directory
    // are believed.
    if !trusted(dir) {
        return Vec::new();
    }
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for item in listing.flatten() {
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") || !owned_by_us(&path) {
            continue;
        }
        if let Ok(Some(entry)) = read_entry(&path) {
            entries.push((path, entry));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// A directory (not a symlink) of ours that no one else can write to.
fn trusted(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == effective_uid() && m.mode() & 0o022 == 0)
    }
    #[cfg(not(unix))]
    {
        dir.is_dir()
    }
}

/// A regular file (not a symlink) of ours.
fn owned_by_us(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == effective_uid())
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn remove_quietly(path: &Path) {
    let _ = fs::remove_file(path);
}

// ---------------------------------------------------------------------------------------
// Process identity
// ---------------------------------------------------------------------------------------

fn owner_token(pid: u32, start: Option<u64>) -> String {
    match start {
        Some(s) => format!("{pid}-{s}"),
        None => pid.to_string(),
    }
}

/// `<pid>` or `<pid>-<start>`.
fn parse_owner_token(text: &str) -> Option<(u32, Option<u64>)> {
    let (pid, start) = match text.split_once('-') {
        Some((p, s)) => (p, Some(s.parse().ok()?)),
        None => (text, None),
    };
    let pid: u32 = pid.parse().ok()?;
    (pid > 0).then_some((pid, start))
}

fn run_id() -> Option<String> {
    std::env::var("NEXTEST_RUN_ID")
        .ok()
        .filter(|v| !v.is_empty())
}

/// State and start time of a process, from `/proc/PID/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after its last `)`.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `fields` now starts at field 4; field 22 is starttime.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn start_time_of(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        proc_stat(pid).map(|(_, start)| start)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

fn pid_namespace() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Whether the process that wrote an entry still runs. Errs towards "alive": a wrong "alive"
/// only delays a cleanup, a wrong "dead" would delete a running test's machine.
fn owner_alive(pid: u32, start: Option<u64>) -> bool {
    #[cfg(unix)]
    {
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if raw <= 0 {
            return false;
        }
        #[cfg(target_os = "linux")]
        if let Some((state, started)) = proc_stat(pid) {
            // A zombie has finished: its fds, and so our watcher pipe, are closed.
            if matches!(state, 'Z' | 'X') {
                return false;
            }
            return start.is_none_or(|s| s == started);
        }
        let _ = start;
        // SAFETY: signal 0 is never delivered; kill only checks that the pid exists.
        let rc = unsafe { libc::kill(raw, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, start);
        true
    }
}

// ---------------------------------------------------------------------------------------
// Deleting on the way out: signal thread and exit hook
// ---------------------------------------------------------------------------------------

/// The signals that end a test process politely. SIGHUP and SIGQUIT come for free.
#[cfg(unix)]
const TERMINATING_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Install, once, a thread that on the first terminating signal deletes what is registered
/// and then re-raises the signal with its default action, so the exit status still says which
/// signal ended the process (nextest and shells report it).
fn install_signal_thread() {
    #[cfg(unix)]
    {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
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
                    std::sync::Arc::clone(second_signal()),
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
        });
    }
}

/// Set when the first terminating signal is being handled.
#[cfg(unix)]
fn second_signal() -> &'static std::sync::Arc<AtomicBool> {
    static FLAG: OnceLock<std::sync::Arc<AtomicBool>> = OnceLock::new();
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

#[cfg(unix)]
fn terminate(signal: i32) -> ! {
    TERMINATING.store(true, Ordering::SeqCst);
    second_signal().store(true, Ordering::SeqCst);
    let name = signal_name(signal);
    // A create still running would finish after its machine was looked for, and leak: stop
    // every smolvm call first (the signal reached only our process group, not theirs).
    crate::runner::kill_in_flight();
    // Whatever happens in the cleanup, the signal must still end the process.
    let (deleted, failed) = std::panic::catch_unwind(|| delete_registered(false)).unwrap_or((0, 1));
    if deleted + failed > 0 {
        diag::log(&format!(
            "smolvm-harness: {name}: deleted {deleted} machine(s) before exiting{}",
            if failed > 0 {
                format!(", {failed} left to the crash watcher")
            } else {
                String::new()
            }
        ));
    }
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

/// Process exit: machines whose guards were never dropped (a `static`, an rstest `#[once]`
/// fixture) are deleted here. Runs on normal exit and `std::process::exit` (which libtest uses
/// when tests fail), not on a fatal signal or abort (the watcher covers those).
///
/// Kept minimal, as code after `main` must be: no threads (the process runner starts none),
/// no panics escaping, messages as raw writes to fd 2.
#[dtor::dtor(unsafe)]
fn exit_hook() {
    let _ = std::panic::catch_unwind(|| {
        let (deleted, failed) = delete_registered(true);
        if deleted + failed > 0 {
            diag::log(&format!(
                "smolvm-harness: at exit deleted {deleted} machine(s) never dropped (statics, \
                 #[once] fixtures){}",
                if failed > 0 {
                    format!(", {failed} left to the crash watcher")
                } else {
                    String::new()
                }
            ));
        }
    });
}

/// The exit hook is registered by a static in this module's object; naming it from
/// `register` keeps linkers that drop unreferenced objects from dropping it.
fn keep_exit_hook() {
    std::hint::black_box(exit_hook as fn());
}

/// Delete every registered machine and forget it. Returns (deleted, failed).
fn delete_registered(at_exit: bool) -> (usize, usize) {
    let Some(drained) = drain_registry(at_exit) else {
        return (0, 0);
    };
    let (mut deleted, mut failed) = (0, 0);
    for (name, reg) in drained {
        let client = cleanup_client(&reg);
        match client.machine_delete(&name) {
            Ok(()) => {
                deleted += 1;
                if let Some(path) = &reg.ledger {
                    remove_quietly(path);
                }
            }
            Err(e) => {
                failed += 1;
                diag::log(&format!(
                    "smolvm-harness: could not delete machine {name}: {e}. It stays in the \
                     ledger for the crash watcher or the next sweep; by hand: smolvm machine \
                     delete -f --name {name}"
                ));
            }
        }
    }
    (deleted, failed)
}

fn drain_registry(at_exit: bool) -> Option<Vec<(String, Registered)>> {
    let registry = REGISTRY.get()?;
    let mut guard = if at_exit {
        // Another thread may still be running at exit and hold the lock; waiting forever
        // would hang the exit, so give it a moment and then leave the rest to the watcher.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match registry.try_lock() {
                Ok(g) => break g,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    diag::log("smolvm-harness: registry busy at exit; leaving machines to the crash watcher");
                    return None;
                }
            }
        }
    } else {
        lock(registry)
    };
    let me = std::process::id();
    let drained: Vec<(String, Registered)> = guard.drain().filter(|(_, r)| r.pid == me).collect();
    drop(guard);
    (!drained.is_empty()).then_some(drained)
}

/// The client for deleting on the way out: a bounded timeout and, for real smolvm, the
/// process runner, which on Unix spawns no thread (the exit hook cannot).
fn cleanup_client(reg: &Registered) -> Smolvm {
    let smolvm = &reg.smolvm;
    let client = smolvm.with_timeout(smolvm.timeout().min(CLEANUP_TIMEOUT));
    if smolvm.process_target().is_none() {
        return client;
    }
    let client = client.with_runner(ProcessRunner);
    match reg.version {
        Some(v) => client.with_version(v),
        None => client,
    }
}

// ---------------------------------------------------------------------------------------
// The crash watcher
// ---------------------------------------------------------------------------------------

fn watcher_disabled() -> bool {
    std::env::var(WATCHER_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    })
}

/// Start, once per process, the watcher: this same executable, re-run with
/// `SMOLVM_HARNESS_WATCHER=<our owner token>`, so that its initializer ([`watcher_entry`])
/// runs the watcher instead of `main`. Its stdin is a pipe whose write end we keep open for
/// our whole life (close-on-exec, so no smolvm child inherits it); EOF on it means we are
/// gone, however we died. It runs in its own process group, so nextest's group kill and a
/// terminal's Ctrl-C do not reach it, with stdout null and stderr appended to
/// `$SMOLVM_HARNESS_STATE_DIR/watcher.log` (so nextest does not see a leaky test).
fn start_watcher() {
    static WATCHER: OnceLock<Option<Mutex<ChildStdin>>> = OnceLock::new();
    WATCHER.get_or_init(|| {
        if !entry::SUPPORTED || watcher_disabled() {
            return None;
        }
        match spawn_watcher() {
            Ok(stdin) => Some(Mutex::new(stdin)),
            Err(e) => {
                diag::log(&format!(
                    "smolvm-harness: could not start the crash watcher ({e}); if this process \
                     is killed, its machines are deleted by the next run's sweep"
                ));
                None
            }
        }
    });
}

fn spawn_watcher() -> io::Result<ChildStdin> {
    entry::keep();
    let exe = std::env::current_exe()?;
    let state_dir = config_or_default().state_dir.clone();
    let stderr = fs::create_dir_all(&state_dir)
        .and_then(|()| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(state_dir.join("watcher.log"))
        })
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let pid = std::process::id();
    let mut cmd = Command::new(exe);
    cmd.env(WATCHER_OWNER_ENV, owner_token(pid, start_time_of(pid)))
        // Explicit, so the watcher reads the ledger we write whatever else its config says.
        .env("SMOLVM_HARNESS_STATE_DIR", &state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn()?;
    // The child handle is dropped without waiting: the watcher outlives us by design.
    child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("watcher stdin was not piped"))
}

/// The watcher's entry point, placed in the platform's initializer section (what the `ctor`
/// crate does, by hand: one static, no extra dependency). It runs before `main` in every
/// binary that links this crate, and returns at once unless this process was started as a
/// watcher. The platform list is written once, here.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_vendor = "apple"
))]
mod entry {
    /// The watcher can run on this platform.
    pub(super) const SUPPORTED: bool = true;

    #[used]
    #[cfg_attr(not(target_vendor = "apple"), link_section = ".init_array")]
    #[cfg_attr(
        target_vendor = "apple",
        link_section = "__DATA,__mod_init_func,mod_init_funcs"
    )]
    static WATCHER_ENTRY: extern "C" fn() = super::watcher_entry;

    /// Referenced from the code that starts a watcher, so any binary that can start one also
    /// carries the entry point that turns the re-run into a watcher (and never runs its tests).
    pub(super) fn keep() {
        std::hint::black_box(&WATCHER_ENTRY);
    }
}

/// Elsewhere there is no watcher; the next run's sweep is what remains.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_vendor = "apple"
)))]
mod entry {
    pub(super) const SUPPORTED: bool = false;
    pub(super) fn keep() {}
}

extern "C" fn watcher_entry() {
    let Some((pid, start)) = watcher_request() else {
        return;
    };
    // From here on this process is a watcher and never the program it was built as, even if
    // the watcher itself fails.
    let _ = std::panic::catch_unwind(|| run_watcher(pid, start));
    std::process::exit(0);
}

/// `Some(owner)` if this process was started by [`spawn_watcher`]: the variable holds an owner
/// token and stdin is a pipe. Anything else (unset, `off`, set by hand on a terminal) is left
/// to run normally.
fn watcher_request() -> Option<(u32, Option<u64>)> {
    let value = std::env::var(WATCHER_OWNER_ENV).ok()?;
    // Children (smolvm, and the fake smolvm, which links this crate) must not become watchers.
    // Sound here: this runs before `main`, with no other thread to read the environment.
    std::env::remove_var(WATCHER_OWNER_ENV);
    let owner = parse_owner_token(value.trim())?;
    // Only the process its owner just started: the owner is our parent, and stdin is its pipe.
    #[cfg(unix)]
    {
        // SAFETY: getppid has no preconditions and cannot fail.
        let parent = unsafe { libc::getppid() };
        if u32::try_from(parent).ok() != Some(owner.0) {
            return None;
        }
    }
    if !stdin_is_pipe() {
        return None;
    }
    Some(owner)
}

fn stdin_is_pipe() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: fstat writes into `st`, for which all-zero is a valid initial value.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(0, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
        }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Wait for the owner to go away (EOF on stdin), then delete its non-kept ledgered machines.
fn run_watcher(pid: u32, start: Option<u64>) {
    #[cfg(unix)]
    // SAFETY: setting dispositions to SIG_IGN installs no handler code. The watcher is in its
    // own process group, but a hangup or a stray SIGINT must not make it skip its one job;
    // SIGPIPE is not yet ignored because this runs before std's runtime setup.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    wait_for_eof();
    let dir = match std::env::var_os("SMOLVM_HARNESS_STATE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("ledger"),
        _ => ledger_dir(),
    };
    // A machine not there yet may be a `machine create` the owner started just before it
    // died: that smolvm process lives on in its own process group and may still add it.
    let mut pending = Vec::new();
    for (path, entry) in read_ledger(&dir) {
        let same_owner = entry.owner_pid == pid
            && (start.is_none() || entry.owner_start.is_none() || entry.owner_start == start);
        if !same_owner || entry.kept {
            continue;
        }
        let client = entry
            .target
            .client(entry.smolvm_version)
            .with_runner(ProcessRunner);
        match listed(&client, &entry.name) {
            Some(false) => pending.push((path, entry, client)),
            _ => watcher_delete(&client, &path, &entry),
        }
    }
    let until = Instant::now() + LATE_CREATE_WINDOW;
    while !pending.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        pending.retain(|(path, entry, client)| {
            if listed(client, &entry.name) == Some(true) {
                watcher_delete(client, path, entry);
                false
            } else {
                true
            }
        });
    }
    // Never created: the owner died between writing the ledger and smolvm creating it.
    for (path, _, _) in pending {
        remove_quietly(&path);
    }
}

/// How long the watcher waits for a machine whose create was in flight when its owner died.
const LATE_CREATE_WINDOW: Duration = Duration::from_secs(20);

/// Whether `machine ls` shows `name`; `None` if it cannot tell.
fn listed(client: &Smolvm, name: &str) -> Option<bool> {
    client
        .machine_list()
        .ok()
        .map(|list| list.iter().any(|m| m.name == name))
}

fn watcher_delete(client: &Smolvm, path: &Path, entry: &Entry) {
    match client.machine_delete(&entry.name) {
        Ok(()) => {
            remove_quietly(path);
            diag::log(&format!(
                "smolvm-harness watcher: process {} is gone; deleted its machine {}",
                entry.owner(),
                entry.name
            ));
        }
        Err(e) => diag::log(&format!(
            "smolvm-harness watcher: could not delete machine {} of dead process {}: {e}; \
             left for the next sweep",
            entry.name,
            entry.owner()
        )),
    }
}

/// Block until stdin reaches EOF or fails: both mean the owner has gone.
fn wait_for_eof() {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = io::stdin().read_to_end(&mut Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(program: &str) -> Target {
        Target {
            program: PathBuf::from(program),
            process_env: vec![("SMOLVM_FAKE_STATE".into(), "/tmp/s".into())],
            state_env: BTreeMap::from([("HOME".to_string(), "/root".to_string())]),
        }
    }

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            owner_pid: 4242,
            owner_start: Some(99),
            pid_ns: Some("pid:[4026531836]".into()),
            target: target("/usr/bin/smolvm"),
            smolvm_version: Some(Version::new(1, 9, 2)),
            created_at: 1_700_000_000,
            kept: false,
            run_id: Some("run-1".into()),
        }
    }

    #[test]
    fn ledger_entry_round_trips_and_rejects_other_formats() {
        let e = entry("smt-a-1");
        let json = e.to_json().unwrap();
        assert_eq!(Entry::from_json(&json), Some(e.clone()));
        assert!(json.contains("\"owner\": \"4242-99\""), "{json}");
        let minimal = Entry {
            owner_start: None,
            pid_ns: None,
            smolvm_version: None,
            run_id: None,
            ..e
        };
        assert_eq!(Entry::from_json(&minimal.to_json().unwrap()), Some(minimal));
        assert_eq!(Entry::from_json(r#"{"format": 2, "name": "x"}"#), None);
        assert_eq!(Entry::from_json("not json"), None);
    }

    #[test]
    fn ledger_files_are_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let e = entry("smt-b-1");
        let path = write_entry(&ledger, &e).unwrap();
        assert_eq!(path, ledger.join("smt-b-1.4242.json"));
        fs::write(ledger.join(".smt-c-1.1.json.1.tmp"), "{").unwrap();
        fs::write(ledger.join("garbage.json"), "{").unwrap();
        let all = read_ledger(&ledger);
        assert_eq!(all, vec![(path.clone(), e)]);
        assert_eq!(read_entry(&ledger.join("missing.json")).unwrap(), None);
        assert!(read_ledger(&dir.path().join("nowhere")).is_empty());
    }

    #[test]
    fn an_unwritable_ledger_is_an_io_error_that_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let err = write_entry(&file.join("ledger"), &entry("smt-d-1")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("failed to create ledger directory `"),
            "{text}"
        );
        assert!(text.contains("not-a-dir/ledger"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn a_ledger_others_can_write_is_neither_used_nor_believed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        write_entry(&ledger, &entry("smt-d-1")).unwrap();
        assert_eq!(read_ledger(&ledger).len(), 1);
        fs::set_permissions(&ledger, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(read_ledger(&ledger).is_empty());
        // Writing puts the mode back to 0700 first, and then trusts it again.
        write_entry(&ledger, &entry("smt-d-2")).unwrap();
        assert_eq!(read_ledger(&ledger).len(), 2);
        // A symlinked ledger directory is not ours to trust.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ledger, &link).unwrap();
        assert!(read_ledger(&link).is_empty());
        assert!(write_entry(&link, &entry("smt-d-3")).is_err());
    }

    #[test]
    fn stat_parsing_counts_fields_after_the_command_name() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (x) Z"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn owner_tokens() {
        assert_eq!(owner_token(12, Some(34)), "12-34");
        assert_eq!(owner_token(12, None), "12");
        assert_eq!(parse_owner_token("12-34"), Some((12, Some(34))));
        assert_eq!(parse_owner_token("12"), Some((12, None)));
        for bad in ["off", "0", "", "-3", "12-x", "x-12"] {
            assert_eq!(parse_owner_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn liveness_checks_pid_and_start_time() {
        let me = std::process::id();
        let start = start_time_of(me);
        assert!(owner_alive(me, start));
        assert!(owner_alive(me, None));
        if let Some(s) = start {
            // Same pid, other start time: a reused pid, so the owner is dead.
            assert!(!owner_alive(me, Some(s + 1)));
        }
        // A finished and reaped child is dead.
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!owner_alive(pid, None));
        assert!(!owner_alive(0, None));
        assert!(!owner_alive(u32::MAX, None));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_zombie_owner_counts_as_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: wait until it has exited and is a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(pid).map(|s| s.0) != Some('Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!owner_alive(pid, None));
        child.wait().unwrap();
    }

    #[test]
    fn recognition_by_label_then_prefix() {
        let e = entry("smt-x-1");
        let labels = |owner: &str, run: Option<&str>| {
            let mut m = BTreeMap::from([(OWNER_LABEL.to_string(), owner.to_string())]);
            if let Some(r) = run {
                m.insert(RUN_LABEL.to_string(), r.to_string());
            }
            m
        };
        assert_eq!(
            e.recognises(&labels("4242-99", Some("run-1")), "smt-"),
            Recognised::Yes
        );
        assert_eq!(
            e.recognises(&labels("4242-98", Some("run-1")), "smt-"),
            Recognised::NotOurs
        );
        assert_eq!(
            e.recognises(&labels("4242-99", None), "smt-"),
            Recognised::NotOurs
        );
        // Created by a smolvm that takes labels, but the machine has none: made by hand.
        assert_eq!(e.recognises(&BTreeMap::new(), "smt-"), Recognised::NotOurs);
        // Before 1.8.0 there are no labels: the prefix decides.
        let old = Entry {
            smolvm_version: Some(Version::new(0, 8, 0)),
            ..e.clone()
        };
        assert_eq!(old.recognises(&BTreeMap::new(), "smt-"), Recognised::Yes);
        let custom = Entry {
            name: "web".into(),
            ..old
        };
        assert_eq!(
            custom.recognises(&BTreeMap::new(), "smt-"),
            Recognised::CannotTell
        );
    }

    #[test]
    fn ownership_labels_name_this_process() {
        let labels = ownership_labels();
        let me = std::process::id();
        assert_eq!(labels[0].0, OWNER_LABEL);
        assert_eq!(labels[0].1, owner_token(me, start_time_of(me)));
        for (k, v) in &labels {
            crate::validate::validate_label(k, v).unwrap();
        }
    }

    #[test]
    fn relative_programs_become_absolute_but_names_stay_lookups() {
        assert_eq!(absolute_program("smolvm".into()), PathBuf::from("smolvm"));
        assert_eq!(
            absolute_program("/x/smolvm".into()),
            PathBuf::from("/x/smolvm")
        );
        let rel = absolute_program("bin/smolvm".into());
        assert!(
            rel.is_absolute() && rel.ends_with("bin/smolvm"),
            "{}",
            rel.display()
        );
    }
}
