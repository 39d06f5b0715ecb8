//! What a caller asks of `machine create` and `machine exec`, and the exact argv each becomes.
//! Options are plain values built by value; validation and argv building are separate steps
//! so that a caller (the machine builder) can check input and version refusals before any
//! side effect. Env values never show in `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dialect::Dialect;
use crate::error::{Error, Result};
use crate::validate::{
    format_timeout, validate_allow_host, validate_cidr, validate_env_key, validate_env_value,
    validate_image, validate_label, validate_ports, validate_resources, validate_volume,
};

/// Source of a machine: an image reference, or a packed `.smolmachine` file. One or the
/// other, by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--image IMAGE`: a registry reference, or a local archive or directory (≥ 1.x).
    Image(String),
    /// `--from PATH`: a `.smolmachine` sidecar made by `pack create`.
    FromPath(PathBuf),
}

/// One published port: connections to `127.0.0.1:host` on the host reach `guest` in the
/// machine (`-p HOST:GUEST`, TCP only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The host port.
    pub host: u16,
    /// The guest port.
    pub guest: u16,
}

/// Options of `machine create`, built by value.
///
/// ```
/// use smolvm_harness::CreateOptions;
/// let opts = CreateOptions::image("alpine:latest")
///     .net()
///     .cpus(2)
///     .mem_mib(1024)
///     .port(18080, 80)
///     .allow_cidr("10.0.0.0/8")
///     .env("MODE", "test")
///     .secret_env("TOKEN", "s3cret-value")
///     .label("team", "infra");
/// // Env and secret values never show in Debug output.
/// assert!(!format!("{opts:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct CreateOptions {
    pub(crate) source: Source,
    pub(crate) net: bool,
    pub(crate) allow_cidrs: Vec<String>,
    pub(crate) allow_hosts: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) secret_env: Vec<(String, String)>,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) cpus: Option<u32>,
    pub(crate) mem_mib: Option<u32>,
    pub(crate) storage_gib: Option<u32>,
    pub(crate) overlay_gib: Option<u32>,
    pub(crate) ports: Vec<PortMapping>,
    pub(crate) volumes: Vec<Volume>,
    pub(crate) extra_args: Vec<String>,
}

/// One `--volume`: a host directory seen at `guest` in the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Volume {
    pub(crate) host: PathBuf,
    pub(crate) guest: String,
    pub(crate) read_only: bool,
}

impl fmt::Debug for CreateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret_keys: Vec<&str> = self.secret_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CreateOptions")
            .field("source", &self.source)
            .field("net", &self.net)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("allow_hosts", &self.allow_hosts)
            .field("env", &redacted_env(&self.env))
            .field("secret_env_keys", &secret_keys)
            .field("labels", &self.labels)
            .field("cpus", &self.cpus)
            .field("mem_mib", &self.mem_mib)
            .field("storage_gib", &self.storage_gib)
            .field("overlay_gib", &self.overlay_gib)
            .field("ports", &self.ports)
            .field("volumes", &self.volumes)
            .field("extra_args", &self.extra_args)
            .finish()
    }
}

impl CreateOptions {
    /// Create from an image reference (`--image`).
    pub fn image(image: impl Into<String>) -> CreateOptions {
        CreateOptions::with_source(Source::Image(image.into()))
    }

    /// Create from a packed `.smolmachine` file (`--from`); see
    /// [`Smolvm::pack_create`](crate::Smolvm::pack_create).
    pub fn from_path(path: impl Into<PathBuf>) -> CreateOptions {
        CreateOptions::with_source(Source::FromPath(path.into()))
    }

    /// The same options with another source (the machine builder collects options before
    /// it knows its source).
    pub(crate) fn replace_source(mut self, source: Source) -> CreateOptions {
        self.source = source;
        self
    }

    fn with_source(source: Source) -> CreateOptions {
        CreateOptions {
            source,
            net: false,
            allow_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            env: Vec::new(),
            secret_env: Vec::new(),
            labels: Vec::new(),
            cpus: None,
            mem_mib: None,
            storage_gib: None,
            overlay_gib: None,
            ports: Vec::new(),
            volumes: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// Turn networking on (`--net`). A registry image needs it on smolvm ≥ 1.7.3, which
    /// pulls inside the guest; CIDRs and host names turn it on by themselves.
    pub fn net(mut self) -> CreateOptions {
        self.net = true;
        self
    }

    /// Allow egress to this CIDR (`--allow-cidr`); `--net` is then sent explicitly, since
    /// with `--from` some versions do not infer it. smolvm enforces egress policies only
    /// from 1.1.3: see [`Smolvm::enforces_egress`](crate::Smolvm::enforces_egress).
    pub fn allow_cidr(mut self, cidr: impl Into<String>) -> CreateOptions {
        self.allow_cidrs.push(cidr.into());
        self
    }

    /// Allow egress to a host by name (`--allow-host`; networking is then on). smolvm
    /// resolves the name **on the host, at create** (a name that does not resolve fails the
    /// create) and again at each start, allows the addresses it got (every port), and
    /// answers the guest's DNS queries for names outside the list with NXDOMAIN. An IP
    /// literal is taken as is. No port suffix. Enforced only from smolvm 1.1.3, like
    /// [`CreateOptions::allow_cidr`]; refused with a pack source before 1.8.0, which drops it.
    pub fn allow_host(mut self, host: impl Into<String>) -> CreateOptions {
        self.allow_hosts.push(host.into());
        self
    }

    /// Set a guest environment variable (sent as `--env=K=V`, so a value starting with `-`
    /// survives). The value is redacted from every command line in messages, transcripts
    /// and logs; in quoted output (a guest that prints its env) it is scrubbed when it is
    /// 4 bytes or longer (see
    /// [`CommandLine::redact_output`](crate::error::CommandLine::redact_output)). But it is
    /// on smolvm's command line, which every local user can read in `/proc`, and smolvm
    /// stores it in the machine's record: for anything secret use
    /// [`CreateOptions::secret_env`].
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> CreateOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Give every command of the machine a secret environment variable, kept off every
    /// command line and out of smolvm's record, the ledger, transcripts and `Debug`:
    ///
    /// - smolvm ≥ 1.0.0, image source: `--secret-env KEY=SMOLVM_HARNESS_SECRET_KEY` at
    ///   create; the value is set only in the environment of the smolvm processes that need
    ///   it (every later `start` and `exec` of this machine through this crate: smolvm
    ///   reads it each time, and a `start` or `exec` you run by hand without it fails);
    /// - smolvm ≥ 1.0.0, pack source (`create --from` ignores secret flags): the same flag
    ///   on every `exec` instead;
    /// - smolvm 0.8.1–0.9.x (no secret flags): `--env=KEY` without a value on every `exec`,
    ///   which makes smolvm copy KEY from its own environment, where this crate puts it.
    ///   KEY must then not be a variable smolvm itself reads (`HOME`, `PATH`, `TMPDIR`,
    ///   `XDG_*`, `SMOLVM_*`, `RUST_*`, `LD_*`, …); 0.8.0 cannot take secrets at all
    ///   ([`Error::Unsupported`]).
    ///
    /// The guest process still sees the value in its environment, and output that quotes
    /// it is scrubbed like [`CreateOptions::env`] values (from 4 bytes).
    pub fn secret_env(mut self, key: impl Into<String>, value: impl Into<String>) -> CreateOptions {
        self.secret_env.push((key.into(), value.into()));
        self
    }

    /// Attach a label (`--label K=V`, smolvm ≥ 1.8.0; not sent to older versions).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> CreateOptions {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// vCPUs (`--cpus`, 1–255; smolvm's default is 4, and it runs at most 16).
    pub fn cpus(mut self, cpus: u32) -> CreateOptions {
        self.cpus = Some(cpus);
        self
    }

    /// Memory ceiling in MiB (`--mem`, at least 64; smolvm's default is 8192, a ceiling
    /// backed by a balloon, not a reservation).
    pub fn mem_mib(mut self, mib: u32) -> CreateOptions {
        self.mem_mib = Some(mib);
        self
    }

    /// Size of the sparse storage disk in GiB (`--storage`, default 20).
    pub fn storage_gib(mut self, gib: u32) -> CreateOptions {
        self.storage_gib = Some(gib);
        self
    }

    /// Size of the sparse overlay disk in GiB (`--overlay`, default 10).
    pub fn overlay_gib(mut self, gib: u32) -> CreateOptions {
        self.overlay_gib = Some(gib);
        self
    }

    /// Publish a guest TCP port on the host (`--port HOST:GUEST`): smolvm ≥ 1.1 listens on
    /// `127.0.0.1:HOST` (and `[::1]`) from `start`; 0.8.x (TSI) binds the host port when the
    /// guest server listens, at the guest's own address. Neither side may be 0, nor a host
    /// port given twice. For a free host port picked for you, see
    /// [`MachineBuilder::publish`](crate::MachineBuilder::publish).
    pub fn port(mut self, host: u16, guest: u16) -> CreateOptions {
        self.ports.push(PortMapping { host, guest });
        self
    }

    /// Mount a host directory read-write at `guest` (`--volume HOST:GUEST`, virtiofs). The
    /// host directory must exist; it is sent absolute and canonical. The guest path must be
    /// absolute.
    pub fn volume(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> CreateOptions {
        self.volumes.push(Volume {
            host: host.into(),
            guest: guest.into(),
            read_only: false,
        });
        self
    }

    /// Mount a host directory read-only at `guest` (`--volume HOST:GUEST:ro`); as
    /// [`CreateOptions::volume`] otherwise.
    pub fn volume_ro(
        mut self,
        host: impl Into<PathBuf>,
        guest: impl Into<String>,
    ) -> CreateOptions {
        self.volumes.push(Volume {
            host: host.into(),
            guest: guest.into(),
            read_only: true,
        });
        self
    }

    /// Pass `machine create` flags this crate does not model (e.g. `["--dns", "9.9.9.9"]`,
    /// `["--gpu"]`, `["--init", "apk add curl"]`), appended after the crate's own flags.
    /// Every guarantee of the crate still holds: cleanup, the machine cap, generated names
    /// and ownership labels are decided around them. The flags the crate owns are refused
    /// with [`Error::InvalidInput`] naming the method to use instead (`--name`, `--image`,
    /// `--from`, `--label`, `--net`, `--allow-cidr`, `--allow-host`, `--env`,
    /// `--secret-env`, `--cpus`, `--mem`, `--storage`, `--overlay`, `--port`, `--volume`,
    /// their short forms, and `--`); so are empty words and NUL. Whether the installed
    /// smolvm knows a flag is smolvm's to say (exit 2, an [`Error::Failed`]). Values are
    /// shown as given in messages and transcripts: do not put secrets here.
    pub fn extra_args<I, S>(mut self, args: I) -> CreateOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The labels, in the order given.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// The published ports, in the order given.
    pub fn ports(&self) -> &[PortMapping] {
        &self.ports
    }

    /// The same options without published ports.
    pub(crate) fn without_ports(mut self) -> CreateOptions {
        self.ports.clear();
        self
    }

    /// Whether an egress policy (`allow_cidr`, `allow_host`) is asked for.
    pub(crate) fn restricts_egress(&self) -> bool {
        !self.allow_cidrs.is_empty() || !self.allow_hosts.is_empty()
    }

    /// The non-empty env and secret values: the client remembers them per machine to scrub
    /// them from output quoted later (a guest can print its env).
    pub(super) fn env_values(&self) -> Vec<String> {
        self.env
            .iter()
            .chain(&self.secret_env)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match &self.source {
            Source::Image(image) => validate_image(image)?,
            Source::FromPath(p) => {
                path_arg("from path", p)?;
                if !p.is_file() {
                    return Err(Error::invalid(
                        "from path",
                        format!(
                            "{} is not a file (expected a .smolmachine made by `pack create`)",
                            p.display()
                        ),
                    ));
                }
            }
        }
        for c in &self.allow_cidrs {
            validate_cidr(c)?;
        }
        for h in &self.allow_hosts {
            validate_allow_host(h)?;
        }
        for (k, v) in self.env.iter().chain(&self.secret_env) {
            validate_env_key(k)?;
            validate_env_value(k, v)?;
        }
        validate_secret_keys(&self.secret_env)?;
        for (k, v) in &self.labels {
            validate_label(k, v)?;
        }
        validate_resources(self.cpus, self.mem_mib, self.storage_gib, self.overlay_gib)?;
        let ports: Vec<(u16, u16)> = self.ports.iter().map(|p| (p.host, p.guest)).collect();
        validate_ports(&ports)?;
        for (i, v) in self.volumes.iter().enumerate() {
            validate_volume(&v.host, &v.guest)?;
            if self.volumes[..i].iter().any(|o| o.guest == v.guest) {
                return Err(Error::invalid(
                    "volume",
                    format!("guest path {:?} is mounted twice", v.guest),
                ));
            }
        }
        validate_extra_args(&self.extra_args)?;
        Ok(())
    }

    /// What this smolvm version cannot do safely with these options, refused before any
    /// side effect.
    pub(crate) fn check_version(&self, dialect: Dialect) -> Result<()> {
        if let Source::FromPath(_) = self.source {
            if self.restricts_egress() && !dialect.from_keeps_egress {
                return Err(Error::Unsupported {
                    what: "--from together with --allow-cidr or --allow-host",
                    version: dialect.version,
                    reason: "smolvm before 1.8.0 silently drops the egress policy of a \
                             machine created --from a pack (0.8.0 with --net even grants \
                             unrestricted network); upgrade smolvm to 1.8.0 or later, or \
                             create from an image",
                });
            }
        }
        check_secrets_version(&self.secret_env, dialect)?;
        if self.restricts_egress()
            && !dialect.enforces_egress
            && crate::config::config()?.strict_egress
        {
            return Err(Error::Unsupported {
                what: "an egress policy (--allow-cidr, --allow-host)",
                version: dialect.version,
                reason: "smolvm before 1.1.3 does not enforce it (the TSI backend ignores \
                         the allow-list; upstream fix f8f7d148), and \
                         SMOLVM_HARNESS_STRICT_EGRESS=1 refuses to pretend; upgrade smolvm \
                         to 1.1.3 or later",
            });
        }
        if !dialect.volume_split_right {
            if let Some(v) = self
                .volumes
                .iter()
                .find(|v| v.host.to_string_lossy().contains(':'))
            {
                return Err(Error::invalid(
                    "volume",
                    format!(
                        "host path {} contains `:`, which smolvm {} splits on (from 1.4.0 \
                         it splits from the right)",
                        v.host.display(),
                        dialect.version
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The exact argv for `dialect` (after validation).
    pub(crate) fn argv(&self, name: &str, dialect: Dialect) -> Result<Vec<String>> {
        self.check_version(dialect)?;
        let mut args = strings(&["machine", "create"]);
        if dialect.name_flag {
            args.extend(strings(&["--name", name]));
        }
        match &self.source {
            Source::Image(image) => args.extend(strings(&["--image", image])),
            Source::FromPath(p) => {
                args.push("--from".into());
                args.push(path_arg("from path", p)?);
            }
        }
        if self.net || self.restricts_egress() {
            args.push("--net".into());
        }
        for c in &self.allow_cidrs {
            args.push("--allow-cidr".into());
            args.push(c.clone());
        }
        for h in &self.allow_hosts {
            args.push("--allow-host".into());
            args.push(h.clone());
        }
        let sizes = [
            ("--cpus", self.cpus),
            ("--mem", self.mem_mib),
            ("--storage", self.storage_gib),
            ("--overlay", self.overlay_gib),
        ];
        for (flag, value) in sizes {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v.to_string());
            }
        }
        for p in &self.ports {
            args.push("--port".into());
            args.push(format!("{}:{}", p.host, p.guest));
        }
        for v in &self.volumes {
            let host = validate_volume(&v.host, &v.guest)?;
            let host = path_arg("volume host path", &host)?;
            args.push("--volume".into());
            args.push(if v.read_only {
                format!("{host}:{}:ro", v.guest)
            } else {
                format!("{host}:{}", v.guest)
            });
        }
        for (k, v) in &self.env {
            args.push(format!("--env={k}={v}"));
        }
        for (k, host_var) in self.create_secret_refs(dialect) {
            args.push("--secret-env".into());
            args.push(format!("{k}={host_var}"));
        }
        if dialect.labels {
            for (k, v) in &self.labels {
                args.push("--label".into());
                args.push(format!("{k}={v}"));
            }
        }
        args.extend(self.extra_args.iter().cloned());
        if !dialect.name_flag {
            if !self.extra_args.is_empty() {
                // An extra flag that takes a value must not take the name instead.
                args.push("--".into());
            }
            args.push(name.to_string());
        }
        Ok(args)
    }

    /// How this machine's secrets reach it under `dialect`: as refs stored at create (whose
    /// host variables every later start and exec must carry), or per exec.
    pub(super) fn secret_plan(&self, dialect: Dialect) -> SecretPlan {
        if self.stores_secret_refs(dialect) {
            SecretPlan {
                host_vars: self
                    .secret_env
                    .iter()
                    .map(|(k, v)| (host_var("SECRET", k), v.clone()))
                    .collect(),
                per_exec: Vec::new(),
            }
        } else {
            SecretPlan {
                host_vars: Vec::new(),
                per_exec: self.secret_env.clone(),
            }
        }
    }

    fn stores_secret_refs(&self, dialect: Dialect) -> bool {
        dialect.secret_env && matches!(self.source, Source::Image(_))
    }

    fn create_secret_refs(&self, dialect: Dialect) -> Vec<(String, String)> {
        if !self.stores_secret_refs(dialect) {
            return Vec::new();
        }
        self.secret_env
            .iter()
            .map(|(k, _)| (k.clone(), host_var("SECRET", k)))
            .collect()
    }
}

/// Options of `machine fork`: what one clone gets on top of its golden (smolvm ≥ 1.7.0 for
/// both; the crate forks only from 1.7.6).
///
/// ```
/// use smolvm_harness::ForkOptions;
/// let opts = ForkOptions::default().env("TEST_ID", "7").secret_env("TOKEN", "per-clone-secret");
/// assert!(!format!("{opts:?}").contains("per-clone-secret"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct ForkOptions {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) secret_env: Vec<(String, String)>,
}

impl fmt::Debug for ForkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret_keys: Vec<&str> = self.secret_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ForkOptions")
            .field("env", &redacted_env(&self.env))
            .field("secret_env_keys", &secret_keys)
            .finish()
    }
}

impl ForkOptions {
    /// A guest environment variable for this clone (`fork --env=K=V`): replaces the golden's
    /// of the same key for every later exec, and is written to `/etc/smolvm/fork-env` in the
    /// clone. smolvm stores it in the clone's record in plain text: for a secret use
    /// [`ForkOptions::secret_env`]. Keys must match `[A-Za-z_][A-Za-z0-9_]*`, values hold no
    /// newline (smolvm's rules for fork env).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ForkOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A secret for this clone (`fork --secret-env KEY=HOSTVAR`, the value only in the
    /// environment of the smolvm processes that need it), as
    /// [`CreateOptions::secret_env`] does for a machine.
    pub fn secret_env(mut self, key: impl Into<String>, value: impl Into<String>) -> ForkOptions {
        self.secret_env.push((key.into(), value.into()));
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.env.is_empty() && self.secret_env.is_empty()
    }

    /// The env pairs, in order.
    pub(crate) fn env_pairs(&self) -> &[(String, String)] {
        &self.env
    }

    /// The secret pairs, in order.
    pub(crate) fn secret_pairs(&self) -> &[(String, String)] {
        &self.secret_env
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (k, v) in self.env.iter().chain(&self.secret_env) {
            if !is_identifier(k) {
                return Err(Error::invalid(
                    "fork env key",
                    format!("{k:?} must match [A-Za-z_][A-Za-z0-9_]*"),
                ));
            }
            if v.contains('\n') || v.contains('\r') || v.contains('\0') {
                return Err(Error::invalid(
                    "fork env value",
                    format!("the value of {k:?} holds a newline or NUL (value not shown)"),
                ));
            }
        }
        validate_secret_keys(&self.secret_env)
    }

    /// The argv of `machine fork` for a clone of `golden`, and the secret plan of the clone:
    /// the golden's (its record is copied into the clone) plus the clone's own refs.
    pub(super) fn argv(
        &self,
        golden: &str,
        clone: &str,
        dialect: Dialect,
        golden_plan: &SecretPlan,
    ) -> Result<(Vec<String>, SecretPlan)> {
        dialect.require(
            dialect.fork,
            "machine fork",
            "smolvm has fork from 1.0.0 (usable for repeated forks of one golden from 1.7.6)",
        )?;
        dialect.require(
            self.is_empty() || dialect.cascade,
            "fork --env/--secret-env",
            "per-clone env and secrets are in smolvm from 1.7.0",
        )?;
        let mut args = strings(&["machine", "fork"]);
        if dialect.name_flag {
            args.extend(strings(&["--golden", golden, "--name", clone]));
        } else {
            args.extend(strings(&[golden, clone]));
        }
        for (k, v) in &self.env {
            args.push(format!("--env={k}={v}"));
        }
        let mut plan = golden_plan.clone();
        for (k, v) in &self.secret_env {
            let var = host_var("CLONE_SECRET", k);
            args.push("--secret-env".into());
            args.push(format!("{k}={var}"));
            plan.host_vars.push((var, v.clone()));
        }
        Ok((args, plan))
    }

    /// The non-empty env and secret values, to scrub from the clone's output.
    pub(super) fn values(&self) -> Vec<String> {
        self.env
            .iter()
            .chain(&self.secret_env)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect()
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: smolvm's rule for fork env keys, and the keys that can name a
/// host variable as they are.
fn is_identifier(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
}

/// `KEY=VALUE` pairs for a smolvm process's environment.
pub(super) type EnvPairs = Vec<(String, String)>;

/// How a machine's secrets are delivered: `host_vars` (name, value) go into the environment
/// of every `start` and `exec`; `per_exec` (key, value) are passed as secrets of every
/// `exec`.
#[derive(Clone, Default)]
pub(super) struct SecretPlan {
    pub(super) host_vars: Vec<(String, String)>,
    pub(super) per_exec: Vec<(String, String)>,
}

/// The host variable smolvm reads a secret from: named after the key when the key is an
/// identifier (readable in `ps`), else after the key's bytes in hex, under another prefix
/// (`…_SECRETHEX_…`), so that no two keys of one machine ever share a variable.
fn host_var(kind: &str, key: &str) -> String {
    if is_identifier(key) {
        format!("SMOLVM_HARNESS_{kind}_{key}")
    } else {
        let hex: String = key.bytes().map(|b| format!("{b:02X}")).collect();
        format!("SMOLVM_HARNESS_{kind}HEX_{hex}")
    }
}

/// Variables smolvm (or the loader, or a Rust runtime) reads from its own environment: on
/// smolvm < 1.0.0 a secret is passed under its own key in that environment, so it must not
/// be one of these.
const HOST_ONLY_VARS: &[&str] = &[
    "HOME", "PATH", "TMPDIR", "USER", "SHELL", "PWD", "TZ", "LANG", "LANGUAGE",
];
const HOST_ONLY_PREFIXES: &[&str] = &["XDG_", "SMOLVM", "RUST_", "LD_", "DYLD_", "LC_"];

fn validate_secret_keys(secrets: &[(String, String)]) -> Result<()> {
    for (i, (k, _)) in secrets.iter().enumerate() {
        if secrets[..i].iter().any(|(o, _)| o == k) {
            return Err(Error::invalid(
                "secret env key",
                format!("{k:?} is given twice"),
            ));
        }
    }
    Ok(())
}

/// Secrets on a smolvm without `--secret-env` travel under their own key in smolvm's
/// environment (`--env=KEY`), which 0.8.0 does not read and which must not change smolvm.
fn check_secrets_version(secrets: &[(String, String)], dialect: Dialect) -> Result<()> {
    if secrets.is_empty() || dialect.secret_env {
        return Ok(());
    }
    if !dialect.env_from_host {
        return Err(Error::Unsupported {
            what: "secret_env",
            version: dialect.version,
            reason: "smolvm 0.8.0 has no way to pass a value off the command line (`-e KEY` \
                     copies from smolvm's environment only from 0.8.1; `--secret-env` is \
                     from 1.0.0); upgrade smolvm",
        });
    }
    for (k, _) in secrets {
        let host_only = HOST_ONLY_VARS.contains(&k.as_str())
            || HOST_ONLY_PREFIXES.iter().any(|p| k.starts_with(p));
        if host_only {
            return Err(Error::invalid(
                "secret env key",
                format!(
                    "{k:?}: on smolvm {} a secret is passed in smolvm's own environment under \
                     its key, and smolvm (or its loader or runtime) may read {k} itself; use \
                     another key (or smolvm ≥ 1.0.0)",
                    dialect.version
                ),
            ));
        }
    }
    Ok(())
}

/// Flags `CreateOptions` sets itself; an extra argument may not set them behind its back
/// (two `--name`s, a label that hides whose machine it is, an egress flag that skips the
/// version checks).
const OWNED_LONG: &[(&str, &str)] = &[
    ("--name", "MachineBuilder::name"),
    ("--image", "image"),
    ("--from", "from_path / from_pack"),
    ("--smolfile", "image"),
    ("--label", "label"),
    ("--net", "net"),
    ("--allow-cidr", "allow_cidr"),
    ("--allow-host", "allow_host"),
    ("--outbound-localhost-only", "allow_cidr(\"127.0.0.0/8\")"),
    ("--env", "env"),
    ("--secret-env", "secret_env"),
    ("--secret-file", "secret_env"),
    ("--cpus", "cpus"),
    ("--mem", "mem_mib"),
    ("--storage", "storage_gib"),
    ("--overlay", "overlay_gib"),
    ("--port", "port / publish"),
    ("--volume", "volume / volume_ro"),
];
const OWNED_SHORT: &[(char, &str)] = &[
    ('n', "--name"),
    ('I', "--image"),
    ('s', "--smolfile"),
    ('e', "--env"),
    ('p', "--port"),
    ('v', "--volume"),
];

fn validate_extra_args(args: &[String]) -> Result<()> {
    for a in args {
        if a.is_empty() || a.contains('\0') {
            return Err(Error::invalid(
                "extra create argument",
                format!("{a:?}: empty or contains NUL"),
            ));
        }
        if a == "--" {
            return Err(Error::invalid(
                "extra create argument",
                "`--` (a workload command) is not supported: it would swallow the flags after it",
            ));
        }
        if let Some(long) = a.strip_prefix("--") {
            let flag = format!("--{}", long.split('=').next().unwrap_or(long));
            if let Some((_, method)) = OWNED_LONG.iter().find(|(f, _)| *f == flag) {
                return Err(Error::invalid(
                    "extra create argument",
                    format!("{flag} is set by the crate; use {method}"),
                ));
            }
        } else if let Some(short) = a.strip_prefix('-') {
            // A cluster such as `-ep` sets each letter; a value attached to the first
            // (`-nNAME`) still starts with the flag letter.
            if let Some(c) = short.chars().next() {
                if let Some((_, long)) = OWNED_SHORT.iter().find(|(s, _)| *s == c) {
                    return Err(Error::invalid(
                        "extra create argument",
                        format!("-{c} ({long}) is set by the crate; use its method"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Options of `machine exec`.
///
/// ```
/// use std::time::Duration;
/// use smolvm_harness::ExecOptions;
/// let opts = ExecOptions::default()
///     .env("MODE", "test")
///     .workdir("/srv")
///     .timeout(Duration::from_secs(30));
/// # let _ = opts;
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct ExecOptions {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) secret_env: Vec<(String, String)>,
    pub(crate) workdir: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream: bool,
}

impl fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret_keys: Vec<&str> = self.secret_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ExecOptions")
            .field("env", &redacted_env(&self.env))
            .field("secret_env_keys", &secret_keys)
            .field("workdir", &self.workdir)
            .field("timeout", &self.timeout)
            .field("stream", &self.stream)
            .finish()
    }
}

impl ExecOptions {
    /// Set a guest environment variable for this command (overrides the machine's own by
    /// key). The value is redacted from every command line in messages, transcripts and
    /// logs; in quoted output it is scrubbed when it is 4 bytes or longer (see
    /// [`CommandLine::redact_output`](crate::error::CommandLine::redact_output)).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ExecOptions {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Set a secret guest environment variable for this command, kept off every command
    /// line: `--secret-env KEY=SMOLVM_HARNESS_EXEC_SECRET_KEY` with the value only in the
    /// smolvm process's environment (smolvm ≥ 1.0.0), or `--env=KEY` with KEY in that
    /// environment (0.8.1–0.9.x; see [`CreateOptions::secret_env`] for the keys refused
    /// there). Overrides a machine secret or env of the same key.
    pub fn secret_env(mut self, key: impl Into<String>, value: impl Into<String>) -> ExecOptions {
        self.secret_env.push((key.into(), value.into()));
        self
    }

    /// Run in this guest directory (`-w`).
    pub fn workdir(mut self, dir: impl Into<String>) -> ExecOptions {
        self.workdir = Some(dir.into());
        self
    }

    /// Guest-side timeout (`--timeout`): smolvm kills the command and reports exit 124.
    /// At least 1 ms; sent in whole milliseconds or seconds; longer than
    /// [`MAX_TIMEOUT`](crate::validate::MAX_TIMEOUT) (365 days) is sent as 365 days.
    pub fn timeout(mut self, timeout: Duration) -> ExecOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Ask smolvm to stream the output (`--stream`) instead of buffering it in the agent.
    /// Needed for output over 11 MiB per stream, which smolvm ≥ 1.0 otherwise refuses (exit 1)
    /// and 0.8.x silently truncates; it also keeps stdout and stderr from being reordered.
    /// The crate still captures everything and returns it when the command ends. Over the
    /// `smolvm serve` API (`SMOLVM_HOST`) it changes nothing: the exec route answers once,
    /// buffered.
    pub fn stream(mut self) -> ExecOptions {
        self.stream = true;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (k, v) in self.env.iter().chain(&self.secret_env) {
            validate_env_key(k)?;
            validate_env_value(k, v)?;
        }
        validate_secret_keys(&self.secret_env)?;
        if let Some(dir) = &self.workdir {
            if dir.is_empty() || dir.contains('\0') {
                return Err(Error::invalid("workdir", format!("{dir:?}")));
            }
        }
        if let Some(t) = self.timeout {
            format_timeout(t)?;
        }
        Ok(())
    }

    /// The exact argv of `machine exec` running `command` in `name` (after validation), and
    /// the smolvm process env that carries the secrets: the machine's own (`machine`, from
    /// its create) first, then this command's, which win by key.
    pub(super) fn argv<S: AsRef<str>>(
        &self,
        name: &str,
        command: &[S],
        dialect: Dialect,
        machine: &SecretPlan,
    ) -> Result<(Vec<String>, EnvPairs)> {
        let mut secrets: Vec<(String, String)> = machine
            .per_exec
            .iter()
            .filter(|(k, _)| {
                !self.secret_env.iter().any(|(o, _)| o == k)
                    && !self.env.iter().any(|(o, _)| o == k)
            })
            .cloned()
            .collect();
        secrets.extend(self.secret_env.iter().cloned());
        check_secrets_version(&secrets, dialect)?;
        let mut env = machine.host_vars.clone();
        let mut args = strings(&["machine", "exec", "--name", name]);
        if let Some(dir) = &self.workdir {
            // The attached form keeps a directory that starts with `-` from being read as a flag.
            if dir.starts_with('-') {
                args.push(format!("-w={dir}"));
            } else {
                args.push("-w".into());
                args.push(dir.clone());
            }
        }
        if let Some(t) = self.timeout {
            args.push("--timeout".into());
            args.push(format_timeout(t)?);
        }
        if self.stream {
            args.push("--stream".into());
        }
        for (k, v) in &self.env {
            args.push(format!("--env={k}={v}"));
        }
        for (k, v) in &secrets {
            if dialect.secret_env {
                let var = host_var("EXEC_SECRET", k);
                args.push("--secret-env".into());
                args.push(format!("{k}={var}"));
                env.push((var, v.clone()));
            } else {
                args.push(format!("--env={k}"));
                env.push((k.clone(), v.clone()));
            }
        }
        args.push("--".into());
        args.extend(command.iter().map(|a| a.as_ref().to_string()));
        Ok((args, env))
    }

    /// The env and secret values of this command, to scrub from what is quoted of its
    /// machine.
    pub(super) fn values_to_scrub(&self) -> Vec<String> {
        self.env
            .iter()
            .chain(&self.secret_env)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// The guest-side timeout, if one was set.
    pub(super) fn guest_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// Owned argv words.
pub(super) fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// A path as one argv word: smolvm's argv is UTF-8, and no argv can carry NUL.
pub(super) fn path_arg(what: &'static str, p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::invalid(what, format!("{} is not valid UTF-8", p.display())))?;
    if s.contains('\0') {
        return Err(Error::invalid(what, format!("{s:?} contains NUL")));
    }
    Ok(s.to_string())
}

fn redacted_env(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .map(|(k, _)| format!("{k}={}", crate::error::REDACTED))
        .collect()
}
