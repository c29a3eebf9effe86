//! The SIP message subset a GB/T 28181 device needs: parse and print requests and responses,
//! read the few headers the device acts on, and answer digest challenges.
//!
//! Hand-written instead of a full SIP stack because GB/T 28181 uses a small, fixed subset and
//! platforms are picky about exact bytes (From/To with the SIP domain, `uri=` identical to the
//! Request-URI, unquoted `qop`, Content-Length of the encoded body), all of which are easier to
//! guarantee when we print every header ourselves. Parsing never panics on any input.

use bytes::Bytes;
use md5::{Digest, Md5};
use std::fmt::Write as _;
use std::net::SocketAddr;

/// Everything that can be wrong with a SIP message we received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The datagram ended before the blank line that closes the headers.
    #[error("SIP message has no end of headers")]
    Truncated,
    /// The first line is neither `METHOD uri SIP/2.0` nor `SIP/2.0 code reason`.
    #[error("bad SIP start line {line:?}")]
    BadStartLine {
        /// The offending line, clipped.
        line: String,
    },
    /// A header line without a colon.
    #[error("bad SIP header line {line:?}")]
    BadHeader {
        /// The offending line, clipped.
        line: String,
    },
    /// Headers are not valid UTF-8.
    #[error("SIP headers are not UTF-8")]
    NotUtf8,
    /// Content-Length is not a number.
    #[error("bad Content-Length {value:?}")]
    BadContentLength {
        /// The header value, clipped.
        value: String,
    },
    /// Content-Length announces more bytes than arrived.
    #[error("body shorter than Content-Length: {declared} declared, {got} received")]
    BodyShort {
        /// Announced length.
        declared: usize,
        /// Bytes present.
        got: usize,
    },
    /// A header the device needs is absent.
    #[error("missing {name} header")]
    MissingHeader {
        /// Header name.
        name: &'static str,
    },
    /// CSeq is not `<number> <method>`.
    #[error("bad CSeq {value:?}")]
    BadCSeq {
        /// The header value, clipped.
        value: String,
    },
    /// WWW-Authenticate could not be understood.
    #[error("bad digest challenge: {reason}")]
    BadChallenge {
        /// What is wrong.
        reason: String,
    },
}

/// Clips a network-supplied value for an error message so a huge header cannot flood logs.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Header list in arrival order; names compared case-insensitively, compact forms expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

/// The long name of an RFC 3261 compact header name, so lookups need only one spelling.
fn expand(name: &str) -> &str {
    match name {
        "v" | "V" => "Via",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "i" | "I" => "Call-ID",
        "m" | "M" => "Contact",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        "s" | "S" => "Subject",
        "k" | "K" => "Supported",
        _ => name,
    }
}

impl Headers {
    /// Appends a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| expand(n).eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order (Via headers, each possibly comma-joined).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| expand(n).eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Like [`Headers::get`] but an error naming the header when absent.
    pub fn require(&self, name: &'static str) -> Result<&str, SipError> {
        self.get(name).ok_or(SipError::MissingHeader { name })
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token, e.g. `INVITE`.
    pub method: String,
    /// Request-URI as written.
    pub uri: String,
    /// Headers except Content-Length, which is computed when printing.
    pub headers: Headers,
    /// Body bytes (MANSCDP XML or SDP).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers except Content-Length.
    pub headers: Headers,
    /// Body bytes.
    pub body: Bytes,
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request from the platform (INVITE, MESSAGE, ACK, BYE, ...).
    Request(Request),
    /// A response to one of our requests.
    Response(Response),
}

impl Message {
    /// The headers of either kind.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

/// Parses one SIP message from a datagram (or from a stream buffer holding exactly one).
///
/// Leading CRLFs (keepalive pings) are skipped; bytes after Content-Length are ignored.
pub fn parse(buf: &[u8]) -> Result<Message, SipError> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    let head_end = find(buf, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(buf, b"\n\n").map(|i| (i, i + 2)))
        .ok_or(SipError::Truncated)?;
    let head = std::str::from_utf8(&buf[..head_end.0]).map_err(|_| SipError::NotUtf8)?;
    let mut lines = unfold(head).into_iter();
    let first = lines.next().unwrap_or_default();
    let mut headers = Headers::default();
    let mut content_length: Option<usize> = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| SipError::BadHeader { line: clip(&line) })?;
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() {
            return Err(SipError::BadHeader { line: clip(&line) });
        }
        if expand(name).eq_ignore_ascii_case("Content-Length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| SipError::BadContentLength { value: clip(value) })?,
            );
            continue;
        }
        headers.push(name, value);
    }
    let rest = &buf[head_end.1..];
    // Over UDP a missing Content-Length means "the rest of the datagram" (RFC 3261 §18.3).
    let body_len = content_length.unwrap_or(rest.len());
    if body_len > rest.len() {
        return Err(SipError::BodyShort {
            declared: body_len,
            got: rest.len(),
        });
    }
    let body = Bytes::copy_from_slice(&rest[..body_len]);
    let bad_start = || SipError::BadStartLine { line: clip(&first) };
    if let Some(status_part) = first.strip_prefix("SIP/2.0 ") {
        let (code, reason) = status_part.split_once(' ').unwrap_or((status_part, ""));
        let status: u16 = code.parse().map_err(|_| bad_start())?;
        if !(100..=699).contains(&status) {
            return Err(bad_start());
        }
        return Ok(Message::Response(Response {
            status,
            reason: reason.to_owned(),
            headers,
            body,
        }));
    }
    let mut parts = first.split(' ');
    let (Some(method), Some(uri), Some("SIP/2.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_start());
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) || uri.is_empty() {
        return Err(bad_start());
    }
    Ok(Message::Request(Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
        headers,
        body,
    }))
}

/// Largest header block accepted on a stream before the peer is judged broken.
pub const MAX_STREAM_HEADER: usize = 16 * 1024;

/// How many bytes at the start of a TCP stream buffer make one whole SIP message (leading
/// CRLF keepalives included), `None` while more bytes are needed.
///
/// Over TCP, Content-Length is the only framing (RFC 3261 §18.3), so it is required here.
pub fn stream_message_len(buf: &[u8]) -> Result<Option<usize>, SipError> {
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[skip..];
    let Some(head_end) = find(rest, b"\r\n\r\n") else {
        if rest.len() > MAX_STREAM_HEADER {
            return Err(SipError::Truncated);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| SipError::NotUtf8)?;
    let mut content_length = None;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            if expand(name.trim()).eq_ignore_ascii_case("Content-Length") {
                let v = value.trim();
                content_length = Some(
                    v.parse::<usize>()
                        .map_err(|_| SipError::BadContentLength { value: clip(v) })?,
                );
            }
        }
    }
    let body = content_length.ok_or(SipError::MissingHeader {
        name: "Content-Length",
    })?;
    if body > 1024 * 1024 {
        return Err(SipError::BadContentLength {
            value: body.to_string(),
        });
    }
    let total = skip + head_end + 4 + body;
    Ok((buf.len() >= total).then_some(total))
}

/// Splits the header block into logical lines, joining RFC 3261 continuation lines.
fn unfold(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
        }
        out.push(line.to_owned());
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Prints headers, Content-Length and body in SIP wire form.
fn print(first: &str, headers: &Headers, body: &[u8]) -> Bytes {
    let mut s = String::with_capacity(512);
    s.push_str(first);
    s.push_str("\r\n");
    for (n, v) in headers.iter() {
        let _ = write!(s, "{n}: {v}\r\n");
    }
    let _ = write!(s, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

impl Request {
    /// A request with no headers yet.
    pub fn new(method: &str, uri: impl Into<String>) -> Self {
        Request {
            method: method.to_owned(),
            uri: uri.into(),
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    /// Wire bytes.
    pub fn to_bytes(&self) -> Bytes {
        print(
            &format!("{} {} SIP/2.0", self.method, self.uri),
            &self.headers,
            &self.body,
        )
    }

    /// `Call-ID`, required for every request we act on.
    pub fn call_id(&self) -> Result<&str, SipError> {
        self.headers.require("Call-ID")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Result<(u32, &str), SipError> {
        parse_cseq(self.headers.require("CSeq")?)
    }

    /// A response to this request copying Via, From, To, Call-ID and CSeq, adding `to_tag`
    /// to To when it has none (RFC 3261 §8.2.6.2).
    pub fn response(&self, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::default();
        for (n, v) in self.headers.iter() {
            let long = expand(n);
            if long.eq_ignore_ascii_case("Via")
                || long.eq_ignore_ascii_case("From")
                || long.eq_ignore_ascii_case("Call-ID")
                || long.eq_ignore_ascii_case("CSeq")
            {
                headers.push(long, v);
            } else if long.eq_ignore_ascii_case("To") {
                match to_tag {
                    Some(tag) if header_param(v, "tag").is_none() => {
                        headers.push("To", format!("{v};tag={tag}"))
                    }
                    _ => headers.push("To", v),
                }
            }
        }
        Response {
            status,
            reason: reason.to_owned(),
            headers,
            body: Bytes::new(),
        }
    }
}

impl Response {
    /// Wire bytes.
    pub fn to_bytes(&self) -> Bytes {
        print(
            &format!("SIP/2.0 {} {}", self.status, self.reason),
            &self.headers,
            &self.body,
        )
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Result<(u32, &str), SipError> {
        parse_cseq(self.headers.require("CSeq")?)
    }

    /// The branch of the top Via, which names the client transaction this answers.
    pub fn branch(&self) -> Option<&str> {
        top_via_branch(&self.headers)
    }
}

/// The `branch` parameter of the topmost Via.
pub fn top_via_branch(headers: &Headers) -> Option<&str> {
    let via = headers.get("Via")?;
    let top = via.split(',').next()?;
    header_param(top, "branch")
}

fn parse_cseq(v: &str) -> Result<(u32, &str), SipError> {
    let bad = || SipError::BadCSeq { value: clip(v) };
    let (n, m) = v.trim().split_once(char::is_whitespace).ok_or_else(bad)?;
    let n = n.parse().map_err(|_| bad())?;
    let m = m.trim();
    if m.is_empty() {
        return Err(bad());
    }
    Ok((n, m))
}

/// A `;name=value` parameter of a header value (after the URI's closing `>` if any).
pub fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map(|(_, p)| p).unwrap_or(""),
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The user part of a SIP URI, bare or inside a name-addr (`"x" <sip:user@host>;tag=..`).
pub fn uri_user(value: &str) -> Option<&str> {
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    let rest = inner
        .strip_prefix("sip:")
        .or_else(|| inner.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    let user = user.split(';').next().unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

/// The `host:port` of a SIP URI as a socket address, when it is an IP literal with a port.
pub fn uri_socket_addr(value: &str) -> Option<SocketAddr> {
    let inner = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value,
    };
    let rest = inner
        .strip_prefix("sip:")
        .or_else(|| inner.strip_prefix("sips:"))?;
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host = host.split([';', '?']).next()?;
    host.parse().ok()
}

/// A digest challenge from `WWW-Authenticate` / `Proxy-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Realm to hash with (GB: the platform's 10-digit domain).
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo.
    pub opaque: Option<String>,
    /// Whether `qop=auth` is offered; without it the RFC 2069 form is used.
    pub qop_auth: bool,
    /// The nonce expired but the credentials were right: retry without counting a failure.
    pub stale: bool,
}

impl Challenge {
    /// Parses a `Digest ...` challenge; only MD5 is accepted, as GB/T 28181 prescribes.
    pub fn parse(value: &str) -> Result<Challenge, SipError> {
        let bad = |reason: String| SipError::BadChallenge { reason };
        let rest = value.trim();
        let (scheme, params) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(bad(format!("scheme {:?} is not Digest", clip(scheme))));
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut qop_auth = false;
        let mut stale = false;
        for (k, v) in auth_params(params) {
            match k.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(v),
                "nonce" => nonce = Some(v),
                "opaque" => opaque = Some(v),
                "qop" => qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                "stale" => stale = v.eq_ignore_ascii_case("true"),
                "algorithm" if !v.eq_ignore_ascii_case("MD5") => {
                    return Err(bad(format!("algorithm {:?} is not MD5", clip(&v))));
                }
                _ => {}
            }
        }
        Ok(Challenge {
            realm: realm.ok_or_else(|| bad("no realm".into()))?,
            nonce: nonce.ok_or_else(|| bad("no nonce".into()))?,
            opaque,
            qop_auth,
            stale,
        })
    }

    /// The `Authorization` header value answering this challenge for `method uri`.
    ///
    /// `uri` must be byte-identical to the Request-URI: wvp hashes the `uri=` parameter as
    /// sent while other platforms hash their own Request-URI. `nc` is always 1 because each
    /// challenge is answered once (wvp re-formats nc as upper-case hex, so only small values
    /// are safe anyway).
    pub fn authorization(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> String {
        let ha1 = md5_hex(&format!("{username}:{}:{password}", self.realm));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let mut s = format!(
            "Digest username=\"{username}\",realm=\"{}\",nonce=\"{}\",uri=\"{uri}\"",
            self.realm, self.nonce
        );
        if self.qop_auth {
            let nc = "00000001";
            let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
            let _ = write!(
                s,
                ",response=\"{response}\",algorithm=MD5,cnonce=\"{cnonce}\",qop=auth,nc={nc}"
            );
        } else {
            let response = md5_hex(&format!("{ha1}:{}:{ha2}", self.nonce));
            let _ = write!(s, ",response=\"{response}\",algorithm=MD5");
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(s, ",opaque=\"{opaque}\"");
        }
        s
    }
}

/// `key=value` pairs of an auth header; values may be quoted and contain commas.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.trim().is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        _ => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
        if chars.peek().is_none() {
            return out;
        }
    }
}

/// Lower-case hex MD5, the digest building block.
pub fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    let mut out = String::with_capacity(32);
    for b in d {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INVITE: &str = "INVITE sip:34020000001310000001@192.168.1.50:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.10:5060;rport;branch=z9hG4bK3468829210\r\n\
From: <sip:34020000002000000001@3402000000>;tag=1226581398\r\n\
To: <sip:34020000001310000001@192.168.1.50:5060>\r\n\
Call-ID: 5a3b3b0c7cb34c37@192.168.1.10\r\n\
CSeq: 37 INVITE\r\n\
Subject: 34020000001310000001:0100000001,34020000002000000001:0\r\n\
Content-Type: APPLICATION/SDP\r\n\
Content-Length: 4\r\n\r\nv=0\r\nEXTRA";

    #[test]
    fn parses_a_request_and_answers_it() {
        let Message::Request(req) = parse(INVITE.as_bytes()).expect("parses") else {
            panic!("request expected");
        };
        assert_eq!(req.method, "INVITE");
        assert_eq!(req.cseq().expect("cseq"), (37, "INVITE"));
        assert_eq!(req.body.as_ref(), b"v=0\r");
        assert_eq!(uri_user(&req.uri), Some("34020000001310000001"));
        assert_eq!(
            uri_socket_addr(&req.uri),
            Some("192.168.1.50:5060".parse().expect("addr"))
        );
        let resp = req.response(200, "OK", Some("abc"));
        let text = String::from_utf8(resp.to_bytes().to_vec()).expect("utf8");
        assert!(text.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;rport;branch=z9hG4bK3468829210\r\n"));
        assert!(text.contains("To: <sip:34020000001310000001@192.168.1.50:5060>;tag=abc\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        assert!(!text.contains("Subject"));
    }

    #[test]
    fn compact_headers_and_folding() {
        let raw = "SIP/2.0 401 Unauthorized\r\nv: SIP/2.0/UDP a;branch=z9hG4bKx\r\ni: c1\r\nCSeq: 1\r\n  REGISTER\r\nl: 0\r\n\r\n";
        let Message::Response(r) = parse(raw.as_bytes()).expect("parses") else {
            panic!("response expected");
        };
        assert_eq!(r.status, 401);
        assert_eq!(r.branch(), Some("z9hG4bKx"));
        assert_eq!(r.headers.get("call-id"), Some("c1"));
        assert_eq!(r.cseq().expect("cseq"), (1, "REGISTER"));
    }

    #[test]
    fn rejects_malformed_messages_with_named_errors() {
        assert_eq!(parse(b"INVITE sip:x SIP/2.0\r\n"), Err(SipError::Truncated));
        assert!(matches!(
            parse(b"HELLO\r\n\r\n"),
            Err(SipError::BadStartLine { .. })
        ));
        assert!(matches!(
            parse(b"SIP/2.0 abc OK\r\n\r\n"),
            Err(SipError::BadStartLine { .. })
        ));
        assert!(matches!(
            parse(b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 10\r\n\r\nabc"),
            Err(SipError::BodyShort {
                declared: 10,
                got: 3
            })
        ));
        assert!(matches!(
            parse(b"MESSAGE sip:x SIP/2.0\r\nnocolon\r\n\r\n"),
            Err(SipError::BadHeader { .. })
        ));
    }

    #[test]
    fn digest_matches_the_notes_vectors() {
        let uri = "sip:34020000002000000001@192.168.1.10:5060";
        let with_qop = Challenge::parse(
            "Digest realm=\"3402000000\",qop=\"auth\",nonce=\"9bd055d2f9f3a1e4c7b2a1f0e9d8c7b6\",algorithm=MD5",
        )
        .expect("challenge");
        assert!(with_qop.qop_auth);
        let auth = with_qop.authorization(
            "34020000001320000001",
            "12345678",
            "REGISTER",
            uri,
            "0a4f113b",
        );
        assert!(
            auth.contains("response=\"24729c387127dd522cfd95f5fbbe3342\""),
            "{auth}"
        );
        assert!(auth.contains(",qop=auth,nc=00000001"));
        assert!(auth.contains(&format!("uri=\"{uri}\"")));

        let no_qop = Challenge::parse(
            "Digest realm=\"3402000000\", nonce=\"9bd055d2f9f3a1e4c7b2a1f0e9d8c7b6\"",
        )
        .expect("challenge");
        let auth = no_qop.authorization(
            "34020000001320000001",
            "12345678",
            "REGISTER",
            uri,
            "unused",
        );
        assert!(
            auth.contains("response=\"b1f70126bd26a931002c650d78d9e698\""),
            "{auth}"
        );
        assert!(!auth.contains("qop"));
    }

    #[test]
    fn challenge_errors_and_quirks() {
        assert!(Challenge::parse("Basic realm=\"x\"").is_err());
        assert!(Challenge::parse("Digest realm=\"x\"").is_err());
        assert!(Challenge::parse("Digest realm=\"x\",nonce=\"n\",algorithm=SHA-256").is_err());
        let c = Challenge::parse(
            "Digest realm=\"a,b\",nonce=n1,qop=\"auth-int,auth\",stale=TRUE,opaque=\"o\"",
        )
        .expect("challenge");
        assert_eq!(c.realm, "a,b");
        assert_eq!(c.nonce, "n1");
        assert!(c.qop_auth && c.stale);
        assert_eq!(c.opaque.as_deref(), Some("o"));
    }

    #[test]
    fn params_and_users() {
        assert_eq!(header_param("<sip:1@2>;tag=abc;x=y", "tag"), Some("abc"));
        assert_eq!(
            header_param("SIP/2.0/UDP h:1;rport;branch=z9", "branch"),
            Some("z9")
        );
        assert_eq!(header_param("<sip:1@2;tag=no>", "tag"), None);
        assert_eq!(uri_user("\"n\" <sip:abc@h>;tag=1"), Some("abc"));
        assert_eq!(uri_user("tel:123"), None);
        assert_eq!(uri_socket_addr("<sip:a@h.example:5060>"), None);
    }

    #[test]
    fn stream_framing_by_content_length() {
        let msg = b"\r\nMESSAGE sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcNEXT";
        assert_eq!(stream_message_len(msg), Ok(Some(msg.len() - 4)));
        assert_eq!(stream_message_len(&msg[..20]), Ok(None));
        assert_eq!(stream_message_len(&msg[..msg.len() - 6]), Ok(None));
        assert!(matches!(
            stream_message_len(b"BYE sip:a SIP/2.0\r\nCSeq: 1 BYE\r\n\r\n"),
            Err(SipError::MissingHeader { .. })
        ));
        assert_eq!(stream_message_len(b"\r\n\r\n"), Ok(None));
    }

    proptest! {
        #[test]
        fn stream_framing_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(Some(n)) = stream_message_len(&data) {
                prop_assert!(n <= data.len());
            }
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data);
        }

        #[test]
        fn parse_never_panics_on_sip_like_text(
            start in "(INVITE|MESSAGE|SIP/2\\.0) [ -~]{0,20}( SIP/2\\.0)?",
            lines in proptest::collection::vec("[ -~]{0,40}", 0..8),
            body in "[ -~]{0,40}",
        ) {
            let msg = format!("{start}\r\n{}\r\n\r\n{body}", lines.join("\r\n"));
            if let Ok(m) = parse(msg.as_bytes()) {
                let _ = top_via_branch(m.headers());
                for (_, v) in m.headers().iter() {
                    let _ = uri_user(v);
                    let _ = uri_socket_addr(v);
                    let _ = header_param(v, "tag");
                    let _ = Challenge::parse(v);
                }
            }
        }

        #[test]
        fn printed_requests_parse_back(body in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut r = Request::new("MESSAGE", "sip:a@127.0.0.1:5060");
            r.headers.push("Call-ID", "x");
            r.headers.push("CSeq", "3 MESSAGE");
            r.body = Bytes::from(body);
            let back = parse(&r.to_bytes());
            prop_assert_eq!(back, Ok(Message::Request(r)));
        }
    }
}
