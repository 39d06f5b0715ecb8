//! The recent smolvm commands of each machine, kept so that a failing test can show what was
//! done to its machine (Firecracker and Cloud Hypervisor dump the VMM's story on failure;
//! this is ours).
//!
//! A guard gives its own machine's with [`Machine::transcript`](crate::Machine::transcript),
//! and prints it when its test fails; [`transcript()`] is for machines driven through a bare
//! [`Smolvm`](crate::Smolvm) client.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::{CommandLine, Error, Result};
use crate::runner::{lock, RawOutput};

/// Commands kept per machine.
pub const TRANSCRIPT_LEN: usize = 16;
/// Machines tracked at most; the oldest is forgotten past that (machines used without a guard
/// are never forgotten otherwise).
const MAX_MACHINES: usize = 4096;

/// One smolvm command run for a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscriptEntry {
    /// The command, env values redacted.
    pub command: String,
    /// How it ended: `exit 0`, `exit 1`, `timed out`, `not found`, …
    pub outcome: String,
    /// How long it took.
    pub duration: Duration,
}

impl fmt::Display for TranscriptEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} ({:?})",
            self.command, self.outcome, self.duration
        )
    }
}

#[derive(Default)]
struct Book {
    by_machine: HashMap<String, VecDeque<TranscriptEntry>>,
    order: VecDeque<String>,
}

fn book() -> &'static Mutex<Book> {
    static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

pub(crate) fn record(
    machine: Option<&str>,
    command: &CommandLine,
    result: &Result<RawOutput>,
    trace: bool,
) {
    let (outcome, duration) = match result {
        Ok(out) => (
            match out.code {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".to_string(),
            },
            out.duration,
        ),
        Err(Error::Timeout { timeout, .. }) => ("timed out".to_string(), *timeout),
        Err(Error::NotFound { .. }) => ("smolvm not found".to_string(), Duration::ZERO),
        Err(_) => ("could not run".to_string(), Duration::ZERO),
    };
    push(machine, command, outcome, duration, trace);
}

/// Record one API request (`smolvm serve`): its answer's status line, or why it had none.
pub(crate) fn record_line(
    machine: Option<&str>,
    command: &CommandLine,
    outcome: String,
    duration: Duration,
) {
    let trace = crate::config::config().map(|c| c.trace).unwrap_or(false);
    push(machine, command, outcome, duration, trace);
}

fn push(
    machine: Option<&str>,
    command: &CommandLine,
    outcome: String,
    duration: Duration,
    trace: bool,
) {
    let entry = TranscriptEntry {
        command: command.to_string(),
        outcome,
        duration,
    };
    if trace {
        crate::diag::log(&format!("smolvm-harness: {entry}"));
    }
    let Some(machine) = machine else { return };
    let mut book = lock(book());
    if !book.by_machine.contains_key(machine) {
        if book.order.len() >= MAX_MACHINES {
            if let Some(old) = book.order.pop_front() {
                book.by_machine.remove(&old);
            }
        }
        book.order.push_back(machine.to_string());
    }
    let q = book.by_machine.entry(machine.to_string()).or_default();
    if q.len() >= TRANSCRIPT_LEN {
        q.pop_front();
    }
    q.push_back(entry);
}

/// The recent commands run for `machine` in this process, oldest first.
pub fn transcript(machine: &str) -> Vec<TranscriptEntry> {
    lock(book())
        .by_machine
        .get(machine)
        .map(|q| q.iter().cloned().collect())
        .unwrap_or_default()
}

/// Forget a machine's transcript (its guard is gone).
pub(crate) fn forget(machine: &str) {
    let mut book = lock(book());
    if book.by_machine.remove(machine).is_some() {
        book.order.retain(|m| m != machine);
    }
}
