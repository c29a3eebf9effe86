//! Masks secrets in what an adapter prints before it reaches the log.
//!
//! An adapter is handed the Agora token, RTMP stream keys or SRT passphrases, and tools like
//! ffmpeg echo their output URL on stderr. The sink knows every value it handed over, so it can
//! mask them wherever they reappear: the values of secret-named fields (in clear and
//! percent-encoded), the parts of URL-valued fields that [`redact_url_str`] masks, and any URL in
//! the line itself. Pure.

use crate::cloud::url::redact_url_str;

/// Secrets shorter than this are not searched for: masking every `1` or `ab` in a log line would
/// garble it while hiding nothing worth hiding.
pub const MIN_SECRET_LEN: usize = 4;

/// Field or env names whose values are secrets (same rule as the cloud url redaction).
const SECRET_KEY_PARTS: [&str; 7] = [
    "token",
    "key",
    "password",
    "passphrase",
    "secret",
    "auth",
    "sign",
];

/// Characters that end a URL quoted in free text (ffmpeg writes `to 'rtmp://…':`).
fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\'' | '"' | '`' | '<' | '>' | '(' | ')' | '[' | ']' | ','
        )
}

/// Masks the secrets of one adapter in its output lines.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// Learns the secrets among the url fields and extra environment handed to the adapter.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Redactor {
        let mut secrets = Vec::new();
        for (key, value) in pairs {
            if is_secret_key(key) {
                secrets.push(value.to_owned());
                secrets.push(percent_encode(value));
            }
            if value.contains("://") || value.contains('=') {
                secrets.extend(masked_parts(value));
            }
        }
        secrets.retain(|s| s.chars().count() >= MIN_SECRET_LEN);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// `line` with every known secret replaced by `***` and every URL in it redacted.
    pub fn redact(&self, line: &str) -> String {
        let mut out = redact_urls_in(line);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// True for names like `token`, `DOCKCAST_TOKEN`, `streamKey`, `agentPassword`.
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|s| k.contains(s))
}

/// The pieces of a url-ish value that [`redact_url_str`] would hide: tokens of the value (split
/// at URL delimiters) that no longer appear in its redacted form.
fn masked_parts(value: &str) -> Vec<String> {
    let redacted = mask_secret_query_values(&redact_url_str(value));
    let delims = |c: char| matches!(c, '/' | '?' | '&' | '=' | ':' | '@' | '#');
    let kept: Vec<&str> = redacted.split(delims).collect();
    value
        .split(delims)
        .filter(|t| !t.is_empty() && !kept.contains(t))
        .map(str::to_owned)
        .collect()
}

/// Every `scheme://…` span in free text passed through [`redact_url_str`].
fn redact_urls_in(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let scheme_start = rest[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(i, |(j, _)| j);
        let end = rest[i..]
            .char_indices()
            .find(|(_, c)| ends_url(*c))
            .map_or(rest.len(), |(j, _)| i + j);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&mask_secret_query_values(&redact_url_str(
            &rest[scheme_start..end],
        )));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Masks query values whose key [`is_secret_key`] names, which also covers keys the cloud url
/// redaction does not know (SRT's `passphrase`).
fn mask_secret_query_values(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let items: Vec<String> = query
        .split('&')
        .map(|item| match item.split_once('=') {
            Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
            _ => item.to_owned(),
        })
        .collect();
    format!("{head}?{}", items.join("&"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, the way the cloud encodes an
/// Agora token in the url (so the encoded form is masked too when an adapter echoes it).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOKEN: &str = "006dca67721582a48768ec4d817b7b25a86IADk/cm/dv+HY6qT";

    #[test]
    fn masks_the_token_in_clear_and_encoded() {
        let r = Redactor::new([("channel", "ch1"), ("token", TOKEN), ("uid", "50000")]);
        let line = format!(
            "joining ch1 uid 50000 with {TOKEN} ({})",
            percent_encode(TOKEN)
        );
        let out = r.redact(&line);
        assert_eq!(out, "joining ch1 uid 50000 with *** (***)");
    }

    #[test]
    fn masks_stream_keys_of_url_fields_and_urls_in_text() {
        let r = Redactor::new([("url", "rtmp://10.0.0.1/live/streamkey42?auth=abcdef")]);
        let out = r.redact("Output #0, flv, to 'rtmp://10.0.0.1/live/streamkey42?auth=abcdef':");
        assert!(
            !out.contains("streamkey42") && !out.contains("abcdef"),
            "{out}"
        );
        assert!(out.contains("rtmp://10.0.0.1/live/st***"), "{out}");
        // The key alone, as some tools print it.
        assert_eq!(r.redact("stream streamkey42 closed"), "stream *** closed");
        // A URL the sink never handed over is still redacted by shape.
        let out = Redactor::default().redact("connect srt://h:9000?passphrase=hunter22 failed");
        assert!(!out.contains("hunter22"), "{out}");
    }

    #[test]
    fn short_values_and_public_fields_stay_readable() {
        let r = Redactor::new([("sn", "1ZNDH1D0010098"), ("token", "ab")]);
        assert_eq!(r.redact("sn 1ZNDH1D0010098 ab"), "sn 1ZNDH1D0010098 ab");
    }

    proptest! {
        #[test]
        fn a_secret_never_survives(
            secret in "[A-Za-z0-9+/=%]{4,40}",
            before in "[ -~]{0,30}",
            after in "[ -~]{0,30}",
        ) {
            let r = Redactor::new([("token", secret.as_str())]);
            let out = r.redact(&format!("{before}{secret}{after}"));
            prop_assert!(!out.contains(&secret), "{}", out);
        }

        #[test]
        fn never_panics(line in "\\PC{0,200}", value in "\\PC{0,60}") {
            let r = Redactor::new([("url", value.as_str()), ("token", value.as_str())]);
            let _ = r.redact(&line);
        }
    }
}
