//! Process level, against the fake CLI: a secret given with `secret_env` (on the builder and
//! on one command) reaches the guest, and its value is nowhere else: not in the command line
//! of any smolvm process spawned during the run (read from `/proc/<pid>/cmdline` while each
//! one runs), not in the cleanup ledger, the transcript, the failure report printed when a
//! test fails, nor the fake's stored records and call log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smolvm_harness::{Machine, Smolvm};

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");
const MACHINE_SECRET: &str = "machine-secret-9f3a71";
const EXEC_SECRET: &str = "exec-secret-c0ffee42";

/// Every process running the fake while it watches, by pid: its raw command line.
struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<u32, Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CmdlineWatch {
    fn start() -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, map) = (Arc::clone(&stop), Arc::clone(&seen));
        let fake = std::fs::canonicalize(FAKE).unwrap();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let exe = std::fs::read_link(entry.path().join("exe")).ok();
                    if exe.as_deref() != Some(fake.as_path()) {
                        continue;
                    }
                    if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                        if !cmdline.is_empty() {
                            map.lock().unwrap().entry(pid).or_insert(cmdline);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        CmdlineWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> BTreeMap<u32, Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, recursively, with its bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
    out
}

fn assert_nowhere(what: &str, hay: &[u8]) {
    for secret in [MACHINE_SECRET, EXEC_SECRET] {
        assert!(
            !contains(hay, secret),
            "{what} holds a secret value: {}",
            String::from_utf8_lossy(hay)
        );
    }
}

fn run_with_secrets(version: &str) {
    let fake_state = tempfile::tempdir().unwrap();
    let log = fake_state.path().join("calls.jsonl");
    // Each call lives long enough to be seen in /proc.
    let latency = "version=40ms,create=40ms,start=40ms,exec=40ms,stop=40ms,delete=40ms,ls=40ms,\
                   status=40ms,cp=40ms,data-dir=40ms";
    let smolvm = Smolvm::new(FAKE)
        .with_process_env("SMOLVM_FAKE_STATE", fake_state.path().to_str().unwrap())
        .with_process_env("SMOLVM_FAKE_VERSION", version)
        .with_process_env("SMOLVM_FAKE_LOG", log.to_str().unwrap())
        .with_process_env("SMOLVM_FAKE_LATENCY", latency);
    let harness_state = smolvm_harness::config::config().unwrap().state_dir.clone();

    let watch = CmdlineWatch::start();
    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .image("alpine")
        .net()
        .env("PLAIN", "not-secret")
        .secret_env("API_TOKEN", MACHINE_SECRET)
        .start()
        .unwrap();
    let out = vm.sh("echo token=$API_TOKEN").unwrap();
    // The guest does get the value: that is the point.
    assert_eq!(
        out.stdout_str(),
        format!("token={MACHINE_SECRET}\n"),
        "{version}"
    );
    let out = vm
        .command(&["sh", "-c", "echo exec=$ONE_OFF"])
        .secret_env("ONE_OFF", EXEC_SECRET)
        .run()
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        format!("exec={EXEC_SECRET}\n"),
        "{version}"
    );
    vm.stop().unwrap();
    vm.start().unwrap();
    // A guest that prints its secret to the console: the console log holds it, and what
    // the harness copies of it (failure artifacts) must not.
    vm.sh("echo console-token=$API_TOKEN > /dev/console")
        .unwrap()
        .assert_success();
    assert!(
        vm.console_log().unwrap().contains("console-token="),
        "{version}"
    );
    assert!(!vm.console_log().unwrap().contains(MACHINE_SECRET));

    // The ledger while the machine lives.
    for (path, bytes) in files_under(&harness_state) {
        assert_nowhere(&format!("harness state file {path}"), &bytes);
    }
    let transcript: String = vm.transcript().iter().map(|e| format!("{e}\n")).collect();
    assert!(
        transcript.contains("secret-env") || version.starts_with("0."),
        "{transcript}"
    );
    assert_nowhere("the transcript", transcript.as_bytes());

    // A failing test: the report printed while the guard drops.
    let name = vm.name().to_string();
    let (result, said) = smolvm_harness::diag::capture(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _vm = vm;
            panic!("the test fails");
        }))
    });
    assert!(result.is_err());
    let said = said.join("\n");
    assert!(said.contains(&name), "{said}");
    assert_nowhere("the failure report", said.as_bytes());
    // The failure artifacts (console log, transcript) it points to.
    let artifacts = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("artifacts: "))
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .expect("the report names its artifacts");
    let files = files_under(&artifacts);
    assert!(!files.is_empty(), "{}", artifacts.display());
    for (path, bytes) in files {
        assert_nowhere(&format!("the artifact {path}"), &bytes);
    }

    let cmdlines = watch.finish();
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        cmdlines.len() >= calls.lines().count(),
        "{version}: saw {} smolvm processes for {} logged calls",
        cmdlines.len(),
        calls.lines().count()
    );
    for (pid, cmdline) in &cmdlines {
        assert_nowhere(
            &format!("the command line of smolvm process {pid}"),
            cmdline,
        );
    }
    for (path, bytes) in files_under(fake_state.path()) {
        assert_nowhere(&format!("the fake's file {path}"), &bytes);
    }
    assert!(smolvm.machine_list().unwrap().is_empty());
}

/// One test for both dialects: the /proc watch sees every fake process of this test binary,
/// so two such tests at once would see each other's.
#[test]
fn secret_values_appear_nowhere_but_in_the_guest() {
    run_with_secrets("1.9.2");
    run_with_secrets("0.8.2");
}
