//! The argv grammar of each smolvm version, parsed the way clap parses it.
//!
//! Only the subcommands and flags the harness drives are known here; any other flag is a
//! clap "unexpected argument" error, exactly as an unknown flag would be for the real CLI.
//! Value parsers that run inside clap (CIDR, duration, image) fail with exit 2 here too;
//! checks that smolvm makes after parsing (names, env, labels) are in `apply`, with exit 1.

use std::net::IpAddr;
use std::time::Duration;

use super::SimOutput;
use crate::Version;

/// Behaviour switches of one smolvm version, each named after what changed and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    pub(crate) version: Version,
}

impl Features {
    pub(crate) fn new(version: Version) -> Features {
        Features { version }
    }

    fn since(self, major: u32, minor: u32, patch: u32) -> bool {
        self.version >= Version::new(major, minor, patch)
    }

    /// `create`/`delete` take `-n/--name` instead of a positional (v1.0.2, `67a09b27`).
    pub(crate) fn name_flag(self) -> bool {
        self.since(1, 0, 2)
    }
    /// `--label` and the JSON `labels` object (v1.8.0, `8aed1aca`).
    pub(crate) fn labels(self) -> bool {
        self.since(1, 8, 0)
    }
    /// `--from` keeps `--allow-cidr` and lets it switch networking on (v1.8.0, `f8a6fa62`).
    pub(crate) fn keeps_egress_with_from(self) -> bool {
        self.since(1, 8, 0)
    }
    /// `delete` stops a running machine first (v0.8.1, `19521e79`).
    pub(crate) fn delete_stops_running(self) -> bool {
        self.since(0, 8, 1)
    }
    /// `stop` of an unknown name is `Error: vm not found` instead of exit 0 (v0.8.1).
    pub(crate) fn stop_unknown_is_error(self) -> bool {
        self.since(0, 8, 1)
    }
    /// `-e KEY` copies KEY from smolvm's own environment instead of dropping it (v0.8.1).
    pub(crate) fn env_from_host(self) -> bool {
        self.since(0, 8, 1)
    }
    /// `--image ""` is rejected by clap (v0.8.1, `b599a674`).
    pub(crate) fn rejects_empty_image(self) -> bool {
        self.since(0, 8, 1)
    }
    /// `status` prints the actual state instead of `not running`; duplicate-create wording
    /// gains `or is being created`; too much exec output is an error, not a truncation;
    /// create takes a workload command (all v1.0.0).
    pub(crate) fn v1(self) -> bool {
        self.since(1, 0, 0)
    }
    /// A registry `--image` without network is refused at create (v1.7.3, `57e77e5e`).
    pub(crate) fn registry_needs_network(self) -> bool {
        self.since(1, 7, 3)
    }
    /// `--secret-env`/`--secret-file` on create and exec (v1.0.0, `8387ea95`).
    pub(crate) fn secrets(self) -> bool {
        self.since(1, 0, 0)
    }
    /// `create --dns IPv4` (v1.3.0).
    pub(crate) fn dns(self) -> bool {
        self.since(1, 3, 0)
    }
    /// Published ports go through virtio-net, bound by the host at start (v1.1.0); before,
    /// TSI binds a host port only when the guest listens.
    pub(crate) fn virtio_net_ports(self) -> bool {
        self.since(1, 1, 0)
    }
    /// `-v` is split from the right, so a host path may hold a `:` (v1.4.0).
    pub(crate) fn volume_split_from_right(self) -> bool {
        self.since(1, 4, 0)
    }
    /// `agent-console.log` is truncated at every boot instead of appended to (v1.7.0).
    pub(crate) fn console_truncated_each_boot(self) -> bool {
        self.since(1, 7, 0)
    }
    /// `/boot` joins the protected mount sources (the simulation's choice: v1.9.0; the
    /// notes only know v0.8.2 without it and v1.9.2 with it).
    pub(crate) fn protects_boot(self) -> bool {
        self.since(1, 9, 0)
    }
    /// `machine fork GOLDEN CLONE` and `machine start --forkable` (v1.0.0).
    pub(crate) fn fork(self) -> bool {
        self.since(1, 0, 0)
    }
    /// `fork -e/--env`, `--secret-env`, `--secret-file`; `delete --cascade`; every VM has a
    /// control socket, so forking a non-forkable golden fails in the VMM (v1.7.0).
    pub(crate) fn fork_env_and_cascade(self) -> bool {
        self.since(1, 7, 0)
    }
    /// A frozen golden shows as `frozen`, and `start`/`stop` refuse it while it has clones
    /// (v1.3.0, `25de6e8e`).
    pub(crate) fn frozen_state(self) -> bool {
        self.since(1, 3, 0)
    }
    /// A second single fork of a frozen golden is refused (v1.7.3 to v1.7.5; v1.7.6 keeps a
    /// retained checkpoint).
    pub(crate) fn refuses_second_fork(self) -> bool {
        self.since(1, 7, 3) && !self.since(1, 7, 6)
    }
    /// `data-dir` of an unknown name is `vm not found` instead of a path (v0.8.1).
    pub(crate) fn data_dir_unknown_is_error(self) -> bool {
        self.since(0, 8, 1)
    }
}

/// Arguments of `machine create`, as parsed (values not yet checked by smolvm itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CreateArgs {
    pub(crate) name: Option<String>,
    pub(crate) image: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) net: bool,
    /// Already normalised (`10.0.0.1` → `10.0.0.1/32`).
    pub(crate) cidrs: Vec<String>,
    /// Raw `KEY=VALUE` specs, parsed by `parse_env_spec` at run time.
    pub(crate) env: Vec<String>,
    /// Raw `KEY=VALUE` specs, parsed by `parse_labels` at run time.
    pub(crate) labels: Vec<String>,
    pub(crate) cpus: Option<u32>,
    pub(crate) mem: Option<u32>,
    pub(crate) storage: Option<u64>,
    pub(crate) overlay: Option<u64>,
    /// `-p` mappings, already parsed by clap's value parser.
    pub(crate) ports: Vec<(u16, u16)>,
    /// Raw `-v` specs, parsed at run time (exit 1), as smolvm does.
    pub(crate) volumes: Vec<String>,
    /// Raw `--allow-host` values, resolved at run time.
    pub(crate) allow_hosts: Vec<String>,
    pub(crate) secret_env: Vec<String>,
    pub(crate) secret_file: Vec<String>,
    pub(crate) dns: Option<String>,
    pub(crate) workdir: Option<String>,
    pub(crate) command: Vec<String>,
}

/// Arguments of `machine exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExecArgs {
    pub(crate) name: Option<String>,
    pub(crate) workdir: Option<String>,
    pub(crate) env: Vec<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream: bool,
    pub(crate) secret_env: Vec<String>,
    pub(crate) secret_file: Vec<String>,
    pub(crate) argv: Vec<String>,
}

/// Arguments of `machine fork` (single clone; batches are not simulated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ForkArgs {
    pub(crate) golden: String,
    pub(crate) name: Option<String>,
    /// `-p` pins, already parsed by clap's value parser.
    pub(crate) ports: Vec<(u16, u16)>,
    /// Raw `-e` specs, checked at run time.
    pub(crate) env: Vec<String>,
    pub(crate) secret_env: Vec<String>,
    pub(crate) secret_file: Vec<String>,
    pub(crate) forkable: bool,
}

/// Arguments of `pack create`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackArgs {
    pub(crate) image: String,
    pub(crate) output: String,
    pub(crate) cpus: Option<u32>,
    pub(crate) mem: Option<u32>,
    pub(crate) entrypoint: Option<String>,
    pub(crate) single_file: bool,
}

/// One parsed invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Version,
    Help(String),
    Pack(PackArgs),
    Create(Box<CreateArgs>),
    Start {
        name: Option<String>,
        forkable: bool,
    },
    Stop {
        name: Option<String>,
    },
    Delete {
        name: String,
        force: bool,
        cascade: bool,
    },
    Fork(ForkArgs),
    Exec(ExecArgs),
    Cp {
        src: String,
        dst: String,
    },
    Ls {
        json: bool,
        verbose: bool,
    },
    Status {
        name: Option<String>,
        json: bool,
    },
    DataDir {
        name: String,
    },
    /// A real subcommand the simulation does not model (e.g. `serve`, `machine run`).
    NotSimulated(String),
}

impl Command {
    /// The knob key (`fail`, `latency`, `hang`) of this command.
    pub(crate) fn key(&self) -> Option<&'static str> {
        Some(match self {
            Command::Version => "version",
            Command::Pack(_) => "pack",
            Command::Create(_) => "create",
            Command::Start { .. } => "start",
            Command::Stop { .. } => "stop",
            Command::Delete { .. } => "delete",
            Command::Fork(_) => "fork",
            Command::Exec(_) => "exec",
            Command::Cp { .. } => "cp",
            Command::Ls { .. } => "ls",
            Command::Status { .. } => "status",
            Command::DataDir { .. } => "data-dir",
            Command::Help(_) | Command::NotSimulated(_) => return None,
        })
    }
}

/// A clap usage error: `error: MSG`, the usage line when clap prints one, and the help hint.
pub(crate) fn clap_error(msg: &str, usage: Option<&str>) -> SimOutput {
    let mut text = format!("error: {msg}\n");
    if let Some(usage) = usage {
        text.push_str(&format!("\nUsage: {usage}\n"));
    }
    text.push_str("\nFor more information, try '--help'.\n");
    SimOutput {
        code: 2,
        stdout: Vec::new(),
        stderr: text.into_bytes(),
    }
}

type Check = fn(&str, Features) -> Result<(), String>;

#[derive(Clone, Copy)]
struct Opt {
    long: &'static str,
    short: Option<char>,
    /// `None` for a flag without a value.
    value_name: Option<&'static str>,
    multiple: bool,
    check: Option<Check>,
}

impl Opt {
    fn flag(long: &'static str, short: Option<char>) -> Opt {
        Opt {
            long,
            short,
            value_name: None,
            multiple: false,
            check: None,
        }
    }

    fn value(long: &'static str, short: Option<char>, value_name: &'static str) -> Opt {
        Opt {
            long,
            short,
            value_name: Some(value_name),
            multiple: false,
            check: None,
        }
    }

    fn many(self) -> Opt {
        Opt {
            multiple: true,
            ..self
        }
    }

    fn checked(self, check: Check) -> Opt {
        Opt {
            check: Some(check),
            ..self
        }
    }

    /// How clap names the argument in messages: the long form, with the value name.
    fn display(&self) -> String {
        match self.value_name {
            Some(v) => format!("--{} <{v}>", self.long),
            None => format!("--{}", self.long),
        }
    }
}

#[derive(Clone, Copy)]
struct Trailing {
    name: &'static str,
    required: bool,
    /// clap's `last = true`: only words after `--` are accepted.
    after_separator_only: bool,
}

struct Spec {
    usage: String,
    opts: Vec<Opt>,
    /// Positional names and whether each is required.
    positionals: Vec<(&'static str, bool)>,
    trailing: Option<Trailing>,
    required_opts: Vec<&'static str>,
    /// Pairs that cannot be used together.
    conflicts: Vec<(&'static str, &'static str)>,
}

impl Spec {
    fn new(usage: impl Into<String>, opts: Vec<Opt>) -> Spec {
        Spec {
            usage: usage.into(),
            opts,
            positionals: Vec::new(),
            trailing: None,
            required_opts: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    fn long(&self, name: &str) -> Option<&Opt> {
        self.opts.iter().find(|o| o.long == name)
    }

    fn short(&self, c: char) -> Option<&Opt> {
        self.opts.iter().find(|o| o.short == Some(c))
    }

    fn usage_error(&self, msg: &str) -> SimOutput {
        clap_error(msg, Some(&self.usage))
    }
}

#[derive(Default, Debug)]
struct Matches {
    /// (long name, value) in argv order; flags have no value.
    seen: Vec<(&'static str, Option<String>)>,
    positionals: Vec<String>,
    trailing: Vec<String>,
}

impl Matches {
    fn flag(&self, long: &str) -> bool {
        self.seen.iter().any(|(l, _)| *l == long)
    }

    fn one(&self, long: &str) -> Option<String> {
        self.all(long).into_iter().next()
    }

    fn all(&self, long: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(l, _)| *l == long)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    fn position(&self, long: &str) -> Option<usize> {
        self.seen.iter().position(|(l, _)| *l == long)
    }
}

enum Parsed {
    Matches(Matches),
    Help,
}

/// Does clap take this word for a flag rather than a value? (`-` alone is a value: stdin.)
fn looks_like_flag(word: &str) -> bool {
    word.len() > 1 && word.starts_with('-')
}

fn parse_with(spec: &Spec, args: &[String], f: Features) -> Result<Parsed, SimOutput> {
    let mut m = Matches::default();
    let mut i = 0;
    let mut after_separator = false;
    let mut in_trailing = false;

    // Record an option occurrence, running its value parser as clap does: immediately.
    let record = |m: &mut Matches, opt: &Opt, value: Option<String>| -> Result<(), SimOutput> {
        if !opt.multiple && m.flag(opt.long) {
            return Err(spec.usage_error(&format!(
                "the argument '{}' cannot be used multiple times",
                opt.display()
            )));
        }
        if let (Some(check), Some(v)) = (opt.check, value.as_deref()) {
            if let Err(reason) = check(v, f) {
                return Err(clap_error(
                    &format!("invalid value '{v}' for '{}': {reason}", opt.display()),
                    None,
                ));
            }
        }
        m.seen.push((opt.long, value));
        Ok(())
    };
    let missing_value = |opt: &Opt| {
        clap_error(
            &format!(
                "a value is required for '{}' but none was supplied",
                opt.display()
            ),
            None,
        )
    };

    while i < args.len() {
        let word = &args[i];
        i += 1;
        if in_trailing {
            m.trailing.push(word.clone());
            continue;
        }
        if !after_separator {
            if word == "--" {
                after_separator = true;
                continue;
            }
            if word == "--help" || word == "-h" {
                return Ok(Parsed::Help);
            }
            if let Some(body) = word.strip_prefix("--") {
                let (name, attached) = match body.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (body, None),
                };
                let Some(opt) = spec.long(name) else {
                    return Err(spec.usage_error(&format!("unexpected argument '--{name}' found")));
                };
                let value = if opt.value_name.is_some() {
                    match attached {
                        Some(v) => Some(v),
                        None if i < args.len() && !looks_like_flag(&args[i]) => {
                            i += 1;
                            Some(args[i - 1].clone())
                        }
                        None => return Err(missing_value(opt)),
                    }
                } else {
                    if let Some(v) = attached {
                        return Err(spec.usage_error(&format!(
                            "unexpected value '{v}' for '{}' found; no more were expected",
                            opt.display()
                        )));
                    }
                    None
                };
                record(&mut m, opt, value)?;
                continue;
            }
            if looks_like_flag(word) {
                // A cluster of shorts: flags, then at most one option that takes the rest.
                let chars: Vec<char> = word.chars().skip(1).collect();
                let mut k = 0;
                while k < chars.len() {
                    let c = chars[k];
                    if c == 'h' {
                        return Ok(Parsed::Help);
                    }
                    let Some(opt) = spec.short(c) else {
                        return Err(spec.usage_error(&format!("unexpected argument '-{c}' found")));
                    };
                    if opt.value_name.is_none() {
                        record(&mut m, opt, None)?;
                        k += 1;
                        continue;
                    }
                    let rest: String = chars[k + 1..].iter().collect();
                    let value = if !rest.is_empty() {
                        rest.strip_prefix('=').unwrap_or(&rest).to_string()
                    } else if i < args.len() && !looks_like_flag(&args[i]) {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(missing_value(opt));
                    };
                    record(&mut m, opt, Some(value))?;
                    break;
                }
                continue;
            }
        }
        if m.positionals.len() < spec.positionals.len() {
            m.positionals.push(word.clone());
            continue;
        }
        if let Some(t) = spec.trailing {
            if after_separator || !t.after_separator_only {
                in_trailing = true;
                m.trailing.push(word.clone());
                continue;
            }
        }
        return Err(spec.usage_error(&format!("unexpected argument '{word}' found")));
    }

    for (a, b) in &spec.conflicts {
        if let (Some(pa), Some(pb)) = (m.position(a), m.position(b)) {
            // clap names the one given first.
            let (first, second) = if pa < pb { (a, b) } else { (b, a) };
            let show = |l: &str| spec.long(l).map(Opt::display).unwrap_or_default();
            return Err(spec.usage_error(&format!(
                "the argument '{}' cannot be used with '{}'",
                show(first),
                show(second)
            )));
        }
    }

    let mut missing = Vec::new();
    for long in &spec.required_opts {
        if !m.flag(long) {
            if let Some(opt) = spec.long(long) {
                missing.push(opt.display());
            }
        }
    }
    for (idx, (name, required)) in spec.positionals.iter().enumerate() {
        if *required && m.positionals.len() <= idx {
            missing.push(format!("<{name}>"));
        }
    }
    if let Some(t) = spec.trailing {
        if t.required && m.trailing.is_empty() {
            missing.push(format!("<{}>...", t.name));
        }
    }
    if !missing.is_empty() {
        let list: String = missing.iter().map(|m| format!("\n  {m}")).collect();
        return Err(spec.usage_error(&format!(
            "the following required arguments were not provided:{list}"
        )));
    }
    Ok(Parsed::Matches(m))
}

fn check_cidr(value: &str, _: Features) -> Result<(), String> {
    parse_cidr(value).map(drop)
}

fn check_timeout(value: &str, _: Features) -> Result<(), String> {
    parse_timeout(value).map(drop)
}

fn check_image(value: &str, f: Features) -> Result<(), String> {
    if f.rejects_empty_image() && value.trim().is_empty() {
        return Err("image reference cannot be empty".to_string());
    }
    Ok(())
}

fn check_u32(value: &str, _: Features) -> Result<(), String> {
    ranged(value, u64::from(u32::MAX))
}

/// clap's ranged integer parsers: an `i64` first (its error text), then the range.
fn ranged(value: &str, max: u64) -> Result<(), String> {
    let n: i64 = value
        .parse()
        .map_err(|e: std::num::ParseIntError| e.to_string())?;
    if n < 0 || n as u64 > max {
        return Err(format!("{n} is not in 0..={max}"));
    }
    Ok(())
}

fn check_u8(value: &str, _: Features) -> Result<(), String> {
    ranged(value, u64::from(u8::MAX))
}

fn check_u64(value: &str, _: Features) -> Result<(), String> {
    value.parse::<u64>().map(drop).map_err(|e| e.to_string())
}

fn check_port(value: &str, _: Features) -> Result<(), String> {
    parse_port(value).map(drop)
}

fn check_ipv4(value: &str, _: Features) -> Result<(), String> {
    value
        .parse::<std::net::Ipv4Addr>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `PortMapping::parse` (same in every version): `HOST:GUEST` split at the first `:`, or
/// `PORT` for both sides; TCP only, no address, no range, no zero.
pub(crate) fn parse_port(value: &str) -> Result<(u16, u16), String> {
    let zero = |side: &str| format!("{side} 0 is not valid for VM port forwarding");
    let (host, guest) = match value.split_once(':') {
        Some((h, g)) => {
            let host: u16 = h.parse().map_err(|_| format!("invalid host port: {h}"))?;
            let guest: u16 = g.parse().map_err(|_| format!("invalid guest port: {g}"))?;
            (host, guest)
        }
        None => {
            let p: u16 = value
                .parse()
                .map_err(|_| format!("invalid port: {value}"))?;
            if p == 0 {
                return Err(zero("port"));
            }
            (p, p)
        }
    };
    if host == 0 {
        return Err(zero("host port"));
    }
    if guest == 0 {
        return Err(zero("guest port"));
    }
    Ok((host, guest))
}

fn num<T: std::str::FromStr>(m: &Matches, long: &str) -> Option<T> {
    m.one(long).and_then(|v| v.parse().ok())
}

const TOP_USAGE: &str = "smolvm <COMMAND>";
const MACHINE_USAGE: &str = "smolvm machine <COMMAND>";

/// Subcommands that exist in the real CLI but are not modelled; they get a clear message
/// instead of a misleading clap error.
const UNSIMULATED_MACHINE: &[&str] = &[
    "run",
    "update",
    "logs",
    "images",
    "prune",
    "monitor",
    "resize",
    "export",
    "attach",
    "shell",
    "fork-release",
];

/// Parse a full argv (without the program name) as smolvm `version` would.
pub(crate) fn parse(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let Some(first) = args.first() else {
        return Err(clap_error(
            "'smolvm' requires a subcommand but one was not provided\n  [subcommands: machine, serve, pack, config, help]",
            Some(TOP_USAGE),
        ));
    };
    match first.as_str() {
        "--version" | "-V" => Ok(Command::Version),
        "--help" | "-h" | "help" => Ok(Command::Help(top_help(f))),
        "machine" | "vm" => parse_machine(&args[1..], f),
        "pack" => match args.get(1).map(String::as_str) {
            Some("create") => parse_pack_create(&args[2..], f),
            Some("--help" | "-h") => Ok(Command::Help(top_help(f))),
            Some(other) if !other.starts_with('-') => {
                Ok(Command::NotSimulated(format!("pack {other}")))
            }
            Some(other) => Err(clap_error(
                &format!("unexpected argument '{other}' found"),
                Some("smolvm pack <COMMAND>"),
            )),
            None => Err(clap_error(
                "'smolvm pack' requires a subcommand but one was not provided",
                Some("smolvm pack <COMMAND>"),
            )),
        },
        "serve" | "config" => Ok(Command::NotSimulated(first.clone())),
        other if looks_like_flag(other) => Err(clap_error(
            &format!("unexpected argument '{other}' found"),
            Some(TOP_USAGE),
        )),
        other => Err(clap_error(
            &format!("unrecognized subcommand '{other}'"),
            Some(TOP_USAGE),
        )),
    }
}

fn top_help(f: Features) -> String {
    format!(
        "smolvm {} (simulated by smolvm-harness)\n\nUsage: {TOP_USAGE}\n\nCommands:\n  machine  \
         Manage machines [aliases: vm]\n  pack     Package an image into a .smolmachine\n",
        f.version
    )
}

fn parse_machine(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let Some(sub) = args.first() else {
        return Err(clap_error(
            "'smolvm machine' requires a subcommand but one was not provided\n  [subcommands: create, start, stop, delete, exec, cp, ls, status]",
            Some(MACHINE_USAGE),
        ));
    };
    let rest = &args[1..];
    match sub.as_str() {
        "create" => parse_create(rest, f),
        "start" => parse_start(rest, f),
        "fork" if f.fork() => parse_fork(rest, f),
        "stop" => Ok(match name_only("stop", rest, f)? {
            Ok(name) => Command::Stop { name },
            Err(help) => help,
        }),
        "delete" | "rm" => parse_delete(rest, f),
        "exec" => parse_exec(rest, f),
        "cp" => parse_cp(rest, f),
        "ls" | "list" => parse_ls(rest, f),
        "status" => parse_status(rest, f),
        "data-dir" => parse_data_dir(rest, f),
        "--help" | "-h" | "help" => Ok(Command::Help(top_help(f))),
        s if UNSIMULATED_MACHINE.contains(&s) => Ok(Command::NotSimulated(format!("machine {s}"))),
        s if looks_like_flag(s) => Err(clap_error(
            &format!("unexpected argument '{s}' found"),
            Some(MACHINE_USAGE),
        )),
        s => Err(clap_error(
            &format!("unrecognized subcommand '{s}'"),
            Some(MACHINE_USAGE),
        )),
    }
}

fn matches_or_help(
    spec: &Spec,
    args: &[String],
    f: Features,
) -> Result<Result<Matches, Command>, SimOutput> {
    Ok(match parse_with(spec, args, f)? {
        Parsed::Matches(m) => Ok(m),
        Parsed::Help => Err(Command::Help(format!("Usage: {}\n", spec.usage))),
    })
}

fn parse_create(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut opts = vec![
        Opt::value("image", Some('I'), "IMAGE").checked(check_image),
        Opt::value("from", None, "PATH"),
        Opt::flag("net", None),
        Opt::value("allow-cidr", None, "CIDR")
            .many()
            .checked(check_cidr),
        Opt::value("env", Some('e'), "KEY=VALUE").many(),
        Opt::value("cpus", None, "N").checked(check_u8),
        Opt::value("mem", None, "MiB").checked(check_u32),
        Opt::value("storage", None, "GiB").checked(check_u64),
        Opt::value("overlay", None, "GiB").checked(check_u64),
        Opt::value("volume", Some('v'), "HOST:GUEST[:ro]").many(),
        Opt::value("port", Some('p'), "HOST:GUEST")
            .many()
            .checked(check_port),
        Opt::value("allow-host", None, "HOSTNAME").many(),
        Opt::value("workdir", Some('w'), "DIR"),
    ];
    if f.secrets() {
        opts.push(Opt::value("secret-env", None, "KEY=HOST_VAR").many());
        opts.push(Opt::value("secret-file", None, "KEY=PATH").many());
    }
    if f.dns() {
        opts.push(Opt::value("dns", None, "IP").checked(check_ipv4));
    }
    if f.name_flag() {
        opts.push(Opt::value("name", Some('n'), "NAME"));
    }
    if f.labels() {
        opts.push(Opt::value("label", None, "KEY=VALUE").many());
    }
    let usage = if f.name_flag() {
        "smolvm machine create [OPTIONS] [-- <COMMAND>...]"
    } else if f.v1() {
        "smolvm machine create [OPTIONS] [NAME] [COMMAND]..."
    } else {
        "smolvm machine create [OPTIONS] [NAME]"
    };
    let mut spec = Spec::new(usage, opts);
    spec.conflicts.push(("from", "image"));
    if !f.name_flag() {
        spec.positionals.push(("NAME", false));
    }
    if f.v1() {
        spec.trailing = Some(Trailing {
            name: "COMMAND",
            required: false,
            after_separator_only: f.name_flag(),
        });
    }
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    let name = name_of(&m, f);
    let cidrs = m
        .all("allow-cidr")
        .iter()
        .filter_map(|c| parse_cidr(c).ok())
        .collect();
    Ok(Command::Create(Box::new(CreateArgs {
        name,
        image: m.one("image"),
        from: m.one("from"),
        net: m.flag("net"),
        cidrs,
        env: m.all("env"),
        labels: m.all("label"),
        cpus: num(&m, "cpus"),
        mem: num(&m, "mem"),
        storage: num(&m, "storage"),
        overlay: num(&m, "overlay"),
        ports: m
            .all("port")
            .iter()
            .filter_map(|p| parse_port(p).ok())
            .collect(),
        volumes: m.all("volume"),
        allow_hosts: m.all("allow-host"),
        secret_env: m.all("secret-env"),
        secret_file: m.all("secret-file"),
        dns: m.one("dns"),
        workdir: m.one("workdir"),
        command: m.trailing,
    })))
}

/// The machine name: `--name` from 1.0.2, the first positional before.
fn name_of(m: &Matches, f: Features) -> Option<String> {
    if f.name_flag() {
        m.one("name")
    } else {
        m.positionals.first().cloned()
    }
}

fn name_only(
    sub: &str,
    args: &[String],
    f: Features,
) -> Result<Result<Option<String>, Command>, SimOutput> {
    let spec = Spec::new(
        format!("smolvm machine {sub} [OPTIONS]"),
        vec![Opt::value("name", Some('n'), "NAME")],
    );
    Ok(matches_or_help(&spec, args, f)?.map(|m| m.one("name")))
}

fn parse_start(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut opts = vec![Opt::value("name", Some('n'), "NAME")];
    if f.fork() {
        opts.push(Opt::flag("forkable", None));
    }
    let spec = Spec::new("smolvm machine start [OPTIONS]", opts);
    Ok(match matches_or_help(&spec, args, f)? {
        Ok(m) => Command::Start {
            name: m.one("name"),
            forkable: m.flag("forkable"),
        },
        Err(help) => help,
    })
}

/// `machine fork`: `GOLDEN CLONE` positionals before 1.0.2, `--golden G -n C` after; `-e`
/// and the secret flags from 1.7.0.
fn parse_fork(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut opts = vec![
        Opt::value("port", Some('p'), "HOST:GUEST")
            .many()
            .checked(check_port),
        Opt::flag("forkable", None),
    ];
    if f.fork_env_and_cascade() {
        opts.push(Opt::value("env", Some('e'), "KEY=VALUE").many());
        opts.push(Opt::value("secret-env", None, "KEY=HOST_VAR").many());
        opts.push(Opt::value("secret-file", None, "KEY=PATH").many());
    }
    let mut spec;
    if f.name_flag() {
        opts.push(Opt::value("golden", None, "GOLDEN"));
        opts.push(Opt::value("name", Some('n'), "NAME"));
        spec = Spec::new("smolvm machine fork [OPTIONS] --golden <GOLDEN>", opts);
        spec.required_opts.push("golden");
    } else {
        spec = Spec::new("smolvm machine fork [OPTIONS] <GOLDEN> <CLONE>", opts);
        spec.positionals = vec![("GOLDEN", true), ("CLONE", true)];
    }
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    let (golden, name) = if f.name_flag() {
        (m.one("golden").unwrap_or_default(), m.one("name"))
    } else {
        let mut p = m.positionals.iter().cloned();
        (p.next().unwrap_or_default(), p.next())
    };
    Ok(Command::Fork(ForkArgs {
        golden,
        name,
        ports: m
            .all("port")
            .iter()
            .filter_map(|p| parse_port(p).ok())
            .collect(),
        env: m.all("env"),
        secret_env: m.all("secret-env"),
        secret_file: m.all("secret-file"),
        forkable: m.flag("forkable"),
    }))
}

fn parse_delete(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut opts = vec![Opt::flag("force", Some('f'))];
    let mut spec;
    if f.name_flag() {
        opts.push(Opt::value("name", Some('n'), "NAME"));
        if f.fork_env_and_cascade() {
            opts.push(Opt::flag("cascade", None));
        }
        spec = Spec::new("smolvm machine delete [OPTIONS] --name <NAME>", opts);
        spec.required_opts.push("name");
    } else {
        spec = Spec::new("smolvm machine delete [OPTIONS] <NAME>", opts);
        spec.positionals.push(("NAME", true));
    }
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    let name = name_of(&m, f);
    Ok(Command::Delete {
        name: name.unwrap_or_default(),
        force: m.flag("force"),
        cascade: m.flag("cascade"),
    })
}

fn parse_exec(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut opts = vec![
        // No short form: `-n` is an error in every version.
        Opt::value("name", None, "NAME"),
        Opt::value("workdir", Some('w'), "WORKDIR"),
        Opt::value("env", Some('e'), "KEY=VALUE").many(),
        Opt::value("timeout", None, "DURATION").checked(check_timeout),
        Opt::flag("interactive", Some('i')),
        Opt::flag("tty", Some('t')),
        Opt::flag("stream", None),
    ];
    if f.secrets() {
        opts.push(Opt::value("secret-env", None, "KEY=HOST_VAR").many());
        opts.push(Opt::value("secret-file", None, "KEY=PATH").many());
    }
    let mut spec = Spec::new("smolvm machine exec [OPTIONS] <COMMAND>...", opts);
    spec.trailing = Some(Trailing {
        name: "COMMAND",
        required: true,
        after_separator_only: false,
    });
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    Ok(Command::Exec(ExecArgs {
        name: m.one("name"),
        workdir: m.one("workdir"),
        env: m.all("env"),
        timeout: m.one("timeout").and_then(|t| parse_timeout(&t).ok()),
        stream: m.flag("stream"),
        secret_env: m.all("secret-env"),
        secret_file: m.all("secret-file"),
        argv: m.trailing,
    }))
}

fn parse_cp(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut spec = Spec::new("smolvm machine cp <SRC> <DST>", Vec::new());
    spec.positionals = vec![("SRC", true), ("DST", true)];
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    let mut p = m.positionals.into_iter();
    Ok(Command::Cp {
        src: p.next().unwrap_or_default(),
        dst: p.next().unwrap_or_default(),
    })
}

fn parse_ls(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let spec = Spec::new(
        "smolvm machine ls [OPTIONS]",
        vec![Opt::flag("verbose", Some('v')), Opt::flag("json", None)],
    );
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    Ok(Command::Ls {
        json: m.flag("json"),
        verbose: m.flag("verbose"),
    })
}

fn parse_status(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let spec = Spec::new(
        "smolvm machine status [OPTIONS]",
        vec![
            Opt::value("name", Some('n'), "NAME"),
            Opt::flag("json", None),
        ],
    );
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    Ok(Command::Status {
        name: m.one("name"),
        json: m.flag("json"),
    })
}

fn parse_data_dir(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut spec;
    if f.name_flag() {
        spec = Spec::new(
            "smolvm machine data-dir --name <NAME>",
            vec![Opt::value("name", Some('n'), "NAME")],
        );
        spec.required_opts.push("name");
    } else {
        spec = Spec::new("smolvm machine data-dir <NAME>", Vec::new());
        spec.positionals.push(("NAME", true));
    }
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    let name = name_of(&m, f);
    Ok(Command::DataDir {
        name: name.unwrap_or_default(),
    })
}

fn parse_pack_create(args: &[String], f: Features) -> Result<Command, SimOutput> {
    let mut spec = Spec::new(
        "smolvm pack create [OPTIONS] --output <OUTPUT>",
        vec![
            Opt::value("image", Some('I'), "IMAGE").checked(check_image),
            Opt::value("output", Some('o'), "OUTPUT"),
            Opt::value("cpus", None, "N").checked(check_u32),
            Opt::value("mem", None, "MiB").checked(check_u32),
            Opt::value("oci-platform", None, "OS/ARCH"),
            Opt::value("entrypoint", None, "CMD"),
            Opt::flag("no-sign", None),
            Opt::flag("single-file", None),
        ],
    );
    // `--from-vm` and `-s` are not simulated, so `--image` is always required here.
    spec.required_opts = vec!["image", "output"];
    let m = match matches_or_help(&spec, args, f)? {
        Ok(m) => m,
        Err(help) => return Ok(help),
    };
    Ok(Command::Pack(PackArgs {
        image: m.one("image").unwrap_or_default(),
        output: m.one("output").unwrap_or_default(),
        cpus: num(&m, "cpus"),
        mem: num(&m, "mem"),
        entrypoint: m.one("entrypoint"),
        single_file: m.flag("single-file"),
    }))
}

/// `--allow-cidr`: `ipnet` syntax or a bare address; the address is kept as given (host bits
/// are not cleared), IPv6 is printed canonically.
pub(crate) fn parse_cidr(value: &str) -> Result<String, String> {
    let bad = || format!("invalid CIDR '{value}': expected format like 10.0.0.0/8 or 1.1.1.1");
    let (addr, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (value, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(p) => {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let len: u32 = p.parse().map_err(|_| bad())?;
            if len > max {
                return Err(bad());
            }
            len
        }
    };
    Ok(format!("{ip}/{len}"))
}

/// `--timeout`: humantime's grammar, then smolvm's own "greater than 0" check.
pub(crate) fn parse_timeout(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d.is_zero() {
        return Err("timeout must be greater than 0 (e.g., 5sec, 30s)".to_string());
    }
    Ok(d)
}

/// `humantime::parse_duration`: `<number><unit>` parts, optionally separated by spaces;
/// error texts are humantime's, since clap prints them verbatim.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0; // nanoseconds
    let skip_ws = |pos: &mut usize| {
        while *pos < bytes.len() && bytes[*pos].is_ascii_whitespace() {
            *pos += 1;
        }
    };
    skip_ws(&mut pos);
    if pos == bytes.len() {
        return Err("value was empty".to_string());
    }
    while pos < bytes.len() {
        if !bytes[pos].is_ascii_digit() {
            return Err(format!("expected number at {pos}"));
        }
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let int_part = &text[start..pos];
        let mut frac_part = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            let fs = pos + 1;
            pos = fs;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            frac_part = &text[fs..pos];
        }
        let number_end = pos;
        // humantime lets spaces sit between a number and its unit (`30 s`).
        skip_ws(&mut pos);
        let unit_start = pos;
        while pos < text.len() {
            let Some(c) = text[pos..].chars().next() else {
                break;
            };
            if c.is_alphabetic() {
                pos += c.len_utf8();
            } else {
                break;
            }
        }
        let unit = &text[unit_start..pos];
        if pos < bytes.len() && !bytes[pos].is_ascii_whitespace() && !bytes[pos].is_ascii_digit() {
            return Err(format!("invalid character at {pos}"));
        }
        let number_text = &text[start..number_end];
        let per_unit: u128 = match unit {
            "nanos" | "nsec" | "ns" => 1,
            "usec" | "us" | "µs" => 1_000,
            "millis" | "msec" | "ms" => 1_000_000,
            "seconds" | "second" | "secs" | "sec" | "s" => 1_000_000_000,
            "minutes" | "minute" | "min" | "mins" | "m" => 60_000_000_000,
            "hours" | "hour" | "hr" | "hrs" | "h" => 3_600_000_000_000,
            "days" | "day" | "d" => 86_400_000_000_000,
            "weeks" | "week" | "wk" | "wks" | "w" => 604_800_000_000_000,
            "months" | "month" | "M" => 2_630_016_000_000_000,
            "years" | "year" | "yr" | "yrs" | "y" => 31_557_600_000_000_000,
            "" => {
                return Err(format!(
                    "time unit needed, for example {number_text}sec or {number_text}ms"
                ))
            }
            other => {
                return Err(format!(
                    "unknown time unit {other:?}, supported units: ns, us, ms, sec, min, hours, \
                     days, weeks, months, years (and few variations)"
                ))
            }
        };
        let too_large = || "number is too large".to_string();
        let int: u128 = int_part.parse().map_err(|_| too_large())?;
        let mut nanos = int.checked_mul(per_unit).ok_or_else(too_large)?;
        if !frac_part.is_empty() {
            // Digits past nanosecond precision cannot matter; keep the arithmetic in range.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| too_large())?;
            nanos += frac * per_unit / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        skip_ws(&mut pos);
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "number is too large")?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// `parse_env_spec` (§5): split at the first `=`, drop an empty key or an empty spec; a bare
/// `KEY` is dropped before v0.8.1 and copied from smolvm's own environment after.
pub(crate) fn parse_env_spec(
    spec: &str,
    f: Features,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    if spec.is_empty() {
        return None;
    }
    match spec.split_once('=') {
        Some(("", _)) => None,
        Some((k, v)) => Some((k.to_string(), v.to_string())),
        None if f.env_from_host() => lookup(spec).map(|v| (spec.to_string(), v)),
        None => None,
    }
}

/// `parse_labels` (v1.8.0+): `KEY=VALUE`, last value of a repeated key wins.
pub(crate) fn parse_labels(
    specs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    for spec in specs {
        let Some((k, v)) = spec.split_once('=') else {
            return Err(format!("--label: expected KEY=VALUE, got '{spec}'"));
        };
        if k.is_empty() {
            return Err(format!("--label: label key cannot be empty (in '{spec}')"));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

/// `validate_vm_name` (§3), same in every version.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    const MAX: usize = 128;
    let Some(first) = name.chars().next() else {
        return Err("machine name cannot be empty".to_string());
    };
    if name.len() > MAX {
        return Err(format!(
            "machine name too long: {} characters (max {MAX})",
            name.len()
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "machine name must start with a letter or digit (got: {name:?})"
        ));
    }
    for c in name.chars() {
        if c == '/' || c == '\\' {
            return Err("machine name cannot contain path separators".to_string());
        }
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("machine name contains invalid character: {c:?}"));
        }
    }
    if name.contains("--") {
        return Err("machine name cannot contain consecutive hyphens".to_string());
    }
    if name.ends_with('-') {
        return Err("machine name cannot end with a hyphen".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Version = Version::new(0, 8, 0);
    const NEW: Version = Version::new(1, 9, 2);

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    fn p(v: Version, words: &[&str]) -> Result<Command, SimOutput> {
        parse(&argv(words), Features::new(v))
    }

    fn first_err_line(r: Result<Command, SimOutput>) -> (i32, String) {
        let out = r.expect_err("expected a usage error");
        let text = String::from_utf8(out.stderr).unwrap();
        (out.code, text.lines().next().unwrap_or("").to_string())
    }

    #[test]
    fn create_name_is_positional_before_1_0_2_and_a_flag_after() {
        let Command::Create(c) =
            p(OLD, &["machine", "create", "--image", "alpine", "web"]).unwrap()
        else {
            panic!("not a create")
        };
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(
            first_err_line(p(OLD, &["machine", "create", "--name", "web"])),
            (2, "error: unexpected argument '--name' found".into())
        );
        let Command::Create(c) = p(NEW, &["vm", "create", "-n", "web"]).unwrap() else {
            panic!("not a create")
        };
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(
            first_err_line(p(NEW, &["machine", "create", "web"])),
            (2, "error: unexpected argument 'web' found".into())
        );
        // 1.0.2 boundary.
        assert!(p(Version::new(1, 0, 1), &["machine", "create", "web"]).is_ok());
        assert!(p(Version::new(1, 0, 2), &["machine", "create", "web"]).is_err());
    }

    #[test]
    fn usage_error_has_clap_layout() {
        let out = p(NEW, &["machine", "delete", "web"]).unwrap_err();
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            "error: unexpected argument 'web' found\n\nUsage: smolvm machine delete [OPTIONS] \
             --name <NAME>\n\nFor more information, try '--help'.\n"
        );
        let out = p(OLD, &["machine", "delete", "-f"]).unwrap_err();
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            "error: the following required arguments were not provided:\n  <NAME>\n\nUsage: \
             smolvm machine delete [OPTIONS] <NAME>\n\nFor more information, try '--help'.\n"
        );
    }

    #[test]
    fn labels_only_from_1_8_0() {
        assert_eq!(
            first_err_line(p(OLD, &["machine", "create", "--label", "a=b", "x"])).1,
            "error: unexpected argument '--label' found"
        );
        assert!(p(
            Version::new(1, 7, 9),
            &["machine", "create", "--label", "a=b"]
        )
        .is_err());
        let Command::Create(c) = p(
            Version::new(1, 8, 0),
            &["machine", "create", "--label", "a=b"],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.labels, vec!["a=b"]);
    }

    #[test]
    fn from_conflicts_with_image_naming_the_first_given() {
        assert_eq!(
            first_err_line(p(
                NEW,
                &["machine", "create", "--from", "p", "--image", "a"]
            ))
            .1,
            "error: the argument '--from <PATH>' cannot be used with '--image <IMAGE>'"
        );
        assert_eq!(
            first_err_line(p(NEW, &["machine", "create", "-I", "a", "--from", "p"])).1,
            "error: the argument '--image <IMAGE>' cannot be used with '--from <PATH>'"
        );
    }

    #[test]
    fn env_values_in_every_clap_form() {
        let Command::Exec(e) = p(
            NEW,
            &[
                "machine",
                "exec",
                "--name",
                "m",
                "-e",
                "A=1",
                "--env=B=-2",
                "-e=C=3",
                "-eD=4",
                "--env",
                "E",
                "--",
                "env",
            ],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.env, vec!["A=1", "B=-2", "C=3", "D=4", "E"]);
        assert_eq!(e.argv, vec!["env"]);
        // A value that looks like a flag needs the attached form.
        assert_eq!(
            first_err_line(p(
                NEW,
                &["machine", "exec", "--name", "m", "-e", "-X=1", "true"]
            )),
            (
                2,
                "error: a value is required for '--env <KEY=VALUE>' but none was supplied".into()
            )
        );
    }

    #[test]
    fn exec_trailing_argv_takes_everything_after_the_first_word() {
        let Command::Exec(e) = p(
            NEW,
            &[
                "machine", "exec", "--name", "x", "--", "--name", "y", "-e", "B=2",
            ],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(e.argv, vec!["--name", "y", "-e", "B=2"]);
        assert_eq!(e.name.as_deref(), Some("x"));
        let Command::Exec(e) =
            p(OLD, &["machine", "exec", "--name", "x", "echo", "-w", "/"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.argv, vec!["echo", "-w", "/"]);
        assert_eq!(e.workdir, None);
        let (code, line) = first_err_line(p(NEW, &["machine", "exec", "--name", "x", "--"]));
        assert_eq!(code, 2);
        assert_eq!(
            line,
            "error: the following required arguments were not provided:"
        );
        assert_eq!(
            first_err_line(p(NEW, &["machine", "exec", "-n", "x", "true"])).1,
            "error: unexpected argument '-n' found"
        );
        let Command::Exec(e) =
            p(NEW, &["machine", "exec", "-w=-dir", "--name", "x", "pwd"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.workdir.as_deref(), Some("-dir"));
    }

    #[test]
    fn repeated_single_value_option_is_an_error() {
        assert_eq!(
            first_err_line(p(NEW, &["machine", "start", "--name", "a", "-n", "b"])).1,
            "error: the argument '--name <NAME>' cannot be used multiple times"
        );
    }

    #[test]
    fn timeout_grammar_and_messages() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_timeout("30").unwrap_err(),
            "time unit needed, for example 30sec or 30ms"
        );
        assert_eq!(
            parse_timeout("0s").unwrap_err(),
            "timeout must be greater than 0 (e.g., 5sec, 30s)"
        );
        assert_eq!(parse_timeout("").unwrap_err(), "value was empty");
        assert_eq!(parse_timeout("s").unwrap_err(), "expected number at 0");
        assert!(parse_timeout("5 parsecs")
            .unwrap_err()
            .starts_with("unknown time unit \"parsecs\""));
        assert_eq!(parse_timeout("5s!").unwrap_err(), "invalid character at 2");
        assert_eq!(
            first_err_line(p(
                NEW,
                &["machine", "exec", "--name", "m", "--timeout", "30", "true"]
            ))
            .1,
            "error: invalid value '30' for '--timeout <DURATION>': time unit needed, for example \
             30sec or 30ms"
        );
        // Value errors carry no usage line in clap.
        let out = p(
            NEW,
            &["machine", "exec", "--name", "m", "--timeout", "0s", "true"],
        )
        .unwrap_err();
        assert!(!String::from_utf8(out.stderr).unwrap().contains("Usage:"));
    }

    #[test]
    fn cidr_grammar() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap(), "10.1.2.3/8");
        assert_eq!(parse_cidr("1.1.1.1").unwrap(), "1.1.1.1/32");
        assert_eq!(parse_cidr("2001:DB8::1").unwrap(), "2001:db8::1/128");
        assert_eq!(parse_cidr("::/0").unwrap(), "::/0");
        for bad in [
            "10.0.0.0/33",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "example.com",
            "10.0.0.0/",
            "10.0.0/8",
            "::/129",
        ] {
            assert_eq!(
                parse_cidr(bad).unwrap_err(),
                format!("invalid CIDR '{bad}': expected format like 10.0.0.0/8 or 1.1.1.1"),
                "{bad:?}"
            );
        }
        assert_eq!(
            first_err_line(p(
                NEW,
                &["machine", "create", "--allow-cidr", "10.0.0.0/33"]
            ))
            .1,
            "error: invalid value '10.0.0.0/33' for '--allow-cidr <CIDR>': invalid CIDR \
             '10.0.0.0/33': expected format like 10.0.0.0/8 or 1.1.1.1"
        );
    }

    #[test]
    fn env_spec_rules_per_version() {
        let host = |k: &str| (k == "HOSTVAR").then(|| "from-host".to_string());
        let old = Features::new(OLD);
        let new = Features::new(NEW);
        assert_eq!(
            parse_env_spec("A=b=c", old, &host),
            Some(("A".into(), "b=c".into()))
        );
        assert_eq!(
            parse_env_spec("K=", old, &host),
            Some(("K".into(), "".into()))
        );
        assert_eq!(parse_env_spec("=v", new, &host), None);
        assert_eq!(parse_env_spec("", new, &host), None);
        assert_eq!(parse_env_spec("HOSTVAR", old, &host), None);
        assert_eq!(
            parse_env_spec("HOSTVAR", new, &host),
            Some(("HOSTVAR".into(), "from-host".into()))
        );
        assert_eq!(parse_env_spec("UNSET", new, &host), None);
    }

    #[test]
    fn label_rules() {
        let l = parse_labels(&["a=1".into(), "b=x=y".into(), "a=2".into(), "c=".into()]).unwrap();
        assert_eq!(l.get("a").map(String::as_str), Some("2"));
        assert_eq!(l.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(l.get("c").map(String::as_str), Some(""));
        assert_eq!(
            parse_labels(&["x".into()]).unwrap_err(),
            "--label: expected KEY=VALUE, got 'x'"
        );
        assert_eq!(
            parse_labels(&["=v".into()]).unwrap_err(),
            "--label: label key cannot be empty (in '=v')"
        );
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("web-1_a").is_ok());
        assert!(validate_name("default").is_ok());
        assert!(validate_name(&"x".repeat(128)).is_ok());
        assert_eq!(
            validate_name("a.b").unwrap_err(),
            "machine name contains invalid character: '.'"
        );
        assert_eq!(
            validate_name(&"x".repeat(129)).unwrap_err(),
            "machine name too long: 129 characters (max 128)"
        );
        assert_eq!(
            validate_name("-bad").unwrap_err(),
            "machine name must start with a letter or digit (got: \"-bad\")"
        );
        assert_eq!(
            validate_name("a--b").unwrap_err(),
            "machine name cannot contain consecutive hyphens"
        );
        assert!(validate_name("a-").is_err());
        assert!(validate_name("a:b").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn empty_image_is_a_clap_error_from_0_8_1() {
        assert!(p(OLD, &["machine", "create", "--image", "", "x"]).is_ok());
        assert_eq!(
            first_err_line(p(
                Version::new(0, 8, 1),
                &["machine", "create", "--image", "", "x"]
            ))
            .0,
            2
        );
    }

    #[test]
    fn aliases_and_version() {
        assert_eq!(p(NEW, &["--version"]).unwrap(), Command::Version);
        assert!(matches!(
            p(NEW, &["vm", "rm", "-f", "--name", "x"]).unwrap(),
            Command::Delete { force: true, .. }
        ));
        assert_eq!(
            p(NEW, &["machine", "list", "--json"]).unwrap(),
            Command::Ls {
                json: true,
                verbose: false
            }
        );
        assert_eq!(
            first_err_line(p(NEW, &["machin"])).1,
            "error: unrecognized subcommand 'machin'"
        );
        assert!(matches!(
            p(NEW, &["machine", "run"]).unwrap(),
            Command::NotSimulated(_)
        ));
    }

    #[test]
    fn fork_forms_per_version() {
        assert_eq!(
            first_err_line(p(Version::new(0, 9, 9), &["machine", "fork", "g", "c"])).1,
            "error: unrecognized subcommand 'fork'"
        );
        let Command::Fork(a) = p(Version::new(1, 0, 0), &["machine", "fork", "g", "c"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((a.golden.as_str(), a.name.as_deref()), ("g", Some("c")));
        let Command::Fork(a) = p(
            NEW,
            &[
                "machine",
                "fork",
                "--golden",
                "g",
                "-n",
                "c",
                "-p",
                "8080:80",
                "-e",
                "A=1",
                "--secret-env",
                "S=V",
                "--forkable",
            ],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.ports, vec![(8080, 80)]);
        assert_eq!(
            (a.env, a.secret_env, a.forkable),
            (vec!["A=1".to_string()], vec!["S=V".to_string()], true)
        );
        assert_eq!(
            first_err_line(p(
                Version::new(1, 6, 9),
                &["machine", "fork", "--golden", "g", "-e", "A=1"]
            ))
            .1,
            "error: unexpected argument '-e' found"
        );
        assert!(matches!(
            p(Version::new(1, 0, 0), &["machine", "start", "--forkable"]).unwrap(),
            Command::Start { forkable: true, .. }
        ));
        assert_eq!(
            first_err_line(p(OLD, &["machine", "start", "--forkable"])).1,
            "error: unexpected argument '--forkable' found"
        );
    }

    #[test]
    fn pack_requires_output_and_image() {
        let (code, _) = first_err_line(p(NEW, &["pack", "create", "--image", "alpine"]));
        assert_eq!(code, 2);
        let out = p(NEW, &["pack", "create", "-I", "alpine"]).unwrap_err();
        assert!(String::from_utf8(out.stderr)
            .unwrap()
            .contains("\n  --output <OUTPUT>\n"));
        assert!(matches!(
            p(NEW, &["pack", "create", "-I", "alpine", "-o", "out"]).unwrap(),
            Command::Pack(PackArgs { ref output, .. }) if output == "out"
        ));
    }
}
