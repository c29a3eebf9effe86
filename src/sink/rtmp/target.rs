//! Where an RTMP sink publishes, with the stream key kept out of logs.

use std::fmt;
use thiserror::Error;

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

/// Why an RTMP URL was refused; the messages never contain the URL itself.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// Scheme other than rtmp/rtmps.
    #[error("unsupported scheme {0:?} (expected rtmp or rtmps)")]
    UnsupportedScheme(String),
    /// No `scheme://` prefix at all.
    #[error("not a URL: missing scheme://")]
    NotAUrl,
    /// The host/port part could not be parsed.
    #[error("invalid host or port in RTMP URL")]
    InvalidAuthority,
    /// The path has no application segment.
    #[error("RTMP URL has no application path")]
    MissingApp,
    /// The path has no stream key segment.
    #[error("RTMP URL has no stream key")]
    MissingStreamKey,
}

impl RtmpTarget {
    /// Parses `rtmp://host[:port]/app[/more]/key[?query]` (or `rtmps://`, default port 443).
    pub fn parse(input: &str) -> Result<Self, TargetError> {
        let (scheme, rest) = input.trim().split_once("://").ok_or(TargetError::NotAUrl)?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "rtmp" => (false, 1935),
            "rtmps" => (true, 443),
            other => return Err(TargetError::UnsupportedScheme(other.to_string())),
        };
        let (authority, path_and_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        // The url crate handles IPv6 literals, userinfo and port ranges for us.
        let parsed = url::Url::parse(&format!("rtmp://{authority}/"))
            .map_err(|_| TargetError::InvalidAuthority)?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(TargetError::InvalidAuthority)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port().unwrap_or(default_port);
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (key, app_segments) = match segments.split_last() {
            Some((key, app)) if !app.is_empty() => (*key, app),
            Some(_) => return Err(TargetError::MissingStreamKey),
            None => return Err(TargetError::MissingApp),
        };
        let app = app_segments.join("/");
        let stream_key = match query {
            Some(q) => format!("{key}?{q}"),
            None => key.to_string(),
        };
        // Credentials in the authority must not end up in tcUrl (sent and logged) or redacted().
        let bare_authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let tc_url = format!("{}://{bare_authority}/{app}", scheme.to_ascii_lowercase());
        Ok(Self {
            tls,
            host,
            port,
            app,
            stream_key,
            tc_url,
        })
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
            Err(TargetError::MissingStreamKey)
        );
        assert_eq!(RtmpTarget::parse("rtmp://h/"), Err(TargetError::MissingApp));
        assert_eq!(RtmpTarget::parse("rtmp://h"), Err(TargetError::MissingApp));
        assert_eq!(
            RtmpTarget::parse("http://h/a/k"),
            Err(TargetError::UnsupportedScheme("http".into()))
        );
        assert_eq!(RtmpTarget::parse("h/a/k"), Err(TargetError::NotAUrl));
        assert_eq!(
            RtmpTarget::parse("rtmp://h:99999/a/k"),
            Err(TargetError::InvalidAuthority)
        );
        assert_eq!(
            RtmpTarget::parse("rtmp:///a/k"),
            Err(TargetError::InvalidAuthority)
        );
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
        let t = RtmpTarget::parse("rtmp://user:pw@h/live/k").expect("valid");
        assert_eq!(t.tc_url, "rtmp://h/live");
        assert!(!format!("{t:?}").contains("pw"));
    }
}
