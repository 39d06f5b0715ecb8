//! Same test name as in tests/server.rs, in another test binary: do the artifact dirs collide?
use rstest::rstest;
use smolvm_harness::{requires_smolvm, Machine};

#[rstest]
#[requires_smolvm]
fn deliberately_fails() {
    let vm = Machine::builder().image("alpine:latest").net().start().unwrap();
    vm.sh("echo from-other-binary > /dev/console").unwrap().assert_success();
    if std::env::var("NEWCOMER_FAIL").as_deref() == Ok("1") {
        vm.sh("exit 4").unwrap().assert_success();
    }
}
