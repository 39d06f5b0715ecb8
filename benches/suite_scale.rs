//! Suite scale: a generated downstream crate whose 64 tests each create, start, exec in and
//! delete a machine against the fake smolvm with latencies modelled on smolvm, under
//! `cargo test` threads and `cargo nextest` processes. Wall time against the ideal for the
//! parallelism used: ceil(64 / parallel) × (50 + 250 + 20 + 100 ms), parallel =
//! min(threads, cap). With `Pack::shared`, the fake's log must show exactly one `pack create`
//! for the whole run (and the ideal gains the one 3 s pack).
//!
//! Run: `cargo bench --bench suite_scale` (or scripts/bench.sh). `BENCH_SUITE_PARALLEL=2,8`
//! picks the parallelism levels.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::{
    count_op, figure, fmt_num, machine_lives, max_machines, median, ms, run_suite, suite_crate,
    Goal, SuiteRun, SuiteRunner, PACK_MS, SUITE_TESTS, TEST_MS,
};

fn main() {
    if !common::bench_mode("suite_scale") {
        return;
    }
    let levels: Vec<usize> = std::env::var("BENCH_SUITE_PARALLEL")
        .unwrap_or_else(|_| "2,8".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p| *p > 0)
        .collect();
    let pack_level = levels.iter().copied().max().unwrap_or(8);
    let (dir, target) = suite_crate();
    let only = std::env::var("BENCH_SUITE_RUNNERS").unwrap_or_default();
    let mut runners = vec![SuiteRunner::CargoTest];
    if !common::nextest_available() {
        figure(
            "suite.nextest",
            0.0,
            "",
            Goal::None,
            "NOT MEASURED: `cargo nextest --version` failed (install cargo-nextest)",
        );
    } else {
        runners.push(SuiteRunner::Nextest);
    }
    if !only.is_empty() {
        runners.retain(|r| only.split(',').any(|o| o.trim() == r.label()));
    }
    for &runner in &runners {
        for &p in &levels {
            let floor = run_suite(&dir, &target, "floor", runner, p, p, &[]);
            let run = run_suite(&dir, &target, "image", runner, p, p, &[]);
            let ideal = waves(p) * TEST_MS;
            scale_figure("image", runner, p, &run, ideal, "from an image");
            assert_eq!(floor.passed, SUITE_TESTS, "every floor test must pass");
            let per_test = match (per_test(&run), per_test(&floor)) {
                (Some(h), Some(b)) => format!(
                    "; median time of one test process as nextest reports it: {} ms with the \
                     harness, {} ms bare (+{} ms)",
                    fmt_num(h),
                    fmt_num(b),
                    fmt_num(h - b)
                ),
                _ => String::new(),
            };
            figure(
                &format!("suite.image.{}.p{p}.vs_bare", runner.label()),
                ms(run.inner) / ms(floor.inner),
                "x",
                Goal::None,
                &format!(
                    "the harness's own share: the image suite's time over the bare-Command \
                     floor's; median machine life {} ms vs {} ms bare{per_test}",
                    fmt_num(median_life(&run)),
                    fmt_num(median_life(&floor)),
                ),
            );
            figure(
                &format!("suite.floor.{}.p{p}.ratio", runner.label()),
                ms(floor.inner) / ideal,
                "x",
                Goal::None,
                &format!(
                    "the floor without the harness: the same {SUITE_TESTS} tests making the same \
                     4 calls with bare Command (so: the runner's and the fake's own costs), {} \
                     with {p} {}: {} ms vs ideal {} ms; median machine life {} ms; the harness \
                     suite took {}x this floor",
                    runner.label(),
                    unit_of(runner),
                    fmt_num(ms(floor.inner)),
                    fmt_num(ideal),
                    fmt_num(median_life(&floor)),
                    fmt_num(ms(run.inner) / ms(floor.inner)),
                ),
            );
        }
        if runner == SuiteRunner::Nextest {
            // Where the harness's share goes under nextest: the same suite without the crash
            // watcher (one extra process per test process).
            let p = pack_level;
            let run = run_suite(
                &dir,
                &target,
                "image",
                runner,
                p,
                p,
                &[("SMOLVM_HARNESS_WATCHER", "off")],
            );
            assert_eq!(run.passed, SUITE_TESTS, "every generated test must pass");
            let ideal = waves(p) * TEST_MS;
            figure(
                &format!("suite.image.nextest.p{p}.no_watcher"),
                ms(run.inner) / ideal,
                "x",
                Goal::None,
                &format!(
                    "diagnosis only: the image suite under nextest with {p} processes and \
                     SMOLVM_HARNESS_WATCHER=off: {} ms vs ideal {} ms",
                    fmt_num(ms(run.inner)),
                    fmt_num(ideal)
                ),
            );
        }
        let p = pack_level;
        let run = run_suite(&dir, &target, "pack", runner, p, p, &[]);
        let ideal = PACK_MS + waves(p) * TEST_MS;
        scale_figure(
            "pack",
            runner,
            p,
            &run,
            ideal,
            "from Pack::shared (ideal includes one pack)",
        );
        let packs = count_op(&run.log, "pack create");
        figure(
            &format!("suite.pack.{}.pack_creates", runner.label()),
            packs as f64,
            "",
            Goal::Exactly(1.0),
            &format!(
                "`pack create` lines in the fake's log for one run of {SUITE_TESTS} tests from \
                 Pack::shared, {} with {p} {}",
                runner.label(),
                unit_of(runner)
            ),
        );
    }
}

/// ceil(64 / p): how many rounds of p tests the suite needs at best.
fn waves(p: usize) -> f64 {
    SUITE_TESTS.div_ceil(p) as f64
}

fn unit_of(runner: SuiteRunner) -> &'static str {
    match runner {
        SuiteRunner::CargoTest => "threads",
        SuiteRunner::Nextest => "processes",
    }
}

fn scale_figure(
    test: &str,
    runner: SuiteRunner,
    p: usize,
    run: &SuiteRun,
    ideal_ms: f64,
    what: &str,
) {
    assert_eq!(run.passed, SUITE_TESTS, "every generated test must pass");
    let inner = ms(run.inner);
    let span = fake_span(run);
    let mut lives = machine_lives(&run.log, 50.0);
    let life = if lives.is_empty() {
        0.0
    } else {
        median(&mut lives)
    };
    figure(
        &format!("suite.{test}.{}.p{p}.ratio", runner.label()),
        inner / ideal_ms,
        "x",
        Goal::AtMost(1.15),
        &format!(
            "{SUITE_TESTS} tests {what}, {} with {p} {} and cap {p}: runner-reported {} ms vs \
             ideal {} ms; whole command (cargo included) {} ms = {}x; fake busy from first to \
             last call {} ms; {} machine creates, {} `--version` calls; max {} machines at once; \
             median machine life (create start to delete end) {} ms vs {} ms of latency",
            runner.label(),
            unit_of(runner),
            fmt_num(inner),
            fmt_num(ideal_ms),
            fmt_num(ms(run.outer)),
            fmt_num(ms(run.outer) / ideal_ms),
            fmt_num(span),
            count_op(&run.log, "machine create"),
            count_op(&run.log, "--version"),
            max_machines(&run.log),
            fmt_num(life),
            fmt_num(TEST_MS),
        ),
    );
}

/// Median time from the start of a machine's create to the end of its delete, in ms.
fn median_life(run: &SuiteRun) -> f64 {
    let mut lives = machine_lives(&run.log, 50.0);
    if lives.is_empty() {
        0.0
    } else {
        median(&mut lives)
    }
}

/// Median per-test time (nextest only).
fn per_test(run: &SuiteRun) -> Option<f64> {
    let mut v = run.per_test_ms.clone();
    (!v.is_empty()).then(|| median(&mut v))
}

/// First to last logged fake call, in ms.
fn fake_span(run: &SuiteRun) -> f64 {
    let first = run.log.iter().map(|l| l.t_us).min().unwrap_or(0);
    let last = run.log.iter().map(|l| l.t_us).max().unwrap_or(0);
    ms(Duration::from_micros(last.saturating_sub(first)))
}
