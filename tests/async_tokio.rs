//! Async tests: `#[tokio::test]` calling the harness's blocking API through
//! `spawn_blocking`, the pattern src/guide.md ("Async tests") documents, against the
//! simulation. The point checked is the machine's name: it must carry the test's name even
//! though the machine is made on one of tokio's blocking threads.

use std::fs;
use std::process::{Command, Stdio};

use smolvm_harness::{carry_test_name, current_test_name, Machine, Smolvm};

/// The slug the generated names of the test below contain.
const SLUG: &str = "-spawn-blocking-machine-is-named-after-the-test-";

#[tokio::test]
async fn spawn_blocking_machine_is_named_after_the_test() {
    let vm = tokio::task::spawn_blocking(carry_test_name(|| {
        Machine::builder().smolvm(Smolvm::simulated()).start()
    }))
    .await
    .expect("the blocking task ran")
    .expect("the machine started");
    assert!(vm.name().contains(SLUG), "{}", vm.name());

    // Commands block too, and so does the delete on drop: both off the runtime's thread.
    let out = tokio::task::spawn_blocking(move || {
        let out = vm.exec(&["echo", "hi"]);
        drop(vm);
        out
    })
    .await
    .expect("the blocking task ran")
    .expect("exec");
    out.assert_success();
}

/// `std::thread::spawn` is the same case as `spawn_blocking`: a thread that libtest did not
/// name after the test.
#[test]
fn a_plain_thread_gets_the_name_carried_to_it() {
    let name = std::thread::spawn(carry_test_name(current_test_name))
        .join()
        .expect("thread");
    assert_eq!(name, "a_plain_thread_gets_the_name_carried_to_it");
}

// ---------------------------------------------------------------------------------------
// Under nextest, the name follows into every thread of the process without being carried.
// Checked in a child process of this binary, given what nextest gives a test process.

/// Where the subject writes the name it saw.
const OUT: &str = "SMOLVM_HARNESS_TEST_NAME_OUT";

#[tokio::test]
#[ignore = "run in a child process by the tests of tests/async_tokio.rs"]
async fn subject_uncarried_spawn_blocking() {
    let name = tokio::task::spawn_blocking(current_test_name)
        .await
        .expect("the blocking task ran");
    if let Some(path) = std::env::var_os(OUT) {
        fs::write(path, name).expect("write the name");
    }
}

/// The name `subject_uncarried_spawn_blocking` sees, run as nextest runs a test (`--exact
/// <name> --nocapture`) with `NEXTEST_TEST_NAME` as given.
fn name_seen_with(nextest_test_name: &str) -> String {
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = scratch.path().join("name");
    let status = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "subject_uncarried_spawn_blocking",
            "--nocapture",
            "--include-ignored",
        ])
        .env("NEXTEST_TEST_NAME", nextest_test_name)
        .env(OUT, &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run the subject");
    assert!(status.success());
    fs::read_to_string(&out).expect("the subject wrote the name")
}

#[test]
fn under_nextest_spawn_blocking_has_the_test_name() {
    assert_eq!(
        name_seen_with("subject_uncarried_spawn_blocking"),
        "subject_uncarried_spawn_blocking"
    );
}

/// A `NEXTEST_TEST_NAME` inherited from a parent process (it names another test) is not
/// taken: without the name carried, the thread keeps tokio's own name for it.
#[test]
fn an_inherited_nextest_name_is_not_taken() {
    let name = name_seen_with("some_other_test");
    assert!(name.starts_with("tokio"), "{name}");
}
