//! The in-process front end: a [`Runner`] over shared simulated state.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::apply::Step;
use super::grammar::Features;
use super::net::{self, Bound, HostNet};
use super::state::{SimMachine, State};
use super::{check_knob_key, drive, Backend, Call, Knobs, Outcome};
use crate::error::{Error, Result};
use crate::runner::{lock, Invocation, RawOutput, Runner};
use crate::Version;

struct Shared {
    version: Version,
    state: Mutex<State>,
    knobs: Mutex<Knobs>,
    /// Machines' data directories; removed with the last clone of the runner.
    data: Option<tempfile::TempDir>,
    /// The accept threads of published ports, by machine.
    ports: Mutex<HashMap<String, Vec<PortThread>>>,
}

/// One host port's accept loop: it polls `stop` and the runner's liveness, so it ends soon
/// after the machine stops or the runner is dropped.
struct PortThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Shared {
    fn data_root(&self) -> PathBuf {
        match &self.data {
            Some(d) => d.path().to_path_buf(),
            // Only if no temp dir could be made: data dirs then fail to appear, nothing else.
            None => std::env::temp_dir().join("smolvm-sim-unavailable"),
        }
    }
}

/// Published ports of the in-process runner: a thread per host port.
struct MemNet<'a> {
    shared: &'a Arc<Shared>,
}

fn snapshot(weak: &Weak<Shared>, name: &str, boot: u64) -> Option<SimMachine> {
    let shared = weak.upgrade()?;
    let state = lock(&shared.state);
    state
        .get(name)
        .filter(|m| m.state.vmm_alive() && m.boots == boot)
        .cloned()
}

impl HostNet for MemNet<'_> {
    fn serve(
        &self,
        machine: &str,
        boot: u64,
        ports: Vec<Bound>,
    ) -> std::result::Result<Option<u32>, String> {
        let mut threads = Vec::new();
        for Bound {
            listener, guest, ..
        } in ports
        {
            let stop = Arc::new(AtomicBool::new(false));
            let weak = Arc::downgrade(self.shared);
            let name = machine.to_string();
            let flag = Arc::clone(&stop);
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("port forwarder: {e}"))?;
            let handle = thread::spawn(move || {
                // Never takes the state lock itself: `release` joins it while holding that.
                while !flag.load(Ordering::SeqCst) && weak.strong_count() > 0 {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let (weak, name) = (weak.clone(), name.clone());
                            thread::spawn(move || {
                                net::serve_conn(stream, guest, &|| snapshot(&weak, &name, boot))
                            });
                        }
                        Err(_) => thread::sleep(net::ACCEPT_POLL),
                    }
                }
            });
            threads.push(PortThread { stop, handle });
        }
        lock(&self.shared.ports)
            .entry(machine.to_string())
            .or_default()
            .extend(threads);
        Ok(None)
    }

    fn release(&self, machine: &str, _helpers: &[u32]) {
        let threads = lock(&self.shared.ports).remove(machine).unwrap_or_default();
        for t in &threads {
            t.stop.store(true, Ordering::SeqCst);
        }
        // Joined, so the host ports are closed when stop/delete returns.
        for t in threads {
            let _ = t.handle.join();
        }
    }
}

/// A [`Runner`] that answers from an in-process simulation of one smolvm version; nothing is
/// spawned. Clones share the same machines and knobs.
///
/// Every completed command is `Ok(RawOutput)`, whatever its exit code, as with the real
/// process runner; a `hang` knob, a latency or a guest `sleep` longer than the invocation's
/// timeout is [`Error::Timeout`]. See [the module docs](super) for what is simulated.
///
/// ```
/// use std::time::Duration;
/// use smolvm_harness::sim::SimulatedRunner;
/// use smolvm_harness::runner::{Invocation, Runner};
/// use smolvm_harness::Version;
///
/// let runner = SimulatedRunner::new(Version::new(0, 8, 0)).fail("start");
/// let inv = |args: &[&str]| Invocation {
///     program: "smolvm".into(),
///     args: args.iter().map(|s| s.to_string()).collect(),
///     env: Vec::new(),
///     timeout: Some(Duration::from_secs(5)),
/// };
/// runner.run(&inv(&["machine", "create", "--image", "alpine", "web"])).unwrap();
/// let out = runner.run(&inv(&["machine", "start", "--name", "web"])).unwrap();
/// assert_eq!(out.code, Some(1));
/// assert_eq!(out.stderr, b"Error: agent operation failed: start: injected failure\n");
/// ```
#[derive(Clone)]
pub struct SimulatedRunner {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimulatedRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedRunner")
            .field("version", &self.shared.version)
            .field("machines", &self.machine_names())
            .field("knobs", &*lock(&self.shared.knobs))
            .finish()
    }
}

impl SimulatedRunner {
    /// A simulation of smolvm `version`, with no machines.
    pub fn new(version: Version) -> SimulatedRunner {
        SimulatedRunner {
            shared: Arc::new(Shared {
                version,
                state: Mutex::new(State::default()),
                knobs: Mutex::new(Knobs::default()),
                data: tempfile::Builder::new()
                    .prefix("smolvm-sim-")
                    .tempdir()
                    .ok(),
                ports: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A simulation of the newest smolvm this crate knows ([`Version::NEWEST_KNOWN`]).
    pub fn newest() -> SimulatedRunner {
        SimulatedRunner::new(Version::NEWEST_KNOWN)
    }

    /// The simulated version.
    pub fn version(&self) -> Version {
        self.shared.version
    }

    /// The names of all machines, sorted.
    pub fn machine_names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.shared.state)
            .machines
            .iter()
            .map(|m| m.name.clone())
            .collect();
        names.sort();
        names
    }

    /// How many machines exist.
    pub fn machine_count(&self) -> usize {
        lock(&self.shared.state).machines.len()
    }

    /// A snapshot of one machine, including what `ls --json` does not show (env, CIDRs,
    /// files copied in).
    pub fn machine(&self, name: &str) -> Option<SimMachine> {
        lock(&self.shared.state).get(name).cloned()
    }

    fn knob(&self, key: &str, edit: impl FnOnce(&mut Knobs)) -> SimulatedRunner {
        if let Err(msg) = check_knob_key(key) {
            // A misspelt key would make the test silently test nothing.
            panic!("SimulatedRunner: {msg}");
        }
        edit(&mut lock(&self.shared.knobs));
        self.clone()
    }

    /// Make every well-formed call of `subcommand` (a [`super::KNOB_KEYS`] entry) exit 1
    /// with `Error: agent operation failed: SUBCOMMAND: injected failure`, changing nothing.
    /// Affects all clones; returns one for chaining.
    ///
    /// # Panics
    ///
    /// If `subcommand` is not one of [`super::KNOB_KEYS`].
    pub fn fail(&self, subcommand: &str) -> SimulatedRunner {
        self.knob(subcommand, |k| {
            k.fail.insert(subcommand.to_string());
        })
    }

    /// Sleep `delay` before answering each call of `subcommand`, outside any lock, so that
    /// parallel calls overlap. A delay past the invocation's timeout is [`Error::Timeout`].
    ///
    /// # Panics
    ///
    /// If `subcommand` is not one of [`super::KNOB_KEYS`].
    pub fn latency(&self, subcommand: &str, delay: Duration) -> SimulatedRunner {
        self.knob(subcommand, |k| {
            k.latency.insert(subcommand.to_string(), delay);
        })
    }

    /// Make calls of `subcommand` never finish: [`Error::Timeout`] after the invocation's
    /// timeout (at once if it has none).
    ///
    /// # Panics
    ///
    /// If `subcommand` is not one of [`super::KNOB_KEYS`].
    pub fn hang(&self, subcommand: &str) -> SimulatedRunner {
        self.knob(subcommand, |k| {
            k.hang.insert(subcommand.to_string());
        })
    }

    /// Remove every `fail`, `latency` and `hang`.
    pub fn clear_knobs(&self) -> SimulatedRunner {
        *lock(&self.shared.knobs) = Knobs::default();
        self.clone()
    }
}

/// The in-process state: a mutex, and no log.
struct MemBackend<'a>(&'a Mutex<State>);

impl Backend for MemBackend<'_> {
    fn transact(&self, f: &mut dyn FnMut(&mut State) -> Step) -> std::result::Result<Step, String> {
        Ok(f(&mut lock(self.0)))
    }

    fn log_exec(&self, _code: i32, _machines: usize) {}

    fn effect(&self, f: &mut dyn FnMut(&mut State)) -> std::result::Result<(), String> {
        f(&mut lock(self.0));
        Ok(())
    }
}

impl Runner for SimulatedRunner {
    fn in_process(&self) -> bool {
        true
    }

    fn state_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.shared).cast::<()>() as usize)
    }

    fn run(&self, inv: &Invocation) -> Result<RawOutput> {
        let start = Instant::now();
        // A snapshot: a knob changed mid-call applies from the next call.
        let knobs = lock(&self.shared.knobs).clone();
        let data_root = self.shared.data_root();
        // smolvm would see the invocation's env on top of the test process's own.
        let lookup = |key: &str| {
            inv.env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(key).ok())
        };
        let call = Call {
            args: &inv.args,
            features: Features::new(self.shared.version),
            knobs: &knobs,
            lookup_env: &lookup,
            // The process runner gives smolvm a null stdin: the prompt reads EOF.
            confirm_delete: &|| false,
            host_deadline: inv.timeout.and_then(|t| start.checked_add(t)),
            hang_forever: false,
            data_root: &data_root,
            net: &MemNet {
                shared: &self.shared,
            },
        };
        match drive(&call, &MemBackend(&self.shared.state)) {
            Ok(Outcome::Exit(out)) => Ok(RawOutput {
                code: Some(out.code),
                stdout: out.stdout,
                stderr: out.stderr,
                duration: start.elapsed(),
                ..RawOutput::default()
            }),
            Ok(Outcome::HostTimeout { stdout, stderr }) => Err(Error::Timeout {
                command: inv.command_line(),
                timeout: inv.timeout.unwrap_or_default(),
                stdout,
                stderr,
            }),
            Err(msg) => Err(Error::Spawn {
                command: inv.command_line(),
                source: io::Error::other(msg),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(args: &[&str], timeout: Option<Duration>) -> Invocation {
        Invocation {
            program: "smolvm".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            timeout,
        }
    }

    #[test]
    fn clones_share_state_and_knobs() {
        let a = SimulatedRunner::newest();
        let b = a.clone();
        b.run(&inv(
            &["machine", "create", "-n", "x", "--net", "-I", "alpine"],
            None,
        ))
        .unwrap();
        assert_eq!(a.machine_names(), ["x"]);
        a.fail("ls");
        let out = b.run(&inv(&["machine", "ls"], None)).unwrap();
        assert_eq!(out.code, Some(1));
        b.clear_knobs();
        assert_eq!(a.run(&inv(&["machine", "ls"], None)).unwrap().code, Some(0));
    }

    #[test]
    fn hang_times_out_after_the_invocation_timeout() {
        let r = SimulatedRunner::newest().hang("version");
        let start = Instant::now();
        let err = r
            .run(&inv(&["--version"], Some(Duration::from_millis(50))))
            .unwrap_err();
        assert!(
            matches!(err, Error::Timeout { timeout, .. } if timeout == Duration::from_millis(50))
        );
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Without a timeout it answers at once rather than blocking the test forever.
        assert!(matches!(
            r.run(&inv(&["--version"], None)),
            Err(Error::Timeout { .. })
        ));
    }

    #[test]
    fn latency_past_the_timeout_is_a_timeout() {
        let r = SimulatedRunner::newest().latency("ls", Duration::from_secs(5));
        let start = Instant::now();
        let err = r
            .run(&inv(&["machine", "ls"], Some(Duration::from_millis(40))))
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn odd_argv_never_panics_and_always_explains_a_failure() {
        let odd: &[&[&str]] = &[
            &[],
            &["-"],
            &["--"],
            &["machine"],
            &["machine", "exec"],
            &["machine", "exec", "--name"],
            &["machine", "exec", "--name", "", "--", "true"],
            &["machine", "exec", "--timeout", "1µs", "--", "true"],
            &["machine", "exec", "--timeout", "€", "--", "true"],
            &[
                "machine",
                "exec",
                "--timeout=99999999999999999999999y",
                "--",
                "true",
            ],
            &["machine", "create", "-e"],
            &["machine", "create", "--env="],
            &["machine", "create", "-I"],
            &["machine", "create", "--net=yes"],
            &["machine", "create", "--cpus", "-1"],
            &["machine", "create", "--allow-cidr", "::1/999"],
            &["machine", "create", "--", "--"],
            &["machine", "cp", ":", ":"],
            &["machine", "cp", "x"],
            &["machine", "status", "--name", "ünïcode"],
            &["machine", "rm"],
            &["pack", "create", "-o", "/nonexistent-dir/x", "-I", "a"],
            &["pack"],
            &["serve", "start"],
            &["vm", "ls", "-vv"],
        ];
        for v in ["0.8.0", "1.0.1", "1.9.2"] {
            let r = SimulatedRunner::new(v.parse().unwrap());
            for argv in odd {
                let out = r.run(&inv(argv, Some(Duration::from_secs(5)))).unwrap();
                let code = out.code.unwrap();
                if code != 0 {
                    assert!(
                        !out.stderr.is_empty(),
                        "{v} {argv:?}: exit {code} without a word"
                    );
                }
                assert!(matches!(code, 0..=2), "{v} {argv:?}: exit {code}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "unknown subcommand key \"strat\"")]
    fn misspelt_knob_key_panics() {
        SimulatedRunner::newest().fail("strat");
    }

    #[test]
    fn env_key_without_value_comes_from_the_invocation_env_from_0_8_1() {
        for (v, expect) in [("0.8.0", ""), ("0.8.1", "K=from-inv\n")] {
            let r = SimulatedRunner::new(v.parse().unwrap());
            // Both versions take the positional name (before 1.0.2).
            r.run(&inv(&["machine", "create", "m"], None)).unwrap();
            r.run(&inv(&["machine", "start", "--name", "m"], None))
                .unwrap();
            let mut i = inv(
                &["machine", "exec", "--name", "m", "-e", "K", "--", "env"],
                None,
            );
            i.env.push(("K".into(), "from-inv".into()));
            let out = r.run(&i).unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), expect, "{v}");
        }
    }
}
