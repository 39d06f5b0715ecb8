//! Generated machine names: valid for any test name, unique across threads and processes.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;

use smolvm_harness::validate::{validate_machine_name, MAX_NAME_LEN};
use smolvm_harness::{current_test_name, generate_name};

/// Set in the child processes of `names_from_two_processes_never_collide`.
const HELPER_ENV: &str = "SMOLVM_HARNESS_TEST_NAMES_HELPER";
const NAMES_PER_PROCESS: usize = 200;

/// `<prefix>-<slug>` of a generated name: everything before the process token and counter.
fn stem(name: &str) -> &str {
    let mut parts = name.rsplitn(3, '-');
    let _counter = parts.next();
    let _token = parts.next();
    parts.next().unwrap_or("")
}

fn token_part(name: &str) -> &str {
    name.rsplit('-').nth(1).unwrap_or("")
}

#[test]
fn names_from_eight_threads_are_distinct_and_valid() {
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                (0..8)
                    .map(|_| generate_name("smt", &format!("tests::thread_{t}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let names: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(names.len(), 64);
    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), 64, "{names:#?}");
    for name in &names {
        validate_machine_name(name).unwrap();
    }
}

#[test]
fn shape_is_prefix_slug_token_counter() {
    let name = generate_name("smt", "tests::Boots_Alpine Quickly");
    assert_eq!(stem(&name), "smt-tests-boots-alpine-quickly");
    // A random per-process token, not the pid: pids repeat across pid namespaces.
    let token = token_part(&name);
    assert_eq!(token.len(), 10, "{name}");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    assert_eq!(token_part(&generate_name("smt", "other")), token);
}

#[test]
fn adversarial_test_names_still_give_valid_names() {
    let long = "x".repeat(300);
    let long_words = "a_b::".repeat(100);
    let inputs: &[&str] = &[
        "",
        "::",
        "a--b",
        "-",
        "_leading",
        "__",
        "trailing-",
        " spaced out ",
        "tab\tand\nnewline",
        "ünïcödé",
        "テスト",
        "🦀🦀",
        "!!!@@@###",
        "a.b/c\\d:e",
        &long,
        &long_words,
    ];
    for prefix in ["smt", "", "_x", "a.b", "x-", &"P".repeat(200)] {
        for input in inputs {
            let name = generate_name(prefix, input);
            assert!(name.len() <= MAX_NAME_LEN, "{prefix:?} {input:?} -> {name}");
            if let Err(e) = validate_machine_name(&name) {
                panic!("{prefix:?} {input:?} -> {name}: {e}");
            }
        }
    }
    // Nothing usable in the test name: a readable placeholder, not an empty slug.
    assert_eq!(stem(&generate_name("smt", "")), "smt-test");
    assert_eq!(stem(&generate_name("smt", "::")), "smt-test");
    assert_eq!(stem(&generate_name("smt", "a--b")), "smt-a-b");
    assert_eq!(stem(&generate_name("smt", "_leading")), "smt-leading");
}

#[test]
fn long_names_differing_only_at_the_end_stay_distinct() {
    let base = "tests::".to_string() + &"very_long_test_name_".repeat(10);
    let a = generate_name("smt", &format!("{base}one"));
    let b = generate_name("smt", &format!("{base}two"));
    assert!(a.len() <= MAX_NAME_LEN && b.len() <= MAX_NAME_LEN);
    assert_ne!(stem(&a), stem(&b), "{a} vs {b}");
    // The same long test name gives the same stem, so its machines can be found together,
    // also once the counter has grown by a digit or two.
    for _ in 0..1300 {
        let _ = generate_name("smt", "tests::filler");
    }
    let a2 = generate_name("smt", &format!("{base}one"));
    assert_eq!(stem(&a), stem(&a2));
    assert!(
        stem(&a).starts_with("smt-tests-very-long-test-name-"),
        "{a}"
    );
}

#[test]
fn current_test_name_is_the_libtest_thread_name() {
    let name = current_test_name();
    // libtest names the thread after the test; nextest may run it on `main` and name it in
    // NEXTEST_TEST_NAME instead. Either way the test's name is in it.
    assert!(
        name.ends_with("current_test_name_is_the_libtest_thread_name"),
        "{name}"
    );
    let from_helper_thread = thread::spawn(current_test_name).join().unwrap();
    let expected = std::env::var("NEXTEST_TEST_NAME").unwrap_or_else(|_| "test".into());
    assert_eq!(from_helper_thread, expected);
}

/// Not a test of its own: prints names when run as a child of the test below.
#[test]
fn names_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    for _ in 0..NAMES_PER_PROCESS {
        println!("NAME={}", generate_name("smt", "tests::same_test"));
    }
}

#[test]
fn names_from_two_processes_never_collide() {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "names_helper", "--nocapture", "--test-threads=1"])
                .env(HELPER_ENV, "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let children: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut all = HashSet::new();
    let mut tokens = HashSet::new();
    for out in &children {
        assert!(out.status.success(), "{out:?}");
        // libtest prints `test names_helper ... ` before the first line; hence split_once.
        let text = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("NAME=").map(|(_, name)| name.trim()))
            .collect();
        assert_eq!(names.len(), NAMES_PER_PROCESS, "{text}");
        for name in names {
            validate_machine_name(name).unwrap();
            tokens.insert(token_part(name).to_string());
            assert!(all.insert(name.to_string()), "duplicate {name}");
        }
    }
    // Same test name, same counters in each fresh child: only the token tells them apart.
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    for _ in 0..NAMES_PER_PROCESS {
        assert!(all.insert(generate_name("smt", "tests::same_test")));
    }
}
