//! End to end, in unit mode (the in-process simulation) and at process level (the fake CLI):
//! publish a port, start a server in the guest, wait for it, exchange bytes with it from the
//! host; wait for a file and a console line; a failing test leaves its console log and
//! transcript, a passing one nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use smolvm_harness::{Error, Machine, Smolvm, Version};

const FAKE: &str = env!("CARGO_BIN_EXE_smolvm-fake");

fn fake(state: &tempfile::TempDir, version: &str) -> Smolvm {
    Smolvm::new(FAKE)
        .with_process_env("SMOLVM_FAKE_STATE", state.path().to_str().unwrap())
        .with_process_env("SMOLVM_FAKE_VERSION", version)
}

fn get(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    reply
}

/// The whole flow against one client.
fn serve_and_reach(smolvm: Smolvm) {
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine:latest")
        .net()
        .cpus(2)
        .mem_mib(512)
        .publish(8080)
        .start()
        .unwrap();
    let host = vm.host_port(8080).expect("published");

    // The forward is up but nothing listens in the guest yet: not ready, and the timeout
    // says what was awaited and what the probe saw.
    let err = vm
        .wait_for_port(8080, Duration::from_millis(300))
        .unwrap_err();
    match &err {
        Error::NotReady { what, last, .. } => {
            assert!(
                what.contains("8080") && what.contains(&host.to_string()),
                "{what}"
            );
            assert!(!last.is_empty(), "{err}");
        }
        other => panic!("expected NotReady, got {other}"),
    }

    vm.sh("mkdir -p /www && echo hello from the guest > /www/index.html")
        .unwrap()
        .assert_success();
    vm.wait_for_file("/www/index.html", Duration::from_secs(5))
        .unwrap();
    vm.sh("httpd -p 8080 -h /www && echo httpd started > /dev/console")
        .unwrap()
        .assert_success();
    vm.wait_for_port(8080, Duration::from_secs(10)).unwrap();
    vm.wait_for_log("httpd started", Duration::from_secs(5))
        .unwrap();
    let reply = get(host, "/index.html");
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert!(reply.contains("hello from the guest"), "{reply}");

    // A port that is not published is awaited inside the guest (/proc/net/tcp*).
    vm.sh("httpd -p 9090 -h /www").unwrap().assert_success();
    vm.wait_for_port(9090, Duration::from_secs(10)).unwrap();
    let err = vm
        .wait_for_port(9191, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err}");

    let err = vm
        .wait_for_log("never printed", Duration::from_millis(200))
        .unwrap_err();
    assert!(err.to_string().contains("never printed"), "{err}");
    drop(vm);
    // Deleted: the host port is closed again.
    assert!(
        TcpStream::connect(("127.0.0.1", host))
            .map(|mut c| {
                let mut b = [0u8; 1];
                matches!(c.read(&mut b), Ok(0) | Err(_))
            })
            .unwrap_or(true),
        "port {host} still answers after delete"
    );
}

#[test]
fn unit_mode_publish_wait_and_talk_to_the_guest() {
    serve_and_reach(Smolvm::simulated());
}

#[test]
fn process_level_publish_wait_and_talk_to_the_guest() {
    let state = tempfile::tempdir().unwrap();
    serve_and_reach(fake(&state, "1.9.2"));
    assert!(fake(&state, "1.9.2").machine_list().unwrap().is_empty());
}

/// smolvm 0.8.x (TSI) binds the host port only when the guest listens: the wait sees
/// "refused" first, then the server.
#[test]
fn publish_on_0_8_x_binds_when_the_guest_listens() {
    let vm = Machine::builder()
        .smolvm(Smolvm::simulated_version(Version::new(0, 8, 2)))
        .image("alpine")
        .net()
        .publish(8080)
        .start()
        .unwrap();
    let err = vm
        .wait_for_port(8080, Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err}");
    vm.sh("mkdir -p /w && echo old > /w/i && httpd -p 8080 -h /w")
        .unwrap()
        .assert_success();
    vm.wait_for_port(8080, Duration::from_secs(10)).unwrap();
    assert!(get(vm.host_port(8080).unwrap(), "/i").contains("old"));
}

/// The artifacts a failing test leaves, read back from the path its report prints.
fn artifacts_of_a_failing_test(smolvm: Smolvm) -> (Vec<String>, PathBuf) {
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .net()
        .start()
        .unwrap();
    vm.sh("echo the guest says goodbye > /dev/console")
        .unwrap()
        .assert_success();
    let (result, said) = smolvm_harness::diag::capture(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _vm = vm;
            panic!("the test fails");
        }))
    });
    assert!(result.is_err());
    let dir = said
        .iter()
        .flat_map(|l| l.lines())
        .find_map(|l| l.trim().strip_prefix("artifacts: "))
        .and_then(|rest| rest.split(" (").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no artifacts line in {said:?}"));
    (said, dir)
}

#[test]
fn a_failing_test_leaves_its_console_log_and_transcript() {
    let state = tempfile::tempdir().unwrap();
    for smolvm in [Smolvm::simulated(), fake(&state, "1.9.2")] {
        let (said, dir) = artifacts_of_a_failing_test(smolvm);
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap();
        assert!(console.contains("smolvm-agent: ready"), "{console}");
        assert!(console.contains("the guest says goodbye"), "{console}");
        let transcript = std::fs::read_to_string(dir.join("transcript.txt")).unwrap();
        assert!(transcript.contains("machine start"), "{transcript}");
        assert!(
            dir.components().any(|c| c.as_os_str() == "smolvm-harness"),
            "{}: {said:?}",
            dir.display()
        );
    }
}
