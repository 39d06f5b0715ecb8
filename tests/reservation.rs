//! Machine names are reserved per smolvm state: two live guards on one state never share a
//! name, while independent simulations (parallel unit tests) may reuse names freely, and the
//! refusal says "in use", not "invalid".

use smolvm_harness::{Error, Machine, Smolvm};

fn machine(smolvm: &Smolvm, name: &str) -> smolvm_harness::Result<Machine> {
    Machine::builder()
        .smolvm(smolvm.clone())
        .name(name)
        .image("alpine")
        .net()
        .start()
}

#[test]
fn independent_simulations_may_use_the_same_name_at_once() {
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let sim = Smolvm::simulated();
                let vm = machine(&sim, "web").expect("a name of its own simulation");
                assert_eq!(vm.exec(&["echo", "hi"]).unwrap().stdout_str(), "hi\n");
                vm
            })
        })
        .collect();
    let live: Vec<Machine> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(live.len(), 8);
}

#[test]
fn one_simulation_refuses_a_second_live_guard_with_a_name_in_use_error() {
    let sim = Smolvm::simulated();
    let first = machine(&sim, "db").unwrap();
    // A clone of the client reaches the same simulated state.
    let err = machine(&sim.clone(), "db").unwrap_err();
    assert!(
        matches!(&err, Error::NameInUse { name } if name == "db"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("in use") && !text.contains("invalid"),
        "{text}"
    );
    drop(first);
    drop(machine(&sim, "db").expect("free again once the first guard is gone"));
}
