//! Child-process harness shared by the attack suites (`tests/attacks.rs`,
//! `tests/attacks_round2.rs`): each attack re-runs its own test binary as a child scenario
//! against the fake CLI, then looks at the fake's machines, the ledger and the watcher.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smolvm_harness::Smolvm;

pub const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");

/// A client of the fake that takes its state from the *process* env (`SMOLVM_FAKE_STATE`,
/// `SMOLVM_FAKE_VERSION` as the child inherited them), as `Smolvm::from_env()` would.
pub fn plain() -> Smolvm {
    Smolvm::new(FAKE)
}

pub fn fake_at(state: &Path, version: &str) -> Smolvm {
    Smolvm::new(FAKE)
        .with_process_env("SMOLVM_FAKE_STATE", state.to_str().unwrap())
        .with_process_env("SMOLVM_FAKE_VERSION", version)
}

/// Print the line the parent waits for (`holder`).
pub fn ready(words: &[&str]) {
    println!("\nREADY {}", words.join(" "));
}

/// This test binary re-run as `entry` (the suite's child test) with `scenario_var=scenario`,
/// its own harness state dir, in its own process group.
pub fn child_of(
    entry: &str,
    scenario_var: &str,
    state_dir: &Path,
    scenario: &str,
    envs: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env("SMOLVM_HARNESS_STATE_DIR", state_dir)
        .env_remove("SMOLVM_HARNESS_WATCHER")
        .env_remove("SMOLVM_HARNESS_KEEP")
        .env_remove("SMOLVM_FAKE_STATE")
        .env_remove("SMOLVM_FAKE_FAIL")
        .env("SMOLVM_HARNESS_MAX_MACHINES", "32")
        .env(scenario_var, scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Spawn and wait for READY; returns the child and the words it printed.
pub fn holder(mut cmd: Command) -> (Child, Vec<String>) {
    let mut c = cmd.spawn().unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("READY ") {
            return (c, rest.split_whitespace().map(str::to_string).collect());
        }
    }
    let out = c.wait_with_output().unwrap();
    panic!("child never got ready: {out:?}");
}

pub fn run_to_end(mut cmd: Command) -> std::process::Output {
    cmd.output().unwrap()
}

pub fn sigkill_group(c: &mut Child) {
    let pgid = libc::pid_t::try_from(c.id()).unwrap();
    // SAFETY: signals the group our unreaped child leads.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let _ = c.wait();
}

pub fn names(smolvm: &Smolvm) -> Vec<String> {
    let mut v: Vec<String> = smolvm
        .machine_list()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    v.sort();
    v
}

pub fn labels_of(smolvm: &Smolvm, name: &str) -> Option<Vec<(String, String)>> {
    smolvm
        .machine_list()
        .unwrap()
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.labels.into_iter().collect())
}

pub fn ledger_files(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir.join("ledger"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

pub fn watcher_log(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.join("watcher.log")).unwrap_or_default()
}

pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Where a child scenario finds its fake's state and log (set by [`Dirs::child`]).
pub const CHILD_FAKE_STATE: &str = "HARNESS_TEST_FAKE_STATE";
pub const CHILD_FAKE_LOG: &str = "HARNESS_TEST_FAKE_LOG";

/// A fake's state and a harness state directory of one test, and its child scenarios: this
/// binary re-run as `entry` with `scenario_var` set.
pub struct Dirs {
    pub fake: tempfile::TempDir,
    pub harness: tempfile::TempDir,
    entry: &'static str,
    scenario_var: &'static str,
}

impl Dirs {
    pub fn new(entry: &'static str, scenario_var: &'static str) -> Dirs {
        Dirs {
            fake: tempfile::tempdir().unwrap(),
            harness: tempfile::tempdir().unwrap(),
            entry,
            scenario_var,
        }
    }

    pub fn log(&self) -> std::path::PathBuf {
        self.fake.path().join("log.jsonl")
    }

    /// The child `scenario` (an `#[ignore]`d entry), not one run with this test process
    /// (nextest) unless `envs` say so, with the fake's state and log in [`CHILD_FAKE_STATE`]
    /// and [`CHILD_FAKE_LOG`].
    pub fn child(&self, scenario: &str, envs: &[(&str, &str)]) -> Command {
        let mut cmd = child_of(
            self.entry,
            self.scenario_var,
            self.harness.path(),
            scenario,
            &[],
        );
        cmd.arg("--ignored")
            .env_remove("NEXTEST_RUN_ID")
            .env_remove("SMOLVM_HARNESS_RUN_ID")
            .env_remove("SMOLVM_HARNESS_GOLDEN_GRACE")
            .env(CHILD_FAKE_STATE, self.fake.path())
            .env(CHILD_FAKE_LOG, self.log())
            .envs(envs.iter().copied());
        cmd
    }

    pub fn smolvm(&self) -> Smolvm {
        fake_at(self.fake.path(), "1.9.2")
    }

    pub fn names(&self) -> Vec<String> {
        names(&self.smolvm())
    }

    /// Clones left broken by a bare `delete -f` of their golden.
    pub fn broken(&self) -> Vec<String> {
        smolvm_harness::sim::read_fake_state(self.fake.path())
            .unwrap()
            .into_iter()
            .filter(|m| m.broken)
            .map(|m| m.name)
            .collect()
    }
}
