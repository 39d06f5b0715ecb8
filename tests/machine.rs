//! The `Machine` guard in unit mode: the exact smolvm commands it sends, and what it does on
//! every failure path. A `ScriptedRunner` stands in for smolvm.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use smolvm_harness::config::config;
use smolvm_harness::diag::capture;
use smolvm_harness::sim::SimulatedRunner;
use smolvm_harness::{
    Error, KeepPolicy, Machine, MachineState, Pack, Reply, ScriptedRunner, Smolvm,
};

fn client(runner: &ScriptedRunner) -> Smolvm {
    Smolvm::new("smolvm").with_runner(runner.clone())
}

/// The calls that change or inspect a machine, in order: `--version` (asked once per client)
/// and `machine ls` (the cleanup layer's sweep may list machines) are left out.
fn calls(runner: &ScriptedRunner) -> Vec<Vec<String>> {
    runner
        .argvs()
        .into_iter()
        .filter(|a| a.first().map(String::as_str) != Some("--version"))
        .filter(|a| !(a.len() >= 2 && a[0] == "machine" && a[1] == "ls"))
        .collect()
}

/// A builder for a named alpine machine on a scripted smolvm: the setup most tests share.
fn scripted(runner: &ScriptedRunner, name: &str) -> smolvm_harness::MachineBuilder {
    Machine::builder()
        .smolvm(client(runner))
        .name(name)
        .image("alpine")
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn delete_1_9(name: &str) -> Vec<String> {
    argv(&["machine", "delete", "-f", "--name", name])
}

fn count_deletes(runner: &ScriptedRunner) -> usize {
    calls(runner)
        .iter()
        .filter(|a| a.len() >= 2 && a[1] == "delete")
        .count()
}

/// Set in the child processes of [`in_child`].
const CHILD: &str = "SMOLVM_HARNESS_TEST_MACHINE_CHILD";

/// Whether this process is a child of [`in_child`].
fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Run this binary's test `test` alone in a child process (with [`CHILD`] set, a state dir of
/// its own and no keep policy from the environment) and return its stderr after asserting it
/// passed. For scenarios whose messages reach stderr past the test's own thread: the exit
/// hook's, at process exit. The child's stderr is read here and asserted on, never shown.
fn in_child(test: &str) -> String {
    let state = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env_remove("SMOLVM_HARNESS_KEEP")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "child {test} failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The harness's lines in `text`.
fn harness_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("smolvm-harness:"))
        .collect()
}

/// Assert that `lines` are, in order, lines that contain each of `fragments` in turn
/// (fragments, not whole lines: the wording may be refined, the facts may not).
#[track_caller]
fn assert_lines(lines: &[impl AsRef<str>], fragments: &[&[&str]]) {
    let lines: Vec<&str> = lines.iter().map(AsRef::as_ref).collect();
    assert_eq!(lines.len(), fragments.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(fragments) {
        for fragment in *want {
            assert!(line.contains(fragment), "{fragment:?} not in {line:?}");
        }
    }
}

/// `machine ls --json` with one machine `name` carrying this process's ownership labels, as
/// the harness sends them (read back from a create through a throwaway runner).
fn listed_as_ours(name: &str) -> String {
    let probe = ScriptedRunner::new();
    let vm = scripted(&probe, "m-label-probe")
        .create()
        .expect("probe create");
    // The probe's runner answers everything with exit 0: dropping it deletes nothing real.
    drop(vm);
    let create = probe
        .argvs()
        .into_iter()
        .find(|a| a.len() > 1 && a[1] == "create")
        .expect("a create");
    let labels: serde_json::Map<String, serde_json::Value> = create
        .windows(2)
        .filter(|w| w[0] == "--label")
        .filter_map(|w| w[1].split_once('='))
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::json!([{ "name": name, "state": "created", "labels": labels }]).to_string()
}

const EXISTS_1_9: &str =
    "Error: config operation failed: create machine: machine 'x' already exists or is being created\n";

#[test]
fn create_on_1_9_2_sends_labels_and_drop_deletes() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-labels")
        .net()
        .label("team", "infra")
        .create()
        .unwrap();
    assert_eq!(vm.name(), "m-labels");
    let create = &calls(&runner)[0];
    assert_eq!(
        create[..7],
        argv(&["machine", "create", "--name", "m-labels", "--image", "alpine", "--net"])
    );
    // After the fixed part: only `--label k=v` pairs (the harness's own first), user's last.
    let labels = &create[7..];
    assert!(
        labels.len() >= 2 && labels.len().is_multiple_of(2),
        "{create:?}"
    );
    for pair in labels.chunks(2) {
        assert_eq!(pair[0], "--label", "{create:?}");
        assert!(pair[1].contains('='), "{create:?}");
    }
    assert_eq!(labels[labels.len() - 2..], argv(&["--label", "team=infra"]));
    // Without the harness's own: the same exact argv in every process and under nextest.
    let user: Vec<Vec<String>> = runner
        .user_argvs()
        .into_iter()
        .filter(|a| a.get(1).map(String::as_str) == Some("create"))
        .collect();
    assert_eq!(
        user,
        [argv(&[
            "machine",
            "create",
            "--name",
            "m-labels",
            "--image",
            "alpine",
            "--net",
            "--label",
            "team=infra"
        ])]
    );

    drop(vm);
    assert_eq!(calls(&runner), vec![create.clone(), delete_1_9("m-labels")]);
}

#[test]
fn create_on_0_8_0_uses_positional_names_and_no_labels() {
    let runner = ScriptedRunner::new().version("0.8.0");
    let vm = scripted(&runner, "m-old")
        .net()
        .label("team", "infra")
        .create()
        .unwrap();
    drop(vm);
    assert_eq!(
        calls(&runner),
        vec![
            argv(&["machine", "create", "--image", "alpine", "--net", "m-old"]),
            // 0.8.0's delete leaves a running VM orphaned: the CLI layer stops it first.
            argv(&["machine", "stop", "--name", "m-old"]),
            argv(&["machine", "delete", "-f", "m-old"]),
        ]
    );
}

#[test]
fn start_creates_then_starts() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-start").net().start().unwrap();
    let seen = calls(&runner);
    assert_eq!(seen[0][..2], argv(&["machine", "create"]));
    assert_eq!(seen[1], argv(&["machine", "start", "--name", "m-start"]));
    assert_eq!(seen.len(), 2);
    vm.stop().unwrap();
    vm.start().unwrap();
    assert_eq!(
        calls(&runner)[2..],
        [
            argv(&["machine", "stop", "--name", "m-start"]),
            argv(&["machine", "start", "--name", "m-start"]),
        ]
    );
}

#[test]
fn exec_command_and_sh_send_exact_argv() {
    let runner = ScriptedRunner::new()
        .on(&["machine", "exec"], Reply::stdout("hi\n"))
        .on_match(
            |a| a.last().map(String::as_str) == Some("false"),
            Reply::with(3, "", "nope\n"),
        );
    let vm = scripted(&runner, "m-exec").create().unwrap();
    runner.clear_calls();

    let out = vm.exec(&["echo", "hi"]).unwrap();
    assert_eq!(out.stdout_str(), "hi\n");
    // A guest's non-zero exit is its answer, not an error.
    assert_eq!(vm.exec(&["false"]).unwrap().code(), 3);

    let out = vm
        .command(&["ls"])
        .arg("-l")
        .args(["/srv", "/tmp"])
        .env("TOKEN", "hunter22")
        .workdir("/srv")
        .timeout(Duration::from_secs(30))
        .run()
        .unwrap();
    assert!(!out.command().to_string().contains("hunter22"));
    vm.sh("echo $HOME && exit 0").unwrap();

    assert_eq!(
        calls(&runner),
        vec![
            argv(&["machine", "exec", "--name", "m-exec", "--", "echo", "hi"]),
            argv(&["machine", "exec", "--name", "m-exec", "--", "false"]),
            argv(&[
                "machine",
                "exec",
                "--name",
                "m-exec",
                "-w",
                "/srv",
                "--timeout",
                "30s",
                "--env=TOKEN=hunter22",
                "--",
                "ls",
                "-l",
                "/srv",
                "/tmp",
            ]),
            argv(&[
                "machine",
                "exec",
                "--name",
                "m-exec",
                "--",
                "sh",
                "-c",
                "echo $HOME && exit 0"
            ]),
        ]
    );
}

#[test]
fn exec_on_a_dead_machine_is_an_error() {
    let runner = ScriptedRunner::new().on(
        &["machine", "exec"],
        Reply::fail(
            1,
            "Error: agent operation failed: connect: machine 'm-dead' is not running.\n",
        ),
    );
    let vm = scripted(&runner, "m-dead").create().unwrap();
    let err = vm.exec(&["true"]).unwrap_err();
    assert!(err.to_string().contains("is not running"), "{err}");
}

#[test]
fn copy_in_and_out_use_typed_paths() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-cp").create().unwrap();
    runner.clear_calls();
    vm.copy_in("/tmp/in.txt", "/root/in.txt").unwrap();
    vm.copy_out("/root/out.txt", "/tmp/out.txt").unwrap();
    assert_eq!(
        calls(&runner),
        vec![
            argv(&["machine", "cp", "/tmp/in.txt", "m-cp:/root/in.txt"]),
            argv(&["machine", "cp", "m-cp:/root/out.txt", "/tmp/out.txt"]),
        ]
    );
    // A `:` in a host source would be read by smolvm as `machine:path`: refused up front.
    assert!(vm.copy_in("/tmp/a:b", "/x").is_err());
    assert_eq!(calls(&runner).len(), 2);
}

#[test]
fn status_and_transcript() {
    let runner = ScriptedRunner::new().on(
        &["machine", "status"],
        Reply::stdout(r#"{"name":"m-status","state":"running","pid":42}"#),
    );
    let vm = scripted(&runner, "m-status").start().unwrap();
    let info = vm.status().unwrap().unwrap();
    assert_eq!(info.state, MachineState::Running);
    assert_eq!(info.pid, Some(42));

    let transcript = vm.transcript();
    let commands: Vec<&str> = transcript.iter().map(|e| e.command.as_str()).collect();
    assert!(
        commands[0].starts_with("smolvm machine create --name m-status"),
        "{commands:?}"
    );
    assert_eq!(commands[1], "smolvm machine start --name m-status");
    assert!(transcript.iter().all(|e| e.outcome == "exit 0"));
    drop(vm);
    // The guard is gone, so is its story.
    assert!(smolvm_harness::transcript::transcript("m-status").is_empty());
}

#[test]
fn start_failure_deletes_the_machine_and_returns_the_start_error() {
    let runner = ScriptedRunner::new().on(
        &["machine", "start"],
        Reply::fail(1, "Error: failed to boot: no kvm\n"),
    );
    let err = scripted(&runner, "m-nostart").start().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("machine start --name m-nostart"), "{msg}");
    assert!(msg.contains("no kvm"), "{msg}");
    let seen = calls(&runner);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1], argv(&["machine", "start", "--name", "m-nostart"]));
    assert_eq!(seen[2], delete_1_9("m-nostart"));
}

#[test]
fn a_failed_create_deletes_only_a_machine_that_carries_our_labels() {
    const DISK_FULL: &str = "Error: config operation failed: create machine: disk full\n";
    // Ours (it was half-made by the failed create): deleted.
    let runner = ScriptedRunner::new()
        .on(&["machine", "create"], Reply::fail(1, DISK_FULL))
        .on(
            &["machine", "ls"],
            Reply::stdout(listed_as_ours("m-nocreate")),
        );
    let err = scripted(&runner, "m-nocreate").create().unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(err.command().unwrap().args()[1], "create");
    let seen = calls(&runner);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1], delete_1_9("m-nocreate"));

    // Someone else's machine of that name (no or other labels), or none: never deleted.
    for listing in [
        r#"[{"name":"m-theirs","state":"running","labels":{}}]"#.to_string(),
        r#"[{"name":"m-theirs","state":"running","labels":{"smolvm-harness.owner":"1-1"}}]"#
            .to_string(),
        "[]".to_string(),
    ] {
        let runner = ScriptedRunner::new()
            .on(&["machine", "create"], Reply::fail(1, DISK_FULL))
            .on(&["machine", "ls"], Reply::stdout(listing.clone()));
        scripted(&runner, "m-theirs").create().unwrap_err();
        assert_eq!(count_deletes(&runner), 0, "{listing}: {:?}", calls(&runner));
    }
}

#[test]
fn on_0_8_a_chosen_name_is_never_deleted_after_a_failed_create() {
    const DISK_FULL: &str = "Error: config operation failed: create machine: disk full\n";
    let before =
        r#"[{"name":"m-old","state":"stopped","pid":null,"created_at":1,"image":"alpine"}]"#;
    let runner = ScriptedRunner::new()
        .version("0.8.0")
        .on(&["machine", "create"], Reply::fail(1, DISK_FULL))
        .on(&["machine", "ls"], Reply::stdout(before));
    scripted(&runner, "m-old").create().unwrap_err();
    assert_eq!(count_deletes(&runner), 0, "{:?}", calls(&runner));

    // Free before the create, there after it failed: it may be ours, or someone else's made
    // meanwhile; without labels nothing tells, so it is left alone, and said so.
    let after = r#"[{"name":"m-new","state":"stopped","pid":null,"image":"alpine"}]"#;
    let runner = ScriptedRunner::new()
        .version("0.8.0")
        .on(&["machine", "create"], Reply::fail(1, DISK_FULL))
        // Newer rules answer first.
        .on(&["machine", "ls"], Reply::stdout(after))
        .on_times(&["machine", "ls"], 1, Reply::stdout("[]"));
    let (err, said) = smolvm_harness::diag::capture(|| scripted(&runner, "m-new").create());
    err.unwrap_err();
    assert_eq!(count_deletes(&runner), 0, "{:?}", calls(&runner));
    assert!(
        said.iter()
            .any(|l| l.contains("machine m-new was not deleted")
                && l.contains("machine delete -f m-new")),
        "{said:?}"
    );
    // Free before, and not there after: nothing to delete.
    let runner = ScriptedRunner::new()
        .version("0.8.0")
        .on(&["machine", "create"], Reply::fail(1, DISK_FULL))
        .on(&["machine", "ls"], Reply::stdout("[]"));
    scripted(&runner, "m-new").create().unwrap_err();
    assert_eq!(count_deletes(&runner), 0, "{:?}", calls(&runner));
}

#[test]
fn a_hung_create_is_cleaned_up_too() {
    let runner = ScriptedRunner::new()
        .on(&["machine", "create"], Reply::hang())
        .on(&["machine", "ls"], Reply::stdout(listed_as_ours("m-hang")));
    let err = scripted(&runner, "m-hang").create().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert_eq!(calls(&runner)[1], delete_1_9("m-hang"));
}

#[test]
fn a_taken_explicit_name_is_an_error_and_is_never_deleted() {
    let runner = ScriptedRunner::new().on(&["machine", "create"], Reply::fail(1, EXISTS_1_9));
    let err = scripted(&runner, "m-taken").create().unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(calls(&runner).len(), 1);
    assert_eq!(count_deletes(&runner), 0);
}

#[test]
fn a_taken_generated_name_is_retried_once_with_the_next_name() {
    let runner =
        ScriptedRunner::new().on_times(&["machine", "create"], 1, Reply::fail(1, EXISTS_1_9));
    let vm = Machine::builder()
        .smolvm(client(&runner))
        .test_name("tests::retry")
        .image("alpine")
        .create()
        .unwrap();
    let seen = calls(&runner);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (first, second) = (&seen[0][3], &seen[1][3]);
    assert_ne!(first, second);
    assert_eq!(vm.name(), second);
    // The taken machine belongs to someone else: it is not deleted.
    assert_eq!(count_deletes(&runner), 0);
    drop(vm);
    assert_eq!(calls(&runner)[2], delete_1_9(second));

    let runner = ScriptedRunner::new().on(&["machine", "create"], Reply::fail(1, EXISTS_1_9));
    let err = Machine::builder()
        .smolvm(client(&runner))
        .test_name("tests::retry")
        .image("alpine")
        .create()
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(calls(&runner).len(), 2, "retried exactly once");
}

#[test]
fn generated_names_come_from_the_test_name() {
    let runner = ScriptedRunner::new();
    let prefix = &config().unwrap().prefix;
    let vm = Machine::builder()
        .smolvm(client(&runner))
        .image("alpine")
        .create()
        .unwrap();
    assert!(
        vm.name().starts_with(&format!(
            "{prefix}-generated-names-come-from-the-test-name-"
        )) || std::env::var_os("NEXTEST_TEST_NAME").is_some(),
        "{}",
        vm.name()
    );
    let vm = Machine::builder()
        .smolvm(client(&runner))
        .test_name("suite::Case One")
        .image("alpine")
        .create()
        .unwrap();
    assert!(
        vm.name().starts_with(&format!("{prefix}-suite-case-one-")),
        "{}",
        vm.name()
    );
    assert!(format!("{vm:?}").contains(vm.name()));
}

#[test]
fn without_a_source_the_configured_image_is_used_with_network() {
    let runner = ScriptedRunner::new();
    let _vm = Machine::builder()
        .smolvm(client(&runner))
        .name("m-default")
        .create()
        .unwrap();
    let image = &config().unwrap().image;
    assert_eq!(
        calls(&runner)[0][..7],
        argv(&[
            "machine",
            "create",
            "--name",
            "m-default",
            "--image",
            image,
            "--net"
        ])
    );
}

#[test]
fn from_pack_creates_with_from() {
    let runner = ScriptedRunner::new();
    let pack = Pack::create_with(&client(&runner), "alpine").unwrap();
    // The scripted runner writes no files; smolvm would.
    std::fs::write(pack.path(), b"sidecar").unwrap();
    runner.clear_calls();
    let _vm = Machine::builder()
        .smolvm(client(&runner))
        .name("m-pack")
        .from_pack(&pack)
        .create()
        .unwrap();
    let path = pack.path().to_str().unwrap();
    assert_eq!(
        calls(&runner)[0][..6],
        argv(&["machine", "create", "--name", "m-pack", "--from", path])
    );
}

#[test]
fn bad_input_fails_before_any_side_effect() {
    let runner = ScriptedRunner::new();
    let smolvm = client(&runner);
    let base = || Machine::builder().smolvm(smolvm.clone()).image("alpine");
    let cases = [
        (
            "invalid name",
            base().name("bad..name").create().unwrap_err(),
        ),
        ("double hyphen", base().name("a--b").create().unwrap_err()),
        ("empty name", base().name("").start().unwrap_err()),
        (
            "empty image",
            base().image("").name("m").create().unwrap_err(),
        ),
        (
            "blank image",
            base().image("  ").name("m").create().unwrap_err(),
        ),
        (
            "bad cidr",
            base().allow_cidr("10.0.0.0/33").create().unwrap_err(),
        ),
        ("bad env key", base().env("A=B", "v").create().unwrap_err()),
        ("bad label", base().label("", "v").create().unwrap_err()),
        (
            "missing pack file",
            base()
                .from_path("/nonexistent/x.smolmachine")
                .create()
                .unwrap_err(),
        ),
    ];
    for (what, err) in cases {
        assert!(matches!(err, Error::InvalidInput { .. }), "{what}: {err}");
    }
    assert!(runner.calls().is_empty(), "{:?}", runner.argvs());
}

#[test]
fn env_values_never_show_in_errors_or_debug() {
    let runner = ScriptedRunner::new().on(
        &["machine", "create"],
        Reply::fail(1, "Error: config operation failed: create machine: boom\n"),
    );
    let builder = scripted(&runner, "m-secret").env("TOKEN", "hunter22");
    assert!(!format!("{builder:?}").contains("hunter22"));
    let err = builder.create().unwrap_err();
    assert!(!err.to_string().contains("hunter22"), "{err}");
    assert!(err.to_string().contains("TOKEN=<redacted>"), "{err}");
}

#[test]
fn pack_with_cidr_on_old_smolvm_is_refused_before_create() {
    let runner = ScriptedRunner::new().version("1.7.0");
    let pack = Pack::create_with(&client(&runner), "alpine").unwrap();
    std::fs::write(pack.path(), b"sidecar").unwrap();
    runner.clear_calls();
    let err = Machine::builder()
        .smolvm(client(&runner))
        .name("m-egress")
        .from_pack(&pack)
        .allow_cidr("10.0.0.0/8")
        .create()
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(calls(&runner).is_empty(), "{:?}", calls(&runner));
}

#[test]
fn keep_disarms_the_guard_and_returns_the_name() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-keep").create().unwrap();
    let (kept, said) = capture(|| vm.keep());
    assert_eq!(kept, "m-keep");
    assert_eq!(count_deletes(&runner), 0);
    assert_lines(
        &said,
        &[&[
            "keeping machine m-keep",
            "smolvm machine delete -f --name m-keep",
        ]],
    );
}

#[test]
fn disable_cleanup_switches_deletion_off_and_on() {
    let runner = ScriptedRunner::new();
    let mut vm = scripted(&runner, "m-nocleanup").create().unwrap();
    let ((), said) = capture(|| {
        vm.disable_cleanup(true);
        drop(vm);
    });
    assert_eq!(count_deletes(&runner), 0);
    assert_lines(&said, &[&["keeping machine m-nocleanup"]]);

    let mut vm = scripted(&runner, "m-recleanup").create().unwrap();
    let ((), said) = capture(|| {
        vm.disable_cleanup(true);
        vm.disable_cleanup(false);
        drop(vm);
    });
    assert_eq!(calls(&runner).last().unwrap(), &delete_1_9("m-recleanup"));
    // Said when switched off; switched on again, it is deleted as usual.
    assert_lines(&said, &[&["keeping machine m-recleanup"]]);
}

/// The machine whose delete failed stays registered, and the exit hook deletes it: in a
/// child process, so that the exit hook's line is asserted here rather than printed.
#[test]
fn explicit_delete_returns_the_error_and_drop_does_not_retry() {
    if !is_child() {
        let stderr = in_child("explicit_delete_returns_the_error_and_drop_does_not_retry");
        assert_lines(
            &harness_lines(&stderr),
            &[&["at exit deleted 1 machine(s)"]],
        );
        return;
    }
    // Once: the harness's exit hook retries machines whose delete failed, and may succeed.
    let runner = ScriptedRunner::new().on_times(
        &["machine", "delete"],
        1,
        Reply::fail(1, "Error: failed to stop machine: still running\n"),
    );
    let vm = scripted(&runner, "m-delfail").create().unwrap();
    let err = vm.delete().unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    assert_eq!(count_deletes(&runner), 1);

    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-delok").create().unwrap();
    vm.delete().unwrap();
    assert_eq!(calls(&runner).last().unwrap(), &delete_1_9("m-delok"));
    assert_eq!(count_deletes(&runner), 1);
}

/// In a child process: the failed deletes stay registered for the exit hook, whose line is
/// asserted here with the drop's own messages.
#[test]
fn a_failing_delete_in_drop_is_logged_not_panicked() {
    if !is_child() {
        let stderr = in_child("a_failing_delete_in_drop_is_logged_not_panicked");
        assert_lines(
            &harness_lines(&stderr),
            &[
                &["failed to delete machine m-dropfail", "still running"],
                &["failed to delete machine m-drophang", "timed out"],
                &["at exit deleted 2 machine(s)"],
            ],
        );
        return;
    }
    // Once: the harness's exit hook retries machines whose delete failed, and may succeed.
    let runner = ScriptedRunner::new().on_times(
        &["machine", "delete"],
        1,
        Reply::fail(1, "Error: failed to stop machine: still running\n"),
    );
    let vm = scripted(&runner, "m-dropfail").create().unwrap();
    drop(vm);
    assert_eq!(count_deletes(&runner), 1);

    // Also when the delete hangs.
    let runner = ScriptedRunner::new().on_times(&["machine", "delete"], 1, Reply::hang());
    let vm = scripted(&runner, "m-drophang").create().unwrap();
    drop(vm);
    assert_eq!(count_deletes(&runner), 1);
}

/// Drop a machine while the thread panics, as a failing test does.
fn drop_while_panicking(runner: &ScriptedRunner, name: &str, policy: KeepPolicy) {
    let vm = Machine::builder()
        .smolvm(client(runner))
        .name(name)
        .image("alpine")
        .keep_policy(policy)
        .start()
        .unwrap();
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _vm = vm;
        panic!("the test failed");
    }));
    assert!(result.is_err());
}

#[test]
fn a_failing_test_keeps_or_deletes_its_machine_per_policy() {
    let runner = ScriptedRunner::new();
    let ((), said) = capture(|| drop_while_panicking(&runner, "m-fail-never", KeepPolicy::Never));
    assert_eq!(calls(&runner).last().unwrap(), &delete_1_9("m-fail-never"));
    assert_lines(
        &said,
        &[&[
            "test failed; machine m-fail-never",
            "smolvm machine start --name m-fail-never",
            "deleting it now",
        ]],
    );

    for (name, policy) in [
        ("m-fail-onfailure", KeepPolicy::OnFailure),
        ("m-fail-always", KeepPolicy::Always),
    ] {
        let runner = ScriptedRunner::new();
        let ((), said) = capture(|| drop_while_panicking(&runner, name, policy));
        assert_eq!(count_deletes(&runner), 0);
        assert_lines(
            &said,
            &[
                &[
                    &format!("test failed; machine {name}"),
                    "kept for inspection",
                ],
                &[&format!("keeping machine {name}")],
            ],
        );
    }
}

#[test]
fn a_passing_test_keeps_only_under_always() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-pass-onfailure")
        .keep_policy(KeepPolicy::OnFailure)
        .create()
        .unwrap();
    drop(vm);
    assert_eq!(count_deletes(&runner), 1);

    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-pass-always")
        .keep_policy(KeepPolicy::Always)
        .create()
        .unwrap();
    let ((), said) = capture(|| drop(vm));
    assert_eq!(count_deletes(&runner), 0);
    assert_lines(&said, &[&["keeping machine m-pass-always"]]);
}

/// In a child process: the machine stays registered, and the exit hook's retry succeeds.
#[test]
fn a_panicking_runner_in_drop_does_not_abort_a_failing_test() {
    if !is_child() {
        let stderr = in_child("a_panicking_runner_in_drop_does_not_abort_a_failing_test");
        assert_lines(
            &harness_lines(&stderr),
            &[
                &["test failed; machine m-runner-panics"],
                &["failed to delete machine m-runner-panics", "panicked"],
                &["at exit deleted 1 machine(s)"],
            ],
        );
        return;
    }
    /// Panics on the first delete only, so the exit hook's retry of the machine succeeds.
    #[derive(Debug)]
    struct PanicsOnDelete(ScriptedRunner, std::sync::atomic::AtomicBool);
    impl smolvm_harness::runner::Runner for PanicsOnDelete {
        fn run(
            &self,
            inv: &smolvm_harness::runner::Invocation,
        ) -> smolvm_harness::Result<smolvm_harness::runner::RawOutput> {
            let delete = inv.args.get(1).map(String::as_str) == Some("delete");
            if delete && !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("runner bug");
            }
            self.0.run(inv)
        }

        // A wrapper of an in-process runner says so, as the `Runner` docs ask.
        fn in_process(&self) -> bool {
            self.0.in_process()
        }
    }
    let smolvm = Smolvm::new("smolvm")
        .with_runner(PanicsOnDelete(ScriptedRunner::new(), Default::default()));
    let vm = Machine::builder()
        .smolvm(smolvm)
        .name("m-runner-panics")
        .image("alpine")
        .create()
        .unwrap();
    // A second panic during unwinding would abort the process; reaching the assert is the test.
    let result = catch_unwind(AssertUnwindSafe(move || {
        let _vm = vm;
        panic!("the test failed");
    }));
    assert!(result.is_err());
}

#[test]
fn guards_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Machine>();
    check::<Pack>();
}

fn sim_client(runner: &SimulatedRunner) -> Smolvm {
    Smolvm::new("smolvm").with_runner(runner.clone())
}

#[test]
fn simulated_lifecycle_env_exec_and_copies() {
    let runner = SimulatedRunner::newest();
    let host = tempfile::tempdir().unwrap();
    let vm = Machine::builder()
        .smolvm(sim_client(&runner))
        .test_name("sim::lifecycle")
        .image("alpine")
        .net()
        .env("FROM_BUILDER", "b1")
        .start()
        .unwrap();
    assert_eq!(runner.machine_names(), [vm.name()]);

    let out = vm.exec(&["echo", "hi"]).unwrap();
    out.assert_success();
    assert_eq!(out.stdout_str(), "hi\n");
    let out = vm.command(&["env"]).env("FROM_EXEC", "e1").run().unwrap();
    let env = out.stdout_str();
    assert!(
        env.contains("FROM_BUILDER=b1") && env.contains("FROM_EXEC=e1"),
        "{env}"
    );
    assert_eq!(vm.sh("echo out; exit 3").unwrap().code(), 3);

    let src = host.path().join("in.txt");
    std::fs::write(&src, b"payload").unwrap();
    vm.copy_in(&src, "/root/in.txt").unwrap();
    assert_eq!(
        vm.exec(&["cat", "/root/in.txt"]).unwrap().stdout(),
        b"payload"
    );
    let dst = host.path().join("out.txt");
    vm.copy_out("/root/in.txt", &dst).unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), b"payload");

    vm.stop().unwrap();
    vm.start().unwrap();
    drop(vm);
    assert_eq!(runner.machine_count(), 0);
}

#[test]
fn simulated_0_8_0_lifecycle() {
    let runner = SimulatedRunner::new(smolvm_harness::Version::new(0, 8, 0));
    let vm = Machine::builder()
        .smolvm(sim_client(&runner))
        .test_name("sim::old")
        .image("alpine")
        .net()
        .label("ignored", "before-1.8")
        .start()
        .unwrap();
    assert_eq!(vm.exec(&["echo", "old"]).unwrap().stdout_str(), "old\n");
    drop(vm);
    assert_eq!(runner.machine_count(), 0);
}

#[test]
fn simulated_machine_from_a_pack() {
    let runner = SimulatedRunner::newest();
    let pack = Pack::create_with(&sim_client(&runner), "alpine").unwrap();
    assert!(pack.path().is_file());
    let vm = Machine::builder()
        .smolvm(sim_client(&runner))
        .test_name("sim::pack")
        .from_pack(&pack)
        .start()
        .unwrap();
    vm.exec(&["true"]).unwrap().assert_success();
    drop(vm);
    assert_eq!(runner.machine_count(), 0);
}

#[test]
fn simulated_failures_leave_no_machine() {
    let runner = SimulatedRunner::newest().fail("start");
    let err = Machine::builder()
        .smolvm(sim_client(&runner))
        .test_name("sim::nostart")
        .image("alpine")
        .net()
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(runner.machine_count(), 0);

    let runner = SimulatedRunner::newest().fail("create");
    assert!(Machine::builder()
        .smolvm(sim_client(&runner))
        .test_name("sim::nocreate")
        .image("alpine")
        .net()
        .create()
        .is_err());
    assert_eq!(runner.machine_count(), 0);
}

/// In a child process: the undeletable machine stays registered for the exit hook.
#[test]
fn simulated_keep_and_failed_delete_leave_the_machine() {
    if !is_child() {
        let stderr = in_child("simulated_keep_and_failed_delete_leave_the_machine");
        assert_lines(
            &harness_lines(&stderr),
            &[
                &["keeping machine smt-sim-kept-"],
                &[
                    "failed to delete machine smt-sim-undeletable-",
                    "injected failure",
                ],
                &["at exit deleted 1 machine(s)"],
            ],
        );
        return;
    }
    let runner = SimulatedRunner::newest();
    let smolvm = sim_client(&runner);
    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .test_name("sim::kept")
        .image("alpine")
        .net()
        .create()
        .unwrap();
    let kept = vm.keep();
    assert_eq!(runner.machine_names(), [kept.as_str()]);
    smolvm.machine_delete(&kept).unwrap();

    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .test_name("sim::undeletable")
        .image("alpine")
        .net()
        .create()
        .unwrap();
    let name = vm.name().to_string();
    runner.fail("delete");
    drop(vm);
    assert_eq!(runner.machine_names(), [name.as_str()]);
    // Still registered: the exit hook deletes it (and says so).
    runner.clear_knobs();
}

#[test]
fn the_harness_label_keys_are_reserved() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-own-labels").create().unwrap();
    drop(vm);
    let create = &calls(&runner)[0];
    let first_label = &create[create.iter().position(|a| a == "--label").unwrap() + 1];
    let (key, _) = first_label.split_once('=').unwrap();
    runner.clear_calls();
    let err = scripted(&runner, "m-own-labels")
        .label(key, "spoofed")
        .create()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(runner.calls().is_empty());
}

#[test]
fn two_live_guards_cannot_share_a_name() {
    let runner = ScriptedRunner::new();
    let first = scripted(&runner, "m-twice").create().unwrap();
    runner.clear_calls();
    let err = scripted(&runner, "m-twice").create().unwrap_err();
    assert!(
        matches!(&err, Error::NameInUse { name } if name == "m-twice")
            && err.to_string().contains("in use by another live Machine"),
        "{err}"
    );
    // Refused before anything ran: the first guard's machine and registration are intact.
    assert!(calls(&runner).is_empty());
    drop(first);
    assert_eq!(calls(&runner), vec![delete_1_9("m-twice")]);
    // Once the first guard is gone, the name is free again.
    let again = scripted(&runner, "m-twice").create().unwrap();
    drop(again);
}

#[test]
fn creating_without_smolvm_is_not_found_and_leaves_nothing_registered() {
    let missing = Smolvm::new("/nonexistent/bin/smolvm");
    let err = Machine::builder()
        .smolvm(missing.clone())
        .name("m-nosmolvm")
        .image("alpine")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/bin/smolvm is not an executable file"),
        "{err}"
    );
    // Nothing half-made was claimed: the same name is free for a client that works.
    let runner = ScriptedRunner::new();
    scripted(&runner, "m-nosmolvm")
        .create()
        .unwrap()
        .delete()
        .unwrap();
}

#[test]
fn copy_with_an_empty_path_is_invalid_input_not_a_silent_no_op() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-cp-empty").create().unwrap();
    runner.clear_calls();
    let cases = [
        ("host path", vm.copy_in("", "/root/x").unwrap_err()),
        ("guest path", vm.copy_in("/tmp/x", "").unwrap_err()),
        ("guest path", vm.copy_out("", "/tmp/x").unwrap_err()),
        ("host path", vm.copy_out("/root/x", "").unwrap_err()),
    ];
    for (what, err) in cases {
        match err {
            Error::InvalidInput { what: w, .. } => assert_eq!(w, what),
            other => panic!("expected invalid {what}, got {other:?}"),
        }
    }
    assert!(calls(&runner).is_empty(), "{:?}", calls(&runner));
}

#[test]
fn a_nul_byte_anywhere_is_invalid_input_before_smolvm_runs() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-nul").create().unwrap();
    runner.clear_calls();
    let what = |r: Result<smolvm_harness::ExecOutput, Error>| match r {
        Err(Error::InvalidInput { what, .. }) => what,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    assert_eq!(what(vm.exec(&["echo", "a\0b"])), "exec argv");
    assert_eq!(what(vm.command(&["true"]).arg("x\0").run()), "exec argv");
    assert_eq!(what(vm.command(&["true"]).env("K\0", "v").run()), "env key");
    assert_eq!(
        what(vm.command(&["true"]).env("K", "se\0cret").run()),
        "env value"
    );
    assert_eq!(
        what(vm.command(&["true"]).workdir("/a\0b").run()),
        "workdir"
    );
    let cp_what = |r: Result<(), Error>| match r {
        Err(Error::InvalidInput { what, .. }) => what,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    assert_eq!(cp_what(vm.copy_in("/tmp/a\0b", "/x")), "host path");
    assert_eq!(cp_what(vm.copy_out("/x", "/tmp/a\0b")), "host path");
    assert_eq!(cp_what(vm.copy_in("/tmp/a", "/x\0y")), "guest path");
    assert!(calls(&runner).is_empty(), "{:?}", calls(&runner));

    // Creation: names, env and labels; and the smolvm process env of the client.
    for (builder, what) in [
        (scripted(&runner, "m\0x"), "machine name"),
        (scripted(&runner, "m-nul2").env("A\0", "1"), "env key"),
        (scripted(&runner, "m-nul2").env("A", "1\0"), "env value"),
        (scripted(&runner, "m-nul2").label("l", "v\0"), "label"),
        (
            Machine::builder()
                .smolvm(client(&runner).with_process_env("SMOLVM_X", "a\0b"))
                .name("m-nul2")
                .image("alpine"),
            "process env",
        ),
    ] {
        match builder.create() {
            Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
            other => panic!("expected invalid {what}, got {other:?}"),
        }
    }
    assert!(calls(&runner).is_empty(), "{:?}", calls(&runner));
}

#[test]
fn huge_timeouts_are_clamped_so_a_deadline_always_exists() {
    let runner = ScriptedRunner::new();
    let vm = scripted(&runner, "m-forever").create().unwrap();
    runner.clear_calls();
    vm.command(&["true"])
        .timeout(Duration::from_secs(u64::MAX))
        .run()
        .unwrap();
    let exec = runner.calls().pop().expect("an exec");
    // What smolvm is sent: 365 days, not 18446744073709551615s.
    let at = exec.args.iter().position(|a| a == "--timeout").unwrap();
    assert_eq!(exec.args[at + 1], "31536000s");
    // The host deadline: clamped as well, never "none".
    assert_eq!(exec.timeout, Some(smolvm_harness::validate::MAX_TIMEOUT));

    let forever = client(&runner).with_timeout(Duration::MAX);
    forever.machine_start("m-forever").unwrap();
    assert_eq!(
        runner.calls().pop().expect("a start").timeout,
        Some(smolvm_harness::validate::MAX_TIMEOUT)
    );
}
