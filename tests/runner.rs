//! Process level: the real runner against the fake smolvm CLI. Big output must not deadlock,
//! a hung smolvm must be killed and reaped, and nothing spawned may outlive the call.
//!
//! These tests look for child processes of this test binary, so they run one at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use serial_test::serial;
use smolvm_harness::{CreateOptions, Error, ExecOptions, Smolvm};

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");

fn fake(state: &Path) -> Smolvm {
    Smolvm::new(FAKE).with_process_env("SMOLVM_FAKE_STATE", state.display().to_string())
}

/// Children of this process that still exist (running or zombie), from /proc.
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, …
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim().to_string()) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me {
            found.push((pid, state));
        }
    }
    found
}

#[test]
#[serial]
fn twenty_megabytes_of_stdout_do_not_deadlock() {
    let state = tempfile::tempdir().expect("tempdir");
    let smolvm = fake(state.path());
    smolvm
        .machine_create("big", &CreateOptions::image("alpine").net())
        .unwrap();
    smolvm.machine_start("big").unwrap();
    let out = smolvm
        .machine_exec(
            "big",
            &["head", "-c", "20000000", "/dev/zero"],
            // Without --stream smolvm refuses output over 11 MiB (exit 1) from 1.0.0 on.
            &ExecOptions::default().stream(),
        )
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout().len(), 20_000_000);
    assert!(out.stdout().iter().all(|b| *b == 0), "bytes kept exactly");
    smolvm.machine_delete("big").unwrap();
    assert!(children().is_empty(), "{:?}", children());
}

#[test]
#[serial]
fn hung_smolvm_is_killed_after_the_timeout_and_reaped() {
    let state = tempfile::tempdir().expect("tempdir");
    let smolvm = fake(state.path())
        .with_process_env("SMOLVM_FAKE_HANG", "start")
        .with_timeout(Duration::from_millis(700));
    smolvm
        .machine_create("stuck", &CreateOptions::image("alpine").net())
        .unwrap();
    let started = Instant::now();
    let err = smolvm.machine_start("stuck").unwrap_err();
    let took = started.elapsed();
    match &err {
        Error::Timeout {
            timeout, command, ..
        } => {
            assert_eq!(*timeout, Duration::from_millis(700));
            assert_eq!(command.args(), ["machine", "start", "--name", "stuck"]);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "killed promptly, took {took:?}"
    );
    // Killed and waited for: no zombie, no running child.
    assert!(children().is_empty(), "{:?}", children());
}

#[test]
#[serial]
fn stdout_and_stderr_bytes_are_kept_exactly() {
    let state = tempfile::tempdir().expect("tempdir");
    let smolvm = fake(state.path());
    smolvm
        .machine_create("bytes", &CreateOptions::image("alpine").net())
        .unwrap();
    smolvm.machine_start("bytes").unwrap();
    let out = smolvm
        .machine_exec(
            "bytes",
            &["echo", "héllo", "  two  "],
            &ExecOptions::default(),
        )
        .unwrap();
    assert_eq!(out.stdout(), "héllo   two  \n".as_bytes());
    let out = smolvm
        .machine_exec("bytes", &["cat", "/missing"], &ExecOptions::default())
        .unwrap();
    assert_eq!(out.code(), 1);
    assert!(out.stderr_str().contains("/missing"), "{out:?}");
    smolvm.machine_delete("bytes").unwrap();
}
