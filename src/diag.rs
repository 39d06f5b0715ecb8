//! How the harness talks to a person: one line at a time, straight to the process's stderr.
//!
//! Why not `eprintln!`: libtest captures it and shows it only for failing tests, but a leaked
//! machine, a skipped test or a kept machine must be visible in a passing run too. Why
//! `write(2)` on fd 2 rather than `std::io::stderr()`: the same function serves the exit hooks
//! and the crash watcher, which run after or before `main`, where std's handles are not to be
//! relied on. `log` cannot panic.
//!
//! The crate's own tests provoke these messages on purpose (failed deletes, kept machines);
//! [`capture`] lets such a test collect and assert them on its own thread instead of printing
//! them into every passing run. It is test support, hidden from the docs: no user code path
//! installs it, so what users see is unchanged.

use std::cell::RefCell;

/// Run `f`; every message logged on this thread meanwhile is collected and returned instead
/// of written to stderr. Other threads (and the exit hooks) still write to stderr. Nests: an
/// inner capture takes the messages of its own span. If `f` panics, what was collected is
/// logged after all (to stderr, or to the enclosing capture), so a failing test still shows it.
///
/// For the crate's own tests; not part of the supported API.
#[doc(hidden)]
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    /// Restores the outer capture; on unwinding, lets the collected lines out.
    struct Scope(Option<Option<Vec<String>>>);
    impl Drop for Scope {
        fn drop(&mut self) {
            // Already restored: `f` returned.
            let Some(outer) = self.0.take() else {
                return;
            };
            let mine = CAPTURED
                .try_with(|c| {
                    c.try_borrow_mut()
                        .ok()
                        .map(|mut s| std::mem::replace(&mut *s, outer))
                })
                .ok()
                .flatten()
                .flatten();
            if std::thread::panicking() {
                for msg in mine.unwrap_or_default() {
                    log(&msg);
                }
            }
        }
    }
    let outer = CAPTURED.with(|c| c.borrow_mut().replace(Vec::new()));
    let mut scope = Scope(Some(outer));
    let result = f();
    let outer = scope.0.take().flatten();
    let mine = CAPTURED.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    (result, mine.unwrap_or_default())
}

/// Write `msg` and a newline to stderr, ignoring errors (there is nowhere else to report them).
pub(crate) fn log(msg: &str) {
    if captured(msg) {
        return;
    }
    let mut line = Vec::with_capacity(msg.len() + 1);
    line.extend_from_slice(msg.as_bytes());
    line.push(b'\n');
    write_stderr(&line);
}

#[cfg(unix)]
fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live, initialised buffer of `bytes.len()` bytes to fd 2.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(n) {
            Ok(written) if written > 0 => bytes = &bytes[written.min(bytes.len())..],
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

#[cfg(not(unix))]
fn write_stderr(bytes: &[u8]) {
    use std::io::Write;
    // Unbuffered on every platform, so nothing is lost at exit.
    let _ = std::io::stderr().write_all(bytes);
}

thread_local! {
    /// The messages of this thread's innermost [`capture`], if one is running.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Keep `msg` for this thread's [`capture`], if there is one. Never fails: a thread-local
/// already torn down (thread exit, process exit) or busy means "not captured".
fn captured(msg: &str) -> bool {
    CAPTURED
        .try_with(|c| match c.try_borrow_mut() {
            Ok(mut slot) => match slot.as_mut() {
                Some(lines) => {
                    lines.push(msg.to_string());
                    true
                }
                None => false,
            },
            Err(_) => false,
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_collects_this_threads_messages_and_nests() {
        let ((), outer) = capture(|| {
            log("smolvm-harness: outer one");
            let ((), inner) = capture(|| log("smolvm-harness: inner"));
            assert_eq!(inner, ["smolvm-harness: inner"]);
            log("smolvm-harness: outer two");
        });
        assert_eq!(
            outer,
            ["smolvm-harness: outer one", "smolvm-harness: outer two"]
        );
        // Finished: nothing is captured any more on this thread.
        assert!(!captured("smolvm-harness: after"));
    }

    #[test]
    fn capture_does_not_reach_other_threads() {
        let (seen_elsewhere, mine) = capture(|| {
            log("smolvm-harness: here");
            std::thread::spawn(|| captured("smolvm-harness: elsewhere"))
                .join()
                .unwrap()
        });
        assert!(!seen_elsewhere);
        assert_eq!(mine, ["smolvm-harness: here"]);
    }

    const PANIC_CHILD: &str = "SMOLVM_HARNESS_TEST_DIAG_PANIC_CHILD";

    /// In a child process only: a capture whose closure panics.
    #[test]
    fn panic_inside_capture_child() {
        if std::env::var_os(PANIC_CHILD).is_none() {
            return;
        }
        let outcome = std::panic::catch_unwind(|| {
            capture(|| {
                log("smolvm-harness: captured before the panic");
                panic!("boom");
            })
        });
        assert!(outcome.is_err());
        assert!(!captured("not captured: the scope ended"));
        log("smolvm-harness: after the capture");
    }

    #[test]
    fn a_panic_inside_a_capture_ends_it_and_lets_its_messages_out() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "diag::tests::panic_inside_capture_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PANIC_CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("smolvm-harness:"))
            .collect();
        assert_eq!(
            lines,
            [
                "smolvm-harness: captured before the panic",
                "smolvm-harness: after the capture"
            ],
            "{stderr}"
        );
    }
}
