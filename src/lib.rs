#![doc = include_str!("guide.md")]
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unreachable_pub)]

mod cleanup;
mod cli;
mod config;
#[doc(hidden)]
pub mod diag;
mod dialect;
mod error;
pub mod fixtures;
mod machine;
mod names;
mod pack;
mod runner;
pub mod sim;
pub mod skip;
mod slots;
mod state_dir;
mod transcript;
mod validate;

pub use cleanup::sweep;
pub use cli::{
    is_available, CpPath, CreateOptions, ExecOptions, ExecOutput, MachineInfo, MachineState,
    Smolvm, Source,
};
pub use config::{config, Config, KeepPolicy};
pub use dialect::{Dialect, Version};
pub use error::{CommandLine, Error, Result, MIN_SCRUB_LEN, REDACTED};
pub use machine::{Machine, MachineBuilder, MachineCommand};
pub use names::{carry_test_name, current_test_name, generate_name, with_test_name};
pub use pack::Pack;
pub use runner::{Invocation, ProcessRunner, RawOutput, Reply, Runner, ScriptedRunner, Truncation};
pub use sim::SimulatedRunner;
pub use skip::{skip_unless_smolvm, skipped_count, smolvm_check, SkipDecision, SkipReturn};
pub use smolvm_harness_macros::requires_smolvm;
pub use transcript::{transcript, TranscriptEntry, TRANSCRIPT_LEN};
pub use validate::{
    format_timeout, validate_cidr, validate_env_key, validate_machine_name, MAX_NAME_LEN,
    MAX_TIMEOUT,
};

// README.md's Rust blocks run as doctests, so the front page cannot drift from the crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
