//! The workload flags of issue 11 in the simulation, through both front ends (the in-process
//! `SimulatedRunner` and the `smolvm-fake` process): sizing, ports, volumes, `--allow-host`,
//! secrets, `--dns`, `ls -v`, `data-dir`, the console log, the guest shell additions, and
//! published ports reachable from the host.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use smolvm_harness::sim::{SimSecretRef, SimState, SimulatedRunner};
use smolvm_harness::Version;

#[path = "common/sim_fronts.rs"]
mod sim_fronts;
use sim_fronts::*;

const V080: Version = Version::new(0, 8, 0);
const V082: Version = Version::new(0, 8, 2);
const NEW: Version = Version::new(1, 9, 2);

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[test]
fn create_value_errors_are_clap_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--cpus", "256"], "error: invalid value '256' for '--cpus <N>': 256 is not in 0..=255"),
        (&["--cpus=-1"], "error: invalid value '-1' for '--cpus <N>': -1 is not in 0..=255"),
        (&["--mem", "512M"], "error: invalid value '512M' for '--mem <MiB>': invalid digit found in string"),
        (&["--storage", "1.5"], "error: invalid value '1.5' for '--storage <GiB>': invalid digit found in string"),
        (&["-p", "0:80"], "error: invalid value '0:80' for '--port <HOST:GUEST>': host port 0 is not valid for VM port forwarding"),
        (&["-p", "80:0"], "error: invalid value '80:0' for '--port <HOST:GUEST>': guest port 0 is not valid for VM port forwarding"),
        (&["-p", "0"], "error: invalid value '0' for '--port <HOST:GUEST>': port 0 is not valid for VM port forwarding"),
        (&["--port", "127.0.0.1:8080:80"], "error: invalid value '127.0.0.1:8080:80' for '--port <HOST:GUEST>': invalid host port: 127.0.0.1"),
        (&["-p", "[::1]:8080:80"], "error: invalid value '[::1]:8080:80' for '--port <HOST:GUEST>': invalid host port: ["),
        (&["-p", "8080/udp"], "error: invalid value '8080/udp' for '--port <HOST:GUEST>': invalid port: 8080/udp"),
        (&["-p", "8080:80/tcp"], "error: invalid value '8080:80/tcp' for '--port <HOST:GUEST>': invalid guest port: 80/tcp"),
        (&["-p", "70000:80"], "error: invalid value '70000:80' for '--port <HOST:GUEST>': invalid host port: 70000"),
        (&["-p", "3000-3009:3000-3009"], "error: invalid value '3000-3009:3000-3009' for '--port <HOST:GUEST>': invalid host port: 3000-3009"),
    ];
    for v in [V082, NEW] {
        for front in Front::both(v) {
            for (extra, want) in cases {
                let o = front.create("m", extra);
                assert_eq!(
                    (o.code, first_line(&o.stderr)),
                    (2, *want),
                    "{} {extra:?}",
                    front.label()
                );
                assert!(o.stdout.is_empty());
            }
            // `--cpus -1` as two words is clap's missing value: still exit 2.
            assert_eq!(front.create("m", &["--cpus", "-1"]).code, 2);
            assert!(front.machine("m").is_none());
        }
    }
}

#[test]
fn create_runtime_errors_are_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let file = tmp.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let vol = vol.canonicalize().unwrap().display().to_string();
    let file = file.canonicalize().unwrap().display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (vec!["--cpus".into(), "0".into()], "config operation failed: validate resources: CPU count must be at least 1".into()),
        (vec!["--mem".into(), "32".into()], "config operation failed: validate resources: memory must be at least 64 MiB (got 32 MiB)".into()),
        (vec!["--storage".into(), "0".into()], "config operation failed: validate resources: storage disk size must be greater than 0 GiB".into()),
        (vec!["--overlay".into(), "0".into()], "config operation failed: validate resources: overlay disk size must be greater than 0 GiB".into()),
        (vec!["-p".into(), "18080:80".into(), "-p".into(), "18080:81".into()], "config operation failed: validate ports: duplicate host port 18080: each host port can only be mapped once".into()),
        (vec!["-v".into(), "/nonexistent-sim-dir:/data".into()], "mount source not found: /nonexistent-sim-dir".into()),
        (vec!["-v".into(), format!("{file}:/data")], format!("mount operation failed: validate host path: source path on host must be a directory (virtiofs limitation): {file}")),
        (vec!["-v".into(), format!("{vol}:data")], "mount operation failed: validate guest path: target path on guest should be an absolute directory: data".into()),
        (vec!["-v".into(), vol.clone()], format!("invalid mount path: invalid format '{vol}' (expected host:guest[:ro|:rw])")),
        (vec!["-v".into(), "/etc:/data".into()], "mount operation failed: validate host path: source path on host is a protected system path and cannot be mounted: /etc".into()),
        (vec!["-v".into(), "/:/a".into()], "mount operation failed: validate host path: source path on host is a protected system path and cannot be mounted: /".into()),
        (vec!["-v".into(), format!("{vol}:/a"), "-v".into(), format!("{vol}:/a:ro")], "mount operation failed: validate mounts: duplicate mount target: /a is specified more than once".into()),
        (vec!["--allow-host".into(), "x.invalid".into()], "config operation failed: --allow-host: failed to resolve 'x.invalid': failed to lookup address information: Name or service not known".into()),
        (vec!["--allow-host".into(), "example.com:443".into()], "config operation failed: --allow-host: invalid hostname 'example.com:443': port suffixes are not supported. Use the hostname only (all ports are allowed to resolved IPs).".into()),
    ];
    for v in [V082, NEW] {
        for front in Front::both(v) {
            for (extra, msg) in &cases {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let o = front.create("m", &extra);
                assert_eq!(o.code, 1, "{} {extra:?}: {o:?}", front.label());
                assert_eq!(
                    o.stderr,
                    format!("Error: {msg}\n"),
                    "{} {extra:?}",
                    front.label()
                );
                assert!(front.machine("m").is_none());
            }
            // More than 16 vCPUs is only a warning.
            let o = front.create("big", &["--cpus", "17"]);
            assert_eq!(o.code, 0);
            assert_eq!(o.stderr, "warning: requested 17 vCPUs but the hypervisor supports at most 16; the VM will run with 16 vCPUs\n");
            assert_eq!(front.machine("big").unwrap().cpus, 17);
        }
    }
    // A bad mode: v0.8.x splits on every `:`, 1.4.0+ from the right (the mode becomes path).
    let spec = format!("{vol}:/a:rx");
    for (v, want) in [
        (V082, format!("Error: invalid mount path: invalid format '{spec}' (expected host:guest[:ro|:rw])\n")),
        (Version::new(1, 3, 9), format!("Error: invalid mount path: invalid format '{spec}' (expected host:guest[:ro|:rw])\n")),
        (Version::new(1, 4, 0), format!("Error: mount source not found: {vol}:/a\n")),
        (NEW, format!("Error: mount source not found: {vol}:/a\n")),
    ] {
        for front in Front::both(v) {
            assert_eq!(front.create("m", &["-v", &spec]).stderr, want, "{}", front.label());
        }
    }
}

#[test]
fn secret_and_dns_flags_exist_from_their_versions() {
    for front in Front::both(V082) {
        for flag in ["--secret-env", "--secret-file", "--dns"] {
            let o = front.create("m", &[flag, "A=B"]);
            assert_eq!(
                (o.code, first_line(&o.stderr)),
                (2, &*format!("error: unexpected argument '{flag}' found")),
                "{}",
                front.label()
            );
        }
        let o = front.run(&[
            "machine",
            "exec",
            "--name",
            "m",
            "--secret-env",
            "A=B",
            "--",
            "env",
        ]);
        assert_eq!(
            first_line(&o.stderr),
            "error: unexpected argument '--secret-env' found"
        );
    }
    assert_eq!(
        Front::Mem(SimulatedRunner::new(Version::new(1, 2, 9)))
            .create("m", &["--dns", "9.9.9.9"])
            .code,
        2
    );
    for front in Front::both(Version::new(1, 3, 0)) {
        assert_eq!(front.create("d", &["--dns", "9.9.9.9"]).code, 0);
        let m = front.machine("d").unwrap();
        assert_eq!((m.dns.as_deref(), m.network), (Some("9.9.9.9"), true));
        let o = front.create("e", &["--dns", "::1"]);
        assert_eq!(
            (o.code, first_line(&o.stderr)),
            (
                2,
                "error: invalid value '::1' for '--dns <IP>': invalid IPv4 address syntax"
            )
        );
    }
    let rows: &[(&[&str], &str)] = &[
        (&["--secret-env", "NOEQ"], "--secret-env: expected KEY=VALUE, got 'NOEQ'"),
        (&["--secret-env", "=HOST"], "--secret-env: empty secret name in '=HOST'"),
        (&["--secret-file", "K=rel/path"], "--secret-file: secret 'K': from_file path 'rel/path' is relative; absolute paths are required"),
        (&["--secret-env", "DUP=A", "--secret-file", "DUP=/x"], "--secret-file: secret 'DUP' specified more than once"),
    ];
    for v in [Version::new(1, 0, 0), NEW] {
        for front in Front::both(v) {
            for (extra, msg) in rows {
                let o = front.create("m", extra);
                assert_eq!(
                    o.stderr,
                    format!("Error: config operation failed: {msg}\n"),
                    "{} {extra:?}",
                    front.label()
                );
                assert_eq!(o.code, 1);
            }
            // An empty host variable name is accepted at create (it fails when resolved).
            assert_eq!(front.create("ok", &["--secret-env", "K="]).code, 0);
        }
    }
}

#[test]
fn create_stores_what_smolvm_stores_and_ls_v_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("rel")).unwrap();
    let vol = tmp.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let rel_canon = work
        .join("rel")
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    let vol_canon = vol.canonicalize().unwrap().display().to_string();
    let vol_arg = format!("{}:/w:rw", vol.display());
    for v in [V082, NEW] {
        // The fake resolves a relative `-v` against its own working directory.
        let front = Front::Fake {
            dir: tempfile::tempdir().unwrap(),
            version: v,
            cwd: Some(work.clone()),
        };
        let mut extra = vec![
            "--cpus",
            "2",
            "--mem",
            "1024",
            "--storage",
            "5",
            "--overlay",
            "3",
            "-p",
            "18080:80",
            "-p",
            "9090",
            "-v",
            "rel:/data:ro",
            "-v",
            &vol_arg,
            "--allow-host",
            "example.com",
            "--allow-host",
            "localhost",
            "--allow-host",
            "1.2.3.4",
            "-e",
            "A=1",
            "-w",
            "/srv",
        ];
        if v >= Version::new(1, 0, 0) {
            extra.extend([
                "--secret-env",
                "TOKEN=SIM_TOKEN_VAR",
                "--secret-file",
                "KEYF=/run/k",
            ]);
        }
        assert_eq!(front.create("web", &extra).code, 0, "{v}");
        let m = front.machine("web").unwrap();
        assert_eq!(
            (m.cpus, m.memory_mib, m.storage_gb, m.overlay_gb),
            (2, 1024, Some(5), Some(3))
        );
        assert_eq!(m.ports, vec![(18080, 80), (9090, 9090)]);
        let mounts: Vec<(String, String, bool)> = m
            .mounts
            .iter()
            .map(|x| (x.source.clone(), x.target.clone(), x.read_only))
            .collect();
        assert_eq!(
            mounts,
            vec![
                (rel_canon.clone(), "/data".into(), true),
                (vol_canon.clone(), "/w".into(), false)
            ]
        );
        assert_eq!(m.allowed_hosts, vec!["example.com", "localhost", "1.2.3.4"]);
        let cidrs = m.allowed_cidrs.clone().unwrap();
        assert_eq!(cidrs.len(), 4);
        assert!(
            cidrs[0].starts_with("198.1") && cidrs[0].ends_with("/32"),
            "{cidrs:?}"
        );
        assert_eq!(&cidrs[1..], ["127.0.0.1/32", "::1/128", "1.2.3.4/32"]);
        assert!(m.network);
        if v >= Version::new(1, 0, 0) {
            assert_eq!(m.secret_ref_names(), vec!["KEYF", "TOKEN"]);
            assert_eq!(
                m.secret_refs.get("TOKEN"),
                Some(&SimSecretRef::Env("SIM_TOKEN_VAR".into()))
            );
        } else {
            assert!(m.secret_refs.is_empty());
        }
        let json: serde_json::Value =
            serde_json::from_str(&front.ok(&["machine", "ls", "--json"])).unwrap();
        let o = &json[0];
        assert_eq!(
            (
                o["cpus"].as_u64(),
                o["memory_mib"].as_u64(),
                o["storage_gb"].as_u64(),
                o["overlay_gb"].as_u64()
            ),
            (Some(2), Some(1024), Some(5), Some(3))
        );
        assert_eq!(
            (o["ports"].as_u64(), o["mounts"].as_u64()),
            (Some(2), Some(2))
        );
        let status: serde_json::Value =
            serde_json::from_str(&front.ok(&["machine", "status", "--name", "web", "--json"]))
                .unwrap();
        assert_eq!(&status, o);
        let created = m.created_at;
        assert_eq!(
            front.ok(&["machine", "ls", "-v"]),
            format!(
                "NAME                 STATE         CPUS     MEMORY  MOUNTS   PORTS  STORAGE  OVERLAY\n{}\n\
                 web                  created          2   1024 MiB       2       2    5 GiB    3 GiB\n\
                 \x20 Mount: {rel_canon} -> /data (ro)\n\
                 \x20 Mount: {vol_canon} -> /w\n\
                 \x20 Port: 18080 -> 80\n\
                 \x20 Port: 9090 -> 9090\n\
                 \x20 Network: enabled\n\
                 \x20 Env: A=1\n\
                 \x20 Workdir: /srv\n\
                 \x20 Created: {created}\n\n",
                "-".repeat(88)
            ),
            "{v}"
        );
    }
    // The in-process runner resolves against the test process's own directory.
    let front = Front::Mem(SimulatedRunner::newest());
    assert_eq!(front.create("m", &["-v", ".:/src"]).code, 0);
    let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
    assert_eq!(
        front.machine("m").unwrap().mounts[0].source,
        cwd.display().to_string()
    );
}

#[test]
fn allow_host_is_hermetic_and_dropped_with_from_before_1_8_0() {
    let front = Front::Mem(SimulatedRunner::newest());
    front
        .create("a", &["--allow-host", "Example.COM"])
        .code
        .eq(&0)
        .then_some(())
        .unwrap();
    front
        .create("b", &["--allow-host", "example.com"])
        .code
        .eq(&0)
        .then_some(())
        .unwrap();
    let (a, b) = (front.machine("a").unwrap(), front.machine("b").unwrap());
    // The same name always gets the same address, in 198.18.0.0/15.
    assert_eq!(a.allowed_cidrs, b.allowed_cidrs);
    let addr: std::net::Ipv4Addr = a.allowed_cidrs.unwrap()[0]
        .trim_end_matches("/32")
        .parse()
        .unwrap();
    assert_eq!(addr.octets()[0..2], [198, 18 | (addr.octets()[1] & 1)]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("app").display().to_string();
    let pack = format!("{out}.smolmachine");
    for (v, stored) in [
        (Version::new(1, 7, 9), false),
        (Version::new(1, 8, 0), true),
    ] {
        for front in Front::both(v) {
            front.ok(&["pack", "create", "--image", "alpine", "-o", &out]);
            let o = front.create(
                "f",
                &[
                    "--from",
                    &pack,
                    "--allow-host",
                    "example.com",
                    "--secret-env",
                    "T=V",
                ],
            );
            assert_eq!(o.code, 0, "{o:?}");
            let m = front.machine("f").unwrap();
            assert_eq!(!m.allowed_hosts.is_empty(), stored, "{}", front.label());
            assert_eq!(m.allowed_cidrs.is_some(), stored);
            // Secret refs are ignored with --from in every version.
            assert!(m.secret_refs.is_empty());
            // Dropped unread before 1.8.0: even an unresolvable name passes.
            let o = front.create("g", &["--from", &pack, "--allow-host", "x.invalid"]);
            assert_eq!(o.code, if stored { 1 } else { 0 }, "{}", front.label());
        }
    }
}

#[test]
fn secret_refs_resolve_from_smolvms_own_env_at_start_and_exec() {
    const VALUE: &str = "s3cr3t-value-91";
    for front in Front::both(NEW) {
        front.create("s", &["--secret-env", "TOKEN=SIM_TOKEN_VAR"]);
        let missing = "Error: config operation failed: resolve secret 'TOKEN': env_unset\n";
        let o = front.run(&["machine", "start", "--name", "s"]);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, missing),
            "{}",
            front.label()
        );
        assert_eq!(front.machine("s").unwrap().state, SimState::Created);
        let env = [("SIM_TOKEN_VAR", VALUE)];
        assert_eq!(
            front
                .run_env(&["machine", "start", "--name", "s"], &env)
                .code,
            0
        );
        let o = front.run(&["machine", "exec", "--name", "s", "--", "env"]);
        assert_eq!((o.code, o.stderr.as_str()), (1, missing));
        let o = front.run_env(&["machine", "exec", "--name", "s", "--", "env"], &env);
        assert_eq!(o.stdout, format!("TOKEN={VALUE}\n"));
        // The exec's own refs come on top; each is checked.
        let o = front.run_env(
            &[
                "machine",
                "exec",
                "--name",
                "s",
                "--secret-env",
                "MORE=SIM_OTHER",
                "--",
                "env",
            ],
            &env,
        );
        assert_eq!(
            o.stderr,
            "Error: config operation failed: resolve secret 'MORE': env_unset\n"
        );
        let o = front.run_env(
            &[
                "machine",
                "exec",
                "--name",
                "s",
                "--secret-env",
                "MORE=SIM_OTHER",
                "-e",
                "K",
                "--",
                "env",
            ],
            &[("SIM_TOKEN_VAR", VALUE), ("SIM_OTHER", "o"), ("K", "k")],
        );
        // Secrets come after `-e`, in guest-name order.
        assert_eq!(o.stdout, format!("K=k\nMORE=o\nTOKEN={VALUE}\n"));
        // The value is in no record and no log.
        if let (Some(state), Some(log)) = (front.state_dir(), front.log()) {
            let state = std::fs::read_to_string(state.join("state.json")).unwrap();
            assert!(state.contains("SIM_TOKEN_VAR") && !state.contains(VALUE));
            let log = std::fs::read_to_string(log).unwrap();
            assert!(
                log.contains("MORE=SIM_OTHER") && !log.contains(VALUE),
                "{log}"
            );
        }
        assert!(!format!("{:?}", front.machine("s").unwrap()).contains(VALUE));
        front.delete("s");
    }
    // v0.8.x: `-e KEY` without a value is still the argv-free path.
    for front in Front::both(V082) {
        front.create("m", &[]);
        front.ok(&["machine", "start", "--name", "m"]);
        let o = front.run_env(
            &["machine", "exec", "--name", "m", "-e", "K", "--", "env"],
            &[("K", VALUE)],
        );
        assert_eq!(o.stdout, format!("K={VALUE}\n"));
        front.delete("m");
    }
}

#[test]
fn data_dir_is_real_and_holds_the_console_log() {
    for (v, appends) in [
        (V080, true),
        (Version::new(1, 6, 9), true),
        (Version::new(1, 7, 0), false),
        (NEW, false),
    ] {
        for front in Front::both(v) {
            front.create("web", &[]);
            let dir = front.data_dir("web");
            assert_eq!(dir.code, 0, "{dir:?}");
            let path = PathBuf::from(dir.stdout.trim_end());
            assert!(path.is_dir(), "{} {path:?}", front.label());
            assert_eq!(path.file_name().unwrap().len(), 16);
            if let Some(state) = front.state_dir() {
                assert!(path.starts_with(state.join("vms")));
            }
            let log = path.join("agent-console.log");
            front.ok(&["machine", "start", "--name", "web"]);
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(text.contains("smolvm-agent: ready\n"), "{text}");
            assert_eq!(front.sh("web", "echo server up > /dev/console").code, 0);
            assert!(std::fs::read_to_string(&log)
                .unwrap()
                .ends_with("server up\n"));
            front.ok(&["machine", "stop", "--name", "web"]);
            front.ok(&["machine", "start", "--name", "web"]);
            let text = std::fs::read_to_string(&log).unwrap();
            assert_eq!(
                text.matches("smolvm-agent: ready").count(),
                if appends { 2 } else { 1 },
                "{}",
                front.label()
            );
            assert_eq!(text.contains("server up"), appends);
            assert_eq!(front.delete("web").code, 0);
            assert!(!path.exists(), "{}", front.label());
        }
    }
    // Unknown names: a path anyway on 0.8.0, `vm not found` from 0.8.1.
    assert_eq!(
        Front::Mem(SimulatedRunner::new(V080))
            .data_dir("ghost")
            .code,
        0
    );
    for v in [Version::new(0, 8, 1), NEW] {
        for front in Front::both(v) {
            let o = front.data_dir("ghost");
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (1, "Error: vm not found: ghost\n")
            );
        }
    }
    // The grammar moved to --name in 1.0.2.
    let o = Front::Mem(SimulatedRunner::new(Version::new(1, 0, 1)))
        .run(&["machine", "data-dir", "--name", "x"]);
    assert_eq!(o.code, 2);
    let o =
        Front::Mem(SimulatedRunner::new(Version::new(1, 0, 2))).run(&["machine", "data-dir", "x"]);
    assert_eq!(o.code, 2);
    // The in-process runner's data dirs go with its last clone.
    let runner = SimulatedRunner::newest();
    let front = Front::Mem(runner.clone());
    front.create("m", &[]);
    let path = PathBuf::from(front.data_dir("m").stdout.trim_end());
    assert!(path.is_dir());
    drop(front);
    assert!(path.is_dir());
    drop(runner);
    assert!(!path.exists());
    // data-dir has its own knob key.
    let r = SimulatedRunner::newest().fail("data-dir");
    let o = Front::Mem(r).data_dir("m");
    assert_eq!(
        o.stderr,
        "Error: agent operation failed: data-dir: injected failure\n"
    );
}

#[test]
fn guest_shell_writes_files_tests_greps_and_pipes() {
    for front in Front::both(NEW) {
        front.create("g", &[]);
        front.ok(&["machine", "start", "--name", "g"]);
        let sh = |s: &str| {
            let o = front.sh("g", s);
            (o.code, o.stdout, o.stderr)
        };
        assert_eq!(
            sh("mkdir -p /www/a/b && echo one > /www/a/f && echo two >> /www/a/f && cat /www/a/f")
                .1,
            "one\ntwo\n"
        );
        // Writes persist across execs.
        assert_eq!(sh("cat /www/a/f").1, "one\ntwo\n");
        assert_eq!(
            sh("test -f /www/a/f && [ -d /www/a/b ] && test -e /www/a && echo yes").1,
            "yes\n"
        );
        assert_eq!(sh("test -f /www/a || echo notfile").1, "notfile\n");
        assert_eq!(
            sh("[ ! -e /nope ] && [ abc = abc ] && [ 3 -lt 4 ] && echo ok").1,
            "ok\n"
        );
        assert_eq!(sh("[ -f /x").0, 2);
        assert_eq!(sh("grep two /www/a/f"), (0, "two\n".into(), "".into()));
        assert_eq!(sh("grep -q three /www/a/f").0, 1);
        assert_eq!(sh("grep -q 't.o$' /www/a/f").0, 0);
        assert_eq!(sh("grep -F 't.o' /www/a/f").0, 1);
        assert_eq!(
            sh("grep x /nope"),
            (
                2,
                "".into(),
                "grep: /nope: No such file or directory\n".into()
            )
        );
        assert_eq!(sh("cat /www/a/f | grep -v one").1, "two\n");
        assert_eq!(sh("echo a; echo b >&2").1, "a\n");
        assert_eq!(
            sh("cat /nope > /tmp/out 2>&1; cat /tmp/out").1,
            "cat: /nope: No such file or directory\n"
        );
        assert_eq!(
            sh("echo x > /no/such/dir/f").2,
            "sh: can't create /no/such/dir/f: nonexistent directory\n"
        );
        assert_eq!(
            sh("rm /www/a/f && rm -f /www/a/f && test -f /www/a/f || echo gone").1,
            "gone\n"
        );
        assert_eq!(
            sh("rm /www/a/f").2,
            "rm: can't remove '/www/a/f': No such file or directory\n"
        );
        assert_eq!(sh("mkdir /x/y").0, 1);
        assert_eq!(
            sh("mkdir /www").2,
            "mkdir: can't create directory '/www': File exists\n"
        );
        assert_eq!(sh("cat /proc/net/tcp6 | grep -c x").0, 127);
        // Listening sockets in Linux's format.
        assert_eq!(sh("httpd -p 8080 -h /www").0, 0);
        let tcp6 = sh("cat /proc/net/tcp6").1;
        assert!(
            tcp6.lines()
                .nth(1)
                .unwrap()
                .contains(":1F90 00000000000000000000000000000000:0000 0A "),
            "{tcp6}"
        );
        assert_eq!(sh("cat /proc/net/tcp").1.lines().count(), 1);
        assert_eq!(
            sh("grep -q ':1F90 ' /proc/net/tcp6 && echo listening").1,
            "listening\n"
        );
        assert_eq!(
            sh("httpd -p 8080 -h /www"),
            (1, "".into(), "httpd: bind: Address in use\n".into())
        );
        // Unknown commands still exit 127.
        assert_eq!(sh("uname -a").0, 127);
        // A stop ends the guest's servers; files stay.
        front.ok(&["machine", "stop", "--name", "g"]);
        front.ok(&["machine", "start", "--name", "g"]);
        assert_eq!(sh("cat /proc/net/tcp6").1.lines().count(), 1);
        assert!(front
            .machine("g")
            .unwrap()
            .guest_listening_ports()
            .is_empty());
        assert_eq!(sh("test -d /www/a/b && echo kept").1, "kept\n");
        front.delete("g");
    }
}

#[test]
fn published_port_reaches_the_guest_httpd_from_1_1_0() {
    for front in Front::both(NEW) {
        let port = free_port();
        let map = format!("{port}:8080");
        assert_eq!(front.create("web", &["-p", &map]).code, 0);
        assert!(refused(port), "created only: nothing bound");
        front.start("web");
        // Forward up, guest not listening: accepted, then EOF before any byte.
        assert_eq!(exchange(port, b"GET / HTTP/1.0\r\n\r\n").unwrap(), b"");
        assert_eq!(
            front
                .sh(
                    "web",
                    "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www"
                )
                .code,
            0
        );
        let answer =
            String::from_utf8(exchange(port, b"GET /index.html HTTP/1.0\r\n\r\n").unwrap())
                .unwrap();
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello\n"), "{answer}");
        let missing =
            String::from_utf8(exchange(port, b"GET /nope HTTP/1.0\r\n\r\n").unwrap()).unwrap();
        assert!(missing.starts_with("HTTP/1.0 404 Not Found\r\n"));
        front.ok(&["machine", "stop", "--name", "web"]);
        assert!(refused(port), "{}: stopped", front.label());
        // A reboot brings the forward back but not the guest's server.
        front.start("web");
        assert_eq!(exchange(port, b"GET / HTTP/1.0\r\n\r\n").unwrap(), b"");
        assert_eq!(front.delete("web").code, 0);
        assert!(refused(port), "{}: deleted", front.label());
        if let Some(state) = front.state_dir() {
            assert!(helpers_of(&state).is_empty());
        }
    }
}

#[test]
fn before_1_1_0_the_host_port_opens_when_the_guest_listens() {
    for front in Front::both(V082) {
        let port = free_port();
        let map = format!("{port}:80");
        front.create("web", &["-p", &map]);
        front.start("web");
        assert!(
            refused(port),
            "{}: TSI binds nothing at start",
            front.label()
        );
        assert_eq!(
            front
                .sh("web", "echo hi > /index.html && httpd -p 80 -h /")
                .code,
            0
        );
        let answer = exchange(port, b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        assert!(answer.ends_with(b"\r\n\r\nhi\n"));
        front.ok(&["machine", "stop", "--name", "web"]);
        assert!(refused(port), "{}: stopped", front.label());
        // A foreign process on the host port: the guest's bind fails.
        let squatter = squat(port);
        front.start("web");
        let o = front.sh("web", "httpd -p 80 -h /");
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "httpd: bind: Address in use\n")
        );
        drop(squatter);
        front.delete("web");
        if let Some(state) = front.state_dir() {
            assert!(helpers_of(&state).is_empty());
        }
    }
}

#[test]
fn a_taken_host_port_fails_start() {
    for front in Front::both(NEW) {
        let port = free_port();
        let map = format!("{port}:80");
        front.create("a", &["-p", &map]);
        front.create("b", &["-p", &map]);
        // A foreign process holds it.
        let squatter = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let o = front.run(&["machine", "start", "--name", "a"]);
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "Error: config operation failed: start machine: failed to start virtio network runtime: Address already in use (os error 98)\n"),
            "{}",
            front.label()
        );
        assert_eq!(front.machine("a").unwrap().state, SimState::Created);
        drop(squatter);
        front.start("a");
        // Another running machine holds it.
        let o = front.run(&["machine", "start", "--name", "b"]);
        assert_eq!(
            o.stderr,
            format!("Error: config operation failed: start machine: host port {port} is already in use by running machine 'a'\n")
        );
        assert_eq!(front.machine("b").unwrap().state, SimState::Created);
        front.ok(&["machine", "stop", "--name", "a"]);
        front.start("b");
        front.delete("a");
        front.delete("b");
        assert!(refused(port));
    }
}

#[test]
fn no_fake_helper_outlives_its_machine() {
    let front = Front::fake(NEW);
    let state = front.state_dir().unwrap();
    let port = free_port();
    let map = format!("{port}:80");
    front.create("web", &["-p", &map]);
    for end in ["stop", "delete", "state dir removed"] {
        front.start("web");
        let pids = helpers_of(&state);
        assert_eq!(pids.len(), 1, "{end}");
        assert_eq!(front.machine("web").unwrap().state, SimState::Running);
        match end {
            "stop" => {
                front.ok(&["machine", "stop", "--name", "web"]);
                assert!(helpers_of(&state).is_empty(), "gone when stop returns");
            }
            "delete" => {
                assert_eq!(front.delete("web").code, 0);
                assert!(helpers_of(&state).is_empty(), "gone when delete returns");
                front.create("web", &["-p", &map]);
            }
            _ => {
                std::fs::remove_dir_all(&state).unwrap();
                assert!(helpers_gone_within(&state, Duration::from_secs(10)));
                assert!(
                    !state.exists(),
                    "the helper must not re-create the state dir"
                );
            }
        }
        assert!(refused(port), "{end}");
    }
}

#[test]
fn in_process_forwarders_end_with_the_runner() {
    let runner = SimulatedRunner::newest();
    let front = Front::Mem(runner.clone());
    let port = free_port();
    let map = format!("{port}:80");
    front.create("web", &["-p", &map]);
    front.start("web");
    assert_eq!(exchange(port, b"").unwrap(), b"");
    // No stop, no delete: dropping the last clone closes the port.
    drop(front);
    drop(runner);
    assert!(refused(port));
}

#[test]
fn the_guest_sees_volume_mounts_live_and_ro_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&www).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("keep"), b"keep\n").unwrap();
    let www_spec = format!("{}:/srv/www", www.display());
    let ro_spec = format!("{}:/ro:ro", ro.display());
    for v in [V082, NEW] {
        for front in Front::both(v) {
            let l = front.label();
            let port = free_port();
            let map = format!("{port}:8080");
            let args = ["-v", &www_spec, "-v", &ro_spec, "-p", &map];
            assert_eq!(front.create("m", &args).code, 0, "{l}");
            front.start("m");
            // Written on the host after start: the guest reads it, live.
            std::fs::write(www.join("index.html"), b"from host\n").unwrap();
            assert_eq!(
                front.sh("m", "cat /srv/www/index.html").stdout,
                "from host\n"
            );
            assert_eq!(
                front
                    .sh(
                        "m",
                        "test -f /srv/www/index.html && test -d /srv/www && test -d /srv && \
                         test -e /ro/keep && grep -q host /srv/www/index.html && echo yes"
                    )
                    .stdout,
                "yes\n",
                "{l}"
            );
            std::fs::write(www.join("index.html"), b"changed\n").unwrap();
            assert_eq!(front.sh("m", "cat /srv/www/index.html").stdout, "changed\n");
            // Guest writes land on the host.
            let o = front.sh(
                "m",
                "echo one > /srv/www/g.txt && echo two >> /srv/www/g.txt && mkdir -p \
                 /srv/www/sub/deep && echo x > /srv/www/sub/deep/f",
            );
            assert_eq!(o.code, 0, "{l}: {o:?}");
            assert_eq!(std::fs::read(www.join("g.txt")).unwrap(), b"one\ntwo\n");
            assert_eq!(std::fs::read(www.join("sub/deep/f")).unwrap(), b"x\n");
            assert!(front.machine("m").unwrap().files.is_empty(), "{l}");
            assert_eq!(
                front
                    .sh("m", "rm -r /srv/www/sub && rm /srv/www/g.txt")
                    .code,
                0
            );
            assert!(
                !www.join("sub").exists() && !www.join("g.txt").exists(),
                "{l}"
            );
            // `:ro` refuses writes as Linux does.
            let o = front.sh("m", "echo x > /ro/new");
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (1, "sh: can't create /ro/new: Read-only file system\n"),
                "{l}"
            );
            let o = front.run(&["machine", "exec", "--name", "m", "--", "mkdir", "/ro/d"]);
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (
                    1,
                    "mkdir: can't create directory '/ro/d': Read-only file system\n"
                )
            );
            let o = front.run(&["machine", "exec", "--name", "m", "--", "rm", "/ro/keep"]);
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (1, "rm: can't remove '/ro/keep': Read-only file system\n")
            );
            assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1, "{l}");
            assert_eq!(front.sh("m", "cat /ro/keep").stdout, "keep\n");
            // busybox httpd serves the host directory's files.
            assert_eq!(front.sh("m", "httpd -p 8080 -h /srv/www").code, 0);
            let answer = exchange(port, b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            assert!(answer.ends_with(b"\r\n\r\nchanged\n"), "{l}: {answer:?}");
            std::fs::write(www.join("late.txt"), b"late\n").unwrap();
            let answer = exchange(port, b"GET /late.txt HTTP/1.0\r\n\r\n").unwrap();
            assert!(answer.ends_with(b"\r\n\r\nlate\n"), "{l}: {answer:?}");
            // cp reads and writes through the mount too.
            let down = tmp.path().join("down");
            front.ok(&[
                "machine",
                "cp",
                "m:/srv/www/late.txt",
                &down.display().to_string(),
            ]);
            assert_eq!(std::fs::read(&down).unwrap(), b"late\n");
            front.delete("m");
            for f in ["index.html", "late.txt"] {
                std::fs::remove_file(www.join(f)).unwrap();
            }
        }
    }
}
