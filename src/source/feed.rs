//! `feed:`: H.264 (or, with `?codec=h265`, H.265) from a payload app (Payload-SDK liveview
//! callback, MSDK app) over a unix socket, a TCP socket or a FIFO. dockcast listens; the app
//! connects and writes.
//!
//! The app's callback hands over buffers of any size (about 60 KB on DJI aircraft) that are not
//! aligned to access units, so the byte stream is re-cut with [`AccessUnitSplitter`]. Each chunk
//! may carry a 16-byte header with a capture timestamp (`board/feed/FEED.md`). DJI streams carry
//! private SEI that decoders log errors about (dji-sdk/Payload-SDK#355: "SEI type 240 size 200
//! truncated") and may be GDR-coded without any IDR (dji-sdk/Payload-SDK#69): the SEI is
//! stripped, and a recovery point counts as a place to start. The parsing is sans-IO
//! ([`FeedParser`]); [`FeedSource`] reads the socket on the pipeline's thread while the pipeline
//! waits for a picture, so a unit reaches the pipeline without a hand-over between threads.

use crate::media::frame::Codec;
use crate::media::h264::{
    filter_sei, filter_sei_body, is_recovery_point, nal_type, nal_units, sei_type,
    AccessUnitSplitter, SeiFilter, SeiMessage,
};
use crate::media::hevc;
use crate::media::quality::Rung;
use crate::source::{SourceError, SourceFrame, VideoSource, LIVE_WAIT};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// First four bytes of the optional chunk header ("DKCF": dockcast feed).
pub const HEADER_MAGIC: [u8; 4] = *b"DKCF";
/// Length of the optional chunk header.
pub const HEADER_LEN: usize = 16;
/// Header timestamp meaning "none: use the arrival time".
pub const NO_TIMESTAMP: u64 = u64::MAX;
/// Largest payload a header may announce; a larger one is a protocol error, not an allocation.
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;
/// The request line dockcast writes back on a socket when it needs an intra frame.
pub const KEYFRAME_REQUEST: &[u8] = b"IDR\n";
/// Whole access units read and not yet taken by the pipeline; more means the pipeline is
/// behind, and the feed then drops to the next keyframe instead of queueing.
pub const QUEUE_UNITS: usize = 8;

/// Where the payload app connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEndpoint {
    /// A unix stream socket dockcast creates at this path.
    Unix(String),
    /// A TCP address dockcast listens on.
    Tcp {
        /// Host or IP to bind.
        host: String,
        /// Port to bind.
        port: u16,
    },
    /// A FIFO at this path (created when missing). One-way: no keyframe requests.
    Fifo(String),
}

/// What to do with SEI messages that are private to the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeiPolicy {
    /// Strip `user_data_unregistered` (type 5), DJI's private type 240 and unparsable SEI.
    #[default]
    StripPrivate,
    /// Pass every SEI through.
    Keep,
}

/// A parsed `feed:` source URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// Where to listen.
    pub endpoint: FeedEndpoint,
    /// Silence after which the feed is reported stalled and an intra frame is asked for.
    pub watchdog: Duration,
    /// SEI handling.
    pub sei: SeiPolicy,
    /// What the app writes: H.264 unless `codec=h265`.
    pub codec: Codec,
}

impl FromStr for FeedSpec {
    type Err = String;

    /// `unix:PATH`, `tcp:HOST:PORT` or `fifo:PATH`, optionally
    /// `?watchdog=SECS&sei=strip|keep&codec=h264|h265`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (main, query) = s.split_once('?').unwrap_or((s, ""));
        let endpoint = if let Some(path) = main.strip_prefix("unix:") {
            FeedEndpoint::Unix(nonempty_path(path)?)
        } else if let Some(path) = main.strip_prefix("fifo:") {
            FeedEndpoint::Fifo(nonempty_path(path)?)
        } else if let Some(addr) = main.strip_prefix("tcp:") {
            let (host, port) = addr.rsplit_once(':').ok_or("feed:tcp: needs HOST:PORT")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("feed:tcp: needs a host to bind".into());
            }
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("feed:tcp: port {port:?} is not a number 0..=65535"))?;
            FeedEndpoint::Tcp {
                host: host.to_string(),
                port,
            }
        } else {
            return Err("feed: needs unix:PATH, tcp:HOST:PORT or fifo:PATH".into());
        };
        let mut spec = FeedSpec {
            endpoint,
            watchdog: Duration::from_secs(3),
            sei: SeiPolicy::StripPrivate,
            codec: Codec::H264,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("watchdog", v)) => {
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| (0.2..=3600.0).contains(s))
                        .ok_or_else(|| format!("watchdog={v}: seconds within 0.2..=3600"))?;
                    spec.watchdog = Duration::from_secs_f64(secs);
                }
                Some(("sei", "strip")) => spec.sei = SeiPolicy::StripPrivate,
                Some(("sei", "keep")) => spec.sei = SeiPolicy::Keep,
                Some(("codec", "h264")) => spec.codec = Codec::H264,
                Some(("codec", "h265")) => spec.codec = Codec::H265,
                _ => {
                    return Err(format!(
                    "unknown feed option {pair:?} (watchdog=SECS, sei=strip|keep, codec=h264|h265)"
                ))
                }
            }
        }
        Ok(spec)
    }
}

fn nonempty_path(p: &str) -> Result<String, String> {
    if p.is_empty() {
        Err("feed: needs a path".into())
    } else {
        Ok(p.to_string())
    }
}

impl fmt::Display for FeedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedEndpoint::Unix(p) => write!(f, "unix:{p}"),
            FeedEndpoint::Fifo(p) => write!(f, "fifo:{p}"),
            FeedEndpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            FeedEndpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl fmt::Display for FeedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.endpoint)?;
        let mut opts = Vec::new();
        if self.watchdog != Duration::from_secs(3) {
            opts.push(format!("watchdog={}", self.watchdog.as_secs_f64()));
        }
        if self.sei == SeiPolicy::Keep {
            opts.push("sei=keep".to_string());
        }
        if self.codec == Codec::H265 {
            opts.push("codec=h265".to_string());
        }
        if !opts.is_empty() {
            write!(f, "?{}", opts.join("&"))?;
        }
        Ok(())
    }
}

/// A chunk header that breaks the documented framing: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedParseError {
    /// A framed connection sent a chunk without the magic.
    #[error("chunk header starts with {found:02x?}, expected \"DKCF\"")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A header announced more than [`MAX_CHUNK`] bytes.
    #[error("chunk header announces {len} bytes, more than {MAX_CHUNK}")]
    TooLong {
        /// Announced length.
        len: u32,
    },
}

/// One access unit as the feed hands it to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedUnit {
    /// Annex-B access unit, private SEI removed.
    pub data: Bytes,
    /// IDR or recovery point.
    pub keyframe: bool,
    /// Capture time in microseconds: the header's, or the arrival time.
    pub timestamp_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Not decided yet: the first four bytes tell.
    Unknown,
    Raw,
    Framed,
}

/// Counters of one feed, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedStats {
    /// Access units handed to the pipeline.
    pub units: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Units dropped because the pipeline had not taken the ones before, or while waiting for
    /// a keyframe after such a drop or a (re)connect.
    pub dropped: u64,
    /// SEI NAL units removed or rewritten.
    pub sei_stripped: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Times the watchdog found the feed silent.
    pub stalls: u64,
    /// Connections closed for breaking the framing.
    pub protocol_errors: u64,
    /// `accept()` calls that failed for want of a resource (descriptors, memory); each one
    /// rests the listener for [`ACCEPT_REST`].
    pub accept_errors: u64,
}

/// Sans-IO feed parser: bytes in (any chunking), cleaned access units out.
#[derive(Debug)]
pub struct FeedParser {
    framing: Framing,
    header: Vec<u8>,
    payload_left: usize,
    chunk_ts: Option<u64>,
    splitter: AccessUnitSplitter,
    sei: SeiPolicy,
    codec: Codec,
    need_key: bool,
    /// SEI NAL units removed or rewritten so far.
    pub sei_stripped: u64,
    /// Units skipped while waiting for the first keyframe.
    pub skipped: u64,
}

impl FeedParser {
    /// A parser for one H.264 connection; it skips everything before the first keyframe.
    pub fn new(sei: SeiPolicy) -> Self {
        Self::with_codec(sei, Codec::H264)
    }

    /// A parser for one connection carrying `codec`.
    pub fn with_codec(sei: SeiPolicy, codec: Codec) -> Self {
        FeedParser {
            framing: Framing::Unknown,
            header: Vec::with_capacity(HEADER_LEN),
            payload_left: 0,
            chunk_ts: None,
            splitter: match codec {
                Codec::H264 => AccessUnitSplitter::default(),
                Codec::H265 => AccessUnitSplitter::for_hevc(),
            },
            sei,
            codec,
            need_key: true,
            sei_stripped: 0,
            skipped: 0,
        }
    }

    /// Makes the parser skip to the next keyframe (after the consumer dropped a unit).
    pub fn skip_to_keyframe(&mut self) {
        self.need_key = true;
    }

    /// Feeds received bytes; `arrival_us` stamps units whose chunk carries no timestamp.
    pub fn push(&mut self, mut bytes: &[u8], arrival_us: u64) -> Result<(), FeedParseError> {
        while !bytes.is_empty() {
            match self.framing {
                Framing::Raw => {
                    self.splitter.push_tagged(bytes, arrival_us);
                    return Ok(());
                }
                Framing::Unknown => {
                    let take = (4 - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.header.len() == 4 {
                        if self.header == HEADER_MAGIC {
                            self.framing = Framing::Framed;
                        } else {
                            self.framing = Framing::Raw;
                            let head = std::mem::take(&mut self.header);
                            self.splitter.push_tagged(&head, arrival_us);
                        }
                    }
                }
                Framing::Framed if self.payload_left == 0 => {
                    let take = (HEADER_LEN - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.header.len() == HEADER_LEN {
                        let h = std::mem::take(&mut self.header);
                        let mut magic = [0u8; 4];
                        magic.copy_from_slice(&h[..4]);
                        if magic != HEADER_MAGIC {
                            return Err(FeedParseError::BadMagic { found: magic });
                        }
                        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                        if len > MAX_CHUNK {
                            return Err(FeedParseError::TooLong { len });
                        }
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&h[8..16]);
                        let ts = u64::from_be_bytes(ts);
                        self.chunk_ts = (ts != NO_TIMESTAMP).then_some(ts);
                        self.payload_left = len as usize;
                    }
                }
                Framing::Framed => {
                    let take = self.payload_left.min(bytes.len());
                    let tag = self.chunk_ts.unwrap_or(arrival_us);
                    self.splitter.push_tagged(&bytes[..take], tag);
                    self.payload_left -= take;
                    bytes = &bytes[take..];
                }
            }
        }
        Ok(())
    }

    /// Ends the stream (the app disconnected): the last unit becomes pullable.
    pub fn finish(&mut self) {
        self.splitter.flush();
    }

    /// The next cleaned access unit, if one is complete.
    pub fn pull(&mut self) -> Option<FeedUnit> {
        while let Some((au, tag)) = self.splitter.pull_tagged() {
            let cleaned = match self.codec {
                Codec::H264 => clean_access_unit(&au.data, self.sei),
                Codec::H265 => clean_hevc_access_unit(&au.data, self.sei),
            };
            self.sei_stripped += cleaned.stripped;
            let data = cleaned.replaced.unwrap_or(au.data);
            if data.is_empty() {
                continue;
            }
            if self.need_key && !cleaned.keyframe {
                self.skipped += 1;
                continue;
            }
            self.need_key = false;
            return Some(FeedUnit {
                data,
                keyframe: cleaned.keyframe,
                timestamp_us: tag.unwrap_or(0),
            });
        }
        None
    }
}

/// True for SEI messages the feed removes under [`SeiPolicy::StripPrivate`].
///
/// DJI does not publish the UUIDs of its `user_data_unregistered` messages, and such messages
/// are by definition private to their writer: no decoder or player needs them, so all are
/// removed. Type 240 is the reserved type DJI aircraft emit (Payload-SDK#355).
pub fn is_private_sei(m: &SeiMessage) -> bool {
    m.payload_type == sei_type::USER_DATA_UNREGISTERED || m.payload_type == 240
}

/// What [`clean_access_unit`] made of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// The unit without private SEI; `None` when nothing was removed, to spare the copy.
    pub replaced: Option<Bytes>,
    /// A decoder can start here (IDR, or recovery point SEI with a picture).
    pub keyframe: bool,
    /// SEI NAL units removed or rewritten.
    pub stripped: u64,
}

/// Strips private SEI from one access unit (each NAL re-emitted with a 4-byte start code) and
/// tells whether a decoder can start on it.
pub fn clean_access_unit(au: &[u8], policy: SeiPolicy) -> Cleaned {
    let mut keyframe = false;
    let mut stripped = 0;
    let mut out: Vec<u8> = Vec::new();
    let mut any_vcl = false;
    for nal in nal_units(au) {
        let ty = nal[0] & 0x1f;
        any_vcl |= matches!(ty, 1..=5);
        let mut replacement = None;
        if ty == nal_type::SEI {
            if is_recovery_point(nal) {
                keyframe = true;
            }
            if policy == SeiPolicy::StripPrivate {
                match filter_sei(nal, is_private_sei) {
                    SeiFilter::Keep => {}
                    SeiFilter::Drop => {
                        stripped += 1;
                        continue;
                    }
                    SeiFilter::Rewrite(n) => {
                        stripped += 1;
                        replacement = Some(n);
                    }
                }
            }
        }
        if ty == nal_type::IDR {
            keyframe = true;
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(replacement.as_deref().unwrap_or(nal));
    }
    if !any_vcl {
        // Parameter sets or SEI alone are not a picture; a decoder cannot start on them.
        keyframe = false;
    }
    Cleaned {
        replaced: (stripped > 0).then(|| Bytes::from(out)),
        keyframe,
        stripped,
    }
}

/// [`clean_access_unit`] for H.265: private SEI messages removed from prefix and suffix SEI
/// NAL units; a decoder can start on an IRAP picture.
pub fn clean_hevc_access_unit(au: &[u8], policy: SeiPolicy) -> Cleaned {
    let mut keyframe = false;
    let mut stripped = 0;
    let mut out: Vec<u8> = Vec::new();
    for nal in nal_units(au) {
        let Some(ty) = hevc::nal_type(nal) else {
            continue;
        };
        keyframe |= hevc::is_irap(ty);
        out.extend_from_slice(&[0, 0, 0, 1]);
        let sei = ty == hevc::NAL_SEI_PREFIX || ty == hevc::NAL_SEI_SUFFIX;
        if !(sei && policy == SeiPolicy::StripPrivate && nal.len() > 2) {
            out.extend_from_slice(nal);
            continue;
        }
        match filter_sei_body(&nal[..2], &nal[2..], is_private_sei) {
            SeiFilter::Keep => out.extend_from_slice(nal),
            SeiFilter::Drop => {
                stripped += 1;
                out.truncate(out.len() - 4);
            }
            SeiFilter::Rewrite(n) => {
                stripped += 1;
                out.extend_from_slice(&n);
            }
        }
    }
    Cleaned {
        replaced: (stripped > 0).then(|| Bytes::from(out)),
        keyframe,
        stripped,
    }
}

/// A listening feed, read on its caller's thread.
///
/// The socket is read inside [`wait_frame`](VideoSource::wait_frame), which the pipeline calls
/// whenever it waits for a picture, so a unit goes from the socket to the pipeline without
/// waking another thread. Between two calls the kernel's socket buffer holds what the app
/// writes (a passthrough pipeline is back within microseconds); an app must not block on it
/// for long, which is why `board/feed/psdk_forward.c` writes without blocking and drops a
/// buffer the socket cannot take.
pub struct FeedSource {
    name: String,
    spec: FeedSpec,
    listener: Listener,
    /// The payload app's connection and its parser (unix and TCP endpoints).
    conn: Option<(Conn, FeedParser)>,
    /// The FIFO's parser: a FIFO has no connections, one parser lives as long as the source.
    fifo_parser: FeedParser,
    /// Whole units read from the socket and not yet taken by the pipeline.
    ready: VecDeque<FeedUnit>,
    buf: Vec<u8>,
    watch: Watch,
    notice: Option<String>,
    stats: FeedStats,
    /// Arrival timestamps count from here.
    epoch: Instant,
    last_ts: Option<Duration>,
    /// Unix socket file to remove when the source closes.
    socket_path: Option<String>,
    /// Until when the listener is left out of the poll after a failed `accept()`; kept past
    /// that time until a connection is taken, so that a shortage is logged once.
    listener_rest: Option<Instant>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
    Fifo(std::fs::File),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Fifo(f) => f.as_raw_fd(),
        }
    }
}

/// An accepted connection, non-blocking: it is only read after `poll` says so, and a keyframe
/// request the app does not read must not hold up the pipeline.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_nonblocking(true),
            Conn::Tcp(s) => s.set_nonblocking(true),
        }
    }
}

/// Watchdog bookkeeping of one feed.
struct Watch {
    last_data: Instant,
    /// Set once data has flowed: before the app's first connection silence is not a stall.
    had_data: bool,
    stalled: bool,
    last_request: Instant,
}

/// The longest a single `poll` waits, so that the watchdog runs during a long wait.
const TICK: Duration = Duration::from_millis(100);
/// Reads of what the socket already holds before a unit is handed out: 16 × 64 KiB is more
/// than a socket buffer holds by default.
const DRAIN_READS: usize = 16;
/// How long the listener is left alone after `accept()` failed for want of a resource. The
/// connection it could not take stays queued, so the listener keeps polling readable: asked
/// again at once, it would fail again at once for as long as the shortage lasts.
pub const ACCEPT_REST: Duration = Duration::from_millis(500);

impl FeedSource {
    /// Starts listening at the spec's endpoint; the app may connect at any time after.
    pub fn open(spec: &FeedSpec) -> Result<FeedSource, SourceError> {
        let name = format!("feed:{}", spec.endpoint);
        let dev_err = |source| SourceError::Device {
            device: name.clone(),
            source,
        };
        let mut socket_path = None;
        let listener = match &spec.endpoint {
            // Listeners are non-blocking: a connection that poll announced may be gone by the
            // time it is accepted, and the pipeline thread must not wait for the next one.
            FeedEndpoint::Unix(path) => {
                remove_stale_socket(path);
                let l = UnixListener::bind(path).map_err(dev_err)?;
                socket_path = Some(path.clone());
                l.set_nonblocking(true).map_err(dev_err)?;
                Listener::Unix(l)
            }
            FeedEndpoint::Tcp { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port)).map_err(dev_err)?;
                l.set_nonblocking(true).map_err(dev_err)?;
                Listener::Tcp(l)
            }
            FeedEndpoint::Fifo(path) => Listener::Fifo(open_fifo(path).map_err(dev_err)?),
        };
        let now = Instant::now();
        Ok(FeedSource {
            name,
            spec: spec.clone(),
            listener,
            conn: None,
            fifo_parser: FeedParser::with_codec(spec.sei, spec.codec),
            ready: VecDeque::with_capacity(QUEUE_UNITS),
            buf: vec![0u8; 64 * 1024],
            watch: Watch {
                last_data: now,
                had_data: false,
                stalled: false,
                last_request: now,
            },
            notice: None,
            stats: FeedStats::default(),
            epoch: now,
            last_ts: None,
            socket_path,
            listener_rest: None,
        })
    }

    /// The feed's counters.
    pub fn stats(&self) -> &FeedStats {
        &self.stats
    }

    /// The next unit, reading the socket for up to `wait` until one is whole.
    ///
    /// What the socket already holds is taken in first (up to [`DRAIN_READS`] reads): a lens
    /// being switched to is polled only once per frame of the active one, and a pipeline that
    /// was held up comes back to a backlog; either way the app must not be left writing into a
    /// full socket, and a backlog beyond [`QUEUE_UNITS`] is dropped to the next keyframe as it
    /// would be if it had been read in time.
    fn recv(&mut self, wait: Duration) -> Result<Option<FeedUnit>, SourceError> {
        let deadline = Instant::now() + wait;
        // A backlog's units arrived at some unknown time before now; they share one arrival
        // time, which tells the pipeline's clock that they were read at once.
        let backlog_us = self.now_us();
        for _ in 0..DRAIN_READS {
            if !self.read_ready(Duration::ZERO, Some(backlog_us))? {
                break;
            }
        }
        loop {
            if let Some(unit) = self.ready.pop_front() {
                self.last_ts = Some(Duration::from_micros(unit.timestamp_us));
                return Ok(Some(unit));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.read_ready(left.min(TICK), None)?;
        }
    }

    /// Waits up to `timeout` for the listener or the connection, and handles what is ready;
    /// whether anything was. Bytes read count as arrived at `arrival_us` if given, else now.
    fn read_ready(
        &mut self,
        timeout: Duration,
        arrival_us: Option<u64>,
    ) -> Result<bool, SourceError> {
        // A resting listener is left out (poll skips a negative descriptor), and the wait ends
        // when its rest does.
        let mut timeout = timeout;
        let mut fds = [self.listener.fd(), -1];
        if let Some(until) = self.listener_rest {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                fds[0] = -1;
                timeout = timeout.min(left);
            }
        }
        let n = if let Some((c, _)) = &self.conn {
            fds[1] = c.fd();
            2
        } else {
            1
        };
        let ready = poll_readable(&fds[..n], timeout).map_err(|source| SourceError::Device {
            device: self.name.clone(),
            source,
        })?;
        self.watchdog();
        let arrival_us = arrival_us.unwrap_or_else(|| self.now_us());
        if ready[0] {
            let got = match &self.listener {
                Listener::Fifo(f) => {
                    let mut f = f;
                    match f.read(&mut self.buf) {
                        Ok(n @ 1..) => Accepted::Bytes(n),
                        _ => Accepted::Nothing,
                    }
                }
                Listener::Unix(l) => match l.accept() {
                    Ok((s, _)) => Accepted::Conn(Conn::Unix(s)),
                    Err(e) => Accepted::Failed(e),
                },
                Listener::Tcp(l) => match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        Accepted::Conn(Conn::Tcp(s))
                    }
                    Err(e) => Accepted::Failed(e),
                },
            };
            match got {
                Accepted::Bytes(n) => self.fifo_data(n, arrival_us),
                // A new connection replaces the old one: the app restarted and its old socket
                // may never report closing. Poll again before reading.
                Accepted::Conn(c) => self.connected(c),
                Accepted::Failed(e) => self.accept_failed(e),
                Accepted::Nothing => {}
            }
            return Ok(true);
        }
        if n == 2 && ready[1] {
            let Some((mut c, mut parser)) = self.conn.take() else {
                return Ok(false);
            };
            let closed = match c.read(&mut self.buf) {
                Ok(0) => Some("closed by the app".to_string()),
                Ok(n) => {
                    self.note_data(n);
                    let pushed = push_units(
                        &mut parser,
                        &self.buf[..n],
                        arrival_us,
                        &mut self.ready,
                        &mut self.stats,
                    );
                    pushed.err().map(|e| {
                        self.stats.protocol_errors += 1;
                        format!("protocol error: {e}")
                    })
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            match closed {
                // The unit still being collected is dropped, not flushed: nothing says the app
                // finished writing it, and a truncated picture would reach the viewer.
                Some(why) => tracing::info!(feed = %self.name, "payload app disconnected: {why}"),
                None => self.conn = Some((c, parser)),
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// `accept()` failed. A connection that went away before it was taken, or a signal, is
    /// nothing; anything else is a shortage (descriptors, memory) that the next call would meet
    /// too, so the listener rests and the app's connection waits in the queue meanwhile.
    fn accept_failed(&mut self, e: std::io::Error) {
        use std::io::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::WouldBlock | ErrorKind::Interrupted | ErrorKind::ConnectionAborted
        ) {
            return;
        }
        self.stats.accept_errors += 1;
        // Once per shortage, not once per rest: a connection taken ends the shortage.
        if self.listener_rest.is_none() {
            tracing::warn!(
                feed = %self.name,
                "cannot accept the payload app's connection, retrying every {} ms: {e}",
                ACCEPT_REST.as_millis()
            );
        }
        self.listener_rest = Some(Instant::now() + ACCEPT_REST);
    }

    fn connected(&mut self, c: Conn) {
        if let Err(e) = c.set_nonblocking() {
            tracing::warn!(feed = %self.name, "payload app refused: {e}");
            return;
        }
        self.stats.connections += 1;
        self.listener_rest = None;
        tracing::info!(feed = %self.name, "payload app connected");
        self.conn = Some((c, FeedParser::with_codec(self.spec.sei, self.spec.codec)));
    }

    /// Microseconds since the source opened: the arrival time of what is read now.
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The first `n` bytes of the read buffer came from the FIFO.
    fn fifo_data(&mut self, n: usize, arrival_us: u64) {
        if self.watch.stalled || self.watch.last_data.elapsed() > self.spec.watchdog {
            // The writer was gone long enough to have restarted: what was buffered belongs to
            // a stream that ended.
            self.fifo_parser = FeedParser::with_codec(self.spec.sei, self.spec.codec);
        }
        self.note_data(n);
        let pushed = push_units(
            &mut self.fifo_parser,
            &self.buf[..n],
            arrival_us,
            &mut self.ready,
            &mut self.stats,
        );
        if let Err(e) = pushed {
            // A FIFO cannot be closed on the writer: resynchronise on the next unit instead.
            self.stats.protocol_errors += 1;
            tracing::warn!(feed = %self.name, "protocol error, resynchronising: {e}");
            self.fifo_parser = FeedParser::with_codec(self.spec.sei, self.spec.codec);
        }
    }

    fn note_data(&mut self, n: usize) {
        self.stats.bytes += n as u64;
        if self.watch.stalled {
            tracing::info!(feed = %self.name, "feed delivers again");
        }
        self.watch.last_data = Instant::now();
        self.watch.had_data = true;
        self.watch.stalled = false;
    }

    fn watchdog(&mut self) {
        let watch = &mut self.watch;
        if !watch.had_data || watch.last_data.elapsed() < self.spec.watchdog {
            return;
        }
        if !watch.stalled {
            watch.stalled = true;
            self.stats.stalls += 1;
            let msg = format!(
                "{}: no data for {:.1} s; asked the app for an intra frame, still listening",
                self.name,
                self.spec.watchdog.as_secs_f64()
            );
            tracing::warn!("{msg}");
            self.notice = Some(msg);
        }
        if watch.last_request.elapsed() >= self.spec.watchdog {
            watch.last_request = Instant::now();
            self.send_keyframe_request();
        }
    }

    fn send_keyframe_request(&mut self) {
        if let Some((c, _)) = self.conn.as_mut() {
            // An app that does not read its socket fills the buffer; a write that would block
            // is harmless: the app simply does not support requests.
            if c.write(KEYFRAME_REQUEST).is_err() {
                tracing::debug!(feed = %self.name, "keyframe request not taken by the app");
            }
        }
    }
}

impl Drop for FeedSource {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn encoded(unit: FeedUnit) -> SourceFrame<'static> {
    SourceFrame::Encoded {
        data: unit.data,
        keyframe: unit.keyframe,
    }
}

impl VideoSource for FeedSource {
    fn next_frame(&mut self, _rung: &Rung) -> Result<SourceFrame<'_>, SourceError> {
        match self.recv(LIVE_WAIT)? {
            Some(unit) => Ok(encoded(unit)),
            None => Err(SourceError::Device {
                device: self.name.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no access unit"),
            }),
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn codec(&self) -> Codec {
        self.spec.codec
    }

    fn wait_frame(
        &mut self,
        _rung: &Rung,
        wait: Duration,
    ) -> Result<Option<SourceFrame<'_>>, SourceError> {
        Ok(self.recv(wait)?.map(encoded))
    }

    fn timestamp(&self) -> Option<Duration> {
        self.last_ts
    }

    fn request_keyframe(&mut self) {
        self.send_keyframe_request();
    }

    fn take_notice(&mut self) -> Option<String> {
        self.notice.take()
    }
}

/// What the listener had when it was readable.
enum Accepted {
    /// Bytes from the FIFO, at the start of the read buffer.
    Bytes(usize),
    /// A payload app connected.
    Conn(Conn),
    /// The listener was readable and `accept()` failed.
    Failed(std::io::Error),
    Nothing,
}

/// Feeds `data` to `parser` and queues the units it completes, dropping to the next keyframe
/// when the pipeline has not taken the ones before.
fn push_units(
    parser: &mut FeedParser,
    data: &[u8],
    now_us: u64,
    ready: &mut VecDeque<FeedUnit>,
    stats: &mut FeedStats,
) -> Result<(), FeedParseError> {
    let before = parser.sei_stripped;
    let skipped = parser.skipped;
    let r = parser.push(data, now_us);
    while let Some(unit) = parser.pull() {
        if ready.len() < QUEUE_UNITS {
            ready.push_back(unit);
            stats.units += 1;
        } else {
            stats.dropped += 1;
            parser.skip_to_keyframe();
        }
    }
    stats.sei_stripped += parser.sei_stripped - before;
    stats.dropped += parser.skipped - skipped;
    r
}

/// A unix socket left by a previous run that nobody listens on would make `bind` fail.
fn remove_stale_socket(path: &str) {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// Opens (creating when missing) a FIFO for reading. Read-write, so that the FIFO never reads
/// as closed between two runs of the app, and non-blocking, so opening needs no writer.
fn open_fifo(path: &str) -> std::io::Result<std::fs::File> {
    if std::fs::symlink_metadata(path).is_err() {
        let c = std::ffi::CString::new(path)
            .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o660) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let is_fifo = std::fs::metadata(path)?.file_type().is_fifo();
    if !is_fifo {
        return Err(std::io::Error::other("exists and is not a FIFO"));
    }
    std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Waits until one of `fds` is readable or `timeout` passes; returns which are readable.
fn poll_readable(fds: &[RawFd], timeout: Duration) -> std::io::Result<[bool; 2]> {
    debug_assert!(fds.len() <= 2);
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 2];
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
    }
    let n = fds.len().min(2);
    // Rounded up: a wait of 0.3 ms must not become a busy poll with a zero timeout.
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of at least `n` pollfd structs for the whole call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok([false; 2]);
        }
        return Err(e);
    }
    let readable =
        |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok([readable(&pfds[0]), n == 2 && readable(&pfds[1])])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small stream: SPS, PPS, private SEI + IDR, then P frames, built by hand.
    fn stream(frames: usize, sei: bool) -> Vec<u8> {
        stream_padded(frames, sei, 1)
    }

    /// `frames` pictures whose slices carry `pad` payload bytes each (no zero bytes, so no
    /// start code can appear inside them).
    fn stream_padded(frames: usize, sei: bool, pad: usize) -> Vec<u8> {
        let mut s = Vec::new();
        for i in 0..frames {
            if i % 5 == 0 {
                s.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xd9]);
                s.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xcb, 0x83, 0xcb, 0x20]);
            }
            if sei {
                // user_data_unregistered: 16-byte UUID + 2 bytes.
                s.extend_from_slice(&[0, 0, 0, 1, 0x06, 0x05, 18]);
                s.extend_from_slice(&[0xAA; 16]);
                s.extend_from_slice(&[1, 2, 0x80]);
            }
            let ty = if i % 5 == 0 { 0x65 } else { 0x41 };
            s.extend_from_slice(&[0, 0, 0, 1, ty, 0x88, i as u8 | 1]);
            s.resize(s.len() + pad, 0x10);
        }
        s
    }

    fn parse_all(bytes: &[u8], cuts: &[usize], sei: SeiPolicy) -> Vec<FeedUnit> {
        let mut p = FeedParser::new(sei);
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts.get(i).copied().unwrap_or(7).clamp(1, rest.len());
            i += 1;
            p.push(&rest[..n], i as u64).unwrap();
            rest = &rest[n..];
            while let Some(u) = p.pull() {
                out.push(u);
            }
        }
        p.finish();
        while let Some(u) = p.pull() {
            out.push(u);
        }
        out
    }

    #[test]
    fn an_h265_feed_is_cut_on_its_own_rules_with_private_sei_removed() {
        // Per picture: a prefix SEI with a private message (type 5) and a kept one (type 1,
        // pic timing), then the slice; every 3rd picture is an IDR with VPS/SPS/PPS before it.
        let private = SeiMessage {
            payload_type: sei_type::USER_DATA_UNREGISTERED,
            payload: vec![0x11; 20],
        };
        let kept = SeiMessage {
            payload_type: 1,
            payload: vec![0x22, 0x33],
        };
        let sei =
            crate::media::h264::build_sei_with_header(&[0x4e, 0x01], &[private, kept.clone()]);
        let mut stream = Vec::new();
        let mut nal = |n: &[u8]| {
            stream.extend_from_slice(&[0, 0, 0, 1]);
            stream.extend_from_slice(n);
        };
        for i in 0..9u8 {
            if i % 3 == 0 {
                nal(&[0x40, 0x01, 0x0c]);
                nal(&[0x42, 0x01, 0x01]);
                nal(&[0x44, 0x01, 0xc1]);
            }
            nal(&sei);
            let header = if i % 3 == 0 { 0x26 } else { 0x02 };
            nal(&[header, 0x01, 0x80, 0x40 + i]);
        }
        // A trailing NAL ends the last picture, as the next one would.
        nal(&[0x46, 0x01, 0x50]);
        let mut p = FeedParser::with_codec(SeiPolicy::StripPrivate, Codec::H265);
        for chunk in stream.chunks(7) {
            p.push(chunk, 0).unwrap();
        }
        let units: Vec<FeedUnit> = std::iter::from_fn(|| p.pull()).collect();
        assert_eq!(units.len(), 9);
        assert_eq!(
            units.iter().map(|u| u.keyframe).collect::<Vec<_>>(),
            [true, false, false, true, false, false, true, false, false]
        );
        assert_eq!(p.sei_stripped, 9);
        for u in &units {
            let seis: Vec<&[u8]> = nal_units(&u.data)
                .filter(|n| hevc::nal_type(n) == Some(hevc::NAL_SEI_PREFIX))
                .collect();
            assert_eq!(seis.len(), 1);
            assert_eq!(
                crate::media::h264::sei_body_messages(&seis[0][2..]).unwrap(),
                std::slice::from_ref(&kept)
            );
            assert_eq!(&seis[0][..2], &[0x4e, 0x01]);
        }
        // A stream joined mid-GOP (at picture 1's SEI) starts at the next IRAP, picture 3.
        let sei_at: Vec<usize> = stream
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == [0, 0, 0, 1, 0x4e, 0x01])
            .map(|(i, _)| i)
            .collect();
        let mut late = FeedParser::with_codec(SeiPolicy::Keep, Codec::H265);
        late.push(&stream[sei_at[1]..], 0).unwrap();
        let first = late.pull().expect("a unit");
        assert!(first.keyframe);
        assert!(contains_slice(&first.data, &[0x26, 0x01, 0x80, 0x43]));
        assert_eq!(late.skipped, 2);
    }

    fn contains_slice(au: &[u8], nal: &[u8]) -> bool {
        nal_units(au).any(|n| n == nal)
    }

    #[test]
    fn parses_uris() {
        let s: FeedSpec = "unix:/run/f.sock?watchdog=1.5&sei=keep".parse().unwrap();
        assert_eq!(s.endpoint, FeedEndpoint::Unix("/run/f.sock".into()));
        assert_eq!(s.watchdog, Duration::from_millis(1500));
        assert_eq!(s.sei, SeiPolicy::Keep);
        assert_eq!(s.to_string(), "unix:/run/f.sock?watchdog=1.5&sei=keep");
        let t: FeedSpec = "tcp:[::1]:7000".parse().unwrap();
        assert_eq!(t.to_string(), "tcp:[::1]:7000");
        assert_eq!(t.codec, Codec::H264);
        let h: FeedSpec = "fifo:/f?codec=h265".parse().unwrap();
        assert_eq!(h.codec, Codec::H265);
        assert_eq!(h.to_string(), "fifo:/f?codec=h265");
        for bad in [
            "unix:/a?codec=vp8",
            "unix:",
            "tcp:1.2.3.4",
            "tcp::80",
            "tcp:h:99999",
            "x:y",
            "fifo:/a?watchdog=0",
        ] {
            assert!(bad.parse::<FeedSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn strips_private_sei_and_keeps_the_rest() {
        let units = parse_all(&stream(10, true), &[60_000], SeiPolicy::StripPrivate);
        assert_eq!(units.len(), 10);
        assert!(units[0].keyframe && units[5].keyframe && !units[1].keyframe);
        for u in &units {
            assert!(nal_units(&u.data).all(|n| n[0] & 0x1f != 6), "SEI left");
        }
        let kept = parse_all(&stream(10, true), &[3], SeiPolicy::Keep);
        assert!(nal_units(&kept[0].data).any(|n| n[0] & 0x1f == 6));
        // Slices are untouched.
        let plain = parse_all(&stream(10, false), &[1], SeiPolicy::StripPrivate);
        assert_eq!(plain.len(), 10);
        for (a, b) in units.iter().zip(&plain) {
            assert_eq!(a.data, b.data);
        }
    }

    #[test]
    fn mixed_sei_is_rewritten_and_recovery_point_starts_a_gdr_stream() {
        // One SEI NAL with a recovery point (type 6) and a DJI private type 240, then a P slice.
        let mut s = vec![0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xd9];
        s.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xcb, 0x83, 0xcb, 0x20]);
        s.extend_from_slice(&[0, 0, 0, 1, 0x06, 6, 1, 0x84, 240, 3, 9, 9, 9, 0x80]);
        s.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x88, 0x01, 0x10]);
        s.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x88, 0x03, 0x10]);
        let units = parse_all(&s, &[5, 5, 5], SeiPolicy::StripPrivate);
        assert_eq!(
            units.len(),
            2,
            "starts on the recovery point, no IDR needed"
        );
        assert!(units[0].keyframe);
        let sei: Vec<&[u8]> = nal_units(&units[0].data)
            .filter(|n| n[0] & 0x1f == 6)
            .collect();
        assert_eq!(sei, vec![&[0x06u8, 6, 1, 0x84, 0x80][..]]);
    }

    #[test]
    fn header_timestamps_follow_the_unit_start() {
        let data = stream(6, false);
        let mut framed = Vec::new();
        // Cut after each unit's first byte so every unit spans two chunks.
        let units = parse_all(&data, &[data.len()], SeiPolicy::Keep);
        let mut at = 0;
        for (i, u) in units.iter().enumerate() {
            let len = u.data.len();
            for (j, part) in [&data[at..at + 1], &data[at + 1..at + len]]
                .iter()
                .enumerate()
            {
                framed.extend_from_slice(&HEADER_MAGIC);
                framed.extend_from_slice(&(part.len() as u32).to_be_bytes());
                let ts = if j == 0 {
                    1000 * (i as u64 + 1)
                } else {
                    NO_TIMESTAMP
                };
                framed.extend_from_slice(&ts.to_be_bytes());
                framed.extend_from_slice(part);
            }
            at += len;
        }
        let got = parse_all(&framed, &[3, 100, 17, 1], SeiPolicy::Keep);
        assert_eq!(got.len(), 6);
        for (i, u) in got.iter().enumerate() {
            assert_eq!(u.timestamp_us, 1000 * (i as u64 + 1), "unit {i}");
            assert_eq!(u.data, units[i].data);
        }
        let mut p = FeedParser::new(SeiPolicy::Keep);
        let mut bad = HEADER_MAGIC.to_vec();
        bad.extend_from_slice(&(MAX_CHUNK + 1).to_be_bytes());
        bad.extend_from_slice(&[0; 8]);
        assert!(matches!(
            p.push(&bad, 0),
            Err(FeedParseError::TooLong { .. })
        ));
    }

    /// A feed listening on a unix socket in a fresh directory named after `tag`, with the
    /// options in `query`; the directory is for the caller to remove.
    fn open_unix_feed(
        tag: &str,
        query: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf, FeedSource) {
        let dir = std::env::temp_dir().join(format!("dockcast-feed-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{tag}.sock"));
        let spec: FeedSpec = format!("unix:{}{query}", path.display()).parse().unwrap();
        let src = FeedSource::open(&spec).unwrap();
        (dir, path, src)
    }

    /// Any rung: the feed passes units through whatever it says.
    const RUNG: Rung = Rung {
        width: 16,
        height: 16,
        fps: 30,
        bitrate_kbps: 100,
    };

    #[test]
    fn silent_app_is_reported_asked_for_an_intra_frame_and_can_come_back() {
        use std::io::Read;
        let (dir, path, mut src) = open_unix_feed("wd", "?watchdog=0.3");
        let mut app = UnixStream::connect(&path).unwrap();
        app.write_all(&stream(6, true)).unwrap();
        let mut units = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while units < 5 && Instant::now() < deadline {
            if let Ok(Some(SourceFrame::Encoded { .. })) = src.wait_frame(&RUNG, LIVE_WAIT) {
                units += 1;
            }
        }
        assert_eq!(
            units, 5,
            "the sixth unit completes only when a seventh begins"
        );
        // Silence while the pipeline waits: a notice for the session and a request line for
        // the app.
        let deadline = Instant::now() + Duration::from_secs(5);
        let notice = loop {
            assert!(matches!(src.wait_frame(&RUNG, LIVE_WAIT), Ok(None)));
            if let Some(n) = src.take_notice() {
                break n;
            }
            assert!(Instant::now() < deadline, "no stall notice");
        };
        assert!(notice.contains("no data"), "{notice}");
        assert_eq!(src.stats().stalls, 1);
        app.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut line = [0u8; 4];
        app.read_exact(&mut line).unwrap();
        assert_eq!(&line, KEYFRAME_REQUEST);
        // The app restarts: a new connection resumes at its first keyframe.
        drop(app);
        let mut app = UnixStream::connect(&path).unwrap();
        app.write_all(&stream(3, false)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = loop {
            if let Ok(Some(SourceFrame::Encoded { keyframe, .. })) =
                src.wait_frame(&RUNG, LIVE_WAIT)
            {
                break keyframe;
            }
            assert!(Instant::now() < deadline, "nothing after the restart");
        };
        assert!(first);
        assert_eq!(src.stats().connections, 2);
        drop(src);
        assert!(!path.exists(), "the socket file is removed on close");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_feed_polled_now_and_then_takes_in_its_backlog_and_drops_to_a_keyframe() {
        // A lens being switched to is polled without waiting, once per frame of the active one:
        // each poll must empty the socket so that the app never writes into a full one.
        let (dir, path, mut src) = open_unix_feed("bl", "");
        let mut app = UnixStream::connect(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while src.stats().connections == 0 {
            assert!(matches!(src.wait_frame(&RUNG, Duration::ZERO), Ok(None)));
            assert!(Instant::now() < deadline, "the app was never accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        // 25 pictures of 4 kB: more than one read takes, less than the socket buffer holds.
        let backlog = stream_padded(25, false, 4000);
        app.write_all(&backlog).unwrap();
        let first = src.wait_frame(&RUNG, Duration::ZERO).unwrap();
        assert!(matches!(
            first,
            Some(SourceFrame::Encoded { keyframe: true, .. })
        ));
        let stats = *src.stats();
        assert_eq!(stats.bytes, backlog.len() as u64, "one poll read it all");
        // 24 units are whole (the last completes only when another begins): 8 fit the queue,
        // the rest are dropped up to a keyframe that does not come before the data ends.
        assert_eq!((stats.units, stats.dropped), (QUEUE_UNITS as u64, 16));
        let mut queued = 0;
        while let Ok(Some(_)) = src.wait_frame(&RUNG, Duration::ZERO) {
            queued += 1;
        }
        assert_eq!(queued, QUEUE_UNITS - 1);
        drop(src);
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_units(cuts in proptest::collection::vec(1usize..200, 1..40)) {
            let data = stream(12, true);
            let whole = parse_all(&data, &[data.len()], SeiPolicy::StripPrivate);
            let cut = parse_all(&data, &cuts, SeiPolicy::StripPrivate);
            prop_assert_eq!(whole.iter().map(|u| &u.data).collect::<Vec<_>>(),
                            cut.iter().map(|u| &u.data).collect::<Vec<_>>());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000),
                                       cuts in proptest::collection::vec(1usize..500, 1..20),
                                       framed in any::<bool>()) {
            let mut input = Vec::new();
            if framed {
                input.extend_from_slice(&HEADER_MAGIC);
                input.extend_from_slice(&(bytes.len() as u32 / 2).to_be_bytes());
                input.extend_from_slice(&7u64.to_be_bytes());
            }
            input.extend_from_slice(&bytes);
            let mut p = FeedParser::new(SeiPolicy::StripPrivate);
            let mut rest = &input[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                i += 1;
                if p.push(&rest[..n], 0).is_err() {
                    break;
                }
                rest = &rest[n..];
                while p.pull().is_some() {}
            }
            p.finish();
            while p.pull().is_some() {}
        }
    }
}
