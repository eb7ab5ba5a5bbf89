//! Writes CRI records to a container's log file and rotates it by size, as kubelet's container
//! log manager does: the full file is renamed to `<file>.<YYYYMMDD-hhmmss>` and a new one
//! started; only the newest `max_files - 1` rotated files are kept.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::cri::{self, Stream};
use super::LogLimits;

/// Why a log file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot {action} log file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// An open container log file.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    /// Opens (appending) or creates `path`, and its directories.
    pub fn open(path: &Path, limits: LogLimits) -> Result<LogWriter, WriteError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create the directory of", path))?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map_err(io("stat", path))?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            limits: LogLimits {
                max_size: limits.max_size.max(1024),
                max_files: limits.max_files.max(2),
            },
        })
    }

    /// Writes one record stamped `now`, rotating first when it would not fit.
    pub fn write(
        &mut self,
        now: OffsetDateTime,
        stream: Stream,
        partial: bool,
        content: &[u8],
    ) -> Result<(), WriteError> {
        let mut line = Vec::with_capacity(content.len() + 48);
        cri::encode(
            &mut line,
            &cri::format_timestamp(now),
            stream,
            partial,
            content,
        );
        if self.size > 0 && self.size + line.len() as u64 > self.limits.max_size {
            self.rotate(now)?;
        }
        self.file
            .write_all(&line)
            .map_err(io("write to", &self.path))?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Renames the current file aside, starts a new one and removes the oldest rotated files.
    fn rotate(&mut self, now: OffsetDateTime) -> Result<(), WriteError> {
        let stamp = format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let mut rotated = suffixed(&self.path, &stamp);
        if rotated.exists() {
            // Two rotations within a second: a finer stamp that still sorts after the first.
            rotated = suffixed(&self.path, &format!("{stamp}.{:09}", now.nanosecond()));
        }
        std::fs::rename(&self.path, &rotated).map_err(io("rotate", &self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        let mut old = rotated_files(&self.path);
        let keep = self.limits.max_files - 1;
        if old.len() > keep {
            let excess = old.len() - keep;
            for path in old.drain(..excess) {
                // Best effort: a reader may still hold it open, which is fine on Linux.
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, WriteError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io("open", path))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// The rotated files of `path` (`<path>.<stamp>`), oldest first; compressed (`.gz`) and
/// temporary (`.tmp`) files are not logs to read.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && !n.ends_with(".gz") && !n.ends_with(".tmp"))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c").join("0.log");
        let limits = LogLimits {
            max_size: 1024,
            max_files: 3,
        };
        let mut w = LogWriter::open(&path, limits).unwrap();
        let start = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        // Each record is ~140 bytes: 7 fit in a file, so 40 records make 6 files.
        for i in 0..40u32 {
            let now = start + time::Duration::milliseconds(i64::from(i) * 300);
            let content = format!("{i:03}{}", "x".repeat(100));
            w.write(now, Stream::Stdout, false, content.as_bytes())
                .unwrap();
        }
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        for file in rotated.iter().chain([&path]) {
            let len = std::fs::metadata(file).unwrap().len();
            assert!(len <= 1024, "{} is {len} bytes", file.display());
        }
        // The newest records survive, in order, across the kept files.
        let mut all = Vec::new();
        for file in rotated.iter().chain([&path]) {
            all.extend(std::fs::read(file).unwrap());
        }
        let numbers: Vec<u32> = all
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let r = cri::parse(l).unwrap();
                std::str::from_utf8(&r.content[..3])
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(*numbers.last().unwrap(), 39);
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert!(numbers.len() < 40);
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let now = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        for text in ["one", "two"] {
            let mut w = LogWriter::open(&path, LogLimits::default()).unwrap();
            w.write(now, Stream::Stderr, false, text.as_bytes())
                .unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-01-01T00:00:00Z stderr F one\n2026-01-01T00:00:00Z stderr F two\n"
        );
    }
}
