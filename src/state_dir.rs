//! The state directory (`SMOLVM_HARNESS_STATE_DIR`): the one place that creates it and decides
//! whether what is found there may be believed.
//!
//! Why this matters: the default lives in a directory every local user can write to (`/tmp`), so
//! another user can create it first, or plant entries in
//! it: a symlink where a log is appended to, a pack the victim then boots with her `--env`
//! values, lock files held forever. So, before any use:
//!
//! - the directory and each subdirectory are created with mode 0700 and then verified on an
//!   open handle (`O_NOFOLLOW`, `fstat`): not a symlink, a directory, owned by the effective
//!   uid, no access for group or others (see [`verify_dir`] for a directory of ours that is
//!   too open);
//! - files are opened with `O_NOFOLLOW` and checked on the opened handle to be regular files
//!   of ours with one link; anything else is refused, or, for files the harness creates
//!   anyway (locks, logs, stamps), removed and created afresh.
//!
//! Nothing is cached: a check is one `open` and one `fstat`, and re-checking on every use
//! also catches a directory removed and re-created by someone else while the process runs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::config::config;
use crate::error::{Error, Result};

/// How [`open`] and [`open_or_replace`] open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read an existing file (a cache entry): never created.
    Read,
    /// Read and write, created (mode 0600) if missing, never truncated: lock files, stamps.
    Lock,
    /// Write from the start, created (mode 0600) if missing, truncated once it is checked.
    Write,
    /// Append, created (mode 0600) if missing: logs.
    Append,
}

/// The configured state directory (`config()?.state_dir`), created if missing and verified.
pub(crate) fn root() -> Result<PathBuf> {
    root_at(&config()?.state_dir)
}

/// [`root`] for an explicit state directory (e.g. `config_or_default().state_dir`, where no
/// error can be returned): parents are created as usual, the directory itself with mode
/// 0700; then it is verified.
pub(crate) fn root_at(dir: &Path) -> Result<PathBuf> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io("create the parent of the state directory", parent, e))?;
    }
    ensure_dir(dir)?;
    Ok(dir.to_path_buf())
}

/// `root()/name`, created (mode 0700) if missing and verified, after the root itself.
pub(crate) fn subdir(name: &str) -> Result<PathBuf> {
    let dir = root()?.join(name);
    ensure_dir(&dir)?;
    Ok(dir)
}

/// Create `dir` (one level, mode 0700) if missing, and verify it: the building block of
/// [`root_at`] and [`subdir`], for deeper directories (a run's pack cache). Its parent must
/// already be a verified directory.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create state directory", dir, e)),
    }
    verify_dir(dir)
}

/// Open `path`, a file inside a verified state directory, without following a symlink, and
/// check on the opened handle that it is a regular file of ours with a single link (a hard
/// link could point at any file of ours elsewhere). A file that fails the check is refused
/// with an error that says why.
pub(crate) fn open(path: &Path, access: Access) -> Result<File> {
    open_checked(path, access).map_err(|e| Error::io(action(access), path, e))
}

/// [`open`], except that for a file the harness creates anyway ([`Access::Lock`],
/// [`Access::Write`], [`Access::Append`]) an entry that fails the check (a planted symlink,
/// another user's file, a hard link, a directory) is removed and a fresh file created: it is
/// never written through, and a foreign lock file cannot hold a slot forever. The removal
/// is said on stderr. [`Access::Read`] replaces nothing.
pub(crate) fn open_or_replace(path: &Path, access: Access) -> Result<File> {
    let mut last = None;
    // More than one round only when another process of ours races us to re-create it.
    for _ in 0..3 {
        match open_checked(path, access) {
            Ok(file) => return Ok(file),
            Err(e) if access != Access::Read && is_untrusted(&e) => {
                remove_entry(path)?;
                crate::diag::log(&format!(
                    "smolvm-harness: removed {} from the state directory: {e}",
                    path.display()
                ));
                last = Some(e);
            }
            Err(e) => return Err(Error::io(action(access), path, e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("could not be replaced"));
    Err(Error::io(action(access), path, e))
}

/// True if `path` is, right now, a regular file (not a symlink) of ours with a single link:
/// whether a cached file that something else opens by path (a pack) may be believed. Only
/// meaningful inside a verified state directory, where no one else can swap it afterwards.
pub(crate) fn is_own_file(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path)
            .is_ok_and(|m| m.is_file() && m.uid() == effective_uid() && m.nlink() == 1)
    }
    #[cfg(not(unix))]
    {
        fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
    }
}

fn action(access: Access) -> &'static str {
    match access {
        Access::Read => "read state file",
        Access::Lock => "open state file",
        Access::Write => "write state file",
        Access::Append => "append to state file",
    }
}

/// Why an entry of the state directory is not believed; carried inside an `io::Error` so
/// that [`open_or_replace`] can tell it from other failures.
#[derive(Debug)]
struct Untrusted(String);

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untrusted {}

fn untrusted(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Untrusted(why.into()))
}

fn is_untrusted(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Untrusted>())
}

/// Remove a refused entry. `remove_file` unlinks a symlink itself, never its target; a
/// directory planted where a file belongs goes whole.
fn remove_entry(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            "remove an untrusted entry of the state directory",
            path,
            e,
        )),
    }
}

#[cfg(unix)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Verify a directory on an open handle, so that what is checked is what is used: it must
/// not be a symlink, must be a directory and must belong to the effective uid.
///
/// A directory of ours that group or others can access is tightened to 0700 rather than
/// refused: earlier versions of the harness (and `create_dir_all` anywhere) made it with the
/// umask's mode, typically 0755, and refusing would break every existing setup for no gain.
/// Once it is 0700 no one else can add entries, and whatever they could have added while it
/// was open is caught one by one: each subdirectory is verified like this one, and each file
/// is opened without following symlinks and checked to be a regular file of ours with one
/// link ([`open`], [`is_own_file`]).
#[cfg(unix)]
fn verify_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let refuse = |why: String| {
        Error::io(
            "use the state directory",
            dir,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "it is not safe to use: {why}; remove it or set SMOLVM_HARNESS_STATE_DIR \
                     to a directory of your own"
                ),
            ),
        )
    };
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir);
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            return Err(match fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => refuse("it is a symbolic link".into()),
                Ok(m) if !m.is_dir() => refuse("it is not a directory".into()),
                _ => Error::io("open state directory", dir, e),
            })
        }
    };
    let meta = handle
        .metadata()
        .map_err(|e| Error::io("inspect state directory", dir, e))?;
    let me = effective_uid();
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if meta.uid() != me {
        return Err(refuse(format!(
            "it belongs to uid {} (you are {me})",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        handle
            .set_permissions(fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("restrict state directory to its owner", dir, e))?;
        // Said only when others could have written to it: 0755 (what earlier versions
        // made) let no one plant anything, and is tightened silently.
        if mode & 0o022 != 0 {
            crate::diag::log(&format!(
                "smolvm-harness: state directory {} had mode {mode:04o}; set it to 0700",
                dir.display()
            ));
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn verify_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::io(
            "use the state directory",
            dir,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "it is not a directory; set SMOLVM_HARNESS_STATE_DIR to a directory of your own",
            ),
        )),
        Err(e) => Err(Error::io("open state directory", dir, e)),
    }
}

#[cfg(unix)]
fn open_checked(path: &Path, access: Access) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;

    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Lock => options.read(true).write(true).create(true),
        // Not O_TRUNC: the file is truncated only once it is known to be ours.
        Access::Write => options.write(true).create(true),
        Access::Append => options.append(true).create(true),
    };
    // O_NONBLOCK: a planted FIFO must not block the open; cleared below for regular files.
    options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    let file = options.open(path).map_err(|e| {
        // O_NOFOLLOW on a symlink: ELOOP (Linux, macOS), EMLINK (FreeBSD).
        if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EMLINK)) {
            untrusted("it is a symbolic link")
        } else if fs::symlink_metadata(path).is_ok_and(|m| !m.is_file()) {
            // A directory, or a FIFO or socket with no peer (ENXIO).
            untrusted("it is not a regular file")
        } else {
            e
        }
    })?;
    let meta = file.metadata()?;
    let me = effective_uid();
    if !meta.is_file() {
        return Err(untrusted("it is not a regular file"));
    }
    if meta.uid() != me {
        return Err(untrusted(format!(
            "it belongs to uid {} (you are {me})",
            meta.uid()
        )));
    }
    if meta.nlink() != 1 {
        return Err(untrusted(format!("it has {} hard links", meta.nlink())));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns (through `file`), with integer flags.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(io::Error::last_os_error());
    }
    if access == Access::Write {
        file.set_len(0)?;
    }
    Ok(file)
}

#[cfg(not(unix))]
fn open_checked(path: &Path, access: Access) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Lock => options.read(true).write(true).create(true),
        Access::Write => options.write(true).create(true).truncate(true),
        Access::Append => options.append(true).create(true),
    };
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(untrusted("it is not a regular file"));
    }
    Ok(file)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn root_is_created_0700_with_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        assert_eq!(root_at(&dir).unwrap(), dir);
        assert_eq!(mode_of(&dir), 0o700);
        // Idempotent.
        root_at(&dir).unwrap();
    }

    #[test]
    fn a_symlinked_directory_is_refused_and_nothing_is_created_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        let link = tmp.path().join("state");
        symlink(&target, &link).unwrap();
        let err = root_at(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(err.contains("SMOLVM_HARNESS_STATE_DIR"), "{err}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
        // A regular file is refused too.
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let err = root_at(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn a_too_open_directory_of_ours_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let (done, said) = crate::diag::capture(|| root_at(&dir));
        done.unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert!(
            said[0].contains("had mode 0777; set it to 0700"),
            "{said:?}"
        );
    }

    #[test]
    fn files_are_opened_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let link = tmp.path().join("watcher.log");
        symlink(&victim, &link).unwrap();
        let err = open(&link, Access::Append).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let (f, said) = crate::diag::capture(|| open_or_replace(&link, Access::Append));
        assert!(said[0].contains("it is a symbolic link"), "{said:?}");
        f.unwrap().write_all(b"line\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&link).unwrap(), "line\n");
        assert!(is_own_file(&link));
        assert_eq!(mode_of(&link), 0o600);
    }

    #[test]
    fn hard_links_and_directories_are_not_believed() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs::write(&a, "x").unwrap();
        let b = tmp.path().join("b");
        fs::hard_link(&a, &b).unwrap();
        assert!(!is_own_file(&b));
        assert!(open(&b, Access::Read).is_err());
        // Replacing unlinks the second name, never truncating the shared file.
        let (f, said) = crate::diag::capture(|| open_or_replace(&b, Access::Write));
        f.unwrap();
        assert!(said[0].contains("2 hard links"), "{said:?}");
        assert_eq!(fs::read_to_string(&a).unwrap(), "x");
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        assert!(open(&d, Access::Lock).is_err());
        let (f, said) = crate::diag::capture(|| open_or_replace(&d, Access::Lock));
        f.unwrap();
        assert!(said[0].contains("not a regular file"), "{said:?}");
        assert!(is_own_file(&d));
    }

    #[test]
    fn write_truncates_and_read_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        open(&p, Access::Write)
            .unwrap()
            .write_all(b"long text")
            .unwrap();
        open(&p, Access::Write).unwrap().write_all(b"ab").unwrap();
        let mut s = String::new();
        open(&p, Access::Read)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "ab");
        assert!(open(&tmp.path().join("missing"), Access::Read).is_err());
        assert!(open_or_replace(&tmp.path().join("missing"), Access::Read).is_err());
    }

    #[test]
    fn a_fifo_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("fifo");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open(&p, Access::Read).is_err());
        let (f, said) = crate::diag::capture(|| open_or_replace(&p, Access::Lock));
        f.unwrap();
        assert!(said[0].contains("not a regular file"), "{said:?}");
        assert!(is_own_file(&p));
    }
}
