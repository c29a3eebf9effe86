//! The Play dialog: check a platform INVITE, answer it, and end it with BYE from either side.

use super::register::Identity;
use super::sdp::{self, MediaTransport, SdpError};
use super::sip::{self, Request, Response, SipError};
use std::net::{IpAddr, SocketAddr};

/// Where and how to send one INVITE's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    /// The dialog's Call-ID, to tie a later stop to this start.
    pub call_id: String,
    /// UDP, or TCP and who connects.
    pub transport: MediaTransport,
    /// The media server (offer `c=`/`m=`); unused for [`MediaTransport::TcpListen`].
    pub remote: SocketAddr,
    /// RTP SSRC (the offer's `y=`).
    pub ssrc: u32,
}

/// Why an INVITE is refused; [`InviteError::status`] gives the SIP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// The INVITE itself is malformed.
    #[error("INVITE: {0}")]
    Sip(#[from] SipError),
    /// The Request-URI names a channel we do not have.
    #[error("INVITE for {user:?}, not our channel {channel}")]
    WrongChannel {
        /// Request-URI user, clipped.
        user: String,
        /// Our channel.
        channel: String,
    },
    /// `Subject` names another channel than the Request-URI.
    #[error("INVITE Subject {subject:?} does not name channel {channel}")]
    SubjectMismatch {
        /// Subject, clipped.
        subject: String,
        /// Our channel.
        channel: String,
    },
    /// Playback/Download or anything but live Play.
    #[error("INVITE session {name:?} is not Play (only live video is served)")]
    NotPlay {
        /// `s=` value, clipped.
        name: String,
    },
    /// The offer asks for UDP media to an IPv6 address and the media socket is IPv4 (bound to
    /// `gb28181.bind_ip`): nothing could be sent, so it is refused rather than answered.
    #[error(
        "INVITE (Call-ID {call_id}) asks for UDP media to IPv6 {address}, but the media socket \
         is IPv4 (gb28181.bind_ip {bind_ip})"
    )]
    AddressFamily {
        /// Call-ID of the INVITE.
        call_id: String,
        /// The offer's media address.
        address: IpAddr,
        /// Where the media socket is bound.
        bind_ip: IpAddr,
    },
    /// The SDP offer cannot be served.
    #[error("INVITE (Call-ID {call_id}) SDP: {error}")]
    Sdp {
        /// Call-ID of the INVITE.
        call_id: String,
        /// What is wrong.
        error: SdpError,
    },
}

impl InviteError {
    /// The status code and reason to answer the INVITE with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            InviteError::Sip(_) => (400, "Bad Request"),
            InviteError::WrongChannel { .. } => (404, "Not Found"),
            InviteError::SubjectMismatch { .. } => (400, "Bad Request"),
            InviteError::NotPlay { .. }
            | InviteError::Sdp { .. }
            | InviteError::AddressFamily { .. } => (488, "Not Acceptable Here"),
        }
    }
}

/// A confirmed or answered Play dialog (the device is the UAS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayDialog {
    /// Call-ID.
    pub call_id: String,
    /// Our To-tag.
    pub local_tag: String,
    remote_from: String,
    local_to: String,
    remote_target: String,
    /// Where requests in this dialog go: the INVITE's source (what rport-minded platforms use).
    pub remote_addr: SocketAddr,
    local_cseq: u32,
    /// What to send once the ACK arrives.
    pub media: MediaPlan,
    /// ACK received, media running.
    pub confirmed: bool,
}

/// Checks a platform INVITE and builds the dialog and the 200 OK with our SDP answer.
///
/// `ssrc_fallback` is used when the offer has no `y=` (it must then be 10 decimal digits we
/// chose). `local_ip`/`media_port` are what the answer advertises: the fixed UDP source port,
/// or the TCP port we already listen on.
#[allow(clippy::too_many_arguments)]
pub fn accept_invite(
    req: &Request,
    source: SocketAddr,
    channel: &str,
    local: &Identity,
    local_ip: IpAddr,
    media_port: u16,
    local_tag: &str,
    ssrc_fallback: &str,
) -> Result<(PlayDialog, Response), InviteError> {
    let call_id = req.call_id()?.to_owned();
    let (cseq, _) = req.cseq()?;
    let from = req.headers.require("From")?.to_owned();
    let to = req.headers.require("To")?.to_owned();
    let user = sip::uri_user(&req.uri).unwrap_or_default();
    if user != channel {
        return Err(InviteError::WrongChannel {
            user: sip::clip(user),
            channel: channel.to_owned(),
        });
    }
    if let Some(subject) = req.headers.get("Subject") {
        let sender = subject.split(',').next().unwrap_or("");
        let sender_id = sender.split(':').next().unwrap_or("").trim();
        if sender_id != channel {
            return Err(InviteError::SubjectMismatch {
                subject: sip::clip(subject),
                channel: channel.to_owned(),
            });
        }
    }
    let offer = sdp::parse_offer(&req.body).map_err(|error| InviteError::Sdp {
        call_id: call_id.clone(),
        error,
    })?;
    if !offer.session_name.eq_ignore_ascii_case("Play") {
        return Err(InviteError::NotPlay {
            name: sip::clip(&offer.session_name),
        });
    }
    let (ssrc_text, ssrc) = match (offer.ssrc_text, offer.ssrc) {
        (Some(t), Some(s)) => (t, s),
        _ => {
            let s = sdp::parse_ssrc(ssrc_fallback).map_err(|error| InviteError::Sdp {
                call_id: call_id.clone(),
                error,
            })?;
            (ssrc_fallback.to_owned(), s)
        }
    };
    let answer = sdp::answer(channel, local_ip, media_port, offer.transport, &ssrc_text);
    let mut resp = req.response(200, "OK", Some(local_tag));
    resp.headers.push("Contact", local.contact(channel));
    resp.headers.push("Content-Type", "APPLICATION/SDP");
    resp.body = answer.into_bytes().into();
    let local_to = resp
        .headers
        .get("To")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{to};tag={local_tag}"));
    let remote_target = req
        .headers
        .get("Contact")
        .and_then(|c| {
            let (a, b) = (c.find('<')?, c.find('>')?);
            (a < b).then(|| c[a + 1..b].to_owned())
        })
        .unwrap_or_else(|| format!("sip:{}", source));
    let dialog = PlayDialog {
        call_id: call_id.clone(),
        local_tag: local_tag.to_owned(),
        remote_from: from,
        local_to,
        remote_target,
        remote_addr: source,
        local_cseq: cseq.saturating_add(1000),
        media: MediaPlan {
            call_id,
            transport: offer.transport,
            // An IPv4-mapped address is sent to as the IPv4 address it is.
            remote: SocketAddr::new(offer.address.to_canonical(), offer.port),
            ssrc,
        },
        confirmed: false,
    };
    Ok((dialog, resp))
}

impl PlayDialog {
    /// True when `req` (ACK, BYE, CANCEL) belongs to this dialog.
    pub fn matches(&self, req: &Request) -> bool {
        req.call_id().is_ok_and(|c| c == self.call_id)
    }

    /// Our BYE (source lost, replaced by a new INVITE, sink stopping): From/To swapped relative
    /// to the INVITE, Request-URI = the platform's Contact.
    pub fn bye(&mut self, local: &Identity, branch: &str) -> Request {
        self.local_cseq = self.local_cseq.saturating_add(1);
        let mut r = Request::new("BYE", self.remote_target.clone());
        let h = &mut r.headers;
        h.push("Via", local.via(branch));
        h.push("From", self.local_to.clone());
        h.push("To", self.remote_from.clone());
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{} BYE", self.local_cseq));
        h.push("Max-Forwards", "70");
        h.push("User-Agent", local.user_agent.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::gb28181::sip::{parse, Message};

    const CH: &str = "34020000001310000001";

    fn invite(uri_user: &str, subject: &str, sdp: &str) -> Request {
        let text = format!(
            "INVITE sip:{uri_user}@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bKi\r\nFrom: <sip:34020000002000000001@3402000000>;tag=ft\r\nTo: <sip:{uri_user}@3402000000>\r\nCall-ID: inv1\r\nCSeq: 37 INVITE\r\nContact: <sip:34020000002000000001@127.0.0.1:5070>\r\nSubject: {subject}\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        match parse(text.as_bytes()).expect("parses") {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request expected"),
        }
    }

    const OFFER: &str =
        "v=0\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nm=video 30000 RTP/AVP 96 98\r\ny=0100000001\r\n";

    fn local() -> Identity {
        Identity {
            device_id: "34020000001320000001".into(),
            server_id: "34020000002000000001".into(),
            domain: "3402000000".into(),
            server: "127.0.0.1:5070".parse().expect("addr"),
            local: "127.0.0.1:5060".parse().expect("addr"),
            user_agent: "ua".into(),
            tcp: false,
        }
    }

    fn accept(req: &Request) -> Result<(PlayDialog, Response), InviteError> {
        accept_invite(
            req,
            "127.0.0.1:5070".parse().expect("addr"),
            CH,
            &local(),
            "127.0.0.1".parse().expect("ip"),
            15100,
            "lt",
            "0000000009",
        )
    }

    #[test]
    fn accepts_play_and_builds_answer_and_bye() {
        let req = invite(
            CH,
            &format!("{CH}:0100000001,34020000002000000001:0"),
            OFFER,
        );
        let (mut d, resp) = accept(&req).expect("accepted");
        assert_eq!(resp.status, 200);
        assert_eq!(d.media.ssrc, 100_000_001);
        assert_eq!(d.media.remote, "127.0.0.1:30000".parse().expect("addr"));
        let body = String::from_utf8(resp.body.to_vec()).expect("utf8");
        assert!(body.contains("m=video 15100 RTP/AVP 96\r\n"));
        assert!(body.ends_with("y=0100000001\r\nf=\r\n"));
        assert_eq!(
            resp.headers.get("To"),
            Some(format!("<sip:{CH}@3402000000>;tag=lt").as_str())
        );
        let bye = d.bye(&local(), "z9hG4bKb");
        assert_eq!(bye.uri, "sip:34020000002000000001@127.0.0.1:5070");
        assert_eq!(bye.headers.get("From"), resp.headers.get("To"));
        assert_eq!(
            bye.headers.get("To"),
            Some("<sip:34020000002000000001@3402000000>;tag=ft")
        );
        assert_eq!(bye.cseq().expect("cseq").1, "BYE");
    }

    #[test]
    fn refuses_wrong_channel_subject_session_and_sdp() {
        let err = accept(&invite("34020000001310000002", "x", OFFER)).expect_err("refused");
        assert_eq!(err.status().0, 404);
        let err = accept(&invite(CH, "34020000001310000002:1,2:0", OFFER)).expect_err("refused");
        assert_eq!(err.status().0, 400);
        let playback = OFFER.replace("s=Play", "s=Playback");
        let err = accept(&invite(CH, &format!("{CH}:1,2:0"), &playback)).expect_err("refused");
        assert_eq!(err.status().0, 488);
        let err = accept(&invite(CH, &format!("{CH}:1,2:0"), "v=0\r\n")).expect_err("refused");
        assert!(matches!(err, InviteError::Sdp { ref call_id, .. } if call_id == "inv1"));
    }

    #[test]
    fn missing_y_uses_our_ssrc() {
        let offer = OFFER.replace("y=0100000001\r\n", "");
        let (d, resp) = accept(&invite(CH, &format!("{CH}:0,2:0"), &offer)).expect("accepted");
        assert_eq!(d.media.ssrc, 9);
        assert!(String::from_utf8_lossy(&resp.body).contains("y=0000000009\r\n"));
    }
}
