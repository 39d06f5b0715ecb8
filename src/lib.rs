//! smolvm-harness (guide written later)
#![deny(missing_docs)]

mod dialect;
mod error;
mod runner;
pub mod sim;

pub use dialect::{Dialect, Version};
pub use error::{CommandLine, Error, Result, REDACTED};
pub use runner::{Invocation, ProcessRunner, RawOutput, Reply, Runner, ScriptedRunner};
