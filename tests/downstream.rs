//! A crate that depends on this one, tested from outside: `tests/downstream/` is a crate of its
//! own (its own `[workspace]`, a path dependency on this checkout, rstest as README says) with
//! the tests a newcomer writes from README.md and its own three-line fake smolvm
//! (`examples/smolvm-fake.rs`). Here `cargo test` (and `cargo nextest run`, when installed)
//! runs it the three ways a user does:
//!
//! - without smolvm: every test passes and says `SKIPPED <test>: smolvm not found on PATH …`;
//! - with `SMOLVM_HARNESS_REQUIRE=1`: every test fails, saying why;
//! - with `SMOLVM_BIN` at its own fake: every body runs, and no machine is left behind.
//!
//! And README's nextest partitions over hosts, as written, each against a simulated
//! `smolvm serve` of that fake: every test once, each on its partition's server, with a
//! golden, a machine cap and cleanup per server.
//!
//! The nested cargo builds into `<our target dir>/downstream`, so its dependencies are
//! compiled once (the first run takes a few minutes on two cores) and never next to the
//! sources; it runs `--offline` after one `cargo fetch`, which downloads from crates.io only
//! what the downstream crate needs beyond ours (rstest's default features), once per machine.
//! It shares no lock with the cargo running this test: the target dir is another one, and
//! cargo releases the package cache before running tests. The environment is the user's,
//! less everything cargo, nextest and the harness set for *this* process (`RUSTFLAGS`, the
//! target dir, `NEXTEST_*`, `SMOLVM_*`): with those, the nested build would rebuild on every
//! change of flags, or the nested tests would see our settings.

#[path = "common/serve.rs"]
mod serve;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smolvm_harness::sim::{default_fake_state_dir, read_fake_state};

/// The downstream crate's tests (`tests/downstream/tests/vm.rs`), by libtest name.
const TESTS: [&str; 10] = [
    "hello",
    "sees_the_provisioned_files",
    "built_by_hand",
    "exit_codes::case_1_succeeds",
    "exit_codes::case_2_fails",
    "exit_codes::case_3_exits_7",
    "above_rstest::case_1_one",
    "above_rstest::case_2_two",
    "values::word_1___a__",
    "values::word_2___b__",
];
const NOT_FOUND: &str = "smolvm not found on PATH (install it, or set SMOLVM_BIN)";

fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/downstream")
}

fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("downstream")
}

fn fake_bin() -> PathBuf {
    target_dir().join("debug/examples/smolvm-fake")
}

/// Variables cargo reads that a user's shell would not have set for this crate.
fn is_ours(key: &str) -> bool {
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_SOURCE_",
    ];
    if key.starts_with("CARGO") {
        return !KEEP.iter().any(|k| key.starts_with(k));
    }
    key.starts_with("__CARGO")
        || key.starts_with("NEXTEST")
        || key.starts_with("SMOLVM_")
        || key.starts_with("RUSTFLAGS")
        || key.starts_with("RUSTDOCFLAGS")
        || matches!(
            key,
            "RUSTC_WORKSPACE_WRAPPER" | "MAKEFLAGS" | "MFLAGS" | "RUST_TEST_THREADS"
        )
}

/// `PATH` without any directory that holds a `smolvm`: "a machine without smolvm", even on
/// a developer's machine that has one.
fn path_without_smolvm() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| !d.join("smolvm").exists())
        .collect();
    std::env::join_paths(dirs).expect("PATH entries stay joinable")
}

/// A cargo command in the downstream crate, in a clean environment with `TMPDIR` at `tmp`
/// (so the fake's and the harness's default state directories are fresh ones).
fn cargo(tmp: &Path, args: &[&str]) -> Command {
    cargo_in(&crate_dir(), tmp, args)
}

fn cargo_in(dir: &Path, tmp: &Path, args: &[&str]) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_ours) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_TERM_COLOR", "never")
        .env("CARGO_TERM_PROGRESS_WHEN", "never")
        .env("PATH", path_without_smolvm())
        .env("TMPDIR", tmp);
    cmd
}

fn run(mut cmd: Command) -> (Output, String) {
    let out = cmd.output().expect("run cargo");
    let text = format!(
        "{cmd:?}\nexit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// Resolve and download once; afterwards everything is `--offline`.
fn fetch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, text) = run(cargo(tmp.path(), &["fetch"]));
    assert!(out.status.success(), "cargo fetch failed:\n{text}");
}

/// The three modes, run by `runner` (`cargo test` or `cargo nextest run`).
fn three_modes(runner: &[&str], passed: &str, failed: &str) {
    fetch();
    let with = |extra: &[&'static str]| -> Vec<&str> {
        runner
            .iter()
            .copied()
            .chain(["--offline"])
            .chain(extra.iter().copied())
            .collect()
    };

    // 1. No smolvm: passes, and says so for every test.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, text) = run(cargo(tmp.path(), &with(&[])));
    assert!(out.status.success(), "without smolvm:\n{text}");
    for test in TESTS {
        assert!(
            text.contains(&format!("SKIPPED {test}: {NOT_FOUND}")),
            "without smolvm, no SKIPPED line for {test}:\n{text}"
        );
    }
    assert!(text.contains(passed), "without smolvm:\n{text}");

    // 2. Required but missing: every test fails, naming what is missing and the setting.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = cargo(tmp.path(), &with(&[]));
    cmd.env("SMOLVM_HARNESS_REQUIRE", "1");
    let (out, text) = run(cmd);
    assert!(!out.status.success(), "required:\n{text}");
    let why = format!("smolvm is required (SMOLVM_HARNESS_REQUIRE=1) but {NOT_FOUND}");
    for test in TESTS {
        assert!(
            text.contains(&format!("{test}: {why}")),
            "required, no failure for {test} saying {why:?}:\n{text}"
        );
    }
    assert!(text.contains(failed), "required:\n{text}");
    assert!(!text.contains("SKIPPED"), "required:\n{text}");

    // 3. Through the crate's own fake: nothing but SMOLVM_BIN (REQUIRE=1 turns a skip into a
    //    failure; the log shows what ran).
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("fake-log.jsonl");
    let mut cmd = cargo(tmp.path(), &with(&[]));
    cmd.env("SMOLVM_BIN", fake_bin())
        .env("SMOLVM_HARNESS_REQUIRE", "1")
        .env("SMOLVM_FAKE_LOG", &log)
        // Under nextest the golden is the run's, retired this long after its last test.
        .env("SMOLVM_HARNESS_GOLDEN_GRACE", "1s");
    let (out, text) = run(cmd);
    assert!(out.status.success(), "through the fake:\n{text}");
    assert!(!text.contains("SKIPPED"), "through the fake:\n{text}");
    assert!(text.contains(passed), "through the fake:\n{text}");
    let log = fs::read_to_string(&log).unwrap_or_default();
    let creates = log.matches(r#""machine","create""#).count();
    let forks = log.matches(r#""machine","fork""#).count();
    // One machine per test; the golden test's is a clone (plus the smoke fork the golden
    // makes once), and its golden the one machine created for it.
    assert_eq!(creates, TESTS.len(), "one machine per test:\n{log}\n{text}");
    assert_eq!(
        forks, 2,
        "the smoke fork and the test's clone:\n{log}\n{text}"
    );
    for guest in [
        r#""--","echo","hello"]"#,
        r#""sh","-c","echo $MODE $EXTRA"]"#,
        r#""sh","-c","exit 7"]"#,
    ] {
        assert!(log.contains(guest), "no exec of {guest}:\n{log}");
    }
    // The fake's default state directory, under the TMPDIR it was given.
    let name = default_fake_state_dir();
    let state = tmp.path().join(name.file_name().expect("a directory name"));
    // The run's golden goes after its grace (by the crash watcher), the rest at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let left = loop {
        let left = read_fake_state(&state).expect("read the fake's state");
        if left.is_empty() || std::time::Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        state.join("state.json").exists() && left.is_empty(),
        "machines left in {}: {left:?}",
        state.display()
    );
    let log = fs::read_to_string(tmp.path().join("fake-log.jsonl")).unwrap_or_default();
    let deletes = log.matches(r#""machine","delete""#).count();
    // Each machine and clone once, and for the golden also the plain `delete` that asks
    // whether clones someone else made remain (answered No: nothing deleted).
    assert_eq!(deletes, TESTS.len() + forks + 1, "each deleted:\n{log}");
    assert!(
        log.contains(r#""delete","--cascade""#),
        "the golden goes with --cascade:\n{log}"
    );
}

#[test]
fn cargo_test_in_three_modes() {
    // Two test binaries (vm.rs, golden.rs): both run, also when the first fails.
    three_modes(
        &["test", "--no-fail-fast"],
        "test result: ok. 9 passed; 0 failed",
        "test result: FAILED. 0 passed; 9 failed",
    );
}

#[test]
fn cargo_nextest_in_three_modes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, _) = run(cargo(tmp.path(), &["nextest", "--version"]));
    if !out.status.success() {
        eprintln!("cargo-nextest is not installed: only `cargo test` ran the downstream crate");
        return;
    }
    // Passing tests' output, where the SKIPPED lines are, is hidden by default.
    three_modes(
        &[
            "nextest",
            "run",
            "--success-output",
            "immediate",
            "--no-fail-fast",
        ],
        "10 tests run: 10 passed",
        "10 tests run: 0 passed, 10 failed",
    );
}

/// README's fake and headline test are the downstream crate's, word for word: what the
/// tests above run is what a newcomer copies.
#[test]
fn readme_blocks_are_the_downstream_crates() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let fake = fs::read_to_string(crate_dir().join("examples/smolvm-fake.rs")).expect("fake");
    assert!(
        readme.contains(&format!("```rust,no_run\n{fake}```")),
        "README's fake bin differs from tests/downstream/examples/smolvm-fake.rs:\n{fake}"
    );
    let vm = fs::read_to_string(crate_dir().join("tests/vm.rs")).expect("vm.rs");
    let start = readme.find("#[rstest]\n").expect("headline test");
    let end = start + readme[start..].find("\n}").expect("end of headline test");
    let headline = &readme[start..end];
    assert!(
        vm.contains(headline),
        "README's headline differs from tests/downstream/tests/vm.rs:\n{headline}"
    );
    let golden = fs::read_to_string(crate_dir().join("tests/golden.rs")).expect("golden.rs");
    let start = readme
        .find("use rstest::{fixture, rstest};")
        .expect("README's golden block");
    let end = start
        + readme[start..]
            .find("# fn main")
            .expect("end of the golden block");
    let block = &readme[start..end];
    assert!(
        golden.contains(block),
        "README's golden block differs from tests/downstream/tests/golden.rs:\n{block}"
    );
}

/// What `cargo package` would publish of `package`, as RELEASING.md lists it.
fn packaged_files(package: &str) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // --allow-dirty: a working tree under edit packages what it holds.
    let args = [
        "package",
        "-p",
        package,
        "--list",
        "--offline",
        "--allow-dirty",
    ];
    let (out, text) = run(cargo_in(root, tmp.path(), &args));
    assert!(out.status.success(), "{text}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The published crates hold what a user needs (library, fake CLI, examples, docs, licenses)
/// and none of the repository's own tests, benches, CI or scripts.
#[test]
fn published_packages_hold_only_what_users_need() {
    let main = packaged_files("smolvm-harness");
    for needed in [
        "src/lib.rs",
        "src/guide.md",
        "src/sim/fake.rs",
        "fixtures/smolvm-fake.rs",
        "examples/quickstart.rs",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "Cargo.toml",
    ] {
        assert!(
            main.iter().any(|f| f == needed),
            "{needed} missing: {main:?}"
        );
    }
    for file in &main {
        assert!(
            !["tests/", "benches/", "scripts/", ".ci/", ".config/"]
                .iter()
                .any(|dir| file.starts_with(dir))
                && file != "BENCHMARKS.md"
                && file != ".gitignore",
            "{file} is the repository's, not the user's: {main:?}"
        );
    }
    let macros = packaged_files("smolvm-harness-macros");
    for needed in ["src/lib.rs", "README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(
            macros.iter().any(|f| f == needed),
            "{needed} missing from the macros crate: {macros:?}"
        );
    }
}

/// A simulated `smolvm serve` of the downstream crate's own fake, on a unix socket in `dir`,
/// with its own state and log; SIGTERMed and reaped on drop.
struct Server {
    child: std::process::Child,
    url: String,
    state: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        fs::create_dir_all(dir).expect("server dir");
        let (state, log) = (dir.join("state"), dir.join("log.jsonl"));
        let listen = format!("unix://{}", dir.join("api.sock").display());
        let mut cmd = Command::new(fake_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("SMOLVM_")) {
                cmd.env_remove(&key);
            }
        }
        let mut child = cmd
            .args(["serve", "start", "--listen", &listen])
            .env("SMOLVM_FAKE_STATE", &state)
            .env("SMOLVM_FAKE_LOG", &log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the downstream fake's serve");
        let url = serve::await_listening(&mut child);
        Server {
            child,
            url,
            state,
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The names of the machines created through this server, in order.
    fn created(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|entry| {
                let argv: Vec<String> = entry["argv"]
                    .as_array()?
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                (argv.get(..2)? == ["machine", "create"] && entry["code"] == 0)
                    .then(|| argv.last().cloned())?
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<prefix>-<slug>` of the machines a test's process names (`generate_name` without the
/// process token and counter).
fn name_stem(test: &str) -> String {
    let name = smolvm_harness::generate_name("smt", test);
    let mut parts: Vec<&str> = name.split('-').collect();
    parts.truncate(parts.len() - 2);
    parts.join("-")
}

/// The test (of [`TESTS`]) whose process made a machine of this generated name.
fn test_of(machine: &str) -> Option<&'static str> {
    let mut parts: Vec<&str> = machine.split('-').collect();
    parts.truncate(parts.len().saturating_sub(2));
    let stem = parts.join("-");
    TESTS.into_iter().find(|t| name_stem(t) == stem)
}

/// The tests nextest ran, from its `PASS [ … ] … <binary> <test>` lines.
fn nextest_ran(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| {
            ["PASS [", "FAIL [", "SIGKILL [", "TIMEOUT ["]
                .iter()
                .any(|s| l.starts_with(s))
        })
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

/// README's "Spreading a suite over hosts" block: each line's `SMOLVM_HOST` and argv.
fn readme_partition_commands() -> Vec<(String, Vec<String>)> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let at = readme
        .find("**Spreading a suite over hosts.**")
        .expect("README's \"Spreading a suite over hosts\"");
    let start = at + readme[at..].find("```sh\n").expect("its sh block") + "```sh\n".len();
    let block = &readme[start..start + readme[start..].find("```").expect("end of the block")];
    let mut lines: Vec<&str> = block.lines().collect();
    assert_eq!(
        lines.pop(),
        Some("wait"),
        "the block ends with `wait`:\n{block}"
    );
    lines
        .into_iter()
        .map(|line| {
            let words = line
                .strip_suffix(" &")
                .unwrap_or_else(|| panic!("{line:?} runs in the background"));
            let mut words = words.split_whitespace();
            let host = words
                .next()
                .and_then(|w| w.strip_prefix("SMOLVM_HOST="))
                .unwrap_or_else(|| panic!("{line:?} sets SMOLVM_HOST first"));
            (host.to_string(), words.map(str::to_string).collect())
        })
        .collect()
}

/// README's partitions over hosts, run as written with each `SMOLVM_HOST` at a simulated
/// server of its own: every test runs once, on its partition's server, and each server has
/// its own golden, machine cap and cleanup (one state directory shared by both runs, as on
/// one CI machine).
#[test]
fn nextest_partitions_each_on_its_own_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (out, _) = run(cargo(tmp.path(), &["nextest", "--version"]));
    if !out.status.success() {
        eprintln!("cargo-nextest is not installed: the partitions over hosts did not run");
        return;
    }
    let commands = readme_partition_commands();
    assert_eq!(commands.len(), 2, "two partitions: {commands:?}");
    assert_ne!(commands[0].0, commands[1].0, "two hosts: {commands:?}");
    fetch();
    // The fake that serves is the one the nested build makes; build it before the servers
    // start (the runs below rebuild nothing).
    let (out, text) = run(cargo(
        tmp.path(),
        &["build", "--offline", "--example", "smolvm-fake"],
    ));
    assert!(out.status.success(), "build the fake:\n{text}");
    let servers = [
        Server::start(&tmp.path().join("host-1")),
        Server::start(&tmp.path().join("host-2")),
    ];
    let state_dir = tmp.path().join("harness");

    let runs: Vec<(Output, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = commands
            .iter()
            .zip(&servers)
            .map(|((_, argv), server)| {
                assert_eq!(argv[0], "cargo", "{argv:?}");
                let mut args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
                args.extend([
                    "--offline",
                    "--no-fail-fast",
                    "--success-output",
                    "immediate",
                ]);
                let mut cmd = cargo(tmp.path(), &args);
                cmd.env("SMOLVM_HOST", &server.url)
                    .env("SMOLVM_HARNESS_REQUIRE", "1")
                    .env("SMOLVM_HARNESS_GOLDEN_GRACE", "1s")
                    .env("SMOLVM_HARNESS_STATE_DIR", &state_dir)
                    // Packs for a server on this host are made by the local CLI, into
                    // that server's state.
                    .env("SMOLVM_BIN", fake_bin())
                    .env("SMOLVM_FAKE_STATE", &server.state);
                s.spawn(move || run(cmd))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a partition's thread"))
            .collect()
    });

    // Both pass, nothing skipped, and together they ran every test exactly once.
    let mut ran: Vec<String> = Vec::new();
    let mut by_partition: Vec<Vec<String>> = Vec::new();
    for (out, text) in &runs {
        assert!(out.status.success(), "a partition failed:\n{text}");
        assert!(!text.contains("SKIPPED"), "a partition skipped:\n{text}");
        let tests = nextest_ran(text);
        assert!(!tests.is_empty(), "a partition ran nothing:\n{text}");
        ran.extend(tests.iter().cloned());
        by_partition.push(tests);
    }
    ran.sort();
    let mut all: Vec<String> = TESTS.iter().map(|t| t.to_string()).collect();
    all.sort();
    assert_eq!(ran, all, "every test exactly once:\n{runs:#?}");

    // Each server created the machines of exactly its partition's tests, and the golden
    // (named after its key; the golden test's clone is a fork of it) only where that test ran.
    let golden_test = "sees_the_provisioned_files";
    for (server, tests) in servers.iter().zip(&by_partition) {
        let (log, created) = (server.log(), server.created());
        let goldens: Vec<&String> = created
            .iter()
            .filter(|m| m.starts_with("smt-golden-app-"))
            .collect();
        let mut owners: Vec<&str> = created
            .iter()
            .filter(|m| !m.starts_with("smt-golden-app-"))
            .map(|m| test_of(m).unwrap_or_else(|| panic!("{m}: whose? {created:?}")))
            .collect();
        let golden = tests.iter().any(|t| t == golden_test);
        assert_eq!(
            goldens.len(),
            usize::from(golden),
            "{}: a golden of its own only where {golden_test} ran: {created:?}",
            server.url
        );
        owners.extend(goldens.iter().map(|_| golden_test));
        owners.sort();
        let mut expected: Vec<&str> = tests.iter().map(String::as_str).collect();
        expected.sort();
        assert_eq!(
            owners, expected,
            "{}: one create for each of its partition's tests, no other:\n{log}",
            server.url
        );
        let forks: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(r#""machine","fork""#))
            .collect();
        assert_eq!(
            forks.len(),
            if golden { 2 } else { 0 },
            "{}: the golden's smoke fork and the test's clone only on the golden test's \
             server:\n{log}",
            server.url
        );
        let clone = format!("\"{}-", name_stem(golden_test));
        assert!(
            !golden || forks.iter().any(|f| f.contains(&clone)),
            "{}: {golden_test}'s clone forked here:\n{log}",
            server.url
        );
    }

    // One machine cap per server: a slot directory each, in the one state directory.
    let slots: Vec<String> = fs::read_dir(&state_dir)
        .expect("the shared state directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("slots"))
        .collect();
    assert_eq!(
        slots.len(),
        2,
        "one slot directory per server, none for a local smolvm: {slots:?}"
    );
    assert!(slots.iter().all(|n| n.starts_with("slots-")), "{slots:?}");

    // The golden goes after its grace (by the watcher, through its server), the rest at once:
    // nothing is left on either server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for server in &servers {
        let left = loop {
            let left = read_fake_state(&server.state).expect("read a server's state");
            if left.is_empty() || std::time::Instant::now() >= deadline {
                break left;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(
            server.state.join("state.json").exists() && left.is_empty(),
            "machines left on {}: {left:?}\n{}",
            server.url,
            server.log()
        );
        let created = server.created().len();
        let deletes = server.log().matches(r#""machine","delete""#).count();
        assert!(
            deletes >= created,
            "{}: each machine deleted through its server:\n{}",
            server.url,
            server.log()
        );
    }
}
