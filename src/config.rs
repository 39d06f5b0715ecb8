//! Configuration, in one place: every environment variable the crate reads.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SMOLVM_BIN` | the smolvm binary: a name looked up on `PATH`, or a path | `smolvm` |
//! | `SMOLVM_HOST` | a `smolvm serve` API to use instead of the CLI ([`crate::Smolvm::remote`]): `unix:///abs.sock`, `http://host:port`, `https://host:port` | unset |
//! | `SMOLVM_HARNESS_TLS_CERT`, `SMOLVM_HARNESS_TLS_KEY`, `SMOLVM_HARNESS_TLS_CA` | for an `https://` host (feature `remote-tls`): the client certificate chain, its private key, and the CA of the server's certificate, as PEM paths; read by each process from its own environment, never recorded | unset |
//! | `SMOLVM_HARNESS_TIMEOUT` | host-side limit for each smolvm call (`90s`, `5m`, `1500ms`) | `300s` |
//! | `SMOLVM_HARNESS_PACK_TIMEOUT` | host-side limit for `pack create` | `1800s` |
//! | `SMOLVM_HARNESS_KEEP` | `never`, `on-failure` or `always`: keep machines instead of deleting them | `never` |
//! | `SMOLVM_HARNESS_PREFIX` | first part of generated machine names | `smt` |
//! | `SMOLVM_HARNESS_IMAGE` | image of the `machine` fixture | `alpine:latest` |
//! | `SMOLVM_HARNESS_REQUIRE` | `1`: a missing smolvm fails tests instead of skipping them | unset |
//! | `SMOLVM_HARNESS_MAX_MACHINES` | machines alive at once across all test processes of the user that share the state directory, concurrent runs included | from CPUs and memory |
//! | `SMOLVM_HARNESS_STATE_DIR` | where the ledger, slots and pack cache live (an absolute path); created 0700; refused unless it is a directory of yours (see below) | `$TMPDIR/smolvm-harness-<uid>` |
//! | `SMOLVM_HARNESS_TRACE` | `1`: print every smolvm command, exit code and duration to stderr | unset |
//! | `SMOLVM_HARNESS_WATCHER` | `off`: start no crash watcher (the next run's sweep still reclaims) | on |
//! | `SMOLVM_HARNESS_OUTPUT_CAP` | bytes kept per stream of each smolvm call (`64MiB`, `1GiB`, `512KiB`, or bytes); past it the first and last halves are kept and the rest counted, see [`crate::runner::Truncation`] | `64MiB` |
//! | `SMOLVM_HARNESS_STRICT_EGRESS` | `1`: an egress policy (`allow_cidr`, `allow_host`) on a smolvm that does not enforce it (before 1.1.3) is [`Error::Unsupported`] instead of a warning | unset |
//! | `SMOLVM_HARNESS_ARTIFACTS` | where a failing test's machines leave `console.log` and `transcript.txt` (an absolute path; `never`: nowhere), under `<test>/<machine>/` | `<target dir>/smolvm-harness` |
//! | `SMOLVM_HARNESS_GOLDEN_GRACE` | how long a golden shared by a run ([`crate::Golden::shared`]) outlives the last process that held it (`30s`, `5m`) | `30s` |
//! | `SMOLVM_HARNESS_RUN_ID` | what makes processes one run, for [`crate::Pack::shared`], when not under nextest | per process |
//!
//! Read but not ours: `NEXTEST_RUN_ID` (one run of nextest: shared packs, and a label on
//! machines), `NEXTEST_TEST_NAME` (the test name, since nextest's test thread is `main`),
//! `TMPDIR` (the default state directory).
//!
//! Values are read when first needed and then kept for the life of the process, except
//! `SMOLVM_BIN` and `SMOLVM_HOST`, which [`crate::Smolvm::from_env`] reads on every call. A malformed value is
//! an [`Error::InvalidInput`] that names the variable, returned by the first call that needs
//! it; it is never silently replaced by the default.
//!
//! The state directory is checked before any use: it must not be a symlink and must belong to
//! you (a directory of yours that others can access is set to 0700); anything else is an
//! [`Error::Io`] saying why. Files in it are opened without following symlinks, and a file
//! there that is not yours is not believed.
//!
//! [`config()`] returns the settings as read; [`KeepPolicy`] is also at the crate root.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};

/// What to do with a machine when its guard goes away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeepPolicy {
    /// Always delete (the default).
    #[default]
    Never,
    /// Keep machines of failing tests, for inspection; delete the others. "Failing" is what
    /// the harness can see: the guard drops while its thread panics (`assert!`, `unwrap`,
    /// `expect`), the process is killed by a signal or SIGKILL, or (for machines never
    /// dropped, at exit) a panic was seen anywhere in the process. A test that fails by
    /// *returning* `Err` has dropped its guards before libtest sees the `Err`: use
    /// `.unwrap()`/`.expect()` in such tests, or `Always`.
    OnFailure,
    /// Never delete; print the command that would.
    Always,
}

impl KeepPolicy {
    fn parse(value: &str) -> Result<KeepPolicy> {
        match value.trim() {
            "" | "never" | "0" | "false" => Ok(KeepPolicy::Never),
            "on-failure" | "on_failure" | "failure" => Ok(KeepPolicy::OnFailure),
            "always" | "1" | "true" => Ok(KeepPolicy::Always),
            other => Err(Error::invalid(
                "SMOLVM_HARNESS_KEEP",
                format!("{other:?}: expected never, on-failure or always"),
            )),
        }
    }

    /// Whether a machine should be kept, given whether its test is failing.
    pub fn keeps(self, failing: bool) -> bool {
        match self {
            KeepPolicy::Never => false,
            KeepPolicy::OnFailure => failing,
            KeepPolicy::Always => true,
        }
    }
}

/// The harness settings read from the environment (see the module docs for the table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `SMOLVM_HARNESS_TIMEOUT`.
    pub call_timeout: Duration,
    /// `SMOLVM_HARNESS_PACK_TIMEOUT`.
    pub pack_timeout: Duration,
    /// `SMOLVM_HARNESS_KEEP`.
    pub keep: KeepPolicy,
    /// `SMOLVM_HARNESS_PREFIX`.
    pub prefix: String,
    /// `SMOLVM_HARNESS_IMAGE`.
    pub image: String,
    /// `SMOLVM_HARNESS_REQUIRE`.
    pub require: bool,
    /// `SMOLVM_HARNESS_MAX_MACHINES` (`None`: derived from the machine's size).
    pub max_machines: Option<usize>,
    /// `SMOLVM_HARNESS_STATE_DIR`.
    pub state_dir: PathBuf,
    /// `SMOLVM_HARNESS_TRACE`.
    pub trace: bool,
    /// `SMOLVM_HARNESS_OUTPUT_CAP`: bytes kept of each of stdout and stderr per call.
    pub output_cap: u64,
    /// `SMOLVM_HARNESS_STRICT_EGRESS`: refuse egress policies smolvm would not enforce.
    pub strict_egress: bool,
    /// `SMOLVM_HARNESS_ARTIFACTS`.
    pub artifacts: Artifacts,
    /// `SMOLVM_HARNESS_GOLDEN_GRACE`: how long a golden shared across processes outlives the
    /// last process that held it.
    pub golden_grace: Duration,
}

/// Where a failing test's machines leave their artifacts (`SMOLVM_HARNESS_ARTIFACTS`): the
/// console log and the transcript, under `<root>/<test>/<machine>/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Artifacts {
    /// Unset: `smolvm-harness` in the cargo target directory (`CARGO_TARGET_DIR`, else the
    /// nearest ancestor of the test binary holding `CACHEDIR.TAG`, else `target` under
    /// `CARGO_MANIFEST_DIR`, else the temp directory).
    #[default]
    TargetDir,
    /// `never`: write none.
    Never,
    /// An absolute path: the root itself.
    Dir(PathBuf),
}

/// The default of `SMOLVM_HARNESS_OUTPUT_CAP`: 64 MiB per stream.
pub(crate) const DEFAULT_OUTPUT_CAP: u64 = 64 * 1024 * 1024;

impl Default for Config {
    fn default() -> Config {
        Config {
            call_timeout: Duration::from_secs(300),
            pack_timeout: Duration::from_secs(1800),
            keep: KeepPolicy::Never,
            prefix: "smt".to_string(),
            image: "alpine:latest".to_string(),
            require: false,
            max_machines: None,
            state_dir: default_state_dir(),
            trace: false,
            output_cap: DEFAULT_OUTPUT_CAP,
            strict_egress: false,
            artifacts: Artifacts::TargetDir,
            golden_grace: crate::golden::DEFAULT_GOLDEN_GRACE,
        }
    }
}

impl Config {
    /// Read the settings from the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Read the settings through `lookup` (for tests, or settings from elsewhere).
    ///
    /// ```
    /// use smolvm_harness::config::{Config, KeepPolicy};
    /// let cfg = Config::from_lookup(|k| match k {
    ///     "SMOLVM_HARNESS_KEEP" => Some("on-failure".into()),
    ///     "SMOLVM_HARNESS_TIMEOUT" => Some("90s".into()),
    ///     _ => None,
    /// }).unwrap();
    /// assert_eq!(cfg.keep, KeepPolicy::OnFailure);
    /// assert_eq!(cfg.call_timeout.as_secs(), 90);
    /// assert!(Config::from_lookup(|k| (k == "SMOLVM_HARNESS_KEEP").then(|| "sometimes".into())).is_err());
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let mut cfg = Config {
            state_dir: state_dir_default(&absolute_temp_dir(), &uid_string()),
            ..Config::default()
        };
        if let Some(v) = lookup("SMOLVM_HARNESS_TIMEOUT") {
            cfg.call_timeout = parse_duration_var("SMOLVM_HARNESS_TIMEOUT", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_PACK_TIMEOUT") {
            cfg.pack_timeout = parse_duration_var("SMOLVM_HARNESS_PACK_TIMEOUT", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_KEEP") {
            cfg.keep = KeepPolicy::parse(&v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_PREFIX") {
            let v = v.trim().to_string();
            if v.is_empty()
                || v.len() > 32
                || !v.as_bytes()[0].is_ascii_alphanumeric()
                || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(Error::invalid(
                    "SMOLVM_HARNESS_PREFIX",
                    format!("{v:?}: 1 to 32 of [A-Za-z0-9_], starting with a letter or digit"),
                ));
            }
            cfg.prefix = v;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_IMAGE") {
            if v.trim().is_empty() {
                return Err(Error::invalid("SMOLVM_HARNESS_IMAGE", "must not be empty"));
            }
            cfg.image = v;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_REQUIRE") {
            cfg.require = parse_bool("SMOLVM_HARNESS_REQUIRE", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_GOLDEN_GRACE") {
            cfg.golden_grace = parse_duration_var("SMOLVM_HARNESS_GOLDEN_GRACE", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_STRICT_EGRESS") {
            cfg.strict_egress = parse_bool("SMOLVM_HARNESS_STRICT_EGRESS", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_TRACE") {
            cfg.trace = parse_bool("SMOLVM_HARNESS_TRACE", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_MAX_MACHINES") {
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => cfg.max_machines = Some(n),
                _ => {
                    return Err(Error::invalid(
                        "SMOLVM_HARNESS_MAX_MACHINES",
                        format!("{v:?}: expected a whole number above 0"),
                    ))
                }
            }
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_OUTPUT_CAP") {
            cfg.output_cap = parse_size("SMOLVM_HARNESS_OUTPUT_CAP", &v)?;
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_ARTIFACTS") {
            cfg.artifacts = match v.trim() {
                "never" => Artifacts::Never,
                "" => {
                    return Err(Error::invalid(
                        "SMOLVM_HARNESS_ARTIFACTS",
                        "must not be empty",
                    ))
                }
                _ if Path::new(&v).is_relative() => {
                    // Relative to what: each package's directory under nextest, the
                    // workspace under cargo test; one run would scatter its artifacts.
                    return Err(Error::invalid(
                        "SMOLVM_HARNESS_ARTIFACTS",
                        format!("{v:?}: must be an absolute path, or never"),
                    ));
                }
                _ => Artifacts::Dir(PathBuf::from(v)),
            };
        }
        if let Some(v) = lookup("SMOLVM_HARNESS_STATE_DIR") {
            if v.trim().is_empty() {
                return Err(Error::invalid(
                    "SMOLVM_HARNESS_STATE_DIR",
                    "must not be empty",
                ));
            }
            let dir = PathBuf::from(&v);
            if dir.is_relative() {
                // nextest runs each package in its own directory: a relative path would give
                // each its own ledger, slots and watcher, silently.
                return Err(Error::invalid(
                    "SMOLVM_HARNESS_STATE_DIR",
                    format!("{v:?}: must be an absolute path"),
                ));
            }
            cfg.state_dir = dir;
        }
        Ok(cfg)
    }

    /// The machine cap in force: `SMOLVM_HARNESS_MAX_MACHINES`, else one machine per CPU and
    /// at most one per 2 GiB of memory, between 2 and 32. smolvm machines default to 4 vCPUs and 8 GiB but overcommit; what
    /// hurts is many booting at once, which smolvm's own suite avoids by serialising.
    pub fn machine_cap(&self) -> usize {
        self.max_machines.unwrap_or_else(default_machine_cap)
    }
}

/// The process-wide settings, read once. A malformed variable is reported by every call.
pub fn config() -> Result<&'static Config> {
    static CONFIG: OnceLock<std::result::Result<Config, String>> = OnceLock::new();
    match CONFIG.get_or_init(|| Config::from_env().map_err(|e| e.to_string())) {
        Ok(cfg) => Ok(cfg),
        Err(msg) => Err(Error::invalid("configuration", msg.clone())),
    }
}

/// The settings for places that cannot return an error (`Drop`, exit hooks): the real ones,
/// or the defaults when the environment is malformed (the error was reported elsewhere).
pub(crate) fn config_or_default() -> &'static Config {
    static FALLBACK: OnceLock<Config> = OnceLock::new();
    match config() {
        Ok(cfg) => cfg,
        Err(_) => FALLBACK.get_or_init(Config::default),
    }
}

fn parse_bool(var: &'static str, v: &str) -> Result<bool> {
    match v.trim() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        other => Err(Error::invalid(var, format!("{other:?}: expected 1 or 0"))),
    }
}

/// `90s`, `5m`, `1500ms`, `2h`, or a plain number of seconds.
pub(crate) fn parse_duration_var(var: &'static str, v: &str) -> Result<Duration> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::invalid(
            var,
            format!("{v:?}: expected a duration like 90s, 5m or 1500ms"),
        )
    };
    let too_large = || Error::invalid(var, format!("{v:?}: too large"));
    let n: u64 = num.parse().map_err(|_| {
        if num.is_empty() {
            bad()
        } else {
            // All digits, yet not a u64: it overflowed.
            too_large()
        }
    })?;
    let secs = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(too_large)
    };
    let d = match unit.trim() {
        "" | "s" | "sec" | "secs" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" | "mins" => secs(60)?,
        "h" => secs(3600)?,
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(Error::invalid(
            var,
            format!("{v:?}: must be above zero (every call would time out at once)"),
        ));
    }
    Ok(d)
}

/// A size in bytes: a whole number, optionally followed by `B`, `KiB`, `MiB` or `GiB`
/// (`K`, `M`, `G` mean the same). Decimal units (`MB`) are refused rather than guessed at;
/// zero is refused because a cap of nothing would keep no output at all.
pub(crate) fn parse_size(var: &'static str, v: &str) -> Result<u64> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: &str| {
        Error::invalid(
            var,
            format!("{v:?}: {why}; expected a size like 64MiB, 1GiB, 512KiB or a number of bytes"),
        )
    };
    let n: u64 = num.parse().map_err(|_| bad("not a whole number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(bad("unknown unit")),
    };
    let bytes = n.checked_mul(factor).ok_or_else(|| bad("too large"))?;
    if bytes == 0 {
        return Err(bad("zero would keep no output at all"));
    }
    Ok(bytes)
}

fn default_state_dir() -> PathBuf {
    state_dir_default(&absolute_temp_dir(), &uid_string())
}

/// `std::env::temp_dir()`, but never relative (a relative `TMPDIR` would give each package's
/// working directory its own ledger and watcher under nextest): `/tmp` then.
fn absolute_temp_dir() -> PathBuf {
    let dir = std::env::temp_dir();
    if dir.is_absolute() {
        dir
    } else {
        PathBuf::from("/tmp")
    }
}

/// `<temp dir>/smolvm-harness-<uid>`. The uid, not `$USER`: it is always there, so there is
/// no silent fallback from one name to another, and it is what the state directory's owner is
/// checked against. Not `$XDG_RUNTIME_DIR`: it is a small tmpfs (shared packs live here) and
/// is cleared at logout, which would lose the ledger of a crashed run. The shared temp dir is
/// made safe by `state_dir`'s checks.
fn state_dir_default(temp_dir: &Path, uid: &str) -> PathBuf {
    temp_dir.join(format!("smolvm-harness-{uid}"))
}

fn uid_string() -> String {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        uid.to_string()
    }
    #[cfg(not(unix))]
    {
        // The temp directory is per user there already.
        "user".to_string()
    }
}

fn default_machine_cap() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mem_gib = total_memory_gib().unwrap_or(8);
    // At least 2: below that, any test that needs two machines at once cannot run at all.
    cpus.max(2).min(mem_gib / 2).clamp(2, 32)
}

fn total_memory_gib() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let cfg = Config::from_lookup(|_| None).unwrap();
        assert_eq!(cfg.keep, KeepPolicy::Never);
        assert_eq!(cfg.prefix, "smt");
        assert!(cfg.machine_cap() >= 1);
        let err = Config::from_lookup(|k| (k == "SMOLVM_HARNESS_TIMEOUT").then(|| "soon".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SMOLVM_HARNESS_TIMEOUT"), "{err}");
        assert!(
            Config::from_lookup(|k| (k == "SMOLVM_HARNESS_PREFIX").then(|| "a-b".into())).is_err()
        );
        assert!(
            Config::from_lookup(|k| (k == "SMOLVM_HARNESS_MAX_MACHINES").then(|| "0".into()))
                .is_err()
        );
        let cfg = Config::from_lookup(|k| (k == "SMOLVM_HARNESS_MAX_MACHINES").then(|| "3".into()))
            .unwrap();
        assert_eq!(cfg.machine_cap(), 3);
    }

    #[test]
    fn a_relative_state_dir_is_refused() {
        let err = Config::from_lookup(|k| {
            (k == "SMOLVM_HARNESS_STATE_DIR").then(|| "target/state".into())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn artifacts_setting() {
        let get = |v: &str| {
            Config::from_lookup(|k| (k == "SMOLVM_HARNESS_ARTIFACTS").then(|| v.to_string()))
                .map(|c| c.artifacts)
        };
        assert_eq!(
            Config::from_lookup(|_| None).unwrap().artifacts,
            Artifacts::TargetDir
        );
        assert_eq!(get("never").unwrap(), Artifacts::Never);
        assert_eq!(
            get("/tmp/art").unwrap(),
            Artifacts::Dir(PathBuf::from("/tmp/art"))
        );
        for bad in ["target/art", "", "never/x"] {
            let err = get(bad).unwrap_err().to_string();
            assert!(err.contains("SMOLVM_HARNESS_ARTIFACTS"), "{bad}: {err}");
        }
        assert!(get("art")
            .unwrap_err()
            .to_string()
            .contains("must be an absolute path"));
    }

    #[test]
    fn golden_grace_and_strict_egress() {
        let one = |k: &'static str, v: &str| {
            let v = v.to_string();
            Config::from_lookup(move |key| (key == k).then(|| v.clone()))
        };
        let default = Config::from_lookup(|_| None).unwrap();
        assert_eq!(default.golden_grace, Duration::from_secs(30));
        assert!(!default.strict_egress);
        assert_eq!(
            one("SMOLVM_HARNESS_GOLDEN_GRACE", "5m")
                .unwrap()
                .golden_grace,
            Duration::from_secs(300)
        );
        let err = one("SMOLVM_HARNESS_GOLDEN_GRACE", "soon").unwrap_err();
        assert!(
            err.to_string().contains("SMOLVM_HARNESS_GOLDEN_GRACE"),
            "{err}"
        );
        assert!(
            one("SMOLVM_HARNESS_STRICT_EGRESS", "1")
                .unwrap()
                .strict_egress
        );
        let err = one("SMOLVM_HARNESS_STRICT_EGRESS", "maybe").unwrap_err();
        assert!(
            err.to_string().contains("SMOLVM_HARNESS_STRICT_EGRESS"),
            "{err}"
        );
    }

    #[test]
    fn default_state_dir_is_in_temp_and_names_the_uid() {
        assert_eq!(
            state_dir_default(Path::new("/tmp"), "1000"),
            PathBuf::from("/tmp/smolvm-harness-1000")
        );
        // Through the lookup, and whatever $USER or $XDG_RUNTIME_DIR say: the uid.
        let cfg = Config::from_lookup(|k| match k {
            "USER" => Some("someone".into()),
            "XDG_RUNTIME_DIR" => Some("/run/user/7".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            cfg.state_dir,
            std::env::temp_dir().join(format!("smolvm-harness-{}", uid_string()))
        );
    }

    #[test]
    fn keep_policy() {
        assert!(!KeepPolicy::Never.keeps(true));
        assert!(KeepPolicy::OnFailure.keeps(true));
        assert!(!KeepPolicy::OnFailure.keeps(false));
        assert!(KeepPolicy::Always.keeps(false));
    }

    #[test]
    fn sizes() {
        let cap = |v: &str| {
            Config::from_lookup(|k| (k == "SMOLVM_HARNESS_OUTPUT_CAP").then(|| v.to_string()))
                .map(|c| c.output_cap)
        };
        assert_eq!(cap("64MiB").unwrap(), 64 << 20);
        assert_eq!(cap(" 1GiB ").unwrap(), 1 << 30);
        assert_eq!(cap("512KiB").unwrap(), 512 << 10);
        assert_eq!(cap("4M").unwrap(), 4 << 20);
        assert_eq!(cap("1000").unwrap(), 1000);
        assert_eq!(cap("1000B").unwrap(), 1000);
        assert_eq!(
            Config::from_lookup(|_| None).unwrap().output_cap,
            DEFAULT_OUTPUT_CAP
        );
        for bad in [
            "0",
            "0MiB",
            "",
            "64MB",
            "1.5GiB",
            "-1",
            "lots",
            "MiB",
            "17179869184GiB",
        ] {
            let err = cap(bad).unwrap_err().to_string();
            assert!(err.contains("SMOLVM_HARNESS_OUTPUT_CAP"), "{bad}: {err}");
        }
        assert!(cap("0").unwrap_err().to_string().contains("zero"));
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration_var("X", "90").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration_var("X", "5m").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            parse_duration_var("X", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        // Zero is a well-formed duration: the message must say what is wrong with it.
        for zero in ["0s", "0", "0ms", "0m"] {
            let err = parse_duration_var("SMOLVM_HARNESS_TIMEOUT", zero)
                .unwrap_err()
                .to_string();
            assert!(err.contains("SMOLVM_HARNESS_TIMEOUT"), "{err}");
            assert!(err.contains("must be above zero"), "{err}");
            assert!(!err.contains("expected a duration"), "{err}");
        }
        let err = parse_duration_var("X", "soon").unwrap_err().to_string();
        assert!(
            err.contains("expected a duration like 90s, 5m or 1500ms"),
            "{err}"
        );
        assert!(parse_duration_var("X", "-1s").is_err());
        for huge in ["307445734561825861m", "18446744073709551616"] {
            let err = parse_duration_var("X", huge).unwrap_err().to_string();
            assert!(err.contains("too large"), "{err}");
        }
    }
}
