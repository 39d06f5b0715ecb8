//! smolvm-harness (guide written later)
#![deny(missing_docs)]

mod cli;
mod config;
mod diag;
mod dialect;
mod error;
mod runner;
pub mod sim;
mod transcript;
mod validate;

pub use cli::{
    is_available, CpPath, CreateOptions, ExecOptions, ExecOutput, MachineInfo, MachineState,
    Smolvm, Source,
};
pub use config::{config, Config, KeepPolicy};
pub use dialect::{Dialect, Version};
pub use error::{CommandLine, Error, Result, REDACTED};
pub use runner::{Invocation, ProcessRunner, RawOutput, Reply, Runner, ScriptedRunner};
pub use transcript::{transcript, TranscriptEntry, TRANSCRIPT_LEN};
pub use validate::{
    format_timeout, validate_cidr, validate_env_key, validate_machine_name, MAX_NAME_LEN,
};
