//! Call overhead: `Smolvm::machine_create`, `machine_exec` and `machine_delete` against a bare
//! `std::process::Command` running the same fake binary with the same argv and the same
//! process env. Interleaved pairs (which side goes first alternates), median of the per-pair
//! ratios. Two settings: no latency (the fake answers in about a millisecond, so the
//! harness's fixed cost per call shows in full) and the latencies modelled on smolvm.
//!
//! Run: `cargo bench --bench call_overhead` (or scripts/bench.sh).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{figure, fmt_num, median, quantile, time, us, FakeEnv, Goal};
use smolvm_harness::runner::{Invocation, ProcessRunner, Runner};
use smolvm_harness::{CreateOptions, ExecOptions};

const WARMUP: usize = 10;

/// The ops measured, in the order of one round.
const OPS: [&str; 3] = ["create", "exec", "delete"];

fn main() {
    if !common::bench_mode("call_overhead") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_OVERHEAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    phase("nolat", "no latency", "", rounds);
    // `start` is not measured; its latency would only make the run longer.
    phase(
        "modelled",
        "modelled latency",
        "create=50ms,exec=20ms,delete=100ms",
        (rounds / 10).max(20),
    );
}

/// The sides compared, each driving its own machine (named by its letter):
/// h = the crate's `Smolvm` methods, r = `ProcessRunner::run` with the same `Invocation`
/// (the runner alone), w = a spawn with the runner's pipes, reader threads and process group
/// but a blocking `wait()` instead of its sleep-poll loop (a prototype, to locate the cost),
/// b = a bare `Command::output()`.
const SIDES: [char; 4] = ['h', 'r', 'w', 'b'];

fn phase(key: &str, label: &str, latency: &str, rounds: usize) {
    let fake = FakeEnv::new("overhead", latency);
    let smolvm = fake.client();
    // The version is asked once per binary and cached; ask it before timing anything.
    smolvm.version().expect("the fake answers --version");
    let create = CreateOptions::image("alpine").net();
    let exec = ExecOptions::default();

    // samples[op][side] = durations of the measured rounds.
    let mut samples: BTreeMap<&str, BTreeMap<char, Vec<Duration>>> = BTreeMap::new();
    for i in 0..WARMUP + rounds {
        let name = |side: char| format!("{side}{i:05}");
        let argv = |op: &str, side: char| -> Vec<String> {
            let n = name(side);
            let words: Vec<&str> = match op {
                "create" => vec![
                    "machine", "create", "--name", &n, "--image", "alpine", "--net",
                ],
                "start" => vec!["machine", "start", "--name", &n],
                "exec" => vec!["machine", "exec", "--name", &n, "--", "echo", "hi"],
                _ => vec!["machine", "delete", "-f", "--name", &n],
            };
            words.into_iter().map(String::from).collect()
        };
        let run = |op: &str, side: char| match side {
            'h' => {
                let n = name(side);
                match op {
                    "create" => smolvm.machine_create(&n, &create).expect("harness create"),
                    "start" => smolvm.machine_start(&n).expect("harness start"),
                    "exec" => {
                        let out = smolvm
                            .machine_exec(&n, &["echo", "hi"], &exec)
                            .expect("harness exec");
                        assert_eq!(out.stdout(), b"hi\n");
                    }
                    _ => smolvm.machine_delete(&n).expect("harness delete"),
                }
            }
            'r' => {
                let inv = Invocation {
                    program: common::fake_bin(),
                    args: argv(op, side),
                    env: fake.fake_vars(),
                    timeout: Some(smolvm.timeout()),
                };
                let out = ProcessRunner.run(&inv).expect("runner spawn");
                assert_eq!(
                    out.code,
                    Some(0),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            'w' => {
                let code = blocking_wait(&fake, &argv(op, side));
                assert_eq!(code, Some(0));
            }
            _ => {
                let a = argv(op, side);
                let words: Vec<&str> = a.iter().map(String::as_str).collect();
                fake.bare_ok(&words);
            }
        };
        for op in ["create", "start", "exec", "delete"] {
            // Rotate who goes first, so no side always runs on a warmer cache.
            for k in 0..SIDES.len() {
                let side = SIDES[(i + k) % SIDES.len()];
                let ((), took) = time(|| run(op, side));
                if i >= WARMUP && op != "start" {
                    samples
                        .entry(op)
                        .or_default()
                        .entry(side)
                        .or_default()
                        .push(took);
                }
            }
        }
    }

    let same_argv = check_same_argv(&fake);
    for op in OPS {
        let by_side = &samples[op];
        let bare = &by_side[&'b'];
        let ratio_of = |side: char| -> (f64, f64, f64, f64) {
            let mut ratios: Vec<f64> = by_side[&side]
                .iter()
                .zip(bare)
                .map(|(x, b)| x.as_secs_f64() / b.as_secs_f64())
                .collect();
            let r = median(&mut ratios);
            let mut xs: Vec<f64> = by_side[&side].iter().map(|d| us(*d)).collect();
            (
                r,
                quantile(&mut ratios, 0.1),
                quantile(&mut ratios, 0.9),
                median(&mut xs),
            )
        };
        let mut bs: Vec<f64> = bare.iter().map(|d| us(*d)).collect();
        let mb = median(&mut bs);
        let (r, p10, p90, mh) = ratio_of('h');
        let (rr, _, _, mr) = ratio_of('r');
        let (rw, _, _, mw) = ratio_of('w');
        figure(
            &format!("overhead.{key}.{op}.ratio"),
            r,
            "x",
            Goal::AtMost(1.05),
            &format!(
                "{label}: Smolvm::machine_{op} / bare Command, median of {n} interleaved paired \
                 ratios (p10 {p10}, p90 {p90}); medians {mh} us vs {mb} us (+{d} us); argv \
                 identical: {same_argv}",
                n = bare.len(),
                p10 = fmt_num(p10),
                p90 = fmt_num(p90),
                mh = fmt_num(mh),
                mb = fmt_num(mb),
                d = fmt_num(mh - mb),
            ),
        );
        figure(
            &format!("overhead.{key}.{op}.runner_only"),
            rr,
            "x",
            Goal::None,
            &format!(
                "{label}: ProcessRunner::run alone / bare Command ({} us vs {} us)",
                fmt_num(mr),
                fmt_num(mb)
            ),
        );
        figure(
            &format!("overhead.{key}.{op}.blocking_wait"),
            rw,
            "x",
            Goal::None,
            &format!(
                "{label}: prototype (runner's pipes, threads and process group, blocking wait \
                 instead of the sleep-poll loop) / bare Command ({} us vs {} us)",
                fmt_num(mw),
                fmt_num(mb)
            ),
        );
    }
}

/// What `ProcessRunner` does, with `child.wait()` in place of its `try_wait` + sleep loop:
/// shows how much of the overhead that loop is.
fn blocking_wait(fake: &FakeEnv, args: &[String]) -> Option<i32> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(common::fake_bin());
    cmd.args(args)
        .envs(fake.fake_vars())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("spawn the fake");
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = child.wait().expect("wait for the fake");
    let _ = out.join();
    let _ = err.join();
    status.code()
}

/// The fake's log must show the same argv from both sides (names aside), else the comparison
/// would be unfair. Returns "yes" or panics.
fn check_same_argv(fake: &FakeEnv) -> &'static str {
    let mut by_side: BTreeMap<char, Vec<Vec<String>>> = BTreeMap::new();
    let is_name = |a: &str| a.len() == 6 && SIDES.iter().any(|s| a.starts_with(*s));
    for line in fake.log() {
        let Some(side) = line
            .argv
            .iter()
            .find_map(|a| is_name(a).then(|| a.as_bytes()[0] as char))
        else {
            continue; // --version
        };
        let norm = line
            .argv
            .iter()
            .map(|a| {
                if a.len() == 6 && a.starts_with(side) {
                    "NAME".to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        by_side.entry(side).or_default().push(norm);
    }
    let b = by_side.get(&'b').cloned().unwrap_or_default();
    assert!(!b.is_empty(), "the fake logged no bare calls");
    for side in SIDES {
        assert_eq!(
            by_side.get(&side),
            Some(&b),
            "side {side} sent other argv than the bare Command"
        );
    }
    "yes"
}
