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
