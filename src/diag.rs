//! How the harness talks to a person: one line at a time, straight to the process's stderr.
//!
//! Why not `eprintln!`: libtest captures it and shows it only for failing tests, but a leaked
//! machine, a skipped test or a kept machine must be visible in a passing run too. Why
//! `write(2)` on fd 2 rather than `std::io::stderr()`: the same function serves the exit hooks
//! and the crash watcher, which run after or before `main`, where std's handles are not to be
//! relied on. Nothing here can panic.

/// Write `msg` and a newline to stderr, ignoring errors (there is nowhere else to report them).
pub(crate) fn log(msg: &str) {
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
