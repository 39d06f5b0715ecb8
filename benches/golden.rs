//! Golden machines (issue #12): how long until a test's machine is ready, a clone of a
//! provisioned golden against the cold path (create, start, provision), and a 64-test suite
//! from one `Golden::shared` under `cargo test` and nextest, against the fake smolvm with
//! latencies modelled on smolvm (fork 0.2 s, upstream's figure for a small golden) and a 5 s
//! provisioning step (`sleep 5` in the guest).
//!
//! Run: `cargo bench --bench golden` (or scripts/bench.sh golden).

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use common::{
    count_op, figure, fmt_num, median, ms, nextest_available, run_suite, suite_crate, FakeEnv,
    Goal, SuiteRunner, FORK_MS, MODELLED_LATENCY, PROVISION_MS, SUITE_TESTS,
};
use smolvm_harness::{Golden, Machine};

const CREATE_MS: f64 = 50.0;
const START_MS: f64 = 250.0;
const EXEC_MS: f64 = 20.0;
const DELETE_MS: f64 = 100.0;
const PARALLEL: usize = 8;

fn main() {
    if !common::bench_mode("golden") {
        return;
    }
    time_to_ready();
    suite();
}

/// Time until a test's machine is ready: cold (create, start, provision) against a clone.
fn time_to_ready() {
    let fake = FakeEnv::new("golden-ready", MODELLED_LATENCY);
    let smolvm = fake.client();
    let mut cold = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let vm = Machine::builder()
            .smolvm(smolvm.clone())
            .image("alpine")
            .net()
            .start()
            .expect("cold start");
        vm.sh("sleep 5").expect("provision").assert_success();
        cold.push(ms(t.elapsed()));
        drop(vm);
    }
    let t = Instant::now();
    let golden = Golden::builder()
        .smolvm(smolvm.clone())
        .image("alpine")
        .net()
        .provision(|m| m.sh("sleep 5")?.check())
        .create()
        .expect("golden");
    let setup = ms(t.elapsed());
    assert!(golden.forks(), "the fake at 1.9.2 forks");
    let mut clones = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let vm = golden.fork().expect("fork");
        clones.push(ms(t.elapsed()));
        drop(vm);
    }
    let (cold_ms, clone_ms) = (median(&mut cold), median(&mut clones));
    figure(
        "golden.ready.clone_vs_cold",
        clone_ms / cold_ms,
        "x",
        Goal::AtMost(0.1),
        &format!(
            "time until a test's machine is ready: a clone {} ms (median of 7; fork modelled at \
             {FORK_MS} ms) vs cold create+start+provision {} ms (median of 3; provisioning \
             {PROVISION_MS} ms); golden setup once {} ms",
            fmt_num(clone_ms),
            fmt_num(cold_ms),
            fmt_num(setup)
        ),
    );
}

/// 64 tests, each a clone of one shared golden, 8 at a time.
fn suite() {
    let (dir, target) = suite_crate();
    let mut runners = vec![SuiteRunner::CargoTest];
    if nextest_available() {
        runners.push(SuiteRunner::Nextest);
    } else {
        figure(
            "golden.suite.nextest",
            0.0,
            "",
            Goal::None,
            "NOT MEASURED: `cargo nextest --version` failed (install cargo-nextest)",
        );
    }
    // The golden: create, start, provision, and the smoke fork the harness makes and deletes.
    let setup = CREATE_MS + START_MS + PROVISION_MS + FORK_MS + DELETE_MS;
    let per_test = FORK_MS + EXEC_MS + DELETE_MS;
    let ideal = setup + SUITE_TESTS.div_ceil(PARALLEL) as f64 * per_test;
    for runner in runners {
        let run_id = format!("golden-bench-{}-{}", runner.label(), std::process::id());
        let run = run_suite(
            &dir,
            &target,
            "golden",
            runner,
            PARALLEL,
            PARALLEL,
            &[("SMOLVM_HARNESS_RUN_ID", run_id.as_str())],
        );
        assert_eq!(run.passed, SUITE_TESTS, "every generated test must pass");
        let goldens = run
            .log
            .iter()
            .filter(|l| l.code == 0 && l.argv.iter().any(|a| a == "--forkable"))
            .count();
        let forks = count_op(&run.log, "machine fork");
        figure(
            &format!("golden.suite.{}.p{PARALLEL}.ratio", runner.label()),
            ms(run.inner) / ideal,
            "x",
            Goal::AtMost(1.15),
            &format!(
                "{SUITE_TESTS} tests, each a clone of one Golden::shared, {} with {PARALLEL} at \
                 once: {} ms vs ideal {} ms (golden setup {setup} ms + {} waves × {per_test} \
                 ms); {forks} forks",
                runner.label(),
                fmt_num(ms(run.inner)),
                fmt_num(ideal),
                SUITE_TESTS.div_ceil(PARALLEL)
            ),
        );
        figure(
            &format!("golden.suite.{}.goldens", runner.label()),
            goldens as f64,
            "",
            Goal::Exactly(1.0),
            "goldens made in the whole run (successful `machine start --forkable` in the fake's log)",
        );
    }
}
