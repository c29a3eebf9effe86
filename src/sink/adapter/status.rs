//! What an adapter tells dockcast on its stdout, and the line splitting shared with stderr.
//!
//! The protocol is one JSON object per line with an `event` key:
//!
//! ```text
//! {"event":"publishing"}
//! {"event":"error","message":"join channel failed: 110"}
//! {"event":"stats","bitrate_bps":2400000,"fps":29.97}
//! ```
//!
//! Unknown keys are ignored and unknown events are reported as such, so adapters can print more
//! than this version understands. Pure: the sink feeds bytes and gets lines and events back.

use serde::Deserialize;

/// Longest line kept whole; an adapter printing megabytes without a newline must not make the
/// daemon buffer them.
pub const MAX_LINE: usize = 16 * 1024;

/// One event an adapter reported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum StatusEvent {
    /// The adapter's uplink accepted the stream; the sink reports `Publishing` on it when the
    /// adapter is configured to be ready on this event.
    Publishing,
    /// Something went wrong inside the adapter; logged, and quoted when the adapter then exits.
    Error {
        /// The adapter's words (may contain secrets: redact before logging).
        #[serde(default)]
        message: String,
    },
    /// Periodic figures for the log.
    Stats {
        /// Bits per second the adapter is sending, if it knows.
        #[serde(default)]
        bitrate_bps: Option<u64>,
        /// Frames per second the adapter is sending, if it knows.
        #[serde(default)]
        fps: Option<f64>,
    },
}

/// Why a stdout line is not a status event; the sink logs it (clipped, redacted) and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// Not a JSON object with a string `event`, or a known event with mistyped fields.
    #[error("not a status line: {reason}")]
    Malformed {
        /// serde_json's reason (it quotes no input beyond a token).
        reason: String,
    },
    /// A well-formed event this version does not know.
    #[error("unknown status event {event:?}")]
    UnknownEvent {
        /// The event name, clipped to 64 characters.
        event: String,
    },
}

/// Parses one stdout line (without its newline). Never panics, whatever the bytes.
pub fn parse_line(line: &str) -> Result<StatusEvent, StatusError> {
    let value: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| StatusError::Malformed {
            reason: e.to_string(),
        })?;
    let event = match value.get("event") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => {
            return Err(StatusError::Malformed {
                reason: "no string \"event\" key".into(),
            })
        }
    };
    match event.as_str() {
        "publishing" | "error" | "stats" => {
            serde_json::from_value(value).map_err(|e| StatusError::Malformed {
                reason: e.to_string(),
            })
        }
        _ => Err(StatusError::UnknownEvent {
            event: clip(&event, 64),
        }),
    }
}

/// `s` cut to at most `max` characters, with `…` when cut; for quoting adapter output in logs.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Splits a byte stream into lines with bounded memory.
///
/// A line longer than [`MAX_LINE`] is returned cut at that length with `truncated` set, and the
/// rest of it up to the next newline is discarded. Invalid UTF-8 is replaced, never fatal.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// In the middle of discarding the tail of an overlong line.
    discarding: bool,
}

/// One line out of a [`LineSplitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The text, without the newline (and without a `\r` before it).
    pub text: String,
    /// The line was longer than [`MAX_LINE`] and this is its beginning.
    pub truncated: bool,
}

impl LineSplitter {
    /// Feeds bytes and returns the lines they complete.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (part, rest, ends) = match newline {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.discarding {
                if ends {
                    self.discarding = false;
                }
                continue;
            }
            let room = MAX_LINE - self.buf.len();
            if part.len() > room {
                self.buf.extend_from_slice(&part[..room]);
                out.push(self.take(true));
                self.discarding = !ends;
                continue;
            }
            self.buf.extend_from_slice(part);
            if ends {
                out.push(self.take(false));
            }
        }
        out
    }

    /// The unterminated last line at end of stream, if any.
    pub fn finish(&mut self) -> Option<Line> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.take(false))
    }

    fn take(&mut self, truncated: bool) -> Line {
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        Line {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_three_events() {
        assert_eq!(
            parse_line(r#"{"event":"publishing"}"#),
            Ok(StatusEvent::Publishing)
        );
        assert_eq!(
            parse_line(r#" {"event":"error","message":"join failed","code":17} "#),
            Ok(StatusEvent::Error {
                message: "join failed".into()
            })
        );
        assert_eq!(
            parse_line(r#"{"event":"stats","bitrate_bps":2400000}"#),
            Ok(StatusEvent::Stats {
                bitrate_bps: Some(2_400_000),
                fps: None
            })
        );
        assert_eq!(
            parse_line(r#"{"event":"error"}"#),
            Ok(StatusEvent::Error {
                message: String::new()
            })
        );
    }

    #[test]
    fn rejects_what_is_not_a_status_line() {
        for line in [
            "",
            "frame=  100 fps=30",
            "[]",
            r#"{"event":5}"#,
            r#"{"evt":"publishing"}"#,
            r#"{"event":"stats","bitrate_bps":"fast"}"#,
            r#"{"event":"stats","bitrate_bps":-1}"#,
        ] {
            assert!(
                matches!(parse_line(line), Err(StatusError::Malformed { .. })),
                "{line:?}"
            );
        }
        assert_eq!(
            parse_line(r#"{"event":"joined"}"#),
            Err(StatusError::UnknownEvent {
                event: "joined".into()
            })
        );
    }

    #[test]
    fn splits_lines_and_cuts_overlong_ones() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab"), vec![]);
        let lines = s.push(b"c\r\nd\n\ne");
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["abc", "d", ""]);
        assert_eq!(s.finish().map(|l| l.text), Some("e".into()));

        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let lines = s.push(&long);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].truncated && lines[0].text.len() == MAX_LINE);
        // The tail of the long line is dropped up to its newline.
        let lines = s.push(b"yyy\nnext\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, "next");
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hé", 2), "hé");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = parse_line(&s);
        }

        #[test]
        fn parse_never_panics_on_jsonish(s in r#"\{("event":)?"?[a-z]{0,12}"?(,"[a-z_]{1,12}":[-0-9.e"a-z\[\]{}]{0,12}){0,3}\}"#) {
            let _ = parse_line(&s);
        }

        #[test]
        fn splitter_is_bounded_and_loses_no_short_line(
            lines in proptest::collection::vec("[a-z ]{0,40}", 0..20),
            chunk in 1usize..50,
        ) {
            let stream: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let mut s = LineSplitter::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                got.extend(s.push(piece).into_iter().map(|l| l.text));
            }
            prop_assert_eq!(got, lines);
        }

        #[test]
        fn splitter_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40_000)) {
            let mut s = LineSplitter::default();
            for l in s.push(&bytes) {
                prop_assert!(l.text.len() <= MAX_LINE * 3);
            }
            prop_assert!(s.buf.len() <= MAX_LINE);
        }
    }
}
