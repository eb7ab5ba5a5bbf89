//! Persistent network namespaces, as `ip netns add` makes them, done in-process.
//!
//! A pod's network namespace must outlive any process in it (the sandbox is created before the
//! first container and torn down after the last), so it is pinned by a bind mount of the
//! namespace file onto `/run/netns/<name>`. `/run/netns` is made a shared mount point first,
//! like iproute2 does, so the pin propagates into the mount namespaces of runc's containers.
//!
//! Namespace switches happen on a short-lived helper thread: `unshare`/`setns` change only the
//! calling thread, and that thread ends with the work, so no other thread (and no tokio
//! worker) ever runs in the wrong namespace.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// Where named network namespaces are pinned (iproute2's directory).
pub const NETNS_DIR: &str = "/run/netns";

/// Creates a persistent network namespace pinned at `/run/netns/<name>` and returns that path.
///
/// Fails with `AlreadyExists` when the name is taken, and with `InvalidInput` for a name that
/// is not one plain path component.
pub fn create_netns(name: &str) -> io::Result<PathBuf> {
    check_name(name)?;
    let dir = Path::new(NETNS_DIR);
    {
        // One creator at a time prepares the directory, so it is bound onto itself only once.
        static PREPARE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = PREPARE.lock().unwrap_or_else(|p| p.into_inner());
        fs::create_dir_all(dir)?;
        make_shared(dir)?;
    }
    let path = dir.join(name);
    // The mount point: an empty file, created exclusively so two creators cannot share it.
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let target = path.clone();
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: unshare only changes this helper thread's network namespace; the thread
            // ends right after the bind mount below.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // /proc/thread-self, not /proc/self: the latter is the main thread's namespace.
            bind_mount(Path::new("/proc/thread-self/ns/net"), &target)
        })?
        .join()
        .map_err(|_| io::Error::other("the netns helper thread panicked"))?;
    if let Err(e) = pinned {
        let _ = fs::remove_file(&path);
        return Err(io::Error::new(
            e.kind(),
            format!("failed to create network namespace {}: {e}", path.display()),
        ));
    }
    Ok(path)
}

/// Removes the namespace pinned at `/run/netns/<name>`: unmounts the pin (lazily) and removes
/// the file. The namespace itself goes when its last process and open handle go. Removing a
/// namespace that does not exist succeeds.
pub fn remove_netns(name: &str) -> io::Result<()> {
    check_name(name)?;
    remove_netns_path(&Path::new(NETNS_DIR).join(name))
}

/// [`remove_netns`] for a full path (a namespace pinned somewhere other than `/run/netns`).
pub fn remove_netns_path(path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (already unmounted); ENOENT: gone.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(e);
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `f` on a helper thread that has entered the network namespace at `netns` (a path such
/// as `/run/netns/<name>` or `/proc/<pid>/ns/net`) and returns its result.
pub fn run_in_netns<F, R>(netns: &Path, f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let ns = File::open(netns).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("failed to open network namespace {}: {e}", netns.display()),
        )
    })?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns-exec".into())
            .spawn_scoped(s, move || -> io::Result<R> {
                // SAFETY: setns on a namespace file we hold open; it only changes this helper
                // thread, which ends when f returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = io::Error::last_os_error();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("failed to enter network namespace {}: {e}", netns.display()),
                    ));
                }
                Ok(f())
            })?
            .join()
            .map_err(|_| io::Error::other("the netns helper thread panicked"))?
    })
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network namespace name {name:?}: use one path component"),
        ));
    }
    Ok(())
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn bind_mount(source: &Path, target: &Path) -> io::Result<()> {
    let src = cstring(source)?;
    let dst = cstring(target)?;
    // SAFETY: both are valid NUL-terminated strings; fstype and data may be null for MS_BIND.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `dir` a shared mount point (binding it onto itself first if it is not a mount point
/// yet), as iproute2 does for `/run/netns`.
fn make_shared(dir: &Path) -> io::Result<()> {
    let d = cstring(dir)?;
    let shared = || {
        // SAFETY: d is a valid path; only propagation flags are changed.
        unsafe {
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        }
    };
    if shared() == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // EINVAL: not a mount point yet.
    // SAFETY: as in bind_mount.
    let rc = unsafe {
        libc::mount(
            d.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if shared() != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
