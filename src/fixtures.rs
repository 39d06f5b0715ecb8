//! Ready-made [rstest](https://docs.rs/rstest) fixtures: a client, a started machine, a
//! shared pack, and a machine started from that pack.
//!
//! | fixture | gives | made with |
//! |---|---|---|
//! | [`smolvm()`] | [`Smolvm`] | [`Smolvm::from_env`] |
//! | [`machine()`] | [`Machine`], started | `Machine::builder().image(IMAGE).net().start()` |
//! | [`packed()`] | `Arc<`[`Pack`]`>` | [`Pack::shared`]`(IMAGE)`: packed once per run |
//! | [`machine_from_pack()`] | [`Machine`], started | `Machine::builder().from_pack(&packed).start()` |
//!
//! `IMAGE` is [`default_image()`]: `SMOLVM_HARNESS_IMAGE`, default `alpine:latest`.
//! Every machine is deleted when the test's `Machine` drops, pass or fail.
//!
//! # Using them
//!
//! Import the fixtures and name them as arguments. Put
//! [`#[requires_smolvm]`](crate::requires_smolvm) under `#[rstest]`: where smolvm is not
//! installed the test is then skipped *before* any fixture runs, instead of failing in one.
//!
//! ```no_run
//! use rstest::rstest;
//! use smolvm_harness::fixtures::*;
//! use smolvm_harness::{requires_smolvm, Machine};
//!
//! #[rstest]
//! #[requires_smolvm]
//! fn runs_linux(machine: Machine) {
//!     let out = machine.exec(&["uname", "-s"]).unwrap();
//!     assert_eq!(out.stdout_str(), "Linux\n");
//! }
//! ```
//!
//! When a fixture cannot make what it promises (smolvm missing, the image cannot be pulled,
//! the machine does not boot), it panics with a message that names the fixture, the test
//! and smolvm's error, so the failure reads as the test's and not as the harness's.
//!
//! # Customising with `#[with(..)]`
//!
//! [`machine()`] and [`packed()`] take the image as an argument with a `#[default]`, so a
//! test can ask for another one:
//!
//! ```no_run
//! # use rstest::rstest;
//! # use smolvm_harness::fixtures::*;
//! # use smolvm_harness::{requires_smolvm, Machine};
//! #[rstest]
//! #[requires_smolvm]
//! fn on_debian(#[with("debian:12")] machine: Machine) {
//!     machine.exec(&["test", "-f", "/etc/debian_version"]).unwrap().assert_success();
//! }
//! ```
//!
//! # Writing your own fixture
//!
//! A fixture is a function that builds a [`Machine`] with [`Machine::builder`]; arguments
//! with `#[default]` become what `#[with(..)]` sets. Panic with a clear message on failure
//! (`expect`), as a fixture cannot return an error to the test:
//!
//! ```
//! use rstest::fixture;
//! use smolvm_harness::Machine;
//!
//! /// A machine with the app's environment, on the network the app may reach.
//! #[fixture]
//! pub fn app_vm(#[default("alpine:latest")] image: &str, #[default("test")] mode: &str) -> Machine {
//!     Machine::builder()
//!         .image(image)
//!         .allow_cidr("10.0.0.0/8")
//!         .env("APP_MODE", mode)
//!         .label("suite", "app")
//!         .start()
//!         .unwrap_or_else(|e| panic!("app_vm fixture: {e}"))
//! }
//!
//! // In a test: `fn t(app_vm: Machine)`, or `fn t(#[with("alpine:3.20", "ci")] app_vm: Machine)`.
//! ```
//!
//! # Timeouts: not rstest's sync `#[timeout]`
//!
//! rstest runs a sync test with `#[timeout]` on a new thread and, when time runs out, fails
//! the test *without stopping that thread*. The `Machine`, owned by that thread, is then not
//! dropped until the stuck smolvm call returns, if ever; it also needs `Send + 'static`
//! inputs. Bound VM tests instead with
//!
//! * the harness's per-call limit: every smolvm call is killed after
//!   `SMOLVM_HARNESS_TIMEOUT` (default 300 s), and `machine.command(..).timeout(..)` bounds
//!   a guest command (exit 124);
//! * nextest's `slow-timeout = { period, terminate-after }`: it sends SIGTERM, on which the
//!   harness deletes the process's machines before exiting.
//!
//! # Shared machines: `#[once]`
//!
//! An rstest `#[once]` fixture is built once per test process and **never dropped**, so its
//! machine's guard never deletes it. The harness's exit hook does, when the process exits
//! (normally, or after failed tests); a killed process's machine is deleted by the crash
//! watcher or the next run's sweep.
//!
//! ```
//! use rstest::fixture;
//! use smolvm_harness::Machine;
//!
//! #[fixture]
//! #[once]
//! fn shared_vm() -> Machine {
//!     Machine::builder().image("alpine:latest").net().start().expect("start the shared machine")
//! }
//! // Tests take it by reference: `fn t(shared_vm: &Machine)`.
//! ```
//!
//! Under `cargo nextest run` every test is its own process, so "once" means once *per test*:
//! each test boots (and at exit deletes) its own shared machine. Share work across tests
//! with [`packed()`] instead, which packs an image once for the whole run.

use std::sync::Arc;

use rstest::fixture;

use crate::cli::Smolvm;
use crate::config::config_or_default;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::names::current_test_name;
use crate::pack::Pack;

/// The image of [`machine()`] and [`packed()`]: `SMOLVM_HARNESS_IMAGE`, default
/// `alpine:latest`. (A malformed setting falls back to the default here; creating the
/// machine then reports it.)
#[must_use]
pub fn default_image() -> &'static str {
    &config_or_default().image
}

/// A client for the smolvm of the environment: `SMOLVM_BIN`, else `smolvm` on `PATH`.
#[fixture]
pub fn smolvm() -> Smolvm {
    Smolvm::from_env()
}

/// A started machine of `image` (default [`default_image()`]) with networking on (smolvm
/// ≥ 1.7.3 pulls the image inside the guest), deleted when the test's `Machine` drops.
///
/// Panics, naming the test, if the machine cannot be created or started.
#[fixture]
pub fn machine(#[default(default_image())] image: &str) -> Machine {
    let started = Machine::builder().image(image).net().start();
    expect_fixture(
        "machine",
        || format!("start a machine from `{image}`"),
        started,
    )
}

/// The pack of `image` (default [`default_image()`]) shared by the whole test run: packed on
/// first use, then reused by every test and test process ([`Pack::shared`]).
///
/// Panics, naming the test, if packing fails.
#[fixture]
pub fn packed(#[default(default_image())] image: &str) -> Arc<Pack> {
    expect_fixture("packed", || format!("pack `{image}`"), Pack::shared(image))
}

/// A started machine created from the shared pack of [`packed()`]: no image pull, so no
/// network is needed, and none is given (add `.net()` or `.allow_cidr(..)` in a fixture of
/// your own). Deleted when the test's `Machine` drops.
///
/// Panics, naming the test, if the machine cannot be created or started.
#[fixture]
pub fn machine_from_pack(packed: Arc<Pack>) -> Machine {
    let started = Machine::builder().from_pack(&packed).start();
    expect_fixture(
        "machine_from_pack",
        || format!("start a machine from the pack of `{}`", packed.image()),
        started,
    )
}

/// The value, or a panic whose message says which fixture of which test failed to do what,
/// and why. The message names the test because the panic location cannot: rstest calls
/// fixtures through generated functions (`default()`, `partial_N()`) that do not pass
/// `#[track_caller]` on, so the location is always in this file.
fn expect_fixture<T>(fixture: &str, what: impl FnOnce() -> String, result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!(
            "{}",
            failure_message(fixture, &current_test_name(), &what(), &err)
        ),
    }
}

fn failure_message(fixture: &str, test: &str, what: &str, err: &Error) -> String {
    let mut msg = format!("fixture `{fixture}` of test `{test}` could not {what}: {err}");
    if matches!(err, Error::NotFound { .. }) {
        msg.push_str(
            "\nhint: put #[smolvm_harness::requires_smolvm] under #[rstest] to skip the test \
             where smolvm is not installed (SMOLVM_HARNESS_REQUIRE=1 makes that a failure again)",
        );
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_fixture_test_action_and_cause() {
        let err = Error::NotFound {
            binary: "smolvm".into(),
            looked: "`smolvm` is not on PATH".into(),
        };
        let msg = failure_message(
            "machine",
            "tests::boots",
            "start a machine from `alpine`",
            &err,
        );
        assert!(
            msg.starts_with(
                "fixture `machine` of test `tests::boots` could not start a machine from \
                 `alpine`: smolvm not found: `smolvm` is not on PATH"
            ),
            "{msg}"
        );
        assert!(msg.contains("requires_smolvm"), "{msg}");

        let err = Error::InvalidInput {
            what: "image",
            reason: "must not be empty".into(),
        };
        let msg = failure_message("packed", "t", "pack ``", &err);
        assert_eq!(
            msg,
            "fixture `packed` of test `t` could not pack ``: invalid image: must not be empty"
        );
    }

    #[test]
    fn default_image_is_the_configured_one() {
        assert_eq!(default_image(), config_or_default().image);
    }
}
