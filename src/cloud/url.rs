//! The `url` of `live_start_push`, parsed according to its `url_type`.
//!
//! The format is chosen by `url_type` alone, never guessed from the text: a WHIP URL contains
//! `&` and `=` like a k=v list, and an Agora token can look like anything. Every struct here can
//! print itself for logs with its secrets masked (`redacted()`, and `Debug` does the same), since
//! stream keys, tokens and SIP passwords must never reach a log line in clear.

use super::ids::{clip, UrlType};
use std::fmt;
use std::net::IpAddr;

/// Why a `url` was refused. Names the key and the problem; never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A required k=v key is absent.
    #[error("missing key {key}")]
    MissingKey {
        /// The key as the wire spells it, e.g. `serverPort`.
        key: &'static str,
    },
    /// A k=v key appears twice, so which value wins would be a guess.
    #[error("key {key} appears more than once")]
    DuplicateKey {
        /// The key as the wire spells it.
        key: &'static str,
    },
    /// A required value is empty.
    #[error("{key} is empty")]
    EmptyValue {
        /// The key as the wire spells it.
        key: &'static str,
    },
    /// A k=v item has no `=`; its text is not echoed because it may be a secret.
    #[error("item {index} of the k=v list has no '='")]
    NoEquals {
        /// 1-based position of the item among the `&`-separated items.
        index: usize,
    },
    /// A port value is not a number in 1..=65535.
    #[error("{key} {value:?} is not a port")]
    BadPort {
        /// The key as the wire spells it.
        key: &'static str,
        /// The offending value (ports are not secret).
        value: String,
    },
    /// A host value is neither an IP address nor a host name.
    #[error("{key} {value:?} is not an IP address or host name")]
    BadHost {
        /// The key as the wire spells it.
        key: &'static str,
        /// The offending value.
        value: String,
    },
    /// A GB/T 28181 ID is not 20 (or DJI's 21) decimal digits.
    #[error("{key} {value:?} is not a 20-digit GB/T 28181 ID")]
    BadGbId {
        /// The key as the wire spells it.
        key: &'static str,
        /// The offending value (IDs are not secret).
        value: String,
    },
    /// A percent-decoded value is not UTF-8.
    #[error("{key} is not valid UTF-8 after percent-decoding")]
    NotUtf8 {
        /// The key as the wire spells it.
        key: &'static str,
    },
    /// The string does not parse as a URL at all.
    #[error("not a URL: {reason}")]
    NotAUrl {
        /// The URL parser's reason (it never quotes the input).
        reason: String,
    },
    /// The URL's scheme is not one this `url_type` allows.
    #[error("scheme {scheme:?} is not {expected}")]
    BadScheme {
        /// The scheme found.
        scheme: String,
        /// What this url_type allows, e.g. `rtmp or rtmps`.
        expected: &'static str,
    },
    /// The URL has no host.
    #[error("url has no host")]
    MissingHost,
    /// The RTMP URL path does not have an app and a stream key.
    #[error("rtmp url needs /app/stream_key (at least two path segments), found {segments}")]
    NoStreamKey {
        /// Number of non-empty path segments found.
        segments: usize,
    },
    /// The RTMP URL path has an empty segment (`//`), which servers treat inconsistently.
    #[error("rtmp url path has an empty segment")]
    EmptyPathSegment,
    /// The RTMP URL carries `user:password@`: RTMP has no standard place for them and the
    /// client speaks none of the servers' own challenge schemes, so they would be dropped and
    /// the publish refused later for a reason nobody could see.
    #[error("rtmp url carries user credentials (user:password@host), which RTMP publishing here cannot use; put the server's key in the stream name or query")]
    RtmpCredentials,
}

/// A parsed `live_start_push` url; one variant per `url_type`.
#[derive(Clone, PartialEq, Eq)]
pub enum StreamUrl {
    /// url_type 0.
    Agora(AgoraUrl),
    /// url_type 1.
    Rtmp(RtmpUrl),
    /// url_type 2.
    Rtsp(RtspUrl),
    /// url_type 3.
    Gb28181(Gb28181Url),
    /// url_type 4.
    Whip(WhipUrl),
}

impl StreamUrl {
    /// Parses `url` in the format `url_type` prescribes. Surrounding ASCII whitespace is
    /// ignored because hand-typed cloud configs often carry it and no format allows it.
    pub fn parse(url_type: UrlType, url: &str) -> Result<StreamUrl, UrlError> {
        let url = url.trim_matches(|c: char| c.is_ascii_whitespace());
        Ok(match url_type {
            UrlType::Agora => StreamUrl::Agora(AgoraUrl::parse(url)?),
            UrlType::Rtmp => StreamUrl::Rtmp(RtmpUrl::parse(url)?),
            UrlType::Rtsp => StreamUrl::Rtsp(RtspUrl::parse(url)?),
            UrlType::Gb28181 => StreamUrl::Gb28181(Gb28181Url::parse(url)?),
            UrlType::Whip => StreamUrl::Whip(WhipUrl::parse(url)?),
        })
    }

    /// The `url_type` this url was parsed as.
    pub fn url_type(&self) -> UrlType {
        match self {
            StreamUrl::Agora(_) => UrlType::Agora,
            StreamUrl::Rtmp(_) => UrlType::Rtmp,
            StreamUrl::Rtsp(_) => UrlType::Rtsp,
            StreamUrl::Gb28181(_) => UrlType::Gb28181,
            StreamUrl::Whip(_) => UrlType::Whip,
        }
    }

    /// The url with its secrets masked, for log lines.
    pub fn redacted(&self) -> String {
        match self {
            StreamUrl::Agora(u) => u.redacted(),
            StreamUrl::Rtmp(u) => u.redacted(),
            StreamUrl::Rtsp(u) => u.redacted(),
            StreamUrl::Gb28181(u) => u.redacted(),
            StreamUrl::Whip(u) => u.redacted(),
        }
    }
}

impl fmt::Debug for StreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamUrl::Agora(u) => f.debug_tuple("Agora").field(u).finish(),
            StreamUrl::Rtmp(u) => f.debug_tuple("Rtmp").field(u).finish(),
            StreamUrl::Rtsp(u) => f.debug_tuple("Rtsp").field(u).finish(),
            StreamUrl::Gb28181(u) => f.debug_tuple("Gb28181").field(u).finish(),
            StreamUrl::Whip(u) => f.debug_tuple("Whip").field(u).finish(),
        }
    }
}

/// An RTMP(S) publish target split the way an RTMP client needs it (`connect` takes `tc_url`
/// and `app`, `publish` takes `stream_key`).
#[derive(Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    /// The url exactly as received (trimmed), for anything that wants to re-derive parts.
    pub url: String,
    /// True for `rtmps`.
    pub tls: bool,
    /// Host name or IP literal (IPv6 in brackets, as in the URL).
    pub host: String,
    /// Explicit port, else 1935 for rtmp and 443 for rtmps.
    pub port: u16,
    /// Every path segment but the last, joined by `/` (e.g. `live` or `live/sub`).
    pub app: String,
    /// Last path segment plus `?query` verbatim when present; the secret part.
    pub stream_key: String,
    /// `scheme://host[:port]/app`, the port written only if the url had one.
    pub tc_url: String,
}

impl RtmpUrl {
    /// Parses an `rtmp://` or `rtmps://` url (already trimmed); the RTMP sink builds its
    /// target from the result, so the cloud's check and the connection agree.
    pub fn parse(s: &str) -> Result<RtmpUrl, UrlError> {
        let parsed = url::Url::parse(s).map_err(|e| UrlError::NotAUrl {
            reason: e.to_string(),
        })?;
        let scheme = parsed.scheme();
        let tls = match scheme {
            "rtmp" => false,
            "rtmps" => true,
            other => {
                return Err(UrlError::BadScheme {
                    scheme: other.to_owned(),
                    expected: "rtmp or rtmps",
                })
            }
        };
        let host = match parsed.host_str() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => return Err(UrlError::MissingHost),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(UrlError::RtmpCredentials);
        }
        let explicit_port = parsed.port();
        let port = explicit_port.unwrap_or(if tls { 443 } else { 1935 });
        if port == 0 {
            return Err(UrlError::BadPort {
                key: "port",
                value: "0".into(),
            });
        }
        // Path and query come from the original text, not from the parser, which would
        // re-encode characters some servers expect byte-for-byte in the stream key.
        let after_scheme = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
        // The authority ends at the first `/`, `?` or `#`; only a `/` starts a path.
        let path_and_query = match after_scheme.find(['/', '?', '#']) {
            Some(i) if after_scheme[i..].starts_with('/') => &after_scheme[i..],
            _ => "",
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            let nonempty = segments.iter().filter(|s| !s.is_empty()).count();
            if nonempty < 2 {
                return Err(UrlError::NoStreamKey { segments: nonempty });
            }
            return Err(UrlError::EmptyPathSegment);
        }
        let Some((last, app_segments)) = segments.split_last() else {
            return Err(UrlError::NoStreamKey { segments: 0 });
        };
        if app_segments.is_empty() {
            return Err(UrlError::NoStreamKey { segments: 1 });
        }
        let app = app_segments.join("/");
        let stream_key = match query {
            Some(q) if !q.is_empty() => format!("{last}?{q}"),
            _ => (*last).to_owned(),
        };
        let authority = match explicit_port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let tc_url = format!("{scheme}://{authority}/{app}");
        Ok(RtmpUrl {
            url: s.to_owned(),
            tls,
            host,
            port,
            app,
            stream_key,
            tc_url,
        })
    }

    /// `tc_url/` + the stream key's first two characters + `***`, query values masked.
    pub fn redacted(&self) -> String {
        let (name, query) = match self.stream_key.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (self.stream_key.as_str(), None),
        };
        let mut out = format!("{}/{}", self.tc_url, mask_keep_prefix(name));
        if let Some(q) = query {
            out.push('?');
            out.push_str(&mask_all_query_values(q));
        }
        out
    }
}

impl fmt::Debug for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtmpUrl")
            .field("url", &self.redacted())
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("app", &self.app)
            .field("tc_url", &self.tc_url)
            .finish_non_exhaustive()
    }
}

/// A WHIP endpoint. Kept verbatim: SRS-style endpoints carry the stream name in the query
/// (`?app=live&stream=NAME`) and the POST must go to exactly that URL.
#[derive(Clone, PartialEq, Eq)]
pub struct WhipUrl {
    /// The url exactly as received (trimmed), query included.
    pub url: String,
    /// Percent-decoded value of a `token` query parameter, for servers that take the bearer
    /// token there instead of in an `Authorization` header.
    pub token: Option<String>,
}

impl WhipUrl {
    fn parse(s: &str) -> Result<WhipUrl, UrlError> {
        let parsed = url::Url::parse(s).map_err(|e| UrlError::NotAUrl {
            reason: e.to_string(),
        })?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => {
                return Err(UrlError::BadScheme {
                    scheme: other.to_owned(),
                    expected: "http or https",
                })
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::MissingHost);
        }
        let mut token = None;
        if let Some((_, query)) = s.split_once('?') {
            let query = query.split_once('#').map_or(query, |(q, _)| q);
            for item in query.split('&') {
                if let Some((k, v)) = item.split_once('=') {
                    if k == "token" {
                        let v = percent_decode(v).ok_or(UrlError::NotUtf8 { key: "token" })?;
                        token = Some(v);
                    }
                }
            }
        }
        Ok(WhipUrl {
            url: s.to_owned(),
            token,
        })
    }

    /// The url with the `token` query value (and any other secret-looking value) masked.
    pub fn redacted(&self) -> String {
        redact_url_str(&self.url)
    }
}

impl fmt::Debug for WhipUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhipUrl")
            .field("url", &self.redacted())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// GB/T 28181 registration parameters: the device registers to `server_*` as `agent_id` and
/// streams `channel` when the platform sends an INVITE.
#[derive(Clone, PartialEq, Eq)]
pub struct Gb28181Url {
    /// SIP server address (`serverIP`): IP literal or host name.
    pub server_ip: String,
    /// SIP server port (`serverPort`).
    pub server_port: u16,
    /// SIP server ID (`serverID`), 20 (or 21) digits.
    pub server_id: String,
    /// Device ID to register as (`agentID`), 20 (or 21) digits.
    pub agent_id: String,
    /// SIP digest password (`agentPassword`); may be empty for platforms without auth.
    pub agent_password: String,
    /// Local SIP port (`localPort`).
    pub local_port: u16,
    /// Video channel ID (`channel`), 20 (or 21) digits.
    pub channel: String,
    /// Tolerated oddities worth a log line (21-digit IDs, unknown keys).
    pub warnings: Vec<String>,
}

impl Gb28181Url {
    const KEYS: [&'static str; 7] = [
        "serverIP",
        "serverPort",
        "serverID",
        "agentID",
        "agentPassword",
        "localPort",
        "channel",
    ];

    fn parse(s: &str) -> Result<Gb28181Url, UrlError> {
        // Values are taken verbatim: the reference cloud does not percent-encode them.
        let (vals, unknown) = split_kv(s, &Self::KEYS)?;
        let [server_ip, server_port, server_id, agent_id, agent_password, local_port, channel] =
            vals;
        let server_ip = require(server_ip, "serverIP")?;
        check_host("serverIP", server_ip)?;
        let server_port = parse_port("serverPort", require(server_port, "serverPort")?)?;
        let mut warnings = Vec::new();
        let server_id = check_gb_id("serverID", require(server_id, "serverID")?, &mut warnings)?;
        let agent_id = check_gb_id("agentID", require(agent_id, "agentID")?, &mut warnings)?;
        let Some(agent_password) = agent_password else {
            return Err(UrlError::MissingKey {
                key: "agentPassword",
            });
        };
        let local_port = parse_port("localPort", require(local_port, "localPort")?)?;
        let channel = check_gb_id("channel", require(channel, "channel")?, &mut warnings)?;
        if let Some(w) = unknown_keys_warning(&unknown) {
            warnings.push(w);
        }
        Ok(Gb28181Url {
            server_ip: server_ip.to_owned(),
            server_port,
            server_id,
            agent_id,
            agent_password: agent_password.to_owned(),
            local_port,
            channel,
            warnings,
        })
    }

    /// The url in DJI's key order with `agentPassword=***`.
    pub fn redacted(&self) -> String {
        format!(
            "serverIP={}&serverPort={}&serverID={}&agentID={}&agentPassword=***&localPort={}&channel={}",
            self.server_ip, self.server_port, self.server_id, self.agent_id, self.local_port, self.channel
        )
    }
}

impl fmt::Debug for Gb28181Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gb28181Url")
            .field("server_ip", &self.server_ip)
            .field("server_port", &self.server_port)
            .field("server_id", &self.server_id)
            .field("agent_id", &self.agent_id)
            .field("agent_password", &"***")
            .field("local_port", &self.local_port)
            .field("channel", &self.channel)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Agora RTC join parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct AgoraUrl {
    /// Channel name to join.
    pub channel: String,
    /// SN the cloud associates with the stream.
    pub sn: String,
    /// RTC token, percent-decoded once (a raw `+` stays `+`, unlike form decoding).
    pub token: String,
    /// User id to join as, kept as text (Agora also allows string accounts).
    pub uid: String,
}

impl AgoraUrl {
    const KEYS: [&'static str; 4] = ["channel", "sn", "token", "uid"];

    fn parse(s: &str) -> Result<AgoraUrl, UrlError> {
        let (vals, _unknown) = split_kv(s, &Self::KEYS)?;
        let [channel, sn, token, uid] = vals;
        let mut out = [String::new(), String::new(), String::new(), String::new()];
        for ((slot, key), v) in out
            .iter_mut()
            .zip(Self::KEYS)
            .zip([channel, sn, token, uid])
        {
            let raw = require(v, key)?;
            *slot = percent_decode(raw).ok_or(UrlError::NotUtf8 { key })?;
        }
        let [channel, sn, token, uid] = out;
        Ok(AgoraUrl {
            channel,
            sn,
            token,
            uid,
        })
    }

    /// The url with `token=***`.
    pub fn redacted(&self) -> String {
        format!(
            "channel={}&sn={}&token=***&uid={}",
            self.channel, self.sn, self.uid
        )
    }
}

impl fmt::Debug for AgoraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgoraUrl")
            .field("channel", &self.channel)
            .field("sn", &self.sn)
            .field("token", &"***")
            .field("uid", &self.uid)
            .finish()
    }
}

/// RTSP server parameters (remote controllers only: the device serves RTSP and replies with the
/// play URL). Parsed so a dock profile can refuse it with a precise reason.
#[derive(Clone, PartialEq, Eq)]
pub struct RtspUrl {
    /// `userName` the viewer must use.
    pub user_name: String,
    /// `password` the viewer must use.
    pub password: String,
    /// `port` to serve on.
    pub port: u16,
}

impl RtspUrl {
    const KEYS: [&'static str; 3] = ["userName", "password", "port"];

    fn parse(s: &str) -> Result<RtspUrl, UrlError> {
        let (vals, _unknown) = split_kv(s, &Self::KEYS)?;
        let [user_name, password, port] = vals;
        let user_name = require(user_name, "userName")?;
        let Some(password) = password else {
            return Err(UrlError::MissingKey { key: "password" });
        };
        let port = parse_port("port", require(port, "port")?)?;
        Ok(RtspUrl {
            user_name: user_name.to_owned(),
            password: password.to_owned(),
            port,
        })
    }

    /// The url with `password=***`.
    pub fn redacted(&self) -> String {
        format!(
            "userName={}&password=***&port={}",
            self.user_name, self.port
        )
    }
}

impl fmt::Debug for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtspUrl")
            .field("user_name", &self.user_name)
            .field("password", &"***")
            .field("port", &self.port)
            .finish()
    }
}

/// Masks secrets in an arbitrary url-ish string for logging when it could not be parsed (or its
/// type is unknown): the userinfo password, the values of query keys that look secret (containing
/// token, key, password, secret, auth or sign, case-insensitively), for rtmp/rtmps the
/// stream key and every query value, and for other schemes every path segment that is not a
/// plain endpoint word ([`mask_path_segments`]). A bare `k=v&k=v` string is treated as a query. Best effort: a secret in a place
/// none of these rules covers is not found.
pub fn redact_url_str(s: &str) -> String {
    // A fragment is never sent to a server, but a url copied from a browser may carry a token in
    // it: only its presence is shown.
    // A `#` before the last `@` is taken for part of a password that was not escaped, which
    // is why such a url failed to parse in the first place.
    let after_userinfo = s.rfind('@').map_or(0, |i| i + 1);
    let (s, fragment) = match s[after_userinfo..].find('#') {
        Some(i) if s.contains("://") => {
            let (before, f) = s.split_at(after_userinfo + i);
            (before, Some(&f[1..]))
        }
        _ => (s, None),
    };
    let (head, query) = match s.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None if !s.contains("://") && s.contains('=') => ("", Some(s)),
        None => (s, None),
    };
    let mut out = String::with_capacity(s.len());
    // An RTMP query belongs to the stream key, so all of its values are masked.
    let mut rtmp = false;
    if let Some((scheme, rest)) = head.split_once("://") {
        out.push_str(scheme);
        out.push_str("://");
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    // A bare userinfo is how some services pass a token (`https://TOKEN@host`).
                    None => out.push_str(&mask_keep_prefix(userinfo)),
                }
                out.push('@');
                out.push_str(hostport);
            }
            None => out.push_str(authority),
        }
        rtmp = scheme.eq_ignore_ascii_case("rtmp") || scheme.eq_ignore_ascii_case("rtmps");
        if rtmp {
            match path.rsplit_once('/') {
                Some((dir, last)) if !dir.is_empty() => {
                    out.push_str(dir);
                    out.push('/');
                    out.push_str(&mask_keep_prefix(last));
                }
                // `rtmp://host/KEY`: one segment is the application by RTMP's rules, but some
                // services put the key there, so it is treated as one.
                Some((_, only)) if !only.is_empty() => {
                    out.push('/');
                    out.push_str(&mask_keep_prefix(only));
                }
                _ => out.push_str(path),
            }
        } else {
            out.push_str(&mask_path_segments(path));
        }
    } else {
        out.push_str(head);
    }
    if let Some(q) = query {
        if !head.is_empty() {
            out.push('?');
        }
        if rtmp {
            out.push_str(&mask_all_query_values(q));
        } else if !head.is_empty() {
            // A url's query is where clouds put tokens and signed stream names, under any key
            // and sometimes in a malformed query: only values known to be harmless stay.
            let items: Vec<String> = q
                .split('&')
                .map(|item| match item.split_once('=') {
                    Some((k, v)) if k.eq_ignore_ascii_case("app") && !v.contains('?') => {
                        item.to_owned()
                    }
                    Some((k, v)) if k.eq_ignore_ascii_case("stream") => {
                        format!("{k}={}", mask_keep_prefix(v))
                    }
                    Some((k, _)) => format!("{k}=***"),
                    None if item.is_empty() => String::new(),
                    None => "***".to_owned(),
                })
                .collect();
            out.push_str(&items.join("&"));
        } else {
            let items: Vec<String> = q
                .split('&')
                .map(|item| match item.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                    _ => item.to_owned(),
                })
                .collect();
            out.push_str(&items.join("&"));
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        if !f.is_empty() {
            out.push_str("***");
        }
    }
    out
}

/// Path segments of an http(s) url that are plainly not secrets: the words WHIP servers build
/// their endpoints from.
const PLAIN_PATH_WORDS: [&str; 14] = [
    "whip",
    "whep",
    "endpoint",
    "endpoints",
    "publish",
    "webrtc",
    "api",
    "live",
    "stream",
    "streams",
    "ingest",
    "session",
    "sessions",
    "resource",
];

/// Masks every path segment but the short ones (`v1`, `rtc`) and [`PLAIN_PATH_WORDS`]: some
/// WHIP services put the stream's secret in the path (`/<secret>/webRTC/publish`), and no rule
/// tells a stream name from a key there, so anything else keeps only its first characters.
fn mask_path_segments(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.chars().count() <= 3
                || PLAIN_PATH_WORDS.iter().any(|w| w.eq_ignore_ascii_case(seg))
            {
                seg.to_owned()
            } else {
                mask_keep_prefix(seg)
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Keys whose values are treated as secrets by [`redact_url_str`].
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["token", "key", "password", "secret", "auth", "sign"]
        .iter()
        .any(|s| k.contains(s))
}

/// First two characters then `***`, so that operators can tell streams apart in logs; a value
/// too short to spare two characters is fully masked because showing two of four characters
/// would give most of it away. Every place that prints a stream key goes through this one rule.
pub fn mask_keep_prefix(v: &str) -> String {
    if v.chars().count() <= 4 {
        return "***".to_owned();
    }
    let prefix: String = v.chars().take(2).collect();
    format!("{prefix}***")
}

/// `a=1&b=2` → `a=***&b=***`; an item without `=` is masked whole.
fn mask_all_query_values(q: &str) -> String {
    q.split('&')
        .map(|item| match item.split_once('=') {
            Some((k, _)) => format!("{k}=***"),
            None if item.is_empty() => String::new(),
            None => "***".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Splits `k=v&k=v` (on `&`, then the first `=`) into the values of `keys`, in `keys` order.
/// Keys match ASCII case-insensitively, as the reference cloud's JSON layer does. Empty items
/// (a trailing `&`) are skipped; unknown keys are returned for the caller to warn about.
fn split_kv<'a, const N: usize>(
    s: &'a str,
    keys: &[&'static str; N],
) -> Result<([Option<&'a str>; N], Vec<&'a str>), UrlError> {
    let mut vals: [Option<&'a str>; N] = [None; N];
    let mut unknown = Vec::new();
    for (i, item) in s.split('&').enumerate() {
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(UrlError::NoEquals { index: i + 1 });
        };
        match keys.iter().position(|want| want.eq_ignore_ascii_case(k)) {
            Some(pos) => {
                if vals[pos].is_some() {
                    return Err(UrlError::DuplicateKey { key: keys[pos] });
                }
                vals[pos] = Some(v);
            }
            None => unknown.push(k),
        }
    }
    Ok((vals, unknown))
}

/// Most unknown keys named in one warning; a url made of thousands of them is logged as a count.
const UNKNOWN_KEYS_NAMED: usize = 8;

/// One warning for all the keys a url carried that dockcast does not know, each clipped.
fn unknown_keys_warning(unknown: &[&str]) -> Option<String> {
    if unknown.is_empty() {
        return None;
    }
    let named: Vec<String> = unknown
        .iter()
        .take(UNKNOWN_KEYS_NAMED)
        .map(|k| format!("{:?}", clip(k)))
        .collect();
    let mut w = format!("ignored unknown keys {}", named.join(", "));
    if unknown.len() > UNKNOWN_KEYS_NAMED {
        w.push_str(&format!(" and {} more", unknown.len() - UNKNOWN_KEYS_NAMED));
    }
    Some(w)
}

/// The value of a key that must be present and non-empty.
fn require<'a>(v: Option<&'a str>, key: &'static str) -> Result<&'a str, UrlError> {
    match v {
        None => Err(UrlError::MissingKey { key }),
        Some("") => Err(UrlError::EmptyValue { key }),
        Some(v) => Ok(v),
    }
}

fn parse_port(key: &'static str, v: &str) -> Result<u16, UrlError> {
    match v.parse::<u16>() {
        // `parse` accepts a leading `+`; a port written that way is a typo, not a port.
        Ok(p) if p != 0 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(UrlError::BadPort {
            key,
            value: clip(v),
        }),
    }
}

fn check_host(key: &'static str, v: &str) -> Result<(), UrlError> {
    let is_ip = v.parse::<IpAddr>().is_ok();
    let is_name = !v.starts_with(['-', '.'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if is_ip || is_name {
        Ok(())
    } else {
        Err(UrlError::BadHost {
            key,
            value: clip(v),
        })
    }
}

/// GB/T 28181 IDs are 20 digits; DJI's own documentation example uses 21, so 21 is accepted
/// with a warning rather than failing a cloud that copied the example.
fn check_gb_id(key: &'static str, v: &str, warnings: &mut Vec<String>) -> Result<String, UrlError> {
    let bad = || UrlError::BadGbId {
        key,
        value: clip(v),
    };
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match v.len() {
        20 => {}
        21 => warnings.push(format!(
            "{key} {v} has 21 digits; GB/T 28181 IDs have 20 (accepted as given)"
        )),
        _ => return Err(bad()),
    }
    Ok(v.to_owned())
}

/// Percent-decodes once. Malformed escapes stay literal (as browsers do) and `+` stays `+`:
/// the Agora token alphabet contains `+`, and form decoding would corrupt it into a space.
/// `None` when the decoded bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1).copied().and_then(hex);
            let l = b.get(i + 2).copied().and_then(hex);
            if let (Some(h), Some(l)) = (h, l) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TV02_URL: &str = "channel=1ZNDH1D0010098_39-0-7&sn=1ZNDH1D0010098&token=006dca67721582a48768ec4d817b7b25a86IADk%2Fcm%2Fdv%2BHY6qT%2FAKM6y7TcUe4lXNvZpycH7vUMAlM6pFALUKF2zyCIgA82pQE8cCoYAQAAQDxwKhgAgDxwKhgAwDxwKhgBADxwKhg&uid=50000";
    const TV02_TOKEN: &str = "006dca67721582a48768ec4d817b7b25a86IADk/cm/dv+HY6qT/AKM6y7TcUe4lXNvZpycH7vUMAlM6pFALUKF2zyCIgA82pQE8cCoYAQAAQDxwKhgAgDxwKhgAwDxwKhgBADxwKhg";
    const TV04_URL: &str = "serverIP=192.168.1.1&serverPort=8080&serverID=34000000000000000000&agentID=300000000010000000000&agentPassword=0000000&localPort=7060&channel=340000000000000000000";
    const TV05_URL: &str = "http://192.168.1.1:8080/rtc/v1/whip/?app=live&stream=livestream";

    fn rtmp(s: &str) -> RtmpUrl {
        match StreamUrl::parse(UrlType::Rtmp, s).unwrap() {
            StreamUrl::Rtmp(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn gb(s: &str) -> Result<Gb28181Url, UrlError> {
        StreamUrl::parse(UrlType::Gb28181, s).map(|u| match u {
            StreamUrl::Gb28181(g) => g,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn tv01_rtmp_demo_url() {
        let u = rtmp("rtmp://192.168.1.1/live/4SEDL13001002C-165-0-7");
        assert_eq!(u.url, "rtmp://192.168.1.1/live/4SEDL13001002C-165-0-7");
        assert!(!u.tls);
        assert_eq!(u.host, "192.168.1.1");
        assert_eq!(u.port, 1935);
        assert_eq!(u.app, "live");
        assert_eq!(u.stream_key, "4SEDL13001002C-165-0-7");
        assert_eq!(u.tc_url, "rtmp://192.168.1.1/live");
        assert_eq!(u.redacted(), "rtmp://192.168.1.1/live/4S***");
    }

    #[test]
    fn rtmp_port_app_and_query() {
        let u = rtmp("rtmps://live.example.com/a/b/sk_abcdef?auth=s3cr3t&x=1");
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.app, "a/b");
        assert_eq!(u.stream_key, "sk_abcdef?auth=s3cr3t&x=1");
        assert_eq!(u.tc_url, "rtmps://live.example.com/a/b");
        let r = u.redacted();
        assert_eq!(r, "rtmps://live.example.com/a/b/sk***?auth=***&x=***");
        assert!(!r.contains("s3cr3t") && !r.contains("abcdef"));
        assert!(!format!("{u:?}").contains("s3cr3t"));

        let u = rtmp("rtmp://h:19350/live/key%20x?");
        assert_eq!(u.port, 19350);
        assert_eq!(u.tc_url, "rtmp://h:19350/live");
        assert_eq!(u.stream_key, "key%20x");
        assert_eq!(rtmp("rtmp://[::1]:1936/live/k").host, "[::1]");
        assert_eq!(rtmp("  rtmp://h/live/k\n").url, "rtmp://h/live/k");
    }

    #[test]
    fn rtmp_rejections() {
        let err = |s: &str| StreamUrl::parse(UrlType::Rtmp, s).unwrap_err();
        assert_eq!(err("rtmp://h/live"), UrlError::NoStreamKey { segments: 1 });
        assert_eq!(err("rtmp://h/live/"), UrlError::NoStreamKey { segments: 1 });
        assert_eq!(err("rtmp://h"), UrlError::NoStreamKey { segments: 0 });
        assert_eq!(
            err("rtmp://h?x=/live/k"),
            UrlError::NoStreamKey { segments: 0 }
        );
        assert_eq!(err("rtmp://h/a//k"), UrlError::EmptyPathSegment);
        assert_eq!(err("rtmp://u:p@h/a/k"), UrlError::RtmpCredentials);
        assert_eq!(err("rtmp://u@h/a/k"), UrlError::RtmpCredentials);
        let e = err("http://h/live/k");
        assert_eq!(e.to_string(), "scheme \"http\" is not rtmp or rtmps");
        assert!(matches!(err("live/key"), UrlError::NotAUrl { .. }));
        assert!(matches!(
            err("rtmp://h:99999/live/k"),
            UrlError::NotAUrl { .. }
        ));
        assert!(matches!(
            err("rtmp:///live/k"),
            UrlError::MissingHost | UrlError::NoStreamKey { .. }
        ));
        assert!(matches!(err("rtmp://h:0/live/k"), UrlError::BadPort { .. }));
    }

    #[test]
    fn tv02_agora_token_percent_decoded() {
        let StreamUrl::Agora(a) = StreamUrl::parse(UrlType::Agora, TV02_URL).unwrap() else {
            panic!("not agora");
        };
        assert_eq!(a.channel, "1ZNDH1D0010098_39-0-7");
        assert_eq!(a.sn, "1ZNDH1D0010098");
        assert_eq!(a.uid, "50000");
        assert_eq!(a.token, TV02_TOKEN);
        let r = a.redacted();
        assert_eq!(
            r,
            "channel=1ZNDH1D0010098_39-0-7&sn=1ZNDH1D0010098&token=***&uid=50000"
        );
        assert!(!format!("{a:?}").contains("IADk"));
        assert!(!redact_url_str(TV02_URL).contains("IADk"));
    }

    #[test]
    fn agora_raw_plus_stays_plus() {
        let s = "channel=c&sn=S&token=abc+Bt41+YAQ%2Bx&uid=1";
        let StreamUrl::Agora(a) = StreamUrl::parse(UrlType::Agora, s).unwrap() else {
            panic!("not agora");
        };
        assert_eq!(a.token, "abc+Bt41+YAQ+x");
        let err = StreamUrl::parse(UrlType::Agora, "channel=c&sn=S&uid=1").unwrap_err();
        assert_eq!(err.to_string(), "missing key token");
        let err = StreamUrl::parse(UrlType::Agora, "channel=c&sn=S&token=%FF%FE&uid=1");
        assert_eq!(err.unwrap_err(), UrlError::NotUtf8 { key: "token" });
    }

    #[test]
    fn tv04_gb28181_21_digit_ids_accepted_with_warning() {
        let g = gb(TV04_URL).unwrap();
        assert_eq!(g.server_ip, "192.168.1.1");
        assert_eq!(g.server_port, 8080);
        assert_eq!(g.server_id, "34000000000000000000");
        assert_eq!(g.agent_id, "300000000010000000000");
        assert_eq!(g.agent_password, "0000000");
        assert_eq!(g.local_port, 7060);
        assert_eq!(g.channel, "340000000000000000000");
        assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
        assert!(g.warnings[0].contains("agentID"));
        assert!(g.warnings[1].contains("channel"));
        assert_eq!(
            g.redacted(),
            TV04_URL.replace("agentPassword=0000000", "agentPassword=***")
        );
        let g = gb(&TV04_URL.replace("0000000&local", "pA55w0rd&local")).unwrap();
        assert!(!g.redacted().contains("pA55w0rd"));
        assert!(!format!("{g:?}").contains("pA55w0rd"));
    }

    #[test]
    fn gb28181_keys_in_any_order() {
        let g = gb("channel=34020000001320000001&localPort=5060&agentPassword=pw&agentID=34020000001110000001&serverID=34020000002000000001&serverPort=5060&serverIP=sip.example.org").unwrap();
        assert_eq!(g.server_ip, "sip.example.org");
        assert!(g.warnings.is_empty());
        assert_eq!(g.agent_password, "pw");
    }

    #[test]
    fn gb28181_unknown_keys_make_one_bounded_warning() {
        let base = "channel=34020000001320000001&localPort=5060&agentPassword=pw&agentID=34020000001110000001&serverID=34020000002000000001&serverPort=5060&serverIP=h";
        let g = gb(&format!("{base}&transport=tcp&x=1")).unwrap();
        assert_eq!(g.warnings, ["ignored unknown keys \"transport\", \"x\""]);
        let many = format!("{base}{}&{}=1", "&a=".repeat(300_000), "k".repeat(10_000));
        let g = gb(&many).unwrap();
        assert_eq!(g.warnings.len(), 1);
        assert!(
            g.warnings[0].ends_with(" and 299993 more"),
            "{:.200}",
            g.warnings[0]
        );
        assert!(g.warnings[0].len() < 300, "{}", g.warnings[0]);
    }

    #[test]
    fn gb28181_rejections() {
        let without = |key: &str| {
            TV04_URL
                .split('&')
                .filter(|kv| !kv.starts_with(&format!("{key}=")))
                .collect::<Vec<_>>()
                .join("&")
        };
        for key in Gb28181Url::KEYS {
            let e = gb(&without(key)).unwrap_err();
            assert_eq!(e, UrlError::MissingKey { key }, "{key}");
            assert_eq!(e.to_string(), format!("missing key {key}"));
        }
        let e = gb(&TV04_URL.replace("serverPort=8080", "serverPort=abc")).unwrap_err();
        assert_eq!(e.to_string(), "serverPort \"abc\" is not a port");
        let e = gb(&TV04_URL.replace("localPort=7060", "localPort=70600")).unwrap_err();
        assert_eq!(e.to_string(), "localPort \"70600\" is not a port");
        let e = gb(&TV04_URL.replace("serverPort=8080", "serverPort=0")).unwrap_err();
        assert!(matches!(
            e,
            UrlError::BadPort {
                key: "serverPort",
                ..
            }
        ));
        let e =
            gb(&TV04_URL.replace("serverID=34000000000000000000", "serverID=3400")).unwrap_err();
        assert!(matches!(
            e,
            UrlError::BadGbId {
                key: "serverID",
                ..
            }
        ));
        let e = gb(&TV04_URL.replace(
            "serverID=34000000000000000000",
            "serverID=3400000000000000000a",
        ));
        assert!(matches!(
            e.unwrap_err(),
            UrlError::BadGbId {
                key: "serverID",
                ..
            }
        ));
        let e = gb(&TV04_URL.replace("serverIP=192.168.1.1", "serverIP=a b")).unwrap_err();
        assert!(matches!(e, UrlError::BadHost { .. }));
        let e = gb(&format!("{TV04_URL}&serverPort=9")).unwrap_err();
        assert_eq!(e, UrlError::DuplicateKey { key: "serverPort" });
        let e = gb(&TV04_URL.replace("&agentPassword=0000000", "&0000000")).unwrap_err();
        assert_eq!(e, UrlError::NoEquals { index: 5 });
        assert!(!e.to_string().contains("0000000"));
        assert!(matches!(gb("").unwrap_err(), UrlError::MissingKey { .. }));
    }

    #[test]
    fn tv05_whip_query_preserved() {
        let StreamUrl::Whip(w) = StreamUrl::parse(UrlType::Whip, TV05_URL).unwrap() else {
            panic!("not whip");
        };
        assert_eq!(w.url, TV05_URL);
        assert_eq!(w.token, None);
        // SRS's stream name works as a stream key: logged like an RTMP key.
        assert_eq!(
            w.redacted(),
            "http://192.168.1.1:8080/rtc/v1/whip/?app=live&stream=li***"
        );

        let s = "https://whip.example.com/rtc/v1/whip/?app=live&stream=x&token=t0p%2Bsecret";
        let StreamUrl::Whip(w) = StreamUrl::parse(UrlType::Whip, s).unwrap() else {
            panic!("not whip");
        };
        assert_eq!(w.token.as_deref(), Some("t0p+secret"));
        assert_eq!(
            w.redacted(),
            "https://whip.example.com/rtc/v1/whip/?app=live&stream=***&token=***"
        );
        assert!(!format!("{w:?}").contains("t0p"));
        let e = StreamUrl::parse(UrlType::Whip, "rtmp://h/live/k").unwrap_err();
        assert_eq!(e.to_string(), "scheme \"rtmp\" is not http or https");
    }

    #[test]
    fn rtsp_parses_and_redacts() {
        let s = "userName=dji-cloud-api&password=123456&port=8080";
        let StreamUrl::Rtsp(r) = StreamUrl::parse(UrlType::Rtsp, s).unwrap() else {
            panic!("not rtsp");
        };
        assert_eq!(r.user_name, "dji-cloud-api");
        assert_eq!(r.password, "123456");
        assert_eq!(r.port, 8080);
        assert_eq!(
            r.redacted(),
            "userName=dji-cloud-api&password=***&port=8080"
        );
        assert!(!format!("{r:?}").contains("123456"));
        let e = StreamUrl::parse(UrlType::Rtsp, "userName=u&port=1").unwrap_err();
        assert_eq!(e.to_string(), "missing key password");
    }

    #[test]
    fn url_type_decides_format_not_content() {
        // A WHIP-looking string given as RTMP is refused, not sniffed into WHIP.
        assert!(StreamUrl::parse(UrlType::Rtmp, TV05_URL).is_err());
        assert!(StreamUrl::parse(UrlType::Gb28181, TV05_URL).is_err());
        assert!(StreamUrl::parse(UrlType::Agora, TV04_URL).is_err());
        for (t, s) in [
            (UrlType::Agora, TV02_URL),
            (UrlType::Gb28181, TV04_URL),
            (UrlType::Whip, TV05_URL),
        ] {
            assert_eq!(StreamUrl::parse(t, s).unwrap().url_type(), t);
        }
    }

    #[test]
    fn redact_url_str_masks_secrets() {
        let cases = [
            (
                "rtmp://user:hunter2@h:1935/live/streamkey123?sign=abc999&x=1",
                "rtmp://user:***@h:1935/live/st***?sign=***&x=***",
            ),
            (
                "https://h/whip?token=tok987&app=live",
                "https://h/whip?token=***&app=live",
            ),
            (
                "serverIP=1.2.3.4&agentPassword=pw777&channel=1",
                "serverIP=1.2.3.4&agentPassword=***&channel=1",
            ),
            (
                "http://h/x?API_KEY=zz888&Secret=yy666&authorization=q",
                "http://h/x?API_KEY=***&Secret=***&authorization=***",
            ),
            (
                "http://h:1985/rtc/v1/whip/?app=live&stream=dock-cam?token=tok-SECRET",
                "http://h:1985/rtc/v1/whip/?app=live&stream=do***",
            ),
            ("https://h/whip?abcsecret&x=1", "https://h/whip?***&x=***"),
            (
                "https://customer-x.example.com/0123456789abcdef0123/webRTC/publish",
                "https://customer-x.example.com/01***/webRTC/publish",
            ),
            (
                "https://h/v2/whip/endpoint/dock-cam-7",
                "https://h/v2/whip/endpoint/do***",
            ),
            ("rtmp://h/streamKEY123", "rtmp://h/st***"),
            ("rtmp://h:1935/", "rtmp://h:1935/"),
            ("http://SECRETTOKEN@h/whip", "http://SE***@h/whip"),
            (
                "http://h/whip?app=live#tokSECRET",
                "http://h/whip?app=live#***",
            ),
            ("https://h/whip#", "https://h/whip#"),
            ("mqtt://op:pa#ss@h:1883", "mqtt://op:***@h:1883"),
            ("mqtt://op:pa#ss@h/x#frag", "mqtt://op:***@h/x#***"),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url_str(input), want, "{input}");
        }
    }

    #[test]
    fn errors_never_contain_secrets() {
        let secret = "Zq9SECRETzz";
        let inputs = [
            (UrlType::Rtmp, format!("http://h/live/{secret}")),
            (UrlType::Rtmp, format!("rtmp://h/{secret}")),
            (UrlType::Rtmp, format!("rtmp://h:70000/live/{secret}")),
            (UrlType::Agora, format!("channel=c&sn=s&token={secret}")),
            (
                UrlType::Agora,
                format!("channel=c&sn=s&token={secret}%FF&uid=1"),
            ),
            (
                UrlType::Gb28181,
                format!("serverIP=1.1.1.1&agentPassword={secret}"),
            ),
            (UrlType::Gb28181, format!("{secret}&serverIP=1.1.1.1")),
            (
                UrlType::Rtsp,
                format!("userName=u&password={secret}&port=x"),
            ),
            (UrlType::Whip, format!("ftp://h/?token={secret}")),
            (UrlType::Whip, format!("http://?token={secret}")),
        ];
        for (t, s) in inputs {
            let e = StreamUrl::parse(t, &s).unwrap_err();
            assert!(!e.to_string().contains(secret), "{t:?} {e}");
            assert!(!format!("{e:?}").contains(secret), "{t:?} {e:?}");
        }
    }

    #[test]
    fn percent_decode_edge_cases() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%4").as_deref(), Some("%4"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("%ff"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_and_redact_never_panic(t in 0u64..5, s in "\\PC{0,80}") {
            let url_type = UrlType::from_u64(t).unwrap();
            if let Ok(u) = StreamUrl::parse(url_type, &s) {
                let _ = u.redacted();
            }
            let _ = redact_url_str(&s);
        }

        #[test]
        fn urlish_parse_never_panics(
            t in 0u64..5,
            s in "(rtmps?|https?)://[a-z0-9.:@\\[\\]]{0,12}(/[a-zA-Z0-9%?&=#+]{0,8}){0,4}",
        ) {
            let url_type = UrlType::from_u64(t).unwrap();
            let _ = StreamUrl::parse(url_type, &s).map(|u| u.redacted());
            let _ = redact_url_str(&s);
        }

        #[test]
        fn redaction_hides_generated_secrets(secret in "[A-Za-z0-9]{12,24}") {
            let gb = TV04_URL.replace("agentPassword=0000000", &format!("agentPassword={secret}"));
            let ag = format!("channel=c&sn=S&token={secret}&uid=1");
            let rt = format!("rtmp://h/live/{secret}?k={secret}");
            let wh = format!("https://h/whip?app=live&token={secret}");
            let wh_path = format!("https://h/{secret}/webRTC/publish");
            for (t, s) in [
                (UrlType::Gb28181, gb),
                (UrlType::Agora, ag),
                (UrlType::Rtmp, rt),
                (UrlType::Whip, wh),
                (UrlType::Whip, wh_path),
            ] {
                let u = StreamUrl::parse(t, &s).unwrap();
                proptest::prop_assert!(!u.redacted().contains(&secret));
                let dbg = format!("{u:?}");
                proptest::prop_assert!(!dbg.contains(&secret));
                proptest::prop_assert!(!redact_url_str(&s).contains(&secret));
            }
        }
    }
}
