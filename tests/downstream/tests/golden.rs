//! README's "Golden machines" block, word for word (tests/downstream.rs checks that it is):
//! a fixture that hands each test a clone of one golden shared by the run.

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
    app_vm.sh("echo changed > /etc/app.conf").unwrap(); // invisible to every other clone
}
