//! Skip-guards: decide at run time whether a test that needs a real smolvm runs, is skipped,
//! or fails.
//!
//! | smolvm | `SMOLVM_HARNESS_REQUIRE` | the test |
//! |---|---|---|
//! | `SMOLVM_BIN`, else `smolvm` on `PATH`, resolves to an executable file | any | runs |
//! | `SMOLVM_BIN` unset (or empty), no `smolvm` on `PATH` | unset or `0` | is **skipped**: returns at once, its fixtures are never built |
//! | `SMOLVM_BIN` unset (or empty), no `smolvm` on `PATH` | `1` | **fails**, with the same reason |
//! | `SMOLVM_BIN` set, but not to an executable file (or a name on `PATH`) | any | **fails**: `SMOLVM_BIN=/x is not an executable file` |
//!
//! A `SMOLVM_BIN` that was set means "use this one", so a typo in it fails every guarded
//! test instead of skipping them all.
//!
//! Two ways to guard a test:
//!
//! ```no_run
//! use rstest::rstest;
//! use smolvm_harness::{fixtures::machine, require_smolvm, requires_smolvm, Machine};
//!
//! // With rstest: the check runs before any fixture is evaluated, in every case and every
//! // `#[values]` combination.
//! #[rstest]
//! #[requires_smolvm]
//! fn boots(machine: Machine) {
//!     machine.exec(&["true"]).unwrap().assert_success();
//! }
//!
//! // In a plain test: the first statement. `require_smolvm!(value)` returns `value` instead.
//! #[test]
//! fn lists() -> smolvm_harness::Result<()> {
//!     require_smolvm!();
//!     smolvm_harness::Smolvm::from_env().machine_list()?;
//!     Ok(())
//! }
//! ```
//!
//! # Where the attribute goes in an rstest test
//!
//! rstest gives each `#[case]` the attributes written **before** its `#[case]` line, and
//! gives every case (and every `#[values]` combination) the attributes written after the
//! last one. So these are the placements that guard every generated test:
//!
//! ```no_run
//! # use rstest::rstest;
//! # use smolvm_harness::{fixtures::machine, requires_smolvm, Machine};
//! // Above `#[rstest]`: the attribute moves itself below the last `#[case]`.
//! #[requires_smolvm]
//! #[rstest]
//! #[case::alpine("alpine")]
//! #[case::debian("debian")]
//! fn above(machine: Machine, #[case] image: &str) {}
//!
//! // After the last `#[case]`.
//! #[rstest]
//! #[case::alpine("alpine")]
//! #[case::debian("debian")]
//! #[requires_smolvm]
//! fn after_cases(machine: Machine, #[case] image: &str) {}
//!
//! // Directly under `#[rstest]` when there is no `#[case]`: fixtures only, or `#[values]`.
//! #[rstest]
//! #[requires_smolvm]
//! fn combinations(machine: Machine, #[values(1, 2)] cpus: u32, #[values(256, 512)] mib: u32) {}
//! ```
//!
//! Written above a `#[case]` line (directly under `#[rstest]`, or between cases), it would
//! guard that one case while the others ran without smolvm, so that is a compile error:
//!
//! ```text
//! #[rstest]
//! #[requires_smolvm] // error: `#[requires_smolvm]` written above a `#[case]` guards that case only …
//! #[case::one(1)]
//! #[case::two(2)]
//! fn under_rstest_before_the_cases(#[case] n: u32) {}
//! ```
//!
//! (rstest compiles its cases under `cfg(test)` only, so a doctest cannot show this error;
//! `tests/skip.rs` checks it by building a small crate.)
//!
//! # What a skip looks like
//!
//! The check is made at run time, not when the test is compiled (as `test-with` does), so a
//! test binary built before smolvm was installed runs its tests once it is. libtest has no
//! run-time "ignored" status, so a skipped test is reported as **passed**; to keep that
//! honest, every skip writes one line straight to the process's stderr, past libtest's
//! output capture, so it shows in a passing `cargo test` run:
//!
//! ```text
//! SKIPPED tests::boots: smolvm not found on PATH (install it, or set SMOLVM_BIN)
//! ```
//!
//! and when the test process exits, one summary line counts the skips:
//!
//! ```text
//! smolvm-harness: 3 test(s) skipped: smolvm not found on PATH (install it, or set SMOLVM_BIN); set SMOLVM_HARNESS_REQUIRE=1 to make that a failure
//! ```
//!
//! Set `SMOLVM_HARNESS_REQUIRE=1` in CI jobs that are meant to run VMs: a missing smolvm
//! then fails every guarded test instead of passing them all silently.
//!
//! # Seeing skips under nextest
//!
//! `cargo nextest run` hides the output of passing tests, the skip lines with it, and has no
//! status a test can give itself at run time (its "skipped" counts only tests it filtered
//! out), so by default a skipped test is one more `PASS`. The crate ships
//! `nextest-snippet.toml`: copy it into your `.config/nextest.toml` and a plain `cargo
//! nextest run` prints each skipped test's `SKIPPED` line after the summary:
//!
//! ```toml
//! [[profile.default.overrides]]
//! filter = 'all()'          # or where your VM tests live: 'binary(vm_tests)', 'test(/^vm::/)'
//! success-output = "final"
//! ```
//!
//! Without the file, pass `--success-output final` (or `immediate`). nextest runs each test
//! in its own process, so each skipped test also prints its own one-test summary. In CI,
//! `SMOLVM_HARNESS_REQUIRE=1 cargo nextest run` fails instead.
//!
//! # Misuse is a compile error
//!
//! The attribute guards functions only, takes no arguments, and needs a return type a skip
//! can produce (see [`SkipReturn`]):
//!
//! ```compile_fail
//! #[smolvm_harness::requires_smolvm]
//! struct NotATest;
//! ```
//!
//! ```compile_fail
//! #[smolvm_harness::requires_smolvm(always)]
//! fn with_arguments() {}
//! ```
//!
//! ```compile_fail
//! #[smolvm_harness::requires_smolvm]
//! fn returns_a_number() -> u32 {
//!     1
//! }
//! ```
//!
//! # Limits
//!
//! * A skipped `#[should_panic]` test does not panic, so libtest reports it as failed.
//! * The expansion names `::smolvm_harness`: a crate that renames the dependency cannot use
//!   the macros.
//! * Availability means "the binary resolves to an executable file" (checked once per
//!   process and binary). A smolvm that is installed but broken is not skipped: the test runs
//!   and fails with smolvm's own error, which is what you want to see.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::cli::{is_available, resolve_program, smolvm_bin_from_env};
use crate::config::config;
use crate::diag;
use crate::names::current_test_name;

/// What to do with a test that needs smolvm, in this process: see [`smolvm_check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipDecision {
    /// smolvm is available: run the test.
    Run,
    /// smolvm is missing: skip the test, for this reason.
    Skip(String),
    /// smolvm is missing and `SMOLVM_HARNESS_REQUIRE=1` (or that setting is malformed): fail
    /// the test, with this message.
    Fail(String),
}

impl SkipDecision {
    /// True for [`SkipDecision::Run`].
    #[must_use]
    pub fn runs(&self) -> bool {
        matches!(self, SkipDecision::Run)
    }

    /// Why the test does not run, for [`SkipDecision::Skip`] and [`SkipDecision::Fail`].
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            SkipDecision::Run => None,
            SkipDecision::Skip(reason) | SkipDecision::Fail(reason) => Some(reason),
        }
    }

    /// Act on the decision for the test `test_name`: `false` to run it; `true` when it is
    /// skipped, after writing the `SKIPPED` line to stderr and counting the skip for the
    /// summary at exit; a panic at the caller's location when it must fail.
    ///
    /// ```should_panic
    /// use smolvm_harness::skip::SkipDecision;
    /// assert!(!SkipDecision::Run.apply("t"));
    /// let _ = SkipDecision::Fail("smolvm is required".into()).apply("t"); // panics: "t: smolvm is required"
    /// ```
    ///
    /// # Panics
    ///
    /// For [`SkipDecision::Fail`], with `"<test_name>: <message>"`.
    #[track_caller]
    #[must_use = "`true` means the test must return now"]
    pub fn apply(self, test_name: &str) -> bool {
        match self {
            SkipDecision::Run => false,
            SkipDecision::Skip(reason) => {
                record_skip(test_name, &reason);
                true
            }
            // A plain panic (not `Result`) so that it works in any test, and at the caller's
            // line so that the report points at the guarded test, not at this file.
            SkipDecision::Fail(message) => panic!("{test_name}: {message}"),
        }
    }
}

/// Decide, for this process, whether a test that needs smolvm runs, is skipped or fails:
/// smolvm available ([`crate::is_available`]) → run; `SMOLVM_BIN` set but not resolving →
/// fail; otherwise missing → skip, or fail when `SMOLVM_HARNESS_REQUIRE=1`. The reason names
/// what was looked for: `smolvm not found on PATH (install it, or set SMOLVM_BIN)`, or
/// `SMOLVM_BIN=/x is not an executable file`. With `SMOLVM_HOST` set, the server is what is
/// looked for: one that does not answer `GET /health` (bounded, 10 s at most) skips, or fails
/// under `SMOLVM_HARNESS_REQUIRE=1`; a value that cannot be used fails.
///
/// Nothing is printed or counted; [`SkipDecision::apply`] does that.
#[must_use]
pub fn smolvm_check() -> SkipDecision {
    if is_available() {
        return SkipDecision::Run;
    }
    let require = config().map(|c| c.require).map_err(|e| e.to_string());
    if let Some(url) = crate::cli::smolvm_host_from_env() {
        // A server that does not answer is like a smolvm that is not installed (skip); a
        // value that cannot be used is a mistake (fail), as a wrong `SMOLVM_BIN` is.
        let usable = crate::Smolvm::remote(&url);
        let reason = match &usable {
            Ok(_) => format!(
                "the smolvm API at SMOLVM_HOST={url} did not answer GET /health ({}; start \
                 `smolvm serve` there, or unset SMOLVM_HOST)",
                crate::cli::health_failure(&url).unwrap_or_else(|| "no answer".to_string())
            ),
            Err(e) => format!("SMOLVM_HOST cannot be used: {e}"),
        };
        return decide(false, usable.is_err(), &reason, require);
    }
    decide(false, smolvm_bin_is_set(), &unavailable_reason(), require)
}

/// The check the macros make: [`smolvm_check`] applied to the running test (named by its
/// thread, as libtest and nextest name it). `true` means "return now".
///
/// Prefer [`require_smolvm!`](crate::require_smolvm) or
/// [`#[requires_smolvm]`](crate::requires_smolvm); this is for guards of your own.
#[track_caller]
#[must_use = "`true` means the test must return now"]
pub fn skip_unless_smolvm() -> bool {
    let decision = smolvm_check();
    if decision.runs() {
        return false;
    }
    decision.apply(&current_test_name())
}

/// How many tests this process has skipped so far.
#[must_use]
pub fn skipped_count() -> usize {
    SKIPPED.load(Ordering::Relaxed)
}

/// What a skipped test returns. Implemented for the return types libtest accepts from a
/// test that passes: `()`, `Result<T, E>` (as `Ok(T::skipped())`, so `Ok(())`) and
/// [`ExitCode`] (`SUCCESS`).
///
/// [`require_smolvm!`](crate::require_smolvm) and
/// [`#[requires_smolvm]`](crate::requires_smolvm) return `SkipReturn::skipped()`, so the
/// right value is found from the test's return type, aliases included.
#[diagnostic::on_unimplemented(
    message = "a test guarded by `require_smolvm!()` or `#[requires_smolvm]` must return `()` \
               or `Result<(), E>`, not `{Self}`",
    note = "for any other return type, say what a skip returns: `require_smolvm!(value)`"
)]
pub trait SkipReturn {
    /// The value a skipped test returns.
    fn skipped() -> Self;
}

impl SkipReturn for () {
    fn skipped() {}
}

impl<T: SkipReturn, E> SkipReturn for Result<T, E> {
    fn skipped() -> Self {
        Ok(T::skipped())
    }
}

impl SkipReturn for ExitCode {
    fn skipped() -> Self {
        ExitCode::SUCCESS
    }
}

/// Return from the enclosing test unless smolvm is available; fail it instead when
/// `SMOLVM_HARNESS_REQUIRE=1`. Write it as the test's first statement.
///
/// * `require_smolvm!()` returns `()` or `Ok(())`, whichever the test returns (see
///   [`SkipReturn`]);
/// * `require_smolvm!(value)` returns `value`.
///
/// ```no_run
/// #[test]
/// fn lists_machines() {
///     smolvm_harness::require_smolvm!();
///     smolvm_harness::Smolvm::from_env().machine_list().unwrap();
/// }
///
/// #[test]
/// fn lists_machines_result() -> Result<(), smolvm_harness::Error> {
///     smolvm_harness::require_smolvm!(Ok(()));
///     smolvm_harness::Smolvm::from_env().machine_list()?;
///     Ok(())
/// }
/// ```
///
/// In an rstest test, the fixtures have been built by the time the body runs; use
/// [`#[requires_smolvm]`](crate::requires_smolvm) there instead.
#[macro_export]
macro_rules! require_smolvm {
    () => {
        if $crate::skip::skip_unless_smolvm() {
            return <_ as $crate::skip::SkipReturn>::skipped();
        }
    };
    ($skipped:expr) => {
        if $crate::skip::skip_unless_smolvm() {
            return $skipped;
        }
    };
}

/// The decision, given availability, whether `SMOLVM_BIN` names the binary, the reason it
/// is missing, and the require setting (an error text when the setting could not be read).
fn decide(
    available: bool,
    bin_is_set: bool,
    reason: &str,
    require: Result<bool, String>,
) -> SkipDecision {
    match (available, bin_is_set, require) {
        (true, _, _) => SkipDecision::Run,
        // Whoever set SMOLVM_BIN meant "use this one": a typo there must not turn the whole
        // suite into passing skips.
        (false, true, _) => SkipDecision::Fail(reason.to_string()),
        (false, false, Ok(false)) => SkipDecision::Skip(reason.to_string()),
        (false, false, Ok(true)) => SkipDecision::Fail(format!(
            "smolvm is required (SMOLVM_HARNESS_REQUIRE=1) but {reason}"
        )),
        // A malformed setting is an error, never read as "not required": someone meant to
        // set it, most likely to make CI strict.
        (false, false, Err(e)) => SkipDecision::Fail(format!(
            "{reason}, and whether that is a failure is unknown: {e}"
        )),
    }
}

/// `SMOLVM_BIN` is set to something (empty counts as unset, as everywhere in the crate).
fn smolvm_bin_is_set() -> bool {
    std::env::var_os("SMOLVM_BIN").is_some_and(|v| !v.is_empty())
}

/// Why the binary from the environment does not resolve, in the words of the skip line.
fn unavailable_reason() -> String {
    let program = smolvm_bin_from_env();
    let from_env = smolvm_bin_is_set();
    let has_dir = program.components().count() > 1 || program.is_absolute();
    match (from_env, has_dir) {
        (false, _) => "smolvm not found on PATH (install it, or set SMOLVM_BIN)".to_string(),
        (true, true) => format!("SMOLVM_BIN={} is not an executable file", program.display()),
        (true, false) if resolve_program(&program).is_err() => format!(
            "SMOLVM_BIN={} is not on PATH (set it to the path of the smolvm binary)",
            program.display()
        ),
        // Resolves now but did not when availability was first checked (and cached).
        (true, false) => format!(
            "SMOLVM_BIN={} was not found when first checked",
            program.display()
        ),
    }
}

static SKIPPED: AtomicUsize = AtomicUsize::new(0);
/// The reason of the first skip; every skip in a process has the same one, since
/// availability is checked once per process.
static REASON: OnceLock<String> = OnceLock::new();

fn record_skip(test_name: &str, reason: &str) {
    // The exit hook is registered by a static in this module's object; naming the hook here
    // keeps a linker that drops unreferenced objects from dropping the summary with it.
    std::hint::black_box(summarise_skips as fn());
    let _ = REASON.set(reason.to_string());
    SKIPPED.fetch_add(1, Ordering::Relaxed);
    diag::log(&format!("SKIPPED {test_name}: {reason}"));
}

/// The summary at process exit: once per process, after libtest's own report.
///
/// Minimal on purpose (see the `dtor` crate's warnings about life after main): it reads an
/// atomic and a `OnceLock`, builds one string and writes it with `write(2)`, which works
/// whatever state std's stdio is in. It cannot panic short of running out of memory.
//
// SAFETY (the `unsafe` the `dtor` crate asks to acknowledge): the function touches no
// thread-local, spawns nothing and locks nothing, so running after `main` is sound.
#[dtor::dtor(unsafe)]
fn summarise_skips() {
    let count = SKIPPED.load(Ordering::Relaxed);
    // Under nextest a process runs one test, whose own SKIPPED line already says it all.
    if count == 0 || (count == 1 && std::env::var_os("NEXTEST_RUN_ID").is_some()) {
        return;
    }
    let reason = REASON
        .get()
        .map_or("smolvm is not available", String::as_str);
    let line = format!(
        "smolvm-harness: {count} test(s) skipped: {reason}; set SMOLVM_HARNESS_REQUIRE=1 to make \
         that a failure"
    );
    crate::diag::log(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let reason = "smolvm not found on PATH (install it, or set SMOLVM_BIN)";
        assert_eq!(decide(true, false, reason, Ok(true)), SkipDecision::Run);
        assert_eq!(decide(true, true, reason, Ok(false)), SkipDecision::Run);
        assert_eq!(
            decide(true, false, reason, Err("bad".into())),
            SkipDecision::Run
        );
        assert_eq!(
            decide(false, false, reason, Ok(false)),
            SkipDecision::Skip(reason.to_string())
        );
        let bad_bin = "SMOLVM_BIN=/x is not an executable file";
        for require in [Ok(false), Ok(true), Err("bad".to_string())] {
            assert_eq!(
                decide(false, true, bad_bin, require),
                SkipDecision::Fail(bad_bin.to_string())
            );
        }
        let fail = decide(false, false, reason, Ok(true));
        assert_eq!(
            fail.reason(),
            Some(
                "smolvm is required (SMOLVM_HARNESS_REQUIRE=1) but smolvm not found on PATH \
                 (install it, or set SMOLVM_BIN)"
            )
        );
        let malformed = decide(
            false,
            false,
            reason,
            Err("invalid SMOLVM_HARNESS_REQUIRE".into()),
        );
        assert!(
            matches!(malformed, SkipDecision::Fail(ref m) if m.contains("invalid SMOLVM_HARNESS_REQUIRE"))
        );
    }

    #[test]
    fn run_does_nothing_and_fail_panics() {
        // `Skip` is exercised by tests/skip.rs in child processes: here it would print a
        // SKIPPED line and a summary into this crate's own test run.
        assert!(!SkipDecision::Run.apply("unit::run"));
        let panic =
            std::panic::catch_unwind(|| SkipDecision::Fail("needed".into()).apply("unit::fail"))
                .expect_err("a Fail decision panics");
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(text, "unit::fail: needed");
    }

    #[test]
    fn skip_return_values() {
        assert_eq!(<Result<(), String> as SkipReturn>::skipped(), Ok(()));
        assert_eq!(
            <Result<Result<(), u8>, String> as SkipReturn>::skipped(),
            Ok(Ok(()))
        );
        assert_eq!(<ExitCode as SkipReturn>::skipped(), ExitCode::SUCCESS);
    }
}
