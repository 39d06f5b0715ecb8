//! What each parsed command does to the machine state, with smolvm's exact outputs (§7).
//!
//! Runs under the state lock, so it never sleeps: `exec` hands back a [`GuestJob`] that the
//! caller runs after the lock is released.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::grammar::{
    parse_env_spec, parse_labels, validate_name, Command, CreateArgs, ExecArgs, Features, ForkArgs,
    PackArgs,
};
use super::guest::{Effect, GuestJob};
use super::net::{self, Bound, HostNet};
use super::state::{
    data_dir_hash, Listener, Manifest, SimMachine, SimMount, SimSecretRef, SimState, State,
    DEFAULT_CPUS, DEFAULT_MEM_MIB,
};
use super::SimOutput;

/// Inputs of a command that do not come from argv or the state.
pub(crate) struct Ctx<'a> {
    pub(crate) features: Features,
    pub(crate) now_secs: u64,
    /// smolvm's own environment, for `-e KEY` (v0.8.1+) and secret refs.
    pub(crate) lookup_env: &'a dyn Fn(&str) -> Option<String>,
    /// The answer to delete's `[y/N]` prompt (read before the lock was taken).
    pub(crate) delete_confirmed: bool,
    /// Seeds generated machine names.
    pub(crate) entropy: u64,
    /// Data directories live in `DATA_ROOT/vms/<hash>/`.
    pub(crate) data_root: &'a Path,
    /// Who serves published ports.
    pub(crate) net: &'a dyn HostNet,
}

/// A machine's data directory (`vms/<first 16 hex of sha256(name)>`).
pub(crate) fn data_dir_path(root: &Path, name: &str) -> PathBuf {
    root.join("vms").join(data_dir_hash(name))
}

/// smolvm's agent manager makes the data directory of every name it touches (§0.7).
fn ensure_data_dir(state: &mut State, name: &str, ctx: &Ctx<'_>) -> PathBuf {
    state.data_dirs.insert(name.to_string());
    let dir = data_dir_path(ctx.data_root, name);
    // Best effort: a directory that cannot be made shows up as a missing console log.
    let _ = fs::create_dir_all(&dir);
    dir
}

const CONSOLE_LOG: &str = "agent-console.log";

fn append_console(ctx: &Ctx<'_>, name: &str, bytes: &[u8]) {
    let path = data_dir_path(ctx.data_root, name).join(CONSOLE_LOG);
    let _ = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes));
}

/// The boot lines of the console log: appended across boots before 1.7.0, a fresh file at
/// every boot after (§7).
fn boot_console(ctx: &Ctx<'_>, name: &str, boot: u64) {
    let text = format!(
        "[    0.000000] Linux version 6.12.0-smolvm-sim (sim@smolvm-harness) #1 SMP PREEMPT_DYNAMIC\n\
         [    0.000000] Command line: console=hvc0 quiet\n\
         [    0.081734] virtio_blk virtio1: [vda] 41943040 512-byte logical blocks\n\
         [    0.132857] smolvm-agent: starting (machine '{name}', boot {boot})\n\
         [    0.158210] smolvm-agent: ready\n"
    );
    if ctx.features.console_truncated_each_boot() {
        let path = data_dir_path(ctx.data_root, name).join(CONSOLE_LOG);
        let _ = fs::write(path, text);
    } else {
        append_console(ctx, name, text.as_bytes());
    }
}

/// The result of applying a command under the lock.
#[derive(Debug)]
pub(crate) enum Step {
    /// Finished; print this.
    Done(SimOutput),
    /// `exec` on a running machine: run this guest outside the lock.
    Guest(GuestJob),
}

fn out(code: i32, stdout: impl Into<String>, stderr: impl Into<String>) -> SimOutput {
    SimOutput {
        code,
        stdout: stdout.into().into_bytes(),
        stderr: stderr.into().into_bytes(),
    }
}

fn ok(stdout: impl Into<String>) -> SimOutput {
    out(0, stdout, "")
}

/// A runtime error: exit 1, one `Error: …` line, after whatever was already printed.
fn error(stdout: impl Into<String>, msg: impl AsRef<str>) -> SimOutput {
    out(1, stdout, format!("Error: {}\n", msg.as_ref()))
}

fn not_found(name: &str) -> SimOutput {
    error("", format!("vm not found: {name}"))
}

fn invalid_name(reason: &str) -> SimOutput {
    error(
        "",
        format!("config operation failed: validate machine name: {reason}"),
    )
}

fn not_running(name: &str) -> SimOutput {
    error(
        "",
        format!(
            "agent operation failed: connect: machine '{name}' is not running. Use 'smolvm \
             machine start --name {name}' first."
        ),
    )
}

/// Exec or cp into a golden after its first fork: the VM is paused, its agent never answers
/// (smolvm would fail to connect or hang; the simulation's words).
fn frozen_error(name: &str) -> SimOutput {
    error(
        "",
        format!(
            "agent operation failed: connect: machine '{name}' is frozen as a fork base: its VM \
             is paused and its agent does not answer"
        ),
    )
}

/// A clone whose golden was deleted with `-f`: its copy-on-write disks lost their backing
/// files (the simulation's words).
fn broken_error(op: &str, m: &SimMachine) -> SimOutput {
    error(
        "",
        format!(
            "agent operation failed: {op}: clone disk: backing file of clone '{}' is gone: \
             golden '{}' was deleted (No such file or directory (os error 2))",
            m.name,
            m.golden.as_deref().unwrap_or("")
        ),
    )
}

/// The clones of `golden` that still depend on it (a broken clone no longer does), by name;
/// `running_only` counts only live ones.
fn clones_of(state: &State, golden: &str, running_only: bool) -> Vec<String> {
    state
        .machines
        .iter()
        .filter(|m| m.golden.as_deref() == Some(golden) && !m.broken)
        .filter(|m| !running_only || m.state == SimState::Running)
        .map(|m| m.name.clone())
        .collect()
}

/// Apply one command to the state.
pub(crate) fn apply(cmd: &Command, state: &mut State, ctx: &Ctx<'_>) -> Step {
    let f = ctx.features;
    Step::Done(match cmd {
        Command::Version => ok(format!("smolvm {}\n", f.version)),
        Command::Help(text) => ok(text.clone()),
        Command::NotSimulated(what) => error("", format!("sim: subcommand not simulated: {what}")),
        Command::Pack(p) => pack(p),
        Command::Create(c) => create(c, state, ctx),
        Command::Start { name, forkable } => start(name.as_deref(), *forkable, state, ctx),
        Command::Stop { name } => stop(name.as_deref().unwrap_or("default"), state, ctx),
        Command::Delete {
            name,
            force,
            cascade,
        } => delete(name, *force, *cascade, state, ctx),
        Command::Fork(a) => fork(a, state, ctx),
        Command::Exec(e) => return exec(e, state, ctx),
        Command::Cp { src, dst } => cp(src, dst, state, ctx),
        Command::Ls { json, verbose } => ls(*json, *verbose, state, f),
        Command::Status { name, json } => {
            status(name.as_deref().unwrap_or("default"), *json, state, ctx)
        }
        Command::DataDir { name } => data_dir(name, state, ctx),
    })
}

/// A local image (path or archive) needs no registry, hence no network (`classify`).
fn is_local_image(image: &str) -> bool {
    image == "-"
        || image.starts_with('/')
        || image.starts_with("./")
        || image.starts_with("../")
        || [".tar", ".tar.gz", ".tgz"]
            .iter()
            .any(|s| image.ends_with(s))
}

fn generate_name(state: &mut State, entropy: u64) -> String {
    loop {
        state.name_seq += 1;
        // splitmix64: cheap, and good enough that two runs rarely collide.
        let mut z = entropy ^ state.name_seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let name = format!("vm-{:08x}", z as u32);
        if state.get(&name).is_none() {
            return name;
        }
    }
}

fn create(a: &CreateArgs, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    let f = ctx.features;
    let labels = if f.labels() {
        match parse_labels(&a.labels) {
            Ok(l) => l,
            Err(e) => return error("", format!("config operation failed: {e}")),
        }
    } else {
        Default::default()
    };
    let env: Vec<(String, String)> = a
        .env
        .iter()
        .filter_map(|s| parse_env_spec(s, f, ctx.lookup_env))
        .collect();
    let name = match &a.name {
        Some(n) => n.clone(),
        None => generate_name(state, ctx.entropy),
    };
    if let Err(e) = validate_name(&name) {
        return error("", format!("config operation failed: create machine: {e}"));
    }
    // `--from` before v1.8.0 drops the egress flags unread (§0.2), and ignores secret refs in
    // every version (§2.5).
    let from = a.from.is_some();
    let egress = !from || f.keeps_egress_with_from();
    let mut host_cidrs = Vec::new();
    if egress {
        for host in &a.allow_hosts {
            match resolve_host(host) {
                Ok(c) => host_cidrs.extend(c),
                Err(e) => {
                    return error("", format!("config operation failed: --allow-host: {e}"));
                }
            }
        }
    }
    // v0.8.x `--from` skips `resources.validate()` (§5); the simulation validates on both
    // paths from v1.0.0.
    let mut warning = String::new();
    if !from || f.v1() {
        match validate_resources(a) {
            Ok(w) => warning = w,
            Err(e) => {
                return error(
                    "",
                    format!("config operation failed: validate resources: {e}"),
                )
            }
        }
    }
    let mounts = match parse_volumes(&a.volumes, f) {
        Ok(m) => m,
        Err(e) => return error("", e),
    };
    let mut seen_ports = std::collections::BTreeSet::new();
    for (host, _) in &a.ports {
        if !seen_ports.insert(*host) {
            return error(
                "",
                format!(
                    "config operation failed: validate ports: duplicate host port {host}: each \
                     host port can only be mapped once"
                ),
            );
        }
    }
    let secret_refs = if f.secrets() && !from {
        match parse_secret_refs(&a.secret_env, &a.secret_file) {
            Ok(r) => r,
            Err(e) => return error("", format!("config operation failed: {e}")),
        }
    } else {
        BTreeMap::new()
    };
    if f.registry_needs_network() {
        if let Some(image) = &a.image {
            let intent = a.net
                || !a.cidrs.is_empty()
                || !a.allow_hosts.is_empty()
                || !a.ports.is_empty()
                || a.dns.is_some();
            if !is_local_image(image) && !intent {
                return error(
                    "",
                    format!(
                        "config operation failed: create machine: image '{image}' must be \
                         pulled from a registry, but this machine has no network, so the pull \
                         can never succeed. Add --net (or publish a port with -p, or set an \
                         egress policy with --allow-cidr/--allow-host). To keep the machine \
                         network-isolated, supply the image locally instead: `docker save \
                         {image} | smolvm machine create --image - ...`"
                    ),
                );
            }
        }
    }
    let duplicate = if state.get(&name).is_none() {
        None
    } else if f.v1() {
        Some(format!(
            "config operation failed: create machine: machine '{name}' already exists or is \
             being created"
        ))
    } else {
        Some(format!(
            "config operation failed: create machine: machine '{name}' already exists"
        ))
    };
    // From v1.0.0 the name is reserved before anything else happens.
    if let (true, Some(msg)) = (f.v1(), &duplicate) {
        return error("", msg);
    }
    let mut all_cidrs = host_cidrs;
    all_cidrs.extend(a.cidrs.iter().cloned());
    let cidrs = (!all_cidrs.is_empty()).then_some(all_cidrs);
    let mut stdout = String::new();
    let mut m = SimMachine::new(name.clone(), ctx.now_secs);
    if let Some(path) = &a.from {
        if !Path::new(path).exists() {
            return error(
                stdout,
                format!(
                    "config operation failed: create from .smolmachine: file not found: {path}"
                ),
            );
        }
        // v0.8.0 extracts before it notices the name is taken.
        stdout.push_str("Extracting .smolmachine assets...\n");
        let Some(manifest) = fs::read(path).ok().and_then(|b| Manifest::from_bytes(&b)) else {
            return error(
                stdout,
                format!(
                    "config operation failed: create from .smolmachine: invalid .smolmachine \
                     file: {path} (the simulation reads only packs written by its own `pack \
                     create`)"
                ),
            );
        };
        if let Some(msg) = duplicate {
            return error(stdout, msg);
        }
        m.image = Some(manifest.image);
        m.from = Some(path.clone());
        // `-w` is ignored with --from; the pack's workdir wins.
        m.workdir = manifest.workdir;
        // Flags override the pack only when they differ from the defaults.
        m.cpus = a
            .cpus
            .filter(|&c| c != DEFAULT_CPUS)
            .unwrap_or(manifest.cpus);
        m.memory_mib = a
            .mem
            .filter(|&c| c != DEFAULT_MEM_MIB)
            .unwrap_or(manifest.memory_mib);
        m.env = manifest.env;
        m.env.extend(env);
        if egress {
            m.network = a.net || manifest.network || cidrs.is_some() || a.dns.is_some();
            m.allowed_cidrs = cidrs;
            m.allowed_hosts = a.allow_hosts.clone();
        } else {
            // Before v1.8.0 the egress flags are dropped without a word (§0.2).
            m.network = a.net || manifest.network || a.dns.is_some();
            m.allowed_cidrs = None;
        }
    } else {
        if let Some(msg) = duplicate {
            return error(stdout, msg);
        }
        m.image = a.image.clone();
        m.cpus = a.cpus.unwrap_or(DEFAULT_CPUS);
        m.memory_mib = a.mem.unwrap_or(DEFAULT_MEM_MIB);
        m.env = env;
        m.workdir = a.workdir.clone();
        m.network = a.net || cidrs.is_some() || a.dns.is_some();
        m.allowed_cidrs = cidrs;
        m.allowed_hosts = a.allow_hosts.clone();
    }
    m.storage_gb = a.storage;
    m.overlay_gb = a.overlay;
    m.ports = a.ports.clone();
    m.mounts = mounts;
    m.secret_refs = secret_refs;
    m.dns = a.dns.clone();
    m.labels = labels;
    m.cmd = a.command.clone();
    state.machines.push(m);
    stdout.push_str(&format!("Created machine: {name}\n"));
    out(0, stdout, warning)
}

/// `VmResources::validate` (§5); `Ok` carries the over-16-vCPU warning, if any.
fn validate_resources(a: &CreateArgs) -> Result<String, String> {
    let cpus = a.cpus.unwrap_or(DEFAULT_CPUS);
    let mem = a.mem.unwrap_or(DEFAULT_MEM_MIB);
    if cpus == 0 {
        return Err("CPU count must be at least 1".into());
    }
    if mem < 64 {
        return Err(format!("memory must be at least 64 MiB (got {mem} MiB)"));
    }
    if a.storage == Some(0) {
        return Err("storage disk size must be greater than 0 GiB".into());
    }
    if a.overlay == Some(0) {
        return Err("overlay disk size must be greater than 0 GiB".into());
    }
    Ok(if cpus > 16 {
        format!(
            "warning: requested {cpus} vCPUs but the hypervisor supports at most 16; the VM \
             will run with 16 vCPUs\n"
        )
    } else {
        String::new()
    })
}

/// `--allow-host`, resolved without touching the network: an IP literal as-is; `localhost`
/// as 127.0.0.1 and ::1; a name under `.invalid` fails as an unknown name does; any other
/// name gets a stable address in 198.18.0.0/15 (the benchmarking range, never routed),
/// derived from the name.
pub(crate) fn resolve_host(host: &str) -> Result<Vec<String>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(vec![format!("{ip}/{len}")]);
    }
    if host.contains(':') {
        return Err(format!(
            "invalid hostname '{host}': port suffixes are not supported. Use the hostname only \
             (all ports are allowed to resolved IPs)."
        ));
    }
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let well_formed = !lower.is_empty()
        && lower.len() <= 253
        && lower.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !well_formed || lower == "invalid" || lower.ends_with(".invalid") {
        return Err(format!(
            "failed to resolve '{host}': failed to lookup address information: Name or service \
             not known"
        ));
    }
    if lower == "localhost" {
        return Ok(vec!["127.0.0.1/32".into(), "::1/128".into()]);
    }
    Ok(vec![format!("{}/32", sim_address(&lower))])
}

/// The simulated DNS answer for `name`: FNV-1a folded into 198.18.0.0/15.
pub(crate) fn sim_address(name: &str) -> std::net::Ipv4Addr {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
    std::net::Ipv4Addr::from(base + (h as u32 & 0x1_ffff))
}

/// `-v HOST:GUEST[:ro|:rw]` (§4): parsed and validated at run time, errors exit 1.
fn parse_volumes(specs: &[String], f: Features) -> Result<Vec<SimMount>, String> {
    let mut mounts: Vec<SimMount> = Vec::new();
    for spec in specs {
        let bad = || {
            format!("invalid mount path: invalid format '{spec}' (expected host:guest[:ro|:rw])")
        };
        let (host, guest, read_only) = if f.volume_split_from_right() {
            let (rest, ro) = match spec.rsplit_once(':') {
                Some((r, "ro")) => (r, true),
                Some((r, "rw")) => (r, false),
                _ => (spec.as_str(), false),
            };
            let (h, g) = rest.rsplit_once(':').ok_or_else(bad)?;
            (h, g, ro)
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.as_slice() {
                [h, g] => (*h, *g, false),
                [h, g, "ro"] => (*h, *g, true),
                [h, g, "rw"] => (*h, *g, false),
                _ => return Err(bad()),
            }
        };
        if host.is_empty() || guest.is_empty() {
            return Err(bad());
        }
        // Relative to the smolvm process's own working directory, then canonical.
        let canonical =
            fs::canonicalize(host).map_err(|_| format!("mount source not found: {host}"))?;
        let fail = |what: &str| format!("mount operation failed: {what}");
        if !canonical.is_dir() {
            return Err(fail(&format!(
                "validate host path: source path on host must be a directory (virtiofs \
                 limitation): {}",
                canonical.display()
            )));
        }
        if is_protected(&canonical, f) {
            return Err(fail(&format!(
                "validate host path: source path on host is a protected system path and cannot \
                 be mounted: {}",
                canonical.display()
            )));
        }
        if !guest.starts_with('/') {
            return Err(fail(&format!(
                "validate guest path: target path on guest should be an absolute directory: \
                 {guest}"
            )));
        }
        if mounts.iter().any(|m| m.target == guest) {
            return Err(fail(&format!(
                "validate mounts: duplicate mount target: {guest} is specified more than once"
            )));
        }
        mounts.push(SimMount {
            source: canonical.display().to_string(),
            target: guest.to_string(),
            read_only,
        });
    }
    Ok(mounts)
}

fn is_protected(path: &Path, f: Features) -> bool {
    if path == Path::new("/") || path == Path::new("/var") {
        return true;
    }
    let mut under = vec![
        "/var/run", "/var/log", "/etc", "/usr", "/bin", "/sbin", "/lib", "/proc", "/sys", "/dev",
        "/run",
    ];
    if f.protects_boot() {
        under.push("/boot");
    }
    under.iter().any(|p| path.starts_with(p))
}

/// `parse_cli_secret_refs` (§2.2): `--secret-env` first, then `--secret-file`, split at the
/// first `=`.
pub(crate) fn parse_secret_refs(
    env: &[String],
    file: &[String],
) -> Result<BTreeMap<String, SimSecretRef>, String> {
    let mut refs = BTreeMap::new();
    for (flag, specs) in [("--secret-env", env), ("--secret-file", file)] {
        for spec in specs {
            let Some((key, source)) = spec.split_once('=') else {
                return Err(format!("{flag}: expected KEY=VALUE, got '{spec}'"));
            };
            if key.is_empty() {
                return Err(format!("{flag}: empty secret name in '{spec}'"));
            }
            if refs.contains_key(key) {
                return Err(format!("{flag}: secret '{key}' specified more than once"));
            }
            let r = if flag == "--secret-env" {
                SimSecretRef::Env(source.to_string())
            } else {
                if !source.starts_with('/') {
                    return Err(format!(
                        "{flag}: secret '{key}': from_file path '{source}' is relative; \
                         absolute paths are required"
                    ));
                }
                SimSecretRef::File(source.to_string())
            };
            refs.insert(key.to_string(), r);
        }
    }
    Ok(refs)
}

/// Resolve secret refs from smolvm's own environment or files, each time (§2.3).
fn resolve_secrets(
    refs: &BTreeMap<String, SimSecretRef>,
    ctx: &Ctx<'_>,
) -> Result<Vec<(String, String)>, String> {
    const MAX_FROM_FILE_BYTES: u64 = 1024 * 1024;
    let mut out = Vec::new();
    for (key, r) in refs {
        let fail = |why: &str| format!("config operation failed: resolve secret '{key}': {why}");
        let value = match r {
            SimSecretRef::Env(var) => {
                match (!var.is_empty()).then(|| (ctx.lookup_env)(var)).flatten() {
                    Some(v) => v,
                    None => return Err(fail("env_unset")),
                }
            }
            SimSecretRef::File(path) => {
                // O_NOFOLLOW: a symlink leaf is refused.
                let meta = fs::symlink_metadata(path).map_err(|_| fail("file_read_failed"))?;
                if meta.file_type().is_symlink() || !meta.is_file() {
                    return Err(fail("file_read_failed"));
                }
                if meta.len() > MAX_FROM_FILE_BYTES {
                    return Err(fail("file_too_large"));
                }
                let bytes = fs::read(path).map_err(|_| fail("file_read_failed"))?;
                let text = String::from_utf8_lossy(&bytes);
                text.trim_end_matches(['\r', '\n']).to_string()
            }
        };
        out.push((key.clone(), value));
    }
    Ok(out)
}

fn start(name: Option<&str>, forkable: bool, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    let f = ctx.features;
    let explicit = name.is_some();
    let name = name.unwrap_or("default");
    if state.get(name).is_none() {
        if explicit {
            // A DB lookup comes first, so an invalid name is simply "not found" (§3).
            return not_found(name);
        }
        // Without --name, smolvm creates and starts a default machine.
        state
            .machines
            .push(SimMachine::new(name.to_string(), ctx.now_secs));
    }
    ensure_data_dir(state, name, ctx);
    let pid = state.next_pid;
    let Some(m) = state.get(name) else {
        return not_found(name);
    };
    // A frozen golden's VMM is alive (paused): before 1.3.0 start sees it running.
    let frozen_guard = m.state == SimState::Frozen && f.frozen_state();
    if m.state.vmm_alive() && !frozen_guard {
        // `--forkable` is ignored here (§1.2).
        return ok(format!(
            "Machine '{name}' already running (PID: {})\n",
            m.pid.unwrap_or_default()
        ));
    }
    if frozen_guard {
        let clones = clones_of(state, name, true);
        return error(
            "",
            if clones.is_empty() {
                format!(
                    "'{name}' is frozen because it retains a reusable fork checkpoint; stop it \
                     before restarting, or fork it again"
                )
            } else {
                format!(
                    "'{name}' is frozen because it is the fork base for {} live clone(s) ({})",
                    clones.len(),
                    clones.join(", ")
                )
            },
        );
    }
    if m.broken {
        return broken_error("start machine", m);
    }
    // Secret refs are resolved at every start, for the init and workload env (§2.3).
    if let Err(e) = resolve_secrets(&m.secret_refs, ctx) {
        return error("", e);
    }
    let boot = m.boots + 1;
    let ports = m.ports.clone();
    let mut bound = Vec::new();
    if f.virtio_net_ports() {
        for (host, _) in &ports {
            let holder = state.machines.iter().find(|o| {
                o.name != name && o.state.vmm_alive() && o.ports.iter().any(|(h, _)| h == host)
            });
            if let Some(holder) = holder {
                return error(
                    "",
                    format!(
                        "config operation failed: start machine: host port {host} is already in \
                         use by running machine '{}'",
                        holder.name
                    ),
                );
            }
        }
        for (host, guest) in &ports {
            match net::bind(*host) {
                Ok(listener) => bound.push(Bound {
                    listener,
                    host: *host,
                    guest: *guest,
                }),
                Err(e) => {
                    return error(
                        "",
                        format!(
                            "config operation failed: start machine: failed to start virtio \
                             network runtime: {e}"
                        ),
                    )
                }
            }
        }
    }
    let helper = if bound.is_empty() {
        None
    } else {
        match ctx.net.serve(name, boot, bound) {
            Ok(h) => h,
            Err(e) => {
                return error(
                    "",
                    format!(
                        "config operation failed: start machine: failed to start virtio network \
                         runtime: {e}"
                    ),
                )
            }
        }
    };
    let Some(m) = state.get_mut(name) else {
        return not_found(name);
    };
    let mut stderr = format!("Starting machine '{name}'...\n");
    if !m.booted && m.from.is_none() {
        if let Some(image) = m.image.as_deref().filter(|i| !is_local_image(i)) {
            stderr.push_str(&format!("Pulling {image}...\n"));
        }
    }
    m.state = SimState::Running;
    m.pid = Some(pid);
    m.forkable = forkable;
    m.booted = true;
    m.boots = boot;
    m.listeners.clear();
    m.helpers = helper.into_iter().collect();
    state.take_pid();
    boot_console(ctx, name, boot);
    out(
        0,
        format!("Machine '{name}' running (PID: {pid})\n"),
        stderr,
    )
}

/// The guest's servers die with the VM; so do the host forwarders.
fn shut_down(m: &mut SimMachine, ctx: &Ctx<'_>) {
    m.listeners.clear();
    let helpers = std::mem::take(&mut m.helpers);
    ctx.net.release(&m.name, &helpers);
}

fn stop(name: &str, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    let f = ctx.features;
    if let Err(e) = validate_name(name) {
        return invalid_name(&e);
    }
    // The agent manager makes the data directory even for unknown names (§0.7).
    ensure_data_dir(state, name, ctx);
    let Some(m) = state.get(name) else {
        return if f.stop_unknown_is_error() {
            not_found(name)
        } else {
            ok(format!("Machine '{name}' not found or not running\n"))
        };
    };
    if !m.state.vmm_alive() {
        return ok(format!(
            "Machine '{name}' is not running (state: {})\n",
            m.state.word(f)
        ));
    }
    if m.state == SimState::Frozen && f.frozen_state() {
        let clones = clones_of(state, name, true);
        if !clones.is_empty() {
            return error(
                "",
                format!(
                    "machine '{name}' is the fork base for {} live clone(s) ({}); stop or \
                     delete the clones first",
                    clones.len(),
                    clones.join(", ")
                ),
            );
        }
    }
    let Some(m) = state.get_mut(name) else {
        return not_found(name);
    };
    // Stopping a frozen golden kills its paused VMM and drops the retained checkpoint.
    m.state = SimState::Stopped;
    m.pid = None;
    m.forkable = false;
    shut_down(m, ctx);
    ok(format!(
        "Stopping machine '{name}'...\nStopped machine: {name}\n"
    ))
}

fn delete(name: &str, force: bool, cascade: bool, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    if state.get(name).is_none() {
        return not_found(name);
    }
    let clones = clones_of(state, name, false);
    if !clones.is_empty() && !force && !cascade {
        return error(
            "",
            format!(
                "machine '{name}' is the fork base for {} clone(s) ({}); delete the clones \
                 first, use --cascade to remove them too, or --force to break them",
                clones.len(),
                clones.join(", ")
            ),
        );
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if !force && !cascade {
        stderr.push_str(&format!("Delete machine '{name}'? [y/N] "));
        if !ctx.delete_confirmed {
            return out(0, "Cancelled\n", stderr);
        }
    }
    for clone in &clones {
        if cascade {
            remove_machine(clone, state, ctx, &mut stdout);
        } else if let Some(c) = state.get_mut(clone) {
            // `-f` goes ahead: the clones' copy-on-write backing files dangle (§0.4).
            c.broken = true;
        }
    }
    remove_machine(name, state, ctx, &mut stdout);
    out(0, stdout, stderr)
}

/// Stop (from 0.8.1) and remove one machine and its data directory, saying so on `stdout`.
fn remove_machine(name: &str, state: &mut State, ctx: &Ctx<'_>, stdout: &mut String) {
    let running = state.get(name).is_some_and(|m| m.state.vmm_alive());
    // v0.8.0 removes the record and leaves a running VM orphaned; later versions stop it.
    if running && ctx.features.delete_stops_running() {
        stdout.push_str(&format!("Stopping machine '{name}'...\n"));
    }
    if let Some(m) = state.get_mut(name) {
        // Even the orphaned v0.8.0 VM loses its forwarders here: nothing could reach them.
        shut_down(m, ctx);
    }
    if state.data_dirs.remove(name) {
        stdout.push_str(&format!("Cleaning up data directory for vm: {name}\n"));
    }
    let _ = fs::remove_dir_all(data_dir_path(ctx.data_root, name));
    state.remove(name);
    stdout.push_str(&format!("Deleted machine: {name}\n"));
}

/// `fork -e` (§1.2): `KEY=VALUE` with a shell-identifier key and a one-line value;
/// `{index}` (always 0 for a single fork) and `{name}` are replaced in values.
fn parse_fork_env(specs: &[String], clone: &str) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for spec in specs {
        let Some((key, value)) = spec.split_once('=') else {
            return Err(format!("expected KEY=VALUE, got '{spec}'"));
        };
        let ident = key
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if key.is_empty() || !ident {
            return Err(format!(
                "invalid key '{key}': must match [A-Za-z_][A-Za-z0-9_]*"
            ));
        }
        if value.contains(['\n', '\r']) {
            return Err(format!("value of '{key}' must not contain a newline"));
        }
        let value = value.replace("{index}", "0").replace("{name}", clone);
        env.push((key.to_string(), value));
    }
    Ok(env)
}

/// Where the clone's `-e` values are written in its guest (dotenv lines).
const FORK_ENV_FILE: &str = "/etc/smolvm/fork-env";

/// `machine fork` (§1.2, §1.3): checks in smolvm's order, then freeze the golden and boot a
/// clone whose record is a copy of the golden's with its own name, pid and ports.
fn fork(a: &ForkArgs, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    let f = ctx.features;
    let golden = a.golden.as_str();
    // `ForkCmd::run` checks this before anything is printed.
    let Some(clone) = a.name.clone() else {
        return error(
            "",
            "config operation failed: fork: --name is required for one clone; use --name-prefix \
             with --count for a batch",
        );
    };
    // Printed even when the fork then fails (§1.2).
    let mut stderr = format!("Freezing golden '{golden}' as fork base...\n");
    let fail = |stderr: &str, msg: String| out(1, "", format!("{stderr}Error: {msg}\n"));
    if let Err(e) = validate_name(&clone) {
        let e = e.replacen("machine name", "clone name", 1);
        return fail(&stderr, format!("config operation failed: clone name: {e}"));
    }
    let fork_env = match parse_fork_env(&a.env, &clone) {
        Ok(e) => e,
        Err(e) => return fail(&stderr, format!("config operation failed: fork env: {e}")),
    };
    let own_refs = match parse_secret_refs(&a.secret_env, &a.secret_file) {
        Ok(r) => r,
        Err(e) => return fail(&stderr, format!("config operation failed: {e}")),
    };
    if a.forkable {
        return fail(
            &stderr,
            "agent operation failed: fork: nested fork is not supported: a clone cannot be \
             re-forked, so `forkable` on a fork has no effect (drop it)"
                .into(),
        );
    }
    if state.get(&clone).is_some() {
        return fail(
            &stderr,
            format!("agent operation failed: fork: machine '{clone}' already exists"),
        );
    }
    let Some(g) = state.get(golden) else {
        return fail(&stderr, format!("vm not found: {golden}"));
    };
    match g.state {
        SimState::Running if g.forkable => {}
        // From 1.7.0 every VM has a control socket, so the VMM itself refuses.
        SimState::Running if f.fork_env_and_cascade() => {
            return fail(
                &stderr,
                "agent operation failed: fork: golden FORK failed: ERR EINVAL no memfd-backed \
                 RAM (start the golden VM with SMOLVM_FORKABLE=1)"
                    .into(),
            )
        }
        SimState::Frozen if f.refuses_second_fork() => {
            return fail(
                &stderr,
                format!(
                    "agent operation failed: fork: golden '{golden}' is already paused; a valid \
                     retained checkpoint is required"
                ),
            )
        }
        SimState::Frozen => {}
        _ => {
            return fail(
                &stderr,
                format!(
                    "agent operation failed: fork: golden '{golden}' is not running forkable; \
                     start it with `machine start --forkable --name {golden}`"
                ),
            )
        }
    }
    // The clone boots with the golden's refs and its own, resolved now as at any boot.
    let mut refs = g.secret_refs.clone();
    refs.extend(own_refs);
    if let Err(e) = resolve_secrets(&refs, ctx) {
        return fail(&stderr, e);
    }
    // Each golden forward gets a fresh host port (bound at 127.0.0.1:0) or its `-p` pin.
    let mut pins = a.ports.clone();
    let mut ports = Vec::new();
    let mut bound = Vec::new();
    let mut remaps = String::new();
    for (host, guest) in g.ports.clone() {
        let pin = pins.iter().position(|(_, pg)| *pg == guest);
        let pinned = pin.map(|i| pins.remove(i).0);
        // Under TSI (before 1.1.0) only a listening guest server holds its host port; the
        // clone inherits the golden's servers.
        let bind_now = f.virtio_net_ports() || g.listeners.iter().any(|l| l.port == guest);
        let (h2, listener) = match pinned {
            Some(p) => (p, None),
            None => match net::bind_any() {
                Ok(l) => match l.local_addr() {
                    Ok(addr) => (addr.port(), Some(l)),
                    Err(e) => return fail(&stderr, format!("agent operation failed: fork: {e}")),
                },
                Err(e) => return fail(&stderr, format!("agent operation failed: fork: {e}")),
            },
        };
        remaps.push_str(&format!(
            "  port {host}->{guest} (golden) remapped to {h2}->{guest} (clone)\n"
        ));
        ports.push((h2, guest, bind_now, listener));
    }
    // Pins for guest ports the golden does not forward are added as they are.
    for (h, g2) in pins {
        let bind_now = f.virtio_net_ports() || g.listeners.iter().any(|l| l.port == g2);
        ports.push((h, g2, bind_now, None));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (h, _, _, _) in &ports {
        if !seen.insert(*h) {
            return fail(
                &stderr,
                format!(
                    "config operation failed: validate ports: duplicate host port {h}: each \
                     host port can only be mapped once"
                ),
            );
        }
    }
    for (h, guest, bind_now, listener) in ports.iter_mut() {
        if !*bind_now {
            continue;
        }
        let listener = match listener.take() {
            Some(l) => l,
            None => {
                let holder = state
                    .machines
                    .iter()
                    .find(|o| o.state.vmm_alive() && o.ports.iter().any(|(oh, _)| oh == h));
                if let Some(holder) = holder {
                    return fail(
                        &stderr,
                        format!(
                            "config operation failed: start machine: host port {h} is already \
                             in use by running machine '{}'",
                            holder.name
                        ),
                    );
                }
                match net::bind(*h) {
                    Ok(l) => l,
                    Err(e) => {
                        return fail(
                            &stderr,
                            format!(
                                "config operation failed: start machine: failed to start virtio \
                                 network runtime: {e}"
                            ),
                        )
                    }
                }
            }
        };
        bound.push(Bound {
            listener,
            host: *h,
            guest: *guest,
        });
    }
    let mut c = g.clone();
    stderr.push_str(&remaps);
    stderr.push_str(&format!("Booting clone '{clone}' from snapshot...\n"));
    let boot = 1;
    let helper = if bound.is_empty() {
        None
    } else {
        match ctx.net.serve(&clone, boot, bound) {
            Ok(h) => h,
            Err(e) => {
                return fail(
                    &stderr,
                    format!(
                        "config operation failed: start machine: failed to start virtio network \
                         runtime: {e}"
                    ),
                )
            }
        }
    };
    let pid = state.take_pid();
    c.name = clone.clone();
    c.state = SimState::Running;
    c.pid = Some(pid);
    c.ports = ports.iter().map(|(h, g2, _, _)| (*h, *g2)).collect();
    c.golden = Some(golden.to_string());
    c.forkable = false;
    c.broken = false;
    c.booted = true;
    c.boots = boot;
    c.helpers = helper.into_iter().collect();
    c.secret_refs = refs;
    if !fork_env.is_empty() {
        let mut dotenv = String::new();
        for (k, v) in fork_env {
            dotenv.push_str(&format!("{k}={v}\n"));
            c.env.retain(|(key, _)| *key != k);
            c.env.push((k, v));
        }
        c.dirs.insert("/etc/smolvm".into());
        c.files.insert(FORK_ENV_FILE.into(), dotenv.into_bytes());
    }
    state.machines.push(c);
    if let Some(g) = state.get_mut(golden) {
        g.state = SimState::Frozen;
    }
    ensure_data_dir(state, &clone, ctx);
    let console = format!(
        "[    0.000000] smolvm-agent: resumed from the fork snapshot of '{golden}' as '{clone}'\n"
    );
    let _ = fs::write(
        data_dir_path(ctx.data_root, &clone).join(CONSOLE_LOG),
        console,
    );
    stderr.push_str(&format!(
        "Forked '{golden}' -> '{clone}'. Golden stays frozen as the fork base (do not start it \
         again while clones exist).\n"
    ));
    out(
        0,
        format!("Machine '{clone}' running (PID: {pid})\n"),
        stderr,
    )
}

fn exec(a: &ExecArgs, state: &mut State, ctx: &Ctx<'_>) -> Step {
    let name = a.name.as_deref().unwrap_or("default");
    if let Err(e) = validate_name(name) {
        return Step::Done(invalid_name(&e));
    }
    ensure_data_dir(state, name, ctx);
    let machines = state.machines.len();
    let Some(m) = state.get(name) else {
        return Step::Done(not_found(name));
    };
    if m.state == SimState::Frozen {
        return Step::Done(frozen_error(name));
    }
    if m.state != SimState::Running {
        return Step::Done(not_running(name));
    }
    if m.broken {
        return Step::Done(broken_error("vm exec", m));
    }
    // §2.3: the record's refs plus the exec's own, every one resolved now.
    let mut refs = m.secret_refs.clone();
    if !a.secret_env.is_empty() || !a.secret_file.is_empty() {
        match parse_secret_refs(&a.secret_env, &a.secret_file) {
            Ok(own) => refs.extend(own),
            Err(e) => return Step::Done(error("", format!("config operation failed: {e}"))),
        }
    }
    let secrets = match resolve_secrets(&refs, ctx) {
        Ok(s) => s,
        Err(e) => return Step::Done(error("", e)),
    };
    // §5: an exec value replaces the record's entries for that key, appended at the end.
    let mut env = m.env.clone();
    for (k, v) in a
        .env
        .iter()
        .filter_map(|spec| parse_env_spec(spec, ctx.features, ctx.lookup_env))
        .chain(secrets)
    {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    }
    Step::Guest(GuestJob {
        argv: a.argv.clone(),
        env,
        workdir: a
            .workdir
            .clone()
            .or_else(|| m.workdir.clone())
            .unwrap_or_else(|| "/".to_string()),
        files: m.files.clone(),
        dirs: m.dirs.clone(),
        mounts: m.mounts.clone(),
        listeners: m.listeners.clone(),
        timeout: a.timeout,
        image_machine: m.has_image(),
        stream: a.stream,
        machines,
        machine: name.to_string(),
        boot: m.boots,
    })
}

/// Apply what a running guest did, unless its machine has stopped or rebooted since.
pub(crate) fn guest_effect(
    state: &mut State,
    ctx: &Ctx<'_>,
    machine: &str,
    boot: u64,
    effect: &Effect,
) -> Result<(), String> {
    let Some(m) = state
        .get_mut(machine)
        .filter(|m| m.state == SimState::Running && m.boots == boot)
    else {
        return Ok(());
    };
    match effect {
        Effect::WriteFile { path, data, append } => {
            let file = m.files.entry(path.clone()).or_default();
            if !append {
                file.clear();
            }
            file.extend_from_slice(data);
        }
        Effect::Remove(path) => {
            m.files.remove(path);
            let prefix = format!("{path}/");
            m.files.retain(|p, _| !p.starts_with(&prefix));
            m.dirs.retain(|d| d != path && !d.starts_with(&prefix));
        }
        Effect::Mkdir(path) => {
            m.dirs.insert(path.clone());
        }
        Effect::Console(bytes) => append_console(ctx, machine, bytes),
        Effect::Listen { port, kind } => {
            if m.listeners.iter().any(|l| l.port == *port) {
                return Err("bind: Address in use".into());
            }
            if !ctx.features.virtio_net_ports() {
                // TSI: the host side appears only when the guest listens (§3.2).
                let mut bound = Vec::new();
                for (host, guest) in m.ports.iter().filter(|(_, g)| g == port) {
                    let listener = net::bind(*host).map_err(|_| "bind: Address in use")?;
                    bound.push(Bound {
                        listener,
                        host: *host,
                        guest: *guest,
                    });
                }
                if !bound.is_empty() {
                    if let Some(pid) = ctx.net.serve(machine, boot, bound)? {
                        m.helpers.push(pid);
                    }
                }
            }
            m.listeners.push(Listener {
                port: *port,
                kind: kind.clone(),
            });
        }
    }
    Ok(())
}

fn data_dir(name: &str, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    if state.get(name).is_none() && ctx.features.data_dir_unknown_is_error() {
        return not_found(name);
    }
    let dir = ensure_data_dir(state, name, ctx);
    ok(format!("{}\n", dir.display()))
}

/// `normalize_guest_path`: a leading `/` is added, `.`/`..` segments are refused.
fn normalize_guest_path(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("invalid guest path : path is empty".to_string());
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(format!(
            "invalid guest path {path}: '.' and '..' segments are not allowed"
        ));
    }
    Ok(format!("/{}", segments.join("/")))
}

fn cp(src: &str, dst: &str, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    // SRC is split first: a host SRC containing `:` is read as a machine (§6).
    let (download, name, guest_path, host) = if let Some((n, p)) = src.split_once(':') {
        (true, n, p, dst)
    } else if let Some((n, p)) = dst.split_once(':') {
        (false, n, p, src)
    } else {
        return error(
            "",
            "config operation failed: cp: one of SRC or DST must use machine:path syntax (e.g., \
             myvm:/workspace/file)",
        );
    };
    if let Err(e) = validate_name(name) {
        return invalid_name(&e);
    }
    ensure_data_dir(state, name, ctx);
    let Some(m) = state.get_mut(name) else {
        return not_found(name);
    };
    if m.state == SimState::Frozen {
        return frozen_error(name);
    }
    if m.state != SimState::Running {
        return not_running(name);
    }
    let op = if download {
        "file download"
    } else {
        "file upload"
    };
    if m.broken {
        return broken_error(op, m);
    }
    let path = match normalize_guest_path(guest_path) {
        Ok(p) => p,
        Err(e) => return error("", format!("agent operation failed: {op}: {e}")),
    };
    // A path under a `-v` mount is the host directory's.
    let mounted = super::state::mounted_path(&m.mounts, &path);
    if let Some((mount_path, read_only)) = mounted {
        let moved = if download {
            fs::read(&mount_path).and_then(|b| fs::write(host, b))
        } else if read_only {
            Err(std::io::Error::from_raw_os_error(30))
        } else {
            fs::read(host).and_then(|b| fs::write(&mount_path, b))
        };
        return match moved {
            Ok(()) => ok(""),
            Err(e) => error("", format!("agent operation failed: {op}: {path}: {e}")),
        };
    }
    if download {
        let Some(bytes) = m.files.get(&path) else {
            return error(
                "",
                format!("agent operation failed: {op}: {path}: No such file or directory"),
            );
        };
        if let Err(e) = fs::write(host, bytes) {
            return error("", format!("config operation failed: cp: {host}: {e}"));
        }
    } else {
        match fs::read(host) {
            Ok(bytes) => {
                m.files.insert(path, bytes);
            }
            Err(e) => return error("", format!("config operation failed: cp: {host}: {e}")),
        }
    }
    ok("")
}

fn ls(json: bool, verbose: bool, state: &State, f: Features) -> SimOutput {
    if json {
        let list: Vec<_> = state.machines.iter().map(|m| m.list_json(f)).collect();
        return ok(pretty(&serde_json::Value::Array(list)));
    }
    if state.machines.is_empty() {
        return ok("No machines found\n");
    }
    // smolvm's layout (`vm_common.rs` `list_vms`); names past 18 characters are cut.
    let row = |cols: [&str; 8]| {
        format!(
            "{:<20} {:<12} {:>5} {:>10} {:>7} {:>7} {:>8} {:>8}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7]
        )
    };
    let mut text = row([
        "NAME", "STATE", "CPUS", "MEMORY", "MOUNTS", "PORTS", "STORAGE", "OVERLAY",
    ]);
    text.push_str(&"-".repeat(88));
    text.push('\n');
    for m in &state.machines {
        let name = if m.name.chars().count() > 18 {
            format!("{}...", m.name.chars().take(15).collect::<String>())
        } else {
            m.name.clone()
        };
        text.push_str(&row([
            &name,
            m.state.word(f),
            &m.cpus.to_string(),
            &format!("{} MiB", m.memory_mib),
            &m.mounts.len().to_string(),
            &m.ports.len().to_string(),
            &format!("{} GiB", m.storage_gb.unwrap_or(DEFAULT_STORAGE_GIB)),
            &format!("{} GiB", m.overlay_gb.unwrap_or(DEFAULT_OVERLAY_GIB)),
        ]));
        if verbose {
            if let Some(pid) = m.pid {
                text.push_str(&format!("  PID: {pid}\n"));
            }
            for mount in &m.mounts {
                let ro = if mount.read_only { " (ro)" } else { "" };
                text.push_str(&format!(
                    "  Mount: {} -> {}{ro}\n",
                    mount.source, mount.target
                ));
            }
            for (host, guest) in &m.ports {
                text.push_str(&format!("  Port: {host} -> {guest}\n"));
            }
            if m.network {
                text.push_str("  Network: enabled\n");
            }
            for (k, v) in &m.env {
                text.push_str(&format!("  Env: {k}={v}\n"));
            }
            if let Some(wd) = &m.workdir {
                text.push_str(&format!("  Workdir: {wd}\n"));
            }
            if m.forkable {
                text.push_str("  Forkable: enabled\n");
            }
            text.push_str(&format!("  Created: {}\n\n", m.created_at));
        }
    }
    ok(text)
}

/// smolvm's default disk sizes, shown by `ls` when none was given.
const DEFAULT_STORAGE_GIB: u64 = 20;
const DEFAULT_OVERLAY_GIB: u64 = 10;

fn status(name: &str, json: bool, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    let f = ctx.features;
    if let Err(e) = validate_name(name) {
        return invalid_name(&e);
    }
    ensure_data_dir(state, name, ctx);
    let Some(m) = state.get(name) else {
        return if json {
            error(
                "",
                format!("config operation failed: machine status: machine '{name}' not found"),
            )
        } else {
            not_found(name)
        };
    };
    if json {
        return ok(pretty(&m.list_json(f)));
    }
    let text = match (m.state, f.v1()) {
        (SimState::Running, _) => format!(
            "Machine '{name}': running (PID: {})\n",
            m.pid.unwrap_or_default()
        ),
        (s, true) => format!("Machine '{name}': {}\n", s.word(f)),
        (_, false) => format!("Machine '{name}': not running\n"),
    };
    ok(text)
}

fn pack(p: &PackArgs) -> SimOutput {
    let manifest = Manifest {
        image: p.image.clone(),
        cpus: p.cpus.unwrap_or(DEFAULT_CPUS),
        memory_mib: p.mem.unwrap_or(DEFAULT_MEM_MIB),
        network: false,
        env: Vec::new(),
        workdir: None,
        entrypoint: p.entrypoint.iter().cloned().collect(),
    };
    let stub = format!(
        "#!/bin/sh\n# smolvm-harness simulated pack of {:?}; its manifest is in the .smolmachine \
         sidecar.\necho 'smolvm-sim: a simulated pack cannot run' >&2\nexit 1\n",
        p.image
    );
    let write = |path: &str, bytes: &[u8]| -> Result<(), String> {
        fs::write(path, bytes)
            .map_err(|e| format!("config operation failed: pack: failed to write {path}: {e}"))
    };
    if let Err(e) = write(&p.output, stub.as_bytes()) {
        return error("", e);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&p.output, fs::Permissions::from_mode(0o755));
    }
    let mut stdout = format!("Packed: {} ({} bytes)\n", p.output, stub.len());
    if !p.single_file {
        let sidecar = format!("{}.smolmachine", p.output);
        let text = manifest.to_json_text();
        if let Err(e) = write(&sidecar, text.as_bytes()) {
            return error(stdout, e);
        }
        stdout.push_str(&format!("Assets: {sidecar} ({} bytes)\n", text.len()));
    }
    ok(stdout)
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// The simulated host's clock: the real one, moved by `SMOLVM_FAKE_CLOCK_SKEW=SECS` (which
/// may be negative), so that a server on "another host" can have a clock of its own.
pub(crate) fn now_secs() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let skew: i64 = std::env::var("SMOLVM_FAKE_CLOCK_SKEW")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    now.saturating_add_signed(skew)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    struct NoNet;

    impl HostNet for NoNet {
        fn serve(&self, _: &str, _: u64, _: Vec<Bound>) -> Result<Option<u32>, String> {
            Ok(None)
        }
        fn release(&self, _: &str, _: &[u32]) {}
    }

    fn ctx(v: Version) -> Ctx<'static> {
        let root: &'static tempfile::TempDir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        Ctx {
            features: Features::new(v),
            now_secs: 100,
            lookup_env: &|_| None,
            delete_confirmed: false,
            entropy: 7,
            data_root: root.path(),
            net: &NoNet,
        }
    }

    fn create_args(name: &str) -> CreateArgs {
        CreateArgs {
            name: Some(name.into()),
            net: true,
            image: Some("alpine".into()),
            ..CreateArgs::default()
        }
    }

    #[test]
    fn guest_paths() {
        assert_eq!(normalize_guest_path("tmp/x").unwrap(), "/tmp/x");
        assert_eq!(normalize_guest_path("/a//b/").unwrap(), "/a/b");
        assert_eq!(
            normalize_guest_path("").unwrap_err(),
            "invalid guest path : path is empty"
        );
        assert!(normalize_guest_path("/a/../b").is_err());
        assert!(normalize_guest_path("./a").is_err());
        assert!(normalize_guest_path("/a/.b").is_ok());
    }

    #[test]
    fn local_images_need_no_network() {
        for local in ["/x", "./x.tar", "../y", "a.tar.gz", "b.tgz", "-"] {
            assert!(is_local_image(local), "{local}");
        }
        for remote in ["alpine", "ghcr.io/a/b:1", "x.tar.bz2"] {
            assert!(!is_local_image(remote), "{remote}");
        }
    }

    #[test]
    fn generated_names_are_valid_and_distinct() {
        let mut s = State::default();
        let a = generate_name(&mut s, 1);
        let b = generate_name(&mut s, 1);
        assert_ne!(a, b);
        assert!(validate_name(&a).is_ok());
        assert!(a.starts_with("vm-") && a.len() == 11);
    }

    #[test]
    fn delete_without_force_is_cancelled_on_eof() {
        let mut s = State::default();
        let c = ctx(Version::new(1, 9, 2));
        assert_eq!(create(&create_args("a"), &mut s, &c).code, 0);
        let o = delete("a", false, false, &mut s, &c);
        assert_eq!(o.code, 0);
        assert_eq!(o.stdout, b"Cancelled\n");
        assert_eq!(o.stderr, b"Delete machine 'a'? [y/N] ");
        assert!(s.get("a").is_some());
        let yes = Ctx {
            delete_confirmed: true,
            ..c
        };
        assert_eq!(delete("a", false, false, &mut s, &yes).code, 0);
        assert!(s.get("a").is_none());
    }

    #[test]
    fn delete_of_running_machine_stops_it_only_from_0_8_1() {
        for (v, stops) in [
            (Version::new(0, 8, 0), false),
            (Version::new(0, 8, 1), true),
        ] {
            let mut s = State::default();
            let c = ctx(v);
            create(&create_args("a"), &mut s, &c);
            assert_eq!(start(Some("a"), false, &mut s, &c).code, 0);
            let o = delete("a", true, false, &mut s, &c);
            let text = String::from_utf8(o.stdout).unwrap();
            assert_eq!(text.contains("Stopping machine 'a'..."), stops, "{v}");
            assert!(text.contains("Cleaning up data directory for vm: a\n"));
            assert!(text.ends_with("Deleted machine: a\n"));
        }
    }

    #[test]
    fn start_without_name_creates_default() {
        let mut s = State::default();
        let c = ctx(Version::new(1, 9, 2));
        let o = start(None, false, &mut s, &c);
        assert_eq!(o.code, 0);
        assert_eq!(s.get("default").map(|m| m.state), Some(SimState::Running));
        assert_eq!(
            start(Some("nope"), false, &mut s, &c).stderr,
            b"Error: vm not found: nope\n"
        );
    }
}
