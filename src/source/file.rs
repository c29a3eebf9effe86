//! `file:PATH`: an H.264 Annex-B file played in a loop, for tests and demos without a camera.
//!
//! The file is read and cut into access units once when the source opens; playing it is then
//! only handing out `Bytes` handles. Timestamps come from the pipeline's clock at the quality's
//! frame rate, so they stay continuous across loops. The units pass through without
//! re-encoding: the quality ladder does not change a file's size or bitrate.

use crate::media::h264::AccessUnitSplitter;
use crate::media::quality::Rung;
use crate::source::{SourceError, SourceFrame, VideoSource};
use bytes::Bytes;

/// Files larger than this are refused: the source keeps the whole clip in memory.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A looping H.264 clip.
pub struct FileSource {
    units: Vec<(Bytes, bool)>,
    next: usize,
}

impl FileSource {
    /// Reads and splits `path`; it must hold at least one IDR.
    pub fn open(path: &str) -> Result<FileSource, SourceError> {
        let io = |source| SourceError::Io {
            path: path.to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_FILE_BYTES {
            return Err(SourceError::Invalid {
                path: path.to_string(),
                why: format!("{len} bytes is more than the {MAX_FILE_BYTES} a file source keeps"),
            });
        }
        let data = std::fs::read(path).map_err(io)?;
        Self::from_annexb(&data).map_err(|why| SourceError::Invalid {
            path: path.to_string(),
            why,
        })
    }

    /// Splits an Annex-B buffer into the loop, starting at its first IDR.
    pub fn from_annexb(data: &[u8]) -> Result<FileSource, String> {
        let mut splitter = AccessUnitSplitter::default();
        splitter.push(data);
        splitter.flush();
        let mut units = Vec::new();
        while let Some(au) = splitter.pull() {
            units.push((au.data, au.idr));
        }
        // A loop must start where a decoder can: drop what comes before the first IDR.
        let first = units.iter().position(|(_, idr)| *idr).ok_or_else(|| {
            format!(
                "no IDR among {} access units: not a playable H.264 Annex-B stream",
                units.len()
            )
        })?;
        units.drain(..first);
        Ok(FileSource { units, next: 0 })
    }

    /// Access units in one loop.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Never true: a source without units is refused at open.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

impl VideoSource for FileSource {
    fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
        let (data, keyframe) = self.units[self.next].clone();
        self.next = (self.next + 1) % self.units.len();
        Ok(SourceFrame::Encoded { data, keyframe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::encoder::H264Encoder;
    use crate::source::pattern::{PatternSource, Style};

    fn clip(frames: usize) -> Vec<u8> {
        let rung = Rung {
            width: 64,
            height: 48,
            fps: 30,
            bitrate_kbps: 200,
        };
        let mut enc = H264Encoder::new(rung, 10).unwrap();
        let mut src = PatternSource::new(Style::Wide);
        let mut out = Vec::new();
        for _ in 0..frames {
            if let Ok(SourceFrame::Raw(p)) = src.next_frame(&rung) {
                let p = p.clone();
                if let Some(f) = enc.encode(&p, std::time::Duration::ZERO).unwrap() {
                    out.extend_from_slice(&f.data);
                }
            }
        }
        out
    }

    #[test]
    fn loops_over_every_unit_starting_on_an_idr() {
        let data = clip(25);
        let mut src = FileSource::from_annexb(&data).unwrap();
        assert_eq!(src.len(), 25);
        let rung = Rung {
            width: 1,
            height: 1,
            fps: 30,
            bitrate_kbps: 1,
        };
        let mut seen = Vec::new();
        for _ in 0..50 {
            match src.next_frame(&rung).unwrap() {
                SourceFrame::Encoded { data, keyframe } => seen.push((data, keyframe)),
                SourceFrame::Raw(_) => panic!("a file passes through"),
            }
        }
        assert!(seen[0].1 && seen[25].1, "each loop starts on an IDR");
        assert_eq!(seen[3], seen[28]);
        let mut whole = Vec::new();
        for (d, _) in &seen[..25] {
            whole.extend_from_slice(d);
        }
        // Same NAL units as the input (start codes may be normalised to 4 bytes).
        let nals = |b: &[u8]| {
            crate::media::h264::nal_units(b)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        };
        assert_eq!(nals(&whole), nals(&data));
    }

    #[test]
    fn skips_to_the_first_idr_and_refuses_streams_without_one() {
        // A clip whose first GOP lost its IDR: 12 frames with IDRs at 0 and 10, minus the
        // first 3 units, starts with inter frames.
        let mut splitter = AccessUnitSplitter::default();
        splitter.push(&clip(12));
        splitter.flush();
        let mut cut = Vec::new();
        let mut n = 0;
        while let Some(au) = splitter.pull() {
            if n >= 3 {
                cut.extend_from_slice(&au.data);
            }
            n += 1;
        }
        assert_eq!(n, 12);
        let src = FileSource::from_annexb(&cut).unwrap();
        assert_eq!(src.len(), 2, "starts at the IDR of frame 10");
        assert!(FileSource::from_annexb(b"\x00\x00\x00\x01\x41\x9a\x00\x00\x01\x41\x9b").is_err());
        assert!(FileSource::from_annexb(b"garbage").is_err());
        assert!(FileSource::open("/nonexistent/clip.h264").is_err());
    }
}
