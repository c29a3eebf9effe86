//! The MQTT link to the cloud's broker.
//!
//! A task of its own drives the rumqttc event loop, never interrupted (see `poll_loop`), and
//! reconnects with capped, jittered backoff (rumqttc has none of its own). The link task beside
//! it takes the daemon's commands, subscribes again after every ConnAck (the session is
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

/// What the poller task hands the link.
enum Polled {
    /// An event of the connection.
    Event(Event),
    /// The connection failed or could not be made; the poller tries again after `retry_in`.
    Down {
        /// Why.
        error: rumqttc::ConnectionError,
        /// Failures in a row.
        attempt: u32,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
}

/// Drives rumqttc's event loop on a task of its own, reconnecting with backoff.
///
/// `EventLoop::poll` is not cancel-safe, so it is never raced against anything: a connect in
/// progress that is dropped starts over from nothing (over a slow 4G link, again and again
/// while the daemon has news to announce), and a publish given its packet id but dropped before
/// it was written holds an in-flight slot for good, until none is left and replies stop.
async fn poll_loop(mut eventloop: rumqttc::EventLoop, to_link: mpsc::Sender<Polled>) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    // Since when the broker has accepted us; `None` while it has not.
    let mut connected_at: Option<tokio::time::Instant> = None;
    loop {
        let polled = match eventloop.poll().await {
            Ok(event) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    connected_at = Some(tokio::time::Instant::now());
                }
                to_link.send(Polled::Event(event)).await
            }
            Err(error) => {
                if let Some(at) = connected_at.take() {
                    backoff.connection_ended(at.elapsed());
                }
                let retry_in = backoff.next_delay(&mut rand::rng());
                let down = Polled::Down {
                    error,
                    attempt: backoff.attempt(),
                    retry_in,
                };
                let sent = to_link.send(down).await;
                tokio::time::sleep(retry_in).await;
                sent
            }
        };
        if polled.is_err() {
            return; // the link has ended
        }
    }
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
    let (polled_tx, mut polled) = mpsc::channel(64);
    let poller = tokio::spawn(poll_loop(eventloop, polled_tx));
    // Aborted however the link ends, so the connection never outlives it.
    let _poller = AbortOnDrop(poller);
    let mut announced: BTreeMap<(String, &'static str), (Vec<u8>, bool)> = BTreeMap::new();
    let mut connected = false;
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
                    if connected {
                        publish(&topic, &payload, retain);
                    } else {
                        debug!("broker unreachable; reply on {topic} dropped");
                    }
                }
                // Kept while the broker is away too, so the latest state is what gets
                // announced on reconnect.
                Some(LinkCommand::Announce { topic, key, payload, retain }) => {
                    if connected {
                        publish(&topic, &payload, retain);
                    }
                    announced.insert((topic, key), (payload, retain));
                }
                None => break,
            },
            event = polled.recv() => match event {
                Some(Polled::Event(Event::Incoming(Packet::ConnAck(ack)))) => {
                    info!(code = ?ack.code, "connected to the MQTT broker");
                    connected = true;
                    connected_tx.send_replace(true);
                    if let Err(e) = client.try_subscribe(&settings.services_topic, QoS::AtLeastOnce) {
                        warn!("subscribe to {} failed: {e}", settings.services_topic);
                    }
                    for ((topic, _), (payload, retain)) in &announced {
                        publish(topic, payload, *retain);
                    }
                }
                Some(Polled::Event(Event::Incoming(Packet::Publish(p)))) => {
                    if p.topic == settings.services_topic {
                        if services.try_send(p.payload).is_err() {
                            warn!("live manager is busy; a services request was dropped");
                        }
                    } else {
                        debug!(topic = %p.topic, "ignored a message on an unexpected topic");
                    }
                }
                Some(Polled::Event(Event::Incoming(Packet::SubAck(_)))) => {
                    debug!("subscribed to {}", settings.services_topic);
                }
                Some(Polled::Event(_)) => {}
                Some(Polled::Down { error, attempt, retry_in }) => {
                    connected = false;
                    connected_tx.send_replace(false);
                    warn!(
                        attempt,
                        "MQTT link down ({error}); retrying in {} ms",
                        retry_in.as_millis()
                    );
                }
                // The poller cannot end while this end is open, short of a panic.
                None => break,
            },
        }
    }
    // Give the final status and the DISCONNECT a moment to leave.
    if connected {
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
            while let Some(event) = polled.recv().await {
                if matches!(
                    event,
                    Polled::Event(Event::Outgoing(rumqttc::Outgoing::Disconnect))
                        | Polled::Down { .. }
                ) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
