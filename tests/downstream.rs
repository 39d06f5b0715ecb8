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
//! The nested cargo builds into `<our target dir>/downstream`, so its dependencies are
//! compiled once (the first run takes a few minutes on two cores) and never next to the
//! sources; it runs `--offline` after one `cargo fetch`, which downloads from crates.io only
//! what the downstream crate needs beyond ours (rstest's default features), once per machine.
//! It shares no lock with the cargo running this test: the target dir is another one, and
//! cargo releases the package cache before running tests. The environment is the user's,
//! less everything cargo, nextest and the harness set for *this* process (`RUSTFLAGS`, the
//! target dir, `NEXTEST_*`, `SMOLVM_*`): with those, the nested build would rebuild on every
//! change of flags, or the nested tests would see our settings.

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
