//! The harness over the `smolvm serve` API (`Smolvm::remote`, `SMOLVM_HOST`), against the
//! simulated server (`smolvm-fake serve`, a process of its own): the same guards, goldens and
//! cleanup as over the CLI, the ledger holding the URL and no secret, and a server that is
//! down at cleanup time keeping the entry for the next sweep.

#[path = "common/serve.rs"]
mod serve;

use std::time::Duration;

use rstest::rstest;
use serial_test::file_serial;
use serve::{finish, ledger_names, rerun, wait_for, SimServer};
use smolvm_harness::requires_smolvm;
use smolvm_harness::{
    CpPath, CreateOptions, Error, ExecOptions, Golden, Machine, MachineState, Smolvm, Version,
};

fn harness_state() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn health_gives_availability_version_and_a_dialect_without_labels() {
    let dir = tempfile::tempdir().unwrap();
    for version in ["1.9.2", "0.8.2"] {
        let sub = dir.path().join(version);
        std::fs::create_dir(&sub).unwrap();
        let server = SimServer::start(&sub, version);
        let smolvm = Smolvm::remote(&server.url).unwrap();
        assert!(smolvm.is_available());
        assert_eq!(
            smolvm.version().unwrap(),
            version.parse::<Version>().unwrap()
        );
        assert!(!smolvm.dialect().unwrap().labels, "the API has no labels");
        assert_eq!(smolvm.remote_url(), Some(server.url.as_str()));
    }
}

#[test]
fn a_machine_lives_and_dies_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let name;
    {
        let vm = Machine::builder()
            .smolvm(smolvm.clone())
            .image("alpine")
            .net()
            .env("GREETING", "hello-over-http")
            .start()
            .expect("start over the API");
        name = vm.name().to_string();
        assert_eq!(server.machines(), vec![name.clone()]);
        let out = vm.exec(&["sh", "-c", "echo $GREETING; exit 3"]).unwrap();
        assert_eq!(out.code(), 3, "the guest's exit code is data");
        assert_eq!(out.stdout_str(), "hello-over-http\n");
        // Files both ways.
        let host = dir.path().join("in.txt");
        std::fs::write(&host, "payload").unwrap();
        vm.copy_in(&host, "/tmp/in file.txt").unwrap();
        // Bytes that are not UTF-8 come back exactly (the API's base64 fields).
        let blob = dir.path().join("blob.bin");
        std::fs::write(&blob, [0u8, 0xff, 0xfe, b'\n']).unwrap();
        vm.copy_in(&blob, "/tmp/blob.bin").unwrap();
        let out = vm.exec(&["cat", "/tmp/blob.bin"]).unwrap();
        assert_eq!(out.stdout(), [0u8, 0xff, 0xfe, b'\n']);
        let back = dir.path().join("out.txt");
        smolvm
            .machine_cp(
                CpPath::guest(vm.name(), "/tmp/in file.txt"),
                CpPath::host(&back),
            )
            .unwrap();
        assert_eq!(std::fs::read_to_string(&back).unwrap(), "payload");
        // The CLI's semantics: exec on a stopped machine is refused, not auto-started.
        vm.stop().unwrap();
        assert_eq!(
            vm.status().unwrap().unwrap().state,
            MachineState::Stopped,
            "stopped"
        );
        let err = vm.exec(&["true"]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert_ne!(
            vm.status().unwrap().unwrap().state,
            MachineState::Running,
            "the refused exec did not start it"
        );
        // The API does not serve the console: said, with what to wait with instead.
        let err = vm.console_log().unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("wait_for_port"), "{err}");
        let transcript: String = vm.transcript().iter().map(|e| format!("{e}\n")).collect();
        assert!(transcript.contains("POST unix://"), "{transcript}");
        assert!(!transcript.contains("hello-over-http"), "{transcript}");
    }
    assert!(
        server.machines().is_empty(),
        "dropped: {:?}",
        server.machines()
    );
    let _ = name;
}

#[test]
fn a_name_someone_else_holds_on_the_server_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    server
        .cli()
        .machine_create("web", &CreateOptions::image("alpine").net())
        .unwrap();
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let err = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .net()
        .name("web")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::Api { status: 409, .. }), "{err}");
    assert_eq!(server.machines(), vec!["web".to_string()], "theirs stays");
}

#[test]
fn a_golden_forks_clones_over_the_api_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let smolvm = Smolvm::remote(&server.url).unwrap();
    {
        let golden = Golden::builder()
            .smolvm(smolvm.clone())
            .image("alpine")
            .net()
            .provision(|vm| {
                vm.exec(&["sh", "-c", "echo ready > /etc/provisioned"])?
                    .check()?;
                Ok(())
            })
            .create()
            .expect("golden over the API");
        assert!(golden.forks(), "the 1.9.2 API forks");
        let a = golden.fork().unwrap();
        let b = golden.fork().unwrap();
        for clone in [&a, &b] {
            let out = clone.exec(&["cat", "/etc/provisioned"]).unwrap();
            assert_eq!(out.stdout_str(), "ready\n");
        }
        assert_eq!(server.machines().len(), 3, "{:?}", server.machines());
    }
    assert!(server.machines().is_empty(), "{:?}", server.machines());
}

#[test]
fn secrets_and_raw_flags_at_create_are_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let smolvm = Smolvm::remote(&server.url).unwrap();
    for builder in [
        Machine::builder().secret_env("TOKEN", "s3cr3t-value"),
        Machine::builder().extra_args(["--dns", "1.1.1.1"]),
    ] {
        let err = builder
            .smolvm(smolvm.clone())
            .image("alpine")
            .net()
            .start()
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(!err.to_string().contains("s3cr3t-value"));
    }
    assert!(server.machines().is_empty());
}

/// Packs are made by the local CLI; without one, the refusal says so (not "smolvm not
/// found", which is baffling when the suite points at a server).
#[test]
#[file_serial(remote_env)]
fn a_pack_without_a_local_smolvm_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let out = remote_child(&server)
        .env("SMOLVM_BIN", dir.path().join("no-smolvm-here"))
        .env("REMOTE_CHILD", "pack")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PACK Unsupported"), "{text}");
    assert!(
        text.contains("packs are made by the local smolvm CLI"),
        "{text}"
    );
}

#[test]
fn per_exec_secrets_reach_the_guest_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = SimServer::start(dir.path(), "1.9.2");
    let smolvm = Smolvm::remote(&server.url).unwrap();
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .net()
        .start()
        .unwrap();
    let out = vm
        .command(&["sh", "-c", "echo $TOKEN"])
        .secret_env("TOKEN", "s3cr3t-exec-value")
        .run()
        .unwrap();
    assert_eq!(out.stdout_str(), "s3cr3t-exec-value\n");
    let shown = format!("{out:?}");
    assert!(!shown.contains("s3cr3t-exec-value"), "{shown}");
    let transcript: String = vm.transcript().iter().map(|e| format!("{e}\n")).collect();
    assert!(!transcript.contains("s3cr3t-exec-value"), "{transcript}");
}

/// The ledger names the server by its URL and holds no env value.
#[test]
#[file_serial(remote_env)]
fn the_ledger_records_the_url_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let state = harness_state();
    let server = SimServer::start(dir.path(), "1.9.2");
    let out = remote_child(&server)
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env("REMOTE_CHILD", "ledger")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger: String = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("LEDGER "))
        .collect();
    assert!(ledger.contains(&server.url), "{ledger}");
    assert!(ledger.contains("\"format\": 3"), "{ledger}");
    assert!(!ledger.contains("env-value-never-ledgered"), "{ledger}");
    assert!(server.machines().is_empty(), "{:?}", server.machines());
}

/// The server is down when the guard drops: the error is said, the entry stays; the next
/// run's sweep, with the server back, deletes the machine.
#[test]
#[file_serial(remote_env)]
fn a_server_down_at_cleanup_keeps_the_entry_for_the_next_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let state = harness_state();
    let mut server = SimServer::start(dir.path(), "1.9.2");
    let child = remote_child(&server)
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env("SMOLVM_HARNESS_WATCHER", "off")
        .env("REMOTE_CHILD", "hold_until_released")
        .env("REMOTE_RELEASE", dir.path().join("release"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the started machine, stop the server, then let the child drop its guard.
    let held_file = dir.path().join("release.held");
    assert!(
        wait_for(&held_file, Duration::from_secs(20)),
        "the child never held"
    );
    let held = server.machines();
    assert_eq!(held.len(), 1, "{held:?}");
    server.stop();
    std::fs::write(dir.path().join("release"), "").unwrap();
    let out = finish(child, Duration::from_secs(30));
    assert!(out.0, "{}", out.1);
    assert!(
        out.1.contains("could not reach the smolvm API"),
        "{}",
        out.1
    );
    let entries = ledger_names(state.path());
    assert_eq!(entries, held, "the entry stays for the next sweep");
    // The next run: the server is back; the sweep reaches it through the recorded URL.
    server.restart();
    let swept = remote_child(&server)
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env("REMOTE_CHILD", "sweep")
        .output()
        .unwrap();
    assert!(
        swept.status.success(),
        "{}",
        String::from_utf8_lossy(&swept.stdout)
    );
    assert!(server.machines().is_empty(), "{:?}", server.machines());
    assert!(ledger_names(state.path()).is_empty());
}

/// SIGKILL while holding a machine: the crash watcher reaches the server and deletes it.
#[test]
#[file_serial(remote_env)]
fn sigkill_the_watcher_deletes_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let state = harness_state();
    let server = SimServer::start(dir.path(), "1.9.2");
    let mut child = remote_child(&server)
        .env("SMOLVM_HARNESS_STATE_DIR", state.path())
        .env("REMOTE_CHILD", "hold_until_released")
        .env("REMOTE_RELEASE", dir.path().join("never"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held_file = dir.path().join("never.held");
    assert!(
        wait_for(&held_file, Duration::from_secs(20)),
        "the child never held"
    );
    assert_eq!(server.machines().len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.machines().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(server.machines().is_empty(), "{:?}", server.machines());
}

/// This test binary again, running `child_holds_a_machine` against `server` (`SMOLVM_HOST`);
/// the caller sets `REMOTE_CHILD` and the rest.
fn remote_child(server: &SimServer) -> std::process::Command {
    let mut cmd = rerun("child_holds_a_machine");
    cmd.env("SMOLVM_HOST", &server.url);
    cmd
}

/// The child side of the process-level tests above (a no-op in a normal run).
#[test]
#[ignore = "run by the tests above in a child process"]
fn child_holds_a_machine() {
    let Ok(role) = std::env::var("REMOTE_CHILD") else {
        return;
    };
    let smolvm = Smolvm::from_env();
    assert!(smolvm.remote_url().is_some(), "SMOLVM_HOST is set");
    match role.as_str() {
        "ledger" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .env("K", "env-value-never-ledgered")
                .start()
                .unwrap();
            let dir = std::path::PathBuf::from(std::env::var("SMOLVM_HARNESS_STATE_DIR").unwrap())
                .join("ledger");
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                println!("LEDGER {}", text.replace('\n', " "));
            }
            drop(vm);
        }
        "hold_until_released" => {
            let vm = Machine::builder()
                .smolvm(smolvm)
                .image("alpine")
                .net()
                .start()
                .unwrap();
            let release = std::env::var("REMOTE_RELEASE").unwrap();
            std::fs::write(format!("{release}.held"), vm.name()).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(25);
            while !std::path::Path::new(&release).exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(vm);
        }
        "pack" => {
            let err = smolvm_harness::Pack::shared("alpine").unwrap_err();
            let kind = if matches!(err, Error::Unsupported { .. }) {
                "Unsupported"
            } else {
                "other"
            };
            println!("PACK {kind}: {err}");
        }
        "sweep" => {
            let deleted = smolvm_harness::sweep(&smolvm).unwrap();
            println!("SWEPT {deleted:?}");
        }
        other => panic!("unknown role {other}"),
    }
    let _ = ExecOptions::default();
}

/// Run `guarded_by_the_skip_attribute` in a child with `env`: (success, output).
fn guarded_child(env: &[(&str, &str)]) -> (bool, String) {
    let out = rerun("guarded_by_the_skip_attribute")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_skip_attribute_follows_smolvm_host() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("unix://{}/nobody.sock", dir.path().display());
    // A server that does not answer: skipped, saying which host.
    let (ok, text) = guarded_child(&[("SMOLVM_HOST", &dead)]);
    assert!(ok, "{text}");
    assert!(
        text.contains("SKIPPED guarded_by_the_skip_attribute"),
        "{text}"
    );
    assert!(
        text.contains(&format!("SMOLVM_HOST={dead} did not answer")),
        "{text}"
    );
    // ... and why: a missing socket is not a refused connection or a TLS failure.
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(!text.contains("BODY RAN"), "{text}");
    // Required: a failure.
    let (ok, text) = guarded_child(&[("SMOLVM_HOST", &dead), ("SMOLVM_HARNESS_REQUIRE", "1")]);
    assert!(!ok, "{text}");
    assert!(text.contains("did not answer"), "{text}");
    // Malformed: a failure, never a fall back to a local smolvm.
    let (ok, text) = guarded_child(&[("SMOLVM_HOST", "tcp://nowhere:1")]);
    assert!(!ok, "{text}");
    assert!(text.contains("SMOLVM_HOST cannot be used"), "{text}");
    // A server that answers: the body runs, against it.
    let server = SimServer::start(dir.path(), "1.9.2");
    let (ok, text) = guarded_child(&[("SMOLVM_HOST", &server.url)]);
    assert!(ok, "{text}");
    assert!(text.contains("BODY RAN over unix://"), "{text}");
}

#[rstest]
#[requires_smolvm]
#[ignore = "run by the_skip_attribute_follows_smolvm_host in a child process"]
fn guarded_by_the_skip_attribute() {
    let smolvm = Smolvm::from_env();
    println!("BODY RAN over {}", smolvm.remote_url().unwrap_or("the CLI"));
}
