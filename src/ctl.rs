//! `dockcast ctl`: the cloud's side of the live API in one command.
//!
//! Operators and the hardware-in-the-loop test drive a dock (or dockcast) with it: it sends one
//! services request, waits for the reply with the same tid, prints the reply and exits 0 only
//! when `result` is 0. It speaks raw JSON, so it works against a real dock as well.

use crate::cloud::redact_url_str;
use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The request to send.
#[derive(Debug, Clone)]
pub enum CtlRequest {
    /// `live_start_push`.
    Start {
        /// Push url.
        url: String,
        /// 0 Agora, 1 RTMP, 3 GB28181, 4 WHIP.
        url_type: u8,
        /// `{sn}/{camera}/{video}`.
        video_id: String,
        /// 0–4.
        quality: u8,
    },
    /// `live_stop_push`.
    Stop {
        /// Video to stop.
        video_id: String,
    },
    /// `live_set_quality`.
    Quality {
        /// Video to change.
        video_id: String,
        /// 0–4.
        quality: u8,
    },
    /// `live_lens_change`.
    Lens {
        /// normal, wide, zoom, ir.
        lens: String,
        /// Optional: without it the dock picks its one switchable live stream.
        video_id: Option<String>,
    },
    /// Print the `live_capacity` the gateway announced. dockcast retains it, so it comes at
    /// once; from a dock that does not retain its state it comes with the next announcement,
    /// or the command times out.
    Capacity,
}

impl CtlRequest {
    fn method_and_data(&self) -> Option<(&'static str, Value)> {
        Some(match self {
            CtlRequest::Start {
                url,
                url_type,
                video_id,
                quality,
            } => (
                "live_start_push",
                json!({"url": url, "url_type": url_type, "video_id": video_id, "video_quality": quality}),
            ),
            CtlRequest::Stop { video_id } => ("live_stop_push", json!({ "video_id": video_id })),
            CtlRequest::Quality { video_id, quality } => (
                "live_set_quality",
                json!({"video_id": video_id, "video_quality": quality}),
            ),
            CtlRequest::Lens { lens, video_id } => {
                let mut data = json!({ "video_type": lens });
                if let Some(id) = video_id {
                    data["video_id"] = json!(id);
                }
                ("live_lens_change", data)
            }
            CtlRequest::Capacity => return None,
        })
    }
}

fn options(mqtt_url: &str, username: Option<&str>, password: Option<&str>) -> Result<MqttOptions> {
    let url = url::Url::parse(mqtt_url)
        .with_context(|| format!("--mqtt-url {:?}", redact_url_str(mqtt_url)))?;
    // Credentials in the url would not be used, and every error after this one would print
    // them; the daemon's config refuses them the same way.
    if !url.username().is_empty() || url.password().is_some() {
        bail!("--mqtt-url must not carry credentials; use --username and --password (or DOCKCAST_MQTT_PASSWORD)");
    }
    if url.scheme() != "mqtt" {
        bail!("ctl speaks plain mqtt:// only; use a local listener or a tunnel for mqtts");
    }
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("--mqtt-url has no host"))?;
    let id = format!(
        "dockcast-ctl-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut opts = MqttOptions::new(id, host, url.port().unwrap_or(1883));
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(crate::link::MAX_PACKET, crate::link::MAX_PACKET);
    if let Some(user) = username {
        opts.set_credentials(user, password.unwrap_or(""));
    }
    Ok(opts)
}

/// Sends `request` to gateway `gateway_sn` and returns the reply (or the capacity) and whether
/// it means success.
pub async fn run(
    mqtt_url: &str,
    username: Option<&str>,
    password: Option<&str>,
    gateway_sn: &str,
    request: &CtlRequest,
    timeout: Duration,
) -> Result<(Value, bool)> {
    let (client, mut eventloop) = AsyncClient::new(options(mqtt_url, username, password)?, 16);
    eventloop.set_network_options(crate::link::network_options());
    let (topic, wanted) = match request {
        CtlRequest::Capacity => (format!("thing/product/{gateway_sn}/state"), None),
        other => (
            format!("thing/product/{gateway_sn}/services_reply"),
            other.method_and_data(),
        ),
    };
    let tid = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + timeout;
    let mut sent = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "no answer from gateway {gateway_sn} within {} s",
                timeout.as_secs()
            );
        }
        let event = tokio::time::timeout(left, eventloop.poll())
            .await
            .map_err(|_| {
                anyhow!(
                    "no answer from gateway {gateway_sn} within {} s",
                    timeout.as_secs()
                )
            })?
            .with_context(|| format!("MQTT broker at {}", redact_url_str(mqtt_url)))?;
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(&topic, QoS::AtLeastOnce).await?;
            }
            Event::Incoming(Packet::SubAck(ack)) if !sent => {
                // A request whose reply cannot be heard would still be carried out (a stream
                // started) while this command reported a timeout.
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    bail!("the broker refused the subscription to {topic}; nothing was sent");
                }
                sent = true;
                if let Some((method, data)) = &wanted {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
                    let msg = json!({
                        "tid": tid,
                        "bid": uuid::Uuid::new_v4().to_string(),
                        "timestamp": now,
                        "method": method,
                        "data": data,
                    });
                    client
                        .publish(
                            format!("thing/product/{gateway_sn}/services"),
                            QoS::AtLeastOnce,
                            false,
                            serde_json::to_vec(&msg)?,
                        )
                        .await?;
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(value) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                let done = match &wanted {
                    None => value["data"].get("live_capacity").is_some(),
                    Some(_) => value["tid"] == json!(tid),
                };
                if done {
                    let ok = wanted.is_none() || value["data"]["result"] == json!(0);
                    let _ = client.try_disconnect();
                    return Ok((value, ok));
                }
            }
            _ => {}
        }
    }
}
