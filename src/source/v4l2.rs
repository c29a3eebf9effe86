//! `v4l2:/dev/videoN[?format=yuyv|nv12|mjpeg|h264&width=W&height=H&fps=F]`: a V4L2 capture
//! device (UVC camera, CSI sensor behind a V4L2 driver) read with mmap streaming.
//!
//! Raw formats are converted to I420 once, into a frame the source owns and reuses; MJPEG is
//! decoded with `zune-jpeg` (pure Rust, maintained, SIMD on x86 and NEON-free but fast scalar
//! on ARM; `jpeg-decoder` is in maintenance mode and image-rs itself moved to zune-jpeg);
//! H.264 buffers pass through as access units. Timestamps are the driver's.
//!
//! The device sits behind [`CaptureDevice`] so the conversion, the unplug path and the
//! pipeline's retry are tested without hardware; the real ioctl/mmap path is exercised in a VM
//! with the kernel's `vivid` driver (`scripts/vivid-test.sh`).

use crate::media::frame::RawFrame;
use crate::media::h264::{is_recovery_point, nal_type, nal_units};
use crate::media::quality::Rung;
use crate::source::{SourceError, SourceFrame, VideoSource};
use bytes::Bytes;
use std::fmt;
use std::mem::ManuallyDrop;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Capture formats dockcast negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 4:2:2 (most UVC cameras, uncompressed).
    Yuyv,
    /// Semi-planar 4:2:0 (CSI pipelines, ISPs).
    Nv12,
    /// Motion JPEG (UVC cameras at high resolutions).
    Mjpeg,
    /// H.264 (UVC 1.5 cameras): passed through.
    H264,
}

impl PixelFormat {
    /// The V4L2 fourcc.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::H264 => *b"H264",
        }
    }

    /// The format for a fourcc, if dockcast handles it.
    pub fn from_fourcc(f: [u8; 4]) -> Option<Self> {
        [Self::H264, Self::Nv12, Self::Yuyv, Self::Mjpeg]
            .into_iter()
            .find(|p| p.fourcc() == f)
    }

    fn name(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::H264 => "h264",
        }
    }
}

/// A parsed `v4l2:` source URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4l2Spec {
    /// Device node, e.g. `/dev/video0`.
    pub path: String,
    /// Format to ask for; `None` takes the best the device offers (H.264, NV12, YUYV, MJPEG).
    pub format: Option<PixelFormat>,
    /// Capture width; `None` keeps the device's current one.
    pub width: Option<u32>,
    /// Capture height.
    pub height: Option<u32>,
    /// Frame rate to ask for.
    pub fps: Option<u32>,
}

impl FromStr for V4l2Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (path, query) = s.split_once('?').unwrap_or((s, ""));
        if !path.starts_with('/') || path.len() < 2 {
            return Err("v4l2: needs an absolute device path such as /dev/video0".into());
        }
        let mut spec = V4l2Spec {
            path: path.to_string(),
            format: None,
            width: None,
            height: None,
            fps: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("v4l2 option {pair:?} is not KEY=VALUE"))?;
            let num = |lo: u32, hi: u32| -> Result<u32, String> {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| format!("{k}={v}: expected a number within {lo}..={hi}"))
            };
            match k {
                "format" => {
                    spec.format = Some(match v {
                        "yuyv" => PixelFormat::Yuyv,
                        "nv12" => PixelFormat::Nv12,
                        "mjpeg" => PixelFormat::Mjpeg,
                        "h264" => PixelFormat::H264,
                        _ => return Err(format!("format={v}: expected yuyv, nv12, mjpeg or h264")),
                    })
                }
                "width" => spec.width = Some(num(16, 7680)?),
                "height" => spec.height = Some(num(16, 4320)?),
                "fps" => spec.fps = Some(num(1, 240)?),
                _ => {
                    return Err(format!(
                        "unknown v4l2 option {k:?} (format, width, height, fps)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for V4l2Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        let mut opts = Vec::new();
        if let Some(p) = self.format {
            opts.push(format!("format={}", p.name()));
        }
        for (k, v) in [
            ("width", self.width),
            ("height", self.height),
            ("fps", self.fps),
        ] {
            if let Some(v) = v {
                opts.push(format!("{k}={v}"));
            }
        }
        if !opts.is_empty() {
            write!(f, "?{}", opts.join("&"))?;
        }
        Ok(())
    }
}

/// What the driver agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes per line of the (first) plane; 0 for compressed formats.
    pub stride: usize,
}

/// One filled capture buffer.
#[derive(Debug)]
pub struct Captured<'a> {
    /// The bytes the driver filled (`bytesused`).
    pub data: &'a [u8],
    /// Driver timestamp (CLOCK_MONOTONIC on current drivers).
    pub timestamp: Duration,
}

/// A capture device after negotiation: the seam between V4L2 ioctls and the conversions.
pub trait CaptureDevice: Send {
    /// The negotiated format.
    fn negotiated(&self) -> Negotiated;
    /// Waits for the next filled buffer; an error means the device is gone or broken.
    fn capture(&mut self) -> std::io::Result<Captured<'_>>;

    /// Waits at most `timeout` until a buffer can be taken without blocking, so the pipeline
    /// can apply controls while a camera is slow or silent. `true` when it may be ready.
    fn wait_ready(&mut self, _timeout: Duration) -> std::io::Result<bool> {
        Ok(true)
    }
}

/// A V4L2 source over any [`CaptureDevice`].
pub struct V4l2Source<D: CaptureDevice> {
    path: String,
    device: D,
    frame: RawFrame,
    last_ts: Option<Duration>,
    /// When the last buffer came, to tell a silent device from a slow one.
    last_frame: Instant,
}

/// Longest wait for one buffer before the device is treated as gone.
pub const CAPTURE_TIMEOUT: Duration = Duration::from_secs(2);

/// mmap buffers shared with the driver: one being read, the rest for the driver to fill.
const BUFFERS: u32 = 4;

/// Opens, negotiates and starts streaming a real device.
pub fn open(spec: &V4l2Spec) -> Result<V4l2Source<V4lDevice>, SourceError> {
    let device = V4lDevice::open(spec)?;
    Ok(V4l2Source::new(&spec.path, device))
}

impl<D: CaptureDevice> V4l2Source<D> {
    /// Wraps an opened device.
    pub fn new(path: &str, device: D) -> Self {
        let n = device.negotiated();
        V4l2Source {
            path: path.to_string(),
            frame: RawFrame::black(n.width & !1, n.height & !1),
            device,
            last_ts: None,
            last_frame: Instant::now(),
        }
    }
}

impl<D: CaptureDevice> VideoSource for V4l2Source<D> {
    fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
        let n = self.device.negotiated();
        let path = &self.path;
        let got = self
            .device
            .capture()
            .map_err(|source| SourceError::Device {
                device: path.clone(),
                source,
            })?;
        self.last_ts = Some(got.timestamp);
        self.last_frame = Instant::now();
        let bad_frame = |why: String| SourceError::BadFrame {
            device: path.clone(),
            why,
        };
        if got.data.is_empty() {
            return Err(bad_frame(
                "an empty or failed buffer from the driver".into(),
            ));
        }
        match n.format {
            PixelFormat::H264 => {
                let keyframe = nal_units(got.data)
                    .any(|nal| nal[0] & 0x1f == nal_type::IDR || is_recovery_point(nal));
                Ok(SourceFrame::Encoded {
                    data: Bytes::copy_from_slice(got.data),
                    keyframe,
                })
            }
            PixelFormat::Yuyv => {
                yuyv_to_i420(got.data, n.width, n.height, n.stride, &mut self.frame)
                    .map_err(bad_frame)?;
                Ok(SourceFrame::Raw(&self.frame))
            }
            PixelFormat::Nv12 => {
                nv12_to_i420(got.data, n.width, n.height, n.stride, &mut self.frame)
                    .map_err(bad_frame)?;
                Ok(SourceFrame::Raw(&self.frame))
            }
            PixelFormat::Mjpeg => {
                mjpeg_to_i420(got.data, &mut self.frame).map_err(bad_frame)?;
                Ok(SourceFrame::Raw(&self.frame))
            }
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn wait_frame(
        &mut self,
        rung: &Rung,
        wait: Duration,
    ) -> Result<Option<SourceFrame<'_>>, SourceError> {
        let device = |source| SourceError::Device {
            device: self.path.clone(),
            source,
        };
        match self.device.wait_ready(wait) {
            Ok(true) => self.next_frame(rung).map(Some),
            Ok(false) if self.last_frame.elapsed() < CAPTURE_TIMEOUT => Ok(None),
            // Streaming but silent: treat as gone, so the device is reopened.
            Ok(false) => Err(device(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no frame for {CAPTURE_TIMEOUT:?}"),
            ))),
            Err(e) => Err(device(e)),
        }
    }

    fn timestamp(&self) -> Option<Duration> {
        self.last_ts
    }

    fn current_picture(&self) -> Option<&RawFrame> {
        (self.device.negotiated().format != PixelFormat::H264).then_some(&self.frame)
    }
}

fn need(what: &str, data: &[u8], need: usize) -> Result<(), String> {
    if data.len() < need {
        return Err(format!(
            "{what} buffer of {} bytes, needs {need}",
            data.len()
        ));
    }
    Ok(())
}

/// YUYV (4:2:2 packed) → I420, averaging each pair of rows' chroma. Odd trailing columns and
/// rows are cropped (I420 needs even sizes).
pub fn yuyv_to_i420(
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    dst: &mut RawFrame,
) -> Result<(), String> {
    let stride = if stride == 0 { width * 2 } else { stride };
    let (w, h) = (width & !1, height & !1);
    if dst.width != w || dst.height != h {
        *dst = RawFrame::black(w, h);
    }
    if h == 0 || w == 0 {
        return Ok(());
    }
    need("YUYV", src, stride * (h - 1) + w * 2)?;
    let (y, u, v) = dst.planes_mut();
    for row in 0..h {
        let line = &src[row * stride..row * stride + w * 2];
        for (out, px) in y[row * w..(row + 1) * w]
            .iter_mut()
            .zip(line.iter().step_by(2))
        {
            *out = *px;
        }
    }
    for crow in 0..h / 2 {
        let a = &src[2 * crow * stride..2 * crow * stride + w * 2];
        let b = &src[(2 * crow + 1) * stride..(2 * crow + 1) * stride + w * 2];
        let uo = &mut u[crow * w / 2..(crow + 1) * w / 2];
        let vo = &mut v[crow * w / 2..(crow + 1) * w / 2];
        for (i, (ua, va)) in uo.iter_mut().zip(vo.iter_mut()).enumerate() {
            let k = i * 4;
            *ua = (u16::from(a[k + 1]) + u16::from(b[k + 1])).div_ceil(2) as u8;
            *va = (u16::from(a[k + 3]) + u16::from(b[k + 3])).div_ceil(2) as u8;
        }
    }
    Ok(())
}

/// NV12 (Y plane, then interleaved CbCr at `stride * height`) → I420.
pub fn nv12_to_i420(
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    dst: &mut RawFrame,
) -> Result<(), String> {
    let stride = if stride == 0 { width } else { stride };
    let (w, h) = (width & !1, height & !1);
    if dst.width != w || dst.height != h {
        *dst = RawFrame::black(w, h);
    }
    if h == 0 || w == 0 {
        return Ok(());
    }
    let uv_off = stride * height;
    need("NV12", src, uv_off + stride * (h / 2 - 1) + w)?;
    let (y, u, v) = dst.planes_mut();
    for row in 0..h {
        y[row * w..(row + 1) * w].copy_from_slice(&src[row * stride..row * stride + w]);
    }
    for crow in 0..h / 2 {
        let line = &src[uv_off + crow * stride..uv_off + crow * stride + w];
        let uo = &mut u[crow * w / 2..(crow + 1) * w / 2];
        let vo = &mut v[crow * w / 2..(crow + 1) * w / 2];
        for (i, (ua, va)) in uo.iter_mut().zip(vo.iter_mut()).enumerate() {
            *ua = line[2 * i];
            *va = line[2 * i + 1];
        }
    }
    Ok(())
}

/// MJPEG → I420: zune-jpeg decodes to full-resolution YCbCr (no RGB round trip), which is then
/// subsampled 2×2 for chroma.
pub fn mjpeg_to_i420(src: &[u8], dst: &mut RawFrame) -> Result<(), String> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::YCbCr)
        .set_max_width(7680)
        .set_max_height(4320);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(src), opts);
    dec.decode_headers().map_err(|e| format!("MJPEG: {e:?}"))?;
    // Monochrome cameras (IR, some industrial UVC ones) send one-component JPEGs, which the
    // decoder does not turn into YCbCr: take the luma as it is and grey chroma.
    let luma_only = dec.input_colorspace() == Some(ColorSpace::Luma);
    if luma_only {
        dec.set_options(opts.jpeg_set_out_colorspace(ColorSpace::Luma));
    }
    let channels = if luma_only { 1 } else { 3 };
    let info = dec.info().ok_or("MJPEG: no image header")?;
    let size = dec.output_buffer_size().ok_or("MJPEG: no output size")?;
    let mut ycc = vec![0u8; size];
    dec.decode_into(&mut ycc)
        .map_err(|e| format!("MJPEG: {e:?}"))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    need("MJPEG", &ycc, width * height * channels)?;
    let (w, h) = (width & !1, height & !1);
    if dst.width != w || dst.height != h {
        *dst = RawFrame::black(w, h);
    }
    let (y, u, v) = dst.planes_mut();
    for row in 0..h {
        for col in 0..w {
            y[row * w + col] = ycc[(row * width + col) * channels];
        }
    }
    if luma_only {
        u.fill(128);
        v.fill(128);
        return Ok(());
    }
    for crow in 0..h / 2 {
        for ccol in 0..w / 2 {
            let mut cb = 0u16;
            let mut cr = 0u16;
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let p = ((2 * crow + dy) * width + 2 * ccol + dx) * 3;
                cb += u16::from(ycc[p + 1]);
                cr += u16::from(ycc[p + 2]);
            }
            u[crow * w / 2 + ccol] = ((cb + 2) / 4) as u8;
            v[crow * w / 2 + ccol] = ((cr + 2) / 4) as u8;
        }
    }
    Ok(())
}

/// A real device: the `v4l` crate's mmap stream over a negotiated format.
pub struct V4lDevice {
    // Dropped by hand, before `_dev`: the v4l crate panics in its `Drop` when STREAMOFF or
    // the buffer release fails with anything but ENODEV, and a driver left in a bad state
    // must cost the camera a reopen, not the pipeline thread (see `Drop` below).
    stream: ManuallyDrop<v4l::io::mmap::Stream<'static>>,
    _dev: v4l::Device,
    /// The node, for the log.
    path: String,
    negotiated: Negotiated,
    epoch: Instant,
    /// Buffers are queued and the stream runs (after the first capture).
    started: bool,
}

impl V4lDevice {
    /// Opens the node, checks it can capture and stream, negotiates format, size and rate.
    pub fn open(spec: &V4l2Spec) -> Result<Self, SourceError> {
        use v4l::video::Capture;
        let path = spec.path.clone();
        let dev_err = |source| SourceError::Device {
            device: path.clone(),
            source,
        };
        let invalid = |why: String| SourceError::Invalid {
            path: path.clone(),
            why,
        };
        let dev = v4l::Device::with_path(&spec.path).map_err(dev_err)?;
        let caps = dev.query_caps().map_err(dev_err)?;
        use v4l::capability::Flags;
        if !caps.capabilities.contains(Flags::VIDEO_CAPTURE)
            || !caps.capabilities.contains(Flags::STREAMING)
        {
            return Err(invalid(format!(
                "driver {} offers no single-planar streaming capture ({})",
                caps.driver, caps.capabilities
            )));
        }
        let offered: Vec<[u8; 4]> = dev
            .enum_formats()
            .map_err(dev_err)?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let names = || {
            offered
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let want = match spec.format {
            Some(f) if offered.contains(&f.fourcc()) => f,
            Some(f) => {
                return Err(invalid(format!(
                    "{} not offered; the device offers {}",
                    f.name(),
                    names()
                )))
            }
            None => [
                PixelFormat::H264,
                PixelFormat::Nv12,
                PixelFormat::Yuyv,
                PixelFormat::Mjpeg,
            ]
            .into_iter()
            .find(|p| offered.contains(&p.fourcc()))
            .ok_or_else(|| invalid(format!("none of h264, nv12, yuyv, mjpeg in {}", names())))?,
        };
        let mut fmt = dev.format().map_err(dev_err)?;
        fmt.fourcc = v4l::FourCC::new(&want.fourcc());
        if let Some(w) = spec.width {
            fmt.width = w;
        }
        if let Some(h) = spec.height {
            fmt.height = h;
        }
        // Left over from the previous format, these make drivers keep the old line length
        // (NV12 came back with YUYV's 2-bytes-per-pixel stride).
        fmt.stride = 0;
        fmt.size = 0;
        let got = dev.set_format(&fmt).map_err(dev_err)?;
        if got.fourcc.repr != want.fourcc() {
            return Err(invalid(format!(
                "asked for {}, driver chose {}",
                want.name(),
                String::from_utf8_lossy(&got.fourcc.repr)
            )));
        }
        if let Some(fps) = spec.fps {
            if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps)) {
                tracing::warn!(device = %spec.path, fps, "frame rate refused: {e}");
            }
        }
        let stride = match want {
            PixelFormat::Yuyv | PixelFormat::Nv12 => got.stride as usize,
            _ => 0,
        };
        let mut stream =
            v4l::io::mmap::Stream::with_buffers(&dev, v4l::buffer::Type::VideoCapture, BUFFERS)
                .map_err(dev_err)?;
        stream.set_timeout(CAPTURE_TIMEOUT);
        tracing::info!(
            device = %spec.path,
            driver = %caps.driver,
            format = want.name(),
            width = got.width,
            height = got.height,
            stride,
            "capture negotiated"
        );
        Ok(V4lDevice {
            stream: ManuallyDrop::new(stream),
            _dev: dev,
            path: spec.path.clone(),
            negotiated: Negotiated {
                format: want,
                width: got.width as usize,
                height: got.height as usize,
                stride,
            },
            epoch: Instant::now(),
            started: false,
        })
    }
}

impl Drop for V4lDevice {
    fn drop(&mut self) {
        // SAFETY: `stream` is taken once, here, and not touched again.
        let stream = unsafe { ManuallyDrop::take(&mut self.stream) };
        if !drop_contained(stream) {
            tracing::warn!(
                device = %self.path,
                "the driver refused to stop streaming or free its buffers; closing the device anyway"
            );
        }
    }
}

/// Drops `value`, containing a panic from its `Drop`; false if it panicked or was leaked. On a
/// thread that is already unwinding it is leaked instead, since a second panic would abort
/// the daemon; what it holds is the kernel's to reclaim when the process ends.
fn drop_contained<T>(value: T) -> bool {
    if std::thread::panicking() {
        std::mem::forget(value);
        return false;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(value))).is_ok()
}

impl CaptureDevice for V4lDevice {
    fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    fn wait_ready(&mut self, timeout: Duration) -> std::io::Result<bool> {
        if !self.started {
            // Start streaming here rather than in the first capture, which would block until
            // the camera's first frame (up to a second for many UVC cameras): a lens being
            // switched to is polled without waiting, and the active one must keep flowing.
            // Every buffer but the first is queued; the first capture queues that one, as
            // it re-queues the previous buffer on every later capture.
            use v4l::io::traits::{CaptureStream, Stream};
            for index in 1..BUFFERS as usize {
                CaptureStream::queue(&mut *self.stream, index)?;
            }
            self.stream.start()?;
            self.started = true;
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // Three of the four buffers are queued here (the last one is re-queued by the next
        // capture), so readability means a filled buffer, or an error such as an unplug.
        Ok(self._dev.handle().poll(libc::POLLIN, ms)? > 0)
    }

    fn capture(&mut self) -> std::io::Result<Captured<'_>> {
        use v4l::io::traits::CaptureStream;
        // Not started by wait_ready, the stream queues every buffer and starts by itself.
        let (buf, meta) = self.stream.next()?;
        self.started = true;
        let used = meta.bytesused as usize;
        // A buffer the driver marks as failed (a USB transfer error) holds stale or partial
        // data: handed on empty, it is skipped as an unreadable frame. A driver that leaves
        // `bytesused` at zero fills the whole buffer (some older ones do).
        let data = if meta.flags.contains(v4l::buffer::Flags::ERROR) {
            &buf[..0]
        } else if used == 0 || used > buf.len() {
            buf
        } else {
            &buf[..used]
        };
        let ts: Duration = meta.timestamp.into();
        // Some drivers leave the timestamp at zero: fall back to the arrival time.
        let timestamp = if ts.is_zero() {
            self.epoch.elapsed()
        } else {
            ts
        };
        Ok(Captured { data, timestamp })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A device that serves YUYV frames until "unplugged".
    pub(crate) struct FakeCamera {
        pub frames_left: usize,
        pub buf: Vec<u8>,
        pub t: Duration,
    }

    impl CaptureDevice for FakeCamera {
        fn negotiated(&self) -> Negotiated {
            Negotiated {
                format: PixelFormat::Yuyv,
                width: 8,
                height: 4,
                stride: 16,
            }
        }
        fn capture(&mut self) -> std::io::Result<Captured<'_>> {
            if self.frames_left == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
            }
            self.frames_left -= 1;
            self.t += Duration::from_millis(33);
            Ok(Captured {
                data: &self.buf,
                timestamp: self.t,
            })
        }
    }

    #[test]
    fn parses_uris() {
        let s: V4l2Spec = "/dev/video2?format=mjpeg&width=1280&height=720&fps=30"
            .parse()
            .unwrap();
        assert_eq!(s.format, Some(PixelFormat::Mjpeg));
        assert_eq!(
            (s.width, s.height, s.fps),
            (Some(1280), Some(720), Some(30))
        );
        assert_eq!(
            s.to_string(),
            "/dev/video2?format=mjpeg&width=1280&height=720&fps=30"
        );
        for bad in [
            "video0",
            "/dev/video0?fps=0",
            "/dev/video0?x=1",
            "/dev/video0?width",
        ] {
            assert!(bad.parse::<V4l2Spec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn yuyv_and_nv12_convert_with_strides() {
        // 4x2 YUYV with a padded stride of 12 bytes.
        let mut src = vec![0u8; 24];
        for row in 0..2 {
            let l = &mut src[row * 12..row * 12 + 8];
            l.copy_from_slice(&[10, 100, 20, 200, 30, 110, 40, 210]);
            if row == 1 {
                l[1] = 102;
                l[3] = 202;
            }
        }
        let mut f = RawFrame::black(2, 2);
        yuyv_to_i420(&src, 4, 2, 12, &mut f).unwrap();
        assert_eq!(f.planes().0, &[10, 20, 30, 40, 10, 20, 30, 40]);
        assert_eq!(f.planes().1, &[101, 110]);
        assert_eq!(f.planes().2, &[201, 210]);
        assert!(yuyv_to_i420(&src[..19], 4, 2, 12, &mut f).is_err());

        // 4x2 NV12, stride 6.
        let mut nv = vec![0u8; 6 * 3];
        nv[..4].copy_from_slice(&[1, 2, 3, 4]);
        nv[6..10].copy_from_slice(&[5, 6, 7, 8]);
        nv[12..16].copy_from_slice(&[50, 60, 70, 80]);
        let mut g = RawFrame::black(4, 2);
        nv12_to_i420(&nv, 4, 2, 6, &mut g).unwrap();
        assert_eq!(
            g.planes(),
            (&[1, 2, 3, 4, 5, 6, 7, 8][..], &[50, 70][..], &[60, 80][..])
        );
        assert!(nv12_to_i420(&nv[..13], 4, 2, 6, &mut g).is_err());
    }

    /// DHT: a DC and an AC table, each with a single zero-length code.
    const HUFFMAN: [u8; 44] = [
        0xff, 0xc4, 0x00, 0x14, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff,
        0xc4, 0x00, 0x14, 0x10, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// A 16x16 baseline JPEG, flat grey, in three components (as a colour UVC camera sends)
    /// or in one (as a monochrome or IR camera does); the smallest valid files.
    pub(crate) fn jpeg(components: u8) -> Vec<u8> {
        // SOI, then DQT: table 0, all ones.
        let mut j = vec![0xff, 0xd8, 0xff, 0xdb, 0x00, 0x43, 0x00];
        j.extend_from_slice(&[1; 64]);
        let n = usize::from(components);
        // SOF0: 8-bit, 16x16, each component 1x1 sampled on table 0.
        j.extend_from_slice(&[
            0xff,
            0xc0,
            0x00,
            (8 + 3 * n) as u8,
            8,
            0,
            16,
            0,
            16,
            components,
        ]);
        for c in 1..=components {
            j.extend_from_slice(&[c, 0x11, 0]);
        }
        j.extend_from_slice(&HUFFMAN);
        // SOS: every component on Huffman tables 0/0, then an all-zero scan.
        j.extend_from_slice(&[0xff, 0xda, 0x00, (6 + 2 * n) as u8, components]);
        for c in 1..=components {
            j.extend_from_slice(&[c, 0x00]);
        }
        j.extend_from_slice(&[0, 63, 0, 0, 0, 0, 0, 0xff, 0xd9]);
        j
    }

    #[test]
    fn mjpeg_decodes_colour_and_monochrome_and_garbage_is_an_error() {
        let mut f = RawFrame::black(2, 2);
        mjpeg_to_i420(&jpeg(3), &mut f).expect("a colour JPEG decodes");
        assert_eq!((f.width, f.height), (16, 16));
        let mut g = RawFrame::black(2, 2);
        mjpeg_to_i420(&jpeg(1), &mut g).expect("a monochrome JPEG decodes");
        assert_eq!((g.width, g.height), (16, 16));
        let (gy, gu, gv) = g.planes_mut();
        assert!(
            gu.iter().chain(gv.iter()).all(|&c| c == 128),
            "chroma not grey"
        );
        let (fy, _, _) = f.planes_mut();
        assert_eq!(gy, fy, "the same picture gives the same luma either way");
        assert!(mjpeg_to_i420(b"not a jpeg", &mut f).is_err());
        assert!(mjpeg_to_i420(&[0xff, 0xd8, 0xff], &mut f).is_err());
        let colour = jpeg(3);
        assert!(mjpeg_to_i420(&colour[..colour.len() / 2], &mut f).is_err());
    }

    #[test]
    fn a_failed_buffer_is_a_bad_frame_not_a_device_failure() {
        let rung = Rung {
            width: 8,
            height: 4,
            fps: 30,
            bitrate_kbps: 100,
        };
        for buf in [Vec::new(), vec![128; 10]] {
            let cam = FakeCamera {
                frames_left: 1,
                buf,
                t: Duration::ZERO,
            };
            let mut src = V4l2Source::new("/dev/video9", cam);
            match src.next_frame(&rung) {
                Err(SourceError::BadFrame { device, .. }) => assert_eq!(device, "/dev/video9"),
                other => panic!("expected a bad frame, got {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn unplug_is_a_device_error_naming_the_node() {
        let cam = FakeCamera {
            frames_left: 2,
            buf: vec![128; 64],
            t: Duration::ZERO,
        };
        let mut src = V4l2Source::new("/dev/video9", cam);
        let rung = Rung {
            width: 8,
            height: 4,
            fps: 30,
            bitrate_kbps: 100,
        };
        assert!(matches!(src.next_frame(&rung), Ok(SourceFrame::Raw(f)) if f.width == 8));
        assert_eq!(src.timestamp(), Some(Duration::from_millis(33)));
        assert!(src.next_frame(&rung).is_ok());
        match src.next_frame(&rung) {
            Err(e @ SourceError::Device { .. }) => assert!(e.to_string().contains("/dev/video9")),
            other => panic!("expected a device error, got {:?}", other.map(|_| ())),
        }
    }

    /// Stands in for the v4l crate's stream, whose `Drop` panics when the driver refuses
    /// STREAMOFF; a real driver cannot be made to refuse it on demand.
    struct RefusesToStop<'a>(&'a std::sync::atomic::AtomicBool);

    impl Drop for RefusesToStop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!("Os {{ code: 5, kind: Uncategorized, message: \"Input/output error\" }}");
        }
    }

    #[test]
    fn a_stream_that_panics_on_close_costs_a_warning_not_the_thread() {
        let ran = std::sync::atomic::AtomicBool::new(false);
        assert!(!drop_contained(RefusesToStop(&ran)));
        assert!(
            ran.load(std::sync::atomic::Ordering::Relaxed),
            "its Drop ran"
        );
        assert!(
            drop_contained(vec![0u8; 4]),
            "a quiet Drop is reported as such"
        );
        // While unwinding, a second panic would abort: the stream is leaked, its Drop not run.
        let leaked = std::sync::atomic::AtomicBool::new(false);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            struct OnUnwind<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for OnUnwind<'_> {
                fn drop(&mut self) {
                    assert!(!drop_contained(RefusesToStop(self.0)));
                }
            }
            let _guard = OnUnwind(&leaked);
            panic!("the pipeline thread unwinds");
        }));
        assert!(unwound.is_err());
        assert!(
            !leaked.load(std::sync::atomic::Ordering::Relaxed),
            "not dropped while unwinding"
        );
    }
}
