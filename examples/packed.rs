//! Pack an image once, then start two machines from the pack.
//!
//! ```text
//! cargo run --example packed
//! ```
//!
//! `smolvm pack create` turns an image into a `.smolmachine` file; a machine created
//! `--from` it needs no image pull (which smolvm ≥ 1.7.3 does inside the guest, over the
//! network) and boots faster. Packing is the slow part, so it is done once: here with
//! [`Pack::create_with`], owned by this program and removed when dropped; in tests with the
//! `packed` fixture or [`Pack::shared`], once for the whole test run.
//!
//! Uses the real smolvm when installed, else the in-process simulation; the first line says
//! which. Exits non-zero if a step fails or a machine is left behind.

use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

use smolvm_harness::config::config;
use smolvm_harness::{Machine, Pack, Smolvm};

fn main() -> ExitCode {
    let smolvm = Smolvm::from_env();
    let smolvm = if smolvm.is_available() {
        println!("using smolvm: {}", smolvm.program().display());
        smolvm
    } else {
        let why = smolvm_harness::skip::smolvm_check()
            .reason()
            .unwrap_or("smolvm is not available")
            .to_string();
        println!("using the in-process simulation (Smolvm::simulated()): {why}");
        Smolvm::simulated()
    };
    match run(&smolvm) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("packed failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Pack once, start two machines from the pack, check both, delete both.
pub fn run(smolvm: &Smolvm) -> Result<(), Box<dyn Error>> {
    let image = config()?.image.clone();

    let started = Instant::now();
    let pack = Pack::create_with(smolvm, &image)?;
    println!(
        "packed {image} in {:.1?}: {}",
        started.elapsed(),
        pack.path().display()
    );

    let mut machines = Vec::new();
    for role in ["api", "worker"] {
        let started = Instant::now();
        let vm = Machine::builder()
            .smolvm(smolvm.clone())
            .from_pack(&pack)
            .env("ROLE", role)
            .test_name(format!("packed-{role}"))
            .start()?;
        println!(
            "started {} from the pack in {:.1?}",
            vm.name(),
            started.elapsed()
        );
        machines.push((role, vm));
    }

    for (role, vm) in &machines {
        let out = vm.sh("echo \"$ROLE\"")?;
        out.assert_success();
        if out.stdout_str().trim_end() != *role {
            return Err(format!(
                "{} says it is {:?}, not {role}",
                vm.name(),
                out.stdout_str()
            )
            .into());
        }
        println!("{} answers as {role}", vm.name());
    }

    let names: Vec<String> = machines
        .iter()
        .map(|(_, vm)| vm.name().to_string())
        .collect();
    for (_, vm) in machines {
        vm.delete()?;
    }
    let left: Vec<String> = smolvm
        .machine_list()?
        .into_iter()
        .map(|m| m.name)
        .filter(|n| names.contains(n))
        .collect();
    if !left.is_empty() {
        return Err(format!("machines left behind: {left:?}").into());
    }
    println!("both machines deleted; the pack is removed when `pack` drops");
    Ok(())
}
