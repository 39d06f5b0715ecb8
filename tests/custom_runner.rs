//! A runner of the user's own that runs real smolvm processes keeps every guarantee of the
//! crate (issue 11, item 6): crash cleanup (ledger + watcher), the machine cap, and packs
//! shared across the processes of a run. Checked at process level against the fake CLI, with
//! a wrapper runner such as a user writes to log or add a flag.

#[allow(dead_code)]
#[path = "common/attack_harness.rs"]
mod attack_harness;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use attack_harness::{
    fake_at, holder, ledger_files, names, sigkill_group, wait_until, Dirs, CHILD_FAKE_STATE,
};
use smolvm_harness::runner::{Invocation, ProcessRunner, RawOutput, Runner};
use smolvm_harness::{Machine, Pack, Result, Smolvm};

const SCENARIO: &str = "CUSTOM_RUNNER_SCENARIO";
const ENTRY: &str = "custom_runner_child";

/// What a user writes: count the calls, then run smolvm as usual.
#[derive(Debug, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
}

impl Runner for Counting {
    fn run(&self, invocation: &Invocation) -> Result<RawOutput> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        ProcessRunner.run(invocation)
    }
}

/// A mock of the user's own that answers in-process and says so.
#[derive(Debug, Default)]
struct InProcessMock;

impl Runner for InProcessMock {
    fn run(&self, invocation: &Invocation) -> Result<RawOutput> {
        let args = invocation.args_str();
        let stdout = if args == ["--version"] {
            "smolvm 1.9.2\n"
        } else {
            ""
        };
        Ok(RawOutput {
            code: Some(0),
            stdout: stdout.into(),
            ..RawOutput::default()
        })
    }

    fn in_process(&self) -> bool {
        true
    }
}

fn client() -> Smolvm {
    let state = std::env::var(CHILD_FAKE_STATE).expect("fake state");
    fake_at(Path::new(&state), "1.9.2").with_runner(Counting::default())
}

#[test]
#[ignore = "a child process of the tests below"]
fn custom_runner_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    match scenario.as_str() {
        "hold" => {
            let vm = Machine::builder().smolvm(client()).create().unwrap();
            attack_harness::ready(&[vm.name()]);
            std::thread::sleep(Duration::from_secs(60));
        }
        "pack" => {
            let pack = Pack::shared_with(&client(), "alpine:3.20").unwrap();
            attack_harness::ready(&[&pack.path().display().to_string()]);
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn a_custom_process_runner_keeps_crash_cleanup() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let (mut c, words) = holder(dirs.child("hold", &[]));
    let fake = fake_at(dirs.fake.path(), "1.9.2");
    assert_eq!(names(&fake), [words[0].clone()]);
    assert_eq!(
        ledger_files(dirs.harness.path()).len(),
        1,
        "the machine is in the cleanup ledger"
    );
    sigkill_group(&mut c);
    assert!(
        wait_until(Duration::from_secs(30), || names(&fake).is_empty()),
        "the crash watcher did not delete the machine of a custom runner: {:?}",
        names(&fake)
    );
}

#[test]
fn a_custom_process_runner_counts_against_the_machine_cap() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let (mut c, _) = holder(dirs.child("hold", &[("SMOLVM_HARNESS_MAX_MACHINES", "1")]));
    let slot = dirs.harness.path().join("slots").join("slot-0.lock");
    let file = std::fs::File::open(&slot).expect("the machine took a slot");
    assert!(
        file.try_lock().is_err(),
        "the only slot is held by the custom runner's machine"
    );
    sigkill_group(&mut c);
}

#[test]
fn a_custom_process_runner_shares_packs_across_processes() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let log = dirs.fake.path().join("log.jsonl");
    let log_str = log.to_str().unwrap();
    let envs = [
        ("SMOLVM_HARNESS_RUN_ID", "custom-runner-run"),
        ("SMOLVM_FAKE_LOG", log_str),
    ];
    let mut paths = Vec::new();
    let mut stderr = String::new();
    for _ in 0..2 {
        let (c, words) = holder(dirs.child("pack", &envs));
        paths.push(words[0].clone());
        let out = c.wait_with_output().unwrap();
        stderr.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(paths[0], paths[1], "one pack for the run");
    let packs = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""argv":["pack","create""#))
        .count();
    assert_eq!(packs, 1, "packed once across two processes");
    // What cannot go through the runner is said, once per process.
    assert_eq!(stderr.matches("custom runner").count(), 2, "{stderr}");
}

#[test]
fn an_in_process_runner_opts_out_without_a_notice() {
    let state = smolvm_harness::config::config().unwrap().state_dir.clone();
    let smolvm = Smolvm::new("smolvm").with_runner(InProcessMock);
    let before = ledger_files(&state);
    let (vm, out) = smolvm_harness::diag::capture(|| {
        Machine::builder()
            .smolvm(smolvm)
            .image("alpine")
            .name("mock-vm")
            .create()
    });
    let vm = vm.unwrap();
    assert!(!out.iter().any(|l| l.contains("custom runner")), "{out:?}");
    assert_eq!(
        ledger_files(&state),
        before,
        "an in-process machine is not ledgered"
    );
    drop(vm);
}
