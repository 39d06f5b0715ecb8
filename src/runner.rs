//! The process runner: how an exact argv becomes a finished process, with no shell between.
//!
//! [`ProcessRunner`] is the real one. [`ScriptedRunner`] records every invocation and answers
//! from rules, for unit tests of code that drives smolvm (ours and downstream crates').
//! [`crate::SimulatedRunner`] answers from a stateful simulation instead.

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

/// What a finished smolvm process left behind. Bytes are kept exactly as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawOutput {
    /// Exit code; `None` if the process was killed by a signal.
    pub code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// Wall time from spawn to exit.
    pub duration: Duration,
}

/// Runs smolvm invocations. Implement it to put something else between the crate and smolvm.
///
/// Contract: return `Ok` for any process that ran to completion, whatever its exit code;
/// return [`Error::NotFound`], [`Error::Spawn`] or [`Error::Timeout`] otherwise.
pub trait Runner: Send + Sync + fmt::Debug {
    /// Run one invocation to completion.
    fn run(&self, invocation: &Invocation) -> Result<RawOutput>;
}

impl<R: Runner + ?Sized> Runner for Arc<R> {
    fn run(&self, invocation: &Invocation) -> Result<RawOutput> {
        (**self).run(invocation)
    }
}

/// The real runner: spawns the program directly (no shell), stdin null, stdout and stderr
/// drained concurrently, and a host-side timeout that kills the process group and reaps it.
///
/// Why a process group: a hung smolvm may have children that hold the pipes open; killing
/// the group closes them so the readers finish. Why threads, not polling: two blocking
/// readers are the simplest way to never deadlock on a full pipe, whatever the output size.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessRunner;

/// How long to wait for the pipe readers after the process was killed; a grandchild outside
/// the group could hold a pipe forever, and the caller must not wait on it.
const READER_GRACE: Duration = Duration::from_secs(2);

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
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|source| spawn_error(inv, source))?;

        let out_reader = spawn_reader(child.stdout.take());
        let err_reader = spawn_reader(child.stderr.take());

        let deadline = inv.timeout.map(|t| start + t);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(source) => {
                    kill_group(&mut child);
                    return Err(Error::Spawn {
                        command: inv.command_line(),
                        source,
                    });
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break None;
            }
            thread::sleep(poll_interval(start.elapsed()));
        };

        match status {
            Some(status) => {
                let stdout = join_reader(out_reader, None);
                let stderr = join_reader(err_reader, None);
                Ok(RawOutput {
                    code: status.code(),
                    stdout,
                    stderr,
                    duration: start.elapsed(),
                })
            }
            None => {
                kill_group(&mut child);
                // Reaped: no zombie is left behind.
                let _ = child.wait();
                let stdout = join_reader(out_reader, Some(READER_GRACE));
                let stderr = join_reader(err_reader, Some(READER_GRACE));
                Err(Error::Timeout {
                    command: inv.command_line(),
                    timeout: inv.timeout.unwrap_or_default(),
                    stdout,
                    stderr,
                })
            }
        }
    }
}

/// Short polls first (most smolvm calls that do not boot finish in milliseconds), then
/// settle at 10 ms so a long exec costs almost nothing.
fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(20) {
        Duration::from_micros(200)
    } else if elapsed < Duration::from_millis(200) {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
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

type Reader = Option<(thread::JoinHandle<Vec<u8>>, Arc<Mutex<Vec<u8>>>)>;

/// Read a pipe to its end on its own thread. The bytes also go into a shared buffer, so that
/// what was read so far can be taken even if the thread never finishes.
fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> Reader {
    let mut pipe = pipe?;
    let shared = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&shared);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => match sink.lock() {
                    Ok(mut buf) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        Vec::new()
    });
    Some((handle, shared))
}

fn join_reader(reader: Reader, grace: Option<Duration>) -> Vec<u8> {
    let Some((handle, shared)) = reader else {
        return Vec::new();
    };
    match grace {
        None => {
            let _ = handle.join();
        }
        Some(grace) => {
            let until = Instant::now() + grace;
            while !handle.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
    let bytes = std::mem::take(&mut *lock(&shared));
    bytes
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

    /// Forget the recorded invocations (rules stay).
    pub fn clear_calls(&self) {
        lock(&self.script).calls.clear();
    }
}

impl Runner for ScriptedRunner {
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
            duration: Duration::ZERO,
        })
    }
}

/// Lock, recovering from poisoning: a panicking test must not break every later one.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
