//! The tests a newcomer writes from README.md: a `machine` fixture test, a plain `#[test]`
//! with `require_smolvm!()`, and `#[case]`s. Real mode only: they skip where smolvm is
//! missing, and run through the fake with `SMOLVM_BIN=.../examples/smolvm-fake`.

use rstest::rstest;
use smolvm_harness::{fixtures::machine, require_smolvm, requires_smolvm, Machine};

#[rstest]
#[requires_smolvm] // skipped (visibly) where smolvm is missing; nothing is created
fn hello(machine: Machine) {
    let out = machine.exec(&["echo", "hello"]).unwrap();
    out.assert_success();
    assert_eq!(out.stdout_str(), "hello\n");
    machine.sh("echo oops >&2; exit 3").unwrap().expect_code(3); // the guest's code, not an Err
}

#[test]
fn built_by_hand() {
    require_smolvm!();
    let vm = Machine::builder()
        .image("alpine:latest")
        .net()
        .env("MODE", "test")
        .start()
        .unwrap();
    let out = vm
        .command(&["sh", "-c", "echo $MODE $EXTRA"])
        .env("EXTRA", "1")
        .workdir("/tmp")
        .run()
        .unwrap();
    assert_eq!(out.stdout_str(), "test 1\n");
}

#[rstest]
#[case::succeeds("true", 0)]
#[case::fails("false", 1)]
#[case::exits_7("exit 7", 7)]
// After the last `#[case]`: `#[requires_smolvm]` guards every case.
#[requires_smolvm]
fn exit_codes(machine: Machine, #[case] script: &str, #[case] code: i32) {
    machine.sh(script).unwrap().expect_code(code);
}

// Above `#[rstest]`: also guards every case (above a `#[case]` it is a compile error).
#[requires_smolvm]
#[rstest]
#[case::one("echo one", "one\n")]
#[case::two("echo two", "two\n")]
fn above_rstest(machine: Machine, #[case] script: &str, #[case] expected: &str) {
    assert_eq!(machine.sh(script).unwrap().stdout_str(), expected);
}

// With `#[values]`, directly under `#[rstest]`: every combination is guarded.
#[rstest]
#[requires_smolvm]
fn values(machine: Machine, #[values("a", "b")] word: &str) {
    assert_eq!(machine.exec(&["echo", word]).unwrap().stdout_str(), format!("{word}\n"));
}
