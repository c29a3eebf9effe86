//! `services` requests (cloud → device) decoded into typed commands, and their replies encoded.
//!
//! Decoding sorts every payload into one of three outcomes: a [`Request`] to act on, a
//! [`DecodeError::Rejected`] that still carries the `tid`/`bid`/`method` needed to answer with a
//! non-zero `result`, or a [`DecodeError::Unanswerable`] payload that has no `tid` and can only be
//! logged. That split is what lets the caller keep the rule "every bad request gets a reply".

use super::error::LiveErrorCode;
use super::ids::{clip, CameraPosition, Lens, UrlType, VideoId, VideoQuality};
use super::url::StreamUrl;
use serde::Serialize;
use serde_json::{Map, Value};

/// The envelope fields a reply must echo byte-for-byte: the cloud matches replies on `tid`
/// and `bid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// Transaction id of this request (a retry gets a new one).
    pub tid: String,
    /// Business id; empty when the request had none.
    pub bid: String,
    /// Method name; empty when the request had none (it is then rejected with 513004).
    pub method: String,
}

/// A decoded, validated services request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the reply must echo.
    pub header: RequestHeader,
    /// What the cloud asks for.
    pub command: Command,
}

/// The live methods a dock answers, with their parameters already typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `live_start_push`: start pushing `video_id` to `url`.
    StartPush {
        /// The transport, also implied by `url`'s variant.
        url_type: UrlType,
        /// Where to push.
        url: StreamUrl,
        /// Which stream to push.
        video_id: VideoId,
        /// Requested quality.
        quality: VideoQuality,
    },
    /// `live_stop_push`.
    StopPush {
        /// Which stream to stop.
        video_id: VideoId,
    },
    /// `live_set_quality`.
    SetQuality {
        /// Which stream.
        video_id: VideoId,
        /// New quality.
        quality: VideoQuality,
    },
    /// `live_lens_change`; DJI's documentation sends only `video_type`, other clouds add the
    /// `video_id` (the caller picks the single live switchable stream when it is absent).
    LensChange {
        /// Which stream, when the cloud said.
        video_id: Option<VideoId>,
        /// Lens to switch to.
        lens: Lens,
    },
    /// `live_camera_change` (Dock 2/3): switch the dock camera between cabin and outdoor view.
    CameraChange {
        /// Which stream.
        video_id: VideoId,
        /// View to switch to.
        position: CameraPosition,
    },
}

/// Why a services payload did not become a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload has no usable `tid`, so no reply can be matched by the cloud; log and drop.
    #[error("unanswerable services payload: {reason}")]
    Unanswerable {
        /// What was wrong.
        reason: String,
    },
    /// The request is identifiable but invalid; reply with `code` and log `reason`.
    #[error("rejected {method:?} (tid {tid}): {code}: {reason}", method = header.method, tid = header.tid)]
    Rejected {
        /// Envelope to echo in the reply.
        header: RequestHeader,
        /// Result code to reply with.
        code: LiveErrorCode,
        /// What was wrong, naming the field; never contains a secret.
        reason: String,
    },
}

impl DecodeError {
    /// The envelope to reply to, if there is one.
    pub fn header(&self) -> Option<&RequestHeader> {
        match self {
            DecodeError::Unanswerable { .. } => None,
            DecodeError::Rejected { header, .. } => Some(header),
        }
    }

    /// The result code for the reply. An unanswerable payload has nobody to reply to; it reports
    /// 513014 (bad parameters) so logs and counters still have a code.
    pub fn code(&self) -> LiveErrorCode {
        match self {
            DecodeError::Unanswerable { .. } => LiveErrorCode::BadParameters,
            DecodeError::Rejected { code, .. } => *code,
        }
    }
}

/// Longest `tid`, `bid` or `method` a reply echoes. The cloud's are UUIDs and short names; a
/// reply echoing a far longer one could outgrow the link's packet limit
/// ([`crate::link::MAX_PACKET`]), and a packet too large to send costs the broker connection.
pub const MAX_ENVELOPE_FIELD: usize = 256;

/// Decodes one `thing/product/{gateway_sn}/services` payload. Never panics, whatever the bytes.
pub fn decode_request(payload: &[u8]) -> Result<Request, DecodeError> {
    let payload = trim_payload(payload);
    let value: Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(e) => return Err(salvage_header(payload, &e)),
    };
    let Value::Object(obj) = value else {
        return Err(DecodeError::Unanswerable {
            reason: format!("payload is a JSON {}, not an object", type_name(&value)),
        });
    };
    let header = match read_header(obj.get("tid"), obj.get("bid"), obj.get("method"))? {
        (header, Some((code, reason))) => return Err(reject(header, code, reason)),
        (header, None) => header,
    };
    let empty = Map::new();
    let data = match obj.get("data") {
        None | Some(Value::Null) => &empty,
        Some(Value::String(s)) if s.is_empty() => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => {
            let reason = format!("data is a {}, not an object", type_name(other));
            return Err(reject(header, LiveErrorCode::BadParameters, reason));
        }
    };
    match decode_command(&header.method, data) {
        Ok(command) => Ok(Request { header, command }),
        Err((code, reason)) => Err(reject(header, code, reason)),
    }
}

type Failure = (LiveErrorCode, String);

/// Drops what publishers written in C, C++ or some Node libraries put around a JSON document —
/// a UTF-8 byte-order mark before it, NULs or whitespace after it — which a strict parser
/// refuses, leaving the cloud without a reply.
fn trim_payload(payload: &[u8]) -> &[u8] {
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    let end = payload
        .iter()
        .rposition(|b| !matches!(b, 0 | b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    &payload[..end]
}

/// The envelope alone, read the way serde skips what it does not want: unknown fields are
/// scanned, never converted, so a number out of f64's range, nesting deeper than the parser's
/// limit or a lone surrogate elsewhere in the document does not hide the `tid`.
#[derive(serde::Deserialize)]
struct EnvelopeOnly {
    tid: Option<Value>,
    bid: Option<Value>,
    method: Option<Value>,
}

/// A payload that is not a JSON value dockcast can hold: if its envelope can still be read, the
/// cloud gets a 513014 naming the problem instead of waiting out its timeout.
fn salvage_header(payload: &[u8], e: &serde_json::Error) -> DecodeError {
    let reason = format!("payload is not JSON: {e}");
    // serde would also read a struct from an array; only an object has an envelope.
    if payload.first() != Some(&b'{') {
        return DecodeError::Unanswerable { reason };
    }
    let Ok(env) = serde_json::from_slice::<EnvelopeOnly>(payload) else {
        return DecodeError::Unanswerable { reason };
    };
    match read_header(env.tid.as_ref(), env.bid.as_ref(), env.method.as_ref()) {
        Ok((header, _)) => reject(header, LiveErrorCode::BadParameters, reason),
        Err(DecodeError::Unanswerable { reason: why }) => DecodeError::Unanswerable {
            reason: format!("{reason}; {why}"),
        },
        Err(other) => other,
    }
}

/// The envelope to echo, and the first thing wrong with it that still leaves it answerable.
fn read_header(
    tid: Option<&Value>,
    bid: Option<&Value>,
    method: Option<&Value>,
) -> Result<(RequestHeader, Option<Failure>), DecodeError> {
    let unanswerable = |reason: String| DecodeError::Unanswerable { reason };
    // A numeric tid breaks the envelope's contract, but it still names the request: echo its
    // text with an error rather than leaving the cloud to time out.
    let mut problem = None;
    let tid = match tid {
        Some(Value::String(s)) if s.len() > MAX_ENVELOPE_FIELD => {
            return Err(unanswerable(format!(
                "tid is {} bytes long, more than {MAX_ENVELOPE_FIELD}",
                s.len()
            )))
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => {
            problem = Some((
                LiveErrorCode::BadParameters,
                format!("tid {n} is a number, not a string"),
            ));
            n.to_string()
        }
        Some(other) => {
            return Err(unanswerable(format!(
                "tid is a {}, not a string",
                type_name(other)
            )))
        }
        None => return Err(unanswerable("tid is missing".into())),
    };
    // A bid that cannot be echoed as the cloud sent it is answered with an empty one.
    let bid = match bid {
        Some(Value::String(s)) if s.len() <= MAX_ENVELOPE_FIELD => s.clone(),
        Some(Value::String(s)) => {
            problem.get_or_insert((
                LiveErrorCode::BadParameters,
                format!(
                    "bid is {} bytes long, more than {MAX_ENVELOPE_FIELD}",
                    s.len()
                ),
            ));
            String::new()
        }
        _ => String::new(),
    };
    let method = match method {
        Some(Value::String(s)) if s.len() <= MAX_ENVELOPE_FIELD => s.clone(),
        other => {
            let why = match other {
                Some(Value::String(s)) => {
                    format!(
                        "method is {} bytes long, more than {MAX_ENVELOPE_FIELD}",
                        s.len()
                    )
                }
                Some(v) => format!("method is a {}, not a string", type_name(v)),
                None => "method is missing".to_owned(),
            };
            problem.get_or_insert((LiveErrorCode::FunctionNotSupported, why));
            String::new()
        }
    };
    Ok((RequestHeader { tid, bid, method }, problem))
}

fn reject(header: RequestHeader, code: LiveErrorCode, reason: String) -> DecodeError {
    DecodeError::Rejected {
        header,
        code,
        reason,
    }
}

fn decode_command(method: &str, data: &Map<String, Value>) -> Result<Command, Failure> {
    match method {
        "live_start_push" => {
            let url_type = match int_field(data, "url_type")? {
                Int::U(v) => UrlType::from_u64(v),
                Int::Negative => None,
            }
            .ok_or_else(|| {
                (
                    LiveErrorCode::UrlTypeNotSupported,
                    format!(
                        "data.url_type {} is not 0..=4",
                        clip(
                            &data
                                .get("url_type")
                                .map(Value::to_string)
                                .unwrap_or_default()
                        )
                    ),
                )
            })?;
            let video_id = video_id_field(data, "video_id")?;
            let quality = quality_field(data)?;
            let raw_url = str_field(data, "url")?;
            let url = StreamUrl::parse(url_type, raw_url).map_err(|e| {
                (
                    LiveErrorCode::BadParameters,
                    format!("data.url ({url_type:?}): {e}"),
                )
            })?;
            Ok(Command::StartPush {
                url_type,
                url,
                video_id,
                quality,
            })
        }
        "live_stop_push" => Ok(Command::StopPush {
            video_id: video_id_field(data, "video_id")?,
        }),
        "live_set_quality" => Ok(Command::SetQuality {
            video_id: video_id_field(data, "video_id")?,
            quality: quality_field(data)?,
        }),
        "live_lens_change" => {
            let lens_name = str_field(data, "video_type")?;
            let lens = lens_name
                .parse::<Lens>()
                .map_err(|e| (LiveErrorCode::BadParameters, format!("data.{e}")))?;
            let video_id = match data.get("video_id") {
                None | Some(Value::Null) => None,
                Some(_) => Some(video_id_field(data, "video_id")?),
            };
            Ok(Command::LensChange { video_id, lens })
        }
        "live_camera_change" => {
            let video_id = video_id_field(data, "video_id")?;
            let position = match int_field(data, "camera_position")? {
                Int::U(v) => CameraPosition::from_u64(v),
                Int::Negative => None,
            }
            .ok_or_else(|| {
                (
                    LiveErrorCode::BadParameters,
                    "data.camera_position is not 0 (inside) or 1 (outside)".to_owned(),
                )
            })?;
            Ok(Command::CameraChange { video_id, position })
        }
        other => Err((
            LiveErrorCode::FunctionNotSupported,
            format!("unknown method {:?}", clip(other)),
        )),
    }
}

/// An integer field's value; negatives are kept apart so range errors get the right code.
enum Int {
    U(u64),
    Negative,
}

/// A required integer field. Numeric strings are accepted too: clouds written in loosely typed
/// languages send them, and the reference cloud's JSON layer coerces them the same way.
fn int_field(data: &Map<String, Value>, key: &str) -> Result<Int, Failure> {
    let bad = |what: &str| (LiveErrorCode::BadParameters, format!("data.{key} {what}"));
    match data.get(key) {
        None | Some(Value::Null) => Err(bad("is missing")),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Int::U(u))
            } else if n.as_i64().is_some() {
                Ok(Int::Negative)
            } else {
                Err(bad("is not an integer"))
            }
        }
        Some(Value::String(s)) => {
            let s = s.trim();
            if let Ok(u) = s.parse::<u64>() {
                Ok(Int::U(u))
            } else if s.parse::<i64>().is_ok() {
                Ok(Int::Negative)
            } else {
                Err(bad("is not an integer"))
            }
        }
        Some(other) => Err(bad(&format!("is a {}, not an integer", type_name(other)))),
    }
}

fn str_field<'a>(data: &'a Map<String, Value>, key: &str) -> Result<&'a str, Failure> {
    match data.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err((
            LiveErrorCode::BadParameters,
            format!("data.{key} is missing"),
        )),
        Some(other) => Err((
            LiveErrorCode::BadParameters,
            format!("data.{key} is a {}, not a string", type_name(other)),
        )),
    }
}

fn video_id_field(data: &Map<String, Value>, key: &str) -> Result<VideoId, Failure> {
    VideoId::parse(str_field(data, key)?)
        .map_err(|e| (LiveErrorCode::BadParameters, format!("data.{key}: {e}")))
}

fn quality_field(data: &Map<String, Value>) -> Result<VideoQuality, Failure> {
    let q = match int_field(data, "video_quality")? {
        Int::U(v) => VideoQuality::from_u64(v),
        Int::Negative => None,
    };
    q.ok_or_else(|| {
        (
            LiveErrorCode::QualityNotSupported,
            format!(
                "data.video_quality {} is not 0..=4",
                clip(
                    &data
                        .get("video_quality")
                        .map(Value::to_string)
                        .unwrap_or_default()
                )
            ),
        )
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[derive(Serialize)]
struct Reply<'a> {
    tid: &'a str,
    bid: &'a str,
    timestamp: u64,
    gateway: &'a str,
    method: &'a str,
    data: ReplyData,
}

#[derive(Serialize)]
struct ReplyData {
    result: u32,
}

/// Encodes the `services_reply` payload for `header`:
/// `{"tid","bid","timestamp","gateway","method","data":{"result":N}}`. `tid`, `bid` and
/// `method` are echoed exactly, since the cloud drops replies that do not match.
pub fn encode_reply(
    header: &RequestHeader,
    gateway_sn: &str,
    result: u32,
    timestamp_ms: u64,
) -> Vec<u8> {
    let reply = Reply {
        tid: &header.tid,
        bid: &header.bid,
        timestamp: timestamp_ms,
        gateway: gateway_sn,
        method: &header.method,
        data: ReplyData { result },
    };
    // Serialising a struct of strings and integers cannot fail; the fallback only keeps this
    // function total.
    serde_json::to_vec(&reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TV01: &str = r#"{"tid":"1af9204671b24e4fb016e6506380a4e0","bid":"88bcbac59d71447b863c6dac70d30563","timestamp":1654070968655,"method":"live_start_push",
 "data":{"url_type":1,"url":"rtmp://192.168.1.1/live/4SEDL13001002C-165-0-7","video_id":"4SEDL13001002C/165-0-7/normal-0","video_quality":0}}"#;
    const TV02: &str = r#"{"bid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","data":{"url":"channel=1ZNDH1D0010098_39-0-7&sn=1ZNDH1D0010098&token=006dca67721582a48768ec4d817b7b25a86IADk%2Fcm%2Fdv%2BHY6qT%2FAKM6y7TcUe4lXNvZpycH7vUMAlM6pFALUKF2zyCIgA82pQE8cCoYAQAAQDxwKhgAgDxwKhgAwDxwKhgBADxwKhg&uid=50000","url_type":0,"video_id":"1ZNDH1D0010098/39-0-7/normal-0","video_quality":0},"tid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","timestamp":1654070968655,"method":"live_start_push"}"#;
    const TV04: &str = r#"{"bid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","tid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","timestamp":1654070968655,"method":"live_start_push",
 "data":{"url_type":3,"url":"serverIP=192.168.1.1&serverPort=8080&serverID=34000000000000000000&agentID=300000000010000000000&agentPassword=0000000&localPort=7060&channel=340000000000000000000","video_id":"1ZNDH1D0010098/39-0-7/normal-0","video_quality":0}}"#;
    const TV05: &str = r#"{"tid":"3f1b2c3d-0000-4000-8000-000000000005","bid":"3f1b2c3d-0000-4000-8000-0000000000b5","timestamp":1654070968655,"method":"live_start_push",
 "data":{"url_type":4,"url":"http://192.168.1.1:8080/rtc/v1/whip/?app=live&stream=livestream","video_id":"1ZNDH1D0010098/53-0-0/normal-0","video_quality":3}}"#;
    const TV06: &str = r#"{"bid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","data":{"video_id":"1ZNDH1D0010098/39-0-7/normal-0","video_quality":4},"tid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","timestamp":1654070968655,"method":"live_set_quality"}"#;
    const TV07_DOC: &str = r#"{"bid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","data":{"video_type":"zoom"},"tid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","timestamp":1654070968655,"method":"live_lens_change"}"#;
    const TV07_DEMO: &str = r#"{"tid":"…07","bid":"…b7","timestamp":1654070968655,"method":"live_lens_change","data":{"video_type":"zoom","video_id":"1ZNDH1D0010098/53-0-0/normal-0"}}"#;
    const TV08: &str = r#"{"bid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","data":{"video_id":"1ZNDH1D0010098/42-0-0/zoom-0"},"tid":"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx","timestamp":1654070968655,"method":"live_stop_push"}"#;
    const X: &str = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxx";

    fn ok(s: &str) -> Request {
        decode_request(s.as_bytes()).unwrap()
    }

    fn rejected(s: &str) -> (RequestHeader, LiveErrorCode, String) {
        match decode_request(s.as_bytes()) {
            Err(DecodeError::Rejected {
                header,
                code,
                reason,
            }) => (header, code, reason),
            other => panic!("expected rejection for {s}, got {other:?}"),
        }
    }

    fn unanswerable(s: &[u8]) -> String {
        match decode_request(s) {
            Err(e @ DecodeError::Unanswerable { .. }) => {
                assert_eq!(e.header(), None);
                assert_eq!(e.code(), LiveErrorCode::BadParameters);
                e.to_string()
            }
            other => panic!("expected unanswerable, got {other:?}"),
        }
    }

    fn vid(s: &str) -> VideoId {
        VideoId::parse(s).unwrap()
    }

    /// A start request with `data` replaced, for the rejection paths.
    fn start_with(data: &str) -> String {
        format!(r#"{{"tid":"t1","bid":"b1","method":"live_start_push","data":{data}}}"#)
    }

    #[test]
    fn tv01_rtmp_start() {
        let r = ok(TV01);
        assert_eq!(
            r.header,
            RequestHeader {
                tid: "1af9204671b24e4fb016e6506380a4e0".into(),
                bid: "88bcbac59d71447b863c6dac70d30563".into(),
                method: "live_start_push".into(),
            }
        );
        let Command::StartPush {
            url_type,
            url: StreamUrl::Rtmp(u),
            video_id,
            quality,
        } = r.command
        else {
            panic!("{:?}", r.command);
        };
        assert_eq!(url_type, UrlType::Rtmp);
        assert_eq!(u.url, "rtmp://192.168.1.1/live/4SEDL13001002C-165-0-7");
        assert_eq!(u.app, "live");
        assert_eq!(u.stream_key, "4SEDL13001002C-165-0-7");
        assert_eq!(video_id, vid("4SEDL13001002C/165-0-7/normal-0"));
        assert_eq!(quality, VideoQuality::Adaptive);
    }

    #[test]
    fn tv01_reply_echoes_envelope() {
        let r = ok(TV01);
        let bytes = encode_reply(&r.header, "4SEDL13001002C", 0, 1_700_000_000_123);
        let got: Value = serde_json::from_slice(&bytes).unwrap();
        let want = serde_json::json!({"tid":"1af9204671b24e4fb016e6506380a4e0","bid":"88bcbac59d71447b863c6dac70d30563","timestamp":1_700_000_000_123u64,"gateway":"4SEDL13001002C","method":"live_start_push","data":{"result":0}});
        assert_eq!(got, want);
        // Field order as in DJI's examples, which helps anyone diffing captures by eye.
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"tid":"1af9204671b24e4fb016e6506380a4e0","bid":"#));
    }

    #[test]
    fn reply_echoes_odd_strings_exactly() {
        let h = RequestHeader {
            tid: "…07 \"q\" \\ \u{1}".into(),
            bid: String::new(),
            method: "live_stop_push".into(),
        };
        let v: Value = serde_json::from_slice(&encode_reply(&h, "DOCK", 513011, 1)).unwrap();
        assert_eq!(v["tid"], Value::String(h.tid.clone()));
        assert_eq!(v["bid"], "");
        assert_eq!(v["data"]["result"], 513011);
    }

    #[test]
    fn tv02_agora_start() {
        let r = ok(TV02);
        assert_eq!(r.header.tid, X);
        assert_eq!(r.header.bid, X);
        let Command::StartPush {
            url: StreamUrl::Agora(a),
            url_type: UrlType::Agora,
            ..
        } = &r.command
        else {
            panic!("{:?}", r.command);
        };
        assert_eq!(a.token, "006dca67721582a48768ec4d817b7b25a86IADk/cm/dv+HY6qT/AKM6y7TcUe4lXNvZpycH7vUMAlM6pFALUKF2zyCIgA82pQE8cCoYAQAAQDxwKhgAgDxwKhgAwDxwKhgBADxwKhg");
        assert!(!format!("{r:?}").contains("IADk"));
    }

    #[test]
    fn tv04_gb_start_accepted_with_warning() {
        let r = ok(TV04);
        let Command::StartPush {
            url: StreamUrl::Gb28181(g),
            video_id,
            ..
        } = &r.command
        else {
            panic!("{:?}", r.command);
        };
        assert_eq!(g.agent_id, "300000000010000000000");
        assert_eq!(g.warnings.len(), 2);
        assert_eq!(*video_id, vid("1ZNDH1D0010098/39-0-7/normal-0"));
        assert!(!format!("{r:?}").contains("agent_password: \"0000000\""));
    }

    #[test]
    fn tv05_whip_start_keeps_query() {
        let r = ok(TV05);
        let Command::StartPush {
            url: StreamUrl::Whip(w),
            quality,
            ..
        } = &r.command
        else {
            panic!("{:?}", r.command);
        };
        assert_eq!(
            w.url,
            "http://192.168.1.1:8080/rtc/v1/whip/?app=live&stream=livestream"
        );
        assert_eq!(*quality, VideoQuality::High);
    }

    #[test]
    fn tv06_set_quality() {
        let r = ok(TV06);
        assert_eq!(r.header.method, "live_set_quality");
        assert_eq!(
            r.command,
            Command::SetQuality {
                video_id: vid("1ZNDH1D0010098/39-0-7/normal-0"),
                quality: VideoQuality::UltraHigh,
            }
        );
    }

    #[test]
    fn tv07_lens_change_both_forms() {
        assert_eq!(
            ok(TV07_DOC).command,
            Command::LensChange {
                video_id: None,
                lens: Lens::Zoom
            }
        );
        let r = ok(TV07_DEMO);
        assert_eq!(r.header.tid, "…07");
        assert_eq!(r.header.bid, "…b7");
        assert_eq!(
            r.command,
            Command::LensChange {
                video_id: Some(vid("1ZNDH1D0010098/53-0-0/normal-0")),
                lens: Lens::Zoom
            }
        );
    }

    #[test]
    fn tv08_stop() {
        let r = ok(TV08);
        assert_eq!(
            r.command,
            Command::StopPush {
                video_id: vid("1ZNDH1D0010098/42-0-0/zoom-0")
            }
        );
    }

    #[test]
    fn camera_change() {
        let r = ok(
            r#"{"tid":"t","bid":"b","method":"live_camera_change","data":{"camera_position":1,"video_id":"4SEDL13001002C/165-0-7/normal-0"}}"#,
        );
        assert_eq!(
            r.command,
            Command::CameraChange {
                video_id: vid("4SEDL13001002C/165-0-7/normal-0"),
                position: CameraPosition::Outside
            }
        );
        let (_, code, reason) = rejected(
            r#"{"tid":"t","method":"live_camera_change","data":{"camera_position":2,"video_id":"A/1-0-7/normal-0"}}"#,
        );
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(reason.contains("camera_position"), "{reason}");
    }

    #[test]
    fn envelope_tolerance() {
        // No bid, no timestamp, gateway and unknown keys present, numeric strings accepted.
        let r = ok(
            r#"{"tid":"t","gateway":"G","extra":[1,2],"method":"live_set_quality","data":{"video_id":"A/1-0-7/normal-0","video_quality":"2","other":null}}"#,
        );
        assert_eq!(r.header.bid, "");
        assert_eq!(
            r.command,
            Command::SetQuality {
                video_id: vid("A/1-0-7/normal-0"),
                quality: VideoQuality::Standard
            }
        );
        let r = ok(
            r#"{"tid":"t","bid":7,"method":"live_stop_push","data":{"video_id":"A/1-0-7/normal-0"}}"#,
        );
        assert_eq!(r.header.bid, "");
        let r = ok(
            r#"{"tid":"t","method":"live_lens_change","data":{"video_type":"ir","video_id":null}}"#,
        );
        assert_eq!(
            r.command,
            Command::LensChange {
                video_id: None,
                lens: Lens::Ir
            }
        );
    }

    #[test]
    fn unanswerable_payloads() {
        assert!(unanswerable(b"not json").contains("not JSON"));
        assert!(unanswerable(b"").contains("not JSON"));
        assert!(unanswerable(&[0xff, 0xfe, b'{']).contains("not JSON"));
        assert!(unanswerable(b"[1,2]").contains("array"));
        assert!(unanswerable(b"\"tid\"").contains("string"));
        assert!(
            unanswerable(br#"{"bid":"b","method":"live_stop_push"}"#).contains("tid is missing")
        );
        assert!(unanswerable(br#"{"tid":true,"method":"live_stop_push"}"#).contains("boolean"));
        let numeric = decode_request(br#"{"tid":42,"method":"live_stop_push"}"#).unwrap_err();
        assert_eq!(numeric.header().map(|h| h.tid.as_str()), Some("42"));
        assert_eq!(numeric.code(), LiveErrorCode::BadParameters);
        assert!(unanswerable(br#"{"tid":null}"#).contains("null"));
        let deep = "[".repeat(100_000);
        assert!(unanswerable(deep.as_bytes()).contains("not JSON"));
    }

    #[test]
    fn a_readable_envelope_is_answered_whatever_else_the_payload_holds() {
        let stop = r#""tid":"t9","bid":"b9","method":"live_stop_push""#;
        // Framing that C and Node publishers add: the request itself is fine.
        for framed in [
            format!("{{{stop},\"data\":{{\"video_id\":\"x\"}}}}\0"),
            format!("\u{feff}{{{stop}}}\r\n\0\0"),
        ] {
            let e = decode_request(framed.as_bytes()).unwrap_err();
            assert_eq!(e.header().map(|h| h.tid.as_str()), Some("t9"), "{framed:?}");
            assert!(!e.to_string().contains("not JSON"), "{e}");
        }
        // Documents serde_json will not hold as a value, with the envelope intact: 513014.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for body in [
            format!(r#"{{{stop},"x":1e400}}"#),
            format!(r#"{{{stop},"x":{deep}}}"#),
            format!(r#"{{{stop},"data":{{"video_id":"\ud800"}}}}"#),
        ] {
            match decode_request(body.as_bytes()) {
                Err(DecodeError::Rejected {
                    header,
                    code,
                    reason,
                }) => {
                    assert_eq!((header.tid.as_str(), header.bid.as_str()), ("t9", "b9"));
                    assert_eq!(header.method, "live_stop_push");
                    assert_eq!(code, LiveErrorCode::BadParameters);
                    assert!(reason.contains("not JSON"), "{reason}");
                }
                other => panic!("{body:.80}: expected a rejection, got {other:?}"),
            }
        }
        // Without a usable tid there is still nobody to answer.
        assert!(unanswerable(br#"{"tid":5.5e999,"method":"m"}"#).contains("not JSON"));
        assert!(unanswerable(br#"["t","b","live_stop_push",1e400]"#).contains("not JSON"));
    }

    #[test]
    fn envelope_fields_too_long_to_echo_are_not_echoed() {
        let long = "x".repeat(MAX_ENVELOPE_FIELD + 1);
        let at_limit = "x".repeat(MAX_ENVELOPE_FIELD);
        assert!(
            unanswerable(format!(r#"{{"tid":"{long}","method":"m"}}"#).as_bytes())
                .contains("more than 256")
        );
        let (h, code, _) = rejected(&format!(
            r#"{{"tid":"{at_limit}","method":"live_stop_push","data":{{}}}}"#
        ));
        assert_eq!(h.tid, at_limit);
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (h, code, reason) = rejected(&format!(
            r#"{{"tid":"t","bid":"{long}","method":"live_stop_push"}}"#
        ));
        assert_eq!((h.bid.as_str(), code), ("", LiveErrorCode::BadParameters));
        assert!(reason.contains("bid is 257 bytes"), "{reason}");
        let (h, code, reason) = rejected(&format!(r#"{{"tid":"t","method":"{long}"}}"#));
        assert_eq!((h.method.as_str(), code.code()), ("", 513004));
        assert!(reason.contains("method is 257 bytes"), "{reason}");
    }

    #[test]
    fn method_rejections() {
        let (h, code, reason) =
            rejected(r#"{"tid":"t","bid":"b","method":"live_query_detail","data":{}}"#);
        assert_eq!(h.method, "live_query_detail");
        assert_eq!(code, LiveErrorCode::FunctionNotSupported);
        assert!(reason.contains("live_query_detail"));
        let (h, code, _) = rejected(r#"{"tid":"t","bid":"b","data":{}}"#);
        assert_eq!(
            (h.tid.as_str(), h.bid.as_str(), h.method.as_str()),
            ("t", "b", "")
        );
        assert_eq!(code, LiveErrorCode::FunctionNotSupported);
        let (h, code, reason) = rejected(r#"{"tid":"t","method":5}"#);
        assert_eq!(h.method, "");
        assert_eq!(code.code(), 513004);
        assert!(reason.contains("number"));
        let long = "m".repeat(10_000);
        let (_, _, reason) = rejected(&format!(r#"{{"tid":"t","method":"{long}"}}"#));
        assert!(reason.len() < 200);
    }

    #[test]
    fn data_rejections() {
        // The demo sends data:"" for data-less services; stop needs a video_id, so 513014.
        let (h, code, reason) =
            rejected(r#"{"tid":"t","bid":"b","method":"live_stop_push","data":""}"#);
        assert_eq!(h.tid, "t");
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert_eq!(reason, "data.video_id is missing");
        let (_, code, _) = rejected(r#"{"tid":"t","method":"live_stop_push"}"#);
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (_, code, reason) = rejected(r#"{"tid":"t","method":"live_stop_push","data":[1]}"#);
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(reason.contains("array"));
        let (_, code, reason) =
            rejected(r#"{"tid":"t","method":"live_stop_push","data":{"video_id":5}}"#);
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(reason.contains("not a string"));
        let (_, code, reason) =
            rejected(r#"{"tid":"t","method":"live_stop_push","data":{"video_id":"A/B/C"}}"#);
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(reason.contains("camera_index"), "{reason}");
    }

    #[test]
    fn quality_rejections() {
        let q = |v: &str| {
            rejected(&format!(
                r#"{{"tid":"t","method":"live_set_quality","data":{{"video_id":"A/1-0-7/normal-0","video_quality":{v}}}}}"#
            ))
        };
        for v in ["9", "-1", "65535", "\"5\""] {
            let (_, code, reason) = q(v);
            assert_eq!(code, LiveErrorCode::QualityNotSupported, "{v}");
            assert!(reason.contains("video_quality"));
        }
        for v in ["1.5", "\"hd\"", "true", "null"] {
            assert_eq!(q(v).1, LiveErrorCode::BadParameters, "{v}");
        }
        let (_, code, _) = rejected(&start_with(
            r#"{"url_type":1,"url":"rtmp://h/live/k","video_id":"A/1-0-7/normal-0","video_quality":9}"#,
        ));
        assert_eq!(code, LiveErrorCode::QualityNotSupported);
    }

    #[test]
    fn lens_rejections() {
        let (_, code, reason) =
            rejected(r#"{"tid":"t","method":"live_lens_change","data":{"video_type":"infrared"}}"#);
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert_eq!(
            reason,
            r#"data.video_type "infrared" is not one of normal, wide, zoom, ir, thermal"#
        );
        let (_, code, _) = rejected(r#"{"tid":"t","method":"live_lens_change","data":""}"#);
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (_, code, _) = rejected(
            r#"{"tid":"t","method":"live_lens_change","data":{"video_type":"zoom","video_id":"bad"}}"#,
        );
        assert_eq!(code, LiveErrorCode::BadParameters);
    }

    #[test]
    fn start_rejections() {
        let base = r#""video_id":"A/1-0-7/normal-0","video_quality":0"#;
        let (_, code, reason) = rejected(&start_with(&format!(
            r#"{{"url_type":7,"url":"x",{base}}}"#
        )));
        assert_eq!(code, LiveErrorCode::UrlTypeNotSupported);
        assert!(reason.contains('7'));
        let (_, code, _) = rejected(&start_with(&format!(
            r#"{{"url_type":-1,"url":"x",{base}}}"#
        )));
        assert_eq!(code, LiveErrorCode::UrlTypeNotSupported);
        let (_, code, _) = rejected(&start_with(&format!(
            r#"{{"url_type":"rtmp","url":"x",{base}}}"#
        )));
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (_, code, _) = rejected(&start_with(&format!(r#"{{"url":"x",{base}}}"#)));
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (_, code, reason) = rejected(&start_with(&format!(
            r#"{{"url_type":1,"url":"rtmp://h/live",{base}}}"#
        )));
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(reason.contains("stream_key"), "{reason}");
        let (_, code, reason) = rejected(&start_with(&format!(
            r#"{{"url_type":1,"url":"rtmp://op:Pw4471@h/live/k",{base}}}"#
        )));
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(
            reason.contains("credentials") && !reason.contains("Pw4471"),
            "{reason}"
        );
        let gb_missing = "serverIP=1.1.1.1&serverID=34000000000000000000&agentID=34000000000000000001&agentPassword=SeCrEt9&localPort=1&channel=34000000000000000002";
        let (_, code, reason) = rejected(&start_with(&format!(
            r#"{{"url_type":3,"url":"{gb_missing}",{base}}}"#
        )));
        assert_eq!(code, LiveErrorCode::BadParameters);
        assert!(reason.contains("missing key serverPort"), "{reason}");
        assert!(!reason.contains("SeCrEt9"));
        let bad_port = gb_missing.replace("localPort=1", "localPort=1&serverPort=abc");
        let (_, _, reason) = rejected(&start_with(&format!(
            r#"{{"url_type":3,"url":"{bad_port}",{base}}}"#
        )));
        assert!(
            reason.contains(r#"serverPort "abc" is not a port"#),
            "{reason}"
        );
        let (_, code, _) = rejected(&start_with(
            r#"{"url_type":1,"url":"rtmp://h/live/k","video_id":"nope","video_quality":0}"#,
        ));
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (_, code, _) = rejected(&start_with(
            r#"{"url_type":1,"url":"rtmp://h/live/k","video_quality":0}"#,
        ));
        assert_eq!(code, LiveErrorCode::BadParameters);
        let (_, code, _) = rejected(&start_with(
            r#"{"url_type":1,"url":"rtmp://h/live/k","video_id":"A/1-0-7/normal-0"}"#,
        ));
        assert_eq!(code, LiveErrorCode::BadParameters);
    }

    #[test]
    fn rejection_display_has_no_secret() {
        let e = decode_request(
            start_with(r#"{"url_type":1,"url":"http://h/live/sEcReTkEy","video_id":"A/1-0-7/normal-0","video_quality":0}"#)
                .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.code(), LiveErrorCode::BadParameters);
        assert_eq!(e.header().map(|h| h.tid.as_str()), Some("t1"));
        assert!(!e.to_string().contains("sEcReTkEy"), "{e}");
        assert!(!format!("{e:?}").contains("sEcReTkEy"));
    }

    /// JSON-ish text built from the characters and words that matter to the decoder.
    fn jsonish() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\"tid\"",
            "\"bid\"",
            "\"method\"",
            "\"data\"",
            "\"live_start_push\"",
            "\"live_stop_push\"",
            "\"live_set_quality\"",
            "\"live_lens_change\"",
            "\"live_camera_change\"",
            "\"url_type\"",
            "\"url\"",
            "\"video_id\"",
            "\"video_quality\"",
            "\"video_type\"",
            "\"camera_position\"",
            "0",
            "1",
            "3",
            "4",
            "-1",
            "1e400",
            "18446744073709551616",
            "null",
            "true",
            "\"\"",
            "\"A/1-0-7/normal-0\"",
            "\"rtmp://h/live/k\"",
            "\"zoom\"",
            "\"%\"",
            "\"\\u0000\"",
        ]);
        prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
    }

    /// Structurally valid requests with randomised field values.
    fn request_like() -> impl Strategy<Value = String> {
        let method = prop::sample::select(vec![
            "live_start_push",
            "live_stop_push",
            "live_set_quality",
            "live_lens_change",
            "live_camera_change",
            "x",
        ]);
        let scalar = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            ".{0,30}".prop_map(|s| serde_json::Value::String(s).to_string()),
            Just("null".to_owned()),
            Just("[]".to_owned()),
        ];
        (method, prop::collection::vec(scalar, 7)).prop_map(|(m, v)| {
            format!(
                r#"{{"tid":"t","method":"{m}","data":{{"url_type":{},"url":{},"video_id":{},"video_quality":{},"video_type":{},"camera_position":{},"x":{}}}}}"#,
                v[0], v[1], v[2], v[3], v[4], v[5], v[6]
            )
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
        }

        #[test]
        fn jsonish_strings_never_panic(s in jsonish()) {
            let _ = decode_request(s.as_bytes());
        }

        #[test]
        fn request_like_never_panics_and_always_answers(s in request_like()) {
            match decode_request(s.as_bytes()) {
                Ok(r) => prop_assert_eq!(r.header.tid, "t"),
                Err(e) => {
                    prop_assert_eq!(e.header().map(|h| h.tid.as_str()), Some("t"));
                    let reply = encode_reply(e.header().unwrap(), "G", e.code().code(), 0);
                    prop_assert!(serde_json::from_slice::<Value>(&reply).is_ok());
                }
            }
        }
    }
}
