//! `sink::gb28181::run` against SIPp as the GB/T 28181 platform and GStreamer as its media
//! server: digest registration checked by SIPp, queries answered with the SN echoed, INVITE
//! answered and PS/RTP decoded by `mpegpsdemux ! h264parse`, BYE stopping the media, unregister
//! on cancel, re-registration after a platform outage. Needs sip-tester, gstreamer1.0-* and
//! ffmpeg (scripts/setup-deps.sh).

mod peers;

use dockcast::media::encoder::H264Encoder;
use dockcast::media::frame::{Codec, EncodedFrame};
use dockcast::media::quality::Rung;
use dockcast::sink::gb28181::SipTransport;
use dockcast::sink::gb28181::{run, GbOptions, GbTarget};
use dockcast::sink::SinkEvent;
use dockcast::source::pattern::{PatternSource, Style};
use dockcast::source::{SourceFrame, VideoSource};
use peers::gst::{Mode, PsReceiver};
use peers::probe::probe_file;
use peers::sipp::{start_uac, start_uac_over, PlatformUas, UacProcess};
use peers::{free_port, wait_until};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const SERVER_ID: &str = "34020000002000000001";
const DEVICE: &str = "34020000001320000001";
const CHANNEL: &str = "34020000001310000001";
const PASSWORD: &str = "12345678";
const FRAME: Duration = Duration::from_micros(33_333);

/// The tests count frames against wall-clock time; an encoder, SIPp and GStreamer per test
/// competing for two cores would make the counts lie, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 5 s of 640x360 test pattern at 30 fps, an IDR every 30 frames; the rings pattern so that
/// frames span several RTP packets.
fn encode_clip() -> Vec<EncodedFrame> {
    let rung = Rung {
        width: 640,
        height: 360,
        fps: 30,
        bitrate_kbps: 800,
    };
    let mut enc = H264Encoder::new(rung, 30).expect("encoder");
    let mut src = PatternSource::new(Style::Zoom);
    let mut out = Vec::new();
    for i in 0..150u32 {
        let SourceFrame::Raw(raw) = src.next_frame(&rung).expect("pattern") else {
            panic!("pattern gives raw frames");
        };
        if let Some(f) = enc.encode(raw, FRAME * i).expect("encode") {
            out.push(f);
        }
    }
    assert!(out[0].keyframe);
    out
}

/// Counts frames fed to the sink from the first keyframe after `armed` until `counting` ends.
#[derive(Default)]
struct Tally {
    armed: AtomicBool,
    counting: AtomicBool,
    sent: AtomicU64,
}

/// Feeds the clip in a loop at 30 fps, with a media clock that keeps going up.
fn feed(
    clip: Vec<EncodedFrame>,
    tx: mpsc::Sender<EncodedFrame>,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FRAME);
        for n in 0u32.. {
            tick.tick().await;
            let mut f = clip[n as usize % clip.len()].clone();
            f.pts = FRAME * n;
            if f.keyframe && tally.armed.swap(false, Ordering::SeqCst) {
                tally.counting.store(true, Ordering::SeqCst);
            }
            if tally.counting.load(Ordering::SeqCst) {
                tally.sent.fetch_add(1, Ordering::SeqCst);
            }
            if tx.send(f).await.is_err() {
                return;
            }
        }
    })
}

fn target(platform_port: u16, device_port: u16, password: &str) -> GbTarget {
    GbTarget {
        server_host: "127.0.0.1".into(),
        server_port: platform_port,
        server_id: SERVER_ID.into(),
        device_id: DEVICE.into(),
        password: password.into(),
        local_port: device_port,
        channel: CHANNEL.into(),
    }
}

fn options(media_port: u16) -> GbOptions {
    GbOptions {
        bind_ip: "127.0.0.1".parse().expect("ip"),
        media_port,
        keepalive_interval: Duration::from_secs(1),
        t1: Duration::from_millis(200),
        transaction_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        tcp_media_timeout: Duration::from_secs(5),
        ..GbOptions::default()
    }
}

async fn next_event(rx: &mut mpsc::Receiver<SinkEvent>, within: Duration) -> SinkEvent {
    timeout(within, rx.recv())
        .await
        .expect("sink event in time")
        .expect("sink alive")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

/// A sink under test, with the ends of its channels a test drives it through.
struct Running {
    frames: mpsc::Sender<EncodedFrame>,
    events: mpsc::Receiver<SinkEvent>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

fn spawn_sink(target: GbTarget, opts: GbOptions) -> Running {
    let (frames, frames_rx) = mpsc::channel(8);
    let (events_tx, events) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(target, opts, frames_rx, events_tx, cancel.clone()));
    Running {
        frames,
        events,
        cancel,
        task,
    }
}

impl Running {
    /// Cancels the sink and waits for its `Stopped` (a stop may still bring the events of a
    /// registration or an INVITE on the way) and for its task to return.
    async fn stop(mut self) {
        self.cancel.cancel();
        loop {
            match next_event(&mut self.events, Duration::from_secs(10)).await {
                SinkEvent::Stopped => break,
                SinkEvent::KeyframeWanted | SinkEvent::Publishing => continue,
                other => panic!("unexpected {other:?} while stopping"),
            }
        }
        self.returned().await;
    }

    /// Waits for the sink's task to return by itself.
    async fn returned(self) {
        timeout(Duration::from_secs(5), self.task)
            .await
            .expect("sink returned")
            .expect("no panic");
    }
}

/// A device registered with a SIPp platform and fed the clip at 30 fps: where every streaming
/// test starts.
struct Registered {
    uas: PlatformUas,
    sink: Running,
    feeder: JoinHandle<()>,
    tally: Arc<Tally>,
    /// The device's SIP address, for the platform's requests.
    device: SocketAddr,
}

/// Starts the platform (SIP over TCP if `sip_tcp`, and `opts` telling the device the same) and
/// the device, feeds the clip and waits for the registration (`Publishing`).
async fn registered(sip_tcp: bool, opts: GbOptions) -> Registered {
    let platform_port = free_port();
    let device_port = free_port();
    let uas = blocking(move || PlatformUas::start_with(platform_port, true, sip_tcp)).await;
    let clip = blocking(encode_clip).await;
    let mut sink = spawn_sink(target(uas.port(), device_port, PASSWORD), opts);
    let tally = Arc::new(Tally::default());
    let feeder = feed(clip, sink.frames.clone(), tally.clone());
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    Registered {
        uas,
        sink,
        feeder,
        tally,
        device: ([127, 0, 0, 1], device_port).into(),
    }
}

/// Waits for the platform to log the device's unregister (`Expires: 0`).
async fn assert_unregistered(uas: PlatformUas) {
    blocking(move || {
        assert!(
            uas.wait_log("UNREGISTERED", Duration::from_secs(5)),
            "{}",
            uas.log()
        );
    })
    .await;
}

/// The platform INVITEs the channel with `scenario` from a fresh port (over TCP when
/// `sip_tcp`), asking for media with `ssrc` at 127.0.0.1:`media_port` as `proto` with the
/// `setup` line given (empty for UDP).
fn invite(
    sip_tcp: bool,
    scenario: &str,
    device: SocketAddr,
    ssrc: &str,
    media_port: u16,
    (proto, setup): (&str, &str),
) -> UacProcess {
    start_uac_over(
        sip_tcp,
        scenario,
        device,
        free_port(),
        &[
            ("channel", CHANNEL),
            ("ssrc", ssrc),
            ("media_ip", "127.0.0.1"),
            ("media_port", &media_port.to_string()),
            ("proto", proto),
            ("setup", setup),
        ],
    )
}

/// UDP media, as [`invite`] takes it.
const UDP: (&str, &str) = ("RTP/AVP", "");

/// Plays the channel once via a SIPp INVITE/ACK/BYE while counting the frames fed after the
/// media started, then checks GStreamer decoded at least 90 % of them and that BYE stopped
/// the media.
async fn play_once(
    sip_tcp: bool,
    device: SocketAddr,
    device_media_port: u16,
    mode: Mode,
    events: &mut mpsc::Receiver<SinkEvent>,
    tally: &Arc<Tally>,
    ssrc: &str,
) {
    let rx_port = free_port();
    let (proto, setup, gst_port) = match mode {
        Mode::Udp => ("RTP/AVP", "", rx_port),
        Mode::TcpListen => ("TCP/RTP/AVP", "a=setup:passive", rx_port),
        // The platform dials the port of our answer, which is the sink's fixed media port.
        Mode::TcpDial => ("TCP/RTP/AVP", "a=setup:active", device_media_port),
    };
    // A media server that dials the device does so once it has the answer, as ZLMediaKit does
    // for wvp; one that listens is up before the INVITE.
    let mut gst = match mode {
        Mode::TcpDial => None,
        _ => Some(blocking(move || PsReceiver::start(mode, gst_port)).await),
    };
    let mut uac = invite(
        sip_tcp,
        "invite_uac.xml",
        device,
        ssrc,
        rx_port,
        (proto, setup),
    );
    // The sink asks for a keyframe when the INVITE's media starts; count from that keyframe.
    let mut started = false;
    for _ in 0..400 {
        if uac.finished() {
            break;
        }
        if let Ok(Some(ev)) = timeout(Duration::from_millis(50), events.recv()).await {
            if ev == SinkEvent::KeyframeWanted && !started {
                started = true;
                if gst.is_none() {
                    gst = Some(blocking(move || PsReceiver::start(mode, gst_port)).await);
                }
                tally.sent.store(0, Ordering::SeqCst);
                tally.armed.store(true, Ordering::SeqCst);
            }
        }
    }
    tally.counting.store(false, Ordering::SeqCst);
    tally.armed.store(false, Ordering::SeqCst);
    let sent = tally.sent.load(Ordering::SeqCst);
    let run = blocking(move || uac.wait(Duration::from_secs(10))).await;
    assert!(
        run.status.success(),
        "SIPp INVITE scenario failed ({:?}):\n{}\n{}",
        run.status,
        run.log,
        run.messages
    );
    assert!(started, "no KeyframeWanted after the INVITE");
    let mut gst = gst.expect("receiver started");
    assert!(
        run.log.contains(&format!("ANSWER ssrc={ssrc} ")),
        "answer must echo y={ssrc}: {}",
        run.log
    );
    let answered_tcp = run.log.contains("proto=TCP/RTP/AVP");
    assert_eq!(answered_tcp, mode != Mode::Udp, "{}", run.log);
    match mode {
        Mode::Udp => {}
        Mode::TcpListen => assert!(run.messages.contains("a=setup:active"), "{}", run.messages),
        Mode::TcpDial => {
            assert!(run.messages.contains("a=setup:passive"), "{}", run.messages);
            assert!(
                run.log.contains(&format!("port={device_media_port} ")),
                "{}",
                run.log
            );
        }
    }
    // BYE stops the media: nothing more arrives although frames keep coming.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let len_after_bye = gst.output_len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gst.output_len(),
        len_after_bye,
        "media still flowing after BYE"
    );
    let (probe, gst) = blocking(move || {
        gst.stop();
        (probe_file(&gst.output()), gst)
    })
    .await;
    drop(gst);
    assert_eq!(probe.codec, "h264");
    assert_eq!((probe.width, probe.height), (640, 360));
    assert!(sent >= 100, "only {sent} frames were counted as sent");
    assert!(
        probe.frames * 10 >= sent * 9,
        "{mode:?}: GStreamer decoded {} of {sent} frames sent",
        probe.frames
    );
    eprintln!(
        "{mode:?}: sent {sent} frames, GStreamer mpegpsdemux ! h264parse got {}",
        probe.frames
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_answers_queries_streams_on_invite_and_unregisters() {
    let _serial = SERIAL.lock().await;
    let Registered {
        uas,
        mut sink,
        feeder,
        tally,
        device,
    } = registered(false, options(0)).await;
    let uas = blocking(move || {
        assert!(
            uas.wait_log("REGISTERED", Duration::from_secs(5)),
            "{}",
            uas.log()
        );
        assert!(
            uas.wait_log("MESSAGE CmdType=Keepalive", Duration::from_secs(5)),
            "{}",
            uas.log()
        );
        uas
    })
    .await;
    assert!(!uas.log().contains("AUTH_BAD"));

    for (cmd, sn) in [
        ("Catalog", "248136"),
        ("DeviceInfo", "17430"),
        ("DeviceStatus", "90417"),
    ] {
        let uac = start_uac(
            "query_uac.xml",
            device,
            free_port(),
            &[("device", DEVICE), ("cmd", cmd), ("sn", sn)],
        );
        let run = blocking(move || uac.wait(Duration::from_secs(10))).await;
        assert!(
            run.status.success(),
            "{cmd} query not answered 200: {}",
            run.messages
        );
        let needle = format!("MESSAGE CmdType={cmd} SN={sn}");
        let uas_ref = &uas;
        assert!(
            wait_until(Duration::from_secs(5), || uas_ref.log().contains(&needle)),
            "no {cmd} Response with SN {sn}: {}",
            uas.log()
        );
    }
    assert!(uas
        .messages()
        .contains(&format!("<DeviceID>{CHANNEL}</DeviceID>")));

    play_once(
        false,
        device,
        0,
        Mode::Udp,
        &mut sink.events,
        &tally,
        "0100000001",
    )
    .await;

    sink.stop().await;
    feeder.abort();
    assert_unregistered(uas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_the_sink() {
    let _serial = SERIAL.lock().await;
    let uas = blocking(|| PlatformUas::start(free_port())).await;
    let mut sink = spawn_sink(
        target(uas.port(), free_port(), "not-the-password"),
        options(0),
    );
    match next_event(&mut sink.events, Duration::from_secs(10)).await {
        SinkEvent::Failed { reason } => {
            assert!(reason.contains("403"), "{reason}");
            assert!(!reason.contains("not-the-password"));
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    sink.returned().await;
    assert!(
        uas.wait_log("AUTH_BAD", Duration::from_secs(5)),
        "{}",
        uas.log()
    );
}

/// An H.265 access unit as far as the sink looks (its codec): the sink refuses it unread.
fn h265_frame(pts: Duration) -> EncodedFrame {
    EncodedFrame {
        data: bytes::Bytes::from_static(&[0, 0, 0, 1, 0x26, 0x01, 0xaf, 0x00]),
        pts,
        keyframe: true,
        codec: Codec::H265,
    }
}

/// An H.264 IDR slice header, enough for a sink to take it as its first frame before any
/// INVITE (which it then discards).
fn h264_frame() -> EncodedFrame {
    EncodedFrame {
        data: bytes::Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00]),
        pts: Duration::ZERO,
        keyframe: true,
        codec: Codec::H264,
    }
}

/// A start right after a stop of the same video: the old session may still hold the url's
/// `localPort` while it unregisters. The new sink waits for the port instead of failing with
/// "address in use".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_port_still_held_by_a_stopping_session_is_waited_for() {
    let _serial = SERIAL.lock().await;
    let uas = blocking(|| PlatformUas::start(free_port())).await;
    let device_port = free_port();
    let old_session = std::net::UdpSocket::bind(("127.0.0.1", device_port)).expect("bind");
    let mut sink = spawn_sink(target(uas.port(), device_port, PASSWORD), options(0));
    // The first frame sends the sink straight on to binding, while the port is still held.
    sink.frames.send(h264_frame()).await.expect("sink alive");
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(old_session);
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    sink.stop().await;
    assert_unregistered(uas).await;
}

/// SIP over TCP to a platform whose address takes no connections (its accept queue is full, as
/// a wedged server's is): the connect runs beside the sink, which still sees a stop at once
/// instead of sitting in the connect until it times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_platform_that_never_accepts_does_not_hold_up_a_stop() {
    let _serial = SERIAL.lock().await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let wedged = socket.listen(1).expect("listen");
    let platform_port = wedged.local_addr().expect("addr").port();
    // Fill the accept queue (backlog + 1 on Linux): later SYNs go unanswered.
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(
            tokio::net::TcpStream::connect(("127.0.0.1", platform_port))
                .await
                .expect("queued connection"),
        );
    }
    let opts = GbOptions {
        sip_transport: SipTransport::Tcp,
        tcp_media_timeout: Duration::from_secs(20),
        ..options(0)
    };
    let mut sink = spawn_sink(target(platform_port, free_port(), PASSWORD), opts);
    sink.frames.send(h264_frame()).await.expect("sink alive");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.cancel.cancel();
    // Well inside the 20 s the connect may take, and than the sink's own stop budget.
    match next_event(&mut sink.events, Duration::from_secs(5)).await {
        SinkEvent::Stopped => {}
        other => panic!("expected Stopped, got {other:?}"),
    }
    sink.returned().await;
    drop(queued);
}

/// A source that is H.265 from the start is refused before the device registers: the cloud is
/// told the transport cannot carry it, and the platform never hears of a device that could not
/// play. A bare UDP socket stands in for the platform, to show nothing at all was sent to it.
#[tokio::test]
async fn an_h265_source_is_refused_before_the_device_registers() {
    let _serial = SERIAL.lock().await;
    let platform = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let platform_port = platform.local_addr().expect("addr").port();
    let mut sink = spawn_sink(target(platform_port, free_port(), PASSWORD), options(0));
    sink.frames
        .send(h265_frame(Duration::ZERO))
        .await
        .expect("sink alive");
    match next_event(&mut sink.events, Duration::from_secs(5)).await {
        SinkEvent::Refused { reason } => {
            assert!(reason.contains("H.265"), "{reason}");
            assert!(reason.contains("H.264 only"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    sink.returned().await;
    // Loopback delivers a datagram before `send_to` returns, and the sink has returned: a
    // REGISTER, had one been sent, would be waiting here.
    let mut buf = [0u8; 2048];
    match platform.try_recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((n, from)) => panic!(
            "the platform got {n} bytes from {from}: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("platform socket: {e}"),
    }
}

/// A source that turns H.265 after the device registered (a lens switch to an H.265 camera)
/// is refused as its first such frame arrives, and the device still unregisters on stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_turns_h265_is_refused_and_the_device_unregisters() {
    let _serial = SERIAL.lock().await;
    let uas = blocking(|| PlatformUas::start(free_port())).await;
    let clip = blocking(encode_clip).await;
    let mut sink = spawn_sink(target(uas.port(), free_port(), PASSWORD), options(0));
    sink.frames.send(clip[0].clone()).await.expect("sink alive");
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    sink.frames.send(clip[1].clone()).await.expect("sink alive");
    sink.frames
        .send(h265_frame(FRAME * 2))
        .await
        .expect("sink alive");
    match next_event(&mut sink.events, Duration::from_secs(5)).await {
        SinkEvent::Refused { reason } => assert!(reason.contains("H.265"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    // Refused once, not once a frame.
    sink.frames
        .send(h265_frame(FRAME * 3))
        .await
        .expect("sink alive");
    sink.stop().await;
    assert_unregistered(uas).await;
}

/// Registers, then plays over TCP with the device connecting (offer `a=setup:passive`) and with
/// the media server connecting (offer `a=setup:active`), each INVITE with its own SSRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_tcp_active_and_passive() {
    let _serial = SERIAL.lock().await;
    let media_port = free_port();
    let Registered {
        uas,
        mut sink,
        feeder,
        tally,
        device,
    } = registered(false, options(media_port)).await;
    play_once(
        false,
        device,
        media_port,
        Mode::TcpListen,
        &mut sink.events,
        &tally,
        "0100000011",
    )
    .await;
    play_once(
        false,
        device,
        media_port,
        Mode::TcpDial,
        &mut sink.events,
        &tally,
        "0100000012",
    )
    .await;
    sink.stop().await;
    feeder.abort();
    assert_unregistered(uas).await;
}

/// A platform without `qop` in its challenge, then an outage: the sink reports Reconnecting
/// after the keepalives go unanswered and registers again (with `qop` this time) once the
/// platform is back on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_after_the_platform_restarts() {
    let _serial = SERIAL.lock().await;
    let platform_port = free_port();
    let mut uas = blocking(move || PlatformUas::start_with(platform_port, false, false)).await;
    let mut sink = spawn_sink(target(platform_port, free_port(), PASSWORD), options(0));
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::Publishing
    );
    assert!(uas.messages().contains("response="));
    assert!(!uas.messages().contains("qop=auth"), "no qop was offered");
    let uas_log = uas.log();
    assert!(uas_log.contains("REGISTERED"), "{uas_log}");
    uas.kill();
    let outage = tokio::time::Instant::now();
    match next_event(&mut sink.events, Duration::from_secs(15)).await {
        SinkEvent::Reconnecting {
            reason, attempt, ..
        } => {
            assert_eq!(attempt, 1);
            assert!(reason.contains("keepalives"), "{reason}");
        }
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    eprintln!(
        "registration lost {:?} after the platform died",
        outage.elapsed()
    );
    let uas = blocking(move || PlatformUas::start_with(platform_port, true, false)).await;
    loop {
        match next_event(&mut sink.events, Duration::from_secs(15)).await {
            SinkEvent::Publishing => break,
            SinkEvent::Reconnecting { .. } => continue,
            other => panic!("expected Publishing again, got {other:?}"),
        }
    }
    let uas = blocking(move || {
        assert!(
            uas.wait_log("REGISTERED", Duration::from_secs(5)),
            "{}",
            uas.log()
        );
        uas
    })
    .await;
    assert!(uas.messages().contains("qop=auth"));
    sink.stop().await;
    assert_unregistered(uas).await;
}

/// A second INVITE for the channel replaces the first: the device BYEs the first dialog (SIPp
/// expects that BYE), the first receiver stops getting data, and the second stream decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_invite_replaces_the_first() {
    let _serial = SERIAL.lock().await;
    let Registered {
        uas: _uas,
        mut sink,
        feeder,
        tally,
        device,
    } = registered(false, options(0)).await;

    let first_port = free_port();
    let mut first_rx = blocking(move || PsReceiver::start(Mode::Udp, first_port)).await;
    let first = invite(
        false,
        "invite_replaced_uac.xml",
        device,
        "0100000021",
        first_port,
        UDP,
    );
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::KeyframeWanted
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(first_rx.output_len() > 0, "first INVITE got no media");

    play_once(
        false,
        device,
        0,
        Mode::Udp,
        &mut sink.events,
        &tally,
        "0100000022",
    )
    .await;

    let run1 = blocking(move || first.wait(Duration::from_secs(10))).await;
    assert!(
        run1.status.success(),
        "first dialog was not ended by the device: {}\n{}",
        run1.log,
        run1.messages
    );
    assert!(run1.log.contains("REPLACED"), "{}", run1.log);
    let len = first_rx.output_len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(first_rx.output_len(), len, "replaced stream still flowing");
    let first_probe = blocking(move || {
        first_rx.stop();
        probe_file(&first_rx.output())
    })
    .await;
    assert!(
        first_probe.frames >= 30,
        "{} frames before the replacement",
        first_probe.frames
    );

    sink.stop().await;
    feeder.abort();
}

/// An INVITE from a host that is not the platform (127.0.0.9; the platform is 127.0.0.1) gets
/// no answer, so it cannot be ACKed and no media goes where it asked; the platform's own
/// INVITE afterwards plays as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_a_host_other_than_the_platform_is_ignored() {
    let _serial = SERIAL.lock().await;
    let Registered {
        uas: _uas,
        mut sink,
        feeder,
        tally,
        device,
    } = registered(false, options(0)).await;

    let (answered, media) = blocking(move || {
        let sip = std::net::UdpSocket::bind("127.0.0.9:0").expect("stranger's SIP socket");
        let media = std::net::UdpSocket::bind("127.0.0.9:0").expect("stranger's media socket");
        let (sip_addr, media_port) = (
            sip.local_addr().expect("addr"),
            media.local_addr().expect("addr").port(),
        );
        let sdp = format!(
            "v=0\r\no=x 0 0 IN IP4 127.0.0.9\r\ns=Play\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n\
             m=video {media_port} RTP/AVP 96\r\na=rtpmap:96 PS/90000\r\na=recvonly\r\n\
             y=0100000099\r\n"
        );
        let invite = format!(
            "INVITE sip:{CHANNEL}@{device} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {sip_addr};rport;branch=z9hG4bKstranger\r\n\
             From: <sip:{SERVER_ID}@3402000000>;tag=s1\r\nTo: <sip:{CHANNEL}@3402000000>\r\n\
             Call-ID: stranger\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:{SERVER_ID}@{sip_addr}>\r\nSubject: {CHANNEL}:0100000099,{SERVER_ID}:0\r\n\
             Content-Type: APPLICATION/SDP\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip.send_to(invite.as_bytes(), device).expect("send INVITE");
        let mut buf = [0u8; 2048];
        sip.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let answered = sip
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned());
        media.set_nonblocking(true).expect("nonblocking");
        (answered, media.recv_from(&mut buf).is_ok())
    })
    .await;
    assert_eq!(answered, None, "the stranger's INVITE was answered");
    assert!(!media, "media reached the stranger");

    play_once(
        false,
        device,
        0,
        Mode::Udp,
        &mut sink.events,
        &tally,
        "0100000031",
    )
    .await;
    sink.stop().await;
    feeder.abort();
}

/// The RTP packets themselves, read off a UDP socket standing in for the media server: SSRC =
/// the offered `y=`, PT 96, no sequence gaps, one timestamp per frame with the marker on its
/// last packet, packets within 1400 bytes, and the first frame a keyframe pack with system
/// header and PSM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_on_the_wire_carries_the_offered_ssrc() {
    let _serial = SERIAL.lock().await;
    let Registered {
        uas: _uas,
        sink,
        feeder,
        device,
        ..
    } = registered(false, options(0)).await;
    let media = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let media_port = media.local_addr().expect("addr").port();
    let mut uac = invite(
        false,
        "invite_uac.xml",
        device,
        "0100000001",
        media_port,
        UDP,
    );
    let mut packets = Vec::new();
    let mut buf = vec![0u8; 2048];
    for _ in 0..2000 {
        if uac.finished() {
            break;
        }
        if let Ok(Ok((n, _))) = timeout(Duration::from_millis(50), media.recv_from(&mut buf)).await
        {
            packets.push(buf[..n].to_vec());
        }
    }
    let run1 = blocking(move || uac.wait(Duration::from_secs(10))).await;
    assert!(run1.status.success(), "{}", run1.messages);
    assert!(packets.len() > 100, "only {} RTP packets", packets.len());
    let mut frames_seen = 0;
    for (i, p) in packets.iter().enumerate() {
        assert!(p.len() <= 1400 && p.len() > 12);
        assert_eq!(p[0], 0x80, "RTP v2, no padding/extension/CSRC");
        assert_eq!(p[1] & 0x7F, 96);
        assert_eq!(&p[8..12], &100_000_001u32.to_be_bytes(), "SSRC from y=");
        let marker = p[1] & 0x80 != 0;
        if let Some(next) = packets.get(i + 1) {
            let seq = u16::from_be_bytes([p[2], p[3]]);
            assert_eq!(u16::from_be_bytes([next[2], next[3]]), seq.wrapping_add(1));
            let same_ts = p[4..8] == next[4..8];
            assert_eq!(marker, !same_ts, "marker exactly on a frame's last packet");
            if !same_ts {
                let dt = u32::from_be_bytes([next[4], next[5], next[6], next[7]])
                    .wrapping_sub(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                assert!((2900..=3100).contains(&dt), "90 kHz step {dt}");
            }
        }
        if marker {
            frames_seen += 1;
        }
    }
    let first = &packets[0][12..];
    assert_eq!(&first[..4], &[0, 0, 1, 0xBA]);
    assert_eq!(&first[14..18], &[0, 0, 1, 0xBB]);
    assert_eq!(&first[29..33], &[0, 0, 1, 0xBC]);
    eprintln!("{} RTP packets, {frames_seen} frames", packets.len());
    assert!(
        packets.len() > frames_seen + frames_seen / 2,
        "frames should span several packets"
    );
    sink.stop().await;
    feeder.abort();
}

/// SIP over TCP: REGISTER/keepalive/unregister on the device's connection to a SIPp platform
/// listening on TCP, a Catalog query and an INVITE arriving on connections SIPp opens to the
/// device (UDP media).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_over_tcp() {
    let _serial = SERIAL.lock().await;
    let opts = GbOptions {
        sip_transport: SipTransport::Tcp,
        ..options(0)
    };
    let Registered {
        uas,
        mut sink,
        feeder,
        tally,
        device,
    } = registered(true, opts).await;
    let uas = blocking(move || {
        assert!(
            uas.wait_log("MESSAGE CmdType=Keepalive", Duration::from_secs(5)),
            "{}",
            uas.log()
        );
        uas
    })
    .await;
    let messages = uas.messages();
    assert!(messages.contains("Via: SIP/2.0/TCP"), "{messages}");
    assert!(messages.contains(";transport=tcp>"), "{messages}");
    let uac = start_uac_over(
        true,
        "query_uac.xml",
        device,
        free_port(),
        &[("device", DEVICE), ("cmd", "Catalog"), ("sn", "4711")],
    );
    let run1 = blocking(move || uac.wait(Duration::from_secs(10))).await;
    assert!(run1.status.success(), "Catalog over TCP: {}", run1.messages);
    let uas_ref = &uas;
    assert!(
        wait_until(Duration::from_secs(5), || uas_ref
            .log()
            .contains("MESSAGE CmdType=Catalog SN=4711")),
        "{}",
        uas.log()
    );
    play_once(
        true,
        device,
        0,
        Mode::Udp,
        &mut sink.events,
        &tally,
        "0100000031",
    )
    .await;
    sink.stop().await;
    feeder.abort();
    assert_unregistered(uas).await;
}

/// TCP media that the platform dials (offer `a=setup:active`): connections no session waits
/// for are not handed to the next one. One was made and dropped before the INVITE (a media
/// server that dialled too late for an earlier session); one comes from a host that is not the
/// platform (127.0.0.2) and stays open. The next play still streams to the media server that
/// dials for it, and the stranger gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_media_connections_do_not_reach_the_next_tcp_passive_session() {
    let _serial = SERIAL.lock().await;
    let media_port = free_port();
    let Registered {
        uas,
        mut sink,
        feeder,
        tally,
        device,
    } = registered(false, options(media_port)).await;
    let late = tokio::net::TcpStream::connect(("127.0.0.1", media_port))
        .await
        .expect("late connection");
    drop(late);
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut stranger = socket
        .connect(([127, 0, 0, 1], media_port).into())
        .await
        .expect("stranger's connection");
    play_once(
        false,
        device,
        media_port,
        Mode::TcpDial,
        &mut sink.events,
        &tally,
        "0100000041",
    )
    .await;
    let mut buf = [0u8; 64];
    let read = timeout(
        Duration::from_millis(500),
        tokio::io::AsyncReadExt::read(&mut stranger, &mut buf),
    )
    .await;
    assert!(
        !matches!(read, Ok(Ok(n)) if n > 0),
        "media reached a host that is not the platform"
    );
    sink.stop().await;
    feeder.abort();
    assert_unregistered(uas).await;
}

/// Cancels the sink and waits for `Stopped`, whatever it reports meanwhile (a sink whose
/// platform is gone may still be retrying its registration).
async fn stop_regardless(mut sink: Running) {
    sink.cancel.cancel();
    for _ in 0..100 {
        if next_event(&mut sink.events, Duration::from_secs(10)).await == SinkEvent::Stopped {
            return sink.returned().await;
        }
    }
    panic!("no Stopped among 100 events");
}

/// Counts the datagrams arriving at `socket` until the task is aborted.
fn count_datagrams(socket: tokio::net::UdpSocket) -> (Arc<AtomicU64>, JoinHandle<()>) {
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while socket.recv_from(&mut buf).await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    (count, task)
}

/// UDP media to a platform that goes away: once the device has noticed that its registration
/// is lost (keepalives unanswered), it ends the dialog with a BYE (answered by the INVITE's
/// sender) and nothing more reaches the media port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_media_stops_when_the_registration_is_lost() {
    let _serial = SERIAL.lock().await;
    let Registered {
        mut uas,
        mut sink,
        feeder,
        device,
        ..
    } = registered(false, options(0)).await;
    let media = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let media_port = media.local_addr().expect("addr").port();
    let (received, reader) = count_datagrams(media);
    let uac = invite(
        false,
        "invite_replaced_uac.xml",
        device,
        "0100000051",
        media_port,
        UDP,
    );
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::KeyframeWanted
    );
    assert!(
        wait_until(Duration::from_secs(5), || received.load(Ordering::SeqCst)
            > 0),
        "no RTP before the platform went away"
    );
    uas.kill();
    loop {
        match next_event(&mut sink.events, Duration::from_secs(20)).await {
            SinkEvent::Reconnecting { .. } => break,
            SinkEvent::KeyframeWanted => continue,
            other => panic!("expected Reconnecting, got {other:?}"),
        }
    }
    // What was sent before the loss is read off the socket first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_loss = received.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = received.load(Ordering::SeqCst) - at_loss;
    assert_eq!(
        after, 0,
        "{after} RTP packets sent after the registration was lost"
    );
    let run = blocking(move || uac.wait(Duration::from_secs(10))).await;
    assert!(
        run.status.success(),
        "the dialog was not ended with a BYE: {}\n{}",
        run.log,
        run.messages
    );
    reader.abort();
    feeder.abort();
    stop_regardless(sink).await;
}

/// UDP media to a port nobody listens on: the refusals (ICMP port unreachable) that keep
/// coming end the dialog with a BYE instead of the device sending into the void for ever, and
/// nothing more is sent there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_media_refused_for_seconds_ends_the_dialog() {
    let _serial = SERIAL.lock().await;
    let Registered {
        uas: _uas,
        mut sink,
        feeder,
        device,
        ..
    } = registered(false, options(0)).await;
    let closed_port = free_port();

    let uac = invite(
        false,
        "invite_replaced_uac.xml",
        device,
        "0100000061",
        closed_port,
        UDP,
    );
    assert_eq!(
        next_event(&mut sink.events, Duration::from_secs(10)).await,
        SinkEvent::KeyframeWanted
    );
    let run = blocking(move || uac.wait(Duration::from_secs(20))).await;
    assert!(
        run.status.success(),
        "the device never ended the refused dialog: {}\n{}",
        run.log,
        run.messages
    );
    let media = tokio::net::UdpSocket::bind(("127.0.0.1", closed_port))
        .await
        .expect("bind the refused port");
    let mut buf = vec![0u8; 2048];
    let late = timeout(Duration::from_millis(1500), media.recv_from(&mut buf)).await;
    assert!(late.is_err(), "RTP still sent after the dialog ended");
    feeder.abort();
    sink.stop().await;
}
/// A media server reached over TCP (the device dials it) that stops reading for 3 s and
/// then reads on: what it received, and the keyframe requests the sink made meanwhile.
struct Stall {
    /// RTP packets in arrival order (RFC 4571 framing removed).
    packets: Vec<Vec<u8>>,
    /// `KeyframeWanted` events while the reader was stopped.
    requests_in_stall: u32,
}

/// Registers, INVITEs with TCP media to a raw RFC 4571 reader here (small receive buffer) and
/// feeds 40 KB frames at 100 fps, a keyframe every `gop` frames and, when `obey` is set, the
/// frame after each `KeyframeWanted` too (as an encoder forcing an IDR does). The reader reads
/// for 1 s, stops for 3 s, and reads on until the platform's BYE closes the connection.
async fn stall_tcp_media(gop: u32, obey: bool, ssrc: &str) -> Stall {
    let Registered {
        uas: _uas,
        mut sink,
        feeder,
        device,
        ..
    } = registered(false, options(0)).await;
    feeder.abort();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(4).expect("listen");
    let media_port = listener.local_addr().expect("addr").port();
    let stalled = Arc::new(AtomicBool::new(false));
    let stalled_r = stalled.clone();
    let mut reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut conn, _) = timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the device connected in time")
            .expect("accept");
        let mut packets = Vec::new();
        let read_one = async |conn: &mut tokio::net::TcpStream| -> Option<Vec<u8>> {
            let len = conn.read_u16().await.ok()?;
            let mut p = vec![0u8; usize::from(len)];
            conn.read_exact(&mut p).await.ok()?;
            Some(p)
        };
        let phase = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < phase {
            match timeout(Duration::from_millis(200), read_one(&mut conn)).await {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => return packets,
                Err(_) => {}
            }
        }
        stalled_r.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        stalled_r.store(false, Ordering::SeqCst);
        for _ in 0..1_000_000 {
            match timeout(Duration::from_secs(5), read_one(&mut conn)).await {
                Ok(Some(p)) => packets.push(p),
                _ => break,
            }
        }
        packets
    });
    let force = Arc::new(AtomicBool::new(false));
    let forced = force.clone();
    let frames = sink.frames.clone();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        // 15 s at most: the play lasts 5 s after the ACK.
        for n in 0..1500u32 {
            tick.tick().await;
            let keyframe = n % gop == 0 || forced.swap(false, Ordering::SeqCst);
            let mut data = vec![0x5Au8; 40_000];
            data[..5].copy_from_slice(&[0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }]);
            let f = EncodedFrame {
                data: data.into(),
                pts: Duration::from_millis(10) * n,
                keyframe,
                codec: Codec::H264,
            };
            if frames.send(f).await.is_err() {
                return;
            }
        }
    });
    let uac = invite(
        false,
        "invite_uac.xml",
        device,
        ssrc,
        media_port,
        ("TCP/RTP/AVP", "a=setup:passive"),
    );
    let mut requests_in_stall = 0;
    let packets = loop {
        tokio::select! {
            done = &mut reader => break done.expect("reader"),
            ev = timeout(Duration::from_secs(20), sink.events.recv()) => {
                match ev.expect("events in time").expect("sink alive") {
                    SinkEvent::KeyframeWanted => {
                        if obey {
                            force.store(true, Ordering::SeqCst);
                        }
                        if stalled.load(Ordering::SeqCst) {
                            requests_in_stall += 1;
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    };
    let run = blocking(move || uac.wait(Duration::from_secs(10))).await;
    assert!(run.status.success(), "{}\n{}", run.log, run.messages);
    feeder.abort();
    sink.stop().await;
    Stall {
        packets,
        requests_in_stall,
    }
}

/// Frames dropped while the media server does not read take no RTP sequence numbers: the
/// numbering on the wire has no gap, so ZLMediaKit keeps the keyframe the stream resumes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_dropped_on_tcp_back_pressure_leave_no_sequence_gap() {
    let _serial = SERIAL.lock().await;
    let stall = stall_tcp_media(10, false, "0100000071").await;
    let packets = &stall.packets;
    assert!(packets.len() > 100, "only {} RTP packets", packets.len());
    let mut dropped = false;
    for (i, pair) in packets.windows(2).enumerate() {
        let seq = |p: &[u8]| u16::from_be_bytes([p[2], p[3]]);
        let ts = |p: &[u8]| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(
            seq(&pair[1]),
            seq(&pair[0]).wrapping_add(1),
            "sequence gap after packet {i} of {}",
            packets.len()
        );
        // 10 ms frames are 900 ticks apart; more is frames that were dropped.
        dropped |= ts(&pair[1]).wrapping_sub(ts(&pair[0])) > 900;
    }
    assert!(dropped, "the stall dropped no frame: nothing was tested");
}

/// An encoder that answers every keyframe request with an IDR, and a media server that stops
/// reading: the sink asks again only once the queue has room, so the stall brings no storm of
/// requests (each would force an IDR that is dropped in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_stall_brings_no_storm_of_keyframe_requests() {
    let _serial = SERIAL.lock().await;
    let stall = stall_tcp_media(500, true, "0100000081").await;
    assert!(
        stall.requests_in_stall <= 3,
        "{} keyframe requests in a 3 s stall",
        stall.requests_in_stall
    );
    assert!(
        stall.packets.len() > 100,
        "only {} RTP packets",
        stall.packets.len()
    );
}
