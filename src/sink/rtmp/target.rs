//! Where an RTMP sink publishes, with the stream key kept out of logs.

use crate::cloud::{RtmpUrl, UrlError};
use std::fmt;

/// A parsed RTMP(S) publish target.
///
/// The stream key is a credential: `Debug` and [`redacted`](Self::redacted) never show it, and
/// errors never echo the URL it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct RtmpTarget {
    /// True for `rtmps://` (TLS).
    pub tls: bool,
    /// Server host name or address.
    pub host: String,
    /// Server TCP port.
    pub port: u16,
    /// Application path (all path segments but the last, joined with `/`).
    pub app: String,
    /// Stream key, including any `?query` verbatim (servers use it for auth tokens).
    pub stream_key: String,
    /// The `tcUrl` sent in `connect`: scheme, authority and app, without the key.
    pub tc_url: String,
}

impl RtmpTarget {
    /// Parses `rtmp://host[:port]/app[/more]/key[?query]` (or `rtmps://`, default port 443) by
    /// the same rules as the cloud's `live_start_push` urls ([`RtmpUrl`]): one parser, so a url
    /// the cloud accepts is the one the sink connects to.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        RtmpUrl::parse(input.trim()).map(|url| Self::from(&url))
    }

    /// The target as it may appear in logs and replies, the key masked by [`redact_key`].
    pub fn redacted(&self) -> String {
        format!("{}/{}", self.tc_url, redact_key(&self.stream_key))
    }

    /// `host:port`, for error messages.
    pub fn peer(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A stream key as logs may show it: the same rule as the cloud's urls
/// ([`mask_keep_prefix`](crate::cloud::mask_keep_prefix)) applied to the key's name, and the
/// query, which may hold a token, left out.
pub fn redact_key(key: &str) -> String {
    let name = key.split_once('?').map_or(key, |(name, _)| name);
    crate::cloud::mask_keep_prefix(name)
}

impl From<&RtmpUrl> for RtmpTarget {
    fn from(url: &RtmpUrl) -> Self {
        Self {
            tls: url.tls,
            // The URL writes an IPv6 literal in brackets; a socket address wants it bare.
            host: url
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url.port,
            app: url.app.clone(),
            stream_key: url.stream_key.clone(),
            tc_url: url.tc_url.clone(),
        }
    }
}

impl fmt::Debug for RtmpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtmpTarget")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("app", &self.app)
            .field("stream_key", &redact_key(&self.stream_key))
            .field("tc_url", &self.tc_url)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_rtmp() {
        let t = RtmpTarget::parse("rtmp://127.0.0.1/live/secretkey").expect("valid");
        assert_eq!(
            t,
            RtmpTarget {
                tls: false,
                host: "127.0.0.1".into(),
                port: 1935,
                app: "live".into(),
                stream_key: "secretkey".into(),
                tc_url: "rtmp://127.0.0.1/live".into(),
            }
        );
    }

    #[test]
    fn parses_rtmps_nested_app_port_and_query() {
        let t = RtmpTarget::parse("rtmps://push.example.com:8443/a/b/key123?auth=x&t=1")
            .expect("valid");
        assert!(t.tls);
        assert_eq!(t.port, 8443);
        assert_eq!(t.app, "a/b");
        assert_eq!(t.stream_key, "key123?auth=x&t=1");
        assert_eq!(t.tc_url, "rtmps://push.example.com:8443/a/b");
        assert_eq!(
            RtmpTarget::parse("rtmps://h/app/k").expect("valid").port,
            443
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            RtmpTarget::parse("rtmp://h/live"),
            Err(UrlError::NoStreamKey { segments: 1 })
        );
        assert_eq!(
            RtmpTarget::parse("rtmp://h/"),
            Err(UrlError::NoStreamKey { segments: 0 })
        );
        assert_eq!(
            RtmpTarget::parse("rtmp://h"),
            Err(UrlError::NoStreamKey { segments: 0 })
        );
        assert_eq!(
            RtmpTarget::parse("http://h/a/k"),
            Err(UrlError::BadScheme {
                scheme: "http".into(),
                expected: "rtmp or rtmps"
            })
        );
        assert!(matches!(
            RtmpTarget::parse("h/a/k"),
            Err(UrlError::NotAUrl { .. })
        ));
        assert!(matches!(
            RtmpTarget::parse("rtmp://h:99999/a/k"),
            Err(UrlError::NotAUrl { .. })
        ));
        assert!(RtmpTarget::parse("rtmp:///a/k").is_err());
    }

    #[test]
    fn an_ipv6_literal_is_connected_to_bare_and_named_in_brackets() {
        let t = RtmpTarget::parse("rtmp://[::1]:1936/live/k").expect("valid");
        assert_eq!(t.host, "::1");
        assert_eq!(t.peer(), "[::1]:1936");
        assert_eq!(t.tc_url, "rtmp://[::1]:1936/live");
        let addr: std::net::SocketAddr = t.peer().parse().expect("a socket address");
        assert_eq!(addr.port(), 1936);
    }

    #[test]
    fn key_never_shown() {
        let t = RtmpTarget::parse("rtmp://h:1936/live/supersecret?token=abc").expect("valid");
        assert_eq!(t.redacted(), "rtmp://h:1936/live/su***");
        let dbg = format!("{t:?}");
        assert!(
            !dbg.contains("supersecret") && !dbg.contains("token=abc"),
            "{dbg}"
        );
        assert_eq!(redact_key("é"), "***");
        // A key too short to spare two characters is masked whole, with or without a query.
        assert_eq!(redact_key("demo"), "***");
        assert_eq!(redact_key("ab?token=xyz"), "***");
        assert_eq!(redact_key("abcdef?token=xyz"), "ab***");
        assert_eq!(t.peer(), "h:1936");
        // Credentials are refused, and the refusal does not repeat them.
        let e = RtmpTarget::parse("rtmp://user:pw7731@h/live/k").expect_err("credentials");
        assert!(!e.to_string().contains("pw7731"), "{e}");
    }
}
