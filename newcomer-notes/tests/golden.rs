//! Task 3: golden machines, the README fixture pattern, several tests sharing it.
use rstest::{fixture, rstest};
use smolvm_harness::{requires_smolvm, Golden, Machine};

#[fixture]
fn app_vm() -> Machine {
    Golden::shared("app", |g| {
        g.image("alpine:latest")
            .net()
            .publish(8080)
            .provision(|m| m.sh("echo provisioned once > /etc/app.conf")?.check())
    })
    .and_then(|golden| golden.fork())
    .expect("a clone of the app golden")
}

#[rstest]
#[requires_smolvm]
fn sees_the_provisioned_files(app_vm: Machine) {
    assert_eq!(app_vm.sh("cat /etc/app.conf").unwrap().stdout_str(), "provisioned once\n");
    app_vm.sh("echo changed > /etc/app.conf").unwrap();
}

#[rstest]
#[requires_smolvm]
fn a_second_clone(app_vm: Machine) {
    assert_eq!(app_vm.sh("cat /etc/app.conf").unwrap().stdout_str(), "provisioned once\n");
    app_vm.sh("echo changed too > /etc/app.conf").unwrap();
    assert!(app_vm.host_port(8080).is_some());
}

#[rstest]
#[requires_smolvm]
fn a_third_clone(app_vm: Machine) {
    assert_eq!(app_vm.sh("cat /etc/app.conf").unwrap().stdout_str(), "provisioned once\n");
}

#[rstest]
#[requires_smolvm]
fn forks_or_cold() {
    let g = Golden::shared("app", |g| {
        g.image("alpine:latest")
            .net()
            .publish(8080)
            .provision(|m| m.sh("echo provisioned once > /etc/app.conf")?.check())
    })
    .unwrap();
    eprintln!("GOLDEN FORKS: {}", g.forks());
}

/// A golden whose provisioning fails (only when NEWCOMER_FAIL=1): what does the test report,
/// and are the golden's console log and transcript saved?
#[fixture]
fn broken_vm() -> Machine {
    let fail = std::env::var("NEWCOMER_FAIL").as_deref() == Ok("1");
    Golden::shared("broken", move |g| {
        g.image("alpine:latest").net().provision(move |m| {
            m.sh("echo provisioning > /dev/console")?.check()?;
            if fail {
                m.sh("exit 7")?.check()?;
            }
            Ok(())
        })
    })
    .and_then(|golden| golden.fork())
    .expect("a clone of the broken golden")
}

#[rstest]
#[requires_smolvm]
fn provisioning_may_fail(broken_vm: Machine) {
    broken_vm.sh("true").unwrap().assert_success();
}
