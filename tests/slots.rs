//! The cross-process machine cap (`SMOLVM_HARNESS_MAX_MACHINES`), measured across processes.
//!
//! Children are this test binary re-run with `SLOTS_SCENARIO` set (the child test returns at
//! once without it); each starts a real [`smolvm_harness::Machine`] on the fake smolvm, whose
//! per-call log (`SMOLVM_FAKE_LOG`) records how many machines existed after every command.
//! Every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use smolvm_harness::{Machine, Smolvm};

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");
const SCENARIO: &str = "SLOTS_SCENARIO";
const FAKE_STATE: &str = "SLOTS_FAKE_STATE";
const HOLD_LOG: &str = "SLOTS_HOLD_LOG";
const LIMIT: Duration = Duration::from_secs(20);

fn child_machine() -> Machine {
    let state = std::env::var(FAKE_STATE).expect("SLOTS_FAKE_STATE");
    Machine::builder()
        .smolvm(Smolvm::new(FAKE).with_process_env("SMOLVM_FAKE_STATE", state))
        .image("alpine")
        .net()
        .start()
        .expect("start a machine on the fake")
}

/// Append one line; `O_APPEND` keeps lines of concurrent children whole and in order.
fn log_line(line: &str) {
    let path = std::env::var(HOLD_LOG).expect("SLOTS_HOLD_LOG");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

#[test]
fn slots_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let me = std::process::id();
    match scenario.as_str() {
        // Hold a machine (and so a slot) for a while, logging entry and exit inside the hold.
        "hold_briefly" => {
            let vm = child_machine();
            log_line(&format!("+ {me}"));
            thread::sleep(Duration::from_millis(300));
            log_line(&format!("- {me}"));
            drop(vm);
        }
        // Hold until killed (bounded, should the parent die).
        "hold" => {
            let vm = child_machine();
            // The leading newline ends libtest's `test NAME ... ` line.
            println!("\nREADY {}", vm.name());
            thread::sleep(Duration::from_secs(30));
            drop(vm);
        }
        other => panic!("unknown scenario {other}"),
    }
}

struct Shared {
    fake_state: tempfile::TempDir,
    harness_state: tempfile::TempDir,
    logs: tempfile::TempDir,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            fake_state: tempfile::tempdir().unwrap(),
            harness_state: tempfile::tempdir().unwrap(),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn spawn(&self, scenario: &str, cap: usize) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "slots_child", "--nocapture", "--test-threads=1"])
            .env(SCENARIO, scenario)
            .env(FAKE_STATE, self.fake_state.path())
            .env(HOLD_LOG, self.logs.path().join("holds.log"))
            .env("SMOLVM_FAKE_LOG", self.logs.path().join("fake.log"))
            .env("SMOLVM_HARNESS_STATE_DIR", self.harness_state.path())
            .env("SMOLVM_HARNESS_MAX_MACHINES", cap.to_string())
            .env_remove("SMOLVM_HARNESS_KEEP")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    }
}

/// Wait for a child with a deadline; kill it and fail past it.
fn finish(mut child: Child) -> (ExitStatus, String) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status, err);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not finish within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of a child's stdout, through a channel so waits can time out.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_ready(lines: &mpsc::Receiver<String>, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(name) = line.strip_prefix("READY ") {
                    return Some(name.to_string());
                }
            }
            Err(_) => return None,
        }
    }
}

/// The most `+` lines open at once in a `+ pid` / `- pid` log.
fn peak_holders(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap();
    let (mut now, mut peak) = (0usize, 0usize);
    for line in text.lines() {
        if line.starts_with('+') {
            now += 1;
            peak = peak.max(now);
        } else if line.starts_with('-') {
            now -= 1;
        }
    }
    peak
}

/// The most machines the fake ever had, from its per-call log.
fn peak_machines(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["machines"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn cap_of_two_holds_across_six_processes() {
    let shared = Shared::new();
    let children: Vec<Child> = (0..6).map(|_| shared.spawn("hold_briefly", 2)).collect();
    for child in children {
        let (status, stderr) = finish(child);
        assert!(status.success(), "{status:?}\n{stderr}");
    }
    let holds = shared.logs.path().join("holds.log");
    let text = std::fs::read_to_string(&holds).unwrap();
    assert_eq!(text.lines().count(), 12, "{text}");
    let peak = peak_holders(&holds);
    assert!(peak <= 2, "{peak} held at once:\n{text}");
    // Six 300 ms holds started together: two at a time must actually have happened.
    assert_eq!(
        peak, 2,
        "the cap was never reached, the test proves nothing:\n{text}"
    );
    let machines = peak_machines(&shared.logs.path().join("fake.log"));
    assert!(machines <= 2, "the fake had {machines} machines at once");
    let left = Smolvm::new(FAKE)
        .with_process_env(
            "SMOLVM_FAKE_STATE",
            shared.fake_state.path().to_str().unwrap(),
        )
        .machine_list()
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_sigkilled_holder_does_not_hold_its_slot_forever() {
    let shared = Shared::new();
    let mut holder = shared.spawn("hold", 1);
    let holder_lines = lines_of(&mut holder);
    assert!(
        wait_ready(&holder_lines, LIMIT).is_some(),
        "the holder never started"
    );

    // With the only slot taken, a second process waits.
    let mut waiter = shared.spawn("hold", 1);
    let waiter_lines = lines_of(&mut waiter);
    assert_eq!(
        wait_ready(&waiter_lines, Duration::from_millis(500)),
        None,
        "a second machine started although the cap is 1"
    );

    // SIGKILL: no Drop, no exit hook; the kernel closes the lock file.
    let pgid = libc::pid_t::try_from(holder.id()).unwrap();
    // SAFETY: killpg only sends a signal, to the group our unreaped child leads.
    assert_eq!(unsafe { libc::killpg(pgid, libc::SIGKILL) }, 0);
    let (status, _) = finish(holder);
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    let started = Instant::now();
    assert!(
        wait_ready(&waiter_lines, Duration::from_secs(10)).is_some(),
        "the slot of a SIGKILLed holder was never released"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let pgid = libc::pid_t::try_from(waiter.id()).unwrap();
    // SAFETY: as above. SIGTERM: the waiter deletes its machine and exits.
    assert_eq!(unsafe { libc::killpg(pgid, libc::SIGTERM) }, 0);
    let (status, stderr) = finish(waiter);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{stderr}");
}
