//! Probes of Golden::shared that README does not settle.
use smolvm_harness::{Golden, Smolvm};

/// Same key, two different recipes, one process: which one wins? Is it said?
#[test]
fn same_key_different_recipe() {
    let smolvm = Smolvm::simulated();
    let a = Golden::shared("k", |g| {
        g.smolvm(smolvm.clone())
            .image("alpine:latest").net()
            .provision(|m| m.sh("echo A > /etc/which")?.check())
    })
    .unwrap();
    let b = Golden::shared("k", |g| {
        g.smolvm(smolvm.clone())
            .image("debian:12").net()
            .provision(|m| m.sh("echo B > /etc/which")?.check())
    });
    match b {
        Ok(b) => {
            let clone = b.fork().unwrap();
            let which = clone.sh("cat /etc/which").unwrap().stdout_str().to_string();
            eprintln!("SAME KEY, 2nd RECIPE -> Ok; ptr_eq={}; clone sees {which:?}", std::sync::Arc::ptr_eq(&a, &b));
        }
        Err(e) => eprintln!("SAME KEY, 2nd RECIPE -> Err: {e}"),
    }
}

/// A provisioning step that fails: what does the fixture's expect show?
#[test]
fn provision_fails() {
    let err = Golden::shared("bad", |g| {
        g.smolvm(Smolvm::simulated())
            .image("alpine:latest").net()
            .provision(|m| m.sh("exit 7")?.check())
    })
    .and_then(|g| g.fork())
    .unwrap_err();
    eprintln!("PROVISION FAILS -> {err}");
    // A second test asking for the same key: is the failure cached or retried?
    let again = Golden::shared("bad", |g| {
        g.smolvm(Smolvm::simulated())
            .image("alpine:latest").net()
            .provision(|m| m.sh("exit 7")?.check())
    })
    .and_then(|g| g.fork())
    .unwrap_err();
    eprintln!("PROVISION FAILS AGAIN -> {again}");
}

/// wait_for_port on a published port where nothing listens: the NotReady message.
#[test]
fn wait_for_port_nothing_listens() {
    let vm = smolvm_harness::Machine::builder()
        .smolvm(Smolvm::simulated())
        .image("alpine:latest")
        .net()
        .publish(8080)
        .start()
        .unwrap();
    let err = vm
        .wait_for_port(8080, std::time::Duration::from_millis(300))
        .unwrap_err();
    eprintln!("WAIT_FOR_PORT -> {err}");
}
