//! The runner seam: how an exact argv becomes a finished process, with no shell between.
//! A [`Runner`] gets an [`Invocation`] and returns a [`RawOutput`]; a client
//! ([`crate::Smolvm::with_runner`]) can use any of them.
//!
//! [`ProcessRunner`] is the real one. [`ScriptedRunner`] records every invocation and answers
//! from rules, for unit tests of code that drives smolvm (ours and downstream crates').
//! [`crate::sim::SimulatedRunner`] answers from a stateful simulation instead.
//!
//! [`ScriptedRunner`] and [`Reply`] are also at the crate root, since unit tests use them
//! every day; the rest is for writing or inspecting runners.

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{CommandLine, Error, Result};

/// One call to smolvm: the program, its exact argv, and the host-side time limit.
#[derive(Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The program to run (a name looked up on `PATH`, or a path).
    pub program: PathBuf,
    /// The arguments, exactly as smolvm receives them.
    pub args: Vec<String>,
    /// Extra environment for the smolvm process (not the guest's env).
    pub env: Vec<(String, String)>,
    /// Kill the process if it has not finished by then.
    pub timeout: Option<Duration>,
}

impl Invocation {
    /// The command line as it may be shown, env values redacted.
    pub fn command_line(&self) -> CommandLine {
        CommandLine::new(self.program.display().to_string(), &self.args)
    }

    /// The arguments as `&str`s, handy for matching.
    pub fn args_str(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// The arguments without the harness's own labels: every `--label smolvm-harness.*=…`
    /// (or `--label=smolvm-harness.*=…`) is removed, everything else is kept in order,
    /// including your own labels.
    ///
    /// Why: on smolvm ≥ 1.8.0 a [`crate::Machine`] is created with ownership labels whose
    /// values depend on the process (an owner token) and on the test runner (a run label
    /// under nextest only), so an assertion on [`Invocation::args`] that passes under
    /// `cargo test` can fail under `cargo nextest run`. Assert on this instead; see
    /// [`Invocation::harness_labels`] for the part set apart. Arguments after a `--` (a guest
    /// command) are never touched.
    ///
    /// ```
    /// use smolvm_harness::{Machine, ScriptedRunner, Smolvm};
    ///
    /// let runner = ScriptedRunner::new(); // answers `--version` with 1.9.2: labels are sent
    /// let vm = Machine::builder()
    ///     .smolvm(Smolvm::new("smolvm").with_runner(runner.clone()))
    ///     .name("web")
    ///     .image("alpine")
    ///     .label("team", "infra")
    ///     .create()?;
    /// let create = runner.calls().into_iter().find(|c| c.args_str().starts_with(&["machine", "create"])).unwrap();
    /// assert_eq!(
    ///     create.user_args(),
    ///     ["machine", "create", "--name", "web", "--image", "alpine", "--label", "team=infra"]
    /// );
    /// # drop(vm);
    /// # Ok::<(), smolvm_harness::Error>(())
    /// ```
    pub fn user_args(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.args.len());
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                out.push(arg.clone());
                out.extend(args.by_ref().cloned());
                break;
            }
            if arg == "--label" {
                match args.next() {
                    Some(value) if is_harness_label(value) => {}
                    Some(value) => out.extend([arg.clone(), value.clone()]),
                    None => out.push(arg.clone()),
                }
                continue;
            }
            if arg.strip_prefix("--label=").is_some_and(is_harness_label) {
                continue;
            }
            out.push(arg.clone());
        }
        out
    }

    /// The harness's own labels in this invocation (`smolvm-harness.*` keys), as
    /// `(key, value)` in argv order: what [`Invocation::user_args`] leaves out. The values are
    /// not stable (an owner token, a nextest run id); match on keys if at all.
    ///
    /// ```
    /// use smolvm_harness::{Machine, ScriptedRunner, Smolvm};
    ///
    /// let runner = ScriptedRunner::new();
    /// let vm = Machine::builder()
    ///     .smolvm(Smolvm::new("smolvm").with_runner(runner.clone()))
    ///     .image("alpine")
    ///     .create()?;
    /// let create = runner.calls().into_iter().find(|c| c.args_str().starts_with(&["machine", "create"])).unwrap();
    /// let keys: Vec<String> = create.harness_labels().into_iter().map(|(k, _)| k).collect();
    /// assert!(keys.contains(&"smolvm-harness.owner".to_string()));
    /// # drop(vm);
    /// # Ok::<(), smolvm_harness::Error>(())
    /// ```
    pub fn harness_labels(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            let label = match arg.as_str() {
                "--" => break,
                "--label" => args.next().map(String::as_str),
                other => other.strip_prefix("--label="),
            };
            if let Some((k, v)) = label
                .filter(|l| is_harness_label(l))
                .and_then(|l| l.split_once('='))
            {
                out.push((k.to_string(), v.to_string()));
            }
        }
        out
    }
}

/// The key prefix of every label the harness adds on its own (owner, run).
const HARNESS_LABEL_PREFIX: &str = "smolvm-harness.";

/// Whether a `K=V` label value is one of the harness's own.
fn is_harness_label(label: &str) -> bool {
    label.starts_with(HARNESS_LABEL_PREFIX) && label.contains('=')
}

impl fmt::Debug for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Redacted: a Debug print of an invocation must not leak `--env` values.
        f.debug_struct("Invocation")
            .field("command", &self.command_line().to_string())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a finished smolvm process left behind. Bytes are kept exactly as written, up to the
/// output cap.
///
/// The cap is per stream: [`ProcessRunner`] keeps at most `SMOLVM_HARNESS_OUTPUT_CAP` bytes
/// (default 64 MiB) of each, the first half and the last half, and only counts what lies
/// between (it goes on reading it, so the process never blocks on a full pipe). Then
/// [`RawOutput::stdout_truncation`] or [`RawOutput::stderr_truncation`] says where the gap
/// is and how big it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawOutput {
    /// Exit code; `None` if the process was killed by a signal.
    pub code: Option<i32>,
    /// Everything written to stdout (the head and tail of it past the cap).
    pub stdout: Vec<u8>,
    /// Everything written to stderr (the head and tail of it past the cap).
    pub stderr: Vec<u8>,
    /// Wall time from spawn to exit.
    pub duration: Duration,
    /// `Some` when the middle of stdout was dropped by the output cap.
    pub stdout_truncation: Option<Truncation>,
    /// `Some` when the middle of stderr was dropped by the output cap.
    pub stderr_truncation: Option<Truncation>,
}

/// Where a stream was cut by the output cap, and how much was dropped.
///
/// The kept bytes are `kept[..at]` (the first bytes written) followed by `kept[at..]` (the
/// last ones); `dropped` bytes were written between them and not kept. Messages and `Debug`
/// prints show a line `[… 1.9 GiB (2040109465 bytes) of stdout dropped here by the output
/// cap …]` there, and the `stdout`/`stderr` bytes of [`Error::Timeout`] and [`Error::Failed`]
/// carry that same line at that place, since those fields have no room for a separate count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Offset in the kept bytes where the dropped bytes were.
    pub at: usize,
    /// How many bytes were dropped.
    pub dropped: u64,
}

impl RawOutput {
    /// stdout as the errors carry it: with a drop-marker line where bytes were dropped.
    pub(crate) fn stdout_marked(&self) -> Vec<u8> {
        marked(&self.stdout, self.stdout_truncation, "stdout")
    }

    /// stderr as the errors carry it: with a drop-marker line where bytes were dropped.
    pub(crate) fn stderr_marked(&self) -> Vec<u8> {
        marked(&self.stderr, self.stderr_truncation, "stderr")
    }
}

/// The kept bytes of a stream, with a marker line where the cap dropped some.
pub(crate) fn marked(kept: &[u8], truncation: Option<Truncation>, stream: &str) -> Vec<u8> {
    match truncation {
        Some(t) => crate::error::insert_drop_marker(kept, t.at, t.dropped, stream),
        None => kept.to_vec(),
    }
}

/// Runs smolvm invocations. Implement it to put something else between the crate and smolvm
/// (a wrapper that logs, retries or adds a flag), and give it to
/// [`Smolvm::with_runner`](crate::Smolvm::with_runner).
///
/// Contract: return `Ok` for any process that ran to completion, whatever its exit code;
/// return [`Error::NotFound`], [`Error::Spawn`] or [`Error::Timeout`] otherwise. Run
/// [`Invocation::program`] with [`Invocation::args`] and **with [`Invocation::env`] in its
/// environment**: the env carries secrets (see
/// [`CreateOptions::secret_env`](crate::CreateOptions::secret_env)) and the mark by which the
/// crash watcher tells a `machine create` still running.
///
/// A runner that runs smolvm as real processes (the default, [`Runner::in_process`] is
/// `false`) keeps every guarantee of the crate: its machines are in the cleanup ledger (the
/// crash watcher and the next run's sweep delete them if the process dies), count against
/// `SMOLVM_HARNESS_MAX_MACHINES`, and share [`Pack::shared`](crate::Pack::shared) packs
/// across processes. One thing it cannot carry over: those other processes reach smolvm by
/// running the same program with the client's process env
/// ([`Smolvm::with_process_env`](crate::Smolvm::with_process_env)) through
/// [`ProcessRunner`], not through your runner, so a runner must not be the only way to reach
/// that smolvm (the client prints a one-line notice saying so, once per process).
pub trait Runner: Send + Sync + fmt::Debug {
    /// Run one invocation to completion.
    fn run(&self, invocation: &Invocation) -> Result<RawOutput>;

    /// `true` for a runner that answers without starting any VM (a script, a simulation,
    /// a mock of yours): nothing it "creates" can outlive the process, so its machines are
    /// not ledgered for crash cleanup, not counted against the machine cap, and packs are
    /// shared within the process only. The default, `false`, means real smolvm processes,
    /// with every guarantee (see the trait docs).
    fn in_process(&self) -> bool {
        false
    }

    /// For in-process runners whose clones share one smolvm state (a simulation, a script):
    /// an id of that state. Machine names are reserved per state, so independent simulations
    /// may reuse names while two guards on one state may not. `None` (the default): the
    /// runner object itself is the state.
    #[doc(hidden)]
    fn state_id(&self) -> Option<usize> {
        None
    }
}

impl<R: Runner + ?Sized> Runner for Arc<R> {
    fn run(&self, invocation: &Invocation) -> Result<RawOutput> {
        (**self).run(invocation)
    }

    fn in_process(&self) -> bool {
        (**self).in_process()
    }

    fn state_id(&self) -> Option<usize> {
        (**self).state_id()
    }
}

/// The real runner: spawns the program directly (no shell), stdin null, stdout and stderr
/// drained as they arrive, and a host-side timeout that kills the process group and reaps it.
///
/// On Unix one thread does everything: it `poll`s both pipes with the time left as the poll
/// timeout, so it wakes the moment output or end-of-file arrives (no sleep-and-check latency,
/// no reader threads), and no output size can deadlock it. Spawning no thread also makes it
/// safe in the exit hook, where `std::thread::spawn` panics (rust-lang/rust#138696).
/// Elsewhere, two reader threads do the draining.
///
/// Why a process group: a hung smolvm may have children that hold the pipes open; killing the
/// group closes them.
///
/// Output is capped per stream at `SMOLVM_HARNESS_OUTPUT_CAP` (default 64 MiB): past it the
/// first and last halves are kept and the rest is read and counted, never left in the pipe
/// (see [`Truncation`]). A timeout (the invocation's, and the host limit of every call) is
/// clamped to 365 days, so that a deadline always exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessRunner;

/// How long to keep reading after a timeout kill: a grandchild outside the group could hold a
/// pipe forever, and the caller must not wait on it.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

impl Runner for ProcessRunner {
    fn run(&self, inv: &Invocation) -> Result<RawOutput> {
        let mut cmd = Command::new(&inv.program);
        cmd.args(&inv.args)
            .envs(inv.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let cap = crate::config::config_or_default().output_cap;
        let timeout = inv.timeout.map(|t| t.min(crate::validate::MAX_TIMEOUT));
        let is_create = inv
            .env
            .iter()
            .any(|(k, _)| k == crate::cleanup::CREATE_MARK_ENV);
        // A create spawned while the process is being torn down could land after the cleanup
        // looked. The cleanup marks the teardown, waits until no create is between spawn and
        // the in-flight list, then kills what is listed; a create that gets here after the
        // mark is refused, one spawned in between stops itself.
        let _spawning = is_create.then(CreateSpawn::begin);
        if is_create && crate::cleanup::terminating() {
            return Err(spawn_error(
                inv,
                io::Error::other("the process is ending; no new machine is created"),
            ));
        }
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|source| spawn_error(inv, source))?;
        let pid = child.id();
        lock(in_flight()).push((std::process::id(), pid));
        if is_create && crate::cleanup::terminating() {
            kill_group(&mut child);
        }
        drop(_spawning);
        let drained = drain_and_wait(&mut child, deadline(start, timeout), cap);
        lock(in_flight()).retain(|(_, p)| *p != pid);
        let (done, stdout, stderr) = match drained {
            Ok(result) => result,
            Err(source) => {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(Error::Spawn {
                    command: inv.command_line(),
                    source,
                });
            }
        };
        let (stdout, stdout_truncation) = stdout.finish();
        let (stderr, stderr_truncation) = stderr.finish();
        let out = RawOutput {
            code: done.and_then(|s| s.code()),
            stdout,
            stderr,
            duration: start.elapsed(),
            stdout_truncation,
            stderr_truncation,
        };
        match done {
            Some(_) => Ok(out),
            None => Err(Error::Timeout {
                command: inv.command_line(),
                timeout: timeout.unwrap_or_default(),
                stdout: out.stdout_marked(),
                stderr: out.stderr_marked(),
            }),
        }
    }
}

/// When a call started at `start` must be over. The timeout is clamped to
/// [`crate::MAX_TIMEOUT`] first, so that the addition cannot overflow into "no deadline".
fn deadline(start: Instant, timeout: Option<Duration>) -> Option<Instant> {
    let t = timeout?.min(crate::validate::MAX_TIMEOUT);
    // 365 days fit any platform's clock; should one not, a day still bounds the call.
    start
        .checked_add(t)
        .or_else(|| start.checked_add(Duration::from_secs(24 * 3600)))
}

/// One stream as it is read: all of it up to the cap, then its first and last halves and a
/// count of what was between.
#[derive(Debug)]
pub(crate) struct Capture {
    head: Vec<u8>,
    head_cap: usize,
    tail: std::collections::VecDeque<u8>,
    tail_cap: usize,
    dropped: u64,
}

impl Capture {
    pub(crate) fn new(cap: u64) -> Capture {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let head_cap = cap / 2;
        Capture {
            head: Vec::new(),
            head_cap,
            tail: std::collections::VecDeque::new(),
            tail_cap: cap - head_cap,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, mut data: &[u8]) {
        let room = self.head_cap - self.head.len();
        let n = room.min(data.len());
        self.head.extend_from_slice(&data[..n]);
        data = &data[n..];
        if data.is_empty() {
            return;
        }
        if data.len() >= self.tail_cap {
            self.dropped += (self.tail.len() + data.len() - self.tail_cap) as u64;
            self.tail.clear();
            data = &data[data.len() - self.tail_cap..];
        }
        let over = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..over);
        self.dropped += over as u64;
        self.tail.extend(data);
    }

    pub(crate) fn finish(self) -> (Vec<u8>, Option<Truncation>) {
        let at = self.head.len();
        let mut kept = self.head;
        kept.extend(self.tail);
        let truncation = (self.dropped > 0).then_some(Truncation {
            at,
            dropped: self.dropped,
        });
        (kept, truncation)
    }
}

/// The smolvm processes running right now, with the pid of the process that spawned each (a
/// child forked without exec inherits this list, and must not kill its parent's calls). Their
/// pids are also their process group ids.
fn in_flight() -> &'static Mutex<Vec<(u32, u32)>> {
    static IN_FLIGHT: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());
    &IN_FLIGHT
}

/// Creates between "about to spawn" and "in the in-flight list": the teardown waits for none.
static SPAWNING_CREATES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one create in [`SPAWNING_CREATES`] while it lives.
struct CreateSpawn;

impl CreateSpawn {
    fn begin() -> CreateSpawn {
        SPAWNING_CREATES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CreateSpawn
    }
}

impl Drop for CreateSpawn {
    fn drop(&mut self) {
        SPAWNING_CREATES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// After the teardown mark is set: wait (bounded) until no create is between spawn and the
/// in-flight list, so that [`kill_in_flight`] sees every create that will ever run.
pub(crate) fn quiesce_creates(limit: Duration) {
    let deadline = Instant::now() + limit;
    while SPAWNING_CREATES.load(std::sync::atomic::Ordering::SeqCst) > 0
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Kill every smolvm call still running, with its process group. For the signal cleanup: a
/// `machine create` in flight when Ctrl-C or SIGTERM arrives (they reach only our own process
/// group) would otherwise finish after the cleanup looked for its machine, and leak it.
/// Returns the pids signalled. (A pid is dropped from the list right after its process is
/// reaped; reuse of a pid within that window would need the whole pid space to wrap.)
pub(crate) fn kill_in_flight() -> Vec<u32> {
    let me = std::process::id();
    let pids: Vec<u32> = lock(in_flight())
        .iter()
        .filter(|(spawner, _)| *spawner == me)
        .map(|(_, pid)| *pid)
        .collect();
    #[cfg(unix)]
    for pid in &pids {
        if let Ok(pid) = libc::pid_t::try_from(*pid) {
            // SAFETY: killpg only sends a signal, to the group of a child we have not reaped.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
    pids
}

/// Read both pipes to their end and reap the child, or kill and reap it at the deadline.
/// Returns the exit status (`None` after a timeout kill) and everything read.
///
/// A process that exits while something it started still holds the pipes (a VM launched
/// with inherited stdio) has finished: its output is drained for a short grace period and
/// its status returned, and nothing is killed. That needs a pidfd in the poll set (Linux);
/// elsewhere such a call runs into its deadline.
#[cfg(unix)]
fn drain_and_wait(
    child: &mut std::process::Child,
    deadline: Option<Instant>,
    cap: u64,
) -> io::Result<(Option<std::process::ExitStatus>, Capture, Capture)> {
    let mut pipes = [
        child.stdout.take().map(PipeReader::Out),
        child.stderr.take().map(PipeReader::Err),
    ];
    let mut bufs = (Capture::new(cap), Capture::new(cap));
    let pidfd = open_pidfd(child);
    let exit_fd = pidfd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    match poll_pipes(&mut pipes, &mut bufs, deadline, exit_fd)? {
        PollEnd::Eof => {
            // Both pipes are closed: the process is exiting, or has closed its output and
            // goes on (then the deadline still applies).
            let mut pause = Duration::from_micros(50);
            loop {
                if let Some(status) = child.try_wait()? {
                    return Ok((Some(status), bufs.0, bufs.1));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                match exit_fd {
                    // Sleeping would cost more than the gap it waits for (timer slack alone
                    // is 50 µs); the pidfd wakes us at the exit itself.
                    Some(fd) => wait_readable(fd, deadline),
                    None => {
                        thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                }
            }
        }
        PollEnd::Exited => {
            let status = child.wait()?;
            let _ = poll_pipes(
                &mut pipes,
                &mut bufs,
                Some(Instant::now() + DRAIN_GRACE),
                None,
            );
            return Ok((Some(status), bufs.0, bufs.1));
        }
        PollEnd::Deadline => {}
    }
    kill_group(child);
    // Reaped: no zombie is left behind.
    let _ = child.wait();
    let _ = poll_pipes(
        &mut pipes,
        &mut bufs,
        Some(Instant::now() + DRAIN_GRACE),
        None,
    );
    Ok((None, bufs.0, bufs.1))
}

/// A descriptor that becomes readable when the child exits (Linux ≥ 5.3), or `None`.
#[cfg(target_os = "linux")]
fn open_pidfd(child: &std::process::Child) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the pid is
    // our unreaped child's, so it cannot name another process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(all(unix, not(target_os = "linux")))]
fn open_pidfd(_child: &std::process::Child) -> Option<std::os::fd::OwnedFd> {
    None
}

/// Milliseconds until `deadline` for `poll`, rounded up so a poll never returns just before
/// the deadline and spins; -1 (forever) without one.
#[cfg(unix)]
fn poll_timeout(deadline: Option<Instant>) -> libc::c_int {
    deadline.map_or(-1, |d| {
        let ms = d
            .saturating_duration_since(Instant::now())
            .as_nanos()
            .div_ceil(1_000_000);
        libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
    })
}

/// Block until `fd` is readable or the deadline passes.
#[cfg(unix)]
fn wait_readable(fd: std::os::fd::RawFd, deadline: Option<Instant>) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd. The result does not matter: the caller checks try_wait.
    unsafe { libc::poll(&mut pfd, 1, poll_timeout(deadline)) };
}

#[cfg(unix)]
enum PipeReader {
    Out(std::process::ChildStdout),
    Err(std::process::ChildStderr),
}

#[cfg(unix)]
enum PollEnd {
    /// Both pipes reached end-of-file.
    Eof,
    /// The deadline passed first.
    Deadline,
    /// The process exited (its pidfd fired) while a pipe was still open.
    Exited,
}

/// `poll` the open pipes (and the exit descriptor, if given) until both pipes reach
/// end-of-file, the process exits, or the deadline passes, appending what the pipes deliver.
/// Closed pipes are set to `None`.
#[cfg(unix)]
fn poll_pipes(
    pipes: &mut [Option<PipeReader>; 2],
    bufs: &mut (Capture, Capture),
    deadline: Option<Instant>,
    exit_fd: Option<std::os::fd::RawFd>,
) -> io::Result<PollEnd> {
    use std::os::fd::AsRawFd;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut fds = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(2);
        for (i, pipe) in pipes.iter().enumerate() {
            let fd = match pipe {
                Some(PipeReader::Out(p)) => p.as_raw_fd(),
                Some(PipeReader::Err(p)) => p.as_raw_fd(),
                None => continue,
            };
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            which.push(i);
        }
        if fds.is_empty() {
            return Ok(PollEnd::Eof);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(PollEnd::Deadline);
        }
        if let Some(fd) = exit_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(3);
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, poll_timeout(deadline)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut read_any = false;
        for (pfd, &i) in fds.iter().zip(&which) {
            if pfd.revents == 0 {
                continue;
            }
            read_any = true;
            // Readable or hung up: one read cannot block, and 0 means end-of-file.
            let (result, buf) = match &mut pipes[i] {
                Some(PipeReader::Out(p)) => (p.read(&mut chunk), &mut bufs.0),
                Some(PipeReader::Err(p)) => (p.read(&mut chunk), &mut bufs.1),
                None => continue,
            };
            match result {
                Ok(0) => pipes[i] = None,
                Ok(k) => buf.push(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => pipes[i] = None,
            }
        }
        // Only once the pipes have nothing ready: output written just before the exit is read
        // first, and end-of-file usually wins the race for a process that simply exits.
        let exited = exit_fd.is_some() && fds.last().is_some_and(|p| p.revents != 0);
        if exited && !read_any {
            return Ok(PollEnd::Exited);
        }
    }
}

/// Elsewhere: a reader thread per pipe, and a wait that checks the deadline.
#[cfg(not(unix))]
fn drain_and_wait(
    child: &mut std::process::Child,
    deadline: Option<Instant>,
    cap: u64,
) -> io::Result<(Option<std::process::ExitStatus>, Capture, Capture)> {
    fn reader<R: Read + Send + 'static>(
        pipe: Option<R>,
        cap: u64,
    ) -> Option<thread::JoinHandle<Capture>> {
        let mut pipe = pipe?;
        Some(thread::spawn(move || {
            let mut buf = Capture::new(cap);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => buf.push(&chunk[..k]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            buf
        }))
    }
    let join = |h: Option<thread::JoinHandle<Capture>>| {
        h.and_then(|h| h.join().ok())
            .unwrap_or_else(|| Capture::new(cap))
    };
    let out = reader(child.stdout.take(), cap);
    let err = reader(child.stderr.take(), cap);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((Some(status), join(out), join(err)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kill_group(child);
            let _ = child.wait();
            return Ok((None, join(out), join(err)));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn spawn_error(inv: &Invocation, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        Error::NotFound {
            binary: inv.program.display().to_string(),
            looked: format!("`{}` could not be executed", inv.program.display()),
        }
    } else {
        Error::Spawn {
            command: inv.command_line(),
            source,
        }
    }
}

/// Kill a child spawned with `process_group(0)` and everything in its group.
pub(crate) fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: killpg only sends a signal; the group id is our own child's pid, which
            // is its process group because it was spawned with process_group(0), and it has
            // not been reaped yet, so the id cannot have been reused.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
}

/// A scripted answer for [`ScriptedRunner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The exit code to report; `None` for "killed by a signal".
    pub code: Option<i32>,
    /// What stdout holds.
    pub stdout: Vec<u8>,
    /// What stderr holds.
    pub stderr: Vec<u8>,
    /// Answer with [`Error::Timeout`] instead, as if the process hung.
    pub hang: bool,
}

impl Reply {
    /// Exit 0, no output.
    pub fn ok() -> Reply {
        Reply::with(0, "", "")
    }

    /// Exit 0 with this stdout.
    pub fn stdout(stdout: impl Into<Vec<u8>>) -> Reply {
        Reply {
            stdout: stdout.into(),
            ..Reply::ok()
        }
    }

    /// A non-zero exit with this stderr (smolvm's own errors look like `Error: …\n`).
    pub fn fail(code: i32, stderr: impl Into<Vec<u8>>) -> Reply {
        Reply {
            code: Some(code),
            stdout: Vec::new(),
            stderr: stderr.into(),
            hang: false,
        }
    }

    /// Any exit code, stdout and stderr.
    pub fn with(code: i32, stdout: impl Into<Vec<u8>>, stderr: impl Into<Vec<u8>>) -> Reply {
        Reply {
            code: Some(code),
            stdout: stdout.into(),
            stderr: stderr.into(),
            hang: false,
        }
    }

    /// Behave like a process that never finishes: the call fails with [`Error::Timeout`].
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::ok()
        }
    }
}

type Matcher = Box<dyn Fn(&[String]) -> bool + Send + Sync>;

struct Rule {
    matcher: Matcher,
    reply: Reply,
    /// How many more times this rule answers; `None` for always.
    times: Option<usize>,
}

#[derive(Default)]
struct Script {
    rules: Vec<Rule>,
    calls: Vec<Invocation>,
}

/// A runner for unit mode: records every invocation and answers from rules, never spawning.
///
/// Rules are tried in the order they were added; the first that matches answers. Without a
/// matching rule the answer is exit 0 with no output, except `--version`, which answers
/// `smolvm 1.9.2` unless [`ScriptedRunner::version`] said otherwise. Clones share the same
/// script and the same record, so keep one to inspect after handing another to [`crate::Smolvm`].
///
/// On smolvm ≥ 1.8.0 a [`crate::Machine`] adds labels of its own to `machine create`, with
/// values that differ between processes and between `cargo test` and `cargo nextest run`:
/// assert on [`ScriptedRunner::user_argvs`], which leaves them out, rather than on
/// [`ScriptedRunner::argvs`].
///
/// ```
/// use smolvm_harness::{CreateOptions, Reply, ScriptedRunner, Smolvm};
///
/// let runner = ScriptedRunner::new().version("0.8.0");
/// let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
/// smolvm.machine_create("web", &CreateOptions::image("alpine").net()).unwrap();
/// assert_eq!(
///     runner.argvs().last().unwrap(),
///     &["machine", "create", "--image", "alpine", "--net", "web"]
/// );
/// ```
#[derive(Clone, Default)]
pub struct ScriptedRunner {
    script: Arc<Mutex<Script>>,
}

impl fmt::Debug for ScriptedRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let script = lock(&self.script);
        f.debug_struct("ScriptedRunner")
            .field("rules", &script.rules.len())
            .field("calls", &script.calls)
            .finish()
    }
}

impl ScriptedRunner {
    /// An empty script: everything succeeds silently, `--version` says 1.9.2.
    pub fn new() -> ScriptedRunner {
        ScriptedRunner::default()
    }

    /// Answer `--version` with `smolvm VERSION`.
    pub fn version(self, version: &str) -> ScriptedRunner {
        self.on(&["--version"], Reply::stdout(format!("smolvm {version}\n")))
    }

    /// Answer every invocation whose argv starts with `prefix` with `reply`.
    pub fn on(self, prefix: &[&str], reply: Reply) -> ScriptedRunner {
        let prefix: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        self.rule(move |args| args.starts_with(&prefix), reply, None)
    }

    /// Like [`ScriptedRunner::on`], but only for the next `times` matching calls.
    pub fn on_times(self, prefix: &[&str], times: usize, reply: Reply) -> ScriptedRunner {
        let prefix: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        self.rule(move |args| args.starts_with(&prefix), reply, Some(times))
    }

    /// Answer every invocation for which `matcher(argv)` is true with `reply`.
    pub fn on_match(
        self,
        matcher: impl Fn(&[String]) -> bool + Send + Sync + 'static,
        reply: Reply,
    ) -> ScriptedRunner {
        self.rule(matcher, reply, None)
    }

    fn rule(
        self,
        matcher: impl Fn(&[String]) -> bool + Send + Sync + 'static,
        reply: Reply,
        times: Option<usize>,
    ) -> ScriptedRunner {
        {
            let mut script = lock(&self.script);
            // Newer rules first, so a test can override a default answered earlier.
            script.rules.insert(
                0,
                Rule {
                    matcher: Box::new(matcher),
                    reply,
                    times,
                },
            );
        }
        self
    }

    /// Every invocation so far, in order.
    pub fn calls(&self) -> Vec<Invocation> {
        lock(&self.script).calls.clone()
    }

    /// The argv of every invocation so far, in order.
    pub fn argvs(&self) -> Vec<Vec<String>> {
        lock(&self.script)
            .calls
            .iter()
            .map(|c| c.args.clone())
            .collect()
    }

    /// The argv of every invocation so far, in order, without the harness's own labels (see
    /// [`Invocation::user_args`]): the same on every smolvm version whatever the process and
    /// the test runner, so use it to assert the exact argv your code sends.
    ///
    /// ```
    /// use smolvm_harness::{Machine, ScriptedRunner, Smolvm};
    ///
    /// let runner = ScriptedRunner::new();
    /// let vm = Machine::builder()
    ///     .smolvm(Smolvm::new("smolvm").with_runner(runner.clone()))
    ///     .name("web")
    ///     .image("alpine")
    ///     .net()
    ///     .create()?;
    /// vm.command(&["make", "test"])
    ///     .env("CI", "1")
    ///     .workdir("/src")
    ///     .timeout(std::time::Duration::from_secs(60))
    ///     .run()?;
    /// vm.delete()?;
    /// let sent: Vec<Vec<String>> = runner
    ///     .user_argvs()
    ///     .into_iter()
    ///     .filter(|a| a[0] == "machine" && a[1] != "ls") // not `--version`, not a sweep
    ///     .collect();
    /// assert_eq!(
    ///     sent,
    ///     [
    ///         &["machine", "create", "--name", "web", "--image", "alpine", "--net"][..],
    ///         &[
    ///             "machine", "exec", "--name", "web", "-w", "/src", "--timeout", "60s",
    ///             "--env=CI=1", "--", "make", "test",
    ///         ][..],
    ///         &["machine", "delete", "-f", "--name", "web"][..],
    ///     ]
    /// );
    /// # Ok::<(), smolvm_harness::Error>(())
    /// ```
    pub fn user_argvs(&self) -> Vec<Vec<String>> {
        lock(&self.script)
            .calls
            .iter()
            .map(Invocation::user_args)
            .collect()
    }

    /// Forget the recorded invocations (rules stay).
    pub fn clear_calls(&self) {
        lock(&self.script).calls.clear();
    }
}

impl Runner for ScriptedRunner {
    fn in_process(&self) -> bool {
        true
    }

    fn state_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.script).cast::<()>() as usize)
    }

    fn run(&self, inv: &Invocation) -> Result<RawOutput> {
        let reply = {
            let mut script = lock(&self.script);
            script.calls.push(inv.clone());
            let mut found = None;
            for rule in script.rules.iter_mut() {
                if rule.times == Some(0) || !(rule.matcher)(&inv.args) {
                    continue;
                }
                if let Some(n) = rule.times.as_mut() {
                    *n -= 1;
                }
                found = Some(rule.reply.clone());
                break;
            }
            found.unwrap_or_else(|| {
                if inv.args.first().map(String::as_str) == Some("--version") {
                    Reply::stdout("smolvm 1.9.2\n")
                } else {
                    Reply::ok()
                }
            })
        };
        if reply.hang {
            return Err(Error::Timeout {
                command: inv.command_line(),
                timeout: inv.timeout.unwrap_or_default(),
                stdout: reply.stdout,
                stderr: reply.stderr,
            });
        }
        Ok(RawOutput {
            code: reply.code,
            stdout: reply.stdout,
            stderr: reply.stderr,
            ..RawOutput::default()
        })
    }
}

/// Lock, recovering from poisoning: a panicking test must not break every later one.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(args: &[&str]) -> Invocation {
        Invocation {
            program: "smolvm".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            timeout: None,
        }
    }

    #[test]
    fn the_harness_labels_are_the_ones_user_args_strips() {
        // The cleanup layer's label keys must carry the prefix user_args matches on.
        for key in [crate::cleanup::OWNER_LABEL, crate::cleanup::RUN_LABEL] {
            assert!(key.starts_with(HARNESS_LABEL_PREFIX), "{key}");
        }
    }

    #[test]
    fn user_args_removes_harness_labels_in_both_spellings_and_keeps_the_rest() {
        let call = inv(&[
            "machine",
            "create",
            "--name",
            "web",
            "--label",
            "smolvm-harness.owner=123-456",
            "--label=smolvm-harness.run=0b6e-run",
            "--label",
            "team=infra",
            "--label=tier=db",
            "--label",
            "smolvm-harness.future=x",
            "web-positional",
        ]);
        assert_eq!(
            call.user_args(),
            [
                "machine",
                "create",
                "--name",
                "web",
                "--label",
                "team=infra",
                "--label=tier=db",
                "web-positional"
            ]
        );
        assert_eq!(
            call.harness_labels(),
            [
                ("smolvm-harness.owner".to_string(), "123-456".to_string()),
                ("smolvm-harness.run".to_string(), "0b6e-run".to_string()),
                ("smolvm-harness.future".to_string(), "x".to_string()),
            ]
        );
    }

    #[test]
    fn user_args_leaves_a_guest_command_and_odd_shapes_alone() {
        // After `--` everything is the guest's; a trailing `--label` has no value to judge;
        // a key that only looks like ours (no `=`) is not a label the harness sends.
        let call = inv(&[
            "machine",
            "exec",
            "--name",
            "web",
            "--",
            "echo",
            "--label",
            "smolvm-harness.owner=1",
        ]);
        assert_eq!(call.user_args(), call.args);
        assert!(call.harness_labels().is_empty());
        let call = inv(&[
            "machine",
            "create",
            "--label",
            "smolvm-harness.x",
            "--label",
        ]);
        assert_eq!(call.user_args(), call.args);
        assert!(call.harness_labels().is_empty());
    }

    #[test]
    fn user_argvs_of_a_machine_create_match_an_exact_argv_whatever_the_owner() {
        let runner = ScriptedRunner::new();
        let smolvm = crate::Smolvm::new("smolvm").with_runner(runner.clone());
        let vm = crate::Machine::builder()
            .smolvm(smolvm)
            .name("m-user-argv")
            .image("alpine")
            .label("team", "infra")
            .create()
            .unwrap();
        vm.delete().unwrap();
        let create = runner
            .calls()
            .into_iter()
            .find(|c| c.args.get(1).map(String::as_str) == Some("create"))
            .unwrap();
        // The raw argv carries the owner label; user_args does not.
        assert!(create
            .harness_labels()
            .iter()
            .any(|(k, _)| k == crate::cleanup::OWNER_LABEL));
        assert_eq!(
            create.user_args(),
            [
                "machine",
                "create",
                "--name",
                "m-user-argv",
                "--image",
                "alpine",
                "--label",
                "team=infra"
            ]
        );
        assert!(runner.user_argvs().contains(&create.user_args()));
    }

    #[test]
    fn process_runner_captures_output_and_times_out() {
        let inv = |args: &[&str], timeout| Invocation {
            program: "sh".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("X_VAL".into(), "v".into())],
            timeout: Some(timeout),
        };
        let out = ProcessRunner
            .run(&inv(
                &["-c", "echo out$X_VAL; echo err >&2; exit 3"],
                Duration::from_secs(10),
            ))
            .unwrap();
        assert_eq!(
            (out.code, &out.stdout[..], &out.stderr[..]),
            (Some(3), &b"outv\n"[..], &b"err\n"[..])
        );
        let start = Instant::now();
        let err = ProcessRunner
            .run(&inv(
                &["-c", "echo partial; sleep 30"],
                Duration::from_millis(200),
            ))
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        match err {
            Error::Timeout { stdout, .. } => assert_eq!(stdout, b"partial\n"),
            other => panic!("{other}"),
        }
        let missing = Invocation {
            program: "/nonexistent/smolvm".into(),
            ..inv(&[], Duration::from_secs(1))
        };
        assert!(matches!(
            ProcessRunner.run(&missing),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn a_capture_keeps_the_first_and_last_halves_whatever_the_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for cap in [1u64, 2, 7, 100, 1000, 9_999, 10_000, 20_000] {
            for chunk in [1usize, 3, 64, 999, 10_000] {
                let mut c = Capture::new(cap);
                for piece in data.chunks(chunk) {
                    c.push(piece);
                }
                let (kept, t) = c.finish();
                let cap = usize::try_from(cap).unwrap();
                if cap >= data.len() {
                    assert_eq!((kept, t), (data.clone(), None));
                    continue;
                }
                let head = cap / 2;
                let mut want = data[..head].to_vec();
                want.extend_from_slice(&data[data.len() - (cap - head)..]);
                assert_eq!(kept, want, "cap {cap} chunk {chunk}");
                let dropped = (data.len() - cap) as u64;
                assert_eq!(t, Some(Truncation { at: head, dropped }));
            }
        }
    }

    #[test]
    fn a_huge_timeout_still_has_a_deadline() {
        let now = Instant::now();
        // Duration::MAX cannot be added to a clock: unclamped, that meant no deadline at all.
        assert_eq!(
            deadline(now, Some(Duration::MAX)),
            now.checked_add(crate::validate::MAX_TIMEOUT)
        );
        assert!(deadline(now, Some(Duration::MAX)).is_some());
        assert_eq!(
            deadline(now, Some(Duration::from_secs(5))),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(deadline(now, None), None);
    }

    fn sh(script: &str, timeout: Duration) -> Invocation {
        Invocation {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            timeout: Some(timeout),
        }
    }

    /// Whether `pid` is still a live process (a zombie counts as gone).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let err = ProcessRunner
            .run(&sh("sleep 30 & echo $!; wait", Duration::from_millis(300)))
            .unwrap_err();
        let Error::Timeout { stdout, .. } = err else {
            panic!("expected a timeout, got {err}");
        };
        let grandchild: i32 = String::from_utf8_lossy(&stdout).trim().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !alive(grandchild),
            "the grandchild {grandchild} survived the group kill"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_exited_process_whose_descendant_holds_the_pipes_is_done_not_timed_out() {
        let started = Instant::now();
        let out = ProcessRunner
            .run(&sh("sleep 30 & echo $!; exit 0", Duration::from_secs(10)))
            .unwrap();
        assert_eq!(out.code, Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let grandchild: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // Not ours to kill: it was not a timeout.
        assert!(alive(grandchild));
        // SAFETY: sends SIGKILL to the test's own background process.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
    }
}
