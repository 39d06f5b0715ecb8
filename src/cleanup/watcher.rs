//! The crash watcher: whoever ends a test process (SIGKILL, abort, OOM, a crash), a process
//! that outlives it settles its machines.
//!
//! Design: one watcher per user, state directory and pid namespace, shared by every test
//! process (nextest's one-per-test included), so a test process pays a socket connect
//! instead of a process start. A test process connects to `watcher-<ns>.sock` in the state
//! directory (closed to other users) on its first ledgered machine and keeps the connection
//! open for its whole life (close-on-exec: no smolvm child inherits it). EOF on it means the
//! process is gone, however it died. The watcher then waits until the process is really dead
//! and settles its ledger entries with the same rule as the sweep ([`super::sweep::settle`]),
//! waiting for creates still in flight. It starts by settling every dead owner it finds, so
//! an owner that died before it could connect is covered too, and it exits when it has had
//! no connection and no work for [`IDLE_EXIT`].
//!
//! The watcher is this test binary re-executed with a private variable. Its entry point runs
//! as an early constructor (`ctor`, priority `early`: before constructors of default
//! priority, user ones included), never returns into the program, and leaves with `_exit`, so
//! no test, `main`, destructor or exit hook of the binary ever runs in it.
//!
//! `SMOLVM_HARNESS_WATCHER=off` (or `0`, `false`, `no`) disables it; the next run's sweep still
//! reclaims what a crashed process left.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ledger::{self, Entry};
use super::owner::Owner;
use super::process::Liveness;
use super::sweep::settle;
use crate::config::config_or_default;
use crate::diag;
use crate::runner::lock;
use crate::state_dir::{self, Access};

/// The user's switch.
const WATCHER_ENV: &str = "SMOLVM_HARNESS_WATCHER";
/// Private: set only on the process [`spawn`] starts, to the socket it must serve. A separate
/// name, so a user writing `SMOLVM_HARNESS_WATCHER=1` ("on") never makes a run a watcher.
const SERVE_ENV: &str = "SMOLVM_HARNESS_WATCHER_SERVE_PRIVATE";
/// How long an idle watcher stays for the next test process.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(5);
/// How long the watcher keeps looking for a create that is still running after its owner
/// died; after that the entry is left for a later sweep (never dropped).
const PENDING_LIMIT: Duration = Duration::from_secs(3600);

/// Make sure a watcher watches this process. Called on every ledgered registration; cheap
/// when the connection made earlier is still up (one `poll`). A watcher that died (killed by
/// hand) is replaced at the next registration; a failure is reported and retried at most
/// every [`RETRY_AFTER`], the next run's sweep remaining the fallback meanwhile.
pub(crate) fn ensure_watched() {
    static WATCHED: Mutex<Option<Watched>> = Mutex::new(None);
    if !SUPPORTED || disabled() {
        return;
    }
    let me = std::process::id();
    let mut watched = lock(&WATCHED);
    match &*watched {
        // A child forked without exec inherits the parent's connection, which says nothing
        // of it: only our own connection counts.
        Some(w) if w.pid == me => match &w.stream {
            Some(stream) if still_open(stream) => return,
            None if w.since.elapsed() < RETRY_AFTER => return,
            _ => {}
        },
        _ => {}
    }
    let stream = match connect_or_spawn() {
        Ok(stream) => Some(stream),
        Err(e) => {
            diag::log(&format!(
                "smolvm-harness: could not reach or start the crash watcher ({e}); if this \
                 process is killed, its machines are deleted by the next run's sweep"
            ));
            None
        }
    };
    *watched = Some(Watched {
        pid: me,
        stream,
        since: Instant::now(),
    });
}

/// This process's connection to its watcher.
struct Watched {
    pid: u32,
    stream: Option<UnixStream>,
    since: Instant,
}

/// How long after a failure to reach a watcher the next registration tries again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Whether the watcher still holds its end: EOF (or an error) means it has gone; its `ok`,
/// or nothing yet, means it is there.
fn still_open(stream: &UnixStream) -> bool {
    let mut buf = [0u8; 16];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn disabled() -> bool {
    std::env::var(WATCHER_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    })
}

/// The state directory, and this namespace's socket in it. Namespaces (containers) sharing a
/// state directory each get their own watcher: pids are only meaningful inside one.
fn paths() -> (PathBuf, PathBuf) {
    let dir = config_or_default().state_dir.clone();
    let me = Owner::current();
    let ns = format!(
        "{}/{}",
        me.pid_ns.as_deref().unwrap_or(""),
        me.boot_id.as_deref().unwrap_or("")
    );
    let mut hash: u32 = 0x811c_9dc5;
    for b in ns.bytes() {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let socket = dir.join(format!("watcher-{hash:08x}.sock"));
    (dir, socket)
}

fn connect_or_spawn() -> io::Result<UnixStream> {
    let (dir, socket) = paths();
    state_dir::root_at(&dir).map_err(io_error)?;
    // Held while connecting or starting a watcher; a watcher takes it before it decides to
    // exit, so it never leaves with a connection half made.
    let lock_file = open_private(&dir.join("watcher.lock"), Access::Lock)?;
    lock_file.lock()?;
    match handshake(&socket) {
        Ok(stream) => return Ok(stream),
        // Nobody listens (a stale socket of a watcher that is gone), or a watcher that does
        // not answer (stopped, wedged): a new one takes the name. One that only hangs keeps
        // serving the connections it has.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
            ) => {}
        Err(e) => return Err(e),
    }
    let _ = fs::remove_file(&socket);
    spawn(&dir, &socket)?;
    handshake(&socket)
}

/// Connect, name ourselves, and wait for the watcher's `ok`.
fn handshake(socket: &Path) -> io::Result<UnixStream> {
    let mut stream = connect(socket)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let me = Owner::current();
    let start = me.start.map_or("-".to_string(), |s| s.to_string());
    writeln!(stream, "watch {} {start} {}", me.pid, me.nonce)?;
    // The watcher's `ok` is not awaited: under load, waiting for a busy process to be
    // scheduled cost every test process tens of milliseconds. The connection is made under
    // the lock the watcher takes before it exits, so it is served; a watcher that dies is
    // noticed at the next registration (`still_open`).
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// The longest socket path `sockaddr_un` takes, with room for the terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// A path by which `socket` can be bound or reached: itself when short enough, else through
/// an open handle of its directory (`/proc/self/fd/N/NAME`, Linux), kept open while used.
fn reachable(socket: &Path) -> io::Result<(PathBuf, Option<fs::File>)> {
    if socket.as_os_str().len() <= SUN_PATH_MAX || !cfg!(target_os = "linux") {
        return Ok((socket.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Ok((socket.to_path_buf(), None));
    };
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd())).join(name);
    Ok((short, Some(handle)))
}

fn connect(socket: &Path) -> io::Result<UnixStream> {
    let (path, _dir) = reachable(socket)?;
    UnixStream::connect(path)
}

fn bind(socket: &Path) -> io::Result<UnixListener> {
    let (path, _dir) = reachable(socket)?;
    UnixListener::bind(path)
}

/// Start a watcher and wait until it listens.
fn spawn(dir: &Path, socket: &Path) -> io::Result<()> {
    keep_entry_linked();
    let exe = std::env::current_exe()?;
    let log = open_private(&dir.join("watcher.log"), Access::Append)
        .map_or_else(|_| Stdio::null(), Stdio::from);
    let mut cmd = Command::new(exe);
    cmd.env(SERVE_ENV, socket)
        // Explicit, so the watcher reads the ledger we write whatever else its config says.
        .env("SMOLVM_HARNESS_STATE_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // Its own process group: nextest's group kill and a terminal's Ctrl-C do not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    let mut ready = String::new();
    if let Some(out) = child.stdout.take() {
        // The watcher either listens and says so, or exits (EOF); bounded all the same, so a
        // binary that somehow lacks the entry point (and runs its `main`) cannot hang us.
        if readable_within(&out, Duration::from_secs(10)) {
            BufReader::new(out).read_line(&mut ready)?;
        } else {
            let _ = child.kill();
        }
    }
    // Not waited for: the watcher outlives us by design.
    drop(child);
    if ready.trim() == "ready" {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the watcher did not start: {:?}",
            ready.trim()
        )))
    }
}

/// Whether `fd` has data (or EOF) within `limit`.
fn readable_within(fd: &impl std::os::fd::AsRawFd, limit: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Open (creating, mode 0600) a file of the state directory without following a symlink;
/// a planted entry is replaced, never written through (`crate::state_dir`).
fn open_private(path: &Path, access: Access) -> io::Result<fs::File> {
    state_dir::open_or_replace(path, access).map_err(io_error)
}

fn io_error(e: crate::Error) -> io::Error {
    match e {
        crate::Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => source,
        other => io::Error::other(other.to_string()),
    }
}

// ---- the watcher process ----------------------------------------------------------------

/// The entry point of every binary that links the crate: returns at once, unless this
/// process was started as a watcher; then it serves and never returns.
///
/// Priority `early` runs it before every constructor of default priority (what `ctor` gives
/// users by default), so user initializers do not run in a watcher either.
#[ctor::ctor(unsafe, priority = early)]
fn watcher_entry() {
    let Some(socket) = std::env::var_os(SERVE_ENV) else {
        return;
    };
    // Children (smolvm, and the fake smolvm, which links this crate) must not become
    // watchers. Sound here: this runs before `main`, with no other thread.
    // SAFETY: single-threaded, before main.
    unsafe { std::env::remove_var(SERVE_ENV) };
    forget_inherited_smolvm_env();
    let _ = std::panic::catch_unwind(|| serve(Path::new(&socket)));
    // Never the program it was built as: no `main`, no destructors, no exit hooks.
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(0) }
}

/// The watcher serves processes with other environments than the one that started it: every
/// smolvm call it makes must see exactly the state variables its ledger entry recorded (set
/// or unset), and none of the spawner's knobs (`SMOLVM_FAKE_FAIL`, a trace switch). So it
/// drops every `SMOLVM_*` variable and every state-locating one it inherited; the entry's
/// recorded values are given to each call (`Target::client`).
fn forget_inherited_smolvm_env() {
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            (k.starts_with("SMOLVM_") && k != "SMOLVM_HARNESS_STATE_DIR")
                || ledger::STATE_ENV.contains(&k.as_ref())
        })
        .collect();
    for k in names {
        // SAFETY: single-threaded, before main (see `watcher_entry`).
        unsafe { std::env::remove_var(k) };
    }
}

/// Referenced from the code that starts a watcher, so a binary that can start one also keeps
/// the entry point that turns the re-run into a watcher.
fn keep_entry_linked() {
    std::hint::black_box(watcher_entry as fn());
}

/// A connection and the owner it announced.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    owner: Option<Owner>,
}

fn serve(socket: &Path) {
    // SAFETY: setting dispositions to SIG_IGN installs no handler code. A hangup or a stray
    // SIGINT must not make the watcher skip its one job; SIGPIPE is not ignored yet because
    // this runs before std's runtime setup.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let listener = match bind(socket).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            diag::log(&format!(
                "smolvm-harness watcher: cannot listen on {}: {e}",
                socket.display()
            ));
            return;
        }
    };
    let dir = socket.parent().unwrap_or(Path::new(".")).to_path_buf();
    let bound = socket_id(socket);
    say_ready();
    let busy = Arc::new(AtomicUsize::new(0));
    let mut settled: HashSet<String> = HashSet::new();
    // Owners that died before they could connect (or while no watcher ran).
    work(&busy, {
        let dir = dir.clone();
        move || settle_dead_owners(&dir)
    });
    let mut conns: Vec<Conn> = Vec::new();
    // Live owners with entries in the ledger, watched whether or not they are connected: a
    // process whose earlier watcher was killed, or whose connection a forked child holds
    // open, is still seen to die.
    let mut owners: HashMap<String, Owner> = HashMap::new();
    let mut scanned = Instant::now() - LEDGER_SCAN;
    let mut idle_since = Instant::now();
    // Shared goldens still waiting to be retired (held, in their grace, or with clones): the
    // watcher stays while there are any, since no test process may be left to do it.
    let goldens_left = Arc::new(AtomicUsize::new(0));
    let retiring = Arc::new(AtomicBool::new(false));
    loop {
        poll_once(&listener, &conns);
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                conns.push(Conn {
                    stream,
                    buf: Vec::new(),
                    owner: None,
                });
            }
        }
        let mut i = 0;
        while i < conns.len() {
            match read_conn(&mut conns[i]) {
                ConnState::Open => i += 1,
                ConnState::Closed => {
                    if let Some(owner) = conns.swap_remove(i).owner {
                        if !settled.contains(&owner.nonce) {
                            owners.insert(owner.nonce.clone(), owner);
                        }
                    }
                }
            }
        }
        if scanned.elapsed() >= LEDGER_SCAN {
            scanned = Instant::now();
            if !retiring.swap(true, Ordering::SeqCst) {
                // Not counted as `busy`: it runs every scan, and would keep an idle watcher
                // from ever leaving. Leaving waits for it instead (below).
                let (dir, left, flag) = (dir.clone(), goldens_left.clone(), retiring.clone());
                let spawned = std::thread::Builder::new().spawn(move || {
                    let retire = || super::goldens::retire(&dir, None);
                    if let Ok(n) = std::panic::catch_unwind(retire) {
                        left.store(n, Ordering::SeqCst);
                    }
                    flag.store(false, Ordering::SeqCst);
                });
                if spawned.is_err() {
                    retiring.store(false, Ordering::SeqCst);
                }
            }
            for (_, entry) in ledger::read_all(&dir.join("ledger")) {
                let owner = entry.claim.owner;
                if !entry.kept
                    && !settled.contains(&owner.nonce)
                    && owner.liveness() == Liveness::Alive
                {
                    owners.entry(owner.nonce.clone()).or_insert(owner);
                }
            }
        }
        // Connected owners are checked too: a forked child may hold a dead owner's
        // connection open for as long as it lives.
        for owner in conns.iter().filter_map(|c| c.owner.as_ref()) {
            owners
                .entry(owner.nonce.clone())
                .or_insert_with(|| owner.clone());
        }
        let gone: Vec<String> = owners
            .iter()
            .filter(|(_, o)| o.liveness() != Liveness::Alive)
            .map(|(nonce, _)| nonce.clone())
            .collect();
        for nonce in gone {
            let Some(owner) = owners.remove(&nonce) else {
                continue;
            };
            // Settled once: its connection, still open in a fork child, or a later ledger
            // scan must not start it again.
            if !settled.insert(nonce.clone()) {
                continue;
            }
            let dir = dir.clone();
            work(&busy, move || settle_owner(&dir, &owner));
        }
        let waiting_for_conns = conns
            .iter()
            .any(|c| c.owner.as_ref().is_none_or(|o| !settled.contains(&o.nonce)));
        if waiting_for_conns
            || !owners.is_empty()
            || busy.load(Ordering::SeqCst) > 0
            || goldens_left.load(Ordering::SeqCst) > 0
        {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= IDLE_EXIT
            && !retiring.load(Ordering::SeqCst)
            && may_exit(&dir, &listener, socket, bound)
        {
            return;
        }
    }
}

/// How often the watcher reads the ledger for live owners it does not know yet.
const LEDGER_SCAN: Duration = Duration::from_secs(1);

/// Tell the spawner we listen, then let go of its pipe.
fn say_ready() {
    let msg = b"ready\n";
    // SAFETY: writes a live buffer to fd 1, then points fd 1 at /dev/null.
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// Run `job` on a thread, counted in `busy` while it runs.
fn work(busy: &Arc<AtomicUsize>, job: impl FnOnce() + Send + 'static) {
    busy.fetch_add(1, Ordering::SeqCst);
    let counter = Arc::clone(busy);
    let spawned = std::thread::Builder::new().spawn(move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        counter.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        busy.fetch_sub(1, Ordering::SeqCst);
        diag::log("smolvm-harness watcher: cannot start a thread; left for the next sweep");
    }
}

/// Wait (at most 250 ms) for a new connection or data on one.
fn poll_once(listener: &UnixListener, conns: &[Conn]) {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
        .chain(conns.iter().map(|c| c.stream.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 250);
    }
}

enum ConnState {
    Open,
    Closed,
}

fn read_conn(conn: &mut Conn) -> ConnState {
    let mut chunk = [0u8; 256];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return ConnState::Closed,
            Ok(n) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                if conn.owner.is_none() {
                    if let Some(end) = conn.buf.iter().position(|b| *b == b'\n') {
                        let line = String::from_utf8_lossy(&conn.buf[..end]).into_owned();
                        match parse_hello(&line) {
                            Some(owner) => {
                                conn.owner = Some(owner);
                                let _ = conn.stream.write_all(b"ok\n");
                            }
                            None => return ConnState::Closed,
                        }
                    }
                }
                if conn.buf.len() > 4096 {
                    // Not one of ours: nothing says more than one short line.
                    conn.buf.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ConnState::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ConnState::Closed,
        }
    }
}

/// `watch <pid> <start|-> <nonce>`: the rest of the owner is the watcher's own namespace and
/// boot (the socket is per namespace).
fn parse_hello(line: &str) -> Option<Owner> {
    let mut words = line.split_whitespace();
    if words.next()? != "watch" {
        return None;
    }
    let pid: u32 = words.next()?.parse().ok()?;
    let start = match words.next()? {
        "-" => None,
        s => Some(s.parse().ok()?),
    };
    let nonce = words.next()?.to_string();
    let here = Owner::current();
    Some(Owner {
        pid,
        start,
        pid_ns: here.pid_ns,
        boot_id: here.boot_id,
        nonce,
    })
}

/// Leave, if nobody is connecting: under the lock that connecting processes hold.
fn may_exit(dir: &Path, listener: &UnixListener, socket: &Path, bound: Option<u64>) -> bool {
    use std::os::fd::AsRawFd;
    let lock_file = match open_private(&dir.join("watcher.lock"), Access::Lock) {
        Ok(f) => f,
        // The state directory is gone (a test's temporary one): nobody can reach us.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
        Err(_) => return false,
    };
    if lock_file.try_lock().is_err() {
        return false;
    }
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd; a zero timeout only checks for a pending connection.
    let pending = unsafe { libc::poll(&mut fd, 1, 0) } > 0;
    if pending {
        return false;
    }
    // Only our own socket: after we stopped answering (a stopped process), a newer watcher
    // may have taken the name.
    if bound.is_some() && socket_id(socket) == bound {
        let _ = fs::remove_file(socket);
    }
    true
}

/// The inode of the socket file, to tell ours from a newer watcher's.
fn socket_id(socket: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(socket).ok().map(|m| m.ino())
}

/// An owner's connection closed: once it is really dead, settle its entries, looking again
/// while a create of it may still land.
fn settle_owner(dir: &Path, owner: &Owner) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner.liveness() == Liveness::Alive {
        if Instant::now() >= deadline {
            diag::log(&format!(
                "smolvm-harness watcher: process {} closed its connection but still runs; \
                 its machines are left to it and the next sweep",
                owner.token()
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    settle_until_done(dir, |e| {
        e.claim.owner.nonce == owner.nonce && !e.claim.role.is_shared_golden()
    });
}

/// Settle every entry whose owner is dead (a start-up pass).
fn settle_dead_owners(dir: &Path) {
    settle_until_done(dir, |e| {
        e.claim.owner.liveness() == Liveness::Dead && !e.claim.role.is_shared_golden()
    });
}

fn settle_until_done(dir: &Path, select: impl Fn(&Entry) -> bool) {
    let ledger_dir = dir.join("ledger");
    let until = Instant::now() + PENDING_LIMIT;
    // Quick at first (a create in flight lands within seconds), then every 5 s, so that a
    // state that stays unreachable costs little (and is reported once).
    let mut pause = Duration::from_millis(250);
    let mut reported: HashSet<ledger::Target> = HashSet::new();
    loop {
        let mut groups: HashMap<ledger::Target, Vec<(PathBuf, Entry)>> = HashMap::new();
        for (path, entry) in ledger::read_all(&ledger_dir) {
            if !entry.kept && select(&entry) {
                groups
                    .entry(entry.target.clone())
                    .or_default()
                    .push((path, entry));
            }
        }
        let mut waiting = 0;
        for (target, entries) in groups {
            let version = entries.iter().find_map(|(_, e)| e.smolvm_version);
            let client = target.client(version);
            match settle(&client, entries, &ledger_dir) {
                Ok(settled) => {
                    for name in &settled.deleted {
                        diag::log(&format!(
                            "smolvm-harness watcher: deleted machine {name} of a test process \
                             that ended without deleting it"
                        ));
                    }
                    waiting += settled.waiting.len();
                }
                // One smolvm state that cannot be listed (gone, broken) must not keep the
                // others from being settled; it is tried again with the waiting ones.
                Err(e) => {
                    if reported.insert(target.clone()) {
                        diag::log(&format!(
                            "smolvm-harness watcher: cannot list machines of {} ({e}); trying \
                             again",
                            target.describe()
                        ));
                    }
                    waiting += 1;
                }
            }
        }
        if waiting == 0 || Instant::now() >= until {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The watcher needs Unix sockets and `/proc`-free liveness (kill 0); the list of targets
/// where the re-executed binary's constructor runs is `ctor`'s.
const SUPPORTED: bool = cfg!(unix);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_lines() {
        let o = parse_hello("watch 12 34 abcdefghij").unwrap();
        assert_eq!(
            (o.pid, o.start, o.nonce.as_str()),
            (12, Some(34), "abcdefghij")
        );
        let o = parse_hello("watch 12 - abc").unwrap();
        assert_eq!(o.start, None);
        for bad in ["", "watch", "watch x 1 a", "hello 1 2 3", "watch 1 x a"] {
            assert!(parse_hello(bad).is_none(), "{bad}");
        }
    }
}
