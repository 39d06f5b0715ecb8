//! What the cleanup layers know about processes: whether a ledger's owner still runs, and
//! whether a `machine create` it started is still running after it died.
//!
//! Guarantee: every answer errs towards "alive". A wrong "alive" only delays a cleanup (the
//! entry stays for a later look); a wrong "dead" would delete a running test's machine or
//! drop the record of a create that is about to land.

use std::fs;
use std::io;

/// Variable set on every `machine create` the harness spawns for a ledgered machine: its
/// value names the ledger entry. After the owner dies, the create's process (in its own
/// process group, so nothing killed it) is found by this mark, with no pid to go stale.
pub(crate) const CREATE_MARK_ENV: &str = "SMOLVM_HARNESS_CREATE";

/// Whether a process runs, as far as this host can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    Dead,
    /// In another pid namespace (a container sharing the state directory): its pids mean
    /// nothing here, so it is never judged dead from here.
    Elsewhere,
}

/// Linux: field 22 of `/proc/PID/stat` (clock ticks after boot), which with the pid names
/// one process for the life of the boot.
pub(crate) fn start_time_of(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        proc_stat(pid).map(|(_, start)| start)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Linux: this process's pid namespace, e.g. `pid:[4026531836]`.
pub(crate) fn pid_namespace() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Linux: the kernel's id of this boot. Namespaces' inode numbers repeat across boots (the
/// initial one is always the same), so a namespace only means something with its boot.
pub(crate) fn boot_id() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Whether the process `pid` started at `start` still runs (in this namespace).
pub(crate) fn pid_alive(pid: u32, start: Option<u64>) -> bool {
    #[cfg(unix)]
    {
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if raw <= 0 {
            return false;
        }
        #[cfg(target_os = "linux")]
        if let Some((state, started)) = proc_stat(pid) {
            // A zombie has finished: its fds (our watcher connection among them) are closed.
            if matches!(state, 'Z' | 'X') {
                return false;
            }
            return start.is_none_or(|s| s == started);
        }
        let _ = start;
        // SAFETY: signal 0 is never delivered; kill only checks that the pid exists.
        let rc = unsafe { libc::kill(raw, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, start);
        true
    }
}

/// Whether some process still carries `CREATE_MARK_ENV=mark`: `Some(true)` while a create
/// runs, `Some(false)` once none does, `None` where this cannot be known (no `/proc`).
///
/// Only our own processes are readable, which is all a create of ours can be. A zombie's
/// environment reads empty: a create that has exited counts as over.
pub(crate) fn create_running(mark: &str) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        let needle = format!("{CREATE_MARK_ENV}={mark}");
        let listing = fs::read_dir("/proc").ok()?;
        let found = listing.flatten().any(|item| {
            let name = item.file_name();
            let is_pid = name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            is_pid
                && fs::read(item.path().join("environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        });
        Some(found)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = mark;
        None
    }
}

/// Wait (bounded) until the given processes, just sent SIGKILL, are dead, so that a look at
/// smolvm's machines afterwards cannot be overtaken by one of them.
pub(crate) fn wait_dead(pids: &[u32], limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while pids.iter().any(|&p| pid_alive(p, None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// State and start time of a process, from `/proc/PID/stat`.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The command name (field 2) may contain spaces and parentheses, so fields are counted
/// after its last `)`.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `fields` now starts at field 4; field 22 is starttime.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn stat_parsing_counts_fields_after_the_command_name() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("1 (x) Z"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn liveness_checks_pid_and_start_time() {
        let me = std::process::id();
        let start = start_time_of(me);
        assert!(pid_alive(me, start));
        assert!(pid_alive(me, None));
        if let Some(s) = start {
            // Same pid, other start time: a reused pid, so the owner is dead.
            assert!(!pid_alive(me, Some(s + 1)));
        }
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid, None));
        assert!(!pid_alive(0, None));
        assert!(!pid_alive(u32::MAX, None));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_zombie_counts_as_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_stat(pid).map(|s| s.0) != Some('Z') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!pid_alive(pid, None));
        child.wait().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_create_is_found_by_its_mark_while_it_runs_and_not_after() {
        let mark = format!("test-{}-{:?}", std::process::id(), Instant::now());
        assert_eq!(create_running(&mark), Some(false));
        let mut child = Command::new("sleep")
            .arg("5")
            .env(CREATE_MARK_ENV, &mark)
            .spawn()
            .unwrap();
        // Seen once the child's environment is readable (right after exec; under load the
        // first read can come before it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while create_running(&mark) != Some(true) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(create_running(&mark), Some(true));
        // Another mark is not this one.
        assert_eq!(create_running(&format!("{mark}x")), Some(false));
        child.kill().unwrap();
        // Killed but not reaped (a zombie): over.
        let deadline = Instant::now() + Duration::from_secs(5);
        while create_running(&mark) != Some(false) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(create_running(&mark), Some(false));
        child.wait().unwrap();
    }
}
