//! One machine's whole life, one step at a time: the README's first command.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It talks to the real smolvm when one is installed (`SMOLVM_BIN`, else `smolvm` on
//! `PATH`), and otherwise to the in-process simulation (`Smolvm::simulated()`), so it runs
//! anywhere; its first line says which. With `SMOLVM_BIN=target/debug/smolvm-fake` the same
//! flow runs through real processes of the crate's fake CLI (its state goes to
//! `SMOLVM_FAKE_STATE`, or to a temporary directory when that is unset).
//!
//! Every step prints the smolvm commands it ran, with exit code and duration, from the
//! machine's transcript. The example ends by checking with `machine ls` that no machine is
//! left, and exits non-zero if one is (or if any step misbehaved).

use std::error::Error;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use smolvm_harness::config::config;
use smolvm_harness::{Machine, MachineState, Smolvm};

type Fallible<T = ()> = Result<T, Box<dyn Error>>;

fn main() -> ExitCode {
    let backend = match Backend::detect() {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("quickstart: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&backend, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The smolvm the example talks to, and how to say so.
pub struct Backend {
    /// The client every step uses.
    pub smolvm: Smolvm,
    /// The first line of the output.
    pub description: String,
    /// True when no one else's machines can be in `machine ls` (simulation, or a fake
    /// with a state directory of its own), so the final check can demand an empty list.
    pub private_state: bool,
    /// The fake's state directory when the example made one; removed on drop.
    _state: Option<tempfile::TempDir>,
}

impl Backend {
    /// Real smolvm if the environment names one that exists, the fake CLI if that is what
    /// it names, else the simulation.
    pub fn detect() -> Fallible<Backend> {
        let smolvm = Smolvm::from_env();
        if !smolvm.is_available() {
            // The same words a skipped test prints; and like a guarded test, a SMOLVM_BIN
            // that is set but wrong is an error, not a reason to fall back.
            let check = smolvm_harness::skip::smolvm_check();
            let reason = check
                .reason()
                .unwrap_or("smolvm is not available")
                .to_string();
            if std::env::var_os("SMOLVM_BIN").is_some_and(|v| !v.is_empty()) {
                return Err(format!("{reason} (unset SMOLVM_BIN to use the simulation)").into());
            }
            return Ok(Backend::simulated(&reason));
        }
        if is_fake(smolvm.program()) {
            return Backend::fake(
                smolvm,
                std::env::var_os("SMOLVM_FAKE_STATE").map(PathBuf::from),
            );
        }
        Ok(Backend {
            description: format!("using real smolvm: {}", smolvm.program().display()),
            smolvm,
            private_state: false,
            _state: None,
        })
    }

    /// The in-process simulation; `why` says why the real one is not used.
    pub fn simulated(why: &str) -> Backend {
        Backend {
            smolvm: Smolvm::simulated(),
            description: format!("using the in-process simulation (Smolvm::simulated()): {why}"),
            private_state: true,
            _state: None,
        }
    }

    /// The fake CLI at `smolvm`'s program, with its state in `state` (the value of
    /// `SMOLVM_FAKE_STATE`). The fake refuses to run without one; when there is none, a
    /// temporary directory is given to this client only (as process env of the smolvm calls,
    /// not of this process).
    pub fn fake(smolvm: Smolvm, state: Option<PathBuf>) -> Fallible<Backend> {
        let program = smolvm.program().display().to_string();
        match state {
            Some(dir) => Ok(Backend {
                description: format!(
                    "using the fake smolvm CLI: {program} (state in {})",
                    dir.display()
                ),
                smolvm,
                private_state: false,
                _state: None,
            }),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("quickstart-fake-state-")
                    .tempdir()?;
                let smolvm =
                    smolvm.with_process_env("SMOLVM_FAKE_STATE", dir.path().display().to_string());
                Ok(Backend {
                    description: format!(
                        "using the fake smolvm CLI: {program} (state in {}, removed at the end)",
                        dir.path().display()
                    ),
                    smolvm,
                    private_state: true,
                    _state: Some(dir),
                })
            }
        }
    }
}

/// The crate's fake CLI is built as `smolvm-fake`.
fn is_fake(program: &Path) -> bool {
    program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("smolvm-fake"))
}

/// Prints, after each step, the smolvm commands that step ran for the machine.
struct Steps<'w> {
    out: &'w mut dyn Write,
    number: usize,
    shown: usize,
}

impl Steps<'_> {
    fn step(&mut self, title: &str, vm: &Machine) -> io::Result<()> {
        self.number += 1;
        writeln!(self.out, "\n[{}] {title}", self.number)?;
        // The transcript holds the machine's last 16 commands; this flow runs fewer, so
        // counting what was shown is enough to show each command once.
        let entries = vm.transcript();
        for entry in entries.iter().skip(self.shown) {
            writeln!(self.out, "    $ {}", entry.command)?;
            writeln!(
                self.out,
                "      -> {} in {:.1?}",
                entry.outcome, entry.duration
            )?;
        }
        self.shown = entries.len();
        Ok(())
    }

    fn say(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "    {text}")
    }
}

/// The whole flow, written to `out`.
pub fn run(backend: &Backend, out: &mut dyn Write) -> Fallible {
    writeln!(out, "{}", backend.description)?;
    let smolvm = &backend.smolvm;
    writeln!(out, "smolvm version: {}", smolvm.version()?)?;
    let image = config()?.image.clone();
    let mut steps = Steps {
        out,
        number: 0,
        shown: 0,
    };

    // A generated name: `<prefix>-quickstart-<pid>-<n>`, unique across processes.
    let vm = Machine::builder()
        .smolvm(smolvm.clone())
        .image(&image)
        .net()
        .test_name("quickstart")
        .start()?;
    let name = vm.name().to_string();
    steps.step(
        &format!("create and start machine {name} from {image}"),
        &vm,
    )?;

    let greeting = vm
        .command(&["sh", "-c", "echo \"$GREETING\""])
        .env("GREETING", "hello from the host")
        .run()?;
    steps.step(
        "exec with an env variable (its value is redacted in every log)",
        &vm,
    )?;
    steps.say(&format!("stdout: {:?}", greeting.stdout_str()))?;
    expect(
        greeting.stdout_str() == "hello from the host\n",
        "the guest saw GREETING",
    )?;

    let pwd = vm.command(&["pwd"]).workdir("/tmp").run()?;
    steps.step("exec in a working directory", &vm)?;
    steps.say(&format!("stdout: {:?}", pwd.stdout_str()))?;
    expect(pwd.stdout_str() == "/tmp\n", "the command ran in /tmp")?;

    let exit3 = vm.sh("echo failing on purpose >&2; exit 3")?;
    steps.step("exec a command that exits 3", &vm)?;
    steps.say(&format!(
        "exit code {}: the guest's answer, not an error (stderr: {:?})",
        exit3.code(),
        exit3.stderr_str().trim_end()
    ))?;
    expect(exit3.code() == 3, "the exit code came through")?;

    let dir = tempfile::tempdir()?;
    let sent = dir.path().join("sent.txt");
    let back = dir.path().join("back.txt");
    fs::write(&sent, "a file from the host\n")?;
    vm.copy_in(&sent, "/tmp/quickstart.txt")?;
    let cat = vm.exec(&["cat", "/tmp/quickstart.txt"])?;
    vm.copy_out("/tmp/quickstart.txt", &back)?;
    steps.step(
        "copy a file in, read it in the guest, copy it back out",
        &vm,
    )?;
    let returned = fs::read_to_string(&back)?;
    steps.say(&format!(
        "guest read {:?}; host got back {returned:?}",
        cat.stdout_str()
    ))?;
    expect(
        returned == "a file from the host\n",
        "the file made the round trip",
    )?;

    vm.stop()?;
    let state = vm.status()?.map(|info| info.state);
    steps.step("stop", &vm)?;
    steps.say(&format!("state: {state:?}"))?;
    expect(
        state == Some(MachineState::Stopped),
        "the machine is stopped",
    )?;

    // `delete` consumes the guard and forgets its transcript, so this step is timed here.
    // Dropping the guard would delete it too; `delete` is the form that reports errors.
    let started = Instant::now();
    vm.delete()?;
    steps.number += 1;
    writeln!(steps.out, "\n[{}] delete", steps.number)?;
    steps.say(&format!("deleted {name} in {:.1?}", started.elapsed()))?;

    let left = smolvm.machine_list()?;
    let ours: Vec<&str> = left
        .iter()
        .map(|m| m.name.as_str())
        .filter(|n| *n == name || backend.private_state)
        .collect();
    if !ours.is_empty() {
        return Err(format!("machines left behind: {ours:?}").into());
    }
    writeln!(steps.out, "\nno machine left (checked with `machine ls`)")?;
    writeln!(
        steps.out,
        "tip: SMOLVM_HARNESS_TRACE=1 prints every smolvm command as it runs"
    )?;
    Ok(())
}

fn expect(ok: bool, what: &str) -> Fallible {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
}
