//! The GB/T 28181 flavour of SDP: read the platform's Play offer (where to send, UDP or TCP and
//! who connects, which SSRC) and write our answer with `y=` and `f=` last.
//!
//! A generic SDP crate would drop the non-standard `y=`/`f=` lines or reject them, so this is a
//! line reader that only looks at what the device acts on. It never panics on any input.

use std::net::IpAddr;

/// Why an offer cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is not text.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// No `c=IN IP4|IP6 <address>` at session or video level.
    #[error("SDP has no usable c= address")]
    NoAddress,
    /// A `c=` line we cannot read.
    #[error("bad SDP c= line {line:?}")]
    BadConnection {
        /// The line, clipped.
        line: String,
    },
    /// No `m=video` line.
    #[error("SDP has no m=video line")]
    NoVideo,
    /// An `m=video` line we cannot read.
    #[error("bad SDP m= line {line:?}")]
    BadMedia {
        /// The line, clipped.
        line: String,
    },
    /// The offer does not list payload type 96 (PS).
    #[error("SDP m= line does not offer payload 96 (PS): {line:?}")]
    NoPs {
        /// The line, clipped.
        line: String,
    },
    /// `y=` is not a decimal SSRC that fits 32 bits.
    #[error("bad SDP y= SSRC {value:?}")]
    BadSsrc {
        /// The value, clipped.
        value: String,
    },
}

/// How the RTP stream travels and who opens the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTransport {
    /// RTP over UDP (`RTP/AVP`).
    Udp,
    /// RTP over TCP, the device connects to the offer's address (offer `a=setup:passive`, or no
    /// `a=setup` as SRS sends).
    TcpConnect,
    /// RTP over TCP, the platform connects to our answer's address (offer `a=setup:active`).
    TcpListen,
}

/// What the device needs from a Play offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `s=` (Play, Playback, Download).
    pub session_name: String,
    /// Media server address from `c=`.
    pub address: IpAddr,
    /// Media server port from `m=video`.
    pub port: u16,
    /// Transport and connection role.
    pub transport: MediaTransport,
    /// `y=` exactly as offered (10 decimal digits normally), echoed in the answer.
    pub ssrc_text: Option<String>,
    /// `y=` as the RTP SSRC.
    pub ssrc: Option<u32>,
}

/// Reads a Play offer.
pub fn parse_offer(body: &[u8]) -> Result<Offer, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
    let mut session_name = String::new();
    let mut session_addr = None;
    let mut video_addr = None;
    let mut video: Option<(u16, bool)> = None;
    let mut in_video = false;
    let mut setup: Option<String> = None;
    let mut ssrc_text = None;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r').trim();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "s" => session_name = value.trim().to_owned(),
            "c" => {
                let addr = parse_connection(value)?;
                if in_video {
                    video_addr = Some(addr);
                } else if video.is_none() {
                    session_addr = Some(addr);
                }
            }
            "m" => {
                in_video = value.starts_with("video ");
                if in_video && video.is_none() {
                    video = Some(parse_media(value)?);
                }
            }
            "a" if in_video => {
                if let Some(role) = value.strip_prefix("setup:") {
                    setup = Some(role.trim().to_ascii_lowercase());
                }
            }
            "y" => ssrc_text = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let (port, tcp) = video.ok_or(SdpError::NoVideo)?;
    let address = video_addr.or(session_addr).ok_or(SdpError::NoAddress)?;
    let transport = match (tcp, setup.as_deref()) {
        (false, _) => MediaTransport::Udp,
        (true, Some("active")) => MediaTransport::TcpListen,
        (true, _) => MediaTransport::TcpConnect,
    };
    let ssrc = match &ssrc_text {
        None => None,
        Some(t) => Some(parse_ssrc(t)?),
    };
    Ok(Offer {
        session_name,
        address,
        port,
        transport,
        ssrc_text,
        ssrc,
    })
}

/// The SSRC of a decimal `y=` value.
pub fn parse_ssrc(text: &str) -> Result<u32, SdpError> {
    let bad = || SdpError::BadSsrc {
        value: crate::sink::gb28181::sip::clip(text),
    };
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>()
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(bad)
}

fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let bad = || SdpError::BadConnection {
        line: crate::sink::gb28181::sip::clip(value),
    };
    let mut parts = value.split_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    // Multicast TTL suffix (`/127`) is not ours to honour; the address is what matters.
    let addr = addr.split('/').next().unwrap_or(addr);
    addr.parse().map_err(|_| bad())
}

fn parse_media(value: &str) -> Result<(u16, bool), SdpError> {
    let clipped = || crate::sink::gb28181::sip::clip(value);
    let mut parts = value.split_whitespace();
    let (Some(_), Some(port), Some(proto)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SdpError::BadMedia { line: clipped() });
    };
    let port = port
        .split('/')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| SdpError::BadMedia { line: clipped() })?;
    let tcp = match proto.to_ascii_uppercase().as_str() {
        "RTP/AVP" => false,
        "TCP/RTP/AVP" | "RTP/AVP/TCP" => true,
        _ => return Err(SdpError::BadMedia { line: clipped() }),
    };
    if !parts.any(|pt| pt == "96") {
        return Err(SdpError::NoPs { line: clipped() });
    }
    Ok((port, tcp))
}

/// Our answer: where the platform sees the stream come from (or connects to, for
/// [`MediaTransport::TcpListen`]), with `y=` and `f=` last because wvp cuts the SDP at `y=`.
pub fn answer(
    channel: &str,
    local_ip: IpAddr,
    local_port: u16,
    transport: MediaTransport,
    ssrc_text: &str,
) -> String {
    let family = if local_ip.is_ipv6() { "IP6" } else { "IP4" };
    let (proto, setup) = match transport {
        MediaTransport::Udp => ("RTP/AVP", None),
        MediaTransport::TcpConnect => ("TCP/RTP/AVP", Some("active")),
        MediaTransport::TcpListen => ("TCP/RTP/AVP", Some("passive")),
    };
    let mut s = format!(
        "v=0\r\no={channel} 0 0 IN {family} {local_ip}\r\ns=Play\r\nc=IN {family} {local_ip}\r\nt=0 0\r\nm=video {local_port} {proto} 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\n"
    );
    if let Some(role) = setup {
        s.push_str(&format!("a=setup:{role}\r\na=connection:new\r\n"));
    }
    s.push_str(&format!("y={ssrc_text}\r\nf=\r\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WVP_UDP: &str = "v=0\r\no=34020000001320000001 0 0 IN IP4 192.168.1.20\r\ns=Play\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=video 30012 RTP/AVP 96 97 98 99\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\ny=0100000001\r\n";

    #[test]
    fn reads_a_wvp_udp_offer() {
        let o = parse_offer(WVP_UDP.as_bytes()).expect("offer");
        assert_eq!(o.session_name, "Play");
        assert_eq!(o.address, "192.168.1.20".parse::<IpAddr>().expect("ip"));
        assert_eq!(o.port, 30012);
        assert_eq!(o.transport, MediaTransport::Udp);
        assert_eq!(o.ssrc_text.as_deref(), Some("0100000001"));
        assert_eq!(o.ssrc, Some(0x05F5_E101));
    }

    #[test]
    fn tcp_roles_are_inverted_from_the_offer() {
        let tcp = |extra: &str| {
            let sdp = format!(
                "v=0\nc=IN IP4 10.0.0.1\nm=video 9000 TCP/RTP/AVP 96\n{extra}y=0000000001\n"
            );
            parse_offer(sdp.as_bytes()).expect("offer").transport
        };
        assert_eq!(tcp("a=setup:passive\n"), MediaTransport::TcpConnect);
        assert_eq!(
            tcp("a=setup:active\na=connection:new\n"),
            MediaTransport::TcpListen
        );
        assert_eq!(tcp(""), MediaTransport::TcpConnect);
    }

    #[test]
    fn rejects_what_cannot_be_served() {
        let p = |s: &str| parse_offer(s.as_bytes());
        assert_eq!(p("v=0\nc=IN IP4 1.2.3.4\n"), Err(SdpError::NoVideo));
        assert_eq!(p("v=0\nm=video 1 RTP/AVP 96\n"), Err(SdpError::NoAddress));
        assert!(matches!(
            p("c=IN IP4 1.2.3.4\nm=video 1 RTP/AVP 98\n"),
            Err(SdpError::NoPs { .. })
        ));
        assert!(matches!(
            p("c=IN IP4 1.2.3.4\nm=video 0 RTP/AVP 96\n"),
            Err(SdpError::BadMedia { .. })
        ));
        assert!(matches!(
            p("c=IN IP4 nope\n"),
            Err(SdpError::BadConnection { .. })
        ));
        assert!(matches!(
            p("c=IN IP4 1.2.3.4\nm=video 5 RTP/AVP 96\ny=9999999999\n"),
            Err(SdpError::BadSsrc { .. })
        ));
    }

    #[test]
    fn answer_puts_y_and_f_last() {
        let a = answer(
            "34020000001310000001",
            "127.0.0.1".parse().expect("ip"),
            15100,
            MediaTransport::TcpListen,
            "0100000001",
        );
        assert!(a.contains("m=video 15100 TCP/RTP/AVP 96\r\n"));
        assert!(a.contains("a=setup:passive\r\n"));
        assert!(a.ends_with("y=0100000001\r\nf=\r\n"));
        let back = parse_offer(a.as_bytes()).expect("our answer reads back");
        assert_eq!(back.port, 15100);
    }

    proptest! {
        #[test]
        fn parse_offer_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_offer(&data);
        }

        #[test]
        fn parse_offer_never_panics_on_sdp_like_lines(
            lines in proptest::collection::vec("[cmasyv]=[ -~]{0,30}", 0..10)
        ) {
            let _ = parse_offer(lines.join("\r\n").as_bytes());
        }
    }
}
