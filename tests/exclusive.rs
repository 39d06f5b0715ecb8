//! Exclusive tests across processes, with serial_test's `#[file_serial]`.
//!
//! Some VM tests must not overlap: they measure boot time, fill the disk, or use a fixed
//! port. serial_test's in-process `#[serial]` is a mutex in the test binary, so under
//! `cargo nextest run`, which runs every test in its own process, it never sees a second
//! holder and excludes nothing (nextest#561). `#[file_serial(key)]` takes an `flock` on
//! `$TMPDIR/serial-test-<key>` instead, which excludes across processes, so it works under
//! both runners:
//!
//! ```ignore
//! #[rstest]
//! #[file_serial(vm)]
//! #[requires_smolvm]
//! fn measures_boot_time(machine: Machine) { /* … */ }
//! ```
//!
//! Put `#[file_serial]` above `#[requires_smolvm]`, so that a skipped test does not wait for
//! the lock. To cap VM tests without making them exclusive, use the nextest test group in
//! `.config/nextest.toml` (`max-threads = 2`) or the harness's own machine cap
//! (`SMOLVM_HARNESS_MAX_MACHINES`), which also holds under `cargo test`.
//!
//! The tests here run the `subject_*` tests of this binary in two child processes at once
//! and compare when each held the lock.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serial_test::file_serial;

/// The file both children append their enter/exit records to.
const LOG: &str = "SMOLVM_HARNESS_EXCLUSIVE_LOG";
/// How long a subject holds the lock: long enough that two unlocked children would surely
/// overlap, short enough to keep the test quick.
const HOLD: Duration = Duration::from_millis(300);

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Append `<pid> <event> <nanos>`; one short `O_APPEND` write per line, so the two
/// processes' lines never interleave.
fn record(event: &str) {
    let Some(path) = std::env::var_os(LOG) else {
        return;
    };
    let line = format!("{} {event} {}\n", std::process::id(), now_nanos());
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    file.write_all(line.as_bytes()).expect("write log");
}

fn enters(path: &Path) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" enter "))
        .count()
}

/// Holds the cross-process lock `vm` for [`HOLD`].
#[test]
#[ignore = "run in child processes by tests/exclusive.rs"]
#[file_serial(vm)]
fn subject_serial() {
    record("enter");
    thread::sleep(HOLD);
    record("exit");
}

/// The control: no lock, and it waits (up to 10 s) until the other child has entered too,
/// so the two certainly overlap.
#[test]
#[ignore = "run in child processes by tests/exclusive.rs"]
fn subject_unserialised() {
    record("enter");
    let log = PathBuf::from(std::env::var_os(LOG).expect("log path"));
    let until = Instant::now() + Duration::from_secs(10);
    while enters(&log) < 2 && Instant::now() < until {
        thread::sleep(Duration::from_millis(5));
    }
    record("exit");
}

/// Run `subject` in two processes at once; return each process's (enter, exit), sorted.
fn run_twice(subject: &str) -> Vec<(u128, u128)> {
    let scratch = tempfile::tempdir().expect("tempdir");
    let log = scratch.path().join("log");
    let spawn = || -> Child {
        Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", subject, "--include-ignored", "--test-threads=1"])
            // serial_test puts its lock file in the temp dir: a private one keeps other
            // runs of this suite (and real `vm` tests) out of the experiment.
            .env("TMPDIR", scratch.path())
            .env(LOG, &log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the test binary")
    };
    let mut children = [spawn(), spawn()];
    let deadline = Instant::now() + Duration::from_secs(60);
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "{subject} failed in a child: {status}");
                break;
            }
            if Instant::now() >= deadline {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!("{subject}: children did not finish in 60 s");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    let text = fs::read_to_string(&log).expect("read log");
    let mut by_pid: Vec<(String, Option<u128>, Option<u128>)> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(pid), Some(event), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("bad log line {line:?}");
        };
        let at: u128 = at.parse().expect("timestamp");
        let slot = match by_pid.iter().position(|(p, _, _)| p == pid) {
            Some(i) => i,
            None => {
                by_pid.push((pid.to_string(), None, None));
                by_pid.len() - 1
            }
        };
        match event {
            "enter" => by_pid[slot].1 = Some(at),
            "exit" => by_pid[slot].2 = Some(at),
            other => panic!("bad event {other:?}"),
        }
    }
    let mut spans: Vec<(u128, u128)> = by_pid
        .into_iter()
        .map(|(pid, enter, exit)| match (enter, exit) {
            (Some(a), Some(b)) => (a, b),
            _ => panic!("process {pid} did not record both enter and exit:\n{text}"),
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 2, "two processes ran the subject:\n{text}");
    spans
}

#[test]
fn file_serial_excludes_across_processes() {
    let spans = run_twice("subject_serial");
    let (first, second) = (spans[0], spans[1]);
    assert!(
        first.1 <= second.0,
        "the second process entered {} ms before the first left",
        (first.1 - second.0) / 1_000_000
    );
}

/// Without the lock the same measurement sees an overlap, so the check above can fail.
#[test]
fn without_file_serial_the_processes_overlap() {
    let spans = run_twice("subject_unserialised");
    let (first, second) = (spans[0], spans[1]);
    assert!(second.0 < first.1, "expected overlapping spans: {spans:?}");
}
