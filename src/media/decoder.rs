//! H.264 decoding for the transcode path (a passthrough source at a size the session did not
//! ask for): openh264's decoder, whose output is scaled straight into the session's picture.

use crate::media::frame::RawFrame;
use crate::media::scale::{scale_i420, I420Ref, ScaleError};
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

/// Why an access unit could not be turned into a picture.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// openh264 refused to start.
    #[error("cannot create the H.264 decoder: {0}")]
    Init(openh264::Error),
    /// The access unit is corrupt or does not follow what came before.
    #[error("cannot decode the access unit: {0}")]
    Decode(openh264::Error),
    /// The decoder's picture does not match its own size (never seen; checked anyway).
    #[error(transparent)]
    Scale(#[from] ScaleError),
}

/// A decoder that writes each picture into a caller-owned frame of fixed size.
pub struct H264Decoder {
    inner: Decoder,
    /// Size of the last decoded picture, for reports and the passthrough decision.
    pub last_size: Option<(usize, usize)>,
}

impl H264Decoder {
    /// Creates a decoder; one per transcoded source, since its reference pictures are per stream.
    pub fn new() -> Result<Self, DecoderError> {
        Ok(H264Decoder {
            inner: Decoder::new().map_err(DecoderError::Init)?,
            last_size: None,
        })
    }

    /// Decodes one Annex-B access unit and scales its picture into `out`. Returns false when
    /// the unit gave no picture (parameter sets alone, or the decoder still buffering).
    pub fn decode_into(&mut self, au: &[u8], out: &mut RawFrame) -> Result<bool, DecoderError> {
        let Some(yuv) = self.inner.decode(au).map_err(DecoderError::Decode)? else {
            return Ok(false);
        };
        let (w, h) = yuv.dimensions();
        let (sy, su, _) = yuv.strides();
        self.last_size = Some((w, h));
        let src = I420Ref {
            width: w,
            height: h,
            y: yuv.y(),
            u: yuv.u(),
            v: yuv.v(),
            y_stride: sy,
            uv_stride: su,
        };
        scale_i420(&src, out)?;
        Ok(true)
    }
}
