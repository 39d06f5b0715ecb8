#![doc = include_str!("guide.md")]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unreachable_pub)]

mod artifacts;
mod cleanup;
mod cli;
pub mod config;
#[doc(hidden)]
pub mod diag;
pub mod dialect;
pub mod error;
pub mod fixtures;
mod golden;
mod machine;
mod names;
mod pack;
mod readiness;
mod remote;
pub mod runner;
pub mod sim;
pub mod skip;
mod slots;
mod state_dir;
pub mod transcript;
pub mod validate;

// The root holds what a test writes every day: the client and the machine guard with their
// options and outputs, errors, the skip macros and the name helpers. Everything else is
// under the module that explains it (`runner`, `sim`, `skip`, `config`, `validate`,
// `transcript`, `dialect`, `error`); the few names re-exported from there are the ones the
// guide's everyday examples use.
pub use cleanup::sweep;
pub use cli::{
    is_available, CpPath, CreateOptions, ExecOptions, ExecOutput, ForkOptions, MachineInfo,
    MachineState, PortMapping, Smolvm, Source,
};
pub use config::KeepPolicy;
pub use dialect::Version;
pub use error::{Error, Result};
pub use golden::{Golden, GoldenBuilder, DEFAULT_GOLDEN_GRACE};
pub use machine::{Machine, MachineBuilder, MachineCommand};
pub use names::{carry_test_name, current_test_name, generate_name, with_test_name};
pub use pack::Pack;
pub use runner::{Reply, ScriptedRunner};
pub use smolvm_harness_macros::requires_smolvm;

// README.md's Rust blocks compile as doctests, so the front page cannot drift from the crate;
// the headline test and the fake bin also run, word for word, in the dependent crate of
// tests/downstream (tests/downstream.rs checks that they are the same text).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
