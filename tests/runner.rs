//! Process level: the real runner against the fake smolvm CLI. Big output must not deadlock,
//! a hung smolvm must be killed and reaped, and nothing spawned may outlive the call.
//!
//! These tests look for child processes of this test binary, so they run one at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serial_test::serial;
use smolvm_harness::config::config;
use smolvm_harness::runner::{Invocation, ProcessRunner, Runner, Truncation};
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

/// Set in the child that runs [`subject_output_cap`].
const CAP_CHILD: &str = "SMOLVM_HARNESS_TEST_OUTPUT_CAP_CHILD";

/// The output cap is read once per process from `SMOLVM_HARNESS_OUTPUT_CAP`, so the scenario
/// runs in a child process of this test binary with a cap of 1 KiB.
#[test]
#[serial]
fn output_past_the_cap_is_dropped_counted_and_drained() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "subject_output_cap",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMOLVM_HARNESS_OUTPUT_CAP", "1KiB")
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env(CAP_CHILD, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the test binary");
    // A deadlocked runner would never return: give up (and fail) rather than hang the suite.
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the capped child did not finish: deadlock?");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("child output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the subject did not run: {text}");
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default()
}

#[test]
#[ignore = "run in a child process by output_past_the_cap_is_dropped_counted_and_drained"]
fn subject_output_cap() {
    if std::env::var_os(CAP_CHILD).is_none() {
        return;
    }
    assert_eq!(config().expect("config").output_cap, 1024);

    // Through the fake smolvm: an exec far over the cap keeps 512 + 512 bytes.
    let state = tempfile::tempdir().expect("tempdir");
    let smolvm = fake(state.path());
    smolvm
        .machine_create("cap", &CreateOptions::image("alpine").net())
        .unwrap();
    smolvm.machine_start("cap").unwrap();
    let out = smolvm
        .machine_exec(
            "cap",
            &["head", "-c", "5000000", "/dev/zero"],
            &ExecOptions::default().stream(),
        )
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout().len(), 1024);
    assert_eq!(out.stdout_dropped(), 5_000_000 - 1024);
    assert_eq!(
        out.stdout_truncation(),
        Some(Truncation {
            at: 512,
            dropped: 5_000_000 - 1024
        })
    );
    assert_eq!(out.stderr_dropped(), 0);
    assert!(
        format!("{out:?}").contains("(4998976 bytes) of stdout dropped here by the output cap"),
        "{out:?}"
    );
    let msg = panic_message(|| {
        out.expect_code(1);
    });
    assert!(
        msg.contains("--- stdout (tail; 4.8 MiB dropped by the output cap) ---"),
        "{msg}"
    );
    smolvm.machine_delete("cap").unwrap();

    // The runner itself: a process that writes 50 MB and exits on its own. Had the runner
    // stopped reading at the cap, the process would block on a full pipe until the timeout.
    let inv = Invocation {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            "head -c 50000000 /dev/zero; head -c 3000000 /dev/zero >&2; exit 3".into(),
        ],
        env: vec![],
        timeout: Some(Duration::from_secs(240)),
    };
    let raw = ProcessRunner.run(&inv).expect("finished, not timed out");
    assert_eq!(raw.code, Some(3));
    assert_eq!((raw.stdout.len(), raw.stderr.len()), (1024, 1024));
    assert_eq!(
        raw.stdout_truncation,
        Some(Truncation {
            at: 512,
            dropped: 50_000_000 - 1024
        })
    );
    assert_eq!(
        raw.stderr_truncation.map(|t| t.dropped),
        Some(3_000_000 - 1024)
    );

    // An endless writer under a host timeout: killed, its kept bytes marked, the message says.
    let inv = Invocation {
        program: "yes".into(),
        args: vec![],
        env: vec![],
        timeout: Some(Duration::from_millis(500)),
    };
    let err = ProcessRunner.run(&inv).unwrap_err();
    let Error::Timeout { stdout, .. } = &err else {
        panic!("expected a timeout, got {err}");
    };
    let text = String::from_utf8_lossy(stdout);
    assert!(text.starts_with("y\ny\n"), "{text}");
    assert!(
        text.contains("of stdout dropped here by the output cap"),
        "{text}"
    );
    assert!(stdout.len() < 1024 + 200, "{}", stdout.len());
    assert!(
        err.to_string()
            .contains("of stdout dropped by the output cap"),
        "{err}"
    );

    // A failing smolvm that floods stderr: the error keeps the tail (its `Error:` line) and
    // says how much went.
    let bin = state.path().join("flood");
    std::fs::write(
        &bin,
        "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x >&2\n\
         printf '\\nError: config operation failed: flood\\n' >&2\nexit 1\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let err = Smolvm::new(&bin).machine_start("m").unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, Error::Failed { .. }), "{shown}");
    assert!(
        shown.contains("failed (exit 1; 2.9 MiB of stderr dropped by the output cap)"),
        "{shown}"
    );
    assert!(
        shown.ends_with("Error: config operation failed: flood"),
        "{shown}"
    );
}

/// Through the real runner a NUL used to reach `spawn` and come back as `Error::Spawn`; it
/// is refused as input first, and nothing is spawned.
#[test]
#[serial]
fn a_nul_byte_is_invalid_input_not_a_spawn_failure() {
    let state = tempfile::tempdir().expect("tempdir");
    let smolvm = fake(state.path());
    smolvm
        .machine_create("nul", &CreateOptions::image("alpine").net())
        .unwrap();
    let err = smolvm
        .machine_exec("nul", &["echo", "a\0b"], &ExecOptions::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                what: "exec argv",
                ..
            }
        ),
        "{err:?}"
    );
    let err = smolvm
        .with_process_env("SMOLVM_X", "a\0b")
        .machine_start("nul")
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                what: "process env",
                ..
            }
        ),
        "{err:?}"
    );
    smolvm.machine_delete("nul").unwrap();
    assert!(children().is_empty(), "{:?}", children());
}
