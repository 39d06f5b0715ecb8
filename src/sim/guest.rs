//! The few guest commands `machine exec` can run in the simulation.
//!
//! A guest runs with a copy of the machine's env, workdir and copied-in files, taken under
//! the state lock; it runs itself outside any lock, so a `sleep` blocks nobody else.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use super::SimOutput;

/// Everything a guest command may look at, copied out of the machine record.
#[derive(Clone, Debug)]
pub(crate) struct GuestJob {
    pub(crate) argv: Vec<String>,
    /// Machine env with the exec's `-e` applied on top (§5).
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: String,
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    /// `--timeout`: the guest is killed at this point and exec answers 124.
    pub(crate) timeout: Option<Duration>,
    /// Image machines (crun) append a "timed out" note to stderr; bare VMs do not (§4).
    pub(crate) image_machine: bool,
    /// `--stream`: no output cap.
    pub(crate) stream: bool,
    /// Machine count when the job was taken, for the fake's log line.
    pub(crate) machines: usize,
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
const SIMULATED: &str =
    "echo, true, false, env, pwd, cat, sh -c \"exit N\", sleep, head -c N /dev/zero";

enum Stop {
    ExecTimeout,
    HostTimeout,
    /// `exit N` inside `sh -c`.
    Exit(i32),
}

type Flow = Result<i32, Stop>;

struct Guest<'a> {
    job: &'a GuestJob,
    env: Vec<(String, String)>,
    workdir: String,
    exec_deadline: Option<Instant>,
    host_deadline: Option<Instant>,
    out: Vec<u8>,
    err: Vec<u8>,
}

/// Run the job's argv to completion, a timeout, or the host deadline.
pub(crate) fn run(job: &GuestJob, host_deadline: Option<Instant>) -> GuestEnd {
    let start = Instant::now();
    let mut g = Guest {
        job,
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
        for arg in args {
            if arg == "-" || arg == "/dev/null" {
                continue;
            }
            match self.job.files.get(&self.resolve(arg)) {
                Some(bytes) => self.out.extend_from_slice(bytes),
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
        match self.job.files.get(&self.resolve(file)) {
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

    /// A very small `sh -c`: simple commands joined by `;`, `&&`, `||` or newlines, quotes,
    /// `$VAR`/`${VAR}`/`$?`, `exit`, `cd`, `export`, `K=V`, and the redirections `>&2`,
    /// `1>&2`, `2>&1`, `>/dev/null`, `2>/dev/null`.
    fn script(&mut self, text: &str) -> Flow {
        let Some(items) = tokenize(text) else {
            return self.not_simulated(&format!("sh -c {text:?}"));
        };
        let mut status = 0;
        let mut words: Vec<Word> = Vec::new();
        let mut connector = Connector::Always;
        let mut iter = items.into_iter().peekable();
        loop {
            let item = iter.next();
            let next_connector = match &item {
                Some(Item::Word(w)) => {
                    words.push(w.clone());
                    continue;
                }
                Some(Item::Op(c)) => *c,
                None => Connector::Always,
            };
            let run = match connector {
                Connector::Always => true,
                Connector::And => status == 0,
                Connector::Or => status != 0,
            };
            if run && !words.is_empty() {
                status = self.simple(&words, status)?;
            }
            words.clear();
            connector = next_connector;
            if item.is_none() {
                return Ok(status);
            }
        }
    }

    fn simple(&mut self, words: &[Word], last: i32) -> Flow {
        let mut argv = Vec::new();
        let mut redirects = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            if let Some(op) = w.redirect() {
                if op == ">" || op == "1>" || op == "2>" {
                    // `> /dev/null` with the target as its own word.
                    let target = words.get(i + 1).map(|t| t.expand(&self.env, last));
                    if target.as_deref() != Some("/dev/null") {
                        return self.not_simulated(&format!("redirection {op}"));
                    }
                    redirects.push(format!("{op}/dev/null"));
                    i += 2;
                    continue;
                }
                redirects.push(op.to_string());
            } else {
                argv.push(w.expand(&self.env, last));
            }
            i += 1;
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
        for r in redirects {
            match r.as_str() {
                ">&2" | "1>&2" => {
                    let moved = self.out.split_off(out_mark);
                    self.err.extend_from_slice(&moved);
                }
                "2>&1" => {
                    let moved = self.err.split_off(err_mark);
                    self.out.extend_from_slice(&moved);
                }
                ">/dev/null" | "1>/dev/null" => self.out.truncate(out_mark),
                "2>/dev/null" => self.err.truncate(err_mark),
                _ => {}
            }
        }
        flow
    }
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

    /// An unquoted redirection operator this word is, if any.
    fn redirect(&self) -> Option<&str> {
        if self.quoted {
            return None;
        }
        match self.pieces.as_slice() {
            [Piece::Lit(s)] => match s.as_str() {
                ">&2" | "1>&2" | "2>&1" | ">/dev/null" | "1>/dev/null" | "2>/dev/null" | ">"
                | "1>" | "2>" => Some(s.as_str()),
                _ => None,
            },
            _ => None,
        }
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
}

/// Split a script into words and connectors; `None` for syntax the simulation does not
/// model (pipes, background jobs, subshells, unterminated quotes).
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
            '|' | '(' | ')' | '`' | '<' => return None,
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
            timeout: None,
            image_machine: true,
            stream: false,
            machines: 1,
        }
    }

    fn exec(j: &GuestJob) -> (i32, String, String) {
        match run(j, None) {
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
            "sim: command not simulated: uname (simulated: echo, true, false, env, pwd, cat, sh \
             -c \"exit N\", sleep, head -c N /dev/zero)\n"
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
        assert_eq!(exec(&job(&["sh", "-c", "echo a | cat"])).0, 127);
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
        let end = run(&j, Some(Instant::now() + Duration::from_millis(50)));
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
