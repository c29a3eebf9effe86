//! One STUN Binding request (RFC 8489) to learn our public address for a server-reflexive
//! candidate. str0m does no gathering of its own, and behind a NAT the host candidate alone
//! only works when the WHIP server is reachable and does ICE towards it.
//!
//! The message code is pure; [`reflexive_address`] is the small IO shell.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

const MAGIC_COOKIE: u32 = 0x2112_a442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// A Binding request with transaction id `tid` and no attributes.
pub fn binding_request(tid: &[u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Length 0: no attributes.
    m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[8..20].copy_from_slice(tid);
    m
}

/// The mapped address of a Binding success response to `tid`; `None` for anything else
/// (another transaction, an error response, a truncated or malformed message).
pub fn parse_binding_response(buf: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if buf.len() < 20 {
        return None;
    }
    let msg_type = u16::from_be_bytes([buf[0], buf[1]]);
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if msg_type != BINDING_SUCCESS || cookie != MAGIC_COOKIE || &buf[8..20] != tid {
        return None;
    }
    let attrs = buf.get(20..20 + len)?;
    let mut plain = None;
    let mut i = 0;
    // Each step advances by at least 4 bytes, bounded by the message length.
    while i + 4 <= attrs.len() {
        let typ = u16::from_be_bytes([attrs[i], attrs[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]]));
        let value = attrs.get(i + 4..i + 4 + alen)?;
        match typ {
            ATTR_XOR_MAPPED_ADDRESS => return address(value, Some(tid)),
            ATTR_MAPPED_ADDRESS => plain = address(value, None),
            _ => {}
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    plain
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `xor` carries the transaction id when XORed.
fn address(v: &[u8], xor: Option<&[u8; 12]>) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = if xor.is_some() {
        port ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        port
    };
    let ip = match family {
        0x01 => {
            let mut a: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            if xor.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        0x02 => {
            let mut a: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            if let Some(tid) = xor {
                let key = cookie.iter().chain(tid.iter());
                for (b, k) in a.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Asks `server` for our reflexive address from `socket`: up to 3 requests within `limit`.
/// `None` when the server does not answer in time; a missing STUN server must not stop a
/// publish that may well work with the host candidate.
pub async fn reflexive_address(
    socket: &UdpSocket,
    server: SocketAddr,
    limit: Duration,
) -> Option<SocketAddr> {
    let tid: [u8; 12] = rand::random();
    let request = binding_request(&tid);
    let mut buf = [0u8; 576];
    let deadline = tokio::time::Instant::now() + limit;
    let step = limit / 3;
    for _ in 0..3 {
        if socket.send_to(&request, server).await.is_err() {
            return None;
        }
        let until = (tokio::time::Instant::now() + step).min(deadline);
        loop {
            match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(_)) => continue,
                Ok(Ok((n, from))) => {
                    if from != server {
                        continue;
                    }
                    if let Some(addr) = parse_binding_response(&buf[..n], &tid) {
                        return Some(addr);
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// RFC 5769 §2.2, the IPv4 sample response.
    const RFC5769_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    #[test]
    fn request_layout() {
        let r = binding_request(&TID);
        assert_eq!(&r[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&r[8..], &TID);
    }

    #[test]
    fn rfc5769_ipv4_response() {
        assert_eq!(
            parse_binding_response(&RFC5769_V4, &TID),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn other_transactions_and_truncations_are_ignored() {
        let mut other = TID;
        other[0] ^= 1;
        assert_eq!(parse_binding_response(&RFC5769_V4, &other), None);
        for n in 0..RFC5769_V4.len() {
            // A truncated copy claims more attributes than it has: refused, never a panic.
            assert_eq!(parse_binding_response(&RFC5769_V4[..n], &TID), None, "{n}");
        }
        let mut error = RFC5769_V4;
        error[0] = 0x01;
        error[1] = 0x11; // Binding error response
        assert_eq!(parse_binding_response(&error, &TID), None);
    }

    #[test]
    fn ipv6_xor_and_plain_mapped_address() {
        let ip: Ipv6Addr = "2001:db8:1234:5678:11:2233:4455:6677".parse().unwrap();
        let mut value = vec![0, 2];
        value.extend_from_slice(&(32853u16 ^ 0x2112).to_be_bytes());
        let key: Vec<u8> = MAGIC_COOKIE
            .to_be_bytes()
            .iter()
            .chain(&TID)
            .copied()
            .collect();
        value.extend(ip.octets().iter().zip(&key).map(|(a, k)| a ^ k));
        let mut msg = vec![0x01, 0x01, 0, 24, 0x21, 0x12, 0xa4, 0x42];
        msg.extend_from_slice(&TID);
        msg.extend_from_slice(&[0x00, 0x20, 0, 20]);
        msg.extend_from_slice(&value);
        assert_eq!(
            parse_binding_response(&msg, &TID),
            Some(SocketAddr::new(IpAddr::V6(ip), 32853))
        );
        let mut plain = vec![0x01, 0x01, 0, 12, 0x21, 0x12, 0xa4, 0x42];
        plain.extend_from_slice(&TID);
        plain.extend_from_slice(&[0x00, 0x01, 0, 8, 0, 1, 0x0d, 0x96, 203, 0, 113, 5]);
        assert_eq!(
            parse_binding_response(&plain, &TID),
            Some("203.0.113.5:3478".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn asks_a_stun_server_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let responder = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            assert_eq!(n, 20);
            let mut resp = vec![0x01, 0x01, 0, 12, 0x21, 0x12, 0xa4, 0x42];
            resp.extend_from_slice(&buf[8..20]);
            resp.extend_from_slice(&[0x00, 0x20, 0, 8, 0, 1]);
            resp.extend_from_slice(&(from.port() ^ 0x2112).to_be_bytes());
            resp.extend_from_slice(&[127 ^ 0x21, 0x12, 0xa4, 1 ^ 0x42]);
            server.send_to(&resp, from).await.unwrap();
        });
        let got = reflexive_address(&client, server_addr, Duration::from_secs(2)).await;
        assert_eq!(got, Some(client_addr));
        responder.await.unwrap();
        // Nobody listening: gives up within the limit.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = std::time::Instant::now();
        let got = reflexive_address(
            &client,
            silent.local_addr().unwrap(),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(got, None);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_binding_response(&data, &TID);
        }

        #[test]
        fn arbitrary_attributes_never_panic(attrs in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut msg = vec![0x01, 0x01];
            msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
            msg.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            msg.extend_from_slice(&TID);
            msg.extend_from_slice(&attrs);
            let _ = parse_binding_response(&msg, &TID);
        }
    }
}
