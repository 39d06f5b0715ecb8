//! Input checks that run before smolvm is spawned, so bad input gets a typed error that says
//! what is wrong instead of smolvm's exit 1 or 2 (or, worse, a silently different meaning).
//!
//! The client runs them on every call; they are public so that a test or a helper of yours
//! can check input the same way (a name it builds, a CIDR it reads from a fixture), and so
//! that the limits ([`MAX_NAME_LEN`], [`MAX_TIMEOUT`]) can be named.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// smolvm's `MAX_VM_NAME_LENGTH`.
pub const MAX_NAME_LEN: usize = 128;

/// The longest timeout the crate uses: 365 days. Longer ones (host limits and guest
/// `--timeout` alike) are clamped to it, so that a deadline always exists: `u64::MAX`
/// seconds cannot be added to a clock, and smolvm adds its own margin to the guest timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Check a machine name against smolvm's `validate_vm_name` (same in 0.8.0 and 1.9.2).
///
/// ```
/// use smolvm_harness::validate::validate_machine_name;
/// assert!(validate_machine_name("web-1_a").is_ok());
/// for bad in ["", "-x", "a--b", "a-", "a.b", "a:b", &"x".repeat(129)] {
///     assert!(validate_machine_name(bad).is_err(), "{bad}");
/// }
/// ```
pub fn validate_machine_name(name: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::invalid(
            "machine name",
            format!("{name:?}: {reason}"),
        ))
    };
    if name.is_empty() {
        return bad("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!(
            "too long: {} characters (max {MAX_NAME_LEN})",
            name.len()
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return bad(format!(
            "contains invalid character {c:?} (allowed: A-Z a-z 0-9 _ -)"
        ));
    }
    if name.contains("--") {
        return bad("must not contain consecutive hyphens".into());
    }
    if name.ends_with('-') {
        return bad("must not end with a hyphen".into());
    }
    Ok(())
}

/// Check an image reference for `--image`: not blank (smolvm ≥ 0.8.1 rejects it, 0.8.0 takes
/// it), not flag-like, no NUL.
pub(crate) fn validate_image(image: &str) -> Result<()> {
    if image.trim().is_empty() {
        return Err(Error::invalid("image", "must not be empty"));
    }
    if image.starts_with('-') || image.contains('\0') {
        return Err(Error::invalid("image", format!("{image:?}")));
    }
    Ok(())
}

/// Check an env key for `-e KEY=VALUE`. Values are never checked or quoted in errors: they may
/// be secrets.
pub fn validate_env_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(
            "env key",
            "must not be empty (smolvm silently drops `=VALUE`)",
        ));
    }
    if key.contains('=') {
        return Err(Error::invalid(
            "env key",
            format!("{key:?} contains `=` (smolvm splits KEY=VALUE at the first `=`)"),
        ));
    }
    if key.contains('\0') {
        return Err(Error::invalid("env key", format!("{key:?} contains NUL")));
    }
    Ok(())
}

/// Check an env value: only NUL is impossible to pass in an argv. The value is not quoted.
pub(crate) fn validate_env_value(key: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(
            "env value",
            format!("the value of {key:?} contains NUL (value not shown)"),
        ));
    }
    Ok(())
}

/// Check a label for `--label KEY=VALUE` (smolvm ≥ 1.8.0).
pub(crate) fn validate_label(key: &str, value: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("label", "key must not be empty"));
    }
    if key.contains('=') || key.contains('\0') || value.contains('\0') {
        return Err(Error::invalid(
            "label",
            format!("{key:?}: the key must not contain `=` and neither part NUL"),
        ));
    }
    Ok(())
}

/// Check a CIDR for `--allow-cidr`, with the grammar smolvm's `parse_cidr` accepts: an IPv4 or
/// IPv6 address with an optional `/prefix` in range, no surrounding whitespace, no hostnames.
///
/// ```
/// use smolvm_harness::validate::validate_cidr;
/// assert!(validate_cidr("10.0.0.0/8").is_ok());
/// assert!(validate_cidr("1.1.1.1").is_ok());
/// assert!(validate_cidr("2001:db8::/32").is_ok());
/// for bad in ["10.0.0.0/33", " 10.0.0.0/8", "example.com", "10.0.0/8", ""] {
///     assert!(validate_cidr(bad).is_err(), "{bad}");
/// }
/// ```
pub fn validate_cidr(cidr: &str) -> Result<()> {
    let bad = || {
        Err(Error::invalid(
            "CIDR",
            format!("{cidr:?}: expected format like 10.0.0.0/8 or 1.1.1.1"),
        ))
    };
    let (addr, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return bad();
    };
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match p.parse::<u8>() {
            Ok(n) if n <= max && !p.starts_with('+') => {}
            _ => return bad(),
        }
    }
    Ok(())
}

/// Format a guest timeout for `--timeout`: whole seconds as `Ns`, otherwise whole
/// milliseconds as `Nms` (the agent works in milliseconds, so a finer remainder would be
/// dropped by smolvm anyway). Zero and anything under a millisecond are refused: smolvm
/// rejects `0s`, and sub-millisecond values would kill the command at once. Anything over
/// [`MAX_TIMEOUT`] (365 days) is sent as 365 days.
///
/// ```
/// use std::time::Duration;
/// use smolvm_harness::validate::format_timeout;
/// assert_eq!(format_timeout(Duration::from_secs(30)).unwrap(), "30s");
/// assert_eq!(format_timeout(Duration::from_millis(1500)).unwrap(), "1500ms");
/// assert!(format_timeout(Duration::from_micros(999)).is_err());
/// assert_eq!(format_timeout(Duration::from_secs(u64::MAX)).unwrap(), "31536000s");
/// ```
pub fn format_timeout(timeout: Duration) -> Result<String> {
    let ms = timeout.min(MAX_TIMEOUT).as_millis();
    if ms == 0 {
        return Err(Error::invalid(
            "timeout",
            format!(
                "{timeout:?}: must be at least 1ms (smolvm rejects zero and works in milliseconds)"
            ),
        ));
    }
    if ms.is_multiple_of(1000) {
        Ok(format!("{}s", ms / 1000))
    } else {
        Ok(format!("{ms}ms"))
    }
}

/// Check a guest path for `machine cp`: non-empty after the leading `/` smolvm adds, and no
/// `.` or `..` segments (the agent rejects both).
pub(crate) fn validate_guest_path(path: &str) -> Result<()> {
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Error::invalid(
            "guest path",
            format!("{path:?}: `.` and `..` segments are not allowed"),
        ));
    }
    if path.contains('\0') {
        return Err(Error::invalid(
            "guest path",
            format!("{path:?} contains NUL"),
        ));
    }
    Ok(())
}

/// smolvm's smallest `--mem` (`VmResources::validate`: "memory must be at least 64 MiB").
pub const MIN_MEM_MIB: u32 = 64;

/// Check sizing as smolvm's `VmResources::validate` and clap do, so a bad value is refused
/// before anything runs: `--cpus` 1–255 (clap's `u8`; above 16 smolvm runs 16 and warns),
/// `--mem` at least [`MIN_MEM_MIB`], `--storage`/`--overlay` at least 1 GiB.
pub(crate) fn validate_resources(
    cpus: Option<u32>,
    mem_mib: Option<u32>,
    storage_gib: Option<u32>,
    overlay_gib: Option<u32>,
) -> Result<()> {
    match cpus {
        Some(0) => return Err(Error::invalid("cpus", "must be at least 1")),
        Some(n) if n > 255 => {
            return Err(Error::invalid(
                "cpus",
                format!("{n}: smolvm takes 1 to 255 (and runs at most 16)"),
            ))
        }
        _ => {}
    }
    if let Some(m) = mem_mib {
        if m < MIN_MEM_MIB {
            return Err(Error::invalid(
                "mem_mib",
                format!("{m} MiB: smolvm needs at least {MIN_MEM_MIB} MiB"),
            ));
        }
    }
    if storage_gib == Some(0) {
        return Err(Error::invalid("storage_gib", "must be at least 1 GiB"));
    }
    if overlay_gib == Some(0) {
        return Err(Error::invalid("overlay_gib", "must be at least 1 GiB"));
    }
    Ok(())
}

/// Check published ports: neither side 0 (smolvm has no ephemeral host port; use
/// [`crate::MachineBuilder::publish`] for one picked for you), and no host port twice.
pub(crate) fn validate_ports(ports: &[(u16, u16)]) -> Result<()> {
    for (i, &(host, guest)) in ports.iter().enumerate() {
        if host == 0 {
            return Err(Error::invalid(
                "port",
                format!(
                    "host port 0 (for guest port {guest}): smolvm has no ephemeral host port; \
                     use MachineBuilder::publish({guest}) to have one picked"
                ),
            ));
        }
        if guest == 0 {
            return Err(Error::invalid(
                "port",
                format!("guest port 0 (host port {host})"),
            ));
        }
        if ports[..i].iter().any(|&(h, _)| h == host) {
            return Err(Error::invalid(
                "port",
                format!("host port {host} is given twice"),
            ));
        }
    }
    Ok(())
}

/// Check an `--allow-host` value: an IP literal, or a host name (letters, digits, `-`, `.`)
/// without a port suffix, which smolvm refuses.
pub fn validate_allow_host(host: &str) -> Result<()> {
    if host.is_empty() {
        return Err(Error::invalid("allow_host", "must not be empty"));
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                "allow_host",
                format!(
                    "{host:?}: port suffixes are not supported (all ports of the resolved                      addresses are allowed)"
                ),
            ));
        }
    }
    let ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "allow_host",
            format!("{host:?} is neither an IP address nor a host name"),
        ))
    }
}

/// Host paths smolvm refuses to mount on Linux (`HostMount::validate`): exactly `/` and
/// `/var`, and anything under these.
const PROTECTED_MOUNT_ROOTS: &[&str] = &[
    "/var/run", "/var/log", "/etc", "/usr", "/bin", "/sbin", "/lib", "/proc", "/sys", "/dev",
    "/run", "/boot",
];

/// Check a volume and return its host side made absolute and canonical (symlinks resolved,
/// as smolvm stores it): the host directory must exist, be a directory and not be a system
/// path smolvm protects; the guest path must be absolute, without `:` (smolvm splits
/// `HOST:GUEST[:ro]` at colons) or NUL.
pub(crate) fn validate_volume(host: &Path, guest: &str) -> Result<PathBuf> {
    if guest.is_empty() || !guest.starts_with('/') {
        return Err(Error::invalid(
            "volume",
            format!("guest path {guest:?} must be absolute"),
        ));
    }
    if guest.contains(':') || guest.contains('\0') {
        return Err(Error::invalid(
            "volume",
            format!("guest path {guest:?} must not contain `:` or NUL"),
        ));
    }
    if host.as_os_str().is_empty() {
        return Err(Error::invalid("volume", "the host path is empty"));
    }
    let canonical = std::fs::canonicalize(host)
        .map_err(|e| Error::invalid("volume", format!("host path {}: {e}", host.display())))?;
    if !canonical.is_dir() {
        return Err(Error::invalid(
            "volume",
            format!(
                "host path {} is not a directory (smolvm mounts directories only)",
                host.display()
            ),
        ));
    }
    let text = canonical.to_string_lossy();
    let protected = text == "/"
        || text == "/var"
        || PROTECTED_MOUNT_ROOTS
            .iter()
            .any(|root| text == *root || text.starts_with(&format!("{root}/")));
    if protected {
        return Err(Error::invalid(
            "volume",
            format!("host path {text} is a system path smolvm refuses to mount"),
        ));
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_smolvm_rules() {
        assert!(validate_machine_name("default").is_ok());
        assert!(validate_machine_name(&"a".repeat(128)).is_ok());
        let err = validate_machine_name("a.b").unwrap_err().to_string();
        assert!(err.contains("invalid character '.'"), "{err}");
        let err = validate_machine_name("a--b").unwrap_err().to_string();
        assert!(err.contains("consecutive hyphens"), "{err}");
        assert!(validate_machine_name("_a").is_err());
        assert!(validate_machine_name("é").is_err());
    }

    #[test]
    fn env_key_errors_never_show_values() {
        assert!(validate_env_key("").is_err());
        assert!(validate_env_key("A=B").is_err());
        assert!(validate_env_key("A\0").is_err());
        let err = validate_env_value("TOKEN", "sec\0ret")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sec"), "{err}");
    }

    #[test]
    fn cidr_edge_cases() {
        assert!(validate_cidr("10.1.2.3/8").is_ok());
        assert!(validate_cidr("::1/128").is_ok());
        assert!(validate_cidr("::1/129").is_err());
        assert!(validate_cidr("10.0.0.0/").is_err());
        assert!(validate_cidr("10.0.0.0/+8").is_err());
        assert!(validate_cidr("10.0.0.0/8 ").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(format_timeout(Duration::MAX).unwrap(), "31536000s");
        assert_eq!(format_timeout(MAX_TIMEOUT).unwrap(), "31536000s");
        assert_eq!(format_timeout(Duration::from_millis(1)).unwrap(), "1ms");
        assert_eq!(format_timeout(Duration::from_secs(3600)).unwrap(), "3600s");
        assert!(format_timeout(Duration::ZERO).is_err());
    }

    #[test]
    fn guest_paths() {
        assert!(validate_guest_path("/tmp/x").is_ok());
        assert!(validate_guest_path("tmp/x").is_ok());
        assert!(validate_guest_path("/tmp/../etc").is_err());
        assert!(validate_guest_path("./x").is_err());
    }
}
