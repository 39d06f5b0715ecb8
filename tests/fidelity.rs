//! One list of scenarios, run against the in-process `SimulatedRunner` and against the
//! `smolvm-fake` binary (through the real `ProcessRunner`), for 0.8.0 and 1.9.2 where each
//! applies. Both front ends must agree byte for byte (after normalising the per-run temp dir
//! and `created_at`), and both must give the codes and texts of smolvm-cli.md §7.

use std::path::Path;
use std::time::Duration;

use smolvm_harness::runner::{Invocation, ProcessRunner, Runner};
use smolvm_harness::sim::{SimulatedRunner, STATE_ENV, VERSION_ENV};
use smolvm_harness::Version;

const OLD: Version = Version::new(0, 8, 0);
const NEW: Version = Version::new(1, 9, 2);
const BOTH: &[Version] = &[OLD, NEW];

/// How an argv is written: the create and delete name moved from a positional to `--name`
/// in 1.0.2, so those two are built per version.
#[derive(Clone, Copy)]
enum Args {
    Raw(&'static [&'static str]),
    Create(&'static str, &'static [&'static str]),
    /// `delete [-f] NAME` / `delete [-f] --name NAME`.
    Delete(&'static str, bool),
    /// Not a smolvm call: write a host file (path under `{dir}`, contents).
    WriteFile(&'static str, &'static str),
}

impl Args {
    fn argv(self, v: Version, dir: &str) -> Vec<String> {
        let name_flag = v >= Version::new(1, 0, 2);
        let words: Vec<&str> = match self {
            Args::Raw(w) => w.to_vec(),
            Args::Create(name, extra) => {
                let mut w = vec!["machine", "create"];
                if name_flag {
                    w.extend(["--name", name]);
                    w.extend(extra);
                } else {
                    w.extend(extra);
                    w.push(name);
                }
                w
            }
            Args::Delete(name, force) => {
                let mut w = vec!["machine", "delete"];
                if force {
                    w.push("-f");
                }
                if name_flag {
                    w.push("--name");
                }
                w.push(name);
                w
            }
            Args::WriteFile(..) => Vec::new(),
        };
        words.iter().map(|w| w.replace("{dir}", dir)).collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Text {
    Any,
    Exact(&'static str),
    Prefix(&'static str),
    Contains(&'static str),
}

impl Text {
    fn check(self, got: &str, what: &str, ctx: &str) {
        let ok = match self {
            Text::Any => true,
            Text::Exact(t) => got == t,
            Text::Prefix(t) => got.starts_with(t),
            Text::Contains(t) => got.contains(t),
        };
        assert!(ok, "{ctx}: {what} should match {self:?}, got {got:?}");
    }
}

#[derive(Clone, Copy)]
struct Step {
    args: Args,
    code: i32,
    stdout: Text,
    stderr: Text,
}

const fn step(args: Args, code: i32, stdout: Text, stderr: Text) -> Step {
    Step {
        args,
        code,
        stdout,
        stderr,
    }
}

/// A step expected to succeed, whatever it prints.
const fn ok(args: Args) -> Step {
    step(args, 0, Text::Any, Text::Any)
}

/// A runtime error: exit 1, nothing on stdout, exactly this on stderr.
const fn fails(args: Args, stderr: &'static str) -> Step {
    step(args, 1, Text::Exact(""), Text::Exact(stderr))
}

/// A clap usage error whose first line is `first`.
const fn usage(args: Args, first: &'static str) -> Step {
    step(args, 2, Text::Exact(""), Text::Prefix(first))
}

struct Scenario {
    name: &'static str,
    versions: &'static [Version],
    steps: Vec<Step>,
}

fn sc(name: &'static str, versions: &'static [Version], steps: Vec<Step>) -> Scenario {
    Scenario {
        name,
        versions,
        steps,
    }
}

use Args::{Create, Delete, Raw, WriteFile};
use Text::{Any, Contains, Exact, Prefix};

const NET_ALPINE: &[&str] = &["--image", "alpine", "--net"];
const START_WEB: Args = Raw(&["machine", "start", "--name", "web"]);
const STOP_WEB: Args = Raw(&["machine", "stop", "--name", "web"]);
const LS_JSON: Args = Raw(&["machine", "ls", "--json"]);
const VM_NOT_FOUND_GHOST: &str = "Error: vm not found: ghost\n";

fn scenarios() -> Vec<Scenario> {
    vec![
        // §7 "create ok".
        sc(
            "create ok",
            BOTH,
            vec![
                step(
                    Create("web", NET_ALPINE),
                    0,
                    Exact("Created machine: web\n"),
                    Exact(""),
                ),
                step(LS_JSON, 0, Contains("\"state\": \"created\""), Exact("")),
                step(LS_JSON, 0, Contains("\"name\": \"web\""), Exact("")),
            ],
        ),
        // §7 "create, name exists" (wording changed in 1.0.0).
        sc(
            "create duplicate (0.8.0 wording)",
            &[OLD],
            vec![
                ok(Create("web", NET_ALPINE)),
                fails(
                    Create("web", NET_ALPINE),
                    "Error: config operation failed: create machine: machine 'web' already \
                     exists\n",
                ),
            ],
        ),
        sc(
            "create duplicate (1.x wording)",
            &[NEW],
            vec![
                ok(Create("web", NET_ALPINE)),
                fails(
                    Create("web", NET_ALPINE),
                    "Error: config operation failed: create machine: machine 'web' already \
                     exists or is being created\n",
                ),
            ],
        ),
        // §7 "create --from missing file".
        sc(
            "create --from missing file",
            BOTH,
            vec![fails(
                Create("web", &["--from", "{dir}/missing.smolmachine"]),
                "Error: config operation failed: create from .smolmachine: file not found: \
                 {dir}/missing.smolmachine\n",
            )],
        ),
        // §7 "create registry --image, no network": refused from 1.7.3, accepted before.
        sc(
            "registry image without network is refused",
            &[NEW],
            vec![
                step(
                    Create("web", &["--image", "alpine"]),
                    1,
                    Exact(""),
                    Prefix(
                        "Error: config operation failed: create machine: image 'alpine' must be \
                         pulled from a registry, but this machine has no network",
                    ),
                ),
                step(LS_JSON, 0, Exact("[]\n"), Exact("")),
                // Any of these counts as network; a local image needs none.
                ok(Create(
                    "web",
                    &["--image", "alpine", "--allow-cidr", "10.0.0.0/8"],
                )),
                ok(Create("loc", &["--image", "./img.tar"])),
            ],
        ),
        sc(
            "registry image without network is accepted before 1.7.3",
            &[OLD],
            vec![step(
                Create("web", &["--image", "alpine"]),
                0,
                Exact("Created machine: web\n"),
                Exact(""),
            )],
        ),
        // §7 "start, unknown".
        sc(
            "start unknown",
            BOTH,
            vec![fails(
                Raw(&["machine", "start", "--name", "ghost"]),
                VM_NOT_FOUND_GHOST,
            )],
        ),
        // §7 "stop, unknown": exit 0 on 0.8.0, an error from 0.8.1.
        sc(
            "stop unknown (0.8.0)",
            &[OLD],
            vec![step(
                Raw(&["machine", "stop", "--name", "ghost"]),
                0,
                Exact("Machine 'ghost' not found or not running\n"),
                Exact(""),
            )],
        ),
        sc(
            "stop unknown (1.x)",
            &[NEW],
            vec![fails(
                Raw(&["machine", "stop", "--name", "ghost"]),
                VM_NOT_FOUND_GHOST,
            )],
        ),
        // §7 "stop, not running".
        sc(
            "stop not running",
            BOTH,
            vec![
                ok(Create("web", NET_ALPINE)),
                step(
                    STOP_WEB,
                    0,
                    Exact("Machine 'web' is not running (state: created)\n"),
                    Exact(""),
                ),
            ],
        ),
        // §7 "delete, unknown".
        sc(
            "delete unknown",
            BOTH,
            vec![fails(Delete("ghost", true), VM_NOT_FOUND_GHOST)],
        ),
        // §7 "delete -f, stopped" (the data directory exists once the machine ran).
        sc(
            "delete -f stopped",
            BOTH,
            vec![
                ok(Create("web", NET_ALPINE)),
                ok(START_WEB),
                step(
                    STOP_WEB,
                    0,
                    Exact("Stopping machine 'web'...\nStopped machine: web\n"),
                    Exact(""),
                ),
                step(
                    Delete("web", true),
                    0,
                    Exact("Cleaning up data directory for vm: web\nDeleted machine: web\n"),
                    Exact(""),
                ),
                step(LS_JSON, 0, Exact("[]\n"), Exact("")),
                ok(Create("new", NET_ALPINE)),
                step(
                    Delete("new", true),
                    0,
                    Exact("Deleted machine: new\n"),
                    Exact(""),
                ),
            ],
        ),
        // §2.5: no `-f` and stdin at EOF: `Cancelled`, exit 0, machine kept.
        sc(
            "delete without -f is cancelled",
            BOTH,
            vec![
                ok(Create("web", NET_ALPINE)),
                step(
                    Delete("web", false),
                    0,
                    Exact("Cancelled\n"),
                    Exact("Delete machine 'web'? [y/N] "),
                ),
                step(LS_JSON, 0, Contains("\"name\": \"web\""), Exact("")),
            ],
        ),
        // §0.3: delete of a running machine stops it first only from 0.8.1.
        sc(
            "delete -f running (0.8.0 orphans the VM)",
            &[OLD],
            vec![
                ok(Create("web", NET_ALPINE)),
                ok(START_WEB),
                step(
                    Delete("web", true),
                    0,
                    Exact("Cleaning up data directory for vm: web\nDeleted machine: web\n"),
                    Exact(""),
                ),
            ],
        ),
        sc(
            "delete -f running (1.x stops first)",
            &[NEW],
            vec![
                ok(Create("web", NET_ALPINE)),
                ok(START_WEB),
                step(
                    Delete("web", true),
                    0,
                    Exact(
                        "Stopping machine 'web'...\nCleaning up data directory for vm: \
                         web\nDeleted machine: web\n",
                    ),
                    Exact(""),
                ),
            ],
        ),
        // §7 "exec, unknown name" and "exec, machine not running".
        sc(
            "exec unknown",
            BOTH,
            vec![fails(
                Raw(&["machine", "exec", "--name", "ghost", "--", "echo", "hi"]),
                VM_NOT_FOUND_GHOST,
            )],
        ),
        sc(
            "exec not running",
            BOTH,
            vec![
                ok(Create("web", NET_ALPINE)),
                fails(
                    Raw(&["machine", "exec", "--name", "web", "--", "echo", "hi"]),
                    "Error: agent operation failed: connect: machine 'web' is not running. Use \
                     'smolvm machine start --name web' first.\n",
                ),
                // §7 "cp, machine stopped": the same message.
                fails(
                    Raw(&["machine", "cp", "{dir}/f", "web:/tmp/f"]),
                    "Error: agent operation failed: connect: machine 'web' is not running. Use \
                     'smolvm machine start --name web' first.\n",
                ),
            ],
        ),
        // §7 "cp, unknown machine" and the no-machine-side error.
        sc(
            "cp unknown",
            BOTH,
            vec![fails(
                Raw(&["machine", "cp", "{dir}/f", "ghost:/tmp/f"]),
                VM_NOT_FOUND_GHOST,
            )],
        ),
        sc(
            "cp without machine side",
            BOTH,
            vec![fails(
                Raw(&["machine", "cp", "a", "b"]),
                "Error: config operation failed: cp: one of SRC or DST must use machine:path \
                 syntax (e.g., myvm:/workspace/file)\n",
            )],
        ),
        // §7 "status, unknown" and "status --json, unknown".
        sc(
            "status unknown",
            BOTH,
            vec![
                fails(
                    Raw(&["machine", "status", "--name", "ghost"]),
                    VM_NOT_FOUND_GHOST,
                ),
                fails(
                    Raw(&["machine", "status", "--name", "ghost", "--json"]),
                    "Error: config operation failed: machine status: machine 'ghost' not found\n",
                ),
            ],
        ),
        // §7 "status text": `not running` on 0.8.0, the actual state from 1.0.0.
        sc(
            "status text (0.8.0)",
            &[OLD],
            vec![
                ok(Create("web", NET_ALPINE)),
                step(
                    Raw(&["machine", "status", "--name", "web"]),
                    0,
                    Exact("Machine 'web': not running\n"),
                    Exact(""),
                ),
                step(
                    START_WEB,
                    0,
                    Exact("Machine 'web' running (PID: 40001)\n"),
                    Exact("Starting machine 'web'...\nPulling alpine...\n"),
                ),
                step(
                    Raw(&["machine", "status", "--name", "web"]),
                    0,
                    Exact("Machine 'web': running (PID: 40001)\n"),
                    Exact(""),
                ),
            ],
        ),
        sc(
            "status text (1.x)",
            &[NEW],
            vec![
                ok(Create("web", NET_ALPINE)),
                step(
                    Raw(&["machine", "status", "--name", "web"]),
                    0,
                    Exact("Machine 'web': created\n"),
                    Exact(""),
                ),
                ok(START_WEB),
                step(
                    START_WEB,
                    0,
                    Exact("Machine 'web' already running (PID: 40001)\n"),
                    Exact(""),
                ),
                ok(STOP_WEB),
                step(
                    Raw(&["machine", "status", "--name", "web"]),
                    0,
                    Exact("Machine 'web': stopped\n"),
                    Exact(""),
                ),
                step(
                    Raw(&["machine", "status", "--name", "web", "--json"]),
                    0,
                    Contains("\"state\": \"stopped\""),
                    Exact(""),
                ),
            ],
        ),
        // §7 clap errors.
        sc(
            "positional name on 1.9.2",
            &[NEW],
            vec![
                step(
                    Raw(&["machine", "create", "--image", "alpine", "--net", "web"]),
                    2,
                    Exact(""),
                    Exact(
                        "error: unexpected argument 'web' found\n\nUsage: smolvm machine create \
                         [OPTIONS] [-- <COMMAND>...]\n\nFor more information, try '--help'.\n",
                    ),
                ),
                usage(
                    Raw(&["machine", "delete", "-f", "web"]),
                    "error: unexpected argument 'web' found\n",
                ),
            ],
        ),
        sc(
            "--name on 0.8.0",
            &[OLD],
            vec![
                step(
                    Raw(&["machine", "create", "--name", "web", "--image", "alpine"]),
                    2,
                    Exact(""),
                    Exact(
                        "error: unexpected argument '--name' found\n\nUsage: smolvm machine \
                         create [OPTIONS] [NAME]\n\nFor more information, try '--help'.\n",
                    ),
                ),
                usage(
                    Raw(&["machine", "delete", "-f", "--name", "web"]),
                    "error: unexpected argument '--name' found\n",
                ),
                step(LS_JSON, 0, Exact("[]\n"), Exact("")),
            ],
        ),
        sc(
            "--label on 0.8.0",
            &[OLD],
            vec![usage(
                Create("web", &["--image", "alpine", "--label", "team=a"]),
                "error: unexpected argument '--label' found\n",
            )],
        ),
        sc(
            "bad CIDR",
            BOTH,
            vec![step(
                Create("web", &["--allow-cidr", "10.0.0.0/33"]),
                2,
                Exact(""),
                Exact(
                    "error: invalid value '10.0.0.0/33' for '--allow-cidr <CIDR>': invalid CIDR \
                     '10.0.0.0/33': expected format like 10.0.0.0/8 or 1.1.1.1\n\nFor more \
                     information, try '--help'.\n",
                ),
            )],
        ),
        sc(
            "timeout without unit, zero timeout, empty guest argv",
            BOTH,
            vec![
                usage(
                    Raw(&[
                        "machine",
                        "exec",
                        "--name",
                        "web",
                        "--timeout",
                        "30",
                        "--",
                        "true",
                    ]),
                    "error: invalid value '30' for '--timeout <DURATION>': time unit needed, for \
                     example 30sec or 30ms\n",
                ),
                usage(
                    Raw(&[
                        "machine",
                        "exec",
                        "--name",
                        "web",
                        "--timeout",
                        "0s",
                        "--",
                        "true",
                    ]),
                    "error: invalid value '0s' for '--timeout <DURATION>': timeout must be \
                     greater than 0 (e.g., 5sec, 30s)\n",
                ),
                usage(
                    Raw(&["machine", "exec", "--name", "web", "--"]),
                    "error: the following required arguments were not provided:\n  \
                     <COMMAND>...\n",
                ),
            ],
        ),
        sc(
            "--from with --image",
            BOTH,
            vec![usage(
                Create(
                    "web",
                    &["--from", "{dir}/p.smolmachine", "--image", "alpine"],
                ),
                "error: the argument '--from <PATH>' cannot be used with '--image <IMAGE>'\n",
            )],
        ),
        sc(
            "invalid names are checked where smolvm checks them",
            BOTH,
            vec![
                fails(
                    Create("a.b", NET_ALPINE),
                    "Error: config operation failed: create machine: machine name contains \
                     invalid character: '.'\n",
                ),
                fails(
                    Raw(&["machine", "stop", "--name", "a.b"]),
                    "Error: config operation failed: validate machine name: machine name \
                     contains invalid character: '.'\n",
                ),
                // start looks the name up first.
                fails(
                    Raw(&["machine", "start", "--name", "a.b"]),
                    "Error: vm not found: a.b\n",
                ),
            ],
        ),
        // Beyond §7: a booted lifecycle through the guest simulation.
        sc(
            "exec, env, cp and timeout on a running machine",
            BOTH,
            vec![
                ok(Create(
                    "web",
                    &["--image", "alpine", "--net", "--env=A=1", "-e", "B=2"],
                )),
                ok(START_WEB),
                step(
                    Raw(&[
                        "machine", "exec", "--name", "web", "--", "echo", "hi", "there",
                    ]),
                    0,
                    Exact("hi there\n"),
                    Exact(""),
                ),
                step(
                    Raw(&["machine", "exec", "--name", "web", "-e", "B=3", "--", "env"]),
                    0,
                    Exact("A=1\nB=3\n"),
                    Exact(""),
                ),
                step(
                    Raw(&[
                        "machine", "exec", "--name", "web", "-w", "/srv", "--", "pwd",
                    ]),
                    0,
                    Exact("/srv\n"),
                    Exact(""),
                ),
                step(
                    Raw(&[
                        "machine", "exec", "--name", "web", "--", "sh", "-c", "exit 3",
                    ]),
                    3,
                    Exact(""),
                    Exact(""),
                ),
                step(
                    Raw(&["machine", "exec", "--name", "web", "--", "uname"]),
                    127,
                    Exact(""),
                    Prefix("sim: command not simulated: uname ("),
                ),
                ok(WriteFile("{dir}/up.txt", "payload\n")),
                step(
                    Raw(&["machine", "cp", "{dir}/up.txt", "web:tmp/up.txt"]),
                    0,
                    Exact(""),
                    Exact(""),
                ),
                step(
                    Raw(&[
                        "machine",
                        "exec",
                        "--name",
                        "web",
                        "--",
                        "cat",
                        "/tmp/up.txt",
                    ]),
                    0,
                    Exact("payload\n"),
                    Exact(""),
                ),
                step(
                    Raw(&["machine", "exec", "--name", "web", "--", "cat", "/nope"]),
                    1,
                    Exact(""),
                    Exact("cat: /nope: No such file or directory\n"),
                ),
                ok(Raw(&["machine", "cp", "web:/tmp/up.txt", "{dir}/down.txt"])),
                step(
                    Raw(&[
                        "machine",
                        "exec",
                        "--name",
                        "web",
                        "--timeout",
                        "150ms",
                        "--",
                        "sleep",
                        "5",
                    ]),
                    124,
                    Exact(""),
                    Exact("\ncommand timed out after 150ms"),
                ),
                step(
                    Raw(&["machine", "cp", "{dir}/up.txt", "web:/a/../b"]),
                    1,
                    Exact(""),
                    Prefix("Error: agent operation failed: file upload: invalid guest path"),
                ),
            ],
        ),
        // §0.2: `--from` drops `--allow-cidr` (and does not switch net on) before 1.8.0.
        sc(
            "pack then create --from drops egress before 1.8.0",
            &[OLD],
            vec![
                step(
                    Raw(&["pack", "create", "--image", "alpine", "-o", "{dir}/app"]),
                    0,
                    Contains("Packed: {dir}/app ("),
                    Exact(""),
                ),
                step(
                    Create(
                        "web",
                        &[
                            "--from",
                            "{dir}/app.smolmachine",
                            "--allow-cidr",
                            "10.0.0.0/8",
                        ],
                    ),
                    0,
                    Exact("Extracting .smolmachine assets...\nCreated machine: web\n"),
                    Exact(""),
                ),
                step(LS_JSON, 0, Contains("\"network\": false"), Exact("")),
                // v0.8.0 extracts before it notices the duplicate.
                step(
                    Create("web", &["--from", "{dir}/app.smolmachine"]),
                    1,
                    Exact("Extracting .smolmachine assets...\n"),
                    Exact(
                        "Error: config operation failed: create machine: machine 'web' already \
                         exists\n",
                    ),
                ),
            ],
        ),
        sc(
            "pack then create --from keeps egress from 1.8.0",
            &[NEW],
            vec![
                ok(Raw(&[
                    "pack",
                    "create",
                    "--image",
                    "alpine",
                    "-o",
                    "{dir}/app",
                ])),
                step(
                    Create(
                        "web",
                        &[
                            "--from",
                            "{dir}/app.smolmachine",
                            "--allow-cidr",
                            "10.0.0.0/8",
                            "--label",
                            "team=a",
                        ],
                    ),
                    0,
                    Exact("Extracting .smolmachine assets...\nCreated machine: web\n"),
                    Exact(""),
                ),
                step(LS_JSON, 0, Contains("\"network\": true"), Exact("")),
                step(LS_JSON, 0, Contains("\"team\": \"a\""), Exact("")),
            ],
        ),
        sc(
            "ls text and aliases",
            BOTH,
            vec![
                step(
                    Raw(&["vm", "list"]),
                    0,
                    Exact("No machines found\n"),
                    Exact(""),
                ),
                step(Raw(&["--version"]), 0, Any, Exact("")),
            ],
        ),
    ]
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Make the two front ends comparable: the per-run temp dir becomes `{dir}`, creation
/// times become 0 (a second may tick between the two runs).
fn normalise(bytes: &[u8], dir: &str) -> String {
    let text = String::from_utf8_lossy(bytes).replace(dir, "{dir}");
    let key = "\"created_at\": ";
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = rest[i + key.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('0');
    }
    out.push_str(rest);
    out
}

fn run_all(
    s: &Scenario,
    v: Version,
    dir: &Path,
    runner: &dyn Runner,
    env: Vec<(String, String)>,
) -> Vec<Run> {
    let d = dir.display().to_string();
    let mut runs = Vec::new();
    for st in &s.steps {
        if let Args::WriteFile(path, contents) = st.args {
            std::fs::write(path.replace("{dir}", &d), contents).expect("write host file");
            runs.push(Run {
                code: 0,
                stdout: String::new(),
                stderr: String::new(),
            });
            continue;
        }
        let inv = Invocation {
            program: env!("CARGO_BIN_EXE_smolvm-fake").into(),
            args: st.args.argv(v, &d),
            env: env.clone(),
            timeout: Some(Duration::from_secs(30)),
        };
        let out = runner
            .run(&inv)
            .unwrap_or_else(|e| panic!("{} on {v}: {e}", s.name));
        runs.push(Run {
            code: out.code.unwrap_or(-1),
            stdout: normalise(&out.stdout, &d),
            stderr: normalise(&out.stderr, &d),
        });
    }
    runs
}

fn check_scenario(s: &Scenario, v: Version) {
    let mem_dir = tempfile::tempdir().expect("tempdir");
    let sim = SimulatedRunner::new(v);
    let in_process = run_all(s, v, mem_dir.path(), &sim, Vec::new());

    let fake_dir = tempfile::tempdir().expect("tempdir");
    let state = fake_dir.path().join("state");
    let env = vec![
        (STATE_ENV.to_string(), state.display().to_string()),
        (VERSION_ENV.to_string(), v.to_string()),
    ];
    let fake = run_all(s, v, fake_dir.path(), &ProcessRunner, env);

    for (i, ((st, a), b)) in s.steps.iter().zip(&in_process).zip(&fake).enumerate() {
        let ctx = format!("{:?} on {v}, step {i}", s.name);
        assert_eq!(
            (a.code, &a.stdout, &a.stderr),
            (b.code, &b.stdout, &b.stderr),
            "{ctx}: in-process (left) and fake (right) disagree"
        );
        assert_eq!(a.code, st.code, "{ctx}: exit code (stderr {:?})", a.stderr);
        // Expected texts mention `{dir}` literally, as the normalised outputs do.
        st.stdout.check(&a.stdout, "stdout", &ctx);
        st.stderr.check(&a.stderr, "stderr", &ctx);
    }
}

#[test]
fn every_scenario_agrees_in_process_and_as_a_process() {
    let mut count = 0;
    for s in scenarios() {
        for v in s.versions {
            check_scenario(&s, *v);
            count += 1;
        }
    }
    // The list covers every §7 row that needs no booted VM, on both versions where it applies.
    assert!(count >= 50, "only {count} scenario runs");
}

#[test]
fn in_process_store_matches_what_smolvm_would_store() {
    // §0.2 as recorded, not just as listed: CIDRs are dropped with --from before 1.8.0.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("app");
    for (v, cidrs, net) in [
        (OLD, None, false),
        (NEW, Some(vec!["10.0.0.0/8".to_string()]), true),
    ] {
        let sim = SimulatedRunner::new(v);
        let run = |args: Vec<String>| {
            let inv = Invocation {
                program: "smolvm".into(),
                args,
                env: Vec::new(),
                timeout: None,
            };
            let o = sim.run(&inv).unwrap();
            assert_eq!(o.code, Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        };
        run(
            Args::Raw(&["pack", "create", "--image", "alpine", "-o", "{dir}/app"])
                .argv(v, &dir.path().display().to_string()),
        );
        let from = format!("{}.smolmachine", out.display());
        let mut args: Vec<String> = [
            "machine",
            "create",
            "--from",
            &from,
            "--allow-cidr",
            "10.0.0.0/8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if v >= Version::new(1, 0, 2) {
            args.extend(["--name".into(), "web".into()]);
        } else {
            args.push("web".into());
        }
        run(args);
        let m = sim.machine("web").unwrap();
        assert_eq!(m.allowed_cidrs, cidrs, "{v}");
        assert_eq!(m.network, net, "{v}");
        assert_eq!(m.image.as_deref(), Some("alpine"));
        assert_eq!(sim.machine_count(), 1);
    }
}
