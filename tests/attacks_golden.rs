//! Attacks on golden machines (review 12): every test states a promise of the docs and checks
//! it as written, through real processes against the fake CLI where processes are involved.
//! The failing ones are defects (see the report); the passing ones are what held.

#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smolvm_harness::sim::read_fake_state;
use smolvm_harness::{ForkOptions, Golden, GoldenBuilder, Smolvm, Version};

#[allow(dead_code)]
#[path = "common/attack_harness.rs"]
mod harness;
use harness::*;

const SCENARIO: &str = "ATTACK_GOLDEN_SCENARIO";
const ENTRY: &str = "attack_golden_child";
const SECRET: &str = "golden-secret-v4lue-9f3k";
const CLONE_SECRET: &str = "clone-secret-v4lue-77qz";

fn recipe(g: GoldenBuilder, smolvm: Smolvm) -> GoldenBuilder {
    g.smolvm(smolvm)
        .image("alpine:latest")
        .net()
        .provision(|m| {
            m.sh("mkdir -p /srv && echo provisioned > /srv/state")?
                .check()
        })
}

/// In-process tests on the fake share this process's machine slots (a cap of 2 by default):
/// one at a time, so that their goldens do not deadlock on slots (see
/// `two_goldens_made_at_once_under_a_cap_of_two_both_fork`).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn fake_with_log(state: &Path, log: &Path, version: &str) -> Smolvm {
    fake_at(state, version).with_process_env("SMOLVM_FAKE_LOG", log.to_str().unwrap())
}

// ---- child scenarios ---------------------------------------------------------------------

/// Child scenarios, run by the tests below through this same binary.
#[test]
#[ignore = "a child process of the tests below"]
fn attack_golden_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let state = std::env::var(CHILD_FAKE_STATE).unwrap();
    let log = std::env::var(CHILD_FAKE_LOG).unwrap();
    let version = std::env::var("AG_FAKE_VERSION").unwrap_or_else(|_| "1.9.2".into());
    let smolvm = fake_with_log(Path::new(&state), Path::new(&log), &version);
    match scenario.as_str() {
        // A golden of this test, a kept clone and a live one; wait for a signal.
        "keep-then-hold" => {
            let golden = recipe(Golden::builder(), smolvm).create().unwrap();
            let kept = golden.fork().unwrap().keep();
            let live = golden.fork().unwrap();
            ready(&[golden.name().unwrap(), &kept, live.name()]);
            std::thread::sleep(Duration::from_secs(60));
        }
        // The README pattern under `cargo test` (no run id): `Golden::shared` + a clone the
        // test keeps; the process then ends normally.
        "shared-keep-exit" => {
            let golden = Golden::shared("keep", |g| recipe(g, smolvm)).unwrap();
            let kept = golden.fork().unwrap().keep();
            ready(&[golden.name().unwrap(), &kept]);
        }
        // Same, with `disable_cleanup(true)` on a clone held in a local.
        "shared-disable-exit" => {
            let golden = Golden::shared("disable", |g| recipe(g, smolvm)).unwrap();
            let mut clone = golden.fork().unwrap();
            clone.disable_cleanup(true);
            ready(&[golden.name().unwrap(), clone.name()]);
            std::mem::forget(clone);
        }
        // A shared golden with a secret: made here, held until killed.
        "secret-hold" => {
            let golden =
                Golden::shared("secret", |g| recipe(g, smolvm).secret_env("TOK", SECRET)).unwrap();
            let clone = golden.fork().unwrap();
            let out = clone.sh("echo $TOK").unwrap();
            assert_eq!(out.stdout_str(), format!("{SECRET}\n"));
            ready(&[golden.name().unwrap()]);
            std::thread::sleep(Duration::from_secs(60));
        }
        // Joins the golden above (same run): its clones must see the golden's secret, and a
        // per-clone one.
        "secret-join" => {
            let golden =
                Golden::shared("secret", |g| recipe(g, smolvm).secret_env("TOK", SECRET)).unwrap();
            let clone = golden
                .fork_with(ForkOptions::default().secret_env("MINE", CLONE_SECRET))
                .unwrap();
            let out = clone.sh("echo $TOK $MINE").unwrap();
            let ok = out.stdout_str() == format!("{SECRET} {CLONE_SECRET}\n");
            let said = if ok { "secret-ok" } else { "secret-missing" };
            ready(&[golden.name().unwrap(), said]);
        }
        // Share a golden of the run, fork a clone, hold until killed.
        "shared-hold" => {
            let golden = Golden::shared("suite", |g| recipe(g, smolvm)).unwrap();
            let clone = golden.fork().unwrap();
            ready(&[golden.name().unwrap_or("cold"), clone.name()]);
            std::thread::sleep(Duration::from_secs(60));
        }
        // A failing test with a clone of the shared golden.
        "shared-panic" => {
            let golden = Golden::shared("suite", |g| recipe(g, smolvm)).unwrap();
            let clone = golden.fork().unwrap();
            ready(&[golden.name().unwrap_or("cold"), clone.name()]);
            panic!("the test failed");
        }
        // Two tests of one process make a golden each at the same time (both provisioned
        // before either forks); print whether each forks.
        "two-goldens" => {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (smolvm, barrier) = (smolvm.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        let golden = recipe(Golden::builder(), smolvm)
                            .provision(move |_| {
                                barrier.wait();
                                Ok(())
                            })
                            .create()
                            .unwrap();
                        golden.forks()
                    })
                })
                .collect();
            let forks: Vec<String> = threads
                .into_iter()
                .map(|t| t.join().unwrap().to_string())
                .collect();
            let words: Vec<&str> = forks.iter().map(String::as_str).collect();
            ready(&words);
        }
        // A golden and a clone in statics; smolvm's deletes fail from now on in this process
        // only (the watcher does not inherit it): the exit hook cannot delete the clone.
        "static-delete-fails" => {
            static GOLDEN: std::sync::OnceLock<Golden> = std::sync::OnceLock::new();
            static CLONE: std::sync::OnceLock<smolvm_harness::Machine> = std::sync::OnceLock::new();
            let golden = GOLDEN.get_or_init(|| recipe(Golden::builder(), smolvm).create().unwrap());
            let clone = CLONE.get_or_init(|| golden.fork().unwrap());
            ready(&[golden.name().unwrap(), clone.name()]);
            std::env::set_var("SMOLVM_FAKE_FAIL", "delete");
        }
        // Share a golden of the run, fork a clone, end.
        "shared" => {
            let golden = Golden::shared("suite", |g| recipe(g, smolvm)).unwrap();
            let clone = golden.fork().unwrap();
            clone.sh("cat /srv/state").unwrap().assert_success();
            ready(&[golden.name().unwrap_or("cold")]);
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn signal_group(c: &mut std::process::Child, signal: i32) {
    let pgid = libc::pid_t::try_from(c.id()).unwrap();
    // SAFETY: signals the group our unreaped child leads.
    unsafe { libc::killpg(pgid, signal) };
    let _ = c.wait();
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ready_words(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("READY "))
        .unwrap_or_else(|| panic!("no READY line: {}", stderr_of(out)))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

// ---- 1. teardown: a kept clone keeps its golden, in every layer ----------------------------

/// "A kept clone keeps its golden" (README, guide, golden.rs) and "Teardown order is
/// guaranteed in every layer (drop, exit, signals, ...)": SIGTERM reaches the signal thread
/// while a kept clone and a live one exist.
#[test]
fn sigterm_keeps_the_golden_of_a_kept_clone() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dirs = Dirs::new(ENTRY, SCENARIO);
        let (mut child, words) = holder(dirs.child("keep-then-hold", &[]));
        let (golden, kept, live) = (&words[0], &words[1], &words[2]);
        signal_group(&mut child, signal);
        let left = dirs.names();
        assert!(
            left.contains(kept) && left.contains(golden),
            "signal {signal}: the kept clone {kept} (or its golden {golden}) was deleted; \
             left: {left:?}"
        );
        assert!(!left.contains(live), "signal {signal}: {left:?}");
        assert!(dirs.broken().is_empty(), "{:?}", dirs.broken());
    }
}

/// The same promise at the exit hook: the README's own pattern (`Golden::shared` under
/// `cargo test`, one golden per process, kept in a static) with `Machine::keep` on a clone.
#[test]
fn exit_hook_keeps_the_golden_of_a_kept_clone_of_a_shared_golden() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let out = run_to_end(dirs.child("shared-keep-exit", &[]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let words = ready_words(&out);
    let (golden, kept) = (&words[0], &words[1]);
    let left = dirs.names();
    assert!(
        left.contains(kept) && left.contains(golden),
        "the kept clone {kept} was deleted with its golden at exit; left: {left:?}\n{}",
        stderr_of(&out)
    );
}

/// `disable_cleanup(true)`: "While off, the machine counts as kept ... so the exit hook and
/// sweeps leave it alone too."
#[test]
fn exit_hook_leaves_a_clone_with_cleanup_disabled() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let out = run_to_end(dirs.child("shared-disable-exit", &[]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let words = ready_words(&out);
    let (golden, clone) = (&words[0], &words[1]);
    let left = dirs.names();
    assert!(
        left.contains(clone) && left.contains(golden),
        "the clone {clone} with cleanup disabled was deleted at exit; left: {left:?}"
    );
}

/// What held: SIGKILL, then the watcher or (watcher off) the next run's sweep: the kept clone
/// and its golden stay, the live clone goes, nothing is broken.
#[test]
fn sigkill_keeps_the_golden_of_a_kept_clone() {
    for watcher in ["on", "off"] {
        let dirs = Dirs::new(ENTRY, SCENARIO);
        let env = [("SMOLVM_HARNESS_WATCHER", watcher)];
        let (mut child, words) = holder(dirs.child("keep-then-hold", &env));
        let (golden, kept, live) = (words[0].clone(), words[1].clone(), words[2].clone());
        sigkill_group(&mut child);
        if watcher == "off" {
            let out = run_to_end(dirs.child("shared", &env));
            assert!(out.status.success(), "{}", stderr_of(&out));
        }
        assert!(
            wait_until(Duration::from_secs(20), || !dirs.names().contains(&live)),
            "{watcher}: {:?}",
            dirs.names()
        );
        let left = dirs.names();
        assert!(
            left.contains(&kept) && left.contains(&golden),
            "{watcher}: {left:?}"
        );
        assert!(dirs.broken().is_empty(), "{watcher}: {:?}", dirs.broken());
    }
}

/// "never a bare `delete -f` under live clones (smolvm would leave them broken)" (README):
/// when a golden stays because a clone of it is kept, the command the crate prints to delete
/// the golden by hand must not be a bare `delete -f`, which breaks the kept clone. Follow the
/// printed advice literally.
#[test]
fn the_printed_command_for_a_kept_golden_does_not_break_its_kept_clone() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm = fake_with_log(state.path(), &log, "1.9.2");
    let (kept, said) = smolvm_harness::diag::capture(|| {
        let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
        golden.fork().unwrap().keep()
    });
    let gname = names(&smolvm)
        .into_iter()
        .find(|n| *n != kept)
        .expect("the golden stays");
    let advice = said
        .iter()
        .find(|l| l.contains(&gname) && l.contains("delete it with: "))
        .unwrap_or_else(|| panic!("no advice for {gname}: {said:#?}"));
    let command = advice.split("delete it with: ").nth(1).unwrap().trim();
    // `VAR=value ... program args...`, as a user would paste it into a shell.
    let mut words = command.split_whitespace();
    let mut cmd = Command::new("env");
    cmd.args(words.by_ref());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{command}: {out:?}");
    let broken: Vec<String> = read_fake_state(state.path())
        .unwrap()
        .into_iter()
        .filter(|m| m.broken)
        .map(|m| m.name)
        .collect();
    assert!(
        broken.is_empty(),
        "following `{command}` broke the kept clone(s) {broken:?}"
    );
    for n in names(&smolvm) {
        let _ = smolvm.machine_delete_cascade(&n);
    }
}

/// What held: nextest-like, four processes of one run share one golden and are all
/// SIGKILLed while holding it; the watcher settles their clones and retires the golden after
/// the grace; nothing is ever broken.
#[test]
fn every_holder_sigkilled_the_watcher_retires_the_shared_golden() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let envs = [
        ("SMOLVM_HARNESS_RUN_ID", "killed-run"),
        ("SMOLVM_HARNESS_GOLDEN_GRACE", "1s"),
    ];
    let mut kids = Vec::new();
    let mut goldens = HashSet::new();
    for _ in 0..4 {
        let (kid, words) = holder(dirs.child("shared-hold", &envs));
        goldens.insert(words[0].clone());
        kids.push(kid);
    }
    assert_eq!(goldens.len(), 1, "{goldens:?}");
    assert_eq!(dirs.names().len(), 5, "{:?}", dirs.names());
    for kid in &mut kids {
        sigkill_group(kid);
    }
    assert!(
        wait_until(Duration::from_secs(30), || dirs.names().is_empty()),
        "left: {:?}\n{}",
        dirs.names(),
        watcher_log(dirs.harness.path())
    );
    assert!(dirs.broken().is_empty());
}

/// What held: `SMOLVM_HARNESS_KEEP=on-failure` with a failing test (per process, and shared
/// by a run with a 1 s grace) and `always`: the clone and its golden both stay, unbroken.
#[test]
fn keep_env_keeps_clone_and_golden_together() {
    let run = [
        ("SMOLVM_HARNESS_RUN_ID", "keep-run"),
        ("SMOLVM_HARNESS_GOLDEN_GRACE", "1s"),
    ];
    for (what, scenario, keep, shared) in [
        (
            "on-failure, per process",
            "shared-panic",
            "on-failure",
            false,
        ),
        ("on-failure, run", "shared-panic", "on-failure", true),
        ("always, run", "shared", "always", true),
    ] {
        let dirs = Dirs::new(ENTRY, SCENARIO);
        let mut envs = vec![("SMOLVM_HARNESS_KEEP", keep)];
        if shared {
            envs.extend(run);
        }
        let out = run_to_end(dirs.child(scenario, &envs));
        let words = ready_words(&out);
        if shared {
            // Past the grace: the watcher has looked at the golden.
            std::thread::sleep(Duration::from_secs(3));
        }
        let left = dirs.names();
        assert!(
            left.contains(&words[0]) && left.iter().any(|n| *n != words[0]),
            "{what}: {left:?}\n{}",
            watcher_log(dirs.harness.path())
        );
        assert!(dirs.broken().is_empty(), "{what}");
        for n in left {
            let _ = dirs.smolvm().machine_delete_cascade(&n);
        }
    }
}

/// "It is never leaked: a golden of one process is deleted at its exit (after its clones)"
/// (`Golden::shared`), and `Machine::delete`: "on failure it stays registered, so the exit
/// hook and the next run's sweep try again". When the exit hook cannot delete a clone (a
/// transient smolvm failure), the clone is left to the crash watcher, which deletes it; its
/// golden must then go too, not stay forever as if kept.
#[test]
fn a_clone_left_to_the_watcher_at_exit_does_not_leak_its_golden() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let out = run_to_end(dirs.child("static-delete-fails", &[]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let words = ready_words(&out);
    let (golden, clone) = (&words[0], &words[1]);
    assert!(
        wait_until(Duration::from_secs(20), || !dirs.names().contains(clone)),
        "the watcher never deleted the clone: {:?}\n{}",
        dirs.names(),
        watcher_log(dirs.harness.path())
    );
    assert!(
        wait_until(Duration::from_secs(10), || dirs.names().is_empty()),
        "golden {golden} leaked after its clone was deleted: {:?}\nchild stderr: {}\nwatcher: {}",
        dirs.names(),
        stderr_of(&out),
        watcher_log(dirs.harness.path())
    );
    assert!(dirs.broken().is_empty());
}

/// What held: in-process, dropping the golden handle before a kept clone's guard keeps both.
#[test]
fn in_process_kept_clone_and_disabled_clone_keep_the_golden() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm = fake_with_log(state.path(), &log, "1.9.2");
    let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
    let gname = golden.name().unwrap().to_string();
    let mut clone = golden.fork().unwrap();
    clone.disable_cleanup(true);
    let cname = clone.name().to_string();
    drop(golden);
    drop(clone);
    let left = names(&smolvm);
    assert!(left.contains(&gname) && left.contains(&cname), "{left:?}");
    // Tidy up by hand, as the printed command says.
    smolvm.machine_delete_cascade(&gname).unwrap();
}

// ---- 2. shared goldens across processes ----------------------------------------------------

/// "deleted once no test process has held it for SMOLVM_HARNESS_GOLDEN_GRACE (default 30s):
/// by the crash watcher ... or else by the next run's sweep." Watcher off; run A ends; run B
/// (another run id) starts at once and ends: the golden of run A, which nobody can ever join
/// again, must be gone after "the next run's sweep".
#[test]
fn the_next_runs_sweep_retires_a_finished_runs_golden() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let off = ("SMOLVM_HARNESS_WATCHER", "off");
    let a = run_to_end(dirs.child("shared", &[off, ("SMOLVM_HARNESS_RUN_ID", "run-a")]));
    assert!(a.status.success(), "{}", stderr_of(&a));
    let golden_a = ready_words(&a)[0].clone();
    assert!(dirs.names().contains(&golden_a));
    let b = run_to_end(dirs.child("shared", &[off, ("SMOLVM_HARNESS_RUN_ID", "run-b")]));
    assert!(b.status.success(), "{}", stderr_of(&b));
    let golden_b = ready_words(&b)[0].clone();
    assert_ne!(golden_a, golden_b);
    let left = dirs.names();
    assert!(
        !left.contains(&golden_a),
        "run-a's golden {golden_a} survived run-b's sweep (no process of run-a is alive, and \
         none can join it); left: {left:?}"
    );
    // Tidy up.
    for n in left {
        let _ = dirs.smolvm().machine_delete_cascade(&n);
    }
}

/// "an entry goes only when its machine is deleted, kept, someone else's, or provably never
/// created: a `machine create` still running (found by its mark on Linux) keeps it, however
/// slow the pull" (sweep.rs), and "It is never leaked" (`Golden::shared`). The maker of a
/// shared golden is SIGKILLed while its `machine create` (a slow pull, 4 s here) runs; the
/// create lands after the 1 s grace.
#[test]
fn a_shared_golden_whose_create_lands_after_its_maker_died_is_not_leaked() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let envs = [
        ("SMOLVM_HARNESS_RUN_ID", "slow-pull"),
        ("SMOLVM_HARNESS_GOLDEN_GRACE", "1s"),
        ("SMOLVM_FAKE_LATENCY", "create=4s"),
    ];
    let mut child = dirs.child("shared", &envs).spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || ledger_files(
            dirs.harness.path()
        )
        .iter()
        .any(|f| f.contains("golden"))),
        "the golden was never registered"
    );
    sigkill_group(&mut child);
    // The create lands at about 4 s; the watcher has had 1 s of grace and more. (Bounds, not
    // speeds: generous, for a machine busy with other builds.)
    assert!(
        wait_until(Duration::from_secs(30), || !dirs.names().is_empty()),
        "the create never landed"
    );
    assert!(
        wait_until(Duration::from_secs(40), || dirs.names().is_empty()),
        "leaked: {:?}; ledger: {:?}\nwatcher: {}",
        dirs.names(),
        ledger_files(dirs.harness.path()),
        watcher_log(dirs.harness.path())
    );
}

/// What held: a process joining a golden made by another (same run) can exec in its clones
/// the golden's secret and a per-clone one; no secret value reaches the fake's log (argv),
/// the ledger, the holder files or the golden's record. After the holder is gone, the
/// watcher retires the golden after a 1 s grace.
#[test]
fn a_joining_process_gets_the_golden_secret_and_nothing_leaks() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let envs = [
        ("SMOLVM_HARNESS_RUN_ID", "secret-run"),
        ("SMOLVM_HARNESS_GOLDEN_GRACE", "1s"),
    ];
    let (mut maker, words) = holder(dirs.child("secret-hold", &envs));
    let golden = words[0].clone();
    let joined = run_to_end(dirs.child("secret-join", &envs));
    assert!(joined.status.success(), "{}", stderr_of(&joined));
    let jw = ready_words(&joined);
    assert_eq!(jw[0], golden, "joined the same golden");
    assert_eq!(jw[1], "secret-ok", "{}", stderr_of(&joined));
    signal_group(&mut maker, libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(30), || dirs.names().is_empty()),
        "left: {:?}\n{}",
        dirs.names(),
        watcher_log(dirs.harness.path())
    );
    let mut texts = vec![std::fs::read_to_string(dirs.log()).unwrap()];
    for entry in walk(dirs.harness.path()) {
        if let Ok(t) = std::fs::read_to_string(&entry) {
            texts.push(t);
        }
    }
    texts.push(stderr_of(&joined));
    for t in &texts {
        assert!(!t.contains(SECRET) && !t.contains(CLONE_SECRET), "{t}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(list) = std::fs::read_dir(dir) {
        for e in list.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// What held: two runs at once with different ids get a golden each; two smolvm targets
/// (fake states) with the same key and run get a golden each.
#[test]
fn goldens_are_per_run_and_per_target() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let other = tempfile::tempdir().unwrap();
    let grace = ("SMOLVM_HARNESS_GOLDEN_GRACE", "1s");
    let a = dirs
        .child("shared", &[grace, ("SMOLVM_HARNESS_RUN_ID", "r1")])
        .spawn()
        .unwrap();
    let b = dirs
        .child("shared", &[grace, ("SMOLVM_HARNESS_RUN_ID", "r2")])
        .spawn()
        .unwrap();
    let c = dirs
        .child("shared", &[grace, ("SMOLVM_HARNESS_RUN_ID", "r1")])
        .env(CHILD_FAKE_STATE, other.path())
        .spawn()
        .unwrap();
    let mut goldens = HashSet::new();
    for kid in [a, b, c] {
        let out = kid.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        goldens.insert(ready_words(&out)[0].clone());
    }
    assert_eq!(goldens.len(), 3, "{goldens:?}");
    let other_smolvm = fake_at(other.path(), "1.9.2");
    assert!(
        wait_until(Duration::from_secs(30), || dirs.names().is_empty()
            && names(&other_smolvm).is_empty()),
        "left: {:?} {:?}",
        dirs.names(),
        names(&other_smolvm)
    );
}

// ---- 4. fallback ---------------------------------------------------------------------------

/// "each clone gets it remapped to a fresh host port" (GoldenBuilder::port) and "Where fork
/// cannot be used ... the same calls give a cold machine built from the same recipe": on
/// smolvm without a re-forkable golden, a golden with a fixed published port gives two
/// clones at once, each on its own host port.
#[test]
fn cold_fallback_gives_each_clone_its_own_host_port() {
    let free = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for version in [
        Version::new(1, 9, 2),
        Version::new(1, 7, 5),
        Version::new(0, 8, 2),
    ] {
        let smolvm = Smolvm::simulated_version(version);
        let golden = recipe(Golden::builder(), smolvm.clone())
            .port(free, 80)
            .create()
            .unwrap();
        let a = golden.fork().unwrap();
        let b = golden.fork();
        let b = b.unwrap_or_else(|e| {
            panic!(
                "{version} (forks: {}): a second clone failed: {e}",
                golden.forks()
            )
        });
        assert_ne!(a.host_port(80), b.host_port(80), "{version}");
    }
}

/// Same promise: two goldens made at once under the default-sized cap of 2 (two tests of one
/// `cargo test` process, or two nextest processes with different keys): each golden holds a
/// slot while its smoke fork waits for another, so both wait for each other until
/// `SMOLVM_HARNESS_TIMEOUT` (5 s here, 300 s by default) and then both go cold.
#[test]
fn two_goldens_made_at_once_under_a_cap_of_two_both_fork() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let envs = [
        ("SMOLVM_HARNESS_MAX_MACHINES", "2"),
        ("SMOLVM_HARNESS_TIMEOUT", "5s"),
    ];
    let out = run_to_end(dirs.child("two-goldens", &envs));
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(ready_words(&out), ["true", "true"], "{}", stderr_of(&out));
    assert!(dirs.names().is_empty(), "{:?}", dirs.names());
}

/// What held: fallback on 0.8.2 and 1.7.5 through the fake, with per-clone env and secrets:
/// cold machines, provisioned per machine, the secret reaches the guest, the reason said
/// once per process, nothing left.
#[test]
fn cold_fallback_per_clone_env_and_secrets_nothing_left() {
    let _serial = serial();
    for version in ["0.8.2", "1.7.5"] {
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("log.jsonl");
        let smolvm = fake_with_log(state.path(), &log, version);
        let provisions = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&provisions);
        let ((), said) = smolvm_harness::diag::capture(|| {
            let g1 = recipe(Golden::builder(), smolvm.clone())
                .provision(move |m| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    m.sh("echo p > /srv-state")?.check()
                })
                .create()
                .unwrap();
            let g2 = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
            assert!(!g1.forks() && !g2.forks());
            let a = g1
                .fork_with(
                    ForkOptions::default()
                        .env("TEST_ID", "a")
                        .secret_env("TOK", CLONE_SECRET),
                )
                .unwrap();
            assert_eq!(
                a.sh("echo $TEST_ID $TOK").unwrap().stdout_str(),
                format!("a {CLONE_SECRET}\n"),
                "{version}"
            );
            drop(a);
            let _b = g1.fork().unwrap();
            let _c = g2.fork().unwrap();
        });
        assert_eq!(provisions.load(Ordering::SeqCst), 2, "{version}");
        let cold_lines = said.iter().filter(|l| l.contains("cold machine")).count();
        // At most once: an earlier test of this process may have said it already.
        assert!(cold_lines <= 1, "{version}: {said:?}");
        assert!(names(&smolvm).is_empty(), "{version}: {:?}", names(&smolvm));
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(!logged.contains(CLONE_SECRET), "{version}");
    }
}

/// What held: a failing smoke fork (`SMOLVM_FAKE_FAIL=fork`) falls back to cold machines and
/// deletes the frozen golden. (At most two machines at once: the default cap.)
#[test]
fn a_failing_smoke_fork_falls_back_and_deletes_the_golden() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm =
        fake_with_log(state.path(), &log, "1.9.2").with_process_env("SMOLVM_FAKE_FAIL", "fork");
    let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
    assert!(!golden.forks());
    assert!(names(&smolvm).is_empty(), "{:?}", names(&smolvm));
    let a = golden.fork().unwrap();
    assert_eq!(
        a.sh("cat /srv/state").unwrap().stdout_str(),
        "provisioned\n"
    );
    drop(a);
    assert!(names(&smolvm).is_empty(), "{:?}", names(&smolvm));
}

/// "the same calls give a cold machine ... and say once why" (golden.rs); the brief: the
/// reason said once per process. Two goldens whose smoke fork fails the same way.
#[test]
fn a_failing_smoke_fork_is_said_once_per_process() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm =
        fake_with_log(state.path(), &log, "1.9.2").with_process_env("SMOLVM_FAKE_FAIL", "fork");
    let ((), said) = smolvm_harness::diag::capture(|| {
        for _ in 0..2 {
            let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
            assert!(!golden.forks());
        }
    });
    let cold_lines: Vec<&String> = said.iter().filter(|l| l.contains("cold machine")).collect();
    // At most once: another test of this process may have said it already.
    assert!(cold_lines.len() <= 1, "{cold_lines:#?}");
}

/// "Where fork cannot be used (smolvm before 1.7.6, a platform other than Linux or macOS, or
/// a first fork that fails), fork() makes a cold machine": with `SMOLVM_HARNESS_MAX_MACHINES=1`
/// on smolvm 1.9.2 fork can be used (a frozen golden holds no slot), yet the golden's own
/// slot makes the smoke fork fail, and the whole run goes cold.
#[test]
fn a_machine_cap_of_one_does_not_turn_goldens_cold() {
    let dirs = Dirs::new(ENTRY, SCENARIO);
    let out = run_to_end(dirs.child("shared", &[("SMOLVM_HARNESS_MAX_MACHINES", "1")]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let word = ready_words(&out)[0].clone();
    assert_ne!(word, "cold", "{}", stderr_of(&out));
    assert!(dirs.names().is_empty(), "{:?}", dirs.names());
}

// ---- 6. provisioning -----------------------------------------------------------------------

/// What held: a provision step that fails, or panics, leaves no machine and no ledger entry.
#[test]
fn a_failing_or_panicking_provision_leaves_nothing() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm = fake_with_log(state.path(), &log, "1.9.2");
    let failed = recipe(Golden::builder(), smolvm.clone())
        .provision(|m| m.sh("exit 3")?.check())
        .create();
    assert!(failed.is_err());
    assert!(names(&smolvm).is_empty(), "{:?}", names(&smolvm));
    let s2 = smolvm.clone();
    let panicked = std::panic::catch_unwind(move || {
        recipe(Golden::builder(), s2)
            .provision(|_| panic!("provisioning blew up"))
            .create()
    });
    assert!(panicked.is_err());
    assert!(names(&smolvm).is_empty(), "{:?}", names(&smolvm));
}

/// What held (or not): golden secrets inherited by clones for every source: an image and a
/// pack (smolvm ignores `--secret-env` at `create --from`, so the crate passes pack secrets
/// per exec), with a per-clone secret on top.
#[test]
fn golden_secrets_reach_clones_for_image_and_pack_sources() {
    let smolvm = Smolvm::simulated();
    let pack = smolvm_harness::Pack::create_with(&smolvm, "alpine:latest").unwrap();
    for (what, builder) in [
        ("image", Golden::builder().image("alpine:latest").net()),
        ("pack", Golden::builder().from_pack(&pack)),
    ] {
        let golden = builder
            .smolvm(smolvm.clone())
            .secret_env("TOK", SECRET)
            .provision(|m| m.sh("test -n \"$TOK\"")?.check())
            .create()
            .unwrap();
        assert!(golden.forks(), "{what}");
        let clone = golden
            .fork_with(ForkOptions::default().secret_env("MINE", CLONE_SECRET))
            .unwrap();
        assert_eq!(
            clone.sh("echo $TOK $MINE").unwrap().stdout_str(),
            format!("{SECRET} {CLONE_SECRET}\n"),
            "{what}"
        );
        let transcript: String = clone.transcript().iter().map(|e| e.to_string()).collect();
        assert!(
            !transcript.contains(SECRET) && !transcript.contains(CLONE_SECRET),
            "{what}: {transcript}"
        );
    }
}

/// Design question, reported: "Every layer deletes a machine only when it is provably the
/// test's own" (guide, "Cleanup guarantees") and "A `.name(..)` that belongs to someone else
/// survives whatever ends the test" (README). A machine someone forks by hand from our golden
/// is not the test's (only registry.rs says the cascade takes it); teardown deletes it.
#[test]
fn a_machine_forked_by_hand_from_our_golden_survives_teardown() {
    let _serial = serial();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("log.jsonl");
    let smolvm = fake_with_log(state.path(), &log, "1.9.2");
    let golden = recipe(Golden::builder(), smolvm.clone()).create().unwrap();
    let gname = golden.name().unwrap().to_string();
    smolvm
        .machine_fork(&gname, "someone-elses", &ForkOptions::default())
        .unwrap();
    drop(golden);
    let left = names(&smolvm);
    let survived = left.iter().any(|n| n == "someone-elses");
    for n in &left {
        let _ = smolvm.machine_delete_cascade(n);
    }
    let _ = smolvm.machine_delete("someone-elses");
    assert!(
        survived,
        "someone-elses was deleted with our golden; left: {left:?}"
    );
}

/// What held: `Golden::shared` from eight threads of one process provisions once.
#[test]
fn shared_from_eight_threads_provisions_once() {
    let smolvm = Smolvm::simulated();
    let provisions = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (smolvm, provisions) = (smolvm.clone(), Arc::clone(&provisions));
            std::thread::spawn(move || {
                let golden = Golden::shared("eight-threads", move |g| {
                    g.smolvm(smolvm).image("alpine").net().provision(move |_| {
                        provisions.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
                .unwrap();
                golden.name().unwrap().to_string()
            })
        })
        .collect();
    let names: HashSet<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(names.len(), 1);
    assert_eq!(provisions.load(Ordering::SeqCst), 1);
}
