//! `machine fork` and `machine start --forkable` in the simulation (goldens and clones),
//! through both front ends (the in-process `SimulatedRunner` and the `smolvm-fake` process), at
//! 0.8.2 (no fork), 1.0.1 (positional), 1.7.5 (refuses a second fork), 1.7.6 and 1.9.2.

use std::time::{Duration, Instant};

use smolvm_harness::runner::{Invocation, Runner};
use smolvm_harness::sim::{
    SimSecretRef, SimState, SimulatedRunner, FAIL_ENV, HANG_ENV, LATENCY_ENV,
};
use smolvm_harness::{Error, Version};

#[path = "common/sim_fronts.rs"]
mod sim_fronts;
use sim_fronts::*;

const V082: Version = Version::new(0, 8, 2);
const V101: Version = Version::new(1, 0, 1);
const V175: Version = Version::new(1, 7, 5);
const V176: Version = Version::new(1, 7, 6);
const NEW: Version = Version::new(1, 9, 2);
/// The versions that have fork.
const FORKING: [Version; 4] = [V101, V175, V176, NEW];

impl Front {
    /// `machine fork` in this version's form: positional before 1.0.2.
    fn fork_env(&self, golden: &str, clone: &str, extra: &[&str], env: &[(&str, &str)]) -> Out {
        let mut w = vec!["machine", "fork"];
        w.extend(extra);
        if self.version() >= Version::new(1, 0, 2) {
            w.extend(["--golden", golden, "--name", clone]);
        } else {
            w.extend([golden, clone]);
        }
        self.run_env(&w, env)
    }

    fn fork(&self, golden: &str, clone: &str, extra: &[&str]) -> Out {
        self.fork_env(golden, clone, extra, &[])
    }

    fn fork_ok(&self, golden: &str, clone: &str) -> Out {
        let o = self.fork(golden, clone, &[]);
        assert_eq!(o.code, 0, "{} fork {golden} {clone}: {o:?}", self.label());
        o
    }

    /// A running forkable golden `g` holding `/srv/f` = `base`.
    fn golden(&self, name: &str, extra: &[&str]) {
        assert_eq!(self.create(name, extra).code, 0, "{}", self.label());
        let o = self.run(&["machine", "start", "--name", name, "--forkable"]);
        assert_eq!(o.code, 0, "{}: {o:?}", self.label());
        let o = self.sh(name, "mkdir -p /srv && echo base > /srv/f");
        assert_eq!(o.code, 0, "{}: {o:?}", self.label());
    }

    fn ls_json(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["machine", "ls", "--json"])).unwrap()
    }

    fn delete_args<'a>(&self, name: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
        let mut w = vec!["machine", "delete"];
        w.extend(flags);
        if self.version() >= Version::new(1, 0, 2) {
            w.extend(["--name", name]);
        } else {
            w.push(name);
        }
        w
    }
}

/// The clone ports of `fork`'s `  port H->P (golden) remapped to H2->P (clone)` lines.
fn remaps(stderr: &str) -> Vec<(u16, u16, u16)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("  port ")?;
            let (golden, clone) = rest.split_once(" (golden) remapped to ")?;
            let clone = clone.strip_suffix(" (clone)")?;
            let (gh, gp) = golden.split_once("->")?;
            let (ch, cp) = clone.split_once("->")?;
            assert_eq!(gp, cp);
            Some((gh.parse().ok()?, ch.parse().ok()?, cp.parse().ok()?))
        })
        .collect()
}

fn fork_success_stderr(golden: &str, clone: &str, remap_lines: &str) -> String {
    format!(
        "Freezing golden '{golden}' as fork base...\n{remap_lines}Booting clone '{clone}' from \
         snapshot...\nForked '{golden}' -> '{clone}'. Golden stays frozen as the fork base (do not \
         start it again while clones exist).\n"
    )
}

fn freezing_then(golden: &str, msg: &str) -> String {
    format!("Freezing golden '{golden}' as fork base...\nError: {msg}\n")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[test]
fn fork_exists_from_1_0_0_positional_until_1_0_2() {
    for front in Front::both(V082) {
        let o = front.run(&["machine", "fork", "g", "c"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unrecognized subcommand 'fork'"),
            "{}",
            front.label()
        );
        front.create("g", &[]);
        let o = front.run(&["machine", "start", "--name", "g", "--forkable"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unexpected argument '--forkable' found")
        );
        assert_eq!(front.machine("g").unwrap().state, SimState::Created);
    }
    for front in Front::both(V101) {
        let o = front.run(&["machine", "fork", "--golden", "g", "--name", "c"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unexpected argument '--golden' found")
        );
        let o = front.run(&["machine", "fork", "-e", "A=1", "g", "c"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unexpected argument '-e' found")
        );
        let o = front.run(&["machine", "fork", "g"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("\n  <CLONE>\n"), "{o:?}");
        let o = front.run(&["machine", "delete", "--cascade", "g"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unexpected argument '--cascade' found")
        );
    }
    // `--cascade` joins `delete` in 1.7.0, after `--name` (1.0.2).
    for front in Front::both(Version::new(1, 6, 0)) {
        let o = front.run(&["machine", "delete", "--cascade", "--name", "g"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unexpected argument '--cascade' found")
        );
    }
    for front in Front::both(NEW) {
        let o = front.run(&["machine", "fork", "g", "c"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (2, "error: unexpected argument 'g' found")
        );
        let o = front.run(&["machine", "fork", "--name", "c"]);
        assert_eq!(o.code, 2, "{o:?}");
        assert!(o.stderr.contains("\n  --golden <GOLDEN>\n"), "{o:?}");
    }
}

#[test]
fn clones_share_the_goldens_files_as_of_the_fork_and_then_diverge() {
    for v in FORKING {
        for front in Front::both(v) {
            let l = front.label();
            let mut extra = vec!["-e", "A=1", "--cpus", "2", "--mem", "1024"];
            if v >= Version::new(1, 8, 0) {
                extra.extend(["--label", "team=x"]);
            }
            front.golden("g", &extra);
            assert!(front.machine("g").unwrap().forkable, "{l}");
            assert!(front
                .ok(&["machine", "ls", "-v"])
                .contains("\n  Forkable: enabled\n"));
            let o = front.fork_ok("g", "c1");
            let clone_pid = front.machine("c1").unwrap().pid.unwrap();
            assert_eq!(
                o.stdout,
                format!("Machine 'c1' running (PID: {clone_pid})\n")
            );
            assert_eq!(o.stderr, fork_success_stderr("g", "c1", ""), "{l}");
            let g = front.machine("g").unwrap();
            assert_eq!(g.state, SimState::Frozen, "{l}");
            assert!(g.is_frozen() && g.forkable && g.golden.is_none());
            assert!(g.pid.is_some(), "{l}: the paused VMM lives");
            let c1 = front.machine("c1").unwrap();
            assert_eq!(c1.state, SimState::Running);
            assert_eq!(c1.golden.as_deref(), Some("g"));
            assert!(!c1.forkable && !c1.broken);
            assert_ne!(c1.pid, g.pid);
            assert_eq!(
                (
                    c1.created_at,
                    &c1.env,
                    &c1.labels,
                    c1.cpus,
                    c1.memory_mib,
                    &c1.image
                ),
                (
                    g.created_at,
                    &g.env,
                    &g.labels,
                    g.cpus,
                    g.memory_mib,
                    &g.image
                )
            );
            // 1.7.3 to 1.7.5 refuse a second fork (tested below).
            if v == V175 {
                front.delete("c1");
                front.delete("g");
                continue;
            }
            front.fork_ok("g", "c2");
            for c in ["c1", "c2"] {
                assert_eq!(front.sh(c, "cat /srv/f").stdout, "base\n", "{l} {c}");
            }
            assert_eq!(
                front
                    .sh("c1", "echo one > /srv/f && echo new > /srv/only1")
                    .code,
                0
            );
            assert_eq!(front.sh("c1", "cat /srv/f /srv/only1").stdout, "one\nnew\n");
            assert_eq!(front.sh("c2", "cat /srv/f").stdout, "base\n", "{l}");
            assert_eq!(front.sh("c2", "test -e /srv/only1").code, 1, "{l}");
            front.fork_ok("g", "c3");
            assert_eq!(front.sh("c3", "cat /srv/f").stdout, "base\n", "{l}");
            assert_eq!(front.sh("c3", "test -e /srv/only1").code, 1, "{l}");
            assert_eq!(
                front.machine("g").unwrap().files.get("/srv/f").unwrap(),
                b"base\n"
            );
            // ls --json: no golden/clone field, like smolvm; the golden reads `frozen` from
            // 1.3.0 and `unreachable` before.
            let list = front.ls_json();
            let word = if v >= Version::new(1, 3, 0) {
                "frozen"
            } else {
                "unreachable"
            };
            for m in &list {
                assert!(m.get("golden").is_none(), "{l}: {m}");
                let expect = if m["name"] == "g" { word } else { "running" };
                assert_eq!(m["state"], expect, "{l}: {m}");
                if v >= Version::new(1, 8, 0) {
                    assert_eq!(m["forkable"], false);
                }
            }
            let status = front.ok(&["machine", "status", "--name", "g"]);
            assert_eq!(status, format!("Machine 'g': {word}\n"));
            let lsv = front.ok(&["machine", "ls", "-v"]);
            assert_eq!(lsv.matches("  Forkable: enabled\n").count(), 1, "{lsv}");
            for c in ["c1", "c2", "c3"] {
                front.delete(c);
            }
            front.delete("g");
            assert!(front.ls_json().is_empty());
        }
    }
}

#[test]
fn a_second_fork_is_refused_only_on_1_7_3_to_1_7_5() {
    for v in FORKING {
        for front in Front::both(v) {
            front.golden("g", &[]);
            front.fork_ok("g", "c1");
            let o = front.fork("g", "c2", &[]);
            if v == V175 {
                assert_eq!(
                    (o.code, o.stderr.as_str()),
                    (
                        1,
                        freezing_then(
                            "g",
                            "agent operation failed: fork: golden 'g' is already paused; a valid \
                             retained checkpoint is required"
                        )
                        .as_str()
                    )
                );
                assert!(front.machine("c2").is_none());
            } else {
                assert_eq!(o.code, 0, "{}: {o:?}", front.label());
            }
        }
    }
}

#[test]
fn fork_errors_in_smolvms_order_and_words() {
    for v in FORKING {
        for front in Front::both(v) {
            let l = front.label();
            let name_flag = v >= Version::new(1, 0, 2);
            let env_flags = v >= Version::new(1, 7, 0);
            front.create("plain", &[]);
            front.create("taken", &[]);
            // Created only: not running forkable.
            let not_forkable = |g: &str| {
                format!(
                    "agent operation failed: fork: golden '{g}' is not running forkable; start \
                     it with `machine start --forkable --name {g}`"
                )
            };
            let o = front.fork("plain", "c", &[]);
            assert_eq!(
                (o.code, o.stderr),
                (1, freezing_then("plain", &not_forkable("plain")))
            );
            // Running without --forkable: the VMM refuses from 1.7.0 (every VM has a control
            // socket); before, there is no socket.
            front.start("plain");
            let o = front.fork("plain", "c", &[]);
            let msg = if env_flags {
                "agent operation failed: fork: golden FORK failed: ERR EINVAL no memfd-backed RAM \
                 (start the golden VM with SMOLVM_FORKABLE=1)"
                    .to_string()
            } else {
                not_forkable("plain")
            };
            assert_eq!((o.code, o.stderr), (1, freezing_then("plain", &msg)), "{l}");
            // start --forkable on a running machine: exit 0, and still not forkable.
            let pid = front.machine("plain").unwrap().pid.unwrap();
            let o = front.run(&["machine", "start", "--name", "plain", "--forkable"]);
            assert_eq!(
                (o.code, o.stdout),
                (0, format!("Machine 'plain' already running (PID: {pid})\n"))
            );
            assert!(!front.machine("plain").unwrap().forkable);
            assert_eq!(front.fork("plain", "c", &[]).code, 1);
            // Unknown golden: after the Freezing line.
            let o = front.fork("nope", "c", &[]);
            assert_eq!(
                (o.code, o.stderr),
                (1, freezing_then("nope", "vm not found: nope"))
            );
            // The clone name is checked first: invalid, then taken, even for an unknown golden.
            let o = front.fork("nope", "a.b", &[]);
            assert_eq!(
                (o.code, o.stderr),
                (
                    1,
                    freezing_then(
                        "nope",
                        "config operation failed: clone name: clone name contains invalid \
                         character: '.'"
                    )
                )
            );
            let o = front.fork("nope", "taken", &[]);
            assert_eq!(
                (o.code, o.stderr),
                (
                    1,
                    freezing_then(
                        "nope",
                        "agent operation failed: fork: machine 'taken' already exists"
                    )
                )
            );
            // --forkable on a fork is always refused.
            front.golden("g", &[]);
            let o = front.fork("g", "c", &["--forkable"]);
            assert_eq!(
                (o.code, o.stderr),
                (
                    1,
                    freezing_then(
                        "g",
                        "agent operation failed: fork: nested fork is not supported: a clone \
                         cannot be re-forked, so `forkable` on a fork has no effect (drop it)"
                    )
                )
            );
            if env_flags {
                let o = front.fork("g", "c", &["-e", "1BAD=x"]);
                assert_eq!(
                    (o.code, o.stderr),
                    (
                        1,
                        freezing_then(
                            "g",
                            "config operation failed: fork env: invalid key '1BAD': must match \
                             [A-Za-z_][A-Za-z0-9_]*"
                        )
                    )
                );
                // The env is checked before the clone name is found taken.
                let o = front.fork("g", "taken", &["-e", "1BAD=x"]);
                assert!(o.stderr.contains("fork env: invalid key"), "{o:?}");
            }
            if name_flag {
                let o = front.run(&["machine", "fork", "--golden", "g"]);
                assert_eq!(
                    (o.code, o.stderr.as_str()),
                    (
                        1,
                        "Error: config operation failed: fork: --name is required for one clone; \
                         use --name-prefix with --count for a batch\n"
                    )
                );
            }
            // No failed fork changed anything.
            let g = front.machine("g").unwrap();
            assert_eq!((g.state, g.forkable), (SimState::Running, true), "{l}");
            assert_eq!(front.ls_json().len(), 3, "{l}");
            // A clone cannot be forked: it is not forkable.
            front.fork_ok("g", "c");
            let o = front.fork("c", "cc", &[]);
            let msg = if env_flags {
                "agent operation failed: fork: golden FORK failed: ERR EINVAL no memfd-backed RAM \
                 (start the golden VM with SMOLVM_FORKABLE=1)"
                    .to_string()
            } else {
                not_forkable("c")
            };
            assert_eq!((o.code, o.stderr), (1, freezing_then("c", &msg)), "{l}");
        }
    }
}

#[test]
fn a_frozen_golden_refuses_exec_cp_start_stop_and_plain_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let host_file = tmp.path().join("f");
    std::fs::write(&host_file, b"x").unwrap();
    for v in [V101, V176, NEW] {
        for front in Front::both(v) {
            let l = front.label();
            front.golden("g", &[]);
            front.fork_ok("g", "c1");
            let frozen = "Error: agent operation failed: connect: machine 'g' is frozen as a fork \
                          base: its VM is paused and its agent does not answer\n";
            let o = front.sh("g", "echo hi");
            assert_eq!(
                (o.code, o.stdout.as_str(), o.stderr.as_str()),
                (1, "", frozen),
                "{l}"
            );
            let upload = format!("{}", host_file.display());
            let o = front.run(&["machine", "cp", &upload, "g:/x"]);
            assert_eq!((o.code, o.stderr.as_str()), (1, frozen), "{l}");
            let down = tmp.path().join("down");
            let o = front.run(&["machine", "cp", "g:/srv/f", &down.display().to_string()]);
            assert_eq!((o.code, o.stderr.as_str()), (1, frozen), "{l}");
            let pid = front.machine("g").unwrap().pid.unwrap();
            let o = front.run(&["machine", "start", "--name", "g"]);
            if v >= Version::new(1, 3, 0) {
                assert_eq!(
                    (o.code, o.stderr.as_str()),
                    (
                        1,
                        "Error: 'g' is frozen because it is the fork base for 1 live clone(s) \
                         (c1)\n"
                    ),
                    "{l}"
                );
                let o = front.run(&["machine", "stop", "--name", "g"]);
                assert_eq!(
                    (o.code, o.stderr.as_str()),
                    (
                        1,
                        "Error: machine 'g' is the fork base for 1 live clone(s) (c1); stop or \
                         delete the clones first\n"
                    ),
                    "{l}"
                );
            } else {
                // Before 1.3.0 the paused VMM simply counts as running.
                assert_eq!(
                    (o.code, o.stdout),
                    (0, format!("Machine 'g' already running (PID: {pid})\n"))
                );
            }
            assert_eq!(front.machine("g").unwrap().state, SimState::Frozen, "{l}");
            // delete without -f (stdin is null: it would answer no) refuses before asking.
            let o = front.run(&front.delete_args("g", &[]));
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (
                    1,
                    "Error: machine 'g' is the fork base for 1 clone(s) (c1); delete the clones \
                     first, use --cascade to remove them too, or --force to break them\n"
                ),
                "{l}"
            );
            assert!(front.machine("g").is_some());
            if v >= Version::new(1, 3, 0) {
                // No live clone left: start names the retained checkpoint; stop works.
                front.ok(&["machine", "stop", "--name", "c1"]);
                let o = front.run(&["machine", "start", "--name", "g"]);
                assert_eq!(
                    (o.code, o.stderr.as_str()),
                    (
                        1,
                        "Error: 'g' is frozen because it retains a reusable fork checkpoint; stop \
                         it before restarting, or fork it again\n"
                    )
                );
                front.ok(&["machine", "stop", "--name", "g"]);
                let g = front.machine("g").unwrap();
                assert_eq!(
                    (g.state, g.forkable, g.pid),
                    (SimState::Stopped, false, None)
                );
            }
        }
    }
}

#[test]
fn delete_force_of_a_golden_breaks_its_live_clones() {
    for v in [V101, V176, NEW] {
        for front in Front::both(v) {
            let l = front.label();
            front.golden("g", &[]);
            front.fork_ok("g", "c1");
            let o = front.run(&front.delete_args("g", &["-f"]));
            assert_eq!(o.code, 0, "{l}: {o:?}");
            assert!(o.stdout.ends_with("Deleted machine: g\n"), "{o:?}");
            assert!(front.machine("g").is_none());
            let c1 = front.machine("c1").unwrap();
            assert!(c1.broken, "{l}");
            assert_eq!(
                (c1.state, c1.golden.as_deref()),
                (SimState::Running, Some("g"))
            );
            let o = front.sh("c1", "cat /srv/f");
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (
                    1,
                    "Error: agent operation failed: vm exec: clone disk: backing file of clone \
                     'c1' is gone: golden 'g' was deleted (No such file or directory (os error \
                     2))\n"
                ),
                "{l}"
            );
            let list = front.ls_json();
            assert_eq!(list.len(), 1);
            assert_eq!(
                (&list[0]["name"], &list[0]["state"]),
                (&"c1".into(), &"running".into())
            );
            // A stopped broken clone cannot start again.
            front.ok(&["machine", "stop", "--name", "c1"]);
            let o = front.run(&["machine", "start", "--name", "c1"]);
            assert_eq!(o.code, 1);
            assert!(
                o.stderr.contains("start machine: clone disk: backing file"),
                "{o:?}"
            );
            assert_eq!(front.delete("c1").code, 0);
        }
    }
}

#[test]
fn delete_cascade_removes_the_clones_then_the_golden() {
    for v in [V175, V176, NEW] {
        for front in Front::both(v) {
            let l = front.label();
            front.golden("g", &[]);
            front.fork_ok("g", "c1");
            if v != V175 {
                front.fork_ok("g", "c2");
            }
            front.create("other", &[]);
            let o = front.run(&["machine", "delete", "--cascade", "--name", "g"]);
            assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{l}: {o:?}");
            let at = |s: &str| {
                o.stdout
                    .find(s)
                    .unwrap_or_else(|| panic!("{l}: {s}: {o:?}"))
            };
            assert!(at("Deleted machine: c1\n") < at("Deleted machine: g\n"));
            if v != V175 {
                assert!(at("Deleted machine: c2\n") < at("Deleted machine: g\n"));
            }
            let names: Vec<String> = front
                .ls_json()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(names, ["other"], "{l}");
            // On a machine without clones it deletes it alone, without a prompt.
            let o = front.run(&["machine", "delete", "--cascade", "--name", "other"]);
            assert_eq!((o.code, o.stderr.as_str()), (0, ""));
            assert!(front.ls_json().is_empty());
        }
    }
}

#[test]
fn clone_ports_are_remapped_and_reach_the_inherited_server() {
    for v in [V101, V176, NEW] {
        for front in Front::both(v) {
            let l = front.label();
            let gport = free_port();
            let map = format!("{gport}:8080");
            front.golden("g", &["-p", &map]);
            assert_eq!(
                front
                    .sh(
                        "g",
                        "mkdir -p /www && echo golden > /www/index.html && httpd -p 8080 -h /www"
                    )
                    .code,
                0
            );
            let o = front.fork_ok("g", "c1");
            let r = remaps(&o.stderr);
            assert_eq!(r.len(), 1, "{l}: {o:?}");
            let (gh, ch, guest) = r[0];
            assert_eq!((gh, guest), (gport, 8080));
            assert_ne!(ch, gport);
            assert_eq!(
                o.stderr,
                fork_success_stderr(
                    "g",
                    "c1",
                    &format!("  port {gport}->8080 (golden) remapped to {ch}->8080 (clone)\n")
                )
            );
            assert_eq!(front.machine("c1").unwrap().ports, vec![(ch, 8080)]);
            assert!(front
                .ok(&["machine", "ls", "-v"])
                .contains(&format!("  Port: {ch} -> 8080\n")));
            // The golden's httpd resumed in the clone, on the clone's files.
            let answer = exchange(ch, b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            assert!(answer.ends_with(b"\r\n\r\ngolden\n"), "{l}: {answer:?}");
            front.sh("c1", "echo clone > /www/index.html");
            let answer = exchange(ch, b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            assert!(answer.ends_with(b"\r\n\r\nclone\n"), "{l}: {answer:?}");
            // The frozen golden's forward stays bound by its paused VMM, but nothing answers.
            assert_eq!(
                exchange(gport, b"GET / HTTP/1.0\r\n\r\n").unwrap(),
                b"",
                "{l}"
            );
            // A pinned clone port.
            let pin = free_port();
            let pinned = format!("{pin}:8080");
            let o = front.fork("g", "c2", &["-p", &pinned]);
            assert_eq!(o.code, 0, "{l}: {o:?}");
            assert_eq!(remaps(&o.stderr), vec![(gport, pin, 8080)]);
            let answer = exchange(pin, b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            assert!(answer.ends_with(b"\r\n\r\ngolden\n"), "{l}: {answer:?}");
            front.delete("c1");
            front.delete("c2");
            assert!(refused(ch) && refused(pin), "{l}");
            front.delete("g");
            assert!(refused(gport), "{l}");
            if let Some(state) = front.state_dir() {
                assert!(helpers_gone_within(&state, Duration::from_secs(5)));
            }
        }
    }
}

#[test]
fn fork_env_and_secret_refs_reach_the_clone() {
    const GOLDEN_SECRET: &str = "g-s3cr3t-77";
    const CLONE_SECRET: &str = "c-s3cr3t-88";
    for v in [V176, NEW] {
        for front in Front::both(v) {
            let l = front.label();
            let genv = [("SIM_G_TOK", GOLDEN_SECRET)];
            assert_eq!(
                front
                    .create(
                        "g",
                        &[
                            "-e",
                            "A=golden",
                            "-e",
                            "B=keep",
                            "--secret-env",
                            "TOK=SIM_G_TOK"
                        ]
                    )
                    .code,
                0
            );
            let o = front.run_env(&["machine", "start", "--name", "g", "--forkable"], &genv);
            assert_eq!(o.code, 0, "{l}: {o:?}");
            let extra = ["-e", "A=clone-{name}", "--secret-env", "CS=SIM_C_VAR"];
            // The clone boots with the golden's refs and its own: each must resolve.
            let o = front.fork_env("g", "c1", &extra, &genv);
            assert_eq!(
                (o.code, o.stderr),
                (
                    1,
                    freezing_then(
                        "g",
                        "config operation failed: resolve secret 'CS': env_unset"
                    )
                ),
                "{l}"
            );
            assert_eq!(front.machine("g").unwrap().state, SimState::Running);
            let both = [("SIM_G_TOK", GOLDEN_SECRET), ("SIM_C_VAR", CLONE_SECRET)];
            let o = front.fork_env("g", "c1", &extra, &both);
            assert_eq!(o.code, 0, "{l}: {o:?}");
            let c1 = front.machine("c1").unwrap();
            assert_eq!(
                c1.env,
                vec![
                    ("B".to_string(), "keep".to_string()),
                    ("A".to_string(), "clone-c1".to_string())
                ]
            );
            assert_eq!(
                c1.secret_refs.get("TOK"),
                Some(&SimSecretRef::Env("SIM_G_TOK".into()))
            );
            assert_eq!(
                c1.secret_refs.get("CS"),
                Some(&SimSecretRef::Env("SIM_C_VAR".into()))
            );
            assert_eq!(
                c1.files.get("/etc/smolvm/fork-env").unwrap(),
                b"A=clone-c1\n"
            );
            let g = front.machine("g").unwrap();
            assert_eq!(g.env.len(), 2);
            assert!(!g.secret_refs.contains_key("CS"));
            let o = front.run_env(&["machine", "exec", "--name", "c1", "--", "env"], &both);
            assert_eq!(
                o.stdout,
                format!("B=keep\nA=clone-c1\nCS={CLONE_SECRET}\nTOK={GOLDEN_SECRET}\n"),
                "{l}"
            );
            // Resolved at every exec, from smolvm's own environment.
            let o = front.run_env(&["machine", "exec", "--name", "c1", "--", "env"], &genv);
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (
                    1,
                    "Error: config operation failed: resolve secret 'CS': env_unset\n"
                )
            );
            // Nothing secret in the fake's log: -e values are redacted, refs are names.
            if let Some(log) = front.log() {
                let text = std::fs::read_to_string(log).unwrap();
                assert!(text.contains("\"A=<redacted>\""), "{text}");
                assert!(text.contains("CS=SIM_C_VAR"));
                for secret in [GOLDEN_SECRET, CLONE_SECRET, "clone-"] {
                    assert!(!text.contains(secret), "{secret}");
                }
            }
        }
    }
}

#[test]
fn the_fork_knob_fails_delays_and_hangs_fork() {
    // In process.
    let runner = SimulatedRunner::newest();
    let front = Front::Mem(runner.clone());
    front.golden("g", &[]);
    runner.fail("fork");
    let o = front.fork("g", "c1", &[]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "Error: agent operation failed: fork: injected failure\n")
    );
    assert_eq!(front.machine("g").unwrap().state, SimState::Running);
    runner
        .clear_knobs()
        .latency("fork", Duration::from_millis(200));
    let start = Instant::now();
    front.fork_ok("g", "c1");
    assert!(start.elapsed() >= Duration::from_millis(200));
    runner.clear_knobs().hang("fork");
    let err = runner
        .run(&Invocation {
            program: "smolvm".into(),
            args: ["machine", "fork", "--golden", "g", "--name", "c2"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            env: Vec::new(),
            timeout: Some(Duration::from_millis(100)),
        })
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(runner.machine("c2").is_none());
    // The fake.
    let fake = Front::fake(NEW);
    fake.golden("g", &[]);
    let o = fake.fork_env("g", "c1", &[], &[(FAIL_ENV, "fork")]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (1, "Error: agent operation failed: fork: injected failure\n")
    );
    let start = Instant::now();
    let o = fake.fork_env("g", "c1", &[], &[(LATENCY_ENV, "fork=200ms")]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(start.elapsed() >= Duration::from_millis(200));
    let o = fake.fork_env("g", "c2", &[], &[(HANG_ENV, "forks")]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("unknown subcommand key \"forks\""),
        "{o:?}"
    );
}

#[test]
fn clones_share_the_goldens_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("seed"), b"seed\n").unwrap();
    let spec = format!("{}:/data", vol.display());
    for front in Front::both(NEW) {
        front.golden("g", &["-v", &spec]);
        front.fork_ok("g", "c1");
        front.fork_ok("g", "c2");
        assert_eq!(front.sh("c1", "cat /data/seed").stdout, "seed\n");
        assert_eq!(front.sh("c1", "echo from-c1 > /data/shared").code, 0);
        assert_eq!(front.sh("c2", "cat /data/shared").stdout, "from-c1\n");
        assert_eq!(std::fs::read(vol.join("shared")).unwrap(), b"from-c1\n");
        std::fs::remove_file(vol.join("shared")).unwrap();
        front.run(&["machine", "delete", "--cascade", "--name", "g"]);
    }
}
