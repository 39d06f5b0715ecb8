//! Unit mode: the exact argv of every `Smolvm` method, every option, both dialects (each row
//! of the compatibility table, §11 of the CLI notes), and how each outcome maps to a result.

use std::path::PathBuf;
use std::time::Duration;

use smolvm_harness::{
    CpPath, CreateOptions, Error, ExecOptions, MachineState, Reply, ScriptedRunner, Smolvm, Version,
};

const OLD: &str = "0.8.0";
const NEW: &str = "1.9.2";

fn client(version: &str) -> (Smolvm, ScriptedRunner) {
    let runner = ScriptedRunner::new().version(version);
    (Smolvm::new("smolvm").with_runner(runner.clone()), runner)
}

fn client_with(runner: ScriptedRunner) -> Smolvm {
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

fn one(runner: &ScriptedRunner) -> Vec<String> {
    let all = sent(runner);
    assert_eq!(all.len(), 1, "expected one call, got {all:?}");
    all.into_iter().next().unwrap_or_default()
}

/// A file that exists, for `--from`.
fn sidecar() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.smolmachine");
    std::fs::write(&path, b"pack").expect("write");
    (dir, path)
}

#[test]
fn version_is_asked_once_and_cached_across_clones() {
    let (smolvm, runner) = client(NEW);
    assert_eq!(smolvm.version().unwrap(), Version::new(1, 9, 2));
    let clone = smolvm.clone();
    assert_eq!(clone.version().unwrap(), Version::new(1, 9, 2));
    smolvm.machine_start("a").unwrap();
    let versions = runner
        .argvs()
        .iter()
        .filter(|a| a[0] == "--version")
        .count();
    assert_eq!(versions, 1);
}

#[test]
fn version_override_skips_the_probe() {
    let runner = ScriptedRunner::new().on(&["--version"], Reply::fail(2, "error: weird build"));
    let smolvm = client_with(runner.clone()).with_version(Version::new(0, 8, 0));
    smolvm
        .machine_create("a", &CreateOptions::image("alpine"))
        .unwrap();
    assert_eq!(
        runner.argvs(),
        [["machine", "create", "--image", "alpine", "a"]]
    );
}

#[test]
fn unparseable_version_is_a_parse_error() {
    let runner = ScriptedRunner::new().on(&["--version"], Reply::stdout("something else\n"));
    let err = client_with(runner).version().unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    assert!(err.to_string().contains("smolvm --version"), "{err}");
}

#[test]
fn pack_create_argv_and_sidecar_path() {
    let (smolvm, runner) = client(NEW);
    let sidecar = smolvm
        .pack_create("alpine:3.20", "/tmp/out/app.bin")
        .unwrap();
    assert_eq!(sidecar, PathBuf::from("/tmp/out/app.bin.smolmachine"));
    assert_eq!(
        one(&runner),
        [
            "pack",
            "create",
            "--image",
            "alpine:3.20",
            "-o",
            "/tmp/out/app.bin"
        ]
    );
    // pack does not depend on the dialect: no version probe needed.
    assert!(runner.argvs().iter().all(|a| a[0] != "--version"));
}

#[test]
fn create_from_image_both_dialects() {
    for (version, expected) in [
        (
            OLD,
            vec![
                "machine",
                "create",
                "--image",
                "alpine",
                "--net",
                "--env=A=1",
                "--env=B=-x=y",
                "web",
            ],
        ),
        (
            NEW,
            vec![
                "machine",
                "create",
                "--name",
                "web",
                "--image",
                "alpine",
                "--net",
                "--env=A=1",
                "--env=B=-x=y",
                "--label",
                "team=infra",
                "--label",
                "k=v=w",
            ],
        ),
    ] {
        let (smolvm, runner) = client(version);
        let opts = CreateOptions::image("alpine")
            .net()
            .env("A", "1")
            .env("B", "-x=y")
            .label("team", "infra")
            .label("k", "v=w");
        smolvm.machine_create("web", &opts).unwrap();
        assert_eq!(one(&runner), expected, "smolvm {version}");
    }
}

#[test]
fn create_with_cidrs_sends_net_explicitly() {
    let (smolvm, runner) = client(NEW);
    let opts = CreateOptions::image("alpine")
        .allow_cidr("10.0.0.0/8")
        .allow_cidr("2001:db8::/32");
    smolvm.machine_create("web", &opts).unwrap();
    assert_eq!(
        one(&runner),
        [
            "machine",
            "create",
            "--name",
            "web",
            "--image",
            "alpine",
            "--net",
            "--allow-cidr",
            "10.0.0.0/8",
            "--allow-cidr",
            "2001:db8::/32"
        ]
    );
}

#[test]
fn create_from_pack_both_dialects() {
    let (_dir, path) = sidecar();
    let p = path.to_str().unwrap();
    let (smolvm, runner) = client(OLD);
    smolvm
        .machine_create("m", &CreateOptions::from_path(&path).env("K", "V"))
        .unwrap();
    assert_eq!(
        one(&runner),
        ["machine", "create", "--from", p, "--env=K=V", "m"]
    );

    let (smolvm, runner) = client(NEW);
    smolvm
        .machine_create(
            "m",
            &CreateOptions::from_path(&path).allow_cidr("192.0.2.7"),
        )
        .unwrap();
    assert_eq!(
        one(&runner),
        [
            "machine",
            "create",
            "--name",
            "m",
            "--from",
            p,
            "--net",
            "--allow-cidr",
            "192.0.2.7"
        ]
    );
}

#[test]
fn from_path_with_cidr_is_refused_before_1_8_0() {
    let (_dir, path) = sidecar();
    for version in ["0.8.0", "1.0.2", "1.7.9"] {
        let (smolvm, runner) = client(version);
        let err = smolvm
            .machine_create(
                "m",
                &CreateOptions::from_path(&path).allow_cidr("10.0.0.0/8"),
            )
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{version}: {err}");
        assert!(err.to_string().contains(version), "{err}");
        assert!(
            sent(&runner).is_empty(),
            "nothing may be created on {version}"
        );
    }
    let (smolvm, _) = client("1.8.0");
    smolvm
        .machine_create(
            "m",
            &CreateOptions::from_path(&path).allow_cidr("10.0.0.0/8"),
        )
        .unwrap();
}

#[test]
fn labels_only_from_1_8_0_and_names_flag_from_1_0_2() {
    let cases = [
        ("1.0.1", vec!["machine", "create", "--image", "i", "n"]),
        (
            "1.0.2",
            vec!["machine", "create", "--name", "n", "--image", "i"],
        ),
        (
            "1.7.9",
            vec!["machine", "create", "--name", "n", "--image", "i"],
        ),
        (
            "1.8.0",
            vec![
                "machine", "create", "--name", "n", "--image", "i", "--label", "a=b",
            ],
        ),
    ];
    for (version, expected) in cases {
        let (smolvm, runner) = client(version);
        smolvm
            .machine_create("n", &CreateOptions::image("i").label("a", "b"))
            .unwrap();
        assert_eq!(one(&runner), expected, "{version}");
    }
}

#[test]
fn start_and_stop_are_the_same_in_both_dialects() {
    for version in [OLD, NEW] {
        let (smolvm, runner) = client(version);
        smolvm.machine_start("m").unwrap();
        smolvm.machine_stop("m").unwrap();
        assert_eq!(
            sent(&runner),
            [
                ["machine", "start", "--name", "m"],
                ["machine", "stop", "--name", "m"]
            ]
        );
    }
}

#[test]
fn delete_always_forces_and_stops_first_on_0_8_0() {
    let (smolvm, runner) = client(NEW);
    smolvm.machine_delete("m").unwrap();
    assert_eq!(one(&runner), ["machine", "delete", "-f", "--name", "m"]);

    let (smolvm, runner) = client("0.8.1");
    smolvm.machine_delete("m").unwrap();
    assert_eq!(one(&runner), ["machine", "delete", "-f", "m"]);

    // 0.8.0's delete orphans a running VM, so it is stopped first.
    let (smolvm, runner) = client(OLD);
    smolvm.machine_delete("m").unwrap();
    assert_eq!(
        sent(&runner),
        [
            vec!["machine", "stop", "--name", "m"],
            vec!["machine", "delete", "-f", "m"]
        ]
    );
}

#[test]
fn delete_of_a_missing_machine_succeeds() {
    let runner = ScriptedRunner::new().on(
        &["machine", "delete"],
        Reply::fail(1, "Error: vm not found: m\n"),
    );
    client_with(runner).machine_delete("m").unwrap();

    // On 0.8.0 a missing machine is recognised from stop... which exits 0 there; delete says it.
    let runner = ScriptedRunner::new()
        .version(OLD)
        .on(
            &["machine", "stop"],
            Reply::stdout("Machine 'm' not found or not running\n"),
        )
        .on(
            &["machine", "delete"],
            Reply::fail(1, "Error: vm not found: m\n"),
        );
    client_with(runner).machine_delete("m").unwrap();
}

#[test]
fn a_failed_stop_before_delete_on_0_8_0_keeps_the_record() {
    // Deleting anyway would orphan the running VM (0.8.0's delete does not stop it).
    let runner = ScriptedRunner::new().version(OLD).on(
        &["machine", "stop"],
        Reply::fail(1, "Error: agent operation failed: stop: busy\n"),
    );
    let err = client_with(runner.clone()).machine_delete("m").unwrap_err();
    assert_eq!(err.exit_code(), Some(1));
    assert_eq!(sent(&runner), [["machine", "stop", "--name", "m"]]);
}

#[test]
fn create_time_env_values_are_scrubbed_from_exec_output_and_errors() {
    let smolvm = Smolvm::simulated();
    let opts = CreateOptions::image("alpine")
        .net()
        .env("API_TOKEN", "hunter22-secret");
    smolvm.machine_create("scrub", &opts).unwrap();
    smolvm.machine_start("scrub").unwrap();
    let out = smolvm
        .machine_exec(
            "scrub",
            &["sh", "-c", "env; exit 3"],
            &ExecOptions::default(),
        )
        .unwrap();
    // The bytes are the guest's, untouched; what is shown is scrubbed.
    assert!(out.stdout_str().contains("API_TOKEN=hunter22-secret"));
    assert!(!format!("{out:?}").contains("hunter22"), "{out:?}");
    let panic = std::panic::catch_unwind(|| {
        out.expect_code(0);
    })
    .unwrap_err();
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("API_TOKEN=<redacted>"), "{msg}");
    assert!(!msg.contains("hunter22"), "{msg}");
    smolvm.machine_delete("scrub").unwrap();
}

#[test]
fn delete_failure_is_an_error() {
    let runner = ScriptedRunner::new().on(
        &["machine", "delete"],
        Reply::fail(1, "Error: agent operation failed: stop: still alive\n"),
    );
    let err = client_with(runner).machine_delete("m").unwrap_err();
    assert_eq!(err.exit_code(), Some(1));
    assert_eq!(
        err.to_string(),
        "smolvm machine delete -f --name m failed (exit 1): Error: agent operation failed: stop: still alive"
    );
}

#[test]
fn exec_argv_with_every_option() {
    for version in [OLD, NEW] {
        let (smolvm, runner) = client(version);
        let opts = ExecOptions::default()
            .workdir("/srv")
            .timeout(Duration::from_secs(30))
            .stream()
            .env("A", "1")
            .env("NEG", "-1");
        smolvm
            .machine_exec("m", &["sh", "-c", "echo --name x"], &opts)
            .unwrap();
        assert_eq!(
            one(&runner),
            [
                "machine",
                "exec",
                "--name",
                "m",
                "-w",
                "/srv",
                "--timeout",
                "30s",
                "--stream",
                "--env=A=1",
                "--env=NEG=-1",
                "--",
                "sh",
                "-c",
                "echo --name x"
            ],
            "{version}"
        );
    }
}

#[test]
fn exec_minimal_and_odd_forms() {
    let (smolvm, runner) = client(NEW);
    smolvm
        .machine_exec("m", &["--name", "y"], &ExecOptions::default())
        .unwrap();
    smolvm
        .machine_exec(
            "m",
            &["true"],
            &ExecOptions::default()
                .workdir("-odd")
                .timeout(Duration::from_millis(1500)),
        )
        .unwrap();
    assert_eq!(
        sent(&runner),
        [
            vec!["machine", "exec", "--name", "m", "--", "--name", "y"],
            vec![
                "machine",
                "exec",
                "--name",
                "m",
                "-w=-odd",
                "--timeout",
                "1500ms",
                "--",
                "true"
            ],
        ]
    );
    // The host-side limit covers the guest timeout plus smolvm's own 5 s buffer, even when
    // the client's default is shorter.
    let short = smolvm.with_timeout(Duration::from_secs(1));
    short
        .machine_exec(
            "m",
            &["true"],
            &ExecOptions::default().timeout(Duration::from_millis(1500)),
        )
        .unwrap();
    let timeout = runner.calls().last().and_then(|c| c.timeout).unwrap();
    assert_eq!(timeout, Duration::from_millis(11_500));
    short
        .machine_exec(
            "m",
            &["true"],
            &ExecOptions::default().timeout(Duration::MAX),
        )
        .unwrap();
}

#[test]
fn exec_guest_exit_codes_are_results_not_errors() {
    let runner = ScriptedRunner::new()
        .on(
            &["machine", "exec", "--name", "m", "--", "false"],
            Reply::with(1, "", ""),
        )
        .on(
            &["machine", "exec", "--name", "m", "--", "two"],
            Reply::with(2, "", "error: usage\n"),
        )
        .on(
            &["machine", "exec", "--name", "m", "--", "slow"],
            Reply::with(124, "partial", "\ncommand timed out after 1000ms"),
        )
        .on(
            &["machine", "exec", "--name", "m", "--", "guest-err"],
            Reply::with(1, "", "Error: my own app failed\n"),
        );
    let smolvm = client_with(runner);
    let run = |cmd: &str| {
        smolvm
            .machine_exec("m", &[cmd], &ExecOptions::default())
            .unwrap()
    };
    assert_eq!(run("false").code(), 1);
    assert_eq!(run("two").code(), 2);
    let slow = run("slow");
    assert_eq!(slow.code(), 124);
    assert_eq!(slow.stdout(), b"partial");
    assert_eq!(run("guest-err").code(), 1);
}

#[test]
fn exec_smolvm_failures_are_errors() {
    for stderr in [
        "Error: vm not found: m\n",
        "Error: agent operation failed: connect: machine 'm' is not running. Use 'smolvm machine start --name m' first.\n",
        "Error: config operation failed: validate machine name: machine name too long\n",
    ] {
        let runner = ScriptedRunner::new().on(&["machine", "exec"], Reply::fail(1, stderr));
        let err = client_with(runner)
            .machine_exec("m", &["true"], &ExecOptions::default())
            .unwrap_err();
        assert!(matches!(err, Error::Failed { code: Some(1), .. }), "{err}");
        assert!(err.to_string().contains(stderr.trim()), "{err}");
    }
    let runner = ScriptedRunner::new().on(
        &["machine", "exec"],
        Reply::fail(1, "Error: vm not found: m\n"),
    );
    let err = client_with(runner)
        .machine_exec("m", &["true"], &ExecOptions::default())
        .unwrap_err();
    assert!(err.is_not_found());
}

#[test]
fn exec_env_values_never_appear_in_errors_or_debug() {
    let runner = ScriptedRunner::new().on(
        &["machine", "exec"],
        Reply::fail(1, "Error: agent operation failed: boom hunter2-secret\n"),
    );
    let smolvm = client_with(runner.clone());
    let opts = ExecOptions::default().env("TOKEN", "hunter2-secret");
    let err = smolvm.machine_exec("m", &["true"], &opts).unwrap_err();
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        format!("{opts:?}"),
        format!("{:?}", runner.calls()),
    ] {
        assert!(!shown.contains("hunter2-secret"), "leaked: {shown}");
    }
    assert!(err.to_string().contains("--env=TOKEN=<redacted>"), "{err}");

    let ok = ScriptedRunner::new().on(&["machine", "exec"], Reply::with(3, "hunter2-secret\n", ""));
    let out = client_with(ok).machine_exec("m", &["env"], &opts).unwrap();
    assert!(!format!("{out:?}").contains("hunter2-secret"));
    let panic = std::panic::catch_unwind(|| {
        out.assert_success();
    })
    .unwrap_err();
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("expected exit 0, got exit 3"), "{msg}");
    assert!(!msg.contains("hunter2-secret"), "{msg}");
}

#[test]
fn exec_rejects_bad_input_before_spawning() {
    let (smolvm, runner) = client(NEW);
    let none: [&str; 0] = [];
    let cases: Vec<(Result<_, Error>, &str)> = vec![
        (
            smolvm.machine_exec("m", &none, &ExecOptions::default()),
            "exec argv",
        ),
        (
            smolvm.machine_exec(
                "m",
                &["true"],
                &ExecOptions::default().timeout(Duration::ZERO),
            ),
            "timeout",
        ),
        (
            smolvm.machine_exec(
                "m",
                &["true"],
                &ExecOptions::default().timeout(Duration::from_micros(500)),
            ),
            "timeout",
        ),
        (
            smolvm.machine_exec("m", &["true"], &ExecOptions::default().env("", "v")),
            "env key",
        ),
        (
            smolvm.machine_exec("m", &["true"], &ExecOptions::default().env("A=B", "v")),
            "env key",
        ),
        (
            smolvm.machine_exec("m", &["true"], &ExecOptions::default().env("A\0", "v")),
            "env key",
        ),
        (
            smolvm.machine_exec("bad name", &["true"], &ExecOptions::default()),
            "machine name",
        ),
    ];
    for (result, what) in cases {
        match result {
            Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
            other => panic!("expected invalid {what}, got {other:?}"),
        }
    }
    assert!(
        runner.argvs().is_empty(),
        "nothing may be spawned: {:?}",
        runner.argvs()
    );
}

#[test]
fn create_rejects_bad_input_before_spawning() {
    let (smolvm, runner) = client(NEW);
    let long = "x".repeat(129);
    let bad: Vec<(&str, CreateOptions, &str)> = vec![
        ("a--b", CreateOptions::image("alpine"), "machine name"),
        ("-a", CreateOptions::image("alpine"), "machine name"),
        ("a.b", CreateOptions::image("alpine"), "machine name"),
        (&long, CreateOptions::image("alpine"), "machine name"),
        ("ok", CreateOptions::image(" "), "image"),
        (
            "ok",
            CreateOptions::image("alpine").allow_cidr("10.0.0.0/33"),
            "CIDR",
        ),
        (
            "ok",
            CreateOptions::image("alpine").allow_cidr("example.com"),
            "CIDR",
        ),
        ("ok", CreateOptions::image("alpine").env("", "x"), "env key"),
        ("ok", CreateOptions::image("alpine").label("", "x"), "label"),
        (
            "ok",
            CreateOptions::from_path("/nonexistent/x.smolmachine"),
            "from path",
        ),
    ];
    for (name, opts, what) in bad {
        match smolvm.machine_create(name, &opts) {
            Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what, "{name} {opts:?}"),
            other => panic!("expected invalid {what}, got {other:?}"),
        }
    }
    assert!(runner.argvs().is_empty(), "{:?}", runner.argvs());
}

#[test]
fn cp_argv_both_directions_and_empty_sides_refused() {
    let (smolvm, runner) = client(NEW);
    smolvm
        .machine_cp(
            CpPath::host("/tmp/in.txt"),
            CpPath::guest("m", "/work/in.txt"),
        )
        .unwrap();
    smolvm
        .machine_cp(
            CpPath::guest("m", "tmp/out.txt"),
            CpPath::host("/tmp/a:b/out.txt"),
        )
        .unwrap();
    // An empty side is refused, not a silent no-op (the seed design's was).
    for (src, dst, what) in [
        (CpPath::host(""), CpPath::guest("m", "/x"), "host path"),
        (CpPath::host("/x"), CpPath::guest("m", ""), "guest path"),
        (CpPath::guest("m", ""), CpPath::host("/x"), "guest path"),
        (CpPath::guest("m", "/x"), CpPath::host(""), "host path"),
    ] {
        match smolvm.machine_cp(src, dst) {
            Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
            other => panic!("expected invalid {what}, got {other:?}"),
        }
    }
    assert_eq!(
        runner.argvs(),
        [
            ["machine", "cp", "/tmp/in.txt", "m:/work/in.txt"],
            ["machine", "cp", "m:tmp/out.txt", "/tmp/a:b/out.txt"],
        ]
    );
}

#[test]
fn cp_rejects_ambiguous_or_invalid_paths() {
    let (smolvm, runner) = client(NEW);
    let cases = [
        (
            CpPath::host("/tmp/a:b"),
            CpPath::guest("m", "/x"),
            "host path",
        ),
        (CpPath::host("/a"), CpPath::host("/b"), "cp paths"),
        (
            CpPath::guest("m", "/a"),
            CpPath::guest("n", "/b"),
            "cp paths",
        ),
        (
            CpPath::host("/a"),
            CpPath::guest("m", "/x/../etc"),
            "guest path",
        ),
        (
            CpPath::host("/a"),
            CpPath::guest("bad name", "/x"),
            "machine name",
        ),
    ];
    for (src, dst, what) in cases {
        match smolvm.machine_cp(src.clone(), dst.clone()) {
            Err(Error::InvalidInput { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{src:?} -> {dst:?}: expected invalid {what}, got {other:?}"),
        }
    }
    assert!(runner.argvs().is_empty());
}

const LS_NEW: &str = r#"[
 {"name":"b","state":"running","pid":4242,"created_at":1760000000,"image":"alpine","labels":{"smolvm-harness.owner":"1-2"},"network":true,"cpus":4},
 {"name":"a","state":"created","pid":null,"created_at":1760000001,"image":null,"labels":{},"network":false}
]"#;

#[test]
fn list_parses_and_sorts() {
    let runner = ScriptedRunner::new().on(&["machine", "ls", "--json"], Reply::stdout(LS_NEW));
    let smolvm = client_with(runner.clone());
    let list = smolvm.machine_list().unwrap();
    assert_eq!(runner.argvs(), [["machine", "ls", "--json"]]);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "a");
    assert_eq!(list[0].state, MachineState::Created);
    assert_eq!(list[0].pid, None);
    assert_eq!(list[1].name, "b");
    assert_eq!(list[1].state, MachineState::Running);
    assert_eq!(list[1].pid, Some(4242));
    assert_eq!(list[1].created_at, Some(1_760_000_000));
    assert_eq!(
        list[1]
            .labels
            .get("smolvm-harness.owner")
            .map(String::as_str),
        Some("1-2")
    );
    assert_eq!(list[1].network, Some(true));
}

#[test]
fn list_of_0_8_0_has_no_labels_and_empty_is_empty() {
    let runner = ScriptedRunner::new().on(
        &["machine", "ls"],
        Reply::stdout(
            r#"[{"name":"x","state":"stopped","pid":null,"created_at":1,"image":"alpine"}]"#,
        ),
    );
    let list = client_with(runner).machine_list().unwrap();
    assert!(list[0].labels.is_empty());
    assert_eq!(list[0].state, MachineState::Stopped);
    let runner = ScriptedRunner::new().on(&["machine", "ls"], Reply::stdout("[]\n"));
    assert!(client_with(runner).machine_list().unwrap().is_empty());
}

#[test]
fn list_garbage_is_a_parse_error() {
    for stdout in ["No machines found\n", "{}", "[{\"state\":\"running\"}]"] {
        let runner = ScriptedRunner::new().on(&["machine", "ls"], Reply::stdout(stdout));
        let err = client_with(runner).machine_list().unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{stdout}: {err}");
        assert!(
            err.to_string().contains("smolvm machine ls --json"),
            "{err}"
        );
    }
}

#[test]
fn status_found_and_not_found() {
    let runner = ScriptedRunner::new()
        .on(
            &["machine", "status", "--name", "a"],
            Reply::stdout(r#"{"name":"a","state":"frozen","pid":7,"created_at":3,"labels":{}}"#),
        )
        .on(
            &["machine", "status", "--name", "gone"],
            Reply::fail(
                1,
                "Error: config operation failed: machine status: machine 'gone' not found\n",
            ),
        );
    let smolvm = client_with(runner.clone());
    let a = smolvm.machine_status("a").unwrap().unwrap();
    assert_eq!(a.state, MachineState::Frozen);
    assert_eq!(smolvm.machine_status("gone").unwrap(), None);
    assert_eq!(
        runner.argvs(),
        [
            ["machine", "status", "--name", "a", "--json"],
            ["machine", "status", "--name", "gone", "--json"],
        ]
    );
}

#[test]
fn lifecycle_failures_carry_command_code_and_stderr() {
    let runner = ScriptedRunner::new().on(
        &["machine", "start"],
        Reply::fail(1, "Error: vm not found: x\n"),
    );
    let err = client_with(runner).machine_start("x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "smolvm machine start --name x failed (exit 1): Error: vm not found: x"
    );
    assert!(err.is_not_found());
    match err {
        Error::Failed {
            command,
            code,
            stderr,
            ..
        } => {
            assert_eq!(command.args(), ["machine", "start", "--name", "x"]);
            assert_eq!(code, Some(1));
            assert_eq!(stderr, b"Error: vm not found: x\n");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn killed_smolvm_is_reported_as_a_signal() {
    let runner = ScriptedRunner::new().on_match(
        |args| args.first().map(String::as_str) == Some("machine"),
        Reply {
            code: None,
            stdout: vec![],
            stderr: vec![],
            hang: false,
        },
    );
    let smolvm = client_with(runner);
    let err = smolvm.machine_stop("x").unwrap_err();
    assert!(err.to_string().contains("killed by a signal"), "{err}");
    let err = smolvm
        .machine_exec("x", &["true"], &ExecOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::Failed { code: None, .. }), "{err}");
}

#[test]
fn hung_calls_are_timeouts() {
    let runner = ScriptedRunner::new().on(&["machine", "start"], Reply::hang());
    let smolvm = client_with(runner).with_timeout(Duration::from_secs(7));
    let err = smolvm.machine_start("x").unwrap_err();
    match &err {
        Error::Timeout { timeout, .. } => assert_eq!(*timeout, Duration::from_secs(7)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("timed out after 7s"), "{err}");
}

#[test]
fn missing_binary_is_not_found_with_advice() {
    let smolvm = Smolvm::new("/nonexistent/dir/smolvm");
    assert!(!smolvm.is_available());
    let err = smolvm.version().unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("/nonexistent/dir/smolvm is not an executable file"),
        "{text}"
    );
    assert!(text.contains("SMOLVM_BIN"), "{text}");

    let smolvm = Smolvm::new("smolvm-surely-not-installed-anywhere");
    assert!(!smolvm.is_available());
    let err = smolvm.machine_start("x").unwrap_err();
    assert!(err.to_string().contains("is not on PATH"), "{err}");
}

#[test]
fn spawn_failure_is_a_spawn_error() {
    // A directory is found but cannot be executed: not "not found", a spawn error.
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Smolvm::new(dir.path()).version().unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(err.to_string().starts_with("failed to run `"), "{err}");
}

#[test]
fn is_available_for_a_real_executable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("smolvm");
    std::fs::write(&bin, b"#!/bin/true\n").unwrap();
    assert!(!Smolvm::new(&bin).is_available(), "not executable yet");
    let other = dir.path().join("smolvm2");
    std::fs::write(&other, b"#!/bin/true\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(Smolvm::new(&other).is_available());
    }
}

#[test]
fn process_env_reaches_the_runner() {
    let (smolvm, runner) = client(NEW);
    let smolvm = smolvm.with_process_env("SMOLVM_DATA_DIR", "/tmp/isolated");
    smolvm.machine_start("m").unwrap();
    let last = runner.calls().pop().unwrap();
    assert_eq!(
        last.env,
        [("SMOLVM_DATA_DIR".to_string(), "/tmp/isolated".to_string())]
    );
}

/// Set in the child of `user_argvs_do_not_depend_on_the_process_or_nextest`.
const ARGV_CHILD: &str = "SMOLVM_HARNESS_TEST_ARGV_CHILD";

/// In a child process only: create and delete a labelled machine on a scripted 1.9.2, then
/// print each word of the create's raw argv as `raw\t<word>` and of its user argv as
/// `user\t<word>`, one a line (each line whole: libtest writes around them).
#[test]
fn argv_child() {
    if std::env::var_os(ARGV_CHILD).is_none() {
        return;
    }
    let runner = ScriptedRunner::new().version(NEW);
    let vm = smolvm_harness::Machine::builder()
        .smolvm(client_with(runner.clone()))
        .name("m-argv")
        .image("alpine")
        .label("team", "infra")
        .create()
        .unwrap();
    vm.delete().unwrap();
    let create = runner
        .calls()
        .into_iter()
        .find(|c| c.args_str().starts_with(&["machine", "create"]))
        .unwrap();
    let mut out = String::from("\n");
    for word in &create.args {
        out += &format!("raw\t{word}\n");
    }
    for word in create.user_args() {
        out += &format!("user\t{word}\n");
    }
    print!("{out}");
}

/// The create argv of one child process: (raw, user).
fn child_create_argv(nextest_run_id: Option<&str>) -> (Vec<String>, Vec<String>) {
    let state = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "argv_child", "--nocapture", "--test-threads=1"])
        .env(ARGV_CHILD, "1")
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env_remove("NEXTEST_RUN_ID");
    if let Some(id) = nextest_run_id {
        cmd.env("NEXTEST_RUN_ID", id);
    }
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words = |kind: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(k, _)| *k == kind)
            .map(|(_, w)| w.to_string())
            .collect()
    };
    (words("raw"), words("user"))
}

#[test]
fn user_argvs_do_not_depend_on_the_process_or_nextest() {
    let (plain, plain_user) = child_create_argv(None);
    let (nextest, nextest_user) = child_create_argv(Some("0b6e7f8a-run-under-nextest"));
    // The raw argv differs: another owner (pid) and, under nextest, a run label.
    assert_ne!(plain, nextest);
    assert!(
        !plain.iter().any(|a| a.starts_with("smolvm-harness.run=")),
        "{plain:?}"
    );
    assert!(
        nextest.contains(&"smolvm-harness.run=0b6e7f8a-run-under-nextest".to_string()),
        "{nextest:?}"
    );
    // The user argv is the same exact argv in both.
    let expected = [
        "machine",
        "create",
        "--name",
        "m-argv",
        "--image",
        "alpine",
        "--label",
        "team=infra",
    ];
    assert_eq!(plain_user, expected);
    assert_eq!(nextest_user, expected);
}
