//! The cloud side of the DJI Cloud API, as a raw MQTT client.
//!
//! Built only on rumqttc and `serde_json::Value`, never on the crate's own `cloud` types: the
//! tests must judge the daemon's messages by the wire format, not by the code under test.

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS, RecvTimeoutError};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Large enough for the 1 MB malformed-payload test, in both directions.
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// One message the cloud client received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic it arrived on.
    pub topic: String,
    /// Parsed payload (`Value::Null` when it was not JSON; see `raw`).
    pub json: Value,
    /// Payload bytes as received.
    pub raw: Vec<u8>,
    /// The broker's retain flag (set for a retained message delivered on subscribe).
    pub retain: bool,
    /// When the client received it.
    pub at: Instant,
}

impl Received {
    /// `data` of the envelope (`Value::Null` if absent).
    pub fn data(&self) -> &Value {
        self.json.get("data").unwrap_or(&Value::Null)
    }
}

/// Connection-level happenings, for tests that care about reconnects.
#[derive(Debug)]
enum Note {
    Message(Received),
    ConnAck,
}

/// A cloud-side MQTT client for one gateway.
///
/// Subscribes to `thing/product/{gw}/services_reply` and `thing/product/{gw}/state` (again after
/// every reconnect), and a background thread collects every message it receives. Waits look at
/// everything received so far, so a reply that arrives before the test starts waiting for it
/// is not lost.
pub struct CloudClient {
    gateway: String,
    client: Client,
    rx: Receiver<Note>,
    history: Vec<Received>,
    /// Index into `history` below which `wait_state` no longer looks.
    state_cursor: usize,
    connacks: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CloudClient {
    /// Connects anonymously to the broker on 127.0.0.1:`port` for gateway `gateway_sn` and waits
    /// (up to 10 s) until the subscriptions are in place.
    pub fn connect(port: u16, gateway_sn: &str) -> CloudClient {
        Self::connect_with(port, gateway_sn, None)
    }

    /// Like [`CloudClient::connect`], with an MQTT username and password.
    pub fn connect_with(
        port: u16,
        gateway_sn: &str,
        credentials: Option<(&str, &str)>,
    ) -> CloudClient {
        let id = format!("cloud-test-{}", uuid::Uuid::new_v4().simple());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some((user, pass)) = credentials {
            opts.set_credentials(user, pass);
        }
        let (client, mut connection) = Client::new(opts, 64);
        // Like a real cloud's client (and the daemon's), without Nagle's 40 ms stalls.
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(net);
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let topics = vec![
            format!("thing/product/{gateway_sn}/services_reply"),
            format!("thing/product/{gateway_sn}/state"),
        ];
        let thread = {
            let client = client.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("cloud-mqtt".into())
                .spawn(move || pump(connection, client, topics, tx, stop))
                .expect("spawn the MQTT client thread")
        };
        let mut cloud = CloudClient {
            gateway: gateway_sn.to_string(),
            client,
            rx,
            history: Vec::new(),
            state_cursor: 0,
            connacks: 0,
            stop,
            thread: Some(thread),
        };
        cloud.wait_connected(1, Duration::from_secs(10));
        cloud
    }

    /// Waits until the client has been connected (ConnAck received) at least `n` times in
    /// total, i.e. until it has reconnected after a broker restart; panics after `timeout`.
    pub fn wait_connected(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.connacks < n {
            assert!(
                self.pull_until(deadline),
                "cloud client: no MQTT connection #{n} within {timeout:?}"
            );
        }
        // The subscriptions go out right after the ConnAck; give the broker a moment to
        // register them before the test publishes anything that depends on them.
        std::thread::sleep(Duration::from_millis(200));
        self.drain();
    }

    /// The gateway serial this client talks to.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Publishes a service request `{tid, bid, timestamp, method, data}` with fresh uuids on
    /// `thing/product/{gw}/services`; returns `(tid, bid)`.
    pub fn send_service(&self, method: &str, data: Value) -> (String, String) {
        let tid = uuid::Uuid::new_v4().to_string();
        let bid = uuid::Uuid::new_v4().to_string();
        let msg = json!({
            "tid": tid,
            "bid": bid,
            "timestamp": now_ms(),
            "method": method,
            "data": data,
        });
        self.send_raw(msg.to_string().into_bytes());
        (tid, bid)
    }

    /// Publishes `payload` as it is on the services topic (QoS 1), for malformed requests.
    pub fn send_raw(&self, payload: Vec<u8>) {
        let topic = format!("thing/product/{}/services", self.gateway);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .expect("queue a publish on the MQTT client");
    }

    /// Waits for the `services_reply` whose `tid` is `tid`; panics after `timeout`.
    pub fn wait_reply(&mut self, tid: &str, timeout: Duration) -> Value {
        match self.try_wait_reply(tid, timeout) {
            Some(v) => v,
            None => panic!(
                "no services_reply with tid {tid} within {timeout:?}; replies seen: {}",
                self.replies_summary()
            ),
        }
    }

    /// Like [`CloudClient::wait_reply`] but returns `None` after `timeout`.
    pub fn try_wait_reply(&mut self, tid: &str, timeout: Duration) -> Option<Value> {
        let want = Value::String(tid.to_string());
        self.try_wait_reply_with_tid(&want, timeout)
    }

    /// Waits for the `services_reply` whose `tid` matches `tid`; `None` after `timeout`.
    ///
    /// For requests that sent a non-string tid (a malformed-input test), an echo as the same
    /// number or as its decimal string both count as carrying that tid.
    pub fn try_wait_reply_with_tid(&mut self, tid: &Value, timeout: Duration) -> Option<Value> {
        let want = tid_text(tid)?;
        self.wait_message(0, timeout, |m| {
            m.topic.ends_with("/services_reply")
                && m.json.get("tid").and_then(tid_text).as_deref() == Some(want.as_str())
        })
        .map(|i| self.history[i].json.clone())
    }

    /// Waits for the first `state` message not yet returned by an earlier state wait whose
    /// `data` has `key` and whose `data[key]` satisfies `pred`; returns `data[key]`.
    ///
    /// State waits consume: a later wait only sees messages after the one matched here, so
    /// "status 1, then status 0" waits see the messages in the order they were sent.
    pub fn wait_state(
        &mut self,
        key: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let m = self.wait_state_message(key, pred, timeout);
        m.data()[key].clone()
    }

    /// Like [`CloudClient::wait_state`] but returns the whole message (topic, envelope, retain
    /// flag).
    pub fn wait_state_message(
        &mut self,
        key: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Received {
        match self.try_wait_state_message(key, pred, timeout) {
            Some(m) => m,
            None => panic!(
                "no state message with a matching `{key}` within {timeout:?}; state messages seen: {}",
                self.states_summary()
            ),
        }
    }

    /// Like [`CloudClient::wait_state_message`] but returns `None` after `timeout`.
    pub fn try_wait_state_message(
        &mut self,
        key: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Received> {
        let from = self.state_cursor;
        let i = self.wait_message(from, timeout, |m| {
            m.topic.ends_with("/state") && m.data().get(key).is_some_and(&pred)
        })?;
        self.state_cursor = i + 1;
        Some(self.history[i].clone())
    }

    /// Makes later state waits ignore every state message received so far (e.g. to require a
    /// fresh `live_capacity` after a broker restart).
    pub fn skip_received_states(&mut self) {
        self.drain();
        self.state_cursor = self.history.len();
    }

    /// Every message received so far.
    pub fn received(&mut self) -> &[Received] {
        self.drain();
        &self.history
    }

    /// How many times the client has connected (1 + reconnects).
    pub fn connections(&mut self) -> usize {
        self.drain();
        self.connacks
    }

    fn wait_message(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        let mut checked = from;
        loop {
            self.drain();
            while checked < self.history.len() {
                if pred(&self.history[checked]) {
                    return Some(checked);
                }
                checked += 1;
            }
            if !self.pull_until(deadline) {
                return None;
            }
        }
    }

    /// Moves everything the background thread has collected into `history`.
    fn drain(&mut self) {
        while let Ok(note) = self.rx.try_recv() {
            self.record(note);
        }
    }

    /// Blocks for the next note until `deadline`; false when the deadline passed first.
    fn pull_until(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match self.rx.recv_timeout(left) {
            Ok(note) => {
                self.record(note);
                true
            }
            Err(_) => false,
        }
    }

    fn record(&mut self, note: Note) {
        match note {
            Note::Message(m) => self.history.push(m),
            Note::ConnAck => self.connacks += 1,
        }
    }

    fn replies_summary(&mut self) -> String {
        self.drain();
        summarize(
            self.history
                .iter()
                .filter(|m| m.topic.ends_with("/services_reply")),
        )
    }

    fn states_summary(&mut self) -> String {
        self.drain();
        summarize(self.history.iter().filter(|m| m.topic.ends_with("/state")))
    }
}

impl Drop for CloudClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            // The pump wakes at least every 200 ms to look at `stop`.
            let _ = t.join();
        }
    }
}

/// The background loop: drives the connection, re-subscribes on every ConnAck (clean
/// sessions forget subscriptions) and forwards messages. Ends when `stop` is set or the
/// client handle is gone; a broker that is down is retried every 200 ms.
fn pump(
    mut connection: Connection,
    client: Client,
    topics: Vec<String>,
    tx: mpsc::Sender<Note>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match connection.recv_timeout(Duration::from_millis(200)) {
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                for t in &topics {
                    let _ = client.try_subscribe(t.clone(), QoS::AtLeastOnce);
                }
                if tx.send(Note::ConnAck).is_err() {
                    break;
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let raw = p.payload.to_vec();
                let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                let m = Received {
                    topic: p.topic.clone(),
                    json,
                    raw,
                    retain: p.retain,
                    at: Instant::now(),
                };
                if tx.send(Note::Message(m)).is_err() {
                    break;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A tid as text: strings as they are, numbers in decimal; anything else is no tid.
fn tid_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn summarize<'a>(msgs: impl Iterator<Item = &'a Received>) -> String {
    let all: Vec<String> = msgs
        .map(|m| {
            let full = String::from_utf8_lossy(&m.raw);
            let mut s: String = full.chars().take(400).collect();
            if s.len() < full.len() {
                s.push('…');
            }
            format!("\n  {} {}", m.topic, s)
        })
        .collect();
    if all.is_empty() {
        "(none)".to_string()
    } else {
        all.concat()
    }
}

/// Milliseconds since the Unix epoch, for the envelope's `timestamp`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
