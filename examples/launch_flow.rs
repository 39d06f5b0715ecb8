//! The seed project's launch flow, on the harness: create a machine from a pack with a
//! pinned egress CIDR, stage a job, run it, copy the result out, delete the machine.
//!
//! ```text
//! cargo run --example launch_flow [CIDR]
//! ```
//!
//! The point of the example is how such a flow is *tested*: its unit tests (at the bottom)
//! check the exact argv with a [`ScriptedRunner`](smolvm_harness::ScriptedRunner), and the
//! stateful behaviour (files, exit codes, nothing left behind) with the simulation. They run
//! with `cargo test` (tests/examples.rs compiles this file as a module) and with
//! `cargo test --example launch_flow`.
//!
//! The seed's hard-won lesson is encoded in the argv test: `--net` must be sent explicitly
//! with `--from PACK --allow-cidr CIDR`, because smolvm 0.8.0 only implies it without
//! `--from`, and silently creates a machine with no network. The harness always sends it,
//! and refuses `--from` with CIDRs on smolvm < 1.8.0, which drops the egress policy.

use std::error::Error;
use std::fmt;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use smolvm_harness::{Machine, MachineBuilder, Pack, Smolvm};

/// Where the job is staged in the guest, and where its result is read back from.
pub const GUEST_JOB: &str = "/tmp/job.env";

fn main() -> ExitCode {
    let cidr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "10.0.0.0/8".to_string());
    let smolvm = Smolvm::from_env();
    let smolvm = if smolvm.is_available() {
        println!("using smolvm: {}", smolvm.program().display());
        smolvm
    } else {
        println!("smolvm not found; using the in-process simulation (Smolvm::simulated())");
        Smolvm::simulated()
    };
    match demo(&smolvm, &cidr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("launch_flow failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(smolvm: &Smolvm, cidr: &str) -> Result<(), Box<dyn Error>> {
    let image = smolvm_harness::config::config()?.image.clone();
    let pack = Pack::create_with(smolvm, &image)?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("result.env");
    let launched = launch(smolvm, pack.path(), cidr, &out)?;
    println!(
        "machine {} ran the job (exit {})",
        launched.machine, launched.exit_code
    );
    print!(
        "result copied out to {}:\n{}",
        out.display(),
        fs::read_to_string(&out)?
    );
    Ok(())
}

/// What a launch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// The machine's (generated) name; it has been deleted by the time `launch` returns.
    pub machine: String,
    /// The job's exit code (0: `launch` fails otherwise).
    pub exit_code: i32,
    /// What the job printed.
    pub stdout: String,
}

/// Why a launch failed.
#[derive(Debug)]
pub enum LaunchError {
    /// smolvm failed, or refused the request (e.g. `--from` with a CIDR on smolvm < 1.8.0).
    Smolvm(smolvm_harness::Error),
    /// The job ran and exited non-zero.
    Job {
        /// Its exit code.
        code: i32,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The job file could not be written on the host.
    Io(std::io::Error),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Smolvm(e) => write!(f, "{e}"),
            LaunchError::Job { code, stderr } => write!(f, "the job exited {code}: {stderr}"),
            LaunchError::Io(e) => write!(f, "failed to write the job file: {e}"),
        }
    }
}

impl Error for LaunchError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            LaunchError::Smolvm(e) => Some(e),
            LaunchError::Io(e) => Some(e),
            LaunchError::Job { .. } => None,
        }
    }
}

impl From<smolvm_harness::Error> for LaunchError {
    fn from(e: smolvm_harness::Error) -> Self {
        LaunchError::Smolvm(e)
    }
}

/// Launch a machine from `pack` that may reach only `cidr`, run the job in it, and copy its
/// result to `out`.
///
/// The job is staged as a file (`JOB_CIDR=...`) and run with the CIDR in its env too; a real
/// agent would write its own result file, which is then copied out the same way. Here the
/// job only reads its file back (the simulation's guests cannot write files), so the result
/// is the job as the guest received it.
///
/// The machine is deleted before `launch` returns, whether it succeeded or not (the guard's
/// drop covers every early `?`).
pub fn launch(
    smolvm: &Smolvm,
    pack: &Path,
    cidr: &str,
    out: &Path,
) -> Result<Launched, LaunchError> {
    let vm = job_machine(smolvm, pack, cidr).start()?;

    let staging = tempfile::tempdir().map_err(LaunchError::Io)?;
    let job = staging.path().join("job.env");
    fs::write(&job, format!("JOB_CIDR={cidr}\n")).map_err(LaunchError::Io)?;
    vm.copy_in(&job, GUEST_JOB)?;

    let ran = vm.exec(&["cat", GUEST_JOB])?;
    if !ran.success() {
        return Err(LaunchError::Job {
            code: ran.code(),
            stderr: ran.stderr_str().trim_end().to_string(),
        });
    }
    vm.copy_out(GUEST_JOB, out)?;

    let launched = Launched {
        machine: vm.name().to_string(),
        exit_code: ran.code(),
        stdout: ran.stdout_str(),
    };
    vm.delete()?;
    Ok(launched)
}

/// The machine a launch runs in: from `pack`, egress pinned to `cidr` (the builder sends
/// `--net` with it), the CIDR in the guest env. Separate so tests can hold one and look.
pub fn job_machine(smolvm: &Smolvm, pack: &Path, cidr: &str) -> MachineBuilder {
    Machine::builder()
        .smolvm(smolvm.clone())
        .from_path(pack)
        .allow_cidr(cidr)
        .env("JOB_CIDR", cidr)
        .test_name("launch")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use smolvm_harness::sim::SimulatedRunner;
    use smolvm_harness::{Reply, ScriptedRunner};

    const CIDR: &str = "203.0.113.7/32";

    /// A stand-in `.smolmachine` for argv tests: the harness checks that the file exists
    /// before calling smolvm, and the scripted runner never reads it.
    fn fake_pack(dir: &Path) -> PathBuf {
        let path = dir.join("app.smolmachine");
        fs::write(&path, b"{}").expect("write fake pack");
        path
    }

    fn strs(argv: &[String]) -> Vec<&str> {
        argv.iter().map(String::as_str).collect()
    }

    #[test]
    fn exact_argv_of_a_launch() {
        let dir = tempfile::tempdir().unwrap();
        let pack = fake_pack(dir.path());
        let out = dir.path().join("result.env");
        let runner = ScriptedRunner::new();
        let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());

        let launched = launch(&smolvm, &pack, CIDR, &out).unwrap();
        let name = launched.machine.as_str();
        let pack = pack.to_str().unwrap();

        // `user_argvs`: the harness's own `smolvm-harness.*` labels are left out (their values
        // differ per process, and under nextest a run label is added).
        let calls: Vec<Vec<String>> = runner
            .user_argvs()
            .into_iter()
            .filter(|a| a[0] != "--version" && a.get(1).map(String::as_str) != Some("ls"))
            .collect();
        // create: the name, the pack, then --net *explicitly* before the pinned CIDR, and the
        // env.
        assert_eq!(
            strs(&calls[0]),
            [
                "machine",
                "create",
                "--name",
                name,
                "--from",
                pack,
                "--net",
                "--allow-cidr",
                CIDR,
                "--env=JOB_CIDR=203.0.113.7/32",
            ]
        );
        assert_eq!(strs(&calls[1]), ["machine", "start", "--name", name]);
        let staged = strs(&calls[2]);
        assert_eq!(staged[..2], ["machine", "cp"]);
        assert!(staged[2].ends_with("/job.env"), "{staged:?}");
        assert_eq!(staged[3], format!("{name}:{GUEST_JOB}"));
        assert_eq!(
            strs(&calls[3]),
            ["machine", "exec", "--name", name, "--", "cat", GUEST_JOB]
        );
        assert_eq!(
            strs(&calls[4]),
            [
                "machine",
                "cp",
                &format!("{name}:{GUEST_JOB}"),
                out.to_str().unwrap()
            ]
        );
        assert_eq!(strs(&calls[5]), ["machine", "delete", "-f", "--name", name]);
        assert_eq!(calls.len(), 6, "{calls:?}");
    }

    #[test]
    fn a_failing_job_is_an_error_and_the_machine_is_still_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let pack = fake_pack(dir.path());
        let runner =
            ScriptedRunner::new().on(&["machine", "exec"], Reply::with(3, "", "no route\n"));
        let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());

        let err = launch(&smolvm, &pack, CIDR, &dir.path().join("out")).unwrap_err();
        assert!(
            matches!(err, LaunchError::Job { code: 3, ref stderr } if stderr == "no route"),
            "{err}"
        );
        let last = runner.argvs().pop().unwrap();
        assert!(
            strs(&last).starts_with(&["machine", "delete", "-f"]),
            "{last:?}"
        );
        let copied_out = runner
            .argvs()
            .iter()
            .any(|a| strs(a).starts_with(&["machine", "cp"]) && a[3].ends_with("/out"));
        assert!(!copied_out, "no result is copied out of a failed job");
    }

    #[test]
    fn smolvm_before_1_8_is_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let pack = fake_pack(dir.path());
        let runner = ScriptedRunner::new().version("0.8.0");
        let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());

        let err = launch(&smolvm, &pack, CIDR, &dir.path().join("out")).unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Smolvm(smolvm_harness::Error::Unsupported { .. })
            ),
            "{err}"
        );
        assert!(
            runner.argvs().iter().all(|a| a[0] == "--version"),
            "{:?}",
            runner.argvs()
        );
    }

    #[test]
    fn the_result_comes_back_and_nothing_is_left() {
        let smolvm = Smolvm::simulated();
        let pack = Pack::create_with(&smolvm, "alpine:latest").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("result.env");

        let launched = launch(&smolvm, pack.path(), CIDR, &out).unwrap();
        assert_eq!(launched.exit_code, 0);
        assert_eq!(launched.stdout, format!("JOB_CIDR={CIDR}\n"));
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("JOB_CIDR={CIDR}\n")
        );
        assert!(smolvm.machine_list().unwrap().is_empty());
    }

    #[test]
    fn the_machine_keeps_the_pinned_cidr() {
        let sim = SimulatedRunner::newest();
        let smolvm = Smolvm::new("smolvm").with_runner(sim.clone());
        let pack = Pack::create_with(&smolvm, "alpine:latest").unwrap();

        let vm = job_machine(&smolvm, pack.path(), CIDR).start().unwrap();
        // What smolvm stored for the machine: the pinned CIDR, and network on (the seed's
        // bug was a machine created `--from` with a CIDR but without network).
        let stored = sim.machine(vm.name()).expect("the machine exists");
        assert_eq!(stored.allowed_cidrs, Some(vec![CIDR.to_string()]));
        assert!(stored.network);
        assert_eq!(stored.env, [("JOB_CIDR".to_string(), CIDR.to_string())]);
        drop(vm);
        assert_eq!(sim.machine_count(), 0, "deleted by the guard");
    }
}
