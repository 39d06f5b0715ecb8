//! Unit mode: the exact argv of the fork calls (`start --forkable`, `fork`, `delete --cascade`)
//! and of `data-dir` per dialect, their refusals before any smolvm call (versions without the
//! feature, bad fork env), and how their outputs are read.

use smolvm_harness::{Error, ForkOptions, MachineState, Reply, ScriptedRunner, Smolvm};

fn client(runner: ScriptedRunner) -> Smolvm {
    Smolvm::new("smolvm").with_runner(runner)
}

/// The argv of every call but `--version`.
fn sent(runner: &ScriptedRunner) -> Vec<Vec<String>> {
    runner
        .argvs()
        .into_iter()
        .filter(|a| a.first().map(String::as_str) != Some("--version"))
        .collect()
}

const STOPPED: &str = r#"{"name":"g","state":"stopped","pid":null}"#;

#[test]
fn start_forkable_argv_and_its_refusals() {
    let runner = ScriptedRunner::new().on(&["machine", "status"], Reply::stdout(STOPPED));
    client(runner.clone()).machine_start_forkable("g").unwrap();
    assert_eq!(
        sent(&runner).last().unwrap(),
        &["machine", "start", "--name", "g", "--forkable"]
    );

    // smolvm would ignore --forkable on a running machine and exit 0: refused instead.
    let running = STOPPED.replace("stopped", "running");
    let runner = ScriptedRunner::new().on(&["machine", "status"], Reply::stdout(running));
    let err = client(runner.clone())
        .machine_start_forkable("g")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(sent(&runner).iter().all(|a| a[1] != "start"));

    let runner = ScriptedRunner::new().version("0.9.9");
    let err = client(runner.clone())
        .machine_start_forkable("g")
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("1.0.0"), "{err}");
    assert!(sent(&runner).is_empty());
}

#[test]
fn fork_argv_per_dialect_and_remapped_ports() {
    let remaps = "Freezing golden 'g' as fork base...\n  port 18080->80 (golden) remapped to 41234->80 (clone)\nBooting clone 'c' from snapshot...\n";
    let runner = ScriptedRunner::new().on(&["machine", "fork"], Reply::with(0, "", remaps));
    let smolvm = client(runner.clone());
    let ports = smolvm
        .machine_fork(
            "g",
            "c",
            &ForkOptions::default()
                .env("TEST_ID", "7")
                .secret_env("TOKEN", "clone-secret-x"),
        )
        .unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].host, ports[0].guest), (41234, 80));
    assert_eq!(
        sent(&runner)[0],
        [
            "machine",
            "fork",
            "--golden",
            "g",
            "--name",
            "c",
            "--env=TEST_ID=7",
            "--secret-env",
            "TOKEN=SMOLVM_HARNESS_CLONE_SECRET_TOKEN"
        ]
    );
    let call = runner
        .calls()
        .into_iter()
        .find(|c| c.args_str().starts_with(&["machine", "fork"]))
        .unwrap();
    assert!(call.env.contains(&(
        "SMOLVM_HARNESS_CLONE_SECRET_TOKEN".into(),
        "clone-secret-x".into()
    )));
    assert!(!format!("{call:?}").contains("clone-secret-x"));

    // The positional form before 1.0.2.
    let runner = ScriptedRunner::new().version("1.0.1");
    client(runner.clone())
        .machine_fork("g", "c", &ForkOptions::default())
        .unwrap();
    assert_eq!(sent(&runner)[0], ["machine", "fork", "g", "c"]);
}

#[test]
fn fork_refusals_come_before_any_call() {
    for (version, options, kind) in [
        ("0.8.2", ForkOptions::default(), "unsupported"),
        ("1.6.9", ForkOptions::default().env("A", "1"), "unsupported"),
        ("1.9.2", ForkOptions::default().env("1BAD", "x"), "invalid"),
        (
            "1.9.2",
            ForkOptions::default().env("A", "two\nlines"),
            "invalid",
        ),
        (
            "1.9.2",
            ForkOptions::default().secret_env("a.b", "x"),
            "invalid",
        ),
        (
            "1.9.2",
            ForkOptions::default()
                .secret_env("K", "1")
                .secret_env("K", "2"),
            "invalid",
        ),
    ] {
        let runner = ScriptedRunner::new().version(version);
        let err = client(runner.clone())
            .machine_fork("g", "c", &options)
            .unwrap_err();
        let ok = match kind {
            "unsupported" => matches!(err, Error::Unsupported { .. }),
            _ => matches!(err, Error::InvalidInput { .. }),
        };
        assert!(ok, "{version} {options:?}: {err}");
        assert!(sent(&runner).is_empty(), "{version} {options:?}");
        assert!(!err.to_string().contains("two\nlines"));
    }
}

#[test]
fn cascade_argv_missing_is_deleted_and_old_versions_refuse() {
    let runner = ScriptedRunner::new();
    client(runner.clone()).machine_delete_cascade("g").unwrap();
    assert_eq!(
        sent(&runner)[0],
        ["machine", "delete", "--cascade", "--name", "g"]
    );
    let runner = ScriptedRunner::new().on(
        &["machine", "delete"],
        Reply::fail(1, "Error: vm not found: g\n"),
    );
    client(runner).machine_delete_cascade("g").unwrap();
    let runner = ScriptedRunner::new().on(
        &["machine", "delete"],
        Reply::fail(1, "Error: agent operation failed: delete: boom\n"),
    );
    let err = client(runner).machine_delete_cascade("g").unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err}");
    let runner = ScriptedRunner::new().version("1.6.9");
    let err = client(runner.clone())
        .machine_delete_cascade("g")
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(sent(&runner).is_empty());
}

#[test]
fn data_dir_per_dialect_and_odd_answers() {
    let runner = ScriptedRunner::new().on(
        &["machine", "data-dir"],
        Reply::stdout("/tmp/state/vms/abc\n"),
    );
    let dir = client(runner.clone()).machine_data_dir("m").unwrap();
    assert_eq!(dir, std::path::PathBuf::from("/tmp/state/vms/abc"));
    assert_eq!(sent(&runner)[0], ["machine", "data-dir", "--name", "m"]);

    let runner = ScriptedRunner::new()
        .version("0.8.2")
        .on(&["machine", "data-dir"], Reply::stdout("/d\n"));
    client(runner.clone()).machine_data_dir("m").unwrap();
    assert_eq!(sent(&runner)[0], ["machine", "data-dir", "m"]);

    // Not a directory path: a parse error, not a path to read.
    let runner = ScriptedRunner::new().on(&["machine", "data-dir"], Reply::stdout("oops\n"));
    let err = client(runner).machine_data_dir("m").unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    let runner = ScriptedRunner::new().on(
        &["machine", "data-dir"],
        Reply::fail(1, "Error: vm not found: m\n"),
    );
    let err = client(runner).machine_data_dir("m").unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn a_running_state_parses_for_the_forkable_check() {
    // The check above reads `status --json`; its state must parse as running.
    let running = STOPPED.replace("stopped", "running");
    let runner = ScriptedRunner::new().on(&["machine", "status"], Reply::stdout(running));
    let info = client(runner).machine_status("g").unwrap().unwrap();
    assert_eq!(info.state, MachineState::Running);
}
