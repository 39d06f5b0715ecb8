//! The crash watcher, at process level: it never runs the test binary's own code, it acts at
//! once on owners that are already dead, and one watcher serves every test process of a user
//! and state directory.
//!
//! The watcher is this test binary re-executed with a private variable naming the socket to
//! serve. This binary carries user code of every kind that could run in such a re-executed
//! process (a `ctor` constructor of default priority, a raw `.init_array` entry, a `dtor`
//! destructor, and `main` with its tests); each writes a marker file when asked to, so the
//! tests can see that none ran in a watcher.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smolvm_harness::{Machine, Smolvm};

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");
/// Where user code writes its markers, when set.
const MARKERS: &str = "WATCHER_TEST_MARKERS";
/// The child scenario of this binary, when set.
const SCENARIO: &str = "WATCHER_TEST_SCENARIO";
const FAKE_STATE: &str = "WATCHER_TEST_FAKE_STATE";
/// The variable that makes a process a watcher (private to the crate; named here on purpose).
const SERVE: &str = "SMOLVM_HARNESS_WATCHER_SERVE_PRIVATE";
const LIMIT: Duration = Duration::from_secs(20);

fn mark(what: &str) {
    if let Some(dir) = std::env::var_os(MARKERS) {
        let _ = std::fs::write(Path::new(&dir).join(what), b"ran");
    }
}

#[ctor::ctor(unsafe)]
fn user_constructor() {
    mark("user-ctor");
}

extern "C" fn raw_init() {
    mark("raw-init-array");
}

/// An initializer placed by hand, without a priority, as C code or an older `ctor` would.
#[used]
#[link_section = ".init_array"]
static RAW_INIT: extern "C" fn() = raw_init;

#[dtor::dtor(unsafe)]
fn user_destructor() {
    mark("user-dtor");
}

fn fake(state: &Path) -> Smolvm {
    Smolvm::new(FAKE)
        .with_process_env("SMOLVM_FAKE_STATE", state.to_str().expect("utf-8 path"))
        .with_version("1.9.2".parse().expect("a version"))
}

/// Children: `hold` creates a machine, prints its name and sleeps (until killed).
#[test]
fn watcher_child() {
    mark("main");
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let state = PathBuf::from(std::env::var(FAKE_STATE).expect("fake state"));
    match scenario.as_str() {
        "hold" => {
            let vm = Machine::builder()
                .smolvm(fake(&state))
                .image("alpine")
                .net()
                .create()
                .expect("create on the fake");
            println!("\nREADY {}", vm.name());
            std::thread::sleep(LIMIT);
        }
        other => panic!("unknown scenario {other}"),
    }
}

struct World {
    fake_state: tempfile::TempDir,
    state: tempfile::TempDir,
    markers: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            fake_state: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            markers: tempfile::tempdir().unwrap(),
        }
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("SMOLVM_HARNESS_STATE_DIR", self.state.path())
            .env(FAKE_STATE, self.fake_state.path())
            .env_remove("SMOLVM_HARNESS_WATCHER")
            // Three holders at once, whatever the machine's default cap.
            .env("SMOLVM_HARNESS_MAX_MACHINES", "8")
            .env_remove(SCENARIO)
            .env_remove(MARKERS)
            .env_remove(SERVE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    /// A child holding one machine; returns it once it said READY, and the machine's name.
    fn holder(&self, watcher: bool) -> (Child, String) {
        let mut cmd = self.base();
        cmd.args([
            "--exact",
            "watcher_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, "hold");
        if !watcher {
            cmd.env("SMOLVM_HARNESS_WATCHER", "off");
        }
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(name) = line.strip_prefix("READY ") {
                return (child, name.trim().to_string());
            }
        }
        let out = child.wait_with_output().unwrap();
        panic!("the child never held a machine: {out:?}");
    }

    fn machines(&self) -> Vec<String> {
        fake(self.fake_state.path())
            .machine_list()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect()
    }

    fn ledger_files(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.state.path().join("ledger")) else {
            return Vec::new();
        };
        dir.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect()
    }

    fn socket(&self) -> PathBuf {
        self.state.path().join("test-watcher.sock")
    }

    /// Start a watcher by hand, as the crate does, and wait for its `ready`.
    fn watcher(&self) -> Child {
        let mut child = self
            .base()
            .env(SERVE, self.socket())
            .env(MARKERS, self.markers.path())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the watcher did not start");
        child
    }

    fn watcher_log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("watcher.log")).unwrap_or_default()
    }

    /// Processes serving a watcher socket in this world's state directory.
    fn watchers(&self) -> usize {
        let needle = format!("{SERVE}={}", self.state.path().display());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| {
                std::fs::read(p.path().join("environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv.starts_with(needle.as_bytes()))
                })
            })
            .count()
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn sigkill_group(child: &mut Child) {
    let pgid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: killpg only sends a signal, to the group our unreaped child leads.
    assert_eq!(unsafe { libc::killpg(pgid, libc::SIGKILL) }, 0);
    let _ = child.wait();
}

/// A process marked as a watcher runs none of the binary's own code: no user constructor (of
/// default priority, by `ctor` or by hand), no `main` and so no test, no destructor. It serves,
/// then leaves with `_exit` once idle.
#[test]
fn a_watcher_runs_no_code_of_the_binary() {
    let w = World::new();
    // The control: a normal run of this binary does run all of them.
    let control = w
        .base()
        .args(["--exact", "watcher_child"])
        .env(MARKERS, w.markers.path())
        .output()
        .unwrap();
    assert!(control.status.success(), "{control:?}");
    let mut ran: Vec<String> = std::fs::read_dir(w.markers.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ran.sort();
    assert_eq!(ran, ["main", "raw-init-array", "user-ctor", "user-dtor"]);
    for m in &ran {
        std::fs::remove_file(w.markers.path().join(m)).unwrap();
    }

    let mut watcher = w.watcher();
    let status = wait_exit(&mut watcher, LIMIT);
    assert_eq!(status.code(), Some(0), "{}", w.watcher_log());
    let ran: Vec<_> = std::fs::read_dir(w.markers.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(ran.is_empty(), "user code ran in the watcher: {ran:?}");
    // It removed its socket on the way out.
    assert!(!w.socket().exists());
}

/// An owner that died before any watcher could see it (here: with the watcher off) is
/// settled by the next watcher as soon as it starts.
#[test]
fn a_watcher_settles_owners_already_dead_when_it_starts() {
    let w = World::new();
    let (mut child, name) = w.holder(false);
    sigkill_group(&mut child);
    assert_eq!(w.machines(), std::slice::from_ref(&name));
    assert_eq!(w.ledger_files().len(), 1);
    let mut watcher = w.watcher();
    wait_until(LIMIT, "the dead owner's machine to be deleted", || {
        w.machines().is_empty() && w.ledger_files().is_empty()
    });
    wait_exit(&mut watcher, LIMIT);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut watcher.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains(&name), "log: {log}");
}

/// Test processes share one watcher (one per user, state directory and pid namespace),
/// which settles each of them when it dies.
#[test]
fn one_watcher_serves_every_test_process() {
    let w = World::new();
    let holders: Vec<(Child, String)> = (0..3).map(|_| w.holder(true)).collect();
    assert_eq!(
        w.machines().len(),
        3,
        "{:?} {:?}",
        w.machines(),
        w.ledger_files()
    );
    assert_eq!(w.watchers(), 1, "one watcher for three test processes");
    for (mut child, _) in holders {
        sigkill_group(&mut child);
    }
    wait_until(LIMIT, "the watcher to delete all three machines", || {
        w.machines().is_empty() && w.ledger_files().is_empty()
    });
    // Idle, it leaves.
    wait_until(LIMIT, "the idle watcher to exit", || w.watchers() == 0);
}
