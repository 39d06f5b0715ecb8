//! smolvm versions and the argv dialect each one speaks.
//!
//! No single argv works on every smolvm: names went from positional to `--name` in 1.0.2,
//! labels arrived in 1.8.0, and `--from` kept the egress policy only from 1.8.0. The crate
//! reads `smolvm --version` once per binary and derives a [`Dialect`] from it.
//!
//! [`Version`] is also at the crate root, since choosing a simulated version
//! ([`crate::Smolvm::simulated_version`]) is everyday test code.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A smolvm release version, `MAJOR.MINOR.PATCH`.
///
/// ```
/// use smolvm_harness::Version;
/// let v: Version = "1.9.2".parse().unwrap();
/// assert!(v >= Version::new(1, 8, 0));
/// assert_eq!(Version::parse_version_output("smolvm 0.8.0\n").unwrap(), Version::new(0, 8, 0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl Version {
    /// The newest smolvm this crate was checked against (1.9.2; 1.9.3 behaves the same).
    pub const NEWEST_KNOWN: Version = Version::new(1, 9, 2);
    /// The oldest smolvm this crate was checked against.
    pub const OLDEST_KNOWN: Version = Version::new(0, 8, 0);

    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parse what `smolvm --version` prints: `smolvm X.Y.Z` (a pre-release or build suffix
    /// such as `-rc1` or `+abc` is ignored).
    pub fn parse_version_output(text: &str) -> Result<Version, Error> {
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(name), Some(number)) = (words.next(), words.next()) else {
            return Err(Error::invalid(
                "smolvm version",
                format!("expected `smolvm X.Y.Z`, got {line:?}"),
            ));
        };
        if !name.starts_with("smolvm") {
            return Err(Error::invalid(
                "smolvm version",
                format!("expected `smolvm X.Y.Z`, got {line:?}"),
            ));
        }
        number.parse()
    }

    /// The dialect this version speaks.
    pub fn dialect(self) -> Dialect {
        Dialect::for_version(self)
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(s: &str) -> Result<Version, Error> {
        let core = s
            .trim()
            .trim_start_matches('v')
            .split(['-', '+'])
            .next()
            .unwrap_or("");
        let parts: Vec<&str> = core.split('.').collect();
        let bad = || Error::invalid("smolvm version", format!("expected X.Y.Z, got {s:?}"));
        if parts.len() != 3 {
            return Err(bad());
        }
        let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
        Ok(Version::new(num(parts[0])?, num(parts[1])?, num(parts[2])?))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a smolvm version accepts and how it behaves, as far as this crate's argv cares.
///
/// ```
/// use smolvm_harness::dialect::{Dialect, Version};
/// let old = Dialect::for_version(Version::new(0, 8, 0));
/// assert!(!old.name_flag && !old.labels && !old.delete_stops_running);
/// let new = Dialect::for_version(Version::new(1, 9, 2));
/// assert!(new.name_flag && new.labels && new.from_keeps_egress);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialect {
    /// The version this was derived from.
    pub version: Version,
    /// `create` and `delete` take `--name NAME` (from 1.0.2); before, a positional NAME.
    pub name_flag: bool,
    /// `create --label K=V` and `labels` in `ls --json` (from 1.8.0).
    pub labels: bool,
    /// `delete` stops a running machine first (from 0.8.1); before, stop it ourselves.
    pub delete_stops_running: bool,
    /// `create --from` keeps `--allow-cidr` (from 1.8.0); before, it silently drops it.
    pub from_keeps_egress: bool,
    /// `--secret-env GUEST=HOSTVAR` on `create` and `exec` (from 1.0.0); before, only
    /// `exec -e KEY` (no `=`), which copies KEY from smolvm's own environment (from 0.8.1).
    pub secret_env: bool,
    /// `--allow-cidr`/`--allow-host` are enforced (from 1.1.3); before, the TSI backend
    /// ignored them (upstream's fix note in `f8f7d148`).
    pub enforces_egress: bool,
    /// `exec -e KEY` (no `=`) copies KEY from smolvm's own environment (from 0.8.1); before,
    /// it is dropped.
    pub env_from_host: bool,
    /// `--volume` splits `HOST:GUEST[:MODE]` from the right, so a host path may hold `:`
    /// (from 1.4.0); before, at every `:`.
    pub volume_split_right: bool,
    /// `machine start --forkable` and `machine fork` (from 1.0.0; `--golden G --name C` from
    /// 1.0.2, positional before).
    pub fork: bool,
    /// A golden can be forked any number of times (from 1.7.6, retained checkpoint; 1.7.3 to
    /// 1.7.5 refuse a second fork). The crate forks only from here.
    pub reforkable: bool,
    /// `machine delete --cascade` (clones first, then the golden) and `fork -e`/
    /// `--secret-env` (from 1.7.0).
    pub cascade: bool,
}

impl Dialect {
    /// `Ok` if this version has `feature` (one of the fields above), else
    /// [`Error::Unsupported`] naming what was asked and from which version smolvm has it.
    pub(crate) fn require(
        self,
        feature: bool,
        what: &'static str,
        since: &'static str,
    ) -> Result<(), Error> {
        if feature {
            Ok(())
        } else {
            Err(Error::Unsupported {
                what,
                version: self.version,
                reason: since,
            })
        }
    }

    /// The dialect of a version.
    pub fn for_version(version: Version) -> Dialect {
        Dialect {
            version,
            name_flag: version >= Version::new(1, 0, 2),
            labels: version >= Version::new(1, 8, 0),
            delete_stops_running: version >= Version::new(0, 8, 1),
            from_keeps_egress: version >= Version::new(1, 8, 0),
            secret_env: version >= Version::new(1, 0, 0),
            enforces_egress: version >= Version::new(1, 1, 3),
            env_from_host: version >= Version::new(0, 8, 1),
            volume_split_right: version >= Version::new(1, 4, 0),
            fork: version >= Version::new(1, 0, 0),
            reforkable: version >= Version::new(1, 7, 6),
            cascade: version >= Version::new(1, 7, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_match_the_compatibility_table() {
        let d = |s: &str| Dialect::for_version(s.parse().unwrap());
        assert!(!d("1.0.1").name_flag);
        assert!(d("1.0.2").name_flag);
        assert!(!d("1.7.9").labels && !d("1.7.9").from_keeps_egress);
        assert!(d("1.8.0").labels && d("1.8.0").from_keeps_egress);
        assert!(!d("0.8.0").delete_stops_running);
        assert!(d("0.8.1").delete_stops_running);
        assert!(!d("0.9.9").secret_env && d("1.0.0").secret_env);
        assert!(!d("1.1.2").enforces_egress && d("1.1.3").enforces_egress);
        assert!(!d("0.9.9").fork && d("1.0.0").fork);
        assert!(!d("1.7.5").reforkable && d("1.7.6").reforkable);
        assert!(!d("1.6.9").cascade && d("1.7.0").cascade);
    }

    #[test]
    fn version_output_parsing() {
        assert_eq!(
            Version::parse_version_output("smolvm 1.9.2\n").unwrap(),
            Version::new(1, 9, 2)
        );
        assert_eq!(
            Version::parse_version_output("smolvm-bin 1.0.2-rc1").unwrap(),
            Version::new(1, 0, 2)
        );
        for bad in ["", "smolvm", "docker 1.2.3", "smolvm 1.2", "smolvm a.b.c"] {
            assert!(
                matches!(
                    Version::parse_version_output(bad),
                    Err(Error::InvalidInput { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
