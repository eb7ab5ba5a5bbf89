//! `skiff-node log-driver`: the process containerd's shim starts per container for a
//! `binary://` log URI ([`super::log_uri`]).
//!
//! The shim's protocol (containerd 1.6, `pkg/process/io.go`): the container's stdout and
//! stderr arrive as the read ends of pipes on fds 3 and 4; fd 5 is the write end of a pipe the
//! shim reads until the driver writes to it or closes it ("ready"), and only then starts the
//! container; `CONTAINER_ID` and `CONTAINER_NAMESPACE` are in the environment (and nothing
//! else, not even `PATH`). The URI's query pairs become the arguments, in no fixed order. The
//! driver exits when both pipes reach end of file (the container's output is closed), or on
//! the shim's SIGTERM.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{FromRawFd as _, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::cri::{LineSplitter, Stream};
use super::writer::LogWriter;
use super::LogLimits;

/// The argument that marks a log-driver invocation, wherever containerd put it.
pub const MARKER: &str = "log-driver";

const STDOUT_FD: RawFd = 3;
const STDERR_FD: RawFd = 4;
const READY_FD: RawFd = 5;

/// What the driver was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub path: PathBuf,
    pub limits: LogLimits,
}

/// Whether this process was started as a log driver (`args` without the program name).
pub fn is_invoked(args: &[String]) -> bool {
    args.iter().any(|a| a == MARKER)
}

/// Reads `--path P --max-size N --max-files N` as pairs in any order; the marker and the empty
/// values containerd adds for valueless query keys are skipped.
pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut path = None;
    let mut limits = LogLimits::default();
    let mut it = args.iter().filter(|a| !a.is_empty() && *a != MARKER);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("log-driver: {flag} needs a value"))?;
        match flag.as_str() {
            "--path" => path = Some(PathBuf::from(value)),
            "--max-size" => {
                limits.max_size = value
                    .parse()
                    .map_err(|_| format!("log-driver: --max-size {value:?} is not a byte count"))?
            }
            "--max-files" => {
                limits.max_files = value
                    .parse()
                    .map_err(|_| format!("log-driver: --max-files {value:?} is not a count"))?
            }
            other => return Err(format!("log-driver: unknown flag {other:?}")),
        }
    }
    let path = path.ok_or("log-driver: --path is required (the container's log file)")?;
    Ok(Args { path, limits })
}

/// Runs the driver until the container's output ends; returns the process exit code.
/// Errors go to stderr, which the shim discards, so they are also written into the log.
pub fn run(args: &[String]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            signal_ready();
            return 2;
        }
    };
    let writer = match LogWriter::open(&args.path, args.limits) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            eprintln!("log-driver: {e}");
            // Still say ready: the container should run even when its log cannot be kept,
            // and the shim drains nothing otherwise; its output pipes are closed on our exit.
            signal_ready();
            return 1;
        }
    };
    // SAFETY: the shim passes these fds (ExtraFiles); nothing else in this process owns them.
    let (stdout, stderr) = unsafe {
        (
            fd_file(STDOUT_FD).map(|fd| File::from_raw_fd(fd)),
            fd_file(STDERR_FD).map(|fd| File::from_raw_fd(fd)),
        )
    };
    signal_ready();
    let mut threads = Vec::new();
    for (file, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
        let Some(file) = file else { continue };
        let writer = writer.clone();
        threads.push(std::thread::spawn(move || copy(file, stream, &writer)));
    }
    for t in threads {
        let _ = t.join();
    }
    0
}

/// Copies one stream into the log until end of file.
fn copy(mut file: File, stream: Stream, writer: &Mutex<LogWriter>) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut emit = |partial: bool, content: &[u8]| {
        let now = OffsetDateTime::now_utc();
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write(now, stream, partial, content) {
            eprintln!("log-driver: {e}");
        }
    };
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => splitter.feed(&buf[..n], &mut emit),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("log-driver: reading {}: {e}", stream.as_str());
                break;
            }
        }
    }
    splitter.finish(&mut emit);
}

/// `fd` when it is open.
fn fd_file(fd: RawFd) -> Option<RawFd> {
    // SAFETY: F_GETFD only queries the descriptor's flags.
    (unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then_some(fd)
}

/// Closes fd 5, which tells the shim it may start the container.
fn signal_ready() {
    if fd_file(READY_FD).is_some() {
        // SAFETY: fd 5 is the ready pipe the shim gave us and nothing else uses it.
        unsafe {
            libc::close(READY_FD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_in_any_order() {
        let want = Args {
            path: PathBuf::from("/l/0.log"),
            limits: LogLimits {
                max_size: 100,
                max_files: 3,
            },
        };
        for args in [
            strings(&[
                "log-driver",
                "",
                "--path",
                "/l/0.log",
                "--max-size",
                "100",
                "--max-files",
                "3",
            ]),
            strings(&[
                "--max-files",
                "3",
                "log-driver",
                "",
                "--path",
                "/l/0.log",
                "--max-size",
                "100",
            ]),
        ] {
            assert!(is_invoked(&args));
            assert_eq!(parse_args(&args).unwrap(), want);
        }
        assert!(parse_args(&strings(&["log-driver", "--max-size", "1"])).is_err());
        assert!(parse_args(&strings(&["--path", "/x", "--max-size", "big"])).is_err());
        assert!(parse_args(&strings(&["--path"])).is_err());
        assert!(!is_invoked(&strings(&["hollow"])));
    }
}
