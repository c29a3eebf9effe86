//! The WebRTC side of a WHIP session, around str0m: building the offer, applying the answer and
//! choosing the H.264 payload type that fits the stream actually sent.
//!
//! Everything here is synchronous and socket-free; [`super::run`] drives it.

use super::http::{Phase, WhipError};
use crate::media::h264::{nal_units, NalType, Sps};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt};
use str0m::{Candidate, Rtc};

/// The H.264 profile families that matter for negotiation (RFC 6184 / the table WebRTC stacks
/// use to compare `profile-level-id`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Profile {
    /// Constrained Baseline (what openh264 and most hardware encoders for WebRTC produce).
    ConstrainedBaseline,
    /// Baseline.
    Baseline,
    /// Main.
    Main,
    /// Constrained High.
    ConstrainedHigh,
    /// High.
    High,
    /// Anything else (profile_idc).
    Other(u8),
}

impl H264Profile {
    /// Classifies `profile_idc` + the constraint-set flags byte, as in an SPS or the first two
    /// bytes of a `profile-level-id`.
    pub fn classify(profile_idc: u8, constraints: u8) -> Self {
        let set0 = constraints & 0x80 != 0;
        let set1 = constraints & 0x40 != 0;
        let set3 = constraints & 0x10 != 0;
        let set4 = constraints & 0x08 != 0;
        let set5 = constraints & 0x04 != 0;
        match profile_idc {
            0x42 if set1 => H264Profile::ConstrainedBaseline,
            0x42 => H264Profile::Baseline,
            0x4d if set0 => H264Profile::ConstrainedBaseline,
            0x4d => H264Profile::Main,
            0x58 if set0 && set1 => H264Profile::ConstrainedBaseline,
            0x58 if set0 => H264Profile::Baseline,
            0x64 if set4 && set5 && !set3 => H264Profile::ConstrainedHigh,
            0x64 => H264Profile::High,
            other => H264Profile::Other(other),
        }
    }

    /// Classifies a `profile-level-id` fmtp value (`0x42e01f`).
    pub fn of_profile_level_id(id: u32) -> Self {
        Self::classify((id >> 16) as u8, (id >> 8) as u8)
    }
}

/// What the stream being sent is: read from the SPS of a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamProfile {
    /// Profile family.
    pub profile: H264Profile,
    /// level_idc.
    pub level_idc: u8,
    /// profile_idc, constraint flags and level as a `profile-level-id` would spell them.
    pub profile_level_id: u32,
}

impl StreamProfile {
    /// From a parsed SPS.
    pub fn from_sps(sps: &Sps) -> Self {
        StreamProfile {
            profile: H264Profile::classify(sps.profile_idc, sps.constraint_flags),
            level_idc: sps.level_idc,
            profile_level_id: u32::from(sps.profile_idc) << 16
                | u32::from(sps.constraint_flags) << 8
                | u32::from(sps.level_idc),
        }
    }

    /// The profile of the first SPS in an Annex-B access unit, if it has a parseable one.
    pub fn of_access_unit(au: &[u8]) -> Option<Self> {
        nal_units(au)
            .find(|n| n.first().map(|h| NalType::from_header(*h)) == Some(NalType::Sps))
            .and_then(|n| Sps::parse(n).ok())
            .map(|s| Self::from_sps(&s))
    }
}

/// One negotiated H.264 payload type, reduced to what the choice needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Pt {
    /// The payload type.
    pub pt: u8,
    /// Its fmtp `profile-level-id`.
    pub profile_level_id: Option<u32>,
    /// Its fmtp `packetization-mode` (absent means 0).
    pub packetization_mode: Option<u8>,
}

/// How well a payload type fits the stream, best first; `None` when it must not be used.
fn fit(p: &H264Pt, stream: &StreamProfile) -> Option<(u8, u8, u8)> {
    // Absent profile-level-id means 42000a (Constrained Baseline would be wrong to assume).
    let id = p.profile_level_id.unwrap_or(0x42000a);
    let profile = H264Profile::of_profile_level_id(id);
    let profile_rank = if profile == stream.profile {
        0
    } else if stream.profile == H264Profile::ConstrainedBaseline && profile == H264Profile::Baseline
    {
        // A Constrained Baseline stream is a valid Baseline stream; some receivers that check
        // strictly still refuse it, hence only a fallback.
        1
    } else {
        return None;
    };
    // Mode 1 allows FU-A/STAP-A; mode 0 (one NAL per packet) cannot carry 720p keyframes
    // within the MTU, and str0m packetizes as mode 1 anyway.
    let mode_rank = if p.packetization_mode == Some(1) {
        0
    } else {
        1
    };
    let level = (id & 0xff) as u8;
    // A level at or above the stream's is honest; below is tolerated (level-asymmetry) last.
    let level_rank = if level >= stream.level_idc { 0 } else { 1 };
    Some((profile_rank, mode_rank, level_rank))
}

/// Picks the payload type whose fmtp profile matches the stream, preferring packetization
/// mode 1 and a sufficient level. `None` when no negotiated type fits the profile.
pub fn choose_pt(pts: &[H264Pt], stream: &StreamProfile) -> Option<H264Pt> {
    pts.iter()
        .filter_map(|p| fit(p, stream).map(|f| (f, p)))
        .min_by_key(|(f, _)| *f)
        .map(|(_, p)| *p)
}

/// 90 kHz RTP time of a presentation time (wraps as RTP time does).
pub fn media_time(pts: Duration) -> MediaTime {
    let ticks = pts.as_micros().saturating_mul(9) / 100;
    MediaTime::from_90khz(u64::try_from(ticks).unwrap_or(u64::MAX))
}

/// Settings of a peer connection.
#[derive(Debug, Clone)]
pub struct RtcSettings {
    /// First bandwidth estimate (bit/s) before feedback arrives.
    pub initial_bitrate_bps: u64,
    /// Bitrate the estimator should probe towards (bit/s).
    pub desired_bitrate_bps: u64,
    /// Longest STUN retransmission interval (consent checks).
    pub ice_max_rto: Duration,
    /// STUN retransmissions before a candidate pair counts as dead.
    pub ice_max_retransmits: usize,
}

/// A peer connection with its offer made, waiting for the answer.
pub struct Offered {
    /// The connection.
    pub rtc: Rtc,
    /// Our one video m-line.
    pub mid: Mid,
    /// str0m's handle for the pending offer.
    pub pending: SdpPendingOffer,
    /// The offer to POST.
    pub offer_sdp: String,
}

/// Generates the DTLS identity: an ECDSA P-256 self-signed certificate (what browsers and SFUs
/// expect; RSA works too but costs far more per handshake on an edge box).
pub fn dtls_certificate() -> Result<str0m::config::DtlsCert, WhipError> {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or(WhipError::Local {
            phase: Phase::Offer,
            why: "could not generate the DTLS certificate".into(),
        })
}

/// Builds a peer connection with one sendonly H.264 video m-line, `local` as host candidate
/// (and `reflexive`, learnt from STUN, as server-reflexive candidate of the same socket), and
/// makes the (non-trickle) offer.
pub fn make_offer(
    local: SocketAddr,
    reflexive: Option<SocketAddr>,
    settings: &RtcSettings,
    now: Instant,
) -> Result<Offered, WhipError> {
    let local_err = |why: String| WhipError::Local {
        phase: Phase::Offer,
        why,
    };
    let mut config = Rtc::builder()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .set_dtls_cert(dtls_certificate()?)
        .clear_codecs()
        .enable_h264(true)
        .enable_bwe(Some(Bitrate::bps(settings.initial_bitrate_bps)))
        .set_stats_interval(Some(Duration::from_secs(1)));
    // Consent checks double as the dead-server detector; str0m's defaults take ~19 s.
    config.set_max_stun_rto(settings.ice_max_rto);
    config.set_max_stun_retransmits(settings.ice_max_retransmits);
    let mut rtc = config.build(now);
    let candidate =
        Candidate::host(local, "udp").map_err(|e| local_err(format!("host candidate: {e}")))?;
    if rtc.add_local_candidate(candidate).is_none() {
        return Err(local_err(format!("host candidate {local} refused")));
    }
    if let Some(addr) = reflexive.filter(|a| *a != local) {
        // Optional: a bad or redundant reflexive address must not cost the host candidate.
        match Candidate::server_reflexive(addr, local, "udp") {
            Ok(c) => {
                if rtc.add_local_candidate(c).is_none() {
                    tracing::debug!(%addr, "whip: reflexive candidate not added (redundant)");
                }
            }
            Err(e) => tracing::debug!(%addr, error = %e, "whip: reflexive candidate refused"),
        }
    }
    rtc.bwe()
        .set_desired_bitrate(Bitrate::bps(settings.desired_bitrate_bps));
    let mut change = rtc.sdp_api();
    let mid = change.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("dockcast".into()),
        Some("video".into()),
        None,
    );
    let (offer, pending) = change
        .apply()
        .ok_or_else(|| local_err("no offer produced".into()))?;
    Ok(Offered {
        rtc,
        mid,
        pending,
        offer_sdp: offer.to_sdp_string(),
    })
}

/// Applies the server's answer. A garbage or mismatched answer gives a [`WhipError::BadAnswer`]
/// that says what str0m disliked.
pub fn accept_answer(
    rtc: &mut Rtc,
    pending: SdpPendingOffer,
    answer_sdp: &str,
) -> Result<(), WhipError> {
    let answer = SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| WhipError::BadAnswer {
        why: format!("not an SDP answer: {e}"),
    })?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| WhipError::BadAnswer {
            why: format!("answer does not fit the offer: {e}"),
        })
}

/// The H.264 payload types the answer accepted for `mid`.
pub fn negotiated_h264(rtc: &mut Rtc, mid: Mid) -> Vec<H264Pt> {
    let Some(writer) = rtc.writer(mid) else {
        return Vec::new();
    };
    writer
        .payload_params()
        .filter(|p| p.spec().codec == Codec::H264)
        .map(|p| {
            let f = p.spec().format;
            H264Pt {
                pt: *p.pt(),
                profile_level_id: f.profile_level_id,
                packetization_mode: f.packetization_mode,
            }
        })
        .collect()
}

/// str0m's `Pt` for a chosen payload type number.
pub fn pt(n: u8) -> Pt {
    Pt::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cb31() -> StreamProfile {
        StreamProfile {
            profile: H264Profile::ConstrainedBaseline,
            level_idc: 0x1f,
            profile_level_id: 0x42e01f,
        }
    }

    fn p(pt: u8, id: u32, mode: u8) -> H264Pt {
        H264Pt {
            pt,
            profile_level_id: Some(id),
            packetization_mode: Some(mode),
        }
    }

    #[test]
    fn profiles_classify_like_webrtc() {
        use H264Profile::*;
        assert_eq!(
            H264Profile::of_profile_level_id(0x42e01f),
            ConstrainedBaseline
        );
        assert_eq!(
            H264Profile::of_profile_level_id(0x42c01f),
            ConstrainedBaseline
        );
        assert_eq!(H264Profile::of_profile_level_id(0x42001f), Baseline);
        assert_eq!(H264Profile::of_profile_level_id(0x4d001f), Main);
        assert_eq!(
            H264Profile::of_profile_level_id(0x4d801f),
            ConstrainedBaseline
        );
        assert_eq!(H264Profile::of_profile_level_id(0x64001f), High);
        assert_eq!(H264Profile::of_profile_level_id(0x640c1f), ConstrainedHigh);
        assert_eq!(H264Profile::of_profile_level_id(0xf4001f), Other(0xf4));
    }

    #[test]
    fn chooses_the_matching_profile_with_mode_1() {
        // str0m's default order: baseline first, which would be the wrong pick for openh264.
        let pts = [
            p(127, 0x42001f, 1),
            p(125, 0x42001f, 0),
            p(108, 0x42e01f, 1),
            p(124, 0x42e01f, 0),
            p(123, 0x4d001f, 1),
            p(114, 0x64001f, 1),
        ];
        assert_eq!(choose_pt(&pts, &cb31()).map(|p| p.pt), Some(108));
        let high = StreamProfile {
            profile: H264Profile::High,
            level_idc: 0x28,
            profile_level_id: 0x640028,
        };
        assert_eq!(choose_pt(&pts, &high).map(|p| p.pt), Some(114));
    }

    #[test]
    fn falls_back_to_baseline_for_constrained_baseline_only() {
        let pts = [p(96, 0x42001f, 1), p(97, 0x4d001f, 1)];
        assert_eq!(choose_pt(&pts, &cb31()).map(|p| p.pt), Some(96));
        let main = StreamProfile {
            profile: H264Profile::Main,
            level_idc: 0x1f,
            profile_level_id: 0x4d001f,
        };
        assert_eq!(choose_pt(&[p(96, 0x42e01f, 1)], &main), None);
    }

    #[test]
    fn prefers_a_sufficient_level() {
        let stream = StreamProfile {
            level_idc: 0x28,
            ..cb31()
        };
        let pts = [p(100, 0x42e01f, 1), p(101, 0x42e02a, 1)];
        assert_eq!(choose_pt(&pts, &stream).map(|p| p.pt), Some(101));
        assert_eq!(choose_pt(&pts[..1], &stream).map(|p| p.pt), Some(100));
    }

    #[test]
    fn media_time_is_90khz() {
        assert_eq!(media_time(Duration::from_secs(1)).numer(), 90_000);
        assert_eq!(media_time(Duration::from_micros(33_333)).numer(), 2999);
    }

    #[test]
    fn reads_the_profile_from_an_openh264_keyframe() {
        use crate::media::encoder::H264Encoder;
        use crate::media::frame::RawFrame;
        use crate::media::quality::Rung;
        let rung = Rung {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 800,
        };
        let mut enc = H264Encoder::new(rung, 30).unwrap();
        let out = enc
            .encode(&RawFrame::black(640, 360), Duration::ZERO)
            .unwrap()
            .unwrap();
        let prof = StreamProfile::of_access_unit(&out.data).expect("sps");
        assert_eq!(prof.profile, H264Profile::ConstrainedBaseline, "{prof:x?}");
        let pts = [p(127, 0x42001f, 1), p(108, 0x42e01f, 1)];
        assert_eq!(choose_pt(&pts, &prof).map(|p| p.pt), Some(108));
    }

    fn offered() -> Offered {
        let settings = RtcSettings {
            initial_bitrate_bps: 1_000_000,
            desired_bitrate_bps: 2_000_000,
            ice_max_rto: Duration::from_secs(1),
            ice_max_retransmits: 7,
        };
        make_offer(
            "127.0.0.1:40000".parse().unwrap(),
            None,
            &settings,
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn offer_is_sendonly_h264_with_inline_host_candidate() {
        let o = offered();
        let sdp = &o.offer_sdp;
        assert!(sdp.contains("m=video"), "{sdp}");
        assert!(sdp.contains("a=sendonly"), "{sdp}");
        assert!(sdp.contains("a=setup:actpass"), "{sdp}");
        assert!(sdp.contains("127.0.0.1 40000 typ host"), "{sdp}");
        assert!(sdp.contains("profile-level-id=42e01f"), "{sdp}");
        assert!(sdp.contains("transport-cc"), "{sdp}");
        assert!(sdp.contains("apt="), "RTX offered: {sdp}");
        assert!(!sdp.contains("m=audio"), "{sdp}");
    }

    #[test]
    fn reflexive_candidate_goes_into_the_offer() {
        let settings = RtcSettings {
            initial_bitrate_bps: 1_000_000,
            desired_bitrate_bps: 2_000_000,
            ice_max_rto: Duration::from_secs(1),
            ice_max_retransmits: 7,
        };
        let o = make_offer(
            "192.168.7.2:40000".parse().unwrap(),
            Some("203.0.113.9:61000".parse().unwrap()),
            &settings,
            Instant::now(),
        )
        .unwrap();
        let sdp = &o.offer_sdp;
        assert!(sdp.contains("192.168.7.2 40000 typ host"), "{sdp}");
        // str0m masks raddr/rport (0.0.0.0 0) unless built with its `pii` feature.
        assert!(sdp.contains("203.0.113.9 61000 typ srflx"), "{sdp}");
    }

    #[test]
    fn dtls_certificate_is_ecdsa_p256() {
        let cert = dtls_certificate().unwrap();
        // OID 1.2.840.10045.3.1.7 (prime256v1) and 1.2.840.10045.4.3.2 (ecdsa-with-SHA256).
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let ecdsa_sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let der = &cert.certificate;
        assert!(der.windows(p256.len()).any(|w| w == p256));
        assert!(der.windows(ecdsa_sha256.len()).any(|w| w == ecdsa_sha256));
    }

    #[test]
    fn garbage_answer_is_a_clear_error() {
        for garbage in ["", "hello", "v=0\r\n", "<html>busy</html>"] {
            let mut o = offered();
            let e = accept_answer(&mut o.rtc, o.pending, garbage).unwrap_err();
            assert!(matches!(e, WhipError::BadAnswer { .. }), "{e}");
            assert!(e.to_string().starts_with("answer: "), "{e}");
        }
    }

    #[test]
    fn answer_without_fingerprint_is_refused() {
        let o = offered();
        // Echo our own offer back with the direction flipped and the fingerprint removed.
        let fake: String = o
            .offer_sdp
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| {
                let l = l.replace("a=sendonly", "a=recvonly");
                let l = l.replace("a=setup:actpass", "a=setup:active");
                format!("{l}\r\n")
            })
            .collect();
        let mut o = o;
        let e = accept_answer(&mut o.rtc, o.pending, &fake).unwrap_err();
        assert!(e.to_string().contains("fingerprint"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        #[test]
        fn arbitrary_answers_never_panic(s in ".{0,300}") {
            let mut o = offered();
            let _ = accept_answer(&mut o.rtc, o.pending, &s);
        }

        #[test]
        fn sdp_like_answers_never_panic(lines in proptest::collection::vec("[vosctmab]=[ -~]{0,40}", 0..20)) {
            let mut o = offered();
            let s: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let _ = accept_answer(&mut o.rtc, o.pending, &s);
        }

        #[test]
        fn choose_pt_never_panics(ids in proptest::collection::vec((any::<u8>(), any::<Option<u32>>(), any::<Option<u8>>()), 0..10), sps in any::<u32>()) {
            let pts: Vec<H264Pt> = ids.iter().map(|(pt, id, m)| H264Pt { pt: *pt, profile_level_id: *id, packetization_mode: *m }).collect();
            let stream = StreamProfile {
                profile: H264Profile::of_profile_level_id(sps),
                level_idc: sps as u8,
                profile_level_id: sps,
            };
            let _ = choose_pt(&pts, &stream);
        }
    }
}
