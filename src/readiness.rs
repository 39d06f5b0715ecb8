//! Readiness waits and the console log of a [`Machine`]: poll until the guest is ready
//! instead of sleeping a guessed time.
//!
//! Every wait polls with backoff (50 ms, growing 1.5× per try up to 1 s, never sleeping past
//! the deadline; the probe runs at least once, and once more at the deadline). Running out of
//! time is [`Error::NotReady`], which says what was awaited, for how long, and what the last
//! probe saw, with the machine's secret values scrubbed. An error from smolvm (the machine was
//! stopped, or does not exist) ends a wait at once: it does not fix itself by waiting.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::artifacts::{read_log, CONSOLE_LOG};
use crate::error::{Error, Result};
use crate::machine::Machine;

impl Machine {
    /// The guest's console log: `agent-console.log` in the machine's data directory (one
    /// `machine data-dir` call, then a read on the host), as lossy UTF-8, with the machine's
    /// secret values scrubbed.
    ///
    /// A log that does not exist yet (a machine never started) is `Ok("")`. A log over
    /// 16 MiB is cut to its last 16 MiB, after a line that says so. From smolvm 1.7.0 the log
    /// is truncated at each boot, so it holds the current boot only; before that it also
    /// holds earlier boots.
    ///
    /// ```no_run
    /// # fn f(vm: &smolvm_harness::Machine) -> smolvm_harness::Result<()> {
    /// let log = vm.console_log()?;
    /// assert!(!log.contains("Kernel panic"), "{log}");
    /// # Ok(()) }
    /// ```
    pub fn console_log(&self) -> Result<String> {
        let path = self
            .smolvm()
            .machine_data_dir(self.name())?
            .join(CONSOLE_LOG);
        read_log(self.smolvm(), self.name(), &path)
            .map_err(|e| Error::io("read the console log", path, e))
    }

    /// Call `probe` until it answers `Ok(true)`, for at most `timeout`. Between tries it
    /// sleeps 50 ms, then 1.5× longer each time up to 1 s, never past the deadline; the probe
    /// runs at least once (even with a zero timeout), and once more at the deadline.
    ///
    /// `Ok(false)` means "not yet". An `Err` ends the wait at once and is returned: the
    /// probe's errors are smolvm's (a stopped or deleted machine, a timed-out call), and those
    /// do not fix themselves by waiting; turn an expected error into `Ok(false)` inside the
    /// probe. Out of time, the error is [`Error::NotReady`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use smolvm_harness::{Machine, Reply, ScriptedRunner, Smolvm};
    ///
    /// // The first two `cat`s find nothing, the third finds the file's text.
    /// let runner = ScriptedRunner::new()
    ///     .on(&["machine", "exec"], Reply::stdout("ready\n"))
    ///     .on_times(&["machine", "exec"], 2, Reply::fail(1, "cat: no such file\n"));
    /// let smolvm = Smolvm::new("smolvm").with_runner(runner);
    /// let vm = Machine::builder().smolvm(smolvm).name("wait-doc").create()?;
    /// vm.wait_until(Duration::from_secs(10), |vm| {
    ///     Ok(vm.exec(&["cat", "/run/state"])?.stdout_str() == "ready\n")
    /// })?;
    /// # Ok::<(), smolvm_harness::Error>(())
    /// ```
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&Machine) -> Result<bool>,
    ) -> Result<()> {
        poll(
            timeout,
            &format!("the condition of wait_until on machine {}", self.name()),
            |_| {
                Ok(if probe(self)? {
                    Probe::Ready
                } else {
                    Probe::NotYet("the probe answered false".to_string())
                })
            },
        )
    }

    /// Wait until `path` exists in the guest: `test -e PATH`, which any Linux guest has.
    /// `path` must be absolute and without NUL ([`Error::InvalidInput`]).
    ///
    /// ```no_run
    /// # fn f(vm: &smolvm_harness::Machine) -> smolvm_harness::Result<()> {
    /// use std::time::Duration;
    /// vm.sh("(sleep 1; touch /tmp/ready) >/dev/null 2>&1 &")?;
    /// vm.wait_for_file("/tmp/ready", Duration::from_secs(30))?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_file(&self, path: &str, timeout: Duration) -> Result<()> {
        if !path.starts_with('/') {
            return Err(Error::invalid(
                "guest path",
                format!("{path:?}: must be absolute"),
            ));
        }
        if path.contains('\0') {
            return Err(Error::invalid("guest path", "contains NUL"));
        }
        poll(timeout, &format!("guest file {path}"), |left| {
            let out = match self.probe_exec(&["test", "-e", path], left)? {
                Ok(out) => out,
                Err(late) => return Ok(late),
            };
            Ok(if out.success() {
                Probe::Ready
            } else {
                Probe::NotYet(self.describe_exec("test -e", &out))
            })
        })
    }

    /// Wait until something listens on `guest_port` (TCP).
    ///
    /// When the port is published ([`Machine::host_port`] is `Some`), the probe runs from the
    /// host, through the forward a test will use: a TCP connect to `127.0.0.1:HOST_PORT`, then
    /// ready if a byte arrives or the connection stays open for 300 ms. A refused or reset
    /// connection, or one closed before any byte, is "not yet": from smolvm 1.1.0 the host port
    /// is bound when the machine starts and accepts connections before anything listens in
    /// the guest, then closes them at once, so a bare connect proves nothing.
    ///
    /// When the port is not published, the probe runs in the guest: `cat /proc/net/tcp
    /// /proc/net/tcp6`, looking for a socket listening (state `0A`) on that local port, on any
    /// address; that works on any Linux guest without extra tools.
    ///
    /// Port 0 is [`Error::InvalidInput`].
    ///
    /// ```no_run
    /// # fn f(vm: &smolvm_harness::Machine) -> smolvm_harness::Result<()> {
    /// use std::time::Duration;
    /// vm.sh("mkdir -p /www && httpd -p 8080 -h /www")?;
    /// vm.wait_for_port(8080, Duration::from_secs(30))?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_port(&self, guest_port: u16, timeout: Duration) -> Result<()> {
        if guest_port == 0 {
            return Err(Error::invalid("port", "0 is not a port one can wait for"));
        }
        if let Some(host) = self.host_port(guest_port) {
            return wait_for_host_port(guest_port, host, timeout);
        }
        poll(
            timeout,
            &format!("guest port {guest_port} to listen (in /proc/net/tcp, not published)"),
            |left| {
                let out =
                    match self.probe_exec(&["cat", "/proc/net/tcp", "/proc/net/tcp6"], left)? {
                        Ok(out) => out,
                        Err(late) => return Ok(late),
                    };
                // No IPv6 in the guest: `cat` fails on tcp6 but printed tcp.
                Ok(if listens_on(&out.stdout_str(), guest_port) {
                    Probe::Ready
                } else {
                    Probe::NotYet(format!(
                        "no socket listening on port {guest_port}; {}",
                        self.describe_exec("cat /proc/net/tcp /proc/net/tcp6", &out)
                    ))
                })
            },
        )
    }

    /// Wait until the console log ([`Machine::console_log`]) contains `pattern`, as a
    /// substring. Before smolvm 1.7.0 the log also holds earlier boots, where the pattern may
    /// already be. An empty pattern is [`Error::InvalidInput`].
    ///
    /// ```no_run
    /// # fn f(vm: &smolvm_harness::Machine) -> smolvm_harness::Result<()> {
    /// use std::time::Duration;
    /// vm.sh("echo app: listening > /dev/console")?;
    /// vm.wait_for_log("app: listening", Duration::from_secs(30))?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<()> {
        if pattern.is_empty() {
            return Err(Error::invalid(
                "log pattern",
                "empty: it would match any log",
            ));
        }
        let what = format!(
            "{:?} in the console log",
            self.smolvm().scrub_output(self.name(), pattern)
        );
        poll(timeout, &what, |left| {
            let path = match self
                .smolvm()
                .with_timeout(left)
                .machine_data_dir(self.name())
            {
                Ok(dir) => dir.join(CONSOLE_LOG),
                Err(Error::Timeout { .. }) => {
                    return Ok(Probe::NotYet(format!(
                        "`machine data-dir` did not answer within {left:?}"
                    )))
                }
                Err(e) => return Err(e),
            };
            let log = read_log(self.smolvm(), self.name(), &path)
                .map_err(|e| Error::io("read the console log", path, e))?;
            Ok(if log.contains(pattern) {
                Probe::Ready
            } else if log.trim().is_empty() {
                Probe::NotYet("the console log is empty or does not exist yet".to_string())
            } else {
                Probe::NotYet(format!("the console log ends with:\n{}", tail(&log)))
            })
        })
    }

    /// Run a probe command with `left` as its host-side limit: `Ok(Err(not yet))` when it
    /// did not answer in time, an error when smolvm failed.
    fn probe_exec(
        &self,
        argv: &[&str],
        left: Duration,
    ) -> Result<std::result::Result<crate::ExecOutput, Probe>> {
        let client = self.smolvm().with_timeout(left);
        match client.machine_exec(self.name(), argv, &crate::ExecOptions::default()) {
            Ok(out) => Ok(Ok(out)),
            Err(Error::Timeout { .. }) => Ok(Err(Probe::NotYet(format!(
                "`{}` did not answer within {left:?}",
                argv.join(" ")
            )))),
            Err(e) => Err(e),
        }
    }

    /// `exit N` and the tails of stderr and stdout, scrubbed.
    fn describe_exec(&self, what: &str, out: &crate::ExecOutput) -> String {
        let mut text = format!("`{what}` exited {}", out.code());
        for (name, stream) in [("stderr", out.stderr_str()), ("stdout", out.stdout_str())] {
            let stream = self.smolvm().scrub_output(self.name(), &stream);
            if !stream.trim().is_empty() {
                text.push_str(&format!("; {name}:\n{}", tail(&stream)));
            }
        }
        text
    }
}

/// One probe's answer.
enum Probe {
    Ready,
    /// Not yet; what the probe saw.
    NotYet(String),
}

const FIRST_DELAY: Duration = Duration::from_millis(50);
/// The shortest limit a probing smolvm call gets, near the deadline.
const MIN_PROBE: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Run `probe` until ready, an error, or `timeout`.
fn poll(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut(Duration) -> Result<Probe>,
) -> Result<()> {
    let start = Instant::now();
    // A timeout too large to add is no deadline at all.
    let deadline = start.checked_add(timeout);
    let mut delay = FIRST_DELAY;
    loop {
        // A probe that is a smolvm call gets the time left as its limit (at least
        // MIN_PROBE), so a hung call cannot hold the wait past its deadline.
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let last = match probe(left.max(MIN_PROBE))? {
            Probe::Ready => return Ok(()),
            Probe::NotYet(last) => last,
        };
        let now = Instant::now();
        let left = match deadline {
            Some(d) if now >= d => {
                // Whole milliseconds: what a reader of the message can use.
                let waited = now - start;
                return Err(Error::NotReady {
                    what: what.to_string(),
                    waited: Duration::from_millis(
                        waited.as_millis().try_into().unwrap_or(u64::MAX),
                    ),
                    last,
                });
            }
            Some(d) => d - now,
            None => delay,
        };
        std::thread::sleep(delay.min(left));
        delay = delay.mul_f64(1.5).min(MAX_DELAY);
    }
}

/// The published half of [`Machine::wait_for_port`].
fn wait_for_host_port(guest_port: u16, host_port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
    poll(
        timeout,
        &format!("guest port {guest_port} via host {addr}"),
        |_| Ok(probe_host_port(addr)),
    )
}

/// How long a connect to a published port may take (it is on the loopback).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an open connection must stay open, silent, to count as served.
const OPEN_FOR: Duration = Duration::from_millis(300);

fn probe_host_port(addr: SocketAddr) -> Probe {
    let mut stream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return Probe::NotYet(format!("connect to {addr}: {e}")),
    };
    if let Err(e) = stream.set_read_timeout(Some(OPEN_FOR)) {
        return Probe::NotYet(format!("connected to {addr}, but: {e}"));
    }
    let mut byte = [0u8; 1];
    loop {
        return match stream.read(&mut byte) {
            Ok(0) => Probe::NotYet(format!(
                "connected to {addr}, then closed before any byte (nothing listens in the guest yet)"
            )),
            Ok(_) => Probe::Ready,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Probe::Ready
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Probe::NotYet(format!("connected to {addr}, then: {e}")),
        };
    }
}

/// True if `/proc/net/tcp` or `/proc/net/tcp6` text shows a socket in state `0A` (LISTEN)
/// on local port `port`. Lines that do not look like socket lines (headers, noise from the
/// command) are skipped.
pub(crate) fn listens_on(text: &str, port: u16) -> bool {
    text.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [sl, local, _remote, state, ..] = fields.as_slice() else {
            return false;
        };
        let is_slot = sl
            .strip_suffix(':')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        is_slot && local_port == Some(port) && state.eq_ignore_ascii_case("0A")
    })
}

/// The last few lines of `text` (at most 2 KiB), for a [`Error::NotReady`]'s `last`.
fn tail(text: &str) -> String {
    const LINES: usize = 10;
    const BYTES: usize = 2048;
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut out = lines[lines.len().saturating_sub(LINES)..].join("\n");
    if out.len() > BYTES {
        let mut from = out.len() - BYTES;
        while !out.is_char_boundary(from) {
            from += 1;
        }
        out = format!("…{}", &out[from..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Reply, ScriptedRunner};
    use crate::Smolvm;
    use std::io::Write;
    use std::net::TcpListener;

    fn machine(runner: &ScriptedRunner, name: &str) -> Machine {
        Machine::builder()
            .smolvm(Smolvm::new("smolvm").with_runner(runner.clone()))
            .name(name)
            .create()
            .unwrap()
    }

    fn not_ready(err: Error) -> (String, Duration, String) {
        match err {
            Error::NotReady { what, waited, last } => (what, waited, last),
            other => panic!("expected NotReady, got {other}"),
        }
    }

    #[test]
    fn wait_until_backs_off_and_ends_on_true() {
        let vm = machine(&ScriptedRunner::new(), "rd-until-true");
        let mut calls = Vec::new();
        vm.wait_until(Duration::from_secs(60), |_| {
            calls.push(Instant::now());
            Ok(calls.len() == 4)
        })
        .unwrap();
        assert_eq!(calls.len(), 4);
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        // 50 ms, 75 ms, 112 ms at least: sleeps only ever last longer than asked.
        assert!(gaps[0] >= Duration::from_millis(50), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(75), "{gaps:?}");
        assert!(gaps[2] >= Duration::from_millis(112), "{gaps:?}");
    }

    #[test]
    fn wait_until_times_out_with_not_ready_after_a_last_probe() {
        let vm = machine(&ScriptedRunner::new(), "rd-until-timeout");
        let mut n = 0;
        let err = vm
            .wait_until(Duration::from_millis(200), |_| {
                n += 1;
                Ok(false)
            })
            .unwrap_err();
        let (what, waited, last) = not_ready(err);
        assert!(what.contains("rd-until-timeout"), "{what}");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(last.contains("false"), "{last}");
        // 0, 50, 125, and the deadline's own.
        assert!(n >= 3, "{n}");
        // A zero timeout still probes once.
        let mut once = 0;
        let err = vm.wait_until(Duration::ZERO, |_| {
            once += 1;
            Ok(false)
        });
        assert!(matches!(err, Err(Error::NotReady { .. })));
        assert_eq!(once, 1);
    }

    #[test]
    fn wait_until_returns_a_probe_error_at_once() {
        let runner = ScriptedRunner::new().on(
            &["machine", "exec"],
            Reply::fail(1, "Error: vm not found: x\n"),
        );
        let vm = machine(&runner, "rd-until-err");
        let mut n = 0;
        let err = vm
            .wait_until(Duration::from_secs(60), |vm| {
                n += 1;
                vm.exec(&["true"]).map(|o| o.success())
            })
            .unwrap_err();
        assert!(matches!(err, Error::Failed { .. }), "{err}");
        assert_eq!(n, 1);
    }

    #[test]
    fn wait_for_file_runs_test_e_until_it_succeeds() {
        let runner = ScriptedRunner::new()
            .on(&["machine", "exec"], Reply::ok())
            .on_times(&["machine", "exec"], 2, Reply::fail(1, ""));
        let vm = machine(&runner, "rd-file");
        runner.clear_calls();
        vm.wait_for_file("/tmp/ready", Duration::from_secs(60))
            .unwrap();
        let execs: Vec<Vec<String>> = runner.argvs();
        assert_eq!(execs.len(), 3);
        assert_eq!(
            execs[2],
            [
                "machine",
                "exec",
                "--name",
                "rd-file",
                "--",
                "test",
                "-e",
                "/tmp/ready"
            ]
        );
        for bad in ["tmp/ready", "", "/a\0b"] {
            let err = vm.wait_for_file(bad, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn wait_for_file_times_out_with_the_exit_and_output() {
        let runner = ScriptedRunner::new().on(
            &["machine", "exec"],
            Reply::with(2, "out-line\n", "test: odd\n"),
        );
        let vm = machine(&runner, "rd-file-timeout");
        let (what, _, last) = not_ready(
            vm.wait_for_file("/x", Duration::from_millis(100))
                .unwrap_err(),
        );
        assert_eq!(what, "guest file /x");
        assert!(last.contains("exited 2"), "{last}");
        assert!(last.contains("test: odd"), "{last}");
        assert!(last.contains("out-line"), "{last}");
    }

    #[test]
    fn a_host_port_that_accepts_then_closes_is_not_ready() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // smolvm ≥ 1.1 with nothing listening in the guest: accept, close at once.
        std::thread::spawn(move || {
            for s in listener.incoming() {
                drop(s);
            }
        });
        let (what, _, last) =
            not_ready(wait_for_host_port(80, port, Duration::from_millis(300)).unwrap_err());
        assert_eq!(what, format!("guest port 80 via host 127.0.0.1:{port}"));
        assert!(last.contains("closed before any byte"), "{last}");
    }

    #[test]
    fn a_host_port_that_stays_open_or_greets_is_ready() {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in silent.incoming() {
                held.push(s);
            }
        });
        wait_for_host_port(80, silent_port, Duration::from_secs(30)).unwrap();

        let banner = TcpListener::bind("127.0.0.1:0").unwrap();
        let banner_port = banner.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in banner.incoming().flatten() {
                let _ = s.write_all(b"SSH-2.0-x\r\n");
            }
        });
        wait_for_host_port(80, banner_port, Duration::from_secs(30)).unwrap();
        let vm = machine(&ScriptedRunner::new(), "rd-port-zero");
        assert!(matches!(
            vm.wait_for_port(0, Duration::from_secs(1)),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn a_refused_host_port_times_out_with_the_connect_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (_, _, last) =
            not_ready(wait_for_host_port(80, port, Duration::from_millis(200)).unwrap_err());
        assert!(
            last.starts_with(&format!("connect to 127.0.0.1:{port}: ")),
            "{last}"
        );
        assert!(last.to_lowercase().contains("refused"), "{last}");
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 14471 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 0100007F:A3C2 01 00000000:00000000 00:00000000 00000000     0        0 14472 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15000 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0CEA 0000000000000000FFFF00000100007F:8AAE 06 00000000:00000000 03:00000F2B 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn proc_net_tcp_parsing() {
        let both = format!("{TCP}{TCP6}");
        assert!(listens_on(&both, 8080), "IPv4 listener");
        assert!(listens_on(&both, 443), "IPv6 listener");
        assert!(!listens_on(&both, 22), "established is not listening");
        assert!(!listens_on(&both, 3306), "TIME_WAIT is not listening");
        assert!(!listens_on(&both, 1));
        assert!(!listens_on("", 8080));
        assert!(!listens_on("garbage 00000000:1F90 x 0A\n0: nope", 8080));
        // The kernel prints upper-case hex; lower-case is read all the same.
        assert!(listens_on(&TCP.to_lowercase(), 8080));
    }

    #[test]
    fn an_unpublished_port_is_looked_for_in_proc_net_tcp() {
        let runner = ScriptedRunner::new()
            .on(&["machine", "exec"], Reply::stdout(format!("{TCP}{TCP6}")))
            .on_times(
                &["machine", "exec"],
                1,
                Reply::with(1, TCP, "cat: can't open '/proc/net/tcp6'\n"),
            );
        let vm = machine(&runner, "rd-guest-port");
        runner.clear_calls();
        vm.wait_for_port(443, Duration::from_secs(30)).unwrap();
        let argvs = runner.argvs();
        assert_eq!(argvs.len(), 2);
        assert_eq!(
            argvs[0][4..],
            ["--", "cat", "/proc/net/tcp", "/proc/net/tcp6"]
        );
        // IPv4 only, tcp6 missing: still read.
        let runner = ScriptedRunner::new().on(
            &["machine", "exec"],
            Reply::with(1, TCP, "cat: can't open '/proc/net/tcp6'\n"),
        );
        let vm = machine(&runner, "rd-guest-port4");
        vm.wait_for_port(8080, Duration::from_secs(30)).unwrap();
        let (what, _, last) = not_ready(
            vm.wait_for_port(9999, Duration::from_millis(100))
                .unwrap_err(),
        );
        assert!(what.contains("guest port 9999"), "{what}");
        assert!(last.contains("exited 1"), "{last}");
        assert!(last.contains("can't open"), "{last}");
    }

    /// A runner whose `machine data-dir` prints `dir`.
    fn with_data_dir(dir: &std::path::Path) -> ScriptedRunner {
        ScriptedRunner::new().on(
            &["machine", "data-dir"],
            Reply::stdout(format!("{}\n", dir.display())),
        )
    }

    #[test]
    fn console_log_reads_the_data_dir_and_a_missing_one_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let runner = with_data_dir(tmp.path());
        let vm = machine(&runner, "rd-console");
        assert_eq!(vm.console_log().unwrap(), "");
        std::fs::write(tmp.path().join("agent-console.log"), b"boot\xff ok\n").unwrap();
        assert_eq!(vm.console_log().unwrap(), "boot\u{fffd} ok\n");
        let err = machine(
            &ScriptedRunner::new().on(
                &["machine", "data-dir"],
                Reply::fail(1, "Error: vm not found: x\n"),
            ),
            "rd-console-gone",
        )
        .console_log()
        .unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn wait_for_log_finds_a_substring_and_times_out_with_the_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("agent-console.log");
        let runner = with_data_dir(tmp.path());
        let vm = machine(&runner, "rd-log");
        let (_, _, last) = not_ready(
            vm.wait_for_log("app: up", Duration::from_millis(100))
                .unwrap_err(),
        );
        assert!(last.contains("empty"), "{last}");
        std::fs::write(&log, "boot 1\nboot 2\n").unwrap();
        let (what, _, last) = not_ready(
            vm.wait_for_log("app: up", Duration::from_millis(100))
                .unwrap_err(),
        );
        assert_eq!(what, "\"app: up\" in the console log");
        assert!(last.ends_with("boot 1\nboot 2"), "{last}");
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                std::fs::write(&log, "boot 1\nboot 2\napp: up on 8080\n").unwrap();
            })
        };
        vm.wait_for_log("app: up", Duration::from_secs(30)).unwrap();
        writer.join().unwrap();
        assert!(matches!(
            vm.wait_for_log("", Duration::from_secs(1)),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn secrets_never_reach_not_ready() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("agent-console.log"), "token=s3cr3t-value\n").unwrap();
        let runner = with_data_dir(tmp.path()).on(
            &["machine", "exec"],
            Reply::with(1, "s3cr3t-value\n", "s3cr3t-value\n"),
        );
        let vm = Machine::builder()
            .smolvm(Smolvm::new("smolvm").with_runner(runner))
            .name("rd-secret")
            .env("TOKEN", "s3cr3t-value")
            .create()
            .unwrap();
        assert_eq!(vm.console_log().unwrap(), "token=<redacted>\n");
        for err in [
            vm.wait_for_log("nope", Duration::ZERO).unwrap_err(),
            vm.wait_for_file("/x", Duration::ZERO).unwrap_err(),
            vm.wait_for_port(81, Duration::ZERO).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }
}
