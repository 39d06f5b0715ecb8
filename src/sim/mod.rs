//! A stateful simulation of the smolvm CLI, for tests that cannot (or should not) boot VMs.
//!
//! One implementation of smolvm's grammar and behaviour backs two front ends:
//!
//! - [`SimulatedRunner`], a [`crate::runner::Runner`] that answers in-process from shared state;
//! - the `smolvm-fake` binary (`fixtures/smolvm-fake.rs`, a thin `main` over
//!   [`fake_cli_main`]), a real process that keeps its state in a directory, so that the
//!   process runner, timeouts, kills and parallel processes are exercised for real. A crate
//!   that depends on this one builds its own copy from three lines (README, "Running your
//!   real-mode tests without smolvm").
//!
//! Both parse argv exactly as the chosen smolvm version does (0.8.0 through 1.9.2: the
//! positional-name dialect before 1.0.2, `--name` after, `--label` from 1.8.0, …) and answer
//! with smolvm's exit codes and texts: clap usage errors are exit 2 with `error: …`, runtime
//! errors exit 1 with one `Error: …` line, `exec` passes the guest's code through.
//!
//! # What is simulated
//!
//! `--version`; `pack create --image IMG -o OUT`; `machine` (alias `vm`) `create`, `start`,
//! `stop`, `delete` (alias `rm`), `exec`, `cp`, `ls` (alias `list`) and `status`, with the
//! flags the harness uses (those [`crate::Smolvm`]'s methods send; the full grammar, per
//! version, is in this module's `grammar.rs`). Any other flag is clap's
//! `unexpected argument` error; other real subcommands (`serve`, `machine run`, …) fail with
//! exit 1 `Error: sim: subcommand not simulated: …`.
//!
//! Guests of `exec` on a running machine can run: `echo`, `true`, `false`, `env` (the
//! machine's env with the exec's `-e` on top, nothing else), `pwd`, `cat` (files copied in
//! with `machine cp`), `sh -c` with a tiny shell (`;`, `&&`, `||`, quotes, `$VAR`, `exit N`,
//! `>&2`, …), `sleep` (really sleeps; `--timeout` stops it with exit 124, and on image
//! machines appends `\ncommand timed out after Nms` to stderr) and `head -c N /dev/zero`.
//! Anything else exits 127 with `sim: command not simulated: NAME (…)` on stderr.
//!
//! Without `--stream`, output over 11 MiB per stream is truncated before 1.0.0 and is an
//! exit 1 error from 1.0.0, as in smolvm (`MAX_EXEC_OUTPUT`).
//!
//! # Knobs
//!
//! Keys are the subcommands in [`KNOB_KEYS`]. `fail` makes a well-formed call exit 1 with
//! `Error: agent operation failed: KEY: injected failure` (no state change); `latency` sleeps
//! before answering (outside any lock, so parallel calls overlap); `hang` never answers: the
//! in-process runner returns [`crate::Error::Timeout`] after the invocation's timeout, the
//! fake sleeps until it is killed. Usage errors (exit 2) are answered at once, as smolvm
//! answers them before doing any work.
//!
//! # The fake CLI's environment
//!
//! | variable | meaning |
//! |---|---|
//! | `SMOLVM_FAKE_STATE=DIR` | state is kept in `DIR/state.json`, guarded by an exclusive lock on `DIR/lock` held only for each read-modify-write; unset: [`default_fake_state_dir`] (`$TMPDIR/smolvm-fake-<uid>`, created 0700), shared by every fake of this user that is not given a directory |
//! | `SMOLVM_FAKE_VERSION=X.Y.Z` | the smolvm version to behave as (default 1.9.2) |
//! | `SMOLVM_FAKE_FAIL=start,exec` | subcommands that fail |
//! | `SMOLVM_FAKE_LATENCY=create=50ms,exec=20ms` | per-subcommand latency (humantime units) |
//! | `SMOLVM_FAKE_HANG=exec` | subcommands that sleep forever |
//! | `SMOLVM_FAKE_LOG=FILE` | append one JSON line per invocation (below) |
//!
//! An unusable state directory, an unknown knob key or a bad value is exit 1 with an
//! `Error: smolvm-fake: …` line. `delete` without `-f` reads its `[y/N]` answer from stdin
//! (EOF means no, so it prints `Cancelled`).
//!
//! The log line, written while holding the state lock right after the state change (for
//! `exec`, when the guest has finished):
//!
//! ```text
//! {"argv":["machine","create","--env=TOKEN=<redacted>","web"],"code":0,"machines":1,"pid":4242,"t_us":1767225600000000}
//! ```
//!
//! `argv` is the arguments without the program name, with every `-e`/`--env` value replaced
//! by `<redacted>` (values may be secrets); `pid` is the fake process's own PID; `machines`
//! is the machine count after the command. A call killed while sleeping (latency, hang,
//! `sleep`) writes no line.
//!
//! # The simulated `.smolmachine`
//!
//! `pack create --image IMG -o OUT` writes `OUT`, a small shell stub that only says it
//! cannot run, and, unless `--single-file`, `OUT.smolmachine`, a JSON manifest that
//! `machine create --from PATH` reads back:
//!
//! ```text
//! {"format":"smolvm-sim-pack","version":1,"image":"alpine","cpus":4,"memory_mib":8192,
//!  "network":false,"env":[["K","V"]],"workdir":null,"entrypoint":[]}
//! ```
//!
//! A real smolvm pack is not readable by the simulation and vice versa.
//!
//! # Deliberate differences from smolvm
//!
//! Summary lines after `Created machine: N`, the text tables of `ls`, help texts and clap's
//! `tip:` lines are not reproduced; the `cp` progress bar is not printed; the VM is never
//! `unreachable`/`failed`/`frozen`; the HEAD note about an unexpected executable name is not
//! printed; `exec -d`, `--secret-*`, `cp --mode/--uid/--gid` and every flag not listed
//! above are not simulated.
//!
//! Messages and exit codes read from smolvm's own source (`smol-machines/smolvm` at v0.8.0,
//! v0.8.2 and 1.9.2) are reproduced word for word; `tests/fidelity.rs` pins them.
//! Where it gives none, the wording is the simulation's own: the `clap` message for an
//! empty `--image`, an empty or path-separator or trailing-hyphen name, `cp` of a guest
//! path with `.`/`..` or of a missing file, the 1.0.0+ output-cap error, `pack` write
//! failures, and the tail of the registry-without-network message after "can never succeed".
//!
//! ```
//! use smolvm_harness::sim::SimulatedRunner;
//! use smolvm_harness::runner::{Invocation, Runner};
//!
//! let runner = SimulatedRunner::newest();
//! let call = |args: &[&str]| {
//!     runner.run(&Invocation {
//!         program: "smolvm".into(),
//!         args: args.iter().map(|s| s.to_string()).collect(),
//!         env: Vec::new(),
//!         timeout: None,
//!     })
//! };
//! call(&["machine", "create", "--name", "web", "--image", "alpine", "--net"]).unwrap();
//! call(&["machine", "start", "--name", "web"]).unwrap();
//! let out = call(&["machine", "exec", "--name", "web", "--", "echo", "hi"]).unwrap();
//! assert_eq!((out.code, out.stdout), (Some(0), b"hi\n".to_vec()));
//! assert_eq!(runner.machine_names(), ["web"]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

mod apply;
mod fake;
mod grammar;
mod guest;
mod net;
mod runner;
mod state;

pub use fake::{
    default_fake_state_dir, fake_cli_main, read_fake_state, FAIL_ENV, HANG_ENV, LATENCY_ENV,
    LOG_ENV, STATE_ENV, VERSION_ENV,
};
pub use runner::SimulatedRunner;
pub use state::{SimMachine, SimMount, SimSecretRef, SimState};

use apply::{apply, Ctx, Step};
use grammar::{Command, Features};
use guest::{Effect, GuestEnd};
use net::HostNet;
use state::State;

/// The subcommand keys the knobs (`fail`, `latency`, `hang`) accept.
pub const KNOB_KEYS: &[&str] = &[
    "version", "pack", "create", "start", "stop", "delete", "exec", "cp", "ls", "status",
    "data-dir",
];

/// smolvm's per-stream cap on non-streaming exec output (`MAX_EXEC_OUTPUT`, 11 MiB).
const MAX_EXEC_OUTPUT: usize = 11 * 1024 * 1024;

/// What one simulated smolvm process printed and how it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SimOutput {
    pub(crate) code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

/// Failure injection, by subcommand key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Knobs {
    pub(crate) fail: BTreeSet<String>,
    pub(crate) latency: BTreeMap<String, Duration>,
    pub(crate) hang: BTreeSet<String>,
}

/// Where the state lives: a mutex in-process, a locked file for the fake.
pub(crate) trait Backend {
    /// Apply `f` to the state with exclusive access and persist what it changed; when the
    /// step is final, log its exit code before giving up the access.
    fn transact(&self, f: &mut dyn FnMut(&mut State) -> Step) -> Result<Step, String>;
    /// Log a finished exec, whose code is known only after the guest ran outside the lock.
    fn log_exec(&self, code: i32, machines: usize);
    /// Apply a running guest's change to the state with exclusive access, without logging.
    fn effect(&self, f: &mut dyn FnMut(&mut State)) -> Result<(), String>;
}

/// One invocation, as the driver needs it.
pub(crate) struct Call<'a> {
    pub(crate) args: &'a [String],
    pub(crate) features: Features,
    pub(crate) knobs: &'a Knobs,
    /// smolvm's own environment (for `-e KEY`).
    pub(crate) lookup_env: &'a dyn Fn(&str) -> Option<String>,
    /// The answer to delete's prompt; asked only when a delete without `-f` needs it.
    pub(crate) confirm_delete: &'a dyn Fn() -> bool,
    /// The host-side limit: past it, the process would have been killed.
    pub(crate) host_deadline: Option<Instant>,
    /// `hang` sleeps forever (the fake) instead of until the host deadline (in-process).
    pub(crate) hang_forever: bool,
    /// Where machines' data directories are made.
    pub(crate) data_root: &'a Path,
    /// Who serves published ports.
    pub(crate) net: &'a dyn HostNet,
}

/// How an invocation ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Exit(SimOutput),
    /// Killed at the host deadline, with what it had printed by then.
    HostTimeout {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

fn runtime_error(msg: &str) -> SimOutput {
    SimOutput {
        code: 1,
        stdout: Vec::new(),
        stderr: format!("Error: {msg}\n").into_bytes(),
    }
}

/// Sleep `d`, or until `deadline` if that comes first; false if the deadline cut it short.
fn sleep_within(d: Duration, deadline: Option<Instant>) -> bool {
    let now = Instant::now();
    match deadline {
        Some(dl) if now.checked_add(d).is_none_or(|end| end >= dl) => {
            thread::sleep(dl.saturating_duration_since(now));
            false
        }
        _ => {
            thread::sleep(d);
            true
        }
    }
}

fn entropy() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn finish(backend: &dyn Backend, out: SimOutput) -> Result<Outcome, String> {
    match backend.transact(&mut |_| Step::Done(out.clone()))? {
        Step::Done(out) => Ok(Outcome::Exit(out)),
        Step::Guest(_) => Err("internal error: a finished call asked for a guest".into()),
    }
}

/// Apply smolvm's output cap to a non-streaming exec (§4).
fn cap_output(out: SimOutput, stream: bool, f: Features) -> SimOutput {
    if stream || (out.stdout.len() <= MAX_EXEC_OUTPUT && out.stderr.len() <= MAX_EXEC_OUTPUT) {
        return out;
    }
    if f.v1() {
        return runtime_error(&format!(
            "agent operation failed: vm exec: command output exceeded {MAX_EXEC_OUTPUT} bytes \
             (stdout: {} bytes, stderr: {} bytes). Use streaming exec (--stream) for large \
             output",
            out.stdout.len(),
            out.stderr.len()
        ));
    }
    let mut out = out;
    out.stdout.truncate(MAX_EXEC_OUTPUT);
    out.stderr.truncate(MAX_EXEC_OUTPUT);
    out
}

/// Run one invocation: parse, knobs, apply under the backend's lock, then the guest (if
/// any) outside it.
pub(crate) fn drive(call: &Call<'_>, backend: &dyn Backend) -> Result<Outcome, String> {
    let f = call.features;
    let cmd = match grammar::parse(call.args, f) {
        Ok(cmd) => cmd,
        Err(usage) => return finish(backend, usage),
    };
    if let Some(key) = cmd.key() {
        if let Some(d) = call.knobs.latency.get(key) {
            if !sleep_within(*d, call.host_deadline) {
                return Ok(Outcome::HostTimeout {
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                });
            }
        }
        if call.knobs.hang.contains(key) {
            if call.hang_forever {
                loop {
                    thread::sleep(Duration::from_secs(3600));
                }
            }
            if let Some(deadline) = call.host_deadline {
                thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
            return Ok(Outcome::HostTimeout {
                stdout: Vec::new(),
                stderr: Vec::new(),
            });
        }
        if call.knobs.fail.contains(key) {
            let msg = format!("agent operation failed: {key}: injected failure");
            return finish(backend, runtime_error(&msg));
        }
    }
    let delete_confirmed =
        matches!(cmd, Command::Delete { force: false, .. }) && (call.confirm_delete)();
    let ctx = Ctx {
        features: f,
        now_secs: apply::now_secs(),
        lookup_env: call.lookup_env,
        delete_confirmed,
        entropy: entropy(),
        data_root: call.data_root,
        net: call.net,
    };
    match backend.transact(&mut |state| apply(&cmd, state, &ctx))? {
        Step::Done(out) => Ok(Outcome::Exit(out)),
        Step::Guest(job) => {
            let host = |effect: &Effect| -> Result<(), String> {
                let mut result = Ok(());
                backend.effect(&mut |state| {
                    result = apply::guest_effect(state, &ctx, &job.machine, job.boot, effect);
                })?;
                result
            };
            guest_end(
                guest::run(&job, call.host_deadline, &host),
                &job,
                f,
                backend,
            )
        }
    }
}

fn guest_end(
    end: GuestEnd,
    job: &guest::GuestJob,
    f: Features,
    backend: &dyn Backend,
) -> Result<Outcome, String> {
    match end {
        GuestEnd::Exited(out) => {
            let out = cap_output(out, job.stream, f);
            backend.log_exec(out.code, job.machines);
            Ok(Outcome::Exit(out))
        }
        GuestEnd::HostTimeout { stdout, stderr } => Ok(Outcome::HostTimeout { stdout, stderr }),
    }
}

/// Check knob keys; the message lists the valid ones.
pub(crate) fn check_knob_key(key: &str) -> Result<(), String> {
    if KNOB_KEYS.contains(&key) {
        Ok(())
    } else {
        Err(format!(
            "unknown subcommand key {key:?} (known: {})",
            KNOB_KEYS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    #[test]
    fn output_cap_truncates_before_1_0_0_and_fails_after() {
        let big = SimOutput {
            code: 0,
            stdout: vec![0; MAX_EXEC_OUTPUT + 1],
            stderr: Vec::new(),
        };
        let old = cap_output(big.clone(), false, Features::new(Version::new(0, 8, 0)));
        assert_eq!((old.code, old.stdout.len()), (0, MAX_EXEC_OUTPUT));
        let new = cap_output(big.clone(), false, Features::new(Version::new(1, 0, 0)));
        assert_eq!(new.code, 1);
        assert!(new.stdout.is_empty());
        assert!(String::from_utf8_lossy(&new.stderr).starts_with("Error: "));
        let streamed = cap_output(big, true, Features::new(Version::new(1, 9, 2)));
        assert_eq!(streamed.stdout.len(), MAX_EXEC_OUTPUT + 1);
    }

    #[test]
    fn sleep_within_stops_at_deadline() {
        let start = Instant::now();
        assert!(!sleep_within(
            Duration::from_secs(10),
            Some(start + Duration::from_millis(30))
        ));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(sleep_within(Duration::from_millis(1), None));
    }

    #[test]
    fn knob_keys_are_checked() {
        assert!(check_knob_key("exec").is_ok());
        assert!(check_knob_key("run")
            .unwrap_err()
            .contains("known: version, pack"));
    }
}
