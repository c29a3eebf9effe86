//! REGISTER as GB/T 28181 wants it: From/To on the SIP domain, one Call-ID and From-tag kept
//! across challenges and refreshes (wvp accepts a refresh on the known Call-ID without a new
//! challenge), digest answered with `uri=` equal to the Request-URI.

use super::sip::{Challenge, Request, Response};
use std::net::SocketAddr;

/// Who we are and where the platform is, as printed in every out-of-dialog request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Our device ID (`agentID`), digest username.
    pub device_id: String,
    /// The platform's ID (`serverID`).
    pub server_id: String,
    /// SIP domain: the first 10 digits of the platform ID (GB §6.1.2 convention).
    pub domain: String,
    /// The platform's SIP address.
    pub server: SocketAddr,
    /// Our SIP address as the platform should reach it (Via, Contact).
    pub local: SocketAddr,
    /// `User-Agent` header value.
    pub user_agent: String,
    /// Signalling over TCP (Via transport and `;transport=tcp` in Contact) instead of UDP.
    pub tcp: bool,
}

impl Identity {
    /// Our Via header value for a request with `branch`.
    pub fn via(&self, branch: &str) -> String {
        let transport = if self.tcp { "TCP" } else { "UDP" };
        format!("SIP/2.0/{transport} {};rport;branch={branch}", self.local)
    }

    /// Our Contact for `user` (device or channel ID): where the platform sends requests.
    pub fn contact(&self, user: &str) -> String {
        let transport = if self.tcp { ";transport=tcp" } else { "" };
        format!("<sip:{user}@{}{transport}>", self.local)
    }

    /// `sip:<serverID>@<ip>:<port>`, the Request-URI form GB J.1 shows.
    pub fn server_uri(&self) -> String {
        format!("sip:{}@{}", self.server_id, self.server)
    }

    /// Headers every out-of-dialog request from us carries, in the order wvp itself sends them.
    pub fn request(
        &self,
        method: &str,
        branch: &str,
        from_tag: &str,
        to_user: &str,
        call_id: &str,
        cseq: u32,
    ) -> Request {
        let mut r = Request::new(method, self.server_uri());
        let h = &mut r.headers;
        h.push("Via", self.via(branch));
        h.push(
            "From",
            format!("<sip:{}@{}>;tag={from_tag}", self.device_id, self.domain),
        );
        h.push("To", format!("<sip:{to_user}@{}>", self.domain));
        h.push("Call-ID", call_id);
        h.push("CSeq", format!("{cseq} {method}"));
        h.push("Max-Forwards", "70");
        h.push("User-Agent", self.user_agent.clone());
        r
    }
}

/// What a REGISTER response means for the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// 1xx: keep waiting.
    Provisional,
    /// Challenged: send [`Registration::request`] again, it will carry the answer.
    Challenged,
    /// 2xx with the expiry the platform granted.
    Registered {
        /// Seconds.
        expires: u32,
    },
    /// Refused; `reason` names the status and the likely cause.
    Rejected {
        /// The final status.
        status: u16,
        /// Human-readable cause (no secrets).
        reason: String,
    },
}

/// One registration binding: Call-ID, From-tag and CSeq, plus a pending digest challenge.
#[derive(Debug, Clone)]
pub struct Registration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    challenge: Option<(Challenge, bool)>,
    answered_challenge: bool,
    stale_retries: u32,
    requested_expires: u32,
}

impl Registration {
    /// A new binding; a new Call-ID tells the platform this is a fresh registration.
    pub fn new(call_id: String, from_tag: String) -> Self {
        Self {
            call_id,
            from_tag,
            cseq: 0,
            challenge: None,
            answered_challenge: false,
            stale_retries: 0,
            requested_expires: 0,
        }
    }

    /// The binding's Call-ID (kept across refreshes).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The next REGISTER for `expires` seconds (0 unregisters); answers a pending challenge.
    pub fn request(
        &mut self,
        id: &Identity,
        password: &str,
        expires: u32,
        branch: &str,
        cnonce: &str,
    ) -> Request {
        self.cseq += 1;
        self.requested_expires = expires;
        let mut r = id.request(
            "REGISTER",
            branch,
            &self.from_tag,
            &id.device_id,
            &self.call_id,
            self.cseq,
        );
        r.headers.push("Contact", id.contact(&id.device_id));
        r.headers.push("Expires", expires.to_string());
        self.answered_challenge = false;
        if let Some((challenge, proxy)) = self.challenge.take() {
            let uri = r.uri.clone();
            let value = challenge.authorization(&id.device_id, password, "REGISTER", &uri, cnonce);
            let name = if proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            r.headers.push(name, value);
            self.answered_challenge = true;
        }
        r
    }

    /// Interprets the response to the last request.
    pub fn on_response(&mut self, resp: &Response) -> RegisterOutcome {
        match resp.status {
            100..=199 => RegisterOutcome::Provisional,
            200..=299 => {
                let expires = resp
                    .headers
                    .get("Expires")
                    .and_then(|v| v.trim().parse().ok())
                    .or_else(|| {
                        resp.headers
                            .get("Contact")
                            .and_then(|c| super::sip::header_param(c, "expires"))
                            .and_then(|v| v.parse().ok())
                    })
                    .unwrap_or(self.requested_expires);
                RegisterOutcome::Registered { expires }
            }
            401 | 407 => {
                let proxy = resp.status == 407;
                let header = if proxy {
                    "Proxy-Authenticate"
                } else {
                    "WWW-Authenticate"
                };
                let challenge = match resp.headers.require(header).and_then(Challenge::parse) {
                    Ok(c) => c,
                    Err(e) => {
                        return RegisterOutcome::Rejected {
                            status: resp.status,
                            reason: format!(
                                "REGISTER (Call-ID {}) got {} with an unusable challenge: {e}",
                                self.call_id, resp.status
                            ),
                        }
                    }
                };
                // A stale nonce means the password was right; allow a couple of those.
                let stale_ok = challenge.stale && self.stale_retries < 2;
                if self.answered_challenge && !stale_ok {
                    return RegisterOutcome::Rejected {
                        status: resp.status,
                        reason: format!(
                            "REGISTER (Call-ID {}) refused with {} after digest: wrong agentID or agentPassword",
                            self.call_id, resp.status
                        ),
                    };
                }
                self.stale_retries = if challenge.stale {
                    self.stale_retries + 1
                } else {
                    0
                };
                self.challenge = Some((challenge, proxy));
                RegisterOutcome::Challenged
            }
            status => RegisterOutcome::Rejected {
                status,
                reason: format!(
                    "REGISTER (Call-ID {}) refused with {status} {}{}",
                    self.call_id,
                    super::sip::clip(&resp.reason),
                    if status == 403 {
                        " (wvp answers 403 to a wrong password or a non-20-digit agentID)"
                    } else {
                        ""
                    }
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::gb28181::sip::{parse, Message};

    fn id() -> Identity {
        Identity {
            device_id: "34020000001320000001".into(),
            server_id: "34020000002000000001".into(),
            domain: "3402000000".into(),
            server: "192.168.1.10:5060".parse().expect("addr"),
            local: "192.168.1.50:5060".parse().expect("addr"),
            user_agent: "dockcast".into(),
            tcp: false,
        }
    }

    fn response(text: &str) -> Response {
        match parse(text.as_bytes()).expect("parses") {
            Message::Response(r) => r,
            Message::Request(_) => panic!("response expected"),
        }
    }

    #[test]
    fn register_challenge_and_success() {
        let mut reg = Registration::new("1011047669@192.168.1.50".into(), "2043466181".into());
        let first = reg.request(&id(), "12345678", 3600, "z9hG4bK1", "0a4f113b");
        let text = String::from_utf8(first.to_bytes().to_vec()).expect("utf8");
        assert!(text.starts_with("REGISTER sip:34020000002000000001@192.168.1.10:5060 SIP/2.0\r\n"));
        assert!(text.contains("From: <sip:34020000001320000001@3402000000>;tag=2043466181\r\n"));
        assert!(text.contains("To: <sip:34020000001320000001@3402000000>\r\n"));
        assert!(text.contains("CSeq: 1 REGISTER\r\n"));
        assert!(text.contains("Contact: <sip:34020000001320000001@192.168.1.50:5060>\r\n"));
        assert!(text.contains("Expires: 3600\r\n"));
        assert!(!text.contains("Authorization"));

        let challenge = response("SIP/2.0 401 Unauthorized\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"3402000000\",qop=\"auth\",nonce=\"9bd055d2f9f3a1e4c7b2a1f0e9d8c7b6\",algorithm=MD5\r\n\r\n");
        assert_eq!(reg.on_response(&challenge), RegisterOutcome::Challenged);
        let second = reg.request(&id(), "12345678", 3600, "z9hG4bK2", "0a4f113b");
        assert_eq!(second.cseq().expect("cseq"), (2, "REGISTER"));
        assert_eq!(
            second.call_id().expect("call-id"),
            "1011047669@192.168.1.50"
        );
        let auth = second.headers.get("Authorization").expect("authorization");
        assert!(auth.contains("response=\"24729c387127dd522cfd95f5fbbe3342\""));

        let ok = response("SIP/2.0 200 OK\r\nCSeq: 2 REGISTER\r\nExpires: 1800\r\n\r\n");
        assert_eq!(
            reg.on_response(&ok),
            RegisterOutcome::Registered { expires: 1800 }
        );
        // A refresh keeps the Call-ID and goes unauthenticated first.
        let refresh = reg.request(&id(), "12345678", 3600, "z9hG4bK3", "c");
        assert_eq!(refresh.cseq().expect("cseq"), (3, "REGISTER"));
        assert!(refresh.headers.get("Authorization").is_none());
    }

    #[test]
    fn second_401_means_wrong_password_but_stale_is_retried() {
        let mut reg = Registration::new("c".into(), "t".into());
        let ch = "SIP/2.0 401 Unauthorized\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"r\",nonce=\"n\"\r\n\r\n";
        reg.request(&id(), "pw", 3600, "b1", "c");
        assert_eq!(reg.on_response(&response(ch)), RegisterOutcome::Challenged);
        reg.request(&id(), "pw", 3600, "b2", "c");
        let stale = "SIP/2.0 401 Unauthorized\r\nCSeq: 2 REGISTER\r\nWWW-Authenticate: Digest realm=\"r\",nonce=\"n2\",stale=true\r\n\r\n";
        assert_eq!(
            reg.on_response(&response(stale)),
            RegisterOutcome::Challenged
        );
        reg.request(&id(), "pw", 3600, "b3", "c");
        match reg.on_response(&response(ch)) {
            RegisterOutcome::Rejected {
                status: 401,
                reason,
            } => {
                assert!(
                    reason.contains("wrong agentID or agentPassword"),
                    "{reason}"
                );
                assert!(!reason.contains("pw"));
            }
            other => panic!("{other:?}"),
        }
        let forbidden = response("SIP/2.0 403 Forbidden\r\nCSeq: 4 REGISTER\r\n\r\n");
        assert!(matches!(
            reg.on_response(&forbidden),
            RegisterOutcome::Rejected { status: 403, .. }
        ));
    }
}
