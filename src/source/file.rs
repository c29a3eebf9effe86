//! `file:PATH`: an H.264 or H.265 Annex-B file played in a loop, for tests and demos without a
//! camera. The codec is recognised from the stream itself (an H.265 stream opens with a VPS,
//! SPS, PPS, delimiter or SEI whose two-byte NAL header no H.264 stream starts with).
//!
//! The file is read and cut into access units once when the source opens; playing it is then
//! only handing out `Bytes` handles. Timestamps come from the pipeline's clock at the quality's
//! frame rate, so they stay continuous across loops. The units pass through without
//! re-encoding: the quality ladder does not change a file's size or bitrate.

use crate::media::frame::Codec;
use crate::media::h264::AccessUnitSplitter;
use crate::media::hevc;
use crate::media::quality::Rung;
use crate::source::{SourceError, SourceFrame, VideoSource};
use bytes::Bytes;

/// Files larger than this are refused: the source keeps the whole clip in memory.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A looping H.264 or H.265 clip.
pub struct FileSource {
    units: Vec<(Bytes, bool)>,
    next: usize,
    codec: Codec,
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

    /// Splits an Annex-B buffer into the loop, starting at its first IDR (H.265: IRAP).
    pub fn from_annexb(data: &[u8]) -> Result<FileSource, String> {
        let codec = sniff_codec(data);
        let mut units = match codec {
            Codec::H264 => {
                let mut splitter = AccessUnitSplitter::default();
                splitter.push(data);
                splitter.flush();
                let mut units = Vec::new();
                while let Some(au) = splitter.pull() {
                    units.push((au.data, au.idr));
                }
                units
            }
            Codec::H265 => hevc::split_access_units(data),
        };
        // A loop must start where a decoder can: drop what comes before the first IDR.
        let first = units.iter().position(|(_, idr)| *idr).ok_or_else(|| {
            format!(
                "no IDR among {} access units: not a playable {} Annex-B stream",
                units.len(),
                codec.name()
            )
        })?;
        units.drain(..first);
        Ok(FileSource {
            units,
            next: 0,
            codec,
        })
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

/// H.265 when the stream's first NAL unit has an H.265 parameter-set, delimiter or prefix-SEI
/// header (`40 01` VPS, `42 01` SPS, `44 01` PPS, `46 01` AUD, `4e 01` SEI); H.264 otherwise.
/// In H.264 those first bytes would be NAL types 0, 2, 4, 6 and 14, which no encoder starts a
/// stream with.
fn sniff_codec(data: &[u8]) -> Codec {
    let nal = match data {
        [0, 0, 0, 1, rest @ ..] | [0, 0, 1, rest @ ..] => rest,
        _ => return Codec::H264,
    };
    match nal {
        [0x40 | 0x42 | 0x44 | 0x46 | 0x4e, 0x01, ..] => Codec::H265,
        _ => Codec::H264,
    }
}

impl VideoSource for FileSource {
    fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
        let (data, keyframe) = self.units[self.next].clone();
        self.next = (self.next + 1) % self.units.len();
        Ok(SourceFrame::Encoded { data, keyframe })
    }

    fn codec(&self) -> Codec {
        self.codec
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
    fn an_h265_stream_is_recognised_and_loops_from_its_first_irap() {
        // VPS/SPS/PPS + IDR_W_RADL, then two TRAIL_R pictures; slices carry
        // first_slice_segment_in_pic_flag (0x80).
        let mut hevc = Vec::new();
        for nal in [
            &[0x40, 0x01, 0x0c][..],
            &[0x42, 0x01, 0x01][..],
            &[0x44, 0x01, 0xc1][..],
            &[0x26, 0x01, 0x80, 0x22][..],
            &[0x02, 0x01, 0x80, 0x33][..],
            &[0x02, 0x01, 0x80, 0x44][..],
        ] {
            hevc.extend_from_slice(&[0, 0, 0, 1]);
            hevc.extend_from_slice(nal);
        }
        let src = FileSource::from_annexb(&hevc).unwrap();
        assert_eq!(src.codec(), Codec::H265);
        assert_eq!(src.len(), 3);
        assert!(src.units[0].1 && !src.units[1].1);
        assert_eq!(sniff_codec(&clip(1)), Codec::H264);
        assert_eq!(sniff_codec(b"garbage"), Codec::H264);
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
