//! Video sources: where a session's pictures or access units come from.
//!
//! Two kinds of source exist. *Clocked* sources (test pattern, file) are pulled by the pipeline
//! once per frame interval of the session's clock. *Live* sources (V4L2 capture, the payload
//! feed) deliver at their own pace: the pipeline blocks on them for a bounded time and takes
//! their timestamps. Either kind yields a raw picture, which the pipeline scales and encodes,
//! or an already encoded access unit, which it passes through or transcodes.

pub mod feed;
pub mod file;
pub mod pattern;
pub mod v4l2;

use crate::media::frame::{Codec, RawFrame};
use crate::media::quality::Rung;
use bytes::Bytes;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What a source yields for one frame interval.
pub enum SourceFrame<'a> {
    /// A picture to encode; the pipeline scales it when it is not at the rung's size.
    Raw(&'a RawFrame),
    /// An encoded access unit (Annex-B, in the source's [`VideoSource::codec`]) to pass
    /// through or transcode.
    Encoded {
        /// The access unit.
        data: Bytes,
        /// True when a decoder can start here (an IDR, or a recovery point in a GDR stream).
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
    /// One frame could not be read (a truncated JPEG, a short buffer after a USB hiccup); the
    /// device goes on, and the pipeline skips the frame instead of reopening it.
    #[error("{device}: {why}")]
    BadFrame {
        /// The device node.
        device: String,
        /// What is wrong with the frame.
        why: String,
    },
    /// A capture device or feed endpoint failed (unplugged, closed, refused); the pipeline
    /// retries opening it with backoff.
    #[error("{device}: {source}")]
    Device {
        /// The device node or endpoint.
        device: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A source of video for one lens of one session.
pub trait VideoSource: Send {
    /// Yields the next frame. `rung` is the output format in force; synthetic sources draw at
    /// its size, others ignore it. A live source blocks until its next frame, for at most
    /// [`LIVE_WAIT`], and reports a timeout as [`SourceError::Device`].
    fn next_frame(&mut self, rung: &Rung) -> Result<SourceFrame<'_>, SourceError>;

    /// Codec of the [`SourceFrame::Encoded`] units it yields. H.265 always passes through (there
    /// is no H.265 decoder to transcode with) and only sinks that carry it accept it.
    fn codec(&self) -> Codec {
        Codec::H264
    }

    /// True for sources that deliver at their own pace (capture devices, feeds): the pipeline
    /// then waits on [`wait_frame`](Self::wait_frame) instead of its own clock.
    fn is_live(&self) -> bool {
        false
    }

    /// Waits at most `wait` for the next frame; `None` when none came. Clocked sources answer
    /// at once.
    fn wait_frame(
        &mut self,
        rung: &Rung,
        _wait: Duration,
    ) -> Result<Option<SourceFrame<'_>>, SourceError> {
        self.next_frame(rung).map(Some)
    }

    /// Capture time of the frame last returned, on the source's own clock (driver timestamp,
    /// feed header); the pipeline maps it onto the session's clock. `None`: use the session's
    /// frame clock.
    fn timestamp(&self) -> Option<Duration> {
        None
    }

    /// The picture last returned as [`SourceFrame::Raw`], again, so the pipeline can read its
    /// timestamp first and then encode the picture without copying it. Raw sources implement
    /// it; encoded ones keep the default.
    fn current_picture(&self) -> Option<&RawFrame> {
        None
    }

    /// Asks the producer for an intra frame where it can be asked (the payload feed's request
    /// line); a no-op elsewhere.
    fn request_keyframe(&mut self) {}

    /// Something worth reporting that is not a failure (a stalled feed), taken once.
    fn take_notice(&mut self) -> Option<String> {
        None
    }
}

/// Longest time a live source blocks the pipeline thread waiting for a frame, so controls
/// (lens, quality, keyframe, stop) are applied within this bound even when the camera or feed
/// has gone quiet.
pub const LIVE_WAIT: Duration = Duration::from_millis(40);

/// Where a lens takes its video from, as written in the config (`pattern`, `pattern:zoom`,
/// `pattern:zoom?clock=1`, `file:/path/clip.h264`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The synthetic test pattern; a `None` style picks the style named after the lens.
    Pattern(Option<pattern::Style>, pattern::PatternOptions),
    /// An H.264 Annex-B file, looped.
    File(String),
    /// A V4L2 capture device (`v4l2:/dev/videoN?format=..&width=..&height=..&fps=..`).
    V4l2(v4l2::V4l2Spec),
    /// H.264 from a payload app (`feed:unix:PATH`, `feed:tcp:HOST:PORT`, `feed:fifo:PATH`).
    Feed(feed::FeedSpec),
    /// A source made by a test, to exercise failure and recovery without hardware.
    #[cfg(test)]
    Fake(FakeSpec),
}

/// A test's factory of sources: each open calls it (so a test decides when opening fails).
#[cfg(test)]
#[derive(Clone)]
pub struct FakeSpec(
    pub std::sync::Arc<dyn Fn() -> Result<Box<dyn VideoSource>, SourceError> + Send + Sync>,
);

#[cfg(test)]
impl fmt::Debug for FakeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FakeSpec")
    }
}

#[cfg(test)]
impl PartialEq for FakeSpec {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
impl Eq for FakeSpec {}

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
        let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
        if base == "pattern" || base.starts_with("pattern:") {
            let style = match base.strip_prefix("pattern:") {
                None => None,
                Some(style) => Some(
                    style
                        .parse()
                        .map_err(|_| err("pattern styles are normal, wide, zoom and ir"))?,
                ),
            };
            let options: pattern::PatternOptions = query
                .parse()
                .map_err(|e: pattern::PatternOptionError| err(&e.to_string()))?;
            return Ok(SourceSpec::Pattern(style, options));
        }
        if let Some(path) = uri.strip_prefix("file:") {
            if path.is_empty() {
                return Err(err("file: needs a path"));
            }
            return Ok(SourceSpec::File(path.to_string()));
        }
        if let Some(rest) = uri.strip_prefix("v4l2:") {
            return rest.parse().map(SourceSpec::V4l2).map_err(|why| err(&why));
        }
        if let Some(rest) = uri.strip_prefix("feed:") {
            return rest.parse().map(SourceSpec::Feed).map_err(|why| err(&why));
        }
        Err(err(
            "expected pattern[:STYLE][?clock=1], file:PATH, v4l2:/dev/videoN[?..] or feed:unix:PATH|tcp:HOST:PORT|fifo:PATH",
        ))
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Pattern(style, opts) => {
                f.write_str("pattern")?;
                if let Some(s) = style {
                    write!(f, ":{s}")?;
                }
                if *opts != pattern::PatternOptions::default() {
                    write!(f, "?{opts}")?;
                }
                Ok(())
            }
            SourceSpec::File(p) => write!(f, "file:{p}"),
            SourceSpec::V4l2(v) => write!(f, "v4l2:{v}"),
            SourceSpec::Feed(v) => write!(f, "feed:{v}"),
            #[cfg(test)]
            SourceSpec::Fake(_) => f.write_str("fake"),
        }
    }
}

impl SourceSpec {
    /// Opens the source for a lens (`lens_name` picks the pattern style when none is given).
    pub fn open(&self, lens_name: &str) -> Result<Box<dyn VideoSource>, SourceError> {
        match self {
            SourceSpec::Pattern(style, opts) => {
                let style = style.unwrap_or_else(|| lens_name.parse().unwrap_or_default());
                Ok(Box::new(pattern::PatternSource::with_options(style, *opts)))
            }
            SourceSpec::File(path) => Ok(Box::new(file::FileSource::open(path)?)),
            SourceSpec::V4l2(spec) => Ok(Box::new(v4l2::open(spec)?)),
            SourceSpec::Feed(spec) => Ok(Box::new(feed::FeedSource::open(spec)?)),
            #[cfg(test)]
            SourceSpec::Fake(f) => (f.0)(),
        }
    }

    /// The resource a device source holds while open (`v4l2:/dev/video0`, `feed:unix:/path`),
    /// so the config can refuse one camera or endpoint read by two videos; `None` for sources
    /// any number of sessions can open.
    pub fn device_key(&self) -> Option<String> {
        match self {
            SourceSpec::V4l2(v) => Some(format!("v4l2:{}", v.path)),
            SourceSpec::Feed(f) => Some(format!("feed:{}", f.endpoint)),
            _ => None,
        }
    }

    /// True for sources that come and go while the daemon runs (cameras, payload apps): when
    /// one fails the pipeline keeps retrying it instead of ending the session.
    pub fn is_device(&self) -> bool {
        match self {
            SourceSpec::Pattern(..) | SourceSpec::File(_) => false,
            SourceSpec::V4l2(_) | SourceSpec::Feed(_) => true,
            #[cfg(test)]
            SourceSpec::Fake(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_uris() {
        assert_eq!(
            "pattern".parse(),
            Ok(SourceSpec::Pattern(None, Default::default()))
        );
        assert_eq!(
            "pattern:zoom".parse(),
            Ok(SourceSpec::Pattern(
                Some(pattern::Style::Zoom),
                Default::default()
            ))
        );
        assert_eq!(
            "file:/tmp/a.h264".parse(),
            Ok(SourceSpec::File("/tmp/a.h264".into()))
        );
        assert!(matches!(
            "v4l2:/dev/video0?format=nv12&width=640&height=480&fps=30".parse(),
            Ok(SourceSpec::V4l2(_))
        ));
        assert_eq!(
            "pattern:ir?clock=1".parse(),
            Ok(SourceSpec::Pattern(
                Some(pattern::Style::Ir),
                pattern::PatternOptions { clock: true }
            ))
        );
        assert_eq!(
            "pattern?clock=0".parse(),
            Ok(SourceSpec::Pattern(None, Default::default()))
        );
        let err = "pattern:zoom?clock=2".parse::<SourceSpec>().unwrap_err();
        assert!(err.to_string().contains("clock=2"), "{err}");
        for good in [
            "pattern?clock=1",
            "pattern:wide?clock=1",
            "feed:unix:/run/feed.sock",
            "feed:tcp:127.0.0.1:5000",
            "feed:fifo:/tmp/f",
        ] {
            let spec: SourceSpec = good.parse().unwrap();
            assert_eq!(spec.to_string(), good);
        }
        for bad in [
            "",
            "pattern:nope",
            "pattern:nope?clock=1",
            "pattern?clock",
            "pattern?fps=5",
            "patterns",
            "file:",
            "rtsp://x",
            "v4l2:",
            "v4l2:/dev/video0?format=rgb",
            "feed:udp:1.2.3.4:5",
            "feed:tcp:nohost",
        ] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad}");
        }
    }
}
