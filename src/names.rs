//! Machine names that are unique across threads and processes, readable in `smolvm machine
//! ls`, and always within smolvm's name rules.
//!
//! The shape is `<prefix>-<slug of the test name>-<process token>-<counter base36>`, after the
//! pattern of the smolvm Node SDK: the test name says whose machine it is, a random token per
//! process separates concurrent test processes (nextest runs one per test) even where pids
//! repeat (containers sharing one smolvm), the counter separates machines of one process.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::validate::MAX_NAME_LEN;

/// The longest prefix kept, so that a long prefix cannot crowd out the test name.
const MAX_PREFIX_LEN: usize = 32;
/// What an unusable prefix is replaced by (the default of `SMOLVM_HARNESS_PREFIX`).
const FALLBACK_PREFIX: &str = "smt";
/// What a test name with nothing usable in it (empty, only punctuation or non-ASCII) becomes.
const FALLBACK_SLUG: &str = "test";
/// `-` plus 8 hex digits, appended to a truncated slug.
const HASH_SUFFIX_LEN: usize = 9;
/// Length of the per-process token, and base-36 digits of the largest counter (`u64::MAX`).
const TOKEN_LEN: usize = 10;
const MAX_COUNTER_LEN: usize = 13;

/// A fresh machine name for a test: `<prefix>-<slug>-<token>-<counter>`: the token is 10
/// random base-36 characters drawn once per process, the counter counts in base 36.
///
/// The slug is the test name lowercased, with every run of characters outside `[a-z0-9]`
/// (`::`, spaces, `_`, `-`, non-ASCII) turned into one `-`. When the name could exceed
/// smolvm's 128 characters (reckoning with the widest counter, so that all machines
/// of a test share one `<prefix>-<slug>`), the slug is cut and followed by 8 hex digits of a
/// hash of the full test name, so long names that differ only at the end still differ. The
/// counter is one process-wide atomic, so names never repeat within a process, and the token
/// separates processes, also processes with the same pid in different pid namespaces. On
/// smolvm before 1.8.0 (no labels) this is what proves a generated machine the harness's own.
///
/// The result passes [`crate::validate::validate_machine_name`] for any input. A prefix that would not
/// (e.g. one with `.` or a leading `_`) is cleaned up the same way, keeping case and `_`; an
/// empty one becomes `smt`.
///
/// ```
/// use smolvm_harness::generate_name;
/// use smolvm_harness::validate::validate_machine_name;
///
/// let name = generate_name("smt", "tests::boots_alpine");
/// assert!(name.starts_with("smt-tests-boots-alpine-"));
/// validate_machine_name(&name).unwrap();
/// assert_ne!(name, generate_name("smt", "tests::boots_alpine"));
/// ```
pub fn generate_name(prefix: &str, test_name: &str) -> String {
    let prefix = clean_prefix(prefix);
    let token = crate::cleanup::process_token();
    let counter = to_base36(next_counter());
    // The widest counter is assumed, not the actual one, so that a test's slug (and with it
    // `<prefix>-<slug>`) is the same for all its machines: the counter growing by a digit
    // must not cut the slug one character shorter.
    let budget = MAX_NAME_LEN - (prefix.len() + 3 + TOKEN_LEN + MAX_COUNTER_LEN);

    let mut slug = slug(test_name);
    if slug.is_empty() {
        slug.push_str(FALLBACK_SLUG);
    }
    if slug.len() > budget {
        let hash = format!("{:08x}", fnv1a_32(test_name.as_bytes()));
        // The slug is ASCII, so any byte index is a char boundary.
        let kept = slug[..budget - HASH_SUFFIX_LEN].trim_end_matches('-');
        slug = if kept.is_empty() {
            hash
        } else {
            format!("{kept}-{hash}")
        };
    }
    format!("{prefix}-{slug}-{token}-{counter}")
}

/// The name of the running test, for naming its machines and for skip lines.
///
/// The first of:
/// 1. the name given to this thread by [`with_test_name`] (or carried into it by
///    [`carry_test_name`]);
/// 2. under nextest, which runs one test per process, that test (`NEXTEST_TEST_NAME`), on
///    any thread of the process: the test's own, `spawn_blocking`'s, a thread it started;
/// 3. the thread's name: libtest runs each test on a thread named after it
///    (`tests::it_works`), and `#[tokio::test]` runs the test's future on that thread;
/// 4. `test`.
///
/// Under `cargo test` a thread the test starts (a `std::thread::spawn`, tokio's
/// `spawn_blocking`) has another name or none, and nothing ties it to the test: carry the
/// name there with [`carry_test_name`], or give machines a name with
/// [`MachineBuilder::test_name`](crate::MachineBuilder::test_name).
pub fn current_test_name() -> String {
    if let Some(name) = scoped_test_name() {
        return name;
    }
    if let Some(name) = nextest_test_name() {
        return name;
    }
    match std::thread::current().name() {
        Some(name) if !name.is_empty() && name != "main" => name.to_string(),
        _ => FALLBACK_SLUG.to_string(),
    }
}

/// Run `f` with `name` as [`current_test_name`] on this thread, then restore what was there
/// (also when `f` panics).
///
/// For blocking code on a thread that is not the test's own; [`carry_test_name`] does this
/// for a closure handed to another thread. It sets a thread-local, so it does not follow an
/// `async` block across `.await` points: use it inside `spawn_blocking`, not around a
/// future.
///
/// ```
/// use smolvm_harness::{current_test_name, with_test_name};
///
/// let name = with_test_name("vm::boots", current_test_name);
/// assert_eq!(name, "vm::boots");
/// ```
pub fn with_test_name<R>(name: &str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            // `try_with`: a thread-local being torn down is no reason to panic in a drop.
            let _ = SCOPED_NAME.try_with(|slot| slot.replace(self.0.take()));
        }
    }
    let previous = SCOPED_NAME.with(|slot| slot.replace(Some(name.to_string())));
    let _restore = Restore(previous);
    f()
}

/// `f`, wrapped to run under the test name of the thread that calls this: take the name now,
/// on the test's thread, and give it to the thread that runs `f` ([`with_test_name`]).
///
/// ```
/// use smolvm_harness::{carry_test_name, current_test_name, with_test_name};
///
/// with_test_name("vm::boots", || {
///     let on_other_thread = std::thread::spawn(carry_test_name(current_test_name))
///         .join()
///         .unwrap();
///     assert_eq!(on_other_thread, "vm::boots");
/// });
/// ```
///
/// With tokio: `tokio::task::spawn_blocking(carry_test_name(move || { .. }))`.
pub fn carry_test_name<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let name = current_test_name();
    move || with_test_name(&name, f)
}

thread_local! {
    /// The name set by [`with_test_name`] on this thread.
    static SCOPED_NAME: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

fn scoped_test_name() -> Option<String> {
    SCOPED_NAME
        .try_with(|slot| {
            let name = slot.take();
            slot.set(name.clone());
            name
        })
        .ok()
        .flatten()
}

/// The test nextest runs in this process. `NEXTEST_TEST_NAME` alone is not enough: a process
/// the test starts inherits it (a libtest binary run by a test, say), so it counts only when
/// this process was also asked for that test on its command line (nextest runs
/// `<binary> --exact <name> --nocapture`).
pub(crate) fn nextest_test_name() -> Option<String> {
    let name = std::env::var("NEXTEST_TEST_NAME").ok()?;
    if name.trim().is_empty() {
        return None;
    }
    std::env::args().skip(1).any(|a| a == name).then_some(name)
}

fn next_counter() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Only uniqueness matters, not ordering with other memory.
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Lowercase `[a-z0-9]` runs joined by single `-`, no `-` at either end.
fn slug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('-');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// The prefix as given when it is already valid (`SMOLVM_HARNESS_PREFIX` is checked to be);
/// otherwise `[A-Za-z0-9_]` runs joined by `-`, starting with a letter or digit.
fn clean_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len().min(MAX_PREFIX_LEN));
    let mut gap = false;
    for c in prefix.chars() {
        let keep = c.is_ascii_alphanumeric() || (c == '_' && !out.is_empty());
        if keep {
            if gap && !out.is_empty() {
                out.push('-');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
        if out.len() >= MAX_PREFIX_LEN {
            break;
        }
    }
    out.truncate(MAX_PREFIX_LEN);
    let trimmed = out.trim_end_matches('-').len();
    out.truncate(trimmed);
    if out.is_empty() {
        FALLBACK_PREFIX.to_string()
    } else {
        out
    }
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".to_string();
    }
    let mut buf = Vec::with_capacity(13);
    while n > 0 {
        buf.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    buf.reverse();
    String::from_utf8_lossy(&buf).into_owned()
}

/// 32-bit FNV-1a: tiny, dependency-free and stable across Rust versions, unlike
/// `DefaultHasher`, whose output may change and so cannot name things on disk.
pub(crate) fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// 64-bit FNV-1a, for names of on-disk cache directories.
pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_machine_name;

    #[test]
    fn slugs() {
        assert_eq!(slug("tests::It_Works"), "tests-it-works");
        assert_eq!(slug("::a--b::"), "a-b");
        assert_eq!(slug("ünï cödé"), "n-c-d");
        assert_eq!(slug("!!!"), "");
    }

    #[test]
    fn prefixes() {
        assert_eq!(clean_prefix("smt"), "smt");
        assert_eq!(clean_prefix("My_Pfx"), "My_Pfx");
        assert_eq!(clean_prefix("_a.b-"), "a-b");
        assert_eq!(clean_prefix("--"), "smt");
        assert_eq!(clean_prefix(&"p".repeat(100)).len(), MAX_PREFIX_LEN);
        assert_eq!(
            clean_prefix(&format!("{}-x", "p".repeat(31))),
            "p".repeat(31)
        );
    }

    #[test]
    fn base36_and_hashes() {
        assert_eq!(crate::cleanup::process_token().len(), TOKEN_LEN);
        assert_eq!(to_base36(u64::MAX).len(), MAX_COUNTER_LEN);
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
        assert_eq!(to_base36(u64::MAX), "3w5e11264sgsf");
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn worst_case_lengths_stay_valid() {
        let long_prefix = "P".repeat(200);
        for test in ["", "x", &"y".repeat(500), &"a-".repeat(300)] {
            let name = generate_name(&long_prefix, test);
            validate_machine_name(&name).unwrap();
            assert!(name.len() <= MAX_NAME_LEN);
        }
    }
}
