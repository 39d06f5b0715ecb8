//! Nothing but tests: see `tests/vm.rs` and `examples/smolvm-fake.rs`.
