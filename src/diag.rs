//! How the harness talks to a person: one line at a time, straight to the process's stderr.
//!
//! Why not `eprintln!`: libtest captures it and shows it only for failing tests, but a leaked
//! machine, a skipped test or a kept machine must be visible in a passing run too. Writing to
//! the stderr handle bypasses the capture. Nothing here can panic.

use std::io::Write;

/// Write `msg` and a newline to stderr, ignoring errors (there is nowhere else to report them).
pub(crate) fn log(msg: &str) {
    let mut line = String::with_capacity(msg.len() + 1);
    line.push_str(msg);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
