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

// Written above `#[rstest]`: the attribute moves itself below it, so the order does not
// matter. The fixture marker proves it.
#[requires_smolvm]
#[rstest]
#[ignore = "run in a child process by the tests of tests/skip.rs"]
fn subject_attr_above_rstest(tracked: Tracked) {
    let Tracked = tracked;
    mark("body");
}

/// Every subject as libtest names it, and whether it takes the fixture.
const SUBJECTS: &[(&str, bool)] = &[
    ("subject_macro", false),
    ("subject_macro_explicit_value", false),
    ("subject_macro_inferred_result", false),
    ("subject_attr_plain", false),
    ("subject_attr_result", false),
    ("subject_rstest", true),
    ("subject_rstest_cases::case_1_one", true),
    ("subject_rstest_cases::case_2_two", true),
    ("subject_attr_above_rstest", true),
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
    for (name, _) in SUBJECTS {
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

/// The brief's form of the check: one test, `--exact`, `--nocapture`, and a `SMOLVM_BIN`
/// that does not exist, named as such in the reason. `SMOLVM_HARNESS_REQUIRE=0` is "not
/// required".
#[test]
fn a_bad_smolvm_bin_is_named_in_the_reason() {
    let child = run_child(
        &["--exact", "subject_rstest", "--nocapture"],
        Smolvm::BadBin,
        &[("SMOLVM_HARNESS_REQUIRE", "0")],
    );
    let ctx = child.describe();
    let reason = "SMOLVM_BIN=/nonexistent/smolvm is not an executable file";
    assert_eq!(child.code, Some(0), "{ctx}");
    assert!(child.stdout.contains("1 passed"), "{ctx}");
    assert_eq!(
        child.skipped_lines(),
        [format!("SKIPPED subject_rstest: {reason}")],
        "{ctx}"
    );
    assert_eq!(
        child.summaries(),
        [format!(
            "smolvm-harness: 1 test(s) skipped: {reason}{SUMMARY_TAIL}"
        )],
        "{ctx}"
    );
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
    for (name, _) in SUBJECTS {
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
    for (name, fixture) in SUBJECTS {
        let test = name.replace("::", ".");
        let body = match *name {
            "subject_rstest_cases::case_1_one" => "body1",
            "subject_rstest_cases::case_2_two" => "body2",
            _ => "body",
        };
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
