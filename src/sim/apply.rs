//! What each parsed command does to the machine state, with smolvm's exact outputs (§7).
//!
//! Runs under the state lock, so it never sleeps: `exec` hands back a [`GuestJob`] that the
//! caller runs after the lock is released.

use std::fs;
use std::path::Path;

use super::grammar::{
    parse_env_spec, parse_labels, validate_name, Command, CreateArgs, ExecArgs, Features, PackArgs,
};
use super::guest::GuestJob;
use super::state::{Manifest, SimMachine, SimState, State, DEFAULT_CPUS, DEFAULT_MEM_MIB};
use super::SimOutput;

/// Inputs of a command that do not come from argv or the state.
pub(crate) struct Ctx<'a> {
    pub(crate) features: Features,
    pub(crate) now_secs: u64,
    /// smolvm's own environment, for `-e KEY` (v0.8.1+).
    pub(crate) lookup_env: &'a dyn Fn(&str) -> Option<String>,
    /// The answer to delete's `[y/N]` prompt (read before the lock was taken).
    pub(crate) delete_confirmed: bool,
    /// Seeds generated machine names.
    pub(crate) entropy: u64,
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

/// Apply one command to the state.
pub(crate) fn apply(cmd: &Command, state: &mut State, ctx: &Ctx<'_>) -> Step {
    let f = ctx.features;
    Step::Done(match cmd {
        Command::Version => ok(format!("smolvm {}\n", f.version)),
        Command::Help(text) => ok(text.clone()),
        Command::NotSimulated(what) => error("", format!("sim: subcommand not simulated: {what}")),
        Command::Pack(p) => pack(p),
        Command::Create(c) => create(c, state, ctx),
        Command::Start { name } => start(name.as_deref(), state, ctx.now_secs),
        Command::Stop { name } => stop(name.as_deref().unwrap_or("default"), state, f),
        Command::Delete { name, force } => delete(name, *force, state, ctx),
        Command::Exec(e) => return exec(e, state, ctx),
        Command::Cp { src, dst } => cp(src, dst, state),
        Command::Ls { json, verbose } => ls(*json, *verbose, state, f),
        Command::Status { name, json } => {
            status(name.as_deref().unwrap_or("default"), *json, state, f)
        }
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
    if f.registry_needs_network() {
        if let Some(image) = &a.image {
            if !is_local_image(image) && !a.net && a.cidrs.is_empty() {
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
    let cidrs = (!a.cidrs.is_empty()).then(|| a.cidrs.clone());
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
        if f.keeps_egress_with_from() {
            m.network = a.net || manifest.network || cidrs.is_some();
            m.allowed_cidrs = cidrs;
        } else {
            // Before v1.8.0 the egress flags are dropped without a word (§0.2).
            m.network = a.net || manifest.network;
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
        m.network = a.net || cidrs.is_some();
        m.allowed_cidrs = cidrs;
    }
    m.labels = labels;
    m.cmd = a.command.clone();
    state.machines.push(m);
    stdout.push_str(&format!("Created machine: {name}\n"));
    ok(stdout)
}

fn start(name: Option<&str>, state: &mut State, now_secs: u64) -> SimOutput {
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
            .push(SimMachine::new(name.to_string(), now_secs));
    }
    state.data_dirs.insert(name.to_string());
    let pid = state.next_pid;
    let Some(m) = state.get_mut(name) else {
        return not_found(name);
    };
    if m.state == SimState::Running {
        return ok(format!(
            "Machine '{name}' already running (PID: {})\n",
            m.pid.unwrap_or_default()
        ));
    }
    let mut stderr = format!("Starting machine '{name}'...\n");
    if !m.booted && m.from.is_none() {
        if let Some(image) = m.image.as_deref().filter(|i| !is_local_image(i)) {
            stderr.push_str(&format!("Pulling {image}...\n"));
        }
    }
    m.state = SimState::Running;
    m.pid = Some(pid);
    m.booted = true;
    state.take_pid();
    out(
        0,
        format!("Machine '{name}' running (PID: {pid})\n"),
        stderr,
    )
}

fn stop(name: &str, state: &mut State, f: Features) -> SimOutput {
    if let Err(e) = validate_name(name) {
        return invalid_name(&e);
    }
    // The agent manager makes the data directory even for unknown names (§0.7).
    state.data_dirs.insert(name.to_string());
    let Some(m) = state.get_mut(name) else {
        return if f.stop_unknown_is_error() {
            not_found(name)
        } else {
            ok(format!("Machine '{name}' not found or not running\n"))
        };
    };
    if m.state != SimState::Running {
        return ok(format!(
            "Machine '{name}' is not running (state: {})\n",
            m.state.as_str()
        ));
    }
    m.state = SimState::Stopped;
    m.pid = None;
    ok(format!(
        "Stopping machine '{name}'...\nStopped machine: {name}\n"
    ))
}

fn delete(name: &str, force: bool, state: &mut State, ctx: &Ctx<'_>) -> SimOutput {
    let Some(m) = state.get(name) else {
        return not_found(name);
    };
    let running = m.state == SimState::Running;
    let mut stdout = String::new();
    let mut stderr = String::new();
    if !force {
        stderr.push_str(&format!("Delete machine '{name}'? [y/N] "));
        if !ctx.delete_confirmed {
            return out(0, "Cancelled\n", stderr);
        }
    }
    // v0.8.0 removes the record and leaves a running VM orphaned; later versions stop it.
    if running && ctx.features.delete_stops_running() {
        stdout.push_str(&format!("Stopping machine '{name}'...\n"));
    }
    if state.data_dirs.remove(name) {
        stdout.push_str(&format!("Cleaning up data directory for vm: {name}\n"));
    }
    state.remove(name);
    stdout.push_str(&format!("Deleted machine: {name}\n"));
    out(0, stdout, stderr)
}

fn exec(a: &ExecArgs, state: &mut State, ctx: &Ctx<'_>) -> Step {
    let name = a.name.as_deref().unwrap_or("default");
    if let Err(e) = validate_name(name) {
        return Step::Done(invalid_name(&e));
    }
    state.data_dirs.insert(name.to_string());
    let machines = state.machines.len();
    let Some(m) = state.get(name) else {
        return Step::Done(not_found(name));
    };
    if m.state != SimState::Running {
        return Step::Done(not_running(name));
    }
    // §5: an exec value replaces the record's entries for that key, appended at the end.
    let mut env = m.env.clone();
    for spec in &a.env {
        if let Some((k, v)) = parse_env_spec(spec, ctx.features, ctx.lookup_env) {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
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
        timeout: a.timeout,
        image_machine: m.has_image(),
        stream: a.stream,
        machines,
    })
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

fn cp(src: &str, dst: &str, state: &mut State) -> SimOutput {
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
    state.data_dirs.insert(name.to_string());
    let Some(m) = state.get_mut(name) else {
        return not_found(name);
    };
    if m.state != SimState::Running {
        return not_running(name);
    }
    let op = if download {
        "file download"
    } else {
        "file upload"
    };
    let path = match normalize_guest_path(guest_path) {
        Ok(p) => p,
        Err(e) => return error("", format!("agent operation failed: {op}: {e}")),
    };
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
    let mut text = format!("{:<24} {:<10} {:<8} {}\n", "NAME", "STATE", "PID", "IMAGE");
    for m in &state.machines {
        let pid = m.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let image = m.image.as_deref().unwrap_or("-");
        text.push_str(&format!(
            "{:<24} {:<10} {:<8} {}\n",
            m.name,
            m.state.as_str(),
            pid,
            image
        ));
        if verbose {
            text.push_str(&format!(
                "  CPUs: {}, Memory: {} MiB\n",
                m.cpus, m.memory_mib
            ));
            let net = if m.network { "enabled" } else { "disabled" };
            text.push_str(&format!("  Network: {net}\n"));
            for (k, v) in &m.env {
                text.push_str(&format!("  Env: {k}={v}\n"));
            }
            for (k, v) in &m.labels {
                text.push_str(&format!("  Label: {k}={v}\n"));
            }
        }
    }
    ok(text)
}

fn status(name: &str, json: bool, state: &mut State, f: Features) -> SimOutput {
    if let Err(e) = validate_name(name) {
        return invalid_name(&e);
    }
    state.data_dirs.insert(name.to_string());
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
        (s, true) => format!("Machine '{name}': {}\n", s.as_str()),
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

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    fn ctx(v: Version) -> Ctx<'static> {
        Ctx {
            features: Features::new(v),
            now_secs: 100,
            lookup_env: &|_| None,
            delete_confirmed: false,
            entropy: 7,
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
        let o = delete("a", false, &mut s, &c);
        assert_eq!(o.code, 0);
        assert_eq!(o.stdout, b"Cancelled\n");
        assert_eq!(o.stderr, b"Delete machine 'a'? [y/N] ");
        assert!(s.get("a").is_some());
        let yes = Ctx {
            delete_confirmed: true,
            ..c
        };
        assert_eq!(delete("a", false, &mut s, &yes).code, 0);
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
            assert_eq!(start(Some("a"), &mut s, 1).code, 0);
            let o = delete("a", true, &mut s, &c);
            let text = String::from_utf8(o.stdout).unwrap();
            assert_eq!(text.contains("Stopping machine 'a'..."), stops, "{v}");
            assert!(text.contains("Cleaning up data directory for vm: a\n"));
            assert!(text.ends_with("Deleted machine: a\n"));
        }
    }

    #[test]
    fn start_without_name_creates_default() {
        let mut s = State::default();
        let o = start(None, &mut s, 1);
        assert_eq!(o.code, 0);
        assert_eq!(s.get("default").map(|m| m.state), Some(SimState::Running));
        assert_eq!(
            start(Some("nope"), &mut s, 1).stderr,
            b"Error: vm not found: nope\n"
        );
    }
}
