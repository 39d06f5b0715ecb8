//! The few guest commands `machine exec` can run in the simulation.
//!
//! A guest runs with a copy of the machine's env, workdir and copied-in files, taken under
//! the state lock; it runs itself outside any lock, so a `sleep` blocks nobody else.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::state::{mounted_path, ListenKind, Listener, SimMount};
use super::SimOutput;

/// A change a guest makes to its machine, applied under the state lock as it happens
/// (dropped if the machine has stopped or rebooted meanwhile).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    WriteFile {
        path: String,
        data: Vec<u8>,
        append: bool,
    },
    /// A file or a directory tree.
    Remove(String),
    Mkdir(String),
    /// Bytes written to `/dev/console` or `/dev/kmsg`: the console log.
    Console(Vec<u8>),
    /// A server starts listening; `Err` is its bind error.
    Listen {
        port: u16,
        kind: ListenKind,
    },
}

/// Applies an [`Effect`] to the machine.
pub(crate) type Host<'a> = &'a dyn Fn(&Effect) -> Result<(), String>;

/// Everything a guest command may look at, copied out of the machine record.
#[derive(Clone, Debug)]
pub(crate) struct GuestJob {
    pub(crate) argv: Vec<String>,
    /// Machine env with the exec's `-e` applied on top (§5).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: String,
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    /// Directories made with `mkdir`.
    pub(crate) dirs: BTreeSet<String>,
    /// `-v` mounts: paths under them are the host directory's, read and written live.
    pub(crate) mounts: Vec<SimMount>,
    /// Servers already listening (for `/proc/net/tcp`).
    pub(crate) listeners: Vec<Listener>,
    /// `--timeout`: the guest is killed at this point and exec answers 124.
    pub(crate) timeout: Option<Duration>,
    /// Image machines (crun) append a "timed out" note to stderr; bare VMs do not (§4).
    pub(crate) image_machine: bool,
    /// `--stream`: no output cap.
    pub(crate) stream: bool,
    /// Machine count when the job was taken, for the fake's log line.
    pub(crate) machines: usize,
    pub(crate) machine: String,
    /// The machine's boot when the exec started: effects of an older boot are dropped.
    pub(crate) boot: u64,
}

/// How a guest run ended.
#[derive(Debug)]
pub(crate) enum GuestEnd {
    /// The exec finished (possibly with 124 after `--timeout`).
    Exited(SimOutput),
    /// The host-side limit of the invocation expired first: smolvm would have been killed.
    HostTimeout { stdout: Vec<u8>, stderr: Vec<u8> },
}

/// The list of what is simulated, quoted in the "not simulated" message.
const SIMULATED: &str = "echo, true, false, env, pwd, cat, grep, test/[, mkdir -p, rm -f, \
     httpd -p PORT -h DIR, sh -c \"exit N\", sleep, head -c N /dev/zero";

enum Stop {
    ExecTimeout,
    HostTimeout,
    /// `exit N` inside `sh -c`.
    Exit(i32),
}

type Flow = Result<i32, Stop>;

struct Guest<'a> {
    job: &'a GuestJob,
    host: Host<'a>,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
    listeners: Vec<Listener>,
    /// The previous pipeline stage's output, if this command is piped into.
    stdin: Option<Vec<u8>>,
    env: Vec<(String, String)>,
    workdir: String,
    exec_deadline: Option<Instant>,
    host_deadline: Option<Instant>,
    out: Vec<u8>,
    err: Vec<u8>,
}

/// Run the job's argv to completion, a timeout, or the host deadline.
pub(crate) fn run(job: &GuestJob, host_deadline: Option<Instant>, host: Host<'_>) -> GuestEnd {
    let start = Instant::now();
    let mut g = Guest {
        job,
        host,
        files: job.files.clone(),
        dirs: job.dirs.clone(),
        listeners: job.listeners.clone(),
        stdin: None,
        env: job.env.clone(),
        workdir: job.workdir.clone(),
        exec_deadline: job.timeout.map(|t| start + t),
        host_deadline,
        out: Vec::new(),
        err: Vec::new(),
    };
    let code = match g.command(&job.argv) {
        Ok(code) | Err(Stop::Exit(code)) => code,
        Err(Stop::ExecTimeout) => {
            if job.image_machine {
                let ms = job.timeout.unwrap_or_default().as_millis();
                g.err
                    .extend_from_slice(format!("\ncommand timed out after {ms}ms").as_bytes());
            }
            124
        }
        Err(Stop::HostTimeout) => {
            // Without --stream smolvm prints nothing before the guest ends, so a killed
            // smolvm has written nothing.
            let (stdout, stderr) = if job.stream {
                (g.out, g.err)
            } else {
                (Vec::new(), Vec::new())
            };
            return GuestEnd::HostTimeout { stdout, stderr };
        }
    };
    GuestEnd::Exited(SimOutput {
        code,
        stdout: g.out,
        stderr: g.err,
    })
}

impl Guest<'_> {
    fn not_simulated(&mut self, what: &str) -> Flow {
        self.err.extend_from_slice(
            format!("sim: command not simulated: {what} (simulated: {SIMULATED})\n").as_bytes(),
        );
        Ok(127)
    }

    /// Reached a deadline already? (A `--timeout` under 1 ms is 0 ms on the wire: killed at once.)
    fn check_deadlines(&self) -> Result<(), Stop> {
        let now = Instant::now();
        if self.exec_deadline.is_some_and(|d| now >= d) {
            return Err(Stop::ExecTimeout);
        }
        if self.host_deadline.is_some_and(|d| now >= d) {
            return Err(Stop::HostTimeout);
        }
        Ok(())
    }

    /// The host path behind a resolved guest path under a mount, and whether it is read-only.
    fn mounted(&self, full: &str) -> Option<(PathBuf, bool)> {
        mounted_path(&self.job.mounts, full)
    }

    fn resolve(&self, path: &str) -> String {
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{}", self.workdir.trim_end_matches('/'), path)
        };
        let parts: Vec<&str> = joined
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        format!("/{}", parts.join("/"))
    }

    fn command(&mut self, argv: &[String]) -> Flow {
        self.check_deadlines()?;
        let Some(program) = argv.first() else {
            return Ok(0);
        };
        // `/bin/echo` is `echo`: the guest has no real filesystem to look it up in.
        let name = program.rsplit('/').next().unwrap_or(program);
        let args = &argv[1..];
        match name {
            "echo" => {
                let (newline, words) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                self.out.extend_from_slice(words.join(" ").as_bytes());
                if newline {
                    self.out.push(b'\n');
                }
                Ok(0)
            }
            "true" => Ok(0),
            "false" => Ok(1),
            "pwd" => {
                let line = format!("{}\n", self.workdir);
                self.out.extend_from_slice(line.as_bytes());
                Ok(0)
            }
            "env" => self.env_cmd(args),
            "cat" => Ok(self.cat(args)),
            "grep" => self.grep(args),
            "test" => self.test_cmd(args, false),
            "[" => self.test_cmd(args, true),
            "mkdir" => Ok(self.mkdir(args)),
            "rm" => Ok(self.rm(args)),
            "httpd" => self.httpd(args),
            "head" => self.head(args),
            "sleep" => self.sleep_cmd(args),
            "sh" | "bash" if args.first().map(String::as_str) == Some("-c") && args.len() >= 2 => {
                match self.script(&args[1]) {
                    Err(Stop::Exit(code)) => Ok(code),
                    other => other,
                }
            }
            _ => self.not_simulated(name),
        }
    }

    fn env_cmd(&mut self, args: &[String]) -> Flow {
        let mut env = self.env.clone();
        let mut rest = args;
        while let Some((k, v)) = rest.first().and_then(|a| a.split_once('=')) {
            if k.is_empty() {
                break;
            }
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
            rest = &rest[1..];
        }
        if rest.is_empty() {
            for (k, v) in &env {
                self.out.extend_from_slice(format!("{k}={v}\n").as_bytes());
            }
            return Ok(0);
        }
        let saved = std::mem::replace(&mut self.env, env);
        let flow = self.command(rest);
        self.env = saved;
        flow
    }

    fn cat(&mut self, args: &[String]) -> i32 {
        let mut code = 0;
        if args.is_empty() {
            let input = self.stdin.clone().unwrap_or_default();
            self.out.extend_from_slice(&input);
        }
        for arg in args {
            if arg == "-" {
                let input = self.stdin.clone().unwrap_or_default();
                self.out.extend_from_slice(&input);
                continue;
            }
            match self.read_path(arg) {
                Some(bytes) => self.out.extend_from_slice(&bytes),
                None => {
                    self.err.extend_from_slice(
                        format!("cat: {arg}: No such file or directory\n").as_bytes(),
                    );
                    code = 1;
                }
            }
        }
        code
    }

    fn head(&mut self, args: &[String]) -> Flow {
        let (count, file) = match args {
            [c, n, f] if c == "-c" => (n.as_str(), f.as_str()),
            [c, f] if c.starts_with("-c") && c.len() > 2 => (&c[2..], f.as_str()),
            [c, f] if c.starts_with("--bytes=") => (&c["--bytes=".len()..], f.as_str()),
            _ => return self.not_simulated(&format!("head {}", args.join(" "))),
        };
        let Some(n) = parse_size(count) else {
            self.err.extend_from_slice(
                format!("head: invalid number of bytes: '{count}'\n").as_bytes(),
            );
            return Ok(1);
        };
        if file == "/dev/zero" {
            self.out.resize(self.out.len() + n, 0);
            return Ok(0);
        }
        match self.read_path(file) {
            Some(bytes) => {
                let take = bytes.len().min(n);
                self.out.extend_from_slice(&bytes[..take]);
                Ok(0)
            }
            None => {
                self.err.extend_from_slice(
                    format!("head: cannot open '{file}' for reading: No such file or directory\n")
                        .as_bytes(),
                );
                Ok(1)
            }
        }
    }

    fn sleep_cmd(&mut self, args: &[String]) -> Flow {
        if args.is_empty() {
            self.err.extend_from_slice(b"sleep: missing operand\n");
            return Ok(1);
        }
        let mut total = Duration::ZERO;
        for a in args {
            match parse_sleep(a) {
                Some(d) => total = total.saturating_add(d),
                None => {
                    self.err.extend_from_slice(
                        format!("sleep: invalid time interval '{a}'\n").as_bytes(),
                    );
                    return Ok(1);
                }
            }
        }
        self.sleep(total)
    }

    /// Really sleep, but wake at `--timeout` (exit 124) or the host deadline.
    fn sleep(&mut self, d: Duration) -> Flow {
        let end = Instant::now().checked_add(d);
        loop {
            self.check_deadlines()?;
            let now = Instant::now();
            let mut until = end;
            for limit in [self.exec_deadline, self.host_deadline]
                .into_iter()
                .flatten()
            {
                until = Some(until.map_or(limit, |u| u.min(limit)));
            }
            let Some(until) = until else {
                // Effectively forever (an overflowing duration, no deadline).
                thread::sleep(Duration::from_secs(3600));
                continue;
            };
            if now >= until {
                // `until` was the sleep's own end: the deadlines were checked above.
                if end.is_some_and(|e| now >= e) {
                    return Ok(0);
                }
                continue;
            }
            thread::sleep(until - now);
        }
    }

    /// A very small `sh -c`: simple commands joined by `;`, `&&`, `||`, `|` or newlines,
    /// quotes, `$VAR`/`${VAR}`/`$?`, `exit`, `cd`, `export`, `K=V`, and the redirections
    /// `[N]>FILE`, `[N]>>FILE`, `>&2`, `2>&1` (FILE a guest file, `/dev/null`,
    /// `/dev/console`, `/dev/kmsg`, `/dev/stdout` or `/dev/stderr`).
    fn script(&mut self, text: &str) -> Flow {
        let Some(items) = tokenize(text) else {
            return self.not_simulated(&format!("sh -c {text:?}"));
        };
        let mut status = 0;
        let mut words: Vec<Word> = Vec::new();
        let mut pipeline: Vec<Vec<Word>> = Vec::new();
        let mut connector = Connector::Always;
        let mut iter = items.into_iter();
        loop {
            let item = iter.next();
            let next_connector = match &item {
                Some(Item::Word(w)) => {
                    words.push(w.clone());
                    continue;
                }
                Some(Item::Pipe) => {
                    pipeline.push(std::mem::take(&mut words));
                    continue;
                }
                Some(Item::Op(c)) => *c,
                None => Connector::Always,
            };
            pipeline.push(std::mem::take(&mut words));
            let run = match connector {
                Connector::Always => true,
                Connector::And => status == 0,
                Connector::Or => status != 0,
            };
            if pipeline.len() > 1 && pipeline.iter().any(Vec::is_empty) {
                return self.not_simulated(&format!("sh -c {text:?}"));
            }
            if run && !pipeline[0].is_empty() {
                status = self.pipeline(&pipeline, status)?;
            }
            pipeline.clear();
            connector = next_connector;
            if item.is_none() {
                return Ok(status);
            }
        }
    }

    /// Each stage's stdout becomes the next one's stdin; the status is the last stage's.
    fn pipeline(&mut self, stages: &[Vec<Word>], last: i32) -> Flow {
        let saved = self.stdin.take();
        let mut status = last;
        for (i, stage) in stages.iter().enumerate() {
            if i + 1 == stages.len() {
                status = self.simple(stage, status)?;
            } else {
                let mark = self.out.len();
                status = self.simple(stage, status)?;
                self.stdin = Some(self.out.split_off(mark));
            }
        }
        self.stdin = saved;
        Ok(status)
    }

    fn simple(&mut self, words: &[Word], last: i32) -> Flow {
        let mut argv = Vec::new();
        let mut redirects: Vec<(u8, bool, Target)> = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            if let Some((fd, append, target)) = w.redirect() {
                let target = match target {
                    Some(t) => t,
                    None => match words.get(i + 1) {
                        Some(t) => {
                            i += 1;
                            Target::Path(t.expand(&self.env, last))
                        }
                        None => {
                            self.err
                                .extend_from_slice(b"sh: syntax error: unexpected newline\n");
                            return Ok(2);
                        }
                    },
                };
                redirects.push((fd, append, target));
            } else {
                argv.push(w.expand(&self.env, last));
            }
            i += 1;
        }
        // Open the targets left to right, as the shell does, before the command runs.
        let mut sinks = [Sink::Out, Sink::Out, Sink::Err];
        for (fd, append, target) in redirects {
            let sink = match target {
                Target::Dup(n) => sinks[usize::from(n.min(2))].clone(),
                Target::Path(p) => match self.open_sink(&p, append) {
                    Ok(sink) => sink,
                    Err(code) => return Ok(code),
                },
            };
            sinks[usize::from(fd.min(2))] = sink;
        }
        // Leading assignments set the shell's environment (good enough for tests).
        while let Some((k, v)) = argv.first().and_then(|a| split_assignment(a)) {
            self.env.retain(|(key, _)| *key != k);
            self.env.push((k, v));
            argv.remove(0);
        }
        let (out_mark, err_mark) = (self.out.len(), self.err.len());
        let flow = match argv.first().map(String::as_str) {
            None => Ok(0),
            Some("exit") => {
                let code = match argv.get(1) {
                    None => last,
                    Some(n) => match n.parse::<i64>() {
                        Ok(n) => (n & 0xff) as i32,
                        Err(_) => {
                            self.err.extend_from_slice(
                                format!("sh: exit: Illegal number: {n}\n").as_bytes(),
                            );
                            2
                        }
                    },
                };
                Err(Stop::Exit(code))
            }
            Some("cd") => {
                let dir = argv.get(1).cloned().unwrap_or_else(|| "/".into());
                self.workdir = self.resolve(&dir);
                Ok(0)
            }
            Some("export") => {
                for a in &argv[1..] {
                    if let Some((k, v)) = split_assignment(a) {
                        self.env.retain(|(key, _)| *key != k);
                        self.env.push((k, v));
                    }
                }
                Ok(0)
            }
            Some(_) => self.command(&argv),
        };
        let out = self.out.split_off(out_mark);
        let err = self.err.split_off(err_mark);
        let (out_sink, err_sink) = (sinks[1].clone(), sinks[2].clone());
        self.emit(&out_sink, out);
        self.emit(&err_sink, err);
        flow
    }

    /// Open a redirection target; a guest file is truncated now unless appended to.
    fn open_sink(&mut self, path: &str, append: bool) -> Result<Sink, i32> {
        Ok(match path {
            "/dev/null" => Sink::Null,
            "/dev/stdout" => Sink::Out,
            "/dev/stderr" => Sink::Err,
            "/dev/console" | "/dev/kmsg" | "/dev/tty" => Sink::Console,
            _ => {
                let full = self.resolve(path);
                if self.is_dir(&full) {
                    self.err.extend_from_slice(
                        format!("sh: can't create {path}: Is a directory\n").as_bytes(),
                    );
                    return Err(1);
                }
                if !self.is_dir(parent(&full)) {
                    self.err.extend_from_slice(
                        format!("sh: can't create {path}: nonexistent directory\n").as_bytes(),
                    );
                    return Err(1);
                }
                if self.mounted(&full).is_some_and(|(_, ro)| ro) {
                    self.err.extend_from_slice(
                        format!("sh: can't create {path}: Read-only file system\n").as_bytes(),
                    );
                    return Err(1);
                }
                if !append {
                    self.write_file(&full, Vec::new(), false);
                }
                Sink::File(full)
            }
        })
    }

    fn emit(&mut self, sink: &Sink, bytes: Vec<u8>) {
        match sink {
            Sink::Out => self.out.extend_from_slice(&bytes),
            Sink::Err => self.err.extend_from_slice(&bytes),
            Sink::Null => {}
            Sink::Console => {
                if !bytes.is_empty() {
                    let _ = (self.host)(&Effect::Console(bytes));
                }
            }
            Sink::File(path) => {
                if !bytes.is_empty() {
                    self.write_file(path, bytes, true);
                }
            }
        }
    }

    fn write_file(&mut self, path: &str, data: Vec<u8>, append: bool) {
        if let Some((host, read_only)) = self.mounted(path) {
            // Straight to the host directory (a read-only mount was refused at open).
            if !read_only {
                let _ = fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(host)
                    .and_then(|mut f| f.write_all(&data));
            }
            return;
        }
        let file = self.files.entry(path.to_string()).or_default();
        if !append {
            file.clear();
        }
        file.extend_from_slice(&data);
        let _ = (self.host)(&Effect::WriteFile {
            path: path.to_string(),
            data,
            append,
        });
    }

    /// A guest path's content: a file, or one of the simulated kernel files.
    fn read_path(&self, path: &str) -> Option<Vec<u8>> {
        let full = self.resolve(path);
        match full.as_str() {
            "/dev/null" => Some(Vec::new()),
            "/proc/net/tcp" => Some(proc_net_tcp(&self.listeners, false)),
            "/proc/net/tcp6" => Some(proc_net_tcp(&self.listeners, true)),
            _ => match self.mounted(&full) {
                Some((host, _)) => host.is_file().then(|| fs::read(&host).ok()).flatten(),
                None => self.files.get(&full).cloned(),
            },
        }
    }

    fn is_file(&self, full: &str) -> bool {
        if let Some((host, _)) = self.mounted(full) {
            return host.is_file();
        }
        self.files.contains_key(full) || matches!(full, "/proc/net/tcp" | "/proc/net/tcp6")
    }

    fn is_dir(&self, full: &str) -> bool {
        const KNOWN: &[&str] = &[
            "/",
            "/bin",
            "/dev",
            "/etc",
            "/home",
            "/proc",
            "/proc/net",
            "/root",
            "/run",
            "/sbin",
            "/sys",
            "/tmp",
            "/usr",
            "/usr/bin",
            "/usr/local",
            "/var",
            "/var/log",
            "/var/tmp",
        ];
        if let Some((host, _)) = self.mounted(full) {
            return host.is_dir();
        }
        let prefix = format!("{}/", full.trim_end_matches('/'));
        KNOWN.contains(&full)
            || self
                .job
                .mounts
                .iter()
                .any(|m| m.target.starts_with(&prefix))
            || full == self.job.workdir
            || self.dirs.contains(full)
            || self.files.keys().any(|f| f.starts_with(&prefix))
            || self.dirs.iter().any(|d| d.starts_with(&prefix))
    }

    fn exists(&self, full: &str) -> bool {
        self.is_file(full)
            || self.is_dir(full)
            || matches!(
                full,
                "/dev/null" | "/dev/console" | "/dev/kmsg" | "/dev/zero" | "/dev/tty"
            )
    }

    /// `test`/`[`: the unary file and string tests and the binary string and integer ones.
    fn test_cmd(&mut self, args: &[String], bracket: bool) -> Flow {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        if bracket {
            if args.last() != Some(&"]") {
                self.err.extend_from_slice(b"[: missing ]\n");
                return Ok(2);
            }
            args.pop();
        }
        let negate = args.first() == Some(&"!");
        if negate {
            args.remove(0);
        }
        let int = |s: &str| s.trim().parse::<i64>().ok();
        let result = match args.as_slice() {
            [] => false,
            [s] => !s.is_empty(),
            [op, p] if op.starts_with('-') => {
                let full = self.resolve(p);
                match *op {
                    "-f" => self.is_file(&full),
                    "-d" => self.is_dir(&full),
                    "-e" | "-r" | "-w" => self.exists(&full),
                    "-x" => self.is_dir(&full),
                    "-s" => self.read_path(p).is_some_and(|b| !b.is_empty()),
                    "-n" => !p.is_empty(),
                    "-z" => p.is_empty(),
                    _ => return self.not_simulated(&format!("test {op}")),
                }
            }
            [a, "=" | "==", b] => a == b,
            [a, "!=", b] => a != b,
            [a, op @ ("-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge"), b] => {
                let (Some(x), Some(y)) = (int(a), int(b)) else {
                    self.err.extend_from_slice(b"sh: bad number\n");
                    return Ok(2);
                };
                match *op {
                    "-eq" => x == y,
                    "-ne" => x != y,
                    "-lt" => x < y,
                    "-le" => x <= y,
                    "-gt" => x > y,
                    _ => x >= y,
                }
            }
            _ => return self.not_simulated(&format!("test {}", args.join(" "))),
        };
        Ok(i32::from(result == negate))
    }

    fn mkdir(&mut self, args: &[String]) -> i32 {
        let parents = args.iter().any(|a| a == "-p");
        let mut code = 0;
        for arg in args.iter().filter(|a| !a.starts_with('-')) {
            let full = self.resolve(arg);
            if self.is_dir(&full) || self.is_file(&full) {
                if !parents || self.is_file(&full) {
                    self.err.extend_from_slice(
                        format!("mkdir: can't create directory '{arg}': File exists\n").as_bytes(),
                    );
                    code = 1;
                }
                continue;
            }
            if !parents && !self.is_dir(parent(&full)) {
                self.err.extend_from_slice(
                    format!("mkdir: can't create directory '{arg}': No such file or directory\n")
                        .as_bytes(),
                );
                code = 1;
                continue;
            }
            let mut dir = String::new();
            for part in full.split('/').filter(|p| !p.is_empty()) {
                dir.push('/');
                dir.push_str(part);
                if self.is_dir(&dir) {
                    continue;
                }
                if let Some((host, read_only)) = self.mounted(&dir) {
                    let failure = if read_only {
                        Some("Read-only file system".to_string())
                    } else {
                        fs::create_dir(&host).err().map(|e| io_reason(&e))
                    };
                    if let Some(why) = failure {
                        self.err.extend_from_slice(
                            format!("mkdir: can't create directory '{arg}': {why}\n").as_bytes(),
                        );
                        code = 1;
                        break;
                    }
                    continue;
                }
                self.dirs.insert(dir.clone());
                let _ = (self.host)(&Effect::Mkdir(dir.clone()));
            }
        }
        code
    }

    fn rm(&mut self, args: &[String]) -> i32 {
        let flags: String = args
            .iter()
            .filter(|a| a.starts_with('-') && a.len() > 1)
            .map(|a| a[1..].to_string())
            .collect();
        let force = flags.contains('f');
        let recursive = flags.contains('r') || flags.contains('R');
        let mut code = 0;
        for arg in args.iter().filter(|a| !(a.starts_with('-') && a.len() > 1)) {
            let full = self.resolve(arg);
            let is_dir = self.is_dir(&full);
            if is_dir && !recursive {
                self.err.extend_from_slice(
                    format!("rm: can't remove '{arg}': Is a directory\n").as_bytes(),
                );
                code = 1;
                continue;
            }
            let mounted = self.mounted(&full);
            let is_file = match &mounted {
                Some((host, _)) => host.is_file(),
                None => self.files.contains_key(&full),
            };
            if !is_dir && !is_file {
                if !force {
                    self.err.extend_from_slice(
                        format!("rm: can't remove '{arg}': No such file or directory\n").as_bytes(),
                    );
                    code = 1;
                }
                continue;
            }
            if let Some((host, read_only)) = mounted {
                let removed = if read_only {
                    Err("Read-only file system".to_string())
                } else if is_dir {
                    fs::remove_dir_all(&host).map_err(|e| io_reason(&e))
                } else {
                    fs::remove_file(&host).map_err(|e| io_reason(&e))
                };
                if let Err(why) = removed {
                    self.err
                        .extend_from_slice(format!("rm: can't remove '{arg}': {why}\n").as_bytes());
                    code = 1;
                }
                continue;
            }
            let prefix = format!("{full}/");
            self.files
                .retain(|p, _| *p != full && !p.starts_with(&prefix));
            self.dirs.retain(|d| *d != full && !d.starts_with(&prefix));
            let _ = (self.host)(&Effect::Remove(full));
        }
        code
    }

    /// busybox `grep [-qFvix] [-e] PATTERN [FILE]...`; stdin when no file is given.
    fn grep(&mut self, args: &[String]) -> Flow {
        let (mut quiet, mut fixed, mut invert, mut icase, mut whole) =
            (false, false, false, false, false);
        let mut pattern: Option<String> = None;
        let mut files = Vec::new();
        let mut i = 0;
        let mut options_done = false;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            if !options_done && a == "--" {
                options_done = true;
            } else if !options_done && a == "-e" {
                pattern = args.get(i).cloned();
                i += 1;
            } else if !options_done && a.starts_with('-') && a.len() > 1 {
                for c in a[1..].chars() {
                    match c {
                        'q' | 's' => quiet |= c == 'q',
                        'F' => fixed = true,
                        'v' => invert = true,
                        'i' => icase = true,
                        'x' => whole = true,
                        'E' | 'G' => {}
                        _ => return self.not_simulated(&format!("grep -{c}")),
                    }
                }
            } else if pattern.is_none() {
                pattern = Some(a.clone());
            } else {
                files.push(a.clone());
            }
        }
        let Some(pattern) = pattern else {
            self.err
                .extend_from_slice(b"Usage: grep [-HhnlLoqvsrRiwFE] [-m N] [-A|B|C N] { PATTERN | -e PATTERN... | -f FILE... } [FILE]...\n");
            return Ok(2);
        };
        let fold = |s: &str| {
            if icase {
                s.to_lowercase()
            } else {
                s.to_string()
            }
        };
        let pat = fold(&pattern);
        let matches = |line: &str| {
            let line = fold(line);
            if fixed {
                if whole {
                    line == pat
                } else {
                    line.contains(&pat)
                }
            } else if whole {
                regex_match(&format!("^{pat}$"), &line)
            } else {
                regex_match(&pat, &line)
            }
        };
        let mut inputs: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        if files.is_empty() {
            inputs.push((
                "(standard input)".into(),
                Some(self.stdin.clone().unwrap_or_default()),
            ));
        }
        for f in &files {
            let content = if f == "-" {
                Some(self.stdin.clone().unwrap_or_default())
            } else {
                self.read_path(f)
            };
            inputs.push((f.clone(), content));
        }
        let (mut found, mut failed) = (false, false);
        let many = files.len() > 1;
        for (name, content) in inputs {
            let Some(content) = content else {
                self.err.extend_from_slice(
                    format!("grep: {name}: No such file or directory\n").as_bytes(),
                );
                failed = true;
                continue;
            };
            let text = String::from_utf8_lossy(&content).into_owned();
            for line in text.lines() {
                if matches(line) != invert {
                    found = true;
                    if quiet {
                        return Ok(0);
                    }
                    let shown = if many {
                        format!("{name}:{line}\n")
                    } else {
                        format!("{line}\n")
                    };
                    self.out.extend_from_slice(shown.as_bytes());
                }
            }
        }
        Ok(if failed && !(quiet && found) {
            2
        } else if found {
            0
        } else {
            1
        })
    }

    /// busybox `httpd -p [IP:]PORT -h DIR`: daemonizes, so it returns 0 at once; the server
    /// lives until the machine stops.
    fn httpd(&mut self, args: &[String]) -> Flow {
        let mut port: u16 = 80;
        let mut home = self.workdir.clone();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            i += 1;
            match a {
                "-p" | "-h" => {
                    let Some(v) = args.get(i) else {
                        self.err.extend_from_slice(
                            format!("httpd: option requires an argument -- '{}'\n", &a[1..])
                                .as_bytes(),
                        );
                        return Ok(1);
                    };
                    i += 1;
                    if a == "-h" {
                        home = self.resolve(v);
                    } else {
                        let num = v.rsplit(':').next().unwrap_or(v);
                        match num.parse::<u16>() {
                            Ok(p) if p != 0 => port = p,
                            _ => {
                                self.err.extend_from_slice(
                                    format!("httpd: bad port '{v}'\n").as_bytes(),
                                );
                                return Ok(1);
                            }
                        }
                    }
                }
                "-v" | "-vv" => {}
                _ => return self.not_simulated(&format!("httpd {a}")),
            }
        }
        if self.listeners.iter().any(|l| l.port == port) {
            self.err.extend_from_slice(b"httpd: bind: Address in use\n");
            return Ok(1);
        }
        let kind = ListenKind::Httpd { dir: home };
        if let Err(e) = (self.host)(&Effect::Listen {
            port,
            kind: kind.clone(),
        }) {
            self.err
                .extend_from_slice(format!("httpd: {e}\n").as_bytes());
            return Ok(1);
        }
        self.listeners.push(Listener { port, kind });
        Ok(0)
    }
}

/// Linux's `/proc/net/tcp{,6}` with one LISTEN (`0A`) row per guest server: busybox `httpd`
/// binds `[::]` (tcp6), `nc -l` binds `0.0.0.0` (tcp).
fn proc_net_tcp(listeners: &[Listener], v6: bool) -> Vec<u8> {
    let mut text = if v6 {
        "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_string()
    } else {
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n".to_string()
    };
    let rows = listeners
        .iter()
        .filter(|l| matches!(l.kind, ListenKind::Httpd { .. }) == v6);
    for (i, l) in rows.enumerate() {
        let zero = if v6 { "0".repeat(32) } else { "0".repeat(8) };
        text.push_str(&format!(
            "{i:>4}: {zero}:{:04X} {zero}:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 100 0 0 10 0\n",
            l.port,
            20_000 + u32::from(l.port)
        ));
    }
    text.into_bytes()
}

/// An I/O error as busybox words it (`strerror`, without Rust's `(os error N)`).
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// A basic regular expression subset: literals, `.`, `*`, `^`, `$` and `\` escapes.
fn regex_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    if p.first() == Some(&'^') {
        return match_here(&p[1..], &t);
    }
    (0..=t.len()).any(|i| match_here(&p, &t[i..]))
}

fn match_here(p: &[char], t: &[char]) -> bool {
    let (atom, rest) = match p {
        [] => return true,
        ['$'] => return t.is_empty(),
        ['\\', c, rest @ ..] => (Some(*c), rest),
        [c, rest @ ..] => (if *c == '.' { None } else { Some(*c) }, rest),
    };
    let one = |c: &char| atom.is_none_or(|a| a == *c);
    if rest.first() == Some(&'*') {
        let rest = &rest[1..];
        let mut i = 0;
        loop {
            if match_here(rest, &t[i..]) {
                return true;
            }
            if i < t.len() && one(&t[i]) {
                i += 1;
            } else {
                return false;
            }
        }
    }
    match t.split_first() {
        Some((c, t)) if one(c) => match_here(rest, t),
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Sink {
    Out,
    Err,
    Null,
    Console,
    File(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// `>&N`
    Dup(u8),
    Path(String),
}

fn split_assignment(word: &str) -> Option<(String, String)> {
    let (k, v) = word.split_once('=')?;
    let valid = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then(|| (k.to_string(), v.to_string()))
}

/// GNU `sleep` operands: a number with an optional `s`, `m`, `h` or `d` suffix.
fn parse_sleep(text: &str) -> Option<Duration> {
    let (number, unit) = match text.char_indices().last()? {
        (i, c @ ('s' | 'm' | 'h' | 'd')) => (&text[..i], c),
        _ => (text, 's'),
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 || number.starts_with(['+', '-']) {
        return None;
    }
    let factor = match unit {
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => 1.0,
    };
    Duration::try_from_secs_f64(value * factor).ok()
}

/// `head -c` sizes: a count with an optional GNU suffix (`K`=1024, `KB`=1000, `M`, `MB`, …).
fn parse_size(text: &str) -> Option<usize> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let n: usize = digits.parse().ok()?;
    let factor: usize = match suffix {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "KB" => 1000,
        "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connector {
    Always,
    And,
    Or,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Word {
    pieces: Vec<Piece>,
    quoted: bool,
}

impl Word {
    fn push_char(&mut self, c: char) {
        match self.pieces.last_mut() {
            Some(Piece::Lit(s)) => s.push(c),
            _ => self.pieces.push(Piece::Lit(c.to_string())),
        }
    }

    /// The unquoted redirection this word is, if any: `(fd, append, target)`; the target is
    /// `None` when it is the next word.
    fn redirect(&self) -> Option<(u8, bool, Option<Target>)> {
        if self.quoted {
            return None;
        }
        let [Piece::Lit(s)] = self.pieces.as_slice() else {
            return None;
        };
        let (fd, rest) = match s.as_bytes().first()? {
            b @ (b'1' | b'2') if s[1..].starts_with('>') => (b - b'0', &s[1..]),
            b'>' => (1, s.as_str()),
            _ => return None,
        };
        let (append, rest) = match rest.strip_prefix(">>") {
            Some(r) => (true, r),
            None => (false, &rest[1..]),
        };
        if let Some(n) = rest.strip_prefix('&') {
            return match n {
                "1" => Some((fd, false, Some(Target::Dup(1)))),
                "2" => Some((fd, false, Some(Target::Dup(2)))),
                _ => None,
            };
        }
        Some((
            fd,
            append,
            (!rest.is_empty()).then(|| Target::Path(rest.to_string())),
        ))
    }

    fn expand(&self, env: &[(String, String)], last: i32) -> String {
        let mut s = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => s.push_str(l),
                Piece::Var(v) if v == "?" => s.push_str(&last.to_string()),
                Piece::Var(v) => {
                    if let Some((_, val)) = env.iter().rev().find(|(k, _)| k == v) {
                        s.push_str(val);
                    }
                }
            }
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Word(Word),
    Op(Connector),
    Pipe,
}

/// Split a script into words and connectors; `None` for syntax the simulation does not
/// model (background jobs, subshells, input redirection, unterminated quotes).
fn tokenize(text: &str) -> Option<Vec<Item>> {
    let mut items = Vec::new();
    let mut word: Option<Word> = None;
    let mut chars = text.chars().peekable();
    fn finish(items: &mut Vec<Item>, word: &mut Option<Word>) {
        if let Some(w) = word.take() {
            items.push(Item::Word(w));
        }
    }
    fn read_var(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Piece> {
        match chars.peek().copied() {
            Some('?') => {
                chars.next();
                Some(Piece::Var("?".into()))
            }
            Some('{') => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next()? {
                        '}' => break,
                        c => name.push(c),
                    }
                }
                Some(Piece::Var(name))
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                Some(Piece::Var(name))
            }
            _ => Some(Piece::Lit("$".into())),
        }
    }
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => finish(&mut items, &mut word),
            '\n' | ';' => {
                finish(&mut items, &mut word);
                items.push(Item::Op(Connector::Always));
            }
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                finish(&mut items, &mut word);
                items.push(Item::Op(Connector::And));
            }
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                finish(&mut items, &mut word);
                items.push(Item::Op(Connector::Or));
            }
            '|' => {
                finish(&mut items, &mut word);
                items.push(Item::Pipe);
            }
            '(' | ')' | '`' | '<' => return None,
            '&' => {
                // Only as part of `>&2` / `2>&1`.
                let w = word.get_or_insert_with(Word::default);
                match w.pieces.last() {
                    Some(Piece::Lit(s)) if s.ends_with('>') => w.push_char('&'),
                    _ => return None,
                }
            }
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                items.push(Item::Op(Connector::Always));
            }
            '\'' => {
                let w = word.get_or_insert_with(Word::default);
                w.quoted = true;
                // Keep an empty literal so that '' is still a word.
                w.pieces.push(Piece::Lit(String::new()));
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push_char(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(Word::default);
                w.quoted = true;
                w.pieces.push(Piece::Lit(String::new()));
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => w.push_char(c),
                            '\n' => {}
                            c => {
                                w.push_char('\\');
                                w.push_char(c);
                            }
                        },
                        '$' => w.pieces.push(read_var(&mut chars)?),
                        c => w.push_char(c),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(Word::default);
                w.quoted = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => w.push_char(c),
                }
            }
            '$' => {
                let piece = read_var(&mut chars)?;
                word.get_or_insert_with(Word::default).pieces.push(piece);
            }
            c => word.get_or_insert_with(Word::default).push_char(c),
        }
    }
    finish(&mut items, &mut word);
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(argv: &[&str]) -> GuestJob {
        GuestJob {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("A".into(), "1".into()), ("B".into(), "two".into())],
            workdir: "/".into(),
            files: BTreeMap::from([("/tmp/f".to_string(), b"hello\n".to_vec())]),
            dirs: BTreeSet::new(),
            mounts: Vec::new(),
            listeners: Vec::new(),
            timeout: None,
            image_machine: true,
            stream: false,
            machines: 1,
            machine: "m".into(),
            boot: 1,
        }
    }

    fn exec(j: &GuestJob) -> (i32, String, String) {
        match run(j, None, &|_| Ok(())) {
            GuestEnd::Exited(o) => (
                o.code,
                String::from_utf8(o.stdout).unwrap(),
                String::from_utf8(o.stderr).unwrap(),
            ),
            GuestEnd::HostTimeout { .. } => panic!("host timeout"),
        }
    }

    #[test]
    fn basic_commands() {
        assert_eq!(
            exec(&job(&["echo", "a", "b"])),
            (0, "a b\n".into(), "".into())
        );
        assert_eq!(exec(&job(&["/bin/echo", "-n", "x"])).1, "x");
        assert_eq!(exec(&job(&["true"])).0, 0);
        assert_eq!(exec(&job(&["false"])).0, 1);
        assert_eq!(exec(&job(&["env"])).1, "A=1\nB=two\n");
        assert_eq!(exec(&job(&["pwd"])).1, "/\n");
        assert_eq!(exec(&job(&["cat", "/tmp/f"])).1, "hello\n");
        assert_eq!(
            exec(&job(&["cat", "/nope"])),
            (
                1,
                "".into(),
                "cat: /nope: No such file or directory\n".into()
            )
        );
        let (code, _, err) = exec(&job(&["uname", "-a"]));
        assert_eq!(code, 127);
        assert_eq!(
            err,
            format!("sim: command not simulated: uname (simulated: {SIMULATED})\n")
        );
    }

    #[test]
    fn head_counts_bytes() {
        let (code, out, _) = exec(&job(&["head", "-c", "1000", "/dev/zero"]));
        assert_eq!(code, 0);
        assert_eq!(out.len(), 1000);
        assert!(out.bytes().all(|b| b == 0));
        assert_eq!(exec(&job(&["head", "-c", "2K", "/dev/zero"])).1.len(), 2048);
        assert_eq!(exec(&job(&["head", "-c3", "/tmp/f"])).1, "hel");
        assert_eq!(exec(&job(&["head", "-n", "1", "/tmp/f"])).0, 127);
    }

    #[test]
    fn shell_subset() {
        assert_eq!(exec(&job(&["sh", "-c", "exit 3"])).0, 3);
        assert_eq!(exec(&job(&["sh", "-c", "exit 256"])).0, 0);
        assert_eq!(
            exec(&job(&["sh", "-c", "echo \"$A-${B}\" '$A'"])).1,
            "1-two $A\n"
        );
        assert_eq!(
            exec(&job(&[
                "sh",
                "-c",
                "echo out; echo err >&2; false || echo fallback"
            ])),
            (0, "out\nfallback\n".into(), "err\n".into())
        );
        assert_eq!(
            exec(&job(&["sh", "-c", "false && echo no; echo $?"])).1,
            "1\n"
        );
        assert_eq!(exec(&job(&["sh", "-c", "cd /w && pwd"])).1, "/w\n");
        assert_eq!(exec(&job(&["sh", "-c", "X=9; echo $X"])).1, "9\n");
        assert_eq!(exec(&job(&["sh", "-c", "cat /nope 2>/dev/null"])).2, "");
        assert_eq!(exec(&job(&["sh", "-c", "echo a | cat"])).1, "a\n");
        assert_eq!(exec(&job(&["sh", "-c", "echo a & echo b"])).0, 127);
        assert_eq!(
            exec(&job(&["sh", "-c", "exit 4; echo never"])),
            (4, "".into(), "".into())
        );
    }

    #[test]
    fn env_prefix_runs_a_command_with_more_env() {
        assert_eq!(
            exec(&job(&["env", "A=9", "C=3", "env"])).1,
            "B=two\nA=9\nC=3\n"
        );
    }

    #[test]
    fn sleep_honours_exec_timeout() {
        let mut j = job(&["sleep", "5"]);
        j.timeout = Some(Duration::from_millis(100));
        let start = Instant::now();
        let (code, _, err) = exec(&j);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(code, 124);
        assert_eq!(err, "\ncommand timed out after 100ms");
        j.image_machine = false;
        assert_eq!(exec(&j), (124, "".into(), "".into()));
        let j = job(&["sleep", "0.05"]);
        let start = Instant::now();
        assert_eq!(exec(&j).0, 0);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn sleep_stops_at_the_host_deadline() {
        let j = job(&["sh", "-c", "echo partial; sleep 5"]);
        let end = run(
            &j,
            Some(Instant::now() + Duration::from_millis(50)),
            &|_| Ok(()),
        );
        assert!(matches!(end, GuestEnd::HostTimeout { ref stdout, .. } if stdout.is_empty()));
    }

    #[test]
    fn sleep_operands() {
        assert_eq!(parse_sleep("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_sleep("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_sleep("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_sleep("x"), None);
        assert_eq!(parse_sleep("-1"), None);
        assert_eq!(exec(&job(&["sleep", "x"])).0, 1);
    }
}
