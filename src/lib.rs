//! smolvm-harness (guide written later)
#![deny(missing_docs)]

mod cleanup;
mod cli;
mod config;
mod diag;
mod dialect;
mod error;
mod machine;
mod names;
mod pack;
mod runner;
pub mod sim;
mod slots;
mod transcript;
mod validate;

pub use cli::{
    is_available, CpPath, CreateOptions, ExecOptions, ExecOutput, MachineInfo, MachineState,
    Smolvm, Source,
};
pub use cleanup::sweep;
pub use config::{config, Config, KeepPolicy};
pub use dialect::{Dialect, Version};
pub use error::{CommandLine, Error, Result, REDACTED};
pub use machine::{Machine, MachineBuilder, MachineCommand};
pub use names::{current_test_name, generate_name};
pub use pack::Pack;
pub use runner::{Invocation, ProcessRunner, RawOutput, Reply, Runner, ScriptedRunner};
pub use transcript::{transcript, TranscriptEntry, TRANSCRIPT_LEN};
pub use validate::{
    format_timeout, validate_cidr, validate_env_key, validate_machine_name, MAX_NAME_LEN,
};
