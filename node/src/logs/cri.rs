//! The CRI log format, one record per line:
//! `<RFC 3339 timestamp, nanoseconds> <stdout|stderr> <F|P> <content>\n`.
//!
//! `F` closes a line; `P` is a piece of a line that went on (lines longer than [`MAX_LINE`]
//! are cut into pieces, as containerd's CRI plugin does).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The longest piece of a line one record carries (containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name in the file (`stdout`, `stderr`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed record, borrowing the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The timestamp exactly as written.
    pub timestamp: &'a str,
    /// The timestamp, parsed.
    pub time: OffsetDateTime,
    pub stream: Stream,
    /// `P`: the line continues in the next record of the same stream.
    pub partial: bool,
    /// The content, without the line's trailing newline.
    pub content: &'a [u8],
}

/// Formats `time` like Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction dropped).
pub fn format_timestamp(time: OffsetDateTime) -> String {
    let t = time.to_offset(time::UtcOffset::UTC);
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Appends one record (with its newline) to `out`.
pub fn encode(out: &mut Vec<u8>, timestamp: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Parses one line (with or without its trailing newline); `None` when it is not a CRI record.
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or(b"");
    let time = OffsetDateTime::parse(timestamp, &Rfc3339).ok()?;
    Some(Record {
        timestamp,
        time,
        stream,
        partial,
        content,
    })
}

/// Cuts one stream's output into line pieces: whole lines end a record (`F`), and a line that
/// grows past [`MAX_LINE`] is emitted in `P` pieces. Bytes of an unfinished line wait for more.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data` and calls `emit(partial, content)` for each finished piece.
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        while !data.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                self.pending.extend_from_slice(&window[..nl]);
                emit(false, &self.pending);
                self.pending.clear();
                data = &data[nl + 1..];
            } else {
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
                if self.pending.len() == MAX_LINE {
                    emit(true, &self.pending);
                    self.pending.clear();
                }
            }
        }
    }

    /// At the end of the stream: an unfinished line becomes a last `F` record.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(false, &self.pending);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        for c in chunks {
            s.feed(c, |p, c| out.push((p, c.to_vec())));
        }
        s.finish(|p, c| out.push((p, c.to_vec())));
        out
    }

    #[test]
    fn splitter_joins_chunks_and_cuts_long_lines() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\n"]),
            vec![
                (false, b"hello".to_vec()),
                (false, b"world".to_vec()),
                (false, b"".to_vec())
            ]
        );
        assert_eq!(split(&[b"tail"]), vec![(false, b"tail".to_vec())]);
        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input]);
        assert_eq!(out.len(), 3);
        assert!(out[0].0 && out[1].0 && !out[2].0);
        assert_eq!(out[0].1.len(), MAX_LINE);
        assert_eq!(out[2].1, b"xxx");
        // Exactly MAX_LINE then a newline: one P piece then an empty F that ends the line.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let out = split(&[&exact]);
        assert_eq!(out, vec![(true, vec![b'y'; MAX_LINE]), (false, vec![])]);
    }

    #[test]
    fn encode_then_parse() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            "2016-10-06T00:17:09.669794202Z",
            Stream::Stderr,
            true,
            b"a b c",
        );
        assert_eq!(buf, b"2016-10-06T00:17:09.669794202Z stderr P a b c\n");
        let r = parse(&buf).unwrap();
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.content, b"a b c");
        assert_eq!(r.time.nanosecond(), 669794202);
        assert_eq!(
            parse(b"2016-10-06T00:17:09Z stdout F ").unwrap().content,
            b""
        );
        for bad in [
            &b"garbage"[..],
            b"2016-10-06T00:17:09Z stdin F x",
            b"x stdout F y",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn timestamps_look_like_go_rfc3339nano() {
        let t = time::macros::datetime!(2016-10-06 00:17:09.669794200 UTC);
        assert_eq!(format_timestamp(t), "2016-10-06T00:17:09.6697942Z");
        let t = time::macros::datetime!(2016-10-06 00:17:09 UTC);
        assert_eq!(format_timestamp(t), "2016-10-06T00:17:09Z");
    }
}
