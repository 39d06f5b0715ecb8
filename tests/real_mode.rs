//! The harness against a smolvm binary: real smolvm on a developer's machine, the fake CLI
//! (`SMOLVM_BIN=target/debug/smolvm-fake` with `SMOLVM_FAKE_STATE=DIR`) in CI, and a clean
//! skip of every test where neither is there.
//!
//! Every assertion here must hold on real smolvm too: states, exit codes, file contents and
//! our own transcript of the commands, never texts only the simulation prints. Tests share
//! smolvm with whatever else the user runs, so they only look at machines they made.
//!
//! Run against real smolvm: `cargo test --test real_mode` (smolvm on `PATH`), or
//! `SMOLVM_HARNESS_REQUIRE=1 cargo nextest run --test real_mode` to fail instead of skipping
//! when it is missing. `.config/nextest.toml` caps these tests at two at a time.

#[path = "common/serve.rs"]
mod serve;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use rstest::rstest;
use serial_test::file_serial;
use smolvm_harness::fixtures::{default_image, machine, machine_from_pack, packed, smolvm};
use smolvm_harness::{require_smolvm, requires_smolvm, Error, Machine, MachineState, Pack, Smolvm};

/// Whether `name` is in `machine ls`.
fn listed(smolvm: &Smolvm, name: &str) -> bool {
    smolvm
        .machine_list()
        .expect("machine ls")
        .iter()
        .any(|m| m.name == name)
}

fn state(machine: &Machine) -> MachineState {
    machine
        .status()
        .expect("machine status")
        .unwrap_or_else(|| panic!("machine {} does not exist", machine.name()))
        .state
}

/// The recorded `machine create` command of `machine`: the CLI's command line, or over the
/// API (`SMOLVM_HOST`) its `POST /api/v1/machines` request with the body.
fn create_command(machine: &Machine) -> String {
    machine
        .transcript()
        .into_iter()
        .map(|entry| entry.command)
        .find(|c| {
            c.contains(" machine create ")
                || (c.starts_with("POST ") && c.contains(" /api/v1/machines {"))
        })
        .unwrap_or_else(|| panic!("no create in the transcript of {}", machine.name()))
}

/// The same create, in the words of the front end: a CLI flag, or the API body's field.
fn create_says(create: &str, cli: &str, api: &str) -> bool {
    if create.starts_with("POST ") {
        create.contains(api)
    } else {
        create.contains(cli)
    }
}

#[rstest]
#[requires_smolvm]
fn create_then_start(smolvm: Smolvm) {
    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .image(default_image())
        .net()
        .create()
        .expect("create");
    assert!(listed(&smolvm, vm.name()));
    assert_ne!(state(&vm), MachineState::Running, "created, not started");
    vm.start().expect("start");
    assert_eq!(state(&vm), MachineState::Running);
    vm.exec(&["true"]).expect("exec").assert_success();
}

#[rstest]
#[requires_smolvm]
fn exec_env_workdir_and_exit_codes(machine: Machine) {
    let out = machine
        .command(&["sh", "-c", "echo \"$GREETING\""])
        .env("GREETING", "hello from the host")
        .run()
        .expect("exec with env");
    out.assert_success();
    assert_eq!(out.stdout_str(), "hello from the host\n");

    let out = machine
        .command(&["pwd"])
        .workdir("/tmp")
        .run()
        .expect("exec with workdir");
    assert_eq!(out.stdout_str(), "/tmp\n");

    // A guest's non-zero exit is its answer, not an error.
    machine.sh("exit 3").expect("exec exit 3").expect_code(3);
    machine.exec(&["false"]).expect("exec false").expect_code(1);
    let out = machine.sh("echo oops >&2; exit 7").expect("exec stderr");
    out.expect_code(7);
    assert_eq!(out.stderr_str().lines().next(), Some("oops"));
}

#[rstest]
#[requires_smolvm]
fn machine_env_is_seen_by_every_command(smolvm: Smolvm) {
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image(default_image())
        .net()
        .env("FROM_CREATE", "yes")
        .start()
        .expect("start");
    let out = vm.sh("echo \"$FROM_CREATE\"").expect("exec");
    assert_eq!(out.stdout_str(), "yes\n");
    // The value never shows in what the harness records or prints.
    let create = create_command(&vm);
    assert!(
        create_says(
            &create,
            "--env=FROM_CREATE=<redacted>",
            r#"{"name":"FROM_CREATE","value":"<redacted>"}"#
        ),
        "{create}"
    );
}

#[rstest]
#[requires_smolvm]
fn a_guest_timeout_exits_124(machine: Machine) {
    let out = machine
        .command(&["sleep", "30"])
        .timeout(Duration::from_secs(1))
        .run()
        .expect("exec with timeout");
    out.expect_code(124);
    assert!(out.duration() < Duration::from_secs(25), "{out:?}");
}

#[rstest]
#[requires_smolvm]
fn copy_in_and_back_out(machine: Machine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sent = dir.path().join("sent.txt");
    let back = dir.path().join("back.txt");
    fs::write(&sent, "payload: 42\n").expect("write");

    machine.copy_in(&sent, "/tmp/payload.txt").expect("copy in");
    let out = machine.exec(&["cat", "/tmp/payload.txt"]).expect("cat");
    assert_eq!(out.stdout_str(), "payload: 42\n");

    machine
        .copy_out("/tmp/payload.txt", &back)
        .expect("copy out");
    assert_eq!(
        fs::read_to_string(&back).expect("read back"),
        "payload: 42\n"
    );
}

#[rstest]
#[requires_smolvm]
fn stop_then_start_again(machine: Machine) {
    machine.stop().expect("stop");
    assert_eq!(state(&machine), MachineState::Stopped);
    machine.start().expect("start again");
    assert_eq!(state(&machine), MachineState::Running);
    machine.exec(&["true"]).expect("exec").assert_success();
}

#[rstest]
#[requires_smolvm]
fn delete_removes_the_machine(smolvm: Smolvm) {
    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .image(default_image())
        .net()
        .start()
        .expect("start");
    let name = vm.name().to_string();
    assert!(listed(&smolvm, &name));
    vm.delete().expect("delete");
    assert!(!listed(&smolvm, &name));
    assert_eq!(smolvm.machine_status(&name).expect("status"), None);
}

/// The guarantee tests rely on: once a test's machine drops, it is gone from `machine ls`,
/// also when it came from a fixture.
#[rstest]
#[requires_smolvm]
fn a_dropped_machine_is_gone(smolvm: Smolvm) {
    let from_fixture = machine(default_image());
    let name = from_fixture.name().to_string();
    assert!(listed(&smolvm, &name));
    drop(from_fixture);
    assert!(!listed(&smolvm, &name), "{name} left behind by drop");
}

/// Egress pinned to a CIDR, on a machine from a pack: an image machine would pull its image
/// inside the guest at first start, through that same egress policy, and fail.
#[rstest]
#[requires_smolvm]
fn allow_cidr_on_a_packed_machine(packed: Arc<Pack>, smolvm: Smolvm) {
    let builder = Machine::builder()
        .smolvm(smolvm.clone())
        .from_pack(&packed)
        .allow_cidr("10.0.0.0/8");
    if !smolvm.dialect().expect("dialect").from_keeps_egress {
        // smolvm < 1.8.0 silently drops the policy of a `--from` machine: refused up front.
        let name = format!("refused-cidr-{}", std::process::id());
        let err = builder
            .name(&name)
            .start()
            .expect_err("refused before 1.8.0");
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(!listed(&smolvm, &name));
        return;
    }
    let vm = builder.start().expect("start with --allow-cidr");
    vm.exec(&["true"]).expect("exec").assert_success();
    let create = create_command(&vm);
    assert!(create_says(&create, " --from ", r#""from":"#), "{create}");
    // `--net` explicitly: some versions do not infer it from a CIDR when `--from` is given.
    assert!(
        create_says(
            &create,
            " --net --allow-cidr 10.0.0.0/8",
            r#""allowedCidrs":["10.0.0.0/8"]"#
        ),
        "{create}"
    );
    assert!(
        create_says(&create, " --net ", r#""network":true"#),
        "{create}"
    );
    let info = vm.status().expect("status").expect("exists");
    assert_ne!(info.network, Some(false), "{info:?}");
}

/// A bad CIDR is refused before smolvm is called: nothing is created.
#[rstest]
#[requires_smolvm]
fn a_bad_cidr_creates_nothing(smolvm: Smolvm) {
    // An explicit name, to look for afterwards (other tests create machines meanwhile).
    let name = format!("bad-cidr-{}", std::process::id());
    let err = Machine::builder()
        .smolvm(smolvm.clone())
        .image(default_image())
        .allow_cidr("10.0.0.0/33")
        .name(&name)
        .start()
        .expect_err("a /33 is not a CIDR");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(!listed(&smolvm, &name));
}

#[rstest]
#[requires_smolvm]
fn labels_are_visible_in_ls(smolvm: Smolvm) {
    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .image(default_image())
        .net()
        .label("suite", "real-mode")
        .create()
        .expect("create");
    let info = smolvm
        .machine_list()
        .expect("ls")
        .into_iter()
        .find(|m| m.name == vm.name())
        .expect("listed");
    if smolvm.dialect().expect("dialect").labels {
        assert_eq!(
            info.labels.get("suite").map(String::as_str),
            Some("real-mode")
        );
    } else {
        // Before 1.8.0 smolvm has no labels; the harness does not send them.
        assert!(!create_command(&vm).contains("--label"));
    }
}

#[rstest]
#[requires_smolvm]
fn a_machine_from_the_shared_pack(machine_from_pack: Machine, packed: Arc<Pack>) {
    machine_from_pack
        .exec(&["true"])
        .expect("exec")
        .assert_success();
    let create = create_command(&machine_from_pack);
    assert!(create_says(&create, " --from ", r#""from":"#), "{create}");
    assert!(packed.path().is_file(), "{}", packed.path().display());
    // `packed` is the run's one pack of the image, the same the fixture started from.
    let again = Pack::shared(default_image()).expect("shared pack");
    assert!(Arc::ptr_eq(&packed, &again));
}

#[rstest]
#[requires_smolvm]
fn two_machines_from_one_pack(packed: Arc<Pack>, smolvm: Smolvm) {
    let a = Machine::builder()
        .smolvm(smolvm.clone())
        .from_pack(&packed)
        .start()
        .expect("a");
    let b = Machine::builder()
        .smolvm(smolvm.clone())
        .from_pack(&packed)
        .start()
        .expect("b");
    assert_ne!(a.name(), b.name());
    for vm in [&a, &b] {
        vm.exec(&["true"]).expect("exec").assert_success();
    }
}

/// A test that must not overlap other `vm`-keyed tests in any process: `#[file_serial]`
/// (a cross-process file lock) works under nextest, where `#[serial]` does not.
/// `tests/exclusive.rs` checks the exclusion itself.
#[rstest]
#[file_serial(vm)]
#[requires_smolvm]
fn exclusive_test_holds_the_vm_lock(machine: Machine) {
    machine.exec(&["true"]).expect("exec").assert_success();
}

/// The macro form, for a plain `#[test]` returning `Result`.
#[test]
fn plain_test_with_the_macro() -> smolvm_harness::Result<()> {
    require_smolvm!();
    let vm = Machine::builder().image(default_image()).net().start()?;
    let out = vm.exec(&["echo", "plain"])?;
    assert_eq!(out.stdout_str(), "plain\n");
    vm.delete()
}

/// `#[case]`s with a fixture: each case is its own guarded test.
#[rstest]
#[case::zero(0)]
#[case::two(2)]
#[requires_smolvm]
fn exit_codes_pass_through(machine: Machine, #[case] code: i32) {
    machine
        .sh(&format!("exit {code}"))
        .expect("exec")
        .expect_code(code);
}

/// Set in the child that [`real_mode_suite_against_the_fake_cli`] starts, so it does not
/// start another.
const DRIVER_CHILD: &str = "SMOLVM_HARNESS_REAL_MODE_CHILD";

/// The whole suite above, run once more in a child process against the fake CLI with
/// `SMOLVM_HARNESS_REQUIRE=1`, so that plain `cargo test` exercises every real-mode test's
/// code on any machine (where real smolvm is installed, the tests above also ran against it).
/// It must pass, run every test, skip none, and leave no machine behind.
#[test]
fn real_mode_suite_against_the_fake_cli() {
    if std::env::var_os(DRIVER_CHILD).is_some() {
        return;
    }
    let fake_state = tempfile::tempdir().expect("tempdir");
    let state = fake_state
        .path()
        .to_str()
        .expect("a UTF-8 temp path")
        .to_string();
    run_suite_in_a_child(&[("SMOLVM_FAKE_STATE", &state)]);
    let left = smolvm_harness::sim::read_fake_state(fake_state.path()).expect("fake state");
    let names: Vec<&str> = left.iter().map(|m| m.name.as_str()).collect();
    assert!(names.is_empty(), "machines left behind: {names:?}");
}

/// The same suite over the `smolvm serve` API: `SMOLVM_HOST` at the simulated server (a
/// process of its own over the fake's state), and nothing else changed. Every machine call
/// goes to the server (the suite's own CLI calls are the packs' only), and nothing is left.
#[test]
fn real_mode_suite_over_the_api() {
    if std::env::var_os(DRIVER_CHILD).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server_log = dir.path().join("server-calls.jsonl");
    let client_log = dir.path().join("client-calls.jsonl");
    let server = serve::SimServer::start_with(
        dir.path(),
        "1.9.2",
        &[("SMOLVM_FAKE_LOG", server_log.to_str().expect("UTF-8"))],
    );
    let state = server.state.to_str().expect("UTF-8").to_string();
    run_suite_in_a_child(&[
        ("SMOLVM_HOST", &server.url),
        // Packs are made by the local CLI, into the state the server reads.
        ("SMOLVM_FAKE_STATE", &state),
        ("SMOLVM_FAKE_LOG", client_log.to_str().expect("UTF-8")),
    ]);
    assert!(
        server.machines().is_empty(),
        "machines left behind: {:?}",
        server.machines()
    );
    let served = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(
        served.contains(r#""machine","create""#),
        "the server made the machines:\n{served}"
    );
    let direct = std::fs::read_to_string(&client_log).unwrap_or_default();
    assert!(
        direct.lines().all(|l| !l.contains(r#""machine""#)),
        "a machine call went around the API:\n{direct}"
    );
}

/// Run every test of this file but the drivers in a child, with `SMOLVM_HARNESS_REQUIRE=1` and
/// `env`: it must pass, run every test, and skip none.
fn run_suite_in_a_child(env: &[(&str, &str)]) {
    let harness_state = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current test binary");
    let out = std::process::Command::new(exe)
        .args([
            "--test-threads",
            "2",
            "--skip",
            "real_mode_suite_against_the_fake_cli",
            "--skip",
            "real_mode_suite_over_the_api",
        ])
        .env(DRIVER_CHILD, "1")
        .env("SMOLVM_BIN", env!("CARGO_BIN_EXE_smolvm-fake"))
        .env("SMOLVM_HARNESS_STATE_DIR", harness_state.path())
        .env("SMOLVM_HARNESS_REQUIRE", "1")
        .env_remove("SMOLVM_HOST")
        .env_remove("SMOLVM_FAKE_VERSION")
        .env_remove("SMOLVM_FAKE_FAIL")
        .env_remove("SMOLVM_FAKE_HANG")
        .env_remove("SMOLVM_HARNESS_KEEP")
        .envs(env.iter().copied())
        .output()
        .expect("run the suite in a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "suite failed:\n{stdout}\n{stderr}");
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(
        passed >= 17,
        "expected the whole suite to run, got {passed}:\n{stdout}"
    );
    assert!(
        !stderr.contains("SKIPPED"),
        "nothing may be skipped:\n{stderr}"
    );
}
