//! WHIP signalling (RFC 9725) without the network: requests are built and responses judged
//! here, the shell in [`super::client`] only moves them over HTTP.
//!
//! Keeping the decisions pure lets the tests feed every odd response a server might give
//! (relative `Location`, redirect chains, `Retry-After` as a date, malformed `Link` headers)
//! without running one.

use crate::cloud::redact_url_str;
use std::fmt;
use std::time::{Duration, SystemTime};
use url::Url;

/// Most redirects followed for one offer; a loop between two endpoints must end.
pub const MAX_REDIRECTS: u32 = 5;

/// Most `503 Retry-After` answers waited out for one offer before giving up on the attempt.
pub const MAX_BUSY_RETRIES: u32 = 3;

/// Longest `Retry-After` honoured; a server asking for more is treated as if it asked for this
/// much, so a typo on the server side cannot park a stream for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Largest response body read (an SDP answer is a few kB).
pub const MAX_BODY: usize = 256 * 1024;

/// Which step of a WHIP session something went wrong in, so an error says where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// POSTing the offer (including redirects and retries).
    Offer,
    /// Applying the server's SDP answer.
    Answer,
    /// ICE + DTLS after the answer.
    Connect,
    /// While media flows.
    Stream,
    /// DELETEing the session.
    Delete,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Offer => "offer",
            Phase::Answer => "answer",
            Phase::Connect => "connect",
            Phase::Stream => "stream",
            Phase::Delete => "delete",
        })
    }
}

/// Why a WHIP exchange failed. Names the phase and the status or header at fault; never carries
/// the bearer token (urls in it are redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhipError {
    /// The HTTP request did not complete (connect refused, TLS, timeout, ...).
    #[error("{phase}: http request to {url} failed: {reason}")]
    Transport {
        /// Where.
        phase: Phase,
        /// The request url, redacted.
        url: String,
        /// The client's reason, without the url.
        reason: String,
    },
    /// The server answered with a status that ends this attempt.
    #[error("{phase}: server answered {status}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Status {
        /// Where.
        phase: Phase,
        /// The HTTP status code.
        status: u16,
        /// A short explanation for well-known codes (e.g. 401: token missing or wrong).
        hint: Option<&'static str>,
    },
    /// A header the protocol requires is absent.
    #[error("{phase}: {status} response has no {header} header")]
    MissingHeader {
        /// Where.
        phase: Phase,
        /// The status it came with.
        status: u16,
        /// The header's name.
        header: &'static str,
    },
    /// A header is present but unusable.
    #[error("{phase}: bad {header} header: {why}")]
    BadHeader {
        /// Where.
        phase: Phase,
        /// The header's name.
        header: &'static str,
        /// What is wrong (its value only when it cannot be a secret).
        why: String,
    },
    /// The 201 body is not an SDP answer.
    #[error("answer: content-type is {found:?}, not application/sdp")]
    NotSdp {
        /// The content type received.
        found: String,
    },
    /// The SDP answer does not parse or does not fit our offer.
    #[error("answer: {why}")]
    BadAnswer {
        /// The parser's or the WebRTC stack's reason.
        why: String,
    },
    /// The session's video is in a codec this sink does not carry (H.265): refused rather than
    /// sent under an H.264 payload type no receiver could decode.
    #[error("the source is {codec}; WHIP here carries H.264 only (use an H.264 source, or RTMP for H.265)")]
    UnsupportedCodec {
        /// The codec received.
        codec: &'static str,
    },
    /// More redirects than [`MAX_REDIRECTS`].
    #[error("offer: more than {limit} redirects")]
    TooManyRedirects {
        /// The limit.
        limit: u32,
    },
    /// The server stayed busy (503) through [`MAX_BUSY_RETRIES`] retries.
    #[error("offer: server still busy (503) after {retries} retries")]
    Busy {
        /// Retries made.
        retries: u32,
    },
    /// ICE/DTLS did not connect in time after the answer.
    #[error("connect: no media connection after {after:?}")]
    ConnectTimeout {
        /// How long we waited.
        after: Duration,
    },
    /// The peer connection went away while streaming (consent lost, DTLS closed).
    #[error("{phase}: media connection lost: {why}")]
    Disconnected {
        /// Where.
        phase: Phase,
        /// What str0m or the socket reported.
        why: String,
    },
    /// Local setup failed (socket, certificate, WebRTC state); not the server's fault.
    #[error("{phase}: local error: {why}")]
    Local {
        /// Where.
        phase: Phase,
        /// What failed.
        why: String,
    },
}

/// HTTP method of a WHIP request; only these two are needed by a non-trickle publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Create a session with an offer.
    Post,
    /// End a session.
    Delete,
}

/// An HTTP request to be sent by the shell, as data.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// Absolute url.
    pub url: Url,
    /// Header names and values, in order.
    pub headers: Vec<(&'static str, String)>,
    /// Body, if any.
    pub body: Option<String>,
}

impl fmt::Debug for HttpRequest {
    // Hand-written so the Authorization value never reaches a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("authorization") {
                    (*k, "***")
                } else {
                    (*k, v.as_str())
                }
            })
            .collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &redact_url_str(self.url.as_str()))
            .field("headers", &headers)
            .field("body_len", &self.body.as_ref().map(String::len))
            .finish()
    }
}

/// An HTTP response as the shell received it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (any case) and values, in order; a header may repeat.
    pub headers: Vec<(String, String)>,
    /// Body as text (lossy UTF-8), at most [`MAX_BODY`] bytes.
    pub body: String,
}

impl HttpResponse {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Builds the offer POST: `Content-Type: application/sdp`, and the bearer token when known.
pub fn offer_request(endpoint: &Url, token: Option<&str>, offer_sdp: &str) -> HttpRequest {
    let mut headers = vec![
        ("Content-Type", "application/sdp".to_owned()),
        ("Accept", "application/sdp".to_owned()),
    ];
    if let Some(t) = token {
        headers.push(("Authorization", format!("Bearer {t}")));
    }
    HttpRequest {
        method: Method::Post,
        url: endpoint.clone(),
        headers,
        body: Some(offer_sdp.to_owned()),
    }
}

/// Builds the DELETE that ends a session; RFC 9725 wants the token here too.
pub fn delete_request(session_url: &Url, token: Option<&str>) -> HttpRequest {
    let mut headers = Vec::new();
    if let Some(t) = token {
        headers.push(("Authorization", format!("Bearer {t}")));
    }
    HttpRequest {
        method: Method::Delete,
        url: session_url.clone(),
        headers,
        body: None,
    }
}

/// Judges a DELETE response. 404/410 count as done: the session is gone either way.
pub fn delete_outcome(resp: &HttpResponse) -> Result<(), WhipError> {
    match resp.status {
        200..=299 | 404 | 410 => Ok(()),
        status => Err(WhipError::Status {
            phase: Phase::Delete,
            status,
            hint: status_hint(status),
        }),
    }
}

/// The kind of ICE server a `Link` header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceServerKind {
    /// `stun:` — usable for a server-reflexive candidate.
    Stun,
    /// `turn:` — recorded; no TURN client yet.
    Turn,
    /// `turns:` — recorded; no TURN client yet.
    Turns,
}

/// An ICE server the WHIP endpoint offered in a `Link: <...>; rel="ice-server"` header.
#[derive(Clone, PartialEq, Eq)]
pub struct IceServer {
    /// The URI as given, e.g. `stun:stun.example.net:3478`.
    pub uri: String,
    /// Its kind, from the scheme.
    pub kind: IceServerKind,
    /// `username` parameter (TURN).
    pub username: Option<String>,
    /// `credential` parameter (TURN); a secret.
    pub credential: Option<String>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("uri", &self.uri)
            .field("kind", &self.kind)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .finish()
    }
}

impl IceServer {
    /// Host and port of a `stun:` URI (default port 3478), for a binding request.
    pub fn stun_host_port(&self) -> Option<(String, u16)> {
        if self.kind != IceServerKind::Stun {
            return None;
        }
        let rest = self.uri.get(5..)?;
        let rest = rest.split('?').next()?;
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 3478,
                None => return None,
            };
            (h.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().ok()?),
                None => (rest.to_owned(), 3478),
            }
        };
        (!host.is_empty()).then_some((host, port))
    }
}

/// One link of a `Link` header (RFC 8288): the target and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URI between `<` and `>`.
    pub target: String,
    /// Parameters, names lower-cased, values unquoted.
    pub params: Vec<(String, Option<String>)>,
}

impl Link {
    /// The value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Parses one `Link` header value into its links. Malformed links are skipped, never fatal:
/// the ICE servers are an optional hint and a server's typo must not fail the publish.
pub fn parse_link_header(value: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    // Bounded by the input: every iteration consumes at least one byte.
    while i < b.len() {
        // Skip separators and whitespace to the next '<'.
        while i < b.len() && b[i] != b'<' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i + 1;
        let Some(end_rel) = value[start..].find('>') else {
            break;
        };
        let target = value[start..start + end_rel].trim().to_owned();
        i = start + end_rel + 1;
        let mut params = Vec::new();
        let mut ok = true;
        // Parameters: `; name[=value]` until a top-level ',' or the end.
        loop {
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            if b[i] == b',' {
                i += 1;
                break;
            }
            if b[i] != b';' {
                // Garbage after the target: skip to the next link.
                ok = false;
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                continue;
            }
            i += 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let name_start = i;
            while i < b.len() && !matches!(b[i], b'=' | b';' | b',' | b' ' | b'\t') {
                i += 1;
            }
            let name = value[name_start..i].to_ascii_lowercase();
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let mut val = None;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                    i += 1;
                }
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                    let mut s = Vec::new();
                    let mut closed = false;
                    while i < b.len() {
                        match b[i] {
                            b'\\' if i + 1 < b.len() => {
                                s.push(b[i + 1]);
                                i += 2;
                            }
                            b'"' => {
                                i += 1;
                                closed = true;
                                break;
                            }
                            c => {
                                s.push(c);
                                i += 1;
                            }
                        }
                    }
                    if !closed {
                        ok = false;
                    }
                    val = Some(String::from_utf8_lossy(&s).into_owned());
                } else {
                    let v_start = i;
                    while i < b.len() && !matches!(b[i], b';' | b',') {
                        i += 1;
                    }
                    val = Some(value[v_start..i].trim().to_owned());
                }
            }
            if !name.is_empty() {
                params.push((name, val));
            }
        }
        if ok && !target.is_empty() {
            links.push(Link { target, params });
        }
    }
    links
}

/// The ICE servers among all `Link` headers of a response (`rel` may list several relations).
pub fn ice_servers(resp: &HttpResponse) -> Vec<IceServer> {
    let mut out = Vec::new();
    for value in resp.header_values("link") {
        for link in parse_link_header(value) {
            let is_ice = link.param("rel").is_some_and(|r| {
                r.split_whitespace()
                    .any(|t| t.eq_ignore_ascii_case("ice-server"))
            });
            if !is_ice {
                continue;
            }
            let scheme = link
                .target
                .split_once(':')
                .map(|(s, _)| s.to_ascii_lowercase());
            let kind = match scheme.as_deref() {
                Some("stun") => IceServerKind::Stun,
                Some("turn") => IceServerKind::Turn,
                Some("turns") => IceServerKind::Turns,
                _ => continue,
            };
            out.push(IceServer {
                uri: link.target.clone(),
                kind,
                username: link.param("username").map(str::to_owned),
                credential: link.param("credential").map(str::to_owned),
            });
        }
    }
    out
}

/// Parses `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the past
/// means "now". `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Resolves a `Location` value against the url the request went to (RFC 9110 §10.2.2); only
/// http(s) results are accepted.
pub fn resolve_location(base: &Url, location: &str) -> Result<Url, WhipError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(WhipError::BadHeader {
            phase: Phase::Offer,
            header: "Location",
            why: "empty".into(),
        });
    }
    let url = base.join(location).map_err(|e| WhipError::BadHeader {
        phase: Phase::Offer,
        header: "Location",
        why: format!("not a url reference: {e}"),
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(WhipError::BadHeader {
                phase: Phase::Offer,
                header: "Location",
                why: format!("scheme {other:?} is not http or https"),
            })
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(WhipError::BadHeader {
            phase: Phase::Offer,
            header: "Location",
            why: "no host".into(),
        });
    }
    Ok(url)
}

/// True when a request to `to` would send in clear what went to `from` over TLS (https to
/// anything else): the bearer token must never take that step.
fn downgrades(from: &Url, to: &Url) -> bool {
    from.scheme() == "https" && to.scheme() != "https"
}

/// What the server granted: everything the rest of the session needs from the 201.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The SDP answer text.
    pub answer_sdp: String,
    /// The WHIP session url (for DELETE), resolved to absolute.
    pub session_url: Url,
    /// The offer went over https but `session_url` is plain http: requests to it go without
    /// the bearer token (see [`Created::session_token`]), which would otherwise cross the
    /// network in clear.
    pub token_withheld: bool,
    /// ICE servers offered in `Link` headers.
    pub ice_servers: Vec<IceServer>,
    /// `ETag` of the session, kept for a later ICE restart.
    pub etag: Option<String>,
}

impl Created {
    /// The token to send with requests to [`Created::session_url`] (DELETE, and any future
    /// PATCH): `token`, or none when that url would carry it in clear.
    ///
    /// Withheld rather than failing the session: the server has already made the session and
    /// the media is DTLS-SRTP either way, and a server answering like this (typically behind a
    /// TLS-terminating proxy that builds its urls as http) would answer every new session the
    /// same, so an error would take a working stream down for good. The cost is a DELETE the
    /// server may refuse; it then drops the session when ICE consent stops.
    pub fn session_token<'t>(&self, token: Option<&'t str>) -> Option<&'t str> {
        if self.token_withheld {
            None
        } else {
            token
        }
    }
}

/// The next thing the shell must do for an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferStep {
    /// Send this request now.
    Send(HttpRequest),
    /// Wait this long (the server's `Retry-After`), then send the request.
    SendAfter(Duration, HttpRequest),
    /// The session exists.
    Created(Created),
    /// The server made a session (a 201 with a usable `Location`) but its answer cannot be
    /// used: DELETE `session_url` with `token`, then fail with `error`. Left alone, it would
    /// hold the stream on a server that takes one publisher per stream until its own timeout.
    Unusable {
        /// The session to DELETE.
        session_url: Url,
        /// The token for that request (none where it would go in clear).
        token: Option<String>,
        /// What was wrong with the answer.
        error: WhipError,
    },
}

/// The offer exchange as a state machine: POST, follow redirects, wait out 503s, until a 201
/// or an error. The shell loops `on_response` until it returns `Created` or an error, so the
/// rules (limits, token handling, url resolution) live here and are tested without a server.
#[derive(Debug, Clone)]
pub struct OfferFlow {
    request: HttpRequest,
    token: Option<String>,
    redirects: u32,
    busy: u32,
}

impl OfferFlow {
    /// Starts an exchange for `offer_sdp` at `endpoint`.
    pub fn new(endpoint: Url, token: Option<String>, offer_sdp: &str) -> Self {
        let request = offer_request(&endpoint, token.as_deref(), offer_sdp);
        OfferFlow {
            request,
            token,
            redirects: 0,
            busy: 0,
        }
    }

    /// The first request to send.
    pub fn first_request(&self) -> HttpRequest {
        self.request.clone()
    }

    /// Judges the response to the request last sent. `now` is only used for a date-valued
    /// `Retry-After`.
    pub fn on_response(
        &mut self,
        resp: &HttpResponse,
        now: SystemTime,
    ) -> Result<OfferStep, WhipError> {
        match resp.status {
            201 => self.created(resp),
            // RFC 9725 §4.5 names 307; 308 and the older 301/302/303 would turn a POST into
            // a GET (or are not meant for it), so only the two method-preserving codes count.
            307 | 308 => {
                if self.redirects >= MAX_REDIRECTS {
                    return Err(WhipError::TooManyRedirects {
                        limit: MAX_REDIRECTS,
                    });
                }
                let location = resp.header("location").ok_or(WhipError::MissingHeader {
                    phase: Phase::Offer,
                    status: resp.status,
                    header: "Location",
                })?;
                let next = resolve_location(&self.request.url, location)?;
                if downgrades(&self.request.url, &next) {
                    // Following would send the token and the offer in clear.
                    return Err(WhipError::BadHeader {
                        phase: Phase::Offer,
                        header: "Location",
                        why: "redirect from https to http refused".into(),
                    });
                }
                self.redirects += 1;
                self.request.url = next;
                Ok(OfferStep::Send(self.request.clone()))
            }
            503 => {
                let Some(value) = resp.header("retry-after") else {
                    return Err(WhipError::Status {
                        phase: Phase::Offer,
                        status: 503,
                        hint: Some("busy, no Retry-After"),
                    });
                };
                let delay = parse_retry_after(value, now).ok_or(WhipError::BadHeader {
                    phase: Phase::Offer,
                    header: "Retry-After",
                    why: "neither seconds nor an HTTP date".into(),
                })?;
                if self.busy >= MAX_BUSY_RETRIES {
                    return Err(WhipError::Busy { retries: self.busy });
                }
                self.busy += 1;
                Ok(OfferStep::SendAfter(
                    delay.min(MAX_RETRY_AFTER),
                    self.request.clone(),
                ))
            }
            status => Err(WhipError::Status {
                phase: Phase::Offer,
                status,
                hint: status_hint(status),
            }),
        }
    }

    /// The token the offer is sent with. Requests to the session url take
    /// [`Created::session_token`] instead, which may withhold it.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The url the offer currently goes to (after redirects).
    pub fn url(&self) -> &Url {
        &self.request.url
    }

    fn created(&self, resp: &HttpResponse) -> Result<OfferStep, WhipError> {
        let location = resp.header("location").ok_or(WhipError::MissingHeader {
            phase: Phase::Offer,
            status: 201,
            header: "Location",
        })?;
        let session_url = resolve_location(&self.request.url, location)?;
        // Judged against the url the 201 came from, as redirects are; https→http redirects
        // being refused, that url is https whenever the configured endpoint is. A session url
        // on another https origin keeps the token, as a cross-origin redirect does.
        let token_withheld = downgrades(&self.request.url, &session_url);
        let content_type = resp.header("content-type").unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // Some servers omit the type; the SDP parser then decides. A wrong type is refused.
        let unusable = if !mime.is_empty() && mime != "application/sdp" {
            Some(WhipError::NotSdp {
                found: content_type.chars().take(64).collect(),
            })
        } else if resp.body.trim().is_empty() {
            Some(WhipError::BadAnswer {
                why: "201 with an empty body".into(),
            })
        } else {
            None
        };
        if let Some(error) = unusable {
            return Ok(OfferStep::Unusable {
                session_url,
                token: self.token.clone().filter(|_| !token_withheld),
                error,
            });
        }
        Ok(OfferStep::Created(Created {
            answer_sdp: resp.body.clone(),
            session_url,
            token_withheld,
            ice_servers: ice_servers(resp),
            etag: resp.header("etag").map(str::to_owned),
        }))
    }
}

/// A short explanation of the status codes a WHIP client meets.
pub fn status_hint(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "offer refused",
        401 => "bearer token missing or wrong",
        403 => "not allowed to publish",
        404 => "no such endpoint or stream",
        405 => "method not allowed",
        406 | 415 => "SDP not accepted",
        409 => "stream already published",
        422 => "offer not acceptable",
        429 => "too many requests",
        500..=599 => "server error",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_owned(),
        }
    }

    const SRS: &str = "http://host:1985/rtc/v1/whip/?app=live&stream=NAME";

    #[test]
    fn offer_request_keeps_the_srs_query_and_sends_the_token() {
        let req = offer_request(&url(SRS), Some("s3cret"), "v=0\r\n");
        assert_eq!(req.url.as_str(), SRS);
        assert_eq!(req.method, Method::Post);
        assert!(req
            .headers
            .contains(&("Content-Type", "application/sdp".into())));
        assert!(req
            .headers
            .contains(&("Authorization", "Bearer s3cret".into())));
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        let no_token = offer_request(&url(SRS), None, "v=0\r\n");
        assert!(!no_token.headers.iter().any(|(k, _)| *k == "Authorization"));
    }

    #[test]
    fn delete_carries_the_token() {
        let req = delete_request(&url("http://h/whip/session/1"), Some("t"));
        assert_eq!(req.method, Method::Delete);
        assert!(req.headers.contains(&("Authorization", "Bearer t".into())));
        assert_eq!(delete_outcome(&resp(200, &[], "")), Ok(()));
        assert_eq!(delete_outcome(&resp(404, &[], "")), Ok(()));
        assert!(matches!(
            delete_outcome(&resp(401, &[], "")),
            Err(WhipError::Status {
                phase: Phase::Delete,
                status: 401,
                ..
            })
        ));
    }

    #[test]
    fn location_resolution() {
        let base = url(SRS);
        let cases = [
            ("/whip/session/abc", "http://host:1985/whip/session/abc"),
            ("session/abc", "http://host:1985/rtc/v1/whip/session/abc"),
            (
                "/rtc/v1/whip/?action=delete&token=x&app=live&stream=NAME&session=s1",
                "http://host:1985/rtc/v1/whip/?action=delete&token=x&app=live&stream=NAME&session=s1",
            ),
            ("https://other:8443/s/1", "https://other:8443/s/1"),
            ("//cdn.example/s/2", "http://cdn.example/s/2"),
            ("  /padded ", "http://host:1985/padded"),
        ];
        for (loc, want) in cases {
            assert_eq!(
                resolve_location(&base, loc).unwrap().as_str(),
                want,
                "{loc}"
            );
        }
        for bad in ["", "   ", "ftp://h/x", "mailto:a@b", "http://"] {
            assert!(
                matches!(
                    resolve_location(&base, bad),
                    Err(WhipError::BadHeader {
                        header: "Location",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn link_headers() {
        let r = resp(
            201,
            &[
                (
                    "Link",
                    r#"<stun:stun.example.net>; rel="ice-server", <turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; credential="pa;ss,word"; credential-type="password""#,
                ),
                ("link", "<stun:[2001:db8::1]:3479>; rel=ice-server"),
                ("Link", "<https://example.net/doc>; rel=\"help\""),
                ("Link", "<stun:other:19302>; rel=\"preload ice-server\""),
            ],
            "",
        );
        let servers = ice_servers(&r);
        assert_eq!(servers.len(), 4, "{servers:?}");
        assert_eq!(servers[0].uri, "stun:stun.example.net");
        assert_eq!(
            servers[0].stun_host_port(),
            Some(("stun.example.net".into(), 3478))
        );
        assert_eq!(servers[1].kind, IceServerKind::Turn);
        assert_eq!(servers[1].username.as_deref(), Some("user"));
        assert_eq!(servers[1].credential.as_deref(), Some("pa;ss,word"));
        assert!(!format!("{:?}", servers[1]).contains("pa;ss"));
        assert_eq!(servers[1].stun_host_port(), None);
        assert_eq!(
            servers[2].stun_host_port(),
            Some(("2001:db8::1".into(), 3479))
        );
        assert_eq!(servers[3].stun_host_port(), Some(("other".into(), 19302)));
    }

    #[test]
    fn malformed_links_are_skipped() {
        assert!(parse_link_header("").is_empty());
        assert!(parse_link_header("garbage").is_empty());
        assert!(parse_link_header("<unterminated").is_empty());
        let l = parse_link_header(r#"<stun:a> junk, <stun:b>; rel="ice-server""#);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].target, "stun:b");
        let l = parse_link_header(r#"<stun:a>; rel="ice-server; username="x"#);
        assert!(l.is_empty(), "unterminated quote: {l:?}");
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 10:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "soon", "Wed, 99 Nov 2026"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    fn flow() -> OfferFlow {
        OfferFlow::new(url(SRS), Some("tok".into()), "v=0\r\n")
    }

    #[test]
    fn created_resolves_location_and_reads_headers() {
        let mut f = flow();
        let step = f
            .on_response(
                &resp(
                    201,
                    &[
                        ("Content-Type", "application/sdp; charset=utf-8"),
                        ("Location", "/whip/session/1?x=y"),
                        ("ETag", "\"abc\""),
                        ("Link", "<stun:s:1>; rel=\"ice-server\""),
                    ],
                    "v=0\r\n",
                ),
                SystemTime::now(),
            )
            .unwrap();
        let OfferStep::Created(c) = step else {
            panic!("{step:?}")
        };
        assert_eq!(
            c.session_url.as_str(),
            "http://host:1985/whip/session/1?x=y"
        );
        assert_eq!(c.etag.as_deref(), Some("\"abc\""));
        assert_eq!(c.ice_servers.len(), 1);
    }

    #[test]
    fn created_needs_location_sdp_and_a_body() {
        let now = SystemTime::now();
        let e = flow()
            .on_response(
                &resp(201, &[("Content-Type", "application/sdp")], "v=0"),
                now,
            )
            .unwrap_err();
        assert!(matches!(
            e,
            WhipError::MissingHeader {
                header: "Location",
                ..
            }
        ));
        // A 201 whose answer is unusable still made a session: it is to be DELETEd.
        let unusable = |r: HttpResponse| match flow().on_response(&r, now) {
            Ok(OfferStep::Unusable {
                session_url, error, ..
            }) => (session_url, error),
            other => panic!("{other:?}"),
        };
        let (url, e) = unusable(resp(
            201,
            &[("Content-Type", "text/html"), ("Location", "/s")],
            "<html>",
        ));
        assert!(matches!(e, WhipError::NotSdp { .. }), "{e}");
        assert_eq!(url.path(), "/s");
        let (url, e) = unusable(resp(201, &[("Location", "/s")], "  "));
        assert!(matches!(e, WhipError::BadAnswer { .. }), "{e}");
        assert_eq!(url.path(), "/s");
    }

    #[test]
    fn redirects_are_followed_resolved_and_bounded() {
        let now = SystemTime::now();
        let mut f = flow();
        let step = f
            .on_response(&resp(307, &[("Location", "/other/whip?k=v")], ""), now)
            .unwrap();
        let OfferStep::Send(req) = step else {
            panic!("{step:?}")
        };
        assert_eq!(req.url.as_str(), "http://host:1985/other/whip?k=v");
        assert!(req
            .headers
            .contains(&("Authorization", "Bearer tok".into())));
        assert_eq!(req.body.as_deref(), Some("v=0\r\n"));
        // A relative Location in the next hop resolves against the redirected url.
        let step = f
            .on_response(&resp(308, &[("Location", "next")], ""), now)
            .unwrap();
        let OfferStep::Send(req) = step else {
            panic!("{step:?}")
        };
        assert_eq!(req.url.as_str(), "http://host:1985/other/next");
        for _ in 0..3 {
            f.on_response(&resp(307, &[("Location", "/x")], ""), now)
                .unwrap();
        }
        assert_eq!(
            f.on_response(&resp(307, &[("Location", "/x")], ""), now),
            Err(WhipError::TooManyRedirects { limit: 5 })
        );
        let e = flow().on_response(&resp(307, &[], ""), now).unwrap_err();
        assert!(matches!(e, WhipError::MissingHeader { status: 307, .. }));
    }

    #[test]
    fn https_to_http_redirect_is_refused() {
        let mut f = OfferFlow::new(url("https://h/whip"), Some("t".into()), "v=0");
        let e = f
            .on_response(
                &resp(307, &[("Location", "http://h/whip")], ""),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("https to http"), "{e}");
    }

    #[test]
    fn plain_http_session_url_of_an_https_offer_gets_no_token() {
        let created = |endpoint: &str, location: &str| {
            let mut f = OfferFlow::new(url(endpoint), Some("SECRET".into()), "v=0");
            let r = resp(
                201,
                &[("Content-Type", "application/sdp"), ("Location", location)],
                "v=0\r\n",
            );
            match f.on_response(&r, SystemTime::now()) {
                Ok(OfferStep::Created(c)) => c,
                other => panic!("{other:?}"),
            }
        };
        let c = created("https://whip.example/ep", "http://whip.example/res/1");
        assert_eq!(c.session_url.as_str(), "http://whip.example/res/1");
        assert_eq!(c.session_token(Some("SECRET")), None);
        let del = delete_request(&c.session_url, c.session_token(Some("SECRET")));
        assert!(
            !del.headers.iter().any(|(_, v)| v.contains("SECRET")),
            "token in clear: {:?}",
            del.headers
        );
        // Still https (relative, or another origin as with redirects), or http from the
        // start (the operator's choice): the token goes along.
        for (endpoint, location) in [
            ("https://whip.example/ep", "/res/1"),
            ("https://whip.example/ep", "https://cdn.example/res/1"),
            ("http://whip.example/ep", "http://whip.example/res/1"),
        ] {
            let c = created(endpoint, location);
            assert_eq!(
                c.session_token(Some("SECRET")),
                Some("SECRET"),
                "{endpoint} -> {location}"
            );
        }
    }

    #[test]
    fn busy_waits_then_gives_up() {
        let now = SystemTime::now();
        let mut f = flow();
        for _ in 0..MAX_BUSY_RETRIES {
            let step = f
                .on_response(&resp(503, &[("Retry-After", "2")], ""), now)
                .unwrap();
            assert!(
                matches!(step, OfferStep::SendAfter(d, _) if d == Duration::from_secs(2)),
                "{step:?}"
            );
        }
        assert_eq!(
            f.on_response(&resp(503, &[("Retry-After", "2")], ""), now),
            Err(WhipError::Busy { retries: 3 })
        );
        let step = flow()
            .on_response(&resp(503, &[("Retry-After", "86400")], ""), now)
            .unwrap();
        assert!(matches!(step, OfferStep::SendAfter(d, _) if d == MAX_RETRY_AFTER));
        assert!(matches!(
            flow().on_response(&resp(503, &[], ""), now),
            Err(WhipError::Status { status: 503, .. })
        ));
        assert!(matches!(
            flow().on_response(&resp(503, &[("Retry-After", "later")], ""), now),
            Err(WhipError::BadHeader {
                header: "Retry-After",
                ..
            })
        ));
    }

    #[test]
    fn error_statuses_name_the_phase_and_status() {
        let e = flow()
            .on_response(&resp(401, &[], ""), SystemTime::now())
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("offer") && s.contains("401") && s.contains("token"),
            "{s}"
        );
        assert!(!s.contains("tok "), "{s}");
    }

    proptest! {
        #[test]
        fn link_parser_never_panics(s in ".{0,200}") {
            let _ = parse_link_header(&s);
            let r = resp(201, &[("Link", &s)], "");
            for srv in ice_servers(&r) {
                let _ = srv.stun_host_port();
            }
        }

        #[test]
        fn link_parser_never_panics_on_link_like_input(s in "[<>;,=\" a-z:\\\\]{0,120}") {
            let _ = parse_link_header(&s);
        }

        #[test]
        fn retry_after_never_panics(s in ".{0,64}") {
            let _ = parse_retry_after(&s, SystemTime::now());
        }

        #[test]
        fn location_never_panics(s in ".{0,120}") {
            let _ = resolve_location(&url(SRS), &s);
        }

        #[test]
        fn offer_flow_never_panics(status in 100u16..600, loc in ".{0,60}", ra in ".{0,20}", ct in ".{0,30}", body in ".{0,60}") {
            let mut f = flow();
            let r = resp(status, &[("Location", &loc), ("Retry-After", &ra), ("Content-Type", &ct)], &body);
            let _ = f.on_response(&r, SystemTime::now());
        }
    }
}
