//! Leak-proof cleanup: whatever ends a test process, its machines are deleted, and only
//! its own.
//!
//! Each layer covers what the one before it cannot:
//!
//! | how the test process ends | what settles its machines | where |
//! |---|---|---|
//! | the guard is dropped (test passed or panicked) | `Machine`'s `Drop` | `crate::machine` |
//! | create or start fails halfway | the builder, through [`registry::abandon`] | `registry.rs` |
//! | normal exit with guards never dropped (a `static`, an rstest `#[once]` fixture) | the exit hook (`dtor`) | `exit.rs` |
//! | SIGINT, SIGTERM, SIGHUP, SIGQUIT (Ctrl-C; nextest's timeout) | a signal thread, which then re-raises the signal | `exit.rs` |
//! | SIGKILL, abort, OOM kill, a crash | the crash watcher, shared by the test processes of a user | `watcher.rs` |
//! | the watcher was killed too (reboot, `kill -9` of everything) | the next run's sweep ([`sweep`]) | `sweep.rs` |
//!
//! One rule decides, in every layer, whether a machine may be deleted: [`owner::judge`]
//! (`owner.rs`). Intent and evidence are recorded before `machine create`, in the in-process
//! registry and the on-disk ledger (`ledger.rs`), so a process that dies mid-create is covered
//! like any other, and a record is dropped only when its machine is gone, kept, someone
//! else's, or provably never created. Process identity and liveness are in `process.rs`.

mod exit;
mod goldens;
mod ledger;
mod owner;
mod process;
mod registry;
mod sweep;
#[cfg(unix)]
mod watcher;
#[cfg(not(unix))]
mod watcher {
    /// No watcher here; the next run's sweep is what remains.
    pub(crate) fn ensure_watched() {}
}

pub use sweep::sweep;

pub(crate) use goldens::{dir_in as golden_dir_in, hold as hold_golden};
pub(crate) use ledger::state_env_to_show;
pub(crate) use owner::{ownership_labels, Evidence, Role, SharedGolden, Stage};
#[cfg(test)]
pub(crate) use owner::{OWNER_LABEL, RUN_LABEL};
pub(crate) use process::CREATE_MARK_ENV;
pub(crate) use registry::{
    abandon, create, create_mark, delete, fork, is_already_exists, mark_kept, register,
    terminating, unregister, Reservation,
};

/// The id of this test run (`NEXTEST_RUN_ID`, else `SMOLVM_HARNESS_RUN_ID`), if any.
pub(crate) fn run_id() -> Option<String> {
    owner::run_id()
}

/// What identifies the smolvm state a client reaches across processes; `None` for in-process
/// runners.
pub(crate) fn target_digest(smolvm: &crate::Smolvm) -> Option<String> {
    ledger::Target::of(smolvm).map(|t| t.digest())
}

/// The per-process random token in generated machine names (see [`crate::generate_name`]).
pub(crate) fn process_token() -> String {
    owner::Owner::current().nonce
}
