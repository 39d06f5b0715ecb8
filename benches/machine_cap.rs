//! Machine cap: `SMOLVM_HARNESS_MAX_MACHINES=3` with 16 parallel tests (the generated suite's
//! `tests/cap.rs`) under `cargo test` threads and `cargo nextest` processes: the highest
//! `machines` count in the fake's log must never exceed 3. Then, with a cap of 1, a process
//! SIGKILLed while holding the only slot must not hold it forever: a waiting process gets
//! the slot right after the kill.
//!
//! Run: `cargo bench --bench machine_cap` (or scripts/bench.sh).

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    count_op, figure, fmt_num, max_machines, ms, report, results, run_suite, self_command,
    suite_crate, FakeEnv, Goal, SuiteRunner, CAP_TESTS, TEST_MS,
};
use smolvm_harness::Machine;

const CAP: usize = 3;

fn main() {
    match common::child_role().as_deref() {
        Some("hold") => return hold(),
        Some("wait") => return wait(),
        Some(other) => panic!("unknown BENCH_ROLE {other}"),
        None => {}
    }
    if !common::bench_mode("machine_cap") {
        return;
    }
    let default_cap = smolvm_harness::config::Config::from_lookup(|_| None)
        .expect("the defaults are valid")
        .machine_cap();
    figure(
        "cap.default",
        default_cap as f64,
        "",
        Goal::None,
        "the cap without SMOLVM_HARNESS_MAX_MACHINES on this machine (from CPUs and memory)",
    );
    cap_under_load();
    killed_holder();
}

fn cap_under_load() {
    let (dir, target) = suite_crate();
    let parallel = 16;
    for runner in [SuiteRunner::CargoTest, SuiteRunner::Nextest] {
        if runner == SuiteRunner::Nextest && !common::nextest_available() {
            figure(
                "cap.nextest",
                0.0,
                "",
                Goal::None,
                "NOT MEASURED: no cargo-nextest",
            );
            continue;
        }
        let run = run_suite(&dir, &target, "cap", runner, parallel, CAP, &[]);
        assert_eq!(run.passed, CAP_TESTS, "every generated test must pass");
        let ideal = CAP_TESTS.div_ceil(CAP) as f64 * TEST_MS;
        figure(
            &format!("cap.{}.max_machines", runner.label()),
            max_machines(&run.log) as f64,
            "",
            Goal::AtMost(CAP as f64),
            &format!(
                "SMOLVM_HARNESS_MAX_MACHINES={CAP}, {CAP_TESTS} tests under {} with {parallel} \
                 {}: highest `machines` in {} fake log lines ({} creates, all deleted: {}); \
                 run {} ms vs ideal ceil({CAP_TESTS}/{CAP}) x {} = {} ms",
                runner.label(),
                match runner {
                    SuiteRunner::CargoTest => "threads",
                    SuiteRunner::Nextest => "processes",
                },
                run.log.len(),
                count_op(&run.log, "machine create"),
                run.log.last().is_some_and(|l| l.machines == 0),
                fmt_num(ms(run.inner)),
                fmt_num(TEST_MS),
                fmt_num(ideal),
            ),
        );
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Child: take the only slot (start a machine), say so, then wait to be killed.
fn hold() {
    let vm = Machine::builder()
        .image("alpine")
        .net()
        .test_name("holder")
        .start()
        .expect("holder: start a machine");
    println!("HOLDING {}", vm.name());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Child: block for the slot, then report when the machine was created.
fn wait() {
    let vm = Machine::builder()
        .image("alpine")
        .net()
        .test_name("waiter")
        .create()
        .expect("waiter: create a machine");
    report("created_us", now_us());
    drop(vm);
}

fn killed_holder() {
    let fake = FakeEnv::new("cap-kill", "");
    let vars = fake.process_vars(Some(1));
    let mut holder = self_command("hold")
        .envs(vars.clone())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the holder");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("holder stdout"))
        .read_line(&mut line)
        .expect("read the holder");
    let held = line
        .strip_prefix("HOLDING ")
        .map(|n| n.trim().to_string())
        .unwrap_or_else(|| panic!("holder did not start: {line:?} {}", stderr_of(&mut holder)));

    let mut waiter = self_command("wait")
        .envs(vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the waiter");
    let (tx, rx) = mpsc::channel();
    let mut out = waiter.stdout.take().expect("waiter stdout");
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    // While the holder lives, the waiter must not get the slot.
    let blocked_for = Duration::from_secs(1);
    std::thread::sleep(blocked_for);
    let blocked = waiter.try_wait().expect("poll the waiter").is_none() && rx.try_recv().is_err();

    let kill_us = now_us();
    let killed_at = Instant::now();
    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    let limit = Duration::from_secs(30);
    let got = rx.recv_timeout(limit);
    let _ = waiter.wait();
    let (acquired_ms, detail) = match got {
        Ok(buf) => {
            let r = results(&buf);
            let created_us: u64 = r
                .iter()
                .find(|(k, _)| k == "created_us")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("waiter reported nothing: {}", stderr_of(&mut waiter)));
            (
                created_us.saturating_sub(kill_us) as f64 / 1e3,
                String::new(),
            )
        }
        Err(_) => {
            let _ = waiter.kill();
            (
                ms(killed_at.elapsed()),
                format!("; NOT acquired within {limit:?}"),
            )
        }
    };
    // The killed holder's machine: reclaimed by its crash watcher (a copy of the bench binary).
    let reclaimed = wait_for_delete(&fake, &held, Duration::from_secs(10))
        .map(|t| {
            format!(
                "{} ms after the kill",
                fmt_num(t.saturating_sub(kill_us) as f64 / 1e3)
            )
        })
        .unwrap_or_else(|| "not within 10 s".into());
    figure(
        "cap.killed_holder.time_to_acquire",
        acquired_ms,
        "ms",
        Goal::AtMost(1000.0),
        &format!(
            "SMOLVM_HARNESS_MAX_MACHINES=1: a process holding the only slot is SIGKILLed; a \
             waiting process (blocked for {:?} before the kill: {blocked}) had created its \
             machine this long after the kill (slot wait + one `machine create`, no latency); \
             the dead holder's machine was deleted by its crash watcher {reclaimed}{detail}",
            blocked_for
        ),
    );
    assert!(blocked, "the waiter got a slot while the holder was alive");
}

/// When the fake logged the delete of `name`, waiting up to `limit`.
fn wait_for_delete(fake: &FakeEnv, name: &str, limit: Duration) -> Option<u64> {
    let until = Instant::now() + limit;
    loop {
        let found = fake
            .log()
            .into_iter()
            .find(|l| l.op() == "machine delete" && l.argv.iter().any(|a| a == name));
        if let Some(l) = found {
            return Some(l.t_us);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}
