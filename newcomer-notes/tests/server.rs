//! Task 1 + 2: "Testing a server in the VM", unit mode and real mode.
use rstest::rstest;
use smolvm_harness::{requires_smolvm, Machine, Smolvm};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The README block, with the client passed in.
fn serve_and_check(smolvm: Smolvm) -> Result<(), Box<dyn std::error::Error>> {
    let site = tempfile::tempdir()?;
    std::fs::write(site.path().join("index.html"), "hello from the VM\n")?;
    // `--dns` is not a flag of smolvm 0.8.x: NEWCOMER_NO_DNS=1 leaves it out there.
    let extra: Vec<&str> = if std::env::var_os("NEWCOMER_NO_DNS").is_some() {
        vec![]
    } else {
        vec!["--dns", "9.9.9.9"]
    };
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine:latest")
        .net()
        .cpus(2)
        .mem_mib(512)
        .volume_ro(site.path(), "/srv/www")
        .publish(8080)
        .secret_env("API_TOKEN", "tok-7f3a9c")
        .extra_args(extra)
        .start()?;
    vm.sh("httpd -p 8080 -h /srv/www && echo web server up > /dev/console")?
        .assert_success();
    vm.wait_for_port(8080, Duration::from_secs(30))?;
    vm.wait_for_log("web server up", Duration::from_secs(10))?;
    let port = vm.host_port(8080).expect("published");
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    assert!(reply.contains("hello from the VM"), "{reply}");
    let out = vm.sh("test -n \"$API_TOKEN\" && echo the secret arrived")?;
    assert_eq!(out.stdout_str(), "the secret arrived\n");
    // The secret must not appear in Debug
    let dbg = format!("{vm:?}");
    assert!(!dbg.contains("tok-7f3a9c"), "{dbg}");
    Ok(())
}

#[test]
fn server_unit_simulated() {
    serve_and_check(Smolvm::simulated()).unwrap();
}

#[rstest]
#[requires_smolvm]
fn server_real_mode() {
    serve_and_check(Smolvm::from_env()).unwrap();
}

/// A read-write volume: the guest writes, the host sees it.
#[rstest]
#[requires_smolvm]
fn volume_rw_real_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host\n").unwrap();
    let vm = Machine::builder()
        .image("alpine:latest")
        .net()
        .volume(dir.path(), "/data")
        .start()
        .unwrap();
    let out = vm.sh("cat /data/in.txt").unwrap();
    out.assert_success();
    assert_eq!(out.stdout_str(), "from host\n");
}

/// A wait that never succeeds: Error::NotReady says what was awaited.
#[rstest]
#[requires_smolvm]
fn wait_for_log_times_out_real_mode() {
    let vm = Machine::builder().image("alpine:latest").net().start().unwrap();
    let err = vm
        .wait_for_log("never printed", Duration::from_millis(500))
        .unwrap_err();
    eprintln!("NOTREADY MESSAGE: {err}");
    assert!(matches!(err, smolvm_harness::Error::NotReady { .. }), "{err:?}");
}

/// extra_args refuses flags the crate owns.
#[test]
fn extra_args_refuses_owned_flags() {
    let err = Machine::builder()
        .smolvm(Smolvm::simulated())
        .image("alpine:latest")
        .extra_args(["--name", "x"])
        .start()
        .unwrap_err();
    eprintln!("EXTRA_ARGS MESSAGE: {err}");
    assert!(matches!(err, smolvm_harness::Error::InvalidInput { .. }), "{err:?}");
}

/// Deliberately failing (only when NEWCOMER_FAIL=1), to see the artifacts.
#[rstest]
#[requires_smolvm]
fn deliberately_fails() {
    let vm = Machine::builder()
        .image("alpine:latest")
        .net()
        .secret_env("API_TOKEN", "tok-SECRET-9999")
        .env("PLAIN", "plain-value-1234")
        .start()
        .unwrap();
    vm.sh("echo boom > /dev/console").unwrap().assert_success();
    vm.sh("env").unwrap().assert_success();
    if std::env::var("NEWCOMER_FAIL").as_deref() == Ok("1") {
        vm.sh("exit 3").unwrap().assert_success();
    }
}

mod nested {
    use super::*;

    /// Deliberately failing, in a module and with rstest cases: what is `<test>` in the path?
    #[rstest]
    #[case::first(1)]
    #[case::second(2)]
    #[requires_smolvm]
    fn cased_failure(#[case] n: u32) {
        let vm = Machine::builder().image("alpine:latest").net().start().unwrap();
        if std::env::var("NEWCOMER_FAIL").as_deref() == Ok("1") {
            vm.sh(&format!("exit {n}")).unwrap().assert_success();
        }
    }
}
