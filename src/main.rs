//! The `dockcast` command: `run` the daemon, drive a dock with `ctl`, `check-config` a file.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dockcast::cloud;
use dockcast::config::{Config, DEFAULT_PATH};
use dockcast::ctl::{self, CtlRequest};
use dockcast::link::{self, LinkSettings};
use dockcast::live::actor::{self, ActorControl, ActorSetup};
use dockcast::live::catalog::Catalog;
use dockcast::live::manager::Manager;
use dockcast::live::session::SinkSettings;
use dockcast::sink::adapter::{AdapterOptions, AdapterSpec, Framing, Ready};
use dockcast::sink::gb28181::{GbOptions, SipTransport};
use dockcast::sink::rtmp::RtmpOptions;
use dockcast::sink::whip::WhipOptions;
use dockcast::systemd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "dockcast",
    version,
    about = "Live-stream gateway for DJI Docks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: answer the cloud's live commands and push the streams.
    Run {
        /// Config file (default /etc/dockcast/dockcast.toml; built-in defaults if absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Broker url, overriding the config (mqtt://host:port or mqtts://host:port).
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Gateway serial, overriding the config.
        #[arg(long)]
        gateway_sn: Option<String>,
        /// Feed every lens of the first video from this source (pattern[:STYLE][?clock=1],
        /// file:PATH, v4l2:/dev/videoN[?...], feed:unix:PATH|tcp:HOST:PORT|fifo:PATH).
        #[arg(long)]
        source: Option<String>,
    },
    /// Send one live service to a gateway as the cloud would, print the reply, exit 0 iff
    /// result is 0.
    Ctl {
        /// Broker url (mqtt://host:port).
        #[arg(long)]
        mqtt_url: String,
        /// Serial of the gateway to command.
        #[arg(long)]
        gateway_sn: String,
        /// Broker username.
        #[arg(long)]
        username: Option<String>,
        /// Broker password (or DOCKCAST_MQTT_PASSWORD).
        #[arg(long, env = "DOCKCAST_MQTT_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// How long to wait for the reply (1 s to a day).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout_secs: u64,
        #[command(subcommand)]
        request: CtlCmd,
    },
    /// Print the health and metrics of a running daemon ([health] listen); exit 0 iff healthy.
    Status {
        /// Address of the health endpoint.
        #[arg(long, default_value = "127.0.0.1:9480")]
        addr: String,
    },
    /// Validate a config file and say which key is wrong.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// live_start_push
    Start {
        /// Push url (rtmp://host/app/key), or DOCKCAST_PUSH_URL: a stream key on the command
        /// line shows in process listings and shell history.
        #[arg(long, env = "DOCKCAST_PUSH_URL", hide_env_values = true)]
        url: String,
        /// 0 Agora, 1 RTMP, 3 GB28181, 4 WHIP.
        #[arg(long, default_value_t = 1)]
        url_type: u8,
        /// {sn}/{camera_index}/{video_index}
        #[arg(long)]
        video_id: String,
        /// 0 adaptive, 1 smooth, 2 standard, 3 high, 4 ultra-high.
        #[arg(long, default_value_t = 0)]
        quality: u8,
    },
    /// live_stop_push
    Stop {
        /// {sn}/{camera_index}/{video_index}
        #[arg(long)]
        video_id: String,
    },
    /// live_set_quality
    Quality {
        /// {sn}/{camera_index}/{video_index}
        #[arg(long)]
        video_id: String,
        /// 0 adaptive, 1 smooth, 2 standard, 3 high, 4 ultra-high.
        #[arg(long)]
        quality: u8,
    },
    /// live_lens_change
    Lens {
        /// normal, wide, zoom or ir.
        #[arg(long)]
        lens: String,
        /// Optional {sn}/{camera_index}/{video_index}.
        #[arg(long)]
        video_id: Option<String>,
    },
    /// Print the live_capacity the gateway announced (at once from dockcast, which retains it;
    /// a gateway that does not is heard at its next announcement).
    Capacity,
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    // `Targets` takes RUST_LOG's `target=level,...` form without the regex engine EnvFilter
    // carries (hundreds of kB in an ARM binary), which per-span and per-field filters would
    // need and a daemon's operators do not use.
    let default = Targets::new().with_default(LevelFilter::INFO);
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match spec.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(e) => (
                default,
                Some(format!("RUST_LOG {spec:?} ignored ({e}); logging at info")),
            ),
        },
        _ => (default, None),
    };
    // Under systemd, stderr is connected to the journal: log natively there so fields and
    // levels survive; on a terminal, log readable lines, coloured only on a terminal so that
    // files and pipes get plain text.
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let fmt = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(fmt)
        .init();
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if std::path::Path::new(DEFAULT_PATH).exists() => {
            Ok(Config::load(std::path::Path::new(DEFAULT_PATH))?)
        }
        None => {
            info!("no config file at {DEFAULT_PATH}: using the built-in test-pattern camera");
            Ok(Config::default())
        }
    }
}

/// Everything the live manager needs from a config, rebuilt on SIGHUP.
struct Prepared {
    catalog: Catalog,
    capacity: dockcast::cloud::LiveCapacity,
    sinks: SinkSettings,
    routes: std::collections::BTreeMap<u8, String>,
}

/// The config file plus the command-line overrides, as `run` was started with them.
struct ConfigSource {
    path: Option<PathBuf>,
    mqtt_url: Option<String>,
    gateway_sn: Option<String>,
    source: Option<String>,
}

impl ConfigSource {
    fn load(&self) -> Result<Config> {
        let mut config = load_config(self.path.as_ref())?;
        if let Some(url) = &self.mqtt_url {
            config.mqtt.url = url.clone();
        }
        if let Some(sn) = &self.gateway_sn {
            config.gateway.sn = sn.clone();
        }
        if let Some(uri) = &self.source {
            config.override_source(uri)?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// The devices and feed endpoints a config's sources use: on a reload, those of the running
/// config may be open in a session.
fn held_devices(config: &Config) -> std::collections::BTreeSet<String> {
    Catalog::from_config(config)
        .videos
        .iter()
        .flat_map(|v| v.inputs.values().filter_map(|spec| spec.device_key()))
        .collect()
}

/// `held`: devices and feeds left unopened, since a session may hold them (see
/// [`held_devices`]); empty at start-up.
fn prepare(config: &Config, held: &std::collections::BTreeSet<String>) -> Prepared {
    let catalog = Catalog::from_config(config);
    let capacity = catalog.capacity(config);
    // A source that cannot open now (a missing file) is reported at start-up but does not stop
    // the daemon: the cloud gets an error for that video only, and the others work. A source
    // a session may have open is not opened again: a camera would answer "busy", and a feed's
    // socket would take the connection of the app that streams into the session.
    for video in &catalog.videos {
        for (name, spec) in &video.inputs {
            if spec.device_key().is_some_and(|key| held.contains(&key)) {
                continue;
            }
            if let Err(e) = spec.open(name) {
                warn!(video_id = %video.id, input = %name, "source unavailable: {e}");
            }
        }
    }
    let sinks = SinkSettings {
        rtmp: RtmpOptions {
            connect_timeout: Duration::from_millis(config.rtmp.connect_timeout_ms),
            backoff_initial: Duration::from_millis(config.rtmp.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.rtmp.backoff_max_ms),
            ca_file: config.rtmp.ca_file.as_ref().map(PathBuf::from),
            insecure_skip_verify: config.rtmp.insecure_skip_verify,
            ..RtmpOptions::default()
        },
        whip: WhipOptions {
            connect_timeout: Duration::from_millis(config.whip.connect_timeout_ms),
            stun_servers: config.whip.stun_servers.clone(),
            ..WhipOptions::default()
        },
        whip_config: config.whip.clone(),
        gb: gb_options(&config.gb28181),
        adapters: config
            .adapters
            .iter()
            .map(|(name, a)| {
                (
                    name.clone(),
                    adapter_spec(name, a, config.rtmp.queue_frames),
                )
            })
            .collect(),
        queue_frames: config.rtmp.queue_frames,
    };
    let routes = config
        .adapters
        .iter()
        .filter_map(|(name, a)| Some((a.url_type?, name.clone())))
        .collect();
    Prepared {
        catalog,
        capacity,
        sinks,
        routes,
    }
}

fn gb_options(gb: &dockcast::config::Gb28181Settings) -> GbOptions {
    let defaults = GbOptions::default();
    GbOptions {
        sip_transport: if gb.sip_transport == "tcp" {
            SipTransport::Tcp
        } else {
            SipTransport::Udp
        },
        // Validated addresses; a parse failure cannot happen after Config::validate.
        bind_ip: gb.bind_ip.parse().unwrap_or(defaults.bind_ip),
        advertise_ip: gb.advertise_ip.as_deref().and_then(|ip| ip.parse().ok()),
        media_port: gb.media_port,
        expires: gb.expires_secs,
        keepalive_interval: Duration::from_secs(gb.keepalive_secs.into()),
        keepalive_max_missed: gb.keepalive_max_missed,
        name: gb.name.clone(),
        rtp_packet_bytes: gb.rtp_packet_bytes.into(),
        accept_from: gb
            .accept_from
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect(),
        ..defaults
    }
}

fn adapter_spec(
    name: &str,
    a: &dockcast::config::AdapterConfig,
    queue_frames: usize,
) -> (AdapterSpec, AdapterOptions) {
    let framing = if a.framing == "annexb" {
        Framing::RawAnnexB
    } else {
        Framing::Framed
    };
    let ready = if a.ready == "spawn" {
        Ready::OnSpawn
    } else {
        Ready::OnPublishingEvent
    };
    let mut spec = AdapterSpec::new(name, a.command.clone(), framing, ready);
    spec.env = a
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_string()))
        .collect();
    spec.backoff_initial = Duration::from_millis(a.backoff_initial_ms);
    spec.backoff_max = Duration::from_millis(a.backoff_max_ms);
    let opts = AdapterOptions {
        ready_timeout: Duration::from_millis(a.ready_timeout_ms),
        stall_limit: Duration::from_millis(a.stall_timeout_ms),
        queue_frames,
        ..AdapterOptions::default()
    };
    (spec, opts)
}

/// How long start-up waits for the broker before telling systemd it is ready anyway: a dock
/// whose broker is down must still start, stream on command later, and keep retrying.
const READY_WAIT: Duration = Duration::from_secs(15);

async fn run_daemon(from: ConfigSource) -> Result<()> {
    // Signals are taken over first: until then SIGHUP's default action ends the process, and a
    // reload queued while the daemon waits for its broker (up to READY_WAIT) would kill it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut config = from.load()?;
    let Prepared {
        catalog,
        capacity,
        sinks,
        routes,
    } = prepare(&config, &Default::default());
    let gateway_sn = config.gateway.sn.clone();
    let settings = LinkSettings {
        mqtt: config.mqtt.clone(),
        client_id: config.client_id(),
        services_topic: cloud::services_topic(&gateway_sn),
    };
    let opts = link::options(&settings)?;
    let manager = Manager::new(catalog, config.quality.clone(), config.encoder.gop_frames)
        .with_routes(routes)
        .with_backend(config.encoder.backend());
    info!(
        gateway = %gateway_sn,
        broker = %config.mqtt.url,
        videos = manager.catalog().videos.len(),
        "dockcast {} starting",
        env!("CARGO_PKG_VERSION")
    );

    let (services_tx, services_rx) = tokio::sync::mpsc::channel(64);
    let (link_tx, link_rx) = tokio::sync::mpsc::channel(256);
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(4);
    let (snapshot_tx, snapshot_rx) = tokio::sync::mpsc::channel(8);
    let (connected_tx, mut connected_rx) = tokio::sync::watch::channel(false);
    let stop_actor = CancellationToken::new();
    let stop_link = CancellationToken::new();
    // The health endpoint is up before the broker hears of us, so whoever sees the capacity
    // can also reach it.
    let stop_health = CancellationToken::new();
    if let Some(listen) = &config.health.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("health endpoint on {listen}"))?;
        info!("health endpoint on http://{listen}/healthz and /metrics");
        tokio::spawn(dockcast::health::serve(
            listener,
            snapshot_tx.clone(),
            connected_rx.clone(),
            stop_health.clone(),
        ));
    }
    let mut link_task = tokio::spawn(link::run(
        settings,
        opts,
        services_tx,
        link_rx,
        connected_tx,
        stop_link.clone(),
    ));
    let mut actor_task = tokio::spawn(actor::run(
        ActorSetup {
            manager,
            sinks,
            gateway_sn,
            capacity,
        },
        services_rx,
        control_rx,
        snapshot_rx,
        link_tx,
        stop_actor.clone(),
    ));

    let broker_up = tokio::time::timeout(READY_WAIT, connected_rx.wait_for(|up| *up))
        .await
        .is_ok();
    if broker_up {
        systemd::ready("connected to the broker");
    } else {
        warn!("broker not reachable within {READY_WAIT:?}; running anyway and retrying");
        systemd::ready("broker unreachable; retrying");
    }

    // A signal that arrived during the wait above is still queued and taken here.
    let failed = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            // Either task ending on its own is a defect: without the actor no command is
            // served, without the link none arrives (while the actor would go on feeding
            // systemd's watchdog). Exiting non-zero lets systemd restart the daemon.
            ended = &mut actor_task => break Some(("live manager", ended)),
            ended = &mut link_task => break Some(("broker link", ended)),
            _ = hup.recv() => {
                systemd::reloading();
                match from.load() {
                    Ok(new) => {
                        let (new, kept) = config.for_reload(new);
                        if !kept.is_empty() {
                            warn!(
                                "reload: {} changed; the running values are kept until the \
                                 next restart",
                                kept.join(", ")
                            );
                        }
                        let Prepared { catalog, capacity, sinks, routes } =
                            prepare(&new, &held_devices(&config));
                        let reload = ActorControl::Reload {
                            catalog,
                            routes,
                            ladder: new.quality.clone(),
                            gop_frames: new.encoder.gop_frames,
                            sinks,
                            capacity,
                        };
                        if control_tx.send(reload).await.is_err() {
                            continue; // the actor has ended: the next turn reports it
                        }
                        config = new;
                    }
                    Err(e) => {
                        warn!("reload refused, keeping the running config: {e:#}");
                        systemd::ready("reload refused; running config kept");
                    }
                }
            }
        }
    };
    if let Some((task, ended)) = failed {
        let how = match ended {
            Ok(()) => "returned".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        systemd::stopping();
        stop_health.cancel();
        stop_actor.cancel();
        stop_link.cancel();
        anyhow::bail!("the {task} task {how}; exiting so that the service is restarted");
    }
    info!("shutting down");
    systemd::stopping();
    stop_health.cancel();
    stop_actor.cancel();
    if tokio::time::timeout(Duration::from_secs(4), actor_task)
        .await
        .is_err()
    {
        warn!("sessions did not all close within 4 s");
    }
    stop_link.cancel();
    let _ = tokio::time::timeout(Duration::from_millis(700), link_task).await;
    info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Status { addr } => {
            let health = dockcast::health::fetch(&addr, "/healthz");
            let metrics = dockcast::health::fetch(&addr, "/metrics");
            match (health, metrics) {
                (Ok((code, health)), Ok((_, metrics))) => {
                    print!("{health}");
                    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
                        println!("  {line}");
                    }
                    if code == 200 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("dockcast status: no health endpoint at {addr}: {e} (is [health] listen set?)");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            config,
            mqtt_url,
            gateway_sn,
            source,
        } => {
            init_logging();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(run_daemon(ConfigSource {
                path: config,
                mqtt_url,
                gateway_sn,
                source,
            }));
            // Dropping the runtime would wait without limit for blocking tasks, such as a
            // session joining a pipeline thread that is stuck in a driver call; systemd would
            // then wait for its stop timeout and kill the daemon.
            rt.shutdown_timeout(Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Ctl {
            mqtt_url,
            gateway_sn,
            username,
            password,
            timeout_secs,
            request,
        } => {
            let request = match request {
                CtlCmd::Start {
                    url,
                    url_type,
                    video_id,
                    quality,
                } => CtlRequest::Start {
                    url,
                    url_type,
                    video_id,
                    quality,
                },
                CtlCmd::Stop { video_id } => CtlRequest::Stop { video_id },
                CtlCmd::Quality { video_id, quality } => CtlRequest::Quality { video_id, quality },
                CtlCmd::Lens { lens, video_id } => CtlRequest::Lens { lens, video_id },
                CtlCmd::Capacity => CtlRequest::Capacity,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(ctl::run(
                &mqtt_url,
                username.as_deref(),
                password.as_deref(),
                &gateway_sn,
                &request,
                Duration::from_secs(timeout_secs),
            )) {
                Ok((reply, ok)) => {
                    println!("{reply}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("dockcast ctl: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
