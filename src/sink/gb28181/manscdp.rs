//! MANSCDP XML: read the platform's queries and write our Keepalive and query responses.
//!
//! Queries are tiny and flat; reading the three elements we need with a tolerant scanner keeps
//! us independent of the declared charset (GB2312 or UTF-8: every element we read is ASCII).
//! What we write is ASCII too and declared GB2312, the charset wvp decodes device XML with.

use std::fmt::Write as _;

/// Why a MANSCDP body cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManscdpError {
    /// No root element.
    #[error("MANSCDP body has no root element")]
    NoRoot,
    /// A required element is absent.
    #[error("MANSCDP {root} has no <{element}>")]
    Missing {
        /// Root element name.
        root: String,
        /// Missing element.
        element: &'static str,
    },
    /// SN is not a number.
    #[error("MANSCDP SN {value:?} is not a number")]
    BadSn {
        /// The value, clipped.
        value: String,
    },
}

/// A MANSCDP message as far as the device cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manscdp {
    /// `Query`, `Control`, `Notify` or `Response`.
    pub root: String,
    /// `CmdType`, e.g. `Catalog`.
    pub cmd_type: String,
    /// `SN`, echoed in the response so the platform can match it.
    pub sn: u64,
    /// `DeviceID` the message is about.
    pub device_id: String,
}

/// Reads root, CmdType, SN and DeviceID.
pub fn parse(body: &[u8]) -> Result<Manscdp, ManscdpError> {
    let text = String::from_utf8_lossy(body);
    let root = root_name(&text).ok_or(ManscdpError::NoRoot)?;
    let missing = |element| ManscdpError::Missing {
        root: root.clone(),
        element,
    };
    let cmd_type = element(&text, "CmdType").ok_or_else(|| missing("CmdType"))?;
    let sn_text = element(&text, "SN").ok_or_else(|| missing("SN"))?;
    let sn = sn_text.parse().map_err(|_| ManscdpError::BadSn {
        value: crate::sink::gb28181::sip::clip(&sn_text),
    })?;
    let device_id = element(&text, "DeviceID").unwrap_or_default();
    Ok(Manscdp {
        root,
        cmd_type,
        sn,
        device_id,
    })
}

fn root_name(text: &str) -> Option<String> {
    let mut rest = text;
    loop {
        let i = rest.find('<')?;
        rest = &rest[i + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        let end = rest.find(|c: char| c == '>' || c == '/' || c.is_whitespace())?;
        let name = &rest[..end];
        return (!name.is_empty()).then(|| name.to_owned());
    }
}

/// Text of the first `<name>…</name>`, trimmed (attributes on the open tag tolerated).
fn element(text: &str, name: &str) -> Option<String> {
    let mut rest = text;
    loop {
        let i = rest.find('<')?;
        rest = &rest[i + 1..];
        let Some(after) = rest.strip_prefix(name) else {
            continue;
        };
        let c = after.chars().next()?;
        if c != '>' && !c.is_whitespace() {
            continue;
        }
        let gt = after.find('>')?;
        let content = &after[gt + 1..];
        let end = content.find("</")?;
        return Some(content[..end].trim().to_owned());
    }
}

/// Escapes text for an XML element.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const DECL: &str = "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n";

/// The periodic `Notify/Keepalive`.
pub fn keepalive(sn: u64, device_id: &str) -> String {
    format!(
        "{DECL}<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n",
        esc(device_id)
    )
}

/// Names the device shows on the platform; ASCII so the GB2312 declaration is always true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescription {
    /// Our device ID (`agentID`).
    pub device_id: String,
    /// The single video channel (`channel`).
    pub channel_id: String,
    /// Channel and device display name.
    pub name: String,
    /// `CivilCode` (first 10 digits of the platform ID by convention).
    pub civil_code: String,
    /// Keepalive interval we use, reported in ConfigDownload so the platform's timeout fits.
    pub heartbeat_interval_s: u64,
    /// Registration expiry we ask for.
    pub expires_s: u64,
}

/// Our answer to a query, or `None` for query types we do not serve (they still get 200 OK).
pub fn response(query: &Manscdp, dev: &DeviceDescription, now_local: &str) -> Option<String> {
    if query.root != "Query" {
        return None;
    }
    let id = esc(&dev.device_id);
    let mut s = format!(
        "{DECL}<Response>\r\n<CmdType>{}</CmdType>\r\n<SN>{}</SN>\r\n<DeviceID>{id}</DeviceID>\r\n",
        esc(&query.cmd_type),
        query.sn
    );
    match query.cmd_type.as_str() {
        "Catalog" => {
            let _ = write!(
                s,
                "<SumNum>1</SumNum>\r\n<DeviceList Num=\"1\">\r\n<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<Manufacturer>DJI</Manufacturer>\r\n<Model>Dock</Model>\r\n<Owner>Owner</Owner>\r\n<CivilCode>{}</CivilCode>\r\n<Address>Address</Address>\r\n<Parental>0</Parental>\r\n<ParentID>{id}</ParentID>\r\n<SafetyWay>0</SafetyWay>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n<Status>ON</Status>\r\n<Longitude>0.0</Longitude>\r\n<Latitude>0.0</Latitude>\r\n</Item>\r\n</DeviceList>\r\n",
                esc(&dev.channel_id),
                esc(&dev.name),
                esc(&dev.civil_code)
            );
        }
        "DeviceInfo" => {
            let _ = write!(
                s,
                "<DeviceName>{}</DeviceName>\r\n<Result>OK</Result>\r\n<Manufacturer>DJI</Manufacturer>\r\n<Model>Dock</Model>\r\n<Firmware>{}</Firmware>\r\n<Channel>1</Channel>\r\n",
                esc(&dev.name),
                env!("CARGO_PKG_VERSION")
            );
        }
        "DeviceStatus" => {
            let _ = write!(
                s,
                "<Result>OK</Result>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n<Encode>ON</Encode>\r\n<Record>OFF</Record>\r\n<DeviceTime>{}</DeviceTime>\r\n<Alarmstatus Num=\"0\">\r\n</Alarmstatus>\r\n",
                esc(now_local)
            );
        }
        "ConfigDownload" => {
            let _ = write!(
                s,
                "<Result>OK</Result>\r\n<BasicParam>\r\n<Name>{}</Name>\r\n<Expiration>{}</Expiration>\r\n<HeartBeatInterval>{}</HeartBeatInterval>\r\n<HeartBeatCount>3</HeartBeatCount>\r\n</BasicParam>\r\n",
                esc(&dev.name),
                dev.expires_s,
                dev.heartbeat_interval_s
            );
        }
        _ => return None,
    }
    s.push_str("</Response>\r\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev() -> DeviceDescription {
        DeviceDescription {
            device_id: "34020000001320000001".into(),
            channel_id: "34020000001310000001".into(),
            name: "DJI Dock Camera".into(),
            civil_code: "3402000000".into(),
            heartbeat_interval_s: 60,
            expires_s: 3600,
        }
    }

    #[test]
    fn reads_a_wvp_catalog_query_in_gb2312() {
        let mut body = b"<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n  <CmdType>Catalog</CmdType>\r\n  <SN>248136</SN>\r\n  <DeviceID>34020000001320000001</DeviceID>\r\n<Name>".to_vec();
        body.extend_from_slice(&[0xc9, 0xe3, 0xcf, 0xf1, 0xbb, 0xfa]);
        body.extend_from_slice(b"</Name></Query>");
        let q = parse(&body).expect("query");
        assert_eq!(q.root, "Query");
        assert_eq!(q.cmd_type, "Catalog");
        assert_eq!(q.sn, 248136);
        assert_eq!(q.device_id, "34020000001320000001");
        let r = response(&q, &dev(), "2026-11-24T12:00:05").expect("answered");
        assert!(r.starts_with(DECL));
        assert!(r.contains("<SN>248136</SN>"));
        assert!(r.contains("<DeviceID>34020000001310000001</DeviceID>"));
        assert!(r.contains("<SumNum>1</SumNum>"));
        assert!(r.is_ascii());
    }

    #[test]
    fn other_queries_and_errors() {
        for cmd in ["DeviceInfo", "DeviceStatus", "ConfigDownload"] {
            let q = parse(format!("<Query><CmdType>{cmd}</CmdType><SN>7</SN></Query>").as_bytes())
                .expect("query");
            let r = response(&q, &dev(), "t").expect("answered");
            assert!(r.contains(&format!("<CmdType>{cmd}</CmdType>\r\n<SN>7</SN>")));
        }
        let q = parse(b"<Query><CmdType>RecordInfo</CmdType><SN>1</SN></Query>").expect("query");
        assert_eq!(response(&q, &dev(), "t"), None);
        assert_eq!(parse(b"hello"), Err(ManscdpError::NoRoot));
        assert!(matches!(
            parse(b"<Query><SN>1</SN></Query>"),
            Err(ManscdpError::Missing {
                element: "CmdType",
                ..
            })
        ));
        assert!(matches!(
            parse(b"<Query><CmdType>Catalog</CmdType><SN>x</SN></Query>"),
            Err(ManscdpError::BadSn { .. })
        ));
        // A prefix that only looks like the element must not match.
        let q =
            parse(b"<Query><CmdTypeX>no</CmdTypeX><CmdType>Catalog</CmdType><SN>2</SN></Query>")
                .expect("query");
        assert_eq!(q.cmd_type, "Catalog");
    }

    #[test]
    fn keepalive_is_the_notes_layout() {
        let k = keepalive(43, "34020000001320000001");
        assert!(k.contains("<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>43</SN>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>"));
        assert_eq!(
            parse(k.as_bytes()).expect("reads back").cmd_type,
            "Keepalive"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&data);
        }

        #[test]
        fn parse_never_panics_on_xml_like_text(parts in proptest::collection::vec("(<|</|>|<\\?|CmdType|SN|Query|[ -~]{0,6})", 0..30)) {
            let _ = parse(parts.concat().as_bytes());
        }
    }
}
