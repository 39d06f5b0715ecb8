//! Unit mode: the exact argv of every workload option (sizing, ports, volumes, egress by
//! host, secrets, extra flags) in both dialects and at the boundary versions, where secrets
//! travel, and each bad input refused before any smolvm call.

use std::path::Path;

use smolvm_harness::{
    CreateOptions, Error, ExecOptions, Machine, PortMapping, Reply, ScriptedRunner, Smolvm,
};

fn client(version: &str) -> (Smolvm, ScriptedRunner) {
    let runner = ScriptedRunner::new().version(version);
    (Smolvm::new("smolvm").with_runner(runner.clone()), runner)
}

/// The argv of every call but `--version`.
fn sent(runner: &ScriptedRunner) -> Vec<Vec<String>> {
    runner
        .argvs()
        .into_iter()
        .filter(|a| a.first().map(String::as_str) != Some("--version"))
        .collect()
}

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p)
        .expect("canonicalize")
        .display()
        .to_string()
}

#[test]
fn sizing_ports_volumes_and_hosts_both_dialects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let host = canonical(&src);
    let opts = || {
        CreateOptions::image("alpine")
            .cpus(2)
            .mem_mib(512)
            .storage_gib(4)
            .overlay_gib(2)
            .port(18080, 80)
            .port(18443, 443)
            .volume(&src, "/src")
            .volume_ro(&src, "/ro")
            .allow_host("example.com")
            .allow_host("10.1.2.3")
            .extra_args(["--dns", "9.9.9.9"])
    };
    for (version, name_flag) in [
        ("0.8.0", false),
        ("1.0.1", false),
        ("1.0.2", true),
        ("1.9.2", true),
    ] {
        let (smolvm, runner) = client(version);
        smolvm.machine_create("web", &opts()).unwrap();
        let mut want: Vec<String> = vec!["machine".into(), "create".into()];
        if name_flag {
            want.extend(["--name".into(), "web".into()]);
        }
        want.extend(
            [
                "--image",
                "alpine",
                "--net",
                "--allow-host",
                "example.com",
                "--allow-host",
                "10.1.2.3",
                "--cpus",
                "2",
                "--mem",
                "512",
                "--storage",
                "4",
                "--overlay",
                "2",
                "--port",
                "18080:80",
                "--port",
                "18443:443",
                "--volume",
            ]
            .map(String::from),
        );
        want.push(format!("{host}:/src"));
        want.push("--volume".into());
        want.push(format!("{host}:/ro:ro"));
        want.extend(["--dns".to_string(), "9.9.9.9".to_string()]);
        if !name_flag {
            // After extra arguments, `--` keeps a flag that takes a value from taking the name.
            want.extend(["--".to_string(), "web".to_string()]);
        }
        assert_eq!(sent(&runner), [want], "{version}");
    }
}

#[test]
fn a_relative_volume_host_is_sent_absolute() {
    let cwd = std::env::current_dir().expect("cwd");
    let (smolvm, runner) = client("1.9.2");
    smolvm
        .machine_create("v", &CreateOptions::image("alpine").volume("tests", "/t"))
        .unwrap();
    let argv = &sent(&runner)[0];
    let i = argv.iter().position(|a| a == "--volume").expect("--volume");
    assert_eq!(argv[i + 1], format!("{}:/t", canonical(&cwd.join("tests"))));
}

#[test]
fn every_bad_input_is_a_typed_error_with_no_smolvm_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").expect("write");
    let bad: Vec<(&str, CreateOptions)> = vec![
        ("host port 0", CreateOptions::image("a").port(0, 80)),
        ("guest port 0", CreateOptions::image("a").port(8080, 0)),
        (
            "host port twice",
            CreateOptions::image("a").port(8080, 80).port(8080, 81),
        ),
        (
            "missing volume host",
            CreateOptions::image("a").volume(dir.path().join("nope"), "/d"),
        ),
        (
            "volume host is a file",
            CreateOptions::image("a").volume(&file, "/d"),
        ),
        (
            "relative guest path",
            CreateOptions::image("a").volume(dir.path(), "data"),
        ),
        (
            "guest path with a colon",
            CreateOptions::image("a").volume(dir.path(), "/a:b"),
        ),
        (
            "protected host path",
            CreateOptions::image("a").volume("/etc", "/e"),
        ),
        (
            "guest path twice",
            CreateOptions::image("a")
                .volume(dir.path(), "/d")
                .volume_ro(dir.path(), "/d"),
        ),
        ("empty host name", CreateOptions::image("a").allow_host("")),
        (
            "host with a port",
            CreateOptions::image("a").allow_host("example.com:443"),
        ),
        (
            "host with a space",
            CreateOptions::image("a").allow_host("exa mple.com"),
        ),
        ("cpus 0", CreateOptions::image("a").cpus(0)),
        ("cpus 256", CreateOptions::image("a").cpus(256)),
        ("mem below 64 MiB", CreateOptions::image("a").mem_mib(63)),
        ("storage 0", CreateOptions::image("a").storage_gib(0)),
        ("overlay 0", CreateOptions::image("a").overlay_gib(0)),
        (
            "secret key empty",
            CreateOptions::image("a").secret_env("", "v"),
        ),
        (
            "secret key twice",
            CreateOptions::image("a")
                .secret_env("K", "1")
                .secret_env("K", "2"),
        ),
    ];
    for (what, opts) in bad {
        for version in ["0.8.2", "1.9.2"] {
            let (smolvm, runner) = client(version);
            let err = smolvm.machine_create("m", &opts).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput { .. }),
                "{what} on {version}: {err}"
            );
            assert!(sent(&runner).is_empty(), "{what}: smolvm was called");
        }
    }
}

#[test]
fn extra_args_pass_through_but_owned_flags_are_refused() {
    let owned: &[&[&str]] = &[
        &["--name", "x"],
        &["--name=x"],
        &["-nx"],
        &["--image", "a"],
        &["-I", "a"],
        &["--from", "/p"],
        &["--label", "a=b"],
        &["--label=smolvm-harness.owner=1"],
        &["--net"],
        &["--allow-cidr", "0.0.0.0/0"],
        &["--allow-host=x.com"],
        &["--outbound-localhost-only"],
        &["-e", "A=B"],
        &["--env=A=B"],
        &["--secret-env", "A=B"],
        &["--cpus", "2"],
        &["--mem=512"],
        &["--storage", "1"],
        &["--overlay", "1"],
        &["-p", "1:1"],
        &["--port", "1:1"],
        &["-v", "/a:/b"],
        &["--volume=/a:/b"],
        &["--"],
        &[""],
    ];
    for args in owned {
        let (smolvm, runner) = client("1.9.2");
        let opts = CreateOptions::image("a").extra_args(args.iter().copied());
        let err = smolvm.machine_create("m", &opts).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{args:?}: {err}");
        assert!(sent(&runner).is_empty(), "{args:?}");
    }
    // Through the guard too, and a flag of its own passes with the crate's labels kept.
    let runner = ScriptedRunner::new();
    let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    let err = Machine::builder()
        .smolvm(smolvm.clone())
        .extra_args(["--label", "smolvm-harness.owner=someone-else"])
        .create()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .extra_args(["--gpu", "--init", "apk add curl"])
        .create()
        .unwrap();
    let create = runner
        .calls()
        .into_iter()
        .find(|c| c.args_str().starts_with(&["machine", "create"]))
        .expect("create");
    let args = create.args_str();
    assert!(
        args.ends_with(&["--gpu", "--init", "apk add curl"]),
        "{args:?}"
    );
    assert!(
        !create.harness_labels().is_empty(),
        "the crate's labels are still sent: {args:?}"
    );
    drop(vm);
}

#[test]
fn allow_host_with_a_pack_is_refused_before_1_8_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = dir.path().join("p.smolmachine");
    std::fs::write(&pack, b"x").expect("write");
    let (smolvm, runner) = client("1.7.9");
    let err = smolvm
        .machine_create(
            "m",
            &CreateOptions::from_path(&pack).allow_host("example.com"),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(sent(&runner).is_empty());
    let (smolvm, runner) = client("1.8.0");
    smolvm
        .machine_create(
            "m",
            &CreateOptions::from_path(&pack).allow_host("example.com"),
        )
        .unwrap();
    assert_eq!(sent(&runner).len(), 1);
}

/// The env of the last call whose argv starts with `prefix`.
fn env_of(runner: &ScriptedRunner, prefix: &[&str]) -> Vec<(String, String)> {
    runner
        .calls()
        .into_iter()
        .rev()
        .find(|c| c.args_str().starts_with(prefix))
        .map(|c| c.env)
        .unwrap_or_default()
}

const SECRET: &str = "hunter2-s3cret";

#[test]
fn secrets_at_create_are_refs_and_travel_in_the_env_of_every_start_and_exec() {
    let (smolvm, runner) = client("1.9.2");
    smolvm
        .machine_create(
            "s",
            &CreateOptions::image("alpine").secret_env("API_TOKEN", SECRET),
        )
        .unwrap();
    smolvm.machine_start("s").unwrap();
    smolvm
        .machine_exec("s", &["true"], &ExecOptions::default())
        .unwrap();
    let all = sent(&runner);
    assert_eq!(
        all[0],
        [
            "machine",
            "create",
            "--name",
            "s",
            "--image",
            "alpine",
            "--secret-env",
            "API_TOKEN=SMOLVM_HARNESS_SECRET_API_TOKEN"
        ]
    );
    assert!(all.iter().flatten().all(|a| !a.contains(SECRET)), "{all:?}");
    let var = (
        "SMOLVM_HARNESS_SECRET_API_TOKEN".to_string(),
        SECRET.to_string(),
    );
    assert!(
        !env_of(&runner, &["machine", "create"]).contains(&var),
        "create does not resolve refs: the value stays out of its env"
    );
    assert!(env_of(&runner, &["machine", "start"]).contains(&var));
    assert!(env_of(&runner, &["machine", "exec"]).contains(&var));
    // Another client of the same smolvm state reaches the same machine with its secrets.
    let other = Smolvm::new("smolvm").with_runner(runner.clone());
    other.machine_start("s").unwrap();
    assert!(env_of(&runner, &["machine", "start"]).contains(&var));
    // Gone with the machine.
    smolvm.machine_delete("s").unwrap();
    smolvm.machine_start("s").unwrap();
    assert!(!env_of(&runner, &["machine", "start"]).contains(&var));
}

#[test]
fn secrets_with_a_pack_source_go_per_exec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = dir.path().join("p.smolmachine");
    std::fs::write(&pack, b"x").expect("write");
    let (smolvm, runner) = client("1.9.2");
    smolvm
        .machine_create(
            "p",
            &CreateOptions::from_path(&pack).secret_env("TOK", SECRET),
        )
        .unwrap();
    smolvm.machine_start("p").unwrap();
    smolvm
        .machine_exec("p", &["env"], &ExecOptions::default())
        .unwrap();
    let all = sent(&runner);
    assert!(!all[0].iter().any(|a| a == "--secret-env"), "{:?}", all[0]);
    assert!(env_of(&runner, &["machine", "start"]).is_empty());
    assert_eq!(
        all[2],
        [
            "machine",
            "exec",
            "--name",
            "p",
            "--secret-env",
            "TOK=SMOLVM_HARNESS_EXEC_SECRET_TOK",
            "--",
            "env"
        ]
    );
    assert!(env_of(&runner, &["machine", "exec"])
        .contains(&("SMOLVM_HARNESS_EXEC_SECRET_TOK".into(), SECRET.into())));
}

#[test]
fn secrets_on_0_8_x_are_bare_env_keys_per_exec() {
    let (smolvm, runner) = client("0.8.2");
    smolvm
        .machine_create(
            "o",
            &CreateOptions::image("alpine").secret_env("TOK", SECRET),
        )
        .unwrap();
    smolvm
        .machine_exec(
            "o",
            &["env"],
            &ExecOptions::default().secret_env("X", "exec-secret"),
        )
        .unwrap();
    let all = sent(&runner);
    assert_eq!(all[0], ["machine", "create", "--image", "alpine", "o"]);
    assert_eq!(
        all[1],
        [
            "machine",
            "exec",
            "--name",
            "o",
            "--env=TOK",
            "--env=X",
            "--",
            "env"
        ]
    );
    let env = env_of(&runner, &["machine", "exec"]);
    assert!(env.contains(&("TOK".into(), SECRET.into())), "{env:?}");
    assert!(env.contains(&("X".into(), "exec-secret".into())), "{env:?}");
    // A key smolvm itself reads would change smolvm: refused there, fine from 1.0.0.
    for key in [
        "HOME",
        "PATH",
        "XDG_CACHE_HOME",
        "SMOLVM_DATA_DIR",
        "LD_PRELOAD",
    ] {
        let err = smolvm
            .machine_exec("o", &["true"], &ExecOptions::default().secret_env(key, "v"))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{key}: {err}");
    }
    let (new, _) = client("1.0.0");
    new.machine_exec(
        "o",
        &["true"],
        &ExecOptions::default().secret_env("HOME", "v"),
    )
    .unwrap();
    // 0.8.0 drops a bare `-e KEY`: no way to pass a secret there.
    let (old, runner) = client("0.8.0");
    let err = old
        .machine_create(
            "o",
            &CreateOptions::image("alpine").secret_env("TOK", SECRET),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(sent(&runner).is_empty());
}

#[test]
fn secret_values_never_show_in_debug_errors_or_transcripts() {
    let runner = ScriptedRunner::new().on(
        &["machine", "exec"],
        Reply::with(
            1,
            format!("TOK={SECRET}\n"),
            format!("Error: agent operation failed: {SECRET}\n"),
        ),
    );
    let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    let opts = CreateOptions::image("alpine").secret_env("TOK", SECRET);
    assert!(!format!("{opts:?}").contains(SECRET));
    let exec = ExecOptions::default().secret_env("E", "exec-only-secret");
    assert!(!format!("{exec:?}").contains("exec-only-secret"));
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .secret_env("TOK", SECRET)
        .create()
        .unwrap();
    let err = vm
        .command(&["env"])
        .secret_env("E", "exec-only-secret")
        .run()
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    let transcript: String = vm.transcript().iter().map(|e| format!("{e}\n")).collect();
    assert!(!transcript.contains(SECRET), "{transcript}");
    assert!(!transcript.contains("exec-only-secret"), "{transcript}");
    for call in runner.calls() {
        assert!(!format!("{call:?}").contains(SECRET));
        assert!(!call.command_line().to_string().contains(SECRET));
    }
}

#[test]
fn egress_is_honest_about_versions() {
    for (version, enforced) in [
        ("0.8.2", false),
        ("1.1.2", false),
        ("1.1.3", true),
        ("1.9.2", true),
    ] {
        let (smolvm, _) = client(version);
        assert_eq!(smolvm.enforces_egress().unwrap(), enforced, "{version}");
    }
}

#[test]
fn publish_picks_free_distinct_host_ports() {
    let runner = ScriptedRunner::new();
    let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    let vm = Machine::builder()
        .smolvm(smolvm)
        .image("alpine")
        .port(18080, 80)
        .publish(8080)
        .publish(9090)
        .create()
        .unwrap();
    let ports = vm.ports().to_vec();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        ports[0],
        PortMapping {
            host: 18080,
            guest: 80
        }
    );
    let h1 = vm.host_port(8080).expect("8080 published");
    let h2 = vm.host_port(9090).expect("9090 published");
    assert!(h1 != 0 && h2 != 0 && h1 != h2 && h1 != 18080);
    assert_eq!(vm.host_port(1234), None);
    let create = runner
        .argvs()
        .into_iter()
        .find(|a| a.starts_with(&["machine".into(), "create".into()]))
        .expect("create");
    assert!(create.contains(&format!("{h1}:8080")), "{create:?}");
    assert!(create.contains(&format!("{h2}:9090")), "{create:?}");
    let err = Machine::builder()
        .smolvm(Smolvm::new("smolvm").with_runner(ScriptedRunner::new()))
        .publish(0)
        .create()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}

#[test]
fn a_taken_picked_port_remakes_the_machine_with_other_ports() {
    for text in [
        "Error: config operation failed: start machine: host port 40000 is already in use by running machine 'x'\n",
        "Error: agent operation failed: start machine: failed to start virtio network runtime: Address already in use (os error 98)\n",
    ] {
        let runner = ScriptedRunner::new().on_times(&["machine", "start"], 2, Reply::fail(1, text));
        let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
        let vm = Machine::builder()
            .smolvm(smolvm)
            .image("alpine")
            .publish(80)
            .start()
            .unwrap();
        let creates: Vec<Vec<String>> = runner
            .argvs()
            .into_iter()
            .filter(|a| a.starts_with(&["machine".into(), "create".into()]))
            .collect();
        assert_eq!(creates.len(), 3, "two taken, the third starts");
        let deletes = runner
            .argvs()
            .into_iter()
            .filter(|a| a.starts_with(&["machine".into(), "delete".into()]))
            .count();
        assert_eq!(deletes, 2, "each machine that failed to start is deleted");
        let host = vm.host_port(80).expect("published");
        assert!(creates[2].contains(&format!("{host}:80")));
    }
    // Any other start failure is not retried.
    let runner = ScriptedRunner::new().on(
        &["machine", "start"],
        Reply::fail(1, "Error: agent operation failed: boom\n"),
    );
    let smolvm = Smolvm::new("smolvm").with_runner(runner.clone());
    assert!(Machine::builder()
        .smolvm(smolvm)
        .publish(80)
        .start()
        .is_err());
    let starts = runner
        .argvs()
        .into_iter()
        .filter(|a| a.get(1).map(String::as_str) == Some("start"))
        .count();
    assert_eq!(starts, 1);
}
