//! The fake CLI front end: state in a locked directory, configuration in env vars, and a
//! JSON log line per invocation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::apply::Step;
use super::grammar::{parse_duration, Features};
use super::net::{self, Bound, HostNet};
use super::state::{SimMachine, State};
use super::{check_knob_key, drive, Backend, Call, Knobs, Outcome, SimOutput};
use crate::error::{Error, Result, REDACTED};
use crate::Version;

/// `SMOLVM_FAKE_STATE=DIR`: where the fake keeps its machines; when unset, a directory of
/// this user's under the temp dir (see [`default_fake_state_dir`]).
pub const STATE_ENV: &str = "SMOLVM_FAKE_STATE";
/// `SMOLVM_FAKE_VERSION=X.Y.Z`: the smolvm version to behave as (default 1.9.2).
pub const VERSION_ENV: &str = "SMOLVM_FAKE_VERSION";
/// `SMOLVM_FAKE_FAIL=start,exec`: subcommands that exit 1 with an injected failure.
pub const FAIL_ENV: &str = "SMOLVM_FAKE_FAIL";
/// `SMOLVM_FAKE_LATENCY=create=50ms,exec=20ms`: per-subcommand latency.
pub const LATENCY_ENV: &str = "SMOLVM_FAKE_LATENCY";
/// `SMOLVM_FAKE_HANG=exec`: subcommands that sleep until killed.
pub const HANG_ENV: &str = "SMOLVM_FAKE_HANG";
/// `SMOLVM_FAKE_LOG=FILE`: append one JSON line per invocation.
pub const LOG_ENV: &str = "SMOLVM_FAKE_LOG";

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// The hidden first argument of the fake's port-forwarding helper process:
/// `smolvm-fake __smolvm-fake-serve STATE_DIR MACHINE BOOT FD:HOST:GUEST...`.
pub(crate) const HELPER_ARG: &str = "__smolvm-fake-serve";

/// The fake smolvm's `main`: reads argv and the `SMOLVM_FAKE_*` variables (see [the module
/// docs](super)), prints what smolvm would print, and returns the exit code.
///
/// `fixtures/smolvm-fake.rs` is `std::process::exit(fake_cli_main())`.
pub fn fake_cli_main() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.first().map(String::as_str) == Some(HELPER_ARG) {
        return serve_helper(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("serve")
        && args
            .get(1)
            .is_none_or(|a| a == "start" || a.starts_with('-'))
    {
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{SERVE_USAGE}");
            return 0;
        }
        return serve_api(&args[1..]);
    }
    let out = run_fake(&args);
    // A closed pipe is the reader's choice; there is nobody left to tell.
    let _ = io::stdout().lock().write_all(&out.stdout);
    let _ = io::stdout().flush();
    let _ = io::stderr().lock().write_all(&out.stderr);
    out.code
}

/// `smolvm-fake serve --help`: the one `serve` form the fake has.
const SERVE_USAGE: &str = "Serve the simulated smolvm API (smolvm-harness's fake)\n\n\
Usage: smolvm serve start [-l|--listen <unix:///abs/path.sock | /abs/path | ADDR:PORT>]\n\n\
Prints `smolvm API server listening on <url>` when ready; SIGTERM or SIGINT stops it.\n\
SMOLVM_FAKE_STATE and SMOLVM_FAKE_VERSION choose the machines and the API shapes, as for \
the CLI.";

#[cfg(feature = "remote")]
fn serve_api(args: &[String]) -> i32 {
    super::serve::serve_main(args)
}

#[cfg(not(feature = "remote"))]
fn serve_api(_: &[String]) -> i32 {
    eprintln!(
        "Error: smolvm-fake: `serve` needs the `remote` feature of smolvm-harness (this \
         build has it off)"
    );
    1
}

fn fake_error(msg: &str) -> SimOutput {
    SimOutput {
        code: 1,
        stdout: Vec::new(),
        stderr: format!("Error: smolvm-fake: {msg}\n").into_bytes(),
    }
}

fn run_fake(args: &[String]) -> SimOutput {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(msg) => return fake_error(&msg),
    };
    let backend = FileBackend {
        dir: config.dir,
        log: config.log,
        argv: redact_argv(args),
    };
    let lookup = |key: &str| std::env::var(key).ok();
    let confirm = || {
        let mut line = String::new();
        match io::stdin().lock().read_line(&mut line) {
            Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
            Err(_) => false,
        }
    };
    let net = FakeNet {
        dir: backend.dir.clone(),
    };
    let call = Call {
        args,
        features: Features::new(config.version),
        knobs: &config.knobs,
        lookup_env: &lookup,
        confirm_delete: &confirm,
        // The host kills this process; nothing to watch here.
        host_deadline: None,
        hang_forever: true,
        data_root: &backend.dir,
        net: &net,
    };
    match drive(&call, &backend) {
        Ok(Outcome::Exit(out)) => out,
        // Unreachable without a host deadline; answer like a timed-out exec.
        Ok(Outcome::HostTimeout { stdout, stderr }) => SimOutput {
            code: 124,
            stdout,
            stderr,
        },
        Err(msg) => fake_error(&msg),
    }
}

struct Config {
    dir: PathBuf,
    version: Version,
    knobs: Knobs,
    log: Option<PathBuf>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The comma-separated, non-empty entries of `var`.
fn entries(var: &str) -> Vec<String> {
    env_nonempty(var)
        .map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn key_list(var: &str) -> std::result::Result<Vec<String>, String> {
    entries(var)
        .into_iter()
        .map(|k| {
            check_knob_key(&k).map_err(|e| format!("{var}: {e}"))?;
            Ok(k)
        })
        .collect()
}

fn latency_list(var: &str) -> std::result::Result<Vec<(String, Duration)>, String> {
    entries(var)
        .into_iter()
        .map(|entry| {
            let (k, d) = entry
                .split_once('=')
                .ok_or_else(|| format!("{var}: expected KEY=DURATION, got {entry:?}"))?;
            check_knob_key(k.trim()).map_err(|e| format!("{var}: {e}"))?;
            let d = parse_duration(d.trim())
                .map_err(|e| format!("{var}: bad duration {d:?} for {k}: {e}"))?;
            Ok((k.trim().to_string(), d))
        })
        .collect()
}

impl Config {
    fn from_env() -> std::result::Result<Config, String> {
        let dir = match env_nonempty(STATE_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => private_default_dir()?,
        };
        let version = match env_nonempty(VERSION_ENV) {
            Some(v) => v.parse().map_err(|e| format!("{VERSION_ENV}={v:?}: {e}"))?,
            None => Version::NEWEST_KNOWN,
        };
        let knobs = Knobs {
            fail: key_list(FAIL_ENV)?.into_iter().collect(),
            latency: latency_list(LATENCY_ENV)?.into_iter().collect(),
            hang: key_list(HANG_ENV)?.into_iter().collect(),
        };
        Ok(Config {
            dir,
            version,
            knobs,
            log: env_nonempty(LOG_ENV).map(PathBuf::from),
        })
    }
}

/// The state directory, locked per read-modify-write.
struct FileBackend {
    dir: PathBuf,
    log: Option<PathBuf>,
    /// Redacted once: the log must never see an env value.
    argv: Vec<String>,
}

/// An exclusive lock on `DIR/lock`, released when dropped (closing the file releases it).
fn lock_dir(dir: &Path) -> std::result::Result<File, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
}

fn read_state(dir: &Path) -> std::result::Result<(State, String), String> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let state = State::from_json_text(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((state, text))
}

impl FileBackend {
    fn append_log(&self, code: i32, machines: usize) {
        let Some(path) = &self.log else {
            return;
        };
        let t_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let line = json!({
            "t_us": t_us,
            "pid": std::process::id(),
            "argv": self.argv,
            "code": code,
            "machines": machines,
        })
        .to_string()
            + "\n";
        // One write of one line, in append mode: lines from parallel processes never mix.
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("smolvm-fake: cannot write log {}: {e}", path.display());
        }
    }
}

impl Backend for FileBackend {
    fn transact(&self, f: &mut dyn FnMut(&mut State) -> Step) -> std::result::Result<Step, String> {
        let lock = lock_dir(&self.dir)?;
        let (mut state, before) = read_state(&self.dir)?;
        let step = f(&mut state);
        let after = state.to_json_text();
        if after != before {
            write_state(&self.dir, &after)?;
        }
        if let Step::Done(out) = &step {
            self.append_log(out.code, state.machines.len());
        }
        drop(lock);
        Ok(step)
    }

    fn effect(&self, f: &mut dyn FnMut(&mut State)) -> std::result::Result<(), String> {
        let lock = lock_dir(&self.dir)?;
        let (mut state, before) = read_state(&self.dir)?;
        f(&mut state);
        let after = state.to_json_text();
        if after != before {
            write_state(&self.dir, &after)?;
        }
        drop(lock);
        Ok(())
    }

    fn log_exec(&self, code: i32, machines: usize) {
        if self.log.is_none() {
            return;
        }
        match lock_dir(&self.dir) {
            Ok(lock) => {
                self.append_log(code, machines);
                drop(lock);
            }
            Err(e) => eprintln!("smolvm-fake: {e}"),
        }
    }
}

/// Write-then-rename: a crash mid-write must not leave half a state behind.
fn write_state(dir: &Path, text: &str) -> std::result::Result<(), String> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.{}.tmp", std::process::id()));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Published ports of the fake: the `start` process binds them (so it can report a taken
/// port) and hands them to a detached helper process that serves them.
struct FakeNet {
    dir: PathBuf,
}

impl HostNet for FakeNet {
    #[cfg(unix)]
    fn serve(
        &self,
        machine: &str,
        boot: u64,
        ports: Vec<Bound>,
    ) -> std::result::Result<Option<u32>, String> {
        use std::os::unix::io::AsRawFd;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().map_err(|e| format!("port helper: {e}"))?;
        let fds: Vec<i32> = ports.iter().map(|b| b.listener.as_raw_fd()).collect();
        let mut cmd = Command::new(exe);
        cmd.arg(HELPER_ARG)
            .arg(&self.dir)
            .arg(machine)
            .arg(boot.to_string())
            .args(
                ports
                    .iter()
                    .map(|b| format!("{}:{}:{}", b.listener.as_raw_fd(), b.host, b.guest)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the closure only calls async-signal-safe functions
        // (setsid, fcntl) on a vector allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: a signal to the test's process group must not reach it,
                // and it must outlive this `start` process.
                libc::setsid();
                for fd in &fds {
                    let flags = libc::fcntl(*fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("port helper: {e}"))?;
        // The helper's ports are its own now; ours close when `ports` drops.
        Ok(Some(child.id()))
    }

    #[cfg(not(unix))]
    fn serve(
        &self,
        _machine: &str,
        _boot: u64,
        _ports: Vec<Bound>,
    ) -> std::result::Result<Option<u32>, String> {
        Err("published ports need a unix host in the fake".into())
    }

    fn release(&self, _machine: &str, helpers: &[u32]) {
        for &pid in helpers {
            kill_helper(pid, &self.dir);
        }
    }
}

/// Kill a recorded helper, but only if that pid still is a helper of this state dir (a pid
/// can be reused), and wait until it is gone so that its ports are closed on return.
fn kill_helper(pid: u32, dir: &Path) {
    #[cfg(target_os = "linux")]
    {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.get(1) == Some(&HELPER_ARG.as_bytes())
            && args.get(2) == Some(&dir.as_os_str().as_encoded_bytes());
        let Ok(pid_t) = libc::pid_t::try_from(pid) else {
            return;
        };
        if !ours {
            return;
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid_t, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match fs::read_to_string(format!("/proc/{pid}/stat")) {
                // A zombie has closed its files already.
                Ok(stat)
                    if !stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z') =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => return,
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Without /proc the pid cannot be checked; the helper exits by itself within about
        // a second of its machine stopping.
        let _ = (pid, dir);
    }
}

/// The machine as the helper may serve it: running the same boot with this helper recorded.
/// `None` when the state dir is gone (never re-created from here) or unreadable.
fn helper_snapshot(dir: &Path, machine: &str, boot: u64) -> Option<SimMachine> {
    if !dir.join(STATE_FILE).is_file() {
        return None;
    }
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .ok()?;
    lock.lock().ok()?;
    let (state, _) = read_state(dir).ok()?;
    drop(lock);
    state
        .get(machine)
        .filter(|m| {
            m.state.vmm_alive() && m.boots == boot && m.helpers.contains(&std::process::id())
        })
        .cloned()
}

/// The helper process: serve the inherited listeners until the machine is gone, stopped or
/// rebooted, or the state dir disappears (checked about every 200 ms).
fn serve_helper(args: &[String]) -> i32 {
    #[cfg(unix)]
    {
        use std::net::TcpListener;
        use std::os::unix::io::FromRawFd;
        let (Some(dir), Some(machine), Some(boot)) = (args.first(), args.get(1), args.get(2))
        else {
            return 2;
        };
        let Ok(boot) = boot.parse::<u64>() else {
            return 2;
        };
        let dir = PathBuf::from(dir);
        let mut listeners = Vec::new();
        for spec in &args[3..] {
            let parts: Vec<&str> = spec.split(':').collect();
            let (Some(Ok(fd)), Some(Ok(guest))) = (
                parts.first().map(|p| p.parse::<i32>()),
                parts.get(2).map(|p| p.parse::<u16>()),
            ) else {
                return 2;
            };
            // SAFETY: the fd was inherited from the `start` process, which made it a
            // listening socket for exactly this purpose; nothing else in this process owns it.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            if listener.set_nonblocking(true).is_err() {
                return 1;
            }
            listeners.push((listener, guest));
        }
        let check_every = Duration::from_millis(200);
        let mut next_check = Instant::now();
        loop {
            for (listener, guest) in &listeners {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(false);
                    let (dir, machine, guest) = (dir.clone(), machine.clone(), *guest);
                    std::thread::spawn(move || {
                        net::serve_conn(stream, guest, &|| helper_snapshot(&dir, &machine, boot))
                    });
                }
            }
            if Instant::now() >= next_check {
                if helper_snapshot(&dir, machine, boot).is_none() {
                    return 0;
                }
                next_check = Instant::now() + check_every;
            }
            std::thread::sleep(net::ACCEPT_POLL);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = args;
        2
    }
}

/// Read the machines a fake CLI keeps in `dir` (its `SMOLVM_FAKE_STATE`), under its lock:
/// what tests inspect after driving the fake, including env, CIDRs and copied files.
/// A directory the fake never wrote to holds no machines.
pub fn read_fake_state(dir: impl AsRef<Path>) -> Result<Vec<SimMachine>> {
    let dir = dir.as_ref();
    let lock = lock_dir(dir).map_err(|e| Error::io("lock fake state", dir, io::Error::other(e)))?;
    let (state, _) = read_state(dir)
        .map_err(|e| Error::io("read fake state", dir.join(STATE_FILE), io::Error::other(e)))?;
    drop(lock);
    Ok(state.machines)
}

/// Where the fake keeps its machines when `SMOLVM_FAKE_STATE` is unset:
/// `smolvm-fake-<uid>` in the temp dir (`$TMPDIR`, else `/tmp`), so that a downstream crate
/// can point `SMOLVM_BIN` at the fake and nothing else. The fake creates it readable only by
/// its user (0700) and refuses one that is a symlink or belongs to another user, since the
/// temp dir is shared.
pub fn default_fake_state_dir() -> PathBuf {
    std::env::temp_dir().join(default_dir_name())
}

#[cfg(unix)]
fn default_dir_name() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    format!("smolvm-fake-{}", unsafe { libc::getuid() })
}

#[cfg(not(unix))]
fn default_dir_name() -> String {
    "smolvm-fake".to_string()
}

/// [`default_fake_state_dir`], created 0700 if missing and checked to be this user's own.
fn private_default_dir() -> std::result::Result<PathBuf, String> {
    let dir = default_fake_state_dir();
    ensure_private_dir(&dir).map_err(|e| {
        format!(
            "{STATE_ENV} is not set and the default state directory {} is unusable: {e}; set \
             {STATE_ENV} to a directory of your own",
            dir.display()
        )
    })?;
    Ok(dir)
}

fn ensure_private_dir(dir: &Path) -> std::result::Result<(), String> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create it: {e}")),
    }
    // Another user could have made it first in a shared /tmp: their machines, or a symlink
    // into their files, must not become ours.
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect it: {e}"))?;
    if !meta.is_dir() {
        return Err("it exists and is not a directory".to_string());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        if meta.uid() != uid {
            return Err(format!("it belongs to uid {}, not to you", meta.uid()));
        }
    }
    Ok(())
}

/// Replace every `-e`/`--env` value with `<redacted>`, in all of clap's forms (`-e K=V`,
/// `--env K=V`, `--env=K=V`, `-e=K=V`, `-eK=V`, `-ie K=V`); words after `--` are the guest's
/// and are left alone.
pub(crate) fn redact_argv(args: &[String]) -> Vec<String> {
    let pair = |p: &str| match p.split_once('=') {
        Some((k, _)) => format!("{k}={REDACTED}"),
        None => p.to_string(),
    };
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    let mut guest = false;
    for a in args {
        if guest {
            out.push(a.clone());
        } else if value_next {
            value_next = false;
            out.push(pair(a));
        } else if a == "--" {
            guest = true;
            out.push(a.clone());
        } else if a == "--env" {
            value_next = true;
            out.push(a.clone());
        } else if let Some(v) = a.strip_prefix("--env=") {
            out.push(format!("--env={}", pair(v)));
        } else if let Some(body) = a.strip_prefix('-').filter(|b| !b.starts_with('-')) {
            // Flags that take no value may come before `e` in a cluster.
            let skip = body
                .find(|c: char| !"fitdv".contains(c))
                .unwrap_or(body.len());
            match body[skip..].strip_prefix('e') {
                Some("") => {
                    value_next = true;
                    out.push(a.clone());
                }
                Some(rest) => {
                    let (eq, value) = match rest.strip_prefix('=') {
                        Some(v) => ("=", v),
                        None => ("", rest),
                    };
                    out.push(format!("-{}e{eq}{}", &body[..skip], pair(value)));
                }
                None => out.push(a.clone()),
            }
        } else {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn redaction_covers_every_env_form() {
        let got = redact_argv(&argv(&[
            "machine",
            "exec",
            "--name",
            "m",
            "-e",
            "A=s1",
            "--env",
            "B=s2",
            "--env=C=s3",
            "-e=D=s4",
            "-eE=s5",
            "-ieF=s6",
            "-it",
            "-e",
            "G",
            "--env=",
            "--",
            "echo",
            "-e",
            "H=shown",
        ]));
        assert_eq!(
            got,
            argv(&[
                "machine",
                "exec",
                "--name",
                "m",
                "-e",
                "A=<redacted>",
                "--env",
                "B=<redacted>",
                "--env=C=<redacted>",
                "-e=D=<redacted>",
                "-eE=<redacted>",
                "-ieF=<redacted>",
                "-it",
                "-e",
                "G",
                "--env=",
                "--",
                "echo",
                "-e",
                "H=shown",
            ])
        );
        let joined = got.join(" ");
        for secret in ["s1", "s2", "s3", "s4", "s5", "s6"] {
            assert!(!joined.contains(&format!("={secret}")), "{secret}");
        }
    }

    #[test]
    fn redaction_leaves_other_short_options_alone() {
        assert_eq!(
            redact_argv(&argv(&["machine", "create", "-w/e=x", "-nweb", "-Ialpine"])),
            argv(&["machine", "create", "-w/e=x", "-nweb", "-Ialpine"])
        );
    }

    #[cfg(unix)]
    #[test]
    fn default_dir_is_created_private_and_must_be_ours() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        ensure_private_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        // Existing and ours: reused as it is.
        ensure_private_dir(&dir).unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = ensure_private_dir(&file).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        assert!(default_fake_state_dir().starts_with(std::env::temp_dir()));
    }

    #[test]
    fn file_backend_persists_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend {
            dir: dir.path().join("nested"),
            log: Some(dir.path().join("log.jsonl")),
            argv: argv(&["x"]),
        };
        backend
            .transact(&mut |s| {
                s.machines.push(SimMachine::new("a".into(), 1));
                Step::Done(SimOutput::default())
            })
            .unwrap();
        let machines = read_fake_state(dir.path().join("nested")).unwrap();
        assert_eq!(machines.len(), 1);
        let log = fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
        assert_eq!(line["machines"], 1);
        assert_eq!(line["code"], 0);
        assert_eq!(line["argv"], json!(["x"]));
        assert!(read_fake_state(dir.path().join("never-used"))
            .unwrap()
            .is_empty());
    }
}
