//! The skip-guards, checked from outside the test process.
//!
//! A skip is only visible from outside: the test "passes", and the evidence is a line on the
//! real stderr, a summary printed after `main` returned, and the absence of side effects. So
//! the `subject_*` tests below are `#[ignore]`d, and the other tests re-run this same binary
//! on them (`--include-ignored`) in a child process with a controlled environment: no smolvm
//! anywhere, a `SMOLVM_BIN` that is not a file, `SMOLVM_HARNESS_REQUIRE=1`, or the fake CLI.
//!
//! Every subject writes a marker file from its body, and the rstest subjects take a fixture
//! that writes one too, so "the body never ran" and "no fixture was built" are both checked
//! on disk.
//!
//! What only a real build shows (a misplaced attribute is a compile error; `cargo nextest
//! run` with the shipped snippet shows the skips) is checked on a small crate that depends
//! on this one, built offline under `CARGO_TARGET_TMPDIR`.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rstest::{fixture, rstest};
use smolvm_harness::{require_smolvm, requires_smolvm};

/// Directory where subjects leave their markers; unset in a normal run, where the subjects
/// are ignored anyway.
const MARKERS: &str = "SMOLVM_HARNESS_TEST_MARKERS";
const NOT_FOUND: &str = "smolvm not found on PATH (install it, or set SMOLVM_BIN)";
const SUMMARY_TAIL: &str = "; set SMOLVM_HARNESS_REQUIRE=1 to make that a failure";

/// Leave `<what>@<test name>` in the markers directory.
fn mark(what: &str) {
    let Some(dir) = std::env::var_os(MARKERS) else {
        return;
    };
    let test = thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", ".");
    fs::write(Path::new(&dir).join(format!("{what}@{test}")), b"").expect("write marker");
}

/// A fixture with a visible side effect, standing for one that would create a machine.
struct Tracked;

#[fixture]
fn tracked() -> Tracked {
    mark("fixture");
    Tracked
}

// ---------------------------------------------------------------------------------------
// Subjects. Each name is listed in SUBJECTS below.

/// The line of `require_smolvm!()` below, where a required-but-missing failure must point.
const MACRO_LINE: u32 = line!() + 4;
#[test]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_macro() {
    require_smolvm!();
    mark("body");
}

#[test]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_macro_explicit_value() -> Result<(), String> {
    require_smolvm!(Ok(()));
    mark("body");
    Ok(())
}

#[test]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_macro_inferred_result() -> Result<(), Box<dyn std::error::Error>> {
    require_smolvm!();
    mark("body");
    Ok(())
}

/// The line of `#[requires_smolvm]` below.
const ATTR_LINE: u32 = line!() + 3;
#[test]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
#[requires_smolvm]
fn subject_attr_plain() {
    mark("body");
}

#[test]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
#[requires_smolvm]
fn subject_attr_result() -> Result<(), String> {
    mark("body");
    Ok(())
}

#[rstest]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
#[requires_smolvm]
fn subject_rstest(tracked: Tracked) {
    let Tracked = tracked;
    mark("body");
}

// The placements of `#[requires_smolvm]` in an rstest test that src/skip.rs documents
// (directly above a `#[case]` line is a compile error, checked by a doctest there). Every
// generated test must be guarded: each case, each `#[values]` combination.

// After the last `#[case]`.
#[rstest]
#[case::one(1)]
#[case::two(2)]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
#[requires_smolvm]
fn subject_rstest_cases(tracked: Tracked, #[case] n: u32) -> Result<(), String> {
    let Tracked = tracked;
    mark(&format!("body{n}"));
    Ok(())
}

// Above `#[rstest]`, no cases: the attribute moves itself below the other attributes.
#[requires_smolvm]
#[rstest]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_attr_above_rstest(tracked: Tracked) {
    let Tracked = tracked;
    mark("body");
}

// Above `#[rstest]`, with cases: below the last `#[case]` is where it must land.
#[requires_smolvm]
#[rstest]
#[case::one(1)]
#[case::two(2)]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_attr_above_rstest_cases(tracked: Tracked, #[case] n: u32) {
    let Tracked = tracked;
    mark(&format!("body{n}"));
}

// Directly under `#[rstest]`, with `#[values]`: every combination.
#[rstest]
#[requires_smolvm]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_values(tracked: Tracked, #[values(1, 2)] a: u32, #[values(3, 4)] b: u32) {
    let Tracked = tracked;
    mark(&format!("body{a}{b}"));
}

// Above `#[rstest]`, with cases times `#[values]`.
#[requires_smolvm]
#[rstest]
#[case::one(1)]
#[case::two(2)]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_above_matrix(tracked: Tracked, #[case] n: u32, #[values(3, 4)] b: u32) {
    let Tracked = tracked;
    mark(&format!("body{n}{b}"));
}

// An async test: the check runs before tokio's runtime is built (src/guide.md, "Async
// tests").
#[tokio::test]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
#[requires_smolvm]
async fn subject_tokio() {
    mark("body");
}

/// Every subject as libtest names it, the marker its body leaves, and whether it takes the
/// fixture.
const SUBJECTS: &[(&str, &str, bool)] = &[
    ("subject_macro", "body", false),
    ("subject_macro_explicit_value", "body", false),
    ("subject_macro_inferred_result", "body", false),
    ("subject_attr_plain", "body", false),
    ("subject_attr_result", "body", false),
    ("subject_rstest", "body", true),
    ("subject_rstest_cases::case_1_one", "body1", true),
    ("subject_rstest_cases::case_2_two", "body2", true),
    ("subject_attr_above_rstest", "body", true),
    ("subject_attr_above_rstest_cases::case_1_one", "body1", true),
    ("subject_attr_above_rstest_cases::case_2_two", "body2", true),
    ("subject_values::a_1_1::b_1_3", "body13", true),
    ("subject_values::a_1_1::b_2_4", "body14", true),
    ("subject_values::a_2_2::b_1_3", "body23", true),
    ("subject_values::a_2_2::b_2_4", "body24", true),
    ("subject_above_matrix::case_1_one::b_1_3", "body13", true),
    ("subject_above_matrix::case_1_one::b_2_4", "body14", true),
    ("subject_above_matrix::case_2_two::b_1_3", "body23", true),
    ("subject_above_matrix::case_2_two::b_2_4", "body24", true),
    ("subject_tokio", "body", false),
];

// ---------------------------------------------------------------------------------------
// The child process.

/// Where the child finds smolvm.
enum Smolvm {
    /// `SMOLVM_BIN` unset, and `PATH` an empty directory.
    Absent,
    /// `SMOLVM_BIN` names a path that does not exist.
    BadBin,
    /// `SMOLVM_BIN` is the fake CLI built with this package.
    Fake,
}

struct Child {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Marker files left, sorted.
    markers: Vec<String>,
}

impl Child {
    fn skipped_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("SKIPPED "))
            .collect()
    }

    fn summaries(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("smolvm-harness: "))
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- markers ---\n{:?}",
            self.code, self.stdout, self.stderr, self.markers
        )
    }
}

/// A child process of this test binary, run on `args` (plus `--include-ignored`) with
/// smolvm found as `smolvm` says and `extra` env, bounded to 60 s.
fn run_child(args: &[&str], smolvm: Smolvm, extra: &[(&str, &str)]) -> Child {
    let scratch = tempfile::tempdir().expect("tempdir");
    let markers = scratch.path().join("markers");
    let empty_path = scratch.path().join("empty-path");
    let fake_state = scratch.path().join("fake-state");
    for dir in [&markers, &empty_path, &fake_state] {
        fs::create_dir(dir).expect("create dir");
    }

    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(args).arg("--include-ignored");
    // Whatever the parent run was given (CI may set SMOLVM_BIN and
    // SMOLVM_HARNESS_REQUIRE for the whole job) must not leak into the child.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("SMOLVM_") || key_text.starts_with("RUST_TEST_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PATH", &empty_path)
        .env(MARKERS, &markers)
        .env("RUST_BACKTRACE", "0")
        .env("SMOLVM_HARNESS_STATE_DIR", scratch.path().join("state"));
    match smolvm {
        Smolvm::Absent => {}
        Smolvm::BadBin => {
            cmd.env("SMOLVM_BIN", "/nonexistent/smolvm");
        }
        Smolvm::Fake => {
            cmd.env("SMOLVM_BIN", env!("CARGO_BIN_EXE_smolvm-fake"))
                .env("SMOLVM_FAKE_STATE", &fake_state);
        }
    }
    cmd.envs(extra.iter().copied());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    let mut child = cmd.spawn().expect("spawn the test binary");
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let status = status
        .unwrap_or_else(|| panic!("child {args:?} did not finish in 60 s\n{stdout}\n{stderr}"));

    let mut found: Vec<String> = fs::read_dir(&markers)
        .expect("read markers")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    Child {
        code: status.code(),
        stdout,
        stderr,
        markers: found,
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

// ---------------------------------------------------------------------------------------
// The tests.

/// No smolvm anywhere: every subject passes without running its body or its fixture, each
/// writes its SKIPPED line even though libtest captures output (no `--nocapture`), and one
/// summary with the count follows at exit.
#[test]
fn without_smolvm_every_guard_skips_before_body_and_fixtures() {
    let child = run_child(&["subject_"], Smolvm::Absent, &[]);
    let ctx = child.describe();
    assert_eq!(child.code, Some(0), "{ctx}");
    assert!(
        child
            .stdout
            .contains(&format!("test result: ok. {} passed", SUBJECTS.len())),
        "every subject ran and passed: {ctx}"
    );
    for (name, _, _) in SUBJECTS {
        let line = format!("SKIPPED {name}: {NOT_FOUND}");
        assert!(
            child.stderr.lines().any(|l| l == line),
            "missing `{line}`: {ctx}"
        );
    }
    assert_eq!(child.skipped_lines().len(), SUBJECTS.len(), "{ctx}");
    assert_eq!(
        child.summaries(),
        [format!(
            "smolvm-harness: {} test(s) skipped: {NOT_FOUND}{SUMMARY_TAIL}",
            SUBJECTS.len()
        )],
        "{ctx}"
    );
    assert!(
        child.markers.is_empty(),
        "no body and no fixture ran: {ctx}"
    );
}

/// A `SMOLVM_BIN` that is set but does not resolve means "use this one" went wrong: every
/// guarded test fails, naming the value, even with `SMOLVM_HARNESS_REQUIRE=0`, and still
/// without building fixtures. (Unset, with no smolvm on `PATH`, keeps skipping: the first
/// test above.)
#[test]
fn a_bad_smolvm_bin_fails_every_guarded_test() {
    let child = run_child(
        &["subject_"],
        Smolvm::BadBin,
        &[("SMOLVM_HARNESS_REQUIRE", "0")],
    );
    let ctx = child.describe();
    let reason = "SMOLVM_BIN=/nonexistent/smolvm is not an executable file";
    assert_ne!(child.code, Some(0), "{ctx}");
    assert!(
        child
            .stdout
            .contains(&format!("0 passed; {} failed", SUBJECTS.len())),
        "{ctx}"
    );
    for (name, _, _) in SUBJECTS {
        assert!(
            child.stdout.contains(&format!("{name}: {reason}")),
            "{name}'s reason: {ctx}"
        );
    }
    assert!(child.skipped_lines().is_empty(), "{ctx}");
    assert!(child.summaries().is_empty(), "{ctx}");
    assert!(child.markers.is_empty(), "{ctx}");
}

/// The same with a bare name that is not on `PATH`, in the one-test form (`--exact`,
/// `--nocapture`).
#[test]
fn a_smolvm_bin_name_not_on_path_fails() {
    let child = run_child(
        &["--exact", "subject_rstest", "--nocapture"],
        Smolvm::Absent,
        &[("SMOLVM_BIN", "smolvm-typo")],
    );
    let ctx = child.describe();
    assert_ne!(child.code, Some(0), "{ctx}");
    assert!(child.stdout.contains("1 failed"), "{ctx}");
    assert!(
        child.stderr.contains(
            "subject_rstest: SMOLVM_BIN=smolvm-typo is not on PATH (set it to the path of the \
             smolvm binary)"
        ),
        "{ctx}"
    );
    assert!(child.skipped_lines().is_empty(), "{ctx}");
    assert!(child.markers.is_empty(), "{ctx}");
}

/// `SMOLVM_HARNESS_REQUIRE=1`: the same subjects fail, with the reason, at the line of the
/// guarded test (`#[track_caller]`), and still without building fixtures.
#[test]
fn require_turns_every_skip_into_a_failure() {
    let child = run_child(
        &["subject_"],
        Smolvm::Absent,
        &[("SMOLVM_HARNESS_REQUIRE", "1")],
    );
    let ctx = child.describe();
    assert_ne!(child.code, Some(0), "{ctx}");
    for (name, _, _) in SUBJECTS {
        assert!(
            child.stdout.contains(&format!("test {name} ... FAILED")),
            "{name} should fail: {ctx}"
        );
        assert!(
            child.stdout.contains(&format!(
                "{name}: smolvm is required (SMOLVM_HARNESS_REQUIRE=1) but {NOT_FOUND}"
            )),
            "{name}'s reason: {ctx}"
        );
    }
    assert_eq!(
        child.stdout.matches("panicked at tests/skip.rs:").count(),
        SUBJECTS.len(),
        "each panic points at the guarded test, not at the harness: {ctx}"
    );
    for (name, line) in [
        ("subject_macro", MACRO_LINE),
        ("subject_attr_plain", ATTR_LINE),
    ] {
        // `thread 'NAME' (TID) panicked at FILE:LINE:COL:`
        let thread = format!("thread '{name}' ");
        let at = format!(" panicked at tests/skip.rs:{line}:");
        assert!(
            child
                .stdout
                .lines()
                .any(|l| l.starts_with(&thread) && l.contains(&at)),
            "{name} should fail at line {line}: {ctx}"
        );
    }
    assert!(child.skipped_lines().is_empty(), "{ctx}");
    assert!(child.summaries().is_empty(), "{ctx}");
    assert!(child.markers.is_empty(), "{ctx}");
}

/// A malformed `SMOLVM_HARNESS_REQUIRE` is an error that names it, not "not required".
#[test]
fn a_malformed_require_setting_fails_instead_of_skipping() {
    let child = run_child(
        &["--exact", "subject_macro"],
        Smolvm::Absent,
        &[("SMOLVM_HARNESS_REQUIRE", "maybe")],
    );
    let ctx = child.describe();
    assert_ne!(child.code, Some(0), "{ctx}");
    assert!(child.stdout.contains("SMOLVM_HARNESS_REQUIRE"), "{ctx}");
    assert!(child.skipped_lines().is_empty(), "{ctx}");
    assert!(child.markers.is_empty(), "{ctx}");
}

/// With smolvm available (the fake CLI), the guards step aside: every body runs, every
/// fixture is built, nothing is reported as skipped.
#[test]
fn with_smolvm_every_body_and_fixture_runs() {
    let child = run_child(&["subject_"], Smolvm::Fake, &[]);
    let ctx = child.describe();
    assert_eq!(child.code, Some(0), "{ctx}");
    let mut expected = Vec::new();
    for (name, body, fixture) in SUBJECTS {
        let test = name.replace("::", ".");
        expected.push(format!("{body}@{test}"));
        if *fixture {
            expected.push(format!("fixture@{test}"));
        }
    }
    expected.sort();
    assert_eq!(child.markers, expected, "{ctx}");
    assert!(child.skipped_lines().is_empty(), "{ctx}");
    assert!(child.summaries().is_empty(), "{ctx}");
}

// ---------------------------------------------------------------------------------------
// A crate that depends on this one, built with cargo: for what only a real build or a real
// `cargo nextest run` shows.

/// What `tests/misplaced.rs` of the downstream crate must fail with.
const MISPLACED: &str = "`#[requires_smolvm]` written above a `#[case]` guards that case only";

/// The placement the docs forbid: directly under `#[rstest]`, before the first `#[case]`
/// (and, for good measure, between two cases). Each is a compile error at the attribute's
/// line, with the message saying where to put it. (A doctest cannot show this: rstest
/// generates its cases under `cfg(test)`, which doctests are not built with.)
const MISPLACED_RS: &str = r#"use rstest::rstest;
use smolvm_harness::requires_smolvm;

#[rstest]
#[requires_smolvm]
#[case::one(1)]
#[case::two(2)]
fn under_rstest_before_the_cases(#[case] n: u32) {
    let _ = n;
}

#[rstest]
#[case::one(1)]
#[requires_smolvm]
#[case::two(2)]
fn between_the_cases(#[case] n: u32) {
    let _ = n;
}
"#;

/// Skipping tests for nextest: an rstest case test and a plain one.
const VM_RS: &str = r#"use rstest::rstest;
use smolvm_harness::{require_smolvm, requires_smolvm};

#[requires_smolvm]
#[rstest]
#[case::one(1)]
#[case::two(2)]
fn boots(#[case] n: u32) {
    let _ = n;
}

#[test]
fn lists() {
    require_smolvm!();
}
"#;

/// The downstream crate, in a directory kept between runs (so that rebuilds are
/// incremental), with this package's lock file so that it builds offline.
fn downstream_crate() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skip-downstream");
    let manifest = format!(
        r#"[package]
name = "downstream"
version = "0.0.0"
edition = "2021"
publish = false

# Not a member of the workspace this directory sits in.
[workspace]

[dev-dependencies]
smolvm-harness = {{ path = {:?} }}
rstest = {{ version = "0.26", default-features = false }}
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    let lock = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .expect("read Cargo.lock");
    for (path, text) in [
        ("Cargo.toml", manifest.as_str()),
        ("tests/misplaced.rs", MISPLACED_RS),
        ("tests/vm.rs", VM_RS),
        (
            ".config/nextest.toml",
            include_str!("../nextest-snippet.toml"),
        ),
        // Rewritten every time (cargo prunes it to what this crate uses) so that it never
        // names versions the offline build does not have.
        ("Cargo.lock", lock.as_str()),
    ] {
        write_if_changed(&dir.join(path), text);
    }
    dir
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    fs::create_dir_all(path.parent().expect("a parent")).expect("create dir");
    fs::write(path, text).expect("write file");
}

/// `cargo <args>` in the downstream crate, without smolvm: no directory of `PATH` has one,
/// and nothing of this run's own smolvm, harness, libtest or nextest settings
/// leaks in.
fn cargo_downstream(args: &[&str]) -> Child {
    let dir = downstream_crate();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(args).current_dir(&dir);
    // What cargo or nextest set for this test process describes this package, not the
    // downstream one; the user's own cargo settings (CARGO_HOME, registries) stay.
    let removed = [
        "SMOLVM_",
        "RUST_TEST_",
        "NEXTEST",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_",
        "CARGO_TARGET_TMPDIR",
    ];
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if removed.iter().any(|p| key_text.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    // cargo, rustc and cargo-nextest stay on PATH; a smolvm there is taken off.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<_> = std::env::split_paths(&path)
        .filter(|d| !d.join("smolvm").exists())
        .collect();
    cmd.env("PATH", std::env::join_paths(kept).expect("PATH"));
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = cmd
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env("SMOLVM_HARNESS_STATE_DIR", scratch.path())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    Child {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        markers: Vec::new(),
    }
}

/// `#[requires_smolvm]` written above a `#[case]` does not compile, pointing at itself.
#[test]
fn above_a_case_is_a_compile_error() {
    let child = cargo_downstream(&["test", "--offline", "--no-run", "--test", "misplaced"]);
    let ctx = child.describe();
    assert_ne!(child.code, Some(0), "{ctx}");
    assert_eq!(child.stderr.matches(MISPLACED).count(), 2, "{ctx}");
    assert!(
        child
            .stderr
            .contains("write it after the last `#[case]`, or above `#[rstest]`"),
        "{ctx}"
    );
    for line in [5, 14] {
        assert!(
            child
                .stderr
                .contains(&format!("tests/misplaced.rs:{line}:1")),
            "the error points at the attribute on line {line}: {ctx}"
        );
    }
}

/// Under `cargo nextest run` with the shipped snippet as `.config/nextest.toml`, every
/// skipped test's `SKIPPED` line shows; without it (an empty config), none does.
#[test]
fn nextest_shows_skips_with_the_shipped_snippet() {
    let tests = ["boots::case_1_one", "boots::case_2_two", "lists"];
    let with = cargo_downstream(&["nextest", "run", "--offline", "--test", "vm"]);
    if with.stderr.contains("no such command") {
        eprintln!("cargo-nextest is not installed: not checked");
        return;
    }
    let ctx = with.describe();
    assert_eq!(with.code, Some(0), "{ctx}");
    let all = format!("{}{}", with.stdout, with.stderr);
    for test in tests {
        assert!(
            all.contains(&format!("SKIPPED {test}: {NOT_FOUND}")),
            "{test}: {ctx}"
        );
    }

    let empty = tempfile::NamedTempFile::new().expect("temp file");
    let config = empty.path().to_string_lossy().into_owned();
    let without = cargo_downstream(&[
        "nextest",
        "run",
        "--offline",
        "--test",
        "vm",
        "--config-file",
        &config,
    ]);
    let ctx = without.describe();
    assert_eq!(without.code, Some(0), "{ctx}");
    assert!(
        !format!("{}{}", without.stdout, without.stderr).contains("SKIPPED "),
        "nextest's default hides them, which is why the snippet exists: {ctx}"
    );
}
