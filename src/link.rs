//! The MQTT link to the cloud's broker.
//!
//! One task owns the rumqttc event loop. It reconnects by itself with capped, jittered
//! backoff (rumqttc has none of its own), subscribes again after every ConnAck (the session is
//! clean), and re-announces the latest `live_capacity` and `live_status` after every ConnAck, so
//! a cloud that lost us sees the current state without asking. Media never waits on it: a
//! stream keeps running while the broker is away.

use crate::backoff::Backoff;
use crate::config::MqttConfig;
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Largest services payload accepted. Large enough that an absurd but well-formed request gets
/// an error reply instead of a dropped connection.
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// What the rest of the daemon asks of the link.
#[derive(Debug, Clone)]
pub enum LinkCommand {
    /// Publish once (a services reply). Dropped if the broker is unreachable: the cloud
    /// re-sends unanswered services.
    Publish {
        /// Topic.
        topic: String,
        /// JSON payload.
        payload: Vec<u8>,
        /// MQTT retain flag.
        retain: bool,
    },
    /// Publish now and again after every reconnect; the latest per (topic, key) wins.
    Announce {
        /// Topic.
        topic: String,
        /// Which state this is (`live_capacity`, `live_status`).
        key: &'static str,
        /// JSON payload.
        payload: Vec<u8>,
        /// MQTT retain flag.
        retain: bool,
    },
}

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The url is unusable.
    #[error("mqtt.url {url:?}: {why}")]
    Url {
        /// The url.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Settings of the link besides the broker config.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Broker and credentials.
    pub mqtt: MqttConfig,
    /// Client id.
    pub client_id: String,
    /// Topic of the services requests to subscribe to.
    pub services_topic: String,
}

/// The system CA bundle used for `mqtts://` when no `ca_file` is configured.
fn system_ca_bundle() -> String {
    std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into())
}

fn read(path: &str) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|source| LinkError::File {
        path: path.to_string(),
        source,
    })
}

/// Builds rumqttc options from the config.
pub fn options(settings: &LinkSettings) -> Result<MqttOptions, LinkError> {
    let cfg = &settings.mqtt;
    let bad = |why: &str| LinkError::Url {
        url: cfg.url.clone(),
        why: why.to_string(),
    };
    let url = url::Url::parse(&cfg.url).map_err(|e| bad(&e.to_string()))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => return Err(bad(&format!("scheme {other} is not mqtt or mqtts"))),
    };
    let host = url.host_str().ok_or_else(|| bad("no host"))?;
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut opts = MqttOptions::new(settings.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.into()));
    opts.set_clean_session(true);
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(user) = &cfg.username {
        let pass = cfg.password.as_ref().map(|p| p.expose()).unwrap_or("");
        opts.set_credentials(user.clone(), pass);
    }
    if tls {
        let ca = read(&cfg.ca_file.clone().unwrap_or_else(system_ca_bundle))?;
        let client_auth = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(opts)
}

/// TCP options for every broker connection.
///
/// Without TCP_NODELAY a reply written right after the PUBACK of its request waits for the
/// broker's delayed ACK (about 40 ms on Linux) before it leaves: Nagle's algorithm.
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    net
}

/// Runs the link until `cancel` fires; services payloads go to `services`.
pub async fn run(
    settings: LinkSettings,
    opts: MqttOptions,
    services: mpsc::Sender<Bytes>,
    mut commands: mpsc::Receiver<LinkCommand>,
    connected_tx: tokio::sync::watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    eventloop.set_network_options(network_options());
    let mut announced: BTreeMap<(String, &'static str), (Vec<u8>, bool)> = BTreeMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    // Since when the broker has accepted us; `None` while it has not.
    let mut connected_at: Option<tokio::time::Instant> = None;
    let publish = |topic: &str, payload: &[u8], retain: bool| {
        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, retain, payload.to_vec()) {
            warn!("MQTT publish to {topic} dropped: {e}");
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            cmd = commands.recv() => match cmd {
                Some(LinkCommand::Publish { topic, payload, retain }) => {
                    if connected_at.is_some() {
                        publish(&topic, &payload, retain);
                    } else {
                        debug!("broker unreachable; reply on {topic} dropped");
                    }
                }
                Some(LinkCommand::Announce { topic, key, payload, retain }) => {
                    if connected_at.is_some() {
                        publish(&topic, &payload, retain);
                    }
                    announced.insert((topic, key), (payload, retain));
                }
                None => break,
            },
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    info!(code = ?ack.code, "connected to the MQTT broker");
                    connected_at = Some(tokio::time::Instant::now());
                    connected_tx.send_replace(true);
                    if let Err(e) = client.try_subscribe(&settings.services_topic, QoS::AtLeastOnce) {
                        warn!("subscribe to {} failed: {e}", settings.services_topic);
                    }
                    for ((topic, _), (payload, retain)) in &announced {
                        publish(topic, payload, *retain);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic == settings.services_topic {
                        if services.try_send(p.payload).is_err() {
                            warn!("live manager is busy; a services request was dropped");
                        }
                    } else {
                        debug!(topic = %p.topic, "ignored a message on an unexpected topic");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    debug!("subscribed to {}", settings.services_topic);
                }
                Ok(_) => {}
                Err(e) => {
                    connected_tx.send_replace(false);
                    if let Some(at) = connected_at.take() {
                        backoff.connection_ended(at.elapsed());
                    }
                    let delay = backoff.next_delay(&mut rand::rng());
                    warn!(
                        attempt = backoff.attempt(),
                        "MQTT link down ({e}); retrying in {} ms",
                        delay.as_millis()
                    );
                    // Keep taking commands while waiting, so the latest state is what gets
                    // announced on reconnect and senders never block.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            _ = cancel.cancelled() => return,
                            cmd = commands.recv() => match cmd {
                                Some(LinkCommand::Announce { topic, key, payload, retain }) => {
                                    announced.insert((topic, key), (payload, retain));
                                }
                                Some(LinkCommand::Publish { topic, .. }) => {
                                    debug!("broker unreachable; reply on {topic} dropped");
                                }
                                None => return,
                            },
                        }
                    }
                }
            },
        }
    }
    // Give the final status and the DISCONNECT a moment to leave.
    if connected_at.is_some() {
        while let Ok(cmd) = commands.try_recv() {
            let (LinkCommand::Publish {
                topic,
                payload,
                retain,
            }
            | LinkCommand::Announce {
                topic,
                payload,
                retain,
                ..
            }) = cmd;
            publish(&topic, &payload, retain);
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}
