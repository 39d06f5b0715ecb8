//! The harness's own cost: peak memory (VmHWM) of a process holding 64 live machines, next to
//! a process making the same calls with bare `Command`s; and the time of the startup sweep
//! (`smolvm_harness::sweep`) when `machine ls --json` lists 1,000 machines that are not ours.
//!
//! Run: `cargo bench --bench harness_cost` (or scripts/bench.sh).

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{
    figure, fmt_num, median, ms, proc_status_kib, proc_status_kib_of, report, result_f64, results,
    run_ok, self_command, time, us, FakeEnv, Goal,
};
use smolvm_harness::{Machine, Smolvm};

const LIVE: usize = 64;
const FOREIGN: usize = 1000;
const SWEEP_ROUNDS: usize = 5;

fn main() {
    match common::child_role().as_deref() {
        Some("rss") => return rss_harness(),
        Some("rss_bare") => return rss_bare(),
        Some("leak") => return leak(),
        Some("sweep") => return sweep_child(),
        Some("first") => return first_machine(),
        Some(other) => panic!("unknown BENCH_ROLE {other}"),
        None => {}
    }
    if !common::bench_mode("harness_cost") {
        return;
    }
    peak_memory();
    first_machine_cost();
    sweep_cost();
}

// ---------------------------------------------------------------------------------------
// What a test process pays once, before its first machine
// ---------------------------------------------------------------------------------------

const FIRST_ROUNDS: usize = 7;

fn first_machine_cost() {
    // Each test process pays once, before its first machine. The first process of a user and
    // state directory also starts the shared crash watcher; later ones (every other test
    // process of a nextest run) only connect to it. Both are measured: fresh state
    // directories for the first, one shared state directory for the later ones.
    let measure = |fake: &FakeEnv| {
        let out = run_ok(
            self_command("first").envs(fake.process_vars(None)),
            "first child",
        );
        let r = results(&out.stdout);
        (result_f64(&r, "first_ms"), result_f64(&r, "later_ms"))
    };
    let (mut starting, mut laters) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (first, later) = measure(&FakeEnv::new("first", ""));
        starting.push(first);
        laters.push(later);
    }
    let shared = FakeEnv::new("first-shared", "");
    measure(&shared);
    let mut joining = Vec::new();
    for _ in 0..5 {
        let (first, later) = measure(&shared);
        joining.push(first);
        laters.push(later);
    }
    let (s, j, l) = (
        median(&mut starting),
        median(&mut joining),
        median(&mut laters),
    );
    figure(
        "cost.first_machine_setup",
        j - l,
        "ms",
        Goal::None,
        &format!(
            "once per test process (so once per test under nextest), with the user's crash \
             watcher already running: the first Machine create+start+drop in a fresh process \
             took {} ms, later ones {} ms (medians of 5 processes, fake without latency); the \
             difference is `--version` (cached on disk), the startup sweep, connecting to the \
             shared crash watcher, the signal thread and the ledger directory",
            fmt_num(j),
            fmt_num(l)
        ),
    );
    figure(
        "cost.first_machine_setup.starting_the_watcher",
        s - l,
        "ms",
        Goal::None,
        &format!(
            "the same for the first test process of a user and state directory, which also \
             starts the crash watcher and waits until it listens: first machine {} ms, later \
             ones {} ms (medians of 5 fresh state directories)",
            fmt_num(s),
            fmt_num(l)
        ),
    );
}

/// Child: time the first and the later machines of this process.
fn first_machine() {
    let mut times = Vec::new();
    for _ in 0..FIRST_ROUNDS {
        let ((), took) = time(|| {
            let vm = Machine::builder()
                .image("alpine")
                .net()
                .test_name("first")
                .start()
                .expect("start a machine");
            drop(vm);
        });
        times.push(ms(took));
    }
    let first = times.remove(0);
    report("first_ms", first);
    report("later_ms", median(&mut times));
}

// ---------------------------------------------------------------------------------------
// Peak memory
// ---------------------------------------------------------------------------------------

fn peak_memory() {
    let fake = FakeEnv::new("rss", "");
    let vars = fake.process_vars(Some(LIVE));
    let out = run_ok(self_command("rss").envs(vars.clone()), "rss child");
    let h = results(&out.stdout);
    let fake_bare = FakeEnv::new("rss-bare", "");
    let out = run_ok(
        self_command("rss_bare").envs(fake_bare.process_vars(Some(LIVE))),
        "rss_bare child",
    );
    let b = results(&out.stdout);
    let kib = |r: &[(String, String)], k: &str| result_f64(r, k);
    let mib = |k: f64| k / 1024.0;
    figure(
        "cost.rss.peak_64_machines",
        mib(kib(&h, "hwm_kib")),
        "MiB",
        Goal::None,
        &format!(
            "VmHWM of a process holding {LIVE} live Machine guards (create+start each through \
             the harness, fake smolvm): {} MiB at process start, {} MiB with {LIVE} live \
             (VmRSS then {} MiB); the same {LIVE} create+start with bare Command: VmHWM {} MiB \
             (start {} MiB). The crash watcher is a separate process, one per user and state directory: VmRSS {} MiB",
            fmt_num(mib(kib(&h, "start_hwm_kib"))),
            fmt_num(mib(kib(&h, "hwm_kib"))),
            fmt_num(mib(kib(&h, "rss_kib"))),
            fmt_num(mib(kib(&b, "hwm_kib"))),
            fmt_num(mib(kib(&b, "start_hwm_kib"))),
            fmt_num(mib(kib(&h, "watcher_rss_kib"))),
        ),
    );
    figure(
        "cost.rss.delta_vs_bare",
        mib(kib(&h, "hwm_kib") - kib(&b, "hwm_kib")),
        "MiB",
        Goal::None,
        &format!("VmHWM with {LIVE} live machines, harness process minus bare-Command process"),
    );
}

/// Child: hold 64 machines, report VmHWM.
fn rss_harness() {
    let start_hwm = proc_status_kib("VmHWM").expect("VmHWM in /proc/self/status");
    let vms: Vec<Machine> = (0..LIVE)
        .map(|_| {
            Machine::builder()
                .image("alpine")
                .net()
                .test_name("rss")
                .start()
                .expect("start a machine")
        })
        .collect();
    report("start_hwm_kib", start_hwm);
    report("hwm_kib", proc_status_kib("VmHWM").expect("VmHWM"));
    report("rss_kib", proc_status_kib("VmRSS").expect("VmRSS"));
    report("watcher_rss_kib", watcher_rss_kib().unwrap_or(0));
    drop(vms);
}

/// Child: the same calls with bare `Command::output()`.
fn rss_bare() {
    let start_hwm = proc_status_kib("VmHWM").expect("VmHWM in /proc/self/status");
    let bin = common::fake_bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn the fake");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let names: Vec<String> = (0..LIVE).map(|i| format!("bare-{i:03}")).collect();
    for n in &names {
        run(&[
            "machine", "create", "--name", n, "--image", "alpine", "--net",
        ]);
        run(&["machine", "start", "--name", n]);
    }
    report("start_hwm_kib", start_hwm);
    report("hwm_kib", proc_status_kib("VmHWM").expect("VmHWM"));
    for n in &names {
        run(&["machine", "delete", "-f", "--name", n]);
    }
}

/// VmRSS of the crash watcher serving this process: the process started with the crate's
/// private serve variable (one per user, state directory and pid namespace, so whichever
/// test process started it).
fn watcher_rss_kib() -> Option<u64> {
    let state = std::env::var("SMOLVM_HARNESS_STATE_DIR").ok()?;
    let needle = format!("SMOLVM_HARNESS_WATCHER_SERVE_PRIVATE={state}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(needle.as_bytes()))
        {
            return proc_status_kib_of(&pid, "VmRSS");
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------------

fn sweep_cost() {
    let fake = FakeEnv::new("sweep", "");
    // Two at a time: the fake serialises on its state lock, but spawning overlaps.
    let (_, populate) = time(|| {
        std::thread::scope(|s| {
            for half in 0..2 {
                let fake = &fake;
                s.spawn(move || {
                    for i in (half..FOREIGN).step_by(2) {
                        let n = format!("foreign-{i:04}");
                        fake.bare_ok(&[
                            "machine", "create", "--name", &n, "--image", "alpine", "--net",
                        ]);
                    }
                });
            }
        })
    });
    eprintln!(
        "populated {FOREIGN} foreign machines through the fake CLI in {:.1}s",
        populate.as_secs_f64()
    );
    let vars = fake.process_vars(None);

    // No dead owner in the ledger: the sweep needs no smolvm call at all.
    let out = run_ok(
        self_command("sweep")
            .envs(vars.clone())
            .env("BENCH_SWEEP_REPEAT", "21"),
        "sweep child",
    );
    let r = results(&out.stdout);
    figure(
        "cost.sweep.no_dead_owner",
        result_f64(&r, "sweep_us"),
        "us",
        Goal::None,
        &format!(
            "sweep() with {FOREIGN} foreign machines and no ledger entry of a dead process \
             (every run's startup sweep in the common case): median of 21, {} smolvm calls",
            fmt_num(result_f64(&r, "ls_calls"))
        ),
    );

    // One dead owner: the sweep lists all machines and deletes the dead process's one.
    let mut sweeps = Vec::new();
    let mut deleted = 0.0;
    for _ in 0..SWEEP_ROUNDS {
        let mut leaker = self_command("leak")
            .envs(vars.clone())
            .env("SMOLVM_HARNESS_WATCHER", "off")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the leaking child");
        let mut line = String::new();
        BufReader::new(leaker.stdout.take().expect("leaker stdout"))
            .read_line(&mut line)
            .expect("read the leaker");
        assert!(line.starts_with("LEAKED "), "leaker said {line:?}");
        leaker.kill().expect("SIGKILL the leaker");
        let _ = leaker.wait();
        let out = run_ok(self_command("sweep").envs(vars.clone()), "sweep child");
        let r = results(&out.stdout);
        sweeps.push(result_f64(&r, "sweep_us") / 1e3);
        deleted += result_f64(&r, "deleted");
    }
    // What the sweep's calls cost when made bare.
    let mut ls = Vec::new();
    let mut del = Vec::new();
    for i in 0..SWEEP_ROUNDS {
        ls.push(ms(time(|| fake.bare_ok(&["machine", "ls", "--json"])).1));
        let n = format!("dummy-{i}");
        fake.bare_ok(&[
            "machine", "create", "--name", &n, "--image", "alpine", "--net",
        ]);
        del.push(ms(time(|| {
            fake.bare_ok(&["machine", "delete", "-f", "--name", &n])
        })
        .1));
    }
    let (s, l, d) = (median(&mut sweeps), median(&mut ls), median(&mut del));
    figure(
        "cost.sweep.one_dead_owner",
        s,
        "ms",
        Goal::None,
        &format!(
            "sweep() with {FOREIGN} foreign machines plus 1 left by a SIGKILLed test process \
             (watcher off): median of {SWEEP_ROUNDS}, {} deleted in all; bare `machine ls \
             --json` of {} machines {} ms + bare `machine delete` {} ms = {} ms, so the \
             sweep's own work is {} ms",
            fmt_num(deleted),
            FOREIGN + 1,
            fmt_num(l),
            fmt_num(d),
            fmt_num(l + d),
            fmt_num(s - l - d),
        ),
    );
    figure(
        "cost.sweep.populate_1000",
        populate.as_secs_f64(),
        "s",
        Goal::None,
        "setup only: 1,000 `machine create` through the fake CLI",
    );
}

/// Child: make one machine with the watcher off, say so, wait to be killed.
fn leak() {
    let vm = Machine::builder()
        .image("alpine")
        .net()
        .test_name("leak")
        .start()
        .expect("leak: start a machine");
    println!("LEAKED {}", vm.name());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Child: time `sweep()` (once, or the median of `BENCH_SWEEP_REPEAT`).
fn sweep_child() {
    let smolvm = Smolvm::from_env();
    // The startup sweep runs after `register` has asked the version; so does this one.
    smolvm.version().expect("the fake answers --version");
    let log = std::env::var("SMOLVM_FAKE_LOG").expect("SMOLVM_FAKE_LOG");
    let before = common::read_log(std::path::Path::new(&log)).len();
    let repeat: usize = std::env::var("BENCH_SWEEP_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut times = Vec::new();
    let mut deleted = 0;
    for _ in 0..repeat {
        let (names, took) = time(|| smolvm_harness::sweep(&smolvm).expect("sweep"));
        deleted += names.len();
        times.push(us(took));
    }
    let calls = common::read_log(std::path::Path::new(&log)).len() - before;
    report("sweep_us", median(&mut times));
    report("deleted", deleted);
    report("ls_calls", calls);
}
