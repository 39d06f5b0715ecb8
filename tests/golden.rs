//! Golden machines (issue 12): provision once, fork a clone per test; clones diverge; every
//! way a test process ends leaves zero machines, and the fake's log never shows a bare
//! `delete -f` of a golden while a clone of it lives; the cold fallback on smolvm without a
//! re-forkable golden; one golden per key for a run of many processes.

#![cfg(target_os = "linux")]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smolvm_harness::{ForkOptions, Golden, GoldenBuilder, Machine, Smolvm, Version};

#[allow(dead_code)]
#[path = "common/attack_harness.rs"]
mod harness;
use harness::*;

const SCENARIO: &str = "GOLDEN_SCENARIO";
const ENTRY: &str = "golden_child";

fn recipe(g: GoldenBuilder, smolvm: Smolvm) -> GoldenBuilder {
    g.smolvm(smolvm)
        .image("alpine:latest")
        .net()
        .provision(|m| {
            m.sh("mkdir -p /srv && echo provisioned > /srv/state && echo once >> /srv/log")?
                .check()
        })
}

/// Provisioned once; every clone sees it; writes stay in their clone.
fn clones_diverge(smolvm: Smolvm) -> Golden {
    let provisions = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&provisions);
    let golden = recipe(Golden::builder(), smolvm)
        .provision(move |m| {
            counter.fetch_add(1, Ordering::SeqCst);
            m.sh("mkdir -p /srv && echo provisioned > /srv/state")?
                .check()
        })
        .create()
        .unwrap();
    let a = golden.fork().unwrap();
    let b = golden.fork().unwrap();
    for vm in [&a, &b] {
        assert_eq!(
            vm.sh("cat /srv/state").unwrap().stdout_str(),
            "provisioned\n"
        );
    }
    a.sh("echo a > /srv/state").unwrap().assert_success();
    assert_eq!(
        b.sh("cat /srv/state").unwrap().stdout_str(),
        "provisioned\n"
    );
    // At most two clones at once: the machine cap of a 2-core CI machine is 2 (a frozen
    // golden holds no slot).
    drop(b);
    let c = golden.fork().unwrap();
    assert_eq!(
        c.sh("cat /srv/state").unwrap().stdout_str(),
        "provisioned\n"
    );
    assert_eq!(a.sh("cat /srv/state").unwrap().stdout_str(), "a\n");
    let expected = if golden.forks() { 1 } else { 3 };
    assert_eq!(provisions.load(Ordering::SeqCst), expected);
    golden
}

#[test]
fn simulated_goldens_fork_and_clones_diverge() {
    let smolvm = Smolvm::simulated();
    let golden = clones_diverge(smolvm.clone());
    assert!(golden.forks());
    let name = golden.name().unwrap().to_string();
    assert!(smolvm
        .machine_list()
        .unwrap()
        .iter()
        .any(|m| m.name == name));
    drop(golden);
    assert!(smolvm.machine_list().unwrap().is_empty());
}

#[test]
fn fallback_is_a_cold_machine_per_fork_with_the_same_api() {
    for version in [Version::new(0, 8, 2), Version::new(1, 7, 5)] {
        let smolvm = Smolvm::simulated_version(version);
        let (golden, said) = smolvm_harness::diag::capture(|| clones_diverge(smolvm.clone()));
        assert!(!golden.forks(), "{version}");
        assert!(golden.name().is_none());
        assert!(
            said.iter()
                .any(|l| l.contains("cold machine") && l.contains(&version.to_string())),
            "{version}: {said:?}"
        );
        drop(golden);
        assert!(smolvm.machine_list().unwrap().is_empty(), "{version}");
    }
}

#[test]
fn per_clone_env_and_remapped_ports() {
    let golden = recipe(Golden::builder(), Smolvm::simulated())
        .publish(8080)
        .create()
        .unwrap();
    let a = golden
        .fork_with(
            ForkOptions::default()
                .env("TEST_ID", "a")
                .secret_env("TOK", "clone-secret-a"),
        )
        .unwrap();
    let b = golden.fork().unwrap();
    assert_eq!(
        a.sh("echo $TEST_ID $TOK").unwrap().stdout_str(),
        "a clone-secret-a\n"
    );
    assert_eq!(b.sh("echo x$TEST_ID").unwrap().stdout_str(), "x\n");
    let (ha, hb) = (a.host_port(8080).unwrap(), b.host_port(8080).unwrap());
    assert_ne!(ha, hb);
    let transcript: String = a.transcript().iter().map(|e| e.to_string()).collect();
    assert!(!transcript.contains("clone-secret-a"), "{transcript}");
}

#[test]
fn a_kept_clone_keeps_its_golden() {
    let smolvm = Smolvm::simulated();
    let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
    let name = golden.name().unwrap().to_string();
    let clone = golden.fork().unwrap();
    let kept = clone.keep();
    drop(golden);
    let left: Vec<String> = smolvm
        .machine_list()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(left.contains(&kept) && left.contains(&name), "{left:?}");
}

#[test]
fn one_key_one_recipe_and_the_golden_is_named_after_its_key() {
    let smolvm = Smolvm::simulated();
    let a = Golden::shared("recipe-key", |g| recipe(g, smolvm.clone())).unwrap();
    assert!(
        a.name().unwrap().contains("golden-recipe-key"),
        "{:?}",
        a.name()
    );
    let again = Golden::shared("recipe-key", |g| recipe(g, smolvm.clone())).unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    let err = Golden::shared("recipe-key", |g| recipe(g, smolvm.clone()).cpus(2)).unwrap_err();
    assert!(
        matches!(err, smolvm_harness::Error::InvalidInput { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("another recipe"), "{err}");
}

#[test]
fn a_failing_provision_is_said_as_the_goldens_and_leaves_artifacts() {
    let smolvm = Smolvm::simulated();
    let (result, said) = smolvm_harness::diag::capture(|| {
        Golden::builder()
            .smolvm(smolvm.clone())
            .image("alpine")
            .net()
            .provision(|m| {
                m.sh("echo provisioning went wrong > /dev/console; exit 7")?
                    .check()
            })
            .create()
    });
    let err = result.unwrap_err();
    assert!(err.to_string().contains("exit 7"), "{err}");
    let text = said.join("\n");
    assert!(text.contains("making golden machine"), "{text}");
    let dir = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("artifacts: "))
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no artifacts in {text}"));
    let console = std::fs::read_to_string(Path::new(dir).join("console.log")).unwrap();
    assert!(console.contains("provisioning went wrong"), "{console}");
    assert!(smolvm.machine_list().unwrap().is_empty());
}

// ---- the fake CLI, through real processes ----

/// Every bare `delete -f` of a golden while a clone of it lived, replayed from the log.
fn bare_deletes_under_clones(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut clones: HashMap<String, HashSet<String>> = HashMap::new();
    let mut violations = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["code"].as_i64() != Some(0) {
            continue;
        }
        let argv: Vec<String> = v["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let arg = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1).cloned())
        };
        match argv.get(1).map(String::as_str) {
            Some("fork") => {
                if let (Some(g), Some(c)) = (arg("--golden"), arg("--name")) {
                    clones.entry(g).or_default().insert(c);
                }
            }
            Some("delete") => {
                let Some(name) = arg("--name") else { continue };
                let cascade = argv.iter().any(|a| a == "--cascade");
                for set in clones.values_mut() {
                    set.remove(&name);
                }
                if let Some(live) = clones.get(&name) {
                    if !cascade && !live.is_empty() {
                        violations.push(format!("{name} under {live:?}"));
                    }
                }
                if cascade {
                    clones.remove(&name);
                }
            }
            _ => {}
        }
    }
    violations
}

fn fake_with_log(state: &Path, log: &Path) -> Smolvm {
    fake_at(state, "1.9.2").with_process_env("SMOLVM_FAKE_LOG", log.to_str().unwrap())
}

#[test]
fn fake_goldens_fork_and_clean_up_in_order() {
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm = fake_with_log(state.path(), &log);
    let golden = clones_diverge(smolvm.clone());
    assert!(golden.forks());
    drop(golden);
    assert!(names(&smolvm).is_empty());
    assert_eq!(bare_deletes_under_clones(&log), Vec::<String>::new());
}

#[test]
fn a_panicking_test_leaves_no_golden_nor_clone() {
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm = fake_with_log(state.path(), &log);
    let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
    let clone = golden.fork().unwrap();
    let ((), _said) = smolvm_harness::diag::capture(|| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let (_golden, _clone) = (golden, clone);
            panic!("the test fails with its golden and clone alive");
        }));
        assert!(result.is_err());
    });
    assert!(names(&smolvm).is_empty(), "left: {:?}", names(&smolvm));
    assert_eq!(bare_deletes_under_clones(&log), Vec::<String>::new());
}

/// Child scenarios, run by the tests below through this same binary.
#[test]
#[ignore = "a child process of the tests below"]
fn golden_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let state = std::env::var(CHILD_FAKE_STATE).unwrap();
    let log = std::env::var(CHILD_FAKE_LOG).unwrap();
    let smolvm = fake_with_log(Path::new(&state), Path::new(&log));
    match scenario.as_str() {
        // A golden in a static with a live clone in another: only the exit hook settles them.
        "static" => {
            static GOLDEN: std::sync::OnceLock<Arc<Golden>> = std::sync::OnceLock::new();
            static CLONE: std::sync::OnceLock<std::sync::Mutex<Option<Machine>>> =
                std::sync::OnceLock::new();
            let golden = Golden::shared("static", |g| recipe(g, smolvm)).unwrap();
            let clone = golden.fork().unwrap();
            let _ = GOLDEN.set(golden);
            let _ = CLONE.set(std::sync::Mutex::new(Some(clone)));
            ready(&["static"]);
        }
        // Hold a golden and two clones until killed.
        "hold" => {
            let golden = recipe(Golden::builder(), smolvm).create().unwrap();
            let a = golden.fork().unwrap();
            let b = golden.fork().unwrap();
            ready(&[golden.name().unwrap(), a.name(), b.name()]);
            std::thread::sleep(Duration::from_secs(60));
        }
        // Share a golden of the run, fork a clone, print the golden's name, end.
        "shared" => {
            let golden = Golden::shared("suite", |g| recipe(g, smolvm)).unwrap();
            let clone = golden.fork().unwrap();
            assert_eq!(
                clone.sh("cat /srv/state").unwrap().stdout_str(),
                "provisioned\n"
            );
            ready(&[golden.name().unwrap_or("cold")]);
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Nothing left, and no bare `delete -f` of a golden under a live clone in the fake's log.
fn assert_clean(dirs: &Dirs, what: &str) {
    assert!(
        wait_until(Duration::from_secs(30), || dirs.names().is_empty()),
        "{what}: machines left: {:?}\nwatcher.log: {}",
        dirs.names(),
        watcher_log(dirs.harness.path())
    );
    assert_eq!(
        bare_deletes_under_clones(&dirs.log()),
        Vec::<String>::new(),
        "{what}"
    );
}

#[test]
fn a_golden_in_a_static_is_deleted_at_exit_after_its_clone() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let out = run_to_end(dirs.child("static", &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        names(&dirs.smolvm()).is_empty(),
        "left: {:?}",
        names(&dirs.smolvm())
    );
    assert_clean(&dirs, "static at exit");
}

#[test]
fn signals_and_sigkill_leave_no_golden_nor_clone() {
    for (what, signal, envs) in [
        ("SIGINT", libc::SIGINT, vec![]),
        ("SIGTERM", libc::SIGTERM, vec![]),
        ("SIGKILL, watcher", libc::SIGKILL, vec![]),
    ] {
        let dirs = Dirs::new(ENTRY, SCENARIO);
        let env_refs: Vec<(&str, &str)> =
            envs.iter().map(|(k, v): &(&str, &str)| (*k, *v)).collect();
        let (mut child, words) = holder(dirs.child("hold", &env_refs));
        assert_eq!(names(&dirs.smolvm()).len(), 3, "{what}: {words:?}");
        let pgid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: signals the group our unreaped child leads.
        unsafe { libc::killpg(pgid, signal) };
        let _ = child.wait();
        assert_clean(&dirs, what);
    }
}

#[test]
fn sigkill_without_a_watcher_is_settled_by_the_next_runs_sweep() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let (mut child, _) = holder(dirs.child("hold", &[("SMOLVM_HARNESS_WATCHER", "off")]));
    sigkill_group(&mut child);
    assert_eq!(names(&dirs.smolvm()).len(), 3, "nothing ran after SIGKILL");
    // The next run: its first machine sweeps.
    let out = run_to_end(dirs.child("shared", &[("SMOLVM_HARNESS_WATCHER", "off")]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&dirs, "sigkill, then the next run");
}

#[test]
fn one_golden_per_key_for_a_run_of_eight_processes() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let envs = [
        ("SMOLVM_HARNESS_RUN_ID", "golden-run-1"),
        ("SMOLVM_HARNESS_GOLDEN_GRACE", "1s"),
    ];
    let kids: Vec<_> = (0..8)
        .map(|_| dirs.child("shared", &envs).spawn().unwrap())
        .collect();
    let mut goldens = HashSet::new();
    for kid in kids {
        let out = kid.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let word = text
            .lines()
            .find_map(|l| l.strip_prefix("READY "))
            .unwrap()
            .to_string();
        goldens.insert(word);
    }
    assert_eq!(goldens.len(), 1, "{goldens:?}");
    let forkable_starts = std::fs::read_to_string(dirs.log())
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""--forkable""#) && l.contains(r#""code":0"#))
        .count();
    assert_eq!(forkable_starts, 1, "one golden made for the run");
    // Nobody holds it any more: the watcher retires it after the grace.
    assert_clean(&dirs, "shared golden after the run");
}
