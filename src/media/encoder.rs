//! H.264 encoding with openh264, shaped for live streaming.
//!
//! The settings matter more than the API: a fixed GOP (scene-change detection off, otherwise a
//! moving pattern gets an IDR every few frames), Constrained Baseline without B-frames (what
//! WebRTC and most RTMP players accept), a real-time usage profile, and bitrate changes applied
//! to the running encoder so that a quality change does not restart the stream.

use crate::media::frame::{Codec, EncodedFrame, RawFrame};
use crate::media::quality::Rung;
use bytes::Bytes;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod,
    RateControlMode, UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;
use std::time::Duration;

/// Why the encoder could not be built or could not encode a frame.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// openh264 refused its parameters or failed on a frame.
    #[error("openh264 failed while {phase} at {width}x{height}: {source}")]
    Codec {
        /// What the encoder was doing.
        phase: &'static str,
        /// Width in use.
        width: usize,
        /// Height in use.
        height: usize,
        /// openh264's own error.
        source: openh264::Error,
    },
    /// The picture handed in does not match its declared size.
    #[error("raw frame of {len} bytes does not hold a {width}x{height} I420 picture")]
    BadFrame {
        /// Bytes received.
        len: usize,
        /// Declared width.
        width: usize,
        /// Declared height.
        height: usize,
    },
}

/// Which openh264 the encoder runs: the one compiled into dockcast, or Cisco's prebuilt
/// library loaded at run time (only with the `cisco-openh264` feature; Cisco's patent licence
/// covers only its own binary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// Compiled from source into the binary.
    #[default]
    Builtin,
    /// `libopenh264.so` at this path, checked against the releases the openh264 crate knows.
    Library(std::path::PathBuf),
}

impl Backend {
    fn api(&self) -> Result<OpenH264API, openh264::Error> {
        match self {
            Backend::Builtin => Ok(OpenH264API::from_source()),
            #[cfg(feature = "cisco-openh264")]
            Backend::Library(path) => OpenH264API::from_blob_path(path).map_err(|e| {
                tracing::warn!(path = %path.display(), "cannot load libopenh264: {e}");
                openh264::Error::msg(
                    "libopenh264 could not be loaded or is not a release the openh264 crate knows",
                )
            }),
            #[cfg(not(feature = "cisco-openh264"))]
            Backend::Library(_) => Err(openh264::Error::msg(
                "this build cannot load libopenh264 at run time (build with --features cisco-openh264)",
            )),
        }
    }
}

/// A live H.264 encoder whose quality can change while it runs.
pub struct H264Encoder {
    inner: Encoder,
    rung: Rung,
    gop_frames: u32,
    backend: Backend,
    /// openh264 initialises lazily inside the first `encode`; a bitrate set before that would be
    /// overwritten by the configured one, so it waits here.
    initialised: bool,
    pending_bitrate: Option<u32>,
    /// Bitrate the running encoder was last given, in bit/s.
    current_bps: u32,
}

impl H264Encoder {
    /// Builds an encoder for one ladder rung with an IDR every `gop_frames` frames.
    pub fn new(rung: Rung, gop_frames: u32) -> Result<Self, EncoderError> {
        Self::with_backend(rung, gop_frames, Backend::Builtin)
    }

    /// Like [`H264Encoder::new`], on the given openh264.
    pub fn with_backend(
        rung: Rung,
        gop_frames: u32,
        backend: Backend,
    ) -> Result<Self, EncoderError> {
        Ok(H264Encoder {
            inner: build(&rung, gop_frames, &backend)?,
            rung,
            gop_frames,
            backend,
            initialised: false,
            pending_bitrate: None,
            current_bps: rung.bitrate_kbps * 1000,
        })
    }

    /// The rung in force; the source renders or scales to its size.
    pub fn rung(&self) -> Rung {
        self.rung
    }

    /// Moves to another rung. A bitrate change applies to the next frame without touching the
    /// stream; a size or frame-rate change builds a new encoder, whose first frame is an IDR with
    /// fresh parameter sets.
    pub fn set_rung(&mut self, rung: Rung) -> Result<(), EncoderError> {
        if self.rung.needs_reinit(&rung) {
            // A fresh encoder: its first frame is an IDR with new parameter sets, and the
            // wrapper's in-place re-init reacts only to a size change, not to a new frame rate.
            self.inner = build(&rung, self.gop_frames, &self.backend)?;
            self.initialised = false;
            self.pending_bitrate = None;
            self.current_bps = rung.bitrate_kbps * 1000;
        } else if rung.bitrate_kbps != self.rung.bitrate_kbps {
            self.pending_bitrate = Some(rung.bitrate_kbps * 1000);
        }
        self.rung = rung;
        Ok(())
    }

    /// Makes the next frame an IDR (lens switch, a sink's reconnect or a dropped frame).
    pub fn force_keyframe(&mut self) {
        if self.initialised {
            self.inner.force_intra_frame();
        }
        // Before initialisation the first frame is an IDR anyway.
    }

    /// Encodes one picture. Returns `None` when the rate control chose to skip the frame.
    pub fn encode(
        &mut self,
        frame: &RawFrame,
        pts: Duration,
    ) -> Result<Option<EncodedFrame>, EncoderError> {
        let (w, h) = (frame.width, frame.height);
        if frame.data.len() != w * h * 3 / 2 {
            return Err(EncoderError::BadFrame {
                len: frame.data.len(),
                width: w,
                height: h,
            });
        }
        let codec_err = |phase, source| EncoderError::Codec {
            phase,
            width: w,
            height: h,
            source,
        };
        let (y, u, v) = frame.planes();
        let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        if self.initialised {
            if let Some(bps) = self.pending_bitrate.take() {
                // A refused bitrate is not worth the stream: keep encoding at the old one.
                if let Err(e) = self.apply_bitrate(bps) {
                    tracing::warn!(bps, "bitrate change refused by openh264: {e}");
                }
            }
        }
        let stream = self
            .inner
            .encode(&yuv)
            .map_err(|e| codec_err("encoding", e))?;
        self.initialised = true;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR | FrameType::I);
        if matches!(stream.frame_type(), FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        let data = stream.to_vec();
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(EncodedFrame {
            data: Bytes::from(data),
            pts,
            keyframe,
            codec: Codec::H264,
        }))
    }

    fn apply_bitrate(&mut self, bps: u32) -> Result<(), openh264::Error> {
        use openh264_sys2::{
            SBitrateInfo, ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0,
            SPATIAL_LAYER_ALL,
        };
        let bitrate = i32::try_from(bps).unwrap_or(i32::MAX);
        let raising = bps > self.current_bps;
        // openh264 verifies the layer's target against the layer's cap, which the wrapper set
        // to the initial target: raise the cap before the target, lower it after.
        let cap = (ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0);
        let target = (ENCODER_OPTION_BITRATE, SPATIAL_LAYER_ALL);
        let order = if raising {
            [cap, target]
        } else {
            [target, cap]
        };
        for (option, layer) in order {
            let mut info = SBitrateInfo {
                iLayer: layer,
                iBitrate: bitrate,
            };
            // SAFETY: the encoder is initialised (checked by the caller), `info` outlives the
            // call, and BITRATE/MAX_BITRATE take a pointer to an SBitrateInfo.
            let rc = unsafe {
                self.inner
                    .raw_api()
                    .set_option(option, (&raw mut info).cast())
            };
            if rc != 0 {
                return Err(openh264::Error::msg("SetOption(bitrate) was refused"));
            }
        }
        self.current_bps = bps;
        Ok(())
    }
}

fn build(rung: &Rung, gop_frames: u32, backend: &Backend) -> Result<Encoder, EncoderError> {
    let codec_err = |source| EncoderError::Codec {
        phase: "loading openh264",
        width: rung.width as usize,
        height: rung.height as usize,
        source,
    };
    let api = backend.api().map_err(codec_err)?;
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(rung.bitrate_kbps * 1000))
        .max_frame_rate(FrameRate::from_hz(rung.fps as f32))
        .rate_control_mode(RateControlMode::Bitrate)
        .usage_type(UsageType::CameraVideoRealTime)
        .scene_change_detect(false)
        // Live drone video gains little from these and they cost CPU the edge box lacks.
        .complexity(Complexity::Low)
        .background_detection(false)
        .adaptive_quantization(false)
        .skip_frames(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(gop_frames.max(1)));
    Encoder::with_api_config(api, config).map_err(|source| EncoderError::Codec {
        phase: "creating the encoder",
        width: rung.width as usize,
        height: rung.height as usize,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(w: u32, h: u32, kbps: u32) -> Rung {
        Rung {
            width: w,
            height: h,
            fps: 30,
            bitrate_kbps: kbps,
        }
    }

    /// Moving test content: compressible like camera video, unlike random noise, which
    /// overflows openh264's bitstream buffer at tiny sizes.
    fn noise(frame: &mut RawFrame, seed: u32) {
        use crate::source::pattern::{PatternSource, Style};
        use crate::source::{SourceFrame, VideoSource};
        let mut src = PatternSource::new(Style::Zoom);
        let rung = rung(frame.width as u32, frame.height as u32, 100);
        for _ in 0..seed % 7 {
            let _ = src.next_frame(&rung);
        }
        if let Ok(SourceFrame::Raw(p)) = src.next_frame(&rung) {
            frame.data.copy_from_slice(&p.data);
        }
    }

    fn nal_types(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i + 3 < data.len() {
            if data[i..i + 3] == [0, 0, 1] {
                out.push(data[i + 3] & 0x1f);
                i += 3;
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn fixed_gop_and_forced_idr() {
        let mut enc = H264Encoder::new(rung(64, 48, 300), 10).unwrap();
        let mut frame = RawFrame::black(64, 48);
        let mut keys = Vec::new();
        for i in 0..25u32 {
            noise(&mut frame, i);
            if i == 15 {
                enc.force_keyframe();
            }
            let out = enc
                .encode(&frame, Duration::from_millis(33 * i as u64))
                .unwrap()
                .expect("no skipping configured");
            if out.keyframe {
                keys.push(i);
                let types = nal_types(&out.data);
                assert!(types.contains(&7) && types.contains(&8) && types.contains(&5));
            }
        }
        // A forced IDR restarts the GOP count, so the next regular one would be at 25.
        assert_eq!(keys, vec![0, 10, 15]);
    }

    #[test]
    fn resize_starts_with_idr_and_new_size() {
        let mut enc = H264Encoder::new(rung(64, 48, 300), 100).unwrap();
        let mut frame = RawFrame::black(64, 48);
        noise(&mut frame, 1);
        enc.encode(&frame, Duration::ZERO).unwrap();
        enc.encode(&frame, Duration::from_millis(33)).unwrap();
        enc.set_rung(rung(96, 64, 300)).unwrap();
        let mut big = RawFrame::black(96, 64);
        noise(&mut big, 2);
        let out = enc
            .encode(&big, Duration::from_millis(66))
            .unwrap()
            .unwrap();
        assert!(out.keyframe);
    }

    #[test]
    fn bitrate_change_does_not_force_idr() {
        let mut enc = H264Encoder::new(rung(64, 48, 300), 100).unwrap();
        let mut frame = RawFrame::black(64, 48);
        for i in 0..3 {
            noise(&mut frame, i);
            enc.encode(&frame, Duration::ZERO).unwrap();
        }
        enc.set_rung(rung(64, 48, 100)).unwrap();
        noise(&mut frame, 9);
        let out = enc.encode(&frame, Duration::ZERO).unwrap().unwrap();
        assert!(!out.keyframe);
    }

    #[test]
    fn bitrate_goes_up_and_down_at_720p() {
        let mut enc = H264Encoder::new(rung(1280, 720, 1000), 30).unwrap();
        let mut frame = RawFrame::black(1280, 720);
        noise(&mut frame, 1);
        enc.encode(&frame, Duration::ZERO).unwrap();
        for kbps in [1500, 3000, 500, 1000, 1000] {
            enc.set_rung(rung(1280, 720, kbps)).unwrap();
            noise(&mut frame, kbps);
            let out = enc.encode(&frame, Duration::ZERO).unwrap();
            assert!(out.is_some_and(|f| !f.keyframe), "{kbps} kbps");
        }
    }

    #[test]
    fn wrong_frame_size_is_an_error() {
        let mut enc = H264Encoder::new(rung(64, 48, 300), 30).unwrap();
        let frame = RawFrame {
            width: 64,
            height: 48,
            data: vec![0; 10],
        };
        assert!(matches!(
            enc.encode(&frame, Duration::ZERO),
            Err(EncoderError::BadFrame { .. })
        ));
    }
}
