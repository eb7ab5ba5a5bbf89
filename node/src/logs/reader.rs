//! Reads a container's CRI log back as plain output, the way kubelet answers
//! `GET /containerLogs`: the rotated files oldest first, then the current one; `tailLines`
//! counts records back across rotated files; `follow` keeps reading the current file (and the
//! file that replaces it on rotation) until the container stops or the client goes away.
//!
//! Reading is plain blocking file I/O, meant to run on a blocking thread
//! (`tokio::task::spawn_blocking`); output goes to a channel the HTTP body drains.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::cri;
use super::writer::rotated_files;

/// How often a follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// What the client asked for (kubelet's `PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new output until the container stops.
    pub follow: bool,
    /// Only the last N records (all when `None`).
    pub tail_lines: Option<u64>,
    /// Prefix each record with its RFC 3339 timestamp and a space.
    pub timestamps: bool,
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// Why logs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "log file {path} does not exist (the container has not started, or its logs were removed)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read log file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the output goes: chunks of bytes. A closed receiver (the client left) ends reading.
pub type Output = mpsc::Sender<Vec<u8>>;

/// Checks that `path` can be served (so an HTTP error can be answered before streaming).
pub fn check(path: &Path) -> Result<(), ReadError> {
    if path.exists() || !rotated_files(path).is_empty() {
        Ok(())
    } else {
        Err(ReadError::Missing {
            path: path.to_path_buf(),
        })
    }
}

/// Streams the log at `path` into `out` following `opts`. `running` tells a follower whether
/// the container may still write; once it says no, the rest is read and the stream ends.
pub fn read(
    path: &Path,
    opts: &LogOptions,
    out: &Output,
    running: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), ReadError> {
    check(path)?;
    let mut files = rotated_files(path);
    files.push(path.to_path_buf());
    let (first, offset) = match opts.tail_lines {
        Some(n) => tail_start(&files, n)?,
        None => (0, 0),
    };
    let mut sink = Sink {
        out,
        opts,
        written: 0,
        buf: Vec::new(),
    };
    let last = files.len() - 1;
    for (i, file) in files.iter().enumerate().skip(first) {
        let start = if i == first { offset } else { 0 };
        let Some(reader) = open_at(file, start)? else {
            continue;
        };
        if i == last && opts.follow {
            return follow(path, reader, &mut sink, running);
        }
        if read_to_end(file, reader, &mut sink, i == last)?.is_break() {
            return Ok(());
        }
    }
    sink.flush();
    Ok(())
}

/// Opens `path` at `offset`; `None` when it vanished (rotated away and removed).
fn open_at(path: &Path, offset: u64) -> Result<Option<BufReader<File>>, ReadError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReadError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    file.seek(SeekFrom::Start(offset))
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Some(BufReader::new(file)))
}

/// Finds where the last `n` records begin: (index into `files`, byte offset).
fn tail_start(files: &[PathBuf], n: u64) -> Result<(usize, u64), ReadError> {
    let mut wanted = n;
    for (i, path) in files.iter().enumerate().rev() {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ReadError::Io {
                    path: path.clone(),
                    source,
                })
            }
        };
        if wanted == 0 {
            return Ok((i, data.len() as u64));
        }
        // Record starts from the end: after each newline but the last byte's.
        let body = data.strip_suffix(b"\n").unwrap_or(&data);
        let mut end = body.len();
        loop {
            match body[..end].iter().rposition(|&b| b == b'\n') {
                Some(nl) => {
                    wanted -= 1;
                    if wanted == 0 {
                        return Ok((i, nl as u64 + 1));
                    }
                    end = nl;
                }
                None => {
                    if !body.is_empty() {
                        wanted -= 1;
                    }
                    if wanted == 0 {
                        return Ok((i, 0));
                    }
                    break;
                }
            }
        }
    }
    Ok((0, 0))
}

/// Reads whole records until end of file. An unfinished last line of the current file is left
/// out (its writer is mid-record); one in a rotated file is taken as it is.
fn read_to_end(
    path: &Path,
    mut reader: BufReader<File>,
    sink: &mut Sink<'_>,
    current: bool,
) -> Result<std::ops::ControlFlow<()>, ReadError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| ReadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 || (current && !line.ends_with(b"\n")) {
            return Ok(std::ops::ControlFlow::Continue(()));
        }
        if sink.record(&line).is_break() {
            return Ok(std::ops::ControlFlow::Break(()));
        }
    }
}

/// Follows the current file: new records as they come, across rotations, until the container
/// stops (`running` says no; what is left is read first) or the client leaves.
fn follow(
    path: &Path,
    mut reader: BufReader<File>,
    sink: &mut Sink<'_>,
    running: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut line = Vec::new();
    let mut stopping = false;
    loop {
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n > 0 && line.ends_with(b"\n") {
            if sink.record(&line).is_break() {
                return Ok(());
            }
            line.clear();
            continue;
        }
        // End of what is written so far.
        sink.flush();
        if sink.out.is_closed() || stopping {
            return Ok(());
        }
        let ino = reader.get_ref().metadata().map_err(io)?.ino();
        match std::fs::metadata(path) {
            Ok(m) if m.ino() != ino => {
                // Rotated: the old file is complete; go on with the new one from its start.
                if !line.is_empty() {
                    let _ = sink.record(&line);
                    line.clear();
                }
                if let Some(r) = open_at(path, 0)? {
                    reader = r;
                    continue;
                }
            }
            _ => {}
        }
        if !running() {
            // One more pass picks up what was written before the container stopped.
            stopping = true;
            continue;
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Formats records for the client and keeps count of `limitBytes`.
struct Sink<'a> {
    out: &'a Output,
    opts: &'a LogOptions,
    written: u64,
    buf: Vec<u8>,
}

impl Sink<'_> {
    /// Adds one record's output; `Break` when the client is gone or the byte limit is reached.
    fn record(&mut self, line: &[u8]) -> std::ops::ControlFlow<()> {
        let Some(record) = cri::parse(line) else {
            return std::ops::ControlFlow::Continue(());
        };
        if self.opts.since.is_some_and(|since| record.time < since) {
            return std::ops::ControlFlow::Continue(());
        }
        let mut text = Vec::with_capacity(record.content.len() + 40);
        if self.opts.timestamps {
            text.extend_from_slice(record.timestamp.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(record.content);
        if !record.partial {
            text.push(b'\n');
        }
        let mut stop = false;
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.written);
            if text.len() as u64 >= left {
                text.truncate(left as usize);
                stop = true;
            }
        }
        self.written += text.len() as u64;
        self.buf.extend_from_slice(&text);
        if self.buf.len() >= 32 * 1024 {
            self.flush();
        }
        if stop {
            self.flush();
            return std::ops::ControlFlow::Break(());
        }
        if self.out.is_closed() {
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.out.blocking_send(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::cri::Stream;
    use crate::logs::writer::LogWriter;
    use crate::logs::LogLimits;

    fn t(secs: i64) -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00:00 UTC) + time::Duration::seconds(secs)
    }

    /// A log with rotated files: records "line 0".."line 59", one second apart.
    fn rotated_log(dir: &Path) -> PathBuf {
        let path = dir.join("0.log");
        let mut w = LogWriter::open(
            &path,
            LogLimits {
                max_size: 1024,
                max_files: 10,
            },
        )
        .unwrap();
        for i in 0..60 {
            w.write(t(i), Stream::Stdout, false, format!("line {i}").as_bytes())
                .unwrap();
        }
        assert!(rotated_files(&path).len() >= 2, "the test wants rotation");
        path
    }

    fn collect(path: &Path, opts: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(1024);
        read(path, &opts, &tx, &|| false).unwrap();
        drop(tx);
        let mut all = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            all.extend(chunk);
        }
        String::from_utf8(all).unwrap()
    }

    fn lines(range: std::ops::Range<i64>) -> String {
        range.map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn options() {
        let dir = tempfile::tempdir().unwrap();
        let path = rotated_log(dir.path());
        let check = |opts: LogOptions, want: String| {
            assert_eq!(collect(&path, opts.clone()), want, "{opts:?}");
        };
        check(LogOptions::default(), lines(0..60));
        for n in [0, 1, 5, 25, 59, 60, 100] {
            let tail = LogOptions {
                tail_lines: Some(n),
                ..Default::default()
            };
            check(tail, lines((60 - n as i64).max(0)..60));
        }
        check(
            LogOptions {
                since: Some(t(50)),
                ..Default::default()
            },
            lines(50..60),
        );
        check(
            LogOptions {
                tail_lines: Some(2),
                timestamps: true,
                ..Default::default()
            },
            "2026-01-01T00:00:58Z line 58\n2026-01-01T00:00:59Z line 59\n".to_string(),
        );
        check(
            LogOptions {
                limit_bytes: Some(10),
                ..Default::default()
            },
            "line 0\nlin".to_string(),
        );
    }

    #[test]
    fn partial_records_join_and_unfinished_lines_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:00Z stdout P abc\n\
             2026-01-01T00:00:00Z stdout F def\n\
             not a record\n\
             2026-01-01T00:00:01Z stderr F err\n\
             2026-01-01T00:00:02Z stdout F unfinish",
        )
        .unwrap();
        assert_eq!(collect(&path, LogOptions::default()), "abcdef\nerr\n");
        let missing = read(
            &dir.path().join("9.log"),
            &LogOptions::default(),
            &mpsc::channel(1).0,
            &|| false,
        );
        assert!(matches!(missing, Err(ReadError::Missing { .. })));
    }

    #[test]
    fn follow_sees_new_records_and_rotation_then_ends_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let limits = LogLimits {
            max_size: 1024,
            max_files: 5,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        w.write(t(0), Stream::Stdout, false, b"first").unwrap();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel(1024);
        let reader = {
            let (path, running) = (path.clone(), running.clone());
            std::thread::spawn(move || {
                let opts = LogOptions {
                    follow: true,
                    ..Default::default()
                };
                read(&path, &opts, &tx, &|| {
                    running.load(std::sync::atomic::Ordering::SeqCst)
                })
            })
        };
        let first = rx.blocking_recv().unwrap();
        assert_eq!(first, b"first\n");
        // Enough to rotate several times while the reader follows.
        for i in 1..40 {
            w.write(
                t(i),
                Stream::Stdout,
                false,
                format!("{i:02}{}", "y".repeat(60)).as_bytes(),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(!rotated_files(&path).is_empty());
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap().unwrap();
        let mut rest = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            rest.extend(chunk);
        }
        let rest = String::from_utf8(rest).unwrap();
        let numbers: Vec<u32> = rest.lines().map(|l| l[..2].parse().unwrap()).collect();
        assert_eq!(numbers, (1..40).collect::<Vec<u32>>());
    }
}
