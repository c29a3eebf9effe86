//! The HTTP shell of WHIP: sends what [`super::http`] builds and hands back what came.
//!
//! reqwest (rustls on aws-lc-rs, certificates checked against the system roots through
//! rustls-platform-verifier) does the transport; its own redirect handling is off because the
//! rules for following a WHIP redirect (bounded, method and body kept, no https→http) are ours.

use super::http::{
    delete_outcome, delete_request, Created, HttpRequest, HttpResponse, Method, OfferFlow,
    OfferStep, Phase, WhipError, MAX_BODY,
};
use crate::cloud::redact_url_str;
use std::time::{Duration, SystemTime};
use url::Url;

/// An HTTP client for WHIP requests; one per sink, reused across sessions.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// Builds a client whose every request ends after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, WhipError> {
        let inner = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("dockcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WhipError::Local {
                phase: Phase::Offer,
                why: format!("http client: {}", e.without_url()),
            })?;
        Ok(HttpClient { inner })
    }

    /// Sends one request and reads at most [`MAX_BODY`] bytes of the answer.
    pub async fn send(&self, req: &HttpRequest, phase: Phase) -> Result<HttpResponse, WhipError> {
        let transport = |e: reqwest::Error| WhipError::Transport {
            phase,
            url: redact_url_str(req.url.as_str()),
            // The url is in our own field, redacted; reqwest's would carry query secrets.
            reason: error_chain(&e.without_url()),
        };
        let method = match req.method {
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.inner.request(method, req.url.clone());
        for (k, v) in &req.headers {
            builder = builder.header(*k, v);
        }
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let mut resp = builder.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(WhipError::BadHeader {
                    phase,
                    header: "Content-Length",
                    why: format!("body larger than {MAX_BODY} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Runs the whole offer exchange: POST, redirects, 503 waits, until 201 or an error.
    pub async fn create_session(
        &self,
        endpoint: Url,
        token: Option<String>,
        offer_sdp: &str,
    ) -> Result<Created, WhipError> {
        let mut flow = OfferFlow::new(endpoint, token, offer_sdp);
        let mut req = flow.first_request();
        // Each round either ends or uses up one of the flow's bounded redirects/retries.
        loop {
            let resp = self.send(&req, Phase::Offer).await?;
            match flow.on_response(&resp, SystemTime::now())? {
                OfferStep::Created(c) => return Ok(c),
                OfferStep::Unusable {
                    session_url,
                    token,
                    error,
                } => {
                    // Bounded by the client's request timeout.
                    let deleted = self.delete_session(&session_url, token.as_deref()).await;
                    tracing::info!(
                        session = %redact_url_str(session_url.as_str()),
                        deleted = deleted.is_ok(),
                        "whip: the server's answer is unusable; deleting the session it made"
                    );
                    return Err(error);
                }
                OfferStep::Send(next) => {
                    tracing::info!(to = %redact_url_str(next.url.as_str()), status = resp.status, "whip: following redirect");
                    req = next;
                }
                OfferStep::SendAfter(delay, next) => {
                    tracing::info!(
                        ?delay,
                        "whip: server busy (503), retrying after Retry-After"
                    );
                    tokio::time::sleep(delay).await;
                    req = next;
                }
            }
        }
    }

    /// DELETEs a session; a missing session counts as deleted.
    pub async fn delete_session(
        &self,
        session_url: &Url,
        token: Option<&str>,
    ) -> Result<(), WhipError> {
        let resp = self
            .send(&delete_request(session_url, token), Phase::Delete)
            .await?;
        delete_outcome(&resp)
    }
}

/// The error and its sources on one line: reqwest's top-level message alone ("error sending
/// request") does not say whether it was a refused connection, DNS or TLS.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    let mut depth = 0;
    while let Some(s) = src {
        if depth >= 5 {
            break;
        }
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
        depth += 1;
    }
    out
}
