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
/// The result passes [`crate::validate_machine_name`] for any input. A prefix that would not
/// (e.g. one with `.` or a leading `_`) is cleaned up the same way, keeping case and `_`; an
/// empty one becomes `smt`.
///
/// ```
/// use smolvm_harness::{generate_name, validate_machine_name};
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

/// The name of the running test, for naming its machines.
///
/// libtest runs each test on a thread named after it (`tests::it_works`), so that name is
/// used. Under nextest the test may run on the process's `main` thread; nextest then names
/// the test in `NEXTEST_TEST_NAME`. Anything else (a helper thread without a name, a plain
/// program) gives `test`.
pub fn current_test_name() -> String {
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if !name.is_empty() && name != "main" => name.to_string(),
        _ => match std::env::var("NEXTEST_TEST_NAME") {
            Ok(name) if !name.trim().is_empty() => name,
            _ => FALLBACK_SLUG.to_string(),
        },
    }
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
