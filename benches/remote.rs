//! The remote mode's cost (issue 13): the same operations through the harness over the CLI,
//! the harness over the simulated `smolvm serve` API, and a bare HTTP request of the same
//! route to the same server; interleaved in one run, medians of per-round paired ratios.
//!
//! Sides, each driving its own machines (named by its letter):
//! c = `Smolvm::new(fake)` with the fake's state as process env (the CLI front end),
//! a = `Smolvm::remote("unix://…/api.sock")` of a `smolvm-fake serve` over the same state,
//! h = one request written to that socket with a raw `UnixStream` and read to its end (no
//!     harness: what the server costs by itself),
//! b = a bare `Command` of the fake CLI (the floor of one CLI run, as in call_overhead).
//! The simulated server runs the fake CLI as a child for every CLI step of a route (create is
//! `machine create` + `machine status`), so the API side pays those runs, the HTTP round trip
//! and the server's own work; real `smolvm serve` does the work in process.
//!
//! Then a whole `Machine::builder().start()` + drop (ledger, slot, start, delete, unregister)
//! over either front end.
//!
//! Run: `cargo bench --bench remote` (or scripts/bench.sh remote). Rounds:
//! `BENCH_REMOTE_ROUNDS` (default 200, without latency; a tenth with the modelled latency)
//! and `BENCH_REMOTE_LIFECYCLE_ROUNDS` (default 100; a tenth with the modelled latency).

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{figure, fmt_num, median, quantile, time, us, FakeEnv, Goal, MODELLED_LATENCY};
use smolvm_harness::{CreateOptions, ExecOptions, Machine, Smolvm};

const WARMUP: usize = 10;

/// The ops timed, in the order of one round (an untimed start comes before exec).
const OPS: [&str; 4] = ["create", "exec", "list", "delete"];

/// c = harness over the CLI, a = harness over the API, h = bare HTTP, b = bare `Command`.
const SIDES: [char; 4] = ['c', 'a', 'h', 'b'];

fn main() {
    if !common::bench_mode("remote") {
        return;
    }
    let rounds = env_usize("BENCH_REMOTE_ROUNDS", 200);
    let lifecycle_rounds = env_usize("BENCH_REMOTE_LIFECYCLE_ROUNDS", 100);
    // The harness's ledger, slots and watcher of this run, apart from any other; read once
    // per process, so set before the first machine.
    let home = FakeEnv::new("remote-harness", "");
    std::env::set_var("SMOLVM_HARNESS_STATE_DIR", home.harness_state_dir());

    ops("nolat", "no latency", "", rounds);
    // `start` is not timed in the ops; its latency would only make the run longer.
    ops(
        "modelled",
        "modelled latency",
        "create=50ms,exec=20ms,delete=100ms",
        (rounds / 10).max(15),
    );
    lifecycle("nolat", "no latency", "", lifecycle_rounds);
    lifecycle(
        "modelled",
        "modelled latency",
        MODELLED_LATENCY,
        (lifecycle_rounds / 10).max(8),
    );
    drop(home);
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Create, start (untimed), exec, list and delete on every side, the order of the sides
/// rotating from round to round.
fn ops(key: &str, label: &str, latency: &str, rounds: usize) {
    let fake = FakeEnv::new("remote-ops", latency);
    let server = Server::start(&fake);
    let cli = fake.client();
    let api = Smolvm::remote(&server.url).expect("a remote client of the simulated server");
    // Each client asks the version once and caches it: not timed.
    cli.version().expect("the fake answers --version");
    api.version().expect("the server answers /health");
    let create = CreateOptions::image("alpine").net();
    let exec = ExecOptions::default();

    let mut samples: BTreeMap<&str, BTreeMap<char, Vec<Duration>>> = BTreeMap::new();
    let mut listed = BTreeMap::new();
    let mut runs: BTreeMap<(char, &str), BTreeMap<String, usize>> = BTreeMap::new();
    let mut log = LogTail::new(&fake);
    for i in 0..WARMUP + rounds {
        let name = |side: char| format!("{side}{i:05}");
        let run = |op: &str, side: char| -> usize {
            let n = name(side);
            match (side, op) {
                ('c', "create") => cli.machine_create(&n, &create).expect("cli create"),
                ('a', "create") => api.machine_create(&n, &create).expect("api create"),
                ('c', "start") => cli.machine_start(&n).expect("cli start"),
                ('a', "start") => api.machine_start(&n).expect("api start"),
                ('c', "exec") | ('a', "exec") => {
                    let s = if side == 'c' { &cli } else { &api };
                    let out = s.machine_exec(&n, &["echo", "hi"], &exec).expect("exec");
                    assert_eq!(out.stdout(), b"hi\n");
                }
                ('c', "list") | ('a', "list") => {
                    let s = if side == 'c' { &cli } else { &api };
                    return s.machine_list().expect("list").len();
                }
                ('c', _) => cli.machine_delete(&n).expect("cli delete"),
                ('a', _) => api.machine_delete(&n).expect("api delete"),
                ('h', "look") => {
                    server.bare("GET", &format!("/api/v1/machines/{n}"), None);
                }
                (_, "look") => {}
                ('h', op) => {
                    let (method, path, body) = route(op, &n);
                    let answer = server.bare(method, &path, body.as_deref());
                    if op == "exec" {
                        assert!(answer.contains("\"stdout\":\"hi\\n\""), "{answer}");
                    }
                }
                (_, op) => {
                    let args = argv(op, &n);
                    let words: Vec<&str> = args.iter().map(String::as_str).collect();
                    fake.bare_ok(&words);
                }
            }
            0
        };
        for op in ["create", "start", "look", "exec", "list", "delete"] {
            for k in 0..SIDES.len() {
                let side = SIDES[(i + k) % SIDES.len()];
                if op == "look" && side != 'h' {
                    continue;
                }
                let (n, took) = time(|| run(op, side));
                // Outside the timing: which fake CLI runs this call made.
                for logged in log.take() {
                    if i >= WARMUP {
                        *runs
                            .entry((side, op))
                            .or_default()
                            .entry(logged)
                            .or_default() += 1;
                    }
                }
                if op == "list" && side != 'h' && side != 'b' {
                    listed.insert(side, n);
                }
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
    assert_eq!(
        listed.get(&'c'),
        listed.get(&'a'),
        "both front ends list the same state"
    );
    drop(server);

    for op in OPS {
        let by = &samples[op];
        let med = |side: char| {
            let mut xs: Vec<f64> = by[&side].iter().map(|d| us(*d)).collect();
            median(&mut xs)
        };
        let ratio = |x: char, y: char| {
            let mut r: Vec<f64> = by[&x]
                .iter()
                .zip(&by[&y])
                .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
                .collect();
            (median(&mut r), quantile(&mut r, 0.1), quantile(&mut r, 0.9))
        };
        let (mc, ma, mh, mb) = (med('c'), med('a'), med('h'), med('b'));
        let n = by[&'b'].len();
        let runs_of = |side: char| {
            runs.get(&(side, op))
                .map(|r| runs_text(r, n))
                .unwrap_or_else(|| "0".into())
        };
        let (r, p10, p90) = ratio('a', 'h');
        figure(
            &format!("remote.{key}.{op}.api_over_http"),
            r,
            "x",
            Goal::None,
            &format!(
                "{label}: harness over the API / bare HTTP request of the same route, median \
                 of {n} interleaved paired ratios (p10 {}, p90 {}); medians {} us vs {} us \
                 ({} us); fake CLI runs per call: harness {}, bare {}",
                fmt_num(p10),
                fmt_num(p90),
                fmt_num(ma),
                fmt_num(mh),
                signed(ma - mh),
                runs_of('a'),
                runs_of('h'),
            ),
        );
        if op == "exec" {
            // The harness looks at the machine's state before exec (the API would boot a
            // stopped machine; the CLI refuses): the same two requests, bare.
            let mut r: Vec<f64> = by[&'a']
                .iter()
                .zip(by[&'h'].iter().zip(&samples["look"][&'h']))
                .map(|(a, (e, l))| a.as_secs_f64() / (*e + *l).as_secs_f64())
                .collect();
            let mut sums: Vec<f64> = by[&'h']
                .iter()
                .zip(&samples["look"][&'h'])
                .map(|(e, l)| us(*e + *l))
                .collect();
            let m2 = median(&mut sums);
            figure(
                &format!("remote.{key}.exec.api_over_http_with_look"),
                median(&mut r),
                "x",
                Goal::None,
                &format!(
                    "{label}: harness exec over the API / the same two bare requests (GET the \
                     machine, then POST exec), p10 {}, p90 {}; medians {} us vs {} us ({} us)",
                    fmt_num(quantile(&mut r, 0.1)),
                    fmt_num(quantile(&mut r, 0.9)),
                    fmt_num(ma),
                    fmt_num(m2),
                    signed(ma - m2),
                ),
            );
        }
        let (r, p10, p90) = ratio('a', 'c');
        figure(
            &format!("remote.{key}.{op}.api_over_cli"),
            r,
            "x",
            Goal::None,
            &format!(
                "{label}: harness over the API / harness over the CLI (p10 {}, p90 {}); \
                 medians {} us vs {} us ({} us); fake CLI runs per call: {} vs {}",
                fmt_num(p10),
                fmt_num(p90),
                fmt_num(ma),
                fmt_num(mc),
                signed(ma - mc),
                runs_of('a'),
                runs_of('c'),
            ),
        );
        let (r, _, _) = ratio('h', 'b');
        figure(
            &format!("remote.{key}.{op}.http_over_cmd"),
            r,
            "x",
            Goal::None,
            &format!(
                "{label}: bare HTTP request / bare Command of the fake CLI: what the simulated \
                 server adds ({} us vs {} us; fake CLI runs per call: {} vs {})",
                fmt_num(mh),
                fmt_num(mb),
                runs_of('h'),
                runs_of('b'),
            ),
        );
        let (r, _, _) = ratio('c', 'b');
        figure(
            &format!("remote.{key}.{op}.cli_over_cmd"),
            r,
            "x",
            Goal::None,
            &format!(
                "{label}: harness over the CLI / bare Command (call_overhead's figure, for \
                 reference; {} us vs {} us)",
                fmt_num(mc),
                fmt_num(mb),
            ),
        );
    }
}

/// `+12.5` or `-3.2`.
fn signed(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", fmt_num(v))
    } else {
        fmt_num(v)
    }
}

/// The API route of `op` on machine `n`, as the harness sends it (same body bytes).
fn route(op: &str, n: &str) -> (&'static str, String, Option<String>) {
    match op {
        "create" => (
            "POST",
            "/api/v1/machines".into(),
            Some(format!(
                r#"{{"image":"alpine","name":"{n}","network":true}}"#
            )),
        ),
        "start" => ("POST", format!("/api/v1/machines/{n}/start"), None),
        "exec" => (
            "POST",
            format!("/api/v1/machines/{n}/exec"),
            Some(r#"{"command":["echo","hi"]}"#.into()),
        ),
        "list" => ("GET", "/api/v1/machines".into(), None),
        _ => ("DELETE", format!("/api/v1/machines/{n}"), None),
    }
}

/// The fake CLI's argv of `op` on machine `n`, as the harness over the CLI sends it.
fn argv(op: &str, n: &str) -> Vec<String> {
    let words: Vec<&str> = match op {
        "create" => vec![
            "machine", "create", "--name", n, "--image", "alpine", "--net",
        ],
        "start" => vec!["machine", "start", "--name", n],
        "exec" => vec!["machine", "exec", "--name", n, "--", "echo", "hi"],
        "list" => vec!["machine", "ls", "--json"],
        _ => vec!["machine", "delete", "-f", "--name", n],
    };
    words.into_iter().map(String::from).collect()
}

/// The fake CLI runs logged since the last look (the server's children log too: they
/// inherit `SMOLVM_FAKE_LOG`, and have exited before the server answers).
struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    fn new(fake: &FakeEnv) -> LogTail {
        LogTail {
            path: fake.log_path(),
            offset: 0,
        }
    }

    /// `create`, `status`, `ls`…: the op of every run logged since the last call.
    fn take(&mut self) -> Vec<String> {
        use std::io::{Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        f.seek(SeekFrom::Start(self.offset))
            .expect("seek the fake's log");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read the fake's log");
        // Only whole lines; a partial one is read next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        text[..whole]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a fake log line");
                let argv: Vec<&str> = v["argv"]
                    .as_array()
                    .expect("argv")
                    .iter()
                    .filter_map(|a| a.as_str())
                    .collect();
                match argv.first() {
                    Some(&"machine") => argv.get(1).copied().unwrap_or("").to_string(),
                    Some(w) => w.to_string(),
                    None => String::new(),
                }
            })
            .collect()
    }
}

/// "2 (create + status)": fake CLI runs per call, from the ops logged over `calls` calls.
fn runs_text(ops: &BTreeMap<String, usize>, calls: usize) -> String {
    let total: usize = ops.values().sum();
    let per = |n: usize| fmt_num(n as f64 / calls.max(1) as f64);
    let parts: Vec<String> = ops
        .iter()
        .map(|(o, n)| {
            if *n == calls {
                o.clone()
            } else {
                format!("{o}×{}", per(*n))
            }
        })
        .collect();
    format!("{} ({})", per(total), parts.join(" + "))
}

/// `Machine::builder().image("alpine").net().start()` and its drop, over either front end.
fn lifecycle(key: &str, label: &str, latency: &str, rounds: usize) {
    let fake = FakeEnv::new("remote-life", latency);
    let server = Server::start(&fake);
    let cli = fake.client();
    let api = Smolvm::remote(&server.url).expect("a remote client of the simulated server");
    cli.version().expect("the fake answers --version");
    api.version().expect("the server answers /health");
    let mut times: BTreeMap<char, Vec<Duration>> = BTreeMap::new();
    let mut runs: BTreeMap<char, BTreeMap<String, usize>> = BTreeMap::new();
    let mut log = LogTail::new(&fake);
    // Warm-up: the first machine of the process starts the crash watcher.
    let warmup = WARMUP.min(3);
    for i in 0..warmup + rounds {
        for k in 0..2 {
            let side = ['c', 'a'][(i + k) % 2];
            let client = if side == 'c' { &cli } else { &api };
            let ((), took) = time(|| {
                let vm = Machine::builder()
                    .image("alpine")
                    .net()
                    .test_name("remote_bench")
                    .smolvm(client.clone())
                    .start()
                    .expect("start a machine");
                drop(vm);
            });
            let logged = log.take();
            if i >= warmup {
                times.entry(side).or_default().push(took);
                for op in logged {
                    *runs.entry(side).or_default().entry(op).or_default() += 1;
                }
            }
        }
    }
    let left = cli.machine_list().expect("list what is left");
    assert!(left.is_empty(), "machines left after the drops: {left:?}");
    drop(server);
    let mut ratios: Vec<f64> = times[&'a']
        .iter()
        .zip(&times[&'c'])
        .map(|(a, c)| a.as_secs_f64() / c.as_secs_f64())
        .collect();
    let r = median(&mut ratios);
    let (p10, p90) = (quantile(&mut ratios, 0.1), quantile(&mut ratios, 0.9));
    let med = |side: char| {
        let mut xs: Vec<f64> = times[&side].iter().map(|d| us(*d) / 1e3).collect();
        median(&mut xs)
    };
    let (ma, mc) = (med('a'), med('c'));
    figure(
        &format!("remote.{key}.lifecycle.api_over_cli"),
        r,
        "x",
        Goal::None,
        &format!(
            "{label}: Machine::builder().start() + drop over the API / over the CLI, median of \
             {} interleaved paired ratios (p10 {}, p90 {}); medians {} ms vs {} ms ({} ms); \
             fake CLI runs per machine: {} vs {}",
            ratios.len(),
            fmt_num(p10),
            fmt_num(p90),
            fmt_num(ma),
            fmt_num(mc),
            signed(ma - mc),
            runs.get(&'a').map_or("0".into(), |r| runs_text(r, rounds)),
            runs.get(&'c').map_or("0".into(), |r| runs_text(r, rounds)),
        ),
    );
}

/// `smolvm-fake serve start --listen unix://…` over the fake's state, with the fake's
/// variables (its children inherit them: state, log, latency); SIGTERMed and reaped on drop.
struct Server {
    child: Child,
    socket: PathBuf,
    url: String,
}

impl Server {
    fn start(fake: &FakeEnv) -> Server {
        let socket = fake.root.join("api.sock");
        let mut child = Command::new(common::fake_bin())
            .args(["serve", "start", "--listen"])
            .arg(format!("unix://{}", common::path_str(&socket)))
            .envs(fake.fake_vars())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its "Shutting down server" line at SIGTERM is not a figure.
            .stderr(Stdio::null())
            .spawn()
            .expect("start smolvm-fake serve");
        let url = serve::await_listening(&mut child);
        Server { child, socket, url }
    }

    /// One request as the harness frames it (`Connection: close`, `Content-Length`), the
    /// answer read to the end of the stream; panics unless it is 2xx. Returns the answer.
    fn bare(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let mut s = UnixStream::connect(&self.socket).expect("connect to the server");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: \
             application/json\r\n"
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).expect("write the request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read the answer");
        assert!(
            answer.starts_with("HTTP/1.1 2"),
            "{method} {path}: {answer}"
        );
        answer
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
