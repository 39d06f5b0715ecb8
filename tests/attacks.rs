//! Attacks from a hostile review: each `attack_*` test asserts a promise of README's "Cleanup"
//! section at process level, against the fake CLI. A failing attack is a demonstrated defect.
//!
//! Run one: `cargo test --test attacks attack_NAME -- --nocapture`.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use smolvm_harness::{CreateOptions, Machine};

const SCENARIO: &str = "REVIEW1_SCENARIO";

#[allow(dead_code)]
#[path = "common/attack_harness.rs"]
mod harness;
use harness::*;

/// This binary re-run as the child scenario `scenario`.
fn child(state_dir: &Path, scenario: &str, envs: &[(&str, &str)]) -> Command {
    child_of("review1_child", SCENARIO, state_dir, scenario, envs)
}
const LIMIT: Duration = Duration::from_secs(30);

/// Child scenarios (run by the attacks below through this same binary).
#[test]
fn review1_child() -> Result<(), String> {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return Ok(());
    };
    match scenario.as_str() {
        // Holds a generated machine (and so the shared watcher) on the process env's state.
        "hold-generated" => {
            let vm = Machine::builder()
                .smolvm(plain())
                .image("alpine")
                .net()
                .create()
                .unwrap();
            ready(&[vm.name()]);
            std::thread::sleep(LIMIT);
        }
        // Holds `.name("web")` on the process env's state.
        "hold-web" => {
            let vm = Machine::builder()
                .smolvm(plain())
                .name("web")
                .image("alpine")
                .net()
                .create()
                .unwrap();
            ready(&[vm.name()]);
            std::thread::sleep(LIMIT);
        }
        // Two machines named "web" on two smolvm states, in one process.
        "two-states" => {
            let a = PathBuf::from(std::env::var("REVIEW1_A").unwrap());
            let b = PathBuf::from(std::env::var("REVIEW1_B").unwrap());
            let va = Machine::builder()
                .smolvm(fake_at(&a, "1.9.2"))
                .name("web")
                .image("alpine")
                .net()
                .create()
                .unwrap();
            let vb = Machine::builder()
                .smolvm(fake_at(&b, "1.9.2"))
                .name("web")
                .image("alpine")
                .net()
                .create()
                .unwrap();
            ready(&[va.name(), vb.name()]);
            std::thread::sleep(LIMIT);
        }
        // A test that fails by returning Err (libtest: a failing test, no panic).
        // `.name("web")` on the process env's state, with a slow create (an image pull).
        "create-web-slow" => {
            let r = Machine::builder()
                .smolvm(plain().with_process_env("SMOLVM_FAKE_LATENCY", "create=3s"))
                .name("web")
                .image("alpine")
                .net()
                .create();
            println!(
                "\nCREATE RESULT {:?}",
                r.as_ref().map(|m| m.name().to_string())
            );
            std::thread::sleep(LIMIT);
        }
        // A never-dropped `.name("web")` (a static) whose machine someone else replaced
        // (deleted by hand, then their own "web", with their own owner label).
        "static-web-replaced" => {
            let vm = Machine::builder()
                .smolvm(plain())
                .name("web")
                .image("alpine")
                .net()
                .create()
                .unwrap();
            std::mem::forget(vm);
            plain().machine_delete("web").unwrap();
            plain()
                .machine_create(
                    "web",
                    &CreateOptions::image("alpine")
                        .net()
                        .label("smolvm-harness.owner", "1-someoneelse"),
                )
                .unwrap();
        }
        // `std::process::exit` on one thread while another is creating (slow create).
        "exit-during-create" => {
            std::thread::spawn(|| {
                let r = Machine::builder()
                    .smolvm(plain().with_process_env("SMOLVM_FAKE_LATENCY", "create=3s"))
                    .image("alpine")
                    .net()
                    .create();
                std::mem::forget(r);
            });
            std::thread::sleep(Duration::from_millis(1500));
            std::process::exit(0);
        }
        other => panic!("unknown scenario {other}"),
    }
    Ok(())
}

fn settle_for(d: Duration) {
    std::thread::sleep(d);
}

/// Was a defect: the shared watcher reaches every ledger entry's smolvm with the *watcher's* env
/// (inherited from whichever test process spawned it), not the entry's recorded state env.
/// A test process whose `SMOLVM_FAKE_STATE` (real smolvm: `SMOLVM_DATA_DIR`, `HOME`, XDG_*)
/// differs from the spawner's gets its machines judged against the wrong smolvm: on 0.8.0 a
/// hand-made "web" in the spawner's state is deleted, and the victim's own "web" leaks with
/// its ledger entry dropped.
#[test]
fn attack_watcher_uses_spawners_smolvm_state() {
    let state_dir = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = fake_at(a.path(), "0.8.0");
    let sb = fake_at(b.path(), "0.8.0");
    // Someone else's "web" (no labels on 0.8.0) in state a.
    sa.machine_create("web", &CreateOptions::image("alpine"))
        .unwrap();
    // Process A (state a) starts the shared watcher and stays alive.
    let (mut pa, _) = holder(child(
        state_dir.path(),
        "hold-generated",
        &[
            ("SMOLVM_FAKE_STATE", a.path().to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "0.8.0"),
        ],
    ));
    // Process B (state b) makes its own "web" (free in b) and is SIGKILLed.
    let (mut pb, _) = holder(child(
        state_dir.path(),
        "hold-web",
        &[
            ("SMOLVM_FAKE_STATE", b.path().to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "0.8.0"),
        ],
    ));
    assert!(names(&sb).contains(&"web".to_string()));
    sigkill_group(&mut pb);
    settle_for(Duration::from_secs(4));
    let in_a = names(&sa);
    let in_b = names(&sb);
    let ledger = ledger_files(state_dir.path());
    let log = std::fs::read_to_string(state_dir.path().join("watcher.log")).unwrap_or_default();
    sigkill_group(&mut pa);
    eprintln!("state a: {in_a:?}\nstate b: {in_b:?}\nledger: {ledger:?}\nwatcher.log:\n{log}");
    assert!(
        in_a.contains(&"web".to_string()),
        "someone else's web in state a was deleted"
    );
    assert!(
        !in_b.contains(&"web".to_string()),
        "B's own web leaked (ledger now: {ledger:?})"
    );
}

/// Same root cause, smolvm 1.9.2 (labels): no stranger is deleted, but the victim's machine
/// leaks and its ledger entry is dropped as "gone", so no later sweep finds it either.
#[test]
fn attack_watcher_drops_entry_of_other_state() {
    let state_dir = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sb = fake_at(b.path(), "1.9.2");
    let (mut pa, _) = holder(child(
        state_dir.path(),
        "hold-generated",
        &[("SMOLVM_FAKE_STATE", a.path().to_str().unwrap())],
    ));
    let (mut pb, nb) = holder(child(
        state_dir.path(),
        "hold-generated",
        &[("SMOLVM_FAKE_STATE", b.path().to_str().unwrap())],
    ));
    sigkill_group(&mut pb);
    settle_for(Duration::from_secs(4));
    let in_b = names(&sb);
    let ledger = ledger_files(state_dir.path());
    sigkill_group(&mut pa);
    eprintln!("state b: {in_b:?}\nledger: {ledger:?}");
    assert!(
        !in_b.contains(&nb[0]),
        "B's machine {} leaked; ledger: {ledger:?}",
        nb[0]
    );
}

/// Was a defect: the ledger file is `<name>.<owner nonce>.json`, not scoped like `Reservation`
/// (per smolvm state). Two live "web" machines of one process on two smolvm states share one
/// ledger file; after SIGKILL only the one written last is settled.
#[test]
fn attack_ledger_not_scoped_per_state() {
    let state_dir = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (mut p, _) = holder(child(
        state_dir.path(),
        "two-states",
        &[
            ("REVIEW1_A", a.path().to_str().unwrap()),
            ("REVIEW1_B", b.path().to_str().unwrap()),
        ],
    ));
    let ledger = ledger_files(state_dir.path());
    sigkill_group(&mut p);
    settle_for(Duration::from_secs(4));
    let in_a = names(&fake_at(a.path(), "1.9.2"));
    let in_b = names(&fake_at(b.path(), "1.9.2"));
    eprintln!("ledger while alive: {ledger:?}\nstate a: {in_a:?}\nstate b: {in_b:?}");
    assert!(in_a.is_empty(), "web on state a leaked after SIGKILL");
    assert!(in_b.is_empty(), "web on state b leaked after SIGKILL");
}

/// Was a defect: a state directory whose socket path exceeds `sun_path` (108 bytes) gets no crash
/// watcher at all; SIGKILL then leaks until some later run's sweep.
#[test]
fn attack_long_state_dir_has_no_watcher() {
    let base = tempfile::tempdir().unwrap();
    let long = base.path().join("x".repeat(90));
    let fs = tempfile::tempdir().unwrap();
    let (mut p, n) = holder(child(
        &long,
        "hold-generated",
        &[("SMOLVM_FAKE_STATE", fs.path().to_str().unwrap())],
    ));
    sigkill_group(&mut p);
    let mut stderr = String::new();
    if let Some(mut e) = p.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let deadline = Instant::now() + Duration::from_secs(8);
    let s = fake_at(fs.path(), "1.9.2");
    while names(&s).contains(&n[0]) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = names(&s);
    eprintln!("child stderr:\n{stderr}\nleft: {left:?}");
    assert!(!left.contains(&n[0]), "SIGKILLed process's machine leaked");
}

/// Was a defect: processes connected to a watcher that dies are never re-attached. A watcher killed
/// (OOM killer, a stray `kill`) while A runs: a new process B starts a new watcher, but A is
/// not watched by it; when A is SIGKILLed later, its machine stays until some later process
/// starts yet another watcher.
#[test]
fn attack_watcher_death_orphans_connected_processes() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let envs = [("SMOLVM_FAKE_STATE", fs.path().to_str().unwrap())];
    let (mut pa, na) = holder(child(state_dir.path(), "hold-generated", &envs));
    // Kill the watcher (found by its private variable).
    let needle = format!(
        "SMOLVM_HARNESS_STATE_DIR={}",
        state_dir.path().to_str().unwrap()
    );
    let mut killed = 0;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == pa.id() {
            continue;
        }
        let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        // /proc environ still shows the private variable the ctor removed.
        let is_me = env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
            && env
                .split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"SMOLVM_HARNESS_WATCHER_SERVE_PRIVATE="))
            && !String::from_utf8_lossy(&cmd).contains("smolvm-fake");
        if is_me {
            // SAFETY: sends a signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed += 1;
        }
    }
    assert_eq!(killed, 1, "expected one watcher");
    std::thread::sleep(Duration::from_millis(300));
    let (mut pb, _) = holder(child(state_dir.path(), "hold-generated", &envs));
    sigkill_group(&mut pa);
    settle_for(Duration::from_secs(4));
    let left = names(&fake_at(fs.path(), "1.9.2"));
    sigkill_group(&mut pb);
    eprintln!("left: {left:?}");
    assert!(
        !left.contains(&na[0]),
        "A's machine leaked while a watcher ran"
    );
}

/// Starts "create-web-slow" on 0.8.0 and, once its ledger entry is written (it has looked and
/// found "web" free), makes a "web" of someone else's by hand while its create is in flight.
fn race_a_stranger_into_web(state_dir: &Path, fs: &Path) -> Child {
    let mut c = child(
        state_dir,
        "create-web-slow",
        &[
            ("SMOLVM_FAKE_STATE", fs.to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "0.8.0"),
        ],
    )
    .spawn()
    .unwrap();
    let deadline = Instant::now() + LIMIT;
    while !ledger_files(state_dir)
        .iter()
        .any(|f| f.starts_with("web."))
    {
        assert!(Instant::now() < deadline, "no ledger entry for web");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Someone else's "web" (another tool, another user of this smolvm).
    fake_at(fs, "0.8.0")
        .machine_create("web", &CreateOptions::image("alpine").net())
        .unwrap();
    let _ = &mut c;
    c
}

/// Was a defect: `Evidence::AbsentBeforeCreate` (smolvm < 1.8) cannot tell our create's "web" from
/// one someone else made after our look and before our create landed. SIGTERM during the
/// create: the signal thread kills the create, lists, and deletes the stranger's "web".
#[test]
fn attack_sigterm_during_create_deletes_strangers_web() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let c = race_a_stranger_into_web(state_dir.path(), fs.path());
    // SAFETY: sends a signal to our child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let out = c.wait_with_output().unwrap();
    let left = names(&fake_at(fs.path(), "0.8.0"));
    eprintln!(
        "child stderr:\n{}\nleft: {left:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(left, ["web"], "someone else's web was deleted");
}

/// Same flaw through the crash watcher: SIGKILL during the create; the watcher waits for the
/// create (which fails: "already exists"), then deletes the stranger's "web".
#[test]
fn attack_sigkill_during_create_watcher_deletes_strangers_web() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let mut c = race_a_stranger_into_web(state_dir.path(), fs.path());
    sigkill_group(&mut c);
    settle_for(Duration::from_secs(6));
    let left = names(&fake_at(fs.path(), "0.8.0"));
    let log = std::fs::read_to_string(state_dir.path().join("watcher.log")).unwrap_or_default();
    eprintln!("watcher.log:\n{log}\nleft: {left:?}");
    assert_eq!(left, ["web"], "someone else's web was deleted");
}

/// For nextest (`REVIEW1_NEXTEST=1`, see review1-nextest.toml): holds one machine and is in
/// the middle of creating another when nextest's slow-timeout terminates it.
#[test]
fn review1_nextest_timeout() {
    if std::env::var_os("REVIEW1_NEXTEST").is_none() {
        return;
    }
    let vm = Machine::builder()
        .smolvm(plain())
        .image("alpine")
        .net()
        .create()
        .unwrap();
    println!("holding {}", vm.name());
    let slow = Machine::builder()
        .smolvm(plain().with_process_env("SMOLVM_FAKE_LATENCY", "create=20s"))
        .image("alpine")
        .net()
        .create();
    println!("{:?}", slow.map(|m| m.name().to_string()));
    std::thread::sleep(LIMIT);
}

/// DEFECT (low): at exit, a `Stage::Created` record is deleted by name without the ownership
/// check (`Verdict::Ours` is assumed), though on smolvm >= 1.8 the labels say it is not ours.
#[test]
fn attack_exit_hook_deletes_replaced_web_without_checking_labels() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let out = child(
        state_dir.path(),
        "static-web-replaced",
        &[("SMOLVM_FAKE_STATE", fs.path().to_str().unwrap())],
    )
    .output()
    .unwrap();
    let left = names(&fake_at(fs.path(), "1.9.2"));
    eprintln!(
        "stderr:\n{}\nleft: {left:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    assert_eq!(
        left,
        ["web"],
        "someone else's web (other owner label) was deleted at exit"
    );
}

/// Same flaw with no signal at all: the slow create times out (`SMOLVM_HARNESS_TIMEOUT`),
/// `abandon` judges the create over and deletes the stranger's "web" as what it "left".
#[test]
fn attack_timed_out_create_deletes_strangers_web() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let mut cmd = child(
        state_dir.path(),
        "create-web-slow",
        &[
            ("SMOLVM_FAKE_STATE", fs.path().to_str().unwrap()),
            ("SMOLVM_FAKE_VERSION", "0.8.0"),
            ("SMOLVM_HARNESS_TIMEOUT", "2s"),
        ],
    );
    let mut c = cmd.spawn().unwrap();
    let deadline = Instant::now() + LIMIT;
    while !ledger_files(state_dir.path())
        .iter()
        .any(|f| f.starts_with("web."))
    {
        assert!(Instant::now() < deadline, "no ledger entry for web");
        std::thread::sleep(Duration::from_millis(20));
    }
    fake_at(fs.path(), "0.8.0")
        .machine_create("web", &CreateOptions::image("alpine").net())
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    let mut result = String::new();
    for line in out.lines() {
        let line = line.unwrap();
        if line.starts_with("CREATE RESULT") {
            result = line;
            break;
        }
    }
    let left = names(&fake_at(fs.path(), "0.8.0"));
    sigkill_group(&mut c);
    eprintln!("{result}\nleft: {left:?}");
    assert_eq!(left, ["web"], "someone else's web was deleted");
}

/// Probe (passes = no defect): `std::process::exit` during another thread's create.
#[test]
fn probe_exit_during_another_threads_create() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let out = child(
        state_dir.path(),
        "exit-during-create",
        &[("SMOLVM_FAKE_STATE", fs.path().to_str().unwrap())],
    )
    .output()
    .unwrap();
    settle_for(Duration::from_secs(4));
    let left = names(&fake_at(fs.path(), "1.9.2"));
    let ledger = ledger_files(state_dir.path());
    eprintln!(
        "stderr:\n{}\nleft: {left:?} ledger: {ledger:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(left.is_empty() && ledger.is_empty());
}

/// Probe: a guest env value must not show in errors, the transcript, or the ledger.
#[test]
fn probe_secret_in_failed_create() {
    let state_dir = tempfile::tempdir().unwrap();
    let fs = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-VALUE-0123456789";
    for knob in ["SMOLVM_FAKE_FAIL", "SMOLVM_FAKE_HANG"] {
        let smolvm = fake_at(fs.path(), "1.9.2")
            .with_process_env(knob, "create")
            .with_timeout(Duration::from_secs(1));
        std::env::set_var("SMOLVM_HARNESS_STATE_DIR", state_dir.path());
        let err = Machine::builder()
            .smolvm(smolvm)
            .name("sec")
            .image("alpine")
            .net()
            .env("TOKEN", secret)
            .create()
            .unwrap_err();
        let shown = format!(
            "{err}\n{err:?}\n{:?}",
            smolvm_harness::transcript::transcript("sec")
        );
        assert!(!shown.contains(secret), "{knob}: secret shown: {shown}");
    }
}
