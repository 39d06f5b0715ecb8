//! Shared by the benches: the fake smolvm and its log, the figures file, small statistics,
//! child-process roles and the generated test-suite crate.
//!
//! Every bench is `harness = false` and runs only under `cargo bench` (which passes
//! `--bench`): `cargo test --all-targets` builds them but they return at once, so no timing
//! ever runs as a test.

// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use smolvm_harness::Smolvm;

/// Latencies modelled on smolvm (issue #5); `fork` at 0.2 s, upstream's figure for a small
/// golden (issue #12).
pub const MODELLED_LATENCY: &str =
    "create=50ms,start=250ms,exec=20ms,delete=100ms,pack=3s,fork=200ms";
/// `machine fork` at [`MODELLED_LATENCY`], in ms.
pub const FORK_MS: f64 = 200.0;
/// A golden's provisioning step in the golden benches (`sleep 5` in the guest), in ms.
pub const PROVISION_MS: f64 = 5000.0;
/// create + start + exec + delete of one test at [`MODELLED_LATENCY`], in ms.
pub const TEST_MS: f64 = 50.0 + 250.0 + 20.0 + 100.0;
/// `pack create` at [`MODELLED_LATENCY`], in ms.
pub const PACK_MS: f64 = 3000.0;

/// True under `cargo bench` (or `BENCH_FORCE=1`). Under `cargo test --all-targets` the bench
/// binaries run without `--bench`: say so and do nothing.
pub fn bench_mode(name: &str) -> bool {
    let asked = std::env::args().any(|a| a == "--bench")
        || std::env::var("BENCH_FORCE").is_ok_and(|v| v == "1");
    if !asked {
        println!(
            "{name}: a benchmark; run it with `cargo bench --bench {name}` or scripts/bench.sh"
        );
    }
    asked
}

/// The fake smolvm: `SMOLVM_FAKE_BIN`, else the one cargo built next to this bench.
pub fn fake_bin() -> PathBuf {
    match std::env::var_os("SMOLVM_FAKE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_smolvm-fake")),
    }
}

/// The smolvm-harness checkout these benches belong to.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Scratch space outside the repository: generated crates, their target dirs, fake state.
/// `BENCH_SCRATCH`, else `$TMPDIR/downstream-bench`.
pub fn scratch_dir() -> PathBuf {
    let dir = match std::env::var_os("BENCH_SCRATCH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => std::env::temp_dir().join("downstream-bench"),
    };
    fs::create_dir_all(&dir).expect("create the scratch dir (BENCH_SCRATCH)");
    dir
}

/// Where figures are appended, one tab-separated line each: `BENCH_RESULTS`, else
/// `target/tmp/bench-results.tsv`.
fn results_file() -> PathBuf {
    match std::env::var_os("BENCH_RESULTS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-results.tsv"),
    }
}

/// What a figure is held to.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// Context only.
    None,
    /// Met when value <= the bound.
    AtMost(f64),
    /// Met when value == the bound.
    Exactly(f64),
}

/// Print one figure and append it to the results file:
/// `id, value, unit, goal, verdict, detail`.
pub fn figure(id: &str, value: f64, unit: &str, goal: Goal, detail: &str) {
    let (goal_text, verdict) = match goal {
        Goal::None => (String::new(), ""),
        Goal::AtMost(b) => (format!("<= {}", fmt_num(b)), pass(value <= b)),
        Goal::Exactly(b) => (format!("== {}", fmt_num(b)), pass(value == b)),
    };
    let value_text = fmt_num(value);
    println!("FIGURE {id:<40} {value_text:>10} {unit:<6} {goal_text:<8} {verdict:<4} {detail}");
    let line = format!("{id}\t{value_text}\t{unit}\t{goal_text}\t{verdict}\t{detail}\n");
    let path = results_file();
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not append to {}: {e}", path.display());
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISS"
    }
}

/// Four decimals below 10, three below 100, one above; no trailing zeros.
pub fn fmt_num(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    };
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s
    }
}

/// Median; the input is sorted in place.
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of no samples");
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1, nearest rank); the input is sorted in place.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    assert!(!v.is_empty(), "quantile of no samples");
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Run `f`, returning how long it took.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// One isolated world for the fake smolvm and the harness: its own fake state, log and
/// harness state dir (slots, ledger, packs), removed on drop unless `BENCH_KEEP=1`.
pub struct FakeEnv {
    pub root: PathBuf,
    pub latency: String,
}

static ENV_SEQ: AtomicUsize = AtomicUsize::new(0);

impl FakeEnv {
    pub fn new(label: &str, latency: &str) -> FakeEnv {
        let n = ENV_SEQ.fetch_add(1, Ordering::SeqCst);
        let root = scratch_dir()
            .join("runs")
            .join(format!("{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("fake")).expect("create the fake's state dir");
        fs::create_dir_all(root.join("harness")).expect("create the harness state dir");
        FakeEnv {
            root,
            latency: latency.to_string(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("fake")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("fake.log.jsonl")
    }

    pub fn harness_state_dir(&self) -> PathBuf {
        self.root.join("harness")
    }

    /// The fake's own variables (what a `Smolvm` client passes as process env).
    pub fn fake_vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (
                "SMOLVM_FAKE_STATE".to_string(),
                path_str(&self.state_dir()).to_string(),
            ),
            (
                "SMOLVM_FAKE_LOG".to_string(),
                path_str(&self.log_path()).to_string(),
            ),
        ];
        if !self.latency.is_empty() {
            v.push(("SMOLVM_FAKE_LATENCY".to_string(), self.latency.clone()));
        }
        v
    }

    /// Everything a test process needs to drive this fake through `Smolvm::from_env()` with
    /// its own harness state: the fake's variables, `SMOLVM_BIN`, `SMOLVM_HARNESS_STATE_DIR`
    /// and a run id for `Pack::shared` under `cargo test`.
    pub fn process_vars(&self, cap: Option<usize>) -> Vec<(String, String)> {
        let mut v = self.fake_vars();
        v.push(("SMOLVM_BIN".into(), path_str(&fake_bin()).to_string()));
        v.push((
            "SMOLVM_HARNESS_STATE_DIR".into(),
            path_str(&self.harness_state_dir()).to_string(),
        ));
        let run_id = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bench".into());
        v.push(("SMOLVM_HARNESS_RUN_ID".into(), run_id));
        if let Some(cap) = cap {
            v.push(("SMOLVM_HARNESS_MAX_MACHINES".into(), cap.to_string()));
        }
        v
    }

    /// A client of the fake, with the fake's variables as process env.
    pub fn client(&self) -> Smolvm {
        let mut s = Smolvm::new(fake_bin());
        for (k, v) in self.fake_vars() {
            s = s.with_process_env(k, v);
        }
        s
    }

    /// A bare `Command` running the fake with `args` and the same process env as
    /// [`FakeEnv::client`].
    pub fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(fake_bin());
        c.args(args).envs(self.fake_vars()).stdin(Stdio::null());
        c
    }

    /// Run a bare command, panicking unless it exits 0.
    pub fn bare_ok(&self, args: &[&str]) -> Output {
        let out = self.bare(args).output().expect("spawn the fake smolvm");
        assert!(
            out.status.success(),
            "fake smolvm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The fake's log, one entry per invocation, in order.
    pub fn log(&self) -> Vec<LogLine> {
        read_log(&self.log_path())
    }
}

impl Drop for FakeEnv {
    fn drop(&mut self) {
        if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("kept {}", self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("bench paths are UTF-8")
}

/// One line of the fake's `SMOLVM_FAKE_LOG`.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub t_us: u64,
    pub pid: u64,
    pub argv: Vec<String>,
    pub code: i64,
    pub machines: u64,
}

impl LogLine {
    /// `machine create`, `pack create`, `--version`…: the first two words of argv.
    pub fn op(&self) -> String {
        match self.argv.first().map(String::as_str) {
            Some("machine") | Some("pack") => self
                .argv
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            Some(w) => w.to_string(),
            None => String::new(),
        }
    }
}

pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read the fake's log {}: {e}", path.display()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("fake log line is JSON");
            LogLine {
                t_us: v["t_us"].as_u64().expect("t_us"),
                pid: v["pid"].as_u64().expect("pid"),
                argv: v["argv"]
                    .as_array()
                    .expect("argv")
                    .iter()
                    .map(|a| a.as_str().expect("argv word").to_string())
                    .collect(),
                code: v["code"].as_i64().expect("code"),
                machines: v["machines"].as_u64().expect("machines"),
            }
        })
        .collect()
}

/// The role a re-executed bench binary plays (`BENCH_ROLE`), if any.
pub fn child_role() -> Option<String> {
    std::env::var("BENCH_ROLE").ok().filter(|r| !r.is_empty())
}

/// This bench binary again, as a child playing `role`.
pub fn self_command(role: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the running bench binary");
    let mut c = Command::new(exe);
    c.env("BENCH_ROLE", role).stdin(Stdio::null());
    c
}

/// A child reports a value on stdout as `RESULT key value`.
pub fn report(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
    let _ = std::io::stdout().flush();
}

/// The `RESULT key value` lines of a child's stdout.
pub fn results(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("RESULT ")?;
            let (k, v) = rest.split_once(' ')?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

pub fn result_f64(results: &[(String, String)], key: &str) -> f64 {
    results
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("child reported no {key}: {results:?}"))
        .1
        .parse()
        .unwrap_or_else(|e| panic!("child's {key} is not a number: {e}"))
}

/// `VmHWM` / `VmRSS` / … of /proc/self/status, in KiB.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    proc_status_kib_of("self", field)
}

pub fn proc_status_kib_of(pid: &str, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `cargo` as the benches run it: the one that runs us, with a clean slate of the variables
/// that would make a nested build differ (target dir, wrappers, jobserver).
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        c.env_remove(var);
    }
    c.env("CARGO_TERM_COLOR", "never").stdin(Stdio::null());
    c
}

/// Run a command to completion, panicking with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            tail(&out.stdout, 40),
            tail(&out.stderr, 60)
        );
    }
    out
}

pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Write `contents` to `path` only if it differs, so cargo's freshness checks stay fresh.
pub fn write_if_changed(path: &Path, contents: &str) {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create a generated crate's directory");
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------
// The generated suite crate (suite scale and machine cap)
// ---------------------------------------------------------------------------------------

/// Tests in `tests/image.rs` and `tests/pack.rs`.
pub const SUITE_TESTS: usize = 64;
/// Tests in `tests/cap.rs`.
pub const CAP_TESTS: usize = 16;

/// A downstream test crate depending on this checkout by path, generated under the scratch
/// dir: `tests/image.rs` (64 × create+start+exec+delete from an image), `tests/pack.rs` (the
/// same from `Pack::shared`), `tests/cap.rs` (16 of them) and `tests/golden.rs` (64 clones of
/// one `Golden::shared`). Built once, for `cargo test`
/// and `cargo nextest` alike. Returns the crate dir and its target dir.
pub fn suite_crate() -> (PathBuf, PathBuf) {
    let dir = scratch_dir().join("suite");
    let target = scratch_dir().join("suite-target");
    let repo = repo_dir();
    let manifest = format!(
        r#"[package]
name = "smolvm-harness-suite-bench"
version = "0.0.0"
edition = "2021"
publish = false

# Not part of any workspace: generated by smolvm-harness's benches.
[workspace]

[dev-dependencies]
smolvm-harness = {{ path = "{}" }}
"#,
        path_str(&repo)
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest);
    write_if_changed(&dir.join("src/lib.rs"), "//! Generated; only tests.\n");
    if !dir.join("Cargo.lock").exists() {
        // Same versions as the checkout, and no registry round trip.
        if let Err(e) = fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")) {
            eprintln!("no Cargo.lock copied ({e}); cargo will resolve one");
        }
    }
    let body = |n: usize, one: &str| {
        let mut s = String::from(
            "//! Generated by smolvm-harness's benches. Each test: create, start, exec, delete.\n\
             use smolvm_harness::{Machine, Pack};\n\n\
             #[allow(dead_code)]\n\
             fn from_image() {\n    \
                 let vm = Machine::builder().image(\"alpine\").net().start().expect(\"start\");\n    \
                 vm.exec(&[\"echo\", \"hi\"]).expect(\"exec\").assert_success();\n\
             }\n\n\
             #[allow(dead_code)]\n\
             fn from_pack() {\n    \
                 let pack = Pack::shared(\"alpine\").expect(\"pack\");\n    \
                 let vm = Machine::builder().from_pack(&pack).net().start().expect(\"start\");\n    \
                 vm.exec(&[\"echo\", \"hi\"]).expect(\"exec\").assert_success();\n\
             }\n",
        );
        for i in 0..n {
            s.push_str(&format!("\n#[test]\nfn t{i:02}() {{\n    {one}();\n}}\n"));
        }
        s
    };
    write_if_changed(
        &dir.join("tests/image.rs"),
        &body(SUITE_TESTS, "from_image"),
    );
    write_if_changed(&dir.join("tests/pack.rs"), &body(SUITE_TESTS, "from_pack"));
    write_if_changed(&dir.join("tests/cap.rs"), &body(CAP_TESTS, "from_image"));
    // One golden for the whole run, provisioned once (5 s), a clone per test.
    let mut golden = String::from(
        "//! Generated by smolvm-harness's benches. Each test: a clone of the run's golden, exec.\n\
         use smolvm_harness::Golden;\n\n\
         fn from_golden() {\n    \
             let golden = Golden::shared(\"app\", |g| {\n        \
                 g.image(\"alpine\").net().provision(|m| m.sh(\"sleep 5\")?.check())\n    \
             })\n    \
             .expect(\"golden\");\n    \
             let vm = golden.fork().expect(\"fork\");\n    \
             vm.exec(&[\"echo\", \"hi\"]).expect(\"exec\").assert_success();\n\
         }\n",
    );
    for i in 0..SUITE_TESTS {
        golden.push_str(&format!(
            "\n#[test]\nfn t{i:02}() {{\n    from_golden();\n}}\n"
        ));
    }
    write_if_changed(&dir.join("tests/golden.rs"), &golden);
    // The floor: the same tests with bare `Command`s and no harness (no slots, ledger,
    // watcher or sweep): what the test runner and the fake's own processes cost.
    let mut floor = String::from(
        "//! Generated by smolvm-harness's benches: the same calls with bare Commands, no harness.\n\
         use std::process::{Command, Output, Stdio};\n\n\
         fn bare(i: usize) {\n    \
             let bin = std::env::var_os(\"SMOLVM_BIN\").expect(\"SMOLVM_BIN\");\n    \
             let name = format!(\"bare-{}-{i}\", std::process::id());\n    \
             let run = |args: &[&str]| -> Output {\n        \
                 let out = Command::new(&bin).args(args).stdin(Stdio::null()).output().expect(\"spawn\");\n        \
                 assert!(out.status.success(), \"{}\", String::from_utf8_lossy(&out.stderr));\n        \
                 out\n    \
             };\n    \
             run(&[\"machine\", \"create\", \"--name\", &name, \"--image\", \"alpine\", \"--net\"]);\n    \
             run(&[\"machine\", \"start\", \"--name\", &name]);\n    \
             let out = run(&[\"machine\", \"exec\", \"--name\", &name, \"--\", \"echo\", \"hi\"]);\n    \
             assert_eq!(out.stdout, b\"hi\\n\");\n    \
             run(&[\"machine\", \"delete\", \"-f\", \"--name\", &name]);\n\
         }\n",
    );
    for i in 0..SUITE_TESTS {
        floor.push_str(&format!("\n#[test]\nfn t{i:02}() {{\n    bare({i});\n}}\n"));
    }
    write_if_changed(&dir.join("tests/floor.rs"), &floor);
    let (_, took) = time(|| {
        run_ok(
            cargo()
                .args(["test", "--no-run", "--quiet"])
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", &target),
            "building the generated suite crate",
        )
    });
    eprintln!(
        "suite crate built in {:.1}s ({})",
        took.as_secs_f64(),
        dir.display()
    );
    (dir, target)
}

/// True when `cargo nextest` runs here.
pub fn nextest_available() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// How a generated suite is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuiteRunner {
    /// `cargo test --test NAME -- --test-threads=N`: one process, N threads.
    CargoTest,
    /// `cargo nextest run --test NAME -j N`: one process per test.
    Nextest,
}

impl SuiteRunner {
    pub fn label(self) -> &'static str {
        match self {
            SuiteRunner::CargoTest => "cargo-test",
            SuiteRunner::Nextest => "nextest",
        }
    }
}

/// One timed run of a generated suite.
pub struct SuiteRun {
    /// Wall time of the whole command, cargo's own checks included.
    pub outer: Duration,
    /// The test runner's own figure: libtest's `finished in`, nextest's `Summary [ … ]`.
    pub inner: Duration,
    /// The fake's log of the run.
    pub log: Vec<LogLine>,
    pub passed: usize,
    /// Per test, as nextest reports it (`PASS [ 0.487s]`): one process each. Empty under
    /// `cargo test`, which does not time single tests.
    pub per_test_ms: Vec<f64>,
}

/// Run `test` of the suite crate under `runner` with `parallel` threads/processes, against a
/// fresh fake with [`MODELLED_LATENCY`] and the machine cap `cap`, plus `extra_env`.
pub fn run_suite(
    crate_dir: &Path,
    target: &Path,
    test: &str,
    runner: SuiteRunner,
    parallel: usize,
    cap: usize,
    extra_env: &[(&str, &str)],
) -> SuiteRun {
    let fake = FakeEnv::new(
        &format!("suite-{test}-{}", runner.label()),
        MODELLED_LATENCY,
    );
    let mut cmd = cargo();
    cmd.current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", target)
        .envs(fake.process_vars(Some(cap)))
        .envs(extra_env.iter().copied());
    match runner {
        SuiteRunner::CargoTest => {
            cmd.args(["test", "--quiet", "--test", test, "--"])
                .arg(format!("--test-threads={parallel}"));
        }
        SuiteRunner::Nextest => {
            cmd.args(["nextest", "run", "--no-fail-fast", "--test", test, "-j"])
                .arg(parallel.to_string());
        }
    }
    let (out, outer) = time(|| run_ok(&mut cmd, &format!("{test} under {}", runner.label())));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (inner, passed) = match runner {
        SuiteRunner::CargoTest => parse_libtest(&text),
        SuiteRunner::Nextest => parse_nextest(&text),
    }
    .unwrap_or_else(|| panic!("no summary line in the output of {test}:\n{text}"));
    let per_test_ms = text
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("PASS [")?;
            let secs: f64 = rest
                .split(']')
                .next()?
                .trim()
                .trim_end_matches('s')
                .parse()
                .ok()?;
            Some(secs * 1e3)
        })
        .collect();
    SuiteRun {
        outer,
        inner,
        log: fake.log(),
        passed,
        per_test_ms,
    }
}

/// `test result: ok. 64 passed; …; finished in 3.52s`
fn parse_libtest(text: &str) -> Option<(Duration, usize)> {
    let line = text.lines().find(|l| l.starts_with("test result:"))?;
    let passed = line
        .split(';')
        .find_map(|p| p.trim().strip_suffix(" passed"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()?;
    let secs: f64 = line
        .split("finished in ")
        .nth(1)?
        .trim()
        .trim_end_matches('s')
        .parse()
        .ok()?;
    Some((Duration::from_secs_f64(secs), passed))
}

/// `     Summary [   3.512s] 64 tests run: 64 passed, 0 skipped`
fn parse_nextest(text: &str) -> Option<(Duration, usize)> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Summary ["))?;
    let inside = line.split('[').nth(1)?.split(']').next()?.trim();
    let secs: f64 = inside.trim_end_matches('s').parse().ok()?;
    let passed = line
        .split(':')
        .nth(1)?
        .split(',')
        .find_map(|p| p.trim().strip_suffix(" passed"))?
        .trim()
        .parse()
        .ok()?;
    Some((Duration::from_secs_f64(secs), passed))
}

/// The highest `machines` count the fake logged: machines alive at once.
pub fn max_machines(log: &[LogLine]) -> u64 {
    log.iter().map(|l| l.machines).max().unwrap_or(0)
}

/// Per machine: from the start of its `machine create` (its logged end minus
/// `create_latency_ms`) to the end of its `machine delete`, in ms.
pub fn machine_lives(log: &[LogLine], create_latency_ms: f64) -> Vec<f64> {
    use std::collections::HashMap;
    let name_of = |l: &LogLine| {
        l.argv
            .iter()
            .position(|a| a == "--name")
            .and_then(|i| l.argv.get(i + 1))
            .cloned()
    };
    let mut created: HashMap<String, u64> = HashMap::new();
    let mut lives = Vec::new();
    for l in log {
        let Some(name) = name_of(l) else { continue };
        match l.op().as_str() {
            "machine create" if l.code == 0 => {
                created.insert(name, l.t_us);
            }
            "machine delete" => {
                if let Some(c) = created.remove(&name) {
                    lives.push((l.t_us.saturating_sub(c)) as f64 / 1e3 + create_latency_ms);
                }
            }
            _ => {}
        }
    }
    lives
}

/// How many log lines are this operation (`"pack create"`, `"machine create"`, …).
pub fn count_op(log: &[LogLine], op: &str) -> usize {
    log.iter().filter(|l| l.op() == op).count()
}
