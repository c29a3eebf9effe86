//! Video sources: where a session's pictures or access units come from.
//!
//! A source is pulled by the pipeline thread once per frame interval; it either draws a raw
//! picture (test pattern, and later V4L2 capture) or hands over an already encoded access unit
//! (an H.264 file, and later the payload feed), which the pipeline passes through without
//! re-encoding.

pub mod file;
pub mod pattern;

use crate::media::frame::RawFrame;
use crate::media::quality::Rung;
use bytes::Bytes;
use std::fmt;
use std::str::FromStr;

/// What a source yields for one frame interval.
pub enum SourceFrame<'a> {
    /// A picture to encode, already at the size the rung asks for.
    Raw(&'a RawFrame),
    /// An H.264 access unit (Annex-B) to pass through.
    Encoded {
        /// The access unit.
        data: Bytes,
        /// True when a decoder can start here.
        keyframe: bool,
    },
}

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The input holds nothing usable.
    #[error("{path}: {why}")]
    Invalid {
        /// The input.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A source of video for one lens of one session.
pub trait VideoSource: Send {
    /// Yields the next frame. `rung` is the output format in force; raw sources draw at its
    /// size, encoded sources ignore it.
    fn next_frame(&mut self, rung: &Rung) -> Result<SourceFrame<'_>, SourceError>;
}

/// Where a lens takes its video from, as written in the config (`pattern`, `pattern:zoom`,
/// `file:/path/clip.h264`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The synthetic test pattern; `None` picks the style named after the lens.
    Pattern(Option<pattern::Style>),
    /// An H.264 Annex-B file, looped.
    File(String),
}

/// A source URI that does not name a known kind of source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source {uri:?}: {why}")]
pub struct SourceSpecError {
    uri: String,
    why: String,
}

impl FromStr for SourceSpec {
    type Err = SourceSpecError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| SourceSpecError {
            uri: uri.to_string(),
            why: why.to_string(),
        };
        if uri == "pattern" {
            return Ok(SourceSpec::Pattern(None));
        }
        if let Some(style) = uri.strip_prefix("pattern:") {
            return style
                .parse()
                .map(|s| SourceSpec::Pattern(Some(s)))
                .map_err(|_| err("pattern styles are normal, wide, zoom and ir"));
        }
        if let Some(path) = uri.strip_prefix("file:") {
            if path.is_empty() {
                return Err(err("file: needs a path"));
            }
            return Ok(SourceSpec::File(path.to_string()));
        }
        if uri.starts_with("v4l2:") || uri.starts_with("feed:") {
            return Err(err(
                "V4L2 and payload-feed sources are not available in this build",
            ));
        }
        Err(err("expected pattern, pattern:STYLE or file:PATH"))
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Pattern(None) => f.write_str("pattern"),
            SourceSpec::Pattern(Some(s)) => write!(f, "pattern:{s}"),
            SourceSpec::File(p) => write!(f, "file:{p}"),
        }
    }
}

impl SourceSpec {
    /// Opens the source for a lens (`lens_name` picks the pattern style when none is given).
    pub fn open(&self, lens_name: &str) -> Result<Box<dyn VideoSource>, SourceError> {
        match self {
            SourceSpec::Pattern(style) => {
                let style = style.unwrap_or_else(|| lens_name.parse().unwrap_or_default());
                Ok(Box::new(pattern::PatternSource::new(style)))
            }
            SourceSpec::File(path) => Ok(Box::new(file::FileSource::open(path)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_uris() {
        assert_eq!("pattern".parse(), Ok(SourceSpec::Pattern(None)));
        assert_eq!(
            "pattern:zoom".parse(),
            Ok(SourceSpec::Pattern(Some(pattern::Style::Zoom)))
        );
        assert_eq!(
            "file:/tmp/a.h264".parse(),
            Ok(SourceSpec::File("/tmp/a.h264".into()))
        );
        for bad in ["", "pattern:nope", "file:", "rtsp://x", "v4l2:/dev/video0"] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad}");
        }
    }
}
