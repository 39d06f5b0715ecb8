//! One side of `machine cp` and the argv of a copy. Paths are typed, so a host path is never
//! misread as `machine:path`; the checks smolvm's own parsing would get wrong or silently
//! accept (an empty side, a `:` in a host source, two guest sides) run before anything is
//! spawned.

use std::path::{Path, PathBuf};

use super::options::path_arg;
use crate::error::{Error, Result};
use crate::validate::{validate_guest_path, validate_machine_name};

/// One side of `machine cp`: a host path, or a path inside a machine. Typed, so that a host
/// path containing `:` is never misread as `machine:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpPath {
    /// A path on the host.
    Host(PathBuf),
    /// A path inside a machine (relative paths are taken from `/`).
    Guest {
        /// The machine's name.
        machine: String,
        /// The path inside it.
        path: String,
    },
}

impl CpPath {
    /// A host path.
    pub fn host(path: impl Into<PathBuf>) -> CpPath {
        CpPath::Host(path.into())
    }

    /// A path inside `machine`.
    pub fn guest(machine: impl Into<String>, path: impl Into<String>) -> CpPath {
        CpPath::Guest {
            machine: machine.into(),
            path: path.into(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            CpPath::Host(p) => p.as_os_str().is_empty(),
            CpPath::Guest { path, .. } => path.is_empty(),
        }
    }

    fn to_arg(&self) -> Result<String> {
        match self {
            CpPath::Host(p) => path_arg("host path", p),
            CpPath::Guest { machine, path } => Ok(format!("{machine}:{path}")),
        }
    }
}

impl From<&Path> for CpPath {
    fn from(p: &Path) -> CpPath {
        CpPath::Host(p.to_path_buf())
    }
}

impl From<PathBuf> for CpPath {
    fn from(p: PathBuf) -> CpPath {
        CpPath::Host(p)
    }
}

/// The machine a copy touches and the exact argv of `machine cp SRC DST`.
pub(super) fn argv(src: &CpPath, dst: &CpPath) -> Result<(String, Vec<String>)> {
    for side in [src, dst] {
        if side.is_empty() {
            let what = match side {
                CpPath::Host(_) => "host path",
                CpPath::Guest { .. } => "guest path",
            };
            return Err(Error::invalid(
                what,
                "must not be empty: there is nothing to copy",
            ));
        }
    }
    let machine = match (src, dst) {
        (CpPath::Host(h), CpPath::Guest { machine, path }) => {
            let h = path_arg("host path", h)?;
            // smolvm reads any SRC containing `:` as `machine:path`; there is no escape.
            if h.contains(':') {
                return Err(Error::invalid(
                    "host path",
                    format!(
                        "{h:?} contains `:`, which smolvm would read as `machine:path`; \
                         copy it to a path without `:` first"
                    ),
                ));
            }
            validate_machine_name(machine)?;
            validate_guest_path(path)?;
            machine.clone()
        }
        (CpPath::Guest { machine, path }, CpPath::Host(h)) => {
            path_arg("host path", h)?;
            validate_machine_name(machine)?;
            validate_guest_path(path)?;
            machine.clone()
        }
        _ => {
            return Err(Error::invalid(
                "cp paths",
                "exactly one side must be a guest path (smolvm copies host<->machine only)",
            ))
        }
    };
    let args = vec!["machine".into(), "cp".into(), src.to_arg()?, dst.to_arg()?];
    Ok((machine, args))
}
