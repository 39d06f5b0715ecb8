//! Failure artifacts: what a machine leaves on disk when its test fails, so that the console
//! log survives the machine (which is deleted right after, unless kept).
//!
//! Layout: `<root>/<test>/<machine>/` with `console.log` (the guest console, secrets
//! scrubbed), `transcript.txt` (the machine's smolvm commands, already redacted) and
//! `agent-startup-error.log` when smolvm left one in the data directory (scrubbed). `<root>`
//! is `SMOLVM_HARNESS_ARTIFACTS`, else `smolvm-harness` in the cargo target directory (see
//! [`crate::config::Artifacts`]).
//!
//! Everything here runs from `Drop` while a test panics: nothing panics, errors become the
//! one line the failure report prints instead of the artifacts' path, and the only smolvm
//! call is one `machine data-dir` under the client's timeout.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::Smolvm;
use crate::config::{config, Artifacts};
use crate::transcript::TranscriptEntry;

/// The console log smolvm keeps in a machine's data directory.
pub(crate) const CONSOLE_LOG: &str = "agent-console.log";
/// What smolvm leaves in the data directory when the agent fails to start.
const STARTUP_ERROR_LOG: &str = "agent-startup-error.log";

/// What saving a failing machine's artifacts came to.
#[derive(Debug)]
pub(crate) enum Saved {
    /// `SMOLVM_HARNESS_ARTIFACTS=never`.
    Off,
    /// Written to `dir`: these files. `missing` says why the console log is not among them.
    Written {
        dir: PathBuf,
        files: Vec<&'static str>,
        missing: Option<String>,
    },
    /// Nothing written, for this reason.
    Failed(String),
}

impl Saved {
    /// The failure report's lines about logs: where the artifacts are, or the hint that says
    /// how to find the console log (`data_dir_command`) and why there are no artifacts.
    pub(crate) fn report_lines(&self, data_dir_command: &str) -> String {
        let hint = format!(
            "  logs: agent-console.log in its data directory, printed by: {data_dir_command}\n"
        );
        match self {
            Saved::Off => format!("{hint}  no artifacts saved: SMOLVM_HARNESS_ARTIFACTS=never\n"),
            Saved::Failed(why) => format!("{hint}  no artifacts saved: {why}\n"),
            Saved::Written {
                dir,
                files,
                missing,
            } => {
                let mut out = format!("  artifacts: {} ({})\n", dir.display(), files.join(", "));
                if let Some(why) = missing {
                    out.push_str(&format!("  console log not saved: {why}\n{hint}"));
                }
                out
            }
        }
    }
}

/// Save the artifacts of machine `name`, made by test `test`, whose transcript is `transcript`
/// (taken before this call, so it does not show the `data-dir` call made here).
pub(crate) fn save(
    smolvm: &Smolvm,
    name: &str,
    test: &str,
    transcript: &[TranscriptEntry],
) -> Saved {
    let root = match config() {
        Ok(cfg) => match &cfg.artifacts {
            Artifacts::Never => return Saved::Off,
            Artifacts::Dir(dir) => dir.clone(),
            Artifacts::TargetDir => default_root(&Env::process()),
        },
        Err(e) => return Saved::Failed(format!("bad configuration: {e}")),
    };
    if let Err(e) = std::fs::create_dir_all(&root) {
        return Saved::Failed(format!("could not create {}: {e}", root.display()));
    }
    // Below the root, one level at a time, each a directory of ours and never a symlink:
    // the root may be shared (the temp-dir fallback, a shared SMOLVM_HARNESS_ARTIFACTS), and
    // a planted link there must not send our files elsewhere.
    let test_dir = root.join(path_component(test));
    let dir = test_dir.join(path_component(name));
    for level in [&test_dir, &dir] {
        if let Err(e) = crate::state_dir::ensure_dir(level) {
            return Saved::Failed(format!("could not use {}: {e}", level.display()));
        }
    }
    let mut files = Vec::new();
    let mut text = String::new();
    for entry in transcript {
        text.push_str(&format!("{entry}\n"));
    }
    if let Err(e) = write_file(&dir.join("transcript.txt"), &text) {
        return Saved::Failed(format!("could not write in {}: {e}", dir.display()));
    }
    files.push("transcript.txt");
    // A file of an earlier run of the same test and machine name would pass for this one's.
    for stale in ["console.log", STARTUP_ERROR_LOG] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let missing = match smolvm.machine_data_dir(name) {
        Ok(data_dir) => {
            let mut missing = None;
            match read_log(smolvm, name, &data_dir.join(CONSOLE_LOG)) {
                Ok(log) => match write_file(&dir.join("console.log"), &log) {
                    Ok(()) => files.insert(0, "console.log"),
                    Err(e) => missing = Some(format!("could not write it: {e}")),
                },
                Err(e) => missing = Some(format!("could not read it: {e}")),
            }
            let startup = data_dir.join(STARTUP_ERROR_LOG);
            if startup.exists() {
                if let Ok(log) = read_log(smolvm, name, &startup) {
                    if write_file(&dir.join(STARTUP_ERROR_LOG), &log).is_ok() {
                        files.push(STARTUP_ERROR_LOG);
                    }
                }
            }
            missing
        }
        Err(e) => Some(format!("machine data-dir failed: {e}")),
    };
    Saved::Written {
        dir,
        files,
        missing,
    }
}

/// The most of a log that is read: a chatty guest must not fill the test's memory.
pub(crate) const LOG_LIMIT: u64 = 16 * 1024 * 1024;

/// A host log of machine `name`, lossy UTF-8, its last [`LOG_LIMIT`] bytes (from a line start,
/// after a line that says what was left out), secrets scrubbed. A missing file is `""`.
pub(crate) fn read_log(smolvm: &Smolvm, name: &str, path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut bytes = Vec::new();
    let mut note = String::new();
    if len > LOG_LIMIT {
        file.seek(SeekFrom::Start(len - LOG_LIMIT))?;
        file.take(LOG_LIMIT).read_to_end(&mut bytes)?;
        // From the first whole line: half a line (or half a secret) helps nobody.
        let cut = bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.drain(..cut);
        let dropped = len - bytes.len() as u64;
        note = format!(
            "[… {} ({dropped} bytes) of {} left out: only the last {} are kept …]\n",
            crate::error::human_bytes(dropped),
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            ),
            crate::error::human_bytes(LOG_LIMIT),
        );
    } else {
        file.read_to_end(&mut bytes)?;
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(format!("{note}{}", smolvm.scrub_output(name, &text)))
}

/// Write `text` to `path`, replacing a file but never following a symlink there (the fallback
/// root is in the shared temp directory).
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW).mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// `name` as one safe path component: `::` becomes `__`, anything outside `[A-Za-z0-9._-]`
/// becomes `_`, and `.`/`..`/empty (which would not be a directory of their own) become `_`s.
pub(crate) fn path_component(name: &str) -> String {
    let out: String = name
        .replace("::", "__")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        "_".repeat(out.len().max(1))
    } else {
        out
    }
}

/// What [`default_root`] looks at, so that it can be tested without touching the process.
pub(crate) struct Env {
    pub(crate) cargo_target_dir: Option<OsString>,
    pub(crate) current_dir: Option<PathBuf>,
    pub(crate) current_exe: Option<PathBuf>,
    pub(crate) manifest_dir: Option<OsString>,
    pub(crate) temp_dir: PathBuf,
}

impl Env {
    fn process() -> Env {
        Env {
            cargo_target_dir: std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()),
            current_dir: std::env::current_dir().ok(),
            current_exe: std::env::current_exe().ok(),
            manifest_dir: std::env::var_os("CARGO_MANIFEST_DIR").filter(|v| !v.is_empty()),
            temp_dir: std::env::temp_dir(),
        }
    }
}

/// `<target dir>/smolvm-harness`: the target directory is `CARGO_TARGET_DIR` (relative to the
/// current directory), else the nearest ancestor of the test binary holding `CACHEDIR.TAG`
/// (cargo writes one in every target directory), else `target` under `CARGO_MANIFEST_DIR`,
/// else the temp directory.
pub(crate) fn default_root(env: &Env) -> PathBuf {
    let target = if let Some(dir) = &env.cargo_target_dir {
        let dir = PathBuf::from(dir);
        match (&env.current_dir, dir.is_relative()) {
            (Some(cwd), true) => cwd.join(dir),
            _ => dir,
        }
    } else if let Some(dir) = env.current_exe.as_deref().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .find(|a| a.join("CACHEDIR.TAG").is_file())
    }) {
        dir.to_path_buf()
    } else if let Some(manifest) = &env.manifest_dir {
        PathBuf::from(manifest).join("target")
    } else {
        env.temp_dir.clone()
    };
    target.join("smolvm-harness")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_become_one_safe_component() {
        assert_eq!(path_component("vm::boots"), "vm__boots");
        assert_eq!(path_component("a b/c\\d"), "a_b_c_d");
        assert_eq!(path_component("x.y-z_1"), "x.y-z_1");
        assert_eq!(path_component("café"), "caf_");
        assert_eq!(path_component(".."), "__");
        assert_eq!(path_component("."), "_");
        assert_eq!(path_component(""), "_");
        assert_eq!(path_component("../../etc"), ".._.._etc");
    }

    #[test]
    fn the_root_follows_cargo() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        let exe_dir = target.join("debug").join("deps");
        std::fs::create_dir_all(&exe_dir).unwrap();
        let env = |cargo: Option<&str>, tag: bool, manifest: Option<&str>| {
            let tag_file = target.join("CACHEDIR.TAG");
            if tag {
                std::fs::write(&tag_file, "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
            } else {
                let _ = std::fs::remove_file(&tag_file);
            }
            default_root(&Env {
                cargo_target_dir: cargo.map(OsString::from),
                current_dir: Some(PathBuf::from("/work/here")),
                current_exe: Some(exe_dir.join("suite-0123")),
                manifest_dir: manifest.map(OsString::from),
                temp_dir: PathBuf::from("/tmp"),
            })
        };
        assert_eq!(
            env(Some("/abs/t"), true, Some("/m")),
            PathBuf::from("/abs/t/smolvm-harness")
        );
        assert_eq!(
            env(Some("rel/t"), true, Some("/m")),
            PathBuf::from("/work/here/rel/t/smolvm-harness")
        );
        assert_eq!(env(None, true, Some("/m")), target.join("smolvm-harness"));
        assert_eq!(
            env(None, false, Some("/m")),
            PathBuf::from("/m/target/smolvm-harness")
        );
        assert_eq!(env(None, false, None), PathBuf::from("/tmp/smolvm-harness"));
    }

    #[test]
    fn a_missing_log_is_empty_and_a_huge_one_keeps_its_tail() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            read_log(&Smolvm::simulated(), "m", &tmp.path().join("nope.log")).unwrap(),
            ""
        );
        let path = tmp.path().join("big.log");
        let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
        let mut text = line.repeat((LOG_LIMIT as usize / line.len()) + 10);
        text.push_str("the end\n");
        std::fs::write(&path, &text).unwrap();
        let log = read_log(&Smolvm::simulated(), "m", &path).unwrap();
        assert!(log.starts_with("[… "), "{}", &log[..200]);
        assert!(log.contains("of big.log left out"), "{}", &log[..200]);
        assert!(log.ends_with("the end\n"));
        let body = log.split_once('\n').unwrap().1;
        assert!(body.len() as u64 <= LOG_LIMIT);
        assert!(body.starts_with(line), "cut at a line start");
    }

    #[test]
    fn report_lines() {
        let hint = "smolvm machine data-dir --name m1";
        let off = Saved::Off.report_lines(hint);
        assert!(off.contains(hint) && off.contains("SMOLVM_HARNESS_ARTIFACTS=never"));
        let failed = Saved::Failed("could not create /x: denied".into()).report_lines(hint);
        assert!(
            failed.contains(hint) && failed.contains("denied"),
            "{failed}"
        );
        let written = Saved::Written {
            dir: PathBuf::from("/t/smolvm-harness/a__b/m1"),
            files: vec!["console.log", "transcript.txt"],
            missing: None,
        }
        .report_lines(hint);
        assert_eq!(
            written,
            "  artifacts: /t/smolvm-harness/a__b/m1 (console.log, transcript.txt)\n"
        );
        // No console log (data-dir failed): the transcript is there, and the hint says why.
        let partial = Saved::Written {
            dir: PathBuf::from("/t/x/m1"),
            files: vec!["transcript.txt"],
            missing: Some("machine data-dir failed: vm not found".into()),
        }
        .report_lines(hint);
        assert!(
            partial.starts_with("  artifacts: /t/x/m1 (transcript.txt)\n"),
            "{partial}"
        );
        assert!(
            partial.contains("console log not saved: machine data-dir failed"),
            "{partial}"
        );
        assert!(partial.contains(hint), "{partial}");
    }
}
