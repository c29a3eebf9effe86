//! Configuration: a TOML file (`/etc/dockcast/dockcast.toml` by default), validated up front so
//! that a typo is reported with its key at start-up, not as a failed stream hours later.
//!
//! With no file at all, built-in defaults describe one synthetic test-pattern camera on the
//! gateway, so a newcomer can run the daemon and see a stream before writing any config.

use crate::media::quality::Ladder;
use crate::source::SourceSpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Where `dockcast run` looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/dockcast/dockcast.toml";

/// The lens names the DJI Cloud API uses in `video_type` and `switchable_video_types`.
pub const LENS_NAMES: [&str; 5] = ["normal", "wide", "zoom", "ir", "thermal"];

/// Dock 2/3 camera positions (`live_camera_change`), usable as extra inputs of a video.
pub const POSITION_NAMES: [&str; 2] = ["inside", "outside"];

/// Why a config cannot be used: the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys of the wrong type (toml's message names the key
    /// and line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{key}: {why}")]
    Invalid {
        /// Dotted path of the key, e.g. `device[0].camera[0].index`.
        key: String,
        /// What is wrong.
        why: String,
    },
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

/// A password or key that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The dock the daemon answers for.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The broker link.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// What each quality level means.
    #[serde(default)]
    pub quality: Ladder,
    /// Encoder settings common to all sessions.
    #[serde(default)]
    pub encoder: EncoderSettings,
    /// RTMP sink defaults.
    #[serde(default)]
    pub rtmp: RtmpSettings,
    /// WHIP sink defaults.
    #[serde(default)]
    pub whip: WhipSettings,
    /// GB/T 28181 device settings.
    #[serde(default)]
    pub gb28181: Gb28181Settings,
    /// The local health endpoint.
    #[serde(default)]
    pub health: HealthSettings,
    /// External adapter processes by name (Agora, SRT, ...), and which url_type each serves.
    #[serde(default)]
    pub adapters: BTreeMap<String, AdapterConfig>,
    /// Video-source devices (the dock itself, an aircraft) with their cameras.
    #[serde(default = "default_devices", rename = "device")]
    pub devices: Vec<DeviceConfig>,
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The dock serial the cloud addresses (`thing/product/{sn}/services`).
    pub sn: String,
    /// Streams the whole gateway may push at once (`coexist_video_number_max`).
    pub max_streams: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            sn: "DOCKCAST0000001".into(),
            max_streams: 2,
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// Client id; defaults to `dockcast-{gateway sn}`.
    pub client_id: Option<String>,
    /// Username, if the broker wants one.
    pub username: Option<String>,
    /// Password, never logged.
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the broker's certificate (mqtts); without it the
    /// system roots are used.
    pub ca_file: Option<String>,
    /// PEM client certificate for brokers that authenticate devices by certificate.
    pub client_cert_file: Option<String>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<String>,
    /// MQTT keep-alive in seconds.
    pub keep_alive_secs: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_secs: 30,
        }
    }
}

/// `[encoder]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderSettings {
    /// IDR interval in frames. One second at 30 fps lets a viewer join quickly.
    pub gop_frames: u32,
    /// Cisco's prebuilt `libopenh264.so` to encode with instead of the built-in encoder
    /// (needs a build with the `cisco-openh264` feature).
    pub openh264_library: Option<String>,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            gop_frames: 30,
            openh264_library: None,
        }
    }
}

impl EncoderSettings {
    /// The openh264 to encode with.
    pub fn backend(&self) -> crate::media::encoder::Backend {
        match &self.openh264_library {
            Some(path) => crate::media::encoder::Backend::Library(path.into()),
            None => crate::media::encoder::Backend::Builtin,
        }
    }
}

/// `[rtmp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpSettings {
    /// How long the first connect + publish may take before the start is answered with a
    /// connect error.
    pub connect_timeout_ms: u64,
    /// First reconnect delay after a dropped connection.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// Frames buffered between the pipeline and the socket before frames are dropped.
    pub queue_frames: usize,
    /// Extra CA (PEM) trusted for rtmps:// besides the system roots and `SSL_CERT_FILE`.
    pub ca_file: Option<String>,
    /// Accept any rtmps:// certificate. For test benches only; every connect logs a warning.
    pub insecure_skip_verify: bool,
}

impl Default for RtmpSettings {
    fn default() -> Self {
        RtmpSettings {
            connect_timeout_ms: 5000,
            backoff_initial_ms: 250,
            backoff_max_ms: 10_000,
            queue_frames: 60,
            ca_file: None,
            insecure_skip_verify: false,
        }
    }
}

/// `[whip]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhipSettings {
    /// How long the first POST + ICE + DTLS may take before the start is answered with a
    /// connect error.
    pub connect_timeout_ms: u64,
    /// STUN servers (`host:port`) asked for a server-reflexive candidate, for WHIP servers
    /// that are not on the box's own network.
    pub stun_servers: Vec<String>,
    /// Bearer tokens per WHIP server, keyed by `host` or `host:port` of the endpoint url. A
    /// token here wins over a `token` query parameter in the cloud's url.
    pub tokens: BTreeMap<String, Secret>,
}

impl Default for WhipSettings {
    fn default() -> Self {
        WhipSettings {
            connect_timeout_ms: 10_000,
            stun_servers: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }
}

impl WhipSettings {
    /// The configured token for an endpoint url, by `host:port` first, then `host`.
    pub fn token_for(&self, endpoint: &str) -> Option<&Secret> {
        let url = url::Url::parse(endpoint).ok()?;
        let host = url.host_str()?;
        url.port_or_known_default()
            .and_then(|p| self.tokens.get(&format!("{host}:{p}")))
            .or_else(|| self.tokens.get(host))
    }
}

/// `[health]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Address of the `/healthz` and `/metrics` endpoint, e.g. `127.0.0.1:9480`; off when
    /// unset. Keep it on loopback: it has no authentication.
    pub listen: Option<String>,
}

/// `[gb28181]`: how the device registers and where its media leaves from. The platform, the
/// IDs and the password come from the cloud's url.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gb28181Settings {
    /// `udp` or `tcp` signalling (SRS takes SIP over TCP only).
    pub sip_transport: String,
    /// Address the SIP and media sockets bind to.
    pub bind_ip: String,
    /// Address put in Contact, Via and SDP; needed behind NAT and for TCP-active media.
    /// Default: the local address that routes to the platform.
    pub advertise_ip: Option<String>,
    /// Fixed media port for firewalls; 0 picks one.
    pub media_port: u16,
    /// REGISTER Expires, seconds.
    pub expires_secs: u32,
    /// Keepalive MESSAGE interval, seconds.
    pub keepalive_secs: u32,
    /// Unanswered keepalives before re-registering.
    pub keepalive_max_missed: u32,
    /// Device name shown in the platform's catalog.
    pub name: String,
    /// Largest RTP packet sent, RTP header included (500..=1400); lower it for a path whose
    /// MTU would fragment 1400-byte packets (a VPN, a tunnel).
    pub rtp_packet_bytes: u16,
    /// Addresses besides the platform's (the url's `serverIP`) whose SIP is answered, for a
    /// platform that sends its INVITEs from another host. Everything else is ignored. They
    /// may also open the TCP media connection the platform dials (`a=setup:active`), as may
    /// the media server the INVITE names.
    pub accept_from: Vec<String>,
}

impl Default for Gb28181Settings {
    fn default() -> Self {
        Gb28181Settings {
            sip_transport: "udp".into(),
            bind_ip: "0.0.0.0".into(),
            advertise_ip: None,
            media_port: 0,
            expires_secs: 3600,
            keepalive_secs: 60,
            keepalive_max_missed: 3,
            name: "DJI Dock Camera".into(),
            rtp_packet_bytes: 1400,
            accept_from: Vec::new(),
        }
    }
}

/// `[adapters.NAME]`: an external process that takes the encoded video on its stdin and
/// publishes it by a protocol dockcast does not speak itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Program and arguments; `{key}` is replaced by a url field (`{url}`, `{channel}`,
    /// `{token}`, ...) or by `{video_id}`, `{sn}`, `{camera}`, `{fps}`.
    pub command: Vec<String>,
    /// `framed` (the documented DCAU records) or `annexb` (bare H.264, for `ffmpeg -f h264 -i -`).
    #[serde(default = "default_framing")]
    pub framing: String,
    /// `publishing` (ready when the adapter says so on stdout) or `spawn`.
    #[serde(default = "default_ready")]
    pub ready: String,
    /// Extra environment for the process; values are never logged.
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    /// The cloud url_type this adapter serves instead of a native sink (0 for Agora).
    pub url_type: Option<u8>,
    /// First restart delay after the process died.
    #[serde(default = "default_adapter_backoff_initial")]
    pub backoff_initial_ms: u64,
    /// Longest restart delay.
    #[serde(default = "default_adapter_backoff_max")]
    pub backoff_max_ms: u64,
    /// How long the first start may take before the cloud gets a connect error.
    #[serde(default = "default_adapter_ready_timeout")]
    pub ready_timeout_ms: u64,
    /// How long a publishing adapter may take no input before it is restarted
    /// (`AdapterOptions::stall_limit`).
    #[serde(default = "default_adapter_stall_timeout")]
    pub stall_timeout_ms: u64,
}

fn default_framing() -> String {
    "framed".into()
}
fn default_ready() -> String {
    "publishing".into()
}
fn default_adapter_backoff_initial() -> u64 {
    250
}
fn default_adapter_backoff_max() -> u64 {
    10_000
}
fn default_adapter_ready_timeout() -> u64 {
    15_000
}
fn default_adapter_stall_timeout() -> u64 {
    10_000
}

/// The placeholders an adapter command may use: the fields of every url type plus the video's.
pub const ADAPTER_FIELDS: [&str; 19] = [
    "url",
    "channel",
    "sn",
    "token",
    "uid",
    "server_ip",
    "server_port",
    "server_id",
    "agent_id",
    "agent_password",
    "local_port",
    "user_name",
    "password",
    "port",
    "video_id",
    "camera",
    "video_index",
    "fps",
    "url_type",
];

/// `[[device]]`: a video-source device (the dock itself, or an aircraft).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device serial; defaults to the gateway's.
    pub sn: Option<String>,
    /// Streams this device may push at once; defaults to the number of its videos.
    pub max_streams: Option<u32>,
    /// Cameras of the device.
    #[serde(rename = "camera", default)]
    pub cameras: Vec<CameraConfig>,
}

/// `[[device.camera]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// DJI camera index `{type}-{subtype}-{position}`, e.g. `165-0-7` for a dock camera.
    pub index: String,
    /// Streams this camera may push at once.
    #[serde(default = "one")]
    pub max_streams: u32,
    /// Videos of the camera.
    #[serde(rename = "video", default)]
    pub videos: Vec<VideoConfig>,
}

fn one() -> u32 {
    1
}

/// `[[device.camera.video]]`: one stream the cloud can start, with the inputs it can switch
/// between.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// DJI video index, e.g. `normal-0`.
    pub index: String,
    /// The lens a start begins with; defaults to the first of `sources`.
    pub lens: Option<String>,
    /// Source per lens (`normal`, `wide`, `zoom`, `ir`, `thermal`) — the lenses advertised as
    /// `switchable_video_types`.
    pub sources: BTreeMap<String, String>,
    /// Sources for Dock 2/3 camera positions (`inside`, `outside`), for `live_camera_change`.
    #[serde(default)]
    pub positions: BTreeMap<String, String>,
}

impl VideoConfig {
    /// The lens a start begins with.
    pub fn start_lens(&self) -> &str {
        self.lens
            .as_deref()
            .or_else(|| self.sources.keys().next().map(String::as_str))
            .unwrap_or("normal")
    }
}

fn default_devices() -> Vec<DeviceConfig> {
    let sources = ["normal", "wide", "zoom", "ir"]
        .into_iter()
        .map(|l| (l.to_string(), "pattern".to_string()))
        .collect();
    vec![DeviceConfig {
        sn: None,
        max_streams: None,
        cameras: vec![CameraConfig {
            index: "165-0-7".into(),
            max_streams: 1,
            videos: vec![VideoConfig {
                index: "normal-0".into(),
                lens: Some("normal".into()),
                sources,
                positions: BTreeMap::new(),
            }],
        }],
    }]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway: GatewayConfig::default(),
            mqtt: MqttConfig::default(),
            quality: Ladder::default(),
            encoder: EncoderSettings::default(),
            rtmp: RtmpSettings::default(),
            whip: WhipSettings::default(),
            gb28181: Gb28181Settings::default(),
            health: HealthSettings::default(),
            adapters: BTreeMap::new(),
            devices: default_devices(),
        }
    }
}

fn is_sn(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_camera_index(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_video_index(s: &str) -> bool {
    match s.split_once('-') {
        Some((kind, n)) => {
            !kind.is_empty()
                && kind.bytes().all(|b| b.is_ascii_lowercase())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The serial of device `i` (its own, or the gateway's).
    pub fn device_sn(&self, i: usize) -> &str {
        self.devices
            .get(i)
            .and_then(|d| d.sn.as_deref())
            .unwrap_or(&self.gateway.sn)
    }

    /// The MQTT client id in use.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("dockcast-{}", self.gateway.sn))
    }

    /// `new` as a reload applies it, and the keys of the settings it changed that only a
    /// restart applies; those keep their running values. The broker link and the serial it
    /// answers for are set up once, as are the health endpoint's socket and the encoder
    /// library. The serial above all: cameras without a serial of their own take the
    /// gateway's, and video IDs built from a serial the link does not answer for would stop
    /// every stream and fail every command until the restart. The keys are for telling the
    /// operator, instead of the change being dropped silently.
    pub fn for_reload(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        let mut kept = Vec::new();
        if new.mqtt != self.mqtt {
            kept.push("[mqtt]");
            new.mqtt = self.mqtt.clone();
        }
        if new.gateway.sn != self.gateway.sn {
            kept.push("gateway.sn");
            new.gateway.sn = self.gateway.sn.clone();
        }
        if new.health != self.health {
            kept.push("[health]");
            new.health = self.health.clone();
        }
        if new.encoder.openh264_library != self.encoder.openh264_library {
            kept.push("encoder.openh264_library");
            new.encoder.openh264_library = self.encoder.openh264_library.clone();
        }
        (new, kept)
    }

    /// Points every input of the first video at one source (`dockcast run --source`).
    pub fn override_source(&mut self, uri: &str) -> Result<(), ConfigError> {
        uri.parse::<SourceSpec>()
            .map_err(|e| invalid("--source", e.to_string()))?;
        let video = self
            .devices
            .iter_mut()
            .flat_map(|d| d.cameras.iter_mut())
            .flat_map(|c| c.videos.iter_mut())
            .next()
            .ok_or_else(|| invalid("--source", "the config has no video to feed"))?;
        for src in video
            .sources
            .values_mut()
            .chain(video.positions.values_mut())
        {
            *src = uri.to_string();
        }
        Ok(())
    }

    /// Checks every value, naming the first key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_sn(&self.gateway.sn) {
            return Err(invalid(
                "gateway.sn",
                format!(
                    "{:?} must be 1-64 letters and digits (DJI clouds route nothing else)",
                    self.gateway.sn
                ),
            ));
        }
        if self.gateway.max_streams == 0 {
            return Err(invalid("gateway.max_streams", "must be at least 1"));
        }
        self.validate_mqtt()?;
        // Under systemd the daemon runs in `/`: a relative path that worked when the file was
        // tried by hand would name another file there, found missing only when first used
        // (the RTMPS CA: at the first rtmps:// stream, hours later).
        for (key, path) in [
            ("mqtt.ca_file", &self.mqtt.ca_file),
            ("mqtt.client_cert_file", &self.mqtt.client_cert_file),
            ("mqtt.client_key_file", &self.mqtt.client_key_file),
            ("rtmp.ca_file", &self.rtmp.ca_file),
            ("encoder.openh264_library", &self.encoder.openh264_library),
        ] {
            if let Some(p) = path.as_deref().filter(|p| !Path::new(p).is_absolute()) {
                return Err(invalid(key, format!("{p:?} must be an absolute path")));
            }
        }
        self.quality
            .validate()
            .map_err(|(key, why)| invalid(key, why))?;
        if !(1..=600).contains(&self.encoder.gop_frames) {
            return Err(invalid("encoder.gop_frames", "must be within 1..=600"));
        }
        if self.encoder.openh264_library.is_some() && !cfg!(feature = "cisco-openh264") {
            return Err(invalid(
                "encoder.openh264_library",
                "this build cannot load libopenh264 at run time; build with --features cisco-openh264",
            ));
        }
        if self.rtmp.connect_timeout_ms < 100 || self.rtmp.connect_timeout_ms > 60_000 {
            return Err(invalid(
                "rtmp.connect_timeout_ms",
                "must be within 100..=60000 (the cloud waits 20 s for a reply)",
            ));
        }
        if self.rtmp.backoff_initial_ms == 0
            || self.rtmp.backoff_initial_ms > self.rtmp.backoff_max_ms
        {
            return Err(invalid(
                "rtmp.backoff_initial_ms",
                "must be at least 1 and at most rtmp.backoff_max_ms",
            ));
        }
        if !(2..=1000).contains(&self.rtmp.queue_frames) {
            return Err(invalid("rtmp.queue_frames", "must be within 2..=1000"));
        }
        if !(1000..=60_000).contains(&self.whip.connect_timeout_ms) {
            return Err(invalid(
                "whip.connect_timeout_ms",
                "must be within 1000..=60000 (the cloud waits 20 s for a reply)",
            ));
        }
        for (i, server) in self.whip.stun_servers.iter().enumerate() {
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(invalid(
                    format!("whip.stun_servers[{i}]"),
                    format!("{server:?} is not host:port"),
                ));
            }
        }
        if let Some(listen) = &self.health.listen {
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("health.listen", format!("{listen:?} is not ip:port: {e}")))?;
        }
        self.validate_gb28181()?;
        self.validate_adapters()?;
        self.validate_devices()
    }

    fn validate_gb28181(&self) -> Result<(), ConfigError> {
        let gb = &self.gb28181;
        if !matches!(gb.sip_transport.as_str(), "udp" | "tcp") {
            return Err(invalid("gb28181.sip_transport", "must be udp or tcp"));
        }
        if gb.bind_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "gb28181.bind_ip",
                format!("{:?} is not an IP address", gb.bind_ip),
            ));
        }
        if let Some(ip) = &gb.advertise_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "gb28181.advertise_ip",
                    format!("{ip:?} is not an IP address"),
                ));
            }
        }
        for ip in &gb.accept_from {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "gb28181.accept_from",
                    format!("{ip:?} is not an IP address"),
                ));
            }
        }
        if !(60..=86_400).contains(&gb.expires_secs) {
            return Err(invalid("gb28181.expires_secs", "must be within 60..=86400"));
        }
        if !(5..=3600).contains(&gb.keepalive_secs) {
            return Err(invalid("gb28181.keepalive_secs", "must be within 5..=3600"));
        }
        if !(500..=1400).contains(&gb.rtp_packet_bytes) {
            return Err(invalid(
                "gb28181.rtp_packet_bytes",
                "must be within 500..=1400",
            ));
        }
        if gb.keepalive_max_missed == 0 {
            return Err(invalid(
                "gb28181.keepalive_max_missed",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_adapters(&self) -> Result<(), ConfigError> {
        let mut served = BTreeMap::new();
        for (name, a) in &self.adapters {
            let key = format!("adapters.{name}");
            if !matches!(a.framing.as_str(), "framed" | "annexb") {
                return Err(invalid(
                    format!("{key}.framing"),
                    "must be framed or annexb",
                ));
            }
            if !matches!(a.ready.as_str(), "publishing" | "spawn") {
                return Err(invalid(
                    format!("{key}.ready"),
                    "must be publishing or spawn",
                ));
            }
            let fields: Vec<(String, String)> = ADAPTER_FIELDS
                .iter()
                .map(|f| (f.to_string(), String::new()))
                .collect();
            crate::sink::adapter::expand_argv(name, &a.command, &fields)
                .map_err(|e| invalid(format!("{key}.command"), e.to_string()))?;
            if let Some(t) = a.url_type {
                if t > 4 {
                    return Err(invalid(format!("{key}.url_type"), "must be within 0..=4"));
                }
                if let Some(other) = served.insert(t, name) {
                    return Err(invalid(
                        format!("{key}.url_type"),
                        format!("url_type {t} is already served by adapters.{other}"),
                    ));
                }
            }
            if a.backoff_initial_ms == 0 || a.backoff_initial_ms > a.backoff_max_ms {
                return Err(invalid(
                    format!("{key}.backoff_initial_ms"),
                    "must be at least 1 and at most backoff_max_ms",
                ));
            }
            if !(100..=60_000).contains(&a.ready_timeout_ms) {
                return Err(invalid(
                    format!("{key}.ready_timeout_ms"),
                    "must be within 100..=60000",
                ));
            }
            // Under a second, a hiccup of the adapter's uplink would restart it.
            if !(1_000..=600_000).contains(&a.stall_timeout_ms) {
                return Err(invalid(
                    format!("{key}.stall_timeout_ms"),
                    "must be within 1000..=600000",
                ));
            }
        }
        Ok(())
    }

    /// The adapter serving `url_type`, if one is configured.
    pub fn adapter_for(&self, url_type: u8) -> Option<&str> {
        self.adapters
            .iter()
            .find(|(_, a)| a.url_type == Some(url_type))
            .map(|(n, _)| n.as_str())
    }

    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.mqtt.url)
            .map_err(|e| invalid("mqtt.url", format!("not a url: {e}")))?;
        if !matches!(url.scheme(), "mqtt" | "mqtts") {
            return Err(invalid(
                "mqtt.url",
                format!("scheme {:?} is not mqtt or mqtts", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("mqtt.url", "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "mqtt.url",
                "must not carry credentials; use mqtt.username and mqtt.password",
            ));
        }
        if self.mqtt.client_cert_file.is_some() != self.mqtt.client_key_file.is_some() {
            return Err(invalid(
                "mqtt.client_cert_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        if url.scheme() == "mqtt"
            && (self.mqtt.ca_file.is_some() || self.mqtt.client_cert_file.is_some())
        {
            return Err(invalid(
                "mqtt.ca_file",
                "certificates are only used with an mqtts:// url",
            ));
        }
        if self.mqtt.password.is_some() && self.mqtt.username.is_none() {
            return Err(invalid("mqtt.password", "needs mqtt.username"));
        }
        if self.mqtt.keep_alive_secs < 5 {
            return Err(invalid("mqtt.keep_alive_secs", "must be at least 5"));
        }
        if let Some(id) = &self.mqtt.client_id {
            if id.is_empty() || id.len() > 128 {
                return Err(invalid("mqtt.client_id", "must be 1-128 characters"));
            }
        }
        Ok(())
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        if self.devices.is_empty() {
            return Err(invalid("device", "at least one [[device]] is needed"));
        }
        let mut seen = std::collections::BTreeSet::new();
        // Camera nodes and feed endpoints, with the video that reads them: one device cannot
        // be opened by two sessions at once (a second bind or capture would fail at run time).
        let mut claimed: BTreeMap<String, String> = BTreeMap::new();
        for (d, device) in self.devices.iter().enumerate() {
            let dkey = format!("device[{d}]");
            if let Some(sn) = &device.sn {
                if !is_sn(sn) {
                    return Err(invalid(
                        format!("{dkey}.sn"),
                        format!("{sn:?} must be 1-64 letters and digits"),
                    ));
                }
            }
            if device.max_streams == Some(0) {
                return Err(invalid(format!("{dkey}.max_streams"), "must be at least 1"));
            }
            if device.cameras.is_empty() {
                return Err(invalid(format!("{dkey}.camera"), "a device needs a camera"));
            }
            for (c, camera) in device.cameras.iter().enumerate() {
                let ckey = format!("{dkey}.camera[{c}]");
                if !is_camera_index(&camera.index) {
                    return Err(invalid(
                        format!("{ckey}.index"),
                        format!("{:?} is not a DJI camera index like 165-0-7", camera.index),
                    ));
                }
                if camera.max_streams == 0 {
                    return Err(invalid(format!("{ckey}.max_streams"), "must be at least 1"));
                }
                if camera.videos.is_empty() {
                    return Err(invalid(format!("{ckey}.video"), "a camera needs a video"));
                }
                for (v, video) in camera.videos.iter().enumerate() {
                    let vkey = format!("{ckey}.video[{v}]");
                    if !is_video_index(&video.index) {
                        return Err(invalid(
                            format!("{vkey}.index"),
                            format!("{:?} is not a DJI video index like normal-0", video.index),
                        ));
                    }
                    let id = (
                        self.device_sn(d),
                        camera.index.as_str(),
                        video.index.as_str(),
                    );
                    if !seen.insert(id) {
                        return Err(invalid(
                            format!("{vkey}.index"),
                            format!("video {}/{}/{} is configured twice", id.0, id.1, id.2),
                        ));
                    }
                    if video.sources.is_empty() {
                        return Err(invalid(
                            format!("{vkey}.sources"),
                            "needs at least one lens",
                        ));
                    }
                    for (name, uri) in &video.sources {
                        if !LENS_NAMES.contains(&name.as_str()) {
                            return Err(invalid(
                                format!("{vkey}.sources.{name}"),
                                format!("lens must be one of {}", LENS_NAMES.join(", ")),
                            ));
                        }
                        uri.parse::<SourceSpec>().map_err(|e| {
                            invalid(format!("{vkey}.sources.{name}"), e.to_string())
                        })?;
                    }
                    for (name, uri) in &video.positions {
                        if !POSITION_NAMES.contains(&name.as_str()) {
                            return Err(invalid(
                                format!("{vkey}.positions.{name}"),
                                "camera positions are inside and outside",
                            ));
                        }
                        uri.parse::<SourceSpec>().map_err(|e| {
                            invalid(format!("{vkey}.positions.{name}"), e.to_string())
                        })?;
                    }
                    for (kind, name, uri) in video
                        .sources
                        .iter()
                        .map(|(n, u)| ("sources", n, u))
                        .chain(video.positions.iter().map(|(n, u)| ("positions", n, u)))
                    {
                        let Some(key) = uri.parse::<SourceSpec>().ok().and_then(|s| s.device_key())
                        else {
                            continue;
                        };
                        match claimed.get(&key) {
                            Some(owner) if *owner != vkey => {
                                return Err(invalid(
                                    format!("{vkey}.{kind}.{name}"),
                                    format!(
                                        "{key} is already the source of {owner}: a camera or feed endpoint feeds one video"
                                    ),
                                ));
                            }
                            _ => {
                                claimed.insert(key, vkey.clone());
                            }
                        }
                    }
                    if !video.sources.contains_key(video.start_lens()) {
                        return Err(invalid(
                            format!("{vkey}.lens"),
                            format!("{:?} has no entry in sources", video.start_lens()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_key(text: &str) -> String {
        match Config::parse(text, "test.toml") {
            Err(ConfigError::Invalid { key, .. }) => key,
            Err(e) => format!("other: {e}"),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn a_reload_keeps_the_running_link_serial_and_endpoint_and_applies_the_rest() {
        let running = Config::parse(
            "[gateway]\nsn = \"DOCK1\"\n[mqtt]\nusername = \"dock\"\npassword = \"old\"\n[rtmp]\nconnect_timeout_ms = 1000",
            "running",
        )
        .unwrap();
        let same = Config::parse(
            "[gateway]\nsn = \"DOCK1\"\n[mqtt]\nusername = \"dock\"\npassword = \"old\"\n[rtmp]\nconnect_timeout_ms = 2000",
            "same",
        )
        .unwrap();
        assert!(running.for_reload(same).1.is_empty());
        let changed = Config::parse(
            "[gateway]\nsn = \"DOCK2\"\nmax_streams = 1\n[mqtt]\nusername = \"dock\"\npassword = \"new\"\n\
             [health]\nlisten = \"127.0.0.1:9480\"\n[rtmp]\nconnect_timeout_ms = 2000",
            "changed",
        )
        .unwrap();
        let (applied, kept) = running.for_reload(changed);
        assert_eq!(kept, ["[mqtt]", "gateway.sn", "[health]"]);
        assert_eq!(
            applied.gateway.sn, "DOCK1",
            "video IDs keep the linked serial"
        );
        assert_eq!(applied.device_sn(0), "DOCK1");
        assert_eq!(applied.mqtt, running.mqtt);
        assert_eq!(applied.health.listen, None);
        assert_eq!(applied.gateway.max_streams, 1, "the rest is applied");
        assert_eq!(applied.rtmp.connect_timeout_ms, 2000);
    }

    #[test]
    fn empty_file_gives_the_builtin_test_pattern_camera() {
        let c = Config::parse("", "empty").unwrap();
        assert_eq!(c.gateway.sn, "DOCKCAST0000001");
        assert_eq!(c.device_sn(0), "DOCKCAST0000001");
        let v = &c.devices[0].cameras[0].videos[0];
        assert_eq!(v.index, "normal-0");
        assert_eq!(
            v.sources.keys().collect::<Vec<_>>(),
            ["ir", "normal", "wide", "zoom"]
        );
        assert_eq!(v.start_lens(), "normal");
        assert_eq!(c.client_id(), "dockcast-DOCKCAST0000001");
    }

    #[test]
    fn a_camera_or_feed_feeds_one_video_but_lenses_may_share_it() {
        let two_videos = |a: &str, b: &str| {
            format!(
                "[[device]]\n[[device.camera]]\nindex = \"165-0-7\"\n\
                 [[device.camera.video]]\nindex = \"normal-0\"\nsources = {{ normal = \"{a}\", zoom = \"{a}\" }}\n\
                 [[device.camera.video]]\nindex = \"normal-1\"\nsources = {{ normal = \"{b}\" }}\n"
            )
        };
        assert_eq!(
            err_key(&two_videos(
                "v4l2:/dev/video0",
                "v4l2:/dev/video1?format=nv12"
            )),
            "accepted"
        );
        assert_eq!(
            err_key(&two_videos(
                "feed:unix:/run/a.sock",
                "feed:unix:/run/b.sock"
            )),
            "accepted"
        );
        assert_eq!(
            err_key(&two_videos(
                "v4l2:/dev/video0",
                "v4l2:/dev/video0?format=nv12"
            )),
            "device[0].camera[0].video[1].sources.normal"
        );
        assert_eq!(
            err_key(&two_videos(
                "feed:tcp:127.0.0.1:5600",
                "feed:tcp:127.0.0.1:5600?sei=keep"
            )),
            "device[0].camera[0].video[1].sources.normal"
        );
        assert!(
            err_key(&two_videos("v4l2:/dev/video0?fps=0", "pattern")).contains("sources.normal")
        );
        assert_eq!(err_key(&two_videos("pattern", "pattern")), "accepted");
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
            [gateway]
            sn = "4SEDL13001002C"
            max_streams = 3
            [mqtt]
            url = "mqtts://broker.example:8883"
            username = "dock"
            password = "hunter2"
            ca_file = "/etc/dockcast/ca.pem"
            [quality.standard]
            width = 640
            height = 360
            fps = 25
            bitrate_kbps = 600
            [[device]]
            [[device.camera]]
            index = "165-0-7"
            [[device.camera.video]]
            index = "normal-0"
            sources = { normal = "pattern" }
            positions = { inside = "pattern:ir", outside = "pattern:wide" }
            [[device]]
            sn = "1ZNDH1D0010098"
            [[device.camera]]
            index = "53-0-0"
            [[device.camera.video]]
            index = "normal-0"
            lens = "wide"
            sources = { wide = "pattern", zoom = "pattern", ir = "pattern" }
            "#,
            "example",
        )
        .unwrap();
        assert_eq!(c.device_sn(1), "1ZNDH1D0010098");
        assert_eq!(c.quality.standard.width, 640);
        assert_eq!(format!("{:?}", c.mqtt.password), "Some(\"***\")");
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(err_key("[gateway]\nsn = \"bad-sn\""), "gateway.sn");
        assert_eq!(err_key("[mqtt]\nurl = \"http://x\""), "mqtt.url");
        assert_eq!(err_key("[mqtt]\nurl = \"mqtt://u:p@x\""), "mqtt.url");
        assert_eq!(err_key("[mqtt]\npassword = \"p\""), "mqtt.password");
        assert_eq!(
            err_key("[mqtt]\nurl = \"mqtt://x\"\nca_file = \"/ca.pem\""),
            "mqtt.ca_file"
        );
        assert_eq!(
            err_key("[quality.high]\nwidth = 3\nheight = 2\nfps = 30\nbitrate_kbps = 100"),
            "quality.high"
        );
        assert_eq!(err_key("[encoder]\ngop_frames = 0"), "encoder.gop_frames");
        assert_eq!(
            err_key("[[device]]\n[[device.camera]]\nindex = \"abc\"\n[[device.camera.video]]\nindex = \"normal-0\"\nsources = { normal = \"pattern\" }"),
            "device[0].camera[0].index"
        );
        assert_eq!(
            err_key("[[device]]\n[[device.camera]]\nindex = \"1-0-0\"\n[[device.camera.video]]\nindex = \"normal-0\"\nsources = { infrared = \"pattern\" }"),
            "device[0].camera[0].video[0].sources.infrared"
        );
        assert_eq!(
            err_key("[[device]]\n[[device.camera]]\nindex = \"1-0-0\"\n[[device.camera.video]]\nindex = \"normal-0\"\nsources = { zoom = \"rtsp://cam\" }"),
            "device[0].camera[0].video[0].sources.zoom"
        );
        assert_eq!(
            err_key("[[device]]\n[[device.camera]]\nindex = \"1-0-0\"\n[[device.camera.video]]\nindex = \"normal-0\"\nlens = \"ir\"\nsources = { zoom = \"pattern\" }"),
            "device[0].camera[0].video[0].lens"
        );
        // Unknown keys and wrong types are reported by the parser with their name.
        let e = Config::parse("[gateway]\nserial = \"x\"", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("serial"), "{e}");
        let e = Config::parse("[gateway]\nmax_streams = \"two\"", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_streams"), "{e}");
    }

    #[test]
    fn whip_tokens_are_found_by_host_and_port() {
        let c = Config::parse(
            "[whip]\nstun_servers = [\"127.0.0.1:3478\"]\n[whip.tokens]\n\"srs.local:1985\" = \"a\"\n\"whip.example\" = \"b\"",
            "t",
        )
        .unwrap();
        let t = |u: &str| c.whip.token_for(u).map(|s| s.expose().to_string());
        assert_eq!(
            t("http://srs.local:1985/rtc/v1/whip/?app=live&stream=x").as_deref(),
            Some("a")
        );
        assert_eq!(t("https://whip.example/live").as_deref(), Some("b"));
        assert_eq!(t("http://srs.local/whip"), None);
        assert_eq!(
            err_key("[whip]\nstun_servers = [\"nope\"]"),
            "whip.stun_servers[0]"
        );
    }

    #[test]
    fn adapters_and_gb28181_are_validated() {
        let ok = Config::parse(
            "[adapters.agora]\ncommand = [\"/opt/agora\", \"{channel}\"]\nurl_type = 0\nenv = { AGORA_APP_ID = \"x\" }\n[gb28181]\nsip_transport = \"tcp\"",
            "t",
        )
        .unwrap();
        assert_eq!(ok.adapter_for(0), Some("agora"));
        assert_eq!(ok.adapter_for(1), None);
        assert!(
            !format!("{ok:?}").contains("\"x\""),
            "adapter env values are secrets"
        );
        assert_eq!(
            err_key("[adapters.a]\ncommand = [\"x\", \"{chanel}\"]"),
            "adapters.a.command"
        );
        assert_eq!(err_key("[adapters.a]\ncommand = []"), "adapters.a.command");
        assert_eq!(
            err_key("[adapters.a]\ncommand = [\"x\"]\nstall_timeout_ms = 500"),
            "adapters.a.stall_timeout_ms"
        );
        assert_eq!(
            err_key("[adapters.a]\ncommand = [\"x\"]\nframing = \"mp4\""),
            "adapters.a.framing"
        );
        assert_eq!(
            err_key("[adapters.a]\ncommand = [\"x\"]\nurl_type = 0\n[adapters.b]\ncommand = [\"y\"]\nurl_type = 0"),
            "adapters.b.url_type"
        );
        assert_eq!(
            err_key("[gb28181]\nsip_transport = \"sctp\""),
            "gb28181.sip_transport"
        );
        assert_eq!(
            err_key("[gb28181]\nadvertise_ip = \"host\""),
            "gb28181.advertise_ip"
        );
        assert_eq!(
            err_key("[gb28181]\naccept_from = [\"10.0.0.0/8\"]"),
            "gb28181.accept_from"
        );
        assert_eq!(
            err_key("[gb28181]\nrtp_packet_bytes = 1500"),
            "gb28181.rtp_packet_bytes"
        );
        assert_eq!(err_key("[gb28181]\nrtp_packet_bytes = 1200"), "accepted");
        assert_eq!(err_key("[rtmp]\nca_file = \"ca.pem\""), "rtmp.ca_file");
        assert_eq!(
            err_key("[mqtt]\nurl = \"mqtts://x\"\nca_file = \"./ca.pem\""),
            "mqtt.ca_file"
        );
    }

    #[test]
    fn board_profiles_are_valid() {
        for (name, text) in [
            ("rpi4", include_str!("../board/profiles/rpi4.toml")),
            ("rpi5", include_str!("../board/profiles/rpi5.toml")),
            (
                "jetson-orin",
                include_str!("../board/profiles/jetson-orin.toml"),
            ),
            ("rk3588", include_str!("../board/profiles/rk3588.toml")),
            (
                "dock-edge",
                include_str!("../board/profiles/dock-edge.toml"),
            ),
            ("packaged", include_str!("../packaging/dockcast.toml")),
        ] {
            if let Err(e) = Config::parse(text, name) {
                panic!("board profile {name}: {e}");
            }
        }
    }

    #[test]
    fn source_override_feeds_every_lens_of_the_first_video() {
        let mut c = Config::default();
        c.override_source("pattern:zoom").unwrap();
        assert!(c.devices[0].cameras[0].videos[0]
            .sources
            .values()
            .all(|s| s == "pattern:zoom"));
        assert!(c.override_source("bogus").is_err());
    }
}
